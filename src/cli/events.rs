//! `flashgate events`: a queue's lifecycle events from a terminal, through
//! the admin API — a table for a person (like `kubectl get events -w`), or
//! JSON lines for a script; `--follow` long-polls for new ones.

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Args;
use http::Method;
use serde_json::Value;

use super::admin::AdminError;
use super::client::call;
use super::table::line;
pub use super::table::Output;

/// How long one `--follow` poll waits on the gateway.
const FOLLOW_WAIT_SECS: u64 = 25;
/// Events asked for per call.
const PAGE: usize = 500;

/// The `events` flags.
#[derive(Debug, Clone, Args)]
pub struct EventsArgs {
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
    /// The queue; default: every queue.
    #[arg(long, short)]
    pub queue: Option<String>,
    /// Keep printing new events as they come (Ctrl-C to stop).
    #[arg(long, short)]
    pub follow: bool,
    /// Only events of the last DURATION (`10m`, `1h`); default: every event kept.
    #[arg(long, value_name = "DURATION", value_parser = crate::config::parse_duration)]
    pub since: Option<Duration>,
    /// Only events of this type (repeatable): admitted, dispatched,
    /// completed, failed, cancelled, expired, sold_out, knobs_changed.
    #[arg(long = "type", short = 't', value_name = "TYPE", value_parser = crate::backend::events::EVENT_TYPES)]
    pub types: Vec<String>,
    /// `table` for people, `json` for one event a line.
    #[arg(long, short, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// The table's column widths but the last (DETAILS): fixed, as rows are
/// printed as they come.
const WIDTHS: [usize; 4] = [24, 12, 13, 48];

/// Prints the events, then (with `--follow`) new ones until the process
/// is stopped or the gateway cannot be reached.
pub async fn run(args: EventsArgs) -> Result<(), AdminError> {
    let queues = match &args.queue {
        Some(q) => vec![q.clone()],
        None => queue_names(&args).await?,
    };
    let since = args.since.map(|d| {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        now.saturating_sub(d).as_millis() as u64
    });
    // Each queue's cursor; `None` until its first page.
    let mut cursors: Vec<Option<String>> = vec![None; queues.len()];
    let mut out = std::io::stdout().lock();
    if args.output == Output::Table {
        let header = ["TIME", "QUEUE", "TYPE", "TICKET", "DETAILS"];
        let _ = writeln!(out, "{}", line(&header, &WIDTHS));
    }
    // What is there: page until every queue is read to its end.
    loop {
        let mut got = Vec::new();
        for (queue, cursor) in queues.iter().zip(cursors.iter_mut()) {
            let page = fetch(&args, queue, cursor.as_deref(), since, 0).await?;
            *cursor = page["next"].as_str().map(str::to_string);
            got.extend(events(&page));
        }
        if got.is_empty() {
            break;
        }
        print(&mut out, args.output, got);
    }
    if !args.follow {
        return Ok(());
    }
    loop {
        // One long poll per queue at once; whichever answers, all print.
        let polls = queues
            .iter()
            .zip(&cursors)
            .map(|(queue, cursor)| fetch(&args, queue, cursor.as_deref(), since, FOLLOW_WAIT_SECS));
        let pages = futures_util::future::join_all(polls).await;
        let mut got = Vec::new();
        for (page, cursor) in pages.into_iter().zip(cursors.iter_mut()) {
            let page = page?;
            *cursor = page["next"].as_str().map(str::to_string);
            got.extend(events(&page));
        }
        print(&mut out, args.output, got);
    }
}

async fn queue_names(args: &EventsArgs) -> Result<Vec<String>, AdminError> {
    let answer = call(
        &args.url,
        args.token.as_deref(),
        Method::GET,
        "/admin/queues",
        None,
    )
    .await?;
    Ok(answer["queues"]
        .as_array()
        .map(|qs| {
            qs.iter()
                .filter_map(|q| q["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default())
}

async fn fetch(
    args: &EventsArgs,
    queue: &str,
    after: Option<&str>,
    since: Option<u64>,
    wait: u64,
) -> Result<Value, AdminError> {
    let mut path = format!("/admin/queues/{queue}/events?limit={PAGE}&wait={wait}");
    match (after, since) {
        (Some(after), _) => path.push_str(&format!("&after={after}")),
        (None, Some(since)) => path.push_str(&format!("&since={since}")),
        (None, None) => {}
    }
    if !args.types.is_empty() {
        path.push_str(&format!("&type={}", args.types.join(",")));
    }
    Ok(call(&args.url, args.token.as_deref(), Method::GET, &path, None).await?)
}

fn events(page: &Value) -> Vec<Value> {
    page["events"].as_array().cloned().unwrap_or_default()
}

/// Prints events oldest first (several queues' interleaved by time).
fn print(out: &mut impl Write, output: Output, mut events: Vec<Value>) {
    events.sort_by_key(|e| e["at"].as_u64().unwrap_or(0));
    for e in events {
        let line = match output {
            Output::Json => e.to_string(),
            Output::Table => row(&e),
        };
        // A closed pipe (`| head`) ends the output, not the process.
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            std::process::exit(0);
        }
    }
}

/// One event as a table row: time, queue, type, ticket, then its own
/// fields as `name=value`.
fn row(e: &Value) -> String {
    let at = e["at"].as_u64().unwrap_or(0);
    let time = humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(at));
    let details = e["fields"]
        .as_object()
        .map(|f| {
            f.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    let cells = [
        time.to_string(),
        e["queue"].as_str().unwrap_or_default().to_string(),
        e["type"].as_str().unwrap_or_default().to_string(),
        e["ticket"].as_str().unwrap_or("-").to_string(),
        details,
    ];
    line(&cells, &WIDTHS)
}
