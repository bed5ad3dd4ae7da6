//! Request paths in one normal form, so that what is matched against the
//! queued routes is what the upstream receives.
//!
//! A path that could name one resource to the gateway and another to the
//! order service is a way around the queue: `/%63heckout`, `//checkout` or
//! `/x/../checkout` are all `/checkout` to a typical web framework. The
//! anchors are Envoy's `normalize_path` (RFC 3986 §6.2.2), `merge_slashes`
//! and `path_with_escaped_slashes_action: REJECT_REQUEST`, and nginx's
//! `merge_slashes`:
//!
//! - escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded,
//!   the hex of every other escape is uppercased, and bytes that may not
//!   stand in a path unescaped (non-ASCII, `"`, `{`, `|`, …) are escaped;
//! - `.` and `..` segments are resolved (also spelled `%2E`), and runs of
//!   `/` merged into one;
//! - what different servers read differently is refused ([`PathError`]):
//!   encoded `/` or `\`, `%00`, a `%` not followed by two hex digits, a
//!   literal `\`, a dot segment with parameters, a climb above the root.
//!
//! Decoding happens once: `%25` (`%`) is not unreserved, so `%252F` stays
//! `%252F` and is never read as `%2F`.
//!
//! Route matching ([`matches`]) then ignores what frameworks ignore or
//! treat as the same resource: path parameters (`;a=b`, stripped by servlet
//! containers), empty segments and a trailing slash.

use std::borrow::Cow;

/// Why a path was refused: servers would disagree on what it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the request target must be a path starting with `/`")]
    NotAbsolute,
    #[error("the path has an encoded `/` (%2F), which servers decode differently")]
    EncodedSlash,
    #[error("the path has an encoded `\\` (%5C), which servers decode differently")]
    EncodedBackslash,
    #[error("the path has an encoded NUL (%00)")]
    EncodedNul,
    #[error("the path has a `%` that is not followed by two hex digits")]
    InvalidEscape,
    #[error("the path has a `\\`, which some servers read as `/`")]
    Backslash,
    #[error(
        "the path has a `.` or `..` segment with `;` parameters, which servers resolve differently"
    )]
    DotSegmentParameters,
    #[error("the path climbs above the root with `..`")]
    AboveRoot,
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// `unreserved` of RFC 3986 §2.3: the same character escaped or not.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// `pchar` of RFC 3986 §3.3 but for `%`: may stand in a segment as it is.
fn is_plain(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
        )
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// A segment that is `.` or `..` once its parameters are stripped.
fn dot_head(segment: &str) -> Option<&str> {
    let head = segment.split(';').next().unwrap_or_default();
    matches!(head, "." | "..").then_some(head)
}

/// The normal form of a request path (the part before `?`), or why it has
/// none. Borrowed when the path is already normal, as nearly all are.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if is_normal(path) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode(path)?;
    resolve(&decoded).map(Cow::Owned)
}

/// True when [`normalize`] would return `path` unchanged: plain bytes only
/// (no escapes, which take the slow path), no empty segment but a trailing
/// one, no dot segment.
fn is_normal(path: &str) -> bool {
    let mut segments = path[1..].split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        if (segment.is_empty() && !last)
            || dot_head(segment).is_some()
            || !segment.bytes().all(is_plain)
        {
            return false;
        }
    }
    true
}

/// Escapes in one spelling: unreserved decoded, the others uppercased, and
/// bytes that need one escaped. Refuses what could decode to a separator.
fn decode(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(bytes.len() + 8);
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let digit = |at: usize| bytes.get(at).copied().and_then(hex_value);
                let (Some(hi), Some(lo)) = (digit(i + 1), digit(i + 2)) else {
                    return Err(PathError::InvalidEscape);
                };
                match (hi << 4) | lo {
                    0 => return Err(PathError::EncodedNul),
                    b'/' => return Err(PathError::EncodedSlash),
                    b'\\' => return Err(PathError::EncodedBackslash),
                    v if is_unreserved(v) => out.push(char::from(v)),
                    v => escaped(&mut out, v),
                }
                i += 3;
                continue;
            }
            b'\\' => return Err(PathError::Backslash),
            0 => return Err(PathError::EncodedNul),
            b'/' => out.push('/'),
            b if is_plain(b) => out.push(char::from(b)),
            // Bytes of a UTF-8 character one by one: the result is ASCII.
            b => escaped(&mut out, b),
        }
        i += 1;
    }
    Ok(out)
}

fn escaped(out: &mut String, b: u8) {
    out.push('%');
    out.push(char::from(HEX[usize::from(b >> 4)]));
    out.push(char::from(HEX[usize::from(b & 0xf)]));
}

/// Resolves dot segments (RFC 3986 §5.2.4) and merges slashes in a decoded
/// path. A path ending in a separator, `.` or `..` keeps a trailing slash.
fn resolve(decoded: &str) -> Result<String, PathError> {
    let mut kept: Vec<&str> = Vec::new();
    let mut trailing = false;
    for segment in decoded[1..].split('/') {
        if segment.contains(';') && dot_head(segment).is_some() {
            return Err(PathError::DotSegmentParameters);
        }
        match segment {
            "" | "." => {}
            ".." => {
                kept.pop().ok_or(PathError::AboveRoot)?;
            }
            _ => kept.push(segment),
        }
        trailing = matches!(segment, "" | "." | "..");
    }
    let mut out = String::with_capacity(decoded.len());
    for segment in &kept {
        out.push('/');
        out.push_str(segment);
    }
    if trailing || kept.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// The segments a route is matched on: parameters stripped, and the empty
/// ones (a trailing slash, a segment that was only parameters) skipped.
fn route_segments(path: &str) -> impl Iterator<Item = &str> {
    path.split('/')
        .map(|s| s.split(';').next().unwrap_or_default())
        .filter(|s| !s.is_empty())
}

/// Whether a normalized request path is a route's path: segment by segment,
/// ignoring `;` parameters and a trailing slash; ASCII case too when
/// `case_insensitive`.
pub fn matches(route: &str, path: &str, case_insensitive: bool) -> bool {
    // The common case, a request for the route's own spelling, without
    // splitting either into segments.
    if route == path {
        return true;
    }
    let (mut want, mut have) = (route_segments(route), route_segments(path));
    loop {
        match (want.next(), have.next()) {
            (None, None) => return true,
            (Some(a), Some(b)) if a == b || (case_insensitive && a.eq_ignore_ascii_case(b)) => {}
            _ => return false,
        }
    }
}

/// A configured route's path in normal form; refused when it is not a
/// path, or has `;` parameters (a request's are ignored when matching, so
/// a route's could never match).
pub fn route_path(path: &str) -> Result<String, String> {
    let normal = normalize(path).map_err(|e| format!("`{path}`: {e}"))?;
    if normal.contains(';') {
        return Err(format!(
            "`{path}`: a route path cannot have `;` parameters (they are ignored when matching)"
        ));
    }
    Ok(normal.into_owned())
}

#[cfg(test)]
mod tests;
