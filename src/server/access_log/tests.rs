use std::time::{Duration, UNIX_EPOCH};

use super::*;

fn entry() -> Entry {
    Entry {
        // 2026-11-30T12:34:56.789Z
        time: UNIX_EPOCH + Duration::from_millis(1_796_042_096_789),
        request_id: HeaderValue::from_static("4bf92f3577b34da6a3ce929d0e0e4736"),
        listener: "public",
        peer: "192.0.2.7:51234".parse().unwrap(),
        method: Method::POST,
        uri: "/checkout?sku=42".parse().unwrap(),
        version: Version::HTTP_11,
        referer: None,
        user_agent: Some(HeaderValue::from_static("curl/8.5 \"quoted\"")),
        status: 202,
        bytes_in: 17,
        bytes_out: 180,
        duration: Duration::from_micros(1234),
        note: Note {
            route: Some("admission"),
            queue: Some("checkout".into()),
            ticket: Some("T".repeat(48)),
            client: Some("ip:192.0.2.7".into()),
            code: Some("admitted"),
            upstream_status: None,
            attempt: None,
        },
    }
}

#[test]
fn json_lines_carry_every_field() {
    let mut out = Vec::new();
    json(&mut out, &entry());
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["time"], "2026-11-30T12:34:56.789Z");
    assert_eq!(v["request_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(v["listener"], "public");
    assert_eq!(v["peer"], "192.0.2.7:51234");
    assert_eq!(v["client"], "ip:192.0.2.7");
    assert_eq!(v["method"], "POST");
    assert_eq!(v["path"], "/checkout?sku=42");
    assert_eq!(v["protocol"], "HTTP/1.1");
    assert_eq!(v["status"], 202);
    assert_eq!(v["bytes_in"], 17);
    assert_eq!(v["bytes_out"], 180);
    assert_eq!(v["duration_ms"], 1.234);
    assert_eq!(v["route"], "admission");
    assert_eq!(v["queue"], "checkout");
    assert_eq!(v["ticket"], "T".repeat(48));
    assert_eq!(v["code"], "admitted");
    assert_eq!(v["upstream_status"], serde_json::Value::Null);
    assert_eq!(v["attempt"], serde_json::Value::Null);
    assert_eq!(v["user_agent"], "curl/8.5 \"quoted\"");
    assert_eq!(v["referer"], serde_json::Value::Null);
    assert_eq!(v.as_object().unwrap().len(), 20);
    assert!(!out.contains(&b'\n'));
}

#[test]
fn combined_lines_are_nginxs_with_the_request_id() {
    let mut out = Vec::new();
    combined(&mut out, &entry());
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "192.0.2.7 - - [30/Nov/2026:12:34:56 +0000] \"POST /checkout?sku=42 HTTP/1.1\" 202 180 \
         \"-\" \"curl/8.5 \\x22quoted\\x22\" \"4bf92f3577b34da6a3ce929d0e0e4736\""
    );
}

#[test]
fn combined_escapes_what_would_break_the_line() {
    let mut out = Vec::new();
    escape(&mut out, b"a\"b\\c\x01d\xffe\n");
    assert_eq!(out, b"a\\x22b\\x5Cc\\x01d\\xFFe\\x0A");
}

#[test]
fn clf_times_are_utc_with_month_names() {
    let mut out = Vec::new();
    clf_time(&mut out, UNIX_EPOCH + Duration::from_secs(951_782_400));
    assert_eq!(out, b"29/Feb/2000:00:00:00 +0000");
}

#[test]
fn a_writer_that_falls_behind_drops_and_counts_instead_of_waiting() {
    // A sink that never takes a byte: the writer blocks on its first line
    // (the buffer is bypassed for lines this long), the channel fills.
    struct Stuck(std::sync::mpsc::Receiver<()>);
    impl Write for Stuck {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            let _ = self.0.recv();
            Err(io::Error::other("closed"))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let (release, stuck) = mpsc::channel();
    let (lines, rx) = mpsc::sync_channel(2);
    let dropped = IntCounter::new("dropped", "lines dropped").unwrap();
    let writer = Writer {
        target: Target::Stderr,
        format: AccessLogFormat::Json,
        out: BufWriter::with_capacity(1, Box::new(Stuck(stuck))),
        line: Vec::new(),
        reopen: Arc::default(),
        dropped: dropped.clone(),
        failing: false,
    };
    let thread = std::thread::spawn(move || writer.run(rx));
    let log = AccessLog {
        lines,
        reopen: Arc::default(),
        dropped: dropped.clone(),
    };
    for _ in 0..10 {
        log.log(Box::new(entry()));
    }
    // At most one line in the writer's hands and two in the channel.
    assert!(dropped.get() >= 7, "dropped {}", dropped.get());
    drop(release);
    drop(log);
    thread.join().unwrap();
}
