//! The configuration file: a full sample, layered variables with their origin, errors that
//! point at the place, and a fuzz of the loader.

use deploykit_core::config::Config;
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
    let (v, o) = config.explain("production", "LOG_LEVEL").expect("set");
    assert_eq!(
        (v, o.layer.as_str(), o.line),
        ("warn", "environments.production.variables", 30)
    );
    let (v, o) = config.explain("production", "REGION").expect("set");
    assert_eq!(
        (v, o.layer.as_str(), o.line),
        ("eu-central-1", "overrides.production", 33)
    );
    let (v, o) = config.explain("staging", "REGION").expect("set");
    assert_eq!((v, o.layer.as_str(), o.line), ("eu-west-1", "variables", 5));
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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = Config::from_toml_str("fuzz.toml", &text);
    }

    #[test]
    fn mutations_of_a_valid_file_never_panic(
        edits in prop::collection::vec((0usize..SAMPLE.len(), 0usize..4, any::<char>()), 1..6)
    ) {
        let mut text: Vec<char> = SAMPLE.chars().collect();
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
