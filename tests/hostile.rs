//! Hostile input against the built gateway, in raw bytes over TCP: request
//! smuggling probes, size and time limits, the connection cap, 10,000 idle
//! connections, forwarding-header hygiene, open-proxy tricks, forged tickets
//! and the admin API on both listeners. After every probe the process must
//! still be alive and serving.

mod support;

use std::time::{Duration, Instant};

use support::raw::{read_to_close, until_close};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `flashgate serve` with the embedded queue in front of `upstream`.
async fn serve(upstream: &MockUpstream, extra: &[&str]) -> GatewayProcess {
    Gateway::builder()
        .upstream(upstream)
        .args(extra)
        .process()
        .await
}

/// The process has not crashed, and still answers a normal request.
async fn assert_alive(gw: &mut GatewayProcess) {
    assert!(gw.running(), "the gateway died");
    let a = gw.client().admit("{}").await;
    assert_eq!(a.status, 202, "{}", a.text());
}

/// The public answers with this status in `/metrics`, all routes.
async fn answers(gw: &GatewayProcess, code: &str) -> u64 {
    let label = format!("code=\"{code}\"");
    let metrics = gw.client().metrics().await;
    metrics.sum("flashgate_http_requests_total", &[&label]) as u64
}

const WAIT: Duration = Duration::from_secs(5);

