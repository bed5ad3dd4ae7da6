//! The configuration tree. Each key is declared here once: its field (name and
//! type), its doc comment (meaning, unit, default), its default (the `Default`
//! impls at the end). The serve flags, their `FLASHGATE_*` variables and their
//! help are read from this tree's schema (see `keys.rs`); `check-config` prints
//! it with `Serialize`.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::units::{self, Size};
use super::values::{AccessLog, AdminToken, ClientKey, ProductFrom, Route};

/// The effective configuration of one gateway process.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Public listener address. Default `0.0.0.0:8080`.
    #[serde(deserialize_with = "units::addr")]
    #[schemars(with = "units::Addr")]
    pub listen: SocketAddr,
    /// PEM certificate chain (leaf first) for TLS on the public listener,
    /// with `tls_key`; it then speaks HTTPS (HTTP/2 or HTTP/1.1 by ALPN).
    /// Default: none (plaintext, HTTP/1.1 or h2c).
    #[serde(deserialize_with = "units::non_empty")]
    pub tls_cert: Option<String>,
    /// PEM private key of `tls_cert`. Default: none.
    #[serde(deserialize_with = "units::non_empty")]
    pub tls_key: Option<String>,
    /// Admin listener address: metrics, health, admin API. Default `127.0.0.1:9464`.
    #[serde(deserialize_with = "units::addr")]
    #[schemars(with = "units::Addr")]
    pub admin_listen: SocketAddr,
    /// Health listener address: only `/healthz`, `/readyz` and `/metrics`,
    /// for probes and scrapers that must reach the gateway while the admin
    /// listener stays private. Default: none (they are on the admin listener).
    #[serde(deserialize_with = "units::opt_addr")]
    #[schemars(with = "Option<units::Addr>")]
    pub health_listen: Option<SocketAddr>,
    /// `redis[s]://` URL, `redis[s]+cluster://host:port,host:port` for a
    /// cluster, or `redis[s]+sentinel://host:port,host:port/MASTER` for a
    /// primary found (and followed across failovers) through Redis
    /// Sentinel. Default: none, the embedded in-process queue.
    #[serde(
        serialize_with = "units::ser_redacted_url",
        deserialize_with = "units::non_empty"
    )]
    #[schemars(with = "Option<units::Url>")]
    pub redis_url: Option<String>,
    /// Prefix of every Redis key and channel. Default `flashgate`.
    pub redis_prefix: String,
    /// When an admission's 202 is sent: `local`, once the primary has
    /// written it (and applied its own fsync policy), or `replicated`, once
    /// at least one replica has it too (`WAIT 1`, `WAITAOF 0 1` on Redis 7.2+),
    /// else 503 `unavailable`; the drain's recording writes wait the same
    /// way. `replicated` needs `redis_url`. Default `local`.
    pub durability: Durability,
    /// Longest wait for a replica's acknowledgement with `durability =
    /// replicated`, from 1ms to 1s (an admission's whole Redis call has
    /// 2s). Default `1s`.
    #[serde(with = "units::duration")]
    #[schemars(with = "units::Dur")]
    pub durability_timeout: Duration,
    /// Stable name of this instance in the stream's consumer group. Default:
    /// `hostname:port` of `listen`.
    pub consumer: String,
    /// Proxy non-queued paths to `upstream` (else 404). Default `false`.
    pub passthrough: bool,
    /// Base URL for passthrough; at the top level of the file, also the
    /// default of every queue's `upstream`. Default: the first queue's.
    #[serde(deserialize_with = "units::non_empty")]
    #[schemars(with = "Option<units::Url>")]
    pub upstream: Option<String>,
    /// Bearer tokens accepted on `/admin/*`, each `NAME=SECRET` (the name is
    /// the actor of a change in the audit trail) or a bare secret (named
    /// `admin`); a list, or comma- or space-separated. Default: none (admin
    /// API open).
    #[serde(deserialize_with = "units::admin_tokens")]
    #[schemars(with = "Vec<String>")]
    pub admin_token: Vec<AdminToken>,
    /// Who a client is: `ip` (socket peer) or `header:NAME`. Default `ip`.
    pub client_key: ClientKey,
    /// Admissions per second per client and instance; 0 = no limit. Default `0`.
    pub client_rate: f64,
    /// Admissions a client may make back to back. Default `1`.
    pub client_burst: u32,
    /// Peers whose `X-Forwarded-For`/`-Proto` or `Forwarded` is believed,
    /// CIDRs or addresses. Default: none.
    #[serde(
        serialize_with = "units::ser_display_list",
        deserialize_with = "units::cidrs"
    )]
    #[schemars(with = "Vec<String>")]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Largest request body admitted (413 beyond). Default `64KiB`.
    pub max_body: Size,
    /// Time a client has to send its request head; also the keep-alive idle
    /// timeout. Default `10s`.
    #[serde(with = "units::duration")]
    #[schemars(with = "units::Dur")]
    pub header_timeout: Duration,
    /// Largest request head, at least 1KiB (431 beyond). Default `16KiB`.
    pub max_header_size: Size,
    /// Time a client has to send its whole body once its head is in (408
    /// after). Default `10s`.
    #[serde(with = "units::duration")]
    #[schemars(with = "units::Dur")]
    pub body_timeout: Duration,
    /// Open public connections; beyond it new ones get a fast 503 and are
    /// closed. Default `10000`.
    pub max_connections: u32,
    /// Longest `Prefer: wait` an admission is held for, at most 60s; 0 = never
    /// held. Default `10s`.
    #[serde(with = "units::duration")]
    #[schemars(with = "units::Dur")]
    pub max_wait: Duration,
    /// Browser origins allowed to call the public API (`*` = any). Default:
    /// none (no CORS).
    #[serde(deserialize_with = "units::comma_list")]
    pub cors_origins: Vec<String>,
    /// Secret that ticket MACs derive from, at least 32 bytes. Default: shared
    /// through Redis or, with the embedded queue, random per process.
    #[serde(
        serialize_with = "units::ser_secret",
        deserialize_with = "units::non_empty"
    )]
    pub ticket_secret: Option<String>,
    /// How long ticket state and idempotency keys are kept after their last
    /// change, at least 1s. Default `24h`.
    #[serde(with = "units::duration")]
    #[schemars(with = "units::Dur")]
    pub ticket_ttl: Duration,
    /// How long shutdown waits for in-flight upstream requests. Default `30s`.
    #[serde(with = "units::duration")]
    #[schemars(with = "units::Dur")]
    pub shutdown_grace: Duration,
    /// Entries another instance left unfinished this long are taken over, at
    /// least 1s. Default `60s`.
    #[serde(with = "units::duration")]
    #[schemars(with = "units::Dur")]
    pub claim_idle: Duration,
    /// Request headers whose name has an underscore: `drop` them, `reject`
    /// the request (400) or `allow` them through. Default `drop`.
    pub underscore_headers: UnderscoreHeaders,
    /// Access log, one line per request on every listener: `off`,
    /// `stdout`, `stderr` or a file PATH (appended to, opened again on
    /// SIGUSR1). Default `off`.
    pub access_log: AccessLog,
    /// Access log lines as `json` (one object a line) or nginx's `combined`
    /// (with the request id appended). Default `json`.
    pub access_log_format: AccessLogFormat,
    /// Access log lines held for the writer, at least 1; when the sink is
    /// slower and they are all taken, lines are dropped and counted
    /// (`flashgate_access_log_dropped_total`), never waited for. Default `8192`.
    pub access_log_buffer: u32,
    /// Shop name on the waiting room, above the heading and in the tab's
    /// title (HTML-escaped). Default: none.
    #[serde(deserialize_with = "units::non_empty")]
    pub waiting_room_shop_name: Option<String>,
    /// Logo on the waiting room: an `https://` URL (its origin is added to
    /// the page's CSP `img-src`) or a path on this origin starting with `/`;
    /// other schemes are refused. Default: none.
    #[serde(deserialize_with = "units::non_empty")]
    pub waiting_room_logo_url: Option<String>,
    /// Link back to the shop on the waiting room's final and not-found
    /// states, an `http(s)://` URL: `{ticket}` in it is replaced by the
    /// ticket, else `ticket=<id>` is appended to its query. Default: none
    /// (no link).
    #[serde(deserialize_with = "units::non_empty")]
    pub waiting_room_return_url: Option<String>,
    /// Accent colour of the waiting room (links, bar, badges, focus ring),
    /// `#rgb` or `#rrggbb`, with at least 4.5:1 contrast against the white
    /// card (WCAG AA; a lighter one is refused). A configured colour makes
    /// the page light-only. Default: none (the built-in blue).
    #[serde(deserialize_with = "units::non_empty")]
    pub waiting_room_accent: Option<String>,
    /// Background around the waiting room's card, `#rgb` or `#rrggbb`
    /// (no text is drawn on it). Makes the page light-only. Default: none.
    #[serde(deserialize_with = "units::non_empty")]
    pub waiting_room_background: Option<String>,
    /// Language tag of the waiting room's texts (its `lang` attribute).
    /// Default `en`.
    pub waiting_room_lang: String,
    /// The waiting room's texts by key (README lists the keys and their
    /// placeholders), a table in the file or a JSON object from a flag or
    /// variable; unknown keys are refused. Default: none (English).
    #[serde(deserialize_with = "super::waiting_room::text_map")]
    #[schemars(with = "std::collections::BTreeMap<String, String>")]
    pub waiting_room_text: std::collections::BTreeMap<String, String>,
    /// The queues, each with its routes, upstream and limits.
    pub queue: Vec<QueueConfig>,
}

