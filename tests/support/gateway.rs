//! A gateway for a test: one builder, started in this process
//! ([`GatewayBuilder::start`]) or as the built binary
//! ([`GatewayBuilder::process`]); shut down when its handle drops.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use flashgate::api::App;
use flashgate::config::Config;

use super::{free_port, Client, GatewayProcess, Redis, Url};

/// The queue backend a test runs over (see [`backends!`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Backend {
    /// The in-process queue.
    Embedded,
    /// Redis streams, on a private redis-server.
    Redis,
    /// Three partitions on a private redis-server.
    Partitioned,
}

/// Runs an `async fn NAME(backend: Backend)` as one test per backend,
/// `NAME::embedded`, `NAME::redis` and `NAME::partitioned`; or over the
/// backends listed: `backends!(NAME: embedded, redis)`.
macro_rules! backends {
    ($test:ident) => {
        $crate::support::backends!($test: embedded, redis, partitioned);
    };
    ($test:ident: $($backend:ident),+) => {
        mod $test {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $backend() {
                    super::$test($crate::support::backends!(@ $backend)).await;
                }
            )+
        }
    };
    (@ embedded) => { $crate::support::Backend::Embedded };
    (@ redis) => { $crate::support::Backend::Redis };
    (@ partitioned) => { $crate::support::Backend::Partitioned };
}
pub(crate) use backends;

/// How a gateway is configured and run. Clone it to start the same gateway
/// again (say, on the same ports after a crash).
#[derive(Clone, Default)]
pub struct GatewayBuilder {
    pub(super) toml: String,
    pub(super) upstream: Option<String>,
    pub(super) redis: Option<String>,
    backend: Option<Backend>,
    // The built binary only:
    pub(super) args: Vec<String>,
    /// Set (`Some`) or removed (`None`).
    pub(super) env: Vec<(String, Option<String>)>,
    pub(super) consumer: Option<String>,
    pub(super) ports: Option<(u16, u16)>,
    /// FLASHGATE_LOG, the binary's log filter: `warn` unless set; `None`
    /// leaves `--log-level` and the environment to decide.
    pub(super) log: Option<Option<String>>,
    pub(super) log_file: Option<PathBuf>,
    pub(super) capture_stderr: bool,
}

impl GatewayBuilder {
    /// More TOML settings (after the test defaults: loopback listeners on
    /// ephemeral ports, a 5 s shutdown grace).
    pub fn toml(mut self, toml: &str) -> Self {
        self.toml.push_str(toml);
        self
    }

    /// The order service: a [`MockUpstream`](super::MockUpstream) or a URL.
    pub fn upstream(mut self, upstream: &(impl Url + ?Sized)) -> Self {
        self.upstream = Some(upstream.url());
        self
    }

    /// A Redis of the test's own, a cluster, or a URL.
    pub fn redis(mut self, redis: &(impl Url + ?Sized)) -> Self {
        self.redis = Some(redis.url());
        self
    }

    /// The queue backend; Redis and Partitioned start a private
    /// redis-server that the gateway handle owns ([`Gateway::redis`]).
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = Some(backend);
        self
    }

    /// The configuration an in-process gateway gets.
    pub fn config(&self) -> Config {
        let mut text = String::from(
            "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nshutdown_grace = \"5s\"\n",
        );
        let upstream = self.upstream.as_deref().expect("an upstream");
        text.push_str(&format!("upstream = \"{upstream}\"\n"));
        if let Some(url) = &self.redis {
            text.push_str(&format!("redis_url = \"{url}\"\n"));
            let consumer = self.consumer.clone();
            let consumer = consumer.unwrap_or_else(|| format!("test-{}", free_port()));
            text.push_str(&format!("consumer = \"{consumer}\"\n"));
        }
        if self.backend == Some(Backend::Partitioned) {
            text.push_str("partitions = 3\n");
        }
        text.push_str(&self.toml);
        Config::from_toml(&text).expect("test config is valid")
    }

    /// Starts the gateway in this process.
    pub async fn start(mut self) -> Gateway {
        assert!(
            self.args.is_empty() && self.env.is_empty(),
            "flags and environment are for .process()"
        );
        let redis = self.backend_redis();
        let config = self.config();
        let gateway = flashgate::Gateway::start(config)
            .await
            .expect("gateway starts");
        Gateway {
            public_addr: gateway.public_addr,
            admin_addr: gateway.admin_addr,
            gateway: Some(gateway),
            redis,
        }
    }

    /// Starts the private Redis a backend needs.
    fn backend_redis(&mut self) -> Option<Redis> {
        match self.backend {
            Some(Backend::Redis | Backend::Partitioned) => {
                let redis = Redis::start();
                self.redis = Some(redis.url());
                Some(redis)
            }
            _ => None,
        }
    }
}

