//! A queue's upkeep at run time, one task each until the process stops:
//! following the shared knobs, the change feed, the queue-wide gauges, the
//! backend's own maintenance, the trim of the work stream and the count of
//! dead letters.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::Queue;
use crate::backend::events::knob_changes;
use crate::backend::knobs::{Knobs, Phase, WATCH_INTERVAL};
use crate::backend::Change;
use crate::metrics::Metrics;

/// How often queue-wide gauges are refreshed from the backend.
const GAUGE_INTERVAL: Duration = Duration::from_secs(1);
/// How often the work stream is trimmed: finished entries wait at most
/// this long, so a fast drain holds about a second of them.
const TRIM_INTERVAL: Duration = Duration::from_secs(1);

/// A periodic task's clock: ticks at once, then every period (a late tick
/// is delayed, never bunched), until stopped.
pub struct Every {
    tick: Interval,
    stop: CancellationToken,
}

impl Every {
    pub fn new(period: Duration, stop: CancellationToken) -> Self {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Every { tick, stop }
    }

    /// Waits for the next tick; `false` once stopped.
    pub async fn tick(&mut self) -> bool {
        tokio::select! {
            _ = self.tick.tick() => true,
            _ = self.stop.cancelled() => false,
        }
    }
}

/// Keeps this instance's copy of the shared knobs current (a change made on
/// any instance shows here within `WATCH_INTERVAL`), and the governed-rate
/// gauge with it: 0 while paused.
pub async fn watch_knobs(queue: Arc<Queue>, metrics: Arc<Metrics>, stop: CancellationToken) {
    let name = queue.name.as_str();
    let mut every = Every::new(WATCH_INTERVAL, stop);
    let mut first = true;
    while every.tick().await {
        if let Ok(knobs) = queue.backend.knobs().await {
            let before = queue.knobs();
            if std::mem::take(&mut first) {
                say_overrides(&queue, &knobs);
                queue.update_knobs(knobs);
            } else if queue.update_knobs(knobs.clone()) {
                // A change made elsewhere (another instance, the adaptive
                // drain): what moved, as the `knobs_changed` event has it.
                let changes = knob_changes(&before, &knobs).unwrap_or_else(|| "{}".into());
                info!(queue = name, %changes, "queue knobs changed");
            }
        }
        let knobs = queue.knobs();
        let rate = if knobs.paused {
            0.0
        } else {
            knobs.drain_rate(&queue.config())
        };
        metrics
            .drain_rate_limit
            .with_label_values(&[name])
            .set(rate);
    }
}

/// Says, on the first read of the shared knobs, which runtime overrides
/// (stored by an earlier PATCH, on any instance) win over the configuration:
/// a restart with a new `--drain-rate` does not undo them.
pub fn say_overrides(queue: &Queue, knobs: &Knobs) {
    let config = queue.config();
    let name = config.name.as_str();
    if let Some(rate) = knobs.drain_rate.filter(|r| *r != config.drain_rate) {
        warn!(queue = name, configured = config.drain_rate, stored = rate,
            "drain_rate: the runtime override stored in the queue backend wins over the configuration; clear it with PATCH {{\"drain_rate\": null}} or `flashgate admin set {name} --clear drain_rate`");
    }
    if let Some(stock) = knobs.stock.filter(|s| Some(*s) != config.stock) {
        warn!(queue = name, configured = ?config.stock, stored = stock,
            "stock: the runtime override stored in the queue backend wins over the configuration; clear it with PATCH {{\"stock\": null}}");
    }
    if let Some(d) = knobs.pow_difficulty.filter(|d| *d != config.pow_difficulty) {
        warn!(queue = name, configured = config.pow_difficulty, stored = d,
            "pow_difficulty: the runtime override stored in the queue backend wins over the configuration; clear it with PATCH {{\"pow_difficulty\": null}} or `flashgate admin set {name} --clear pow_difficulty`");
    }
    if let Some(open) = knobs.open {
        warn!(queue = name, open,
            "sale opened or closed by an operator: the override stored in the queue backend wins over opens_at/closes_at; clear it with PATCH {{\"open\": null}}");
    }
    if knobs.paused {
        warn!(
            queue = name,
            "queue paused by an operator (stored in the queue backend)"
        );
    }
}

/// Heartbeats this instance's entries and takes over abandoned ones, every
/// third of `claim_idle`, until the process stops.
pub async fn maintain(queue: Arc<Queue>, claim_idle: Duration, stop: CancellationToken) {
    let mut every = Every::new(claim_idle / 3, stop);
    let mut failing = false;
    while every.tick().await {
        match queue.backend.maintain(claim_idle).await {
            Ok(()) if failing => {
                failing = false;
                info!(queue = %queue.name, "queue upkeep works again");
            }
            Ok(()) => {}
            Err(e) if !failing => {
                failing = true;
                warn!(queue = %queue.name, error = %e, "queue upkeep failed; retrying");
            }
            Err(_) => {}
        }
    }
}

