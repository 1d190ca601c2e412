//! `[access]` in deploykit.toml, with the real binary: the actor is the operating system's user
//! who runs the command (a different `--actor` is refused, not taken), and failovers and
//! deployments need the policy's right; refusals say who was refused what, and journal
//! nothing.

mod common;

use std::path::Path;
use std::process::Output;

use common::{deploykit, json, start_daemon};

/// Who runs the tests, as the operating system says.
fn os_user() -> String {
    let out = std::process::Command::new("id")
        .arg("-un")
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn write_config(dir: &Path, access: &str) {
    std::fs::write(
        dir.join("deploykit.toml"),
        format!(
            r#"application = "shop"
[services.web]
command = ["{app}", "--port", "${{PORT}}"]
port = 8080
[environments.production]
kind = "production"
replicas = 1
[environments.production-dr]
kind = "production"
[environments.production.standby]
environment = "production-dr"
automatic = true
assessment = {{ probes = [{{ name = "up", command = ["true"] }}] }}
[access]
{access}
"#,
            app = common::APP
        ),
    )
    .unwrap();
}

/// The command as its user runs it: no `DEPLOYKIT_ACTOR` (the tests' default) unless given.
fn as_user(dir: &Path, args: &[&str]) -> Output {
    deploykit(dir, args)
        .env_remove("DEPLOYKIT_ACTOR")
        .output()
        .unwrap()
}

/// What the command said, on either stream (with `-o json`, errors are JSON on stdout).
fn stderr(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

const FAILOVER: &[&str] = &[
    "-o",
    "json",
    "failover",
    "run",
    "--env",
    "production",
    "--reason",
    "drill",
];

#[test]
fn failovers_need_the_right_and_the_actor_is_who_runs_the_command() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let user = os_user();
    let sre = r#"rules = [{ role = "role:sre", action = "failover", object = "production/*", effect = "allow" }]"#;

    // The right is someone else's: refused, nothing journaled.
    write_config(
        dir,
        &format!("{sre}\nbindings = {{ alice = [\"role:sre\"] }}"),
    );
    let out = as_user(dir, FAILOVER);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!("{user} may not failover on production/web")),
        "{}",
        stderr(&out)
    );
    let listed = json(&as_user(dir, &["-o", "json", "failover", "list"]));
    assert_eq!(listed, serde_json::json!([]), "nothing journaled");
    // A watcher that could never fail over by itself says so at once.
    let out = as_user(dir, &["failover", "watch", "--env", "production"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!("{user} may not failover on production/web")),
        "{}",
        stderr(&out)
    );

    // Claiming to be alice is refused, not believed.
    let out = deploykit(dir, FAILOVER)
        .env("DEPLOYKIT_ACTOR", "alice")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("invalid --actor")
            && stderr(&out).contains(&format!("alice\\\" is not who runs this command ({user})")),
        "{}",
        stderr(&out)
    );

    // Bound to the role: it goes ahead, requested by the user.
    write_config(
        dir,
        &format!("{sre}\nbindings = {{ {user:?} = [\"role:sre\"] }}"),
    );
    let out = as_user(dir, FAILOVER);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = json(&out);
    assert_eq!(report["requested_by"], user.as_str());
    assert_eq!(report["outcome"]["outcome"], "succeeded", "{report:#}");
    // An explicit deny wins over the allow.
    write_config(
        dir,
        &format!(
            "rules = [\n  {{ role = \"role:sre\", action = \"failover\", object = \"production/*\", effect = \"allow\" }},\n  {{ role = \"role:sre\", action = \"*\", object = \"production/web\", effect = \"deny\" }},\n]\nbindings = {{ {user:?} = [\"role:sre\"] }}"
        ),
    );
    let out = as_user(dir, FAILOVER);
    assert!(
        stderr(&out).contains("(denied by role:sre * production/web)"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn deployments_need_the_right_and_a_policy_mistake_names_its_place() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let user = os_user();
    write_config(
        dir,
        &format!(
            "rules = [{{ role = \"role:dev\", action = \"deploy\", object = \"staging/*\", effect = \"allow\" }}]\nbindings = {{ {user:?} = [\"role:dev\"] }}"
        ),
    );
    let _daemon = start_daemon(dir, &format!("127.0.0.1:{}", common::free_port()));
    let out = as_user(
        dir,
        &["deploy", "web", "--env", "production", "--label", "v1"],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!("{user} may not deploy on production/web")),
        "{}",
        stderr(&out)
    );

    // A rule that cannot match is refused when the file is read, with its place.
    write_config(
        dir,
        "rules = [{ role = \"role:dev\", action = \"deploy\", object = \"staging\", effect = \"allow\" }]",
    );
    let out = as_user(dir, &["failover", "list"]);
    assert!(!out.status.success());
    let said = stderr(&out);
    assert!(said.contains("deploykit.toml:"), "{said}");
    assert!(said.contains("access.rules[0].object"), "{said}");
}

#[test]
fn the_daemon_shares_its_socket_with_a_group_only_under_an_access_policy() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("deploykit.toml"),
        format!(
            "application = \"shop\"\n[services.web]\ncommand = [\"{}\"]\nport = 8080\n\
             [environments.production]\nkind = \"production\"\n",
            common::APP
        ),
    )
    .unwrap();
    let out = as_user(dir.path(), &["daemon", "--socket-group", "nogroup"]);
    assert!(!out.status.success());
    let said = stderr(&out);
    assert!(
        said.contains("--socket-group") && said.contains("needs [access]"),
        "{said}"
    );
    assert!(
        !dir.path().join(".deploykit/daemon.sock").exists(),
        "nothing was started"
    );
}
