//! Reloading the configuration of a running gateway (SIGHUP, as nginx does):
//! a new configuration is applied whole, or not at all. What handlers,
//! drains and limiters read per use changes at once; what was bound or
//! connected at start keeps its value, named in a warning.

use tracing::{error, info, warn};

use super::Gateway;
use crate::config::{Config, ConfigError, QueueConfig};

impl Gateway {
    /// Applies a reloaded configuration (`load` reads the file and the
    /// environment again and validates them). Invalid: nothing changes, the
    /// error is logged and counted. Valid: every setting that can change
    /// without dropping a connection, an admission or a queued entry takes
    /// effect for the next request, read or dispatch; the others keep their
    /// start-up values and are named in a warning. True when applied.
    pub fn reload(&self, load: impl FnOnce() -> Result<Config, ConfigError>) -> bool {
        let metrics = &self.app.metrics;
        let mut new = match load() {
            Ok(config) => config,
            Err(e) => {
                metrics.config_reloads.with_label_values(&["failure"]).inc();
                error!(error = %e, "configuration reload failed: still running on the previous configuration");
                return false;
            }
        };
        let old = self.app.config();
        let fixed = keep_fixed(&old, &mut new);
        let changed = changed_keys(&old, &new);
        if !fixed.is_empty() {
            warn!(
                not_applied = %fixed.join(", "),
                "configuration reload: these settings cannot change while running and keep their start-up values; restart to change them"
            );
        }
        self.app.set_config(new);
        // The certificate files are read again for the next handshakes (the
        // paths themselves are fixed at start).
        if let Some(tls) = &self.tls {
            match tls.reload() {
                Ok(()) => info!("TLS certificate reloaded"),
                Err(e) => {
                    warn!(error = %e, "TLS certificate not reloaded: the previous one stays in use")
                }
            }
        }
        // A new configured value does not undo an operator's override.
        for q in &self.app.queues {
            super::upkeep::say_overrides(q, &q.knobs());
        }
        metrics.config_reloads.with_label_values(&["success"]).inc();
        metrics.config_loaded();
        info!(
            changed = %if changed.is_empty() { "nothing".to_string() } else { changed.join(", ") },
            "configuration reloaded"
        );
        true
    }
}

/// Puts back into `new` the settings that cannot change while running, and
/// names those that would have changed.
fn keep_fixed(old: &Config, new: &mut Config) -> Vec<String> {
    let mut fixed = Vec::new();
    macro_rules! keep {
        ($($field:ident),+) => {$(
            if old.$field != new.$field {
                fixed.push(stringify!($field).to_string());
                new.$field = old.$field.clone();
            }
        )+};
    }
    // Not here, so applied at once: whatever is read per request, such as
    // the `waiting_room_*` branding keys (the page is rendered again from
    // the new values on its next load).
    // Bound, connected or handed to long-lived tasks at start.
    keep!(
        listen,
        tls_cert,
        tls_key,
        admin_listen,
        health_listen,
        redis_url,
        redis_prefix,
        consumer,
        ticket_secret,
        ticket_ttl,
        claim_idle,
        header_timeout,
        max_header_size,
        max_connections,
        access_log,
        access_log_format,
        access_log_buffer
    );
    // The queues: their set, and per queue what its backend and its
    // adaptive drain were built with.
    let names = |c: &Config| c.queue.iter().map(|q| q.name.clone()).collect::<Vec<_>>();
    if names(old) != names(new) {
        fixed.push(format!(
            "queue names ({} stay: add or remove queues with a restart)",
            names(old).join(", ")
        ));
    }
    let mut queues = Vec::new();
    for was in &old.queue {
        let Some(mut q) = new.queue.iter().find(|q| q.name == was.name).cloned() else {
            queues.push(was.clone());
            continue;
        };
        keep_fixed_queue(was, &mut q, &mut fixed);
        queues.push(q);
    }
    new.queue = queues;
    fixed
}

fn keep_fixed_queue(old: &QueueConfig, new: &mut QueueConfig, fixed: &mut Vec<String>) {
    let name = &old.name;
    if old.partitions != new.partitions {
        fixed.push(format!("partitions ({name})"));
        new.partitions = old.partitions;
    }
    // The backend writes events as it was built to.
    if (old.events, old.events_retention) != (new.events, new.events_retention) {
        fixed.push(format!("events, events_retention ({name})"));
        new.events = old.events;
        new.events_retention = old.events_retention;
    }
    if old.adaptive != new.adaptive {
        fixed.push(format!(
            "adaptive, adaptive_floor, adaptive_ceiling ({name})"
        ));
        new.adaptive = old.adaptive;
        new.adaptive_on = old.adaptive_on;
        new.adaptive_floor = old.adaptive_floor;
        new.adaptive_ceiling = old.adaptive_ceiling;
    }
}

/// The keys whose values differ, `key` or `key (queue)`.
fn changed_keys(old: &Config, new: &Config) -> Vec<String> {
    let (a, b) = (to_map(old), to_map(new));
    let mut out: Vec<String> = a
        .iter()
        .filter(|(k, v)| *k != "queue" && b.get(*k) != Some(v))
        .map(|(k, _)| k.clone())
        .collect();
    for (qa, qb) in old.queue.iter().zip(&new.queue) {
        let (a, b) = (to_map(qa), to_map(qb));
        out.extend(
            a.iter()
                .filter(|(k, v)| b.get(*k) != Some(v))
                .map(|(k, _)| format!("{k} ({})", qa.name)),
        );
    }
    out
}

fn to_map(v: &impl serde::Serialize) -> serde_json::Map<String, serde_json::Value> {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    }
}
