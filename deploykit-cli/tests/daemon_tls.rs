//! `deploykit daemon --tls`: the proxy serves HTTPS with a certificate of this machine's own CA
//! (made in `.deploykit/tls/`), for every `<service>.localhost`; a client that trusts `ca.pem`
//! reaches the deployed sample app, one that does not is refused.

mod common;

use common::{free_port, run, start_daemon_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_serves_https_with_its_own_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(
        dir.join("deploykit.toml"),
        format!(
            r#"application = "shop"
[services.web]
command = ["{app}"]
port = 8080
health.readiness = {{ http = "/healthz", period = "200ms", timeout = "150ms" }}
[environments.production]
kind = "production"
"#,
            app = common::APP
        ),
    )
    .unwrap();
    let port = free_port();
    let _daemon = start_daemon_with(dir, &format!("127.0.0.1:{port}"), &["--tls"]);
    let out = run(dir, &["deploy", "web", "--label", "v1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let ca = std::fs::read(dir.join(".deploykit/tls/ca.pem")).expect("the CA is made");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let trusting = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .resolve("web.localhost", addr)
        .build()
        .unwrap();
    let response = trusting
        .get(format!("https://web.localhost:{port}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let stranger = reqwest::Client::builder()
        .resolve("web.localhost", addr)
        .build()
        .unwrap();
    let refused = stranger
        .get(format!("https://web.localhost:{port}/healthz"))
        .send()
        .await;
    assert!(refused.is_err(), "{refused:?}");
}
