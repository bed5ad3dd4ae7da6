//! `flashgate admin`: the admin API from a terminal, for operators who live
//! in one during a sale. Tables for people by default; `--output json`
//! prints the API's answer as it came, for scripts.

use clap::{Args, Subcommand};
use http::Method;

use serde_json::Value;

use super::client::{call, CallError};
use super::table::{Output, Table};

/// The `admin` flags.
#[derive(Debug, Clone, Args)]
pub struct AdminArgs {
    /// Base URL of the gateway's admin listener.
    #[arg(
        long,
        env = "FLASHGATE_ADMIN_URL",
        default_value = "http://127.0.0.1:9464"
    )]
    pub url: String,
    /// Bearer token (the secret of one of the gateway's admin tokens), when
    /// it has any.
    #[arg(long, env = "FLASHGATE_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// `table` for people, `json` for the admin API's answer as it came.
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    #[command(subcommand)]
    pub action: AdminAction,
}

#[derive(Debug, Clone, Subcommand)]
pub enum AdminAction {
    /// List the queues: depth, in flight, oldest entry, governed rate, knobs.
    Queues,
    /// Change a queue's knobs and print what changed (old -> new); every
    /// instance follows within a second.
    Set(SetArgs),
    /// A queue's dead letters: list, show, replay, discard.
    DeadLetters(super::dead_letters::DeadLettersArgs),
    /// A fair sale's stock per product: list, show, set (`--set N`) or add
    /// to (`--add N`) one product's.
    Stock(super::stock::StockArgs),
}

/// One flag per knob of `PATCH /admin/queues/{name}`; `--clear KNOB` (or
/// the knob's own `--configured-stock`, `--schedule`) goes back to the
/// configured value.
#[derive(Debug, Clone, Args)]
pub struct SetArgs {
    /// The queue's name.
    pub queue: String,
    /// New drain rate, requests per second (> 0).
    #[arg(long)]
    pub drain_rate: Option<f64>,
    /// Clear a runtime override, back to the configured value:
    /// `drain_rate`, `stock`, `open` (the schedule) or `pow_difficulty`;
    /// repeatable.
    #[arg(long, value_name = "KNOB", value_parser = ["drain_rate", "stock", "open", "pow_difficulty"])]
    pub clear: Vec<String>,
    /// Stop dispatching (admission goes on).
    #[arg(long, conflicts_with = "resume")]
    pub pause: bool,
    /// Dispatch again.
    #[arg(long)]
    pub resume: bool,
    /// Admissions allowed in total.
    #[arg(long, conflicts_with = "configured_stock")]
    pub stock: Option<u64>,
    /// Back to the configured stock (as `--clear stock`).
    #[arg(long)]
    pub configured_stock: bool,
    /// Open the sale now.
    #[arg(long, conflicts_with_all = ["close", "schedule"])]
    pub open: bool,
    /// Close the sale now.
    #[arg(long, conflicts_with = "schedule")]
    pub close: bool,
    /// Follow opens_at/closes_at again (as `--clear open`).
    #[arg(long)]
    pub schedule: bool,
    /// Declare the sale sold out: admissions get 410 and waiting tickets
    /// fail without reaching the upstream.
    #[arg(long, conflicts_with = "not_sold_out")]
    pub sold_out: bool,
    /// Lift the sold-out flag (after a restock, or a sold out declared by mistake).
    #[arg(long)]
    pub not_sold_out: bool,
    /// Proof-of-work difficulty, leading zero bits 0-32 (0 = off): raise it
    /// during an attack; challenges issued at a lower one are refused.
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=32))]
    pub pow_difficulty: Option<u8>,
}

impl SetArgs {
    /// The PATCH body.
    fn body(&self) -> Value {
        let mut body = serde_json::Map::new();
        if let Some(r) = self.drain_rate {
            body.insert("drain_rate".into(), r.into());
        }
        if self.pause || self.resume {
            body.insert("paused".into(), self.pause.into());
        }
        if let Some(s) = self.stock {
            body.insert("stock".into(), s.into());
        }
        if self.configured_stock {
            body.insert("stock".into(), Value::Null);
        }
        if self.open || self.close {
            body.insert("open".into(), self.open.into());
        }
        if self.schedule {
            body.insert("open".into(), Value::Null);
        }
        if self.sold_out || self.not_sold_out {
            body.insert("sold_out".into(), self.sold_out.into());
        }
        if let Some(d) = self.pow_difficulty {
            body.insert("pow_difficulty".into(), d.into());
        }
        for knob in &self.clear {
            body.insert(knob.clone(), Value::Null);
        }
        body.into()
    }
}

