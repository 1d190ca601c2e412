//! The configuration file: a full sample, layered variables with their origin, errors that
//! point at the place, and a fuzz of the loader.

use deploykit_config::{Config, Setting};
use deploykit_core::{EnvironmentKind, Error, Quantity, StrategySpec};
use proptest::prelude::*;

const SAMPLE: &str = r#"application = "shop"

[variables]
LOG_LEVEL = "info"
REGION = "eu-west-1"

[services.web]
command = ["./web", "--port", "8080"]
port = 8080
variables = { WORKERS = "4" }
health.readiness = { http = "/health", period = "5s", failure_threshold = 2 }
health.liveness = { tcp = 8080, period = "10s" }

[services.worker]
command = ["./worker"]

[environments.development]
kind = "development"

[environments.staging]
kind = "staging"
replicas = 2
strategy.blue_green = { auto_promote = false, scale_down_delay = "1m" }

[environments.production]
kind = "production"
replicas = 4
progress_deadline = "10m"
strategy.rolling = { max_surge = "25%", max_unavailable = 1 }
variables = { LOG_LEVEL = "warn" }

[overrides.production]
REGION = "eu-central-1"
"#;

/// The sample the `config_tour` example ships: canary steps, analyses, secrets.
const TOUR: &str = include_str!("../../examples/config/deploykit.toml");

fn error(text: &str) -> String {
    match Config::from_toml_str("deploykit.toml", text) {
        Err(Error::InvalidSpec { field, reason }) => format!("{field}: {reason}"),
        Err(other) => panic!("expected InvalidSpec, got {other}"),
        Ok(_) => panic!("expected an error"),
    }
}

#[test]
fn a_full_file_loads_into_validated_types() {
    let config = Config::from_toml_str("deploykit.toml", SAMPLE).expect("sample loads");
    assert_eq!(config.application, "shop");
    let web = config.service("web").expect("web");
    assert_eq!(web.port, Some(8080));
    let readiness = web.health.readiness.as_ref().expect("readiness");
    assert_eq!(readiness.period.as_secs(), 5);
    assert_eq!(readiness.failure_threshold, 2);
    let prod = config.environment("production").expect("production");
    assert_eq!(
        (prod.kind.clone(), prod.replicas),
        (EnvironmentKind::Production, 4)
    );
    assert_eq!(prod.progress_deadline.as_secs(), 600);
    let StrategySpec::Rolling(rolling) = &prod.strategy else {
        panic!("{:?}", prod.strategy)
    };
    assert_eq!(
        (rolling.max_surge, rolling.max_unavailable),
        (Quantity::Percent(25), Quantity::Count(1))
    );
    let staging = config.environment("staging").expect("staging");
    assert!(matches!(&staging.strategy, StrategySpec::BlueGreen(b) if !b.auto_promote));
    assert_eq!(config.environments().count(), 3);
}

#[test]
fn variables_layer_and_explain_where_they_came_from() {
    let config = Config::from_toml_str("deploykit.toml", SAMPLE).expect("sample loads");
    let explain = |env: &str, name: &str| {
        let (v, o) = config.explain(env, name).expect("set");
        (v.to_string(), o.layer.clone(), o.line)
    };
    assert_eq!(
        explain("production", "LOG_LEVEL"),
        (
            "warn".into(),
            "environments.production.variables".into(),
            30
        )
    );
    assert_eq!(
        explain("production", "REGION"),
        ("eu-central-1".into(), "overrides.production".into(), 33)
    );
    assert_eq!(
        explain("staging", "REGION"),
        ("eu-west-1".into(), "variables".into(), 5)
    );
    let (_, o) = config.explain("staging", "REGION").expect("set");
    assert_eq!(o.to_string(), "variables (deploykit.toml:5)");
    assert!(config.explain("staging", "NOPE").is_none());
    let prod = config.environment("production").expect("production");
    assert_eq!(prod.variables["LOG_LEVEL"], "warn");
}

