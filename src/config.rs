//! The configuration tree: defaults, the TOML file and command-line/env
//! overrides merged into one validated [`Config`].
//!
//! Precedence is flag > env > file > default. Flags and env vars are merged by
//! clap into [`Overrides`]; an explicitly set queue flag (e.g. `--drain-rate`)
//! applies to every queue, the file's top-level queue keys are defaults for the
//! `[[queue]]` tables that do not set them.

mod units;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

pub use units::{parse_duration, parse_size, redact_url, Size};

/// Why a configuration was refused. The message always names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("invalid value for `{key}`: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// The effective configuration of one gateway process.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// Public listener address.
    pub listen: SocketAddr,
    /// Admin listener address (metrics, health, admin API).
    pub admin_listen: SocketAddr,
    /// Redis URL; `None` selects the embedded in-process queue.
    #[serde(serialize_with = "units::ser_redacted_url")]
    pub redis_url: Option<String>,
    /// Prefix of every Redis key.
    pub redis_prefix: String,
    /// Stable consumer name of this instance in the stream's consumer group.
    pub consumer: String,
    /// Proxy non-queued paths to the default upstream (else 404).
    pub passthrough: bool,
    /// Base URL used for passthrough and by queues that set none.
    #[serde(serialize_with = "units::ser_redacted_url")]
    pub upstream: Option<String>,
    /// Bearer token required on `/admin/*`.
    #[serde(serialize_with = "units::ser_secret")]
    pub admin_token: Option<String>,
    /// Who a client is: socket peer IP or a request header.
    pub client_key: ClientKey,
    /// Admissions per second per client; 0 = no per-client limit.
    pub client_rate: f64,
    /// Admissions a client may make back to back.
    pub client_burst: u32,
    /// Peers whose `X-Forwarded-For` is believed.
    #[serde(serialize_with = "units::ser_display_list")]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Largest request body admitted.
    pub max_body: Size,
    /// Time a client has to send its request head.
    #[serde(with = "units::duration")]
    pub header_timeout: Duration,
    /// Largest request head.
    pub max_header_size: Size,
    /// Time a client has to send its whole body once its head is in (408 after).
    #[serde(with = "units::duration")]
    pub body_timeout: Duration,
    /// Open public connections; beyond it new ones get a fast 503 and are closed.
    pub max_connections: u32,
    /// Longest `Prefer: wait` an admission is held for (0 = never held).
    #[serde(with = "units::duration")]
    pub max_wait: Duration,
    /// Browser origins allowed to call the public API (`*` = any); empty = no CORS.
    pub cors_origins: Vec<String>,
    /// Secret that ticket MACs derive from; `None` = shared through Redis or,
    /// with the embedded queue, random per process.
    #[serde(serialize_with = "units::ser_secret")]
    pub ticket_secret: Option<String>,
    /// How long ticket state is kept after its last change.
    #[serde(with = "units::duration")]
    pub ticket_ttl: Duration,
    /// How long shutdown waits for in-flight upstream requests.
    #[serde(with = "units::duration")]
    pub shutdown_grace: Duration,
    /// Entries another instance left unfinished this long are taken over.
    #[serde(with = "units::duration")]
    pub claim_idle: Duration,
    /// The queues, each with its routes, upstream and limits.
    pub queue: Vec<QueueConfig>,
}

