//! `[services.<name>.traffic]` through the daemon: the revision deployed carries its policy,
//! and the local proxy enforces it on `<service>.localhost`; a new revision with another
//! policy replaces it.

mod common;

use common::{free_port, run, start_daemon};

const CONFIG: &str = r#"application = "shop"
[services.web]
command = ["{APP}"]
port = 8080
health.readiness = { http = "/healthz", period = "200ms", timeout = "150ms" }
[services.web.traffic]
rate_limit = { per_second = 1, burst = 3 }
[environments.production]
kind = "production"
"#;

/// The statuses of `n` GETs sent at once to web.localhost through the proxy on `port`, and
/// the reasons the proxy gave for its own answers.
async fn burst(port: u16, n: usize) -> (Vec<u16>, Vec<String>) {
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let client = reqwest::Client::builder()
        .resolve("web.localhost", addr)
        .build()
        .unwrap();
    let mut statuses = Vec::new();
    let mut reasons = Vec::new();
    for _ in 0..n {
        let response = client
            .get(format!("http://web.localhost:{port}/"))
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
        if let Some(reason) = response.headers().get("x-deploykit-proxy") {
            reasons.push(reason.to_str().unwrap().to_owned());
        }
    }
    (statuses, reasons)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_enforces_the_policy_of_the_revision_deployed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(
        dir.join("deploykit.toml"),
        CONFIG.replace("{APP}", common::APP),
    )
    .unwrap();
    let port = free_port();
    let _daemon = start_daemon(dir, &format!("127.0.0.1:{port}"));
    let deploy = |label: &str| {
        let out = run(dir, &["deploy", "web", "--label", label]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    deploy("v1");

    let (statuses, reasons) = burst(port, 8).await;
    let ok = statuses.iter().filter(|s| **s == 200).count();
    // Three at once, and at most one more a second while the burst lasts.
    assert!((3..=5).contains(&ok), "{statuses:?}");
    assert_eq!(statuses[..3], [200, 200, 200], "{statuses:?}");
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(reasons.iter().all(|r| r == "rate-limited"), "{reasons:?}");

    // Without the limit, the next revision serves everything.
    let unlimited = CONFIG.replace(
        "[services.web.traffic]\nrate_limit = { per_second = 1, burst = 3 }\n",
        "",
    );
    std::fs::write(
        dir.join("deploykit.toml"),
        unlimited.replace("{APP}", common::APP),
    )
    .unwrap();
    deploy("v2");
    let (statuses, _) = burst(port, 8).await;
    assert_eq!(statuses, [200; 8]);
}
