//! One request's exchange, as its handlers see it while they run: the
//! request's id (for problem bodies) and, when the access log is on, a
//! [`Note`] they fill in for its line — the route it took, its queue,
//! ticket, client and outcome (Envoy's per-stream `StreamInfo`).
//!
//! The edge ([`crate::server`]) runs each handler inside [`scope`]; the
//! handlers call [`note`] and [`read`] without knowing whether anyone
//! listens. With the access log off there is no note: [`note`] does
//! nothing and its closure, which may allocate, never runs.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use http::HeaderValue;

tokio::task_local! {
    static EXCHANGE: Exchange;
}

/// What a request's handlers share with the edge.
pub struct Exchange {
    id: HeaderValue,
    record: Option<Arc<Record>>,
}

impl Exchange {
    /// An exchange with this request id; `record` when its line is written.
    pub fn new(id: HeaderValue, record: Option<Arc<Record>>) -> Self {
        Exchange { id, record }
    }
}

/// What the access log line says that only the handlers know.
#[derive(Debug, Default, Clone)]
pub struct Note {
    /// The kind of route: `admission`, `ticket`, `passthrough`, `page`…
    pub route: Option<&'static str>,
    pub queue: Option<String>,
    pub ticket: Option<String>,
    /// The client key (`--client-key`), where the route worked it out.
    pub client: Option<String>,
    /// The problem's `code`, or the admission's outcome (`admitted`,
    /// `replayed`).
    pub code: Option<&'static str>,
    /// Passthrough: the upstream's status and the attempt that got it.
    pub upstream_status: Option<u16>,
    pub attempt: Option<u32>,
}

/// A request's note and the request body bytes read, shared with the edge
/// (which writes the line when the answer ends, or the client leaves) and
/// with a body streamed upstream from another task.
#[derive(Debug, Default)]
pub struct Record {
    note: Mutex<Note>,
    bytes_in: AtomicU64,
}

impl Record {
    /// The note as it stands.
    pub fn note(&self) -> Note {
        self.note.lock().map(|n| n.clone()).unwrap_or_default()
    }

    /// Request body bytes read so far.
    pub fn bytes_in(&self) -> u64 {
        self.bytes_in.load(Ordering::Relaxed)
    }

    /// Counts request body bytes read.
    pub fn read(&self, n: u64) {
        self.bytes_in.fetch_add(n, Ordering::Relaxed);
    }
}

/// Runs `f` as the handler of the request `exchange` describes.
pub async fn scope<F: Future>(exchange: Exchange, f: F) -> F::Output {
    EXCHANGE.scope(exchange, f).await
}

/// Calls `f` with the current request's id, if a request is being served.
pub fn with_id<R>(f: impl FnOnce(&str) -> R) -> Option<R> {
    EXCHANGE
        .try_with(|e| e.id.to_str().ok().map(f))
        .ok()
        .flatten()
}

/// Lets `f` fill in the current request's note; does nothing (and `f` is
/// not called) when no line is written for it.
pub fn note(f: impl FnOnce(&mut Note)) {
    let _ = EXCHANGE.try_with(|e| {
        if let Some(mut note) = e.record.as_ref().and_then(|r| r.note.lock().ok()) {
            f(&mut note);
        }
    });
}

/// Counts `n` request body bytes read for the current request.
pub fn read(n: u64) {
    let _ = EXCHANGE.try_with(|e| {
        if let Some(r) = &e.record {
            r.read(n);
        }
    });
}

/// The current request's record, for a body read on another task
/// (passthrough streams the request to the upstream from the client's).
pub fn record() -> Option<Arc<Record>> {
    EXCHANGE.try_with(|e| e.record.clone()).ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn handlers_note_only_what_is_recorded() {
        let record = Arc::new(Record::default());
        let exchange = Exchange::new(HeaderValue::from_static("id-1"), Some(record.clone()));
        scope(exchange, async {
            assert_eq!(with_id(str::to_string).as_deref(), Some("id-1"));
            note(|n| n.queue = Some("checkout".into()));
            read(5);
            read(2);
        })
        .await;
        assert_eq!(record.note().queue.as_deref(), Some("checkout"));
        assert_eq!(record.bytes_in(), 7);

        // Unrecorded: the closure does not run.
        let exchange = Exchange::new(HeaderValue::from_static("id-2"), None);
        scope(exchange, async {
            note(|_| panic!("no note without a record"));
            assert_eq!(with_id(str::len), Some(4));
        })
        .await;
        // Outside any request.
        assert_eq!(with_id(str::len), None);
        assert!(record_outside().is_none());
    }

    fn record_outside() -> Option<Arc<Record>> {
        record()
    }
}
