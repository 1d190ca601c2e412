//! PostgreSQL's own programs: where they are, which OS user runs them (PostgreSQL refuses to
//! run as root), and a server started on a data directory — a restore's recovery, or a
//! scratch cluster for tests.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use typed_builder::TypedBuilder;

use deploykit_core::{Error, Result};

/// Rows of a query's result, each column as PostgreSQL's text form (`None` for NULL).
pub type Rows = Vec<Vec<Option<String>>>;

/// The directory holding PostgreSQL's programs (`postgres`, `initdb`, `pg_basebackup`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgBinaries {
    dir: PathBuf,
}

impl PgBinaries {
    /// Find PostgreSQL's programs: `DEPLOYKIT_PG_BINDIR` if set, else `pg_config --bindir`,
    /// else the newest `/usr/lib/postgresql/<major>/bin` (Debian, Ubuntu), else `PATH`.
    ///
    /// ```no_run
    /// let bins = deploykit_postgres::PgBinaries::find()?;
    /// println!("using {}", bins.tool("pg_basebackup").display());
    /// # Ok::<(), deploykit_core::Error>(())
    /// ```
    pub fn find() -> Result<Self> {
        if let Some(dir) = std::env::var_os("DEPLOYKIT_PG_BINDIR") {
            return Self::at(dir);
        }
        if let Ok(out) = std::process::Command::new("pg_config")
            .arg("--bindir")
            .stderr(Stdio::null())
            .output()
            && out.status.success()
            && let Ok(found) = Self::at(String::from_utf8_lossy(&out.stdout).trim())
        {
            return Ok(found);
        }
        let mut majors: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let major = e.file_name().to_str()?.parse().ok()?;
                Some((major, e.path().join("bin")))
            })
            .collect();
        majors.sort();
        for (_, dir) in majors.into_iter().rev() {
            if let Ok(found) = Self::at(dir) {
                return Ok(found);
            }
        }
        let path = std::env::var_os("PATH").unwrap_or_default();
        for dir in std::env::split_paths(&path) {
            if let Ok(found) = Self::at(dir) {
                return Ok(found);
            }
        }
        Err(Error::not_found(
            "PostgreSQL's programs (postgres, initdb, pg_basebackup): install PostgreSQL, or set \
             DEPLOYKIT_PG_BINDIR to the directory holding them",
        ))
    }

    /// The programs in `dir`; fails unless `postgres`, `initdb` and `pg_basebackup` are there.
    pub fn at(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        for tool in ["postgres", "initdb", "pg_basebackup"] {
            if !dir.join(tool).is_file() {
                return Err(Error::not_found(format!(
                    "{tool} in {} (PostgreSQL's programs)",
                    dir.display()
                )));
            }
        }
        Ok(PgBinaries { dir })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of one program, e.g. `pg_basebackup`.
    pub fn tool(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// An operating-system user that PostgreSQL's programs run as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OsUser {
    /// The login name.
    pub name: String,
    /// The user id.
    pub uid: u32,
    /// The primary group id.
    pub gid: u32,
}

impl OsUser {
    /// The user called `name`.
    pub fn lookup(name: &str) -> Result<Self> {
        match nix::unistd::User::from_name(name) {
            Ok(Some(u)) => Ok(OsUser {
                name: u.name,
                uid: u.uid.as_raw(),
                gid: u.gid.as_raw(),
            }),
            Ok(None) => Err(Error::not_found(format!("operating-system user {name}"))),
            Err(e) => Err(Error::backend(
                format!("look up user {name}"),
                e.to_string(),
            )),
        }
    }

    /// Who runs PostgreSQL for a process that is this one: nobody else (`None`) unless this
    /// process is root, which PostgreSQL refuses; then the `postgres` user.
    pub fn for_server() -> Result<Option<Self>> {
        if !nix::unistd::geteuid().is_root() {
            return Ok(None);
        }
        Self::lookup("postgres").map(Some).map_err(|e| {
            Error::invalid(
                "run_as",
                format!(
                    "PostgreSQL does not run as root and {e}: name the user to run it as (--run-as)"
                ),
            )
        })
    }

    /// The user this process runs as.
    pub fn current() -> Result<Self> {
        let uid = nix::unistd::geteuid();
        match nix::unistd::User::from_uid(uid) {
            Ok(Some(u)) => Ok(OsUser {
                name: u.name,
                uid: u.uid.as_raw(),
                gid: u.gid.as_raw(),
            }),
            Ok(None) => Err(Error::not_found(format!("a user with uid {uid}"))),
            Err(e) => Err(Error::backend("look up the current user", e.to_string())),
        }
    }
}

/// A command for `program`, run as `run_as` when given (from `/`, which every user may enter).
pub(crate) fn command(program: &Path, run_as: Option<&OsUser>) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(program);
    if let Some(user) = run_as {
        command
            .uid(user.uid)
            .gid(user.gid)
            .current_dir("/")
            .env("USER", &user.name)
            .env("LOGNAME", &user.name);
    }
    command
}

