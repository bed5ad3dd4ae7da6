//! The configuration: one serde tree ([`Config`], in `model.rs`), filled from
//! flags > `FLASHGATE_*` variables > the TOML file > defaults (`load.rs`),
//! then checked once ([`Config::validate`]). The serve flags are made from
//! the tree (`keys.rs`); an error names the key and where its value came from.
//!
//! The file's top-level queue keys are defaults for the `[[queue]]` tables
//! that do not set them; an explicitly set queue flag applies to every queue.

mod keys;
mod load;
mod model;
mod redis_url;
mod units;
mod validate;
mod values;
pub mod waiting_room;

pub use keys::{keys, Key, Kind, Scope};
pub use load::{load, Setting};
pub use model::{
    AccessLogFormat, AdaptiveBounds, Config, Durability, QueueConfig, UnderscoreHeaders,
};
pub use redis_url::{RedisEndpoint, SentinelEndpoint};

/// Shortest ticket secret accepted, in bytes (HMAC-SHA256 keys below the
/// hash size weaken it).
pub const MIN_SECRET_LEN: usize = 32;
/// The largest `pow_difficulty`: 2^32 hashes on average is already hours
/// of a browser's time.
pub const MAX_POW_DIFFICULTY: u8 = 32;
pub use units::{parse_duration, parse_size, parse_time, redact_url, time as time_format, Size};
pub use values::{AccessLog, AdminToken, ClientKey, ProductFrom, Route};

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A command-line flag, as written: `--drain-rate`.
    Flag(String),
    /// An environment variable: `FLASHGATE_DRAIN_RATE`.
    Env(String),
    /// The config file, at a 1-based line and column.
    File {
        path: String,
        line: usize,
        column: usize,
    },
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Flag(flag) => write!(f, "flag {flag}"),
            Origin::Env(var) => write!(f, "env {var}"),
            Origin::File { path, line, column } => write!(f, "{path}:{line}:{column}"),
        }
    }
}

/// Why a configuration was refused. The message always names the key and,
/// unless it is a default, where its value came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("invalid value for `{key}`{}: {message}", from(.origin))]
    Invalid {
        key: String,
        origin: Option<Origin>,
        message: String,
    },
    #[error("unknown key `{key}`{}{}", from(.origin), nearest.as_ref().map(|n| format!("; did you mean `{n}`?")).unwrap_or_default())]
    UnknownKey {
        key: String,
        origin: Option<Origin>,
        /// The known key the name is closest to, if it is close.
        nearest: Option<String>,
    },
}

fn from(origin: &Option<Origin>) -> String {
    origin
        .as_ref()
        .map(|o| format!(" ({o})"))
        .unwrap_or_default()
}

impl ConfigError {
    fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            origin: None,
            message: message.into(),
        }
    }
}

impl Config {
    /// A config from TOML text alone, as if it were the file and no flag
    /// were given.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        load::from_toml(text, &[])
    }

    /// The effective configuration as TOML, with secrets redacted.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot print config: {e}\n"))
    }
}

#[cfg(test)]
mod tests;
