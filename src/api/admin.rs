//! The admin API's verbs: the queues as they stand, changes to their
//! shared knobs, their events (`events.rs`) and their dead letters
//! (`dead_letters.rs`).

pub mod dead_letters;
pub mod events;
pub mod stock;

use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Serialize;
use tracing::info;

use super::App;
use crate::backend::events::knob_moves;
use crate::backend::knobs::{Knobs, KnobsPatch};
use crate::config::AdaptiveBounds;
use crate::http::body::{json, Body};
use crate::http::exchange;
use crate::http::problem::{Code, Problem};
use crate::queue::Queue;

#[derive(Serialize)]
struct QueueInfo<'a> {
    name: &'a str,
    backend: &'static str,
    depth: Option<u64>,
    in_flight: Option<u64>,
    oldest_age_seconds: Option<f64>,
    /// The governed rate now, across all instances (the adaptive drain's
    /// current rate when it is on).
    drain_rate: f64,
    /// The adaptive drain's bounds, `null` when it is off.
    adaptive: Option<AdaptiveBounds>,
    /// Streams the queue is spread over.
    partitions: u32,
    paused: bool,
    /// The stock limit in force (`null` = unlimited).
    stock: Option<u64>,
    /// Stock not yet admitted.
    stock_left: Option<u64>,
    sold_out: bool,
    /// `not_open`, `prequeue`, `open` or `closed`.
    sale: &'static str,
    /// Proof-of-work difficulty in force, leading zero bits (0 = off).
    pow_difficulty: u8,
    /// The knobs as the configuration sets them.
    configured: Configured,
    /// The runtime overrides stored in the backend (`null` = as configured),
    /// which win over `configured`; a PATCH with `null` clears one.
    overrides: Overrides,
    /// A fair sale's products (`{}` without `product_from`).
    products: std::collections::BTreeMap<String, stock::ProductInfo>,
}

#[derive(Serialize)]
struct Configured {
    drain_rate: f64,
    stock: Option<u64>,
    #[serde(with = "crate::config::time_format")]
    opens_at: Option<std::time::SystemTime>,
    #[serde(with = "crate::config::time_format")]
    closes_at: Option<std::time::SystemTime>,
    pow_difficulty: u8,
}

#[derive(Serialize)]
struct Overrides {
    drain_rate: Option<f64>,
    stock: Option<u64>,
    /// `true` opened, `false` closed by an operator; `null` follows the schedule.
    open: Option<bool>,
    pow_difficulty: Option<u8>,
}

async fn queue_info(q: &Queue) -> QueueInfo<'_> {
    let stats = q.backend.stats().await.ok();
    let knobs = q.knobs();
    let stock = knobs.stock(&q.config());
    QueueInfo {
        name: &q.name,
        backend: q.backend.kind(),
        depth: stats.map(|s| s.depth),
        in_flight: stats.map(|s| s.in_flight),
        oldest_age_seconds: stats.and_then(|s| s.oldest_age).map(|d| d.as_secs_f64()),
        drain_rate: knobs.drain_rate(&q.config()),
        adaptive: q.config().adaptive,
        partitions: q.config().partitions,
        paused: knobs.paused,
        stock,
        stock_left: stock
            .zip(stats)
            .map(|(s, st)| s.saturating_sub(st.admitted - st.returned)),
        sold_out: knobs.sold_out,
        sale: knobs.phase(&q.config(), q.clock.now()).name(),
        pow_difficulty: knobs.pow_difficulty(&q.config()),
        configured: Configured {
            drain_rate: q.config().drain_rate,
            stock: q.config().stock,
            opens_at: q.config().opens_at,
            closes_at: q.config().closes_at,
            pow_difficulty: q.config().pow_difficulty,
        },
        overrides: Overrides {
            drain_rate: knobs.drain_rate,
            stock: knobs.stock,
            open: knobs.open,
            pow_difficulty: knobs.pow_difficulty,
        },
        products: stock::products(q).await,
    }
}

pub async fn queues(app: &App) -> Response<Body> {
    let mut out = Vec::new();
    for q in &app.queues {
        out.push(queue_info(q).await);
    }
    json(StatusCode::OK, &serde_json::json!({ "queues": out }))
}

/// `PATCH /admin/queues/{name}`: changes the shared knobs; every instance
/// follows within a second.
/// `actor` names who asks, for the `knobs_changed` event and the log: the
/// admin token's name, or `peer:<ip:port>` when no token is configured.
pub async fn patch_queue(
    app: &App,
    name: &str,
    actor: &str,
    req: Request<Incoming>,
) -> Response<Body> {
    let queue = match app.named_queue(name) {
        Ok(queue) => queue,
        Err(not_found) => return not_found.into_response(),
    };
    exchange::note(|n| n.queue = Some(queue.name.clone()));
    let body = match Limited::new(req.into_body(), 16 * 1024).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return Problem::new(Code::BadRequest, format!("cannot read the body: {e}"))
                .into_response()
        }
    };
    exchange::read(body.len() as u64);
    let patch = match KnobsPatch::from_json(&body) {
        Ok(p) => p,
        Err(why) => return Problem::new(Code::BadRequest, why).into_response(),
    };
    // The stored knobs as they are now, for the log's old values (the
    // watched copy can be up to a watch interval behind).
    let before = queue
        .backend
        .knobs()
        .await
        .unwrap_or_else(|_| queue.knobs());
    match queue.backend.set_knobs(&patch, Some(actor)).await {
        Ok(knobs) => {
            audit(name, actor, &before, &knobs);
            queue.update_knobs(knobs);
            json(StatusCode::OK, &queue_info(queue).await)
        }
        Err(e) => Problem::new(Code::Unavailable, format!("the change was not stored: {e}"))
            .retry_after(1)
            .into_response(),
    }
}

/// The audit line of a change: one INFO line per knob that moved, with
/// `actor`, `queue`, `knob`, `old` and `new` (JSON values; `null` = as
/// configured), beside the `knobs_changed` event the backend wrote.
fn audit(queue: &str, actor: &str, before: &Knobs, after: &Knobs) {
    let moves = knob_moves(before, after);
    if moves.is_empty() {
        info!(
            actor,
            queue, "queue knobs set by the admin API, none changed"
        );
    }
    for (knob, old, new) in moves {
        info!(actor, queue, knob, %old, %new, "queue knob changed by the admin API");
    }
}