/// One queue: its routes, upstream and drain limits.
#[derive(Debug, Clone, Serialize)]
pub struct QueueConfig {
    /// Name used in keys, labels and tickets.
    pub name: String,
    /// Queued routes, `"METHOD /path"`.
    pub routes: Vec<Route>,
    /// Match the routes' paths ignoring ASCII case, for an upstream that
    /// routes that way (IIS, ASP.NET); default false (RFC 3986: case matters).
    pub route_case_insensitive: bool,
    /// Base URL of the order service.
    #[serde(serialize_with = "units::ser_redacted_url_str")]
    pub upstream: String,
    /// Requests per second sent upstream.
    pub drain_rate: f64,
    /// Requests that may go out back to back after an idle spell.
    pub drain_burst: u32,
    /// Concurrent upstream requests.
    pub max_in_flight: u32,
    /// Queue capacity; admissions beyond it get 503.
    pub max_queue: u64,
    /// One upstream attempt's deadline.
    #[serde(with = "units::duration")]
    pub upstream_timeout: Duration,
    /// Upstream attempts before a ticket fails and is dead-lettered.
    pub max_attempts: u32,
    /// Admissions allowed in total (then 410 sold_out); `None` = unlimited.
    pub stock: Option<u64>,
    /// When the sale opens; before it admissions get 503 sale_not_open.
    #[serde(with = "units::time")]
    pub opens_at: Option<SystemTime>,
    /// When the sale closes; after it admissions get 410 sale_closed.
    #[serde(with = "units::time")]
    pub closes_at: Option<SystemTime>,
    /// Start of the pre-queue window before `opens_at`: early arrivals are
    /// admitted, and served in random order once the sale opens.
    #[serde(with = "units::time")]
    pub prequeue_from: Option<SystemTime>,
    /// Upstream statuses that mean "sold out" and flip the queue to sold out.
    pub sold_out_statuses: Vec<u16>,
    /// If set, a sold-out status counts only when the body contains this.
    pub sold_out_body: Option<String>,
    /// Streams the queue is spread over (Redis only; `{name:i}` hash tags,
    /// so a cluster puts them on different shards).
    pub partitions: u32,
    /// Bounds of the adaptive drain, when on: the rate then follows the
    /// upstream's health between them, starting from `drain_rate`.
    pub adaptive: Option<AdaptiveBounds>,
}

/// Where the adaptive drain may take a queue's rate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct AdaptiveBounds {
    pub floor: f64,
    pub ceiling: f64,
}

/// A queued route: a method and a path in normal form (module `path`); a
/// request matches it whatever its query, `;` parameters or trailing slash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub method: http::Method,
    pub path: String,
}

impl std::str::FromStr for Route {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (method, path) = s
            .trim()
            .split_once(char::is_whitespace)
            .ok_or_else(|| format!("`{s}` is not \"METHOD /path\""))?;
        let method = http::Method::from_bytes(method.as_bytes())
            .map_err(|_| format!("`{method}` is not an HTTP method"))?;
        let path = path.trim();
        if !path.starts_with('/') || path.contains('?') || path.contains(char::is_whitespace) {
            return Err(format!(
                "`{path}` must be an absolute path without query or spaces"
            ));
        }
        Ok(Route {
            method,
            path: crate::path::route_path(path)?,
        })
    }
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.method, self.path)
    }
}

impl Serialize for Route {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// How a client is identified for idempotency and per-client limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientKey {
    /// The socket peer's IP address.
    Ip,
    /// The value of a request header (lower-cased name).
    Header(http::HeaderName),
}

impl std::str::FromStr for ClientKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "ip" {
            return Ok(ClientKey::Ip);
        }
        match s.strip_prefix("header:") {
            Some(name) => http::HeaderName::from_bytes(name.trim().as_bytes())
                .map(ClientKey::Header)
                .map_err(|_| format!("`{name}` is not a header name")),
            None => Err(format!("`{s}` is neither `ip` nor `header:NAME`")),
        }
    }
}

impl Serialize for ClientKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ClientKey::Ip => s.serialize_str("ip"),
            ClientKey::Header(h) => s.collect_str(&format_args!("header:{h}")),
        }
    }
}

/// Settings that apply to every queue unless a `[[queue]]` table sets its own.
/// Field names are the flag names with `_` for `-`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSettings {
    /// Base URL of the order service (required somewhere).
    pub upstream: Option<String>,
    /// Requests per second sent upstream, across all instances (default 100).
    pub drain_rate: Option<f64>,
    /// Back-to-back requests after an idle spell (default 1).
    pub drain_burst: Option<u32>,
    /// Concurrent upstream requests (default 64).
    pub max_in_flight: Option<u32>,
    /// Queue capacity (default 1000000).
    pub max_queue: Option<u64>,
    /// One upstream attempt's deadline, e.g. "10s" (default 10s).
    pub upstream_timeout: Option<String>,
    /// Upstream attempts before a ticket fails (default 5).
    pub max_attempts: Option<u32>,
    /// Admissions allowed in total; absent = unlimited.
    pub stock: Option<u64>,
    /// RFC 3339 time the sale opens (default: open).
    pub opens_at: Option<String>,
    /// RFC 3339 time the sale closes (default: never).
    pub closes_at: Option<String>,
    /// RFC 3339 start of the pre-queue window before `opens_at`.
    pub prequeue_from: Option<String>,
    /// Upstream statuses meaning sold out, e.g. [409, 410] (default none).
    pub sold_out_statuses: Option<Vec<u16>>,
    /// Body text a sold-out answer must contain (default: any body).
    pub sold_out_body: Option<String>,
    /// Streams the queue is spread over, for a Redis Cluster (default 1).
    pub partitions: Option<u32>,
    /// Adjust the drain rate from the upstream's health (default false).
    pub adaptive: Option<bool>,
    /// Lowest adaptive rate (default: a twentieth of the ceiling).
    pub adaptive_floor: Option<f64>,
    /// Highest adaptive rate (default: drain_rate).
    pub adaptive_ceiling: Option<f64>,
    /// Match routes ignoring ASCII case (default false).
    pub route_case_insensitive: Option<bool>,
}

