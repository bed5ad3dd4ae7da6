//! Reloading on SIGHUP, as nginx does: the built binary, its config in a
//! file, a steady admission load, the recording mock upstream.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;

/// Upstream requests received since `from`.
fn received_since(upstream: &MockUpstream, from: Instant) -> usize {
    upstream.received().iter().filter(|r| r.at >= from).count()
}

/// Waits until the upstream has received `n` requests since `from`; how long that took.
async fn until_received(upstream: &MockUpstream, from: Instant, n: usize) -> Duration {
    eventually(
        Duration::from_secs(60),
        &format!("{n} upstream requests"),
        || async { (received_since(upstream, from) >= n).then_some(()) },
    )
    .await;
    from.elapsed()
}

async fn reloads(c: &Client, result: &str) -> f64 {
    c.metrics().await.sum(
        "flashgate_config_reloads_total",
        &[&format!("result=\"{result}\"")],
    )
}

/// `flashgate reload` with these arguments, which must succeed.
async fn flashgate_reload(args: Vec<String>) {
    let out = tokio::task::spawn_blocking(move || flashgate().arg("reload").args(&args).output())
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_new_file_under_load_and_refuses_an_invalid_one() {
    let upstream = MockUpstream::start().await;
    let mut gw = Gateway::builder()
        .toml("drain_rate = 5\n")
        .upstream(&upstream)
        .log(Some("info"))
        .capture_stderr()
        .process()
        .await;
    let pid = gw.pid();
    let c = gw.client();

    // A steady admission load: two clients, each one admission every 10 ms,
    // at most 2,000 each; every answer kept.
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for t in 0..2 {
        let (c, stop) = (c.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(10));
            let mut statuses = Vec::new();
            for i in 0..2000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                every.tick().await;
                let a = c.admit(format!("{{\"t\":{t},\"i\":{i}}}")).await;
                statuses.push(a.status.as_u16());
            }
            statuses
        }));
    }

    // At 5/s: ten requests take about two seconds.
    until_received(&upstream, Instant::now(), 3).await;
    let before = until_received(&upstream, Instant::now(), 10).await;

    // The new file: a faster drain, more slots, and a key that cannot change live.
    std::fs::write(
        gw.config_file(),
        "drain_rate = 50\nmax_in_flight = 16\nredis_prefix = \"elsewhere\"\n",
    )
    .unwrap();
    flashgate_reload(vec!["--pid".into(), pid.to_string()]).await;
    let log =
        tokio::task::block_in_place(|| gw.read_until(|l| l.contains("configuration reloaded")));
    let log = log.join("\n");
    assert!(
        log.lines()
            .any(|l| l.contains("cannot change while running") && l.contains("redis_prefix")),
        "{log}"
    );
    assert!(log.contains("drain_rate (checkout)"), "{log}");
    assert_eq!(reloads(&c, "success").await, 1.0);
    assert_eq!(c.queue().await["drain_rate"], 50.0);

    // At 50/s: fifty requests in about a second, which the old rate (5/s,
    // a burst of 1) could not have sent in the time they took.
    let from = Instant::now();
    let after = until_received(&upstream, from, 50).await;
    let at_old_rate = 5.0 * after.as_secs_f64() + 2.0;
    assert!(
        50.0 > at_old_rate,
        "50 requests in {after:?} after the reload, 10 in {before:?} before"
    );
    eprintln!("reload: 10 requests in {before:?} at 5/s before, 50 in {after:?} after (50/s)");

    // An invalid file: logged, counted, nothing changes.
    let pid_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(pid_file.path(), format!("{pid}\n")).unwrap();
    std::fs::write(gw.config_file(), "drain_rate = -3\n").unwrap();
    flashgate_reload(vec![
        "--pid-file".into(),
        pid_file.path().display().to_string(),
    ])
    .await;
    let log = tokio::task::block_in_place(|| gw.read_until(|l| l.contains("reload failed")));
    let line = log.last().unwrap();
    assert!(line.contains("drain_rate"), "{line}");
    assert!(line.contains("previous configuration"), "{line}");
    assert_eq!(reloads(&c, "failure").await, 1.0);
    assert_eq!(c.queue().await["drain_rate"], 50.0);
    let from = Instant::now();
    until_received(&upstream, from, 10).await;

    stop.store(true, Ordering::Relaxed);
    let mut statuses = Vec::new();
    for task in load {
        statuses.extend(task.await.expect("every admission was answered"));
    }
    assert!(statuses.len() > 100, "{} admissions", statuses.len());
    assert!(statuses.iter().all(|s| *s == 202), "{statuses:?}");
    assert_eq!(gw.pid(), pid);
    assert!(gw.running());
}

