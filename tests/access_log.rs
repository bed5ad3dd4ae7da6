//! The access log, request ids and trace context, as an operator and the
//! order service see them: one line per request on every listener, refusals
//! included, with every field right; `combined` lines as nginx writes them;
//! a file reopened on SIGUSR1; a sink that does not drain costs lines (and
//! counts them), never answers; and the `X-Request-Id` and `traceparent`
//! the client's side sent reach the upstream, queued or passed through.

mod support;

use std::cell::Cell;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use support::raw::{self, read_to_close};
use support::*;

const WAIT: Duration = Duration::from_secs(20);

/// Every field of a JSON line.
const FIELDS: [&str; 20] = [
    "time",
    "request_id",
    "listener",
    "peer",
    "client",
    "method",
    "path",
    "protocol",
    "status",
    "bytes_in",
    "bytes_out",
    "duration_ms",
    "route",
    "queue",
    "ticket",
    "code",
    "upstream_status",
    "attempt",
    "user_agent",
    "referer",
];

fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// The file's lines once it has `n`.
async fn until_lines(path: &Path, n: usize) -> Vec<String> {
    eventually(
        WAIT,
        &format!("{n} lines in {}", path.display()),
        || async {
            let lines = read_lines(path);
            (lines.len() >= n).then_some(lines)
        },
    )
    .await
}

fn toml_path(path: &Path) -> String {
    format!("{:?}", path.display().to_string())
}

/// What the test sent and what the line must say about it.
struct Expect {
    id: String,
    want: Value,
}

