//! The README's walkthrough ("Deploy your own app on this machine"), run as written: its shell
//! block, line by line in one bash session, against a copy of `examples/local`, with
//! `deploykit` on `PATH` as `cargo install` would put it. Every line must exit 0, except the
//! one the README says exits 3.
//!
//! Two things differ from a person at a terminal, both outside the block's commands: the proxy
//! listens on a free port (`DEPLOYKIT_LISTEN`, and the block's `127.0.0.1:8080` rewritten to
//! it), and after `deploykit daemon &` the session waits until the daemon answers, as a person
//! would before typing the next line.

use std::path::Path;
use std::process::Command;

const CLI: &str = env!("CARGO_BIN_EXE_deploykit");

/// The first ```sh block after the heading.
fn walkthrough(readme: &str) -> Vec<String> {
    let section = &readme[readme
        .find("## Deploy your own app on this machine")
        .expect("the README's walkthrough heading")..];
    let start = section.find("```sh\n").expect("a sh block") + "```sh\n".len();
    let end = start + section[start..].find("```").expect("the end of the block");
    section[start..end].lines().map(str::to_string).collect()
}

#[test]
fn the_readme_walkthrough_runs_as_written() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let lines = walkthrough(&readme);
    assert!(
        lines[0].starts_with("cargo install --path deploykit-cli"),
        "{lines:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("examples/local")).unwrap();
    std::fs::copy(
        root.join("examples/local/deploykit.toml"),
        dir.path().join("examples/local/deploykit.toml"),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let bin = Path::new(CLI).parent().unwrap();

    let mut script = String::from(
        "set -u\ntrap 'deploykit down >/dev/null 2>&1; kill $(jobs -p) 2>/dev/null' EXIT\n",
    );
    let mut expected = Vec::new();
    for (n, line) in lines.iter().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        script.push_str(&line.replace("127.0.0.1:8080", &listen));
        script.push('\n');
        script.push_str(&format!("echo \"::exit $? {n}\"\n"));
        let code = if line.contains("exit code 3") { 3 } else { 0 };
        expected.push(format!("::exit {code} {n}"));
        if line.trim_start().starts_with("deploykit daemon &") {
            script.push_str(
                "for _ in $(seq 150); do deploykit status >/dev/null 2>&1 && break; sleep 0.2; done\n",
            );
        }
    }
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(dir.path())
        .env(
            "PATH",
            format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
        )
        .env("DEPLOYKIT_LISTEN", &listen)
        .env("DEPLOYKIT_ACTOR", "readme")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let got: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("::exit "))
        .collect();
    assert_eq!(got, expected, "{stdout}\n{stderr}");
    // What the block promises along the way.
    assert!(stdout.contains("is valid: services web"), "{stdout}");
    assert!(stdout.contains("web v1: succeeded"), "{stdout}");
    assert!(stdout.contains("web v2: rolled back"), "{stdout}");
    assert!(stdout.contains("% is not < 2 %"), "{stdout}");
    assert!(stdout.contains("rolled back to v1  by readme"), "{stdout}");
    assert!(stdout.contains("scale to v1=3"), "{stdout}");
    assert!(stdout.contains("daemon stopped"), "{stdout}");
}