/// What handlers read per request changes for the next request: routes,
/// CORS origins, per-client limits — over connections already open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_routes_cors_and_client_limits_to_the_next_request() {
    let upstream = MockUpstream::start().await;
    let builder = Gateway::builder().upstream(&upstream);
    let gw = builder
        .clone()
        .toml("cors_origins = [\"https://a.example\"]\n")
        .start()
        .await;
    let c = gw.client();
    let from = |origin: &'static str| [("origin", origin)];
    let a = c.admit_with(&from("https://a.example"), "{}").await;
    assert_eq!(a.status, 202);
    assert_eq!(a.header("access-control-allow-origin"), "https://a.example");
    let a = c.admit_with(&from("https://a.example"), "{}").await;
    assert_eq!(a.status, 202, "no client limit yet");

    let new = builder
        .toml(
            "cors_origins = [\"https://b.example\"]\nroute = [\"POST /buy\"]\nclient_rate = 0.01\n",
        )
        .config();
    assert!(gw.reload(new));

    let a = c
        .send("POST", "/buy", &from("https://b.example"), "{}")
        .await;
    assert_eq!(a.status, 202, "{}", a.text());
    assert_eq!(a.header("access-control-allow-origin"), "https://b.example");
    let a = c
        .send("POST", "/buy", &from("https://a.example"), "{}")
        .await;
    assert_eq!(a.status, 429, "one admission per 100 s now: {}", a.text());
    assert!(a.headers.get("access-control-allow-origin").is_none());
    let a = c.send("POST", "/checkout", &[], "{}").await;
    assert_eq!(a.status, 404, "{}", a.text());
    let m = c.metrics().await;
    assert_eq!(
        m.sum("flashgate_config_reloads_total", &["result=\"success\""]),
        1.0
    );
}

/// curl over TLS to the gateway's public port, trusting `ca`; whether the
/// handshake and request succeeded.
fn curl_trusting(ca: &std::path::Path, port: u16) -> bool {
    let resolve = format!("localhost:{port}:127.0.0.1");
    std::process::Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "--max-time",
            "10",
            "--resolve",
            &resolve,
        ])
        .arg("--cacert")
        .arg(ca)
        .arg(format!("https://localhost:{port}/openapi.json"))
        .status()
        .is_ok_and(|s| s.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_serves_the_renewed_certificate_to_new_connections() {
    let dir = tempfile::tempdir().unwrap();
    let old = support::pki::pki(dir.path(), "old");
    let new = support::pki::pki(dir.path(), "new");
    // The files the gateway is configured with: the old pair for now.
    let (cert, key) = (dir.path().join("edge.pem"), dir.path().join("edge.key"));
    std::fs::copy(&old.cert, &cert).unwrap();
    std::fs::copy(&old.key, &key).unwrap();
    let upstream = MockUpstream::start().await;
    let mut gw = Gateway::builder()
        .toml(&format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"\n",
            cert.display(),
            key.display()
        ))
        .upstream(&upstream)
        .log(Some("info"))
        .capture_stderr()
        .process()
        .await;
    let port = gw.public_addr().port();
    let trusts =
        |ca: std::path::PathBuf| tokio::task::spawn_blocking(move || curl_trusting(&ca, port));
    assert!(
        trusts(old.ca.clone()).await.unwrap(),
        "the old CA's certificate is served"
    );
    assert!(!trusts(new.ca.clone()).await.unwrap());

    // Renewed in place, as certbot or cert-manager would, then SIGHUP.
    std::fs::copy(&new.cert, &cert).unwrap();
    std::fs::copy(&new.key, &key).unwrap();
    flashgate_reload(vec!["--pid".into(), gw.pid().to_string()]).await;
    let log =
        tokio::task::block_in_place(|| gw.read_until(|l| l.contains("TLS certificate reloaded")));
    assert!(
        log.last()
            .is_some_and(|l| l.contains("TLS certificate reloaded")),
        "{log:?}"
    );
    assert!(
        trusts(new.ca.clone()).await.unwrap(),
        "new connections get the renewed certificate"
    );
    assert!(!trusts(old.ca.clone()).await.unwrap());
}