impl QueueSettings {
    /// `self` where set, else `fallback`.
    fn or(&self, fallback: &QueueSettings) -> QueueSettings {
        QueueSettings {
            upstream: pick(&self.upstream, &fallback.upstream),
            drain_rate: self.drain_rate.or(fallback.drain_rate),
            drain_burst: self.drain_burst.or(fallback.drain_burst),
            max_in_flight: self.max_in_flight.or(fallback.max_in_flight),
            max_queue: self.max_queue.or(fallback.max_queue),
            upstream_timeout: pick(&self.upstream_timeout, &fallback.upstream_timeout),
            max_attempts: self.max_attempts.or(fallback.max_attempts),
            stock: self.stock.or(fallback.stock),
            opens_at: pick(&self.opens_at, &fallback.opens_at),
            closes_at: pick(&self.closes_at, &fallback.closes_at),
            prequeue_from: pick(&self.prequeue_from, &fallback.prequeue_from),
            sold_out_statuses: pick(&self.sold_out_statuses, &fallback.sold_out_statuses),
            sold_out_body: pick(&self.sold_out_body, &fallback.sold_out_body),
            partitions: self.partitions.or(fallback.partitions),
            adaptive: self.adaptive.or(fallback.adaptive),
            adaptive_floor: self.adaptive_floor.or(fallback.adaptive_floor),
            adaptive_ceiling: self.adaptive_ceiling.or(fallback.adaptive_ceiling),
            route_case_insensitive: self
                .route_case_insensitive
                .or(fallback.route_case_insensitive),
        }
    }
}

/// Process-wide settings; field names are the flag names with `_` for `-`.
#[derive(Debug, Clone, Default)]
pub struct GlobalSettings {
    /// Public listener (default 0.0.0.0:8080).
    pub listen: Option<String>,
    /// Admin listener (default 127.0.0.1:9464).
    pub admin_listen: Option<String>,
    /// `redis://` or `rediss://` URL; absent = embedded queue.
    pub redis_url: Option<String>,
    /// Redis key prefix (default "flashgate").
    pub redis_prefix: Option<String>,
    /// Consumer name in the stream group (default hostname:port of `listen`).
    pub consumer: Option<String>,
    /// Proxy non-queued paths to the upstream (default false).
    pub passthrough: Option<bool>,
    /// Bearer token for `/admin/*` (default none).
    pub admin_token: Option<String>,
    /// `ip` or `header:NAME` (default ip).
    pub client_key: Option<String>,
    /// Admissions per second per client; 0 = off (default 0).
    pub client_rate: Option<f64>,
    /// Per-client burst (default 1).
    pub client_burst: Option<u32>,
    /// CIDRs whose X-Forwarded-For is believed (default none).
    pub trusted_proxies: Option<Vec<String>>,
    /// Largest request body, e.g. "64KiB" (default 64KiB).
    pub max_body: Option<String>,
    /// Time to send the request head (default 10s).
    pub header_timeout: Option<String>,
    /// Largest request head (default 16KiB).
    pub max_header_size: Option<String>,
    /// Time to send the body once the head is in, else 408 (default 10s).
    pub body_timeout: Option<String>,
    /// Open public connections (default 10000).
    pub max_connections: Option<u32>,
    /// Longest `Prefer: wait` honoured on an admission (default 10s; 0 = never).
    pub max_wait: Option<String>,
    /// Origins allowed by CORS, e.g. ["https://shop.example"] or ["*"] (default none).
    pub cors_origins: Option<Vec<String>>,
    /// Secret for ticket MACs, at least 32 bytes (default: shared through
    /// Redis, or random per process with the embedded queue).
    pub ticket_secret: Option<String>,
    /// Ticket state lifetime (default 24h).
    pub ticket_ttl: Option<String>,
    /// Shutdown grace period (default 30s).
    pub shutdown_grace: Option<String>,
    /// Idle time after which another instance's unfinished entries are
    /// taken over (default 60s).
    pub claim_idle: Option<String>,
}

