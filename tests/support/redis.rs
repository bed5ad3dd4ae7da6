//! A redis-server of the test's own, on a free port in a temp dir, stopped
//! by PID when dropped; and a Redis Cluster of them.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, Url};

/// A private redis-server.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    args: Vec<String>,
    tls: Option<Tls>,
    user: Option<(String, String)>,
}

/// A TLS-only server's CA, for the test's own client.
struct Tls {
    ca_pem: Vec<u8>,
}

/// How a [`Redis`] is started.
#[derive(Default)]
pub struct RedisBuilder {
    durable: bool,
    args: Vec<String>,
    tls: Option<(String, String, String)>,
    user: Option<(String, String)>,
}

impl RedisBuilder {
    /// AOF with an fsync on every write: a restart keeps every write that
    /// was answered. Without it nothing is persisted and a restart starts
    /// empty.
    pub fn durable(mut self) -> Self {
        self.durable = true;
        self
    }

    /// More `redis-server` arguments, after the defaults (the last wins).
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// TLS only: the free port is the TLS port (`--port 0`), with this
    /// certificate and key (PEM) and no client certificates.
    pub fn tls(mut self, cert: &Path, key: &Path, ca: &Path) -> Self {
        let path = |p: &Path| p.to_str().expect("UTF-8 path").to_string();
        self.tls = Some((path(cert), path(key), path(ca)));
        self
    }

    /// The `default` user off and one ACL user that may do anything; the
    /// URL carries its name and password.
    pub fn user(mut self, user: &str, password: &str) -> Self {
        self.user = Some((user.into(), password.into()));
        self
    }

    /// Starts it and waits until it answers PING.
    pub fn start(self) -> Redis {
        let persistence: &[&str] = match self.durable {
            true => &["--appendonly", "yes", "--appendfsync", "always"],
            false => &["--appendonly", "no"],
        };
        let mut args: Vec<String> = persistence.iter().map(|a| a.to_string()).collect();
        let port = free_port();
        let tls = self.tls.map(|(cert, key, ca)| {
            args.extend(["--tls-port".into(), port.to_string()]);
            args.extend(["--tls-cert-file".into(), cert]);
            args.extend(["--tls-key-file".into(), key]);
            args.extend(["--tls-ca-cert-file".into(), ca.clone()]);
            args.extend(["--tls-auth-clients".into(), "no".into()]);
            Tls {
                ca_pem: std::fs::read(ca).expect("CA certificate"),
            }
        });
        if let Some((user, password)) = &self.user {
            args.extend(["--user", "default", "off", "--user"].map(String::from));
            args.extend([user.clone(), "on".into(), format!(">{password}")]);
            args.extend(["~*", "&*", "+@all"].map(String::from));
        }
        args.extend(self.args);
        let mut server = Redis {
            port,
            child: None,
            dir: tempfile::tempdir().expect("temp dir"),
            args,
            tls,
            user: self.user,
        };
        server.spawn();
        server
    }
}

impl Redis {
    /// See [`RedisBuilder`].
    pub fn builder() -> RedisBuilder {
        RedisBuilder::default()
    }

    /// Nothing persisted, plain TCP, no password.
    pub fn start() -> Redis {
        Self::builder().start()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    fn spawn(&mut self) {
        // A TLS server listens on its TLS port only.
        let plain_port = match self.tls {
            Some(_) => 0,
            None => self.port,
        };
        let child = Command::new("redis-server")
            .args(["--port", &plain_port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(&self.args)
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(client) = self.client() {
                if let Ok(mut c) = client.get_connection() {
                    if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                        return;
                    }
                }
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A client of the test's own; a TLS server's CA is its only root (the
    /// test process's environment plays no part).
    pub fn client(&self) -> redis::RedisResult<redis::Client> {
        match &self.tls {
            None => redis::Client::open(self.url()),
            Some(t) => redis::Client::build_with_tls(
                self.url(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(t.ca_pem.clone()),
                },
            ),
        }
    }

    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        self.client()
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("connect to test redis")
    }

    /// A counter of `INFO stats`, read over a connection of its own.
    pub async fn stat(&self, field: &str) -> u64 {
        info_stat(&mut self.conn().await, field).await
    }

    /// Kills the server (SIGKILL): its data is gone, as after a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and directory.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Url for Redis {
    fn url(&self) -> String {
        Redis::url(self)
    }
}

impl Redis {
    /// `redis://127.0.0.1:PORT/`; `rediss://` for a TLS server, with the
    /// ACL user's name and password when there is one.
    pub fn url(&self) -> String {
        let scheme = match self.tls {
            Some(_) => "rediss",
            None => "redis",
        };
        let login = match &self.user {
            Some((user, password)) => format!("{user}:{password}@"),
            None => String::new(),
        };
        format!("{scheme}://{login}127.0.0.1:{}/", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A counter of `INFO stats` over this connection (the INFO call counts as
/// a command; no new connection is made).
pub async fn info_stat(conn: &mut redis::aio::MultiplexedConnection, field: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(conn)
        .await
        .expect("INFO stats");
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("INFO stats has no {field}"))
}

/// A Redis Cluster of the test's own: private redis-servers on free loopback
/// ports (data and cluster bus), joined with `redis-cli --cluster create`.
pub struct RedisCluster {
    pub nodes: Vec<Redis>,
}

impl RedisCluster {
    /// `masters` masters, no replicas, every write fsynced to an AOF so a
    /// restarted master comes back with its data.
    pub fn start(masters: usize) -> RedisCluster {
        let nodes: Vec<Redis> = (0..masters)
            .map(|_| {
                let bus = free_port().to_string();
                Redis::builder()
                    .durable()
                    .args(&["--cluster-enabled", "yes"])
                    .args(&["--cluster-config-file", "nodes.conf"])
                    .args(&["--cluster-node-timeout", "2000"])
                    .args(&["--cluster-port", &bus])
                    .start()
            })
            .collect();
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for n in &nodes {
            create.arg(format!("127.0.0.1:{}", n.port));
        }
        let out = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli must be installed (scripts/test installs redis-server)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = RedisCluster { nodes };
        cluster.wait_ok(Duration::from_secs(30));
        cluster
    }

    /// Waits until every node reports `cluster_state:ok`.
    pub fn wait_ok(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let ok = self
                .nodes
                .iter()
                .all(|n| node_command(n.port, &["CLUSTER", "INFO"]).contains("cluster_state:ok"));
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "the cluster did not become ok");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The keys each node holds itself.
    pub fn keys_by_node(&self, pattern: &str) -> Vec<Vec<String>> {
        self.nodes
            .iter()
            .map(|n| {
                node_command(n.port, &["KEYS", pattern])
                    .lines()
                    .filter(|l| !l.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .collect()
    }
}

impl Url for RedisCluster {
    fn url(&self) -> String {
        RedisCluster::url(self)
    }
}

impl RedisCluster {
    /// `redis+cluster://` URL naming every node as a seed.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }
}

/// One command to one node, answered as text (empty on failure).
fn node_command(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}
