//! Chaos under load (issue 22): one scenario, run bounded by `tests/chaos.rs`
//! and for minutes by `scripts/chaos`. A burst of admissions from many
//! connections into two gateway processes on one redis-server (AOF,
//! `appendfsync always`), during which the faults of [`Fault`] strike one
//! after another; then every ticket is followed to its end and checked
//! against what the recording upstream received.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::load::{Admission, Attempts, Shopper, TicketState};
use super::process::healthy;
use super::{
    raise_open_files_limit, Gateway, GatewayBuilder, GatewayProcess, MockUpstream, Redis,
    UpstreamControl,
};

/// One fault, struck while the burst runs; each is one arm of
/// `Chaos::strike`. A Redis failover (a primary killed, a replica promoted
/// by Sentinel) joins as one more variant, with the redis-server of [`Rig`]
/// then a Sentinel setup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `kill -9` of the second gateway, restarted at once under its name.
    KillGateway,
    /// `kill -9` of redis-server, restarted on its AOF after `redis_down`.
    KillRedis,
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
    /// CHAOS_CONNECTIONS, CHAOS_RATE, CHAOS_DURABILITY.
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
            ..base
        }
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
        let redis = Redis::builder().durable().start();
        let rate = self.rate.to_string();
        let mut instance = Gateway::builder()
            .upstream(&upstream)
            .redis(&redis)
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
            redis,
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
        let mut report = self.check(&tickets, &states, &upstream);
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
                    note("kill -9 redis-server");
                    tokio::task::block_in_place(|| rig.redis.kill());
                    tokio::time::sleep(self.redis_down).await;
                    tokio::task::block_in_place(|| rig.redis.restart());
                    note("redis-server restarted (AOF, appendfsync always)");
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

    /// What the tickets and the upstream's own record say.
    fn check(
        &self,
        tickets: &HashMap<usize, String>,
        states: &HashMap<usize, TicketState>,
        upstream: &MockUpstream,
    ) -> ChaosReport {
        let received = upstream.received();
        let mut arrivals: Vec<Instant> = received.iter().map(|r| r.at).collect();
        arrivals.sort_unstable();
        // Each order's arrivals: the keys they carried.
        let mut by_order: HashMap<usize, Vec<String>> = HashMap::new();
        let mut stray = 0;
        for r in &received {
            let order = serde_json::from_slice::<serde_json::Value>(&r.body)
                .ok()
                .and_then(|v| v["order"].as_u64());
            match order {
                Some(n) => by_order
                    .entry(n as usize)
                    .or_default()
                    .push(r.header("idempotency-key").to_string()),
                None => stray += 1,
            }
        }
        let mut report = ChaosReport {
            chaos: self.clone(),
            admitted: tickets.len(),
            arrivals: received.len(),
            stray,
            ..ChaosReport::default()
        };
        for (n, keys) in &by_order {
            report.duplicates += keys.len() - 1;
            match tickets.get(n) {
                // Every delivery of an order carries its ticket as the key.
                Some(t) => report.wrong_key += keys.iter().filter(|k| *k != t).count(),
                // Delivered, though its client heard no ticket.
                None => report.unannounced += 1,
            }
        }
        for n in tickets.keys() {
            if !by_order.contains_key(n) {
                report.lost += 1;
            }
            match states.get(n) {
                Some(TicketState::Completed) => report.completed += 1,
                Some(TicketState::Failed) => report.failed += 1,
                Some(TicketState::Vanished) => report.vanished += 1,
                Some(TicketState::OtherTerminal) => report.other_terminal += 1,
                Some(TicketState::Pending) | None => report.unfinished += 1,
            }
        }
        if let Some(first) = arrivals.first() {
            let bucket = |t: &Instant| ((*t - *first).as_secs() / 5) as usize;
            let mut per_5s = vec![0; arrivals.last().map_or(0, bucket) + 1];
            for t in &arrivals {
                per_5s[bucket(t)] += 1;
            }
            report.arrivals_per_5s = per_5s;
        }
        report.worst_0_9s = busiest(&arrivals, Duration::from_millis(900));
        report.worst_1s = busiest(&arrivals, Duration::from_secs(1));
        report.worst_5s = busiest(&arrivals, Duration::from_secs(5));
        report
    }
}

/// The processes a run strikes.
struct Rig {
    gateways: Vec<GatewayProcess>,
    builders: Vec<GatewayBuilder>,
    redis: Redis,
    control: UpstreamControl,
}

/// Most arrivals in any window of `width` (sliding over the arrival times).
fn busiest(sorted: &[Instant], width: Duration) -> usize {
    let (mut most, mut start) = (0, 0);
    for (end, t) in sorted.iter().enumerate() {
        while *t - sorted[start] >= width {
            start += 1;
        }
        most = most.max(end - start + 1);
    }
    most
}

