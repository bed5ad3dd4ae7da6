use super::*;

use std::time::Duration;

/// The config from file text and flags (`("drain-rate", "20")`).
fn resolve(text: &str, flags: &[(&str, &str)]) -> Result<Config, String> {
    let settings = flags
        .iter()
        .map(|(flag, value)| Setting::flag(flag, value).expect("a known flag"))
        .collect::<Vec<_>>();
    load::from_toml(text, &settings).map_err(|e| e.to_string())
}

const WITH_UPSTREAM: &[(&str, &str)] = &[("upstream", "http://127.0.0.1:9000")];

#[test]
fn defaults_make_one_checkout_queue() {
    let c = resolve("", WITH_UPSTREAM).unwrap();
    assert_eq!(c.listen.to_string(), "0.0.0.0:8080");
    assert_eq!(c.admin_listen.to_string(), "127.0.0.1:9464");
    assert!(c.redis_url.is_none());
    assert_eq!(c.max_body, Size(64 * 1024));
    assert_eq!(c.ticket_ttl, Duration::from_secs(24 * 3600));
    assert_eq!(c.underscore_headers, UnderscoreHeaders::Drop);
    assert_eq!(c.queue.len(), 1);
    let q = &c.queue[0];
    assert_eq!(q.name, "checkout");
    assert_eq!(q.routes, vec!["POST /checkout".parse::<Route>().unwrap()]);
    assert_eq!(
        (q.drain_rate, q.drain_burst, q.max_in_flight),
        (100.0, 1, 64)
    );
    assert_eq!((q.max_queue, q.max_attempts), (1_000_000, 5));
    assert!(!q.route_case_insensitive);
    assert_eq!(q.stream_retention, Duration::from_secs(3600));
}

#[test]
fn upstream_is_required() {
    let err = resolve("", &[]).unwrap_err();
    assert!(err.contains("`upstream`"), "{err}");
}

#[test]
fn unknown_top_level_key_is_named() {
    let err = resolve("drain_rat = 5\n", &[]).unwrap_err();
    assert!(err.contains("drain_rat"), "{err}");
}

#[test]
fn unknown_queue_key_is_named() {
    let text = "[[queue]]\nname = \"a\"\nroutes = [\"POST /a\"]\nmax_inflight = 3\n";
    let err = resolve(text, &[]).unwrap_err();
    assert!(err.contains("max_inflight"), "{err}");
}

#[test]
fn flag_beats_file_beats_default() {
    let text = "drain_rate = 50\nmax_in_flight = 7\nupstream = \"http://127.0.0.1:1\"\n";
    let c = resolve(text, &[("drain-rate", "20")]).unwrap();
    assert_eq!(c.queue[0].drain_rate, 20.0);
    assert_eq!(c.queue[0].max_in_flight, 7);
    assert_eq!(c.queue[0].max_attempts, 5);
}

#[test]
fn queue_tables_inherit_top_level_settings() {
    let text = r#"
upstream = "http://127.0.0.1:9000"
drain_rate = 10

[[queue]]
name = "checkout"
routes = ["POST /checkout", "PUT /cart/checkout"]

[[queue]]
name = "tickets"
routes = ["POST /tickets/buy"]
upstream = "http://127.0.0.1:9001/"
drain_rate = 2.5
upstream_timeout = "250ms"
"#;
    let c = resolve(text, &[]).unwrap();
    assert_eq!(c.queue.len(), 2);
    assert_eq!(c.queue[0].drain_rate, 10.0);
    assert_eq!(c.queue[0].routes.len(), 2);
    assert_eq!(c.queue[1].upstream, "http://127.0.0.1:9001");
    assert_eq!(c.queue[1].drain_rate, 2.5);
    assert_eq!(c.queue[1].upstream_timeout, Duration::from_millis(250));
}