#[test]
fn errors_point_at_the_place() {
    let unknown = SAMPLE.replace("replicas = 4", "replica = 4");
    let e = error(&unknown);
    assert!(
        e.starts_with("deploykit.toml:27:1: environments.production"),
        "{e}"
    );
    assert!(
        e.contains("unknown field `replica`, expected one of"),
        "{e}"
    );

    let wrong_type = SAMPLE.replace("replicas = 4", "replicas = \"four\"");
    let e = error(&wrong_type);
    assert!(
        e.starts_with("deploykit.toml:27:12: environments.production.replicas"),
        "{e}"
    );

    let impossible = SAMPLE.replace(
        "max_surge = \"25%\", max_unavailable = 1",
        "max_surge = 0, max_unavailable = \"0%\"",
    );
    let e = error(&impossible);
    assert!(
        e.starts_with("deploykit.toml:25:1: environments.production"),
        "{e}"
    );
    assert!(
        e.contains("max_surge and max_unavailable are both 0"),
        "{e}"
    );

    let bad_duration = SAMPLE.replace("\"10m\"", "\"ten minutes\"");
    let e = error(&bad_duration);
    assert!(
        e.contains("environments.production.progress_deadline"),
        "{e}"
    );
    assert!(e.contains("is not a duration"), "{e}");

    let two_probes = SAMPLE.replace("{ tcp = 8080,", "{ tcp = 8080, http = \"/up\",");
    let e = error(&two_probes);
    assert!(
        e.contains("services.web.health.liveness: expected exactly one of"),
        "{e}"
    );

    let bad_name = SAMPLE.replace("[services.worker]", "[services.Worker]");
    let e = error(&bad_name);
    assert!(e.contains("services.Worker: invalid service.name"), "{e}");

    let stray = format!("{SAMPLE}\n[overrides.qa]\nX = \"1\"\n");
    let e = error(&stray);
    assert!(
        e.contains("overrides.qa: overrides an environment that is not defined"),
        "{e}"
    );

    let e = error("application = ");
    assert!(e.starts_with("deploykit.toml:1:"), "{e}");
}

