//! Test fixtures: a private redis-server, a recording mock upstream, a gateway
//! builder and a tiny HTTP client. Everything listens on loopback only.
#![allow(dead_code)]

pub mod cluster;
pub mod process;
pub mod raw;
pub mod stacks;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use flashgate::config::Config;
use flashgate::Gateway;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// A redis-server of the test's own, on a free port in a temp dir, stopped by
/// PID when dropped.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    args: Vec<String>,
    tls: Option<RedisTls>,
}

/// A TLS-only redis-server: its CA (for the test's own client) and the one
/// ACL user that may log in.
struct RedisTls {
    ca_pem: Vec<u8>,
    user: String,
    password: String,
}

impl RedisServer {
    /// Nothing persisted: a restart starts empty.
    pub fn start() -> RedisServer {
        Self::start_with(&["--appendonly", "no"])
    }

    /// AOF with an fsync on every write: a restart keeps every write that
    /// was answered.
    pub fn start_durable() -> RedisServer {
        Self::start_with(&["--appendonly", "yes", "--appendfsync", "always"])
    }

    pub fn start_with(args: &[&str]) -> RedisServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let mut server = RedisServer {
            port,
            child: None,
            dir,
            args: args.iter().map(|a| a.to_string()).collect(),
            tls: None,
        };
        server.spawn();
        server
    }

    /// TLS only (`--port 0`, the free port is the TLS port), with `cert` and
    /// `key` (PEM), no client certificates, the `default` user off and one
    /// ACL user `user` with `password`. Nothing persisted.
    pub fn start_tls(cert: &Path, key: &Path, ca: &Path, user: &str, password: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let path = |p: &Path| p.to_str().expect("UTF-8 path").to_string();
        let args = [
            "--tls-port".to_string(),
            port.to_string(),
            "--tls-cert-file".into(),
            path(cert),
            "--tls-key-file".into(),
            path(key),
            "--tls-ca-cert-file".into(),
            path(ca),
            "--tls-auth-clients".into(),
            "no".into(),
            "--appendonly".into(),
            "no".into(),
            "--user".into(),
            "default".into(),
            "off".into(),
            "--user".into(),
            user.into(),
            "on".into(),
            format!(">{password}"),
            "~*".into(),
            "&*".into(),
            "+@all".into(),
        ];
        let mut server = RedisServer {
            port,
            child: None,
            dir,
            args: args.to_vec(),
            tls: Some(RedisTls {
                ca_pem: std::fs::read(ca).expect("CA certificate"),
                user: user.into(),
                password: password.into(),
            }),
        };
        server.spawn();
        server
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    fn spawn(&mut self) {
        // A TLS server listens on its TLS port only.
        let plain_port = match self.tls {
            Some(_) => 0,
            None => self.port,
        };
        let child = Command::new("redis-server")
            .args(["--port", &plain_port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(&self.args)
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(client) = self.client() {
                if let Ok(mut c) = client.get_connection() {
                    if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                        return;
                    }
                }
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `redis://127.0.0.1:PORT/`, or for a TLS server
    /// `rediss://USER:PASSWORD@127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        match &self.tls {
            None => format!("redis://127.0.0.1:{}/", self.port),
            Some(t) => format!(
                "rediss://{}:{}@127.0.0.1:{}/",
                t.user, t.password, self.port
            ),
        }
    }

    /// A client of the test's own; a TLS server's CA is its only root (the
    /// test process's environment plays no part).
    pub fn client(&self) -> redis::RedisResult<redis::Client> {
        match &self.tls {
            None => redis::Client::open(self.url()),
            Some(t) => redis::Client::build_with_tls(
                self.url(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(t.ca_pem.clone()),
                },
            ),
        }
    }

    /// Kills the server (SIGKILL): its data is gone, as after a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and directory.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        self.client()
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("connect to test redis")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port for a server a test starts (redis-server, a gateway process) that
/// nothing else takes before that server binds it: free now, never handed
/// out twice by this test process, and below the kernel's ephemeral range,
/// where port-0 binds (the mock upstreams) and outgoing connections draw
/// theirs. A port from `bind(0)` could be taken meanwhile by either, and the
/// server then failed to start ("timed out waiting for: gateway up").
pub fn free_port() -> u16 {
    static NEXT: Mutex<Option<u16>> = Mutex::new(None);
    // From 10000: clear of the well-known services' ports.
    let low = ephemeral_low().clamp(20000, 65535);
    let (first, span) = (10000u16, low - 10000);
    let mut next = NEXT.lock().unwrap_or_else(|e| e.into_inner());
    // Each test process starts at its own place, so one left running by an
    // earlier run is rarely in the way.
    let mut port = next.unwrap_or(first + (std::process::id() % u32::from(span)) as u16);
    for _ in 0..span {
        let candidate = port;
        port = if port + 1 >= low { first } else { port + 1 };
        if std::net::TcpListener::bind(("127.0.0.1", candidate)).is_ok() {
            *next = Some(port);
            return candidate;
        }
    }
    panic!("no free port below {low}");
}

/// The first port of the kernel's ephemeral range.
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

/// What the mock upstream received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }
}

/// How the mock upstream answers: `fail_first` attempts per Idempotency-Key
/// get `fail_status`, the rest 201 with a JSON body naming the key.
#[derive(Clone)]
pub struct Behaviour {
    pub latency: Duration,
    /// Only the first `slow_first` attempts of each key wait `latency`
    /// (0 = every attempt does).
    pub slow_first: u32,
    pub fail_first: u32,
    pub fail_status: u16,
    /// Answer with these exact bytes instead of the JSON body.
    pub body: Option<Bytes>,
    /// More headers on the final answer, e.g. a `Content-Encoding` sent
    /// whatever the request accepted.
    pub headers: Vec<(&'static str, String)>,
    /// Requests whose body contains this always get `fail_status`.
    pub poison: Option<String>,
    /// The capacity of an order service that buckles under load: beyond
    /// this many requests in the last second, each answer is slow
    /// (`KNEE_PENALTY`) and says 503. Adjustable while running.
    pub knee: Option<Arc<AtomicU64>>,
}

/// What a request beyond the knee waits before its 503.
pub const KNEE_PENALTY: Duration = Duration::from_millis(100);

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            latency: Duration::ZERO,
            slow_first: 0,
            fail_first: 0,
            fail_status: 503,
            body: None,
            headers: Vec::new(),
            poison: None,
            knee: None,
        }
    }
}

