//! `flashgate admin`: the admin API from a terminal, for operators who live
//! in one during a sale.

use bytes::Bytes;
use clap::{Args, Subcommand};
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::dead_letters::Output;

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
    /// Bearer token, when the gateway has one.
    #[arg(long, env = "FLASHGATE_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// `table` for people, `json` for scripts (`dead-letters`; `queues`
    /// and `set` print the API's JSON).
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    #[command(subcommand)]
    pub action: AdminAction,
}

#[derive(Debug, Clone, Subcommand)]
pub enum AdminAction {
    /// List the queues: depth, in flight, governed rate, knobs.
    Queues,
    /// Change a queue's knobs; every instance follows within a second.
    Set(SetArgs),
    /// A queue's dead letters: list, show, replay, discard.
    DeadLetters(super::dead_letters::DeadLettersArgs),
}

#[derive(Debug, Clone, Args)]
pub struct SetArgs {
    /// The queue's name.
    pub queue: String,
    /// New drain rate, requests per second.
    #[arg(long)]
    pub drain_rate: Option<f64>,
    /// Clear a runtime override, back to the configured value:
    /// `drain_rate`, `stock` or `open` (the schedule); repeatable.
    #[arg(long, value_name = "KNOB", value_parser = ["drain_rate", "stock", "open"])]
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
    /// Back to the configured stock.
    #[arg(long)]
    pub configured_stock: bool,
    /// Open the sale now.
    #[arg(long, conflicts_with_all = ["close", "schedule"])]
    pub open: bool,
    /// Close the sale now.
    #[arg(long, conflicts_with = "schedule")]
    pub close: bool,
    /// Follow opens_at/closes_at again.
    #[arg(long)]
    pub schedule: bool,
}

impl SetArgs {
    /// The PATCH body.
    fn body(&self) -> serde_json::Value {
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
            body.insert("stock".into(), serde_json::Value::Null);
        }
        if self.open || self.close {
            body.insert("open".into(), self.open.into());
        }
        if self.schedule {
            body.insert("open".into(), serde_json::Value::Null);
        }
        for knob in &self.clear {
            body.insert(knob.clone(), serde_json::Value::Null);
        }
        body.into()
    }
}

/// Why an admin call failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("nothing to change: give at least one of --drain-rate, --pause, --resume, --stock, --configured-stock, --open, --close, --schedule, --clear")]
    NothingToChange,
    #[error("bad admin URL `{0}`")]
    Url(String),
    #[error(transparent)]
    DeadLetters(#[from] super::dead_letters::DeadLettersError),
    #[error("cannot reach the admin API at {url}: {why}")]
    Unreachable { url: String, why: String },
    #[error("the gateway answered {status}: {detail}")]
    Refused { status: u16, detail: String },
}

/// Runs an admin action; returns what to print.
pub async fn run(args: AdminArgs) -> Result<String, AdminError> {
    let base = args.url.trim_end_matches('/');
    let (method, path, body) = match &args.action {
        AdminAction::Queues => (Method::GET, "/admin/queues".to_string(), None),
        AdminAction::DeadLetters(dead) => {
            let json = args.output == Output::Json;
            return Ok(super::dead_letters::run(base, args.token.as_deref(), json, dead).await?);
        }
        AdminAction::Set(set) => {
            let body = set.body();
            if body.as_object().is_some_and(|o| o.is_empty()) {
                return Err(AdminError::NothingToChange);
            }
            (
                Method::PATCH,
                format!("/admin/queues/{}", set.queue),
                Some(body),
            )
        }
    };
    let value = call(base, args.token.as_deref(), method, &path, body).await?;
    Ok(serde_json::to_string_pretty(&value).unwrap_or_default())
}

/// One admin API call: its JSON answer, or why it failed.
pub async fn call(
    base: &str,
    token: Option<&str>,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<serde_json::Value, AdminError> {
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let mut req = Request::builder()
        .method(method)
        .uri(&url)
        .header("content-type", "application/json");
    if let Some(token) = token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
    let req = req
        .body(Full::new(bytes))
        .map_err(|_| AdminError::Url(base.to_string()))?;
    let client: Client<_, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let unreachable = |why: String| AdminError::Unreachable {
        url: url.clone(),
        why,
    };
    let resp = client
        .request(req)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| unreachable(e.to_string()))?
        .to_bytes();
    let value: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    if !status.is_success() {
        let detail = value["detail"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        return Err(AdminError::Refused {
            status: status.as_u16(),
            detail,
        });
    }
    Ok(value)
}
