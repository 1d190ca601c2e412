//! The library against a real PostgreSQL (skipped, saying why, where its programs are not
//! installed): base backups of a running server, and WAL files through the archive. The whole
//! archive-backup-restore cycle through the `deploykit` binary is in `deploykit-cli/tests/pg.rs`.
//!
//! As root, PostgreSQL runs as the `postgres` user in a directory given to it.

use std::path::Path;
use std::sync::Arc;

use deploykit_backup::{LocalTarget, RepoKey, RepoOptions, Repository, RestoreOptions};
use deploykit_core::Error;
use deploykit_postgres::{
    BaseBackupRequest, ClusterIdentity, OsUser, PgBinaries, SegmentHeader, Server, ServerOptions,
    archived_segments, base_backups, chown_tree, fetch_wal, free_port, initdb, push_wal,
    take_base_backup,
};

const MIB16: u64 = 16 * 1024 * 1024;

fn bins() -> Option<PgBinaries> {
    match PgBinaries::find() {
        Ok(b) => Some(b),
        Err(e) => {
            eprintln!("skipping: PostgreSQL is not installed here ({})", e.chain());
            None
        }
    }
}

/// A temporary directory the server's user may enter.
fn workdir(run_as: Option<&OsUser>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    chown_tree(dir.path(), run_as).unwrap();
    dir
}

async fn repo(dir: &Path) -> Repository {
    let target = Arc::new(LocalTarget::new(dir).unwrap());
    let options = RepoOptions::builder().kdf_cost((1024, 1)).build();
    Repository::init(target, &RepoKey::passphrase("pw"), options)
        .await
        .unwrap()
}