#[test]
fn strategies_analyses_and_secrets_load() {
    let config = Config::from_toml_str("deploykit.toml", TOUR).expect("the tour's sample loads");
    let prod = config.environment("production").expect("production");
    let StrategySpec::Canary(canary) = &prod.strategy else {
        panic!("{:?}", prod.strategy)
    };
    assert_eq!(canary.steps.len(), 8);
    assert_eq!(canary.scale_down_delay.as_secs(), 60);
    let steps: Vec<String> = canary
        .steps
        .iter()
        .map(|s| {
            serde_json::to_value(s).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        steps,
        [
            "set_canary_scale",
            "set_header_route",
            "set_weight",
            "pause",
            "set_weight",
            "analysis",
            "set_weight",
            "pause"
        ]
    );
    assert_eq!(
        canary.background_analysis.as_ref(),
        Some(config.analysis("errors").unwrap())
    );
    let errors = &config.analysis("errors").unwrap().metrics[0];
    assert_eq!(
        (errors.count, errors.interval.map(|d| d.as_secs())),
        (Some(3), Some(60))
    );
    let autoscale = prod.autoscale.as_ref().expect("autoscale");
    assert_eq!(
        (
            autoscale.min_replicas,
            autoscale.max_replicas,
            autoscale.target_cpu_percent
        ),
        (6, 20, 70)
    );
    assert_eq!(prod.resources.cpu_limit_millis, Some(1000));
    assert_eq!(prod.progress_deadline.as_secs(), 900);
    let staging = config.environment("staging").expect("staging");
    assert!(matches!(&staging.strategy, StrategySpec::BlueGreen(b)
        if b.pre_promotion_analysis.is_some() && b.auto_promotion_delay.as_secs() == 120));
    let worker = config.service("worker").expect("worker");
    assert_eq!(
        worker.health.startup.as_ref().unwrap().failure_threshold,
        15
    );

    // Secrets are references, layered like values, and kept apart from them.
    assert_eq!(prod.secrets["DATABASE_URL"], "production.database_url");
    assert_eq!(prod.secrets["SENTRY_DSN"], "common.sentry_dsn");
    assert!(!prod.variables.contains_key("DATABASE_URL"));
    let (setting, origin) = config.explain("production", "PAYMENT_API_KEY").unwrap();
    assert_eq!(
        setting,
        &Setting::Secret("production.payment_api_key".into())
    );
    assert_eq!(origin.layer, "environments.production.secrets");
    assert_eq!(
        config.secrets_file(),
        Some(std::path::Path::new("deploykit.secrets.toml"))
    );
    let names: Vec<&str> = config.settings("development").map(|(n, _, _)| n).collect();
    assert_eq!(
        names,
        ["FEATURE_FLAGS_FILE", "LOG_LEVEL", "REGION", "SENTRY_DSN"]
    );
}

#[test]
fn strategy_errors_point_at_the_step() {
    let cases = [
        (
            TOUR.replace("{ weight = 10 },", "{ weight = 10, pause = \"1m\" },"),
            "deploykit.toml:68:3: environments.production.strategy.canary.steps[2]: a step has exactly one of",
        ),
        (
            TOUR.replace("{ weight = 25 },", "{ weight = 250 },"),
            "deploykit.toml:70:3: environments.production.strategy.canary.steps[4].weight:",
        ),
        (
            TOUR.replace("{ analysis = \"latency\" }", "{ analysis = \"latncy\" }"),
            "environments.production.strategy.canary.steps[5].analysis: no analysis named \"latncy\" (defined: errors, latency)",
        ),
        (
            TOUR.replace("{ approval = true }", "{ approval = false }"),
            "steps[7].approval: `approval = false` is not a step",
        ),
        (
            TOUR.replace("below = 0.01, ", ""),
            "analyses.errors.metrics[0]: a threshold metric needs exactly one of `below` or `above`",
        ),
        (
            TOUR.replace("bad = \"increase\"", "bad = \"up\""),
            "analyses.latency.metrics[0].judgement.metrics[0].bad: \"up\": expected \"increase\", \"decrease\" or \"either\"",
        ),
        (
            TOUR.replace(
                "failure_policy = \"rollback\"",
                "failure_policy = \"retry\"",
            ),
            "environments.production.failure_policy: \"retry\": expected \"rollback\", \"freeze\" or \"pause\"",
        ),
        (
            TOUR.replace(
                "strategy.blue_green",
                "strategy.canary = { steps = [] }\nstrategy.blue_green",
            ),
            "environments.staging.strategy: expected exactly one of `rolling`, `blue_green` or `canary`",
        ),
        (
            TOUR.replace(
                "\"production.database_url\"",
                "\"production..database_url\"",
            ),
            "environments.production: invalid environment.secrets.DATABASE_URL: \"production..database_url\" is not a secret key path",
        ),
        (
            TOUR.replace(
                "variables = { LOG_LEVEL = \"warn\" }",
                "variables = { LOG_LEVEL = \"warn\", DATABASE_URL = \"x\" }",
            ),
            "environments.production.variables.DATABASE_URL: DATABASE_URL is also in environments.production.secrets; a setting is a value or a secret, not both",
        ),
        (
            TOUR.replace("steps = [\n", "stepz = [\n"),
            "unknown field `stepz`",
        ),
    ];
    for (text, expected) in cases {
        let e = error(&text);
        assert!(e.contains(expected), "expected {expected:?} in\n{e}");
    }
}

#[test]
fn backup_policies_load_and_bad_ones_are_named() {
    use deploykit_backup::BackupKind;
    let config = Config::from_toml_str("deploykit.toml", TOUR).expect("loads");
    let policy = config
        .backup_policy("production")
        .unwrap()
        .cloned()
        .expect("production has a backup policy");
    assert_eq!(policy.rotation.len(), 2);
    assert_eq!(policy.rotation[0].kind, BackupKind::Full);
    assert_eq!(policy.rotation[1].cron, "*/5 * * * *");
    assert_eq!(policy.retention.keep_daily, Some(7));
    assert_eq!(policy.targets.rpo.as_secs(), 300);
    assert!(policy.prune);
    assert!(config.backup_policy("staging").unwrap().is_none());
    assert!(
        config.backup_policy("nowhere").is_err(),
        "an unknown environment is an error"
    );

    let bad_cron = TOUR.replace("incremental */5 * * * *", "incremental every five minutes");
    assert!(error(&bad_cron).contains("environments.production.backup.rotation[1]: invalid backup.rotation: \"every five minutes\" is not a cron expression"), "{}", error(&bad_cron));
    let bad_kind = TOUR.replace("full 0 2 * * SUN", "weekly 0 2 * * SUN");
    assert!(
        error(&bad_kind)
            .contains("\"weekly\": expected full, incremental, differential or snapshot")
    );
    let zero = TOUR.replace("keep_daily = 7", "keep_daily = 0");
    assert!(
        error(&zero).contains("backup.retention.keep_daily"),
        "{}",
        error(&zero)
    );
}

#[tokio::test]
async fn check_secrets_names_the_missing_reference() {
    use deploykit_core::secrets::SecretString;
    use deploykit_secrets::{FileSecretProvider, Identity, SecretsFile};
    let config = Config::from_toml_str("deploykit.toml", TOUR).expect("loads");
    let me = Identity::generate();
    let mut file = SecretsFile::create(&[me.to_recipient()]).unwrap();
    for key in [
        "common.sentry_dsn",
        "staging.database_url",
        "production.database_url",
    ] {
        file.set(key, SecretString::from("value")).unwrap();
    }
    let provider = FileSecretProvider::new("deploykit.secrets.toml", file);
    let err = config.check_secrets(&provider).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "secret production.payment_api_key in deploykit.secrets.toml (referenced as \
         PAYMENT_API_KEY in environment production at environments.production.secrets \
         (deploykit.toml:60)) not found"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = Config::from_toml_str("fuzz.toml", &text);
    }

    #[test]
    fn mutations_of_a_valid_file_never_panic(
        tour in any::<bool>(),
        edits in prop::collection::vec((0usize..TOUR.len(), 0usize..4, any::<char>()), 1..6)
    ) {
        let mut text: Vec<char> = if tour { TOUR } else { SAMPLE }.chars().collect();
        for (at, op, c) in edits {
            let at = at % (text.len() + 1);
            match op {
                0 => text.insert(at, c),
                1 if at < text.len() => { text.remove(at); }
                2 if at < text.len() => text[at] = c,
                _ => text.truncate(at),
            }
        }
        let text: String = text.into_iter().collect();
        let _ = Config::from_toml_str("fuzz.toml", &text);
    }
}

#[test]
fn http_probes_take_headers_such_as_host() {
    let text = r#"application = "a"
[services.web]
command = ["./web"]
health.readiness = { http = "/healthz", headers = { Host = "shop.example.com" } }
"#;
    let config = Config::from_toml_str("deploykit.toml", text).expect("loads");
    let readiness = config
        .service("web")
        .unwrap()
        .health
        .readiness
        .clone()
        .unwrap();
    match readiness.action {
        deploykit_core::ProbeAction::Http { headers, .. } => {
            assert_eq!(
                headers.get("Host").map(String::as_str),
                Some("shop.example.com")
            );
        }
        other => panic!("expected an HTTP probe, got {other:?}"),
    }
    let err = error(
        r#"application = "a"
[services.web]
command = ["./web"]
health.readiness = { tcp = 8080, headers = { Host = "x" } }
"#,
    );
    assert!(
        err.contains("`headers` only applies to an `http` probe"),
        "{err}"
    );
}