/// The single-queue keys (the `--queue` and `--route` flags).
#[derive(Debug, Clone, Default)]
pub struct DefaultQueue {
    /// Queue name when no `[[queue]]` table is given (default "checkout").
    pub queue: Option<String>,
    /// Queued routes when no `[[queue]]` table is given (default "POST /checkout").
    pub route: Option<Vec<String>>,
}

/// A `[[queue]]` table of the config file: a name, routes, and any queue
/// setting (the top-level value is used for those it does not set).
#[derive(Debug, Clone)]
pub struct QueueTable {
    /// Queue name (required).
    pub name: String,
    /// Queued routes, `"METHOD /path"` (required).
    pub routes: Vec<String>,
    pub settings: QueueSettings,
}

impl QueueTable {
    fn parse(i: usize, value: toml::Value) -> Result<Self, String> {
        let toml::Value::Table(mut table) = value else {
            return Err(format!("queue[{i}] must be a table"));
        };
        let mut take = |key: &str| {
            table
                .remove(key)
                .ok_or_else(|| format!("queue[{i}]: missing key `{key}`"))
        };
        let name = match take("name")? {
            toml::Value::String(name) => name,
            _ => return Err(format!("queue[{i}].name must be a string")),
        };
        let routes = Vec::<String>::deserialize(take("routes")?)
            .map_err(|e| format!("queue[{i}].routes: {}", e.message()))?;
        // What is left must be queue settings; unknown keys are named.
        let settings = QueueSettings::deserialize(toml::Value::Table(table))
            .map_err(|e| format!("queue[{i}] ({name}): {}", e.message()))?;
        Ok(QueueTable {
            name,
            routes,
            settings,
        })
    }
}

/// The TOML file as written: every flag as a top-level key, plus `[[queue]]`
/// tables. Unknown keys are an error that names the key.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    listen: Option<String>,
    admin_listen: Option<String>,
    redis_url: Option<String>,
    redis_prefix: Option<String>,
    consumer: Option<String>,
    passthrough: Option<bool>,
    admin_token: Option<String>,
    client_key: Option<String>,
    client_rate: Option<f64>,
    client_burst: Option<u32>,
    trusted_proxies: Option<Vec<String>>,
    max_body: Option<String>,
    header_timeout: Option<String>,
    max_header_size: Option<String>,
    body_timeout: Option<String>,
    max_connections: Option<u32>,
    max_wait: Option<String>,
    cors_origins: Option<Vec<String>>,
    ticket_secret: Option<String>,
    ticket_ttl: Option<String>,
    shutdown_grace: Option<String>,
    claim_idle: Option<String>,
    /// Either the queue name (`queue = "checkout"`) or `[[queue]]` tables.
    queue: Option<toml::Value>,
    route: Option<Vec<String>>,
    upstream: Option<String>,
    drain_rate: Option<f64>,
    drain_burst: Option<u32>,
    max_in_flight: Option<u32>,
    max_queue: Option<u64>,
    upstream_timeout: Option<String>,
    max_attempts: Option<u32>,
    stock: Option<u64>,
    opens_at: Option<String>,
    closes_at: Option<String>,
    prequeue_from: Option<String>,
    sold_out_statuses: Option<Vec<u16>>,
    sold_out_body: Option<String>,
    partitions: Option<u32>,
    adaptive: Option<bool>,
    adaptive_floor: Option<f64>,
    adaptive_ceiling: Option<f64>,
    route_case_insensitive: Option<bool>,
}

/// A parsed config file, every key optional.
#[derive(Debug, Clone, Default)]
pub struct FileConfig {
    pub global: GlobalSettings,
    pub default_queue: DefaultQueue,
    pub queue_defaults: QueueSettings,
    /// Several queues, each with its own routes, upstream and limits.
    pub queue: Vec<QueueTable>,
}

