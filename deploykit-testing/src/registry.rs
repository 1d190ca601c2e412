//! A real container registry for tests: the CNCF `distribution` registry (Debian's
//! `docker-registry` package) started on a free loopback port with its storage in a temporary
//! directory, optionally behind HTTP Basic authentication, and stopped when dropped.
//!
//! ```no_run
//! let registry = deploykit_testing::registry::LocalRegistry::start(false).unwrap();
//! println!("push to {}/shop/web", registry.host());
//! ```

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The user of a registry started with authentication.
pub const USER: &str = "deploykit";
/// Its password.
pub const PASSWORD: &str = "hunter2-registry";
/// `USER`'s bcrypt hash of `PASSWORD`, as the registry's htpasswd file wants it.
const HTPASSWD: &str = "deploykit:$2b$05$AZn4VrscFVEPHkz4EKLcLezRBjyEzlTLzmNihZY0A/Ts2Pr31y6GC\n";

/// A running registry, stopped on drop.
#[derive(Debug)]
pub struct LocalRegistry {
    child: Child,
    host: String,
    dir: PathBuf,
}

/// Where the registry program is: `$DEPLOYKIT_REGISTRY_BIN`, else Debian's.
fn program() -> String {
    std::env::var("DEPLOYKIT_REGISTRY_BIN").unwrap_or_else(|_| "/usr/bin/docker-registry".into())
}

/// Whether the registry program is installed.
pub fn available() -> bool {
    std::path::Path::new(&program()).is_file()
}

impl LocalRegistry {
    /// Starts a registry (with `auth`, behind [`USER`]/[`PASSWORD`]) and waits until it
    /// answers.
    pub fn start(auth: bool) -> std::io::Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir =
            std::env::temp_dir().join(format!("deploykit-registry-{}-{port}", std::process::id()));
        std::fs::create_dir_all(dir.join("data"))?;
        let auth_section = if auth {
            std::fs::write(dir.join("htpasswd"), HTPASSWD)?;
            format!(
                "auth:\n  htpasswd:\n    realm: deploykit-test\n    path: {}\n",
                dir.join("htpasswd").display()
            )
        } else {
            String::new()
        };
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  \
             delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{auth_section}",
            dir.join("data").display()
        );
        std::fs::write(dir.join("config.yml"), config)?;
        let child = Command::new(program())
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("registry.log"))?)
            .spawn()?;
        let mut registry = LocalRegistry {
            child,
            host: format!("127.0.0.1:{port}"),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if std::net::TcpStream::connect(&registry.host).is_ok() {
                return Ok(registry);
            }
            if let Some(status) = registry.child.try_wait()? {
                let log =
                    std::fs::read_to_string(registry.dir.join("registry.log")).unwrap_or_default();
                return Err(std::io::Error::other(format!(
                    "the registry exited ({status}): {log}"
                )));
            }
            if Instant::now() > deadline {
                return Err(std::io::Error::other("the registry did not start in 20 s"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `127.0.0.1:<port>`: the registry part of image references.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The registry's storage directory.
    pub fn storage(&self) -> PathBuf {
        self.dir.join("data")
    }
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
