//! `[services.<name>.traffic]`: the protocol and the router's limits as the file describes
//! them, and errors naming file, line and key.

use std::time::Duration;

use deploykit_config::Config;
use deploykit_core::Protocol;

const BASE: &str = r#"
application = "shop"

[services.api]
command = ["./api"]
port = 9090

[services.api.traffic]
protocol = "grpc"
timeout = "5s"
retries = { attempts = 2, per_try_timeout = "1s", on_status = [503], budget_percent = 25 }
circuit_breaker = { consecutive_failures = 4, ejection = "20s", max_requests = 200 }
rate_limit = { per_second = 100, burst = 300 }

[environments.production]
kind = "production"
"#;

#[test]
fn the_file_sets_every_part_of_the_policy() {
    let config = Config::from_toml_str("deploykit.toml", BASE).expect("loads");
    let traffic = &config.service("api").expect("api").traffic;
    assert_eq!(traffic.protocol, Protocol::Grpc);
    assert_eq!(traffic.timeout, Some(Duration::from_secs(5)));
    let retries = traffic.retries.as_ref().unwrap();
    assert_eq!(retries.attempts, 2);
    assert_eq!(retries.per_try_timeout, Some(Duration::from_secs(1)));
    assert_eq!(retries.on_status, [503]);
    assert_eq!(retries.budget_percent, 25);
    assert_eq!(
        retries.min_per_second, 10,
        "the default where the file is silent"
    );
    let breaker = traffic.circuit_breaker.as_ref().unwrap();
    assert_eq!(breaker.consecutive_failures, 4);
    assert_eq!(breaker.ejection, Duration::from_secs(20));
    assert_eq!(breaker.max_requests, Some(200));
    let limit = traffic.rate_limit.as_ref().unwrap();
    assert_eq!((limit.per_second, limit.burst), (100, Some(300)));

    let plain = BASE.replace(
        &BASE[BASE.find("[services.api.traffic]").unwrap()..BASE.find("[environments").unwrap()],
        "",
    );
    let config = Config::from_toml_str("deploykit.toml", &plain).expect("loads");
    assert!(config.service("api").unwrap().traffic.is_default());
}

#[test]
fn bad_policies_are_named_by_line_and_key() {
    for (from, to, line, field, says) in [
        (
            "protocol = \"grpc\"",
            "protocol = \"http3\"",
            9,
            "services.api.traffic.protocol",
            "http3",
        ),
        (
            "timeout = \"5s\"",
            "timeout = \"soon\"",
            10,
            "services.api.traffic.timeout",
            "is not a duration",
        ),
        (
            "attempts = 2,",
            "attempts = 20,",
            11,
            "services.api.traffic.retries.attempts",
            "outside 1 to 10",
        ),
        (
            "per_try_timeout = \"1s\"",
            "per_try_timeout = \"9s\"",
            11,
            "services.api.traffic.retries.per_try_timeout",
            "longer than the request's timeout",
        ),
        (
            "on_status = [503]",
            "on_status = [503, 429]",
            11,
            "services.api.traffic.retries.on_status[1]",
            "not a 5xx status",
        ),
        (
            "ejection = \"20s\"",
            "ejection = \"10ms\"",
            12,
            "services.api.traffic.circuit_breaker.ejection",
            "outside 1s to 1h",
        ),
        (
            "max_requests = 200",
            "max_requests = 0",
            12,
            "services.api.traffic.circuit_breaker.max_requests",
            "would refuse every request",
        ),
        (
            "per_second = 100",
            "per_second = 0",
            13,
            "services.api.traffic.rate_limit.per_second",
            "outside 1 to 1000000",
        ),
        (
            "burst = 300",
            "bursts = 300",
            13,
            "services.api.traffic.rate_limit",
            "bursts",
        ),
    ] {
        assert!(BASE.contains(from), "{from}");
        let text = BASE.replace(from, to);
        let err = Config::from_toml_str("deploykit.toml", &text)
            .err()
            .unwrap_or_else(|| panic!("{to} loaded"))
            .to_string();
        assert!(
            err.contains(&format!("deploykit.toml:{line}:")),
            "{to}: line {line} in {err}"
        );
        assert!(err.contains(field), "{to}: {field} in {err}");
        assert!(err.contains(says), "{to}: {says} in {err}");
    }
}

#[test]
fn the_readme_example_loads() {
    let readme = include_str!("../../README.md");
    let start = readme
        .find("[services.api.traffic]")
        .expect("the README shows a traffic policy");
    let block = &readme[start..start + readme[start..].find("```").unwrap()];
    let lines: Vec<&str> = block.lines().map(str::trim).collect();
    let text = format!(
        "application = \"shop\"\n[services.api]\ncommand = [\"./api\"]\nport = 9090\n{}\n",
        lines.join("\n")
    );
    let config = Config::from_toml_str("README.md", &text).expect("the README's example loads");
    assert_eq!(
        config.service("api").unwrap().traffic.protocol,
        Protocol::Grpc
    );
}
