//! The change feed: every ticket status change, made by any instance,
//! reported to each instance once — so clients waiting on a ticket cost no
//! backend call until it changes.

use async_trait::async_trait;

use super::QueueError;

/// What the change feed reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change<'a> {
    /// This ticket's status changed.
    Ticket(&'a str),
    /// The feed (re)started: changes in the gap were not seen, so any ticket
    /// may have changed.
    Resync,
}

/// The receiver of [`ChangeFeed::follow_changes`].
pub type OnChange = dyn for<'a> Fn(Change<'a>) + Send + Sync;

/// The feed of ticket changes of one queue.
#[async_trait]
pub trait ChangeFeed: Send + Sync + 'static {
    /// Called once per queue and instance, whatever the number of waiting
    /// clients, and again after it returns: reports every ticket status
    /// change made by any instance to `changed`, starting with
    /// [`Change::Resync`], until the feed breaks. Returns only then, with
    /// the reason; the caller treats every cached read as stale and follows
    /// again.
    async fn follow_changes(&self, changed: &OnChange) -> Result<(), QueueError>;
}
