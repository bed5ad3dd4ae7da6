use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use flashgate::cli::{Cli, Command, LogArgs, LogFormat, ServeArgs};
use flashgate::config::{redact_url, Config, ConfigError};
use flashgate::Gateway;
use tracing::{error, info};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = init_logging(&cli.log);
    match cli.command {
        Command::CheckConfig(args) => match args.load() {
            Ok(config) => {
                print!("{}", config.to_toml());
                ExitCode::SUCCESS
            }
            Err(e) => bad_config(e),
        },
        Command::Serve(args) => {
            let config = match args.load() {
                Ok(c) => c,
                Err(e) => return bad_config(e),
            };
            info!(
                version = env!("CARGO_PKG_VERSION"),
                log_format = cli.log.log_format.as_str(),
                log_filter = %filter,
                config = %summary(&config),
                "effective config (secrets redacted)"
            );
            runtime().block_on(serve(args, config))
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
        Command::Reload(args) => match flashgate::cli::reload::run(&args) {
            Ok(pid) => {
                println!("SIGHUP sent to {pid}: the gateway logs whether the reload was applied");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("flashgate reload: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Events(args) => runtime().block_on(async {
            match flashgate::cli::events::run(args).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("flashgate events: {e}");
                    ExitCode::FAILURE
                }
            }
        }),
        Command::Admin(args) => runtime().block_on(async {
            match flashgate::cli::admin::run(args).await {
                Ok(out) => {
                    println!("{out}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("flashgate admin: {e}");
                    ExitCode::FAILURE
                }
            }
        }),
    }
}

/// Environment variables holding a full `EnvFilter`, in the order they win.
const FILTER_VARS: [&str; 2] = ["FLASHGATE_LOG", "RUST_LOG"];

/// Installs the stderr logger and returns the filter it uses: FLASHGATE_LOG
/// or RUST_LOG when set (a per-target filter), else `--log-level`.
fn init_logging(log: &LogArgs) -> String {
    let mut invalid = Vec::new();
    let mut chosen = None;
    for var in FILTER_VARS {
        let Ok(text) = std::env::var(var) else {
            continue;
        };
        if text.trim().is_empty() {
            continue;
        }
        match EnvFilter::try_new(&text) {
            Ok(filter) => {
                chosen = Some((filter, text));
                break;
            }
            Err(e) => invalid.push(format!("{var}={text:?} is not a log filter ({e}); ignored")),
        }
    }
    let (filter, text) = chosen.unwrap_or_else(|| {
        (
            EnvFilter::new(log.log_level.as_str()),
            log.log_level.as_str().to_string(),
        )
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match log.log_format {
        // Colour only for a person at a terminal, never into a file or journald.
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        // Fields at the top level of each object, so log pipelines index them
        // without unnesting; spans carry nothing the events do not.
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
    for warning in invalid {
        tracing::warn!("{warning}");
    }
    text
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("cannot start the tokio runtime")
}

/// The effective config as one line of JSON for the start-up log: what
/// `check-config` prints, with credentials in upstream URLs redacted too (logs
/// travel further than a terminal).
fn summary(config: &Config) -> String {
    let mut v = serde_json::to_value(config).unwrap_or_default();
    let redact = |u: &mut serde_json::Value| {
        if let Some(url) = u.as_str() {
            *u = redact_url(url).into();
        }
    };
    redact(&mut v["upstream"]);
    if let Some(queues) = v["queue"].as_array_mut() {
        queues.iter_mut().for_each(|q| redact(&mut q["upstream"]));
    }
    v.to_string()
}

/// Bad configuration exits with 2 and a message that names the key.
fn bad_config(e: ConfigError) -> ExitCode {
    eprintln!("flashgate: {e}");
    ExitCode::from(2)
}

async fn serve(args: ServeArgs, config: Config) -> ExitCode {
    let stop = shutdown_signal();
    let mut reload = reload_signal();
    let mut reopen = reopen_signal();
    let gateway = match Gateway::start(config).await {
        Ok(g) => g,
        Err(e) => {
            error!("cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            Some(()) = reload.recv() => {
                info!("SIGHUP received: reloading the configuration");
                // The file again, and the flags and variables the process
                // was started with (they still win over the file).
                gateway.reload(|| args.load());
            }
            Some(()) = reopen.recv() => {
                info!("SIGUSR1 received: reopening the access log");
                gateway.reopen_access_log();
            }
        }
    }
    info!("signal received: stopping gracefully");
    gateway.shutdown();
    gateway.wait().await;
    ExitCode::SUCCESS
}

/// Yields once per SIGHUP: reload, as nginx does.
fn reload_signal() -> tokio::sync::mpsc::Receiver<()> {
    #[cfg(unix)]
    return each_signal(tokio::signal::unix::SignalKind::hangup(), "SIGHUP");
    #[cfg(not(unix))]
    return tokio::sync::mpsc::channel(1).1;
}

/// Yields once per SIGUSR1: reopen the access log file, as nginx does
/// (logrotate's `postrotate` sends it).
fn reopen_signal() -> tokio::sync::mpsc::Receiver<()> {
    #[cfg(unix)]
    return each_signal(tokio::signal::unix::SignalKind::user_defined1(), "SIGUSR1");
    #[cfg(not(unix))]
    return tokio::sync::mpsc::channel(1).1;
}

/// Yields once per `kind` of signal, one pending at most (the next
/// reload or reopen does it all). Installed before the gateway starts, so
/// an early signal does not kill it (the default action of both).
#[cfg(unix)]
fn each_signal(
    kind: tokio::signal::unix::SignalKind,
    name: &str,
) -> tokio::sync::mpsc::Receiver<()> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut signals = tokio::signal::unix::signal(kind)
        .unwrap_or_else(|e| panic!("cannot install a {name} handler: {e}"));
    tokio::spawn(async move {
        while signals.recv().await.is_some() {
            let _ = tx.try_send(());
        }
    });
    rx
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is
/// called, not when it is first awaited: a signal that arrives while the
/// gateway starts is not lost to the default action (exit by signal).
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("cannot install a SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("cannot install a SIGINT handler");
        async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
