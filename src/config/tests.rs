use super::*;

fn resolve(text: &str, over: Overrides) -> Result<Config, String> {
    let file = FileConfig::parse(text)?;
    Config::resolve(file, over).map_err(|e| e.to_string())
}

fn with_upstream() -> Overrides {
    Overrides {
        queue: QueueSettings {
            upstream: Some("http://127.0.0.1:9000".into()),
            ..Default::default()
        },
        ..Default::default()
    }
}

#[test]
fn defaults_make_one_checkout_queue() {
    let c = resolve("", with_upstream()).unwrap();
    assert_eq!(c.listen.to_string(), "0.0.0.0:8080");
    assert_eq!(c.admin_listen.to_string(), "127.0.0.1:9464");
    assert!(c.redis_url.is_none());
    assert_eq!(c.max_body, Size(64 * 1024));
    assert_eq!(c.ticket_ttl, Duration::from_secs(24 * 3600));
    assert_eq!(c.queue.len(), 1);
    let q = &c.queue[0];
    assert_eq!(q.name, "checkout");
    assert_eq!(q.routes, vec!["POST /checkout".parse::<Route>().unwrap()]);
    assert_eq!(
        (q.drain_rate, q.drain_burst, q.max_in_flight),
        (100.0, 1, 64)
    );
    assert_eq!((q.max_queue, q.max_attempts), (1_000_000, 5));
}

#[test]
fn upstream_is_required() {
    let err = resolve("", Overrides::default()).unwrap_err();
    assert!(err.contains("`upstream`"), "{err}");
}

#[test]
fn unknown_top_level_key_is_named() {
    let err = FileConfig::parse("drain_rat = 5\n").unwrap_err();
    assert!(err.contains("drain_rat"), "{err}");
}

#[test]
fn unknown_queue_key_is_named() {
    let text = "[[queue]]\nname = \"a\"\nroutes = [\"POST /a\"]\nmax_inflight = 3\n";
    let err = FileConfig::parse(text).unwrap_err();
    assert!(err.contains("max_inflight"), "{err}");
}

#[test]
fn flag_beats_file_beats_default() {
    let text = "drain_rate = 50\nmax_in_flight = 7\nupstream = \"http://127.0.0.1:1\"\n";
    let over = Overrides {
        queue: QueueSettings {
            drain_rate: Some(20.0),
            ..Default::default()
        },
        ..Default::default()
    };
    let c = resolve(text, over).unwrap();
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
    let c = resolve(text, Overrides::default()).unwrap();
    assert_eq!(c.queue.len(), 2);
    assert_eq!(c.queue[0].drain_rate, 10.0);
    assert_eq!(c.queue[0].routes.len(), 2);
    assert_eq!(c.queue[1].upstream, "http://127.0.0.1:9001");
    assert_eq!(c.queue[1].drain_rate, 2.5);
    assert_eq!(c.queue[1].upstream_timeout, Duration::from_millis(250));
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
    let err = resolve(text, Overrides::default()).unwrap_err();
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
        ("route = [\"POST checkout\"]", "routes"),
        ("drain_rate = 0", "drain_rate"),
        ("adaptive = true\nadaptive_ceiling = 0", "adaptive_ceiling"),
        (
            "adaptive = true\nadaptive_floor = 50\nadaptive_ceiling = 10",
            "adaptive_floor",
        ),
    ] {
        let err = resolve(text, with_upstream()).unwrap_err();
        assert!(err.contains(key), "{text}: {err}");
    }
}

#[test]
fn printed_config_redacts_secrets() {
    let text = "admin_token = \"hunter2\"\nredis_url = \"redis://app:s3cret@127.0.0.1:6379/0\"\n";
    let c = resolve(text, with_upstream()).unwrap();
    let printed = c.to_toml();
    assert!(!printed.contains("hunter2"), "{printed}");
    assert!(!printed.contains("s3cret"), "{printed}");
    assert!(printed.contains("redis://app:<redacted>@127.0.0.1:6379/0"));
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
    let q = &resolve("drain_rate = 200", with_upstream()).unwrap().queue[0];
    assert_eq!(q.adaptive, None, "off unless asked for");
    let text = "drain_rate = 200\nadaptive = true";
    let q = &resolve(text, with_upstream()).unwrap().queue[0];
    assert_eq!(
        q.adaptive,
        Some(AdaptiveBounds {
            floor: 10.0,
            ceiling: 200.0
        })
    );
    let text = "adaptive = true\n[[queue]]\nname = \"a\"\nroutes = [\"POST /a\"]\nadaptive_floor = 5\nadaptive_ceiling = 400";
    let q = &resolve(text, with_upstream()).unwrap().queue[0];
    assert_eq!(
        q.adaptive,
        Some(AdaptiveBounds {
            floor: 5.0,
            ceiling: 400.0
        })
    );
}

#[test]
fn route_case_insensitive_is_a_queue_key_off_by_default() {
    let q = &resolve("", with_upstream()).unwrap().queue[0];
    assert!(!q.route_case_insensitive, "RFC 3986: case matters");
    let text = "route_case_insensitive = true\n[[queue]]\nname = \"a\"\nroutes = [\"POST /a\"]\n[[queue]]\nname = \"b\"\nroutes = [\"POST /b\"]\nroute_case_insensitive = false\n";
    let c = resolve(text, with_upstream()).unwrap();
    assert!(c.queue[0].route_case_insensitive, "top-level default");
    assert!(!c.queue[1].route_case_insensitive, "the table's own");
    let over = Overrides {
        queue: QueueSettings {
            route_case_insensitive: Some(true),
            ..with_upstream().queue
        },
        ..Default::default()
    };
    assert!(resolve("", over).unwrap().queue[0].route_case_insensitive);
}

#[test]
fn route_paths_are_normalized_and_ambiguous_ones_refused() {
    let q = &resolve("route = [\"POST //check%6Fut/\"]", with_upstream())
        .unwrap()
        .queue[0];
    assert_eq!(q.routes[0].path, "/checkout/");
    for route in [
        "POST /checkout;v=1",
        "POST /a%2Fb",
        "POST /../a",
        "POST /a\\\\b",
    ] {
        let err = resolve(&format!("route = [\"{route}\"]"), with_upstream()).unwrap_err();
        assert!(
            err.contains("`route`") || err.contains("routes"),
            "{route}: {err}"
        );
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
        let err = resolve(&queues(second, fold), with_upstream()).unwrap_err();
        assert!(err.contains("queue[1].routes"), "{second}: {err}");
    }
    resolve(&queues("/Checkout", false), with_upstream()).expect("case differs, both exact");
}