/// What a run found.
#[derive(Debug, Default)]
pub struct ChaosReport {
    pub chaos: Chaos,
    /// Admissions that got a ticket (202, or 200 to a retry).
    pub admitted: usize,
    /// Admissions that ended in another status (`refusals`).
    pub refused: usize,
    pub refusals: Vec<u16>,
    pub completed: usize,
    pub failed: usize,
    /// Tickets the gateway answered 404 for.
    pub vanished: usize,
    /// Cancelled or expired.
    pub other_terminal: usize,
    /// Not terminal when the run stopped waiting.
    pub unfinished: usize,
    /// Tickets that never reached the upstream.
    pub lost: usize,
    /// Upstream arrivals beyond each order's first (refused attempts
    /// retried, and deliveries repeated after a crash).
    pub duplicates: usize,
    /// Arrivals whose Idempotency-Key was not their order's ticket.
    pub wrong_key: usize,
    /// Orders delivered whose client never got a ticket.
    pub unannounced: usize,
    /// Arrivals that were no order of the run.
    pub stray: usize,
    pub arrivals: usize,
    /// Upstream arrivals in each 5 s from the first.
    pub arrivals_per_5s: Vec<usize>,
    pub upstream_refused: u64,
    pub worst_0_9s: usize,
    pub worst_1s: usize,
    pub worst_5s: usize,
    pub client_transport_errors: u64,
    pub client_unavailable: u64,
    pub client_replayed: u64,
    pub timeline: Vec<String>,
    pub burst: Duration,
    pub total: Duration,
}

impl Default for Chaos {
    fn default() -> Chaos {
        Chaos::bounded()
    }
}

impl ChaosReport {
    /// The run as a markdown table, with the fault timeline.
    pub fn table(&self) -> String {
        let c = &self.chaos;
        let durability = c.durability.as_deref().unwrap_or("default");
        let mut out = String::new();
        out.push_str(&format!(
            "chaos: {} admissions, {} connections, rate {}/s, durability {durability}\n",
            c.admissions, c.connections, c.rate
        ));
        for line in &self.timeline {
            out.push_str(&format!("  {line}\n"));
        }
        out.push_str(&format!(
            "  upstream arrivals per 5 s from the first: {:?}\n",
            self.arrivals_per_5s
        ));
        out.push_str("\n| admitted | completed | failed | lost | duplicates | worst 1 s | worst 0.9 s / 5 s | refused | client retries (transport, 503) | burst | total |\n");
        out.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} ({} refused by the upstream) | {} | {} / {} | {} | {}, {} | {:.1} s | {:.1} s |\n",
            self.admitted,
            self.completed,
            self.failed,
            self.lost,
            self.duplicates,
            self.upstream_refused,
            self.worst_1s,
            self.worst_0_9s,
            self.worst_5s,
            self.refused,
            self.client_transport_errors,
            self.client_unavailable,
            self.burst.as_secs_f64(),
            self.total.as_secs_f64(),
        ));
        out
    }

    /// The promises of issue 22: no 202 lost, every ticket terminal, the
    /// upstream never above the rate, every duplicate under its ticket's
    /// key; and the faults did reach the clients and the drain.
    pub fn assert_holds(&self) {
        let c = &self.chaos;
        let table = self.table();
        assert_eq!(self.admitted + self.refused, c.admissions, "{table}");
        assert!(
            self.refusals.is_empty(),
            "definite refusals {:?}\n{table}",
            &self.refusals[..self.refusals.len().min(10)]
        );
        assert_eq!(
            self.lost, 0,
            "202s that never reached the upstream\n{table}"
        );
        assert_eq!(
            (self.unfinished, self.vanished, self.other_terminal),
            (0, 0, 0),
            "tickets that did not end (unfinished, vanished, cancelled or expired)\n{table}"
        );
        assert_eq!(self.completed + self.failed, self.admitted, "{table}");
        assert_eq!(
            (self.wrong_key, self.unannounced, self.stray),
            (0, 0, 0),
            "{table}"
        );
        let rate = c.rate as usize;
        assert!(self.worst_0_9s <= rate + 1, "over the rate\n{table}");
        assert!(self.worst_5s <= 5 * rate, "over the rate\n{table}");
        if c.faults.contains(&Fault::KillGateway) || c.faults.contains(&Fault::KillRedis) {
            assert!(
                self.client_transport_errors + self.client_unavailable > 0,
                "no client met a fault\n{table}"
            );
        }
        if c.faults.contains(&Fault::UpstreamOutage) {
            assert!(self.upstream_refused > 0, "the drain met no 503\n{table}");
        }
    }
}
