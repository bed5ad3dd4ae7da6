//! Command-line flags; each has a `FLASHGATE_*` environment variable.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{DefaultQueue, GlobalSettings, Overrides, QueueSettings};

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
    Admin(crate::admin::AdminArgs),
}

/// The `serve` flags (SPEC §2). Absent flags leave the file's value.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// TOML config file.
    #[arg(long, env = "FLASHGATE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Public listener [default: 0.0.0.0:8080].
    #[arg(long, env = "FLASHGATE_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// Admin listener: metrics, health, admin API [default: 127.0.0.1:9464].
    #[arg(long, env = "FLASHGATE_ADMIN_LISTEN", value_name = "ADDR")]
    pub admin_listen: Option<String>,
    /// Base URL of the order service.
    #[arg(long, env = "FLASHGATE_UPSTREAM", value_name = "URL")]
    pub upstream: Option<String>,
    /// redis:// or rediss:// URL (redis+cluster://host:port,host:port for a cluster); absent = embedded in-process queue.
    #[arg(long, env = "FLASHGATE_REDIS_URL", value_name = "URL")]
    pub redis_url: Option<String>,
    /// Prefix of every Redis key [default: flashgate].
    #[arg(long, env = "FLASHGATE_REDIS_PREFIX", value_name = "PREFIX")]
    pub redis_prefix: Option<String>,
    /// This instance's stable consumer name [default: hostname:port].
    #[arg(long, env = "FLASHGATE_CONSUMER", value_name = "NAME")]
    pub consumer: Option<String>,
    /// A queued route, "METHOD /path" (repeatable) [default: POST /checkout].
    #[arg(
        long,
        env = "FLASHGATE_ROUTE",
        value_name = "ROUTE",
        value_delimiter = ','
    )]
    pub route: Vec<String>,
    /// Queue name used in keys, labels and tickets [default: checkout].
    #[arg(long, env = "FLASHGATE_QUEUE", value_name = "NAME")]
    pub queue: Option<String>,
    /// Requests per second sent upstream, across all instances [default: 100].
    #[arg(long, env = "FLASHGATE_DRAIN_RATE", value_name = "N")]
    pub drain_rate: Option<f64>,
    /// Requests that may go out back to back after an idle spell [default: 1].
    #[arg(long, env = "FLASHGATE_DRAIN_BURST", value_name = "N")]
    pub drain_burst: Option<u32>,
    /// Concurrent upstream requests [default: 64].
    #[arg(long, env = "FLASHGATE_MAX_IN_FLIGHT", value_name = "N")]
    pub max_in_flight: Option<u32>,
    /// Queue capacity; admissions beyond it get 503 [default: 1000000].
    #[arg(long, env = "FLASHGATE_MAX_QUEUE", value_name = "N")]
    pub max_queue: Option<u64>,
    /// Match the queued routes' paths ignoring ASCII case, for an upstream
    /// that routes that way (IIS, ASP.NET).
    #[arg(long, env = "FLASHGATE_ROUTE_CASE_INSENSITIVE")]
    pub route_case_insensitive: bool,
    /// Proxy non-queued paths straight to the upstream (else 404).
    #[arg(long, env = "FLASHGATE_PASSTHROUGH")]
    pub passthrough: bool,
    /// Bearer token required on /admin/*.
    #[arg(
        long,
        env = "FLASHGATE_ADMIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
    /// Who a client is: `ip` or `header:NAME` [default: ip].
    #[arg(long, env = "FLASHGATE_CLIENT_KEY", value_name = "KEY")]
    pub client_key: Option<String>,
    /// Largest request body admitted [default: 64KiB].
    #[arg(long, env = "FLASHGATE_MAX_BODY", value_name = "SIZE")]
    pub max_body: Option<String>,
    /// One upstream attempt's deadline [default: 10s].
    #[arg(long, env = "FLASHGATE_UPSTREAM_TIMEOUT", value_name = "DUR")]
    pub upstream_timeout: Option<String>,
    /// Upstream attempts before a ticket fails and is dead-lettered [default: 5].
    #[arg(long, env = "FLASHGATE_MAX_ATTEMPTS", value_name = "N")]
    pub max_attempts: Option<u32>,
    /// Streams the queue is spread over, for a Redis Cluster (needs --redis-url) [default: 1].
    #[arg(long, env = "FLASHGATE_PARTITIONS", value_name = "N")]
    pub partitions: Option<u32>,
    /// Adjust the drain rate from the upstream's latency and overload answers,
    /// between --adaptive-floor and --adaptive-ceiling, starting at --drain-rate.
    #[arg(long, env = "FLASHGATE_ADAPTIVE")]
    pub adaptive: bool,
    /// Lowest adaptive drain rate [default: a twentieth of the ceiling].
    #[arg(long, env = "FLASHGATE_ADAPTIVE_FLOOR", value_name = "PER_SEC")]
    pub adaptive_floor: Option<f64>,
    /// Highest adaptive drain rate, across all instances [default: --drain-rate].
    #[arg(long, env = "FLASHGATE_ADAPTIVE_CEILING", value_name = "PER_SEC")]
    pub adaptive_ceiling: Option<f64>,
    /// Time a client has to send its request headers [default: 10s].
    #[arg(long, env = "FLASHGATE_HEADER_TIMEOUT", value_name = "DUR")]
    pub header_timeout: Option<String>,
    /// Largest request head [default: 16KiB].
    #[arg(long, env = "FLASHGATE_MAX_HEADER_SIZE", value_name = "SIZE")]
    pub max_header_size: Option<String>,
    /// Time a client has to send its body once its head is in; 408 after [default: 10s].
    #[arg(long, env = "FLASHGATE_BODY_TIMEOUT", value_name = "DUR")]
    pub body_timeout: Option<String>,
    /// Open public connections; beyond it new ones get 503 and are closed [default: 10000].
    #[arg(long, env = "FLASHGATE_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<u32>,
    /// Longest `Prefer: wait` an admission is held for, 0 = never [default: 10s].
    #[arg(long, env = "FLASHGATE_MAX_WAIT", value_name = "DUR")]
    pub max_wait: Option<String>,
    /// Browser origins allowed by CORS, comma-separated, or `*` [default: none].
    #[arg(
        long,
        env = "FLASHGATE_CORS_ORIGINS",
        value_name = "ORIGINS",
        value_delimiter = ','
    )]
    pub cors_origins: Vec<String>,
    /// Secret for ticket MACs, at least 32 bytes [default: shared through Redis, or random per process].
    #[arg(
        long,
        env = "FLASHGATE_TICKET_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub ticket_secret: Option<String>,
    /// How long ticket state is kept [default: 24h].
    #[arg(long, env = "FLASHGATE_TICKET_TTL", value_name = "DUR")]
    pub ticket_ttl: Option<String>,
    /// How long shutdown waits for in-flight upstream requests [default: 30s].
    #[arg(long, env = "FLASHGATE_SHUTDOWN_GRACE", value_name = "DUR")]
    pub shutdown_grace: Option<String>,
    /// Take over entries another instance left unfinished this long [default: 60s].
    #[arg(long, env = "FLASHGATE_CLAIM_IDLE", value_name = "DUR")]
    pub claim_idle: Option<String>,
    /// Admissions per second per client; 0 = off [default: 0].
    #[arg(long, env = "FLASHGATE_CLIENT_RATE", value_name = "N")]
    pub client_rate: Option<f64>,
    /// Admissions a client may make back to back [default: 1].
    #[arg(long, env = "FLASHGATE_CLIENT_BURST", value_name = "N")]
    pub client_burst: Option<u32>,
    /// Peers whose X-Forwarded-For is believed, comma-separated CIDRs [default: none].
    #[arg(
        long,
        env = "FLASHGATE_TRUSTED_PROXIES",
        value_name = "CIDRS",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<String>,
    /// Admissions allowed in total for the queue, then 410 sold_out [default: unlimited].
    #[arg(long, env = "FLASHGATE_STOCK", value_name = "N")]
    pub stock: Option<u64>,
    /// RFC 3339 time the sale opens; before it admissions get 503 sale_not_open.
    #[arg(long, env = "FLASHGATE_OPENS_AT", value_name = "TIME")]
    pub opens_at: Option<String>,
    /// RFC 3339 time the sale closes; after it admissions get 410 sale_closed.
    #[arg(long, env = "FLASHGATE_CLOSES_AT", value_name = "TIME")]
    pub closes_at: Option<String>,
    /// Upstream statuses that mean sold out, comma-separated (e.g. 409,410) [default: none].
    #[arg(
        long,
        env = "FLASHGATE_SOLD_OUT_STATUSES",
        value_name = "CODES",
        value_delimiter = ','
    )]
    pub sold_out_statuses: Vec<u16>,
}

