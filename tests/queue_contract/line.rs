//! The line ([`flashgate::backend::Line`]): admission, delivery in order,
//! attempts and the end of each entry, the pre-queue, batched admission.

use bytes::Bytes;
use flashgate::backend::{
    Admit, AdmitLimits, AttemptStart, IdempotencyClaim, Line, Prequeue, QueuedRequest,
};
use flashgate::ticket::pow::Solved;
use flashgate::ticket::{StoredResponse, TicketError, TicketId, TicketStatus};

use crate::backends::{next1, over_every_backend, redis_queue, Backend, BLOCK};

over_every_backend!(
    admits_and_delivers_in_order,
    replays_a_claim,
    pre_queue,
    burst,
    spends_a_pow_seed_once
);

/// Admission assigns sequence numbers, delivery keeps their order, and each
/// entry ends completed or failed, counted once.
async fn admits_and_delivers_in_order(backend: Backend) {
    let q = backend.q.clone();
    // Empty: zero stats before anything touched the queue (no stream yet),
    // nothing to read after the block.
    assert_eq!(q.stats().await.unwrap().depth, 0);
    assert!(backend.next1().await.is_none());
    q.ping().await.unwrap();

    // Admission assigns sequence numbers in order.
    let (a, b, c) = (backend.request(1), backend.request(2), backend.request(3));
    assert_eq!(
        q.admit(a.clone(), None, backend.cap(10)).await.unwrap(),
        Admit::Admitted {
            seq: 1,
            dispatched: 0
        }
    );
    assert_eq!(
        q.admit(b.clone(), Some(backend.claim("k1", "f1")), backend.cap(10))
            .await
            .unwrap(),
        Admit::Admitted {
            seq: 2,
            dispatched: 0
        }
    );
    // Same key, same fingerprint: the original ticket; another fingerprint: refused.
    assert_eq!(
        q.admit(c.clone(), Some(backend.claim("k1", "f1")), backend.cap(10))
            .await
            .unwrap(),
        Admit::Replayed {
            ticket: b.ticket.clone(),
            seq: 2,
            dispatched: 0
        }
    );
    assert_eq!(
        q.admit(c.clone(), Some(backend.claim("k1", "f2")), backend.cap(10))
            .await
            .unwrap(),
        Admit::KeyReused
    );
    // Capacity counts undispatched tickets.
    assert_eq!(
        q.admit(c.clone(), None, backend.cap(2)).await.unwrap(),
        Admit::QueueFull { depth: 2 }
    );
    assert_eq!(
        q.admit(c.clone(), None, backend.cap(10)).await.unwrap(),
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
    let mut d = backend.next1().await.expect("an entry");
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
    let mut d = backend.next1().await.expect("b");
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

    let d = backend.next1().await.expect("c");
    assert_eq!(d.request.as_ref().unwrap().ticket, c.ticket);
    assert_eq!(q.stats().await.unwrap().depth, 1, "read, not yet started");
    q.start_attempt(&d).await.unwrap();
    assert_eq!(
        q.stats().await.unwrap().depth,
        0,
        "counted as dispatched once started"
    );
    let unknown = backend.ticket();
    assert!(q.ticket(&unknown).await.unwrap().is_none());

    // Batches come in admission order, no more than asked for.
    let batch: Vec<QueuedRequest> = (10..15).map(|n| backend.request(n)).collect();
    for r in &batch {
        q.admit(r.clone(), None, backend.cap(100)).await.unwrap();
    }
    let got = backend.next(3).await;
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
    let rest = backend.next(10).await;
    assert_eq!(rest.len(), 2);
}

/// What a claim names, storing nothing: the admitted ticket for the same
/// request, a refusal for another, nothing for an unknown key.
async fn replays_a_claim(backend: Backend) {
    let q = backend.q.clone();
    let first = backend.request(1);
    let admitted = q
        .admit(
            first.clone(),
            Some(backend.claim("k1", "f1")),
            backend.cap(10),
        )
        .await
        .unwrap();
    assert_eq!(
        admitted,
        Admit::Admitted {
            seq: 1,
            dispatched: 0
        }
    );
    assert_eq!(
        q.replay(&backend.claim("k1", "f1")).await.unwrap(),
        Some(Admit::Replayed {
            ticket: first.ticket.clone(),
            seq: 1,
            dispatched: 0
        })
    );
    assert_eq!(
        q.replay(&backend.claim("k1", "f2")).await.unwrap(),
        Some(Admit::KeyReused)
    );
    assert_eq!(q.replay(&backend.claim("k2", "f1")).await.unwrap(), None);
    assert_eq!(
        q.stats().await.unwrap().admitted,
        1,
        "a replay stores nothing"
    );
    // One dispatched count per partition, in partition order.
    let counts = q.dispatched().await.unwrap();
    assert_eq!(counts.len() as u32, q.partitions());
    assert!(counts.iter().all(|&n| n == 0), "{counts:?}");
}

/// A proof-of-work seed admits once: another request with it is refused,
/// storing nothing; a replay of the admitted request (same claim, same
/// seed) still gets its ticket; another seed admits.
async fn spends_a_pow_seed_once(backend: Backend) {
    let q = backend.q.clone();
    let seed = Solved {
        id: [7; 14],
        ttl: std::time::Duration::from_secs(60),
    };
    let with_seed = AdmitLimits {
        pow: Some(seed),
        ..backend.cap(10)
    };
    let first = backend.request(1);
    let claim = || Some(backend.claim("k1", "f1"));
    let admitted = q.admit(first.clone(), claim(), with_seed).await.unwrap();
    assert!(matches!(admitted, Admit::Admitted { .. }), "{admitted:?}");
    assert_eq!(
        q.admit(backend.request(2), None, with_seed).await.unwrap(),
        Admit::PowReused
    );
    assert_eq!(
        q.admit(
            backend.request(3),
            Some(backend.claim("k2", "f2")),
            with_seed
        )
        .await
        .unwrap(),
        Admit::PowReused
    );
    let replayed = q
        .admit(backend.request(4), claim(), with_seed)
        .await
        .unwrap();
    assert!(
        matches!(&replayed, Admit::Replayed { ticket, .. } if *ticket == first.ticket),
        "{replayed:?}"
    );
    let other = AdmitLimits {
        pow: Some(Solved {
            id: [8; 14],
            ..seed
        }),
        ..backend.cap(10)
    };
    let again = q.admit(backend.request(5), None, other).await.unwrap();
    assert!(matches!(again, Admit::Admitted { .. }), "{again:?}");
    assert_eq!(q.stats().await.unwrap().admitted, 2);
}

/// Pre-queued entries wait outside the line, then take random places in it,
/// ahead of anyone admitted while they are being placed.
async fn pre_queue(backend: Backend) {
    let q = backend.q.clone();
    let pre = AdmitLimits {
        prequeue: Prequeue::Now,
        ..backend.cap(100)
    };
    let early: Vec<QueuedRequest> = (0..12).map(|n| backend.request(n)).collect();
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
        backend.next1().await.is_none(),
        "pre-queued entries are not in line yet"
    );
    assert_eq!(
        q.release_prequeue(backend.limit(5) as usize).await.unwrap(),
        (5, 7)
    );
    // Admitted while the release is under way: behind every pre-queued one.
    let late = backend.request(99);
    assert_eq!(
        q.admit(late.clone(), None, backend.cap(100)).await.unwrap(),
        Admit::Admitted {
            seq: 0,
            dispatched: 0
        }
    );
    assert_eq!(
        q.release_prequeue(backend.limit(100) as usize)
            .await
            .unwrap(),
        (8, 0)
    );
    let got = backend.next(100).await;
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
        q.admit(backend.request(100), None, backend.cap(100))
            .await
            .unwrap(),
        Admit::Admitted { seq: 14, .. }
    ));
}

