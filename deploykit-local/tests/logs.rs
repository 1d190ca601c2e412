//! Instance logs read by byte offset (`LocalClient::log_chunk`, for `deploykit logs -f`)
//! through a real daemon: offsets, UTF-8 boundaries, following across a copy-truncate
//! rotation, and unknown instances as `Error::NotFound`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use deploykit_core::Error;
use deploykit_local::logs::{InstanceLog, LogPolicy};
use deploykit_local::{LocalClient, LocalEnvironment, LocalOptions, LogChunk};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A daemon on a fresh state directory, and a client of it.
struct Daemon {
    dir: tempfile::TempDir,
    env: LocalEnvironment,
    client: LocalClient,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<deploykit_core::Result<()>>>,
}

impl Daemon {
    async fn start() -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let env = LocalEnvironment::open(
            LocalOptions::new(dir.path().join("state")).listen("127.0.0.1:0".parse().unwrap()),
        )
        .await
        .unwrap();
        let socket = dir.path().join("daemon.sock");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn({
            let (env, socket) = (env.clone(), socket.clone());
            async move {
                deploykit_local::daemon::serve(env, &socket, async {
                    let _ = stopped.await;
                })
                .await
            }
        });
        let client = LocalClient::new(&socket);
        for _ in 0..500 {
            if client.info().await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Daemon {
            dir,
            env,
            client,
            stop: Some(stop),
            task: Some(task),
        }
    }

    fn log_dir(&self) -> PathBuf {
        self.dir.path().join("state").join("logs")
    }

    /// Appends `bytes` to the log of `instance`, as an instance writing to it would.
    fn write(&self, instance: &str, bytes: &[u8]) {
        append(&self.log_dir().join(format!("{instance}.log")), bytes);
    }

    async fn chunk(&self, instance: &str, from: Option<u64>, max: usize) -> LogChunk {
        self.client.log_chunk(instance, from, max).await.unwrap()
    }

    async fn stop(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        self.task.take().unwrap().await.unwrap().unwrap();
    }
}

fn append(path: &Path, bytes: &[u8]) {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap()
        .write_all(bytes)
        .unwrap();
}

