use super::*;
use bytes::Bytes;

#[test]
fn long_poll_waits_are_bounded_numbers() {
    assert_eq!(long_poll_wait(None).unwrap(), None);
    assert_eq!(long_poll_wait(Some("x=1")).unwrap(), None);
    assert_eq!(
        long_poll_wait(Some("wait=2.5")).unwrap(),
        Some(Duration::from_millis(2500))
    );
    assert_eq!(
        long_poll_wait(Some("a=b&wait=60")).unwrap(),
        Some(Duration::from_secs(60))
    );
    for bad in [
        "wait=61",
        "wait=-1",
        "wait=",
        "wait=soon",
        "wait=NaN",
        "wait=inf",
    ] {
        assert!(long_poll_wait(Some(bad)).is_err(), "{bad}");
    }
}

#[test]
fn event_streams_are_recognised_among_other_types() {
    let mut h = HeaderMap::new();
    assert!(!accepts_event_stream(&h));
    h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
    assert!(!accepts_event_stream(&h));
    h.insert(
        header::ACCEPT,
        HeaderValue::from_static("application/json, Text/Event-Stream;q=0.9"),
    );
    assert!(accepts_event_stream(&h));
}

#[test]
fn stored_answers_replay_without_hop_by_hop_headers() {
    let id = TicketId::generate(crate::ticket::QueueTag::of("q"));
    let stored = StoredResponse {
        status: 201,
        headers: crate::http::headers::encode_pairs([
            ("content-type", &b"application/json"[..]),
            ("content-length", b"999"),
            ("connection", b"x-private"),
            ("x-private", b"secret"),
            ("x-order", b"42"),
        ]),
        body: Bytes::from_static(b"{\"order\":42}"),
    };
    let resp = upstream_answer(&id, &stored);
    assert_eq!(resp.status(), StatusCode::CREATED);
    let h = resp.headers();
    assert_eq!(h["content-type"], "application/json");
    assert_eq!(h["x-order"], "42");
    assert_eq!(h["x-flashgate-ticket"], id.as_str());
    assert!(h.get("content-length").is_none());
    assert!(h.get("x-private").is_none());
    assert!(h.get("connection").is_none());
}

#[test]
fn stored_answers_do_not_vary_on_accept_encoding() {
    let id = TicketId::generate(crate::ticket::QueueTag::of("q"));
    let answer = |vary: &[&'static str]| {
        let stored = StoredResponse {
            status: 200,
            headers: crate::http::headers::encode_pairs(
                vary.iter().map(|v| ("vary", v.as_bytes())),
            ),
            body: Bytes::from_static(b"ok"),
        };
        let resp = upstream_answer(&id, &stored);
        let vary: Vec<_> = resp.headers().get_all("vary").iter().cloned().collect();
        vary
    };
    assert!(answer(&["Accept-Encoding"]).is_empty());
    assert_eq!(
        answer(&["Origin, accept-encoding", "Cookie"]),
        ["Origin, Cookie"]
    );
    assert_eq!(answer(&["Origin", "Cookie"]), ["Origin", "Cookie"]);
    assert!(answer(&[]).is_empty());
}
