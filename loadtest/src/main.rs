//! `flashgate-loadtest`: burst, upstream, ceiling.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use flashgate_loadtest::server::Running;
use flashgate_loadtest::{burst, ceiling, polls, report, upstream};

/// Load test tool for flashgate.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Send a flash-sale burst to a gateway, poll every ticket, report.
    Burst(burst::Options),
    /// Run the mock order service.
    Upstream(upstream::Options),
    /// Poll existing tickets as fast as answers come back (closed model).
    Polls(polls::Options),
    /// Run the do-nothing baseline server that answers every request with a 202 ticket.
    Ceiling(ceiling::Options),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("flashgate-loadtest: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Burst(options) => {
                let report = burst::run(options).await?;
                print!("{}", report::table(&report));
                Ok(())
            }
            Command::Polls(options) => {
                let report = polls::run(options).await?;
                print!("{}", polls::table(&report));
                Ok(())
            }
            Command::Upstream(options) => serve(upstream::start(&options).await?).await,
            Command::Ceiling(options) => serve(ceiling::start(&options).await?).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flashgate-loadtest: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Announces the bound address as the first line of stdout (scripts read
/// the port from it), then serves until a signal.
async fn serve(server: Running) -> anyhow::Result<()> {
    println!("listening on {}", server.addr());
    server.until_signal().await;
    Ok(())
}
