//! Who a client is — its address (through trusted proxies only) or a
//! header — and the per-client admission rate.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use http::HeaderMap;
use ipnet::IpNet;

use super::forwarded::{self, Scheme};
use crate::config::{ClientKey, Config};

/// The client behind a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// The address the request came from, as far as it can be believed.
    pub ip: IpAddr,
    /// `X-Forwarded-For` to send upstream: the believed chain plus the peer.
    pub forwarded_for: String,
    /// `X-Forwarded-Proto` to send upstream: the scheme the client used.
    pub proto: Scheme,
    /// The identity used for idempotency and rate limits.
    pub key: String,
}

impl Client {
    /// Identifies the client of a request from `peer`, which reached the
    /// gateway over `scheme`. What proxies say (`X-Forwarded-For` and
    /// `X-Forwarded-Proto`, or `Forwarded`: see [`forwarded::hops`]) counts
    /// only when `peer` is a trusted proxy; then the client is the right-most
    /// address that is not itself a trusted proxy, and the scheme is the one
    /// the proxies report for it, `scheme` when they say none.
    /// With `header:NAME` and the header missing, the address is the key.
    pub fn identify(
        config: &Config,
        headers: &HeaderMap,
        peer: SocketAddr,
        scheme: Scheme,
    ) -> Client {
        let peer_ip = peer.ip();
        let trusted = |ip: &IpAddr| trusted_proxy(&config.trusted_proxies, *ip);
        let (ip, forwarded_for, proto) = if trusted(&peer_ip) {
            let (hops, nearest_proto) = forwarded::hops(headers);
            let client = hops
                .iter()
                .rev()
                .find(|h| h.ip.is_some_and(|ip| !trusted(&ip)));
            let proto = nearest_proto
                .or(client.and_then(|h| h.proto))
                .unwrap_or(scheme);
            let mut chain: Vec<String> = hops
                .iter()
                .map(|h| h.ip.map_or_else(|| h.node.clone(), |ip| ip.to_string()))
                .collect();
            chain.push(ip_text(peer_ip));
            let ip = client.and_then(|h| h.ip).unwrap_or(peer_ip);
            (ip, chain.join(", "), proto)
        } else {
            (peer_ip, ip_text(peer_ip), scheme)
        };
        let key = match &config.client_key {
            ClientKey::Header(name) => match headers.get(name).and_then(|v| v.to_str().ok()) {
                Some(v) if !v.is_empty() => prefixed("h:", v),
                _ => prefixed("ip:", &ip_text(ip)),
            },
            ClientKey::Ip => prefixed("ip:", &ip_text(ip)),
        };
        Client {
            ip,
            forwarded_for,
            proto,
            key,
        }
    }
}

/// `ip` as its `Display` writes it, without the formatting machinery for
/// IPv4 (every admission formats its client's address twice, and
/// `Ipv4Addr`'s `Display` goes through a padded write of each octet).
pub fn ip_text(ip: IpAddr) -> String {
    let IpAddr::V4(v4) = ip else {
        return ip.to_string();
    };
    let mut out = String::with_capacity(15);
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        if octet >= 100 {
            out.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            out.push(char::from(b'0' + octet / 10 % 10));
        }
        out.push(char::from(b'0' + octet % 10));
    }
    out
}

/// `prefix` then `rest`, in one allocation.
fn prefixed(prefix: &str, rest: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + rest.len());
    out.push_str(prefix);
    out.push_str(rest);
    out
}

/// Whether `ip` is one of the `trusted_proxies`, whose forwarding headers
/// and `X-Request-Id` are believed.
pub fn trusted_proxy(trusted_proxies: &[IpNet], ip: IpAddr) -> bool {
    trusted_proxies.iter().any(|n| n.contains(&ip))
}

/// How often idle clients are forgotten, so memory stays bounded however
/// many distinct clients a sale sees.
pub const FORGET_EVERY: Duration = Duration::from_secs(10);

/// Per-client admissions per second, per instance.
pub struct ClientLimiter {
    limiter: RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock>,
}

impl ClientLimiter {
    /// `None` when the per-client limit is off (`client_rate = 0`).
    pub fn new(rate: f64, burst: u32) -> Option<Self> {
        if rate <= 0.0 {
            return None;
        }
        let period = crate::clock::period(rate);
        let quota = Quota::with_period(period)?
            .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
        Some(ClientLimiter {
            limiter: RateLimiter::keyed(quota),
        })
    }

    /// `Err(wait)` when the client must wait before its next admission.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        self.limiter
            .check_key(&key.to_string())
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// Forgets clients whose limit has fully refilled.
    pub fn forget_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    /// Clients remembered now.
    pub fn len(&self) -> usize {
        self.limiter.len()
    }

