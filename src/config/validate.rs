//! The checks a parsed tree must pass, and the values worked out from others.
//! Each value was parsed by its type already; what is left are ranges and
//! rules between keys. Errors name the key; `load` adds where it came from.

use std::time::Duration;

use super::{redact_url, AdaptiveBounds, Config, ConfigError, QueueConfig};

/// Rules checked in order; the first one broken is the error, naming its key.
struct Rules(Result<(), ConfigError>);

impl Rules {
    fn check(self, ok: bool, key: impl Into<String>, message: impl Into<String>) -> Self {
        match self.0 {
            Ok(()) if !ok => Rules(Err(ConfigError::invalid(key, message))),
            _ => self,
        }
    }
}

const AT_LEAST_1: &str = "must be at least 1";
/// The largest stock: 2^53 - 1, the largest whole number Redis scripts
/// (which count in doubles) hold exactly.
const MAX_UNITS: u64 = (1 << 53) - 1;

impl Config {
    /// Checks every value and fills in those that default from others
    /// (`consumer`, `upstream`, each queue's adaptive bounds).
    pub fn validate(&mut self) -> Result<(), ConfigError> {
        let redis = self.redis_url.as_deref();
        let schemes = [
            "redis://",
            "rediss://",
            "redis+cluster://",
            "rediss+cluster://",
            "redis+sentinel://",
            "rediss+sentinel://",
        ];
        let redis_error = redis.and_then(|u| super::RedisEndpoint::parse(u).err());
        let secret_len = self.ticket_secret.as_ref().map_or(usize::MAX, String::len);
        let min_secret = super::MIN_SECRET_LEN;
        let prefix = &self.redis_prefix;
        let second = Duration::from_secs(1);
        self.cors_origins = (self.cors_origins.iter())
            .map(|o| o.trim_end_matches('/').to_string())
            .filter(|o| !o.is_empty())
            .collect();
        let bad_origin = (self.cors_origins.iter())
            .find(|o| *o != "*" && !o.starts_with("http://") && !o.starts_with("https://"));
        let tokens = &self.admin_token;
        let twice = |same: &dyn Fn(&super::AdminToken, &super::AdminToken) -> bool| {
            (tokens.iter().enumerate())
                .find(|(i, a)| tokens[..*i].iter().any(|b| same(a, b)))
                .map(|(_, a)| a.name.clone())
        };
        let name_twice = twice(&|a, b| a.name == b.name);
        let secret_twice = twice(&|a, b| a.secret == b.secret);
        let reserved =
            (tokens.iter()).find(|t| super::AdminToken::RESERVED.iter().any(|r| *r == t.name));
        Rules(Ok(()))
            .check(
                name_twice.is_none(),
                "admin_token",
                format!(
                    "two tokens are named `{}`: give each its own NAME= (a bare secret is named `admin`)",
                    name_twice.as_deref().unwrap_or_default()
                ),
            )
            .check(
                secret_twice.is_none(),
                "admin_token",
                format!(
                    "token `{}` has the same secret as another: each name needs its own secret",
                    secret_twice.as_deref().unwrap_or_default()
                ),
            )
            .check(
                reserved.is_none(),
                "admin_token",
                format!(
                    "`{}` is the gateway's own actor name; name the token otherwise",
                    reserved.map_or("", |t| t.name.as_str())
                ),
            )
            .check(
                redis.is_none_or(|u| schemes.iter().any(|s| u.starts_with(s))),
                "redis_url",
                "must start with redis://, rediss://, for a cluster redis+cluster:// or, through Sentinel, redis+sentinel://",
            )
            .check(
                redis_error.is_none(),
                "redis_url",
                match redis_error.as_deref() {
                    Some(e) if e.contains("sentinel") => e.trim_start_matches("bad redis url: ").to_string(),
                    _ => "is not a valid address (host, port, database)".to_string(),
                },
            )
            .check(
                self.durability == super::Durability::Local || redis.is_some(),
                "durability",
                "`replicated` needs redis_url: the embedded queue has no replica (it is lost with the process)",
            )
            .check(
                (Duration::from_millis(1)..=second).contains(&self.durability_timeout),
                "durability_timeout",
                "must be from 1ms to 1s",
            )
            .check(
                !prefix.is_empty() && !prefix.contains(['{', '}']),
                "redis_prefix",
                "must be non-empty and contain no braces",
            )
            .check(
                self.max_header_size.0 >= 1024,
                "max_header_size",
                "must be at least 1KiB",
            )
            .check(!self.body_timeout.is_zero(), "body_timeout", "must be > 0")
            .check(self.max_connections > 0, "max_connections", AT_LEAST_1)
            .check(
                self.tls_cert.is_some() == self.tls_key.is_some(),
                if self.tls_cert.is_some() {
                    "tls_key"
                } else {
                    "tls_cert"
                },
                "tls_cert and tls_key go together",
            )
            .check(
                self.max_wait <= 60 * second,
                "max_wait",
                "must be at most 60s",
            )
            .check(
                bad_origin.is_none(),
                "cors_origins",
                format!(
                    "`{}` is not an origin: expected `*` or scheme://host[:port]",
                    bad_origin.map_or("", String::as_str)
                ),
            )
            .check(
                secret_len >= min_secret,
                "ticket_secret",
                format!("must be at least {min_secret} bytes (e.g. `openssl rand -base64 32`)"),
            )
            .check(
                self.ticket_ttl >= second,
                "ticket_ttl",
                "must be at least 1s",
            )
            .check(
                self.client_rate.is_finite() && self.client_rate >= 0.0,
                "client_rate",
                "must be >= 0 (0 = off)",
            )
            .check(self.client_burst > 0, "client_burst", AT_LEAST_1)
            .check(self.access_log_buffer > 0, "access_log_buffer", AT_LEAST_1)
            .check(
                self.claim_idle >= second,
                "claim_idle",
                "must be at least 1s",
            )
            .check(
                self.admin_listen.ip().is_loopback() || !self.admin_token.is_empty(),
                "admin_listen",
                format!(
                    "`{}` is beyond loopback, which would open the admin API (/admin/*) \
                     to the network: set admin_token too, or keep admin_listen on \
                     loopback and serve probes and metrics on health_listen",
                    self.admin_listen
                ),
            )
            .check(
                self.health_listen
                    .is_none_or(|h| h.port() == 0 || (h != self.listen && h != self.admin_listen)),
                "health_listen",
                "must differ from listen and admin_listen",
            )
            .0?;
        super::waiting_room::check(self)?;
        if self.consumer.is_empty() {
            self.consumer = format!("{}:{}", hostname(), self.listen.port());
        }
        for (i, queue) in self.queue.iter_mut().enumerate() {
            queue.validate(i)?;
        }
        for (i, q) in self.queue.iter().enumerate() {
            let earlier = &self.queue[..i];
            // Taken when a request could match both queues' routes.
            let taken = (q.routes.iter()).find(|r| {
                earlier.iter().any(|p| {
                    let fold = p.route_case_insensitive || q.route_case_insensitive;
                    p.routes
                        .iter()
                        .any(|pr| crate::http::path::matches(&pr.path, &r.path, fold))
                })
            });
            Rules(Ok(()))
                .check(
                    !earlier.iter().any(|p| p.name == q.name),
                    format!("queue[{i}].name"),
                    format!("queue `{}` is declared twice", q.name),
                )
                .check(
                    taken.is_none(),
                    format!("queue[{i}].routes"),
                    format!(
                        "path {} is already queued by another queue",
                        taken.map_or("", |r| r.path.as_str())
                    ),
                )
                .check(
                    q.partitions == 1 || redis.is_some(),
                    format!("queue[{i}].partitions"),
                    format!(
                        "queue `{}` has {} partitions: partitions need redis_url \
                         (the embedded queue is one process)",
                        q.name, q.partitions
                    ),
                )
                .0?;
        }
        if self.upstream.is_none() {
            self.upstream = self.queue.first().map(|q| q.upstream.clone());
        }
        Ok(())
    }
}

