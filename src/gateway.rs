//! Assembles a running gateway from a [`Config`]: backends, drains, listeners,
//! gauges, and the order in which they stop.

mod reload;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::api::App;
use crate::backend::{
    EventSettings, MemoryQueue, Partitioned, QueueBackend, QueueError, RedisQueue, RedisQueueConfig,
};
use crate::config::{redact_url, Config, Durability};
use crate::http::client::FORGET_EVERY;
use crate::metrics::Metrics;
use crate::queue::upkeep::{self, Every};
use crate::queue::Queue;
use crate::server::access_log::AccessLog;
use crate::server::tls::{Tls, TlsError};
use crate::ticket::{QueueTag, TicketSecret};
use crate::upstream::{HttpUpstream, Upstream};
use crate::{drain, server};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot agree on the ticket secret through Redis ({0}); pass --ticket-secret to start without it")]
    TicketSecret(QueueError),
    #[error("cannot open the access log: {0}")]
    AccessLog(std::io::Error),
}

/// A running gateway.
pub struct Gateway {
    pub public_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The health listener's address, when `health_listen` is set.
    pub health_addr: Option<SocketAddr>,
    pub app: Arc<App>,
    /// The public listener's certificate with `--tls-cert`: `reload()`
    /// reads its files again for the next handshakes.
    pub tls: Option<Arc<Tls>>,
    /// The access log, when on: `reopen_access_log()` opens its file again.
    access_log: Option<Arc<AccessLog>>,
    shutdown: CancellationToken,
    main: JoinHandle<()>,
}

/// Pending connections a listener holds before the kernel drops SYNs (it
/// caps this at `net.core.somaxconn`).
const LISTEN_BACKLOG: u32 = 4096;

/// Binds and listens with `LISTEN_BACKLOG`: `TcpListener::bind` asks for
/// 128, and a flash sale opens hundreds of connections at once. Beyond the
/// backlog the kernel drops their SYNs (`ListenOverflows` in `nstat`) and
/// each such client waits out the 1 s SYN retransmission timeout.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // As `TcpListener::bind` does: a restart rebinds at once.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

impl Gateway {
    /// Binds both listeners, connects the backends and starts draining.
    pub async fn start(config: Config) -> Result<Gateway, StartError> {
        let public = listen(config.listen).map_err(|source| StartError::Bind {
            what: "public listener",
            addr: config.listen,
            source,
        })?;
        let admin = listen(config.admin_listen).map_err(|source| StartError::Bind {
            what: "admin listener",
            addr: config.admin_listen,
            source,
        })?;
        let health = match config.health_listen {
            Some(addr) => {
                let bind = |source| StartError::Bind {
                    what: "health listener",
                    addr,
                    source,
                };
                let listener = listen(addr).map_err(bind)?;
                let bound = listener.local_addr().map_err(bind)?;
                Some((listener, bound))
            }
            None => None,
        };
        let health_addr = health.as_ref().map(|(_, addr)| *addr);
        let public_addr = public.local_addr().map_err(|source| StartError::Bind {
            what: "public listener",
            addr: config.listen,
            source,
        })?;
        let admin_addr = admin.local_addr().map_err(|source| StartError::Bind {
            what: "admin listener",
            addr: config.admin_listen,
            source,
        })?;

        // The certificate is read before anything connects: a bad one stops
        // the start with the file's name.
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(Arc::new(Tls::load(cert.as_ref(), key.as_ref())?)),
            _ => None,
        };