impl FileConfig {
    /// Reads and parses a TOML config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.display().to_string(),
            message,
        })
    }

    /// Parses TOML text; unknown keys are an error naming the key.
    pub fn parse(text: &str) -> Result<Self, String> {
        let raw: RawFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let (name, tables) = match raw.queue {
            None => (None, Vec::new()),
            Some(toml::Value::String(name)) => (Some(name), Vec::new()),
            Some(toml::Value::Array(values)) => {
                let tables = values
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| QueueTable::parse(i, v))
                    .collect::<Result<Vec<_>, _>>()?;
                (None, tables)
            }
            Some(_) => {
                return Err("`queue` must be a name or [[queue]] tables".into());
            }
        };
        Ok(FileConfig {
            global: GlobalSettings {
                listen: raw.listen,
                admin_listen: raw.admin_listen,
                redis_url: raw.redis_url,
                redis_prefix: raw.redis_prefix,
                consumer: raw.consumer,
                passthrough: raw.passthrough,
                admin_token: raw.admin_token,
                client_key: raw.client_key,
                client_rate: raw.client_rate,
                client_burst: raw.client_burst,
                trusted_proxies: raw.trusted_proxies,
                max_body: raw.max_body,
                header_timeout: raw.header_timeout,
                max_header_size: raw.max_header_size,
                body_timeout: raw.body_timeout,
                max_connections: raw.max_connections,
                max_wait: raw.max_wait,
                cors_origins: raw.cors_origins,
                ticket_secret: raw.ticket_secret,
                ticket_ttl: raw.ticket_ttl,
                shutdown_grace: raw.shutdown_grace,
                claim_idle: raw.claim_idle,
            },
            default_queue: DefaultQueue {
                queue: name,
                route: raw.route,
            },
            queue_defaults: QueueSettings {
                upstream: raw.upstream,
                drain_rate: raw.drain_rate,
                drain_burst: raw.drain_burst,
                max_in_flight: raw.max_in_flight,
                max_queue: raw.max_queue,
                upstream_timeout: raw.upstream_timeout,
                max_attempts: raw.max_attempts,
                stock: raw.stock,
                opens_at: raw.opens_at,
                closes_at: raw.closes_at,
                prequeue_from: raw.prequeue_from,
                sold_out_statuses: raw.sold_out_statuses,
                sold_out_body: raw.sold_out_body,
                partitions: raw.partitions,
                adaptive: raw.adaptive,
                adaptive_floor: raw.adaptive_floor,
                adaptive_ceiling: raw.adaptive_ceiling,
                route_case_insensitive: raw.route_case_insensitive,
            },
            queue: tables,
        })
    }
}

/// Values set by flags or env vars; they win over the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub global: GlobalSettings,
    pub default_queue: DefaultQueue,
    pub queue: QueueSettings,
}

fn pick<T: Clone>(over: &Option<T>, file: &Option<T>) -> Option<T> {
    over.clone().or_else(|| file.clone())
}

