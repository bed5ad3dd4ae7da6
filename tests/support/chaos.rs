//! Chaos under load (issue 22): one scenario, run bounded by `tests/chaos.rs`
//! and for minutes by `scripts/chaos`. A burst of admissions from many
//! connections into two gateway processes on one redis-server (AOF,
//! `appendfsync always`) — or, when [`Fault::Failover`] is among the faults,
//! on a Sentinel setup (a primary and its replica, both AOF with `appendfsync
//! always`, three sentinels; the gateways use its `redis+sentinel://` URL) —
//! during which the faults of [`Fault`] strike one after another; then every
//! ticket is followed to its end and checked against what the recording
//! upstream received.

mod report;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::load::{Admission, Attempts, Shopper, TicketState};
use super::process::healthy;
use super::{
    raise_open_files_limit, Gateway, GatewayBuilder, GatewayProcess, MockUpstream, Redis,
    SentinelSetup, UpstreamControl,
};
pub use report::ChaosReport;

/// One fault, struck while the burst runs; each is one arm of
/// `Chaos::strike`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `kill -9` of the second gateway, restarted at once under its name.
    KillGateway,
    /// `kill -9` of redis-server, restarted on its AOF after `redis_down`.
    /// Single redis-server only.
    KillRedis,
    /// `kill -9` of the Redis primary of a Sentinel setup; once Sentinel
    /// has promoted the replica the next fault may strike, while the old
    /// primary is restarted and becomes the new one's replica (a resync of
    /// seconds, in which `replicated` has no replica and answers 503). With `--durability local` the 202s the replica had not
    /// received are lost (counted, not failed: [`ChaosReport::assert_holds`]).
    Failover,
    /// The upstream answers 503 for `upstream_refusing`, then each answer
    /// takes `slow_by` for `upstream_slow`.
    UpstreamOutage,
}

/// The scenario's parameters.
#[derive(Debug, Clone)]
pub struct Chaos {
    pub admissions: usize,
    pub connections: usize,
    /// `--drain-rate`, the rate the upstream may see.
    pub rate: u32,
    /// `--durability` of both gateways; `None` leaves the default.
    pub durability: Option<String>,
    /// In this order, spread over the burst.
    pub faults: Vec<Fault>,
    pub redis_down: Duration,
    pub upstream_refusing: Duration,
    pub upstream_slow: Duration,
    pub slow_by: Duration,
}

impl Chaos {
    /// The suite's run: 20 000 admissions at 128 connections, 1000/s (a
    /// debug gateway on a busy 2-core machine drains less, so the run ends
    /// when the machine allows; on a fast one the rate binds).
    pub fn bounded() -> Chaos {
        Chaos {
            admissions: 20_000,
            connections: 128,
            rate: 1000,
            durability: None,
            faults: vec![Fault::KillGateway, Fault::KillRedis, Fault::UpstreamOutage],
            redis_down: Duration::from_secs(1),
            upstream_refusing: Duration::from_secs(3),
            upstream_slow: Duration::from_secs(3),
            slow_by: Duration::from_millis(200),
        }
    }

    /// `base`, with what the environment sets: CHAOS_ADMISSIONS,
    /// CHAOS_CONNECTIONS, CHAOS_RATE, CHAOS_DURABILITY, and CHAOS_REDIS
    /// (`single`: the faults of [`Chaos::bounded`]; `sentinel`: those of
    /// [`Chaos::bounded_failover`]).
    pub fn from_env(base: Chaos) -> Chaos {
        fn var<T: std::str::FromStr>(key: &str) -> Option<T> {
            let v = std::env::var(key).ok()?;
            Some(
                v.parse()
                    .unwrap_or_else(|_| panic!("{key}={v} is not valid")),
            )
        }
        Chaos {
            admissions: var("CHAOS_ADMISSIONS").unwrap_or(base.admissions),
            connections: var("CHAOS_CONNECTIONS").unwrap_or(base.connections),
            rate: var("CHAOS_RATE").unwrap_or(base.rate),
            durability: var("CHAOS_DURABILITY").or(base.durability),
            faults: match var::<String>("CHAOS_REDIS").as_deref() {
                None => base.faults,
                Some("single") => Chaos::bounded().faults,
                Some("sentinel") => Chaos::bounded_failover().faults,
                Some(other) => panic!("CHAOS_REDIS={other}: single or sentinel"),
            },
            ..base
        }
    }

    /// The bounded run on a Sentinel setup: [`Chaos::bounded`] with the
    /// Redis failover in place of the redis-server's kill, and
    /// `--durability replicated`.
    pub fn bounded_failover() -> Chaos {
        Chaos {
            durability: Some("replicated".to_string()),
            faults: vec![Fault::KillGateway, Fault::Failover, Fault::UpstreamOutage],
            ..Chaos::bounded()
        }
    }

    /// Whether the run is on a Sentinel setup: it has [`Fault::Failover`].
    pub fn sentinel(&self) -> bool {
        self.faults.contains(&Fault::Failover)
    }

