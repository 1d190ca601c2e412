//! `deploykit flags eval` end to end: the real binary on the sample configuration (flags
//! inline in deploykit.toml) and on a configuration that names a flagd file, in text and JSON,
//! with environments, failures and errors that name the file and the field.

mod common;

use std::path::{Path, PathBuf};

use common::{json, run};
use deploykit_config::Config;
use deploykit_flags::{EvaluationContext, FlagSet};
use serde_json::json;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/config")
}

/// `deploykit --config <config> --state <dir>/state -o json flags eval ...`.
fn eval(dir: &Path, config: &Path, args: &[&str]) -> std::process::Output {
    let state = dir.join("state");
    let mut all = vec![
        "--config",
        config.to_str().unwrap(),
        "--state",
        state.to_str().unwrap(),
        "flags",
        "eval",
    ];
    all.extend_from_slice(args);
    run(dir, &all)
}

#[test]
fn evaluates_the_sample_flags_as_the_library_does() {
    let dir = tempfile::tempdir().unwrap();
    let config_path = examples().join("deploykit.toml");
    let config = Config::load(&config_path).unwrap();
    let flags = config.flags().expect("the sample defines flags");
    // The sample's flagd file is the same document as its inline [flags].
    assert_eq!(
        &FlagSet::load(&examples().join("flags.json")).unwrap(),
        flags
    );

    let users: [(&str, &[&str]); 6] = [
        ("ana@shop.example", &["plan=internal"]),
        ("ben@shop.example", &["country=DE", "appVersion=2.4.0"]),
        ("chloe@shop.example", &["appVersion=2.4.0"]),
        ("eve@shop.example", &["appVersion=2.4.0"]),
        ("dan@shop.example", &["appVersion=2.1.0"]),
        ("rachel@faas.com", &["email=rachel@faas.com"]),
    ];
    for env in [
        None,
        Some("staging"),
        Some("development"),
        Some("production"),
    ] {
        for key in ["newCheckout", "headerColor"] {
            for (user, pairs) in users {
                let mut args = vec![key, "--targeting-key", user, "--output", "json"];
                for p in pairs {
                    args.extend(["--context", p]);
                }
                if let Some(e) = env {
                    args.extend(["--env", e]);
                }
                let out = eval(dir.path(), &config_path, &args);
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let mut ctx = EvaluationContext::new(user);
                for p in pairs {
                    let (k, v) = p.split_once('=').unwrap();
                    ctx = ctx.with(k, v);
                }
                let want = flags.resolve(key, &ctx, env);
                let got = json(&out);
                let what = format!("{key} {user} {env:?}");
                assert_eq!(got["value"], json!(want.value), "{what}");
                assert_eq!(got["variant"], json!(want.variant), "{what}");
                assert_eq!(got["reason"], json!(want.reason.to_string()), "{what}");
                assert_eq!(got["environment"], json!(env), "{what}");
            }
        }
    }

    // Known answers, in text.
    let out = eval(
        dir.path(),
        &config_path,
        &[
            "newCheckout",
            "--targeting-key",
            "ana@shop.example",
            "--context",
            "plan=internal",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text,
        "newCheckout = true\n  variant  on\n  reason   TARGETING_MATCH\n"
    );
    let out = eval(
        dir.path(),
        &config_path,
        &[
            "headerColor",
            "--context",
            "email=rachel@faas.com",
            "-o",
            "json",
        ],
    );
    let got = json(&out);
    assert_eq!(
        (
            got["value"].clone(),
            got["reason"].clone(),
            got["metadata"].clone()
        ),
        (
            json!("#0000FF"),
            json!("SPLIT"),
            json!({"flagSetId": "shop"})
        )
    );
    let out = eval(
        dir.path(),
        &config_path,
        &["newCheckout", "--env", "staging"],
    );
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("newCheckout = true\n  variant  on\n  reason   DEFAULT")
    );
}

#[test]
fn failures_and_errors_name_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("deploykit.toml");
    std::fs::write(
        &config,
        "application = \"shop\"\nflags = \"flags.json\"\n[environments.production]\nkind = \"production\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("flags.json"),
        r#"{"flags": {
            "killed": {"state": "DISABLED", "variants": {"on": true}, "defaultVariant": "on"},
            "rollout": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
              "targeting": {"fractional": [{"var": "user.id"}, ["on", 50], ["off", 50]]}}
        }}"#,
    )
    .unwrap();

    // A flag that does not exist: the details, and exit code 1.
    let out = eval(dir.path(), &config, &["nope", "-o", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let got = json(&out);
    assert_eq!(
        (
            got["reason"].clone(),
            got["error_code"].clone(),
            got["value"].clone()
        ),
        (json!("ERROR"), json!("FLAG_NOT_FOUND"), json!(null))
    );
    // Disabled: no value, the caller's default applies.
    let out = eval(dir.path(), &config, &["killed"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "killed = (none: the caller's default applies)\n  variant  -\n  reason   DISABLED\n"
    );
    // Nested context attributes reach `user.id`.
    let out = eval(
        dir.path(),
        &config,
        &["rollout", "--context", "user.id=u-42", "-o", "json"],
    );
    assert_eq!(json(&out)["reason"], json!("SPLIT"));
    // An environment the configuration does not define.
    let out = eval(dir.path(), &config, &["rollout", "--env", "staging"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("\"staging\" is not an environment"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A bad pair.
    let out = eval(dir.path(), &config, &["rollout", "--context", "user"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--context: \"user\" is not KEY=VALUE"));

    // A broken flag file: the file and the field.
    std::fs::write(
        dir.path().join("flags.json"),
        r#"{"flags": {"rollout": {"state": "ENABLED", "variants": {"on": true, "off": false},
            "targeting": {"fractional": [["on", 4294967295], ["off", 1]]}}}}"#,
    )
    .unwrap();
    let out = eval(dir.path(), &config, &["rollout", "-o", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let error = json(&out)["error"].as_str().unwrap().to_string();
    assert!(
        error.contains("flags.json: flags.rollout.targeting.fractional[0][1]: weight 4294967295 is above flagd's limit"),
        "{error}"
    );
    // Flags inline in deploykit.toml: the file, line and field.
    std::fs::write(
        &config,
        "application = \"shop\"\n[flags.flags.f]\nstate = \"ENABLED\"\nvariants = { a = 1 }\ndefaultVariant = \"b\"\n",
    )
    .unwrap();
    let out = eval(dir.path(), &config, &["f"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("deploykit.toml:2:2: flags.flags.f.defaultVariant: \"b\" is not one of the flag's variants"),
        "{stderr}"
    );
    // No flags at all.
    std::fs::write(&config, "application = \"shop\"\n").unwrap();
    let out = eval(dir.path(), &config, &["f"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("the configuration defines no flags"));
}
