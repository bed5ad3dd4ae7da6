//! The waiting room in a real browser: headless Chromium, driven through
//! chromedriver, shows every state of a ticket with its own wording and the
//! shop's branding. Each state is checked by axe-core in the page and shot
//! at desktop (1280×800) and phone (390×844) widths into
//! `target/screenshots/waiting-room-{state}-{desktop,phone}.png`.

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client as Browser, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;

use support::*;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A chromedriver of the test's own on a free loopback port, stopped by PID
/// when dropped, with one headless Chromium session.
struct Driver {
    child: Child,
    port: u16,
    _profile: tempfile::TempDir,
}

impl Driver {
    fn start() -> Driver {
        for tool in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                std::path::Path::new(tool).exists(),
                "{tool} is missing: run scripts/test, which installs Debian's \
                 chromium and chromium-driver"
            );
        }
        let port = free_port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        Driver {
            child,
            port,
            _profile: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// A new headless browser session, once chromedriver answers.
    async fn browser(&self) -> Browser {
        let url = format!("http://127.0.0.1:{}", self.port);
        let profile = self._profile.path().display().to_string();
        let caps = json!({
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=900,900",
                    format!("--user-data-dir={profile}"),
                ]
            }
        });
        let caps = match caps {
            serde_json::Value::Object(map) => map,
            _ => unreachable!("a JSON object literal"),
        };
        eventually(
            Duration::from_secs(60),
            "chromedriver and chromium up",
            || {
                let (url, caps) = (url.clone(), caps.clone());
                async move {
                    ClientBuilder::new(HttpConnector::new())
                        .capabilities(caps)
                        .connect(&url)
                        .await
                        .ok()
                }
            },
        )
        .await
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The rendered text of the element with this id ("" while it is hidden).
async fn text_of(browser: &Browser, id: &str) -> String {
    match browser.find(Locator::Id(id)).await {
        Ok(el) => el.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Waits until the element's rendered text satisfies `ok`, and returns it.
async fn until_text(browser: &Browser, id: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
    eventually(Duration::from_secs(90), what, || async {
        let t = text_of(browser, id).await;
        ok(&t).then_some(t)
    })
    .await
}

/// axe-core's browser build, which `scripts/test` fetches from npm (pinned,
/// MPL-2.0) into `target/axe/`.
fn axe_source() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/axe/package/axe.min.js");
    std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "{} is missing: run scripts/test, which fetches axe-core with npm",
            path.display()
        )
    })
}

/// axe-core's violations on the page as it stands (WCAG 2 A/AA and best
/// practices), one line each: rule, impact, and the elements.
async fn axe_violations(browser: &Browser) -> Vec<String> {
    let loaded = browser
        .execute("return typeof window.axe === 'object';", vec![])
        .await
        .expect("script runs");
    if loaded != json!(true) {
        // Through WebDriver, not the page: its CSP allows no other script.
        let source = format!("{}\nreturn typeof window.axe;", axe_source());
        let kind = browser
            .execute(&source, vec![])
            .await
            .expect("axe-core loads");
        assert_eq!(kind, json!("object"), "axe-core defines window.axe");
    }
    let run = "var done = arguments[arguments.length - 1];\
        axe.run(document, { resultTypes: ['violations'] }).then(function (r) {\
          done(r.violations.map(function (v) {\
            return v.id + ' (' + v.impact + '): ' + v.help + ' at ' + v.nodes.map(function (n) {\
              return n.target.join(' ') + ' [' + n.failureSummary + ']';\
            }).join('; ');\
          }));\
        }, function (e) { done(['axe-core failed: ' + e]); });";
    let found = browser.execute_async(run, vec![]).await.expect("axe runs");
    serde_json::from_value(found).expect("a list of violations")
}

