//! The ticket store ([`flashgate::backend::TicketStore`]): each ticket's
//! record through its life, and cancelling a ticket while it waits.

use bytes::Bytes;
use flashgate::backend::{AttemptStart, Cancel};
use flashgate::ticket::{StoredResponse, TicketError, TicketStatus};

use crate::backends::{over_every_backend, Backend};

over_every_backend!(records, cancel);

/// A record for every status a ticket passes through, with the queue's
/// dispatched count; nothing for a ticket never admitted.
async fn records(backend: Backend) {
    let q = backend.q.clone();
    let (done, failed) = (backend.request(1), backend.request(2));
    for r in [&done, &failed] {
        q.admit(r.clone(), None, backend.cap(10)).await.unwrap();
    }
    let (record, dispatched) = q.ticket(&done.ticket).await.unwrap().unwrap();
    assert_eq!(
        (record.status, record.seq, record.attempts, dispatched),
        (TicketStatus::Queued, 1, 0, 0)
    );
    assert_eq!(record.admitted_at_ms, done.admitted_at_ms);
    assert!(record.completed_at_ms.is_none() && record.response.is_none());

    let mut d = backend.next1().await.expect("the first");
    assert_eq!(q.start_attempt(&d).await.unwrap(), AttemptStart::Counted(1));
    d.fresh = false;
    let (record, dispatched) = q.ticket(&done.ticket).await.unwrap().unwrap();
    assert_eq!(
        (record.status, record.attempts, dispatched),
        (TicketStatus::InFlight, 1, 1)
    );
    let response = StoredResponse {
        status: 409,
        headers: Bytes::from_static(b"content-type: text/plain\r\n"),
        body: Bytes::from_static(b"taken"),
    };
    q.complete(&d, &response).await.unwrap();
    let (record, _) = q.ticket(&done.ticket).await.unwrap().unwrap();
    assert_eq!(record.status, TicketStatus::Completed);
    assert_eq!(record.response, Some(response));
    assert!(record.completed_at_ms.is_some() && record.error.is_none());

    let d = backend.next1().await.expect("the second");
    let error = TicketError {
        code: "sold_out".into(),
        detail: "gone".into(),
    };
    q.fail(&d, &error, false).await.unwrap();
    let (record, dispatched) = q.ticket(&failed.ticket).await.unwrap().unwrap();
    assert_eq!(
        (record.status, record.attempts, dispatched),
        (TicketStatus::Failed, 0, 2),
        "failed before its first attempt: dispatched, never attempted"
    );
    assert_eq!(record.error, Some(error));
    assert!(record.response.is_none());

    assert!(q.ticket(&backend.ticket()).await.unwrap().is_none());
}

/// A queued ticket can be cancelled and is then skipped by the drain (never
/// started); an in-flight or finished one cannot.
async fn cancel(backend: Backend) {
    let q = backend.q.clone();
    let (a, b) = (backend.request(1), backend.request(2));
    for r in [&a, &b] {
        q.admit(r.clone(), None, backend.cap(10)).await.unwrap();
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
    let d = backend.next1().await.expect("a");
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
    let d = backend.next1().await.expect("b");
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
    let unknown = backend.ticket();
    assert_eq!(q.cancel(&unknown).await.unwrap(), Cancel::NotFound);
    assert!(
        backend.next1().await.is_none(),
        "the cancelled entry is gone"
    );
}
