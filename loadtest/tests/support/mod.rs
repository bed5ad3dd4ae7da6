//! A tiny in-process stand-in for the gateway: admits with a 202 ticket,
//! forwards each ticket to the upstream with `Idempotency-Key: <ticket>`,
//! and answers ticket polls. Its `Behaviour` injects the faults that the
//! burst report must notice.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use flashgate_loadtest::client::{Connection, Target};
use flashgate_loadtest::server::{self, Running};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, LOCATION, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;

/// What the fake gateway does wrong (or right) on purpose.
#[derive(Clone, Default)]
pub struct Behaviour {
    /// Admissions allowed; beyond it `410 sold_out`.
    pub stock: Option<u64>,
    /// Every nth ticket is marked completed without reaching the upstream.
    pub forget_every: Option<u64>,
    /// Every nth ticket stays queued forever.
    pub stall_every: Option<u64>,
    /// Every nth ticket ends `failed` without reaching the upstream.
    pub fail_every: Option<u64>,
    /// Deliveries per ticket (2 = every ticket is redelivered once).
    pub deliveries: u32,
    /// Proof of work at this difficulty: `GET /challenge` hands out a fresh
    /// seed, and an admission without a solution of one is `403`.
    pub pow: Option<u8>,
}

struct Ticket {
    status: &'static str,
    admitted_at: SystemTime,
    completed_at: Option<SystemTime>,
    response_status: Option<u16>,
}

struct Gateway {
    upstream: Target,
    behaviour: Behaviour,
    admitted: AtomicU64,
    /// Challenges handed out.
    seeds: AtomicU64,
    tickets: Mutex<HashMap<String, Ticket>>,
}

/// Starts a fake gateway in front of `upstream_url`.
pub async fn start(upstream_url: &str, behaviour: Behaviour) -> Running {
    let gateway = Arc::new(Gateway {
        upstream: Target::parse(upstream_url).expect("upstream URL"),
        behaviour,
        admitted: AtomicU64::new(0),
        seeds: AtomicU64::new(0),
        tickets: Mutex::new(HashMap::new()),
    });
    let listener = server::bind("127.0.0.1:0").await.expect("bind");
    server::spawn(listener, move |req| {
        let gateway = gateway.clone();
        async move { gateway.handle(req).await }
    })
    .expect("serve")
}

fn every(n: Option<u64>, i: u64) -> bool {
    n.is_some_and(|n| (i + 1) % n == 0)
}

impl Gateway {
    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_string();
        if let (Some(difficulty), "/challenge") = (self.behaviour.pow, path.as_str()) {
            let seed = format!("seed{:044}", self.seeds.fetch_add(1, Ordering::SeqCst));
            let body = json!({"seed": seed, "difficulty": difficulty});
            return server::json(StatusCode::OK, body.to_string());
        }
        if req.method() == Method::POST && path == "/checkout" {
            if let Some(difficulty) = self.behaviour.pow {
                let solution = req.headers().get("flashgate-pow").map(|v| v.as_bytes());
                let solved = solution.is_some_and(|s| {
                    let hash = <sha2::Sha256 as sha2::Digest>::digest(s);
                    s.starts_with(b"seed")
                        && flashgate_loadtest::pow::zero_bits(&hash) >= u32::from(difficulty)
                });
                if !solved {
                    return problem(StatusCode::FORBIDDEN, "pow_required");
                }
            }
            let _ = req.into_body().collect().await;
            return self.admit();
        }
        if let Some(id) = path.strip_prefix("/tickets/") {
            return self.poll(id);
        }
        problem(StatusCode::NOT_FOUND, "not_found")
    }

    fn admit(self: Arc<Self>) -> Response<Full<Bytes>> {
        let i = self.admitted.fetch_add(1, Ordering::SeqCst);
        if self.behaviour.stock.is_some_and(|s| i >= s) {
            return problem(StatusCode::GONE, "sold_out");
        }
        let id = format!("t{i:026}");
        self.tickets.lock().unwrap().insert(
            id.clone(),
            Ticket {
                status: "queued",
                admitted_at: SystemTime::now(),
                completed_at: None,
                response_status: None,
            },
        );
        let b = &self.behaviour;
        if every(b.forget_every, i) {
            self.finish(&id, "completed", Some(201));
        } else if every(b.fail_every, i) {
            self.finish(&id, "failed", None);
        } else if !every(b.stall_every, i) {
            tokio::spawn(self.clone().deliver(id.clone()));
        }
        let body = json!({"ticket": id, "queue": "checkout", "status": "queued",
            "position": 0, "eta_seconds": 0.01, "poll_url": format!("/tickets/{id}")});
        let mut resp = server::json(StatusCode::ACCEPTED, body.to_string());
        resp.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
        if let Ok(v) = HeaderValue::from_str(&format!("/tickets/{id}")) {
            resp.headers_mut().insert(LOCATION, v);
        }
        resp
    }

    async fn deliver(self: Arc<Self>, id: String) {
        let mut conn = Connection::new(self.upstream.clone(), Duration::from_secs(10));
        let mut last = None;
        for _ in 0..self.behaviour.deliveries.max(1) {
            let mut req = self
                .upstream
                .request(Method::POST, "/checkout", Bytes::from_static(b"{}"))
                .expect("request");
            req.headers_mut()
                .insert("idempotency-key", HeaderValue::from_str(&id).expect("id"));
            last = conn.send(req).await.ok().map(|a| a.status.as_u16());
        }
        match last {
            Some(status) => self.finish(&id, "completed", Some(status)),
            None => self.finish(&id, "failed", None),
        }
    }

    fn finish(&self, id: &str, status: &'static str, response_status: Option<u16>) {
        if let Some(t) = self.tickets.lock().unwrap().get_mut(id) {
            t.status = status;
            t.completed_at = Some(SystemTime::now());
            t.response_status = response_status;
        }
    }

    fn poll(&self, id: &str) -> Response<Full<Bytes>> {
        let tickets = self.tickets.lock().unwrap();
        let Some(t) = tickets.get(id) else {
            return problem(StatusCode::NOT_FOUND, "ticket_not_found");
        };
        let time = |t: SystemTime| humantime::format_rfc3339_millis(t).to_string();
        let body = json!({
            "ticket": id, "queue": "checkout", "status": t.status, "attempts": 1,
            "admitted_at": time(t.admitted_at),
            "completed_at": t.completed_at.map(time),
            "response": t.response_status.map(|s| json!({"status": s, "headers": {},
                "body": "", "body_encoding": "utf8"})),
        });
        let mut resp = server::json(StatusCode::OK, body.to_string());
        if t.status == "queued" {
            resp.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

fn problem(status: StatusCode, code: &str) -> Response<Full<Bytes>> {
    let body = json!({"type": "about:blank", "title": code, "status": status.as_u16(),
        "detail": code, "code": code});
    server::json(status, body.to_string())
}