#[test]
fn a_queue_flag_sets_every_queue_even_one_with_its_own_value() {
    let text = r#"
upstream = "http://127.0.0.1:9000"
[[queue]]
name = "a"
routes = ["POST /a"]
max_attempts = 2
[[queue]]
name = "b"
routes = ["POST /b"]
"#;
    let c = resolve(text, &[("max-attempts", "9")]).unwrap();
    assert_eq!((c.queue[0].max_attempts, c.queue[1].max_attempts), (9, 9));
    let err = resolve(text, &[("queue", "c")]).unwrap_err();
    assert!(err.contains("cannot be combined with [[queue]]"), "{err}");
}

#[test]
fn duplicate_queue_names_and_paths_are_refused() {
    let text = r#"
upstream = "http://127.0.0.1:9000"
[[queue]]
name = "a"
routes = ["POST /x"]
[[queue]]
name = "b"
routes = ["PUT /x"]
"#;
    let err = resolve(text, &[]).unwrap_err();
    assert!(err.contains("queue[1].routes"), "{err}");
}

#[test]
fn bad_values_name_their_key() {
    for (text, key) in [
        ("max_body = \"12 parsecs\"", "max_body"),
        ("header_timeout = \"soon\"", "header_timeout"),
        ("listen = \"nowhere\"", "listen"),
        ("client_key = \"cookie\"", "client_key"),
        ("redis_url = \"http://x\"", "redis_url"),
        ("redis_url = \"rediss://u:pw@h:notaport/\"", "redis_url"),
        ("redis_url = \"redis+cluster://a:1,b:x\"", "redis_url"),
        (
            "redis_url = \"redis+sentinel://a:26379\"",
            "names its master",
        ),
        ("redis_url = \"redis+sentinel://a:x/shop\"", "redis_url"),
        (
            "durability = \"replicated\"",
            "`replicated` needs redis_url",
        ),
        ("durability = \"always\"", "durability"),
        (
            "redis_url = \"redis://a:1\"\ndurability_timeout = \"5s\"",
            "durability_timeout",
        ),
        ("route = [\"POST checkout\"]", "routes"),
        ("drain_rate = 0", "drain_rate"),
        ("adaptive = true\nadaptive_ceiling = 0", "adaptive_ceiling"),
        (
            "adaptive = true\nadaptive_floor = 50\nadaptive_ceiling = 10",
            "adaptive_floor",
        ),
        ("underscore_headers = \"keep\"", "underscore_headers"),
    ] {
        let err = resolve(text, WITH_UPSTREAM).unwrap_err();
        assert!(err.contains(key), "{text}: {err}");
    }
}

#[test]
fn errors_say_where_the_value_came_from() {
    let err = resolve(
        "max_wait = \"2s\"\nheader_timeout = \"soon\"\n",
        WITH_UPSTREAM,
    );
    let err = err.unwrap_err();
    assert!(err.contains("`header_timeout` (<toml>:2:1)"), "{err}");

    let text = "[[queue]]\nname = \"a\"\nroutes = [\"POST /a\"]\nupstream = \"http://x\"\ndrain_rate = -1\n";
    let err = resolve(text, &[]).unwrap_err();
    assert!(err.contains("`queue[0].drain_rate` (<toml>:5:1)"), "{err}");

    // A top-level queue key that fails in a queue points at the top level.
    let err = resolve("\n\nmax_attempts = 0", WITH_UPSTREAM).unwrap_err();
    assert!(
        err.contains("`queue[0].max_attempts` (<toml>:3:1)"),
        "{err}"
    );

    let err = resolve(
        "drain_rate = 5",
        &[("upstream", "http://x"), ("drain-rate", "-5")],
    );
    let err = err.unwrap_err();
    assert!(err.contains("(flag --drain-rate)"), "{err}");

    let err = resolve("", &[("upstream", "http://x"), ("stock", "lots")]).unwrap_err();
    assert!(
        err.contains("`stock` (flag --stock): `lots` is not a whole number"),
        "{err}"
    );

    let err = resolve("listen = \"127.0.0.1:1\"\nmax_inflight = 3", WITH_UPSTREAM).unwrap_err();
    assert_eq!(
        err,
        "unknown key `max_inflight` (<toml>:2:1); did you mean `max_in_flight`?"
    );
}