fn append(path: &Path, text: &str) {
    let mut conf = std::fs::read_to_string(path).unwrap();
    conf.push_str(text);
    std::fs::write(path, conf).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_base_backup_of_a_running_server_records_its_wal_range() {
    let Some(bins) = bins() else { return };
    let run_as = OsUser::for_server().unwrap();
    let dir = workdir(run_as.as_ref());
    let data = dir.path().join("data");
    initdb(&bins, &data, "postgres", run_as.as_ref())
        .await
        .unwrap();
    // Archiving that archives nothing: enough for pg_basebackup, which waits for it.
    append(
        &data.join("postgresql.conf"),
        "\narchive_mode = on\narchive_command = 'true'\nwal_level = replica\nfsync = off\n",
    );
    let port = free_port().unwrap();
    let options = ServerOptions::builder()
        .port(port)
        .socket_dir(dir.path())
        .listen_tcp(true)
        .run_as(run_as.clone())
        .user("postgres")
        .log_file(dir.path().join("server.log"))
        .build();
    let server = Server::start(&bins, &data, options).await.unwrap();
    server
        .query("CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 1000) g")
        .await
        .unwrap();
    let system: u64 = server
        .query("SELECT system_identifier::text FROM pg_control_system()")
        .await
        .unwrap()[0][0]
        .as_deref()
        .unwrap()
        .parse()
        .unwrap();
    let repo = repo(&dir.path().join("repo")).await;
    let request = BaseBackupRequest::builder()
        .connection(format!("host=127.0.0.1 port={port} user=postgres"))
        .bins(bins.clone())
        .work_dir(dir.path())
        .build();
    let report = take_base_backup(&repo, &request).await.unwrap();
    let backup = &report.backup;
    assert_eq!(backup.timeline, 1);
    assert!(backup.start_lsn < backup.stop_lsn, "{backup:?}");
    assert!(backup.start_time < backup.stop_time);
    assert_eq!(backup.wal_segment_size, MIB16);
    assert_eq!(backup.system_identifier, system);
    assert!(report.bytes > 1_000_000 && report.files > 100, "{report:?}");
    assert_eq!(
        base_backups(&repo).await.unwrap(),
        std::slice::from_ref(backup)
    );
    assert_eq!(
        ClusterIdentity::recorded(&repo).await.unwrap(),
        Some(ClusterIdentity {
            system_identifier: system,
            wal_segment_size: MIB16
        })
    );
    // The copy went into the repository and away from the work directory.
    assert!(
        std::fs::read_dir(dir.path()).unwrap().flatten().all(|e| !e
            .file_name()
            .to_string_lossy()
            .starts_with("deploykit-basebackup")),
        "the work copy is removed"
    );
    let restored = dir.path().join("restored");
    repo.restore(&backup.snapshot, &restored, &RestoreOptions::default())
        .await
        .unwrap();
    let label = std::fs::read_to_string(restored.join("pgdata/backup_label")).unwrap();
    let start_segment = backup.first_segment().file_name(MIB16);
    assert!(label.contains(&start_segment), "{label}");
    assert!(restored.join("pgdata/backup_manifest").is_file());
    assert!(restored.join("pgdata/PG_VERSION").is_file());
    assert_eq!(backup.root, "pgdata");

    // The data directory read in place: its own name at the snapshot's root, backup_label
    // beside it, what PostgreSQL's documentation leaves out left out.
    let mut in_place = request.clone();
    in_place.data_dir = Some(data.clone());
    let report = take_base_backup(&repo, &in_place).await.unwrap();
    let second = &report.backup;
    assert_eq!(second.root, "data");
    assert!(second.start_lsn > backup.stop_lsn, "{second:?}");
    assert!(second.start_lsn < second.stop_lsn, "{second:?}");
    assert_eq!(second.system_identifier, system);
    assert_eq!(base_backups(&repo).await.unwrap().len(), 2);
    let restored = dir.path().join("restored-in-place");
    repo.restore(&second.snapshot, &restored, &RestoreOptions::default())
        .await
        .unwrap();
    let label = std::fs::read_to_string(restored.join("backup_label")).unwrap();
    let start_segment = second.first_segment().file_name(MIB16);
    assert!(label.contains(&start_segment), "{label}");
    assert!(label.contains("START TIMELINE: 1"), "{label}");
    assert!(restored.join("data/PG_VERSION").is_file());
    assert!(restored.join("data/global/pg_control").is_file());
    assert!(!restored.join("data/postmaster.pid").exists());
    assert!(!restored.join("data/backup_label").exists());
    let wal: Vec<_> = std::fs::read_dir(restored.join("data/pg_wal"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(wal, ["archive_status"], "pg_wal's segments are left out");
    assert!(restored.join("data/pg_stat_tmp").is_dir());
    // Another cluster's data directory, or a copy of this one, is refused.
    initdb(
        &bins,
        &dir.path().join("other"),
        "postgres",
        run_as.as_ref(),
    )
    .await
    .unwrap();
    for (other, why) in [
        (
            dir.path().join("other"),
            "is the data directory of PostgreSQL system",
        ),
        (
            restored.join("data"),
            "is not the data directory of the server",
        ),
        (dir.path().join("repo"), "not a PostgreSQL data directory"),
    ] {
        let mut wrong = request.clone();
        wrong.data_dir = Some(other.clone());
        let e = take_base_backup(&repo, &wrong).await.unwrap_err();
        assert!(e.to_string().contains(why), "{}: {e}", other.display());
    }
    assert_eq!(base_backups(&repo).await.unwrap().len(), 2);

    // Without archiving, a base backup is refused.
    server
        .query("ALTER SYSTEM SET archive_mode = off")
        .await
        .unwrap();
    server.stop().await.unwrap();
    let options = |user: &str| {
        ServerOptions::builder()
            .port(port)
            .socket_dir(dir.path())
            .listen_tcp(true)
            .run_as(run_as.clone())
            .user(user)
            .log_file(dir.path().join("server.log"))
            .build()
    };
    // A role the server does not know fails the start at once, and says so.
    let started = std::time::Instant::now();
    let e = Server::start(&bins, &data, options("no_such_role"))
        .await
        .unwrap_err();
    assert!(
        e.chain().contains("role \"no_such_role\" does not exist"),
        "{}",
        e.chain()
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    let server = Server::start(&bins, &data, options("postgres"))
        .await
        .unwrap();
    let e = take_base_backup(&repo, &request).await.unwrap_err();
    assert!(
        e.to_string().contains("invalid archive_mode"),
        "{}",
        e.chain()
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_files_go_through_the_archive_checked_and_idempotent() {
    let Some(bins) = bins() else { return };
    let run_as = OsUser::for_server().unwrap();
    let dir = workdir(run_as.as_ref());
    // A fresh cluster's first segment is a real one.
    initdb(&bins, &dir.path().join("a"), "postgres", run_as.as_ref())
        .await
        .unwrap();
    let name = "000000010000000000000001";
    let segment = dir.path().join("a/pg_wal").join(name);
    let bytes = std::fs::read(&segment).unwrap();
    let header = SegmentHeader::parse(&bytes).unwrap();
    let repo = repo(&dir.path().join("repo")).await;

    let pushed = push_wal(&repo, &segment).await.unwrap();
    assert!(pushed.written);
    assert_eq!(pushed.bytes, MIB16);
    assert!(
        pushed.bytes_stored < MIB16 / 4,
        "mostly zeros compress: {pushed:?}"
    );
    assert!(
        !push_wal(&repo, &segment).await.unwrap().written,
        "a retry is a no-op"
    );
    assert_eq!(
        ClusterIdentity::recorded(&repo)
            .await
            .unwrap()
            .unwrap()
            .system_identifier,
        header.system_identifier
    );
    let fetched = dir.path().join("fetched");
    assert_eq!(fetch_wal(&repo, name, &fetched).await.unwrap(), MIB16);
    assert_eq!(std::fs::read(&fetched).unwrap(), bytes);
    let e = fetch_wal(&repo, "000000010000000000000002", &fetched)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::NotFound { .. }), "{e}");
    assert_eq!(
        archived_segments(&repo, 1, MIB16).await.unwrap(),
        [1].into_iter().collect()
    );

    // Other content under an archived name is refused, and the archive keeps the first.
    let changed = dir.path().join("changed").join(name);
    std::fs::create_dir_all(changed.parent().unwrap()).unwrap();
    let mut other = bytes.clone();
    other[MIB16 as usize - 1] ^= 1;
    std::fs::write(&changed, &other).unwrap();
    let e = push_wal(&repo, &changed).await.unwrap_err();
    assert!(e.chain().contains("with other content"), "{}", e.chain());
    assert!(
        e.to_string().contains(&format!("archive {name} failed")),
        "{e}"
    );
    fetch_wal(&repo, name, &fetched).await.unwrap();
    assert_eq!(std::fs::read(&fetched).unwrap(), bytes);

    // A segment under another segment's name, a truncated one: refused.
    let renamed = dir.path().join("changed/000000010000000000000007");
    std::fs::write(&renamed, &bytes).unwrap();
    let e = push_wal(&repo, &renamed).await.unwrap_err();
    assert!(e.to_string().contains("its name says"), "{e}");
    std::fs::write(&renamed, &bytes[..8192]).unwrap();
    assert!(push_wal(&repo, &renamed).await.is_err());

    // Another cluster's WAL does not go into this repository.
    initdb(&bins, &dir.path().join("b"), "postgres", run_as.as_ref())
        .await
        .unwrap();
    let foreign = dir.path().join("b/pg_wal").join(name);
    let e = push_wal(&repo, &foreign).await.unwrap_err();
    assert!(
        e.to_string().contains("use one repository per cluster"),
        "{e}"
    );

    // History and backup history files are archived as they are.
    let history = dir.path().join("00000002.history");
    std::fs::write(&history, "1\t0/3000000\tno recovery target specified\n").unwrap();
    assert!(push_wal(&repo, &history).await.unwrap().written);
    fetch_wal(&repo, "00000002.history", &fetched)
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(&fetched).unwrap(),
        std::fs::read(&history).unwrap()
    );
    let e = push_wal(&repo, &dir.path().join("a/postgresql.conf"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("is not a WAL segment"), "{e}");
}
