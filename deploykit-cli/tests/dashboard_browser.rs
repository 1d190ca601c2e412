//! The dashboard in a real browser: headless Chromium, driven over WebDriver (chromedriver),
//! watches a canary of the sample app reach its approval gate, approves it with the button,
//! then watches a bad revision's analysis fail and roll it back, all from live updates, with
//! no page reload. Screenshots of the canary in progress and of the rollback are saved under
//! `target/dashboard-screenshots/` (with `DEPLOYKIT_BLESS=1`, also to `docs/screenshots/` for
//! the README).
//!
//! Needs Debian's `chromium` and `chromium-driver`; `.ci/test` installs them and sets
//! `DEPLOYKIT_REQUIRE_BROWSER=1`, without which a machine lacking them skips the test, saying so.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{APP, deploykit, free_port, json, run, start_daemon_with};
use fantoccini::{Client, ClientBuilder, Locator};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

const CONFIG: &str = r#"
application = "shop"

[analyses.errors]
metrics = [
  { name = "error-rate", query = "error_rate", below = 0.05, interval = "1s", count = 4, min_samples = { query = "requests", count = 5 }, unit = "%" },
]

[services.web]
command = ["{APP}"]
port = 8080
variables = { VERSION = "dev" }
health.readiness = { http = "/healthz", period = "200ms", timeout = "150ms", failure_threshold = 2 }

[environments.production]
kind = "production"
replicas = 2
progress_deadline = "60s"

[environments.production.strategy.canary]
background_analysis = "errors"
scale_down_delay = "300ms"
steps = [
  { weight = 50 },
  { pause = "5s" },
  { approval = true },
]
"#;

/// chromedriver on a free loopback port, stopped with the test.
struct Driver(std::process::Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn screenshots_dir() -> PathBuf {
    // CARGO_TARGET_TMPDIR is <target>/tmp: the screenshots go beside it.
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target dir")
        .join("dashboard-screenshots")
}

async fn save_screenshot(browser: &Client, name: &str) {
    let png = browser.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let dir = screenshots_dir();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), &png).unwrap();
    if std::env::var_os("DEPLOYKIT_BLESS").is_some() {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/screenshots");
        std::fs::create_dir_all(&docs).unwrap();
        std::fs::write(docs.join(name), &png).unwrap();
    }
}

