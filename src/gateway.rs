//! Assembles a running gateway from a [`Config`]: backends, drains, listeners,
//! gauges, and the order in which they stop.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::client::{ClientLimiter, FORGET_EVERY};
use crate::config::{redact_url, Config, QueueConfig, Route};
use crate::feed::TicketFeed;
use crate::knobs::{Knobs, WATCH_INTERVAL};
use crate::metrics::Metrics;
use crate::queue::{
    Change, MemoryQueue, Partitioned, QueueBackend, QueueError, RedisQueue, RedisQueueConfig,
};
use crate::ticket::{QueueTag, TicketClaim, TicketId, TicketSecret};
use crate::upstream::Upstream;
use crate::{drain, server};

/// How long one blocking read of the queue waits for an entry.
pub const READ_BLOCK: Duration = Duration::from_secs(1);
/// How often queue-wide gauges are refreshed from the backend.
const GAUGE_INTERVAL: Duration = Duration::from_secs(1);

/// One queue at run time: its settings, its id tag and its backend.
pub struct Queue {
    pub config: QueueConfig,
    pub tag: QueueTag,
    pub backend: Arc<dyn QueueBackend>,
    /// This instance's copy of the shared knobs, kept current by a watcher.
    pub knobs: watch::Sender<Knobs>,
    /// Wakes the clients waiting on a ticket when it changes.
    pub feed: Arc<TicketFeed>,
    /// Each partition's dispatched count as last seen (refreshed every
    /// second): positions for event streams without a call per client.
    dispatched: Vec<AtomicU64>,
}

impl Queue {
    /// A queue at run time, before anything has been read from its backend.
    pub fn new(config: QueueConfig, tag: QueueTag, backend: Arc<dyn QueueBackend>) -> Self {
        let partitions = backend.partitions().max(1);
        Queue {
            config,
            tag,
            backend,
            knobs: watch::Sender::new(Knobs::default()),
            feed: Arc::default(),
            dispatched: (0..partitions).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// This queue's routes at a normalized request path (module `path`),
    /// whatever their method.
    pub fn routes_at<'a>(&'a self, path: &'a str) -> impl Iterator<Item = &'a Route> + 'a {
        let fold = self.config.route_case_insensitive;
        self.config
            .routes
            .iter()
            .filter(move |r| crate::path::matches(&r.path, path, fold))
    }

    fn partitions(&self) -> u32 {
        self.dispatched.len() as u32
    }

    /// The dispatched count of a ticket's partition as last seen (it only
    /// grows).
    pub fn dispatched(&self, id: &TicketId) -> u64 {
        let p = id.partition(self.partitions()) as usize;
        self.dispatched[p].load(Ordering::Relaxed)
    }

    /// Records the dispatched count read with a ticket of this queue.
    pub fn saw_dispatched(&self, id: &TicketId, n: u64) {
        let p = id.partition(self.partitions()) as usize;
        self.dispatched[p].fetch_max(n, Ordering::Relaxed);
    }

    /// The rate a ticket's line moves at: the drain rate, shared evenly by
    /// the partitions.
    pub fn line_rate(&self, knobs: &Knobs) -> f64 {
        knobs.drain_rate(&self.config) / f64::from(self.partitions())
    }

    /// The knobs as this instance last saw them.
    pub fn knobs(&self) -> Knobs {
        self.knobs.borrow().clone()
    }

    /// Takes a newer view of the knobs (an older one, read before a change
    /// this instance already knows of, is ignored); true when something changed.
    pub fn update_knobs(&self, new: Knobs) -> bool {
        self.knobs.send_if_modified(|k| {
            let changed = new.version >= k.version && *k != new;
            if changed {
                *k = new;
            }
            changed
        })
    }
}

/// What request handlers share.
pub struct App {
    pub config: Config,
    pub queues: Vec<Arc<Queue>>,
    pub metrics: Arc<Metrics>,
    pub upstream: Upstream,
    /// Per-client admission limits; `None` when off.
    pub clients: Option<ClientLimiter>,
}

impl App {
    /// The queue that owns a normalized request path, whatever the method.
    pub fn queue_for_path(&self, path: &str) -> Option<&Arc<Queue>> {
        self.queues
            .iter()
            .find(|q| q.routes_at(path).next().is_some())
    }