impl Config {
    /// Merges overrides over the file over the defaults, then validates.
    pub fn resolve(file: FileConfig, over: Overrides) -> Result<Config, ConfigError> {
        let g = &over.global;
        let f = &file.global;
        let listen: SocketAddr = parse_addr(
            "listen",
            &pick(&g.listen, &f.listen).unwrap_or_else(|| "0.0.0.0:8080".into()),
        )?;
        let admin_listen = parse_addr(
            "admin_listen",
            &pick(&g.admin_listen, &f.admin_listen).unwrap_or_else(|| "127.0.0.1:9464".into()),
        )?;
        let redis_url = pick(&g.redis_url, &f.redis_url).filter(|u| !u.is_empty());
        if let Some(url) = &redis_url {
            let schemes = [
                "redis://",
                "rediss://",
                "redis+cluster://",
                "rediss+cluster://",
            ];
            if !schemes.iter().any(|s| url.starts_with(s)) {
                return Err(ConfigError::invalid(
                    "redis_url",
                    "must start with redis://, rediss:// or, for a cluster, redis+cluster://",
                ));
            }
            if crate::queue::Endpoint::parse(url).is_err() {
                return Err(ConfigError::invalid(
                    "redis_url",
                    "is not a valid address (host, port, database)",
                ));
            }
        }
        let redis_prefix =
            pick(&g.redis_prefix, &f.redis_prefix).unwrap_or_else(|| "flashgate".into());
        if redis_prefix.is_empty() || redis_prefix.contains(['{', '}']) {
            return Err(ConfigError::invalid(
                "redis_prefix",
                "must be non-empty and contain no braces",
            ));
        }
        let consumer = pick(&g.consumer, &f.consumer)
            .unwrap_or_else(|| format!("{}:{}", hostname(), listen.port()));
        let client_key = pick(&g.client_key, &f.client_key)
            .unwrap_or_else(|| "ip".into())
            .parse()
            .map_err(|m| ConfigError::invalid("client_key", m))?;
        let size = |key: &str, over: &Option<String>, file: &Option<String>, default: &str| {
            parse_size(&pick(over, file).unwrap_or_else(|| default.into()))
                .map_err(|m| ConfigError::invalid(key, m))
        };
        let dur = |key: &str, over: &Option<String>, file: &Option<String>, default: &str| {
            parse_duration(&pick(over, file).unwrap_or_else(|| default.into()))
                .map_err(|m| ConfigError::invalid(key, m))
        };
        let max_body = size("max_body", &g.max_body, &f.max_body, "64KiB")?;
        let max_header_size = size(
            "max_header_size",
            &g.max_header_size,
            &f.max_header_size,
            "16KiB",
        )?;
        if max_header_size.0 < 1024 {
            return Err(ConfigError::invalid(
                "max_header_size",
                "must be at least 1KiB",
            ));
        }
        let header_timeout = dur(
            "header_timeout",
            &g.header_timeout,
            &f.header_timeout,
            "10s",
        )?;
        let body_timeout = dur("body_timeout", &g.body_timeout, &f.body_timeout, "10s")?;
        if body_timeout.is_zero() {
            return Err(ConfigError::invalid("body_timeout", "must be > 0"));
        }
        let max_connections = pick(&g.max_connections, &f.max_connections).unwrap_or(10_000);
        if max_connections == 0 {
            return Err(ConfigError::invalid(
                "max_connections",
                "must be at least 1",
            ));
        }
        let max_wait = dur("max_wait", &g.max_wait, &f.max_wait, "10s")?;
        if max_wait > Duration::from_secs(60) {
            return Err(ConfigError::invalid("max_wait", "must be at most 60s"));
        }
        let cors_origins = pick(&g.cors_origins, &f.cors_origins)
            .unwrap_or_default()
            .iter()
            .flat_map(|s| s.split(','))
            .map(|s| s.trim().trim_end_matches('/').to_string())
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>();
        if let Some(bad) = cors_origins
            .iter()
            .find(|o| *o != "*" && !(o.starts_with("http://") || o.starts_with("https://")))
        {
            return Err(ConfigError::invalid(
                "cors_origins",
                format!("`{bad}` is not an origin: expected `*` or scheme://host[:port]"),
            ));
        }
        let ticket_secret = pick(&g.ticket_secret, &f.ticket_secret).filter(|s| !s.is_empty());
        if ticket_secret
            .as_ref()
            .is_some_and(|s| s.len() < crate::ticket::MIN_SECRET_LEN)
        {
            return Err(ConfigError::invalid(
                "ticket_secret",
                format!(
                    "must be at least {} bytes (e.g. `openssl rand -base64 32`)",
                    crate::ticket::MIN_SECRET_LEN
                ),
            ));
        }
        let ticket_ttl = dur("ticket_ttl", &g.ticket_ttl, &f.ticket_ttl, "24h")?;
        if ticket_ttl < Duration::from_secs(1) {
            return Err(ConfigError::invalid("ticket_ttl", "must be at least 1s"));
        }
        let shutdown_grace = dur(
            "shutdown_grace",
            &g.shutdown_grace,
            &f.shutdown_grace,
            "30s",
        )?;
        let client_rate = pick(&g.client_rate, &f.client_rate).unwrap_or(0.0);
        if !(client_rate.is_finite() && client_rate >= 0.0) {
            return Err(ConfigError::invalid(
                "client_rate",
                "must be >= 0 (0 = off)",
            ));
        }
        let client_burst = pick(&g.client_burst, &f.client_burst).unwrap_or(1);
        if client_burst == 0 {
            return Err(ConfigError::invalid("client_burst", "must be at least 1"));
        }
        let trusted_proxies = pick(&g.trusted_proxies, &f.trusted_proxies)
            .unwrap_or_default()
            .iter()
            .flat_map(|s| s.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(units::parse_cidr)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|m| ConfigError::invalid("trusted_proxies", m))?;
        let claim_idle = dur("claim_idle", &g.claim_idle, &f.claim_idle, "60s")?;
        if claim_idle < Duration::from_secs(1) {
            return Err(ConfigError::invalid("claim_idle", "must be at least 1s"));
        }
        let admin_token = pick(&g.admin_token, &f.admin_token).filter(|t| !t.is_empty());
        let top_upstream = pick(&over.queue.upstream, &file.queue_defaults.upstream);

        // The queues: the `[[queue]]` tables, or one queue from the flat keys.
        let tables = if file.queue.is_empty() {
            let name = pick(&over.default_queue.queue, &file.default_queue.queue)
                .unwrap_or_else(|| "checkout".into());
            let routes = pick(&over.default_queue.route, &file.default_queue.route)
                .unwrap_or_else(|| vec!["POST /checkout".into()]);
            vec![QueueTable {
                name,
                routes,
                settings: QueueSettings::default(),
            }]
        } else {
            if over.default_queue.queue.is_some() || over.default_queue.route.is_some() {
                return Err(ConfigError::invalid(
                    "queue",
                    "--queue/--route cannot be combined with [[queue]] tables in the config file",
                ));
            }
            if file.default_queue.queue.is_some() || file.default_queue.route.is_some() {
                return Err(ConfigError::invalid(
                    "queue",
                    "top-level `queue`/`route` cannot be combined with [[queue]] tables",
                ));
            }
            file.queue.clone()
        };
        let mut queues = Vec::with_capacity(tables.len());
        for (i, table) in tables.iter().enumerate() {
            let s = over.queue.or(&table.settings).or(&file.queue_defaults);
            queues.push(QueueConfig::resolve(i, table, s)?);
        }
        for (i, q) in queues.iter().enumerate() {
            if queues[..i].iter().any(|p| p.name == q.name) {
                return Err(ConfigError::invalid(
                    format!("queue[{i}].name"),
                    format!("queue `{}` is declared twice", q.name),
                ));
            }
            for r in &q.routes {
                // Taken when a request could match both queues' routes.
                let taken = queues[..i].iter().any(|p| {
                    let fold = p.route_case_insensitive || q.route_case_insensitive;
                    p.routes
                        .iter()
                        .any(|pr| crate::path::matches(&pr.path, &r.path, fold))
                });
                if taken {
                    return Err(ConfigError::invalid(
                        format!("queue[{i}].routes"),
                        format!("path {} is already queued by another queue", r.path),
                    ));
                }
            }
        }
        if let Some(q) = queues.iter().find(|q| q.partitions > 1) {
            if redis_url.is_none() {
                return Err(ConfigError::invalid(
                    "partitions",
                    format!(
                        "queue `{}` has {} partitions: partitions need redis_url (the embedded queue is one process)",
                        q.name, q.partitions
                    ),
                ));
            }
        }
        let upstream = top_upstream.or_else(|| queues.first().map(|q| q.upstream.clone()));
        Ok(Config {
            listen,
            admin_listen,
            redis_url,
            redis_prefix,
            consumer,
            passthrough: pick(&g.passthrough, &f.passthrough).unwrap_or(false),
            upstream,
            admin_token,
            client_key,
            client_rate,
            client_burst,
            trusted_proxies,
            max_body,
            header_timeout,
            max_header_size,
            body_timeout,
            max_connections,
            max_wait,
            cors_origins,
            ticket_secret,
            ticket_ttl,
            shutdown_grace,
            claim_idle,
            queue: queues,
        })
    }

