//! The drain's pacer: takes rate permits from the queue's one slot schedule,
//! shared by every instance through the queue backend, so the upstream sees
//! the configured rate in total — not once per instance.
//!
//! Slots are reserved a small block at a time (about [`BLOCK_WINDOW`] of
//! them, one backend call), each due at an absolute time: permit n of a
//! block is due at `first + n·period`, and a waiter that wakes a little late
//! still takes its slot, so timer jitter costs no rate. The schedule keeps
//! its own clock (Redis's, shared by every instance); [`ClockMap`] maps it
//! onto this process's steadily, so a slow reply does not shift one block
//! against the next, and a block never starts before the previous one ends. A slot left unused
//! past [`CATCH_UP`] (no entry was waiting) is dropped, never sent late in a
//! bunch: the rate is an upper bound, and idle time banks at most `burst`.
//! A permit that sent nothing (its ticket had been cancelled) is given back
//! and taken by the next waiter while its slot is still fresh, so skipped
//! tickets do not cost the upstream's capacity.
//!
//! A rate that rises takes effect at once: the slots reserved at the old,
//! slower period (a waiter may be sleeping towards one) are dropped and a
//! block is reserved at the new period; the schedule re-spaces what every
//! instance held (`SlotSchedule::reserve_slots`). A rate that falls applies
//! from the next block (at most [`BLOCK_WINDOW`] of the old rate).
//!
//! Why not governor: its limiters live in one process (N instances would
//! send N times the rate), and with a burst of 1 its GCRA drops whatever
//! time a waiter oversleeps, so a 1000/s drain ran at ~730/s.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::warn;

use crate::backend::{Reserved, SlotSchedule, CATCH_UP};
use crate::clock::period;

/// Slots reserved per backend call: this much time's worth at the current
/// rate, so the calls per second do not grow with the rate.
const BLOCK_WINDOW: Duration = Duration::from_millis(15);
/// Most slots reserved at once.
const MAX_BLOCK: u32 = 256;
/// Longest wait between tries when the schedule cannot be reached.
const RETRY_MAX: Duration = Duration::from_secs(2);

/// One queue's permits, for its drain tasks.
pub struct Pacer {
    schedule: Arc<dyn SlotSchedule>,
    rate: Mutex<Rate>,
    /// The slots reserved and not yet taken; one taker at a time, in order.
    block: tokio::sync::Mutex<Block>,
    /// Slots handed out and given back unused, or put back by a waiter that
    /// took an earlier one: due times, taken before the block's.
    spare: Mutex<Vec<Instant>>,
    /// Wakes waiters when a slot is given back.
    given_back: Notify,
    /// Counts the rises of the rate: a block reserved before the last one
    /// is dropped.
    rises: AtomicU64,
    /// Wakes waiters when the rate rises.
    rose: Notify,
}

#[derive(Clone, Copy)]
struct Rate {
    period: Duration,
    burst: u32,
}

struct Block {
    /// When the next reserved slot is due.
    next: Instant,
    left: u32,
    period: Duration,
    /// When the block arrived: slots due before (a burst after an idle
    /// spell) count as due then, not as passed.
    arrived: Instant,
    /// Whether a block was reserved before: `next` is then where it ended.
    reserved: bool,
    /// `Pacer::rises` when it was reserved.
    rises: u64,
    clock: ClockMap,
}

impl Block {
    fn due(&self) -> Instant {
        self.next.max(self.arrived)
    }
}

/// A granted permit: when its slot was due.
#[derive(Debug, Clone, Copy)]
pub struct Permit {
    due: Instant,
}

impl Permit {
    /// Whether the slot has passed: sending on it now could bunch requests.
    pub fn is_stale(&self) -> bool {
        Instant::now() > self.due + CATCH_UP
    }
}

