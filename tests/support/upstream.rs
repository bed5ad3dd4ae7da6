//! A recording mock order service, in this process, on loopback.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::Url;

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

/// What a request beyond the knee waits before its 503.
pub const KNEE_PENALTY: Duration = Duration::from_millis(100);

/// How the mock answers: by default 201 at once, with a JSON body naming
/// the request's Idempotency-Key and path.
#[derive(Clone)]
pub struct MockUpstreamBuilder {
    latency: Duration,
    slow_first: u32,
    fail_first: u32,
    fail_status: u16,
    body: Option<Bytes>,
    headers: Vec<(&'static str, String)>,
    poison: Option<String>,
    knee: Option<Arc<AtomicU64>>,
    control: Option<UpstreamControl>,
    addr: SocketAddr,
    tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

impl MockUpstreamBuilder {
    /// Each answer waits this long first.
    pub fn latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    /// Only the first `n` attempts of each key wait the latency.
    pub fn slow_first(mut self, n: u32) -> Self {
        self.slow_first = n;
        self
    }

    /// The first `n` attempts of each Idempotency-Key get the fail status
    /// (503 unless [`fail_status`](Self::fail_status)), with `Retry-After: 0`.
    pub fn fail_first(mut self, n: u32) -> Self {
        self.fail_first = n;
        self
    }

    /// Every attempt fails.
    pub fn fail_always(self) -> Self {
        self.fail_first(u32::MAX)
    }

    pub fn fail_status(mut self, status: u16) -> Self {
        self.fail_status = status;
        self
    }

    /// Answers with these exact bytes instead of the JSON body.
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// One more header on the final answer, e.g. a `Content-Encoding` sent
    /// whatever the request accepted.
    pub fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_string()));
        self
    }

    /// Requests whose body contains this always get the fail status.
    pub fn poison(mut self, needle: &str) -> Self {
        self.poison = Some(needle.into());
        self
    }

    /// An order service that buckles under load: beyond this many requests
    /// in the last second, each answer is slow (`KNEE_PENALTY`) and says
    /// 503. The test may move the knee while it runs.
    pub fn knee(mut self, knee: Arc<AtomicU64>) -> Self {
        self.knee = Some(knee);
        self
    }

    /// An order service the test switches between healthy, refusing (503)
    /// and slow while it runs.
    pub fn control(mut self, control: UpstreamControl) -> Self {
        self.control = Some(control);
        self
    }

    /// Listens on this address, e.g. a port the gateway already points at.
    pub fn on(mut self, addr: SocketAddr) -> Self {
        self.addr = addr;
        self
    }

    /// Speaks HTTPS only, with this certificate chain and key (PEM files);
    /// its URL is `https://localhost:PORT`.
    pub fn tls(mut self, cert: &Path, key: &Path) -> Self {
        self.tls = Some((cert.into(), key.into()));
        self
    }

    /// Binds and serves until the test's runtime ends.
    pub async fn start(self) -> MockUpstream {
        let acceptor = self.tls.as_ref().map(|(cert, key)| acceptor(cert, key));
        let listener = TcpListener::bind(self.addr).await.unwrap();
        let up = MockUpstream {
            addr: listener.local_addr().unwrap(),
            received: Arc::default(),
            in_flight: Arc::default(),
            max_in_flight: Arc::default(),
            https: acceptor.is_some(),
            tls_failures: Arc::default(),
        };
        let state = Arc::new(State {
            behaviour: self,
            received: up.received.clone(),
            in_flight: up.in_flight.clone(),
            max_in_flight: up.max_in_flight.clone(),
            attempts: Mutex::default(),
        });
        let failures = up.tls_failures.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = state.clone();
                let service = service_fn(move |req| answer(state.clone(), req));
                let http = hyper::server::conn::http1::Builder::new();
                match acceptor.clone() {
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
        up
    }
}

fn acceptor(cert: &Path, key: &Path) -> tokio_rustls::TlsAcceptor {
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
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// What every connection of one mock shares.
struct State {
    behaviour: MockUpstreamBuilder,
    received: Arc<Mutex<Vec<Received>>>,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
    /// Attempts per Idempotency-Key so far: a map, so a long run does not
    /// slow the mock down (it must not be the bottleneck it measures).
    attempts: Mutex<HashMap<String, u32>>,
}

async fn answer(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let behaviour = &state.behaviour;
    let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    state.max_in_flight.fetch_max(now, Ordering::SeqCst);
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
        let mut r = state.received.lock().unwrap();
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
        let mut attempts = state.attempts.lock().unwrap();
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
    let refused = match &behaviour.control {
        Some(control) => control.answer().await,
        None => false,
    };
    state.in_flight.fetch_sub(1, Ordering::SeqCst);
    let resp = if seen <= behaviour.fail_first || poisoned || over_knee || refused {
        Response::builder()
            .status(behaviour.fail_status)
            .header("retry-after", "0")
            .body(Full::new(Bytes::from_static(b"try later")))
    } else {
        let body = behaviour.body.clone().unwrap_or_else(|| {
            Bytes::from(format!(r#"{{"order":"{key}","path":"{}"}}"#, parts.uri))
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
    Ok(resp.unwrap())
}

/// A running mock order service that records every request.
pub struct MockUpstream {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
    https: bool,
    tls_failures: Arc<AtomicUsize>,
}

impl MockUpstream {
    /// See [`MockUpstreamBuilder`].
    pub fn builder() -> MockUpstreamBuilder {
        MockUpstreamBuilder {
            latency: Duration::ZERO,
            slow_first: 0,
            fail_first: 0,
            fail_status: 503,
            body: None,
            headers: Vec::new(),
            poison: None,
            knee: None,
            control: None,
            addr: "127.0.0.1:0".parse().unwrap(),
            tls: None,
        }
    }

    /// Answers every request 201 at once.
    pub async fn start() -> MockUpstream {
        Self::builder().start().await
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

impl Url for MockUpstream {
    fn url(&self) -> String {
        MockUpstream::url(self)
    }
}

/// A switch the test holds on a running mock ([`MockUpstreamBuilder::control`]):
/// healthy, refusing every request with 503, or answering after a delay.
#[derive(Clone, Default)]
pub struct UpstreamControl(Arc<ControlState>);

#[derive(Default)]
struct ControlState {
    refusing: std::sync::atomic::AtomicBool,
    /// Extra wait before each answer, in milliseconds.
    delay_ms: AtomicU64,
    refused: AtomicU64,
}

impl UpstreamControl {
    /// From now on every request gets 503 (`Retry-After: 0`).
    pub fn refuse(&self) {
        self.0.refusing.store(true, Ordering::SeqCst);
    }

    /// From now on requests are accepted, each after `delay`.
    pub fn slow(&self, delay: Duration) {
        self.0.refusing.store(false, Ordering::SeqCst);
        self.0
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Back to accepting every request at once.
    pub fn heal(&self) {
        self.slow(Duration::ZERO);
    }

    /// Requests answered 503 because of [`refuse`](Self::refuse).
    pub fn refused(&self) -> u64 {
        self.0.refused.load(Ordering::SeqCst)
    }

    /// Waits the delay; whether this request is to be refused.
    async fn answer(&self) -> bool {
        if self.0.refusing.load(Ordering::SeqCst) {
            self.0.refused.fetch_add(1, Ordering::SeqCst);
            return true;
        }
        let delay = self.0.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        false
    }
}