    /// Whether a failover may lose 202s: one strikes and the durability is
    /// not `replicated`.
    pub fn failover_may_lose(&self) -> bool {
        self.sentinel() && self.durability.as_deref() != Some("replicated")
    }

    /// Runs the scenario and checks nothing: see [`ChaosReport::assert_holds`].
    pub async fn run(&self) -> ChaosReport {
        raise_open_files_limit();
        let started = Instant::now();
        let control = UpstreamControl::default();
        let upstream = MockUpstream::builder()
            .control(control.clone())
            .start()
            .await;
        assert!(
            !(self.sentinel() && self.faults.contains(&Fault::KillRedis)),
            "KillRedis strikes a single redis-server, Failover a Sentinel setup"
        );
        let (store, url) = if self.sentinel() {
            let durable = ["--appendonly", "yes", "--appendfsync", "always"];
            let setup = tokio::task::block_in_place(|| SentinelSetup::start_with(&durable));
            let url = setup.url();
            (Store::Sentinel(setup), url)
        } else {
            let redis = Redis::builder().durable().start();
            let url = redis.url();
            (Store::Single(redis), url)
        };
        let rate = self.rate.to_string();
        let mut instance = Gateway::builder()
            .upstream(&upstream)
            .redis(&url)
            .args(&["--drain-rate", &rate])
            // The refusing upstream is to delay tickets, not fail them.
            .args(&["--max-attempts", "100"])
            .args(&["--upstream-timeout", "5s"]);
        if let Some(durability) = &self.durability {
            instance = instance.args(&["--durability", durability]);
        }
        let builders = ["chaos-a", "chaos-b"].map(|name| instance.clone().consumer(name));
        let mut gateways = Vec::new();
        for b in &builders {
            gateways.push(b.clone().process().await);
        }
        let bases: Vec<String> = gateways.iter().map(|g| g.base()).collect();
        let rig = Rig {
            gateways,
            builders: builders.to_vec(),
            store: Some(store),
            control: control.clone(),
        };

        let counts = Arc::new(Attempts::default());
        let faults = tokio::spawn(self.clone().strike(rig, counts.clone(), started));
        let admissions = self.burst(&bases, counts.clone()).await;
        let burst = started.elapsed();
        let (rig, timeline) = faults.await.expect("the faults ran");

        let tickets: HashMap<usize, String> = admissions
            .iter()
            .filter_map(|(n, a)| match a {
                Admission::Ticket(t) => Some((*n, t.clone())),
                Admission::Refused(_) => None,
            })
            .collect();
        let states = self.follow(&bases, &tickets).await;
        let mut report = ChaosReport::of(self, &tickets, &states, &upstream);
        drop(rig);
        report.refused = admissions.len() - tickets.len();
        report.refusals = admissions
            .iter()
            .filter_map(|(_, a)| match a {
                Admission::Refused(s) => Some(*s),
                Admission::Ticket(_) => None,
            })
            .collect();
        report.client_transport_errors = counts.transport_errors.load(Ordering::Relaxed);
        report.client_unavailable = counts.unavailable.load(Ordering::Relaxed);
        report.client_replayed = counts.replayed.load(Ordering::Relaxed);
        report.upstream_refused = control.refused();
        report.timeline = timeline;
        report.burst = burst;
        report.total = started.elapsed();
        report
    }

    /// Every admission from `connections` clients at once; each one's end.
    async fn burst(&self, bases: &[String], counts: Arc<Attempts>) -> Vec<(usize, Admission)> {
        let next = Arc::new(AtomicUsize::new(0));
        let workers: Vec<_> = (0..self.connections)
            .map(|_| {
                let (shopper, next, counts) = (Shopper::new(bases), next.clone(), counts.clone());
                let total = self.admissions;
                tokio::spawn(async move {
                    let mut ends = Vec::new();
                    loop {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        if n >= total {
                            return ends;
                        }
                        let (end, _) = shopper.admit("chaos", n, &counts).await;
                        ends.push((n, end));
                    }
                })
            })
            .collect();
        let mut all = Vec::with_capacity(self.admissions);
        for w in workers {
            all.extend(w.await.expect("a client task"));
        }
        all
    }