impl Pacer {
    /// `rate` permits per second across every instance sharing `schedule`,
    /// at most `burst` back to back.
    pub fn new(schedule: Arc<dyn SlotSchedule>, rate: f64, burst: u32) -> Self {
        Pacer {
            schedule,
            rate: Mutex::new(Rate {
                period: period(rate),
                burst: burst.max(1),
            }),
            block: tokio::sync::Mutex::new(Block {
                next: Instant::now(),
                left: 0,
                period: period(rate),
                arrived: Instant::now(),
                reserved: false,
                rises: 0,
                clock: ClockMap::new(),
            }),
            spare: Mutex::default(),
            given_back: Notify::new(),
            rises: AtomicU64::new(0),
            rose: Notify::new(),
        }
    }

    fn spare(&self) -> std::sync::MutexGuard<'_, Vec<Instant>> {
        // Instants only; a panic cannot leave them inconsistent.
        self.spare.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The earliest spare slot due before `before`, if any still fresh
    /// (passed ones are dropped).
    fn take_spare(&self, before: Option<Instant>) -> Option<Instant> {
        let now = Instant::now();
        let mut spare = self.spare();
        spare.retain(|due| *due + CATCH_UP >= now);
        let (i, due) = spare.iter().copied().enumerate().min_by_key(|(_, d)| *d)?;
        if before.is_some_and(|b| due >= b) {
            return None;
        }
        spare.swap_remove(i);
        Some(due)
    }

    /// Gives back a permit that sent nothing: the next waiter takes its
    /// slot, if that is still fresh.
    pub fn give_back(&self, permit: Permit) {
        if permit.is_stale() {
            return;
        }
        self.spare().push(permit.due);
        self.given_back.notify_waiters();
    }

    fn rate(&self) -> Rate {
        // Two numbers; a panic cannot leave them inconsistent.
        *self.rate.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes the rate: a fall from the next reserved block on, a rise at
    /// once (the slots reserved at the slower rate are dropped).
    pub fn set_rate(&self, rate: f64, burst: u32) {
        let mut r = self.rate.lock().unwrap_or_else(|e| e.into_inner());
        let rose = period(rate) < r.period;
        r.period = period(rate);
        r.burst = burst.max(1);
        drop(r);
        if rose {
            self.rises.fetch_add(1, Ordering::SeqCst);
            self.rose.notify_waiters();
        }
    }

    /// Waits until the next slot is due and takes it. A slot given back
    /// meanwhile is taken instead when it is due earlier.
    pub async fn ready(&self) -> Permit {
        // Listening before looking: a slot given back in between (while a
        // block is being reserved, say) is seen by the next look.
        let mut given_back = std::pin::pin!(self.given_back.notified());
        given_back.as_mut().enable();
        let mut rose = std::pin::pin!(self.rose.notified());
        rose.as_mut().enable();
        let mut due = match self.take_spare(None) {
            Some(due) => due,
            None => self.next_reserved().await,
        };
        loop {
            if let Some(earlier) = self.take_spare(Some(due)) {
                self.spare().push(due);
                due = earlier;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(due) => return Permit { due },
                _ = given_back.as_mut() => {
                    given_back.set(self.given_back.notified());
                    given_back.as_mut().enable();
                }
                // The slot waited for was reserved at the slower rate: one
                // of the new block instead.
                _ = rose.as_mut() => {
                    rose.set(self.rose.notified());
                    rose.as_mut().enable();
                    due = self.next_reserved().await;
                }
            }
        }
    }

    /// The next slot of the reserved block (reserving one when it is used
    /// up), not waited for.
    async fn next_reserved(&self) -> Instant {
        let mut block = self.block.lock().await;
        let rises = self.rises.load(Ordering::SeqCst);
        if block.rises != rises {
            // Reserved before the rate rose: dropped, and the next block
            // need not wait for its end.
            block.rises = rises;
            block.left = 0;
            block.reserved = false;
        }
        let mut failures = 0u32;
        loop {
            // Slots that passed unused are dropped, not sent late.
            let now = Instant::now();
            while block.left > 0 && block.due() + CATCH_UP < now {
                let period = block.period;
                block.next += period;
                block.left -= 1;
            }
            if block.left > 0 {
                let due = block.due();
                let period = block.period;
                block.next += period;
                block.left -= 1;
                return due;
            }
            let rate = self.rate();
            let count = self.per(BLOCK_WINDOW).min(MAX_BLOCK as usize) as u32;
            let sent = Instant::now();
            match self
                .schedule
                .reserve_slots(rate.period, rate.burst, count)
                .await
            {
                Ok(reserved) => {
                    let now = Instant::now();
                    let first = block.clock.local(reserved, sent, now);
                    // Never before the end of the previous block: this
                    // instance's slots stay a period apart.
                    block.next = match block.reserved {
                        true => first.max(block.next),
                        false => first,
                    };
                    block.reserved = true;
                    block.left = count;
                    block.period = rate.period;
                    block.arrived = now;
                }
                Err(e) => {
                    failures += 1;
                    if failures == 1 {
                        warn!(error = %e, "cannot reserve drain slots; retrying");
                    }
                    let wait = Duration::from_millis(50) * failures.min(40);
                    tokio::time::sleep(wait.min(RETRY_MAX)).await;
                }
            }
        }
    }

    /// A permit to send on now: `permit` if its slot has not passed (it was
    /// held while waiting for an entry), else a fresh one.
    pub async fn renew(&self, permit: Permit) -> Permit {
        if permit.is_stale() {
            self.ready().await
        } else {
            permit
        }
    }

    /// Permits due over `window` at the current rate (at least 1).
    pub fn per(&self, window: Duration) -> usize {
        let r = self.rate();
        (window.as_nanos() / r.period.as_nanos().max(1)).max(1) as usize
    }
}

/// How long a clock sample counts towards the mapping.
const CLOCK_WINDOW: Duration = Duration::from_secs(10);

/// Maps the schedule's clock onto this process's, NTP-style: the schedule
/// read its clock somewhere between the request leaving and the reply
/// arriving, so `arrived − schedule's now` is the offset plus the reply's
/// delay. The smallest of the last [`CLOCK_WINDOW`]'s samples is the
/// steadiest estimate (the reply that waited least); mapping by each
/// reply's own arrival instead would shift every block by its reply's delay,
/// and a block whose reply was quick would overlap the one before. The
/// result is kept inside what the one reply proves (between leaving and
/// arriving), so a schedule whose clock jumped (a failover to another
/// machine) is mapped right at once.
struct ClockMap {
    epoch: Instant,
    /// `(arrived, offset µs)`, offsets increasing: the window's minimum is
    /// the front.
    samples: VecDeque<(Instant, i64)>,
}

impl ClockMap {
    fn new() -> Self {
        ClockMap {
            epoch: Instant::now(),
            samples: VecDeque::new(),
        }
    }

