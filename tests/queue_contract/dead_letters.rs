//! The dead letters ([`flashgate::backend::DeadLetters`]): what the drain
//! gave up on is kept whole, listed newest first and by code, replayed
//! into line under its own ticket once (two replays deliver once), or
//! discarded; replays keep depth and positions right and spend no stock.

use std::sync::Arc;

use flashgate::backend::dead_letters::bulk;
use flashgate::backend::knobs::KnobsPatch;
use flashgate::backend::{
    Admit, AdmitLimits, BulkAction, DeadLetter, DeadQuery, Discard, EventQuery, Prequeue,
    QueueBackend, QueuedRequest, Replay,
};
use flashgate::ticket::{position, StoredResponse, TicketError, TicketStatus};

use crate::backends::{over_every_backend, Backend};

over_every_backend!(
    a_failure_recorded_twice_is_one_dead_letter,
    replay_puts_a_dead_letter_back_once,
    lists_page_and_filter,
    refusals_and_discards
);

/// Admits request `n`, delivers it, starts `attempts` attempts and fails
/// it into the dead letters with `code`.
async fn dead_letter(backend: &Backend, n: u8, code: &str, attempts: u32) -> QueuedRequest {
    let q = &backend.q;
    let r = backend.request(n);
    let admitted = q.admit(r.clone(), None, backend.cap(100)).await.unwrap();
    assert!(matches!(admitted, Admit::Admitted { .. }), "{admitted:?}");
    let mut d = backend.next1().await.expect("the entry");
    assert_eq!(d.request.as_ref().unwrap().ticket, r.ticket);
    for _ in 0..attempts {
        q.start_attempt(&d).await.unwrap();
        d.fresh = false;
    }
    let err = TicketError {
        code: code.into(),
        detail: format!("gave up on {n}"),
    };
    q.fail(&d, &err, true).await.unwrap();
    r
}

/// Every dead letter in the query's order, page after page.
async fn all(q: &dyn QueueBackend, code: Option<&str>, oldest_first: bool) -> Vec<DeadLetter> {
    let mut query = DeadQuery {
        code: code.map(str::to_string),
        limit: 2,
        oldest_first,
        ..DeadQuery::default()
    };
    let mut out = Vec::new();
    loop {
        let page = q.list_dead(&query).await.unwrap();
        out.extend(page.dead_letters);
        match page.next {
            Some(next) => query.after = Some(next),
            None => return out,
        }
    }
}

/// The one dead letter of a ticket.
async fn of(q: &dyn QueueBackend, r: &QueuedRequest) -> DeadLetter {
    let all = all(q, None, false).await;
    let mine: Vec<_> = all
        .into_iter()
        .filter(|l| l.request.as_ref().map(|x| &x.ticket) == Some(&r.ticket))
        .collect();
    assert_eq!(mine.len(), 1, "{mine:?}");
    mine.into_iter().next().unwrap()
}

/// A failure the drain records again (its first write was applied, but the
/// answer timed out) leaves one dead letter, and the ticket failed once.
async fn a_failure_recorded_twice_is_one_dead_letter(backend: Backend) {
    let q = &backend.q;
    let r = backend.request(1);
    let admitted = q.admit(r.clone(), None, backend.cap(100)).await.unwrap();
    assert!(matches!(admitted, Admit::Admitted { .. }), "{admitted:?}");
    let d = backend.next1().await.expect("the entry");
    q.start_attempt(&d).await.unwrap();
    let err = TicketError {
        code: "upstream_unavailable".into(),
        detail: "gave up".into(),
    };
    q.fail(&d, &err, true).await.unwrap();
    q.fail(&d, &err, true).await.unwrap();
    let letter = of(q.as_ref(), &r).await;
    assert_eq!(letter.code, "upstream_unavailable");
    let (record, _) = q.ticket(&r.ticket).await.unwrap().unwrap();
    assert_eq!(record.status, TicketStatus::Failed);
}

