//! One queue at run time: its settings, its ticket-id tag, its backend, and
//! what this instance keeps of the shared state — the knobs as last seen,
//! the change feed that wakes waiting clients, and each partition's
//! dispatched count, and the clock its sale runs on — plus the upkeep tasks
//! that keep them current.

pub mod feed;
pub mod upkeep;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::backend::knobs::Knobs;
use crate::backend::QueueBackend;
use crate::clock::{Clock, SystemClock};
use crate::config::{QueueConfig, Route};
use crate::ticket::{QueueTag, TicketId};
use feed::TicketFeed;

/// One queue at run time: its settings, its id tag and its backend.
pub struct Queue {
    /// The queue's name (fixed for the life of the process).
    pub name: String,
    /// Its settings, swapped whole on a reload: read them per use
    /// ([`Queue::config`]), never keep them across a wait.
    config: ArcSwap<QueueConfig>,
    /// Wakes the tasks waiting under the old settings when new ones come.
    pub reloaded: tokio::sync::Notify,
    pub tag: QueueTag,
    pub backend: Arc<dyn QueueBackend>,
    /// This instance's copy of the shared knobs, kept current by a watcher.
    pub knobs: watch::Sender<Knobs>,
    /// Wakes the clients waiting on a ticket when it changes.
    pub feed: Arc<TicketFeed>,
    /// Each partition's dispatched count as last seen (refreshed every
    /// second): positions for event streams without a call per client.
    dispatched: Vec<AtomicU64>,
    /// Wall time: the sale's phase, ticket timestamps, queue-wait metrics.
    pub clock: Arc<dyn Clock>,
}

impl Queue {
    /// A queue at run time, before anything has been read from its backend.
    pub fn new(config: QueueConfig, tag: QueueTag, backend: Arc<dyn QueueBackend>) -> Self {
        let partitions = backend.partitions().max(1);
        Queue {
            name: config.name.clone(),
            config: ArcSwap::from_pointee(config),
            reloaded: tokio::sync::Notify::new(),
            tag,
            backend,
            knobs: watch::Sender::new(Knobs::default()),
            feed: Arc::default(),
            dispatched: (0..partitions).map(|_| AtomicU64::new(0)).collect(),
            clock: Arc::new(SystemClock),
        }
    }

    /// The queue's settings as they are now.
    pub fn config(&self) -> Arc<QueueConfig> {
        self.config.load_full()
    }

    /// Takes new settings (a reload); the name must be this queue's.
    pub fn set_config(&self, config: QueueConfig) {
        debug_assert_eq!(config.name, self.name);
        self.config.store(Arc::new(config));
        self.reloaded.notify_waiters();
    }

    /// The same queue on another clock (tests set the time of day).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Whether any of this queue's routes is at a normalized request path
    /// (module `path`), whatever its method.
    pub fn serves(&self, path: &str) -> bool {
        let config = self.config.load();
        let fold = config.route_case_insensitive;
        let at = |r: &Route| crate::http::path::matches(&r.path, path, fold);
        config.routes.iter().any(at)
    }

    /// The path of this queue's route for `method` at a normalized request
    /// path, if it has one.
    pub fn route(&self, path: &str, method: &http::Method) -> Option<String> {
        let config = self.config.load();
        let fold = config.route_case_insensitive;
        let at = |r: &&Route| r.method == method && crate::http::path::matches(&r.path, path, fold);
        config.routes.iter().find(at).map(|r| r.path.clone())
    }

    /// This queue's routes at a normalized request path, whatever their method.
    pub fn routes_at(&self, path: &str) -> Vec<Route> {
        let config = self.config.load();
        let fold = config.route_case_insensitive;
        config
            .routes
            .iter()
            .filter(|r| crate::http::path::matches(&r.path, path, fold))
            .cloned()
            .collect()
    }

    pub fn partitions(&self) -> u32 {
        self.dispatched.len() as u32
    }

    /// The dispatched count of a ticket's partition as last seen (it only
    /// grows).
    pub fn dispatched(&self, id: &TicketId) -> u64 {
        let p = id.partition(self.partitions()) as usize;
        self.dispatched[p].load(Ordering::Relaxed)
    }

    /// Records the dispatched count read with a ticket of this queue.
    pub fn saw_dispatched(&self, id: &TicketId, n: u64) {
        let p = id.partition(self.partitions()) as usize;
        self.dispatched[p].fetch_max(n, Ordering::Relaxed);
    }

    /// The rate a ticket's line moves at: the drain rate, shared evenly by
    /// the partitions.
    pub fn line_rate(&self, knobs: &Knobs) -> f64 {
        knobs.drain_rate(&self.config.load()) / f64::from(self.partitions())
    }

    /// The knobs as this instance last saw them.
    pub fn knobs(&self) -> Knobs {
        self.knobs.borrow().clone()
    }

    /// Takes a newer view of the knobs (an older one, read before a change
    /// this instance already knows of, is ignored); true when something changed.
    pub fn update_knobs(&self, new: Knobs) -> bool {
        self.knobs.send_if_modified(|k| {
            let changed = new.version >= k.version && *k != new;
            if changed {
                *k = new;
            }
            changed
        })
    }
}
