//! No spelling of the queued route reaches a real order service except
//! through the queue: the gateway runs with `--passthrough` in front of
//! real web stacks — Flask under gunicorn (WSGI) and Starlette under uvicorn
//! (ASGI), from `tests/stacks/` — and every spelling of `POST /checkout` in
//! a generated list is sent over raw TCP. Each order the framework's order
//! endpoint takes must carry an `X-Flashgate-Ticket` the gateway issued in a
//! 202; the ambiguous spellings must get 400.
//!
//! Run with `--nocapture` for the table of what each stack saw.
//! The stacks live in `target/test-venv` (tests/support/stacks.rs).

mod support;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde_json::Value;

use support::raw::request;
use support::stacks::{OrderService, Stack};
use support::*;

/// How a listed spelling must be answered.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Expect {
    /// 202 with a ticket, whatever the case option.
    Queued,
    /// 202 when the queue folds case, else passed through.
    QueuedIfFolded,
    /// 400 bad_request: ambiguous.
    Refused,
    /// Passed through: not the route (double-encoding stays literal).
    Passed,
}

use Expect::*;

/// The spellings of issue 16, and more of the same kinds.
const LISTED: &[(&str, Expect)] = &[
    ("/checkout", Queued),
    ("/checkout/", Queued),
    ("//checkout", Queued),
    ("/%63heckout", Queued),
    ("/check%6Fut", Queued),
    ("/./checkout", Queued),
    ("/x/../checkout", Queued),
    ("/checkout;a=b", Queued),
    ("/checkout/;a=b", Queued),
    ("/%2e/checkout", Queued),
    ("/x/%2e%2e/checkout", Queued),
    ("/checkout/.", Queued),
    ("/checkout?x=1", Queued),
    ("//%63heck%6fut//;a=b?x=1", Queued),
    ("/Checkout", QueuedIfFolded),
    ("/CHECKOUT", QueuedIfFolded),
    ("/%43heckout", QueuedIfFolded),
    ("/cHeCkOuT/;a=b?x=1", QueuedIfFolded),
    ("/%2563heckout", Passed),
    ("/checkout%252f", Passed),
    ("/checkout%2f", Refused),
    ("/checkout%2F", Refused),
    ("/check%2Fout", Refused),
    ("/checkout%00", Refused),
    ("/checkout\\", Refused),
    ("/..%2fcheckout", Refused),
    ("/%2E%2E/checkout", Refused),
    ("/x/..;/checkout", Refused),
    ("/checkout%5c", Refused),
    ("/check%zzout", Refused),
    ("/checkout%4", Refused),
];

/// Every combination of these, after the listed ones.
const PREFIXES: &[&str] = &["/", "//", "/./", "/x/../", "/%2e/", "/x/%2E%2E/", "/x/..;/"];
const NAMES: &[&str] = &[
    "checkout",
    "%63heckout",
    "check%6fut",
    "Checkout",
    "CHECK%4FUT",
    "%2563heckout",
];
const SUFFIXES: &[&str] = &[
    "", "/", ";a=b", "/;a=b", "/.", "%2F", "%252f", "\\", "%00", "?x=1",
];

fn spellings() -> Vec<String> {
    let mut all: Vec<String> = LISTED.iter().map(|(s, _)| s.to_string()).collect();
    for p in PREFIXES {
        for n in NAMES {
            for s in SUFFIXES {
                all.push(format!("{p}{n}{s}"));
            }
        }
    }
    all
}

/// Marks of a generated spelling the gateway must refuse, whatever else it
/// holds: an encoded `/` or `\\`, `%00`, a `\\`, a dot segment with `;`.
fn ambiguous(spelling: &str) -> bool {
    let lower = spelling.to_ascii_lowercase();
    ["%2f", "%5c", "%00", "\\", "..;"]
        .iter()
        .any(|m| lower.contains(m))
}

/// One spelling as sent and as it ended.
struct Outcome {
    spelling: String,
    status: u16,
    code: Option<String>,
    ticket: Option<String>,
    /// What the stack's router saw with this spelling's probe: (status, path).
    seen: Vec<(u64, String)>,
    /// Orders its order endpoint took: (path, query, ticket).
    orders: Vec<(String, String, Option<String>)>,
}