/// Give `path` and everything below it to `user` (no-op when `user` is `None`).
pub fn chown_tree(path: &Path, user: Option<&OsUser>) -> Result<()> {
    let Some(user) = user else { return Ok(()) };
    let fail = |p: &Path, e: std::io::Error| {
        Error::backend(
            format!("give {} to {}", p.display(), user.name),
            e.to_string(),
        )
    };
    std::os::unix::fs::lchown(path, Some(user.uid), Some(user.gid)).map_err(|e| fail(path, e))?;
    if std::fs::symlink_metadata(path)
        .map_err(|e| fail(path, e))?
        .is_dir()
    {
        for entry in std::fs::read_dir(path).map_err(|e| fail(path, e))? {
            chown_tree(&entry.map_err(|e| fail(path, e))?.path(), Some(user))?;
        }
    }
    Ok(())
}

/// Run `command` to its end; on failure, the error names `what` and carries its stderr.
pub(crate) async fn run(mut command: tokio::process::Command, what: &str) -> Result<String> {
    let out = command
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| Error::backend(what.to_string(), e.to_string()))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(Error::backend(
            what.to_string(),
            format!("{}: {}", out.status, stderr.trim()),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A free TCP port on the loopback interface (free when this returns).
pub fn free_port() -> Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| Error::backend("find a free port", e.to_string()))
}

/// Create a cluster in `data_dir` with `initdb`: superuser `superuser`, trust authentication
/// (for scratch clusters and tests only), UTF-8, the C locale. `data_dir` is created (mode
/// 0700) and given to `run_as`.
pub async fn initdb(
    bins: &PgBinaries,
    data_dir: &Path,
    superuser: &str,
    run_as: Option<&OsUser>,
) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(data_dir)
        .and_then(|()| std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700)))
        .map_err(|e| Error::backend(format!("create {}", data_dir.display()), e.to_string()))?;
    chown_tree(data_dir, run_as)?;
    let mut initdb = command(&bins.tool("initdb"), run_as);
    initdb
        .arg("-D")
        .arg(data_dir)
        .args([
            "-U",
            superuser,
            "--auth=trust",
            "--no-sync",
            "--encoding=UTF8",
        ])
        .args(["--locale=C", "--no-instructions"]);
    run(initdb, &format!("initdb {}", data_dir.display())).await?;
    Ok(())
}

/// How [`Server::start`] runs PostgreSQL.
#[derive(Clone, Debug, TypedBuilder)]
#[non_exhaustive]
pub struct ServerOptions {
    /// The port (see [`free_port`]).
    pub port: u16,
    /// The directory of the Unix socket; keep it private (mode 0700) to keep others out.
    #[builder(setter(into))]
    pub socket_dir: PathBuf,
    /// Also listen on 127.0.0.1 (default: the Unix socket only).
    #[builder(default)]
    pub listen_tcp: bool,
    /// More settings, as `-c name=value` (they win over the configuration files).
    #[builder(default)]
    pub settings: Vec<(String, String)>,
    /// The OS user to run as (default: this process's user).
    #[builder(default)]
    pub run_as: Option<OsUser>,
    /// More environment variables for the server (and so its `archive_command` and
    /// `restore_command`).
    #[builder(default)]
    pub env: Vec<(String, String)>,
    /// The role [`Server::connect`] logs in as.
    #[builder(setter(into))]
    pub user: String,
    /// The database [`Server::connect`] opens (default `postgres`).
    #[builder(default = "postgres".to_string(), setter(into))]
    pub database: String,
    /// Where the server's output goes (appended).
    #[builder(setter(into))]
    pub log_file: PathBuf,
    /// How long [`Server::start`] waits for connections to be accepted (default 60 s).
    #[builder(default = Duration::from_secs(60))]
    pub start_timeout: Duration,
}

