//! The in-process fan-out of ticket changes: one backend feed per queue and
//! instance ([`crate::queue::QueueBackend::follow_changes`]) wakes exactly
//! the clients waiting on the changed ticket — long-polls, event streams and
//! `Prefer: wait` admissions — so a waiting client costs no backend call
//! until its ticket changes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::queue::Change;

/// Waiters by ticket id.
#[derive(Default)]
pub struct TicketFeed {
    waiters: Mutex<HashMap<String, watch::Sender<u64>>>,
}

/// One client's interest in one ticket; dropping it forgets the interest.
pub struct Subscription {
    feed: Arc<TicketFeed>,
    ticket: String,
    rx: watch::Receiver<u64>,
}

impl TicketFeed {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, watch::Sender<u64>>> {
        // The map holds no invariant a panic could break half-way.
        self.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts waiting on `ticket`. Take the subscription *before* reading the
    /// ticket's state: a change after the subscription is never missed.
    pub fn subscribe(self: &Arc<Self>, ticket: &str) -> Subscription {
        let rx = self
            .lock()
            .entry(ticket.to_string())
            .or_insert_with(|| watch::Sender::new(0))
            .subscribe();
        Subscription {
            feed: self.clone(),
            ticket: ticket.to_string(),
            rx,
        }
    }

    /// Applies one report of the backend's feed.
    pub fn apply(&self, change: Change<'_>) {
        let waiters = self.lock();
        match change {
            Change::Ticket(id) => {
                if let Some(tx) = waiters.get(id) {
                    tx.send_modify(|n| *n += 1);
                }
            }
            Change::Resync => {
                for tx in waiters.values() {
                    tx.send_modify(|n| *n += 1);
                }
            }
        }
    }

    /// Clients waiting now, over all tickets.
    pub fn waiting_clients(&self) -> usize {
        self.lock().values().map(|tx| tx.receiver_count()).sum()
    }

    /// Tickets with at least one waiter.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nobody waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Subscription {
    /// Resolves at the next change of the ticket after the last one seen
    /// (or at once if one happened since the subscription). Never resolves
    /// otherwise: race it against a deadline.
    pub async fn changed(&mut self) {
        if self.rx.changed().await.is_err() {
            // The sender lives as long as any subscription to it: this one.
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut waiters = self.feed.lock();
        // The last subscription of a ticket takes its entry with it (its own
        // receiver is still counted while this runs).
        if waiters
            .get(&self.ticket)
            .is_some_and(|tx| tx.receiver_count() <= 1)
        {
            waiters.remove(&self.ticket);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn woken(sub: &mut Subscription) -> bool {
        tokio::time::timeout(Duration::from_millis(50), sub.changed())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn only_the_changed_tickets_waiters_wake() {
        let feed = Arc::new(TicketFeed::default());
        let mut a1 = feed.subscribe("a");
        let mut a2 = feed.subscribe("a");
        let mut b = feed.subscribe("b");
        feed.apply(Change::Ticket("a"));
        assert!(woken(&mut a1).await);
        assert!(woken(&mut a2).await);
        assert!(!woken(&mut b).await);
        // A change is not seen twice.
        assert!(!woken(&mut a1).await);
    }

    #[tokio::test]
    async fn a_change_before_waiting_is_not_missed() {
        let feed = Arc::new(TicketFeed::default());
        let mut sub = feed.subscribe("a");
        feed.apply(Change::Ticket("a"));
        assert!(woken(&mut sub).await);
    }

    #[tokio::test]
    async fn resync_wakes_everyone_and_entries_go_with_their_last_waiter() {
        let feed = Arc::new(TicketFeed::default());
        let mut a = feed.subscribe("a");
        let mut b = feed.subscribe("b");
        feed.apply(Change::Resync);
        assert!(woken(&mut a).await);
        assert!(woken(&mut b).await);
        let a2 = feed.subscribe("a");
        assert_eq!(feed.len(), 2);
        drop(a);
        assert_eq!(feed.len(), 2);
        drop(a2);
        drop(b);
        assert!(feed.is_empty());
        // Changes of tickets nobody waits on cost a lookup and nothing else.
        feed.apply(Change::Ticket("a"));
        assert!(feed.is_empty());
    }
}