/// Why an admin call failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("nothing to change: give at least one of --drain-rate, --pause, --resume, --stock, --configured-stock, --open, --close, --schedule, --sold-out, --not-sold-out, --pow-difficulty, --clear")]
    NothingToChange,
    #[error(transparent)]
    DeadLetters(#[from] super::dead_letters::DeadLettersError),
    #[error(transparent)]
    Call(#[from] CallError),
}

/// Runs an admin action; returns what to print.
pub async fn run(args: AdminArgs) -> Result<String, AdminError> {
    let base = args.url.trim_end_matches('/');
    let token = args.token.as_deref();
    match &args.action {
        AdminAction::Queues => {
            let answer = call(base, token, Method::GET, "/admin/queues", None).await?;
            Ok(match args.output {
                Output::Json => pretty(&answer),
                Output::Table => queues_table(&answer),
            })
        }
        AdminAction::DeadLetters(dead) => {
            let json = args.output == Output::Json;
            Ok(super::dead_letters::run(base, token, json, dead).await?)
        }
        AdminAction::Stock(stock) => {
            let json = args.output == Output::Json;
            Ok(super::stock::run(base, token, json, stock).await?)
        }
        AdminAction::Set(set) => {
            let body = set.body();
            if body.as_object().is_some_and(|o| o.is_empty()) {
                return Err(AdminError::NothingToChange);
            }
            let path = format!("/admin/queues/{}", set.queue);
            // The queue as it was, to say what changed.
            let before = match args.output {
                Output::Table => Some(call(base, token, Method::GET, "/admin/queues", None).await?),
                Output::Json => None,
            };
            let after = call(base, token, Method::PATCH, &path, Some(body)).await?;
            Ok(match before {
                None => pretty(&after),
                Some(all) => {
                    let before = (all["queues"].as_array().into_iter().flatten())
                        .find(|q| q["name"] == after["name"])
                        .cloned()
                        .unwrap_or_default();
                    changes(&set.queue, &before, &after)
                }
            })
        }
    }
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// `GET /admin/queues` as a table.
fn queues_table(answer: &Value) -> String {
    let mut t = Table::new(&[
        "NAME",
        "BACKEND",
        "DEPTH",
        "IN-FLIGHT",
        "OLDEST",
        "RATE",
        "PAUSED",
        "SOLD-OUT",
        "STOCK",
        "PHASE",
        "OVERRIDES",
    ]);
    for q in answer["queues"].as_array().into_iter().flatten() {
        let oldest = q["oldest_age_seconds"].as_f64().map_or("-".into(), |s| {
            humantime::format_duration(std::time::Duration::from_secs(s.round() as u64)).to_string()
        });
        let mut rate = format!("{}/s", text(&q["drain_rate"]));
        if !q["adaptive"].is_null() {
            rate.push_str(" adaptive");
        }
        // Left of the limit in force, or `-` for none.
        let stock = match (&q["stock"], &q["stock_left"]) {
            (Value::Null, _) => "-".to_string(),
            (limit, left) => format!("{}/{}", text(left), text(limit)),
        };
        let overrides: Vec<&str> = (q["overrides"].as_object().into_iter().flatten())
            .filter(|(_, v)| !v.is_null())
            .map(|(k, _)| k.as_str())
            .collect();
        t.row(vec![
            text(&q["name"]),
            text(&q["backend"]),
            text(&q["depth"]),
            text(&q["in_flight"]),
            oldest,
            rate,
            yes_no(&q["paused"]),
            yes_no(&q["sold_out"]),
            stock,
            text(&q["sale"]),
            if overrides.is_empty() {
                "-".into()
            } else {
                overrides.join(",")
            },
        ]);
    }
    t.render()
}

/// The knobs a `set` moved, old -> new; in force first, then the stored
/// overrides (`-` = none, as configured).
fn changes(queue: &str, before: &Value, after: &Value) -> String {
    const SHOWN: [(&str, &str); 10] = [
        ("drain_rate", "/drain_rate"),
        ("paused", "/paused"),
        ("stock", "/stock"),
        ("sold_out", "/sold_out"),
        ("sale", "/sale"),
        ("pow_difficulty", "/pow_difficulty"),
        ("override drain_rate", "/overrides/drain_rate"),
        ("override stock", "/overrides/stock"),
        ("override open", "/overrides/open"),
        ("override pow_difficulty", "/overrides/pow_difficulty"),
    ];
    let mut t = Table::new(&["QUEUE", "KNOB", "OLD", "", "NEW"]);
    let mut moved = false;
    for (name, pointer) in SHOWN {
        let (old, new) = (before.pointer(pointer), after.pointer(pointer));
        if old != new {
            moved = true;
            let show = |v: Option<&Value>| v.map_or("-".into(), text);
            t.row(vec![
                queue.into(),
                name.into(),
                show(old),
                "->".into(),
                show(new),
            ]);
        }
    }
    if moved {
        t.render()
    } else {
        format!("{queue}: nothing changed (the knobs were already so)")
    }
}

/// A JSON value as a table cell: `-` for null, whole numbers without `.0`.
fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

fn yes_no(v: &Value) -> String {
    if v.as_bool() == Some(true) {
        "yes"
    } else {
        "no"
    }
    .into()
}