    pub fn is_empty(&self) -> bool {
        self.limiter.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml: &str) -> Config {
        let text = format!("upstream = \"http://127.0.0.1:1\"\n{toml}");
        Config::from_toml(&text).unwrap()
    }

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
    fn ip_text_writes_what_display_does() {
        let mut ips: Vec<IpAddr> = ["::1", "2001:db8::7", "::ffff:10.0.0.1"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        for a in [0u8, 1, 9, 10, 42, 99, 100, 101, 110, 199, 200, 250, 255] {
            ips.push(IpAddr::from([a, 255 - a, a / 3, a.wrapping_mul(7)]));
        }
        for ip in ips {
            assert_eq!(ip_text(ip), ip.to_string());
        }
    }

    #[test]
    fn forwarded_for_is_only_believed_from_trusted_proxies() {
        let c = config("trusted_proxies = [\"10.0.0.0/8\"]\n");
        let xff = headers(&[("x-forwarded-for", "6.6.6.6, 203.0.113.9, 10.1.1.1")]);
        let via_proxy = Client::identify(&c, &xff, "10.0.0.2:5000".parse().unwrap(), Scheme::Http);
        assert_eq!(via_proxy.ip.to_string(), "203.0.113.9");
        assert_eq!(
            via_proxy.forwarded_for,
            "6.6.6.6, 203.0.113.9, 10.1.1.1, 10.0.0.2"
        );
        let direct = Client::identify(&c, &xff, "198.51.100.7:5000".parse().unwrap(), Scheme::Http);
        assert_eq!(direct.ip.to_string(), "198.51.100.7");
        assert_eq!(direct.forwarded_for, "198.51.100.7");
        assert_eq!(direct.key, "ip:198.51.100.7");
    }

    #[test]
    fn the_scheme_is_the_trusted_proxys_word_or_the_gateways_own() {
        let c = config("trusted_proxies = [\"10.0.0.0/8\"]\n");
        let proxy = "10.0.0.2:5000".parse().unwrap();
        let stranger = "198.51.100.7:5000".parse().unwrap();
        let xfp = headers(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-proto", "https"),
        ]);
        assert_eq!(
            Client::identify(&c, &xfp, proxy, Scheme::Http).proto,
            Scheme::Https
        );
        assert_eq!(
            Client::identify(&c, &xfp, stranger, Scheme::Http).proto,
            Scheme::Http
        );
        assert_eq!(
            Client::identify(&c, &xfp, stranger, Scheme::Https).proto,
            Scheme::Https
        );
        let silent = headers(&[("x-forwarded-for", "203.0.113.9")]);
        assert_eq!(
            Client::identify(&c, &silent, proxy, Scheme::Https).proto,
            Scheme::Https
        );

        // RFC 7239: the element naming the client says how it connected.
        let fwd = headers(&[(
            "forwarded",
            "for=6.6.6.6;proto=http, for=203.0.113.9;proto=https, for=\"10.1.1.1:80\";proto=http",
        )]);
        let via_proxy = Client::identify(&c, &fwd, proxy, Scheme::Http);
        assert_eq!(via_proxy.ip.to_string(), "203.0.113.9");
        assert_eq!(via_proxy.proto, Scheme::Https);
        assert_eq!(
            via_proxy.forwarded_for,
            "6.6.6.6, 203.0.113.9, 10.1.1.1, 10.0.0.2"
        );
        let direct = Client::identify(&c, &fwd, stranger, Scheme::Http);
        assert_eq!(direct.ip.to_string(), "198.51.100.7");
        assert_eq!(direct.proto, Scheme::Http);
    }

    #[test]
    fn header_key_falls_back_to_the_address() {
        let c = config("client_key = \"header:x-user\"\n");
        let peer = "192.0.2.1:1".parse().unwrap();
        assert_eq!(
            Client::identify(&c, &headers(&[("x-user", "u42")]), peer, Scheme::Http).key,
            "h:u42"
        );
        assert_eq!(
            Client::identify(&c, &HeaderMap::new(), peer, Scheme::Http).key,
            "ip:192.0.2.1"
        );
    }

    #[test]
    fn limiter_allows_the_burst_then_says_how_long_to_wait() {
        let l = ClientLimiter::new(2.0, 3).unwrap();
        for _ in 0..3 {
            assert!(l.check("a").is_ok());
        }
        let wait = l.check("a").unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        assert!(l.check("b").is_ok(), "clients are limited separately");
        assert!(ClientLimiter::new(0.0, 1).is_none());
    }
}
