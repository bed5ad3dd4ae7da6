use super::*;
use crate::http::headers;

#[test]
fn ids_are_url_safe_unique_and_verify_for_their_queue_only() {
    let secret = TicketSecret::random();
    let tag = QueueTag::new(&secret, "checkout");
    let a = TicketId::generate(tag);
    let b = TicketId::generate(tag);
    assert_ne!(a, b);
    assert_eq!(a.as_str().len(), ENCODED_LEN);
    assert!(a
        .as_str()
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
    let (parsed, claim) = TicketId::parse(a.as_str()).unwrap();
    assert_eq!(parsed, a);
    assert!(tag.verify(&claim));
    assert!(QueueTag::new(&secret, "checkout").verify(&claim));
    assert!(!QueueTag::new(&secret, "other").verify(&claim));
    assert!(!QueueTag::new(&TicketSecret::random(), "checkout").verify(&claim));
    assert!(!QueueTag::of("checkout").verify(&claim));
}

#[test]
fn malformed_ids_do_not_parse() {
    let good = TicketId::generate(QueueTag::of("q"));
    let s = good.as_str();
    assert!(TicketId::parse(&s[1..]).is_none());
    assert!(TicketId::parse(&format!("{s}A")).is_none());
    assert!(TicketId::parse(&s.replace(|_| true, "+")).is_none());
    assert!(TicketId::parse("").is_none());
    assert!(TicketId::parse("../../../../etc/passwd?xxxxxx").is_none());
    assert!(TicketId::parse(&format!("{}==", &s[..46])).is_none());
}

#[test]
fn every_altered_id_fails_verification() {
    let tag = QueueTag::new(
        &TicketSecret::new(*b"0123456789abcdef0123456789abcdef"),
        "q",
    );
    let id = TicketId::generate(tag);
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    for i in 0..ENCODED_LEN {
        let mut bytes = id.as_str().as_bytes().to_vec();
        let at = alphabet.iter().position(|&c| c == bytes[i]).unwrap();
        bytes[i] = alphabet[(at + 1) % alphabet.len()];
        let forged = String::from_utf8(bytes).unwrap();
        let verified = TicketId::parse(&forged).is_some_and(|(_, c)| tag.verify(&c));
        assert!(!verified, "a change at {i} still verifies");
    }
}

#[test]
fn secrets_never_print() {
    let secret = TicketSecret::new("hunter2hunter2hunter2hunter2hunter2");
    assert!(!format!("{secret:?}").contains("hunter2"));
    let tag = QueueTag::new(&secret, "q");
    assert!(format!("{tag:?}").contains("redacted"));
    assert_eq!(TicketSecret::new([0xab, 0x01]).to_hex(), "ab01");
}

#[test]
fn ids_spread_over_partitions_and_can_be_drawn_into_one() {
    let tag = QueueTag::of("q");
    let mut counts = [0u32; 4];
    for _ in 0..4000 {
        counts[TicketId::generate(tag).partition(4) as usize] += 1;
    }
    assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
    for p in 0..4 {
        let id = TicketId::generate_in(tag, p, 4);
        assert_eq!(id.partition(4), p);
        assert_eq!(id.partition(1), 0);
        assert!(TicketId::parse(id.as_str()).is_some());
    }
}

#[test]
fn position_counts_tickets_ahead() {
    assert_eq!(position(1, 0), 0);
    assert_eq!(position(43, 0), 42);
    assert_eq!(position(43, 40), 2);
    assert_eq!(position(5, 9), 0);
    assert_eq!(eta_seconds(42, 100.0), 0.42);
    assert_eq!(retry_after(0.0), 1);
    assert_eq!(retry_after(2.1), 3);
}

#[test]
fn binary_bodies_are_base64() {
    let r = StoredResponse {
        status: 201,
        headers: headers::encode_pairs([("content-type", b"application/json".as_slice())]),
        body: Bytes::from_static(&[0xff, 0x00]),
    };
    let v = ResponseView::new(&r);
    assert_eq!(v.body_encoding, "base64");
    assert_eq!(v.body, "/wA=");
    assert_eq!(v.headers["content-type"], "application/json");
}

#[test]
fn the_admission_json_is_what_serde_json_writes() {
    let id = TicketId::generate(QueueTag::of("q"));
    let url = format!("/tickets/{id}");
    let statuses = [
        TicketStatus::Queued,
        TicketStatus::InFlight,
        TicketStatus::Expired,
    ];
    let queues = ["checkout", "", "dé\"j\\à\u{1}\u{7f} vu", "a/b?c=d"];
    let positions = [None, Some(0), Some(u64::MAX)];
    let etas = [
        None,
        Some(None),
        Some(Some(0.0)),
        Some(Some(1.5)),
        Some(Some(12345.678)),
        Some(Some(1e-7)),
        Some(Some(f64::NAN)),
    ];
    let mut checked = 0;
    for status in statuses {
        for queue in queues {
            for position in positions {
                for eta_seconds in etas {
                    for paused in [false, true] {
                        for (ticket, poll_url) in [(id.as_str(), url.as_str()), ("t\"1", "/x\n")] {
                            let view = AdmissionView {
                                ticket,
                                queue,
                                status,
                                position,
                                eta_seconds,
                                paused,
                                poll_url,
                            };
                            let expected = serde_json::to_vec(&view).unwrap();
                            assert_eq!(
                                String::from_utf8(view.to_json()).unwrap(),
                                String::from_utf8(expected).unwrap()
                            );
                            checked += 1;
                        }
                    }
                }
            }
        }
    }
    assert_eq!(checked, 3 * 4 * 3 * 7 * 2 * 2);
}

#[test]
fn retry_after_values_are_the_numbers() {
    for secs in [0, 1, 9, 10, 29, 30, 31, 3600, u64::MAX] {
        assert_eq!(retry_after_value(secs), http::HeaderValue::from(secs));
    }
}
