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
    let seed = std::env::var("FLASHGATE_SCHEMATHESIS_SEED").unwrap_or_else(|_| SEED.into());
    let mut cmd = Command::new(bin.join("schemathesis"));
    cmd.current_dir(work.path())
        .arg("run")
        .arg(format!("{base}/openapi.json"))
        .args(["--url", &base])
        // Valid and invalid requests, every phase: the document's examples,
        // boundary coverage, random fuzzing, and stateful sequences that
        // follow the document's links (admit, then poll, cancel, collect).
        .args(["--mode", "all"])
        .args(["--phases", "examples,coverage,fuzzing,stateful"])
        // Every check schemathesis has: status codes, content types, schemas
        // and headers as documented, and the negative/positive data, missing
        // header, unsupported method and resource checks.
        .args(["--checks", "all", "--exclude-checks", "use_after_free"])
        // The admin paths are served on the admin listener, not on `base`.
        .args(["--exclude-tag", "admin"])
        .args(["--max-examples", MAX_EXAMPLES, "--seed", &seed])
        // One worker: Hypothesis is not thread-safe, and two workers now and
        // then die on a KeyError in its shared strategy caches (a
        // schemathesis error, not a finding).
        .args(["--workers", "1", "--request-timeout", "70"])
        .args(["--output-truncate", "false"])
        .env("NO_COLOR", "1")
        .env("SCHEMATHESIS_TELEMETRY", "false");
    // Two checks read this API wrongly: a valid request the queue's state
    // refuses is still a right answer (410 once sold out; 422 for an
    // Idempotency-Key the run reuses with another body, SPEC §3.1), so the
    // positive-data check is told those statuses; and DELETE on a ticket
    // cancels it, after which the ticket is still there to read as
    // `cancelled` (SPEC §3.3), not gone as `use_after_free` expects of a
    // deleted resource, so that one check is left out (above).
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
    // The summary's "N generated, N passed" line.
    let cases: u64 = out
        .lines()
        .find_map(|l| {
            let (n, rest) = l.trim().split_once(' ')?;
            rest.starts_with("generated,").then(|| n.parse().ok())?
        })
        .unwrap_or(0);
    assert!(cases > 0, "no test case was generated:\n{out}");
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