    /// Microseconds from the epoch to `t`.
    fn micros(&self, t: Instant) -> i64 {
        match t.checked_duration_since(self.epoch) {
            Some(d) => d.as_micros() as i64,
            None => -((self.epoch - t).as_micros() as i64),
        }
    }

    fn instant(&self, micros: i64) -> Instant {
        let d = Duration::from_micros(micros.unsigned_abs());
        if micros >= 0 {
            self.epoch + d
        } else {
            self.epoch.checked_sub(d).unwrap_or(self.epoch)
        }
    }

    /// When the block's first slot is due on this process's clock, for a
    /// reservation sent at `sent` whose reply arrived at `arrived`.
    fn local(&mut self, r: Reserved, sent: Instant, arrived: Instant) -> Instant {
        let offset = self.micros(arrived) - r.now;
        while self
            .samples
            .front()
            .is_some_and(|(at, _)| *at + CLOCK_WINDOW < arrived)
        {
            self.samples.pop_front();
        }
        while self.samples.back().is_some_and(|(_, o)| *o >= offset) {
            self.samples.pop_back();
        }
        self.samples.push_back((arrived, offset));
        let steadiest = self.samples.front().map_or(offset, |(_, o)| *o);
        let earliest = self.micros(sent) + r.first_in();
        let latest = self.micros(arrived) + r.first_in();
        self.instant((r.first + steadiest).clamp(earliest, latest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::MemoryQueue;

    fn pacer(rate: f64, burst: u32) -> Pacer {
        Pacer::new(
            Arc::new(MemoryQueue::new(Duration::from_secs(60))),
            rate,
            burst,
        )
    }

    /// Time is simulated (paused clock): the schedule is exact.
    #[tokio::test(start_paused = true)]
    async fn spaces_permits_evenly_and_keeps_the_rate() {
        let pacer = pacer(1000.0, 1);
        let start = Instant::now();
        for _ in 0..1000 {
            pacer.ready().await;
        }
        let took = Instant::now() - start;
        assert_eq!(took, Duration::from_millis(999), "1000 permits at 1000/s");
    }

    #[tokio::test(start_paused = true)]
    async fn late_waiters_catch_up_within_the_tolerance() {
        let pacer = pacer(1000.0, 1);
        let start = Instant::now();
        for i in 0..100 {
            pacer.ready().await;
            if i % 10 == 0 {
                // A stall shorter than the tolerance costs no permits.
                tokio::time::advance(Duration::from_millis(3)).await;
            }
        }
        assert_eq!(Instant::now() - start, Duration::from_millis(99));
    }

    #[tokio::test(start_paused = true)]
    async fn after_idle_only_burst_permits_are_due_at_once() {
        let pacer = pacer(100.0, 3);
        tokio::time::advance(Duration::from_secs(10)).await;
        let start = Instant::now();
        for _ in 0..3 {
            pacer.ready().await;
        }
        assert_eq!(Instant::now(), start, "three back to back");
        pacer.ready().await;
        assert_eq!(Instant::now() - start, Duration::from_millis(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_permit_held_while_idle_is_renewed_and_keeps_its_distance() {
        let pacer = pacer(10.0, 1);
        let p = pacer.ready().await;
        // Waiting a second for an entry, then sending it.
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(p.is_stale());
        pacer.renew(p).await;
        let sent = Instant::now();
        pacer.ready().await;
        assert_eq!(Instant::now() - sent, Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_that_falls_applies_to_the_next_block() {
        let pacer = pacer(100.0, 1);
        pacer.ready().await;
        pacer.set_rate(10.0, 1);
        let t = Instant::now();
        pacer.ready().await; // reserved at 10 ms under the old rate
        pacer.ready().await;
        assert_eq!(Instant::now() - t, Duration::from_millis(110));
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_that_rises_applies_at_once() {
        let pacer = pacer(10.0, 1);
        let start = Instant::now();
        pacer.ready().await;
        pacer.set_rate(100.0, 1);
        // The slot reserved at 100 ms under the old rate is re-spaced to
        // 10 ms; the rest follow 10 ms apart.
        pacer.ready().await;
        assert_eq!(Instant::now() - start, Duration::from_millis(10));
        pacer.ready().await;
        assert_eq!(Instant::now() - start, Duration::from_millis(20));
    }

    /// A drain slowed to a trickle (one slot every 1000 s) and sped up:
    /// the waiter sleeping towards the slow slot takes a fast one instead.
    #[tokio::test(start_paused = true)]
    async fn a_waiter_on_a_slow_slot_is_woken_by_a_rise() {
        let pacer = Arc::new(pacer(0.001, 1));
        let start = Instant::now();
        pacer.ready().await;
        let waiter = {
            let pacer = pacer.clone();
            tokio::spawn(async move {
                pacer.ready().await;
                Instant::now()
            })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        pacer.set_rate(1000.0, 1);
        let woke = waiter.await.unwrap() - start;
        assert!(
            woke < Duration::from_secs(2),
            "took the new rate's slot, at {woke:?}"
        );
        // And the rate holds from there: 1000 more in a second.
        let t = Instant::now();
        for _ in 0..1000 {
            pacer.ready().await;
        }
        assert!(Instant::now() - t <= Duration::from_millis(1000));
        assert!(Instant::now() - t >= Duration::from_millis(998));
    }

    #[tokio::test(start_paused = true)]
    async fn a_permit_given_back_is_taken_by_the_next_waiter() {
        let pacer = Arc::new(pacer(10.0, 1));
        let start = Instant::now();
        let p = pacer.ready().await;
        // The next waiter sleeps towards 100 ms...
        let waiter = {
            let pacer = pacer.clone();
            tokio::spawn(async move {
                pacer.ready().await;
                Instant::now()
            })
        };
        tokio::time::sleep(Duration::from_millis(1)).await;
        // ...until the first permit comes back unused: it goes at once.
        pacer.give_back(p);
        assert_eq!(waiter.await.unwrap() - start, Duration::from_millis(1));
        // The slot it had been waiting for is still there, at 100 ms.
        pacer.ready().await;
        assert_eq!(Instant::now() - start, Duration::from_millis(100));
        pacer.ready().await;
        assert_eq!(Instant::now() - start, Duration::from_millis(200));
    }

    #[tokio::test(start_paused = true)]
    async fn a_permit_given_back_late_is_dropped() {
        let pacer = pacer(10.0, 1);
        let start = Instant::now();
        let p = pacer.ready().await;
        tokio::time::advance(Duration::from_millis(50)).await;
        pacer.give_back(p);
        pacer.ready().await;
        assert_eq!(Instant::now() - start, Duration::from_millis(100));
    }

    /// Pacers of several instances on one schedule share its rate.
    #[tokio::test(start_paused = true)]
    async fn pacers_sharing_a_schedule_share_the_rate() {
        let schedule: Arc<dyn SlotSchedule> = Arc::new(MemoryQueue::new(Duration::from_secs(60)));
        let pacers: Vec<Arc<Pacer>> = (0..4)
            .map(|_| Arc::new(Pacer::new(schedule.clone(), 200.0, 1)))
            .collect();
        let start = Instant::now();
        let deadline = start + Duration::from_secs(5);
        let mut tasks = Vec::new();
        for p in pacers {
            tasks.push(tokio::spawn(async move {
                let mut n = 0u32;
                while p.ready().await.due < deadline {
                    n += 1;
                }
                n
            }));
        }
        let mut total = 0;
        for t in tasks {
            let n = t.await.unwrap();
            assert!(n > 0, "every instance gets slots");
            total += n;
        }
        assert_eq!(total, 1000, "5 s at 200/s in total, not 4 × 200/s");
    }

    /// Blocks back to back on the schedule's clock stay back to back here,
    /// whatever their replies' delays: mapped by arrival, the slow reply's
    /// block would be shifted 30 ms late and overlap the next one.
    #[test]
    fn a_slow_reply_does_not_shift_its_block() {
        let mut clock = ClockMap::new();
        let t0 = clock.epoch;
        let ms = |n: u64| Duration::from_millis(n);
        // The schedule's clock reads 5 s when ours reads t0.
        let on_schedule = |at: Duration| 5_000_000 + at.as_micros() as i64;
        // Delays (request, reply) in ms; each block is 15 ms, reserved when due.
        let delays = [(1, 1), (1, 30), (2, 1), (1, 12), (20, 1), (1, 1)];
        let mut firsts = Vec::new();
        for (i, (out, back)) in delays.into_iter().enumerate() {
            let start = ms(15 * i as u64);
            let read = start + ms(out);
            let r = Reserved {
                first: on_schedule(start),
                now: on_schedule(read),
            };
            firsts.push(clock.local(r, t0 + start, t0 + read + ms(back)) - t0);
        }
        // The first reply's 1 ms is the least seen: every block is mapped
        // with it, one 15 ms after the other.
        let expected: Vec<Duration> = (0..6).map(|i| ms(15 * i + 1)).collect();
        assert_eq!(firsts, expected);
    }

    /// A schedule whose clock jumped (another primary after a failover)
    /// is mapped by what its reply proves, not by the old samples.
    #[test]
    fn a_jump_of_the_schedule_clock_is_followed_at_once() {
        let mut clock = ClockMap::new();
        let t0 = clock.epoch;
        let ms = |n: u64| Duration::from_millis(n);
        let r = Reserved {
            first: 1_000_000,
            now: 1_000_000,
        };
        assert_eq!(clock.local(r, t0, t0 + ms(1)) - t0, ms(1));
        // Now the schedule's clock is 2 s behind: its slot due 10 ms after
        // its now is due 10 ms after the request left, not 2 s earlier.
        let r = Reserved {
            first: 1_000_000 + 10_000,
            now: 1_000_000,
        };
        let local = clock.local(r, t0 + ms(2000), t0 + ms(2001));
        assert_eq!(local - t0, ms(2010));
    }
}
