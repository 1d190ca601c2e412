//! Shared by the integration tests: the sample app, a local environment and an orchestrator
//! over it, built from a `deploykit.toml` text.

#![allow(dead_code, unreachable_pub)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deploykit_config::Config;
use deploykit_core::{Actor, DeployRequest, Digest, Orchestrator, OrchestratorConfig, ServiceSpec};
use deploykit_local::{LocalEnvironment, LocalOptions};
use deploykit_sqlite::SqliteStore;

/// The sample app binary cargo built for these tests.
pub const APP: &str = env!("CARGO_BIN_EXE_deploykit-sample-app");
/// The deploykit binary.
pub const CLI: &str = env!("CARGO_BIN_EXE_deploykit");

/// A local environment with an orchestrator, in a temporary directory.
pub struct Rig {
    pub dir: tempfile::TempDir,
    pub config: Config,
    pub local: LocalEnvironment,
    pub orchestrator: Orchestrator,
}

impl Rig {
    /// `toml` may say `{APP}` for the sample app's path.
    pub async fn new(toml: &str) -> Rig {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = Config::from_toml_str("deploykit.toml", &toml.replace("{APP}", APP))
            .expect("test configuration");
        let local = LocalEnvironment::open(
            LocalOptions::new(dir.path().join("local"))
                .listen("127.0.0.1:0".parse().expect("addr"))
                .workdir(dir.path())
                .grace(Duration::from_secs(3))
                .drain_timeout(Duration::from_secs(10)),
        )
        .await
        .expect("open the local environment");
        let mut builder = Orchestrator::builder(
            SqliteStore::open(dir.path().join("deploykit.db"))
                .await
                .expect("journal"),
        )
        .config(
            OrchestratorConfig::builder()
                .poll_interval(Duration::from_millis(100))
                .build(),
        );
        for env in config.environments() {
            builder = builder.environment_with_monitor(
                env.clone(),
                Arc::new(local.clone()),
                Arc::new(local.clone()),
            );
        }
        let orchestrator = builder.open().await.expect("orchestrator");
        Rig {
            dir,
            config,
            local,
            orchestrator,
        }
    }

    /// The service `name` with extra variables.
    pub fn service(&self, name: &str, vars: &[(&str, &str)]) -> ServiceSpec {
        let mut spec = self.config.service(name).expect("service").clone();
        for (k, v) in vars {
            spec.variables.insert((*k).into(), (*v).into());
        }
        spec
    }

    /// A deploy request of `service` in `env` labelled `label` (also its VERSION).
    pub fn request(
        &self,
        service: &str,
        env: &str,
        label: &str,
        vars: &[(&str, &str)],
    ) -> DeployRequest {
        let mut all = vec![("VERSION", label)];
        all.extend_from_slice(vars);
        DeployRequest::builder()
            .service(self.service(service, &all))
            .environment(env)
            .artifact(Digest::of_bytes(APP.as_bytes()))
            .label(label)
            .requested_by(Actor::new("test"))
            .build()
    }

    /// Stop everything.
    pub async fn close(self) {
        self.orchestrator.shutdown().await.expect("shutdown");
        self.local.shutdown(true).await;
    }
}

pub fn deploykit(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(CLI);
    cmd.current_dir(dir)
        .args(args)
        .env("DEPLOYKIT_ACTOR", "test")
        .stdin(Stdio::null());
    cmd
}

pub fn run(dir: &Path, args: &[&str]) -> Output {
    deploykit(dir, args).output().expect("run deploykit")
}

/// The daemon; when the test ends however it ends, it is told to stop its instances, then
/// killed.
pub struct Daemon(pub Child, pub std::path::PathBuf);

impl Daemon {
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// Stops the daemon as an operator or a service manager does (SIGTERM), and waits up to
    /// 30 s for it to exit (killing it then, and failing).
    #[allow(dead_code)] // not every test binary stops one gracefully
    pub fn terminate(&mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM: {status}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while matches!(self.0.try_wait(), Ok(None)) {
            if Instant::now() > deadline {
                self.kill();
                panic!("the daemon did not stop within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = run(&self.1, &["down"]);
        }
        self.kill();
    }
}

pub fn start_daemon(dir: &Path, listen: &str) -> Daemon {
    start_daemon_with(dir, listen, &[])
}

/// [`start_daemon`] with more arguments for `deploykit daemon`.
#[allow(dead_code)] // not every test binary passes any
pub fn start_daemon_with(dir: &Path, listen: &str, more: &[&str]) -> Daemon {
    let mut args = vec!["daemon", "--listen", listen];
    args.extend_from_slice(more);
    spawn_daemon(dir, deploykit(dir, &args))
}

/// Starts `daemon` (a `deploykit daemon` command, e.g. with more variables set) logging to
/// `daemon.log`, and waits for its socket.
pub fn spawn_daemon(dir: &Path, mut daemon: Command) -> Daemon {
    let log = std::fs::File::options()
        .create(true)
        .append(true)
        .open(dir.join("daemon.log"))
        .unwrap();
    let child = daemon
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start the daemon");
    let daemon = Daemon(child, dir.to_path_buf());
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(dir.join(".deploykit/daemon.sock")).is_err() {
        assert!(Instant::now() < deadline, "the daemon did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    daemon
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn json(out: &Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("{e}: {text} / {}", String::from_utf8_lossy(&out.stderr)))
}

/// A webhook receiver: every POSTed body, in order.
pub fn webhook() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let seen = bodies.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut data = Vec::new();
            let mut buf = [0u8; 4096];
            let body = loop {
                let Ok(n) = stream.read(&mut buf) else {
                    break None;
                };
                if n == 0 {
                    break None;
                }
                data.extend_from_slice(&buf[..n]);
                let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") else {
                    continue;
                };
                let head = String::from_utf8_lossy(&data[..end]).to_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if data.len() >= end + 4 + length {
                    break Some(
                        String::from_utf8_lossy(&data[end + 4..end + 4 + length]).into_owned(),
                    );
                }
            };
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            if let Some(body) = body {
                seen.lock().unwrap().push(body);
            }
        }
    });
    (port, bodies)
}

/// Whether a firing alert named `name` was POSTed.
pub fn alerts_named(bodies: &Mutex<Vec<String>>, name: &str) -> bool {
    bodies.lock().unwrap().iter().any(|b| {
        b.contains(&format!("\"alertname\":\"{name}\"")) && b.contains("\"status\":\"firing\"")
    })
}