/// A running PostgreSQL server (the `postgres` process, a child of this one). Dropping it
/// without [`Server::stop`] shuts it down at once (`SIGQUIT`).
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> deploykit_core::Result<()> {
/// use deploykit_postgres::{PgBinaries, Server, ServerOptions, free_port, initdb};
/// let bins = PgBinaries::find()?;
/// let dir = std::env::temp_dir().join("deploykit-doc-pg");
/// initdb(&bins, &dir.join("data"), "postgres", None).await?;
/// let options = ServerOptions::builder()
///     .port(free_port()?)
///     .socket_dir(&dir)
///     .user("postgres")
///     .log_file(dir.join("server.log"))
///     .build();
/// let server = Server::start(&bins, &dir.join("data"), options).await?;
/// assert_eq!(server.query("SELECT 1 + 1").await?, [[Some("2".to_string())]]);
/// server.stop().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Server {
    data_dir: PathBuf,
    options: ServerOptions,
    child: Option<tokio::process::Child>,
}

impl Server {
    /// Start `postgres` on `data_dir` and wait until it accepts connections (during a
    /// recovery: once it is consistent). Fails, with the end of its log, if it exits first or
    /// does not get there within the options' timeout.
    pub async fn start(bins: &PgBinaries, data_dir: &Path, options: ServerOptions) -> Result<Self> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&options.log_file)
            .map_err(|e| {
                Error::backend(
                    format!("open {}", options.log_file.display()),
                    e.to_string(),
                )
            })?;
        let log_err = log
            .try_clone()
            .map_err(|e| Error::backend("duplicate the log file", e.to_string()))?;
        let mut postgres = command(&bins.tool("postgres"), options.run_as.as_ref());
        postgres
            .arg("-D")
            .arg(data_dir)
            .arg("-p")
            .arg(options.port.to_string())
            .arg("-c")
            .arg(format!(
                "listen_addresses={}",
                if options.listen_tcp { "127.0.0.1" } else { "" }
            ))
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                options.socket_dir.display()
            ));
        for (name, value) in &options.settings {
            postgres.arg("-c").arg(format!("{name}={value}"));
        }
        postgres.envs(options.env.iter().map(|(k, v)| (k, v)));
        let child = postgres
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| {
                Error::backend(
                    format!("start {}", bins.tool("postgres").display()),
                    e.to_string(),
                )
            })?;
        let mut server = Server {
            data_dir: data_dir.to_path_buf(),
            options,
            child: Some(child),
        };
        if let Err(e) = server.wait_ready().await {
            // Not left running (nor dying) behind the error.
            let _ = server.stop().await;
            return Err(e);
        }
        Ok(server)
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + self.options.start_timeout;
        loop {
            if let Some(status) = self.exited()? {
                return Err(Error::backend(
                    format!("start PostgreSQL on {}", self.data_dir.display()),
                    format!("it exited ({status}): {}", self.log_excerpt()),
                ));
            }
            let what = || format!("start PostgreSQL on {}", self.data_dir.display());
            match self.connect_raw().await {
                Ok(_) => return Ok(()),
                // Not up yet (no socket), or up and not accepting connections yet: wait. The
                // server refusing us for any other reason (no such role) will not change.
                Err(e)
                    if e.as_db_error().is_some()
                        && e.code()
                            != Some(&tokio_postgres::error::SqlState::CANNOT_CONNECT_NOW) =>
                {
                    let e = pg_error(&format!("connect as {}", self.options.user), e);
                    return Err(Error::backend(what(), e.chain()));
                }
                Err(e) if Instant::now() >= deadline => {
                    return Err(Error::backend(
                        what(),
                        format!(
                            "no connection within {:?} ({e}): {}",
                            self.options.start_timeout,
                            self.log_excerpt()
                        ),
                    ));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// The exit status if the server has exited.
    fn exited(&mut self) -> Result<Option<std::process::ExitStatus>> {
        match self.child.as_mut() {
            None => Ok(None),
            Some(child) => child
                .try_wait()
                .map_err(|e| Error::backend("check on PostgreSQL", e.to_string())),
        }
    }

    /// Whether the `postgres` process still runs.
    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && matches!(self.exited(), Ok(None))
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.options.port
    }

    /// The Unix socket's directory.
    pub fn socket_dir(&self) -> &Path {
        &self.options.socket_dir
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The log file.
    pub fn log_file(&self) -> &Path {
        &self.options.log_file
    }

    /// The log lines that explain a failure: the last few fatal or error lines, and lines
    /// from deploykit (a `restore_command` saying why it failed); else the log's last lines.
    pub fn log_excerpt(&self) -> String {
        let text = std::fs::read_to_string(&self.options.log_file).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let telling: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| {
                ["FATAL", "PANIC", "ERROR", "deploykit"]
                    .iter()
                    .any(|w| l.contains(w))
            })
            // Refusals of our own connection attempts while it starts.
            .filter(|l| {
                !l.contains("the database system is starting up")
                    && !l.contains("the database system is not yet accepting connections")
            })
            .collect();
        let chosen = if telling.is_empty() { &lines } else { &telling };
        chosen[chosen.len().saturating_sub(12)..].join("\n")
    }

    /// A connection over the Unix socket, as the options' user to their database.
    pub async fn connect(&self) -> Result<tokio_postgres::Client> {
        self.connect_raw()
            .await
            .map_err(|e| pg_error(&format!("connect to PostgreSQL on port {}", self.port()), e))
    }

    async fn connect_raw(
        &self,
    ) -> std::result::Result<tokio_postgres::Client, tokio_postgres::Error> {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(&self.options.socket_dir)
            .port(self.options.port)
            .user(&self.options.user)
            .dbname(&self.options.database)
            .connect_timeout(Duration::from_secs(10));
        let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "PostgreSQL connection ended");
            }
        });
        Ok(client)
    }

    /// Run `sql` (one or more statements, no parameters) on a new connection; the rows of its
    /// results in text form.
    pub async fn query(&self, sql: &str) -> Result<Rows> {
        simple_query(&self.connect().await?, sql).await
    }

    /// Wait until the server has left recovery (promoted), or fail — with the log's telling
    /// lines — if it exits first or `timeout` passes.
    pub async fn wait_for_promotion(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        // One connection for all the polls: a new one would be a new server process each
        // time, taking the processor from replay.
        let mut client: Option<tokio_postgres::Client> = None;
        loop {
            if let Some(status) = self.exited()? {
                return Err(Error::backend(
                    "recovery",
                    format!(
                        "PostgreSQL stopped ({status}) before recovery ended: {}",
                        self.log_excerpt()
                    ),
                ));
            }
            if client.as_ref().is_none_or(|c| c.is_closed()) {
                client = self.connect_raw().await.ok();
            }
            if let Some(c) = &client
                && let Ok(rows) = simple_query(c, "SELECT pg_is_in_recovery()").await
                && rows
                    .first()
                    .and_then(|r| r.first())
                    .and_then(|v| v.as_deref())
                    == Some("f")
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::backend(
                    "recovery",
                    format!(
                        "still in recovery after {timeout:?}: {}",
                        self.log_excerpt()
                    ),
                ));
            }
            // Quick polls on the connection; slower ones while it cannot connect.
            let pause = if client.is_some() { 10 } else { 50 };
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
    }

    /// Wait up to `timeout` for the server to exit by itself (a recovery that fails ends it);
    /// whether it did.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.exited()?.is_some() {
                return Ok(true);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(self.exited()?.is_some())
    }

    /// Shut down cleanly (fast shutdown: sessions are ended, a checkpoint is written) and wait
    /// for it; after 60 s, immediately.
    pub async fn stop(mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if child.try_wait().ok().flatten().is_some() {
            return Ok(());
        }
        let pid = Pid::from_raw(child.id().unwrap_or_default() as i32);
        let _ = kill(pid, Signal::SIGINT);
        match tokio::time::timeout(Duration::from_secs(60), child.wait()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(Error::backend("stop PostgreSQL", e.to_string())),
            Err(_) => {
                let _ = kill(pid, Signal::SIGQUIT);
                child
                    .wait()
                    .await
                    .map(|_| ())
                    .map_err(|e| Error::backend("stop PostgreSQL", e.to_string()))
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut()
            && matches!(child.try_wait(), Ok(None))
            && let Some(pid) = child.id()
        {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGQUIT);
        }
    }
}

/// A `tokio_postgres` error as a deploykit error: the server's message (and detail) when the
/// server sent one.
pub(crate) fn pg_error(operation: &str, e: tokio_postgres::Error) -> Error {
    let message = match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!("{} ({detail})", db.message()),
            None => db.message().to_string(),
        },
        None => {
            let mut message = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                message.push_str(&format!(": {s}"));
                source = s.source();
            }
            message
        }
    };
    Error::backend(operation.to_string(), message)
}

/// Run `sql` without parameters; the rows of its results in text form.
pub async fn simple_query(client: &tokio_postgres::Client, sql: &str) -> Result<Rows> {
    let messages = client
        .simple_query(sql)
        .await
        .map_err(|e| pg_error("run a query", e))?;
    Ok(messages
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_string))
                    .collect(),
            ),
            _ => None,
        })
        .collect())
}