/// The dead letter keeps the request whole; a replay puts it back at the
/// end of the line under its ticket, queued with no attempts, once —
/// two replays at the same time on two instances deliver it once — and
/// the ticket's next end is recorded with its own event.
async fn replay_puts_a_dead_letter_back_once(backend: Backend) {
    let q = backend.q.clone();
    let a = dead_letter(&backend, 1, "upstream_unavailable", 3).await;
    assert_eq!(q.count_dead().await.unwrap(), 1);
    let letter = of(q.as_ref(), &a).await;
    assert_eq!(letter.request.as_ref(), Some(&a), "the request, whole");
    assert_eq!(letter.code, "upstream_unavailable");
    assert_eq!(letter.detail, "gave up on 1");
    assert_eq!(letter.attempts, Some(3));
    assert!(letter.failed_at_ms >= a.admitted_at_ms);
    assert_eq!(
        q.dead_letter(&letter.id).await.unwrap(),
        Some(letter.clone())
    );
    let (record, _) = q.ticket(&a.ticket).await.unwrap().unwrap();
    assert_eq!(record.status, TicketStatus::Failed);
    let before = q.stats().await.unwrap();
    assert_eq!((before.depth, before.admitted), (0, 1));

    // Another ticket waits in line when the replay comes: the replayed one
    // goes behind it.
    let b = backend.request(2);
    q.admit(b.clone(), None, backend.cap(100)).await.unwrap();

    // Two replays of one dead letter at once, on two instances: one wins.
    let other = backend.instance("c2");
    let (x, y) = tokio::join!(
        q.replay_dead(&letter.id, "admin"),
        other.replay_dead(&letter.id, "peer:127.0.0.1:1")
    );
    let mut answers = [x.unwrap(), y.unwrap()];
    answers.sort_by_key(|a| matches!(a, Replay::NotFound));
    assert_eq!(
        answers,
        [
            Replay::Replayed {
                ticket: a.ticket.clone()
            },
            Replay::NotFound
        ]
    );
    assert_eq!(q.count_dead().await.unwrap(), 0);
    assert_eq!(q.dead_letter(&letter.id).await.unwrap(), None);
    assert_eq!(
        q.replay_dead(&letter.id, "admin").await.unwrap(),
        Replay::NotFound,
        "a third finds it gone"
    );

    // Queued again, behind b, with no attempts; depth counts it, the
    // admissions (and so the stock) do not.
    let (record, dispatched) = q.ticket(&a.ticket).await.unwrap().unwrap();
    assert_eq!(
        (record.status, record.attempts, record.error.is_none()),
        (TicketStatus::Queued, 0, true)
    );
    assert_eq!(record.admitted_at_ms, a.admitted_at_ms);
    assert_eq!(position(record.seq, dispatched), 1, "behind b");
    let (b_record, _) = q.ticket(&b.ticket).await.unwrap().unwrap();
    assert_eq!(position(b_record.seq, dispatched), 0);
    let stats = q.stats().await.unwrap();
    assert_eq!((stats.depth, stats.admitted), (2, 2));

    // Delivered once, after b, the same request under the same ticket.
    let db = backend.next1().await.expect("b");
    assert_eq!(db.request.as_ref().unwrap().ticket, b.ticket);
    let mut da = backend.next1().await.expect("a again");
    assert_eq!(da.request.as_ref().unwrap(), &a);
    assert!(da.fresh);
    assert!(backend.next1().await.is_none(), "delivered once");
    assert_eq!(
        q.start_attempt(&da).await.unwrap(),
        flashgate::backend::AttemptStart::Counted(1),
        "a fresh attempt count"
    );
    da.fresh = false;
    let answer = StoredResponse {
        status: 201,
        headers: bytes::Bytes::from_static(b"[]"),
        body: bytes::Bytes::from_static(b"{\"order\":1}"),
    };
    q.complete(&da, &answer).await.unwrap();
    let (record, _) = q.ticket(&a.ticket).await.unwrap().unwrap();
    assert_eq!(record.status, TicketStatus::Completed);
    assert_eq!(record.response.as_ref(), Some(&answer));
    assert_eq!(q.stats().await.unwrap().depth, 1, "b, not yet started");

    // Its life in events: failed, replayed (who, which), completed.
    let page = q
        .events(&EventQuery {
            types: ["failed", "replayed", "completed"]
                .map(String::from)
                .to_vec(),
            limit: 100,
            ..EventQuery::default()
        })
        .await
        .unwrap();
    let mine: Vec<_> = page
        .events
        .iter()
        .filter(|e| e.ticket.as_deref() == Some(a.ticket.as_str()))
        .collect();
    let kinds: Vec<&str> = mine.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["failed", "replayed", "completed"]);
    assert_eq!(mine[1].fields["dead_letter"], letter.id);
    assert!(["admin", "peer:127.0.0.1:1"].contains(&mine[1].fields["actor"].as_str()));

    // The replay spent no stock: a stock of 3 admits a third request.
    let stock = AdmitLimits {
        max_queue: backend.limit(100),
        stock: Some(backend.limit(3)),
        prequeue: Prequeue::Configured,
        fair: Default::default(),
        pow: None,
    };
    let c = backend.request(3);
    let third = q.admit(c, None, stock).await.unwrap();
    assert!(matches!(third, Admit::Admitted { .. }), "{third:?}");
    let fourth = q.admit(backend.request(4), None, stock).await.unwrap();
    assert_eq!(fourth, Admit::SoldOut);
}