/// Checks the answer's `X-Request-Id` (and a problem's `request_id`) and
/// notes what its line must say: the answer's status and body length,
/// and `want`.
fn expect(lines: &mut Vec<Expect>, answer: &Answer, mut want: Value) {
    let id = answer.header("x-request-id").to_string();
    assert!(!id.is_empty(), "no X-Request-Id on {}", answer.text());
    if answer.header("content-type") == "application/problem+json" {
        assert_eq!(
            answer.json()["request_id"],
            id.as_str(),
            "{}",
            answer.text()
        );
        let code = answer.json()["code"].clone();
        want["code"] = code;
    }
    want["status"] = answer.status.as_u16().into();
    want["bytes_out"] = answer.body.len().into();
    lines.push(Expect { id, want });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_one_line_with_every_field_right() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let upstream = MockUpstream::start().await;
    let toml = format!(
        "access_log = {}\npassthrough = true\nmax_body = \"1KiB\"\ndrain_rate = 1000\n\
         admin_token = \"s3cret\"\n",
        toml_path(&log)
    );
    let gw = Gateway::builder()
        .toml(&toml)
        .upstream(&upstream)
        .start()
        .await;
    let c = gw.client();
    let mut sent = Vec::new();
    let null = Value::Null;

    // An admission, its replay, and the key reused with another body.
    let who = [
        ("idempotency-key", "k1"),
        ("user-agent", "shop-app/1.0 \"beta\""),
        ("referer", "https://shop.example/cart"),
    ];
    let admitted = c.admit_with(&who, r#"{"sku":1}"#).await;
    assert_eq!(admitted.status, 202);
    let ticket = admitted.ticket();
    let admission = json!({"listener": "public", "route": "admission", "queue": "checkout",
        "client": "ip:127.0.0.1", "method": "POST", "path": "/checkout", "bytes_in": 9,
        "upstream_status": null, "attempt": null});
    let mut want = admission.clone();
    want["ticket"] = ticket.clone().into();
    want["code"] = "admitted".into();
    want["user_agent"] = "shop-app/1.0 \"beta\"".into();
    want["referer"] = "https://shop.example/cart".into();
    expect(&mut sent, &admitted, want.clone());
    let replay = c.admit_with(&who, r#"{"sku":1}"#).await;
    assert_eq!(replay.status, 200);
    want["code"] = "replayed".into();
    expect(&mut sent, &replay, want);
    let reused = c.admit_with(&who, r#"{"sku":2}"#).await;
    assert_eq!(reused.status, 422);
    expect(&mut sent, &reused, admission.clone());

    // Refusals: too large (before the body is read), an ambiguous path, a
    // method the route does not take, an unknown ticket.
    let big = c.admit("x".repeat(2000)).await;
    assert_eq!(big.status, 413);
    let mut want = admission.clone();
    want["bytes_in"] = null.clone();
    want["client"] = null.clone();
    expect(&mut sent, &big, want);
    let bad = raw::request(gw.public_addr, "GET", "/tickets/a%2Fb", &[], "").await;
    assert_eq!(bad.status, 400);
    let bad_id = bad.header("x-request-id").unwrap().to_string();
    assert_eq!(bad.json()["request_id"], bad_id.as_str());
    sent.push(Expect {
        id: bad_id,
        want: json!({"route": "refused", "code": "bad_request", "status": 400,
            "path": "/tickets/a%2Fb", "queue": null, "ticket": null, "client": null}),
    });
    let put = c.send("PUT", "/checkout", &[], "").await;
    assert_eq!(put.status, 405);
    expect(
        &mut sent,
        &put,
        json!({"route": "admission", "queue": "checkout"}),
    );
    let unknown = c.get("/tickets/nope").await;
    assert_eq!(unknown.status, 404);
    expect(
        &mut sent,
        &unknown,
        json!({"route": "ticket", "queue": null, "ticket": null}),
    );

    // The ticket, followed to its end, then asked for what it cannot do.
    let on_ticket = json!({"route": "ticket", "queue": "checkout", "ticket": ticket, "bytes_in": 0,
        "client": null});
    loop {
        let poll = c.get(&format!("/tickets/{ticket}?wait=5")).await;
        assert_eq!(poll.status, 200);
        expect(&mut sent, &poll, on_ticket.clone());
        if poll.json()["status"] == "completed" {
            break;
        }
    }
    let cancel = c
        .send("DELETE", &format!("/tickets/{ticket}"), &[], "")
        .await;
    assert_eq!(cancel.status, 409);
    expect(&mut sent, &cancel, on_ticket.clone());
    let response = c.get(&format!("/tickets/{ticket}/response")).await;
    assert_eq!(response.status, 201);
    expect(&mut sent, &response, on_ticket.clone());
    let page = c.get(&format!("/waiting-room/{ticket}")).await;
    assert_eq!(page.status, 200);
    expect(&mut sent, &page, json!({"route": "page", "code": null}));
    let options = c.send("OPTIONS", "/checkout", &[], "").await;
    assert_eq!(options.status, 204);
    expect(&mut sent, &options, json!({"route": "options"}));

    // Passthrough: the upstream's status and the attempt.
    let through = c.send("POST", "/elsewhere?x=1", &[], "hello").await;
    assert_eq!(through.status, 201);
    expect(
        &mut sent,
        &through,
        json!({"route": "passthrough", "upstream_status": 201,
        "attempt": 1, "bytes_in": 5, "client": "ip:127.0.0.1", "path": "/elsewhere?x=1",
        "code": null, "queue": null}),
    );

    // The admin listener: the API (with and without the token), metrics,
    // health, and a path it does not serve.
    let private = json!({"listener": "admin"});
    let bearer = [("authorization", "Bearer s3cret")];
    let queues = c.admin("GET", "/admin/queues", &bearer, "").await;
    assert_eq!(queues.status, 200);
    expect(
        &mut sent,
        &queues,
        json!({"listener": "admin", "route": "admin"}),
    );
    let patch = c.admin(
        "PATCH",
        "/admin/queues/checkout",
        &bearer,
        r#"{"drain_rate":999}"#,
    );
    let patch = patch.await;
    assert_eq!(patch.status, 200);
    expect(
        &mut sent,
        &patch,
        json!({"route": "admin", "queue": "checkout", "bytes_in": 18}),
    );
    let refused = c.admin_get("/admin/queues").await;
    assert_eq!(refused.status, 401);
    expect(&mut sent, &refused, json!({"route": "admin"}));
    for (path, route) in [
        ("/metrics", "metrics"),
        ("/healthz", "health"),
        ("/nope", "not_found"),
    ] {
        let a = c.admin_get(path).await;
        let mut want = private.clone();
        want["route"] = route.into();
        want["path"] = path.into();
        expect(&mut sent, &a, want);
    }

    // One line per request, each with every field, each as expected.
    let lines = until_lines(&log, sent.len()).await;
    assert_eq!(lines.len(), sent.len(), "{lines:#?}");
    let lines: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for line in &lines {
        for field in FIELDS {
            assert!(line.get(field).is_some(), "no {field} in {line}");
        }
        assert!(line["time"].as_str().unwrap().ends_with('Z'), "{line}");
        assert!(
            line["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
            "{line}"
        );
        assert!(line["duration_ms"].as_f64().unwrap() >= 0.0, "{line}");
        assert_eq!(line["protocol"], "HTTP/1.1", "{line}");
    }
    for Expect { id, want } in &sent {
        let line = (lines.iter().find(|l| l["request_id"] == id.as_str()))
            .unwrap_or_else(|| panic!("no line for request {id} ({want})"));
        for (field, value) in want.as_object().unwrap() {
            if !(field == "bytes_in" && value.is_null()) {
                assert_eq!(&line[field], value, "{field} of {line}");
            }
        }
    }
    // The 413 was refused before its body was read: at most the drained
    // remainder, never more than was sent.
    let big_line = lines.iter().find(|l| l["status"] == 413).unwrap();
    assert!(big_line["bytes_in"].as_u64().unwrap() <= 2000);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_before_its_answer_is_a_499_line() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let upstream = MockUpstream::builder()
        .latency(Duration::from_secs(2))
        .start()
        .await;
    let toml = format!("access_log = {}\npassthrough = true\n", toml_path(&log));
    let gw = Gateway::builder()
        .toml(&toml)
        .upstream(&upstream)
        .start()
        .await;
    let mut conn = raw::Conn::open(gw.public_addr, WAIT).await;
    let slow = b"GET /slow HTTP/1.1\r\nHost: shop\r\nX-Request-Id: mine\r\n\r\n";
    conn.stream.write_all(slow).await.unwrap();
    eventually(WAIT, "the request upstream", || async {
        (!upstream.received().is_empty()).then_some(())
    })
    .await;
    drop(conn);
    let lines = until_lines(&log, 1).await;
    let line: Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(line["status"], 499, "{line}");
    assert_eq!(line["route"], "passthrough", "{line}");
    assert_eq!(line["path"], "/slow", "{line}");
    assert_eq!(line["bytes_out"], 0, "{line}");
    // Not a trusted proxy's: the client's own id is not the request's.
    assert_ne!(line["request_id"], "mine", "{line}");
    assert_eq!(
        upstream.received()[0].header("x-request-id"),
        line["request_id"]
    );
}

/// `combined`'s fields: address, time, request line, status, bytes,
/// referer, user agent, request id.
fn parse_combined(line: &str) -> Option<(String, String, String, u16, u64, Vec<String>)> {
    let (addr, rest) = line.split_once(" - - [")?;
    let (time, rest) = rest.split_once("] \"")?;
    let (request, rest) = rest.split_once("\" ")?;
    let (status, rest) = rest.split_once(' ')?;
    let (bytes, rest) = rest.split_once(' ')?;
    // Three quoted fields; quotes inside them are escaped as \x22.
    let inner = rest.strip_prefix('"')?.strip_suffix('"')?;
    let quoted: Vec<String> = inner.split("\" \"").map(str::to_string).collect();
    (quoted.len() == 3 && rest.matches('"').count() == 6).then_some(())?;
    Some((
        addr.into(),
        time.into(),
        request.into(),
        status.parse().ok()?,
        bytes.parse().ok()?,
        quoted,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn combined_lines_parse_as_nginxs() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let upstream = MockUpstream::start().await;
    let toml = format!(
        "access_log = {}\naccess_log_format = \"combined\"\n",
        toml_path(&log)
    );
    let gw = Gateway::builder()
        .toml(&toml)
        .upstream(&upstream)
        .start()
        .await;
    let c = gw.client();
    let agent = [("user-agent", "Mozilla/5.0 \"quoted\"")];
    let a = c.admit_with(&agent, "{}").await;
    let b = c.get("/tickets/nope?x=1").await;
    let lines = until_lines(&log, 2).await;
    assert_eq!(lines.len(), 2, "{lines:#?}");
    let (addr, time, request, status, bytes, quoted) = parse_combined(&lines[0]).unwrap();
    assert_eq!(addr, "127.0.0.1");
    assert!(time.ends_with(" +0000") && time.len() == 26, "{time}");
    assert_eq!(request, "POST /checkout HTTP/1.1");
    assert_eq!((status, bytes), (202, a.body.len() as u64));
    assert_eq!(quoted[0], "-");
    assert_eq!(quoted[1], "Mozilla/5.0 \\x22quoted\\x22");
    assert_eq!(quoted[2], a.header("x-request-id"));
    let (_, _, request, status, bytes, quoted) = parse_combined(&lines[1]).unwrap();
    assert_eq!(request, "GET /tickets/nope?x=1 HTTP/1.1");
    assert_eq!((status, bytes), (404, b.body.len() as u64));
    assert_eq!(quoted[2], b.header("x-request-id"));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_reopens_a_rotated_file() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let rotated = dir.path().join("access.log.1");
    let upstream = MockUpstream::start().await;
    let gw = Gateway::builder()
        .upstream(&upstream)
        .args(&["--access-log", log.to_str().unwrap()])
        .process()
        .await;
    let c = gw.client();
    // `up()` asked /healthz on the admin listener: a line already.
    let sent = Cell::new(1);
    let admit = || async {
        assert_eq!(c.admit("{}").await.status, 202);
        sent.set(sent.get() + 1);
    };
    admit().await;
    until_lines(&log, sent.get()).await;
    std::fs::rename(&log, &rotated).unwrap();
    // Until the signal, lines go on into the renamed file.
    admit().await;
    until_lines(&rotated, sent.get()).await;
    gw.signal("USR1");
    // The next lines go to a new file at the configured path.
    let new_lines = eventually(WAIT, "lines in the reopened file", || async {
        admit().await;
        let lines = read_lines(&log);
        (!lines.is_empty()).then_some(lines)
    })
    .await;
    assert!(
        new_lines[0].contains("\"route\":\"admission\""),
        "{new_lines:?}"
    );
    // Every request is in one file or the other, once.
    let old_lines = read_lines(&rotated);
    let new_lines = until_lines(&log, sent.get() - old_lines.len()).await;
    assert_eq!(old_lines.len() + new_lines.len(), sent.get());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_that_does_not_drain_costs_lines_not_answers() {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("access.fifo");
    let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo reads the NUL-terminated path only.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    // A reader that never reads: the pipe fills and the writer blocks.
    let _reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    let upstream = MockUpstream::start().await;
    let toml = format!("access_log = {}\naccess_log_buffer = 4\n", toml_path(&fifo));
    let gw = Gateway::builder()
        .toml(&toml)
        .upstream(&upstream)
        .start()
        .await;
    let c = gw.client();
    let dropped = |m: &Metrics| -> f64 {
        let line = m
            .lines()
            .find_map(|l| l.strip_prefix("flashgate_access_log_dropped_total "));
        line.expect("the counter is exposed")
            .trim()
            .parse()
            .unwrap()
    };
    assert_eq!(dropped(&c.metrics().await), 0.0);
    // Requests keep being answered while the log cannot keep up.
    eventually(WAIT, "dropped access log lines", || async {
        for _ in 0..50 {
            let a = tokio::time::timeout(WAIT, c.get("/tickets/nope")).await;
            assert_eq!(a.expect("answered while the log is stuck").status, 404);
        }
        (dropped(&c.metrics().await) > 0.0).then_some(())
    })
    .await;
    let a = c.admit("{}").await;
    assert_eq!(a.status, 202, "answers go on");
    drop(gw);
}

/// One HTTP/1.1 request from the local address `from` (another loopback
/// address is another peer); the answer's head, lower-cased.
async fn ask_from(from: &str, to: SocketAddr, request: &str) -> String {
    use tokio::io::AsyncWriteExt;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let mut stream = socket.connect(to).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let transcript = read_to_close(&mut stream, WAIT).await;
    transcript.text.to_ascii_lowercase()
}

fn header_of<'a>(head: &'a str, name: &str) -> &'a str {
    head.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .unwrap_or_default()
        .trim()
}

const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const STATE: &str = "congo=t61rcwkgmze";

async fn request_ids_and_trace_context_reach_the_upstream(backend: Backend) {
    let upstream = MockUpstream::start().await;
    let gw = Gateway::builder()
        .backend(backend)
        .toml("passthrough = true\ndrain_rate = 1000\ntrusted_proxies = [\"127.0.0.1\"]\n")
        .upstream(&upstream)
        .start()
        .await;
    let post = |path: &str, headers: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nhost: shop\r\nconnection: close\r\n{headers}\
             content-length: 2\r\n\r\n{{}}"
        )
    };
    let traced =
        format!("x-request-id: edge-{{}}\r\ntraceparent: {PARENT}\r\ntracestate: {STATE}\r\n");
    let bad_parent = "traceparent: 00-zz-01\r\ntracestate: congo=1\r\n";
    // (from, path, headers, the id the answer must carry: None = a fresh one)
    let cases = [
        (
            "127.0.0.1",
            "/checkout",
            traced.replace("{}", "q"),
            Some("edge-q"),
            true,
        ),
        (
            "127.0.0.1",
            "/elsewhere",
            traced.replace("{}", "p"),
            Some("edge-p"),
            true,
        ),
        (
            "127.0.0.2",
            "/checkout",
            traced.replace("{}", "q2"),
            None,
            true,
        ),
        (
            "127.0.0.2",
            "/elsewhere",
            traced.replace("{}", "p2"),
            None,
            true,
        ),
        (
            "127.0.0.1",
            "/checkout",
            bad_parent.to_string(),
            None,
            false,
        ),
        (
            "127.0.0.1",
            "/elsewhere",
            bad_parent.to_string(),
            None,
            false,
        ),
    ];
    let mut ids = Vec::new();
    for (from, path, headers, given, _) in &cases {
        let head = ask_from(from, gw.public_addr, &post(path, headers)).await;
        assert!(head.starts_with("http/1.1 20"), "{head}");
        let id = header_of(&head, "x-request-id").to_string();
        match given {
            Some(given) => assert_eq!(id, *given),
            None => {
                assert_eq!(id.len(), 32, "{head}");
                assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
            }
        }
        ids.push(id);
    }
    let got = eventually(WAIT, "every request upstream", || async {
        let got = upstream.received();
        (got.len() == cases.len()).then_some(got)
    })
    .await;
    for ((_, path, _, _, trace_ok), id) in cases.iter().zip(&ids) {
        let r = (got.iter().find(|r| r.header("x-request-id") == id))
            .unwrap_or_else(|| panic!("no upstream request with X-Request-Id {id}"));
        assert_eq!(&r.path, path);
        assert_eq!(r.headers.get_all("x-request-id").iter().count(), 1);
        if *trace_ok {
            assert_eq!(r.header("traceparent"), PARENT, "{path}");
            assert_eq!(r.header("tracestate"), STATE, "{path}");
        } else {
            assert!(r.headers.get("traceparent").is_none(), "{path}");
            assert!(r.headers.get("tracestate").is_none(), "{path}");
        }
    }
    gw.stop().await;
}

backends!(request_ids_and_trace_context_reach_the_upstream: embedded, redis);
