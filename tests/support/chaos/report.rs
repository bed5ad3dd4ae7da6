//! What a chaos run found, checked against the promises of issue 22.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::super::load::TicketState;
use super::super::MockUpstream;
use super::{Chaos, Fault};

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
    /// Lost tickets the gateways answer 404 for: admissions a failover
    /// took away (`--durability local`).
    pub lost_unknown: usize,
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
    pub worst_4_9s: usize,
    pub worst_5s: usize,
    pub client_transport_errors: u64,
    pub client_unavailable: u64,
    pub client_replayed: u64,
    pub timeline: Vec<String>,
    pub burst: Duration,
    pub total: Duration,
}

impl ChaosReport {
    /// What the tickets of a run of `chaos` and the upstream's own record
    /// say.
    pub(super) fn of(
        chaos: &Chaos,
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
            chaos: chaos.clone(),
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
                if states.get(n) == Some(&TicketState::Vanished) {
                    report.lost_unknown += 1;
                }
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
        report.worst_4_9s = busiest(&arrivals, Duration::from_millis(4900));
        report.worst_5s = busiest(&arrivals, Duration::from_secs(5));
        report
    }

    /// The run as a markdown table, with the fault timeline.
    pub fn table(&self) -> String {
        let c = &self.chaos;
        let durability = c.durability.as_deref().unwrap_or("default");
        let redis = match c.sentinel() {
            true => "Sentinel setup (primary + replica)",
            false => "one redis-server",
        };
        let mut out = String::new();
        out.push_str(&format!(
            "chaos: {} admissions, {} connections, rate {}/s, {redis}, durability {durability}\n",
            c.admissions, c.connections, c.rate
        ));
        for line in &self.timeline {
            out.push_str(&format!("  {line}\n"));
        }
        out.push_str(&format!(
            "  upstream arrivals per 5 s from the first: {:?}\n",
            self.arrivals_per_5s
        ));
        if c.sentinel() {
            out.push_str(&format!(
                "  lost across the failover: {} (of them unknown to the gateways, 404: {}); tickets answered 404: {}\n",
                self.lost, self.lost_unknown, self.vanished
            ));
        }
        out.push_str("\n| admitted | completed | failed | lost | duplicates | worst 1 s | worst 0.9 s / 4.9 s / 5 s | refused | client retries (transport, 503) | burst | total |\n");
        out.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} ({} refused by the upstream) | {} | {} / {} / {} | {} | {}, {} | {:.1} s | {:.1} s |\n",
            self.admitted,
            self.completed,
            self.failed,
            self.lost,
            self.duplicates,
            self.upstream_refused,
            self.worst_1s,
            self.worst_0_9s,
            self.worst_4_9s,
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
    /// key; and the faults did reach the clients and the drain. Where a
    /// failover may lose 202s ([`Chaos::failover_may_lose`]: `--durability
    /// local`) the lost are only counted: each must be a ticket the
    /// gateways no longer know (404), and every other ticket must end.
    pub fn assert_holds(&self) {
        let c = &self.chaos;
        let table = self.table();
        assert_eq!(self.admitted + self.refused, c.admissions, "{table}");
        assert!(
            self.refusals.is_empty(),
            "definite refusals {:?}\n{table}",
            &self.refusals[..self.refusals.len().min(10)]
        );
        if c.failover_may_lose() {
            assert_eq!(
                self.lost, self.lost_unknown,
                "202s lost that the gateways still know\n{table}"
            );
        } else {
            assert_eq!(
                (self.lost, self.vanished),
                (0, 0),
                "202s that never reached the upstream, tickets unknown (404)\n{table}"
            );
        }
        assert_eq!(
            (self.unfinished, self.other_terminal),
            (0, 0),
            "tickets that did not end (unfinished, cancelled or expired)\n{table}"
        );
        assert_eq!(
            self.completed + self.failed + self.vanished,
            self.admitted,
            "{table}"
        );
        assert_eq!(
            (self.wrong_key, self.unannounced, self.stray),
            (0, 0, 0),
            "{table}"
        );
        // Issue 22: at most rate + 1 arrivals in any 0.9 s window (0.1 s
        // allows for the recording upstream's own scheduling delay), and at
        // most 5 × rate over 5 s, read with the same 0.1 s: any 4.9 s
        // window. A pacer at exactly the rate sends 5 × rate in every 5 s,
        // so a strict 5 s window would fail on any arrival the recorder
        // stamps a moment late (README "Chaos under load").
        let rate = c.rate as usize;
        assert!(self.worst_0_9s <= rate + 1, "over the rate\n{table}");
        assert!(self.worst_4_9s <= 5 * rate, "over the rate\n{table}");
        if [Fault::KillGateway, Fault::KillRedis, Fault::Failover]
            .iter()
            .any(|f| c.faults.contains(f))
        {
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
