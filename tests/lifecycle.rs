//! The binary as operators run it: configuration errors, check-config, and a
//! SIGTERM in the middle of a drain that loses nothing.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use support::*;

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

/// SIGTERM while draining: the process stops reading, lets in-flight requests
/// finish, exits 0; the next start drains the rest. Nothing is lost and
/// nothing that finished is sent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_drain_exits_0_and_loses_nothing() {
    let redis = Redis::start();
    let upstream = MockUpstream::builder()
        .latency(Duration::from_millis(200))
        .start()
        .await;
    let node = Gateway::builder()
        .upstream(&upstream)
        .redis(&redis)
        .consumer("node-a")
        .args(&["--drain-rate", "20", "--max-in-flight", "4"])
        .args(&["--shutdown-grace", "10s"]);
    let mut gw = node.clone().process().await;
    let (tickets, _) = gw.client().admit_many(40, "n").await;
    assert_eq!(tickets.len(), 40);
    eventually(Duration::from_secs(20), "some deliveries", || async {
        (upstream.received().len() >= 5).then_some(())
    })
    .await;
    gw.signal("TERM");
    assert_eq!(gw.wait_exit(Duration::from_secs(15)), Some(0));
    let delivered_before = upstream.by_key().len();
    assert!(
        delivered_before < 40,
        "the drain should have been interrupted"
    );

    let gw = node.ports(gw.public, gw.admin).process().await;
    let c = gw.client();
    for t in &tickets {
        let done = c.until_terminal(t, Duration::from_secs(30)).await;
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
    let redis = Redis::start();
    let slow = MockUpstream::builder()
        .latency(Duration::from_secs(3))
        .start()
        .await;
    let node = Gateway::builder()
        .redis(&redis)
        .consumer("node-a")
        .args(&["--drain-rate", "100", "--max-in-flight", "3"])
        .args(&["--shutdown-grace", "100ms"]);
    let mut gw = node.clone().upstream(&slow).process().await;
    let (tickets, _) = gw.client().admit_many(3, "n").await;
    eventually(Duration::from_secs(20), "three in flight", || async {
        (slow.received().len() == 3).then_some(())
    })
    .await;
    gw.signal("TERM");
    assert_eq!(gw.wait_exit(Duration::from_secs(15)), Some(0));

    let fast = MockUpstream::start().await;
    let gw = node
        .upstream(&fast)
        .ports(gw.public, gw.admin)
        .process()
        .await;
    let c = gw.client();
    for t in &tickets {
        let done = c.until_terminal(t, Duration::from_secs(30)).await;
        assert_eq!(done["status"], "completed", "{done}");
        assert_eq!(done["attempts"], 2, "{done}");
        let got = &fast.by_key()[t];
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].header("x-flashgate-attempt"), "2");
    }
}