#[test]
fn boolean_values_read_as_1_0_true_false() {
    for (text, expected) in [("1", true), ("true", true), ("0", false), ("FALSE", false)] {
        let c = resolve("", &[("upstream", "http://x"), ("passthrough", text)]).unwrap();
        assert_eq!(c.passthrough, expected, "{text}");
    }
    let err = resolve("", &[("upstream", "http://x"), ("adaptive", "yes please")]).unwrap_err();
    assert!(err.contains("not a boolean"), "{err}");
}

#[test]
fn the_new_keys_parse_and_print() {
    let text = "underscore_headers = \"reject\"\nroute_case_insensitive = true\n";
    let c = resolve(text, WITH_UPSTREAM).unwrap();
    assert_eq!(c.underscore_headers, UnderscoreHeaders::Reject);
    assert!(c.queue[0].route_case_insensitive);
    let printed = c.to_toml();
    assert!(
        printed.contains("underscore_headers = \"reject\""),
        "{printed}"
    );
    assert!(
        printed.contains("route_case_insensitive = true"),
        "{printed}"
    );
    let c = resolve(
        "",
        &[("upstream", "http://x"), ("underscore-headers", "allow")],
    )
    .unwrap();
    assert_eq!(c.underscore_headers, UnderscoreHeaders::Allow);
}

#[test]
fn access_log_keys_parse_print_and_check() {
    let c = resolve("", WITH_UPSTREAM).unwrap();
    assert_eq!(c.access_log, AccessLog::Off);
    assert_eq!(c.access_log_format, AccessLogFormat::Json);
    let text = "access_log = \"/var/log/flashgate/access.log\"\naccess_log_format = \"combined\"\n";
    let c = resolve(text, WITH_UPSTREAM).unwrap();
    assert_eq!(
        c.access_log,
        AccessLog::Path("/var/log/flashgate/access.log".into())
    );
    assert_eq!(c.access_log_format, AccessLogFormat::Combined);
    assert!(c
        .to_toml()
        .contains("access_log = \"/var/log/flashgate/access.log\""));
    let c = resolve("", &[("upstream", "http://x"), ("access-log", "stdout")]).unwrap();
    assert_eq!(c.access_log, AccessLog::Stdout);
    let err = resolve("access_log_buffer = 0\n", WITH_UPSTREAM).unwrap_err();
    assert!(err.contains("access_log_buffer"), "{err}");
}

#[test]
fn printed_config_redacts_secrets() {
    let text = "admin_token = \"hunter2\"\nredis_url = \"redis://app:s3cret@127.0.0.1:6379/0\"\n";
    let c = resolve(text, WITH_UPSTREAM).unwrap();
    let printed = c.to_toml();
    assert!(!printed.contains("hunter2"), "{printed}");
    assert!(!printed.contains("s3cret"), "{printed}");
    assert!(printed.contains("redis://app:<redacted>@127.0.0.1:6379/0"));

    let text = "redis_url = \"redis+sentinel://app:s3cret@a:26379,b:26379/shop?sentinel_password=hunter2\"\ndurability = \"replicated\"\n";
    let c = resolve(text, WITH_UPSTREAM).unwrap();
    assert_eq!(c.durability, super::Durability::Replicated);
    let printed = c.to_toml();
    assert!(
        !printed.contains("hunter2") && !printed.contains("s3cret"),
        "{printed}"
    );
    assert!(
        printed.contains(
            "redis+sentinel://app:<redacted>@a:26379,b:26379/shop?sentinel_password=<redacted>"
        ),
        "{printed}"
    );
}

#[test]
fn the_printed_config_reads_back_as_the_same_config() {
    let text = "drain_rate = 7\nmax_body = \"1MiB\"\nopens_at = \"2030-01-01T00:00:00Z\"\n";
    let c = resolve(text, WITH_UPSTREAM).unwrap();
    let again = Config::from_toml(&c.to_toml().replace("[queue.adaptive]", "")).unwrap();
    assert_eq!(again.to_toml(), c.to_toml());
}