    /// The queue that minted a presented ticket id, when its MAC verifies
    /// under that queue's key: forged, altered and other queues' (or other
    /// deployments') ids are `None`, all alike, before any backend look-up.
    pub fn queue_for_tag(&self, claim: TicketClaim) -> Option<&Arc<Queue>> {
        self.queues.iter().find(|q| q.tag.verify(&claim))
    }
}

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
    #[error("cannot agree on the ticket secret through Redis ({0}); pass --ticket-secret to start without it")]
    TicketSecret(QueueError),
}

/// A running gateway.
pub struct Gateway {
    pub public_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub app: Arc<App>,
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
                            },
                            READ_BLOCK,
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
                None => Arc::new(MemoryQueue::new(config.ticket_ttl)),
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
        let names: Vec<String> = queues.iter().map(|q| q.config.name.clone()).collect();
        let app = Arc::new(App {
            metrics: Arc::new(Metrics::new(&names)),
            upstream: Upstream::new(),
            clients: ClientLimiter::new(config.client_rate, config.client_burst),
            queues,
            config,
        });

        let shutdown = CancellationToken::new();
        let main = tokio::spawn(run(app.clone(), public, admin, shutdown.clone()));
        info!(%public_addr, %admin_addr, "flashgate listening");
        Ok(Gateway {
            public_addr,
            admin_addr,
            app,
            shutdown,
            main,
        })
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

async fn run(app: Arc<App>, public: TcpListener, admin: TcpListener, shutdown: CancellationToken) {
    let dispatches = TaskTracker::new();
    let stop_admin = CancellationToken::new();
    let mut drains = Vec::new();
    for q in &app.queues {
        drains.push(tokio::spawn(drain::run(
            q.clone(),
            app.clone(),
            dispatches.clone(),
            shutdown.clone(),
        )));
        tokio::spawn(refresh_gauges(
            q.clone(),
            app.metrics.clone(),
            stop_admin.clone(),
        ));
        tokio::spawn(watch_knobs(
            q.clone(),
            app.metrics.clone(),
            stop_admin.clone(),
        ));
        tokio::spawn(maintain(
            q.clone(),
            app.config.claim_idle,
            stop_admin.clone(),
        ));
        tokio::spawn(follow_changes(q.clone(), stop_admin.clone()));
    }
    if app.clients.is_some() {
        tokio::spawn(forget_idle_clients(app.clone(), stop_admin.clone()));
    }
    let public_server = tokio::spawn(server::serve_public(app.clone(), public, shutdown.clone()));
    let admin_server = tokio::spawn(server::serve_admin(app.clone(), admin, stop_admin.clone()));

    shutdown.cancelled().await;
    info!("shutting down: no new connections, no new reads from the queue");
    for d in drains {
        let _ = d.await;
    }
    dispatches.close();
    let grace = app.config.shutdown_grace;
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
    info!("stopped");
}