        match &config.redis_url {
            Some(url) => info!(
                backend = "redis",
                url = %redact_url(url),
                consumer = %config.consumer,
                "queue backend: Redis streams (shared by every instance, durable as the Redis server is)"
            ),
            None => warn!(
                backend = "embedded",
                "queue backend: embedded in-process queue: NOT shared between instances and LOST when this process exits; pass --redis-url for a durable queue"
            ),
        }
        let secret = ticket_secret(&config).await?;
        let mut queues = Vec::new();
        for q in &config.queue {
            let backend: Arc<dyn QueueBackend> = match &config.redis_url {
                Some(url) => {
                    let mut parts = Vec::new();
                    for partition in 0..q.partitions {
                        parts.push(Arc::new(RedisQueue::connect(
                            &RedisQueueConfig {
                                url: url.clone(),
                                prefix: config.redis_prefix.clone(),
                                queue: q.name.clone(),
                                consumer: config.consumer.clone(),
                                ticket_ttl: config.ticket_ttl,
                                partition,
                                partitions: q.partitions,
                                events: q.events.then_some(q.events_retention),
                                replicated: (config.durability == Durability::Replicated)
                                    .then_some(config.durability_timeout),
                            },
                            drain::READ_BLOCK,
                        )?));
                    }
                    if queues.is_empty() {
                        tokio::spawn(warn_about_durability(parts[0].clone()));
                    }
                    if parts.len() == 1 {
                        parts.remove(0)
                    } else {
                        let parts = parts
                            .into_iter()
                            .map(|p| p as Arc<dyn QueueBackend>)
                            .collect();
                        Arc::new(Partitioned::new(parts))
                    }
                }
                None => {
                    let memory = MemoryQueue::new(config.ticket_ttl);
                    Arc::new(match q.events {
                        true => memory.with_events(EventSettings {
                            queue: q.name.clone(),
                            retention: q.events_retention,
                        }),
                        false => memory,
                    })
                }
            };
            info!(
                queue = %q.name,
                routes = %q.routes.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(", "),
                upstream = %redact_url(&q.upstream),
                drain_rate = q.drain_rate,
                partitions = q.partitions,
                max_in_flight = q.max_in_flight,
                "queue ready"
            );
            queues.push(Arc::new(Queue::new(
                q.clone(),
                QueueTag::new(&secret, &q.name),
                backend,
            )));
        }
        let names: Vec<String> = queues.iter().map(|q| q.name.clone()).collect();
        let metrics = Arc::new(Metrics::new(&names));
        let access_log = AccessLog::start(
            &config.access_log,
            config.access_log_format,
            config.access_log_buffer,
            metrics.access_log_dropped.clone(),
        )
        .map_err(StartError::AccessLog)?;
        let app = Arc::new(App::new(config, queues, metrics, HttpUpstream::new()));

        let shutdown = CancellationToken::new();
        let listeners = Listeners {
            public,
            admin,
            health: health.map(|(listener, _)| listener),
        };
        let main = tokio::spawn(run(
            app.clone(),
            listeners,
            tls.clone(),
            access_log.clone(),
            shutdown.clone(),
        ));
        let scheme = if tls.is_some() { "https" } else { "http" };
        match health_addr {
            Some(health_addr) => {
                info!(%public_addr, %admin_addr, %health_addr, scheme, "flashgate listening")
            }
            None => info!(%public_addr, %admin_addr, scheme, "flashgate listening"),
        }
        Ok(Gateway {
            public_addr,
            admin_addr,
            health_addr,
            app,
            tls,
            access_log,
            shutdown,
            main,
        })
    }

    /// Opens the access log file again, for the lines from now on (SIGUSR1,
    /// after logrotate moved the file away).
    pub fn reopen_access_log(&self) {
        if let Some(log) = &self.access_log {
            log.reopen();
        }
    }

    /// Starts a graceful shutdown: stop accepting, stop reading the queue,
    /// let in-flight upstream requests finish within the grace period.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Waits until everything has stopped.
    pub async fn wait(self) {
        let _ = self.main.await;
    }
}

/// How long start-up keeps trying to read or create the shared ticket secret.
const SECRET_DEADLINE: Duration = Duration::from_secs(10);