#[test]
fn sizes_and_durations_parse_with_units() {
    assert_eq!(parse_size("64KiB").unwrap(), Size(65536));
    assert_eq!(parse_size("1MB").unwrap(), Size(1_000_000));
    assert_eq!(parse_size("512").unwrap(), Size(512));
    assert!(parse_size("-1").is_err());
    assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
    assert!(parse_duration("10").is_err());
}

#[test]
fn adaptive_bounds_default_from_the_drain_rate() {
    let q = &resolve("drain_rate = 200", WITH_UPSTREAM).unwrap().queue[0];
    assert_eq!(q.adaptive, None, "off unless asked for");
    let text = "drain_rate = 200\nadaptive = true";
    let q = &resolve(text, WITH_UPSTREAM).unwrap().queue[0];
    assert_eq!(
        q.adaptive,
        Some(AdaptiveBounds {
            floor: 10.0,
            ceiling: 200.0
        })
    );
    let text = "adaptive = true\n[[queue]]\nname = \"a\"\nroutes = [\"POST /a\"]\nadaptive_floor = 5\nadaptive_ceiling = 400";
    let q = &resolve(text, WITH_UPSTREAM).unwrap().queue[0];
    assert_eq!(
        q.adaptive,
        Some(AdaptiveBounds {
            floor: 5.0,
            ceiling: 400.0
        })
    );
}

/// Every key has a flag with help, and a default stated in the doc is the
/// one `Default` really gives (the doc cannot drift from the code).
#[test]
fn every_key_documents_its_real_default() {
    let defaults = serde_json::to_value(Config::default()).unwrap();
    let queue_defaults = serde_json::to_value(QueueConfig::default()).unwrap();
    for key in keys() {
        assert!(!key.help.is_empty(), "{} has no doc", key.name);
        assert!(
            key.help.contains("Default") || key.help.contains("Required"),
            "{}: the doc says no default: {}",
            key.name,
            key.help
        );
        let value = match key.scope {
            Scope::Queue => &queue_defaults[&key.name],
            _ => &defaults[&key.name],
        };
        let shown = match value {
            serde_json::Value::String(s) if !s.is_empty() => s.clone(),
            serde_json::Value::Number(n) => n.to_string().trim_end_matches(".0").to_string(),
            serde_json::Value::Bool(b) => b.to_string(),
            _ => continue,
        };
        // The docs write durations as people do; humantime prints these two
        // its own way.
        let shown = match shown.as_str() {
            "1day" => "24h".to_string(),
            "1m" => "60s".to_string(),
            _ => shown,
        };
        assert!(
            key.help.contains(&format!("Default `{shown}`")),
            "{}: default is {shown}, doc says: {}",
            key.name,
            key.help
        );
    }
}

#[test]
fn flags_and_variables_are_named_after_the_keys() {
    let k = keys().iter().find(|k| k.name == "drain_rate").unwrap();
    assert_eq!(
        (k.flag.as_str(), k.env.as_str()),
        ("drain-rate", "FLASHGATE_DRAIN_RATE")
    );
    assert_eq!((k.kind.clone(), k.scope), (Kind::Float, Scope::Queue));
    let k = keys().iter().find(|k| k.name == "routes").unwrap();
    assert_eq!(
        (k.flag.as_str(), k.env.as_str()),
        ("route", "FLASHGATE_ROUTE")
    );
    let k = keys().iter().find(|k| k.name == "upstream").unwrap();
    assert_eq!(k.scope, Scope::Both);
    let k = keys()
        .iter()
        .find(|k| k.name == "sold_out_statuses")
        .unwrap();
    assert_eq!(k.kind, Kind::List(Box::new(Kind::Integer)));
    for flag in [
        "prequeue-from",
        "sold-out-body",
        "route-case-insensitive",
        "underscore-headers",
    ] {
        assert!(keys().iter().any(|k| k.flag == flag), "no --{flag}");
    }
    assert!(!keys()
        .iter()
        .any(|k| k.name == "queue" || k.name.starts_with("log")));
}