/// Once the page's transitions have finished (endless animations aside),
/// checks it with axe-core and saves a screenshot, at both widths.
async fn capture(browser: &Browser, state: &str) {
    let settled = "return document.getAnimations().every(a => a.playState !== 'running' \
                   || a.effect.getComputedTiming().iterations === Infinity);";
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&dir).expect("screenshots dir");
    for (device, width, height) in [("desktop", 1280, 800), ("phone", 390, 844)] {
        browser
            .set_window_size(width, height)
            .await
            .expect("window size");
        eventually(Duration::from_secs(30), "the page to settle", || async {
            let done = browser.execute(settled, vec![]).await.ok()?;
            done.as_bool().filter(|d| *d).map(|_| ())
        })
        .await;
        // Nothing wider than the screen: no sideways scrolling on a phone.
        let fits = browser
            .execute(
                "return document.documentElement.scrollWidth <= window.innerWidth;",
                vec![],
            )
            .await
            .expect("script runs");
        assert_eq!(
            fits,
            json!(true),
            "{state} at {device} width scrolls sideways"
        );
        let violations = axe_violations(browser).await;
        assert!(
            violations.is_empty(),
            "{state} at {device} width: axe-core found {violations:#?}"
        );
        let path = dir.join(format!("waiting-room-{state}-{device}.png"));
        let png = browser.screenshot().await.expect("screenshot");
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        std::fs::write(&path, png).expect("write screenshot");
        println!("screenshot: {}", path.display());
    }
}

/// The state the page says it shows (`data-status` of its card).
async fn shown_state(browser: &Browser) -> String {
    let card = browser.find(Locator::Id("card")).await.expect("the card");
    card.attr("data-status")
        .await
        .ok()
        .flatten()
        .unwrap_or_default()
}

async fn until_state(browser: &Browser, state: &str) {
    eventually(Duration::from_secs(90), state, || async {
        (shown_state(browser).await == state).then_some(())
    })
    .await;
}

async fn attr_of(browser: &Browser, id: &str, name: &str) -> String {
    let el = browser.find(Locator::Id(id)).await.expect(id);
    el.attr(name).await.ok().flatten().unwrap_or_default()
}

/// Admits `n` checkouts, which must all get their 202; their tickets.
async fn admit_n(c: &Client, n: usize) -> Vec<String> {
    let (tickets, refused) = c.admit_many(n, "n").await;
    assert!(refused.is_empty(), "refused: {refused:?}");
    tickets
}

const SHOP_RETURN: &str = "https://shop.example/orders?from=queue";