/// Newest first by default, oldest first for bulk actions, by code, in
/// pages that end.
async fn lists_page_and_filter(backend: Backend) {
    let q = backend.q.clone();
    let mut requests = Vec::new();
    for (n, code) in [
        (1, "upstream_unavailable"),
        (2, "boom"),
        (3, "upstream_unavailable"),
        (4, "upstream_unavailable"),
        (5, "boom"),
    ] {
        requests.push((dead_letter(&backend, n, code, 1).await, code));
    }
    let tickets = |letters: &[DeadLetter]| -> Vec<String> {
        letters
            .iter()
            .map(|l| l.request.as_ref().unwrap().ticket.to_string())
            .collect()
    };
    let newest: Vec<String> = requests
        .iter()
        .rev()
        .map(|(r, _)| r.ticket.to_string())
        .collect();
    assert_eq!(tickets(&all(q.as_ref(), None, false).await), newest);
    let oldest: Vec<String> = requests.iter().map(|(r, _)| r.ticket.to_string()).collect();
    assert_eq!(tickets(&all(q.as_ref(), None, true).await), oldest);
    let boom: Vec<String> = requests
        .iter()
        .rev()
        .filter(|(_, c)| *c == "boom")
        .map(|(r, _)| r.ticket.to_string())
        .collect();
    let listed = all(q.as_ref(), Some("boom"), false).await;
    assert_eq!(tickets(&listed), boom);
    assert!(listed.iter().all(|l| l.code == "boom"));
    assert!(all(q.as_ref(), Some("nothing_like_it"), false)
        .await
        .is_empty());
    assert_eq!(q.count_dead().await.unwrap(), 5);
    // Unknown and malformed ids are none of its.
    for id in ["1-0", "x", "", "0:1-0", "1-0-0"] {
        assert_eq!(q.dead_letter(id).await.unwrap(), None, "{id}");
        assert_eq!(
            q.replay_dead(id, "t").await.unwrap(),
            Replay::NotFound,
            "{id}"
        );
        assert_eq!(
            q.discard_dead(id, "t").await.unwrap(),
            Discard::NotFound,
            "{id}"
        );
    }

    // Bulk: every `upstream_unavailable`, oldest first, two a call.
    let mut after = None;
    let mut done = 0;
    loop {
        let until = flashgate::ticket::now_ms();
        let out = bulk(
            q.as_ref(),
            "upstream_unavailable",
            BulkAction::Replay,
            2,
            after,
            until,
            "bot",
        )
        .await
        .unwrap();
        assert!(out.refused.is_empty(), "{:?}", out.refused);
        done += out.done;
        after = out.next;
        if after.is_none() {
            break;
        }
    }
    assert_eq!(done, 3);
    // Back in line in their old order.
    let mut order = Vec::new();
    while let Some(d) = backend.next1().await {
        order.push(d.request.unwrap().ticket.to_string());
    }
    let expected: Vec<String> = requests
        .iter()
        .filter(|(_, c)| *c == "upstream_unavailable")
        .map(|(r, _)| r.ticket.to_string())
        .collect();
    assert_eq!(order, expected);
    let out = bulk(
        q.as_ref(),
        "boom",
        BulkAction::Discard,
        100,
        None,
        u64::MAX,
        "bot",
    )
    .await
    .unwrap();
    assert_eq!((out.done, out.next), (2, None));
    assert_eq!(q.count_dead().await.unwrap(), 0);
}

