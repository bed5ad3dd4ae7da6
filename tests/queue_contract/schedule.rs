//! The slot schedule ([`flashgate::backend::SlotSchedule`]): one schedule
//! per queue, whichever instance reserves.

use std::time::Duration;

use crate::backends::{over_every_backend, Backend};

over_every_backend!(shared_schedule);

/// The drain's shared schedule, seen from two instances (`a`, `b`) of one
/// queue.
async fn shared_schedule(backend: Backend) {
    let (a, b) = (backend.q.clone(), backend.instance("r2"));
    const S: i64 = 1_000_000;
    let second = Duration::from_secs(1);
    // A fresh schedule with a large burst: 200 slots due at once.
    let first = a.reserve_slots(second, 200, 1).await.unwrap().first_in();
    assert!((-199 * S..=-199 * S + S / 10).contains(&first), "{first}");
    // A burst of three: the schedule restarts with two already past.
    let first = a.reserve_slots(second, 3, 1).await.unwrap().first_in();
    assert!((-2 * S..=-2 * S + S / 10).contains(&first), "{first}");
    // Idle since: the schedule restarts now, whoever asks...
    let a_first = a.reserve_slots(second, 1, 5).await.unwrap().first_in();
    assert!((-S / 10..=0).contains(&a_first), "{a_first}");
    // ...and the other instance's slots come after those five, never
    // alongside them.
    let b_first = b.reserve_slots(second, 1, 2).await.unwrap().first_in();
    assert!((4 * S..=5 * S).contains(&b_first), "{b_first}");
}
