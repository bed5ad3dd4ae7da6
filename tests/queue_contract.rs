//! One contract, every queue backend: the embedded queue and Redis streams
//! must behave the same for admission, delivery, completion and failure.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::RedisServer;
use flashgate::backend::knobs::{KnobsPatch, RateStep};
use flashgate::backend::{
    Admit, AdmitLimits, AttemptStart, Cancel, Change, Delivery, IdempotencyClaim, Line,
    MemoryQueue, Prequeue, QueueBackend, QueuedRequest, RedisQueue, RedisQueueConfig,
};
use flashgate::ticket::{QueueTag, StoredResponse, TicketError, TicketId, TicketStatus};

const BLOCK: Duration = Duration::from_millis(200);

fn request(n: u8) -> QueuedRequest {
    QueuedRequest {
        ticket: TicketId::generate(QueueTag::of("contract")),
        method: "POST".into(),
        path: format!("/checkout?n={n}"),
        headers: Bytes::from_static(b"content-type: application/json\r\nx-bin: caf\xe9\r\n"),
        body: Bytes::from(vec![n, 0, 255]),
        client: "ip:127.0.0.1".into(),
        forwarded_for: "127.0.0.1".into(),
        forwarded_proto: "http".into(),
        admitted_at_ms: 1_700_000_000_000 + u64::from(n),
    }
}

fn claim(key: &str, fingerprint: &str) -> IdempotencyClaim {
    IdempotencyClaim {
        key: key.into(),
        fingerprint: fingerprint.into(),
    }
}

fn cap(max_queue: u64) -> AdmitLimits {
    AdmitLimits {
        max_queue,
        stock: None,
        prequeue: Prequeue::Configured,
    }
}

/// One entry, or none after the block.
async fn next1(q: &dyn QueueBackend) -> Option<Delivery> {
    let mut got = q.next(BLOCK, 1).await.unwrap();
    assert!(got.len() <= 1, "asked for one entry, got {}", got.len());
    got.pop()
}

