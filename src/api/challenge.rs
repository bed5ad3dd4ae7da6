//! `GET /challenge?queue=NAME`: a proof-of-work challenge for this client
//! ([`crate::ticket::pow`]). Stateless: the seed carries its difficulty and
//! expiry under a MAC bound to the queue and the client, so any instance
//! checks it and nothing is stored until an admission spends it.

use std::net::SocketAddr;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use serde::Serialize;

use crate::api::App;
use crate::http::body::{json, Body};
use crate::http::client::Client;
use crate::http::forwarded::Scheme;
use crate::http::problem::{Code, Problem};
use crate::ticket::format_time_ms;
use crate::ticket::pow::HEADER;

/// The path this module answers.
pub const PATH: &str = "/challenge";

#[derive(Serialize)]
struct ChallengeView<'a> {
    queue: &'a str,
    seed: String,
    /// Leading zero bits SHA-256(`seed.nonce`) must have; 0: the queue asks
    /// for no proof of work now (any nonce does).
    difficulty: u8,
    algorithm: &'static str,
    expires_at: String,
    header: &'static str,
}

/// Answers `GET /challenge`: `queue` names the queue (default: the first
/// one); an unknown one is `404 not_found`. A queue with proof of work off
/// still answers, at difficulty 0, so a client need not know whether it is on.
pub fn challenge<B>(app: &App, peer: SocketAddr, req: &Request<B>) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Problem::new(Code::MethodNotAllowed, format!("{PATH} accepts GET"))
            .allow("GET, HEAD, OPTIONS".into())
            .into_response();
    }
    let wanted = req.uri().query().and_then(|q| {
        q.split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(k, _)| *k == "queue")
            .map(|(_, v)| v)
    });
    let queue = match wanted {
        Some(name) => app.queues.iter().find(|q| q.name == name),
        None => app.queues.first(),
    };
    let Some(queue) = queue else {
        return Problem::new(Code::NotFound, "no queue of this name").into_response();
    };
    let config = app.config();
    let client = Client::identify(&config, req.headers(), peer, Scheme::of(req.extensions()));
    let queue_config = queue.config();
    let difficulty = queue.knobs().pow_difficulty(&queue_config);
    let issued = queue.tag.pow().issue(
        &queue.name,
        &client.key,
        difficulty,
        queue.clock.now(),
        queue_config.pow_ttl,
    );
    let view = ChallengeView {
        queue: &queue.name,
        seed: issued.seed,
        difficulty: issued.difficulty,
        algorithm: "sha256",
        expires_at: format_time_ms(issued.expires_at * 1000),
        header: "Flashgate-Pow",
    };
    debug_assert!(HEADER.eq_ignore_ascii_case(view.header));
    let mut resp = json(StatusCode::OK, &view);
    // Each seed is for one admission: never from a cache.
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
