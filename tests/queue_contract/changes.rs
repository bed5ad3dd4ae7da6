//! The change feed ([`flashgate::backend::ChangeFeed`]): every ticket
//! status change, made by any instance, is reported.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use flashgate::backend::{AttemptStart, Change};
use flashgate::ticket::{StoredResponse, TicketError};

use crate::backends::{over_every_backend, Backend};
use crate::support;

over_every_backend!(reports_every_status_change);

/// A feed followed on one instance reports the changes made on another,
/// after a resync at its start: a cancel, an attempt starting, a completion
/// and a failure — and nothing for a cancelled entry the drain skips.
async fn reports_every_status_change(backend: Backend) {
    let q = backend.q.clone();
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let feed = {
        let (watcher, seen) = (backend.instance("watcher"), seen.clone());
        tokio::spawn(async move {
            let record = move |c: Change<'_>| {
                let entry = match c {
                    Change::Ticket(id) => id.to_string(),
                    Change::Resync => "resync".to_string(),
                };
                seen.lock().unwrap().push(entry);
            };
            watcher.follow_changes(&record).await
        })
    };
    let changes = || seen.lock().unwrap().clone();
    support::eventually(Duration::from_secs(5), "the feed to start", || async {
        changes().contains(&"resync".to_string()).then_some(())
    })
    .await;

    let (a, b, c) = (backend.request(1), backend.request(2), backend.request(3));
    for r in [&a, &b, &c] {
        q.admit(r.clone(), None, backend.cap(10)).await.unwrap();
    }
    assert!(matches!(
        q.cancel(&a.ticket).await.unwrap(),
        flashgate::backend::Cancel::Cancelled(..)
    ));
    // The drain skips a: no change of status, nothing reported.
    let d = backend.next1().await.expect("a");
    assert_eq!(q.start_attempt(&d).await.unwrap(), AttemptStart::Cancelled);
    // b in flight, then completed.
    let d = backend.next1().await.expect("b");
    assert_eq!(q.start_attempt(&d).await.unwrap(), AttemptStart::Counted(1));
    let response = StoredResponse {
        status: 200,
        headers: Bytes::new(),
        body: Bytes::new(),
    };
    q.complete(&d, &response).await.unwrap();
    // c failed without an attempt.
    let d = backend.next1().await.expect("c");
    let error = TicketError {
        code: "sold_out".into(),
        detail: String::new(),
    };
    q.fail(&d, &error, false).await.unwrap();

    // a cancelled; b in flight, then completed; c failed.
    let ids = [&a, &b, &c].map(|r| r.ticket.to_string());
    let want = vec![
        ids[0].clone(),
        ids[1].clone(),
        ids[1].clone(),
        ids[2].clone(),
    ];
    let got = support::eventually(Duration::from_secs(5), "the changes", || async {
        let got: Vec<String> = changes().into_iter().filter(|c| ids.contains(c)).collect();
        (got == want).then_some(got)
    })
    .await;
    assert_eq!(got.len(), 4);
    feed.abort();
}
