//! `deploykit backup copy` between directories: what it prints, that a second copy copies
//! nothing, that the mirror restores the data, and that a directory holding other things is
//! refused. (S3 mirrors are tested in `deploykit-aws/tests/mirror_lock.rs`.)

use std::path::Path;
use std::process::{Command, Output};

const CLI: &str = env!("CARGO_BIN_EXE_deploykit");

fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(CLI)
        .args(args)
        .current_dir(dir)
        .env("DEPLOYKIT_REPO_PASSWORD", "correct horse")
        .env_remove("DEPLOYKIT_CONFIG")
        .env_remove("DEPLOYKIT_STATE")
        .output()
        .expect("run deploykit")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[test]
fn backup_copy_mirrors_a_directory_repository_and_a_second_copy_copies_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("app")).unwrap();
    let content: Vec<u8> = (0..200_000u32).map(|i| (i * 13 % 251) as u8).collect();
    std::fs::write(d.join("app/data.bin"), &content).unwrap();
    let s = |p: &str| d.join(p).to_string_lossy().into_owned();
    ok(&run(d, &["backup", "--repo", &s("repo"), &s("app")]));

    let text = ok(&run(
        d,
        &["backup", "copy", "--repo", &s("repo"), "--to", &s("mirror")],
    ));
    assert!(text.starts_with("copied 5 objects"), "{text}");
    assert!(
        text.contains("snapshots 1") && text.contains("  snapshot "),
        "{text}"
    );

    let json: serde_json::Value = serde_json::from_str(&ok(&run(
        d,
        &[
            "backup",
            "copy",
            "--repo",
            &s("repo"),
            "--to",
            &s("mirror"),
            "-o",
            "json",
        ],
    )))
    .unwrap();
    assert_eq!(json["objects_copied"], 0, "{json}");
    assert_eq!(json["unchanged"], 5, "{json}");
    assert_eq!(json["to"], s("mirror"));

    ok(&run(
        d,
        &["restore", "--repo", &s("mirror"), "--to", &s("out")],
    ));
    assert_eq!(std::fs::read(d.join("out/app/data.bin")).unwrap(), content);

    std::fs::create_dir_all(d.join("photos")).unwrap();
    std::fs::write(d.join("photos/cat.jpg"), b"meow").unwrap();
    let refused = run(
        d,
        &["backup", "copy", "--repo", &s("repo"), "--to", &s("photos")],
    );
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("mirror.destination") && stderr.contains("cat.jpg"),
        "{stderr}"
    );
}
