//! HTTP from the test's side: plain requests to any URL, and a typed
//! client of one gateway that speaks its API (admit, poll, knobs, metrics).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use super::{eventually, MockUpstream};

/// A plain HTTP/1.1 client (hyper's pooled one).
pub type HttpClient = hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>;

/// A new plain HTTP/1.1 client, with a pool of its own.
pub fn http_client() -> HttpClient {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// An answer, read whole.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    /// The body as text, for failure messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `ticket` of a JSON answer.
    pub fn ticket(&self) -> String {
        let v = self.json();
        v["ticket"]
            .as_str()
            .unwrap_or_else(|| panic!("no ticket in {v}"))
            .to_string()
    }
}

/// One request over `http`; panics if it gets no answer.
async fn exchange(
    http: &HttpClient,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Answer {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = http
        .request(req.body(Full::new(body)).unwrap())
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: no answer ({e})"));
    let (parts, body) = resp.into_parts();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

/// One request to any URL, on a connection of its own.
pub async fn send(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Answer {
    exchange(&http_client(), method, url, headers, body.into()).await
}

/// `GET url` on a connection of its own.
pub async fn get(url: &str) -> Answer {
    send("GET", url, &[], Bytes::new()).await
}

/// `GET url`, or `None` when nothing answers (a server still starting).
pub async fn try_get(url: &str) -> Option<Answer> {
    let resp = http_client().get(url.parse().ok()?).await.ok()?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.ok()?.to_bytes();
    Some(Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// A Prometheus text exposition.
pub struct Metrics(pub String);

impl std::ops::Deref for Metrics {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Metrics {
    /// The sum of the samples of `name` whose labels include every one of
    /// `labels` (`code="400"`); 0 when there is none. A metric without
    /// labels is its one sample.
    pub fn sum(&self, name: &str, labels: &[&str]) -> f64 {
        self.0
            .lines()
            .filter_map(|l| {
                let rest = l.strip_prefix(name)?;
                match rest.strip_prefix('{') {
                    Some(labelled) => labelled.split_once("} "),
                    None => rest.strip_prefix(' ').map(|value| ("", value)),
                }
            })
            .filter(|(set, _)| labels.iter().all(|want| set.split(',').any(|l| l == *want)))
            .filter_map(|(_, value)| value.trim().parse::<f64>().ok())
            .sum()
    }
}

/// A client of one gateway: its public listener (paths like `/checkout`)
/// and its admin listener. Clones share one connection pool.
#[derive(Clone)]
pub struct Client {
    http: HttpClient,
    base: String,
    admin: String,
}

impl Client {
    pub fn new(public: SocketAddr, admin: SocketAddr) -> Client {
        Client {
            http: http_client(),
            base: format!("http://{public}"),
            admin: format!("http://{admin}"),
        }
    }

    /// `http://127.0.0.1:PORT` of the public listener.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `http://127.0.0.1:PORT` of the admin listener.
    pub fn admin_base(&self) -> &str {
        &self.admin
    }

    /// A request to the public listener.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Answer {
        let url = format!("{}{path}", self.base);
        exchange(&self.http, method, &url, headers, body.into()).await
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.send("GET", path, &[], Bytes::new()).await
    }

    /// A request to the admin listener.
    pub async fn admin(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Answer {
        let url = format!("{}{path}", self.admin);
        exchange(&self.http, method, &url, headers, body.into()).await
    }

    pub async fn admin_get(&self, path: &str) -> Answer {
        self.admin("GET", path, &[], Bytes::new()).await
    }

    /// `POST /checkout` with this body.
    pub async fn admit(&self, body: impl Into<Bytes>) -> Answer {
        self.admit_with(&[], body).await
    }

    /// `POST /checkout` with these headers and body.
    pub async fn admit_with(&self, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Answer {
        self.send("POST", "/checkout", headers, body).await
    }

    /// Admits one checkout, which must get its 202, and returns the ticket.
    pub async fn ticket(&self, body: impl Into<Bytes>) -> String {
        let a = self.admit(body).await;
        assert_eq!(a.status, 202, "{}", a.text());
        a.ticket()
    }

    /// Sends `n` checkouts (`{"TAG":i}`), one after another; returns the
    /// tickets of the 202s and the statuses of the rest.
    pub async fn admit_many(&self, n: usize, tag: &str) -> (Vec<String>, Vec<u16>) {
        let (mut tickets, mut refused) = (Vec::new(), Vec::new());
        for i in 0..n {
            let a = self.admit(format!("{{\"{tag}\":{i}}}")).await;
            if a.status == 202 {
                tickets.push(a.ticket());
            } else {
                refused.push(a.status.as_u16());
            }
        }
        (tickets, refused)
    }

    /// `GET /tickets/{ticket}`.
    pub async fn poll(&self, ticket: &str) -> Answer {
        self.get(&format!("/tickets/{ticket}")).await
    }

    /// Polls a ticket, which must exist, until it is terminal; its JSON.
    pub async fn until_terminal(&self, ticket: &str, limit: Duration) -> Value {
        eventually(limit, &format!("ticket {ticket} to finish"), || async {
            let a = self.poll(ticket).await;
            assert_eq!(a.status, StatusCode::OK, "{}", a.text());
            let v = a.json();
            let status = v["status"].as_str().unwrap_or_default();
            matches!(status, "completed" | "failed" | "cancelled" | "expired").then_some(v)
        })
        .await
    }

    /// `PATCH /admin/queues/{queue}` with a JSON body, answered as it is.
    pub async fn patch_queue(&self, queue: &str, body: impl Into<Bytes>) -> Answer {
        let path = format!("/admin/queues/{queue}");
        let json = [("content-type", "application/json")];
        self.admin("PATCH", &path, &json, body).await
    }

    /// Changes the `checkout` queue's knobs, which must be accepted; the
    /// queue as it is now.
    pub async fn patch_knobs(&self, body: impl Into<Bytes>) -> Value {
        let a = self.patch_queue("checkout", body).await;
        assert_eq!(a.status, 200, "{}", a.text());
        a.json()
    }

    /// The first queue of `GET /admin/queues`.
    pub async fn queue(&self) -> Value {
        self.admin_get("/admin/queues").await.json()["queues"][0].clone()
    }

    /// `GET /metrics` of the admin listener.
    pub async fn metrics(&self) -> Metrics {
        Metrics(self.admin_get("/metrics").await.text())
    }

    /// Polls every ticket to a terminal state and checks it against what
    /// the upstreams received.
    pub async fn outcome(&self, tickets: &[String], upstreams: &[&MockUpstream]) -> Outcome {
        let mut out = Outcome {
            admitted: tickets.len(),
            ..Outcome::default()
        };
        for t in tickets {
            let done = self.until_terminal(t, Duration::from_secs(60)).await;
            match done["status"].as_str() {
                Some("completed") => out.completed += 1,
                Some("failed") => out.failed += 1,
                other => panic!("ticket {t} ended {other:?}"),
            }
        }
        let mut by_key: HashMap<String, usize> = HashMap::new();
        for u in upstreams {
            for (k, v) in u.by_key() {
                *by_key.entry(k).or_default() += v.len();
            }
        }
        for t in tickets {
            match by_key.get(t) {
                None | Some(0) => out.lost += 1,
                Some(n) => out.redelivered += n - 1,
            }
        }
        out
    }
}

/// What happened to the tickets that were answered 202.
#[derive(Debug, Default)]
pub struct Outcome {
    pub admitted: usize,
    pub completed: usize,
    pub failed: usize,
    /// Answered 202 and never reached the upstream nor failed.
    pub lost: usize,
    /// Deliveries beyond the first, over all tickets.
    pub redelivered: usize,
}
