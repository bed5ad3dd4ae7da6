//! The slot schedule ([`flashgate::backend::SlotSchedule`]): one schedule
//! per queue, whichever instance reserves.

use std::time::Duration;

use crate::backends::{over_every_backend, Backend};

over_every_backend!(shared_schedule, a_rise_respaces_what_was_handed_out);

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

/// A rate raised while slots of the slower one are handed out: the
/// schedule re-spaces them at the new period, so the new rate starts within
/// their count of new periods, not after the last slow slot — whichever
/// instance asks. A lower rate goes on after what was handed out.
async fn a_rise_respaces_what_was_handed_out(backend: Backend) {
    let (a, b) = (backend.q.clone(), backend.instance("r2"));
    const S: i64 = 1_000_000;
    let slow = Duration::from_secs(1000);
    let fast = Duration::from_millis(1);
    // One slot every 1000 s: the first now, two more handed out to b.
    let first = a.reserve_slots(slow, 1, 1).await.unwrap().first_in();
    assert!((-S / 10..=0).contains(&first), "{first}");
    let first = b.reserve_slots(slow, 1, 2).await.unwrap().first_in();
    assert!((999 * S..=1000 * S).contains(&first), "{first}");
    // Raised to 1000/s: the three slow slots count as three fast ones.
    let fast_block = a.reserve_slots(fast, 1, 10).await.unwrap();
    let first = fast_block.first_in();
    assert!((2_000..=3_000).contains(&first), "{first}");
    // Lowered again: right after the ten fast slots just handed out.
    let slower = b
        .reserve_slots(Duration::from_millis(100), 1, 1)
        .await
        .unwrap();
    assert_eq!(slower.first, fast_block.first + 10_000);
}
