//! The waiting room in a real browser: headless Chromium, driven through
//! chromedriver, follows a ticket from its place in line to the order
//! service's answer. Screenshots go to `target/artefacts/`.

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

/// Saves a screenshot under `target/artefacts/` and prints where, once the
/// page's transitions have finished (endless animations aside).
async fn screenshot(browser: &Browser, name: &str) -> PathBuf {
    let settled = "return document.getAnimations().every(a => a.playState !== 'running' \
                   || a.effect.getComputedTiming().iterations === Infinity);";
    eventually(Duration::from_secs(30), "the page to settle", || async {
        let done = browser.execute(settled, vec![]).await.ok()?;
        done.as_bool().filter(|d| *d).map(|_| ())
    })
    .await;
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/artefacts");
    std::fs::create_dir_all(&dir).expect("artefacts dir");
    let path = dir.join(name);
    let png = browser.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    std::fs::write(&path, png).expect("write screenshot");
    println!("screenshot: {}", path.display());
    path
}

/// Admits `n` checkouts, which must all get their 202; their tickets.
async fn admit_n(c: &Client, n: usize) -> Vec<String> {
    let (tickets, refused) = c.admit_many(n, "n").await;
    assert!(refused.is_empty(), "refused: {refused:?}");
    tickets
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_waiting_room_follows_a_ticket_to_the_confirmed_order() {
    let upstream = MockUpstream::start().await;
    // One a second: slow enough to watch the line move.
    let gateway = Gateway::builder()
        .toml("drain_rate = 1\n")
        .upstream(&upstream)
        .start()
        .await;
    let c = gateway.client();
    let base = gateway.base();

    // Paused while the page loads, so the place it must show is known.
    c.patch_knobs(json!({"paused": true}).to_string()).await;
    let tickets = admit_n(&c, 6).await;
    let ours = tickets.last().unwrap();

    let driver = Driver::start();
    let browser = driver.browser().await;
    browser
        .goto(&format!("{base}/waiting-room/{ours}"))
        .await
        .expect("page loads");

    until_text(&browser, "position", "position 5 shown", |t| t == "5").await;
    assert_eq!(text_of(&browser, "title").await, "You're in line");
    assert_eq!(text_of(&browser, "eta").await, "under 1 min");
    let leave = browser.find(Locator::Id("leave")).await.unwrap();
    assert!(leave.is_displayed().await.unwrap(), "leave button shown");

    c.patch_knobs(json!({"paused": false}).to_string()).await;
    // The line moves: a smaller position, and the bar grows past its floor.
    until_text(&browser, "position", "the position to come down", |t| {
        t.parse::<u64>().is_ok_and(|p| p < 5)
    })
    .await;
    let progress = browser
        .find(Locator::Id("bar"))
        .await
        .unwrap()
        .attr("aria-valuenow")
        .await
        .unwrap()
        .unwrap_or_default();
    assert!(progress.parse::<u32>().unwrap() > 3, "progress {progress}");
    screenshot(&browser, "waiting-room-queued.png").await;

    until_text(&browser, "title", "the confirmed order", |t| {
        t == "Your order is confirmed"
    })
    .await;
    // The order service's JSON, pretty-printed as text.
    let body = text_of(&browser, "result-body").await;
    assert!(body.contains(&format!("\"order\": \"{ours}\"")), "{body}");
    assert!(
        !leave.is_displayed().await.unwrap(),
        "no leave button at the end"
    );
    screenshot(&browser, "waiting-room.png").await;

    // Leaving the queue: the button asks first, then the ticket is cancelled
    // and never reaches the upstream.
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
    until_text(&browser, "title", "the cancelled state", |t| {
        t == "You left the queue"
    })
    .await;
    let state = c.poll(&leaving).await;
    assert_eq!(state.json()["status"], "cancelled");
    c.patch_knobs(json!({"paused": false}).to_string()).await;
    // One more behind it: once that one is done, the line has passed ours.
    let behind = admit_n(&c, 1).await.pop().unwrap();
    c.until_terminal(&behind, Duration::from_secs(60)).await;
    assert!(
        !upstream.by_key().contains_key(&leaving),
        "a cancelled ticket reached the upstream"
    );
    assert_eq!(
        upstream.received().len(),
        tickets.len() + 2,
        "every other ticket was delivered"
    );

    // An id that is not a ticket: a friendly not-found state.
    let forged = "A".repeat(48);
    browser
        .goto(&format!("{base}/waiting-room/{forged}"))
        .await
        .unwrap();
    until_text(&browser, "title", "the not-found state", |t| {
        t == "We can't find this ticket"
    })
    .await;
    screenshot(&browser, "waiting-room-not-found.png").await;

    browser.close().await.unwrap();
}