/// Admissions that arrive together (the Redis backend sends them to Redis in
/// one script call) are decided one after the other, as if sent apart: the
/// capacity is exact, one Idempotency-Key makes at most one ticket, and the
/// entries come out in sequence order, each with its own request.
async fn burst(backend: Backend) {
    let q = backend.q.clone();
    const CAP: u64 = 12;
    let requests: Vec<QueuedRequest> = (0..30).map(|n| backend.request(n)).collect();
    let claims: Vec<Option<IdempotencyClaim>> = (0..30)
        .map(|i| match i {
            20..25 => Some(backend.claim("same-key", "body-1")),
            25..30 => Some(backend.claim("same-key", "body-2")),
            _ => None,
        })
        .collect();
    let answers = futures_util::future::join_all(
        requests
            .iter()
            .zip(&claims)
            .map(|(r, c)| q.admit(r.clone(), c.clone(), backend.cap(CAP))),
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

    let out = backend.next(64).await;
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

/// A restarted consumer first re-reads the entries it held; an entry deleted
/// meanwhile comes back as unreadable, to be dead-lettered, never forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_consumer_recovers_its_pending_entries() {
    let backend = Backend::redis();
    let redis = backend.redis_server().expect("a Redis backend");
    let q = redis_queue(redis, "worker-a", 0, 1);
    let (a, b) = (backend.request(1), backend.request(2));
    q.admit(a.clone(), None, backend.cap(10)).await.unwrap();
    q.admit(b.clone(), None, backend.cap(10)).await.unwrap();
    let da = next1(&q, BLOCK).await.unwrap();
    let db = next1(&q, BLOCK).await.unwrap();
    drop(q);
    let mut c = redis.conn().await;
    let _: () = redis::cmd("XDEL")
        .arg("flashgate:{contract}:stream")
        .arg(&db.entry_id)
        .query_async(&mut c)
        .await
        .unwrap();

    let q = redis_queue(redis, "worker-a", 0, 1);
    let again = next1(&q, BLOCK).await.expect("own pending entry");
    assert_eq!(again.entry_id, da.entry_id);
    assert!(!again.fresh, "a recovered entry was counted already");
    assert_eq!(again.request.as_ref().unwrap(), &a);
    let gone = next1(&q, BLOCK).await.expect("the deleted one");
    assert_eq!(gone.entry_id, db.entry_id);
    assert!(gone.request.is_err());
    assert!(next1(&q, BLOCK).await.is_none());
    // Another consumer never sees worker-a's entries.
    let other = redis_queue(redis, "worker-b", 0, 1);
    assert!(next1(&other, BLOCK).await.is_none());
}

/// Redis forgot its scripts (a restart, a failover, `SCRIPT FLUSH`) between
/// an attempt and its answer: the completion loads its script again and
/// records the answer and the acknowledgement, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_completion_survives_a_script_flush() {
    let backend = Backend::redis();
    let redis = backend.redis_server().expect("a Redis backend");
    let q = &backend.q;
    let a = backend.request(1);
    q.admit(a.clone(), None, backend.cap(10)).await.unwrap();
    let d = backend.next1().await.expect("a");
    q.start_attempt(&d).await.unwrap();
    let mut c = redis.conn().await;
    let flush = redis::cmd("SCRIPT").arg("FLUSH").clone();
    let _: () = flush.query_async(&mut c).await.unwrap();
    let response = StoredResponse {
        status: 201,
        headers: Bytes::new(),
        body: Bytes::from_static(b"{\"order\":1}"),
    };
    q.complete(&d, &response).await.unwrap();
    let (record, _) = q.ticket(&a.ticket).await.unwrap().unwrap();
    assert_eq!(record.status, TicketStatus::Completed);
    assert_eq!(record.response.as_ref(), Some(&response));
    assert_eq!(q.stats().await.unwrap().in_flight, 0);
    // Recorded again (a reply lost after it was applied): nothing changes.
    let _: () = flush.query_async(&mut c).await.unwrap();
    let other = StoredResponse {
        status: 500,
        ..response.clone()
    };
    q.complete(&d, &other).await.unwrap();
    let (record, _) = q.ticket(&a.ticket).await.unwrap().unwrap();
    assert_eq!(record.response.as_ref(), Some(&response));
    assert_eq!(q.stats().await.unwrap().in_flight, 0);
}
