//! The config's own value types, written as strings in flags and files.

use std::borrow::Cow;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};

/// A queued route: a method and an exact path (the query is not matched).
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
            path: crate::http::path::route_path(path)?,
        })
    }
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.method, self.path)
    }
}

/// Where an admission's product is read (`product_from`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProductFrom {
    /// `path:/checkout/{sku}`: the route's path segments, one of them
    /// (`{…}`) the product's.
    Path(Vec<String>),
    /// `json:/sku`: a JSON pointer (RFC 6901) into the request body.
    Json(String),
    /// `query:sku`: a query parameter.
    Query(String),
    /// `header:X-Sku`: a request header.
    Header(http::HeaderName),
}

impl ProductFrom {
    /// Products at most (configured and added at run time): the label
    /// values of the per-product metrics stay bounded.
    pub const MAX_PRODUCTS: usize = 1000;

    /// Whether `name` may name a product: 1-64 visible ASCII characters
    /// other than `:` (it is part of Redis field names) and `/`.
    pub fn valid_product(name: &str) -> bool {
        (1..=64).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b':' && b != b'/')
    }

    /// Whether a path template's segment is the product's (`{sku}`).
    pub fn is_slot(segment: &str) -> bool {
        segment.len() > 2 && segment.starts_with('{') && segment.ends_with('}')
    }

    /// Whether a `path:` template matches `path` (a route's), its product
    /// segment matching any one segment.
    pub fn fits_route(&self, path: &str) -> bool {
        let ProductFrom::Path(template) = self else {
            return true;
        };
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        segments.len() == template.len()
            && (segments.iter().zip(template)).all(|(s, t)| Self::is_slot(t) || t == s)
    }
}

impl std::str::FromStr for ProductFrom {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let expected =
            "must be `path:/route/{name}`, `json:/pointer`, `query:NAME` or `header:NAME`";
        let (kind, arg) = s
            .trim()
            .split_once(':')
            .ok_or_else(|| expected.to_string())?;
        match kind {
            "path" => {
                let segments: Vec<String> = (arg.split('/').filter(|s| !s.is_empty()))
                    .map(String::from)
                    .collect();
                let slots = segments.iter().filter(|s| Self::is_slot(s)).count();
                if !arg.starts_with('/') || slots != 1 {
                    return Err(format!(
                        "`{s}`: a path template has exactly one `{{name}}` segment, e.g. `path:/checkout/{{sku}}`"
                    ));
                }
                Ok(ProductFrom::Path(segments))
            }
            "json" if arg.is_empty() || arg.starts_with('/') => Ok(ProductFrom::Json(arg.into())),
            "json" => Err(format!(
                "`{s}`: a JSON pointer starts with `/`, e.g. `json:/sku`"
            )),
            "query" if !arg.is_empty() => Ok(ProductFrom::Query(arg.into())),
            "header" => http::HeaderName::from_bytes(arg.as_bytes())
                .map(ProductFrom::Header)
                .map_err(|_| format!("`{arg}` is not a header name")),
            _ => Err(format!("`{s}` {expected}")),
        }
    }
}

impl std::fmt::Display for ProductFrom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProductFrom::Path(segments) => {
                f.write_str("path:")?;
                for s in segments {
                    write!(f, "/{s}")?;
                }
                Ok(())
            }
            ProductFrom::Json(pointer) => write!(f, "json:{pointer}"),
            ProductFrom::Query(name) => write!(f, "query:{name}"),
            ProductFrom::Header(name) => write!(f, "header:{name}"),
        }
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

impl std::fmt::Display for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientKey::Ip => f.write_str("ip"),
            ClientKey::Header(h) => write!(f, "header:{h}"),
        }
    }
}

/// Where the access log goes (`access_log`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AccessLog {
    /// No access log.
    #[default]
    Off,
    /// Standard output.
    Stdout,
    /// Standard error, with the process's own log lines.
    Stderr,
    /// A file, appended to; opened again on SIGUSR1 (log rotation).
    Path(std::path::PathBuf),
}

impl std::str::FromStr for AccessLog {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.trim() {
            "" => return Err("must be `off`, `stdout`, `stderr` or a file path".into()),
            "off" => AccessLog::Off,
            "stdout" => AccessLog::Stdout,
            "stderr" => AccessLog::Stderr,
            path => AccessLog::Path(path.into()),
        })
    }
}

impl std::fmt::Display for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AccessLog::Off => f.write_str("off"),
            AccessLog::Stdout => f.write_str("stdout"),
            AccessLog::Stderr => f.write_str("stderr"),
            AccessLog::Path(path) => write!(f, "{}", path.display()),
        }
    }
}

/// One admin token (`admin_token`): `NAME=SECRET`, or a bare `SECRET`
/// named [`AdminToken::UNNAMED`]. The name is who made a change in the
/// audit trail (the `knobs_changed` events and the log).
///
/// A value is `NAME=SECRET` when the text before its first `=` is a name
/// (1 to 64 of `A-Z a-z 0-9 _ - .`) and the text after it is not empty and
/// does not start with `=`; anything else is a bare secret. So base64
/// padding (`c2VjcmV0==`) stays part of a bare secret, and a bare secret
/// with an `=` inside is written with its name: `admin=se=cret`.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken {
    pub name: String,
    pub secret: String,
}

impl AdminToken {
    /// The name of a token given without one.
    pub const UNNAMED: &'static str = "admin";
    /// Actors the gateway itself uses for its own changes; no token may
    /// take them (the backend's `UPSTREAM_ACTOR`, `ADAPTIVE_ACTOR`).
    pub const RESERVED: [&'static str; 2] = ["upstream", "adaptive"];

    fn is_name(name: &str) -> bool {
        (1..=64).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    }
}

/// The secret never shows, not even in a `{:?}`.
impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AdminToken({}=<redacted>)", self.name)
    }
}

impl std::str::FromStr for AdminToken {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err("an admin token must not be empty".into());
        }
        if s.contains(|c: char| c.is_whitespace() || c == ',') {
            return Err("an admin token has no spaces or commas (they separate tokens)".into());
        }
        Ok(match s.split_once('=') {
            Some((name, secret))
                if Self::is_name(name) && !secret.is_empty() && !secret.starts_with('=') =>
            {
                AdminToken {
                    name: name.into(),
                    secret: secret.into(),
                }
            }
            _ => AdminToken {
                name: Self::UNNAMED.into(),
                secret: s.into(),
            },
        })
    }
}

/// Printed (`check-config`, the effective-config log line) with the
/// secret redacted: `ops=<redacted>`.
impl Serialize for AdminToken {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{}=<redacted>", self.name))
    }
}

/// Serde and schema for a type written as a string: `Display` out,
/// `FromStr` (with a message that says what was expected) in.
macro_rules! string_value {
    ($ty:ty, $format:literal) => {
        impl Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }

        impl JsonSchema for $ty {
            fn schema_name() -> Cow<'static, str> {
                stringify!($ty).into()
            }
            fn inline_schema() -> bool {
                true
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!({ "type": "string", "format": $format })
            }
        }
    };
}

string_value!(Route, "route");
string_value!(ProductFrom, "product-from");
string_value!(ClientKey, "client-key");
string_value!(AccessLog, "sink");
