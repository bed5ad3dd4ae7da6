//! HTTP/2 at the edge, against real clients: curl with prior knowledge on
//! plaintext (h2c) and with ALPN over TLS trusting a throw-away CA, and raw
//! HTTP/2 frames for the per-connection limits (concurrent streams, rapid
//! resets) that a well-behaved client never reaches.

mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::pki::pki;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);

/// What curl answered: the HTTP version it spoke, the status, the body.
struct Curled {
    version: String,
    status: u16,
    body: String,
}

impl Curled {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// Runs curl with `args` and the URL last.
fn curl(args: &[&str], url: &str) -> Curled {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-w",
            "\n%{http_version} %{http_code}",
        ])
        .args(args)
        .arg(url)
        .output()
        .expect("curl must be installed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "curl {args:?} {url}: {}{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (body, last) = text.rsplit_once('\n').unwrap();
    let (version, status) = last.split_once(' ').unwrap();
    Curled {
        version: version.to_string(),
        status: status.parse().unwrap(),
        body: body.to_string(),
    }
}

/// Admits one checkout with curl over `args` and polls its ticket the same
/// way until it is completed; every answer must come in HTTP `version`.
async fn admit_poll_complete(base: &str, args: &[&str], version: &str) {
    let mut post = args.to_vec();
    post.extend([
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "-d",
        "{\"sku\":1}",
    ]);
    let admitted = curl(&post, &format!("{base}/checkout"));
    assert_eq!(admitted.status, 202, "{}", admitted.body);
    assert_eq!(admitted.version, version);
    let poll = admitted.json()["poll_url"].as_str().unwrap().to_string();
    let done = eventually(WAIT, "the ticket to complete", || async {
        let polled = curl(args, &format!("{base}{poll}"));
        assert_eq!(polled.version, version);
        let v = polled.json();
        (v["status"] == "completed").then_some(v)
    })
    .await;
    assert_eq!(done["status"], "completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_with_prior_knowledge_admits_polls_and_completes() {
    let upstream = MockUpstream::start().await;
    let gw = Gateway::builder()
        .toml("drain_rate = 1000\n")
        .upstream(&upstream)
        .start()
        .await;
    let base = format!("http://{}", gw.public_addr);
    let h2c = ["--http2-prior-knowledge"];
    admit_poll_complete(&base, &h2c, "2").await;
    // HTTP/1.1 on the same listener as before.
    admit_poll_complete(&base, &["--http1.1"], "1.1").await;
    // Normalized routing holds: a dot segment and a doubled slash still
    // reach the queue's route.
    let mut post = h2c.to_vec();
    post.extend(["--path-as-is", "-X", "POST", "-d", "{}"]);
    let routed = curl(&post, &format!("{base}/shop/..//checkout"));
    assert_eq!(routed.status, 202, "{}", routed.body);
    let got = eventually(WAIT, "three orders upstream", || async {
        let got = upstream.received();
        (got.len() == 3).then_some(got)
    })
    .await;
    assert!(got.iter().all(|r| r.path == "/checkout"));
    assert!(got.iter().all(|r| r.header("x-forwarded-proto") == "http"));
    // A header block over --max-header-size (16KiB) is refused. Sent with
    // no body: h2 answers 431 and resets the stream, and with a body still
    // on its way curl reported the reset (PROTOCOL_ERROR) instead of the
    // 431 in about one run in twelve; without one, 40 runs of 40 saw 431.
    let big = format!("x-big: {}", "a".repeat(20 << 10));
    let mut post = h2c.to_vec();
    post.extend(["-X", "POST", "-H", &big]);
    let refused = curl(&post, &format!("{base}/checkout"));
    assert_eq!((refused.version.as_str(), refused.status), ("2", 431));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_speaks_h2_or_http11_by_alpn_to_a_client_trusting_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path(), "edge");
    let upstream = MockUpstream::start().await;
    let gw = Gateway::builder()
        .toml(&format!(
            "drain_rate = 1000\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
            pki.cert.display(),
            pki.key.display()
        ))
        .upstream(&upstream)
        .start()
        .await;
    let base = format!("https://localhost:{}", gw.public_addr.port());
    let ca = pki.ca.to_str().unwrap();
    let resolve = format!("localhost:{}:127.0.0.1", gw.public_addr.port());
    let h2 = ["--http2", "--cacert", ca, "--resolve", &resolve];
    admit_poll_complete(&base, &h2, "2").await;
    let h1 = ["--http1.1", "--cacert", ca, "--resolve", &resolve];
    admit_poll_complete(&base, &h1, "1.1").await;
    let got = eventually(WAIT, "two orders upstream", || async {
        let got = upstream.received();
        (got.len() == 2).then_some(got)
    })
    .await;
    for r in &got {
        assert_eq!(r.header("x-forwarded-proto"), "https");
    }

    // A client that does not trust the CA gets no answer.
    let untrusted = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--resolve", &resolve])
        .arg(format!("{base}/checkout"))
        .output()
        .unwrap();
    assert!(!untrusted.status.success());
    // Plaintext on the TLS port is no request either.
    assert!(try_get(&format!("http://{}/checkout", gw.public_addr))
        .await
        .is_none());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_certificate_stops_the_start_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    std::fs::write(&cert, "not a certificate\n").unwrap();
    let config = Gateway::builder()
        .toml(&format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"\n",
            cert.display(),
            cert.display()
        ))
        .upstream("http://127.0.0.1:1")
        .config();
    let err = flashgate::Gateway::start(config)
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("cert.pem"), "{err}");
}

