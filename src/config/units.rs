//! Sizes ("64KiB"), durations ("250ms"), times and lists as written in flags
//! and files: how they are read, printed (secrets redacted) and described in
//! the schema the flags are made from.

use std::borrow::Cow;
use std::time::Duration;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{de::Error as _, Deserialize, Deserializer, Serializer};

/// A byte count written with an optional unit: `B`, `KB`/`KiB`, `MB`/`MiB`, `GB`/`GiB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl serde::Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_size(self.0))
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_size(&String::deserialize(d)?).map_err(D::Error::custom)
    }
}

fn format_size(n: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (factor, unit) in UNITS {
        if n >= factor && n % factor == 0 {
            return format!("{}{unit}", n / factor);
        }
    }
    format!("{n}B")
}

/// Parses `"64KiB"`, `"1MB"`, `"512"` (bytes).
pub fn parse_size(s: &str) -> Result<Size, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size such as 64KiB"))?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1_000,
        "KiB" | "K" | "k" => 1 << 10,
        "MB" => 1_000_000,
        "MiB" | "M" => 1 << 20,
        "GB" => 1_000_000_000,
        "GiB" | "G" => 1 << 30,
        other => return Err(format!("unknown size unit `{other}` in `{s}`")),
    };
    n.checked_mul(factor)
        .map(Size)
        .ok_or_else(|| format!("`{s}` is too large"))
}

/// Parses a duration with a unit: `"250ms"`, `"10s"`, `"24h"`, `"1m 30s"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("`{s}` is not a duration such as 250ms or 10s ({e})"))
}

/// A `Duration` written with a unit, as `#[serde(with = "units::duration")]`.
pub mod duration {
    use std::time::Duration;

    use serde::{de::Error as _, Deserialize, Deserializer};

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        super::parse_duration(&String::deserialize(d)?).map_err(D::Error::custom)
    }
}

/// Prints a secret as `"<redacted>"`.
pub fn ser_secret<S: Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_str("<redacted>"),
        None => s.serialize_none(),
    }
}

/// Prints a Redis URL with its password replaced.
pub fn ser_redacted_url<S: Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(url) => s.serialize_str(&redact_url(url)),
        None => s.serialize_none(),
    }
}

/// Prints a URL with its password replaced.
pub fn ser_redacted_url_str<S: Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&redact_url(url))
}

/// `redis://user:secret@host` → `redis://user:<redacted>@host`; a
/// `redis+sentinel://` URL's `sentinel_password=` in the query too.
pub fn redact_url(url: &str) -> String {
    if let Some((head, query)) = url.split_once('?') {
        let query: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some(("sentinel_password", _)) => "sentinel_password=<redacted>".to_string(),
                _ => pair.to_string(),
            })
            .collect();
        return format!("{}?{}", redact_url(head), query.join("&"));
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let user = if userinfo.contains(':') {
                format!("{user}:<redacted>")
            } else {
                "<redacted>".to_string()
            };
            format!("{scheme}://{user}@{host}{tail}")
        }
        None => url.to_string(),
    }
}

/// Parses an RFC 3339 time: `2026-11-27T12:00:00Z`, with an offset such as
/// `2026-11-27T13:00:00+01:00`, or in the lower case RFC 3339 allows.
pub fn parse_time(s: &str) -> Result<std::time::SystemTime, String> {
    let s = s.trim();
    ::time::OffsetDateTime::parse(s, &::time::format_description::well_known::Rfc3339)
        .map(std::time::SystemTime::from)
        .map_err(|_| format!("`{s}` is not an RFC 3339 time such as 2026-11-27T12:00:00Z"))
}

/// Parses `10.0.0.0/8`, `::1/128` or a bare address (a /32 or /128).
pub fn parse_cidr(s: &str) -> Result<ipnet::IpNet, String> {
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("`{s}` is not an address or CIDR block"))
}

/// An optional RFC 3339 time, as `#[serde(with = "units::time")]`.
pub mod time {
    use std::time::SystemTime;

    use serde::{de::Error as _, Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|t| super::parse_time(&t).map_err(D::Error::custom))
            .transpose()
    }

    pub fn serialize<S: serde::Serializer>(
        t: &Option<SystemTime>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.collect_str(&humantime::format_rfc3339(*t)),
            None => s.serialize_none(),
        }
    }
}