#[test]
fn route_case_insensitive_is_a_queue_key_off_by_default() {
    let q = &resolve("", WITH_UPSTREAM).unwrap().queue[0];
    assert!(!q.route_case_insensitive, "RFC 3986: case matters");
    let text = "route_case_insensitive = true\n[[queue]]\nname = \"a\"\nroutes = [\"POST /a\"]\n[[queue]]\nname = \"b\"\nroutes = [\"POST /b\"]\nroute_case_insensitive = false\n";
    let c = resolve(text, WITH_UPSTREAM).unwrap();
    assert!(c.queue[0].route_case_insensitive, "top-level default");
    assert!(!c.queue[1].route_case_insensitive, "the table's own");
    let flags = [
        ("upstream", "http://127.0.0.1:9000"),
        ("route-case-insensitive", "true"),
    ];
    assert!(resolve("", &flags).unwrap().queue[0].route_case_insensitive);
}

#[test]
fn route_paths_are_normalized_and_ambiguous_ones_refused() {
    let q = &resolve("route = [\"POST //check%6Fut/\"]", WITH_UPSTREAM)
        .unwrap()
        .queue[0];
    assert_eq!(q.routes[0].path, "/checkout/");
    for route in [
        "POST /checkout;v=1",
        "POST /a%2Fb",
        "POST /../a",
        "POST /a\\\\b",
    ] {
        let err = resolve(&format!("route = [\"{route}\"]"), WITH_UPSTREAM).unwrap_err();
        assert!(err.contains("route"), "{route}: {err}");
    }
}

#[test]
fn paths_two_queues_could_both_match_are_refused() {
    let queues = |second: &str, fold: bool| {
        format!(
            "[[queue]]\nname = \"a\"\nroutes = [\"POST /checkout\"]\n\
             [[queue]]\nname = \"b\"\nroutes = [\"POST {second}\"]\nroute_case_insensitive = {fold}\n"
        )
    };
    for (second, fold) in [
        ("/checkout/", false),
        ("/%63heckout", false),
        ("/Checkout", true),
    ] {
        let err = resolve(&queues(second, fold), WITH_UPSTREAM).unwrap_err();
        assert!(err.contains("queue[1].routes"), "{second}: {err}");
    }
    resolve(&queues("/Checkout", false), WITH_UPSTREAM).expect("case differs, both exact");
}

#[test]
fn admin_listener_beyond_loopback_needs_the_token() {
    let err = resolve("admin_listen = \"0.0.0.0:9464\"\n", WITH_UPSTREAM).unwrap_err();
    assert!(err.contains("`admin_listen`"), "{err}");
    assert!(err.contains("admin_token"), "{err}");
    let with_token = "admin_listen = \"0.0.0.0:9464\"\nadmin_token = \"t0ken\"\n";
    let c = resolve(with_token, WITH_UPSTREAM).unwrap();
    assert_eq!(c.admin_listen.to_string(), "0.0.0.0:9464");
    let c = resolve("admin_listen = \"[::1]:9464\"\n", WITH_UPSTREAM).unwrap();
    assert!(c.admin_listen.ip().is_loopback());
}

#[test]
fn health_listener_is_optional_and_has_its_own_address() {
    assert_eq!(resolve("", WITH_UPSTREAM).unwrap().health_listen, None);
    let c = resolve(
        "",
        &[
            ("upstream", "http://127.0.0.1:9000"),
            ("health-listen", "0.0.0.0:9465"),
        ],
    )
    .unwrap();
    assert_eq!(c.health_listen.unwrap().to_string(), "0.0.0.0:9465");
    let err = resolve("health_listen = \"127.0.0.1:9464\"\n", WITH_UPSTREAM).unwrap_err();
    assert!(err.contains("`health_listen`"), "{err}");
    let err = resolve("health_listen = \"nowhere\"\n", WITH_UPSTREAM).unwrap_err();
    assert!(err.contains("health_listen"), "{err}");
}

/// The tokens as (name, secret) pairs.
fn tokens(c: &Config) -> Vec<(String, String)> {
    (c.admin_token.iter())
        .map(|t| (t.name.clone(), t.secret.clone()))
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(n, s)| (n.to_string(), s.to_string()))
        .collect()
}

