//! The binary as operators run it: configuration errors, check-config, and a
//! SIGTERM in the middle of a drain that loses nothing.

mod common;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

fn flashgate() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_flashgate"));
    // The test's environment must not leak FLASHGATE_* settings in.
    for (k, _) in std::env::vars() {
        if k.starts_with("FLASHGATE_") {
            c.env_remove(k);
        }
    }
    c
}

#[test]
fn bad_config_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "upstream = \"http://127.0.0.1:1\"\ndrain_rat = 5\n").unwrap();
    let out = flashgate()
        .arg("serve")
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("drain_rat"), "{err}");

    let out = flashgate()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("upstream"));

    let out = flashgate()
        .args([
            "check-config",
            "--upstream",
            "http://127.0.0.1:1",
            "--max-body",
            "lots",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_body"));
}

#[test]
fn check_config_prints_the_effective_config() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sale.toml");
    std::fs::write(
        &file,
        "upstream = \"http://127.0.0.1:9000\"\ndrain_rate = 50\nadmin_token = \"hunter2\"\n\n[[queue]]\nname = \"sneakers\"\nroutes = [\"POST /buy\"]\n",
    )
    .unwrap();
    let out = flashgate()
        .arg("check-config")
        .arg("--config")
        .arg(&file)
        .env("FLASHGATE_MAX_IN_FLIGHT", "7")
        .args(["--drain-rate", "25"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let printed: toml::Table = toml::from_str(&text).unwrap();
    let q = &printed["queue"].as_array().unwrap()[0];
    assert_eq!(q["name"].as_str(), Some("sneakers"));
    assert_eq!(q["drain_rate"].as_float(), Some(25.0), "flag beats file");
    assert_eq!(
        q["max_in_flight"].as_integer(),
        Some(7),
        "env beats default"
    );
    assert_eq!(
        q["routes"].as_array().unwrap()[0].as_str(),
        Some("POST /buy")
    );
    assert!(!text.contains("hunter2"), "secret printed: {text}");
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(upstream: &str, redis: &str, public: u16, admin: u16, extra: &[&str]) -> Running {
    let child = flashgate()
        .args(["serve", "--upstream", upstream, "--redis-url", redis])
        .args(["--listen", &format!("127.0.0.1:{public}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
        .args(["--consumer", "lifecycle-test"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Running(child)
}

async fn ready(admin: u16) {
    eventually(Duration::from_secs(20), "gateway ready", || async move {
        let c = client();
        let req = http::Request::get(format!("http://127.0.0.1:{admin}/readyz"))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        match c.request(req).await {
            Ok(r) if r.status() == 200 => Some(()),
            _ => None,
        }
    })
    .await;
}

fn sigterm(child: &Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

fn wait_exit(child: &mut Child, limit: Duration) -> Option<i32> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        assert!(std::time::Instant::now() < deadline, "gateway did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn admit(public: u16, n: usize) -> Vec<String> {
    let c = client();
    let mut tickets = Vec::new();
    for i in 0..n {
        let a = send(
            &c,
            "POST",
            &format!("http://127.0.0.1:{public}/checkout"),
            &[],
            format!("{{\"n\":{i}}}"),
        )
        .await;
        assert_eq!(a.status, 202);
        tickets.push(a.json()["ticket"].as_str().unwrap().to_string());
    }
    tickets
}

/// SIGTERM while draining: the process stops reading, lets in-flight requests
/// finish, exits 0; the next start drains the rest. Nothing is lost and
/// nothing that finished is sent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_drain_exits_0_and_loses_nothing() {
    let redis = RedisServer::start();
    let upstream = MockUpstream::start(Behaviour {
        latency: Duration::from_millis(200),
        ..Behaviour::default()
    })
    .await;
    let (public, admin) = (free_port(), free_port());
    let flags = [
        "--drain-rate",
        "20",
        "--max-in-flight",
        "4",
        "--shutdown-grace",
        "10s",
    ];
    let mut gw = serve(&upstream.url(), &redis.url(), public, admin, &flags);
    ready(admin).await;
    let tickets = admit(public, 40).await;
    eventually(Duration::from_secs(20), "some deliveries", || async {
        (upstream.received().len() >= 5).then_some(())
    })
    .await;
    sigterm(&gw.0);
    assert_eq!(wait_exit(&mut gw.0, Duration::from_secs(15)), Some(0));
    let delivered_before = upstream.by_key().len();
    assert!(
        delivered_before < 40,
        "the drain should have been interrupted"
    );

    let _gw = serve(&upstream.url(), &redis.url(), public, admin, &flags);
    ready(admin).await;
    let base = format!("http://127.0.0.1:{public}");
    for t in &tickets {
        let done = until_terminal(&base, t, Duration::from_secs(30)).await;
        assert_eq!(done["status"], "completed", "{done}");
    }
    let by_key: HashMap<_, _> = upstream.by_key();
    for t in &tickets {
        assert_eq!(by_key.get(t).map(Vec::len), Some(1), "ticket {t}");
    }
}

/// When the grace period ends before in-flight requests do, their entries stay
/// pending under this consumer and the next start redelivers them with the
/// same Idempotency-Key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_work_is_redelivered_after_restart() {
    let redis = RedisServer::start();
    let slow = MockUpstream::start(Behaviour {
        latency: Duration::from_secs(3),
        ..Behaviour::default()
    })
    .await;
    let (public, admin) = (free_port(), free_port());
    let flags = [
        "--drain-rate",
        "100",
        "--max-in-flight",
        "3",
        "--shutdown-grace",
        "100ms",
    ];
    let mut gw = serve(&slow.url(), &redis.url(), public, admin, &flags);
    ready(admin).await;
    let tickets = admit(public, 3).await;
    eventually(Duration::from_secs(20), "three in flight", || async {
        (slow.received().len() == 3).then_some(())
    })
    .await;
    sigterm(&gw.0);
    assert_eq!(wait_exit(&mut gw.0, Duration::from_secs(15)), Some(0));

    let fast = MockUpstream::start(Behaviour::default()).await;
    let _gw = serve(&fast.url(), &redis.url(), public, admin, &flags);
    ready(admin).await;
    let base = format!("http://127.0.0.1:{public}");
    for t in &tickets {
        let done = until_terminal(&base, t, Duration::from_secs(30)).await;
        assert_eq!(done["status"], "completed", "{done}");
        assert_eq!(done["attempts"], 2, "{done}");
        let got = &fast.by_key()[t];
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].header("x-flashgate-attempt"), "2");
    }
}