impl QueueConfig {
    /// Checks the queue that is `queue[i]` and works out its adaptive bounds.
    fn validate(&mut self, i: usize) -> Result<(), ConfigError> {
        let key = |k: &str| format!("queue[{i}].{k}");
        let name = &self.name;
        let name_ok = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        Rules(Ok(()))
            .check(
                name_ok,
                key("name"),
                format!("`{name}` must be 1-64 of [A-Za-z0-9_-]"),
            )
            .check(!self.routes.is_empty(), key("routes"), "at least one route")
            .check(
                !self.upstream.is_empty(),
                "upstream",
                "required: the base URL of the order service",
            )
            .0?;
        check_upstream(&self.upstream).map_err(|m| ConfigError::invalid(key("upstream"), m))?;
        self.upstream = self.upstream.trim_end_matches('/').to_string();
        self.max_queue = self.max_queue.max(1);
        let ceiling = self.adaptive_ceiling.unwrap_or(self.drain_rate);
        let floor = self.adaptive_floor.unwrap_or(ceiling / 20.0);
        let adaptive = self.adaptive_on;
        self.adaptive = adaptive.then_some(AdaptiveBounds { floor, ceiling });
        let rate_ok = |r: f64| r.is_finite() && r > 0.0 && r <= 1e6;
        let per_sec = "must be > 0 and <= 1000000 requests/s";
        let (open, close, pre) = (self.opens_at, self.closes_at, self.prequeue_from);
        let bad_status = self
            .sold_out_statuses
            .iter()
            .find(|c| !(200..=599).contains(*c));
        Rules(Ok(()))
            .check(rate_ok(self.drain_rate), key("drain_rate"), per_sec)
            .check(self.drain_burst > 0, key("drain_burst"), AT_LEAST_1)
            .check(self.max_in_flight > 0, key("max_in_flight"), AT_LEAST_1)
            .check(self.max_attempts > 0, key("max_attempts"), AT_LEAST_1)
            .check(
                !self.upstream_timeout.is_zero(),
                key("upstream_timeout"),
                "must be > 0",
            )
            .check(
                (1..=256).contains(&self.partitions),
                key("partitions"),
                "must be from 1 to 256",
            )
            .check(
                self.events_retention >= std::time::Duration::from_secs(1),
                key("events_retention"),
                "must be at least 1s",
            )
            .check(
                !adaptive || rate_ok(ceiling),
                key("adaptive_ceiling"),
                per_sec,
            )
            .check(
                !adaptive || (rate_ok(floor) && floor <= ceiling),
                key("adaptive_floor"),
                "must be > 0 and <= adaptive_ceiling",
            )
            .check(
                open.zip(close).is_none_or(|(o, c)| c > o),
                key("closes_at"),
                "must be after opens_at",
            )
            .check(
                pre.is_none() || open.is_some(),
                key("prequeue_from"),
                "needs opens_at",
            )
            .check(
                pre.zip(open).is_none_or(|(p, o)| p < o),
                key("prequeue_from"),
                "must be before opens_at",
            )
            .check(
                self.pow_difficulty <= super::MAX_POW_DIFFICULTY,
                key("pow_difficulty"),
                "must be from 0 (off) to 32 bits",
            )
            .check(
                (10..=3600).contains(&self.pow_ttl.as_secs()),
                key("pow_ttl"),
                "must be from 10s to 1h",
            )
            .check(
                bad_status.is_none(),
                key("sold_out_statuses"),
                format!("{} is not an HTTP status", bad_status.unwrap_or(&0)),
            )
            .0?;
        self.validate_fair_sale(i)
    }