/// One HTTP/2 frame as the gateway sent it.
#[derive(Debug)]
struct Frame {
    kind: u8,
    stream: u32,
    payload: Vec<u8>,
}

/// A frame's bytes.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend(stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const GOAWAY: u8 = 7;
const END_STREAM: u8 = 1;
const END_HEADERS: u8 = 4;

/// A request head in HPACK's static table: `:method POST` (literal),
/// `:scheme http`, `:path /checkout` (literal), `:authority shop`.
fn post_checkout(stream: u32, end_stream: bool) -> Vec<u8> {
    let mut block = vec![0x83, 0x86]; // :method POST, :scheme http
    block.extend([0x04, 9]);
    block.extend(b"/checkout");
    block.extend([0x01, 4]);
    block.extend(b"shop");
    let flags = END_HEADERS | if end_stream { END_STREAM } else { 0 };
    frame(HEADERS, flags, stream, &block)
}

/// An HTTP/2 connection with prior knowledge, its preface and empty
/// SETTINGS sent.
async fn h2_conn(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    s.write_all(&hello).await.unwrap();
    s
}

/// Reads frames until `until` picks one, or the connection ends.
async fn read_until(s: &mut TcpStream, mut until: impl FnMut(&Frame) -> bool) -> Option<Frame> {
    tokio::time::timeout(WAIT, async {
        loop {
            let mut head = [0u8; 9];
            s.read_exact(&mut head).await.ok()?;
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; len];
            s.read_exact(&mut payload).await.ok()?;
            let f = Frame {
                kind: head[3],
                stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
                payload,
            };
            if until(&f) {
                return Some(f);
            }
        }
    })
    .await
    .expect("an answer in time")
}

fn error_code(f: &Frame, at: usize) -> u32 {
    u32::from_be_bytes(f.payload[at..at + 4].try_into().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_may_open_100_streams_and_the_next_is_refused() {
    let upstream = MockUpstream::start().await;
    let gw = Gateway::builder()
        .toml("drain_rate = 1000\n")
        .upstream(&upstream)
        .start()
        .await;
    let mut s = h2_conn(gw.public_addr).await;
    // The gateway says its limit in its SETTINGS (MAX_CONCURRENT_STREAMS).
    let settings = read_until(&mut s, |f| f.kind == SETTINGS && !f.payload.is_empty())
        .await
        .unwrap();
    let max = settings
        .payload
        .chunks(6)
        .find(|p| p[..2] == [0, 3])
        .map(|p| u32::from_be_bytes(p[2..].try_into().unwrap()));
    assert_eq!(max, Some(100));
    // 100 admissions whose bodies never come stay open; the 101st is refused.
    let mut burst = Vec::new();
    for i in 0..101u32 {
        burst.extend(post_checkout(2 * i + 1, false));
    }
    s.write_all(&burst).await.unwrap();
    let reset = read_until(&mut s, |f| f.kind == RST_STREAM).await.unwrap();
    assert_eq!(reset.stream, 201, "the stream beyond the limit");
    assert_eq!(error_code(&reset, 0), 7, "REFUSED_STREAM");
    drop(s);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_resets_end_the_connection_with_enhance_your_calm() {
    let upstream = MockUpstream::start().await;
    let gw = Gateway::builder()
        .toml("drain_rate = 1000\n")
        .upstream(&upstream)
        .start()
        .await;
    let mut s = h2_conn(gw.public_addr).await;
    // Each stream opened and cancelled at once (CVE-2023-44487), all in one
    // write: none counts against the stream limit.
    let mut flood = Vec::new();
    for i in 0..1000u32 {
        flood.extend(post_checkout(2 * i + 1, true));
        flood.extend(frame(RST_STREAM, 0, 2 * i + 1, &8u32.to_be_bytes()));
    }
    let _ = s.write_all(&flood).await;
    let goaway = read_until(&mut s, |f| f.kind == GOAWAY)
        .await
        .expect("a GOAWAY before the close");
    assert_eq!(error_code(&goaway, 4), 11, "ENHANCE_YOUR_CALM");
    drop(s);
    // The gateway itself serves on.
    gw.client().ticket("{}").await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_h2_connection_is_sent_away_after_the_header_timeout() {
    let upstream = MockUpstream::start().await;
    let gw = Gateway::builder()
        .toml("header_timeout = \"1s\"\n")
        .upstream(&upstream)
        .start()
        .await;
    let mut s = h2_conn(gw.public_addr).await;
    let goaway = read_until(&mut s, |f| f.kind == GOAWAY)
        .await
        .expect("a GOAWAY before the close");
    assert_eq!(error_code(&goaway, 4), 0, "NO_ERROR: a graceful close");
    drop(s);
    gw.stop().await;
}