/// One queue: its routes, upstream and drain limits. At the top level of the
/// file these keys are the defaults of every `[[queue]]` table.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Name used in keys, labels and tickets, 1-64 of `[A-Za-z0-9_-]`.
    /// Default `checkout`.
    pub name: String,
    /// Queued routes, `"METHOD /path"` (the query is not matched). Default
    /// `POST /checkout`.
    pub routes: Vec<Route>,
    /// Match the routes' paths without regard to ASCII case. Default `false`.
    pub route_case_insensitive: bool,
    /// Base URL of the order service (http or https, no query). Required.
    #[serde(serialize_with = "units::ser_redacted_url_str")]
    #[schemars(with = "units::Url")]
    pub upstream: String,
    /// Requests per second sent upstream, across all instances. Default `100`.
    pub drain_rate: f64,
    /// Requests that may go out back to back after an idle spell; 1 spaces
    /// them evenly. Default `1`.
    pub drain_burst: u32,
    /// Concurrent upstream requests per instance. Default `64`.
    pub max_in_flight: u32,
    /// Queue capacity; admissions beyond it get 503. Default `1000000`.
    pub max_queue: u64,
    /// One upstream attempt's deadline. Default `10s`.
    #[serde(with = "units::duration")]
    #[schemars(with = "units::Dur")]
    pub upstream_timeout: Duration,
    /// Upstream attempts before a ticket fails and is dead-lettered. Default `5`.
    pub max_attempts: u32,
    /// Admissions allowed in total (then 410 sold_out). Default: unlimited.
    pub stock: Option<u64>,
    // -- A fair sale: stock per product, a limit per client (README
    //    "Running a fair sale").
    /// Where an admission names its product: `path:/checkout/{sku}` (that
    /// segment of the route's path), `json:/sku` (a JSON pointer into the
    /// body), `query:sku` or `header:X-Sku`. The products are the keys of
    /// `product_stock`: another is refused 404 unknown_product, none 400
    /// invalid_product. Default: none (no products).
    #[serde(default)]
    pub product_from: Option<ProductFrom>,
    /// Units of each product, a table (`[queue.product_stock]
    /// "sneaker-42" = 100`) or, from a flag or variable, a JSON object;
    /// at most 1000 products. Each product's admissions stop at its stock
    /// (410 sold_out naming it); `stock` still caps the queue's total.
    /// Default: none.
    #[serde(deserialize_with = "units::count_map")]
    #[schemars(with = "std::collections::BTreeMap<String, u64>")]
    pub product_stock: std::collections::BTreeMap<String, u64>,
    /// Admissions one client (`client_key`) may hold in this queue over
    /// `per_client_window`, across every instance (then 429
    /// client_quota_exceeded). Default: unlimited.
    pub per_client_max: Option<u64>,
    /// Admissions one client may hold per product over
    /// `per_client_window`. Default: unlimited.
    pub per_client_max_per_product: Option<u64>,
    /// How long a client's admissions count against its limits after its
    /// last one, at least 1s. Default `24h`.
    #[serde(with = "units::duration")]
    #[schemars(with = "units::Dur")]
    pub per_client_window: Duration,
    /// A cancelled ticket gives its unit back to the stock (the queue's
    /// and its product's) and its place back to its client's limits.
    /// Default `true`.
    pub cancel_returns_stock: bool,
    // -- end of the fair sale's keys.
    /// Proof of work before the queue: the leading zero bits a solution of
    /// a `GET /challenge` seed must have (an admission without one gets
    /// 403 `pow_required`), 0-32; 0 = off. An operator raises it at run
    /// time with `PATCH /admin/queues/{name}`. Default `0`.
    pub pow_difficulty: u8,
    /// How long a challenge seed stays good for, 10s-1h. Default `5m`.
    #[serde(with = "units::duration")]
    #[schemars(with = "units::Dur")]
    pub pow_ttl: Duration,
    /// RFC 3339 time the sale opens; before it admissions get 503
    /// sale_not_open. Default: open.
    #[serde(with = "units::time")]
    #[schemars(with = "Option<units::Time>")]
    pub opens_at: Option<SystemTime>,
    /// RFC 3339 time the sale closes; after it admissions get 410
    /// sale_closed. Default: never.
    #[serde(with = "units::time")]
    #[schemars(with = "Option<units::Time>")]
    pub closes_at: Option<SystemTime>,
    /// RFC 3339 start of the pre-queue window before `opens_at`: early
    /// arrivals are admitted, and served in random order once the sale opens.
    /// Default: none.
    #[serde(with = "units::time")]
    #[schemars(with = "Option<units::Time>")]
    pub prequeue_from: Option<SystemTime>,
    /// Upstream statuses that mean sold out and flip the queue to sold out.
    /// Default: none.
    pub sold_out_statuses: Vec<u16>,
    /// If set, a sold-out status counts only when the body contains this text.
    /// Default: any body.
    #[serde(deserialize_with = "units::non_empty")]
    pub sold_out_body: Option<String>,
    /// Streams the queue is spread over, 1-256 (Redis only; `{name:i}` hash
    /// tags put them on different cluster shards). Default `1`.
    pub partitions: u32,
    /// How long finished entries are kept in the work stream (Redis) for
    /// other consumer groups: an entry every group is done with leaves at
    /// once; one older than this leaves once this gateway is done with it,
    /// even if another group has not read it, so a lagging group cannot
    /// make the stream grow without bound (age by the entry id's time).
    /// `0s` keeps nothing for others. Default `1h`.
    #[serde(with = "units::duration")]
    #[schemars(with = "units::Dur")]
    pub stream_retention: Duration,
    /// Write the queue's lifecycle events (`admitted`, `dispatched`,
    /// `completed`, …) to its events stream, each in the same atomic step
    /// as the change it reports, for other services to follow. Default `true`.
    pub events: bool,
    /// How long events are kept, at least 1s: older ones are trimmed as new
    /// ones are written (`XADD … MINID ~`, never a separate pass). Default `24h`.
    #[serde(with = "units::duration")]
    #[schemars(with = "units::Dur")]
    pub events_retention: Duration,
    /// Let the drain rate follow the upstream's health between
    /// `adaptive_floor` and `adaptive_ceiling`, from `drain_rate`. Default `false`.
    #[serde(rename(deserialize = "adaptive"), skip_serializing)]
    pub adaptive_on: bool,
    /// Lowest adaptive drain rate, requests/s. Default: a twentieth of the ceiling.
    #[serde(skip_serializing)]
    pub adaptive_floor: Option<f64>,
    /// Highest adaptive drain rate, requests/s. Default: `drain_rate`.
    #[serde(skip_serializing)]
    pub adaptive_ceiling: Option<f64>,
    /// The adaptive drain's bounds when it is on, worked out by `validate`
    /// from the three keys above (and printed in their place).
    #[serde(skip_deserializing)]
    #[schemars(skip)]
    pub adaptive: Option<AdaptiveBounds>,
}