#[test]
fn admin_tokens_are_named_or_bare() {
    // One bare secret, as before: named `admin`.
    let c = resolve("admin_token = \"hunter2\"\n", WITH_UPSTREAM).unwrap();
    assert_eq!(tokens(&c), pairs(&[("admin", "hunter2")]));
    // A list in the file; base64 padding stays in the secret.
    let text = "admin_token = [\"ops=s3cret\", \"bot=dG9rZW4=\"]\n";
    let c = resolve(text, WITH_UPSTREAM).unwrap();
    assert_eq!(tokens(&c), pairs(&[("ops", "s3cret"), ("bot", "dG9rZW4=")]));
    // A bare base64 secret with padding is not `NAME=`; an `=` inside a
    // bare secret is written with its name.
    let c = resolve("admin_token = \"c2VjcmV0==\"\n", WITH_UPSTREAM).unwrap();
    assert_eq!(tokens(&c), pairs(&[("admin", "c2VjcmV0==")]));
    let c = resolve("admin_token = \"admin=se=cret\"\n", WITH_UPSTREAM).unwrap();
    assert_eq!(tokens(&c), pairs(&[("admin", "se=cret")]));
    // A name with characters a name cannot have: the whole is a secret.
    let c = resolve("admin_token = \"o:ps=x\"\n", WITH_UPSTREAM).unwrap();
    assert_eq!(tokens(&c), pairs(&[("admin", "o:ps=x")]));

    // `--admin-token ops=a1 --admin-token bot=b2`: one setting, two values.
    let key = keys::by_flag("admin-token").unwrap();
    let upstream = Setting::flag("upstream", "http://127.0.0.1:9000").unwrap();
    let flags = Setting {
        key,
        values: vec!["ops=a1".into(), "bot=b2".into()],
        origin: Origin::Flag("--admin-token".into()),
    };
    let c = load::from_toml("", &[upstream.clone(), flags]).unwrap();
    assert_eq!(tokens(&c), pairs(&[("ops", "a1"), ("bot", "b2")]));
    // FLASHGATE_ADMIN_TOKEN: comma- or space-separated.
    for list in ["ops=a1,bot=b2", "ops=a1 bot=b2", " ops=a1 ,\n bot=b2 "] {
        let env = Setting {
            key,
            values: vec![list.into()],
            origin: Origin::Env("FLASHGATE_ADMIN_TOKEN".into()),
        };
        let c = load::from_toml("", &[upstream.clone(), env]).unwrap();
        assert_eq!(
            tokens(&c),
            pairs(&[("ops", "a1"), ("bot", "b2")]),
            "{list:?}"
        );
    }

    // Printed with names, never secrets.
    let c = resolve(
        "admin_token = [\"ops=s3cret\", \"hunter2\"]\n",
        WITH_UPSTREAM,
    )
    .unwrap();
    let printed = c.to_toml();
    assert!(printed.contains("\"ops=<redacted>\""), "{printed}");
    assert!(printed.contains("\"admin=<redacted>\""), "{printed}");
    assert!(
        !printed.contains("s3cret") && !printed.contains("hunter2"),
        "{printed}"
    );
    assert!(!format!("{c:?}").contains("s3cret"));
}

#[test]
fn admin_tokens_need_distinct_names_and_secrets() {
    for (text, says) in [
        (
            "admin_token = [\"ops=a1\", \"ops=b2\"]\n",
            "two tokens are named `ops`",
        ),
        (
            "admin_token = [\"one\", \"two\"]\n",
            "two tokens are named `admin`",
        ),
        ("admin_token = [\"ops=a1\", \"bot=a1\"]\n", "same secret"),
        ("admin_token = \"upstream=a1\"\n", "`upstream`"),
        ("admin_token = \"adaptive=a1\"\n", "`adaptive`"),
        ("admin_token = 5\n", "list of tokens"),
    ] {
        let err = resolve(text, WITH_UPSTREAM).unwrap_err();
        assert!(
            err.contains("admin_token") && err.contains(says),
            "{text}: {err}"
        );
    }
    // No tokens: an empty list, as the default.
    let c = resolve("admin_token = []\n", WITH_UPSTREAM).unwrap();
    assert!(c.admin_token.is_empty());
}