    /// Strikes each fault once the burst is that far along: fault k of m
    /// when (k + 1) / (m + 2) of the admissions have ended.
    async fn strike(
        self,
        mut rig: Rig,
        counts: Arc<Attempts>,
        started: Instant,
    ) -> (Rig, Vec<String>) {
        let mut timeline = Vec::new();
        let m = self.faults.len();
        for (k, fault) in self.faults.iter().enumerate() {
            let at = self.admissions * (k + 1) / (m + 2);
            while counts.done.load(Ordering::Relaxed) < at {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let mut note = |what: &str| {
                let line = format!("{:>6.1} s  {what}", started.elapsed().as_secs_f64());
                println!("chaos: {line}");
                timeline.push(line);
            };
            match fault {
                Fault::KillGateway => {
                    note("kill -9 gateway chaos-b");
                    let restarted = rig.builders[1].clone();
                    let gw = &mut rig.gateways[1];
                    let restarted = restarted.ports(gw.public, gw.admin);
                    tokio::task::block_in_place(|| gw.crash());
                    let fresh = restarted.spawn();
                    healthy(fresh.admin).await;
                    *gw = fresh;
                    note("gateway chaos-b restarted");
                }
                Fault::KillRedis => {
                    let Some(Store::Single(redis)) = &mut rig.store else {
                        unreachable!("checked in run")
                    };
                    note("kill -9 redis-server");
                    tokio::task::block_in_place(|| redis.kill());
                    tokio::time::sleep(self.redis_down).await;
                    tokio::task::block_in_place(|| redis.restart());
                    note("redis-server restarted (AOF, appendfsync always)");
                }
                Fault::Failover => {
                    let Some(Store::Sentinel(mut setup)) = rig.store.take() else {
                        panic!("Failover strikes a Sentinel setup, once")
                    };
                    note("kill -9 the Redis primary");
                    let old = tokio::task::block_in_place(|| setup.kill_primary());
                    tokio::task::block_in_place(|| setup.wait_for_promotion(old));
                    note("replica promoted by Sentinel; the old primary restarting");
                    rig.store = Some(Store::Resyncing(tokio::task::spawn_blocking(move || {
                        setup.restart(old);
                        (setup, Instant::now())
                    })));
                }
                Fault::UpstreamOutage => {
                    note("upstream answers 503");
                    rig.control.refuse();
                    tokio::time::sleep(self.upstream_refusing).await;
                    note(&format!("upstream slow ({:?} an answer)", self.slow_by));
                    rig.control.slow(self.slow_by);
                    tokio::time::sleep(self.upstream_slow).await;
                    rig.control.heal();
                    note("upstream healthy");
                }
            }
        }
        // (Taken only when resyncing: a store taken and dropped is stopped.)
        if matches!(rig.store, Some(Store::Resyncing(_))) {
            let Some(Store::Resyncing(task)) = rig.store.take() else {
                unreachable!("matched")
            };
            let (setup, at) = task.await.expect("the old primary restarted");
            let line = format!(
                "{:>6.1} s  old primary restarted, replicating the new one",
                (at - started).as_secs_f64()
            );
            println!("chaos: {line}");
            timeline.push(line);
            rig.store = Some(Store::Sentinel(setup));
        }
        // In the order they happened (a resync ends after later faults).
        timeline.sort_by(|a, b| {
            let at = |l: &str| l.split_whitespace().next()?.parse::<f64>().ok();
            at(a)
                .partial_cmp(&at(b))
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        (rig, timeline)
    }

    /// Polls every ticket (over both gateways, 64 pollers) until each is
    /// terminal or a deadline that grows with the backlog has passed; the
    /// ticket states seen. Tickets finish about in admission order, so a
    /// poller goes through its share in that order and stops a round at the
    /// first one still pending: polls keep pace with the drain without
    /// crowding it out.
    async fn follow(
        &self,
        bases: &[String],
        tickets: &HashMap<usize, String>,
    ) -> HashMap<usize, TicketState> {
        const POLLERS: usize = 64;
        let drain = Duration::from_secs_f64(tickets.len() as f64 / f64::from(self.rate));
        let deadline = Instant::now() + drain * 4 + Duration::from_secs(120);
        let mut states: HashMap<usize, TicketState> = HashMap::new();
        let mut pending: Vec<(usize, String)> =
            tickets.iter().map(|(n, t)| (*n, t.clone())).collect();
        pending.sort_unstable();
        let pollers: Vec<Shopper> = (0..POLLERS).map(|_| Shopper::new(bases)).collect();
        while !pending.is_empty() && Instant::now() < deadline {
            let tasks: Vec<_> = pollers
                .iter()
                .enumerate()
                .map(|(j, poller)| {
                    let share: Vec<_> = pending.iter().skip(j).step_by(POLLERS).cloned().collect();
                    let poller = poller.clone();
                    tokio::spawn(async move {
                        let mut ended = Vec::new();
                        for (n, t) in share {
                            match poller.status(&t, n).await {
                                (Some(s), _) if s.terminal() => ended.push((n, s)),
                                _ => break,
                            }
                        }
                        ended
                    })
                })
                .collect();
            for task in tasks {
                states.extend(task.await.expect("a poller"));
            }
            pending.retain(|(n, _)| !states.contains_key(n));
            if !pending.is_empty() {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        states
    }
}

/// The processes a run strikes.
struct Rig {
    gateways: Vec<GatewayProcess>,
    builders: Vec<GatewayBuilder>,
    /// `None` only while a fault holds it.
    store: Option<Store>,
    control: UpstreamControl,
}

/// Where the queue lives.
enum Store {
    Single(Redis),
    Sentinel(SentinelSetup),
    /// A Sentinel setup after [`Fault::Failover`], its old primary being
    /// restarted as a replica: the setup and when that ended.
    Resyncing(tokio::task::JoinHandle<(SentinelSetup, Instant)>),
}

impl Default for Chaos {
    fn default() -> Chaos {
        Chaos::bounded()
    }
}