    /// The fair sale's keys: products, their stock, the per-client limits.
    fn validate_fair_sale(&self, i: usize) -> Result<(), ConfigError> {
        use super::ProductFrom;
        let key = |k: &str| format!("queue[{i}].{k}");
        let from = self.product_from.as_ref();
        let products = &self.product_stock;
        let bad_name = products.keys().find(|p| !ProductFrom::valid_product(p));
        let too_much = products.iter().find(|(_, n)| **n > MAX_UNITS);
        let unfit = (self.routes.iter()).find(|r| from.is_some_and(|f| !f.fits_route(&r.path)));
        Rules(Ok(()))
            .check(
                from.is_none() || !products.is_empty(),
                key("product_stock"),
                "product_from needs the products: their stock, e.g. {\"sneaker-42\" = 100}",
            )
            .check(
                from.is_some() || products.is_empty(),
                key("product_from"),
                "product_stock needs product_from: where a request names its product",
            )
            .check(
                from.is_some() || self.per_client_max_per_product.is_none(),
                key("per_client_max_per_product"),
                "needs product_from",
            )
            .check(
                products.len() <= ProductFrom::MAX_PRODUCTS,
                key("product_stock"),
                format!("at most {} products", ProductFrom::MAX_PRODUCTS),
            )
            .check(
                bad_name.is_none(),
                key("product_stock"),
                format!(
                    "`{}`: a product is 1-64 visible ASCII characters, no `:` nor `/`",
                    bad_name.map_or("", String::as_str)
                ),
            )
            .check(
                too_much.is_none(),
                key("product_stock"),
                format!(
                    "`{}`: at most {} units",
                    too_much.map_or("", |(p, _)| p.as_str()),
                    MAX_UNITS
                ),
            )
            .check(
                unfit.is_none(),
                key("product_from"),
                format!(
                    "`{}` does not fit route `{}`: the template must have the route's segments, one of them the product's",
                    from.map(ToString::to_string).unwrap_or_default(),
                    unfit.map(ToString::to_string).unwrap_or_default()
                ),
            )
            .check(self.per_client_max != Some(0), key("per_client_max"), AT_LEAST_1)
            .check(
                self.per_client_max_per_product != Some(0),
                key("per_client_max_per_product"),
                AT_LEAST_1,
            )
            .check(
                self.per_client_window >= Duration::from_secs(1),
                key("per_client_window"),
                "must be at least 1s",
            )
            .0
    }

    /// Whether a per-client rule is on: every admission of a client then
    /// goes to one partition, so its count is exact.
    pub fn per_client_rules(&self) -> bool {
        self.per_client_max.is_some() || self.per_client_max_per_product.is_some()
    }
}

fn check_upstream(url: &str) -> Result<(), String> {
    // Messages echo the URL without its password: they reach logs.
    let parsed = url.parse::<http::Uri>();
    let shown = redact_url(url);
    let uri = parsed.map_err(|e| format!("`{shown}`: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(other) => {
            return Err(format!(
                "scheme `{other}` is not supported (use http:// or https://)"
            ))
        }
        None => return Err(format!("`{shown}` needs a scheme, e.g. http://host:port")),
    }
    if uri.host().is_none() {
        return Err(format!("`{shown}` has no host"));
    }
    if uri.query().is_some() {
        return Err(format!("`{shown}` must not have a query"));
    }
    Ok(())
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
