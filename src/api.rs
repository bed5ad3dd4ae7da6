//! The product's verbs, answered on the public and admin listeners:
//! admission ([`admission`]), tickets ([`tickets`]), the admin API
//! ([`admin`]) and the pages ([`pages`]); and [`App`], what their handlers share.

pub mod admin;
pub mod admission;
pub mod pages;
pub mod tickets;

use std::sync::Arc;

use crate::config::Config;
use crate::http::client::ClientLimiter;
use crate::metrics::Metrics;
use crate::queue::Queue;
use crate::ticket::TicketClaim;
use crate::upstream::HttpUpstream;

/// What request handlers share.
pub struct App {
    pub config: Config,
    pub queues: Vec<Arc<Queue>>,
    pub metrics: Arc<Metrics>,
    /// The order service, for passthrough (which streams); the drains
    /// send through it as an [`Upstream`](crate::upstream::Upstream).
    pub upstream: HttpUpstream,
    /// Per-client admission limits; `None` when off.
    pub clients: Option<ClientLimiter>,
}

impl App {
    /// The queue that owns a normalized request path, whatever the method.
    pub fn queue_for_path(&self, path: &str) -> Option<&Arc<Queue>> {
        self.queues
            .iter()
            .find(|q| q.routes_at(path).next().is_some())
    }

    /// The queue that minted a presented ticket id, when its MAC verifies
    /// under that queue's key: forged, altered and other queues' (or other
    /// deployments') ids are `None`, all alike, before any backend look-up.
    pub fn queue_for_tag(&self, claim: TicketClaim) -> Option<&Arc<Queue>> {
        self.queues.iter().find(|q| q.tag.verify(&claim))
    }
}
