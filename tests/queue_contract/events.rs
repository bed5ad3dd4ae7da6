//! The event log ([`flashgate::backend::EventLog`]): every change in a
//! queue's life is one event, with its fields, written with the change;
//! none for what did not happen; read back by cursor, type and time.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use flashgate::backend::knobs::{KnobsPatch, RateStep};
use flashgate::backend::{
    read_events, Admit, AdmitLimits, AttemptStart, Event, EventQuery, Prequeue, QueueBackend,
    QueuedRequest,
};
use flashgate::ticket::{StoredResponse, TicketError};

use crate::backends::{next1, over_every_backend, Backend};
use crate::support::eventually;

over_every_backend!(
    every_change_is_one_event,
    events_off_writes_none,
    retention_trims_old_events
);

/// Every event from the oldest kept, a page of `limit` at a time.
async fn all(q: &dyn QueueBackend, types: &[&str], limit: usize) -> Vec<Event> {
    let mut out = Vec::new();
    let mut query = EventQuery {
        types: types.iter().map(|t| t.to_string()).collect(),
        limit,
        ..EventQuery::default()
    };
    loop {
        let page = q.events(&query).await.unwrap();
        if page.events.is_empty() {
            return out;
        }
        out.extend(page.events);
        query.after = Some(page.next);
    }
}

fn of<'a>(events: &'a [Event], kind: &str) -> Vec<&'a Event> {
    events.iter().filter(|e| e.kind == kind).collect()
}