/// A dead letter whose ticket the upstream answered after all, or in a
/// sold-out queue, stays where it is; a discard removes one for good and
/// leaves its ticket failed; a ticket that expired is queued again.
async fn refusals_and_discards(backend: Backend) {
    let q: Arc<dyn QueueBackend> = backend.q.clone();
    // Completed, then reported failed (an instance given up on, whose entry
    // another finished): no dead letter, and the ticket keeps its answer.
    let r = backend.request(1);
    q.admit(r.clone(), None, backend.cap(100)).await.unwrap();
    let mut d = backend.next1().await.unwrap();
    q.start_attempt(&d).await.unwrap();
    d.fresh = false;
    let answer = StoredResponse {
        status: 200,
        headers: bytes::Bytes::from_static(b"[]"),
        body: bytes::Bytes::new(),
    };
    q.complete(&d, &answer).await.unwrap();
    let err = TicketError {
        code: "upstream_unavailable".into(),
        detail: "x".into(),
    };
    q.fail(&d, &err, true).await.unwrap();
    assert_eq!(
        q.count_dead().await.unwrap(),
        0,
        "a finished entry is not dead-lettered"
    );
    let (record, _) = q.ticket(&r.ticket).await.unwrap().unwrap();
    assert_eq!(record.status, TicketStatus::Completed);

    // A dead letter whose ticket completed since (one an older version
    // wrote, say): a replay is refused and leaves it as it was.
    let c = dead_letter(&backend, 3, "upstream_unavailable", 1).await;
    let completed = of(q.as_ref(), &c).await;
    if let Some(server) = backend.redis_server() {
        let mut conn = server.conn().await;
        let _: u64 = redis::cmd("HSET")
            .arg(backend.ticket_key(&c.ticket))
            .arg("st")
            .arg("completed")
            .query_async(&mut conn)
            .await
            .unwrap();
        let Replay::Refused(why) = q.replay_dead(&completed.id, "admin").await.unwrap() else {
            panic!("replayed a completed ticket");
        };
        assert!(why.contains("completed"), "{why}");
        assert_eq!(q.count_dead().await.unwrap(), 1, "left as it was");
    }

    // Sold out: the replay would fail unsent.
    let s = dead_letter(&backend, 2, "upstream_unavailable", 1).await;
    let letter = of(q.as_ref(), &s).await;
    let flip = |on| KnobsPatch {
        sold_out: Some(on),
        ..KnobsPatch::default()
    };
    q.set_knobs(&flip(true), Some("admin")).await.unwrap();
    let Replay::Refused(why) = q.replay_dead(&letter.id, "admin").await.unwrap() else {
        panic!("replayed into a sold-out queue");
    };
    assert!(why.contains("sold out"), "{why}");
    q.set_knobs(&flip(false), Some("admin")).await.unwrap();

    // Its ticket expired meanwhile (Redis): queued again all the same.
    if let Some(server) = backend.redis_server() {
        let mut conn = server.conn().await;
        let key = backend.ticket_key(&s.ticket);
        let removed: u64 = redis::cmd("DEL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(removed, 1, "{key}");
        assert!(q.ticket(&s.ticket).await.unwrap().is_none());
    }
    assert_eq!(
        q.replay_dead(&letter.id, "admin").await.unwrap(),
        Replay::Replayed {
            ticket: s.ticket.clone()
        }
    );
    let (record, _) = q.ticket(&s.ticket).await.unwrap().expect("recreated");
    assert_eq!((record.status, record.attempts), (TicketStatus::Queued, 0));
    assert_eq!(backend.next1().await.unwrap().request.unwrap(), s);

    // Discard: gone for good, the ticket stays as it was, with an event.
    let kept = q.ticket(&c.ticket).await.unwrap().unwrap().0.status;
    assert_eq!(
        q.discard_dead(&completed.id, "ops").await.unwrap(),
        Discard::Discarded {
            ticket: Some(c.ticket.clone())
        }
    );
    assert_eq!(
        q.discard_dead(&completed.id, "ops").await.unwrap(),
        Discard::NotFound
    );
    assert_eq!(q.count_dead().await.unwrap(), 0);
    let (record, _) = q.ticket(&c.ticket).await.unwrap().unwrap();
    assert_eq!(record.status, kept);
    let page = q
        .events(&EventQuery {
            types: vec!["discarded".into()],
            limit: 10,
            ..EventQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(page.events.len(), 1);
    let e = &page.events[0];
    assert_eq!(e.ticket.as_deref(), Some(c.ticket.as_str()));
    assert_eq!(e.fields["dead_letter"], completed.id);
    assert_eq!(e.fields["code"], "upstream_unavailable");
    assert_eq!(e.fields["actor"], "ops");
}
