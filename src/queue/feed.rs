//! The in-process fan-out of ticket changes: one backend feed per queue and
//! instance ([`crate::backend::QueueBackend::follow_changes`]) wakes exactly
//! the clients waiting on the changed ticket — long-polls, event streams and
//! `Prefer: wait` admissions — so a waiting client costs no backend call
//! until its ticket changes.
//!
//! The same feed keeps the records of queued tickets (once they have a place
//! in line) as last read, so a client polling a queued ticket costs no
//! backend call either: an entry goes at the ticket's next change, and
//! everything goes whenever the feed is not connected (changes could be
//! missed then). The position comes from the queue's dispatched count,
//! refreshed every second, not from the entry.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::backend::Change;
use crate::ticket::{TicketRecord, TicketStatus};

/// Longest a record is served from memory: bounds what an unforeseen missed
/// change (or a ticket expiring while queued) could cost.
const CACHE_FOR: Duration = Duration::from_secs(10);
/// Most tickets remembered; beyond it, aged entries are swept and new ones
/// wait for room.
const CACHE_MAX: usize = 100_000;
/// Least time between two sweeps of a full cache. A sweep visits every
/// entry: run on each read of a full cache of fresh entries, it held the
/// lock for milliseconds per poll and starved the drain (10 s stalls of one
/// busy core in a 1 M ticket burst, until the entries aged out).
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Waiters by ticket id, and queued tickets' records.
#[derive(Default)]
pub struct TicketFeed {
    waiters: Mutex<HashMap<String, watch::Sender<u64>>>,
    cache: Mutex<Cache>,
    /// The backend feed is connected: a change is reported in time.
    live: AtomicBool,
    /// Hands out the tokens of reads in progress.
    reads: AtomicU64,
}

/// Queued tickets' records, and when the cache was last swept.
#[derive(Default)]
struct Cache {
    map: HashMap<String, Cached>,
    swept: Option<Instant>,
    /// Sweeps so far (tests).
    sweeps: u64,
}

impl Cache {
    /// Whether there is room for one more entry, sweeping aged ones out at
    /// most once per [`SWEEP_EVERY`].
    fn has_room(&mut self) -> bool {
        if self.map.len() < CACHE_MAX {
            return true;
        }
        if self.swept.is_some_and(|t| t.elapsed() < SWEEP_EVERY) {
            return false;
        }
        self.swept = Some(Instant::now());
        self.sweeps += 1;
        self.map.retain(|_, c| c.since().elapsed() < CACHE_FOR);
        self.map.len() < CACHE_MAX
    }
}

/// A cache entry: a read in progress (its token), or its result.
enum Cached {
    Reading(u64, Instant),
    Record(TicketRecord, Instant),
}

impl Cached {
    fn since(&self) -> Instant {
        match self {
            Cached::Reading(_, at) | Cached::Record(_, at) => *at,
        }
    }
}

