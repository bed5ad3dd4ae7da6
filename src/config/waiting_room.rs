//! The waiting room's branding keys (`waiting_room_*`): what a value must be
//! for the page to stay safe (no markup, no script, a strict CSP) and
//! readable (WCAG AA contrast).

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

use super::{Config, ConfigError};

/// The page's texts that `waiting_room_text` may override, each with the
/// placeholders it may use (`{n}` people ahead, `{wait}` the estimate,
/// `{time}` the opening time, `{shop}` the shop's name, `{code}` the shop's
/// status code, `{reason}` why an admission was refused). The page holds
/// their English defaults.
pub const TEXT_KEYS: &[&str] = &[
    "loading_title",
    "loading_lead",
    "queued_title",
    "queued_lead",
    "next_title",
    "next_lead",
    "position_label",
    "wait_label",
    "wait_any_moment",
    "wait_under_minute",
    "wait_minutes",
    "wait_hours",
    "announce_queued",
    "paused_title",
    "paused_lead",
    "wait_unknown",
    "prequeue_title",
    "prequeue_lead",
    "prequeue_position",
    "opens_label",
    "not_open_title",
    "not_open_lead",
    "in_flight_title",
    "in_flight_lead",
    "completed_title",
    "completed_lead",
    "rejected_title",
    "rejected_lead",
    "details",
    "sold_out_title",
    "sold_out_lead",
    "unavailable_title",
    "unavailable_lead",
    "failed_title",
    "failed_lead",
    "cancelled_title",
    "cancelled_lead",
    "expired_title",
    "expired_lead",
    "not_found_title",
    "not_found_lead",
    "return_link",
    "leave",
    "leave_confirm",
    "keep_open",
    "progress_label",
    "leave_too_late",
    "leave_failed",
    "leave_offline",
    "live_connecting",
    "live_updates",
    "live_reconnecting",
    "live_offline",
    "live_finished",
    "joining_title",
    "joining_lead",
    "checking_label",
    "checking_lead",
    "join_busy_title",
    "join_retry_lead",
    "join_sold_out_lead",
    "join_closed_title",
    "join_closed_lead",
    "join_quota_title",
    "join_quota_lead",
    "join_refused_title",
    "join_refused_lead",
    "join_failed_lead",
    "join_invalid_title",
    "join_invalid_lead",
];

/// WCAG 2.1 AA: the least contrast of normal text with its background.
pub const MIN_CONTRAST: f64 = 4.5;

/// The card the accent colour is read on.
const CARD: [u8; 3] = [0xff, 0xff, 0xff];

/// Checks the `waiting_room_*` keys.
pub fn check(c: &Config) -> Result<(), ConfigError> {
    let invalid = |key: &str, msg: String| Err(ConfigError::invalid(key, msg));
    if let Some(url) = &c.waiting_room_logo_url {
        if !(logo_origin(url).is_some() || is_same_origin_path(url)) {
            return invalid(
                "waiting_room_logo_url",
                format!(
                    "`{url}` must be an https:// URL or a path on this origin starting with `/`"
                ),
            );
        }
    }
    if let Some(url) = &c.waiting_room_return_url {
        let rest = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"));
        if !rest.is_some_and(|r| !r.is_empty() && safe_url_chars(r)) {
            return invalid(
                "waiting_room_return_url",
                format!("`{url}` must be an http:// or https:// URL without spaces or quotes"),
            );
        }
    }
    if let Some(colour) = &c.waiting_room_accent {
        let Some(rgb) = parse_colour(colour) else {
            return invalid("waiting_room_accent", not_a_colour(colour));
        };
        let ratio = contrast(rgb, CARD);
        if ratio < MIN_CONTRAST {
            return invalid(
                "waiting_room_accent",
                format!(
                    "`{colour}` has a contrast of {ratio:.2}:1 with the white card; \
                     WCAG AA needs {MIN_CONTRAST}:1 for text: pick a darker shade"
                ),
            );
        }
    }
    if let Some(colour) = &c.waiting_room_background {
        if parse_colour(colour).is_none() {
            return invalid("waiting_room_background", not_a_colour(colour));
        }
    }
    let lang = &c.waiting_room_lang;
    let lang_ok = lang.split('-').enumerate().all(|(i, part)| {
        (1..=8).contains(&part.len())
            && part.bytes().all(|b| b.is_ascii_alphanumeric())
            && (i > 0 || part.bytes().all(|b| b.is_ascii_alphabetic()))
    });
    if !lang_ok {
        return invalid(
            "waiting_room_lang",
            format!("`{lang}` must be a language tag such as `en` or `de-CH`"),
        );
    }
    if let Some(unknown) = c
        .waiting_room_text
        .keys()
        .find(|k| !TEXT_KEYS.contains(&k.as_str()))
    {
        return invalid(
            "waiting_room_text",
            format!(
                "unknown text key `{unknown}`; the keys are: {}",
                TEXT_KEYS.join(", ")
            ),
        );
    }
    Ok(())
}