/// A gateway running in this process. Dropping it shuts it down and waits
/// until it has stopped (on the test's multi-thread runtime).
pub struct Gateway {
    pub public_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    gateway: Option<flashgate::Gateway>,
    /// The backend's own Redis, dropped after the gateway stopped.
    redis: Option<Redis>,
}

impl Gateway {
    /// See [`GatewayBuilder`].
    pub fn builder() -> GatewayBuilder {
        GatewayBuilder::default()
    }

    /// A typed client of this gateway.
    pub fn client(&self) -> Client {
        Client::new(self.public_addr, self.admin_addr)
    }

    /// `http://127.0.0.1:PORT` of the public listener.
    pub fn base(&self) -> String {
        format!("http://{}", self.public_addr)
    }

    /// The running application: its queues, feed and metrics.
    pub fn app(&self) -> &Arc<App> {
        &self.gateway.as_ref().expect("running").app
    }

    /// Reloads it with `config`, as a SIGHUP with a changed file would;
    /// true when applied.
    pub fn reload(&self, config: Config) -> bool {
        let gateway = self.gateway.as_ref().expect("running");
        gateway.reload(|| Ok(config))
    }

    /// The private Redis its backend runs on, if it has one.
    pub fn redis(&self) -> Option<&Redis> {
        self.redis.as_ref()
    }

    /// Shuts down gracefully and waits until everything has stopped.
    pub async fn stop(mut self) {
        if let Some(gateway) = self.gateway.take() {
            gateway.shutdown();
            gateway.wait().await;
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let Some(gateway) = self.gateway.take() else {
            return;
        };
        gateway.shutdown();
        // Awaiting in a destructor takes blocking the thread, which only a
        // multi-thread runtime allows (its workers run the shutdown); nor is
        // it done while a failed test unwinds. Elsewhere the runtime ends
        // the cancelled tasks when the test returns.
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if multi_thread && !std::thread::panicking() {
            tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(gateway.wait());
            });
        }
    }
}

impl GatewayBuilder {
    /// Starts the built binary with these settings and waits until its
    /// `/healthz` answers.
    pub async fn process(self) -> GatewayProcess {
        let gw = self.spawn();
        gw.up().await;
        gw
    }

    /// Starts the built binary without waiting for it (to watch it fail,
    /// or read its log from the start).
    pub fn spawn(self) -> GatewayProcess {
        GatewayProcess::spawn(self)
    }

    /// More `flashgate serve` flags.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// An environment variable of the process.
    pub fn env(mut self, key: &str, value: &(impl AsRef<std::ffi::OsStr> + ?Sized)) -> Self {
        let value = value.as_ref().to_string_lossy().into_owned();
        self.env.push((key.into(), Some(value)));
        self
    }

    /// Removes an environment variable the test process has.
    pub fn env_remove(mut self, key: &str) -> Self {
        self.env.push((key.into(), None));
        self
    }

    /// The consumer name in the Redis group (a fresh one unless set); a
    /// restart under the same name takes back what it held.
    pub fn consumer(mut self, consumer: &str) -> Self {
        self.consumer = Some(consumer.into());
        self
    }

    /// Listens on these loopback ports (public, admin) instead of free ones.
    pub fn ports(mut self, public: u16, admin: u16) -> Self {
        self.ports = Some((public, admin));
        self
    }

    /// FLASHGATE_LOG (the log filter); `None` leaves it unset.
    pub fn log(mut self, filter: Option<&str>) -> Self {
        self.log = Some(filter.map(String::from));
        self
    }

    /// Writes stdout and stderr to this file (else they are discarded).
    pub fn log_file(mut self, path: &std::path::Path) -> Self {
        self.log_file = Some(path.into());
        self
    }

    /// Pipes stderr to the test, line by line
    /// ([`GatewayProcess::read_until`], [`GatewayProcess::terminate`]).
    pub fn capture_stderr(mut self) -> Self {
        self.capture_stderr = true;
        self
    }
}
