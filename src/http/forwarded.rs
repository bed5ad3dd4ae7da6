//! What a trusted proxy says about the hop before it: the address chain and
//! the scheme, from `X-Forwarded-For`/`X-Forwarded-Proto` or from RFC 7239's
//! `Forwarded`.
//!
//! Only [`super::client::Client::identify`] reads these, and only when the
//! socket peer is a trusted proxy: from anyone else they are the client's
//! own words.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;

/// The scheme a connection reached the gateway over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// The plaintext listener.
    Http,
    /// The listener with `--tls-cert`.
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    /// The scheme the listener recorded on a request (`http` when none did).
    pub fn of(extensions: &http::Extensions) -> Scheme {
        extensions.get::<Scheme>().copied().unwrap_or(Scheme::Http)
    }

    /// `http` or `https`, case-insensitive; anything else is not believed.
    fn parse(s: &str) -> Option<Scheme> {
        let s = s.trim().trim_matches('"');
        if s.eq_ignore_ascii_case("https") {
            Some(Scheme::Https)
        } else if s.eq_ignore_ascii_case("http") {
            Some(Scheme::Http)
        } else {
            None
        }
    }
}

/// One hop a proxy reports: the address it received the request from, as
/// written (an `unknown` or obfuscated node stays unparsed), and the scheme
/// of that connection when the header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    pub node: String,
    pub ip: Option<IpAddr>,
    pub proto: Option<Scheme>,
}

/// The hops the proxies report, outermost first, and the scheme the nearest
/// proxy reports when it is given per request rather than per hop
/// (`X-Forwarded-Proto`).
///
/// `X-Forwarded-For` is what nginx, Envoy, HAProxy and the cloud load
/// balancers maintain by default, so it is read first; `Forwarded` only when
/// a request carries no `X-Forwarded-For`. A proxy that maintains only
/// `Forwarded` must therefore drop a client's `X-Forwarded-For`.
pub fn hops(headers: &HeaderMap) -> (Vec<Hop>, Option<Scheme>) {
    if headers.contains_key("x-forwarded-for") {
        let hops = values(headers, "x-forwarded-for")
            .map(|node| Hop {
                ip: node.parse().ok(),
                node: node.to_string(),
                proto: None,
            })
            .collect();
        // Right-most: the value the nearest (trusted) proxy set or appended;
        // anything left of it may be the client's own.
        let proto = values(headers, "x-forwarded-proto")
            .last()
            .and_then(Scheme::parse);
        (hops, proto)
    } else {
        (forwarded(headers), None)
    }
}

/// The comma-separated values of every `name` header, in order.
fn values<'a>(headers: &'a HeaderMap, name: &str) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// RFC 7239 elements (`for=192.0.2.60;proto=https, for="[2001:db8::1]:4711"`)
/// that name a `for` node; quoted strings holding commas or semicolons are
/// not split correctly, and none of the parameters this reads needs them.
fn forwarded(headers: &HeaderMap) -> Vec<Hop> {
    let mut hops = Vec::new();
    for element in values(headers, "forwarded") {
        let mut node = None;
        let mut proto = None;
        for pair in element.split(';') {
            let Some((key, value)) = pair.split_once('=') else {
                continue;
            };
            let key = key.trim();
            if key.eq_ignore_ascii_case("for") {
                node = Some(value.trim().trim_matches('"').to_string());
            } else if key.eq_ignore_ascii_case("proto") {
                proto = Scheme::parse(value);
            }
        }
        if let Some(node) = node {
            hops.push(Hop {
                ip: node_ip(&node),
                node,
                proto,
            });
        }
    }
    hops
}

/// The address of a `Forwarded` node: `192.0.2.43`, `192.0.2.43:47011`,
/// `[2001:db8:cafe::17]` or `[2001:db8:cafe::17]:4711`.
fn node_ip(node: &str) -> Option<IpAddr> {
    if let Some(rest) = node.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    node.parse()
        .ok()
        .or_else(|| node.parse::<SocketAddr>().ok().map(|a| a.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn forwarded_elements_name_their_node_and_scheme() {
        let (hops, proto) = hops(&headers(&[
            ("forwarded", "for=192.0.2.60;proto=HTTPS;by=203.0.113.43"),
            (
                "forwarded",
                "for=\"[2001:db8:cafe::17]:4711\", for=unknown, for=\"10.0.0.1:8080\"",
            ),
        ]));
        assert_eq!(proto, None);
        let ips: Vec<_> = hops.iter().map(|h| h.ip.map(|ip| ip.to_string())).collect();
        assert_eq!(
            ips,
            [
                Some("192.0.2.60".into()),
                Some("2001:db8:cafe::17".into()),
                None,
                Some("10.0.0.1".into())
            ]
        );
        assert_eq!(hops[0].proto, Some(Scheme::Https));
        assert_eq!(hops[1].proto, None);
        assert_eq!(hops[2].node, "unknown");
    }

    #[test]
    fn x_forwarded_for_wins_and_its_proto_is_the_right_most() {
        let (hops, proto) = hops(&headers(&[
            ("forwarded", "for=198.51.100.1;proto=http"),
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-proto", "http, https"),
        ]));
        assert_eq!(hops.len(), 1);
        assert_eq!(hops[0].node, "203.0.113.9");
        assert_eq!(proto, Some(Scheme::Https));
        let (_, proto) = hops_of(&[("x-forwarded-for", "1.2.3.4"), ("x-forwarded-proto", "ftp")]);
        assert_eq!(proto, None, "only http and https are believed");
    }

    fn hops_of(pairs: &[(&str, &str)]) -> (Vec<Hop>, Option<Scheme>) {
        hops(&headers(pairs))
    }
}
