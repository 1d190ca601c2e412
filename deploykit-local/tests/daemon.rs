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
            deploykit_local::daemon::serve(
                env,
                &socket,
                async {
                    let _ = stopped.await;
                },
                None,
            )
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
        async move { deploykit_local::daemon::serve(env, &socket, std::future::pending(), None).await }
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

/// A GET through `proxy`: the status code and the body.
async fn get_through(proxy: std::net::SocketAddr, host: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(proxy).await.unwrap();
    stream
        .write_all(
            format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    let status = answer.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = answer.split_once("\r\n\r\n").unwrap().1.to_string();
    (status, body)
}

/// An HTTP server answering `200 <body>` to every request: the standby's proxy.
async fn answering(body: &'static str) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    addr
}

/// After a failover the old primary's proxy forwards every request, whatever its host, to the
/// standby's; a daemon started again on the same directory (the primary coming back) still
/// does, and only an explicit `forward(None)` makes it serve its own instances again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_sends_everything_to_the_standby_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("daemon.sock");
    let standby = answering("served by the standby").await;
    let open = || async {
        LocalEnvironment::open(
            LocalOptions::new(dir.path().join("state")).listen("127.0.0.1:0".parse().unwrap()),
        )
        .await
        .unwrap()
    };
    let client = LocalClient::new(&socket);
    let env = open().await;
    let proxy = env.proxy_addr();
    let daemon = tokio::spawn({
        let (env, socket) = (env.clone(), socket.clone());
        async move { deploykit_local::daemon::serve(env, &socket, std::future::pending(), None).await }
    });
    wait_for(&client).await;
    assert_eq!(
        get_through(proxy, "web.localhost").await.0,
        503,
        "nothing runs here"
    );
    assert_eq!(client.info().await.unwrap().forward, None);

    client.forward(Some(standby), None).await.unwrap();
    assert_eq!(client.info().await.unwrap().forward, Some(standby));
    for host in ["web.localhost", "api.localhost", "127.0.0.1"] {
        assert_eq!(
            get_through(proxy, host).await,
            (200, "served by the standby".into()),
            "{host}"
        );
    }
    // Forwarding to itself would loop: refused, and nothing changes.
    let e = client.forward(Some(proxy), None).await.unwrap_err();
    assert!(e.chain().contains("forward to itself"), "{}", e.chain());
    assert_eq!(client.info().await.unwrap().forward, Some(standby));

    client.shutdown(false).await.unwrap();
    daemon.await.unwrap().unwrap();
    drop(env);
    let again = open().await;
    assert_eq!(
        again.forwarding(),
        Some(standby),
        "remembered across restarts"
    );
    assert_eq!(
        get_through(again.proxy_addr(), "web.localhost").await.1,
        "served by the standby"
    );
    again.forward_to(None, None).unwrap();
    assert_eq!(
        get_through(again.proxy_addr(), "web.localhost").await.0,
        503
    );
    drop(again);
    assert_eq!(open().await.forwarding(), None);
}

/// Seen: the daemon acted for whoever reached its socket, as whatever actor the client named.
/// With access rules it learns the peer from the socket itself (SO_PEERCRED): another user of
/// the machine, reaching a socket shared with it, may read but not change what runs, nor stop
/// the daemon; the refusal names who was refused what. (Runs as root, which can switch one
/// thread to another user; skipped, saying so, otherwise.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_through_the_socket_are_held_to_the_rights_of_the_peer_s_user() {
    use deploykit_core::EnvironmentName;
    use deploykit_core::access::{AccessPolicy, Effect};
    use deploykit_local::daemon::SocketAccess;
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;

    if !nix::unistd::getuid().is_root() {
        eprintln!("skipped: switching a thread to another user needs root");
        return;
    }
    const NOBODY: u32 = 65534;
    let nobody = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(NOBODY))
        .ok()
        .flatten()
        .map_or_else(|| format!("uid:{NOBODY}"), |u| u.name);
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = dir.path().join("daemon.sock");
    let env = LocalEnvironment::open(
        LocalOptions::new(dir.path().join("state")).listen("127.0.0.1:0".parse().unwrap()),
    )
    .await
    .unwrap();
    // The other user may deploy to staging only.
    let mut policy = AccessPolicy::empty();
    policy
        .rule("role:dev", "deploy", "staging/*", Effect::Allow)
        .unwrap();
    policy.bind(&nobody, "role:dev").unwrap();
    // Shared with the other user's group (nogroup, 65534), by id.
    let access = SocketAccess::new(policy, EnvironmentName::new("production").unwrap())
        .unwrap()
        .shared_with_group(&NOBODY.to_string())
        .unwrap();
    tokio::spawn({
        let socket = socket.clone();
        async move {
            deploykit_local::daemon::serve(env, &socket, std::future::pending(), Some(access)).await
        }
    });
    let client = LocalClient::new(&socket);
    wait_for(&client).await;
    let meta = std::fs::metadata(&socket).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        (meta.mode() & 0o777, meta.gid()),
        (0o660, NOBODY),
        "group-shared, no one else"
    );

    // The other user, in a process of its own: one raw HTTP request over the socket each.
    let as_user = |uid: u32, method: &str, path: &str| -> (bool, String) {
        let script = format!(
            "import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({socket:?})\n\
             s.sendall(b'{method} {path} HTTP/1.1\\r\\nhost: daemon\\r\\ncontent-length: 2\\r\\n\
             connection: close\\r\\n\\r\\n{{}}')\nout = b''\nwhile True:\n    chunk = s.recv(65536)\n\
             \x20   if not chunk: break\n    out += chunk\nprint(out.decode())\n",
            socket = socket.display().to_string()
        );
        let out = std::process::Command::new("python3")
            .args(["-c", &script])
            .uid(uid)
            .gid(uid)
            .output()
            .expect("python3 runs");
        let text = if out.status.success() {
            &out.stdout
        } else {
            &out.stderr
        };
        (
            out.status.success(),
            String::from_utf8_lossy(text).into_owned(),
        )
    };
    let as_nobody = |method: &str, path: &str| -> String {
        let (ok, text) = as_user(NOBODY, method, path);
        assert!(ok, "{text}");
        text
    };
    // A user outside the group cannot even connect.
    let (ok, outsider) = as_user(NOBODY - 1, "GET", "/v1/info");
    assert!(!ok && outsider.contains("PermissionError"), "{outsider}");
    let read = as_nobody("GET", "/v1/info");
    assert!(read.starts_with("HTTP/1.1 200"), "reading is open: {read}");
    let apply = as_nobody("PUT", "/v1/services/web");
    assert!(apply.starts_with("HTTP/1.1 403"), "{apply}");
    assert!(
        apply.contains(&format!(
            "{nobody} may not deploy or rollback on production/web (through the daemon's socket)"
        )),
        "{apply}"
    );
    let teardown = as_nobody("DELETE", "/v1/services/web");
    assert!(
        teardown.contains("may not teardown on production/web"),
        "{teardown}"
    );
    let shutdown = as_nobody("POST", "/v1/shutdown");
    assert!(
        shutdown.starts_with("HTTP/1.1 403")
            && shutdown.contains(&format!("{nobody} may not stop the daemon")),
        "{shutdown}"
    );
    // The daemon's own user may.
    client.teardown(&web()).await.unwrap();
    client.info().await.unwrap();
}
