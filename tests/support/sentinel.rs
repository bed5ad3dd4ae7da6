//! A Redis primary with one replica, watched by three Redis Sentinels, all
//! private processes on free loopback ports in temp dirs; stopped by PID
//! when dropped. Sentinel declares a primary down after
//! [`DOWN_AFTER_MS`] and fails over at once, so a failover takes seconds.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, Redis, Url};

/// The name the sentinels monitor the primary under.
pub const MASTER: &str = "flashgate-test";
/// Sentinel's `down-after-milliseconds`.
pub const DOWN_AFTER_MS: u64 = 1000;
/// Generous: a loaded machine starts processes and syncs replicas slowly.
const LIMIT: Duration = Duration::from_secs(60);

/// One `redis-sentinel` process with its config file.
pub struct Sentinel {
    pub port: u16,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

/// A primary, its replica and three sentinels.
pub struct SentinelSetup {
    /// The two servers; which one is the primary changes with a failover
    /// ([`SentinelSetup::primary`]).
    pub servers: Vec<Redis>,
    pub sentinels: Vec<Sentinel>,
}

impl SentinelSetup {
    /// A primary with no persistence and one replica, and three sentinels
    /// (quorum 2) that know both and each other.
    pub fn start() -> SentinelSetup {
        Self::start_with(&[])
    }

    /// [`SentinelSetup::start`] with more `redis-server` arguments for both
    /// servers (`--appendonly yes`, …).
    pub fn start_with(args: &[&str]) -> SentinelSetup {
        let primary = Redis::builder().args(args).start();
        let replica = Redis::builder()
            .args(args)
            .args(&["--replicaof", "127.0.0.1", &primary.port.to_string()])
            .start();
        let sentinels = (0..3).map(|_| Sentinel::start(primary.port)).collect();
        let setup = SentinelSetup {
            servers: vec![primary, replica],
            sentinels,
        };
        setup.wait_ready(0);
        setup
    }

    /// `redis+sentinel://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3/flashgate-test`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        format!("redis+sentinel://{}/{MASTER}", hosts.join(","))
    }

    /// The index in `servers` of the primary the sentinels name now.
    pub fn primary(&self) -> usize {
        let port = self.named_primary().expect("a sentinel names the primary");
        self.index_of(port)
    }

    /// The index of the other server: the replica.
    pub fn replica(&self) -> usize {
        1 - self.primary()
    }

    fn index_of(&self, port: u16) -> usize {
        self.servers
            .iter()
            .position(|s| s.port == port)
            .unwrap_or_else(|| panic!("port {port} is none of the servers"))
    }

    /// The primary's port as the first sentinel that answers names it.
    fn named_primary(&self) -> Option<u16> {
        self.sentinels.iter().find_map(|s| {
            let out = cli(s.port, &["SENTINEL", "get-master-addr-by-name", MASTER]);
            out.lines().nth(1)?.trim().parse().ok()
        })
    }

    /// `kill -9` of the primary; answers its index.
    pub fn kill_primary(&mut self) -> usize {
        let primary = self.primary();
        self.servers[primary].kill();
        primary
    }

    /// Waits until every sentinel names another primary than `old` (an
    /// index) and that server says it is the primary; answers its index.
    pub fn wait_for_promotion(&self, old: usize) -> usize {
        let old_port = self.servers[old].port;
        let deadline = Instant::now() + LIMIT;
        loop {
            let named: Vec<Option<u16>> = self
                .sentinels
                .iter()
                .map(|s| {
                    let out = cli(s.port, &["SENTINEL", "get-master-addr-by-name", MASTER]);
                    out.lines().nth(1)?.trim().parse().ok()
                })
                .collect();
            if let Some(Some(port)) = named.first() {
                if *port != old_port
                    && named.iter().all(|n| *n == Some(*port))
                    && cli(*port, &["ROLE"]).starts_with("master")
                {
                    return self.index_of(*port);
                }
            }
            assert!(
                Instant::now() < deadline,
                "no promotion within {LIMIT:?}: sentinels name {named:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts server `index` again (same port, arguments and directory)
    /// and waits until it replicates the primary the sentinels name (the
    /// sentinels turn a returning old primary into a replica).
    pub fn restart(&mut self, index: usize) {
        self.servers[index].restart();
        let primary = self.primary();
        assert_ne!(primary, index, "the restarted server is no primary");
        self.wait_replicating(index, primary);
    }

    /// Waits until server `index` is a replica of `primary` with its link
    /// up, and `primary` counts it.
    fn wait_replicating(&self, index: usize, primary: usize) {
        let (port, primary_port) = (self.servers[index].port, self.servers[primary].port);
        let deadline = Instant::now() + LIMIT;
        loop {
            let info = cli(port, &["INFO", "replication"]);
            let primary_info = cli(primary_port, &["INFO", "replication"]);
            if info.contains(&format!("master_port:{primary_port}"))
                && info.contains("master_link_status:up")
                && primary_info.contains(&format!("port={port},state=online"))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "server {index} did not replicate the primary within {LIMIT:?}:\n{info}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the replica is in sync and every sentinel knows the
    /// replica and the two other sentinels (a failover needs both).
    fn wait_ready(&self, primary: usize) {
        self.wait_replicating(1 - primary, primary);
        let deadline = Instant::now() + LIMIT;
        for s in &self.sentinels {
            loop {
                let out = cli(s.port, &["SENTINEL", "master", MASTER]);
                let field = |name: &str| {
                    let lines: Vec<&str> = out.lines().collect();
                    lines
                        .iter()
                        .position(|l| l.trim() == name)
                        .and_then(|i| lines.get(i + 1))
                        .and_then(|v| v.trim().parse::<u32>().ok())
                        .unwrap_or(0)
                };
                if field("num-slaves") >= 1 && field("num-other-sentinels") >= 2 {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "sentinel {} is not ready within {LIMIT:?}:\n{out}",
                    s.port
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

impl Url for SentinelSetup {
    fn url(&self) -> String {
        SentinelSetup::url(self)
    }
}

impl Sentinel {
    fn start(primary_port: u16) -> Sentinel {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndaemonize no\ndir {dir}\n\
                 sentinel monitor {MASTER} 127.0.0.1 {primary_port} 2\n\
                 sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}\n\
                 sentinel failover-timeout {MASTER} 10000\n\
                 sentinel parallel-syncs {MASTER} 1\n",
                dir = dir.path().display()
            ),
        )
        .expect("sentinel.conf");
        let child = Command::new("redis-sentinel")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-sentinel must be installed (scripts/test installs it)");
        let deadline = Instant::now() + LIMIT;
        while !cli(port, &["PING"]).starts_with("PONG") {
            assert!(Instant::now() < deadline, "redis-sentinel did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Sentinel {
            port,
            child: Some(child),
            _dir: dir,
        }
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One command to one loopback server or sentinel, answered as text
/// (empty on failure).
fn cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}