/// A read that may fill the cache: [`TicketFeed::reading`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadToken(u64);

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

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        // Entries are independent: a panic cannot leave one half-written.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies one report of the backend's feed.
    pub fn apply(&self, change: Change<'_>) {
        // The cache first: a woken waiter must not re-read a stale entry.
        match change {
            Change::Ticket(id) => _ = self.cache().map.remove(id),
            Change::Resync => {
                self.cache().map.clear();
                self.live.store(true, Ordering::SeqCst);
            }
        }
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

    /// The backend feed broke: nothing cached can be trusted until it is
    /// back (its [`Change::Resync`]).
    pub fn lost(&self) {
        self.live.store(false, Ordering::SeqCst);
        self.cache().map.clear();
    }

    /// A queued ticket's record as last read, unless it changed since.
    pub fn cached(&self, ticket: &str) -> Option<TicketRecord> {
        if !self.live.load(Ordering::SeqCst) {
            return None;
        }
        match self.cache().map.get(ticket)? {
            Cached::Record(r, at) if at.elapsed() < CACHE_FOR => Some(r.clone()),
            _ => None,
        }
    }

    /// Starts a backend read of `ticket` whose result may be cached: `None`
    /// when the feed is down, the cache is full, or another read is under
    /// way. Call before the read, and [`Self::read_done`] after it.
    pub fn reading(&self, ticket: &str) -> Option<ReadToken> {
        if !self.live.load(Ordering::SeqCst) {
            return None;
        }
        let mut cache = self.cache();
        if !cache.has_room() {
            return None;
        }
        let fresh = |c: &Cached| c.since().elapsed() < CACHE_FOR;
        if cache.map.get(ticket).is_some_and(fresh) {
            return None;
        }
        let token = self.reads.fetch_add(1, Ordering::Relaxed);
        cache
            .map
            .insert(ticket.to_string(), Cached::Reading(token, Instant::now()));
        Some(ReadToken(token))
    }

    /// Ends a read begun with [`Self::reading`]: a queued record is kept
    /// if no change of the ticket was reported since the read began (the
    /// report removed the marker), else nothing is.
    pub fn read_done(&self, ticket: &str, token: ReadToken, record: Option<&TicketRecord>) {
        let mut cache = self.cache();
        let ours = matches!(cache.map.get(ticket), Some(Cached::Reading(t, _)) if *t == token.0);
        if !ours {
            return;
        }
        // A pre-queued ticket (no place yet, seq 0) gets its place when the
        // sale opens without a reported change: it is not kept.
        match record.filter(|r| r.status == TicketStatus::Queued && r.seq > 0) {
            Some(r) => {
                cache.map.insert(
                    ticket.to_string(),
                    Cached::Record(r.clone(), Instant::now()),
                );
            }
            None => _ = cache.map.remove(ticket),
        }
    }

    /// Drops what is cached of `ticket`: this instance just changed it, and
    /// its own clients must read their writes before the feed reports it.
    pub fn forget(&self, ticket: &str) {
        self.cache().map.remove(ticket);
    }

    /// Tickets cached or being read.
    pub fn cached_len(&self) -> usize {
        self.cache().map.len()
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

    fn queued() -> TicketRecord {
        TicketRecord {
            status: TicketStatus::Queued,
            seq: 7,
            attempts: 0,
            admitted_at_ms: 1,
            completed_at_ms: None,
            response: None,
            error: None,
        }
    }

    #[test]
    fn queued_records_are_cached_until_their_change() {
        let feed = TicketFeed::default();
        assert!(feed.reading("a").is_none(), "nothing before the feed is up");
        feed.apply(Change::Resync);
        let t = feed.reading("a").unwrap();
        assert!(feed.reading("a").is_none(), "one read at a time");
        assert_eq!(feed.cached("a"), None, "not while reading");
        feed.read_done("a", t, Some(&queued()));
        assert_eq!(feed.cached("a"), Some(queued()));
        feed.apply(Change::Ticket("b"));
        assert_eq!(feed.cached("a"), Some(queued()), "others' changes");
        feed.apply(Change::Ticket("a"));
        assert_eq!(feed.cached("a"), None, "its own change");
    }

    #[test]
    fn a_change_during_the_read_keeps_its_result_out() {
        let feed = TicketFeed::default();
        feed.apply(Change::Resync);
        let t = feed.reading("a").unwrap();
        feed.apply(Change::Ticket("a"));
        feed.read_done("a", t, Some(&queued()));
        assert_eq!(feed.cached("a"), None);
        // Only queued records are kept.
        let t = feed.reading("a").unwrap();
        let done = TicketRecord {
            status: TicketStatus::Completed,
            ..queued()
        };
        feed.read_done("a", t, Some(&done));
        assert_eq!(feed.cached("a"), None);
        // Nor pre-queued ones: their place comes without a change report.
        let t = feed.reading("a").unwrap();
        let prequeued = TicketRecord { seq: 0, ..queued() };
        feed.read_done("a", t, Some(&prequeued));
        assert_eq!(feed.cached("a"), None);
        assert_eq!(feed.cached_len(), 0);
    }

    #[test]
    fn a_full_cache_of_fresh_entries_is_swept_at_most_once_a_second() {
        let feed = TicketFeed::default();
        feed.apply(Change::Resync);
        for i in 0..CACHE_MAX {
            let id = i.to_string();
            let token = feed.reading(&id).unwrap();
            feed.read_done(&id, token, Some(&queued()));
        }
        // Full of fresh entries: nothing to sweep out, no room, and only
        // the first refusal pays for a sweep.
        for i in 0..1000 {
            assert_eq!(feed.reading(&format!("new-{i}")), None);
        }
        assert_eq!(feed.cache().sweeps, 1);
        assert_eq!(feed.cached_len(), CACHE_MAX);
        // A reported change makes room at once.
        feed.apply(Change::Ticket("7"));
        assert!(feed.reading("new-0").is_some());
    }

    #[test]
    fn a_lost_feed_empties_and_disables_the_cache() {
        let feed = TicketFeed::default();
        feed.apply(Change::Resync);
        let t = feed.reading("a").unwrap();
        feed.read_done("a", t, Some(&queued()));
        feed.lost();
        assert_eq!(feed.cached("a"), None);
        assert!(feed.reading("a").is_none());
        feed.apply(Change::Resync);
        assert_eq!(feed.cached("a"), None, "a resync starts empty");
        let t = feed.reading("a").unwrap();
        feed.read_done("a", t, Some(&queued()));
        feed.forget("a");
        assert_eq!(feed.cached("a"), None);
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
