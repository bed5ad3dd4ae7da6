//! The example consumer (examples/notifier.rs), built by `cargo test` and
//! run as its own process against a private redis-server: it reads the
//! queue's `completed` events through its own consumer group, and a kill -9
//! in the middle of the sale makes it miss nothing.

mod support;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::*;

/// The notifier cargo built next to this test (`target/<profile>/examples`).
fn notifier_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps")
        .join("examples")
        .join("notifier");
    assert!(
        bin.exists(),
        "{} is missing: `cargo test --workspace` builds it (or `cargo build --examples`)",
        bin.display()
    );
    bin
}

/// The notifier running, with every line it printed so far.
struct Notifier {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Notifier {
    fn start(redis: &Redis, lines: &Arc<Mutex<Vec<String>>>) -> Notifier {
        let mut child = Command::new(notifier_bin())
            .args([&redis.url(), "flashgate:{checkout}:events", "notifier-1"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("the notifier starts");
        let out = BufReader::new(child.stdout.take().expect("piped stdout"));
        let printed = lines.clone();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                printed.lock().unwrap().push(line);
            }
        });
        Notifier {
            child,
            lines: lines.clone(),
        }
    }

    /// Tickets it confirmed so far (each line ends with the shop's status).
    fn confirmed(&self) -> HashSet<String> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| l.strip_prefix("order confirmed: ticket "))
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_string)
            .collect()
    }

    /// `kill -9`: whatever it read and did not acknowledge stays pending.
    fn crash(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_example_notifier_misses_no_order_across_its_own_restart() {
    let redis = Redis::start();
    let upstream = MockUpstream::start().await;
    let gw = Gateway::builder()
        .toml("drain_rate = 50\n")
        .upstream(&upstream)
        .redis(&redis)
        .start()
        .await;
    let c = gw.client();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let notifier = Notifier::start(&redis, &lines);
    let (tickets, refused) = c.admit_many(200, "order").await;
    assert!(refused.is_empty(), "all admitted: {refused:?}");

    // Part of the way through the drain, the notifier dies without warning.
    eventually(Duration::from_secs(60), "some orders confirmed", || async {
        (notifier.confirmed().len() >= 40).then_some(())
    })
    .await;
    notifier.crash();
    let before = lines.lock().unwrap().len();
    // Orders go on completing while it is down.
    eventually(Duration::from_secs(60), "more orders complete", || async {
        (upstream.received().len() >= 150).then_some(())
    })
    .await;
    assert_eq!(lines.lock().unwrap().len(), before, "it is down");

    let notifier = Notifier::start(&redis, &lines);
    let all: HashSet<String> = tickets.iter().cloned().collect();
    eventually(Duration::from_secs(60), "every order confirmed", || async {
        (notifier.confirmed() == all).then_some(())
    })
    .await;
    // Every line is an order the gateway took and the shop answered.
    for line in lines.lock().unwrap().iter() {
        assert!(line.ends_with("(the shop answered 201)"), "{line}");
    }
    // Everything it read gets acknowledged: nothing stays pending.
    let conn = redis.conn().await;
    eventually(Duration::from_secs(20), "nothing pending", || async {
        let summary: (u64, Option<String>, Option<String>, redis::Value) = redis::cmd("XPENDING")
            .arg("flashgate:{checkout}:events")
            .arg("notifier")
            .query_async(&mut conn.clone())
            .await
            .unwrap();
        (summary.0 == 0).then_some(())
    })
    .await;
}