/// The secret ticket MACs derive from: configured; else shared through Redis
/// (the first instance to start creates it, every other one reads it), so
/// any instance can check any instance's tickets; else, with the embedded
/// queue (which no other process shares), a fresh one for this process.
async fn ticket_secret(config: &Config) -> Result<TicketSecret, StartError> {
    if let Some(s) = &config.ticket_secret {
        return Ok(TicketSecret::new(s.as_bytes()));
    }
    let Some(url) = &config.redis_url else {
        return Ok(TicketSecret::random());
    };
    let candidate = TicketSecret::random().to_hex();
    let deadline = tokio::time::Instant::now() + SECRET_DEADLINE;
    loop {
        match RedisQueue::shared_ticket_secret(url, &config.redis_prefix, &candidate).await {
            Ok(shared) => return Ok(TicketSecret::new(shared)),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(StartError::TicketSecret(e))
            }
            Err(e) => {
                warn!(error = %e, "cannot read the shared ticket secret yet; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// The bound listeners a gateway serves.
struct Listeners {
    public: TcpListener,
    admin: TcpListener,
    health: Option<TcpListener>,
}

async fn run(
    app: Arc<App>,
    listeners: Listeners,
    tls: Option<Arc<Tls>>,
    access_log: Option<Arc<AccessLog>>,
    shutdown: CancellationToken,
) {
    let Listeners {
        public,
        admin,
        health,
    } = listeners;
    let dispatches = TaskTracker::new();
    let stop_admin = CancellationToken::new();
    let mut drains = Vec::new();
    // The drains send through the passthrough's pooled client.
    let upstream: Arc<dyn Upstream> = Arc::new(app.upstream.clone());
    for q in &app.queues {
        drains.push(tokio::spawn(drain::run(
            q.clone(),
            upstream.clone(),
            app.metrics.clone(),
            dispatches.clone(),
            shutdown.clone(),
        )));
        tokio::spawn(upkeep::refresh_gauges(
            q.clone(),
            app.metrics.clone(),
            stop_admin.clone(),
        ));
        tokio::spawn(upkeep::watch_knobs(
            q.clone(),
            app.metrics.clone(),
            stop_admin.clone(),
        ));
        tokio::spawn(upkeep::maintain(
            q.clone(),
            app.config().claim_idle,
            stop_admin.clone(),
        ));
        tokio::spawn(upkeep::follow_changes(q.clone(), stop_admin.clone()));
        tokio::spawn(upkeep::tend_stream(
            q.clone(),
            app.metrics.clone(),
            stop_admin.clone(),
        ));
        tokio::spawn(upkeep::count_dead_letters(
            q.clone(),
            app.metrics.clone(),
            stop_admin.clone(),
        ));
    }
    // Also when off: a reload may turn the limits on.
    tokio::spawn(forget_idle_clients(app.clone(), stop_admin.clone()));
    let public_server = tokio::spawn(server::serve_public(
        app.clone(),
        public,
        tls,
        access_log.clone(),
        shutdown.clone(),
    ));
    let admin_server = tokio::spawn(server::serve_admin(
        app.clone(),
        admin,
        access_log.clone(),
        stop_admin.clone(),
    ));
    let health_server = health.map(|health| {
        tokio::spawn(server::serve_health(
            app.clone(),
            health,
            access_log,
            stop_admin.clone(),
        ))
    });

    shutdown.cancelled().await;
    info!("shutting down: no new connections, no new reads from the queue");
    for d in drains {
        let _ = d.await;
    }
    dispatches.close();
    let grace = app.config().shutdown_grace;
    if tokio::time::timeout(grace, dispatches.wait())
        .await
        .is_err()
    {
        warn!(
            in_flight = dispatches.len(),
            ?grace,
            "grace period over: unfinished entries stay pending and are redelivered by the next start"
        );
    }
    let _ = tokio::time::timeout(grace, public_server).await;
    stop_admin.cancel();
    let _ = admin_server.await;
    if let Some(health_server) = health_server {
        let _ = health_server.await;
    }
    info!("stopped");
}

/// Forgets clients whose rate limit has refilled, so memory stays bounded.
async fn forget_idle_clients(app: Arc<App>, stop: CancellationToken) {
    let mut every = Every::new(FORGET_EVERY, stop);
    while every.tick().await {
        if let Some(clients) = &*app.clients.load() {
            clients.forget_idle();
        }
    }
}

/// Says once, at start, what the Redis server's settings can lose.
async fn warn_about_durability(redis: Arc<RedisQueue>) {
    for warning in redis.durability_warnings().await {
        warn!("{warning}");
    }
}
