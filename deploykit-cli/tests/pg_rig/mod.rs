//! Shared by the PostgreSQL tests: a cluster archiving into a repository through the
//! deploykit binary, a standby following the archive, and running deploykit as the
//! repository's owner.

#![allow(dead_code, unreachable_pub)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use deploykit_postgres::tokio_postgres::Client;
use deploykit_postgres::{
    OsUser, PgBinaries, Server, ServerOptions, chown_tree, free_port, initdb, simple_query,
};
use serde_json::Value;

pub const CLI: &str = env!("CARGO_BIN_EXE_deploykit");
pub const PASSWORD: &str = "correct horse battery staple";
pub const MIB16: u64 = 16 * 1024 * 1024;
pub const ROWS: &str = "SELECT string_agg(id::text, ',' ORDER BY id) FROM events";
/// The rows of `events`, the rows of `churn` and the `churn_N` tables (add `FROM events`).
pub const ROWS_AND_CHURN: &str = "SELECT string_agg(id::text, ',' ORDER BY id), \
     (SELECT count(*) FROM churn)::text, \
     (SELECT string_agg(relname, ',' ORDER BY relname) FROM pg_class \
      WHERE relname LIKE 'churn\\_%' AND relkind = 'r')";

pub fn bins() -> Option<PgBinaries> {
    match PgBinaries::find() {
        Ok(b) => Some(b),
        Err(e) => {
            eprintln!("skipping: PostgreSQL is not installed here ({})", e.chain());
            None
        }
    }
}

/// A cluster archiving into a repository, in a temporary directory.
pub struct Rig {
    pub dir: tempfile::TempDir,
    pub run_as: Option<OsUser>,
    /// The deploykit binary, where the server's user can run it.
    pub exe: PathBuf,
    pub repo: PathBuf,
    /// A key file opening the repository (the server archives with it).
    pub key_file: PathBuf,
    pub port: u16,
    pub server: Server,
    pub db: Client,
}