/// Trims the work stream of what every consumer group is done with (and of
/// what is past `stream_retention` and finished by this gateway), and keeps
/// each group's lag gauge current; a group that is gone loses its series.
pub async fn tend_stream(queue: Arc<Queue>, metrics: Arc<Metrics>, stop: CancellationToken) {
    let name = queue.name.as_str();
    let mut every = Every::new(TRIM_INTERVAL, stop);
    let mut reported: HashSet<String> = HashSet::new();
    while every.tick().await {
        // Failures show in `flashgate_queue_up` and the gauge refresher's log.
        let Ok(report) = queue
            .backend
            .tend_stream(queue.config().stream_retention)
            .await
        else {
            continue;
        };
        if report.trimmed_unfinished > 0 {
            metrics
                .stream_retention_trimmed
                .with_label_values(&[name])
                .inc_by(report.trimmed_unfinished);
        }
        let now: HashSet<String> = report.groups.iter().map(|g| g.group.clone()).collect();
        for gone in reported.difference(&now) {
            let _ = metrics
                .stream_group_lag
                .remove_label_values(&[name, gone.as_str()]);
        }
        for g in &report.groups {
            metrics
                .stream_group_lag
                .with_label_values(&[name, g.group.as_str()])
                .set(i64::try_from(g.lag).unwrap_or(i64::MAX));
        }
        reported = now;
    }
}

/// Follows the backend's feed of ticket changes and wakes the clients
/// waiting on them; reconnects when the feed breaks (waiters then re-read on
/// the resync, so a change in the gap is not missed).
pub async fn follow_changes(queue: Arc<Queue>, stop: CancellationToken) {
    let name = queue.name.as_str();
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

/// Sets the sale's gauges from this instance's copy of the knobs and the
/// admitted count (`None` when the backend did not answer: the stock left
/// keeps its last value). The stock left has no series while the stock is
/// unlimited.
fn sale_gauges(queue: &Queue, metrics: &Metrics, admitted: Option<u64>) {
    let name = queue.name.as_str();
    let config = queue.config();
    let knobs = queue.knobs();
    metrics
        .queue_paused
        .with_label_values(&[name])
        .set(i64::from(knobs.paused));
    metrics
        .queue_sold_out
        .with_label_values(&[name])
        .set(i64::from(knobs.sold_out));
    let now = knobs.phase(&config, queue.clock.now()).name();
    for phase in Phase::NAMES {
        metrics
            .sale_phase
            .with_label_values(&[name, phase])
            .set(i64::from(phase == now));
    }
    match (knobs.stock(&config), admitted) {
        (None, _) => {
            // Never created, or the stock was lifted: no series either way.
            let _ = metrics.stock_left.remove_label_values(&[name]);
        }
        (Some(stock), Some(admitted)) => {
            let left = stock.saturating_sub(admitted);
            metrics
                .stock_left
                .with_label_values(&[name])
                .set(i64::try_from(left).unwrap_or(i64::MAX));
        }
        (Some(_), None) => {}
    }
}

/// Sets the units left of each configured product (the labels stay
/// bounded by the configuration; a product added at run time shows in the
/// admin API only). Nothing on a queue without products.
async fn product_gauges(queue: &Queue, metrics: &Metrics) {
    let config = queue.config();
    if config.product_from.is_none() {
        return;
    }
    let Ok(sold) = queue.backend.products_sold().await else {
        return;
    };
    let knobs = queue.knobs();
    for product in config.product_stock.keys() {
        let stock = knobs.product_stock(&config, product).unwrap_or(0);
        let left = stock.saturating_sub(sold.get(product).copied().unwrap_or(0));
        metrics
            .product_stock_left
            .with_label_values(&[queue.name.as_str(), product])
            .set(i64::try_from(left).unwrap_or(i64::MAX));
    }
}

/// Keeps the queue-wide gauges current, one cheap backend call per interval.
pub async fn refresh_gauges(queue: Arc<Queue>, metrics: Arc<Metrics>, stop: CancellationToken) {
    let name = queue.name.as_str();
    let mut every = Every::new(GAUGE_INTERVAL, stop);
    let mut up = true;
    while every.tick().await {
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
        // Units given back by cancels are for sale again.
        let held = stats.as_ref().ok().map(|s| s.admitted - s.returned);
        sale_gauges(&queue, &metrics, held);
        product_gauges(&queue, &metrics).await;
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

/// Keeps the dead-letter gauge (`flashgate_dead_letters`) current: one
/// cheap count (`XLEN`) per interval. Failures show in `flashgate_queue_up`.
pub async fn count_dead_letters(queue: Arc<Queue>, metrics: Arc<Metrics>, stop: CancellationToken) {
    let name = queue.name.as_str();
    let mut every = Every::new(GAUGE_INTERVAL, stop);
    while every.tick().await {
        if let Ok(n) = queue.backend.count_dead().await {
            metrics
                .dead_letters
                .with_label_values(&[name])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
}
