//! The built `flashgate` binary serving, as a child process; killed by PID
//! when its handle drops.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::{eventually, flashgate, free_port, signal, try_get, Client, GatewayBuilder};

/// A `flashgate serve` process on loopback ports.
pub struct GatewayProcess {
    child: Child,
    pub public: u16,
    pub admin: u16,
    /// Its stderr, line by line, when captured.
    lines: Option<mpsc::Receiver<String>>,
    /// Holds the config file of a builder with TOML.
    _dir: Option<tempfile::TempDir>,
}

impl GatewayProcess {
    pub(super) fn spawn(b: GatewayBuilder) -> GatewayProcess {
        let (public, admin) = b.ports.unwrap_or_else(|| (free_port(), free_port()));
        let upstream = b.upstream.as_deref().expect("an upstream");
        let mut command = flashgate();
        command
            .args(["serve", "--upstream", upstream])
            .args(["--listen", &format!("127.0.0.1:{public}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin}")]);
        if let Some(redis) = &b.redis {
            let consumer = b.consumer.clone();
            let consumer = consumer.unwrap_or_else(|| format!("test-{}", free_port()));
            command
                .args(["--redis-url", redis])
                .args(["--consumer", &consumer]);
        }
        let dir = (!b.toml.is_empty()).then(|| {
            let dir = tempfile::tempdir().expect("temp dir");
            let file = dir.path().join("flashgate.toml");
            std::fs::write(&file, &b.toml).expect("config file");
            command.arg("--config").arg(&file);
            dir
        });
        command.args(&b.args);
        for (key, value) in &b.env {
            match value {
                Some(value) => command.env(key, value),
                None => command.env_remove(key),
            };
        }
        if let Some(filter) = b.log.clone().unwrap_or(Some("warn".into())) {
            command.env("FLASHGATE_LOG", filter);
        }
        match &b.log_file {
            Some(path) => {
                let out = File::create(path).expect("log file");
                let err = out.try_clone().expect("log file handle");
                command.stdout(out).stderr(err);
            }
            None => {
                command.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        if b.capture_stderr {
            command.stderr(Stdio::piped());
        }
        let mut child = command.spawn().expect("the flashgate binary starts");
        let lines = child.stderr.take().map(|stderr| {
            let (tx, lines) = mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        return;
                    }
                }
            });
            lines
        });
        GatewayProcess {
            child,
            public,
            admin,
            lines,
            _dir: dir,
        }
    }

    /// A typed client of this gateway.
    pub fn client(&self) -> Client {
        let at = |port: u16| std::net::SocketAddr::from(([127, 0, 0, 1], port));
        Client::new(at(self.public), at(self.admin))
    }

    /// The public listener's address.
    pub fn public_addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.public))
    }

    /// `http://127.0.0.1:PORT` of the public listener.
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.public)
    }

    /// Waits until `/healthz` answers (the backend may still be down).
    pub async fn up(&self) {
        healthy(self.admin).await;
    }

    /// The config file the builder's TOML was written to (rewrite it, then
    /// SIGHUP, to reload).
    pub fn config_file(&self) -> std::path::PathBuf {
        let dir = self._dir.as_ref().expect("a builder with .toml()");
        dir.path().join("flashgate.toml")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: &str) {
        signal(self.child.id(), sig);
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
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

    /// Resident memory, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("/proc is readable");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc status")
    }

    fn lines(&self) -> &mpsc::Receiver<String> {
        self.lines
            .as_ref()
            .expect("stderr captured (.capture_stderr())")
    }

    /// Stderr lines until one satisfies `stop` (included), within 20 s.
    pub fn read_until(&mut self, stop: impl Fn(&str) -> bool) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines().recv_timeout(left) {
                Ok(line) => {
                    let done = stop(&line);
                    out.push(line);
                    if done {
                        return out;
                    }
                }
                Err(e) => panic!("stderr ended or stalled ({e}) after:\n{}", out.join("\n")),
            }
        }
    }

    /// SIGTERM, then every remaining stderr line and the exit status.
    pub fn terminate(&mut self) -> (Vec<String>, ExitStatus) {
        self.signal("TERM");
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while let Ok(line) = self
            .lines()
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            out.push(line);
        }
        let status = self.child.wait().expect("flashgate exits");
        (out, status)
    }
}

/// Waits until the `/healthz` of the admin listener on `port` answers: a
/// future that holds no [`GatewayProcess`] (whose stderr receiver is not
/// `Sync`), so a spawned task can await it.
pub async fn healthy(port: u16) {
    let url = format!("http://127.0.0.1:{port}/healthz");
    eventually(Duration::from_secs(20), "gateway up", || async {
        try_get(&url).await.filter(|a| a.status == 200).map(|_| ())
    })
    .await;
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