/// An in-process order service on an ephemeral port that records every request.
pub struct MockUpstream {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
    https: bool,
    tls_failures: Arc<AtomicUsize>,
}

impl MockUpstream {
    pub async fn start(behaviour: Behaviour) -> MockUpstream {
        Self::start_on("127.0.0.1:0".parse().unwrap(), behaviour).await
    }

    /// Listens on a given address, e.g. a port the gateway already points at.
    pub async fn start_on(addr: SocketAddr, behaviour: Behaviour) -> MockUpstream {
        Self::listen(addr, behaviour, None).await
    }

    /// Speaks HTTPS only, with this certificate chain and key (PEM files);
    /// its URL is `https://localhost:PORT`.
    pub async fn start_tls(behaviour: Behaviour, cert: &Path, key: &Path) -> MockUpstream {
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let chain = CertificateDer::pem_file_iter(cert)
            .expect("certificate file")
            .collect::<Result<Vec<_>, _>>()
            .expect("PEM certificates");
        let key = PrivateKeyDer::from_pem_file(key).expect("PEM private key");
        let config = tokio_rustls::rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server certificate and key match");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        Self::listen("127.0.0.1:0".parse().unwrap(), behaviour, Some(acceptor)).await
    }

    async fn listen(
        addr: SocketAddr,
        behaviour: Behaviour,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> MockUpstream {
        let https = tls.is_some();
        let tls_failures = Arc::new(AtomicUsize::new(0));
        let failures = tls_failures.clone();
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let max_in_flight = Arc::new(AtomicUsize::new(0));
        // Attempts per Idempotency-Key so far: a map, so a long run does
        // not slow the mock down (it must not be the bottleneck it measures).
        let attempts: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
        let state = (
            received.clone(),
            in_flight.clone(),
            max_in_flight.clone(),
            Arc::new(behaviour),
            attempts,
        );
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = state.clone();
                let service = service_fn(move |req: Request<Incoming>| {
                    let (received, in_flight, max, behaviour, attempts) = state.clone();
                    async move {
                        let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                        max.fetch_max(now, Ordering::SeqCst);
                        let (parts, body) = req.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let key = parts
                            .headers
                            .get("idempotency-key")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_string();
                        let poisoned = behaviour
                            .poison
                            .as_ref()
                            .is_some_and(|p| String::from_utf8_lossy(&body).contains(p.as_str()));
                        let (seen, last_second) = {
                            let mut r = received.lock().unwrap();
                            let now = Instant::now();
                            r.push(Received {
                                method: parts.method.to_string(),
                                path: parts.uri.to_string(),
                                headers: parts.headers.clone(),
                                body,
                                at: now,
                            });
                            let last_second = match behaviour.knee {
                                Some(_) => r
                                    .iter()
                                    .rev()
                                    .take_while(|x| now - x.at < Duration::from_secs(1))
                                    .count() as u64,
                                None => 0,
                            };
                            let mut attempts = attempts.lock().unwrap();
                            let seen = attempts.entry(key.clone()).or_default();
                            *seen += 1;
                            (*seen, last_second)
                        };
                        let over_knee = behaviour
                            .knee
                            .as_ref()
                            .is_some_and(|k| last_second > k.load(Ordering::SeqCst));
                        if over_knee {
                            tokio::time::sleep(KNEE_PENALTY).await;
                        }
                        if behaviour.slow_first == 0 || seen <= behaviour.slow_first {
                            tokio::time::sleep(behaviour.latency).await;
                        }
                        in_flight.fetch_sub(1, Ordering::SeqCst);
                        let resp = if seen <= behaviour.fail_first || poisoned || over_knee {
                            Response::builder()
                                .status(behaviour.fail_status)
                                .header("retry-after", "0")
                                .body(Full::new(Bytes::from_static(b"try later")))
                        } else {
                            let body = behaviour.body.clone().unwrap_or_else(|| {
                                Bytes::from(format!(
                                    r#"{{"order":"{key}","path":"{}"}}"#,
                                    parts.uri
                                ))
                            });
                            let mut resp = Response::builder()
                                .status(201)
                                .header("content-type", "application/json")
                                .header("x-order-service", "mock")
                                .header("connection", "keep-alive");
                            for (name, value) in &behaviour.headers {
                                resp = resp.header(*name, value);
                            }
                            resp.body(Full::new(body))
                        };
                        Ok::<_, std::convert::Infallible>(resp.unwrap())
                    }
                });
                let http = hyper::server::conn::http1::Builder::new();
                match tls.clone() {
                    None => {
                        tokio::spawn(http.serve_connection(TokioIo::new(stream), service));
                    }
                    Some(acceptor) => {
                        let failures = failures.clone();
                        tokio::spawn(async move {
                            match acceptor.accept(stream).await {
                                Ok(stream) => {
                                    let _ =
                                        http.serve_connection(TokioIo::new(stream), service).await;
                                }
                                Err(_) => {
                                    failures.fetch_add(1, Ordering::SeqCst);
                                }
                            }
                        });
                    }
                }
            }
        });
        MockUpstream {
            addr,
            received,
            in_flight,
            max_in_flight,
            https,
            tls_failures,
        }
    }

    pub fn url(&self) -> String {
        match self.https {
            false => format!("http://{}", self.addr),
            true => format!("https://localhost:{}", self.addr.port()),
        }
    }

    /// TLS handshakes that failed (an HTTPS mock only): the client refused
    /// the certificate, or spoke something else.
    pub fn tls_failures(&self) -> usize {
        self.tls_failures.load(Ordering::SeqCst)
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight.load(Ordering::SeqCst)
    }

    /// Requests received per Idempotency-Key.
    pub fn by_key(&self) -> HashMap<String, Vec<Received>> {
        let mut map: HashMap<String, Vec<Received>> = HashMap::new();
        for r in self.received() {
            map.entry(r.header("idempotency-key").to_string())
                .or_default()
                .push(r);
        }
        map
    }
}

