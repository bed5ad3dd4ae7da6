use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use flashgate::cli::{Cli, Command, ServeArgs};
use flashgate::config::{Config, ConfigError, FileConfig};
use flashgate::Gateway;
use tracing::{error, info};

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FLASHGATE_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match cli.command {
        Command::CheckConfig(args) => match load(&args) {
            Ok(config) => {
                print!("{}", config.to_toml());
                ExitCode::SUCCESS
            }
            Err(e) => bad_config(e),
        },
        Command::Serve(args) => {
            let config = match load(&args) {
                Ok(c) => c,
                Err(e) => return bad_config(e),
            };
            runtime().block_on(serve(config))
        }
        Command::Demo(args) => runtime().block_on(async {
            match flashgate::demo::run(args, shutdown_signal()).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    error!("{e:#}");
                    ExitCode::FAILURE
                }
            }
        }),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("cannot start the tokio runtime")
}

fn load(args: &ServeArgs) -> Result<Config, ConfigError> {
    let file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    Config::resolve(file, args.overrides())
}

/// Bad configuration exits with 2 and a message that names the key.
fn bad_config(e: ConfigError) -> ExitCode {
    eprintln!("flashgate: {e}");
    ExitCode::from(2)
}

async fn serve(config: Config) -> ExitCode {
    let gateway = match Gateway::start(config).await {
        Ok(g) => g,
        Err(e) => {
            error!("cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    shutdown_signal().await;
    info!("signal received: stopping gracefully");
    gateway.shutdown();
    gateway.wait().await;
    ExitCode::SUCCESS
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("cannot install a SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
