//! Instance logs read by byte offset (`LocalClient::log_chunk`, for `deploykit logs -f`)
//! through a real daemon: whole lines turned into output, files of other writers, a
//! rotation noticed, and unknown instances as `Error::NotFound`.

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

/// A line as the capture writes it: time, stream, tag, text.
fn record(text: &str) -> String {
    format!("2026-12-05T15:00:00.000000001Z stdout F {text}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_are_read_by_offset_in_whole_lines() {
    let daemon = Daemon::start().await;
    let (hello, world) = (record("hello"), record("world"));
    daemon.write("web-1", format!("{hello}{world}").as_bytes());
    let end = (hello.len() + world.len()) as u64;

    // No offset: the last lines (whole ones only), and where the file ends.
    assert_eq!(
        daemon.chunk("web-1", None, 1000).await,
        chunk("hello\nworld\n", end, false)
    );
    // From an offset, on from `next`.
    assert_eq!(
        daemon.chunk("web-1", Some(hello.len() as u64), 1000).await,
        chunk("world\n", end, false)
    );
    assert_eq!(
        daemon.chunk("web-1", Some(end), 1000).await,
        chunk("", end, false)
    );
    // A line still being written waits until it is whole.
    let more = record("more");
    daemon.write("web-1", &more.as_bytes()[..10]);
    assert_eq!(
        daemon.chunk("web-1", Some(end), 1000).await,
        chunk("", end, false)
    );
    daemon.write("web-1", &more.as_bytes()[10..]);
    let end_more = end + more.len() as u64;
    assert_eq!(
        daemon.chunk("web-1", Some(end), 1000).await,
        chunk("more\n", end_more, false)
    );
    // Zero bytes: only where to start following from.
    assert_eq!(
        daemon.chunk("web-1", None, 0).await,
        chunk("", end_more, false)
    );
    // The same through the environment itself.
    assert_eq!(
        daemon.env.log_chunk("web-1", Some(end), 1000).unwrap(),
        chunk("more\n", end_more, false)
    );
    // The tail is the output, without times and streams.
    assert_eq!(
        daemon.client.logs("web-1", 5).await.unwrap(),
        "more\n".to_string()
    );
    assert_eq!(
        daemon.client.logs("web-1", 1000).await.unwrap(),
        "hello\nworld\nmore\n".to_string()
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_of_other_writers_are_read_as_they_are() {
    let daemon = Daemon::start().await;
    // Raw output (an older version's file, or another tool's), with invalid UTF-8.
    daemon.write("web-2", &[b'a', 0xFF, b'b', b'\n', b'c']);
    assert_eq!(
        daemon.chunk("web-2", Some(0), 100).await,
        chunk("a\u{FFFD}b\n", 4, false)
    );
    // Parts of a line are joined.
    daemon.write(
        "web-3",
        b"2026-12-05T15:00:00Z stderr P par\n2026-12-05T15:00:01Z stderr F ts\n",
    );
    assert_eq!(daemon.chunk("web-3", Some(0), 100).await.text, "parts\n");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn following_by_offset_notices_a_rotation() {
    let daemon = Daemon::start().await;
    let log = InstanceLog::open(&daemon.log_dir(), "web-1", LogPolicy::default()).unwrap();
    let write = |text: &str| append(log.path(), record(text).as_bytes());
    write("line 1");
    write("line 2");
    let first = daemon.chunk("web-1", None, 1000).await;
    assert_eq!(first.text, "line 1\nline 2\n");

    // Rotated by renaming (as the capture does), then written on in a new file.
    std::fs::rename(log.path(), log.rotated_path(1)).unwrap();
    write("line 3");
    let second = daemon.chunk("web-1", Some(first.next), 1000).await;
    assert_eq!(second.text, "line 3\n");
    assert!(second.truncated, "starts over at 0");
    write("line 4");
    let third = daemon.chunk("web-1", Some(second.next), 1000).await;
    assert_eq!((third.text.as_str(), third.truncated), ("line 4\n", false));
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