/// A second request hidden behind each framing trick: if the gateway ever
/// parsed it, the upstream (passthrough is on) would see `/smuggled`.
const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_probes_get_400_and_a_closed_connection() {
    let upstream = MockUpstream::start().await;
    let mut edge = serve(&upstream, &["--passthrough"]).await;
    let probes: Vec<(&str, String)> = vec![
        (
            "CL + TE",
            format!("POST /checkout HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "TE + CL on passthrough",
            format!("POST /other HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "duplicate CL",
            format!("POST /checkout HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 40\r\n\r\n{{}}{SMUGGLED}"),
        ),
        (
            "CL list",
            format!("POST /checkout HTTP/1.1\r\nHost: x\r\nContent-Length: 2, 40\r\n\r\n{{}}{SMUGGLED}"),
        ),
        (
            "signed CL",
            format!("POST /checkout HTTP/1.1\r\nHost: x\r\nContent-Length: +2\r\n\r\n{{}}{SMUGGLED}"),
        ),
        (
            "negative CL",
            format!("POST /checkout HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n{SMUGGLED}"),
        ),
        (
            "unknown coding",
            format!("POST /checkout HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\n\r\n{SMUGGLED}"),
        ),
        (
            "chunked not last",
            format!("POST /checkout HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "coding before chunked",
            format!("POST /checkout HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "obfuscated TE",
            format!("POST /checkout HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "oversized chunk size",
            format!("POST /checkout HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff1\r\nab\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "bare LF after chunk size",
            format!("POST /checkout HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\n{{}}\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "bare LF in chunk data terminator",
            format!("POST /checkout HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{{}}\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "obs-fold header",
            format!("POST /checkout HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n Transfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n{{}}{SMUGGLED}"),
        ),
        (
            "bare LF line endings",
            format!("POST /checkout HTTP/1.1\nHost: x\nContent-Length: 2\n\n{{}}{SMUGGLED}"),
        ),
        (
            "bare LF ending one header",
            format!("POST /checkout HTTP/1.1\r\nHost: x\nContent-Length: 2\r\n\r\n{{}}{SMUGGLED}"),
        ),
        (
            "bare LF ending the head",
            format!("POST /other HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\n{{}}{SMUGGLED}"),
        ),
        (
            "bare CR in a header",
            format!("POST /checkout HTTP/1.1\r\nHost: x\r\nX-A: 1\rContent-Length: 40\r\nContent-Length: 2\r\n\r\n{{}}{SMUGGLED}"),
        ),
        (
            "space in request line",
            format!("POST /check out HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{{}}{SMUGGLED}"),
        ),
        (
            "NUL in header",
            format!("POST /checkout HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\nContent-Length: 2\r\n\r\n{{}}{SMUGGLED}"),
        ),
    ];
    let mut report = Vec::new();
    let mut wrong = Vec::new();
    for (name, bytes) in &probes {
        let r = until_close(edge.public_addr(), bytes.as_bytes(), WAIT).await;
        let line = format!(
            "{name}: {:?}, {} answer(s), closed: {}",
            r.status(),
            r.responses(),
            r.closed
        );
        if r.status() != Some(400) || r.responses() != 1 || !r.closed {
            wrong.push(format!("{line}\n{}", r.text));
        }
        report.push(line);
    }
    // Pipelined: the well-framed requests before a refused one are each
    // answered, in order, then the 400, then the close.
    let good = [
        "POST /checkout HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
        "POST /checkout HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n{\r\n1;x=y\r\n}\r\n0\r\nA: b\r\n\r\n",
        "GET /tickets/forged HTTP/1.1\r\nHost: x\r\n\r\n",
    ]
    .concat();
    let bad = format!("POST /checkout HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}");
    let r = until_close(edge.public_addr(), format!("{good}{bad}").as_bytes(), WAIT).await;
    let statuses: Vec<&str> = r
        .text
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &r.text[i + 9..i + 12])
        .collect();
    report.push(format!(
        "pipelined 3 good + CL+TE: {statuses:?}, closed: {}",
        r.closed
    ));
    if statuses != ["202", "202", "404", "400"] || !r.closed {
        wrong.push(format!("pipelined: {statuses:?}\n{}", r.text));
    }
    println!("smuggling probes:\n  {}", report.join("\n  "));
    assert!(
        wrong.is_empty(),
        "probes answered wrongly:\n{}",
        wrong.join("\n")
    );
    assert!(
        upstream
            .received()
            .iter()
            .all(|r| !r.path.contains("smuggled")),
        "a smuggled request reached the upstream"
    );
    // Every 400, whether hyper, the framing check or a route gave it, is
    // counted: one per probe and one for the pipelined refusal.
    assert_eq!(
        answers(&edge, "400").await,
        probes.len() as u64 + 1,
        "flashgate_http_requests_total with code 400"
    );
    assert_alive(&mut edge).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_and_time_limits_answer_with_the_right_status() {
    let upstream = MockUpstream::start().await;
    let mut edge = serve(
        &upstream,
        &[
            "--max-body",
            "1KiB",
            "--max-header-size",
            "4KiB",
            "--header-timeout",
            "1s",
            "--body-timeout",
            "1s",
        ],
    )
    .await;
    let port = edge.public_addr();

    // 413 from Content-Length, before the body is sent.
    let r = until_close(
        port,
        b"POST /checkout HTTP/1.1\r\nHost: x\r\nContent-Length: 999999\r\n\r\n",
        WAIT,
    )
    .await;
    assert_eq!(r.status(), Some(413), "{}", r.text);

    // 413 while streaming a chunked body past the limit.
    let mut chunked =
        b"POST /checkout HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..4 {
        chunked.extend_from_slice(b"200\r\n");
        chunked.extend_from_slice(&[b'x'; 0x200]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let r = until_close(port, &chunked, WAIT).await;
    assert_eq!(r.status(), Some(413), "{}", r.text);

    // 431 for a head over the limit.
    let big = format!(
        "GET /tickets/x HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(8 * 1024)
    );
    let r = until_close(port, big.as_bytes(), WAIT).await;
    assert_eq!(r.status(), Some(431), "{}", r.text);

    // 414 for a target over 8KiB that still fits the head limit.
    let edge_wide = serve(&upstream, &["--max-header-size", "64KiB"]).await;
    let long = format!(
        "GET /tickets/{} HTTP/1.1\r\nHost: x\r\n\r\n",
        "a".repeat(9000)
    );
    let r = until_close(edge_wide.public_addr(), long.as_bytes(), WAIT).await;
    assert_eq!(r.status(), Some(414), "{}", r.text);
    assert!(r.text.contains("uri_too_long"), "{}", r.text);

    // A head that never finishes is cut off after --header-timeout.
    let r = until_close(port, b"POST /checkout HTTP/1.1\r\nHost: x\r\n", WAIT).await;
    assert!(r.closed, "a slow head kept its connection: {r:?}");

    // A body that never finishes gets 408 after --body-timeout.
    let r = until_close(
        port,
        b"POST /checkout HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{\"a\"",
        WAIT,
    )
    .await;
    assert_eq!(r.status(), Some(408), "{}", r.text);
    assert!(r.text.contains("request_timeout"), "{}", r.text);
    assert!(r.closed, "a slow body kept its connection");

    // An idle kept-alive connection is closed after the same timeout.
    let mut s = TcpStream::connect(port).await.unwrap();
    s.write_all(b"GET /tickets/x HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let r = read_to_close(&mut s, WAIT).await;
    assert_eq!(r.status(), Some(404), "{}", r.text);
    assert!(r.closed, "an idle keep-alive connection stayed open");
    assert_alive(&mut edge).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_get_503_and_open_ones_are_still_served() {
    let upstream = MockUpstream::start().await;
    let mut edge = serve(
        &upstream,
        &["--max-connections", "4", "--header-timeout", "30s"],
    )
    .await;
    // Three idle connections and one kept-alive client fill the cap.
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(
            TcpStream::connect(("127.0.0.1", edge.public))
                .await
                .unwrap(),
        );
    }
    let mut kept = TcpStream::connect(("127.0.0.1", edge.public))
        .await
        .unwrap();
    let ask = b"GET /tickets/x HTTP/1.1\r\nHost: x\r\n\r\n";
    kept.write_all(ask).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = kept.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 404"));

    // The next connection is refused with a canned 503 and closed.
    let over = until_close(edge.public_addr(), ask, WAIT).await;
    assert_eq!(over.status(), Some(503), "{}", over.text);
    assert!(over.text.contains("retry-after: 1"), "{}", over.text);
    assert!(over.closed);
    assert_eq!(
        answers(&edge, "503").await,
        1,
        "the shed connection is counted"
    );
    let metrics = edge.client().metrics().await;
    assert_eq!(
        metrics.sum("flashgate_connections_shed_total", &[]),
        1.0,
        "and counted as shed"
    );

    // The client already connected is still served.
    kept.write_all(ask).await.unwrap();
    let n = kept.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 404"));

    // Freed slots are usable again.
    drop(idle);
    drop(kept);
    eventually(Duration::from_secs(10), "a slot frees up", || async {
        let r = until_close(edge.public_addr(), ask, WAIT).await;
        (r.status() == Some(404)).then_some(())
    })
    .await;
    assert_alive(&mut edge).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_connections_leave_normal_clients_served() {
    const IDLE: usize = 10_000;
    let limit = raise_open_files_limit();
    assert!(
        limit >= IDLE as u64 + 512,
        "open-files hard limit {limit} is too low for this test; raise it (ulimit -Hn)"
    );
    let upstream = MockUpstream::start().await;
    let mut edge = serve(
        &upstream,
        &["--max-connections", "10100", "--header-timeout", "120s"],
    )
    .await;
    let before = edge.rss_kib();
    let mut idle = Vec::with_capacity(IDLE);
    let started = Instant::now();
    for _ in 0..IDLE {
        idle.push(
            TcpStream::connect(("127.0.0.1", edge.public))
                .await
                .unwrap(),
        );
    }
    // A normal client is served while they are all open.
    assert_alive(&mut edge).await;
    let after = edge.rss_kib();
    let per_conn = (after.saturating_sub(before)) * 1024 / IDLE as u64;
    println!(
        "{IDLE} idle connections opened in {:?}: gateway RSS {before} KiB -> {after} KiB ({per_conn} B per connection)",
        started.elapsed()
    );
    // Each idle connection holds a task and hyper's first read buffer
    // (8KiB); the cap is what keeps the total bounded.
    assert!(per_conn < 32 * 1024, "{per_conn} bytes per idle connection");
    // The idle connections are still open (not shed): none has been closed.
    let mut buf = [0u8; 1];
    for s in idle.iter().step_by(997) {
        match s.try_read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("an idle connection was closed: {other:?}"),
        }
    }
    drop(idle);
    assert_alive(&mut edge).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_are_rebuilt_and_host_never_picks_the_upstream() {
    let upstream = MockUpstream::start().await;
    let mut edge = serve(&upstream, &["--passthrough"]).await;
    let probes = [
        // Absolute-form target naming another host.
        "GET http://evil.example/abs?q=1 HTTP/1.1\r\nHost: evil.example\r\n\r\n",
        // Host header naming another host (and our own admin port).
        "GET /host HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n",
        // Hop-by-hop and spoofed forwarding headers.
        "GET /hop HTTP/1.1\r\nHost: x\r\nConnection: close, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\nUpgrade: h2c\r\nX-Forwarded-For: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\nX-Forwarded-Proto: https\r\n\r\n",
    ];
    for p in probes {
        let r = until_close(edge.public_addr(), p.as_bytes(), WAIT).await;
        assert_eq!(r.status(), Some(201), "{p}: {}", r.text);
    }
    let got = upstream.received();
    let paths: Vec<&str> = got.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["/abs?q=1", "/host", "/hop"]);
    for r in &got {
        assert_eq!(r.header("host"), upstream.addr.to_string(), "{}", r.path);
        assert_eq!(r.header("x-forwarded-for"), "127.0.0.1", "{}", r.path);
        assert_eq!(r.header("x-forwarded-proto"), "http", "{}", r.path);
    }
    let hop = &got[2];
    for name in [
        "connection",
        "x-secret",
        "keep-alive",
        "te",
        "proxy-authorization",
        "upgrade",
        "forwarded",
    ] {
        assert!(
            hop.headers.get(name).is_none(),
            "{name} reached the upstream"
        );
    }
    assert_alive(&mut edge).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_is_only_on_the_admin_listener_and_needs_the_token() {
    let upstream = MockUpstream::start().await;
    let token = "t0ken-for-the-admin-api";
    let mut edge = serve(&upstream, &["--admin-token", token]).await;
    let c = edge.client();
    for path in ["/admin/queues", "/metrics", "/healthz", "/readyz"] {
        let a = c.get(path).await;
        assert_eq!(a.status, 404, "{path} answered on the public listener");
    }
    let a = c
        .send(
            "PATCH",
            "/admin/queues/checkout",
            &[("authorization", &format!("Bearer {token}"))],
            r#"{"paused":true}"#,
        )
        .await;
    assert_eq!(a.status, 404, "PATCH answered on the public listener");

    for auth in [
        "",
        "Bearer",
        "Bearer wrong",
        "Basic dDBrZW4=",
        &format!("Bearer {token}x"),
        &format!("bearer {token}"),
    ] {
        let headers: Vec<(&str, &str)> = if auth.is_empty() {
            vec![]
        } else {
            vec![("authorization", auth)]
        };
        let a = c.admin("GET", "/admin/queues", &headers, "").await;
        assert_eq!(a.status, 401, "`{auth}` was let in");
        assert_eq!(a.header("www-authenticate"), "Bearer");
    }
    let a = c
        .admin(
            "GET",
            "/admin/queues",
            &[("authorization", &format!("Bearer {token}"))],
            "",
        )
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(c.admin_get("/metrics").await.status, 200);
    assert_alive(&mut edge).await;
}

/// A small deterministic generator: failures reproduce from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A short property run over the admission path's parsing and the ticket
/// decoder: random mutations of a valid admission, random ticket ids.
/// Writes a request and reads the status line, with a deadline.
async fn status_of(port: u16, bytes: &[u8]) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let mut buf = [0u8; 2048];
    let read = async {
        while let Ok(n @ 1..) = s.read(&mut buf).await {
            out.extend_from_slice(&buf[..n]);
            if out.len() >= 12 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), read).await;
    std::str::from_utf8(out.get(9..12)?).ok()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mangled_admissions_and_ticket_ids_never_crash_the_gateway() {
    let upstream = MockUpstream::start().await;
    let mut gw = serve(
        &upstream,
        &[
            "--max-body",
            "1KiB",
            "--header-timeout",
            "2s",
            "--body-timeout",
            "1s",
        ],
    )
    .await;
    let template = b"POST /checkout?x=1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nIdempotency-Key: k-1\r\nContent-Length: 11\r\n\r\n{\"sku\":42}\n";
    let noise =
        b"\r\n :;,\0\x7f\xff-+0123456789abcdefABCDEF/?%#chunkedContent-LengthTransfer-Encoding";
    let mut rng = Rng(0x5eed_f1a5_6a7e);
    let mut seen = std::collections::BTreeMap::new();
    for case in 0..300 {
        let mut req = template.to_vec();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(req.len());
            match rng.below(4) {
                0 => req[at] = noise[rng.below(noise.len())],
                1 => req.insert(at, noise[rng.below(noise.len())]),
                2 => {
                    req.remove(at);
                }
                _ => {
                    let len = rng.below(16).min(req.len() - at);
                    let chunk = req[at..at + len].to_vec();
                    req.splice(at..at, chunk);
                }
            }
        }
        let status = status_of(gw.public, &req).await;
        *seen.entry(status).or_insert(0) += 1;
        if let Some(s) = status {
            assert!(
                s < 500 || s == 503,
                "case {case}: {s} for {:?}",
                String::from_utf8_lossy(&req)
            );
        }
        // Random ticket ids through the decoder, valid-looking or not.
        let len = rng.below(60);
        let id: String = (0..len)
            .map(|_| b"ABCxyz019-_+/=%."[rng.below(16)] as char)
            .collect();
        let poll = format!("GET /tickets/{id} HTTP/1.1\r\nHost: x\r\n\r\n");
        let s = status_of(gw.public, poll.as_bytes()).await;
        assert!(matches!(s, Some(404 | 400)), "ticket `{id}`: {s:?}");
    }
    println!("statuses over 300 mangled admissions: {seen:?}");
    assert_alive(&mut gw).await;
}
