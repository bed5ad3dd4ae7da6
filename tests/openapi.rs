//! `docs/openapi.yaml` against the gateway it describes: the document is a
//! valid OpenAPI 3.1 description, `/openapi.json` serves exactly it, and
//! schemathesis, generating valid and invalid requests from it, finds no 5xx
//! and no answer that the document does not describe.
//!
//! The Python tools live in `target/test-venv`, which `scripts/test` makes
//! from the pins in `tests/requirements.txt`.

mod support;

use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use support::stacks::venv_bin;
use support::*;

/// How long schemathesis may run at most before the test gives up on it.
const SCHEMATHESIS_DEADLINE: Duration = Duration::from_secs(600);
/// Test cases per operation and phase; small, so the suite stays quick.
const MAX_EXAMPLES: &str = "25";
/// Fixed so that a failure reproduces; `FLASHGATE_SCHEMATHESIS_SEED` overrides.
const SEED: &str = "20261128";

/// The venv's tools this file runs.
const TOOLS: &[&str] = &["python", "openapi-spec-validator", "schemathesis"];

/// Runs a tool to completion with a deadline; returns (success, stdout + stderr).
async fn run(cmd: &mut Command, deadline: Duration) -> (bool, String) {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().expect("the tool starts");
    let out = tokio::time::timeout(deadline, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{cmd:?} did not finish within {deadline:?}"))
        .expect("the tool runs");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_is_valid_and_is_what_the_gateway_serves() {
    let bin = venv_bin(TOOLS);
    let yaml = repo().join("docs/openapi.yaml");
    let (ok, out) = run(
        Command::new(bin.join("openapi-spec-validator"))
            .args(["--schema", "3.1"])
            .arg(&yaml),
        Duration::from_secs(120),
    )
    .await;
    assert!(ok, "docs/openapi.yaml is not valid OpenAPI 3.1:\n{out}");

    let upstream = MockUpstream::start().await;
    let gateway = Gateway::builder().upstream(&upstream).start().await;
    let served = gateway.client().get("/openapi.json").await;
    assert_eq!(served.status, 200);
    assert_eq!(served.header("content-type"), "application/json");
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("openapi.json");
    std::fs::write(&json, &served.body).unwrap();

    // build.rs converted it; PyYAML, another parser, must read the YAML the same way.
    let same = "import json, sys, yaml\n\
                y = yaml.safe_load(open(sys.argv[1]))\n\
                j = json.load(open(sys.argv[2]))\n\
                sys.exit(0 if y == j else 'the served JSON differs from the YAML')";
    let (ok, out) = run(
        Command::new(bin.join("python"))
            .args(["-c", same])
            .arg(&yaml)
            .arg(&json),
        Duration::from_secs(60),
    )
    .await;
    assert!(ok, "{out}");
}

/// The seed of a run: fixed, so that a failure reproduces;
/// `FLASHGATE_SCHEMATHESIS_SEED` overrides.
fn seed() -> String {
    std::env::var("FLASHGATE_SCHEMATHESIS_SEED").unwrap_or_else(|_| SEED.into())
}

/// `schemathesis run` of the document at `{schema_base}/openapi.json`
/// against the listener at `base`, from `work` (where a
/// `schemathesis.toml` may go).
fn schemathesis(
    bin: &std::path::Path,
    schema_base: &str,
    base: &str,
    work: &std::path::Path,
    seed: &str,
) -> Command {
    let mut cmd = Command::new(bin.join("schemathesis"));
    cmd.current_dir(work)
        .arg("run")
        .arg(format!("{schema_base}/openapi.json"))
        .args(["--url", base])
        // Valid and invalid requests, every phase: the document's examples,
        // boundary coverage, random fuzzing, and stateful sequences that
        // follow the document's links (admit, then poll, cancel, collect).
        .args(["--mode", "all"])
        .args(["--phases", "examples,coverage,fuzzing,stateful"])
        // Every check schemathesis has: status codes, content types, schemas
        // and headers as documented, and the negative/positive data, missing
        // header, unsupported method, resource and authentication checks;
        // but `use_after_free` (see the public run).
        .args(["--checks", "all", "--exclude-checks", "use_after_free"])
        .args(["--max-examples", MAX_EXAMPLES, "--seed", seed])
        // One worker: Hypothesis is not thread-safe, and two workers now and
        // then die on a KeyError in its shared strategy caches (a
        // schemathesis error, not a finding).
        .args(["--workers", "1", "--request-timeout", "70"])
        .args(["--output-truncate", "false"])
        .env("NO_COLOR", "1")
        .env("SCHEMATHESIS_TELEMETRY", "false");
    cmd
}

/// The test cases a run's summary counts ("N generated, N passed").
fn cases(out: &str) -> u64 {
    let cases = out
        .lines()
        .find_map(|l| {
            let (n, rest) = l.trim().split_once(' ')?;
            rest.starts_with("generated,").then(|| n.parse().ok())?
        })
        .unwrap_or(0);
    assert!(cases > 0, "no test case was generated:\n{out}");
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_undocumented_answer() {
    let bin = venv_bin(TOOLS);
    let upstream = MockUpstream::start().await;
    // A fast drain, so tickets complete while the run follows them, and room
    // for every admission (the default capacity is a million).
    // Preflights from one allowed origin; Prefer: wait held 2 s at most.
    let toml = "drain_rate = 500\nmax_wait = \"2s\"\ncors_origins = [\"https://shop.example\"]\n";
    let gateway = Gateway::builder()
        .toml(toml)
        .upstream(&upstream)
        .start()
        .await;
    let base = gateway.base();
    let work = tempfile::tempdir().unwrap();
    let seed = seed();
    let mut cmd = schemathesis(&bin, &base, &base, work.path(), &seed);
    // The admin and health paths are served on the admin listener, not on
    // `base` (the next test runs them there).
    cmd.args(["--exclude-tag", "admin", "--exclude-tag", "health"]);
    // Two checks read this API wrongly: a valid request the queue's state
    // refuses is still a right answer (410 once sold out; 422 for an
    // Idempotency-Key the run reuses with another body, SPEC §3.1), so the
    // positive-data check is told those statuses; and DELETE on a ticket
    // cancels it, after which the ticket is still there to read as
    // `cancelled` (SPEC §3.3), not gone as `use_after_free` expects of a
    // deleted resource, so that one check is left out (in `schemathesis`).
    std::fs::write(
        work.path().join("schemathesis.toml"),
        "[checks.positive_data_acceptance]\n\
         expected-statuses = [\"2xx\", \"3xx\", \"401\", \"403\", \"404\", \"409\", \"410\", \"422\", \"429\", \"5xx\"]\n",
    )
    .unwrap();
    let (ok, out) = run(&mut cmd, SCHEMATHESIS_DEADLINE).await;
    println!("{out}");
    assert!(ok, "schemathesis found failures (seed {seed}), see above");

    // It did test something: cases were generated and admissions reached the
    // upstream, each with its ticket as the Idempotency-Key.
    let cases = cases(&out);
    println!("schemathesis: {cases} test cases, no failures");
    eventually(Duration::from_secs(30), "an admission upstream", || async {
        (!upstream.received().is_empty()).then_some(())
    })
    .await;
    for r in upstream.received() {
        assert!(r.path.starts_with("/checkout"), "{}", r.path);
        assert!(!r.header("idempotency-key").is_empty());
    }
}

/// The admin API (and the probes) as documented, against the admin
/// listener with a named token: schemathesis turns the knobs with valid and
/// invalid bodies, checks that a request without the token is refused
/// (`ignored_auth`), that every answer is documented, and that no method
/// the document does not list is served (405).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_checks_the_admin_api_on_the_admin_listener() {
    let bin = venv_bin(TOOLS);
    let upstream = MockUpstream::start().await;
    let gateway = Gateway::builder()
        .toml("stock = 100\nadmin_token = [\"ops=s3cret-ops\", \"bot=s3cret-bot\"]\n")
        .upstream(&upstream)
        .start()
        .await;
    // Events to page through.
    let c = gateway.client();
    let ticket = c.ticket("{}").await;
    c.until_terminal(&ticket, Duration::from_secs(20)).await;

    let admin = format!("http://{}", gateway.admin_addr);
    let work = tempfile::tempdir().unwrap();
    let seed = seed();
    let mut cmd = schemathesis(&bin, &gateway.base(), &admin, work.path(), &seed);
    cmd.args(["--include-tag", "admin", "--include-tag", "health"]);
    // The token goes with the document's `adminToken` scheme, so that
    // schemathesis also tries without it (and expects the 401).
    // The events' `after` (a cursor of this queue), `since` (a time or a
    // duration) and `type` (a comma-separated list of types) are strings
    // the schema cannot pin down: a 400 naming the parameter is a right
    // answer to a string that is none of those. Their pages are read at
    // once: a long poll (`wait`) holds an empty page up to 60 s, and
    // tests/events.rs follows one. A dead-letter `cursor` is opaque too:
    // only a `next` of an earlier page or bulk call is one.
    let config = r#"
[auth.openapi.adminToken]
bearer = "s3cret-ops"

[checks.positive_data_acceptance]
expected-statuses = ["2xx", "401", "404"]

[[operations]]
include-operation-id = "queueEvents"
parameters = { "query.wait" = 0 }
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "404"]

[[operations]]
include-operation-id = ["listDeadLetters", "discardDeadLetters", "replayDeadLetters"]
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "404"]
"#;
    std::fs::write(work.path().join("schemathesis.toml"), config).unwrap();
    let (ok, out) = run(&mut cmd, SCHEMATHESIS_DEADLINE).await;
    println!("{out}");
    assert!(ok, "schemathesis found failures (seed {seed}), see above");
    let cases = cases(&out);
    println!("schemathesis (admin): {cases} test cases, no failures");

    // Its changes went through, made by the token it had.
    let auth = [("authorization", "Bearer s3cret-bot")];
    let path = "/admin/queues/checkout/events?type=knobs_changed&limit=1000";
    let page = c.admin("GET", path, &auth, "").await.json();
    let actors: Vec<&str> = (page["events"].as_array().unwrap().iter())
        .filter_map(|e| e["fields"]["actor"].as_str())
        .collect();
    assert!(!actors.is_empty(), "no knob was changed:\n{out}");
    assert!(actors.iter().all(|a| *a == "ops"), "{actors:?}");
}
