//! Observability against real parts: a real `prometheus` scrapes a gateway
//! under load and every dashboard query is run against it
//! (`dashboards/check.py`); alerts fire on their conditions; the log flags
//! shape what the binary writes.

mod support;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::*;
use tokio_util::sync::CancellationToken;

/// Percent-encodes a query-string value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// How often Prometheus is asked: it evaluates every second, no need to
/// hammer it.
const EVERY: Duration = Duration::from_millis(250);

/// A `prometheus` of the test's own: temp storage, a free loopback port, a 1 s
/// scrape of one gateway's admin listener and the repository's alert rules,
/// evaluated every second. Killed by PID when dropped.
struct Prometheus {
    url: String,
    child: Child,
    dir: tempfile::TempDir,
}

impl Prometheus {
    async fn start(admin: SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let rules = repo().join("dashboards/alerts.yml");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {rules:?}\n\
                 scrape_configs:\n  - job_name: flashgate\n    static_configs:\n      \
                 - targets: [\"{admin}\"]\n"
            ),
        )
        .expect("write prometheus.yml");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run `prometheus` ({e}): this test needs a real Prometheus on PATH; \
                     scripts/test installs it (apt-get install prometheus)"
                )
            });
        let mut prometheus = Prometheus {
            url: format!("http://127.0.0.1:{port}"),
            child,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = prometheus.child.try_wait() {
                panic!("prometheus exited ({status}):\n{}", prometheus.log());
            }
            let ready = try_get(&format!("{}/-/ready", prometheus.url)).await;
            if ready.is_some_and(|a| a.status == 200) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready in 30s:\n{}",
                prometheus.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        prometheus
    }

    /// The tail of its log, for failure messages.
    fn log(&self) -> String {
        let text =
            std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// `GET /api/v1/{path}` and its `data`.
    async fn api(&self, path: &str) -> serde_json::Value {
        let url = format!("{}/api/v1/{path}", self.url);
        let a = try_get(&url)
            .await
            .unwrap_or_else(|| panic!("prometheus does not answer {url}"));
        let v = a.json();
        assert_eq!(v["status"], "success", "{url}: {v}");
        v["data"].clone()
    }

    /// The series an instant query returns.
    async fn query(&self, expr: &str) -> Vec<serde_json::Value> {
        let data = self.api(&format!("query?query={}", encode(expr))).await;
        data["result"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until this expression has a sample: the scrape has happened.
    async fn until_scraped(&self, expr: &str) {
        eventually_every(
            Duration::from_secs(30),
            EVERY,
            &format!("prometheus to have {expr}"),
            || async { (!self.query(expr).await.is_empty()).then_some(()) },
        )
        .await;
    }

    /// The alerts Prometheus reports as firing: (name, queue label).
    async fn firing(&self) -> Vec<(String, String)> {
        let data = self.api("alerts").await;
        data["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["state"] == "firing")
            .map(|a| {
                let label = |k: &str| a["labels"][k].as_str().unwrap_or_default().to_string();
                (label("alertname"), label("queue"))
            })
            .collect()
    }

    /// Waits for an alert to fire for a queue.
    async fn until_firing(&self, alert: &str, queue: &str, limit: Duration) {
        eventually_every(limit, EVERY, &format!("alert {alert} to fire"), || async {
            let firing = self.firing().await;
            firing
                .iter()
                .any(|(a, q)| a == alert && q == queue)
                .then_some(())
        })
        .await;
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the load generator was answered, by kind.
#[derive(Debug, Default)]
struct Tally {
    admitted: u32,
    queue_full: u32,
    duplicate: u32,
    reused_key: u32,
    too_large: u32,
    not_found: u32,
    polls: u32,
}

/// A small steady load until `stop`: every 100 ms four admissions, a replay and
/// a reuse of an idempotency key, an oversized body, an unknown path and polls
/// of recent tickets.
async fn load(c: Client, stop: CancellationToken) -> Tally {
    let mut tally = Tally::default();
    let mut recent: Vec<(String, String)> = Vec::new();
    let mut n = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    while !stop.is_cancelled() {
        tick.tick().await;
        for _ in 0..4 {
            n += 1;
            let key = format!("order-{n}");
            let a = c.admit_with(&[("idempotency-key", &key)], body(n)).await;
            match a.status.as_u16() {
                202 => {
                    tally.admitted += 1;
                    let ticket = a.json()["ticket"].as_str().unwrap_or_default().to_string();
                    recent.push((key, ticket));
                }
                503 => tally.queue_full += 1,
                s => panic!(
                    "admission answered {s}: {}",
                    String::from_utf8_lossy(&a.body)
                ),
            }
        }
        if recent.len() > 8 {
            recent.drain(..recent.len() - 8);
        }
        if let Some((key, _)) = recent.last() {
            let seq: u64 = key.trim_start_matches("order-").parse().unwrap_or(0);
            let again = c.admit_with(&[("idempotency-key", key)], body(seq)).await;
            tally.duplicate += u32::from(again.status == 200);
            let reused = c.admit_with(&[("idempotency-key", key)], "{}").await;
            tally.reused_key += u32::from(reused.status == 422);
        }
        let big = c.admit(vec![b'x'; 1024]).await;
        tally.too_large += u32::from(big.status == 413);
        let lost = c.get("/nope").await;
        tally.not_found += u32::from(lost.status == 404);
        for (_, ticket) in recent.iter().rev().take(4) {
            let poll = c.poll(ticket).await;
            tally.polls += u32::from(poll.status == 200);
        }
    }
    tally
}

fn body(n: u64) -> String {
    format!("{{\"sku\":{},\"qty\":1}}", n % 7)
}

/// Runs a program that must exist; a missing one fails the test, never skips it.
fn require(program: &str, why: &str) {
    let found = Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(found, "`{program}` is required on PATH: {why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_works_against_a_real_prometheus() {
    require("python3", "it runs dashboards/check.py");
    require(
        "promtool",
        "it checks /metrics and the rules (scripts/test installs prometheus)",
    );
    let redis = Redis::start();
    // Every ticket's first attempt gets a 503: retries, 5xx and completions.
    let upstream = MockUpstream::builder().fail_first(1).start().await;
    // Arrivals (40/s) outrun the drain (20/s) into a small queue: admissions
    // and queue_full side by side, a backlog with an age, a steady drain. A
    // stock (far from sold out) gives the stock-left panel its series.
    let gw = Gateway::builder()
        .toml("max_body = \"256B\"\ndrain_rate = 20\nmax_queue = 25\nstock = 1000000\n")
        .upstream(&upstream)
        .redis(&redis)
        .start()
        .await;
    let prometheus = Prometheus::start(gw.admin_addr).await;
    prometheus.until_scraped("flashgate_build_info").await;

    let stop = CancellationToken::new();
    let traffic = tokio::spawn(load(gw.client(), stop.clone()));

    // The schema vendored in dashboards/schema/ (checked against the shared
    // copy beside the repository, where there is one).
    let check = tokio::process::Command::new("python3")
        .arg(repo().join("dashboards/check.py"))
        .args(["--prometheus", &prometheus.url])
        .args(["--require-data", "--wait", "60"])
        // Grafana's $__rate_interval is 4 scrapes at least: 4 s here; 10 s
        // keeps the windows short without being ragged.
        .args(["--rate-interval", "10s"])
        .arg("--promtool")
        .args(["--metrics", &format!("http://{}/metrics", gw.admin_addr)])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(100), check)
        .await
        .expect("check.py finished within 100s")
        .expect("python3 runs dashboards/check.py");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{report}");

    stop.cancel();
    let tally = traffic.await.expect("load generator ran");
    println!("load: {tally:?}");
    assert!(
        out.status.success(),
        "dashboards/check.py failed ({}):\n{report}\nprometheus log:\n{}",
        out.status,
        prometheus.log()
    );
    // The load did what the panels were checked against.
    assert!(tally.admitted > 0, "{tally:?}");
    assert!(tally.queue_full > 0, "{tally:?}");
    assert!(tally.duplicate > 0, "{tally:?}");
    assert!(tally.reused_key > 0, "{tally:?}");
    assert!(tally.too_large > 0, "{tally:?}");
    assert!(tally.not_found > 0, "{tally:?}");
    assert!(tally.polls > 0, "{tally:?}");
    assert!(
        upstream.received().len() > tally.admitted as usize / 4,
        "the drain barely ran"
    );
    // Every alerting rule of alerts.yml is loaded and healthy.
    let rules = prometheus.api("rules?type=alert").await;
    let names: Vec<&str> = rules["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .inspect(|r| assert_eq!(r["health"], "ok", "{r}"))
        .filter_map(|r| r["name"].as_str())
        .collect();
    for alert in [
        "FlashgateBacklogWillNotDrain",
        "FlashgateDrainStalled",
        "FlashgateDeadLetters",
        "FlashgateDeadLetterBacklog",
        "FlashgateUpstreamErrorRatioHigh",
        "FlashgateQueueBackendDown",
        "FlashgateAdmissionLatencyHigh",
        "FlashgateAdmissionsRefused",
        "FlashgateFileDescriptorsNearLimit",
        "FlashgateConnectionsShed",
    ] {
        assert!(names.contains(&alert), "{alert} not loaded: {names:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_and_a_lost_redis_fire_their_alerts() {
    let mut redis = Redis::start();
    // The order service is down for good, and one attempt is all a ticket gets.
    let upstream = MockUpstream::builder()
        .fail_always()
        .fail_status(503)
        .start()
        .await;
    let gw = Gateway::builder()
        .toml("max_attempts = 1\n")
        .upstream(&upstream)
        .redis(&redis)
        .start()
        .await;
    let prometheus = Prometheus::start(gw.admin_addr).await;
    // The dead-letter counter must be scraped at 0 before it moves: increase()
    // cannot see a counter that is already 1 in its first sample.
    prometheus
        .until_scraped("flashgate_dispatches_total{outcome=\"dead_lettered\"}")
        .await;

    let c = gw.client();
    for n in 0..3 {
        let a = c.admit(body(n)).await;
        assert_eq!(a.status, 202, "{}", a.text());
        let done = c.until_terminal(&a.ticket(), Duration::from_secs(20)).await;
        assert_eq!(done["status"], "failed", "{done}");
    }
    prometheus
        .until_firing("FlashgateDeadLetters", "checkout", Duration::from_secs(30))
        .await;

    // Redis goes away: the gauge refresh fails, flashgate_queue_up drops to 0,
    // and after the rule's 30 s `for` the alert fires.
    redis.kill();
    prometheus
        .until_firing(
            "FlashgateQueueBackendDown",
            "checkout",
            Duration::from_secs(75),
        )
        .await;
    let firing = prometheus.firing().await;
    println!("alerts seen firing: {firing:?}");

    tokio::time::timeout(Duration::from_secs(30), gw.stop())
        .await
        .expect("the gateway stops without its Redis");
}

/// `flashgate serve` on free ports with its stderr piped to the test and
/// no log filter of the harness's: the flags and `env` choose the logging.
fn serve(extra: &[&str], env: &[(&str, &str)]) -> GatewayProcess {
    let mut gw = Gateway::builder()
        .upstream("http://127.0.0.1:1")
        .args(extra)
        .log(None)
        .capture_stderr();
    for (k, v) in env {
        gw = gw.env(k, v);
    }
    gw.spawn()
}

fn json_line(line: &str) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
    for key in ["timestamp", "level", "target", "message"] {
        assert!(v.get(key).is_some(), "no {key}: {line}");
    }
    v
}

#[test]
fn json_logs_carry_the_lifecycle_and_the_effective_config() {
    let mut gw = Gateway::builder()
        .upstream("http://orders:hunter2@127.0.0.1:1")
        .args(&["--log-format", "json", "--drain-rate", "7"])
        .log(None)
        .capture_stderr()
        .spawn();
    let start = gw.read_until(|l| l.contains("flashgate listening"));
    let events: Vec<serde_json::Value> = start.iter().map(|l| json_line(l)).collect();
    let find = |msg: &str| {
        events
            .iter()
            .find(|e| e["message"].as_str().is_some_and(|m| m.contains(msg)))
            .unwrap_or_else(|| panic!("no {msg:?} line in:\n{}", start.join("\n")))
    };
    let config = find("effective config");
    assert_eq!(config["level"], "INFO");
    let effective: serde_json::Value =
        serde_json::from_str(config["config"].as_str().expect("config field")).unwrap();
    assert_eq!(effective["queue"][0]["drain_rate"], 7.0, "{effective}");
    assert_eq!(effective["queue"][0]["name"], "checkout");
    assert!(!config.to_string().contains("hunter2"), "{config}");
    let backend = find("queue backend");
    assert_eq!(backend["level"], "WARN");
    assert_eq!(backend["backend"], "embedded");
    assert!(find("flashgate listening")["admin_addr"].is_string());

    let (rest, status) = gw.terminate();
    assert!(status.success(), "{status}");
    let stopped = rest
        .iter()
        .map(|l| json_line(l))
        .any(|e| e["message"] == "stopped");
    assert!(stopped, "no stopped line in:\n{}", rest.join("\n"));
}

#[tokio::test]
async fn log_level_and_filter_env_choose_what_is_logged() {
    // --log-level warn: the embedded-queue warning, none of the info lines.
    let mut quiet = serve(&["--log-level", "warn"], &[]);
    quiet.up().await;
    let (lines, status) = quiet.terminate();
    assert!(status.success(), "{status}");
    let text = lines.join("\n");
    assert!(text.contains("embedded in-process queue"), "{text}");
    assert!(!text.contains("flashgate listening"), "{text}");
    assert!(!text.contains('\u{1b}'), "colour codes on a pipe: {text}");

    // A filter in RUST_LOG wins over the flag; the env var sets the flag.
    let mut loud = serve(
        &[],
        &[
            ("FLASHGATE_LOG_LEVEL", "error"),
            ("RUST_LOG", "flashgate=info"),
        ],
    );
    loud.up().await;
    let (lines, _) = loud.terminate();
    assert!(
        lines.iter().any(|l| l.contains("flashgate listening")),
        "{lines:?}"
    );

    // Without it, FLASHGATE_LOG_LEVEL=error keeps even the warning out.
    let mut silent = serve(&[], &[("FLASHGATE_LOG_LEVEL", "error")]);
    silent.up().await;
    let (lines, _) = silent.terminate();
    assert!(lines.is_empty(), "{lines:?}");
}

#[test]
fn bad_log_flags_exit_2_naming_the_flag() {
    for args in [
        ["serve", "--log-level", "loud"],
        ["check-config", "--log-format", "xml"],
    ] {
        let out = flashgate().args(args).output().expect("flashgate runs");
        let text = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {text:?}");
        assert!(text.contains(args[1]), "{args:?} not named: {text:?}");
    }
}

/// Copies what `dashboards/check.py` reads (`dashboards/`, `docs/`) into a
/// bare directory: a clone of the repository with nothing beside it.
fn fresh_clone(root: &std::path::Path) -> std::path::PathBuf {
    let clone = root.join("flashgate");
    for dir in ["dashboards", "dashboards/schema", "docs"] {
        std::fs::create_dir_all(clone.join(dir)).unwrap();
        for entry in std::fs::read_dir(repo().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                std::fs::copy(&path, clone.join(dir).join(path.file_name().unwrap())).unwrap();
            }
        }
    }
    clone
}

fn check_py(clone: &std::path::Path) -> std::process::Output {
    Command::new("python3")
        .arg(clone.join("dashboards/check.py"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("python3 runs dashboards/check.py")
}

#[test]
fn the_dashboard_checker_works_on_a_fresh_clone() {
    require("python3", "it runs dashboards/check.py");
    let root = tempfile::tempdir().unwrap();
    let clone = fresh_clone(root.path());
    let out = check_py(&clone);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    // Schema, generated files, runbooks and alert tests, lint: all checked.
    for part in ["SCHEMA", "SOURCES", "ALERTS", "LINT"] {
        let line = text.lines().find(|l| l.starts_with(part));
        assert!(line.is_some_and(|l| l.ends_with("ok")), "{part}: {text}");
    }

    // A shared copy of the schema beside the clone must be the vendored one.
    let shared = root.path().join("shared/grafana");
    std::fs::create_dir_all(&shared).unwrap();
    let vendored =
        std::fs::read(repo().join("dashboards/schema/dashboard.jsonschema.json")).unwrap();
    std::fs::write(shared.join("dashboard.jsonschema.json"), &vendored).unwrap();
    assert!(check_py(&clone).status.success());
    let mut newer = vendored.clone();
    newer.extend_from_slice(b"\n");
    std::fs::write(shared.join("dashboard.jsonschema.json"), &newer).unwrap();
    let out = check_py(&clone);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("differs from"), "{text}");
}

/// The vendored schema is the one the team shares, where that is at hand.
#[test]
fn the_vendored_schema_is_the_shared_one() {
    let shared = repo().join("../shared/grafana/dashboard.jsonschema.json");
    let Ok(shared) = std::fs::read(&shared) else {
        // A clone alone: the fresh-clone test covers the vendored copy.
        return;
    };
    let vendored =
        std::fs::read(repo().join("dashboards/schema/dashboard.jsonschema.json")).unwrap();
    assert!(
        vendored == shared,
        "dashboards/schema/dashboard.jsonschema.json differs from ../shared's"
    );
}

#[test]
fn generated_files_follow_the_scrape_job_and_stay_in_sync() {
    require("python3", "it runs dashboards/build_dashboard.py");
    let out_dir = tempfile::tempdir().unwrap();
    let out = Command::new("python3")
        .arg(repo().join("dashboards/build_dashboard.py"))
        .args([
            "--job",
            "shop-gateway",
            "--runbooks",
            "https://runbooks.example/flashgate.md",
        ])
        .arg("--out")
        .arg(out_dir.path())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("python3 runs build_dashboard.py");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let alerts = std::fs::read_to_string(out_dir.path().join("alerts.yml")).unwrap();
    let dashboard = std::fs::read_to_string(out_dir.path().join("flashgate.json")).unwrap();
    for text in [&alerts, &dashboard] {
        assert!(
            !text.contains("job=\\\"flashgate\\\"") && !text.contains("job=\"flashgate\""),
            "{text}"
        );
        assert!(text.contains("shop-gateway"), "{text}");
    }
    // Every selector of a rule carries the job: as many as the default's.
    let checked_in = std::fs::read_to_string(repo().join("dashboards/alerts.yml")).unwrap();
    assert_eq!(
        alerts.matches("job=\"shop-gateway\"").count(),
        checked_in.matches("job=\"flashgate\"").count()
    );
    assert!(alerts
        .contains("runbook_url: \"https://runbooks.example/flashgate.md#flashgatedeadletters\""));
    // The checked-in files are the default's, unchanged.
    let check = Command::new("python3")
        .arg(repo().join("dashboards/build_dashboard.py"))
        .arg("--check")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
}