/// Keeps this instance's copy of the shared knobs current (a change made on
/// any instance shows here within `WATCH_INTERVAL`), and the governed-rate
/// gauge with it: 0 while paused.
async fn watch_knobs(queue: Arc<Queue>, metrics: Arc<Metrics>, stop: CancellationToken) {
    let name = queue.config.name.as_str();
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if let Ok(knobs) = queue.backend.knobs().await {
            let before = queue.knobs();
            if queue.update_knobs(knobs.clone()) {
                info!(queue = name, before = ?before, now = ?knobs, "queue knobs changed");
            }
        }
        let knobs = queue.knobs();
        let rate = if knobs.paused {
            0.0
        } else {
            knobs.drain_rate(&queue.config)
        };
        metrics
            .drain_rate_limit
            .with_label_values(&[name])
            .set(rate);
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Forgets clients whose rate limit has refilled, so memory stays bounded.
async fn forget_idle_clients(app: Arc<App>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(FORGET_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        if let Some(clients) = &app.clients {
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

/// Heartbeats this instance's entries and takes over abandoned ones, every
/// third of `claim_idle`, until the process stops.
async fn maintain(queue: Arc<Queue>, claim_idle: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(claim_idle / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        match queue.backend.maintain(claim_idle).await {
            Ok(()) if failing => {
                failing = false;
                info!(queue = %queue.config.name, "queue upkeep works again");
            }
            Ok(()) => {}
            Err(e) if !failing => {
                failing = true;
                warn!(queue = %queue.config.name, error = %e, "queue upkeep failed; retrying");
            }
            Err(_) => {}
        }
    }
}

/// Follows the backend's feed of ticket changes and wakes the clients
/// waiting on them; reconnects when the feed breaks (waiters then re-read on
/// the resync, so a change in the gap is not missed).
async fn follow_changes(queue: Arc<Queue>, stop: CancellationToken) {
    let name = queue.config.name.as_str();
    let mut failures = 0u32;
    loop {
        let feed = queue.feed.clone();
        let apply = move |change: Change<'_>| feed.apply(change);
        let started = tokio::time::Instant::now();
        let result = tokio::select! {
            r = queue.backend.follow_changes(&apply) => r,
            _ = stop.cancelled() => return,
        };
        // Changes may be missed until the next resync: polls read through.
        queue.feed.lost();
        // A feed that ran for a while was healthy: its loss is news again.
        if started.elapsed() > Duration::from_secs(10) {
            failures = 0;
        }
        failures += 1;
        if let Err(e) = result {
            if failures == 1 {
                warn!(queue = name, error = %e,
                    "ticket change feed lost: waiting clients fall back to their timeouts; reconnecting");
            }
        }
        let pause = Duration::from_millis(200 * u64::from(failures.min(10)));
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Keeps the queue-wide gauges current, one cheap backend call per interval.
async fn refresh_gauges(queue: Arc<Queue>, metrics: Arc<Metrics>, stop: CancellationToken) {
    let name = queue.config.name.as_str();
    let mut tick = tokio::time::interval(GAUGE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut up = true;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let stats = queue.backend.stats().await;
        // One line when the backend stops answering, one when it is back.
        match (&stats, up) {
            (Err(e), true) => {
                up = false;
                error!(queue = name, backend = queue.backend.kind(), error = %e,
                    "queue backend lost: admissions answer 503, the drain waits");
            }
            (Ok(_), false) => {
                up = true;
                info!(
                    queue = name,
                    backend = queue.backend.kind(),
                    "queue backend regained"
                );
            }
            _ => {}
        }
        metrics
            .queue_up
            .with_label_values(&[name])
            .set(i64::from(stats.is_ok()));
        metrics
            .waiters
            .with_label_values(&[name])
            .set(queue.feed.waiting_clients() as i64);
        if queue.partitions() > 1 {
            if let Ok(counts) = queue.backend.dispatched().await {
                for (seen, n) in queue.dispatched.iter().zip(counts) {
                    seen.fetch_max(n, Ordering::Relaxed);
                }
            }
        } else if let Ok(stats) = &stats {
            queue.dispatched[0].fetch_max(stats.dispatched, Ordering::Relaxed);
        }
        if let Ok(stats) = stats {
            metrics
                .queue_depth
                .with_label_values(&[name])
                .set(stats.depth as i64);
            metrics
                .queue_in_flight
                .with_label_values(&[name])
                .set(stats.in_flight as i64);
            metrics
                .queue_oldest_age
                .with_label_values(&[name])
                .set(stats.oldest_age.map_or(0.0, |d| d.as_secs_f64()));
        }
    }
}
