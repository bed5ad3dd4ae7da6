//! Command-line flags; each has a `FLASHGATE_*` environment variable.

pub mod admin;
pub mod client;
pub mod dead_letters;
pub mod events;
pub mod reload;
pub mod stock;
pub mod table;

use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Args, FromArgMatches, Parser, Subcommand, ValueEnum};

use crate::config::{self, Config, ConfigError, Key, Kind, Origin, Scope, Setting};

#[derive(Debug, Parser)]
#[command(
    name = "flashgate",
    version,
    about = "Flash-sale traffic-shaping gateway"
)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// How the process logs, for every subcommand: to stderr, one event a line.
#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log line format: `text` for people, `json` (one object a line) for log pipelines.
    #[arg(
        long,
        global = true,
        env = "FLASHGATE_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    pub log_format: LogFormat,
    /// Least severe level logged. A filter in FLASHGATE_LOG or RUST_LOG
    /// (e.g. `flashgate=debug,info`) wins over this when set.
    #[arg(
        long,
        global = true,
        env = "FLASHGATE_LOG_LEVEL",
        value_enum,
        value_name = "LEVEL",
        default_value_t = LogLevel::Info
    )]
    pub log_level: LogLevel,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (coloured when stderr is a terminal).
    Text,
    /// One JSON object per line: timestamp, level, target, message and fields at the top level.
    Json,
}

impl LogFormat {
    /// The format as written on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// `--log-level`. Per-request lines are `debug`; lifecycle events are `info` and above.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    Off,
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    /// The level as an `EnvFilter` directive.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Off => "off",
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Serve(ServeArgs),
    /// Run the gateway in front of a sample checkout service and send it a burst.
    Demo(DemoArgs),
    /// Validate the configuration and print the effective config.
    CheckConfig(ServeArgs),
    /// Look at and turn a running gateway's knobs (its admin API).
    Admin(crate::cli::admin::AdminArgs),
    /// Make a running gateway reload its configuration (sends it SIGHUP).
    Reload(crate::cli::reload::ReloadArgs),
    /// Print a running gateway's queue events (admitted, dispatched,
    /// completed, ...); `--follow` for new ones as they come.
    Events(crate::cli::events::EventsArgs),
}

/// The `serve` flags (SPEC §2): `--config` and one flag per config key, each
/// with its `FLASHGATE_*` variable, made from the config tree (see
/// `config::keys`). Absent flags leave the file's value.
#[derive(Debug, Clone)]
pub struct ServeArgs {
    /// TOML config file.
    pub config: Option<PathBuf>,
    /// The flags and variables that were set.
    pub settings: Vec<Setting>,
}

impl ServeArgs {
    /// The effective configuration these flags, their variables and the
    /// config file describe.
    pub fn load(&self) -> Result<Config, ConfigError> {
        config::load(self.config.as_deref(), &self.settings)
    }
}

impl Args for ServeArgs {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        let file = Arg::new("config")
            .long("config")
            .env("FLASHGATE_CONFIG")
            .value_name("FILE")
            .value_parser(clap::value_parser!(PathBuf))
            .help("TOML config file");
        let (global, queue): (Vec<_>, Vec<_>) =
            config::keys().iter().partition(|k| k.scope != Scope::Queue);
        cmd.arg(file)
            .args(global.into_iter().map(flag))
            .next_help_heading("Queue (applies to every queue)")
            .args(queue.into_iter().map(flag))
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

/// The flag of a config key. Values are kept as text: the config reads them
/// as the key's type, so a bad one is reported like a bad file value, with
/// the flag or variable it came from.
fn flag(key: &'static Key) -> Arg {
    let arg = Arg::new(key.flag.as_str())
        .long(key.flag.as_str())
        .env(key.env.as_str())
        .value_name(key.value_name.as_str())
        .help(key.help.as_str())
        // `--help` would show a set variable's value: not these.
        .hide_env_values(matches!(
            key.name.as_str(),
            "admin_token" | "ticket_secret" | "redis_url"
        ));
    match key.kind {
        // A switch; `--adaptive=false` and `FLASHGATE_ADAPTIVE=0` also work.
        Kind::Bool => arg
            .num_args(0..=1)
            .require_equals(true)
            .default_missing_value("true"),
        // `--drain-rate -5` is a (bad) value, not an unknown flag.
        Kind::List(_) => arg.action(ArgAction::Append).allow_negative_numbers(true),
        _ => arg.allow_negative_numbers(true),
    }
}

impl FromArgMatches for ServeArgs {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let settings = config::keys()
            .iter()
            .filter_map(|key| {
                let values: Vec<String> = m.get_many::<String>(&key.flag)?.cloned().collect();
                let origin = match m.value_source(&key.flag)? {
                    ValueSource::CommandLine => Origin::Flag(format!("--{}", key.flag)),
                    ValueSource::EnvVariable => Origin::Env(key.env.clone()),
                    _ => return None,
                };
                // An empty variable for a number, boolean or list sets
                // nothing; for a string it is "none" where a key is optional.
                let empty = values.iter().all(String::is_empty);
                if empty && key.kind != Kind::Text && matches!(origin, Origin::Env(_)) {
                    return None;
                }
                Some(Setting {
                    key,
                    values,
                    origin,
                })
            })
            .collect();
        Ok(ServeArgs {
            config: m.get_one::<PathBuf>("config").cloned(),
            settings,
        })
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

/// The `demo` flags.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Use this Redis instead of the embedded queue.
    #[arg(long, env = "FLASHGATE_REDIS_URL", value_name = "URL")]
    pub redis_url: Option<String>,
    /// Public listener of the demo gateway.
    #[arg(long, env = "FLASHGATE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Admin listener of the demo gateway.
    #[arg(long, env = "FLASHGATE_ADMIN_LISTEN", default_value = "127.0.0.1:9464")]
    pub admin_listen: String,
    /// Checkout requests in the burst.
    #[arg(long, default_value_t = 1000)]
    pub requests: u32,
    /// Concurrent connections of the burst.
    #[arg(long, default_value_t = 100)]
    pub concurrency: u32,
    /// Drain rate towards the sample checkout service, requests/s.
    #[arg(long, default_value_t = 200.0)]
    pub drain_rate: f64,
    /// Units the sample checkout service has to sell.
    #[arg(long, default_value_t = 600)]
    pub stock: u32,
    /// Exit after the burst has drained instead of serving on.
    #[arg(long)]
    pub exit: bool,
}