/// Where the adaptive drain may take a queue's rate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct AdaptiveBounds {
    pub floor: f64,
    pub ceiling: f64,
}

/// What an admission's 202 waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// The primary's write (and its own fsync policy): a failover can lose
    /// 202s the replica had not received.
    #[default]
    Local,
    /// The primary's write and one replica's acknowledgement.
    Replicated,
}

/// What happens to a request header whose name contains `_`. Proxies differ
/// on whether `X_User` and `X-User` are one header, which lets a client
/// smuggle a value past a check made on the other spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum UnderscoreHeaders {
    /// Remove the header and serve the request.
    #[default]
    Drop,
    /// Answer 400.
    Reject,
    /// Pass it on unchanged.
    Allow,
}

/// How an access log line is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogFormat {
    /// One JSON object a line, every field present (`null` when unknown).
    #[default]
    Json,
    /// nginx's `combined`, then the request id in quotes.
    Combined,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            health_listen: None,
            redis_url: None,
            redis_prefix: "flashgate".into(),
            durability: Durability::Local,
            durability_timeout: Duration::from_secs(1),
            // Filled in by `validate`: it depends on `listen`.
            consumer: String::new(),
            passthrough: false,
            upstream: None,
            tls_cert: None,
            tls_key: None,
            admin_token: Vec::new(),
            client_key: ClientKey::Ip,
            client_rate: 0.0,
            client_burst: 1,
            trusted_proxies: Vec::new(),
            max_body: Size(64 << 10),
            header_timeout: Duration::from_secs(10),
            max_header_size: Size(16 << 10),
            body_timeout: Duration::from_secs(10),
            max_connections: 10_000,
            max_wait: Duration::from_secs(10),
            cors_origins: Vec::new(),
            ticket_secret: None,
            ticket_ttl: Duration::from_secs(24 * 3600),
            shutdown_grace: Duration::from_secs(30),
            claim_idle: Duration::from_secs(60),
            underscore_headers: UnderscoreHeaders::Drop,
            access_log: AccessLog::Off,
            access_log_format: AccessLogFormat::Json,
            access_log_buffer: 8192,
            waiting_room_shop_name: None,
            waiting_room_logo_url: None,
            waiting_room_return_url: None,
            waiting_room_accent: None,
            waiting_room_background: None,
            waiting_room_lang: "en".into(),
            waiting_room_text: Default::default(),
            queue: vec![QueueConfig::default()],
        }
    }
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            name: "checkout".into(),
            routes: vec![Route {
                method: http::Method::POST,
                path: "/checkout".into(),
            }],
            route_case_insensitive: false,
            // Required: `validate` refuses the empty URL.
            upstream: String::new(),
            drain_rate: 100.0,
            drain_burst: 1,
            max_in_flight: 64,
            max_queue: 1_000_000,
            upstream_timeout: Duration::from_secs(10),
            max_attempts: 5,
            stock: None,
            product_from: None,
            product_stock: Default::default(),
            per_client_max: None,
            per_client_max_per_product: None,
            per_client_window: Duration::from_secs(24 * 3600),
            cancel_returns_stock: true,
            pow_difficulty: 0,
            pow_ttl: Duration::from_secs(300),
            opens_at: None,
            closes_at: None,
            prequeue_from: None,
            sold_out_statuses: Vec::new(),
            sold_out_body: None,
            partitions: 1,
            stream_retention: Duration::from_secs(3600),
            events: true,
            events_retention: Duration::from_secs(24 * 3600),
            adaptive_on: false,
            adaptive_floor: None,
            adaptive_ceiling: None,
            adaptive: None,
        }
    }
}
