//! The built `flashgate` binary as a child process, and the checks every
//! fault test ends with.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{client, eventually, free_port, send, until_terminal, MockUpstream};

/// A `flashgate serve` process on fixed loopback ports, killed when dropped.
pub struct GatewayProcess {
    pub child: Child,
    pub public: u16,
    pub admin: u16,
}

pub fn flashgate() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_flashgate"));
    // The test's environment must not leak FLASHGATE_* settings in.
    for (k, _) in std::env::vars() {
        if k.starts_with("FLASHGATE_") {
            c.env_remove(k);
        }
    }
    c
}

impl GatewayProcess {
    /// Starts `flashgate serve` against `redis` as consumer `consumer`.
    pub fn start(upstream: &str, redis: &str, consumer: &str, extra: &[&str]) -> Self {
        Self::start_on(free_port(), free_port(), upstream, redis, consumer, extra)
    }

    pub fn start_on(
        public: u16,
        admin: u16,
        upstream: &str,
        redis: &str,
        consumer: &str,
        extra: &[&str],
    ) -> Self {
        Self::start_configured(public, admin, upstream, redis, consumer, extra, |_| {})
    }

    /// As [`start_on`](Self::start_on), with `configure` applied last: it may
    /// set the environment, the log level or where stdout and stderr go.
    pub fn start_configured(
        public: u16,
        admin: u16,
        upstream: &str,
        redis: &str,
        consumer: &str,
        extra: &[&str],
        configure: impl FnOnce(&mut Command),
    ) -> Self {
        let mut command = flashgate();
        command
            .args(["serve", "--upstream", upstream, "--redis-url", redis])
            .args(["--listen", &format!("127.0.0.1:{public}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
            .args(["--consumer", consumer])
            .args(extra)
            .env("FLASHGATE_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        configure(&mut command);
        let child = command.spawn().expect("the flashgate binary starts");
        GatewayProcess {
            child,
            public,
            admin,
        }
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.public)
    }

    /// Waits until `/healthz` answers (the backend may still be down).
    pub async fn up(&self) {
        let url = format!("http://127.0.0.1:{}/healthz", self.admin);
        eventually(Duration::from_secs(20), "gateway up", || {
            let url = url.clone();
            async move {
                let c = client();
                let req = http::Request::get(url)
                    .body(http_body_util::Full::new(bytes::Bytes::new()))
                    .unwrap();
                c.request(req)
                    .await
                    .ok()
                    .filter(|r| r.status() == 200)
                    .map(|_| ())
            }
        })
        .await;
    }

    pub fn signal(&self, sig: &str) {
        signal(self.child.id(), sig);
    }

    /// Waits for the process to exit and returns its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "gateway did not exit in {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9`: no cleanup of any kind.
    pub fn crash(&mut self) {
        self.signal("KILL");
        self.wait_exit(Duration::from_secs(10));
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success(), "kill -{sig} {pid}");
}

/// Sends `n` checkouts, one after another; returns the tickets of the 202s
/// and the statuses of the rest.
pub async fn admit(base: &str, n: usize, tag: &str) -> (Vec<String>, Vec<u16>) {
    let c = client();
    let (mut tickets, mut refused) = (Vec::new(), Vec::new());
    for i in 0..n {
        let a = send(
            &c,
            "POST",
            &format!("{base}/checkout"),
            &[],
            format!("{{\"{tag}\":{i}}}"),
        )
        .await;
        if a.status == 202 {
            tickets.push(a.json()["ticket"].as_str().unwrap().to_string());
        } else {
            refused.push(a.status.as_u16());
        }
    }
    (tickets, refused)
}

/// What happened to the tickets that were answered 202.
#[derive(Debug, Default)]
pub struct Outcome {
    pub admitted: usize,
    pub completed: usize,
    pub failed: usize,
    /// Answered 202 and never reached the upstream nor failed.
    pub lost: usize,
    /// Deliveries beyond the first, over all tickets.
    pub redelivered: usize,
}

/// Polls every ticket to a terminal state and checks it against what the
/// upstream received.
pub async fn outcome(base: &str, tickets: &[String], upstreams: &[&MockUpstream]) -> Outcome {
    let mut by_key: HashMap<String, usize> = HashMap::new();
    let mut out = Outcome {
        admitted: tickets.len(),
        ..Outcome::default()
    };
    for t in tickets {
        let done = until_terminal(base, t, Duration::from_secs(60)).await;
        match done["status"].as_str() {
            Some("completed") => out.completed += 1,
            Some("failed") => out.failed += 1,
            other => panic!("ticket {t} ended {other:?}"),
        }
    }
    for u in upstreams {
        for (k, v) in u.by_key() {
            *by_key.entry(k).or_default() += v.len();
        }
    }
    for t in tickets {
        match by_key.get(t) {
            None | Some(0) => out.lost += 1,
            Some(n) => out.redelivered += n - 1,
        }
    }
    out
}
