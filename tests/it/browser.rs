//! The web UI in a real browser: headless Chromium driven over WebDriver (chromedriver) by
//! fantoccini, against the real daemon and real receivers on 127.0.0.1.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them; `CHROMIUM` and
//! `CHROMEDRIVER` override the paths). Without them these tests fail and say what to install,
//! unless `PALO_WEBHOOKS_SKIP_BROWSER=1` is set. `PALO_WEBHOOKS_SCREENSHOTS=DIR` saves the
//! README's screenshots (docs/img/) there.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use crate::support::{self, Behaviour, Daemon, Receiver};

const WAIT: Duration = Duration::from_secs(20);

/// A headless Chromium session, with the chromedriver that runs it.
struct Browser {
    client: Client,
    driver: Child,
    base: String,
    _profile: tempfile::TempDir,
    /// Set by [`Browser::close`]: the session ended normally and chromedriver is reaped.
    closed: bool,
}

fn tool(env: &str, default: &str) -> Option<PathBuf> {
    let path = PathBuf::from(std::env::var(env).unwrap_or_else(|_| default.to_owned()));
    path.exists().then_some(path)
}

impl Browser {
    /// Starts chromedriver and a 1280×800 headless Chromium on `daemon`'s UI, in English.
    /// `None` only when the browser is missing and `PALO_WEBHOOKS_SKIP_BROWSER=1`.
    async fn start(daemon: &Daemon) -> Option<Browser> {
        let (Some(chromium), Some(chromedriver)) = (
            tool("CHROMIUM", "/usr/bin/chromium"),
            tool("CHROMEDRIVER", "/usr/bin/chromedriver"),
        ) else {
            if std::env::var("PALO_WEBHOOKS_SKIP_BROWSER").as_deref() == Ok("1") {
                eprintln!("browser test skipped: PALO_WEBHOOKS_SKIP_BROWSER=1 and no chromium");
                return None;
            }
            panic!(
                "the browser tests need Chromium and ChromeDriver: \
                 `apt-get install chromium chromium-driver` (or set CHROMIUM and CHROMEDRIVER, \
                 or PALO_WEBHOOKS_SKIP_BROWSER=1 to skip them)"
            );
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut command = Command::new(chromedriver);
        command
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Its own process group, so the browser it starts goes with it (see Drop).
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let driver = command.spawn().expect("start chromedriver");
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--lang=en-US",
            "--accept-lang=en-US",
            "--window-size=1280,800",
            &format!("--user-data-dir={}", profile.path().display()),
        ];
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": args,
                "prefs": {"intl.accept_languages": "en-US"},
            },
        });
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities.as_object().unwrap().clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("WebDriver session");
        Some(Browser {
            client,
            driver,
            base: format!("http://{}", daemon.addr),
            _profile: profile,
            closed: false,
        })
    }

    async fn goto(&self, fragment: &str) {
        self.client
            .goto(&format!("{}/ui/{fragment}", self.base))
            .await
            .unwrap();
    }

    /// The first element matching `css`, waiting for it.
    async fn find(&self, css: &str) -> Element {
        self.client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css:?} on the page: {e}"))
    }

    async fn all(&self, css: &str) -> Vec<Element> {
        self.client.find_all(Locator::Css(css)).await.unwrap()
    }

    /// Waits until the text of the first `css` element satisfies `ok`; returns it.
    async fn text_until(&self, css: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(element) = self.client.find(Locator::Css(css)).await {
                if let Ok(text) = element.text().await {
                    if ok(&text) {
                        return text;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "{css:?} says {text:?}, still not what the test waits for"
                    );
                }
            }
            assert!(Instant::now() < deadline, "no {css:?} on the page");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `count(css)` is `n`.
    async fn count_until(&self, css: &str, n: usize) {
        let deadline = Instant::now() + WAIT;
        loop {
            let got = self.all(css).await.len();
            if got == n {
                return;
            }
            assert!(Instant::now() < deadline, "{got} of {css:?}, want {n}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn js(&self, script: &str) -> Value {
        self.client.execute(script, vec![]).await.unwrap()
    }

    /// Signs in with `token`, typed and submitted with the Enter key.
    async fn sign_in(&self, token: &str) {
        self.goto("#/webhooks").await;
        let input = self.find("#token").await;
        input
            .send_keys(&format!("{token}{}", char::from(Key::Enter)))
            .await
            .unwrap();
        self.find("#sign-out").await;
    }

    async fn screenshot(&self, name: &str) {
        if let Ok(dir) = std::env::var("PALO_WEBHOOKS_SCREENSHOTS") {
            // Taller than 1280×800 so a page fits in one picture.
            self.client.set_window_size(1280, 1100).await.unwrap();
            let png = self.client.screenshot().await.unwrap();
            std::fs::write(PathBuf::from(dir).join(name), png).unwrap();
            self.client.set_window_size(1280, 800).await.unwrap();
        }
    }

    /// Whether the page is wider than the window (a phone would scroll sideways).
    async fn overflows(&self) -> bool {
        self.js("return document.documentElement.scrollWidth > window.innerWidth + 1")
            .await
            .as_bool()
            .unwrap()
    }

    async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        self.closed = true;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // After a failed assertion: end chromedriver and the browser it started (its process
        // group, while chromedriver is not yet reaped, so the group id is still its own).
        if self.closed {
            return;
        }
        // `-s KILL -- -PGID`: procps reads a bare `-KILL -PGID` differently.
        let _ = Command::new("kill")
            .args(["-s", "KILL", "--", &format!("-{}", self.driver.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.driver.wait();
    }
}

fn ticket(event_id: &str, org: &str, title: &str) -> Value {
    json!({"event_id": event_id, "event_type": "ticket.created", "organization_id": org,
           "data": {"ticket_id": "TKT-00512", "title": title, "priority": "p1",
                    "project_id": "proj_1", "created_by": "user_1"}})
}

/// The scenario: sign in with an organization key, create a webhook through the form,
/// see the failed attempts of an event with their response bodies, redeliver to the healed
/// receiver and see `succeeded`, all without reloading the page.
#[tokio::test]
async fn a_person_creates_a_webhook_reads_failed_attempts_and_redelivers_from_the_ui() {
    let daemon = support::start(&["--allow-http", "--retry-schedule", "1s"]);
    let receiver = Receiver::start(Behaviour::Reply(500, "receiver exploded: <b>oops</b>")).await;
    let key = daemon.create_key("acme").await;
    let Some(browser) = Browser::start(&daemon).await else {
        return;
    };
    browser.sign_in(&key).await;
    assert_eq!(
        browser.find("#who").await.text().await.unwrap(),
        "Organization acme"
    );
    // The spec's path is the navigation.
    let crumbs = browser.find("#crumbs").await.text().await.unwrap();
    assert!(
        crumbs.contains("Settings") && crumbs.contains("Developers") && crumbs.contains("Webhooks"),
        "{crumbs}"
    );
    // The token is in no URL and no cookie.
    assert!(!browser
        .client
        .current_url()
        .await
        .unwrap()
        .as_str()
        .contains(&key));
    assert_eq!(browser.js("return document.cookie").await, json!(""));

    // New webhook: a field error first, in words, next to the field.
    browser.find("#new-webhook").await.click().await.unwrap();
    browser
        .find("#f-url")
        .await
        .send_keys("ftp://example.com/x")
        .await
        .unwrap();
    browser
        .find("[id='ev-ticket.created']")
        .await
        .click()
        .await
        .unwrap();
    browser.find("#create").await.click().await.unwrap();
    let error = browser.text_until("#url-error", |t| !t.is_empty()).await;
    assert!(error.to_lowercase().contains("url"), "{error}");
    let url = browser.find("#f-url").await;
    url.clear().await.unwrap();
    url.send_keys(&receiver.url).await.unwrap();
    browser
        .find("#f-description")
        .await
        .send_keys("Ops receiver")
        .await
        .unwrap();
    browser.find("#create").await.click().await.unwrap();
    // The generated secret is shown once, with a copy button and a warning.
    let secret = browser
        .find("#new-secret")
        .await
        .prop("value")
        .await
        .unwrap()
        .unwrap();
    assert!(secret.starts_with("pwsec_"), "{secret}");
    browser.find("#new-secret-copy").await;
    let warning = browser
        .find("#created .warning")
        .await
        .text()
        .await
        .unwrap();
    assert!(warning.contains("will not be shown again"), "{warning}");
    browser.find("#open-webhook").await.click().await.unwrap();
    browser.find("#send-test").await;

    // The platform sends an event; the receiver fails both scheduled attempts.
    let (status, _) = daemon
        .call(
            "POST",
            "/api/events",
            Some(ticket("evt_ui_1", "acme", "Server down")),
        )
        .await;
    assert_eq!(status, 202);
    receiver.wait_for(2, WAIT).await;
    browser.find("#tab-deliveries").await.click().await.unwrap();
    // The live refresh shows the delivery as failed without a reload.
    browser
        .find("tr[data-delivery] .badge[data-status='failed']")
        .await;
    let row = browser
        .find("tr[data-delivery]")
        .await
        .text()
        .await
        .unwrap();
    assert!(
        row.contains("ticket.created") && row.contains("evt_ui_1"),
        "{row}"
    );
    // The live refresh (every 5 s) keeps the keyboard focus where it was.
    let delivery_id = browser
        .find("tr[data-delivery]")
        .await
        .attr("data-delivery")
        .await
        .unwrap()
        .unwrap();
    browser
        .js("document.querySelector('tr[data-delivery] a').focus(); return null")
        .await;
    tokio::time::sleep(Duration::from_millis(5_500)).await;
    assert_eq!(
        browser.js("return document.activeElement.id").await,
        json!(format!("view-{delivery_id}"))
    );
    browser
        .find("tr[data-delivery] a")
        .await
        .click()
        .await
        .unwrap();
    browser.count_until("#attempts li[data-attempt]", 2).await;
    // Response bodies are shown as text: the receiver's markup is not markup here.
    let bodies = browser.all(".response-body").await;
    assert_eq!(bodies.len(), 2);
    for body in &bodies {
        assert_eq!(body.text().await.unwrap(), "receiver exploded: <b>oops</b>");
    }
    assert!(browser.all(".response-body b").await.is_empty());
    let payload = browser
        .text_until("#payload-json", |t| t.contains("evt_ui_1"))
        .await;
    assert!(payload.contains("\"title\": \"Server down\""), "{payload}");
    let result = browser
        .find("[data-attempt='2'] [data-result]")
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(result, "HTTP 500");
    browser.screenshot("delivery-failed.png").await;

    // The receiver is fixed; Redeliver makes one attempt and shows it without a reload.
    receiver.set(Behaviour::Status(200));
    browser
        .js("window.__sameDocument = true; return null")
        .await;
    browser.find("#redeliver").await.click().await.unwrap();
    let outcome = browser
        .text_until("#attempt-result", |t| t.contains("HTTP"))
        .await;
    assert!(
        outcome.contains("Attempt 3") && outcome.contains("HTTP 200"),
        "{outcome}"
    );
    browser
        .find("#delivery-status .badge[data-status='succeeded']")
        .await;
    browser.count_until("#attempts li[data-attempt]", 3).await;
    assert_eq!(
        browser.js("return window.__sameDocument === true").await,
        json!(true)
    );
    assert_eq!(
        browser.js("return document.activeElement.id").await,
        json!("redeliver")
    );
    browser.screenshot("delivery.png").await;

    // The webhook page: its chart of the last 24 hours.
    browser
        .find("#crumbs li:nth-child(4) a")
        .await
        .click()
        .await
        .unwrap();
    browser.find("#chart-deliveries rect.bar-succeeded").await;
    browser.find("#chart-latency").await;
    let summary = browser
        .text_until("#stats-summary", |t| t.contains('%'))
        .await;
    assert!(summary.contains("100 % (1/1)"), "{summary}");
    browser.screenshot("webhook.png").await;
    // The list: last delivery and success rate.
    browser.goto("#/webhooks").await;
    browser
        .find("tr[data-webhook] td[data-col='last'] .badge[data-status='succeeded']")
        .await;
    browser
        .text_until("td[data-col='rate']", |t| t.contains('%'))
        .await;
    browser.screenshot("webhooks.png").await;

    // Phone width: readable without sideways scrolling (tables scroll in their own box).
    browser.client.set_window_size(390, 844).await.unwrap();
    assert!(
        !browser.overflows().await,
        "the list overflows a phone-width screen"
    );
    browser
        .find("tr[data-webhook] a")
        .await
        .click()
        .await
        .unwrap();
    browser.find("#chart-deliveries").await;
    assert!(
        !browser.overflows().await,
        "the webhook page overflows a phone-width screen"
    );
    browser.find("#tab-deliveries").await.click().await.unwrap();
    browser.find("tr[data-delivery]").await;
    assert!(
        !browser.overflows().await,
        "the deliveries tab overflows a phone-width screen"
    );
    browser.close().await;
}

/// Organization B sees none of A's webhooks or deliveries; producer and receiver text is
/// shown as text; sign-out forgets the key; French follows the switch with the spec's labels.
#[tokio::test]
async fn the_ui_shows_one_organizations_data_as_text_and_speaks_french() {
    let daemon = support::start(&["--allow-http"]);
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    let key_a = daemon.create_key("org_a").await;
    let key_b = daemon.create_key("org_b").await;
    let (status, webhook) = daemon
        .call(
            "POST",
            "/api/webhooks",
            Some(
                json!({"url": receiver.url, "events": ["*"], "organization_id": "org_a",
                        "description": "<img src=x id=injected-description>"}),
            ),
        )
        .await;
    assert_eq!(status, 201);
    let hook = webhook["id"].as_str().unwrap().to_owned();
    let hostile = "<script>window.__pwned = 1</script><img src=x id=injected-payload>";
    let mut event = ticket("evt_xss", "org_a", hostile);
    // A 64-bit id past JavaScript's exact integers, and a right-to-left override.
    event["data"]["id64"] = json!(9_007_199_254_740_993u64);
    event["data"]["note"] = json!("invoice\u{202E}fdp.exe");
    let (status, _) = daemon.call("POST", "/api/events", Some(event)).await;
    assert_eq!(status, 202);
    let delivery = daemon.only_delivery(&hook).await;
    let Some(browser) = Browser::start(&daemon).await else {
        return;
    };

    // B: an empty list, and A's pages are "not found", even by their address.
    browser.sign_in(&key_b).await;
    browser.find("#new-webhook").await;
    assert!(browser.all("tr[data-webhook]").await.is_empty());
    browser.goto(&format!("#/webhooks/{hook}")).await;
    browser
        .text_until("main .notice-error", |t| t == "Not found.")
        .await;
    browser.goto(&format!("#/deliveries/{delivery}")).await;
    browser
        .text_until("main .notice-error", |t| t == "Not found.")
        .await;
    browser.goto(&format!("#/webhooks/{hook}/deliveries")).await;
    browser
        .text_until("main .notice-error", |t| t == "Not found.")
        .await;
    // Sign-out forgets the key.
    browser.find("#sign-out").await.click().await.unwrap();
    browser.find("#token").await;
    assert_eq!(browser.js("return sessionStorage.length").await, json!(0));

    // A: the description and the payload are text, nothing of them runs or renders.
    browser.sign_in(&key_a).await;
    let row = browser.find("tr[data-webhook]").await.text().await.unwrap();
    assert!(row.contains("<img src=x id=injected-description>"), "{row}");
    browser.goto(&format!("#/deliveries/{delivery}")).await;
    let payload = browser
        .text_until("#payload-json", |t| t.contains("evt_xss"))
        .await;
    assert!(
        payload.contains(&serde_json::to_string(hostile).unwrap()),
        "{payload}"
    );
    // The payload as delivered: numbers keep their digits, bidi controls are shown.
    assert!(payload.contains("\"id64\": 9007199254740993"), "{payload}");
    assert!(payload.contains("invoice<U+202E>fdp.exe"), "{payload}");
    for probe in [
        "return document.getElementById('injected-description') === null",
        "return document.getElementById('injected-payload') === null",
        "return window.__pwned === undefined",
        "return document.scripts.length === 1",
    ] {
        assert_eq!(browser.js(probe).await, json!(true), "{probe}");
    }

    // Saving the edit form sends only what was changed there: a webhook deactivated
    // elsewhere meanwhile stays deactivated.
    browser.goto(&format!("#/webhooks/{hook}")).await;
    browser.find("#edit summary").await.click().await.unwrap();
    let (status, _) = daemon
        .call(
            "PATCH",
            &format!("/api/webhooks/{hook}"),
            Some(json!({"active": false})),
        )
        .await;
    assert_eq!(status, 200);
    let description = browser.find("#f-description").await;
    description.clear().await.unwrap();
    description.send_keys("Renamed in the UI").await.unwrap();
    browser.find("#save").await.click().await.unwrap();
    browser
        .text_until("#webhook-description", |t| t == "Renamed in the UI")
        .await;
    let (_, after) = daemon
        .call("GET", &format!("/api/webhooks/{hook}"), None)
        .await;
    assert_eq!(after["active"], false, "{after}");
    assert_eq!(after["description"], "Renamed in the UI");

    // French: the switch, the spec's labels.
    browser.goto(&format!("#/deliveries/{delivery}")).await;
    browser.find("#redeliver").await;
    browser
        .find("#lang")
        .await
        .select_by_value("fr")
        .await
        .unwrap();
    let crumbs = browser
        .text_until("#crumbs", |t| t.contains("Paramètres"))
        .await;
    assert!(crumbs.contains("Développeurs"), "{crumbs}");
    assert_eq!(
        browser.find("#redeliver").await.text().await.unwrap(),
        "Re-déclencher"
    );
    browser.goto(&format!("#/webhooks/{hook}")).await;
    assert_eq!(
        browser.find("#tab-deliveries").await.text().await.unwrap(),
        "Livraisons"
    );
    browser.goto("#/webhooks").await;
    assert_eq!(
        browser.find("#new-webhook").await.text().await.unwrap(),
        "Nouveau webhook"
    );
    // Times: local time shown, UTC on hover.
    let title = browser
        .find("tr[data-webhook] td[data-col='last'] time")
        .await
        .attr("title")
        .await
        .unwrap()
        .unwrap();
    assert!(title.ends_with("Z (UTC)"), "{title}");
    browser.close().await;
}

/// Issue 15: the Jobs view shows a recovery's progress live until it finishes, and Cancel
/// stops another that is still running.
#[tokio::test]
async fn a_person_watches_a_recovery_job_finish_and_cancels_another_from_the_ui() {
    let daemon = support::start(&[
        "--allow-http",
        "--retry-schedule",
        "",
        "--max-in-flight-per-webhook",
        "1",
        "--attempt-timeout",
        "30s",
    ]);
    let slow = Receiver::start(Behaviour::Status(500)).await;
    let stuck = Receiver::start(Behaviour::Status(500)).await;
    let key = daemon.create_key("acme").await;
    let since = palo_webhooks::clock::format_ms(palo_webhooks::clock::now_ms() - 1_000);
    let slow_hook = daemon
        .create_webhook("acme", &slow.url, &["ticket.created"])
        .await;
    let stuck_hook = daemon
        .create_webhook("acme", &stuck.url, &["ticket.resolved"])
        .await;
    for i in 0..3 {
        let (status, _) = daemon
            .call(
                "POST",
                "/api/events",
                Some(ticket(&format!("evt_job_{i}"), "acme", "t")),
            )
            .await;
        assert_eq!(status, 202);
    }
    let resolved = json!({"event_id": "evt_job_r", "event_type": "ticket.resolved", "organization_id": "acme",
                          "data": {"ticket_id": "T", "resolved_by": "u", "resolution_time_hours": 1}});
    daemon.call("POST", "/api/events", Some(resolved)).await;
    daemon
        .wait_until("/api/admin/status", Duration::from_secs(20), |b| {
            b["deliveries"]["failed"] == 4
        })
        .await;
    // Healed but slow: one recovered delivery every 700 ms; the other hangs.
    slow.set(Behaviour::Slow(700));
    stuck.set(Behaviour::Hang);
    let (status, _) = daemon
        .call_as(
            &key,
            "POST",
            &format!("/api/webhooks/{slow_hook}/recover"),
            Some(json!({"since": since})),
        )
        .await;
    assert_eq!(status, 202);
    let (status, job) = daemon
        .call_as(
            &key,
            "POST",
            &format!("/api/webhooks/{stuck_hook}/recover"),
            Some(json!({"since": since})),
        )
        .await;
    assert_eq!(status, 202);
    let stuck_job = job["id"].as_str().unwrap().to_owned();
    let Some(browser) = Browser::start(&daemon).await else {
        return;
    };
    browser.sign_in(&key).await;
    browser.find("#jobs-link").await.click().await.unwrap();
    browser.count_until("tr[data-job]", 2).await;
    // Progress moves without a reload, up to 3 of 3 and `finished`.
    browser
        .text_until("tr[data-job]:last-child [data-col=progress]", |t| {
            t.contains("3 of 3")
        })
        .await;
    browser
        .text_until("tr[data-job]:last-child [data-col=state]", |t| {
            t == "finished"
        })
        .await;
    browser
        .text_until("tr[data-job]:last-child [data-col=succeeded]", |t| t == "3")
        .await;
    // The hanging one is still running: Cancel it.
    browser
        .text_until("tr[data-job]:first-child [data-col=state]", |t| {
            t == "running"
        })
        .await;
    browser
        .find(&format!("button[data-cancel='{stuck_job}']"))
        .await
        .click()
        .await
        .unwrap();
    browser
        .text_until("tr[data-job]:first-child [data-col=state]", |t| {
            t == "cancelled"
        })
        .await;
    let (_, got) = daemon
        .call("GET", &format!("/api/jobs/{stuck_job}"), None)
        .await;
    assert_eq!(got["state"], "cancelled", "{got}");
    assert!(browser.all("button[data-cancel]").await.is_empty());
    assert!(!browser.overflows().await, "the jobs table fits the window");
    browser.close().await;
}

/// Issue 15: the filter bar of the deliveries tab narrows the list by status, last outcome,
/// event type, event id and time range (kept in the address, so a filtered view is a link),
/// and refuses a range that ends before it starts.
#[tokio::test]
async fn the_delivery_filters_narrow_the_list() {
    let daemon = support::start(&["--allow-http", "--retry-schedule", "200ms"]);
    let receiver = Receiver::start(Behaviour::Status(500)).await;
    let key = daemon.create_key("acme").await;
    let hook = daemon.create_webhook("acme", &receiver.url, &["*"]).await;
    let incident = |id: &str| {
        json!({"event_id": id, "event_type": "system.incident", "organization_id": "acme",
               "data": {"incident_id": "INC-1", "severity": "high",
                        "affected_services": ["api"], "status": "open"}})
    };
    for event in [ticket("evt_f_1", "acme", "one"), incident("evt_f_2")] {
        assert_eq!(daemon.call("POST", "/api/events", Some(event)).await.0, 202);
    }
    // Both fail their two scheduled attempts, then the receiver heals.
    daemon
        .wait_until(
            "/api/deliveries?organization_id=acme&status=failed",
            WAIT,
            |b| b["data"].as_array().is_some_and(|d| d.len() == 2),
        )
        .await;
    receiver.set(Behaviour::Status(200));
    for event in [ticket("evt_f_3", "acme", "three"), incident("evt_f_4")] {
        assert_eq!(daemon.call("POST", "/api/events", Some(event)).await.0, 202);
    }
    daemon
        .wait_until(
            "/api/deliveries?organization_id=acme&status=succeeded",
            WAIT,
            |b| b["data"].as_array().is_some_and(|d| d.len() == 2),
        )
        .await;
    let Some(browser) = Browser::start(&daemon).await else {
        return;
    };
    browser.sign_in(&key).await;
    browser.goto(&format!("#/webhooks/{hook}/deliveries")).await;
    browser.count_until("tr[data-delivery]", 4).await;
    let ids = |rows: Vec<Element>| async move {
        let mut out = Vec::new();
        for row in rows {
            out.push(row.text().await.unwrap());
        }
        out
    };

    browser
        .find("#filter-status")
        .await
        .select_by_value("failed")
        .await
        .unwrap();
    browser.count_until("tr[data-delivery]", 2).await;
    assert_eq!(
        browser
            .all("tr[data-delivery] .badge[data-status='failed']")
            .await
            .len(),
        2
    );
    browser
        .find("#filter-outcome")
        .await
        .select_by_value("5xx")
        .await
        .unwrap();
    browser.count_until("td[data-outcome='5xx']", 2).await;
    browser
        .find("#filter-event_type")
        .await
        .select_by_value("system.incident")
        .await
        .unwrap();
    browser.count_until("tr[data-delivery]", 1).await;
    let rows = ids(browser.all("tr[data-delivery]").await).await;
    assert!(rows[0].contains("evt_f_2"), "{rows:?}");
    // The filters are in the address: a filtered view is a link.
    let url = browser.client.current_url().await.unwrap();
    let fragment = url.fragment().unwrap_or_default().to_owned();
    for part in ["status=failed", "outcome=5xx", "event_type=system.incident"] {
        assert!(fragment.contains(part), "{fragment}");
    }
    browser.screenshot("delivery-filters.png").await;

    browser.find("#filter-clear").await.click().await.unwrap();
    browser.count_until("tr[data-delivery]", 4).await;
    let event_id = browser.find("#filter-event-id").await;
    event_id
        .send_keys(&format!("evt_f_3{}", char::from(Key::Enter)))
        .await
        .unwrap();
    browser.count_until("tr[data-delivery]", 1).await;
    let rows = ids(browser.all("tr[data-delivery]").await).await;
    assert!(
        rows[0].contains("evt_f_3") && rows[0].contains("2xx"),
        "{rows:?}"
    );

    // A range in the future matches nothing; one that ends before it starts is refused.
    browser.find("#filter-clear").await.click().await.unwrap();
    browser.count_until("tr[data-delivery]", 4).await;
    browser
        .js(
            "document.getElementById('filter-since').value = '2099-01-01T00:00'; \
             document.getElementById('filter-apply').click(); return null",
        )
        .await;
    browser
        .text_until("#deliveries-body", |t| t.contains("No deliveries match."))
        .await;
    browser
        .js(
            "document.getElementById('filter-until').value = '2098-01-01T00:00'; \
             document.getElementById('filter-apply').click(); return null",
        )
        .await;
    browser
        .text_until("#filter-error", |t| t.contains("after its end"))
        .await;
    browser.close().await;
}

/// Issue 15: a webhook the daemon disabled (its receiver answered 410) shows why, since
/// when and how many deliveries it holds; Enable with "deliver the held events" sends them.
/// A webhook without a description shows no literal "null" under its title.
#[tokio::test]
async fn a_disabled_webhook_shows_why_and_enable_delivers_the_held_events() {
    let daemon = support::start(&["--allow-http", "--retry-schedule", "300ms,300ms"]);
    let receiver = Receiver::start(Behaviour::Status(410)).await;
    let key = daemon.create_key("acme").await;
    let (status, webhook) = daemon
        .call(
            "POST",
            "/api/webhooks",
            Some(json!({"url": receiver.url, "events": ["*"], "organization_id": "acme"})),
        )
        .await;
    assert_eq!(status, 201, "{webhook}");
    let hook = webhook["id"].as_str().unwrap().to_owned();
    let (status, _) = daemon
        .call("POST", "/api/events", Some(ticket("e1", "acme", "first")))
        .await;
    assert_eq!(status, 202);
    daemon
        .wait_until(
            &format!("/api/webhooks/{hook}"),
            Duration::from_secs(15),
            |b| !b["disabled"].is_null(),
        )
        .await;
    for id in ["e2", "e3"] {
        let (status, _) = daemon
            .call("POST", "/api/events", Some(ticket(id, "acme", "held")))
            .await;
        assert_eq!(status, 202);
    }
    let Some(browser) = Browser::start(&daemon).await else {
        return;
    };
    browser.sign_in(&key).await;
    browser.goto(&format!("#/webhooks/{hook}")).await;
    let reason = browser
        .text_until("#disabled-reason", |t| !t.is_empty())
        .await;
    assert!(reason.contains("410 Gone"), "{reason}");
    assert_eq!(browser.find("#held-count").await.text().await.unwrap(), "3");
    assert_eq!(
        browser.find("#disabled-status").await.text().await.unwrap(),
        "HTTP 410"
    );
    assert!(browser
        .find("#disabled-at time")
        .await
        .attr("title")
        .await
        .unwrap()
        .is_some());
    assert!(browser.find("#disabled-state").await.text().await.is_ok());
    // No description: nothing under the title, and never the text "null".
    assert_eq!(
        browser
            .js("return document.querySelector('main').textContent.includes('null')")
            .await,
        json!(false)
    );
    assert!(browser.all("main .subtitle").await.is_empty());
    browser.screenshot("webhook-disabled.png").await;

    // Enable, delivering the held events (the default choice).
    receiver.set(Behaviour::Status(200));
    let deliver = browser.find("#deliver-held").await;
    assert_eq!(
        deliver.prop("checked").await.unwrap().as_deref(),
        Some("true")
    );
    browser.find("#enable").await.click().await.unwrap();
    browser
        .text_until("#disabled .notice-ok", |t| t.starts_with("Enabled"))
        .await;
    assert!(browser.all("#disabled-state").await.is_empty());
    receiver.wait_for(4, Duration::from_secs(15)).await;
    let ids: Vec<String> = receiver.received()[1..]
        .iter()
        .map(|r| r.json()["event_id"].as_str().unwrap().to_owned())
        .collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        ["e1", "e2", "e3"],
        "every held event arrives: {ids:?}"
    );
    let (_, after) = daemon
        .call("GET", &format!("/api/webhooks/{hook}"), None)
        .await;
    assert!(after["disabled"].is_null(), "{after}");
    assert_eq!(after["held_deliveries"], 0);
    // The page reloaded shows it enabled: no disabled card.
    browser.goto("#/webhooks").await;
    browser.goto(&format!("#/webhooks/{hook}")).await;
    browser.find("#toggle-active").await;
    assert!(browser.all("#disabled").await.is_empty());
    browser.close().await;
}

/// The delivery options in the UI (issue 16): a person opens the options of a new webhook,
/// sets ordering, a rate limit, a filter, headers (one secret), bearer authentication and
/// Ed25519; the API stores exactly that, credentials never come back to the page, the
/// public key shows on the webhook's page, and an invalid filter is shown next to its field.
#[tokio::test(flavor = "multi_thread")]
async fn a_person_sets_delivery_options_and_credentials_stay_write_only() {
    const TOKEN: &str = "ui-bearer-token-5e4d";
    const HEADER: &str = "ui-secret-header-7f6e";
    let daemon = support::start(&["--allow-http"]);
    let key = daemon.create_key("acme").await;
    let Some(browser) = Browser::start(&daemon).await else {
        return;
    };
    browser.sign_in(&key).await;
    browser.find("#new-webhook").await.click().await.unwrap();
    browser
        .find("#f-url")
        .await
        .send_keys("http://127.0.0.1:9/hook")
        .await
        .unwrap();
    browser.find("#ev-all").await.click().await.unwrap();
    browser
        .find("#f-options summary")
        .await
        .click()
        .await
        .unwrap();
    let set = |css: &'static str, text: &'static str| {
        let browser = &browser;
        async move {
            let el = browser.find(css).await;
            el.clear().await.unwrap();
            el.send_keys(text).await.unwrap();
        }
    };
    browser
        .js("document.querySelector('#f-ordering').value = 'key'; return null")
        .await;
    set("#f-rate_limit", "20").await;
    set("#f-filter", "{\"data.priority\": {\"$in\": [\"p1\"]").await;
    set("#f-headers", "X-Tenant: acme").await;
    set("#f-secret_header_name", "X-Api-Key").await;
    set("#f-secret_header_value", HEADER).await;
    browser
        .js("const a = document.querySelector('#f-auth'); a.value = 'bearer'; a.dispatchEvent(new Event('change')); return null")
        .await;
    set("#f-auth_secret", TOKEN).await;
    browser.find("#f-ed25519").await.click().await.unwrap();
    // A filter that is not JSON is refused next to its field, before anything is sent.
    browser.find("#create").await.click().await.unwrap();
    let error = browser.text_until("#filter-error", |t| !t.is_empty()).await;
    assert!(error.contains("JSON"), "{error}");
    set("#f-filter", "{\"data.priority\": {\"$in\": [\"p1\"]}}").await;
    browser.find("#create").await.click().await.unwrap();
    browser.find("#new-secret").await;
    let (_, list) = daemon.call("GET", "/api/webhooks", None).await;
    let w = &list["data"][0];
    assert_eq!(w["ordering"], "key", "{w}");
    assert_eq!(w["rate_limit"], 20);
    assert_eq!(w["filter"], json!({"data.priority": {"$in": ["p1"]}}));
    assert_eq!(
        w["headers"],
        json!([{"name": "x-tenant", "value": "acme", "secret": false}, {"name": "x-api-key", "secret": true}])
    );
    assert_eq!(w["auth"], json!({"type": "bearer", "configured": true}));
    assert_eq!(w["signature_scheme"], json!(["hmac", "ed25519"]));
    // The webhook's page: the public key, and an edit form whose credential fields are
    // empty.
    let id = w["id"].as_str().unwrap();
    browser.goto(&format!("#/webhooks/{id}")).await;
    let public = browser
        .text_until("#public-key", |t| t.starts_with("whpk_"))
        .await;
    assert!(public.len() > 40, "{public}");
    browser.find("#edit summary").await.click().await.unwrap();
    browser
        .find("#f-options summary")
        .await
        .click()
        .await
        .unwrap();
    for css in ["#f-auth_secret", "#f-secret_header_value"] {
        let value = browser.find(css).await.prop("value").await.unwrap();
        assert_eq!(
            value.as_deref(),
            Some(""),
            "{css} shows a stored credential"
        );
    }
    let html = browser
        .js("return document.documentElement.outerHTML")
        .await;
    for credential in [TOKEN, HEADER] {
        assert!(
            !html.to_string().contains(credential),
            "{credential} is in the page"
        );
    }
    // Changing the rate limit alone keeps the credentials.
    set("#f-rate_limit", "5").await;
    browser.find("#save").await.click().await.unwrap();
    // Saving reloads the page.
    let w = daemon
        .wait_until(
            &format!("/api/webhooks/{id}"),
            Duration::from_secs(10),
            |w| w["rate_limit"] == 5,
        )
        .await;
    assert_eq!(w["rate_limit"], 5, "{w}");
    assert_eq!(w["auth"]["type"], "bearer");
    assert_eq!(w["headers"][1]["name"], "x-api-key");
    browser.close().await;
}
