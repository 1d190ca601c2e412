//! `[environments.<env>.logs]`: rotation, retention, archive, pipeline and forwarders, with
//! defaults; and errors that name the file, line, column and key.

use std::time::Duration;

use deploykit_config::{Config, ForwardSettings, LogSettings};
use deploykit_core::Error;

const FILE: &str = "/srv/shop/deploykit.toml";

/// A file whose production environment's logs table has `logs` as its body (line 5 on).
fn with_logs(logs: &str) -> String {
    format!(
        "application = \"shop\"\n[environments.production]\nkind = \"production\"\n\
         [environments.production.logs]\n{logs}\n\
         [environments.staging]\nkind = \"staging\"\n"
    )
}

fn error(text: &str) -> String {
    match Config::from_toml_str(FILE, text) {
        Err(Error::InvalidSpec { field, reason }) => format!("{field}: {reason}"),
        Err(other) => panic!("expected InvalidSpec, got {other}"),
        Ok(_) => panic!("expected an error loading\n{text}"),
    }
}

#[test]
fn every_key_loads_and_defaults_apply_elsewhere() {
    let config = Config::from_toml_str(
        FILE,
        &with_logs(
            r#"max_file_bytes = 1048576
keep_files = 5
rotate_after = "1d"
retain_for = "7d"
archive = "s3://acme-logs/prod"
password_env = "SHOP_LOGS_PASSWORD"
pipeline = { stages = [{ type = "parse_json" }, { type = "filter", min_level = "info" }] }
forward = [
  { type = "otlp", endpoint = "http://127.0.0.1:4318", headers = { authorization_env = "OTLP_TOKEN" } },
  { type = "webhook", url = "http://hooks.local/logs", signing_key_env = "HOOK_KEY" },
  { type = "file", dir = "shipped" },
]"#,
        ),
    )
    .unwrap();
    let logs = config.log_settings("production").unwrap();
    assert_eq!(logs.max_file_bytes, 1_048_576);
    assert_eq!(logs.keep_files, 5);
    assert_eq!(logs.rotate_after, Some(Duration::from_secs(86_400)));
    assert_eq!(logs.retain_for, Some(Duration::from_secs(7 * 86_400)));
    assert_eq!(logs.archive.as_deref(), Some("s3://acme-logs/prod"));
    assert_eq!(logs.password_env.as_deref(), Some("SHOP_LOGS_PASSWORD"));
    assert_eq!(logs.pipeline.as_ref().unwrap().stages.len(), 2);
    assert_eq!(logs.forward.len(), 3);
    assert!(
        matches!(&logs.forward[0], ForwardSettings::Otlp { endpoint, headers }
        if endpoint == "http://127.0.0.1:4318" && headers["authorization_env"] == "OTLP_TOKEN")
    );
    assert!(
        matches!(&logs.forward[2], ForwardSettings::File { dir, max_file_bytes }
        if dir.as_path() == std::path::Path::new("/srv/shop/shipped") && *max_file_bytes == 64 << 20)
    );
    assert_eq!(
        config.log_settings("staging").unwrap(),
        LogSettings::default()
    );
    assert!(config.log_settings("nowhere").is_err());
}

#[test]
fn a_local_archive_is_relative_to_the_file() {
    let config = Config::from_toml_str(
        FILE,
        &with_logs("retain_for = \"2d\"\narchive = \"archive/logs\"\npassword_env = \"P\""),
    )
    .unwrap();
    let logs = config.log_settings("production").unwrap();
    assert_eq!(logs.archive.as_deref(), Some("/srv/shop/archive/logs"));
}

#[test]
fn bad_keys_are_named_where_they_are() {
    let cases = [
        (
            "max_file_bytes = 10",
            "/srv/shop/deploykit.toml:5:18: environments.production.logs.max_file_bytes: 10 is too small",
        ),
        (
            "rotate_after = \"soon\"",
            "/srv/shop/deploykit.toml:5:16: environments.production.logs.rotate_after: \"soon\" is not a duration",
        ),
        (
            "retain_for = \"0s\"",
            "environments.production.logs.retain_for: must be longer than zero",
        ),
        (
            "retain_for = \"1d\"\narchive = \"s3://b/p\"",
            "/srv/shop/deploykit.toml:6:11: environments.production.logs.password_env: is required with `archive`",
        ),
        (
            "archive = \"s3://b/p\"\npassword_env = \"P\"",
            "environments.production.logs.archive: needs `retain_for`",
        ),
        (
            "pipeline = { stages = [{ type = \"sample\", one_in = \"two\" }] }",
            "environments.production.logs.pipeline.stages[0]: invalid type: string \"two\"",
        ),
        (
            "forward = [{ type = \"otlp\", endpoint = \"https://collector:4318\" }]",
            "environments.production.logs.forward[0].endpoint: \"https://collector:4318\" is not an http:// URL",
        ),
        (
            "forward = [{ type = \"kafka\", brokers = \"x\" }]",
            "environments.production.logs",
        ),
        ("colour = \"blue\"", "environments.production.logs"),
    ];
    for (body, expected) in cases {
        let message = error(&with_logs(body));
        assert!(
            message.contains(expected),
            "{body}\n→ {message}\nexpected {expected}"
        );
    }
}