fn chunk(text: &str, next: u64, truncated: bool) -> LogChunk {
    LogChunk {
        text: text.to_string(),
        next,
        truncated,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_are_read_by_offset() {
    let daemon = Daemon::start().await;
    daemon.write("web-1", b"hello\nworld\n");

    // No offset: the last bytes, and where the file ends.
    assert_eq!(
        daemon.chunk("web-1", None, 6).await,
        chunk("world\n", 12, false)
    );
    assert_eq!(
        daemon.chunk("web-1", None, 1000).await,
        chunk("hello\nworld\n", 12, false)
    );
    // From an offset, at most `max_bytes`, then on from `next`.
    assert_eq!(
        daemon.chunk("web-1", Some(0), 5).await,
        chunk("hello", 5, false)
    );
    assert_eq!(
        daemon.chunk("web-1", Some(5), 1000).await,
        chunk("\nworld\n", 12, false)
    );
    assert_eq!(
        daemon.chunk("web-1", Some(12), 1000).await,
        chunk("", 12, false)
    );
    daemon.write("web-1", b"more\n");
    assert_eq!(
        daemon.chunk("web-1", Some(12), 1000).await,
        chunk("more\n", 17, false)
    );
    // Zero bytes: only where to start following from.
    assert_eq!(daemon.chunk("web-1", None, 0).await, chunk("", 17, false));
    // The same through the environment itself.
    assert_eq!(
        daemon.env.log_chunk("web-1", Some(12), 1000).unwrap(),
        chunk("more\n", 17, false)
    );
    // The old tail still works.
    assert_eq!(
        daemon.client.logs("web-1", 5).await.unwrap(),
        "more\n".to_string()
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_never_split_a_character() {
    let daemon = Daemon::start().await;
    // "€" is E2 82 AC. The writer is mid-character: the chunk stops before it.
    daemon.write("web-1", "x".as_bytes());
    daemon.write("web-1", &[0xE2, 0x82]);
    assert_eq!(
        daemon.chunk("web-1", Some(0), 100).await,
        chunk("x", 1, false)
    );
    assert_eq!(
        daemon.chunk("web-1", Some(1), 100).await,
        chunk("", 1, false)
    );
    daemon.write("web-1", &[0xAC]);
    daemon.write("web-1", "y€€".as_bytes());
    assert_eq!(
        daemon.chunk("web-1", Some(1), 100).await,
        chunk("€y€€", 11, false)
    );
    // Cut by `max_bytes` inside a character: the character waits for the next chunk.
    assert_eq!(
        daemon.chunk("web-1", Some(1), 5).await,
        chunk("€y", 5, false)
    );
    assert_eq!(
        daemon.chunk("web-1", Some(5), 5).await,
        chunk("€", 8, false)
    );
    assert_eq!(
        daemon.chunk("web-1", Some(8), 5).await,
        chunk("€", 11, false)
    );
    // A tail that would begin inside a character begins at the next one.
    assert_eq!(daemon.chunk("web-1", None, 5).await, chunk("€", 11, false));
    // Fewer than 4 bytes asked: one character still fits, so following always advances.
    assert_eq!(
        daemon.chunk("web-1", Some(1), 1).await,
        chunk("€y", 5, false)
    );
    // Invalid bytes are replaced, not held back.
    daemon.write("web-2", &[b'a', 0xFF, b'b', 0xFF]);
    assert_eq!(
        daemon.chunk("web-2", Some(0), 100).await,
        chunk("a\u{FFFD}b\u{FFFD}", 4, false)
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn following_goes_on_across_a_rotation() {
    let daemon = Daemon::start().await;
    let log = InstanceLog::open(
        &daemon.log_dir(),
        "web-1",
        LogPolicy {
            max_bytes: 16,
            keep: 1,
        },
    )
    .unwrap();
    let write = |bytes: &[u8]| append(log.path(), bytes);
    write(b"line 1\n");
    let first = daemon.chunk("web-1", None, 1000).await;
    assert_eq!(first, chunk("line 1\n", 7, false));
    write(b"line 2\nline 3\n");
    let second = daemon.chunk("web-1", Some(first.next), 1000).await;
    assert_eq!(second, chunk("line 2\nline 3\n", 21, false));

    // Copy-truncate rotation, then the instance writes on at the new end.
    assert!(log.rotate_if_needed().unwrap());
    write(b"line 4\n");
    let third = daemon.chunk("web-1", Some(second.next), 1000).await;
    assert_eq!(third, chunk("line 4\n", 7, true), "starts over at 0");
    write(b"line 5\n");
    assert_eq!(
        daemon.chunk("web-1", Some(third.next), 1000).await,
        chunk("line 5\n", 14, false)
    );
    // Rotated to an empty file: nothing yet, but noticed.
    write(b"0123456789\n");
    assert!(log.rotate_if_needed().unwrap());
    assert_eq!(
        daemon.chunk("web-1", Some(25), 1000).await,
        chunk("", 0, true)
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_instance_is_not_found() {
    let daemon = Daemon::start().await;
    for e in [
        daemon
            .client
            .log_chunk("web-9", None, 100)
            .await
            .unwrap_err(),
        daemon
            .client
            .log_chunk("web-9", Some(0), 100)
            .await
            .unwrap_err(),
        daemon.client.logs("web-9", 100).await.unwrap_err(),
        daemon.env.log_chunk("web-9", None, 100).unwrap_err(),
        daemon.env.logs("web-9", 100).unwrap_err(),
    ] {
        match &e {
            Error::NotFound { what } => assert_eq!(what, "log of instance web-9"),
            other => panic!("not a NotFound: {other:?}"),
        }
        assert_eq!(e.to_string(), "log of instance web-9 not found");
    }
    assert!(
        !daemon.log_dir().join("web-9.log").exists(),
        "asking about an instance creates no log for it"
    );
    // A name no instance can have is refused before it reaches the daemon.
    let e = daemon
        .client
        .log_chunk("../x", None, 100)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::InvalidSpec { .. }), "{e:?}");
    assert!(e.to_string().contains("\"../x\""), "{e}");
    daemon.stop().await;
}