/// The page's `<main>` text, polled until `check` holds (live updates: no reload is asked
/// for), or a failure naming what was last seen.
async fn wait_for(browser: &Client, what: &str, check: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let html = match browser.find(Locator::Id("main")).await {
            Ok(main) => main.html(false).await.unwrap_or_default(),
            // Not a dashboard page (an error answer): the whole of it.
            Err(_) => browser.source().await.unwrap_or_default(),
        };
        if check(&html) {
            return html;
        }
        assert!(
            Instant::now() < deadline,
            "the dashboard never showed {what}; last: {html}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The web service's last deployment on the overview (in flight or just ended).
const LAST_DEPLOYMENT: &str = "tr[data-service='web'] a[href^='/deployments/']";

/// Runs `act` until it succeeds: a live update may replace the page's content between
/// finding an element and using it (a stale element), as it would under a person's mouse.
async fn retry<F, Fut>(browser: &Client, what: &str, act: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), fantoccini::error::CmdError>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match act().await {
            Ok(()) => return,
            Err(e) => {
                let url = browser.current_url().await.map(|u| u.to_string());
                assert!(
                    Instant::now() < deadline,
                    "could not {what} on {url:?}: {e}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Clicks the element `css` selects, again if the page changed under it.
async fn click(browser: &Client, css: &str) {
    retry(browser, &format!("click {css}"), || async {
        browser.find(Locator::Css(css)).await?.click().await
    })
    .await;
}

/// Whether the page is still the one the marker was set on (a reload would clear it).
async fn not_reloaded(browser: &Client) -> bool {
    browser
        .execute("return window.deploykitTestMarker === 42;", vec![])
        .await
        .expect("script")
        .as_bool()
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_is_watched_approved_and_a_bad_revision_seen_rolled_back_in_chromium() {
    if !Path::new(CHROMEDRIVER).exists() || !Path::new(CHROMIUM).exists() {
        assert!(
            std::env::var_os("DEPLOYKIT_REQUIRE_BROWSER").is_none(),
            "{CHROMEDRIVER} or {CHROMIUM} is missing (apt-get install chromium chromium-driver)"
        );
        eprintln!("skipping: Chromium and chromedriver are not installed here");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("deploykit.toml"), CONFIG.replace("{APP}", APP)).unwrap();
    let port = free_port();
    let dashboard_port = free_port();
    let _daemon = start_daemon_with(
        dir,
        &format!("127.0.0.1:{port}"),
        &["--dashboard-listen", &format!("127.0.0.1:{dashboard_port}")],
    );
    let deployed = run(
        dir,
        &["deploy", "web", "--label", "v1", "--set", "VERSION=v1"],
    );
    assert!(deployed.status.success(), "{deployed:?}");

    // Traffic through the proxy all along, for the analysis to judge.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                    use std::io::{Read, Write};
                    let _ = write!(
                        s,
                        "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
                    );
                    let _ = s.read_to_end(&mut Vec::new());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    // The link `deploykit dashboard` prints signs the reviewer in.
    let link = json(&run(
        dir,
        &["dashboard", "--actor", "qa-lead", "-o", "json"],
    ));
    let link = link["url"].as_str().expect("a login link").to_string();
    assert!(link.starts_with(&format!("http://127.0.0.1:{dashboard_port}/login?token=")));

    let driver_port = free_port();
    let _driver = Driver(
        std::process::Command::new(CHROMEDRIVER)
            .arg(format!("--port={driver_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver"),
    );
    let profile = tempfile::tempdir().unwrap();
    let caps: serde_json::Map<String, serde_json::Value> =
        serde_json::from_value(serde_json::json!({
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                    "--window-size=1400,1050",
                    format!("--user-data-dir={}", profile.path().display()),
                ]
            }
        }))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let browser = loop {
        match ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{driver_port}"))
            .await
        {
            Ok(c) => break c,
            Err(e) => {
                assert!(Instant::now() < deadline, "chromedriver: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };

    let result = async {
        browser.goto(&link).await.expect("open the login link");
        let home = wait_for(&browser, "the services", |h| {
            h.contains("data-service=\"web\"")
        })
        .await;
        assert!(
            home.contains("data-revision=\"v1\" data-weight=\"100\""),
            "{home}"
        );
        let header = browser
            .find(Locator::Css("header .who"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(header, "signed in as qa-lead");
        browser
            .execute("window.deploykitTestMarker = 42;", vec![])
            .await
            .unwrap();

        // v2 is deployed from a terminal; the open page sees it reach its gate by itself.
        let mut v2 = deploykit(
            dir,
            &["deploy", "web", "--label", "v2", "--set", "VERSION=v2"],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
        let home = wait_for(&browser, "v2 waiting for approval", |h| {
            h.contains("waiting for approval of step-2")
        })
        .await;
        assert!(
            home.contains("data-revision=\"v2\" data-weight=\"50\""),
            "{home}"
        );
        assert!(not_reloaded(&browser).await, "a live update, not a reload");

        click(&browser, LAST_DEPLOYMENT).await;
        let page = wait_for(&browser, "the gate on the deployment's page", |h| {
            h.contains("id=\"awaiting\"") && h.contains("data-action=\"approve\"")
        })
        .await;
        assert!(
            page.contains("<li class=\"current\">pause until approved</li>"),
            "{page}"
        );
        save_screenshot(&browser, "canary-in-progress.png").await;

        // The reviewer approves with a reason; the rollout finishes on the page.
        retry(&browser, "type the reason and approve", || async {
            let reason = browser
                .find(Locator::Css("form[action$='/approve'] input[name=reason]"))
                .await?;
            reason.clear().await?;
            reason.send_keys("error rate flat, latency fine").await?;
            browser
                .find(Locator::Css("form[action$='/approve'] button"))
                .await?
                .click()
                .await
        })
        .await;
        let page = wait_for(&browser, "v2 succeeded", |h| {
            h.contains("id=\"outcome\"") && h.contains("data-phase=\"succeeded\"")
        })
        .await;
        assert!(
            page.contains("step-2 approved by qa-lead: error rate flat, latency fine"),
            "{page}"
        );
        let code = v2.wait().unwrap();
        assert!(
            code.success(),
            "the terminal's deploy ends as the page shows: {code:?}"
        );

        // v3 fails half its requests: the page shows the analysis fail and the rollback.
        browser
            .goto(&format!("http://127.0.0.1:{dashboard_port}/"))
            .await
            .unwrap();
        browser
            .execute("window.deploykitTestMarker = 42;", vec![])
            .await
            .unwrap();
        let mut v3 = deploykit(
            dir,
            &[
                "deploy",
                "web",
                "--label",
                "v3",
                "--set",
                "VERSION=v3",
                "--set",
                "ERROR_RATE=0.5",
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
        // In flight or already rolled back: either way the overview names it.
        wait_for(&browser, "v3 on the overview", |h| h.contains("<b>v3</b>")).await;
        assert!(not_reloaded(&browser).await, "a live update, not a reload");
        click(&browser, LAST_DEPLOYMENT).await;
        let page = wait_for(&browser, "v3 rolled back", |h| {
            h.contains("id=\"rollback\"") && h.contains("data-phase=\"rolled back\"")
        })
        .await;
        assert!(page.contains("analysis failed"), "{page}");
        assert!(page.contains("data-metric=\"error-rate\""), "{page}");
        assert!(page.contains("point bad"), "{page}");
        save_screenshot(&browser, "rollback.png").await;
        assert_eq!(
            v3.wait().unwrap().code(),
            Some(3),
            "rolled back: exit code 3"
        );

        // The audit log page: the chain verifies, the approval is there under the reviewer.
        click(&browser, "header nav a[href='/audit']").await;
        let audit = wait_for(&browser, "the audit log", |h| h.contains("audit-status")).await;
        assert!(audit.contains("hash chain intact"), "{audit}");
        assert!(audit.contains("qa-lead"), "{audit}");
    }
    .await;
    stop.store(true, Ordering::Relaxed);
    let _ = load.join();
    let _ = browser.close().await;
    result
}