impl ServeArgs {
    /// The flags and env vars that were set, as config overrides.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            global: GlobalSettings {
                listen: self.listen.clone(),
                admin_listen: self.admin_listen.clone(),
                redis_url: self.redis_url.clone(),
                redis_prefix: self.redis_prefix.clone(),
                consumer: self.consumer.clone(),
                passthrough: self.passthrough.then_some(true),
                admin_token: self.admin_token.clone(),
                client_key: self.client_key.clone(),
                max_body: self.max_body.clone(),
                header_timeout: self.header_timeout.clone(),
                max_header_size: self.max_header_size.clone(),
                body_timeout: self.body_timeout.clone(),
                max_connections: self.max_connections,
                max_wait: self.max_wait.clone(),
                cors_origins: (!self.cors_origins.is_empty()).then(|| self.cors_origins.clone()),
                ticket_secret: self.ticket_secret.clone(),
                ticket_ttl: self.ticket_ttl.clone(),
                shutdown_grace: self.shutdown_grace.clone(),
                claim_idle: self.claim_idle.clone(),
                client_rate: self.client_rate,
                client_burst: self.client_burst,
                trusted_proxies: (!self.trusted_proxies.is_empty())
                    .then(|| self.trusted_proxies.clone()),
            },
            default_queue: DefaultQueue {
                queue: self.queue.clone(),
                route: (!self.route.is_empty()).then(|| self.route.clone()),
            },
            queue: QueueSettings {
                upstream: self.upstream.clone(),
                drain_rate: self.drain_rate,
                drain_burst: self.drain_burst,
                max_in_flight: self.max_in_flight,
                max_queue: self.max_queue,
                upstream_timeout: self.upstream_timeout.clone(),
                max_attempts: self.max_attempts,
                partitions: self.partitions,
                adaptive: self.adaptive.then_some(true),
                adaptive_floor: self.adaptive_floor,
                adaptive_ceiling: self.adaptive_ceiling,
                route_case_insensitive: self.route_case_insensitive.then_some(true),
                stock: self.stock,
                opens_at: self.opens_at.clone(),
                closes_at: self.closes_at.clone(),
                prequeue_from: None,
                sold_out_statuses: (!self.sold_out_statuses.is_empty())
                    .then(|| self.sold_out_statuses.clone()),
                sold_out_body: None,
            },
        }
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