/// Prints a list of displayable items as strings.
pub fn ser_display_list<S: Serializer, T: std::fmt::Display>(
    items: &[T],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_seq(items.iter().map(|i| i.to_string()))
}

/// An `IP:port` socket address.
pub fn addr<'de, D: Deserializer<'de>>(d: D) -> Result<std::net::SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    text.parse()
        .map_err(|_| D::Error::custom(format!("`{text}` is not an IP:port address")))
}

/// An optional `IP:port`; the empty string means "not set".
pub fn opt_addr<'de, D: Deserializer<'de>>(d: D) -> Result<Option<std::net::SocketAddr>, D::Error> {
    match Option::<String>::deserialize(d)?.filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(text) => text
            .parse()
            .map(Some)
            .map_err(|_| D::Error::custom(format!("`{text}` is not an IP:port address"))),
    }
}

/// A string where the empty string means "not set" (as an empty
/// `FLASHGATE_*` variable does).
pub fn non_empty<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.filter(|s| !s.is_empty()))
}

/// A map of names to counts: a table, or a JSON object as a flag or
/// variable gives it (`product_stock`).
pub fn count_map<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<std::collections::BTreeMap<String, u64>, D::Error> {
    use std::collections::BTreeMap;
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Counts {
        Table(BTreeMap<String, u64>),
        Json(String),
    }
    match Counts::deserialize(d)? {
        Counts::Table(map) => Ok(map),
        Counts::Json(text) => serde_json::from_str(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "from a flag or variable, a JSON object of whole numbers (`{{\"sku\": 100}}`): {e}"
            ))
        }),
    }
}

/// A list whose items may themselves be comma-separated (`["a,b", "c"]`, or
/// one flag value `a,b,c`): trimmed, empty items dropped.
pub fn comma_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Vec::<String>::deserialize(d)?
        .iter()
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect())
}

/// `admin_token`: one string or a list, each item itself a comma- or
/// space-separated list of `NAME=SECRET` or bare secrets (see
/// [`super::values::AdminToken`]).
pub fn admin_tokens<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Vec<super::values::AdminToken>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    let items = match OneOrMany::deserialize(d)
        .map_err(|_| D::Error::custom("expected a token or a list of tokens (strings)"))?
    {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    };
    items
        .iter()
        .flat_map(|s| s.split(|c: char| c == ',' || c.is_whitespace()))
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(D::Error::custom))
        .collect()
}

/// A [`comma_list`] of CIDR blocks or bare addresses.
pub fn cidrs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ipnet::IpNet>, D::Error> {
    comma_list(d)?
        .iter()
        .map(|s| parse_cidr(s).map_err(D::Error::custom))
        .collect()
}

/// Schemas of string values with a `format`, which also names a flag's value
/// (`--max-wait <DUR>`). `Addr`, `Dur`, `Time` and `Url` stand in for types
/// whose own schema (if any) is not the string written in flags and files.
macro_rules! string_schema {
    ($($name:ident => $format:literal),* $(,)?) => {$(
        #[doc = concat!("Schema of a `", $format, "` string.")]
        pub struct $name;

        impl JsonSchema for $name {
            fn schema_name() -> Cow<'static, str> {
                stringify!($name).into()
            }
            fn inline_schema() -> bool {
                true
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!({ "type": "string", "format": $format })
            }
        }
    )*};
}

string_schema!(Addr => "addr", Dur => "duration", Time => "time", Url => "url");

impl JsonSchema for Size {
    fn schema_name() -> Cow<'static, str> {
        "Size".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "string", "format": "size" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times_take_offsets_and_lower_case() {
        let utc = parse_time("2026-11-27T12:00:00Z").unwrap();
        assert_eq!(parse_time("2026-11-27t12:00:00z").unwrap(), utc);
        assert_eq!(parse_time("2026-11-27T13:00:00+01:00").unwrap(), utc);
        assert_eq!(parse_time(" 2026-11-27T10:30:00-01:30 ").unwrap(), utc);
        for bad in [
            "2026-11-27",
            "2026-11-27T12:00:00",
            "noon",
            "2026-13-01T00:00:00Z",
        ] {
            assert!(parse_time(bad).unwrap_err().contains(bad), "{bad}");
        }
    }
}