    /// The effective configuration as TOML, with secrets redacted.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot print config: {e}\n"))
    }
}

impl QueueConfig {
    fn resolve(i: usize, table: &QueueTable, s: QueueSettings) -> Result<Self, ConfigError> {
        let key = |k: &str| format!("queue[{i}].{k}");
        let valid_name = !table.name.is_empty()
            && table.name.len() <= 64
            && table
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid_name {
            return Err(ConfigError::invalid(
                key("name"),
                format!("`{}` must be 1-64 of [A-Za-z0-9_-]", table.name),
            ));
        }
        if table.routes.is_empty() {
            return Err(ConfigError::invalid(key("routes"), "at least one route"));
        }
        let routes = table
            .routes
            .iter()
            .map(|r| r.parse::<Route>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|m| ConfigError::invalid(key("routes"), m))?;
        let upstream = s.upstream.ok_or_else(|| {
            ConfigError::invalid("upstream", "required: the base URL of the order service")
        })?;
        validate_upstream(&upstream).map_err(|m| ConfigError::invalid(key("upstream"), m))?;
        let drain_rate = s.drain_rate.unwrap_or(100.0);
        if !(drain_rate.is_finite() && drain_rate > 0.0 && drain_rate <= 1e6) {
            return Err(ConfigError::invalid(
                key("drain_rate"),
                "must be > 0 and <= 1000000 requests/s",
            ));
        }
        let adaptive = if s.adaptive.unwrap_or(false) {
            let ceiling = s.adaptive_ceiling.unwrap_or(drain_rate);
            let floor = s.adaptive_floor.unwrap_or(ceiling / 20.0);
            let valid = |r: f64| r.is_finite() && r > 0.0 && r <= 1e6;
            if !valid(ceiling) {
                return Err(ConfigError::invalid(
                    key("adaptive_ceiling"),
                    "must be > 0 and <= 1000000 requests/s",
                ));
            }
            if !valid(floor) || floor > ceiling {
                return Err(ConfigError::invalid(
                    key("adaptive_floor"),
                    "must be > 0 and <= adaptive_ceiling",
                ));
            }
            Some(AdaptiveBounds { floor, ceiling })
        } else {
            None
        };
        let positive = |k: &str, v: u32| {
            if v == 0 {
                Err(ConfigError::invalid(key(k), "must be at least 1"))
            } else {
                Ok(v)
            }
        };
        let upstream_timeout = parse_duration(s.upstream_timeout.as_deref().unwrap_or("10s"))
            .map_err(|m| ConfigError::invalid(key("upstream_timeout"), m))?;
        if upstream_timeout.is_zero() {
            return Err(ConfigError::invalid(key("upstream_timeout"), "must be > 0"));
        }
        let time = |k: &str, v: &Option<String>| {
            v.as_deref()
                .map(units::parse_time)
                .transpose()
                .map_err(|m| ConfigError::invalid(key(k), m))
        };
        let opens_at = time("opens_at", &s.opens_at)?;
        let closes_at = time("closes_at", &s.closes_at)?;
        let prequeue_from = time("prequeue_from", &s.prequeue_from)?;
        if let (Some(open), Some(close)) = (opens_at, closes_at) {
            if close <= open {
                return Err(ConfigError::invalid(
                    key("closes_at"),
                    "must be after opens_at",
                ));
            }
        }
        match (prequeue_from, opens_at) {
            (Some(_), None) => {
                return Err(ConfigError::invalid(key("prequeue_from"), "needs opens_at"));
            }
            (Some(pre), Some(open)) if pre >= open => {
                return Err(ConfigError::invalid(
                    key("prequeue_from"),
                    "must be before opens_at",
                ));
            }
            _ => {}
        }
        let sold_out_statuses = s.sold_out_statuses.clone().unwrap_or_default();
        if let Some(bad) = sold_out_statuses.iter().find(|c| !(200..=599).contains(*c)) {
            return Err(ConfigError::invalid(
                key("sold_out_statuses"),
                format!("{bad} is not an HTTP status"),
            ));
        }
        Ok(QueueConfig {
            stock: s.stock,
            opens_at,
            closes_at,
            prequeue_from,
            sold_out_statuses,
            sold_out_body: s.sold_out_body.clone().filter(|b| !b.is_empty()),
            name: table.name.clone(),
            routes,
            route_case_insensitive: s.route_case_insensitive.unwrap_or(false),
            upstream: upstream.trim_end_matches('/').to_string(),
            drain_rate,
            drain_burst: positive("drain_burst", s.drain_burst.unwrap_or(1))?,
            max_in_flight: positive("max_in_flight", s.max_in_flight.unwrap_or(64))?,
            max_queue: s.max_queue.unwrap_or(1_000_000).max(1),
            upstream_timeout,
            max_attempts: positive("max_attempts", s.max_attempts.unwrap_or(5))?,
            partitions: match s.partitions.unwrap_or(1) {
                n @ 1..=256 => n,
                _ => {
                    return Err(ConfigError::invalid(
                        key("partitions"),
                        "must be from 1 to 256",
                    ))
                }
            },
            adaptive,
        })
    }
}

fn validate_upstream(url: &str) -> Result<(), String> {
    // Messages echo the URL without its password: they reach logs.
    let parsed = url.parse::<http::Uri>();
    let shown = redact_url(url);
    let url = shown.as_str();
    let uri = parsed.map_err(|e| format!("`{url}`: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(other) => {
            return Err(format!(
                "scheme `{other}` is not supported (use http:// or https://)"
            ))
        }
        None => return Err(format!("`{url}` needs a scheme, e.g. http://host:port")),
    }
    if uri.host().is_none() {
        return Err(format!("`{url}` has no host"));
    }
    if uri.query().is_some() {
        return Err(format!("`{url}` must not have a query"));
    }
    Ok(())
}

fn parse_addr(key: &str, s: &str) -> Result<SocketAddr, ConfigError> {
    s.parse()
        .map_err(|_| ConfigError::invalid(key, format!("`{s}` is not an IP:port address")))
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "flashgate".into())
}

#[cfg(test)]
mod tests;