fn not_a_colour(colour: &str) -> String {
    format!("`{colour}` must be a hex colour, `#rgb` or `#rrggbb`")
}

/// `#rgb` or `#rrggbb`: the only forms accepted, so contrast can be checked
/// and the value written into the page's style as is.
pub fn parse_colour(s: &str) -> Option<[u8; 3]> {
    let hex = s.strip_prefix('#')?;
    if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let digit = |i: usize, n: usize| u8::from_str_radix(&hex[i..i + n], 16).ok();
    match hex.len() {
        3 => Some([digit(0, 1)? * 17, digit(1, 1)? * 17, digit(2, 1)? * 17]),
        6 => Some([digit(0, 2)?, digit(2, 2)?, digit(4, 2)?]),
        _ => None,
    }
}

/// WCAG 2.1 contrast ratio of two sRGB colours, 1 to 21.
pub fn contrast(a: [u8; 3], b: [u8; 3]) -> f64 {
    let (la, lb) = (luminance(a), luminance(b));
    (la.max(lb) + 0.05) / (la.min(lb) + 0.05)
}

fn luminance(rgb: [u8; 3]) -> f64 {
    let channel = |c: u8| {
        let c = f64::from(c) / 255.0;
        if c <= 0.039_28 {
            c / 12.92
        } else {
            ((c + 0.055) / 1.055).powf(2.4)
        }
    };
    0.2126 * channel(rgb[0]) + 0.7152 * channel(rgb[1]) + 0.0722 * channel(rgb[2])
}

/// The origin of an `https://` logo URL, for the page's `img-src`; `None`
/// for anything else.
pub fn logo_origin(url: &str) -> Option<&str> {
    let rest = url.strip_prefix("https://")?;
    let host_len = rest.find('/').unwrap_or(rest.len());
    let host = &rest[..host_len];
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b':');
    (host_ok && safe_url_chars(rest)).then(|| &url[.."https://".len() + host_len])
}

fn is_same_origin_path(url: &str) -> bool {
    url.starts_with('/') && !url.starts_with("//") && safe_url_chars(url)
}

/// No whitespace, controls, quotes, angle brackets, backslashes, or the
/// CSP's separators `;` and `,`.
fn safe_url_chars(s: &str) -> bool {
    s.chars().all(|c| {
        c.is_ascii_graphic() && !matches!(c, '"' | '\'' | '<' | '>' | '\\' | ';' | ',' | '`')
    })
}

/// `waiting_room_text`: a TOML table, or from a flag or variable a JSON
/// object.
pub fn text_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Texts {
        Table(BTreeMap<String, String>),
        Json(String),
    }
    match Texts::deserialize(d)? {
        Texts::Table(map) => Ok(map),
        Texts::Json(text) => serde_json::from_str(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "waiting_room_text from a flag or variable is a JSON object of strings: {e}"
            ))
        }),
    }
}

#[cfg(test)]
mod tests;