impl Rig {
    pub async fn start(bins: &PgBinaries) -> Rig {
        let run_as = OsUser::for_server().expect("a user to run PostgreSQL as");
        let dir = tempfile::tempdir().unwrap();
        chown_tree(dir.path(), run_as.as_ref()).unwrap();
        let exe = match &run_as {
            Some(_) => {
                let exe = dir.path().join("deploykit");
                std::fs::copy(CLI, &exe).unwrap();
                chown_tree(&exe, run_as.as_ref()).unwrap();
                exe
            }
            None => PathBuf::from(CLI),
        };
        let repo = dir.path().join("repo");
        // The server archives with a key file; the commands here use the passphrase.
        let key_file = dir.path().join("repo.key");
        let out = run(
            &exe,
            run_as.as_ref(),
            None,
            &["pg", "init", "--repo", s(&repo), "--key-file", s(&key_file)],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        let data = dir.path().join("data");
        initdb(bins, &data, "postgres", run_as.as_ref())
            .await
            .unwrap();
        let mut conf = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
        conf.push_str(&format!(
            "\narchive_mode = on\narchive_command = '{} pg wal-push %p --repo {}'\n\
             archive_timeout = 1\nwal_level = replica\nfsync = off\n",
            exe.display(),
            repo.display()
        ));
        std::fs::write(data.join("postgresql.conf"), conf).unwrap();
        let port = free_port().unwrap();
        let options = ServerOptions::builder()
            .port(port)
            .socket_dir(dir.path())
            .listen_tcp(true)
            .run_as(run_as.clone())
            .env(vec![(
                "DEPLOYKIT_REPO_KEY_FILE".into(),
                key_file.display().to_string(),
            )])
            .user("postgres")
            .log_file(dir.path().join("primary.log"))
            .build();
        let server = Server::start(bins, &data, options).await.unwrap();
        let db = server.connect().await.unwrap();
        Rig {
            dir,
            run_as,
            exe,
            repo,
            key_file,
            port,
            server,
            db,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Options for another cluster of this rig (`name`.log, a free port, the rig's socket
    /// directory, its OS user, the key file for `wal-fetch` and `wal-push`).
    pub fn options(&self, name: &str) -> (u16, ServerOptions) {
        let port = free_port().unwrap();
        let options = ServerOptions::builder()
            .port(port)
            .socket_dir(self.path(""))
            .run_as(self.run_as.clone())
            .env(vec![(
                "DEPLOYKIT_REPO_KEY_FILE".into(),
                self.key_file.display().to_string(),
            )])
            .user("postgres")
            .log_file(self.path(&format!("{name}.log")))
            .build();
        (port, options)
    }

    /// `pg standby` into `standby/`, started: the directory, the server and its port.
    pub async fn follow(&self, bins: &PgBinaries) -> (PathBuf, Server, u16) {
        let dir = self.path("standby");
        self.json(
            true,
            &[
                "pg",
                "standby",
                "--repo",
                s(&self.repo),
                "--to",
                s(&dir),
                "--poll-ms",
                "200",
            ],
        );
        let (port, options) = self.options("standby");
        let server = Server::start(bins, &dir, options).await.unwrap();
        (dir, server, port)
    }

    /// Wait until `db` (a connection to `server`) holds exactly the rows `want`.
    pub async fn wait_rows(db: &Client, server: &Server, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while simple_query(db, ROWS)
            .await
            .ok()
            .and_then(|r| r[0][0].clone())
            .as_deref()
            != Some(want)
        {
            assert!(Instant::now() < deadline, "{}", server.log_excerpt());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Run deploykit as the repository's owner (as the server's user).
    pub fn dk(&self, args: &[&str]) -> Output {
        run(&self.exe, self.run_as.as_ref(), None, args)
    }

    /// Run deploykit as the repository's owner with the key file instead of the passphrase.
    pub fn dk_key(&self, args: &[&str]) -> Output {
        run(&self.exe, self.run_as.as_ref(), Some(&self.key_file), args)
    }

    /// Run deploykit as this test's user (root in CI: `pg restore` then runs PostgreSQL as
    /// `postgres`).
    pub fn dk_here(&self, args: &[&str]) -> Output {
        run(&self.exe, None, None, args)
    }

    /// `args` with `-o json`, which must succeed; its document.
    pub fn json(&self, here: bool, args: &[&str]) -> Value {
        let args: Vec<&str> = ["-o", "json"].iter().chain(args).copied().collect();
        let out = if here {
            self.dk_here(&args)
        } else {
            self.dk(&args)
        };
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
    }

    pub async fn sql(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        simple_query(&self.db, sql).await.unwrap()
    }

    pub async fn one(&self, sql: &str) -> String {
        self.sql(sql).await[0][0].clone().unwrap_or_default()
    }

    /// Commit row `id` (its own transaction), then wait a moment so commits are apart.
    pub async fn insert(&self, id: u32) {
        self.sql(&format!("INSERT INTO events (id) VALUES ({id})"))
            .await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    /// The time of row `id`'s write, as RFC 3339.
    pub async fn at(&self, id: u32) -> String {
        self.one(&format!(
            "SELECT to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') \
             FROM events WHERE id = {id}"
        ))
        .await
    }

    /// Wait until the segment holding everything committed so far is in the repository.
    pub async fn archive_everything(&self) -> Duration {
        let segment = self
            .one("SELECT pg_walfile_name(pg_current_wal_lsn() - 1)")
            .await;
        let started = Instant::now();
        self.sql("SELECT pg_switch_wal()").await;
        self.wait_archived(&segment, started).await
    }

    pub async fn wait_archived(&self, segment: &str, since: Instant) -> Duration {
        let file = self.repo.join("named/wal").join(segment);
        while !file.exists() {
            assert!(
                since.elapsed() < Duration::from_secs(60),
                "{segment} not archived: {}",
                std::fs::read_to_string(self.server.log_file()).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        since.elapsed()
    }

    /// A table, rows 1–3, a base backup, rows 4–8 with segment switches between, all archived.
    /// The backup's first segment, and the WAL position just after row 8.
    pub async fn history(&self) -> (String, String) {
        self.sql(
            "CREATE TABLE events (id int PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp())",
        )
        .await;
        for id in 1..=3 {
            self.insert(id).await;
        }
        // The base backup reads the data directory in place while a workload writes rows and
        // drops and creates tables.
        self.sql("CREATE TABLE churn (n int)").await;
        let conn = format!("host=127.0.0.1 port={} user=postgres", self.port);
        let (exe, run_as) = (self.exe.clone(), self.run_as.clone());
        let args: Vec<String> = [
            "-o",
            "json",
            "pg",
            "backup",
            "--repo",
            s(&self.repo),
            "--pgdata-connection",
            &conn,
            "--pgdata",
            s(&self.path("data")),
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        let backup = tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run(&exe, run_as.as_ref(), None, &args)
        });
        let mut round = 0;
        while !backup.is_finished() || round < 3 {
            round += 1;
            self.sql(&format!(
                "INSERT INTO churn SELECT g FROM generate_series(1, 1000) g; \
                 DROP TABLE IF EXISTS churn_{}; CREATE TABLE churn_{round} AS SELECT 1 AS one",
                round - 1
            ))
            .await;
        }
        let out = backup.await.unwrap();
        assert!(out.status.success(), "pg backup --pgdata: {}", stderr(&out));
        let backup: Value = serde_json::from_slice(&out.stdout).unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
        for id in 4..=8 {
            self.insert(id).await;
            if id == 5 || id == 7 {
                self.sql("SELECT pg_switch_wal()").await;
            }
        }
        let lsn = self.one("SELECT pg_current_wal_lsn()::text").await;
        self.archive_everything().await;
        (backup["wal_start"].as_str().unwrap().to_string(), lsn)
    }
}

/// The rows of `events` on `server`, if it answers.
pub async fn rows_of(server: &Server) -> Option<String> {
    server.query(ROWS).await.ok().and_then(|r| r[0][0].clone())
}

pub fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// Run deploykit with the passphrase, or with `key_file` when given.
pub fn run(exe: &Path, run_as: Option<&OsUser>, key_file: Option<&Path>, args: &[&str]) -> Output {
    let mut command = Command::new(exe);
    command
        .args(args)
        .env("DEPLOYKIT_REPO_PASSWORD", PASSWORD)
        .env_remove("DEPLOYKIT_REPO_KEY_FILE")
        .env_remove("RUST_LOG");
    if let Some(key) = key_file {
        command.env("DEPLOYKIT_REPO_KEY_FILE", key);
    }
    if let Some(user) = run_as {
        command.uid(user.uid).gid(user.gid).current_dir("/");
    }
    // A copy of the binary just written can be "busy" for a moment while a process another
    // test forks still holds the writer's descriptor.
    for _ in 0..50 {
        match command.output() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                std::thread::sleep(Duration::from_millis(100));
            }
            other => return other.unwrap(),
        }
    }
    panic!("{} stayed busy", exe.display());
}

/// What a command said: stderr, then stdout (where `-o json` puts an error).
pub fn stderr(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    )
}
