//! The admin API for people: `flashgate admin` prints tables (and the API's
//! JSON with `--output json`) and has a flag for every knob; named admin
//! tokens are the actors of the audit trail — the `knobs_changed` events
//! and one structured log line per knob changed.

mod support;

use serde_json::{json, Value};
use support::*;

/// `flashgate admin --url <admin> --token <token> ARGS...`: exit code,
/// stdout, stderr.
async fn admin(url: &str, token: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let mut cmd = flashgate();
    cmd.args(["admin", "--url", url, "--token", token])
        .args(args)
        .env_remove("FLASHGATE_ADMIN_TOKEN")
        .env_remove("FLASHGATE_ADMIN_URL");
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A table's lines as their whitespace-separated words.
fn words(table: &str) -> Vec<Vec<&str>> {
    table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_command_prints_tables_json_and_sets_every_knob() {
    let upstream = MockUpstream::start().await;
    let gw = Gateway::builder()
        .toml("stock = 10\nadmin_token = \"t0ken\"\n")
        .upstream(&upstream)
        .start()
        .await;
    let url = format!("http://{}", gw.admin_addr);

    // A table by default, like `kubectl get`.
    let (code, out, err) = admin(&url, "t0ken", &["queues"]).await;
    assert_eq!(code, Some(0), "{err}");
    let rows = words(&out);
    assert_eq!(
        rows[0],
        [
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
            "OVERRIDES"
        ],
        "{out}"
    );
    assert_eq!(
        rows[1],
        ["checkout", "embedded", "0", "0", "-", "100/s", "no", "no", "10/10", "open", "-"],
        "{out}"
    );
    // Columns line up: every header starts where its cells do.
    let lines: Vec<&str> = out.lines().collect();
    let at = |line: &str, word: &str| line.find(word).unwrap();
    assert_eq!(at(lines[0], "PHASE"), at(lines[1], "open"), "{out}");

    // `--output json` (before or after the subcommand): the API's answer.
    let c = gw.client();
    let auth = [("authorization", "Bearer t0ken")];
    let api = c.admin("GET", "/admin/queues", &auth, "").await.json();
    for args in [
        &["--output", "json", "queues"][..],
        &["queues", "-o", "json"],
    ] {
        let (code, out, err) = admin(&url, "t0ken", args).await;
        assert_eq!(code, Some(0), "{err}");
        let printed: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(printed, api, "{args:?}");
    }

    // Every knob flag at once; the table says what moved, old -> new.
    let set = [
        "set",
        "checkout",
        "--drain-rate",
        "40",
        "--pause",
        "--stock",
        "5",
        "--close",
        "--sold-out",
        "--pow-difficulty",
        "12",
    ];
    let (code, out, err) = admin(&url, "t0ken", &set).await;
    assert_eq!(code, Some(0), "{err}");
    let rows = words(&out);
    assert_eq!(rows[0], ["QUEUE", "KNOB", "OLD", "NEW"], "{out}");
    for row in [
        &["checkout", "drain_rate", "100", "->", "40"][..],
        &["checkout", "paused", "false", "->", "true"],
        &["checkout", "stock", "10", "->", "5"],
        &["checkout", "sold_out", "false", "->", "true"],
        &["checkout", "sale", "open", "->", "closed"],
        &["checkout", "pow_difficulty", "0", "->", "12"],
        &["checkout", "override", "drain_rate", "-", "->", "40"],
        &["checkout", "override", "pow_difficulty", "-", "->", "12"],
        &["checkout", "override", "stock", "-", "->", "5"],
        &["checkout", "override", "open", "-", "->", "false"],
    ] {
        assert!(rows.contains(&row.to_vec()), "no {row:?} in:\n{out}");
    }
    let q = c.admin("GET", "/admin/queues", &auth, "").await.json()["queues"][0].clone();
    assert_eq!(
        (
            &q["drain_rate"],
            &q["paused"],
            &q["stock"],
            &q["sold_out"],
            &q["sale"]
        ),
        (
            &json!(40.0),
            &json!(true),
            &json!(5),
            &json!(true),
            &json!("closed")
        )
    );

    // Back: each knob's opposite or "as configured", as JSON.
    let back = [
        "set",
        "checkout",
        "--resume",
        "--not-sold-out",
        "--open",
        "--configured-stock",
        "--clear",
        "drain_rate",
        "--clear",
        "pow_difficulty",
        "--output",
        "json",
    ];
    let (code, out, err) = admin(&url, "t0ken", &back).await;
    assert_eq!(code, Some(0), "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (
            &v["drain_rate"],
            &v["paused"],
            &v["stock"],
            &v["sold_out"],
            &v["sale"]
        ),
        (
            &json!(100.0),
            &json!(false),
            &json!(10),
            &json!(false),
            &json!("open")
        )
    );
    assert_eq!(
        v["overrides"],
        json!({"drain_rate": null, "stock": null, "open": true, "pow_difficulty": null})
    );
    let (code, out, _) = admin(&url, "t0ken", &["set", "checkout", "--schedule"]).await;
    assert_eq!(code, Some(0));
    assert!(
        words(&out).contains(&vec!["checkout", "override", "open", "true", "->", "-"]),
        "{out}"
    );
    // The same again moves nothing, and says so.
    let (code, out, _) = admin(&url, "t0ken", &["set", "checkout", "--resume"]).await;
    assert_eq!(code, Some(0));
    assert!(out.contains("nothing changed"), "{out}");

    // Refused: a wrong token, a flag pair that contradicts itself.
    let (code, _, err) = admin(&url, "wrong", &["queues"]).await;
    assert_eq!(code, Some(1));
    assert!(err.contains("401"), "{err}");
    let (code, _, err) = admin(
        &url,
        "t0ken",
        &["set", "checkout", "--sold-out", "--not-sold-out"],
    )
    .await;
    assert_eq!(code, Some(2), "{err}");
}

/// Two named tokens: each is accepted and named as the actor of its change
/// in the `knobs_changed` events and in the audit log line (JSON log, with
/// `actor`, `queue`, `knob`, `old`, `new`); a wrong or missing token is
/// refused; the CLI takes its token from FLASHGATE_ADMIN_TOKEN too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_tokens_are_the_actors_of_the_events_and_the_log() {
    let upstream = MockUpstream::start().await;
    let mut gw = Gateway::builder()
        .upstream(&upstream)
        .args(&[
            "--admin-token",
            "ops=s3cret-ops",
            "--admin-token",
            "bot=s3cret-bot",
        ])
        .args(&["--log-format", "json"])
        .log(Some("info"))
        .capture_stderr()
        .process()
        .await;
    let c = gw.client();
    let ops = [("authorization", "Bearer s3cret-ops")];
    let bot = [("authorization", "Bearer s3cret-bot")];
    let path = "/admin/queues/checkout";
    let by_ops = c.admin("PATCH", path, &ops, r#"{"drain_rate": 40}"#).await;
    assert_eq!(by_ops.status, 200);
    let by_bot = c
        .admin("PATCH", path, &bot, r#"{"paused": true, "sold_out": true}"#)
        .await;
    assert_eq!(by_bot.status, 200);
    for wrong in [
        &[("authorization", "Bearer s3cret-op")][..],
        &[("authorization", "Bearer s3cret-ops s3cret-bot")],
        &[],
    ] {
        let refused = c
            .admin("PATCH", "/admin/queues/checkout", wrong, r#"{"stock": 1}"#)
            .await;
        assert_eq!(refused.status, 401, "{wrong:?}");
        assert_eq!(refused.header("www-authenticate"), "Bearer");
    }

    // The CLI, its token from the environment: the actor is `bot`.
    let url = format!("http://127.0.0.1:{}", gw.admin);
    let mut cli = flashgate();
    cli.args(["admin", "--url", &url, "set", "checkout", "--resume"])
        .env("FLASHGATE_ADMIN_TOKEN", "s3cret-bot");
    let out = tokio::task::spawn_blocking(move || cli.output().unwrap())
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    // The events name each token.
    let page = c
        .admin(
            "GET",
            "/admin/queues/checkout/events?type=knobs_changed",
            &ops,
            "",
        )
        .await;
    assert_eq!(page.status, 200);
    let page = page.json();
    let events = page["events"].as_array().unwrap();
    let seen: Vec<(&str, Value)> = events
        .iter()
        .map(|e| {
            let changes = serde_json::from_str(e["fields"]["changes"].as_str().unwrap()).unwrap();
            (e["fields"]["actor"].as_str().unwrap(), changes)
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("ops", json!({"drain_rate": {"old": null, "new": 40}})),
            (
                "bot",
                json!({"paused": {"old": false, "new": true}, "sold_out": {"old": false, "new": true}})
            ),
            ("bot", json!({"paused": {"old": true, "new": false}})),
        ]
    );

    // And so does the log: one line per knob, structured, no Debug text.
    let lines =
        gw.read_until(|l| l.contains("\"knob\":\"paused\"") && l.contains("\"old\":\"true\""));
    let audit: Vec<[String; 5]> = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["message"] == "queue knob changed by the admin API")
        .map(|l| {
            assert_eq!(l["level"], "INFO", "{l}");
            ["actor", "queue", "knob", "old", "new"].map(|k| {
                l[k].as_str()
                    .unwrap_or_else(|| panic!("no {k} in {l}"))
                    .to_string()
            })
        })
        .collect();
    let expected = [
        ["ops", "checkout", "drain_rate", "null", "40"],
        ["bot", "checkout", "paused", "false", "true"],
        ["bot", "checkout", "sold_out", "false", "true"],
        ["bot", "checkout", "paused", "true", "false"],
    ]
    .map(|row| row.map(String::from));
    assert_eq!(audit, expected, "{}", lines.join("\n"));
    for l in &lines {
        assert!(
            !l.contains("KnobsPatch") && !l.contains("Knobs {") && !l.contains("s3cret"),
            "{l}"
        );
    }
}