const BRANDING: &str = "waiting_room_shop_name = \"Ada's Records\"\n\
    waiting_room_logo_url = \"/logo.svg\"\n\
    waiting_room_return_url = \"https://shop.example/orders?from=queue\"\n\
    waiting_room_accent = \"#1a4d2e\"\n\
    waiting_room_background = \"#f3efe6\"\n\
    waiting_room_text = { leave = \"Leave the line\" }\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_branded_waiting_room_words_every_state_of_a_ticket() {
    let upstream = MockUpstream::start().await;
    // One a second: slow enough to watch the line move.
    let gateway = Gateway::builder()
        .toml(&format!("drain_rate = 1\n{BRANDING}"))
        .upstream(&upstream)
        .start()
        .await;
    let c = gateway.client();
    let base = gateway.base();

    // Paused: the API says the wait is unknown, and so does the page.
    c.patch_knobs(json!({"paused": true}).to_string()).await;
    let tickets = admit_n(&c, 6).await;
    let ours = tickets.last().unwrap();
    let polled = c.poll(ours).await;
    let v = polled.json();
    assert_eq!(v["eta_seconds"], serde_json::Value::Null, "{v}");
    assert_eq!(v["paused"], true, "{v}");
    assert_eq!(v["position"], 5, "{v}");
    assert_eq!(polled.header("retry-after"), "30");

    let driver = Driver::start();
    let browser = driver.browser().await;
    browser
        .goto(&format!("{base}/waiting-room/{ours}"))
        .await
        .expect("page loads");
    until_state(&browser, "paused").await;
    assert_eq!(text_of(&browser, "title").await, "The line is paused");
    assert_eq!(text_of(&browser, "position").await, "5");
    assert_eq!(text_of(&browser, "eta").await, "Unknown while paused");
    assert!(text_of(&browser, "lead")
        .await
        .contains("when Ada's Records resumes it"));
    // The branding: name, logo, colours, texts, language.
    assert_eq!(text_of(&browser, "shop-name").await, "Ada's Records");
    assert_eq!(attr_of(&browser, "logo", "src").await, "/logo.svg");
    assert_eq!(text_of(&browser, "leave").await, "Leave the line");
    let accent = browser
        .execute(
            "return getComputedStyle(document.documentElement).getPropertyValue('--accent').trim();",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(accent, json!("#1a4d2e"));
    assert_eq!(
        browser.title().await.unwrap(),
        "The line is paused · Ada's Records"
    );
    capture(&browser, "paused").await;

    c.patch_knobs(json!({"paused": false}).to_string()).await;
    // The line moves: a smaller position, an estimate, the bar past its floor.
    until_text(&browser, "position", "the position to come down", |t| {
        t.parse::<u64>().is_ok_and(|p| (1..5).contains(&p))
    })
    .await;
    assert_eq!(shown_state(&browser).await, "queued");
    assert_eq!(text_of(&browser, "title").await, "You're in line");
    let eta = text_of(&browser, "eta").await;
    assert!(eta == "under 1 min" || eta.starts_with("about"), "{eta}");
    let progress = attr_of(&browser, "bar", "aria-valuenow").await;
    assert!(progress.parse::<u32>().unwrap() > 3, "progress {progress}");
    let announced = browser.find(Locator::Id("announce")).await.unwrap();
    assert_eq!(
        announced.attr("aria-live").await.unwrap().as_deref(),
        Some("polite")
    );
    capture(&browser, "queued").await;

    // Completed: a confirmation in words, the shop's answer only behind
    // the details toggle, and the way back to the shop with the ticket.
    until_state(&browser, "completed").await;
    assert_eq!(text_of(&browser, "title").await, "Your order is placed");
    assert_eq!(
        text_of(&browser, "lead").await,
        "Thank you for waiting: Ada's Records has accepted your order."
    );
    assert_eq!(text_of(&browser, "result-body").await, "", "details closed");
    let back = format!("{SHOP_RETURN}&ticket={ours}");
    assert_eq!(attr_of(&browser, "return", "href").await, back);
    assert_eq!(text_of(&browser, "return").await, "Back to Ada's Records");
    let leave = browser.find(Locator::Id("leave")).await.unwrap();
    assert!(
        !leave.is_displayed().await.unwrap(),
        "no leave button at the end"
    );
    capture(&browser, "completed").await;
    browser
        .find(Locator::Id("details-label"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let body = until_text(&browser, "result-body", "the details", |t| !t.is_empty()).await;
    assert!(body.contains(&format!("\"order\": \"{ours}\"")), "{body}");
    capture(&browser, "completed-details").await;

    // Leaving the queue: the button asks first, then the ticket is
    // cancelled and never reaches the upstream.
    c.patch_knobs(json!({"paused": true}).to_string()).await;
    let leaving = admit_n(&c, 2).await.pop().unwrap();
    browser
        .goto(&format!("{base}/waiting-room/{leaving}"))
        .await
        .unwrap();
    until_text(&browser, "position", "position 1 shown", |t| t == "1").await;
    browser
        .find(Locator::Id("leave"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    eventually(Duration::from_secs(30), "the confirm dialog", || async {
        browser.accept_alert().await.ok()
    })
    .await;
    until_state(&browser, "cancelled").await;
    assert_eq!(text_of(&browser, "title").await, "You left the queue");
    assert_eq!(c.poll(&leaving).await.json()["status"], "cancelled");
    capture(&browser, "cancelled").await;

    // Sold out while waiting: "Sold out" from the start, never "reached
    // the front of the line".
    // Admitted while paused: the 202 has no estimate either.
    let a = c.admit("{\"n\":\"late\"}").await;
    assert_eq!(a.status, 202, "{}", a.text());
    let v = a.json();
    assert_eq!(v["eta_seconds"], serde_json::Value::Null, "{v}");
    assert_eq!(v["paused"], true, "{v}");
    assert_eq!(a.header("retry-after"), "30");
    let waiting = a.ticket();
    browser
        .goto(&format!("{base}/waiting-room/{waiting}"))
        .await
        .unwrap();
    until_state(&browser, "paused").await;
    c.patch_knobs(json!({"sold_out": true, "paused": false}).to_string())
        .await;
    until_state(&browser, "sold_out").await;
    assert_eq!(text_of(&browser, "title").await, "Sold out");
    let lead = text_of(&browser, "lead").await;
    assert!(lead.contains("everything was sold"), "{lead}");
    let source = browser.source().await.unwrap();
    assert!(!source.contains("front of the line"), "{source}");
    assert!(
        !upstream.by_key().contains_key(&leaving),
        "cancelled ticket sent"
    );
    assert!(
        !upstream.by_key().contains_key(&waiting),
        "sold-out ticket sent"
    );
    capture(&browser, "sold-out").await;

    // An id that is not a ticket: a friendly not-found state, with the way
    // back (no ticket to carry).
    let forged = "A".repeat(48);
    browser
        .goto(&format!("{base}/waiting-room/{forged}"))
        .await
        .unwrap();
    until_state(&browser, "not_found").await;
    assert_eq!(
        text_of(&browser, "title").await,
        "We can't find this ticket"
    );
    assert_eq!(
        attr_of(&browser, "return", "href").await,
        format!("{SHOP_RETURN}&ticket={forged}")
    );
    capture(&browser, "not-found").await;

    browser.close().await.unwrap();
}

/// One ticket in a gateway of its own: its page reaches `state`; the title.
async fn one_ticket_page(
    browser: &Browser,
    upstream: &MockUpstream,
    toml: &str,
    state: &str,
) -> (Gateway, String) {
    let gateway = Gateway::builder()
        .toml(toml)
        .upstream(upstream)
        .start()
        .await;
    let ticket = admit_n(&gateway.client(), 1).await.pop().unwrap();
    browser
        .goto(&format!("{}/waiting-room/{ticket}", gateway.base()))
        .await
        .expect("page loads");
    until_state(browser, state).await;
    (gateway, ticket)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_waiting_room_words_the_other_states() {
    let driver = Driver::start();
    let browser = driver.browser().await;

    // Pre-queued: the sale opens in an hour; the place is drawn then.
    let ok = MockUpstream::start().await;
    let now = std::time::SystemTime::now();
    let toml = format!(
        "prequeue_from = \"{}\"\nopens_at = \"{}\"\n",
        humantime::format_rfc3339(now - Duration::from_secs(60)),
        humantime::format_rfc3339(now + Duration::from_secs(3600)),
    );
    let (gw, ticket) = one_ticket_page(&browser, &ok, &toml, "prequeued").await;
    assert_eq!(text_of(&browser, "title").await, "You're in the pre-queue");
    assert_eq!(text_of(&browser, "position").await, "Drawn at the opening");
    assert_eq!(text_of(&browser, "eta-label").await, "Sale opens at");
    let lead = text_of(&browser, "lead").await;
    assert!(lead.contains("at random"), "{lead}");
    // No branding configured: no header, no return link.
    assert!(!browser
        .find(Locator::Id("brand"))
        .await
        .unwrap()
        .is_displayed()
        .await
        .unwrap());
    assert_eq!(gw.client().poll(&ticket).await.json().get("paused"), None);
    capture(&browser, "prequeued").await;
    drop(gw);

    // Not open yet, with a place: the opening moved later (a reload) after
    // tickets were placed; the line waits for it.
    let builder = Gateway::builder().toml("drain_rate = 1\n").upstream(&ok);
    let gw = builder.clone().start().await;
    let c = gw.client();
    c.patch_knobs(json!({"paused": true}).to_string()).await;
    let placed = admit_n(&c, 3).await.pop().unwrap();
    let later = format!(
        "opens_at = \"{}\"\n",
        humantime::format_rfc3339(now + Duration::from_secs(7200))
    );
    assert!(gw.reload(builder.clone().toml(&later).config()));
    c.patch_knobs(json!({"paused": false}).to_string()).await;
    let v = c.poll(&placed).await.json();
    assert_eq!(v["position"], 2, "{v}");
    assert!(v["opens_at"].is_string(), "{v}");
    assert!(v["eta_seconds"].as_f64().unwrap() > 7000.0, "{v}");
    browser
        .goto(&format!("{}/waiting-room/{placed}", gw.base()))
        .await
        .unwrap();
    until_state(&browser, "not_open").await;
    assert_eq!(
        text_of(&browser, "title").await,
        "The sale has not opened yet"
    );
    assert_eq!(text_of(&browser, "position").await, "2");
    assert_eq!(text_of(&browser, "eta-label").await, "Sale opens at");
    capture(&browser, "not-open").await;
    drop(gw);

    // Expired: the line is paused longer than the ticket is kept; the page,
    // following it, learns when its record is gone.
    let gw = Gateway::builder()
        .toml("ticket_ttl = \"2s\"\n")
        .upstream(&ok)
        .start()
        .await;
    let c = gw.client();
    c.patch_knobs(json!({"paused": true}).to_string()).await;
    let gone = admit_n(&c, 1).await.pop().unwrap();
    browser
        .goto(&format!("{}/waiting-room/{gone}", gw.base()))
        .await
        .unwrap();
    until_state(&browser, "paused").await;
    until_state(&browser, "expired").await;
    assert_eq!(
        text_of(&browser, "title").await,
        "Your place in line expired"
    );
    assert!(text_of(&browser, "lead")
        .await
        .contains("no order was placed"));
    assert_eq!(c.poll(&gone).await.status, 404);
    capture(&browser, "expired").await;
    drop(gw);

    // In flight: the order service takes its time.
    let slow = MockUpstream::builder()
        .latency(Duration::from_secs(300))
        .start()
        .await;
    let (gw, _) = one_ticket_page(
        &browser,
        &slow,
        "upstream_timeout = \"600s\"\n",
        "in_flight",
    )
    .await;
    assert_eq!(text_of(&browser, "title").await, "It's your turn");
    assert!(text_of(&browser, "lead")
        .await
        .contains("placing your order with the shop"));
    capture(&browser, "in-flight").await;
    drop(gw);

    // Failed because the order service could not be reached.
    let down = MockUpstream::builder().fail_always().start().await;
    let (gw, _) = one_ticket_page(&browser, &down, "max_attempts = 1\n", "failed").await;
    assert_eq!(
        text_of(&browser, "title").await,
        "We couldn't reach the shop"
    );
    assert!(text_of(&browser, "lead")
        .await
        .contains("no order was placed"));
    assert!(!browser
        .source()
        .await
        .unwrap()
        .contains("front of the line"));
    capture(&browser, "upstream-unavailable").await;
    drop(gw);

    // Completed, but the shop said no: its status in words, its answer
    // behind the toggle.
    let refusing = MockUpstream::builder()
        .fail_always()
        .fail_status(409)
        .start()
        .await;
    let (gw, _) = one_ticket_page(&browser, &refusing, "max_attempts = 1\n", "completed").await;
    assert_eq!(
        text_of(&browser, "title").await,
        "Your order was not accepted"
    );
    let lead = text_of(&browser, "lead").await;
    assert!(lead.contains("status 409"), "{lead}");
    capture(&browser, "rejected").await;

    // The checker itself finds a fault when there is one: a page without
    // its language.
    browser
        .execute("document.documentElement.removeAttribute('lang');", vec![])
        .await
        .unwrap();
    let found = axe_violations(&browser).await;
    assert!(
        found.iter().any(|v| v.starts_with("html-has-lang")),
        "{found:#?}"
    );
    drop(gw);

    browser.close().await.unwrap();
}

/// Loads `/flashgate-pow.js` into a page of the gateway's origin, solves a
/// challenge of the `checkout` queue in the browser and admits with it;
/// the admission's status, ticket, the header sent, the progress reports
/// and the hashes tried, whether a Web Worker did the work, and the solve's
/// milliseconds.
async fn solve_in_browser(browser: &Browser, base: &str) -> serde_json::Value {
    // A page of the gateway's origin without a CSP of its own.
    browser
        .goto(&format!("{base}/challenge"))
        .await
        .expect("page loads");
    let run = "var done = arguments[arguments.length - 1];\
        function go() {\
          var reports = 0, tried = 0, workers = 0, W = window.Worker;\
          window.Worker = function (url) { workers++; return new W(url); };\
          var t0 = performance.now();\
          flashgatePow.solve({ queue: 'checkout', onProgress: function (n) { reports++; tried = n; } })\
            .then(function (pow) {\
              var ms = performance.now() - t0;\
              return fetch('/checkout', { method: 'POST', body: '{\"from\":\"browser\"}',\
                  headers: { 'Content-Type': 'application/json', 'Flashgate-Pow': pow } })\
                .then(function (r) { return r.json().then(function (j) {\
                  done({ status: r.status, ticket: j.ticket || null, code: j.code || null,\
                         pow: pow, reports: reports, tried: tried, workers: workers, ms: ms });\
                }); });\
            })\
            .catch(function (e) { done({ error: String(e) }); });\
        }\
        if (window.flashgatePow) { go(); } else {\
          var s = document.createElement('script');\
          s.src = '/flashgate-pow.js';\
          s.onload = go;\
          s.onerror = function () { done({ error: 'the script did not load' }); };\
          (document.head || document.documentElement).appendChild(s);\
        }";
    browser
        .execute_async(run, vec![])
        .await
        .expect("the solve runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pow_script_solves_a_challenge_in_a_worker_and_the_admission_passes() {
    let upstream = MockUpstream::start().await;
    let gateway = Gateway::builder()
        .toml("pow_difficulty = 10\n")
        .upstream(&upstream)
        .start()
        .await;
    let c = gateway.client();
    let refused = c.admit("{}").await;
    assert_eq!(refused.status, 403, "{}", refused.text());

    let driver = Driver::start();
    let browser = driver.browser().await;
    let got = solve_in_browser(&browser, &gateway.base()).await;
    assert_eq!(got["status"], 202, "{got}");
    assert_eq!(got["workers"], 1, "solved in a Web Worker: {got}");
    assert!(got["reports"].as_u64().unwrap() >= 1, "progress: {got}");
    let ticket = got["ticket"].as_str().expect("a ticket");
    assert_eq!(c.poll(ticket).await.status, 200);
    // The browser's solution is single-use like any other.
    let pow = got["pow"].as_str().unwrap();
    let again = c.admit_with(&[("flashgate-pow", pow)], "{}").await;
    assert_eq!(again.json()["code"], "pow_reused", "{}", again.text());
    browser.close().await.unwrap();
}

/// Solve times in headless Chromium (the README's proof-of-work table):
/// `cargo test --test browser pow_solve_times -- --ignored --nocapture`.
/// Several runs per difficulty; the median, since a solve's length is
/// geometric (its spread is as large as its mean).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a test: run it with --ignored --nocapture"]
async fn pow_solve_times_in_chromium() {
    let upstream = MockUpstream::start().await;
    let gateway = Gateway::builder()
        .toml("pow_difficulty = 16\n")
        .upstream(&upstream)
        .start()
        .await;
    let c = gateway.client();
    let driver = Driver::start();
    let browser = driver.browser().await;
    browser
        .update_timeouts(fantoccini::wd::TimeoutConfiguration::new(
            Some(Duration::from_secs(600)),
            None,
            None,
        ))
        .await
        .unwrap();
    let runs: usize = std::env::var("POW_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    for difficulty in [16, 18, 20] {
        c.patch_knobs(json!({ "pow_difficulty": difficulty }).to_string())
            .await;
        let (mut times, mut hashes) = (Vec::new(), 0.0);
        for _ in 0..runs {
            let got = solve_in_browser(&browser, &gateway.base()).await;
            assert_eq!(got["status"], 202, "{got}");
            times.push(got["ms"].as_f64().unwrap());
            hashes += got["tried"].as_f64().unwrap();
        }
        let rate = hashes / times.iter().sum::<f64>() * 1000.0;
        times.sort_by(f64::total_cmp);
        println!(
            "pow D={difficulty}: median {:.0} ms over {runs} runs (min {:.0}, max {:.0}); \
             {rate:.0} hashes/s; all: {:?}",
            times[times.len() / 2],
            times[0],
            times[times.len() - 1],
            times.iter().map(|t| t.round() as u64).collect::<Vec<_>>()
        );
    }
    browser.close().await.unwrap();
}

/// `bytes` as base64url without padding, as a shop writes a join link's
/// `#body=`.
fn base64url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The path of the page's address, once it satisfies `ok`.
async fn until_path(browser: &Browser, what: &str, ok: impl Fn(&str) -> bool) -> String {
    eventually(Duration::from_secs(90), what, || async {
        let url = browser.current_url().await.ok()?;
        ok(url.path()).then(|| url.path().to_string())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_join_page_solves_the_challenge_admits_the_order_and_follows_its_ticket() {
    let upstream = MockUpstream::start().await;
    let gateway = Gateway::builder()
        .toml("pow_difficulty = 10\n")
        .upstream(&upstream)
        .start()
        .await;
    let c = gateway.client();
    let base = gateway.base();
    let order = "{\"sku\":\"sneaker-42\",\"qty\":1,\"note\":\"größe 42 ✓\"}";
    let join = format!(
        "{base}/waiting-room/join?queue=checkout&path=%2Fcheckout#body={}",
        base64url(order.as_bytes())
    );

    let driver = Driver::start();
    let browser = driver.browser().await;

    // Checking the browser: a difficulty no one solves while we look.
    c.patch_knobs(json!({"pow_difficulty": 30}).to_string())
        .await;
    browser.goto(&join).await.expect("page loads");
    until_text(&browser, "check-value", "the check's progress", |t| {
        t == "0 %"
    })
    .await;
    assert_eq!(shown_state(&browser).await, "joining");
    assert_eq!(text_of(&browser, "title").await, "Joining the line…");
    assert_eq!(
        text_of(&browser, "check-label").await,
        "Checking your browser…"
    );
    assert_eq!(
        attr_of(&browser, "check-bar", "aria-valuetext").await,
        "Checking your browser… 0 %"
    );
    capture(&browser, "joining").await;
    let sent: Vec<_> = (upstream.received().iter())
        .map(|r| format!("{} {} {}", r.method, r.path, r.header("idempotency-key")))
        .collect();
    assert!(sent.is_empty(), "sent upstream while checking: {sent:?}");

    // Solvable now; a reload keeps the page's Idempotency-Key.
    c.patch_knobs(json!({"pow_difficulty": 10}).to_string())
        .await;
    browser.refresh().await.expect("reload");
    let at = until_path(&browser, "the ticket's address", |p| {
        p.starts_with("/waiting-room/") && p != "/waiting-room/join"
    })
    .await;
    let ticket = at.trim_start_matches("/waiting-room/").to_string();
    assert_eq!(ticket.len(), 48, "{at}");
    let url = browser.current_url().await.unwrap();
    assert_eq!((url.query(), url.fragment()), (None, None), "{url}");
    until_state(&browser, "completed").await;
    assert_eq!(text_of(&browser, "title").await, "Your order is placed");

    // The order service got the body given, byte for byte, as JSON.
    let sent = upstream.by_key();
    let got = &sent.get(&ticket).expect("the ticket's order was sent")[0];
    assert_eq!(got.method, "POST");
    assert_eq!(got.path, "/checkout");
    assert_eq!(&got.body[..], order.as_bytes());
    assert_eq!(got.header("content-type"), "application/json");
    assert_eq!(
        got.header("flashgate-pow"),
        "",
        "the proof is the gateway's"
    );

    // The same link again in this tab: the same ticket, not a second order.
    browser.goto(&join).await.unwrap();
    until_path(&browser, "the same ticket's address", |p| p == at).await;
    until_state(&browser, "completed").await;
    assert_eq!(upstream.received().len(), 1);

    // A link without `queue`: the first refusal (pow_required) names the
    // challenge, which the page solves before it sends the order again.
    let unnamed = format!(
        "{base}/waiting-room/join?path=%2Fcheckout#body={}",
        base64url(b"{\"sku\":\"second\"}")
    );
    browser.goto(&unnamed).await.unwrap();
    let second = until_path(&browser, "the second ticket's address", |p| {
        p.starts_with("/waiting-room/") && p != "/waiting-room/join" && p != at
    })
    .await;
    until_state(&browser, "completed").await;
    let sent = upstream.by_key();
    let got = &sent[second.trim_start_matches("/waiting-room/")][0];
    assert_eq!(&got.body[..], b"{\"sku\":\"second\"}");
    assert_eq!(upstream.received().len(), 2);
    let m = c.metrics().await;
    let required = m.sum("flashgate_pow_failures_total", &["reason=\"required\""]);
    assert_eq!(required, 1.0, "one refusal named the challenge");

    // Refused for good: the refusal in words, nothing sent.
    c.patch_knobs(json!({"sold_out": true}).to_string()).await;
    let other = format!(
        "{base}/waiting-room/join?queue=checkout&path=%2Fcheckout#body={}",
        base64url(b"{\"sku\":\"late\"}")
    );
    browser.goto(&other).await.unwrap();
    until_state(&browser, "join_refused").await;
    assert_eq!(text_of(&browser, "title").await, "Sold out");
    assert!(text_of(&browser, "lead")
        .await
        .contains("No order was placed"));
    assert_eq!(upstream.received().len(), 2);
    capture(&browser, "join-refused").await;
    browser.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_join_page_refuses_a_path_off_this_origin() {
    let upstream = MockUpstream::start().await;
    let gateway = Gateway::builder().upstream(&upstream).start().await;
    let base = gateway.base();
    let body = base64url(b"{\"sku\":\"x\"}");
    let driver = Driver::start();
    let browser = driver.browser().await;
    for bad in [
        "%2F%2Fevil.example%2Fcheckout",
        "https%3A%2F%2Fevil.example%2Fcheckout",
        "%2F%5Cevil.example%2Fcheckout",
        "checkout",
        "",
    ] {
        browser
            .goto(&format!(
                "{base}/waiting-room/join?queue=checkout&path={bad}#body={body}"
            ))
            .await
            .expect("page loads");
        until_state(&browser, "join_invalid").await;
        assert_eq!(text_of(&browser, "title").await, "This link does not work");
        assert!(
            text_of(&browser, "lead")
                .await
                .contains("no order was sent"),
            "{bad}"
        );
        let url = browser.current_url().await.unwrap();
        assert_eq!(url.path(), "/waiting-room/join", "{bad}");
    }
    // A queue the gateway does not have: its challenge is not found.
    browser
        .goto(&format!(
            "{base}/waiting-room/join?queue=nope&path=%2Fcheckout#body={body}"
        ))
        .await
        .unwrap();
    until_state(&browser, "join_invalid").await;
    capture(&browser, "join-invalid").await;
    // The way the page is meant to be used still works on this gateway.
    browser
        .goto(&format!(
            "{base}/waiting-room/join?queue=checkout&path=%2Fcheckout#body={body}"
        ))
        .await
        .unwrap();
    until_state(&browser, "completed").await;
    let received = upstream.received();
    assert_eq!(received.len(), 1, "only the good link sent an order");
    assert_eq!(&received[0].body[..], b"{\"sku\":\"x\"}");
    browser.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_join_page_waits_out_a_full_queue_and_then_joins() {
    let upstream = MockUpstream::start().await;
    let builder = Gateway::builder()
        .toml("drain_rate = 1\n")
        .upstream(&upstream);
    let gateway = builder.clone().toml("max_queue = 1\n").start().await;
    let c = gateway.client();
    c.patch_knobs(json!({"paused": true}).to_string()).await;
    let ahead = admit_n(&c, 1).await.pop().unwrap();
    let driver = Driver::start();
    let browser = driver.browser().await;
    browser
        .goto(&format!(
            "{}/waiting-room/join?queue=checkout&path=%2Fcheckout#body={}",
            gateway.base(),
            base64url(b"{\"sku\":\"patient\"}")
        ))
        .await
        .expect("page loads");
    // Full: it says so, and when it tries again (the gateway's Retry-After).
    until_state(&browser, "join_retry").await;
    assert_eq!(
        text_of(&browser, "title").await,
        "The line is busy right now"
    );
    let lead = text_of(&browser, "lead").await;
    assert!(lead.starts_with("We try again for you in "), "{lead}");
    capture(&browser, "join-retry").await;

    // Room again: the page joins by itself, once.
    assert!(gateway.reload(builder.toml("max_queue = 10\n").config()));
    c.patch_knobs(json!({"paused": false}).to_string()).await;
    let at = until_path(&browser, "the ticket's address", |p| {
        p.starts_with("/waiting-room/") && p != "/waiting-room/join"
    })
    .await;
    until_state(&browser, "completed").await;
    let ticket = at.trim_start_matches("/waiting-room/");
    let sent = upstream.by_key();
    assert_eq!(sent.len(), 2, "the one ahead and ours");
    assert_eq!(&sent[ticket][0].body[..], b"{\"sku\":\"patient\"}");
    assert!(sent.contains_key(&ahead));
    browser.close().await.unwrap();
}