/// A gateway config from TOML text plus test defaults: loopback listeners on
/// ephemeral ports and a quick shutdown.
pub fn config(toml: &str, upstream: &str, redis: Option<&str>) -> Config {
    let mut text = String::from(
        "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nshutdown_grace = \"5s\"\n",
    );
    text.push_str(&format!("upstream = \"{upstream}\"\n"));
    if let Some(url) = redis {
        text.push_str(&format!("redis_url = \"{url}\"\n"));
        text.push_str(&format!("consumer = \"test-{}\"\n", free_port()));
    }
    text.push_str(toml);
    Config::from_toml(&text).expect("test config is valid")
}

pub async fn gateway(config: Config) -> Gateway {
    Gateway::start(config).await.expect("gateway starts")
}

/// A plain HTTP/1.1 client.
pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }
}

pub async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Answer {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .request(req.body(Full::new(body.into())).unwrap())
        .await
        .expect("request reaches the gateway");
    let (parts, body) = resp.into_parts();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

pub async fn get(url: &str) -> Answer {
    send(&client(), "GET", url, &[], Bytes::new()).await
}

/// Waits for `check` to return `Some`, polling, up to `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Polls a ticket until it is terminal and returns its JSON.
pub async fn until_terminal(base: &str, ticket: &str, limit: Duration) -> serde_json::Value {
    let url = format!("{base}/tickets/{ticket}");
    eventually(limit, &format!("ticket {ticket} to finish"), || {
        let url = url.clone();
        async move {
            let a = get(&url).await;
            assert_eq!(
                a.status,
                StatusCode::OK,
                "{}",
                String::from_utf8_lossy(&a.body)
            );
            let v = a.json();
            let status = v["status"].as_str().unwrap_or_default().to_string();
            matches!(
                status.as_str(),
                "completed" | "failed" | "cancelled" | "expired"
            )
            .then_some(v)
        }
    })
    .await
}