async fn contract(q: Arc<dyn QueueBackend>) {
    // Empty: zero stats before anything touched the queue (no stream yet),
    // nothing to read after the block.
    assert_eq!(q.stats().await.unwrap().depth, 0);
    assert!(next1(&*q).await.is_none());
    q.ping().await.unwrap();

    // Admission assigns sequence numbers in order.
    let (a, b, c) = (request(1), request(2), request(3));
    assert_eq!(
        q.admit(a.clone(), None, cap(10)).await.unwrap(),
        Admit::Admitted {
            seq: 1,
            dispatched: 0
        }
    );
    assert_eq!(
        q.admit(b.clone(), Some(claim("k1", "f1")), cap(10))
            .await
            .unwrap(),
        Admit::Admitted {
            seq: 2,
            dispatched: 0
        }
    );
    // Same key, same fingerprint: the original ticket; another fingerprint: refused.
    assert_eq!(
        q.admit(c.clone(), Some(claim("k1", "f1")), cap(10))
            .await
            .unwrap(),
        Admit::Replayed {
            ticket: b.ticket.clone(),
            seq: 2,
            dispatched: 0
        }
    );
    assert_eq!(
        q.admit(c.clone(), Some(claim("k1", "f2")), cap(10))
            .await
            .unwrap(),
        Admit::KeyReused
    );
    // Capacity counts undispatched tickets.
    assert_eq!(
        q.admit(c.clone(), None, cap(2)).await.unwrap(),
        Admit::QueueFull { depth: 2 }
    );
    assert_eq!(
        q.admit(c.clone(), None, cap(10)).await.unwrap(),
        Admit::Admitted {
            seq: 3,
            dispatched: 0
        }
    );

    let (record, dispatched) = q.ticket(&a.ticket).await.unwrap().unwrap();
    assert_eq!(
        (record.status, record.seq, record.attempts, dispatched),
        (TicketStatus::Queued, 1, 0, 0)
    );
    assert_eq!(record.admitted_at_ms, a.admitted_at_ms);
    let stats = q.stats().await.unwrap();
    assert_eq!((stats.depth, stats.in_flight, stats.admitted), (3, 0, 3));
    assert!(stats.oldest_age.is_some());

    // Delivery in admission order, the request intact.
    let mut d = next1(&*q).await.expect("an entry");
    assert!(d.fresh);
    assert_eq!(d.request.as_ref().unwrap(), &a);
    assert_eq!(d.ahead_at_admission, Some(0));
    assert_eq!(q.start_attempt(&d).await.unwrap(), AttemptStart::Counted(1));
    d.fresh = false;
    assert_eq!(
        q.start_attempt(&d).await.unwrap(),
        AttemptStart::Counted(2),
        "attempts add up"
    );
    let (record, dispatched) = q.ticket(&a.ticket).await.unwrap().unwrap();
    assert_eq!(
        (record.status, record.attempts, dispatched),
        (TicketStatus::InFlight, 2, 1)
    );
    let stats = q.stats().await.unwrap();
    assert_eq!((stats.depth, stats.in_flight), (2, 1));
    // b is now first in line.
    let (record, dispatched) = q.ticket(&b.ticket).await.unwrap().unwrap();
    assert_eq!(flashgate::ticket::position(record.seq, dispatched), 0);

    let response = StoredResponse {
        status: 201,
        headers: Bytes::from_static(b"content-type: application/json\r\n"),
        body: Bytes::from_static(b"{\"order\":1}"),
    };
    q.complete(&d, &response).await.unwrap();
    let (record, _) = q.ticket(&a.ticket).await.unwrap().unwrap();
    assert_eq!(record.status, TicketStatus::Completed);
    assert_eq!(record.response.as_ref(), Some(&response));
    assert!(record.completed_at_ms.is_some());
    assert_eq!(q.stats().await.unwrap().in_flight, 0);

    // Failure: dead-lettered, ticket failed with the reason.
    let mut d = next1(&*q).await.expect("b");
    assert_eq!(d.request.as_ref().unwrap().ticket, b.ticket);
    assert_eq!(d.ahead_at_admission, Some(1));
    q.start_attempt(&d).await.unwrap();
    d.fresh = false;
    let err = TicketError {
        code: "upstream_unavailable".into(),
        detail: "503 x5".into(),
    };
    q.fail(&d, &err, true).await.unwrap();
    let (record, _) = q.ticket(&b.ticket).await.unwrap().unwrap();
    assert_eq!(record.status, TicketStatus::Failed);
    assert_eq!(record.error.as_ref(), Some(&err));
    assert!(record.response.is_none());

    let d = next1(&*q).await.expect("c");
    assert_eq!(d.request.as_ref().unwrap().ticket, c.ticket);
    assert_eq!(q.stats().await.unwrap().depth, 1, "read, not yet started");
    q.start_attempt(&d).await.unwrap();
    assert_eq!(
        q.stats().await.unwrap().depth,
        0,
        "counted as dispatched once started"
    );
    let unknown = TicketId::generate(QueueTag::of("contract"));
    assert!(q.ticket(&unknown).await.unwrap().is_none());

    // Batches come in admission order, no more than asked for.
    let batch: Vec<QueuedRequest> = (10..15).map(request).collect();
    for r in &batch {
        q.admit(r.clone(), None, cap(100)).await.unwrap();
    }
    let got = q.next(BLOCK, 3).await.unwrap();
    let tickets: Vec<_> = got
        .iter()
        .map(|d| d.request.as_ref().unwrap().ticket.clone())
        .collect();
    assert_eq!(
        tickets,
        batch[..3]
            .iter()
            .map(|r| r.ticket.clone())
            .collect::<Vec<_>>()
    );
    let rest = q.next(BLOCK, 10).await.unwrap();
    assert_eq!(rest.len(), 2);

    // Stock counts every admission so far (8); a stock knob beats the config.
    let limited = AdmitLimits {
        stock: Some(8),
        ..cap(100)
    };
    assert_eq!(
        q.admit(request(20), None, limited).await.unwrap(),
        Admit::SoldOut
    );
    let knobs = q
        .set_knobs(&KnobsPatch {
            stock: Some(Some(9)),
            drain_rate: Some(7.5),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!((knobs.stock, knobs.drain_rate), (Some(9), Some(7.5)));
    assert!(matches!(
        q.admit(request(21), None, limited).await.unwrap(),
        Admit::Admitted { .. }
    ));
    assert_eq!(
        q.admit(request(22), None, limited).await.unwrap(),
        Admit::SoldOut
    );
    // The sold-out flag refuses everything but replays.
    q.set_knobs(&KnobsPatch {
        stock: Some(None),
        sold_out: Some(true),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        q.admit(request(23), None, cap(100)).await.unwrap(),
        Admit::SoldOut
    );
    assert!(matches!(
        q.admit(request(24), Some(claim("k1", "f1")), cap(100))
            .await
            .unwrap(),
        Admit::Replayed { .. }
    ));
    let knobs = q.knobs().await.unwrap();
    assert!(knobs.sold_out && knobs.stock.is_none() && !knobs.paused);
}

/// Pre-queued entries wait outside the line, then take random places in it,
/// ahead of anyone admitted while they are being placed.
async fn prequeue_contract(q: Arc<dyn QueueBackend>) {
    let pre = AdmitLimits {
        prequeue: Prequeue::Now,
        ..cap(100)
    };
    let early: Vec<QueuedRequest> = (0..12).map(request).collect();
    for r in &early {
        assert_eq!(
            q.admit(r.clone(), None, pre).await.unwrap(),
            Admit::Admitted {
                seq: 0,
                dispatched: 0
            }
        );
    }
    assert!(
        next1(&*q).await.is_none(),
        "pre-queued entries are not in line yet"
    );
    assert_eq!(q.release_prequeue(5).await.unwrap(), (5, 7));
    // Admitted while the release is under way: behind every pre-queued one.
    let late = request(99);
    assert_eq!(
        q.admit(late.clone(), None, cap(100)).await.unwrap(),
        Admit::Admitted {
            seq: 0,
            dispatched: 0
        }
    );
    assert_eq!(q.release_prequeue(100).await.unwrap(), (8, 0));
    let got = q.next(BLOCK, 100).await.unwrap();
    let order: Vec<TicketId> = got
        .iter()
        .map(|d| d.request.as_ref().unwrap().ticket.clone())
        .collect();
    assert_eq!(order.len(), 13);
    assert_eq!(order[12], late.ticket);
    let arrival: Vec<TicketId> = early.iter().map(|r| r.ticket.clone()).collect();
    assert_ne!(order[..12], arrival[..], "released in arrival order");
    for (i, t) in order.iter().enumerate() {
        let (record, _) = q.ticket(t).await.unwrap().unwrap();
        assert_eq!(
            record.seq,
            i as u64 + 1,
            "places are numbered in the new order"
        );
    }
    // Once released, admissions go straight into line again.
    assert!(matches!(
        q.admit(request(100), None, cap(100)).await.unwrap(),
        Admit::Admitted { seq: 14, .. }
    ));
}

/// Cancel and the change feed: a queued ticket can be cancelled and is then
/// skipped by the drain (never started); an in-flight one cannot; every
/// status change is reported on the feed.
async fn cancel_contract(q: Arc<dyn QueueBackend>) {
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let feed = {
        let (q, seen) = (q.clone(), seen.clone());
        tokio::spawn(async move {
            let record = move |c: Change<'_>| {
                let entry = match c {
                    Change::Ticket(id) => id.to_string(),
                    Change::Resync => "resync".to_string(),
                };
                seen.lock().unwrap().push(entry);
            };
            q.follow_changes(&record).await
        })
    };
    let changes = || seen.lock().unwrap().clone();
    common::eventually(Duration::from_secs(5), "the feed to start", || async {
        changes().contains(&"resync".to_string()).then_some(())
    })
    .await;

    let (a, b) = (request(1), request(2));
    for r in [&a, &b] {
        q.admit(r.clone(), None, cap(10)).await.unwrap();
    }
    let Cancel::Cancelled(record, _) = q.cancel(&a.ticket).await.unwrap() else {
        panic!("a queued ticket is cancellable");
    };
    assert_eq!(record.status, TicketStatus::Cancelled);
    assert!(record.completed_at_ms.is_some());
    assert!(
        matches!(
            q.cancel(&a.ticket).await.unwrap(),
            Cancel::AlreadyCancelled(..)
        ),
        "cancelling twice is harmless, and said to change nothing"
    );
    // The drain reaches a and skips it: removed, counted as dispatched.
    let d = next1(&*q).await.expect("a");
    assert_eq!(d.request.as_ref().unwrap().ticket, a.ticket);
    assert_eq!(q.start_attempt(&d).await.unwrap(), AttemptStart::Cancelled);
    let stats = q.stats().await.unwrap();
    assert_eq!((stats.dispatched, stats.depth, stats.in_flight), (1, 1, 0));
    let (record, _) = q.ticket(&a.ticket).await.unwrap().unwrap();
    assert_eq!(
        (record.status, record.attempts),
        (TicketStatus::Cancelled, 0)
    );

    // b is started first: too late to cancel.
    let d = next1(&*q).await.expect("b");
    assert_eq!(q.start_attempt(&d).await.unwrap(), AttemptStart::Counted(1));
    assert_eq!(
        q.cancel(&b.ticket).await.unwrap(),
        Cancel::Refused(TicketStatus::InFlight)
    );
    let response = StoredResponse {
        status: 200,
        headers: Bytes::new(),
        body: Bytes::new(),
    };
    q.complete(&d, &response).await.unwrap();
    assert_eq!(
        q.cancel(&b.ticket).await.unwrap(),
        Cancel::Refused(TicketStatus::Completed)
    );
    let unknown = TicketId::generate(QueueTag::of("contract"));
    assert_eq!(q.cancel(&unknown).await.unwrap(), Cancel::NotFound);
    assert!(next1(&*q).await.is_none(), "the cancelled entry is gone");

    // a cancelled; b in flight, then completed.
    let (a_id, b_id) = (a.ticket.to_string(), b.ticket.to_string());
    let want = vec![a_id.clone(), b_id.clone(), b_id.clone()];
    let got = common::eventually(Duration::from_secs(5), "the changes", || async {
        let got: Vec<String> = changes()
            .into_iter()
            .filter(|c| *c == a_id || *c == b_id)
            .collect();
        (got == want).then_some(got)
    })
    .await;
    assert_eq!(got.len(), 3);
    feed.abort();
}

/// The drain's shared schedule and the adaptive rate, seen from two
/// instances (`a`, `b`) of one queue.
async fn rate_contract(a: Arc<dyn QueueBackend>, b: Arc<dyn QueueBackend>) {
    const S: i64 = 1_000_000;
    let second = Duration::from_secs(1);
    // A fresh schedule with a large burst: 200 slots due at once.
    let first = a.reserve_slots(second, 200, 1).await.unwrap();
    assert!((-199 * S..=-199 * S + S / 10).contains(&first), "{first}");
    // A burst of three: the schedule restarts with two already past.
    let first = a.reserve_slots(second, 3, 1).await.unwrap();
    assert!((-2 * S..=-2 * S + S / 10).contains(&first), "{first}");
    // Idle since: the schedule restarts now, whoever asks...
    let a_first = a.reserve_slots(second, 1, 5).await.unwrap();
    assert!((-S / 10..=0).contains(&a_first), "{a_first}");
    // ...and the other instance's slots come after those five, never
    // alongside them.
    let b_first = b.reserve_slots(second, 1, 2).await.unwrap();
    assert!((4 * S..=5 * S).contains(&b_first), "{b_first}");

    // Adaptive steps: one down, then none either way for a second, from
    // any instance.
    let step = |down| RateStep {
        down,
        floor: 10.0,
        ceiling: 100.0,
        configured: 100.0,
    };
    let knobs = a.adapt_rate(&step(true)).await.unwrap().expect("a step");
    assert_eq!(knobs.drain_rate, Some(70.0));
    assert_eq!(b.adapt_rate(&step(true)).await.unwrap(), None);
    assert_eq!(b.adapt_rate(&step(false)).await.unwrap(), None);
    assert_eq!(a.knobs().await.unwrap().drain_rate, Some(70.0));
    tokio::time::sleep(RateStep::SPACING + Duration::from_millis(100)).await;
    let knobs = b.adapt_rate(&step(false)).await.unwrap().expect("a step");
    assert_eq!(knobs.drain_rate, Some(74.5), "70 + (100 - 10) / 20");
    // An operator's rate is where the next step starts from.
    let patch = KnobsPatch {
        drain_rate: Some(50.0),
        ..KnobsPatch::default()
    };
    a.set_knobs(&patch).await.unwrap();
    let knobs = a.adapt_rate(&step(true)).await.unwrap().expect("a step");
    assert_eq!(knobs.drain_rate, Some(35.0));
    // Bounds hold: down from 35 ends at the floor, not below.
    for _ in 0..4 {
        tokio::time::sleep(RateStep::SPACING + Duration::from_millis(100)).await;
        a.adapt_rate(&step(true)).await.unwrap();
    }
    assert_eq!(a.knobs().await.unwrap().drain_rate, Some(10.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_queue_rate_contract() {
    let q: Arc<dyn QueueBackend> = Arc::new(MemoryQueue::new(Duration::from_secs(3600)));
    rate_contract(q.clone(), q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_queue_rate_contract() {
    let redis = RedisServer::start();
    rate_contract(
        Arc::new(redis_queue(&redis, "r1")),
        Arc::new(redis_queue(&redis, "r2")),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_queue_cancel_contract() {
    cancel_contract(Arc::new(MemoryQueue::new(Duration::from_secs(3600)))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_queue_cancel_contract() {
    let redis = RedisServer::start();
    cancel_contract(Arc::new(redis_queue(&redis, "x1"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_queue_prequeue_contract() {
    prequeue_contract(Arc::new(MemoryQueue::new(Duration::from_secs(3600)))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_queue_prequeue_contract() {
    let redis = RedisServer::start();
    prequeue_contract(Arc::new(redis_queue(&redis, "p1"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_queue_meets_the_contract() {
    contract(Arc::new(MemoryQueue::new(Duration::from_secs(3600)))).await;
}

/// Admissions that arrive together (the Redis backend sends them to Redis in
/// one script call) are decided one after the other, as if sent apart: the
/// capacity is exact, one Idempotency-Key makes at most one ticket, and the
/// entries come out in sequence order, each with its own request.
async fn burst_contract(q: Arc<dyn QueueBackend>) {
    const CAP: u64 = 12;
    let requests: Vec<QueuedRequest> = (0..30).map(request).collect();
    let claims: Vec<Option<IdempotencyClaim>> = (0..30)
        .map(|i| match i {
            20..25 => Some(claim("same-key", "body-1")),
            25..30 => Some(claim("same-key", "body-2")),
            _ => None,
        })
        .collect();
    let answers = futures_util::future::join_all(
        requests
            .iter()
            .zip(&claims)
            .map(|(r, c)| q.admit(r.clone(), c.clone(), cap(CAP))),
    )
    .await;
    let answers: Vec<Admit> = answers.into_iter().map(Result::unwrap).collect();

    let admitted: Vec<(usize, u64)> = answers
        .iter()
        .enumerate()
        .filter_map(|(i, a)| match a {
            Admit::Admitted { seq, .. } => Some((i, *seq)),
            _ => None,
        })
        .collect();
    assert_eq!(admitted.len() as u64, CAP, "{answers:?}");
    let mut seqs: Vec<u64> = admitted.iter().map(|&(_, s)| s).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=CAP).collect::<Vec<_>>());

    // The key's first request decides: later ones with the same body replay
    // its ticket, with another body they are refused. Only if the queue was
    // full when the first came is the key never admitted.
    let winner = admitted.iter().map(|&(i, _)| i).find(|&i| i >= 20);
    let same_body = |a: usize, b: usize| (a >= 25) == (b >= 25);
    for (i, answer) in answers.iter().enumerate() {
        match answer {
            Admit::Admitted { .. } => {}
            Admit::QueueFull { depth } => {
                assert_eq!(*depth, CAP);
                if i >= 20 {
                    assert_eq!(winner, None, "request {i}: full after its key was admitted");
                }
            }
            Admit::Replayed { ticket, .. } => {
                let w = winner.expect("a replay without an admitted ticket");
                assert!(i >= 20 && same_body(i, w), "request {i}: {answer:?}");
                assert_eq!(ticket, &requests[w].ticket);
            }
            Admit::KeyReused => {
                let w = winner.expect("a reused key without an admitted ticket");
                assert!(i >= 20 && !same_body(i, w), "request {i}: {answer:?}");
            }
            other => panic!("request {i}: {other:?}"),
        }
    }

    let out = q.next(BLOCK, 64).await.unwrap();
    assert_eq!(out.len() as u64, CAP);
    let mut last = 0;
    for delivery in out {
        let got = delivery.request.unwrap();
        let &(i, seq) = admitted
            .iter()
            .find(|&&(i, _)| requests[i].ticket == got.ticket)
            .expect("a delivered entry that was admitted");
        assert_eq!(got, requests[i]);
        assert!(seq > last, "entries out of sequence order");
        last = seq;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_queue_burst_contract() {
    burst_contract(Arc::new(MemoryQueue::new(Duration::from_secs(3600)))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_queue_burst_contract() {
    let redis = RedisServer::start();
    burst_contract(Arc::new(redis_queue(&redis, "b1"))).await;
}

fn redis_queue(redis: &RedisServer, consumer: &str) -> RedisQueue {
    RedisQueue::connect(
        &RedisQueueConfig {
            url: redis.url(),
            prefix: "flashgate".into(),
            queue: "contract".into(),
            consumer: consumer.into(),
            ticket_ttl: Duration::from_secs(3600),
            partition: 0,
            partitions: 1,
        },
        BLOCK,
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_queue_meets_the_contract() {
    let redis = RedisServer::start();
    contract(Arc::new(redis_queue(&redis, "c1"))).await;
}

/// A restarted consumer first re-reads the entries it held; an entry deleted
/// meanwhile comes back as unreadable, to be dead-lettered, never forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_consumer_recovers_its_pending_entries() {
    let redis = RedisServer::start();
    let q = redis_queue(&redis, "worker-a");
    let (a, b) = (request(1), request(2));
    q.admit(a.clone(), None, cap(10)).await.unwrap();
    q.admit(b.clone(), None, cap(10)).await.unwrap();
    let da = next1(&q).await.unwrap();
    let db = next1(&q).await.unwrap();
    drop(q);
    let mut c = redis.conn().await;
    let _: () = redis::cmd("XDEL")
        .arg("flashgate:{contract}:stream")
        .arg(&db.entry_id)
        .query_async(&mut c)
        .await
        .unwrap();

    let q = redis_queue(&redis, "worker-a");
    let again = next1(&q).await.expect("own pending entry");
    assert_eq!(again.entry_id, da.entry_id);
    assert!(!again.fresh, "a recovered entry was counted already");
    assert_eq!(again.request.as_ref().unwrap(), &a);
    let gone = next1(&q).await.expect("the deleted one");
    assert_eq!(gone.entry_id, db.entry_id);
    assert!(gone.request.is_err());
    assert!(next1(&q).await.is_none());
    // Another consumer never sees worker-a's entries.
    let other = redis_queue(&redis, "worker-b");
    assert!(next1(&other).await.is_none());
}
