//! The daemon client over a real Unix socket: a daemon that is not there, gone, restarting or
//! dropping the connection is a retryable condition; a daemon that answers and refuses is not.

use std::time::Duration;

use deploykit_core::{Environment, Error, Monitor, ServiceId};
use deploykit_local::{LocalClient, LocalEnvironment, LocalOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;

fn web() -> ServiceId {
    ServiceId::new("web").unwrap()
}

fn assert_transient(e: &Error, expect: &str) {
    assert!(
        matches!(e, Error::Transient { .. }) && e.is_retryable(),
        "{}",
        e.chain()
    );
    assert!(
        e.chain().contains(expect),
        "{:?} lacks {expect:?}",
        e.chain()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_socket_is_retryable() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("daemon.sock");
    let e = LocalClient::new(&socket).observe(&web()).await.unwrap_err();
    assert_transient(
        &e,
        &format!("cannot reach the daemon at {}", socket.display()),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_nobody_listens_on_is_retryable() {
    // What a daemon killed with SIGKILL leaves behind: the file, and nobody listening.
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("daemon.sock");
    drop(UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let client = LocalClient::new(&socket);
    let e = client.observe(&web()).await.unwrap_err();
    assert_transient(&e, "Connection refused");
    let e = client.info().await.unwrap_err();
    assert_transient(&e, "Connection refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_dropped_mid_call_is_retryable() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("daemon.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    // A daemon that dies as a request arrives: it reads the request, then closes.
    let server = tokio::spawn(async move {
        for _ in 0..2 {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await;
            drop(stream);
        }
    });
    let client = LocalClient::new(&socket);
    let e = client.observe(&web()).await.unwrap_err();
    assert_transient(&e, "closed the connection");
    let desired = deploykit_core::DesiredState::default();
    let e = client.apply(&web(), &desired).await.unwrap_err();
    assert_transient(&e, "closed the connection");
    server.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_is_retryable_and_other_refusals_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("daemon.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let server = tokio::spawn(async move {
        for (status, error) in [
            ("503 Service Unavailable", "local state: database is locked"),
            (
                "500 Internal Server Error",
                "allocate a port for an instance failed",
            ),
        ] {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf).await;
            let body = format!("{{\"error\":\"{error}\"}}");
            let answer = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(answer.as_bytes()).await.unwrap();
            let _ = stream.shutdown().await;
        }
    });
    let client = LocalClient::new(&socket);
    let e = client.observe(&web()).await.unwrap_err();
    assert_transient(&e, "database is locked");
    let e = client.observe(&web()).await.unwrap_err();
    assert!(
        matches!(e, Error::Backend { .. }) && !e.is_retryable(),
        "{}",
        e.chain()
    );
    assert!(e.chain().contains("allocate a port"), "{}", e.chain());
    server.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_that_goes_away_and_comes_back_is_reached_again() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("daemon.sock");
    let open = || async {
        LocalEnvironment::open(
            LocalOptions::new(dir.path().join("state")).listen("127.0.0.1:0".parse().unwrap()),
        )
        .await
        .unwrap()
    };
    let client = LocalClient::new(&socket);

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let first = tokio::spawn({
        let (env, socket) = (open().await, socket.clone());
        async move {
            deploykit_local::daemon::serve(env, &socket, async {
                let _ = stopped.await;
            })
            .await
        }
    });
    wait_for(&client).await;
    assert!(client.observe(&web()).await.unwrap().revisions.is_empty());
    // A daemon that answers and refuses: final.
    let query = deploykit_core::MetricQuery::new(web(), "cpu_seconds");
    let e = client.query(&query).await.unwrap_err();
    assert!(!e.is_retryable(), "{}", e.chain());
    assert!(e.chain().contains("not a local metric"), "{}", e.chain());

    stop.send(()).unwrap();
    first.await.unwrap().unwrap();
    let e = client.observe(&web()).await.unwrap_err();
    assert!(e.is_retryable(), "{}", e.chain());

    let second = tokio::spawn({
        let (env, socket) = (open().await, socket.clone());
        async move { deploykit_local::daemon::serve(env, &socket, std::future::pending()).await }
    });
    wait_for(&client).await;
    assert!(client.observe(&web()).await.unwrap().revisions.is_empty());
    client.shutdown(true).await.unwrap();
    second.await.unwrap().unwrap();
}

async fn wait_for(client: &LocalClient) {
    for _ in 0..500 {
        if client.info().await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the daemon did not answer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_404_is_not_found_with_the_daemons_words() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("daemon.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let server = tokio::spawn(async move {
        for body in [
            r#"{"error":"log of instance web-1 not found","not_found":"log of instance web-1"}"#,
            // An older daemon: a message only.
            r#"{"error":"no such endpoint: GET /v1/services/web"}"#,
        ] {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf).await;
            let answer = format!(
                "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(answer.as_bytes()).await.unwrap();
            let _ = stream.shutdown().await;
        }
    });
    let client = LocalClient::new(&socket);
    let e = client.log_chunk("web-1", None, 10).await.unwrap_err();
    assert!(
        matches!(&e, Error::NotFound { what } if what == "log of instance web-1"),
        "{e:?}"
    );
    assert!(!e.is_retryable());
    let e = client.observe(&web()).await.unwrap_err();
    assert!(
        matches!(&e, Error::NotFound { what } if what == "no such endpoint: GET /v1/services/web"),
        "{e:?}"
    );
    server.await.unwrap();
}
