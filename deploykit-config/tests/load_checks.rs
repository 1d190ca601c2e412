//! Checks made when the file loads, with errors in the file's own words: a service must have
//! something to run, type errors speak TOML rather than Rust, and a probe's timeout that the
//! file never wrote cannot make it invalid.

use std::time::Duration;

use deploykit_config::Config;
use deploykit_core::{Error, Probe};

/// The error loading `text` as `deploykit.toml`, as `<place>: <reason>`.
fn error(text: &str) -> String {
    match Config::from_toml_str("deploykit.toml", text) {
        Err(Error::InvalidSpec { field, reason }) => format!("{field}: {reason}"),
        Err(other) => panic!("expected InvalidSpec, got {other}"),
        Ok(_) => panic!("expected an error loading\n{text}"),
    }
}

fn load(text: &str) -> Config {
    Config::from_toml_str("deploykit.toml", text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// A file whose service `web` has `service` as its body.
fn with_web(service: &str) -> String {
    format!("application = \"shop\"\n\n[services.web]\n{service}\n")
}

const NOTHING_TO_RUN: &str = "a service needs something to run: a `command` (like command = \
     [\"./web\"]), an `image` (a container image repository, for Kubernetes) or \
     [[services.web.build]] stages whose `outputs` are its artifact";

#[test]
fn a_service_without_a_command_is_refused_where_its_table_starts() {
    assert_eq!(
        error(&with_web("port = 8080")),
        format!("deploykit.toml:3:1: services.web.command: {NOTHING_TO_RUN}")
    );
    // An empty command is no command; the error points at it.
    assert_eq!(
        error(&with_web("port = 8080\ncommand = []")),
        format!("deploykit.toml:5:11: services.web.command: {NOTHING_TO_RUN}")
    );
    // Build stages without outputs produce no artifact to run.
    let no_outputs =
        with_web("port = 8080\n[[services.web.build]]\nname = \"test\"\nsteps = [[\"true\"]]");
    assert_eq!(
        error(&no_outputs),
        format!(
            "deploykit.toml:3:1: services.web.command: {NOTHING_TO_RUN}; its build stages \
             declare no `outputs`"
        )
    );
}

#[test]
fn a_build_with_outputs_or_an_image_stands_in_for_the_command() {
    let built = load(&with_web(
        "port = 8080\n[[services.web.build]]\nname = \"compile\"\nsteps = [[\"cargo\", \
         \"build\"]]\noutputs = [\"target/release/web\"]",
    ));
    assert!(built.service("web").unwrap().command.is_empty());
    assert_eq!(built.pipeline("web").unwrap().stage_names().count(), 1);
    assert_eq!(built.image("web").unwrap(), None);

    let image = load(&with_web("port = 8080\nimage = \"ghcr.io/acme/web\""));
    assert_eq!(image.image("web").unwrap(), Some("ghcr.io/acme/web"));
    assert!(image.service("web").unwrap().command.is_empty());
    assert!(
        image.image("nowhere").is_err(),
        "an unknown service is an error"
    );

    let both = load(&with_web(
        "command = [\"./web\"]\nimage = \"registry.example.com:5000/web\"",
    ));
    assert_eq!(
        both.image("web").unwrap(),
        Some("registry.example.com:5000/web")
    );
}

#[test]
fn an_image_is_a_repository_without_tag_or_digest() {
    assert_eq!(
        error(&with_web("image = \"ghcr.io/acme/web:v1\"")),
        "deploykit.toml:4:9: services.web.image: \"ghcr.io/acme/web:v1\" has a tag or digest, \
         but each revision supplies its own: give the image repository alone, like \
         \"ghcr.io/acme/web\""
    );
    assert!(
        error(&with_web("image = \"web@sha256:abcd\"")).contains("has a tag or digest"),
        "a digest is refused too"
    );
    assert!(error(&with_web("image = \"\"")).contains("services.web.image: \"\" is empty"));
}

#[test]
fn an_empty_program_is_refused() {
    assert_eq!(
        error(&with_web("command = [\"\", \"--port\", \"8080\"]")),
        "deploykit.toml:4:11: services.web.command[0]: the program to run is \"\": the \
         command's first element names the program, like command = [\"./web\", \"--port\", \
         \"8080\"]"
    );
    assert!(error(&with_web("command = [\"  \"]")).contains("services.web.command[0]"));
    // An empty argument after the program is an argument like any other.
    let config = load(&with_web("command = [\"./web\", \"\"]"));
    assert_eq!(config.service("web").unwrap().command, ["./web", ""]);
}

/// A production environment with `line` as its fourth line (line 9 of the file).
fn production(line: &str) -> String {
    format!(
        "application = \"shop\"\n\n[services.web]\ncommand = [\"./web\"]\n\n\
         [environments.production]\nkind = \"production\"\n{line}\n"
    )
}

#[test]
fn type_errors_speak_toml() {
    let cases = [
        (
            production("replicas = \"two\""),
            "deploykit.toml:8:12: environments.production.replicas: expected a whole number \
             from 0 to 4294967295, found the string \"two\"",
        ),
        (
            production("replicas = -1"),
            "deploykit.toml:8:12: environments.production.replicas: -1 is not a whole number \
             from 0 to 4294967295",
        ),
        (
            production("replicas = 2.5"),
            "deploykit.toml:8:12: environments.production.replicas: 2.5 is not a whole number \
             from 0 to 4294967295",
        ),
        (
            production("revision_history_limit = 2024-01-01"),
            "deploykit.toml:8:26: environments.production.revision_history_limit: expected a \
             whole number from 0 to 4294967295, found a date or time",
        ),
        (
            "application = \"shop\"\n[environments.qa]\nkind = 3\n".to_string(),
            "deploykit.toml:3:8: environments.qa.kind: expected a string, found the number 3",
        ),
        (
            production("backup = { rotation = [], prune = \"yes\" }"),
            "deploykit.toml:8:35: environments.production.backup.prune: expected a boolean \
             (true or false), found the string \"yes\"",
        ),
        (
            production("backup = 3"),
            "deploykit.toml:8:10: environments.production.backup: expected a table, found the \
             number 3",
        ),
        (
            production("variables = [\"LOG_LEVEL\"]"),
            "deploykit.toml:8:13: environments.production.variables: expected a table, found \
             an array",
        ),
        (
            production("variables = { WORKERS = 4 }"),
            "deploykit.toml:8:25: environments.production.variables.WORKERS: expected a \
             string, found the number 4",
        ),
        (
            production("strategy.canary = { steps = [{ weight = \"half\" }] }"),
            "deploykit.toml:8:41: environments.production.strategy.canary.steps[0].weight: \
             expected a whole number from 0 to 4294967295, found the string \"half\"",
        ),
        (
            with_web("command = \"./web\""),
            "deploykit.toml:4:11: services.web.command: expected an array, found the string \
             \"./web\"",
        ),
        (
            with_web("command = [\"./web\"]\nport = 70000"),
            "deploykit.toml:5:8: services.web.port: 70000 is not a whole number from 0 to 65535",
        ),
        (
            with_web("command = [\"./web\"]\nhealth.readiness = { http = \"/up\", period = 5 }"),
            "deploykit.toml:5:45: services.web.health.readiness.period: expected a string, \
             found the number 5",
        ),
        (
            "application = \"shop\"\n[analyses.errors]\nmetrics = [{ name = \"e\", query = \
             \"q\", below = \"low\" }]\n"
                .to_string(),
            "deploykit.toml:3:47: analyses.errors.metrics[0].below: expected a number, found \
             the string \"low\"",
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(error(&text), expected);
    }
    // Unknown keys still list the allowed ones.
    let e = error(&production("replica = 2"));
    assert!(
        e.starts_with(
            "deploykit.toml:8:1: environments.production.replica: unknown field `replica`, \
             expected one of `kind`, `replicas`"
        ),
        "{e}"
    );
}

#[test]
fn counts_of_a_rollout_speak_toml_and_stay_in_range() {
    let rolling = |value: &str| {
        production(&format!(
            "strategy.rolling = {{ max_surge = {value}, max_unavailable = 1 }}"
        ))
    };
    assert_eq!(
        error(&rolling("true")),
        "deploykit.toml:6:1: environments.production.strategy.rolling.max_surge: expected a \
         count or a percentage like \"25%\", found the boolean true"
    );
    // 2^32 + 1 once wrapped round to a surge of 1.
    assert_eq!(
        error(&rolling("4294967297")),
        "deploykit.toml:6:1: environments.production.strategy.rolling.max_surge: 4294967297 is \
         not a whole number from 0 to 4294967295"
    );
}

fn startup_of(config: &Config) -> &Probe {
    config
        .service("web")
        .unwrap()
        .health
        .startup
        .as_ref()
        .unwrap()
}

#[test]
fn an_unwritten_timeout_follows_a_short_period() {
    for kind in ["readiness", "liveness", "startup"] {
        let config = load(&with_web(&format!(
            "command = [\"./web\"]\nhealth.{kind} = {{ http = \"/up\", period = \"500ms\" }}"
        )));
        let health = &config.service("web").unwrap().health;
        let probe = match kind {
            "readiness" => health.readiness.as_ref(),
            "liveness" => health.liveness.as_ref(),
            _ => health.startup.as_ref(),
        }
        .unwrap();
        assert_eq!(
            (probe.period, probe.timeout),
            (Duration::from_millis(500), Duration::from_millis(500)),
            "{kind}"
        );
    }
    // A period longer than the default timeout keeps the default.
    let config = load(&with_web(
        "command = [\"./web\"]\nhealth.startup = { exec = [\"./check\"], period = \"3s\" }",
    ));
    assert_eq!(startup_of(&config).timeout, Duration::from_secs(1));
    // Environments' probes too.
    let config = load(&production(
        "health.startup = { tcp = 8080, period = \"200ms\" }",
    ));
    let env = config.environment("production").unwrap();
    let startup = env.health.as_ref().unwrap().startup.as_ref().unwrap();
    assert_eq!(startup.timeout, Duration::from_millis(200));
}

#[test]
fn a_written_timeout_longer_than_the_period_is_refused_where_it_is_written() {
    for kind in ["readiness", "liveness", "startup"] {
        let text = with_web(&format!(
            "command = [\"./web\"]\nhealth.{kind} = {{ http = \"/up\", period = \"1s\", \
             timeout = \"2s\" }}"
        ));
        let column = 52 + kind.len();
        assert_eq!(
            error(&text),
            format!(
                "deploykit.toml:5:{column}: services.web.health.{kind}.timeout: \"2s\" is \
                 longer than the period \"1s\": a probe must finish before the next one \
                 starts; shorten the timeout or lengthen the period"
            )
        );
    }
    // Against the default period when the file gives none.
    let text = with_web(
        "command = [\"./web\"]\n[services.web.health.startup]\ntcp = 8080\ntimeout = \"15s\"",
    );
    assert_eq!(
        error(&text),
        "deploykit.toml:7:11: services.web.health.startup.timeout: \"15s\" is longer than the \
         default period \"10s\": a probe must finish before the next one starts; shorten the \
         timeout or lengthen the period"
    );
    let text = production("health.liveness = { tcp = 8080, period = \"1s\", timeout = \"5s\" }");
    assert!(
        error(&text).starts_with(
            "deploykit.toml:8:58: environments.production.health.liveness.timeout: \"5s\" is \
             longer than the period \"1s\""
        ),
        "{}",
        error(&text)
    );
    // A written timeout within the period is kept as written.
    let config = load(&with_web(
        "command = [\"./web\"]\nhealth.startup = { http = \"/up\", period = \"1s\", timeout = \
         \"1s\" }",
    ));
    assert_eq!(startup_of(&config).timeout, Duration::from_secs(1));
}

#[test]
fn a_probe_error_names_the_key_the_file_wrote() {
    assert_eq!(
        error(&with_web(
            "command = [\"./web\"]\nhealth.readiness = { http = \"up\" }"
        )),
        "deploykit.toml:5:20: services.web.health.readiness.http: \"up\" must start with '/'"
    );
    assert_eq!(
        error(&with_web(
            "command = [\"./web\"]\nhealth.liveness = { tcp = 0 }"
        )),
        "deploykit.toml:5:27: services.web.health.liveness.tcp: port 0 is not a port"
    );
}