fn fields(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn changes(e: &Event) -> serde_json::Value {
    serde_json::from_str(&e.fields["changes"]).unwrap()
}

/// A whole sale in small: each change writes its one event, repeats and
/// refusals write none.
async fn every_change_is_one_event(backend: Backend) {
    let q = backend.q.clone();
    let stock = AdmitLimits {
        max_queue: backend.limit(10),
        stock: Some(backend.limit(3)),
        prequeue: Prequeue::Configured,
        fair: Default::default(),
        pow: None,
    };
    let (a, b, c) = (backend.request(1), backend.request(2), backend.request(3));
    let claim = || Some(backend.claim("k1", "f1"));
    assert!(matches!(
        q.admit(a.clone(), claim(), stock).await.unwrap(),
        Admit::Admitted { .. }
    ));
    // A replay and a refusal change nothing.
    assert!(matches!(
        q.admit(backend.request(9), claim(), stock).await.unwrap(),
        Admit::Replayed { .. }
    ));
    q.admit(b.clone(), None, stock).await.unwrap();
    // The last unit: admitted, and sold out by stock.
    q.admit(c.clone(), None, stock).await.unwrap();
    assert_eq!(
        q.admit(backend.request(4), None, stock).await.unwrap(),
        Admit::SoldOut
    );
    // Cancelled once, however often asked.
    q.cancel(&c.ticket).await.unwrap();
    q.cancel(&c.ticket).await.unwrap();

    let got = backend.next(3).await;
    assert_eq!(got.len(), 3);
    let (mut da, mut db, dc) = (got[0].clone(), got[1].clone(), got[2].clone());
    // Two attempts on `a`, then its end, twice (a retried completion).
    assert_eq!(
        q.start_attempt(&da).await.unwrap(),
        AttemptStart::Counted(1)
    );
    da.fresh = false;
    assert_eq!(
        q.start_attempt(&da).await.unwrap(),
        AttemptStart::Counted(2)
    );
    let response = StoredResponse {
        status: 201,
        headers: Bytes::from_static(b"content-type: application/json\r\n"),
        body: Bytes::from_static(b"{}"),
    };
    q.complete(&da, &response).await.unwrap();
    q.complete(&da, &response).await.unwrap();
    // `b` fails, twice; a failure after completion does not count either.
    assert_eq!(
        q.start_attempt(&db).await.unwrap(),
        AttemptStart::Counted(1)
    );
    db.fresh = false;
    let err = TicketError {
        code: "upstream_unavailable".into(),
        detail: "503 five times".into(),
    };
    q.fail(&db, &err, true).await.unwrap();
    q.fail(&db, &err, false).await.unwrap();
    q.fail(&da, &err, false).await.unwrap();
    // `c` was cancelled: skipped, no event of its own.
    assert_eq!(q.start_attempt(&dc).await.unwrap(), AttemptStart::Cancelled);
    // A ticket that expired in line: its first attempt says so, once.
    let mut gone = da.clone();
    let d = QueuedRequest {
        ticket: backend.ticket(),
        ..backend.request(5)
    };
    gone.request = Ok(d.clone());
    gone.fresh = true;
    assert_eq!(
        q.start_attempt(&gone).await.unwrap(),
        AttemptStart::Untracked
    );
    gone.fresh = false;
    assert_eq!(
        q.start_attempt(&gone).await.unwrap(),
        AttemptStart::Untracked
    );

    // Knobs: who changed what; an unchanged value is no change.
    let rate = KnobsPatch {
        drain_rate: Some(Some(40.0)),
        ..KnobsPatch::default()
    };
    q.set_knobs(&rate, Some("admin")).await.unwrap();
    q.set_knobs(&rate, Some("admin")).await.unwrap();
    let sold_out = KnobsPatch {
        sold_out: Some(true),
        ..KnobsPatch::default()
    };
    q.set_knobs(&sold_out, Some("peer:127.0.0.1:5000"))
        .await
        .unwrap();
    let step = RateStep {
        down: true,
        floor: 1.0,
        ceiling: 100.0,
        configured: 100.0,
    };
    q.adapt_rate(&step).await.unwrap().expect("a step");

    let events = all(q.as_ref(), &[], 100).await;
    for e in &events {
        assert_eq!((e.v.as_str(), e.queue.as_str()), ("1", "contract"), "{e:?}");
        assert!(e.at > 0, "{e:?}");
    }
    let tickets = |kind| {
        of(&events, kind)
            .iter()
            .map(|e| e.ticket.clone().unwrap())
            .collect::<Vec<_>>()
    };
    let id = |r: &QueuedRequest| r.ticket.as_str().to_string();
    let mut admitted = tickets("admitted");
    admitted.sort();
    let mut abc = vec![id(&a), id(&b), id(&c)];
    abc.sort();
    assert_eq!(admitted, abc);
    let first = of(&events, "admitted");
    assert!(first.iter().all(|e| e.fields.is_empty()));
    assert_eq!(
        first.iter().find(|e| e.ticket == Some(id(&a))).unwrap().at,
        a.admitted_at_ms
    );
    let dispatched: Vec<(String, String)> = of(&events, "dispatched")
        .iter()
        .map(|e| (e.ticket.clone().unwrap(), e.fields["attempt"].clone()))
        .collect();
    assert_eq!(dispatched.len(), 3, "{dispatched:?}");
    for want in [(id(&a), "1"), (id(&a), "2"), (id(&b), "1")] {
        assert!(
            dispatched.contains(&(want.0.clone(), want.1.to_string())),
            "{want:?} in {dispatched:?}"
        );
    }
    assert_eq!(tickets("completed"), [id(&a)]);
    assert_eq!(
        of(&events, "completed")[0].fields,
        fields(&[("status", "201")])
    );
    assert_eq!(tickets("failed"), [id(&b)]);
    assert_eq!(
        of(&events, "failed")[0].fields,
        fields(&[
            ("code", "upstream_unavailable"),
            ("detail", "503 five times")
        ])
    );
    assert_eq!(tickets("cancelled"), [id(&c)]);
    assert_eq!(tickets("expired"), [id(&d)]);
    let mut reasons: Vec<&str> = of(&events, "sold_out")
        .iter()
        .map(|e| {
            assert_eq!(e.ticket, None);
            e.fields["reason"].as_str()
        })
        .collect();
    reasons.sort();
    assert_eq!(reasons, ["operator", "stock"]);
    let knobs = of(&events, "knobs_changed");
    assert_eq!(knobs.len(), 3, "{knobs:?}");
    let by = |actor: &str| *knobs.iter().find(|e| e.fields["actor"] == actor).unwrap();
    assert_eq!(
        changes(by("admin")),
        serde_json::json!({"drain_rate": {"old": null, "new": 40}})
    );
    assert_eq!(
        changes(by("peer:127.0.0.1:5000")),
        serde_json::json!({"sold_out": {"old": false, "new": true}})
    );
    assert_eq!(
        changes(by("adaptive")),
        serde_json::json!({"drain_rate": {"old": 40, "new": 28}})
    );
    assert_eq!(events.len(), 3 + 3 + 1 + 1 + 1 + 1 + 2 + 3);

    // Pages of two, a type filter and a time give the same events.
    assert_eq!(all(q.as_ref(), &[], 2).await, events);
    let done = all(q.as_ref(), &["completed", "failed"], 1).await;
    assert_eq!(done.len(), 2);
    let future = EventQuery {
        since_ms: Some(u64::MAX / 2),
        limit: 10,
        ..EventQuery::default()
    };
    assert!(q.events(&future).await.unwrap().events.is_empty());

    // A waiting read is answered by the next event of its type.
    let end = q
        .events(&EventQuery {
            types: vec!["expired".into()],
            limit: 10,
            ..EventQuery::default()
        })
        .await
        .unwrap();
    let next = EventQuery {
        after: Some(end.next.clone()),
        types: vec!["knobs_changed".into()],
        limit: 10,
        ..EventQuery::default()
    };
    let writer = q.clone();
    let late = tokio::spawn(async move {
        let pause = KnobsPatch {
            paused: Some(true),
            ..KnobsPatch::default()
        };
        writer.set_knobs(&pause, Some("late")).await.unwrap();
    });
    let page = read_events(q.as_ref(), next, Duration::from_secs(20))
        .await
        .unwrap();
    late.await.unwrap();
    assert_eq!(page.events.len(), 1, "{page:?}");
    assert_eq!(page.events[0].fields["actor"], "late");
}

/// A queue with events off writes none, whatever happens to it.
async fn events_off_writes_none(backend: Backend) {
    let off = backend.instance_with_events("quiet", None);
    let (e, f) = (backend.request(1), backend.request(2));
    off.admit(e.clone(), None, backend.cap(10)).await.unwrap();
    off.admit(f.clone(), None, backend.cap(10)).await.unwrap();
    off.cancel(&f.ticket).await.unwrap();
    let d = next1(off.as_ref(), Duration::from_secs(2))
        .await
        .expect("an entry");
    assert_eq!(
        off.start_attempt(&d).await.unwrap(),
        AttemptStart::Counted(1)
    );
    let response = StoredResponse {
        status: 200,
        headers: Bytes::new(),
        body: Bytes::new(),
    };
    off.complete(&d, &response).await.unwrap();
    let patch = KnobsPatch {
        paused: Some(true),
        sold_out: Some(true),
        ..KnobsPatch::default()
    };
    off.set_knobs(&patch, Some("admin")).await.unwrap();
    for q in [&off, &backend.q] {
        assert_eq!(all(q.as_ref(), &[], 100).await, []);
    }
}

/// Events older than the retention go as new ones are written; younger
/// ones stay. (How long the writes take is the machine's business: the
/// test only holds the events written within the retention to be there.)
async fn retention_trims_old_events(backend: Backend) {
    let retention = Duration::from_secs(1);
    let q = backend.instance_with_events("brief", Some(retention));
    let limits = backend.cap(10_000);
    // Redis trims whole stream nodes (`MINID ~`), 100 entries each.
    let mut written = Vec::new();
    for n in 0..250u32 {
        let request = backend.request(n as u8);
        let ticket = request.ticket.to_string();
        let before = flashgate::ticket::now_ms();
        q.admit(request, None, limits).await.unwrap();
        written.push((ticket, before));
    }
    // Every write so far trimmed below its own time minus the retention,
    // so whatever was written after this point is still there.
    let kept_from = flashgate::ticket::now_ms() - retention.as_millis() as u64;
    let first = all(q.as_ref(), &[], 1000).await;
    let seen: Vec<&str> = first.iter().filter_map(|e| e.ticket.as_deref()).collect();
    let young: Vec<&String> = (written.iter())
        .filter(|(_, before)| *before > kept_from)
        .map(|(t, _)| t)
        .collect();
    for t in young {
        assert!(seen.contains(&t.as_str()), "{t} was trimmed too early");
    }
    eventually(Duration::from_secs(30), "old events trimmed", || async {
        q.admit(backend.request(0), None, limits).await.unwrap();
        let now = all(q.as_ref(), &[], 1000).await;
        (now.first().map(|e| &e.id) != Some(&first[0].id)).then_some(())
    })
    .await;
}