/// A run: the gateway (embedded queue, `--passthrough`, and
/// `route_case_insensitive` as given) in front of one stack, every spelling
/// sent once, the drain waited for. Without a gateway, the listed spellings
/// go straight to the stack: what it would take unguarded.
async fn run(stack: Stack, app_folds: bool, gateway_folds: Option<bool>) -> Vec<Outcome> {
    let service = OrderService::start(stack, app_folds).await;
    let gw = match gateway_folds {
        Some(folds) => {
            let toml = format!(
                "passthrough = true\ndrain_rate = 1000\nmax_in_flight = 8\n\
                 route_case_insensitive = {folds}\n"
            );
            Some(
                Gateway::builder()
                    .toml(&toml)
                    .upstream(&service)
                    .start()
                    .await,
            )
        }
        None => None,
    };
    let target = gw.as_ref().map_or(service.addr, |g| g.public_addr);
    let spellings = match gw {
        Some(_) => spellings(),
        None => LISTED.iter().map(|(s, _)| s.to_string()).collect(),
    };
    let mut sent = Vec::new();
    for (i, spelling) in spellings.iter().enumerate() {
        let probe = i.to_string();
        let headers = [
            ("content-type", "application/json"),
            ("x-probe", probe.as_str()),
        ];
        let a = request(target, "POST", spelling, &headers, r#"{"sku":"A1"}"#).await;
        let doc: Option<Value> = serde_json::from_slice(&a.body).ok();
        let field = |k: &str| doc.as_ref().and_then(|d| d[k].as_str()).map(String::from);
        let ticket = (a.status == 202 && gw.is_some())
            .then(|| field("ticket"))
            .flatten();
        assert!(
            a.status != 202 || ticket.is_some() || gw.is_none(),
            "{spelling}: 202 without a ticket"
        );
        sent.push((spelling.clone(), a.status, field("code"), ticket));
    }
    let issued = sent.iter().filter(|s| s.3.is_some()).count();
    eventually(
        Duration::from_secs(60),
        &format!("{} to take the {issued} queued orders", stack.name()),
        || async {
            let mut orders = service.orders();
            orders.retain(|o| o["ticket"].is_string());
            (orders.len() >= issued).then_some(())
        },
    )
    .await;
    if let Some(gw) = gw {
        gw.stop().await;
    }
    let events = service.events();
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    sent.into_iter()
        .enumerate()
        .map(|(i, (spelling, status, code, ticket))| {
            let probe = Value::from(i.to_string());
            let mine = || events.iter().filter(|e| e["probe"] == probe);
            Outcome {
                spelling,
                status,
                code,
                ticket,
                seen: mine()
                    .filter(|e| e["event"] == "seen")
                    .map(|e| (e["status"].as_u64().unwrap_or(0), text(&e["path"])))
                    .collect(),
                orders: mine()
                    .filter(|e| e["event"] == "order")
                    .map(|e| {
                        let ticket = e["ticket"].as_str().map(String::from);
                        (text(&e["path"]), text(&e["query"]), ticket)
                    })
                    .collect(),
            }
        })
        .collect()
}

/// The orders the stack took that no 202 of this run issued a ticket for.
fn bypasses(outcomes: &[Outcome]) -> Vec<String> {
    let issued: HashSet<&str> = outcomes
        .iter()
        .filter_map(|o| o.ticket.as_deref())
        .collect();
    let mut out = Vec::new();
    for o in outcomes {
        for (path, _, ticket) in &o.orders {
            if !ticket.as_deref().is_some_and(|t| issued.contains(t)) {
                out.push(format!(
                    "{} -> order at {path}, ticket {ticket:?}",
                    o.spelling
                ));
            }
        }
    }
    out
}

/// The claims of this file about one run.
fn check(label: &str, outcomes: &[Outcome], folds: bool) {
    assert_eq!(
        bypasses(outcomes),
        Vec::<String>::new(),
        "{label}: orders outside the queue"
    );
    let mut delivered = HashSet::new();
    for o in outcomes {
        let what = format!("{label}: {} got {}", o.spelling, o.status);
        if let Some(ticket) = &o.ticket {
            assert_eq!(o.orders.len(), 1, "{what}: its ticket's order, once");
            let (path, query, with) = &o.orders[0];
            assert_eq!(with.as_ref(), Some(ticket), "{what}");
            assert_eq!(path, "/checkout", "{what}: forwarded as the route");
            let want = o.spelling.split_once('?').map_or("", |(_, q)| q);
            assert_eq!(query, want, "{what}: the query as sent");
            assert!(delivered.insert(ticket.clone()), "{what}: ticket twice");
        } else {
            assert!(o.orders.is_empty(), "{what}: an order without a ticket");
        }
        if ambiguous(&o.spelling) {
            assert_eq!(o.status, 400, "{what}: ambiguous");
        }
        if o.status == 400 {
            assert_eq!(o.code.as_deref(), Some("bad_request"), "{what}");
            assert!(
                o.seen.is_empty(),
                "{what}: a refused spelling reached the stack"
            );
        }
    }
    for (spelling, expect) in LISTED {
        let o = outcomes
            .iter()
            .find(|o| o.spelling == *spelling)
            .expect("sent");
        let what = format!("{label}: {spelling} got {}", o.status);
        match (expect, folds) {
            (Queued, _) | (QueuedIfFolded, true) => assert_eq!(o.status, 202, "{what}"),
            (Refused, _) => assert_eq!(o.status, 400, "{what}"),
            (Passed, _) | (QueuedIfFolded, false) => {
                assert!(o.ticket.is_none(), "{what}");
                assert_eq!(o.seen.len(), 1, "{what}: passed through to the stack");
                assert_eq!(o.seen[0].0, u64::from(o.status), "{what}: its own answer");
            }
        }
    }
}

/// The answer the client got, then what reached the stack: its order
/// endpoint (with or without a ticket) or, when the router answered
/// something else, that answer and the path it routed on.
fn cell(o: &Outcome) -> String {
    let printable = |p: &str| p.replace('\0', "\\0");
    match (o.orders.first(), o.seen.first()) {
        (Some((_, _, Some(_))), _) => format!("{} order, ticket", o.status),
        (Some((_, _, None)), _) => format!("{} ORDER, NO TICKET", o.status),
        (None, Some((status, path))) if *status == u64::from(o.status) => {
            format!("{status} {}", printable(path))
        }
        (None, Some((status, path))) => format!("{} ({status} {})", o.status, printable(path)),
        (None, None) => format!("{} not forwarded", o.status),
    }
}

fn summary(label: &str, outcomes: &[Outcome]) -> String {
    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    for o in outcomes {
        *statuses.entry(o.status).or_default() += 1;
    }
    let orders: usize = outcomes.iter().map(|o| o.orders.len()).sum();
    format!(
        "{label}: {} spellings, gateway statuses {statuses:?}, {orders} orders, {} without a gateway ticket",
        outcomes.len(),
        bypasses(outcomes).len()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_spelling_reaches_a_real_order_service_except_through_the_queue() {
    // (stack, the stack folds case, route_case_insensitive)
    let runs = [
        (Stack::Wsgi, false, false),
        (Stack::Asgi, false, false),
        (Stack::Wsgi, true, true),
        (Stack::Asgi, true, true),
    ];
    let mut columns = Vec::new();
    for stack in [Stack::Wsgi, Stack::Asgi] {
        let label = format!("{} (case-sensitive), NO GATEWAY", stack.name());
        columns.push((label, run(stack, false, None).await));
    }
    for (stack, app_folds, gateway_folds) in runs {
        let label = format!(
            "{} ({}), through the gateway, route_case_insensitive={gateway_folds}",
            stack.name(),
            if app_folds {
                "routes ignoring case"
            } else {
                "case-sensitive"
            }
        );
        let outcomes = run(stack, app_folds, Some(gateway_folds)).await;
        check(&label, &outcomes, gateway_folds);
        columns.push((label, outcomes));
    }
    println!("\nThe client's status, then what the order service took or answered, per run:");
    for (i, (label, _)) in columns.iter().enumerate() {
        println!("  [{}] {label}", i + 1);
    }
    print!("\n{:<26}", "spelling");
    for i in 1..=columns.len() {
        print!("| {:<20}", format!("[{i}]"));
    }
    println!();
    for (row, (spelling, _)) in LISTED.iter().enumerate() {
        print!("{spelling:<26}");
        for (_, outcomes) in &columns {
            print!("| {:<20}", cell(&outcomes[row]));
        }
        println!();
    }
    println!(
        "\nGenerated: {} prefixes x {} names x {} suffixes, after the listed ones:",
        PREFIXES.len(),
        NAMES.len(),
        SUFFIXES.len()
    );
    for (label, outcomes) in &columns[2..] {
        println!("  {}", summary(label, outcomes));
    }
}

/// The check above can fail: a gateway that matches case-sensitively in
/// front of a stack that routes ignoring case (the misconfiguration
/// `route_case_insensitive` exists for) lets `/Checkout` through to the
/// order endpoint, and the same check sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_check_sees_a_bypass_when_case_folding_is_left_off() {
    for stack in [Stack::Wsgi, Stack::Asgi] {
        let outcomes = run(stack, true, Some(false)).await;
        let found = bypasses(&outcomes);
        println!(
            "{} (routes ignoring case), route_case_insensitive=false: {} orders without a ticket, e.g.",
            stack.name(),
            found.len()
        );
        for spelling in ["/Checkout", "/CHECKOUT", "/%43heckout"] {
            let seen = found
                .iter()
                .find(|b| b.starts_with(&format!("{spelling} -> ")))
                .unwrap_or_else(|| {
                    panic!(
                        "{}: {spelling} not seen as a bypass: {found:?}",
                        stack.name()
                    )
                });
            println!("  BYPASS {seen}");
        }
    }
}
