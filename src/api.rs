//! The product's verbs, answered on the public and admin listeners:
//! admission ([`admission`]), tickets ([`tickets`]), the admin API
//! ([`admin`]) and the pages ([`pages`]); and [`App`], what their handlers share.

pub mod admin;
pub mod admission;
pub mod challenge;
pub mod pages;
pub mod tickets;

use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};

use crate::config::Config;
use crate::http::client::ClientLimiter;
use crate::http::problem::{Code, Problem};
use crate::metrics::Metrics;
use crate::queue::Queue;
use crate::ticket::TicketClaim;
use crate::upstream::HttpUpstream;

/// What request handlers share.
pub struct App {
    /// The configuration, swapped whole on a reload: read it per request
    /// ([`App::config`]).
    config: ArcSwap<Config>,
    pub queues: Vec<Arc<Queue>>,
    pub metrics: Arc<Metrics>,
    /// The order service, for passthrough (which streams); the drains
    /// send through it as an [`Upstream`](crate::upstream::Upstream).
    pub upstream: HttpUpstream,
    /// Per-client admission limits; `None` when off. Replaced on a reload
    /// that changes them (clients start with a full bucket).
    pub clients: ArcSwapOption<ClientLimiter>,
}

impl App {
    /// The application of a configuration, its queues and metrics.
    pub fn new(
        config: Config,
        queues: Vec<Arc<Queue>>,
        metrics: Arc<Metrics>,
        upstream: HttpUpstream,
    ) -> App {
        let clients = ClientLimiter::new(config.client_rate, config.client_burst);
        App {
            config: ArcSwap::from_pointee(config),
            queues,
            metrics,
            upstream,
            clients: ArcSwapOption::from(clients.map(Arc::new)),
        }
    }

    /// The queue an admin path names, or the `404` problem that says there is
    /// none.
    pub fn named_queue(&self, name: &str) -> Result<&Arc<Queue>, Problem> {
        self.queues
            .iter()
            .find(|q| q.name == name)
            .ok_or_else(|| Problem::new(Code::NotFound, format!("no queue named `{name}`")))
    }

    /// The configuration as it is now.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Takes a new configuration (a reload): every request from now on
    /// reads it, and each queue's settings are swapped with it.
    pub fn set_config(&self, config: Config) {
        let old = self.config();
        if (old.client_rate, old.client_burst) != (config.client_rate, config.client_burst) {
            let clients = ClientLimiter::new(config.client_rate, config.client_burst);
            self.clients.store(clients.map(Arc::new));
        }
        for q in &self.queues {
            if let Some(new) = config.queue.iter().find(|c| c.name == q.name) {
                q.set_config(new.clone());
            }
        }
        self.config.store(Arc::new(config));
    }

    /// The queue that owns a normalized request path, whatever the method.
    pub fn queue_for_path(&self, path: &str) -> Option<&Arc<Queue>> {
        self.queues.iter().find(|q| q.serves(path))
    }

    /// The queue that minted a presented ticket id, when its MAC verifies
    /// under that queue's key: forged, altered and other queues' (or other
    /// deployments') ids are `None`, all alike, before any backend look-up.
    pub fn queue_for_tag(&self, claim: TicketClaim) -> Option<&Arc<Queue>> {
        self.queues.iter().find(|q| q.tag.verify(&claim))
    }
}
