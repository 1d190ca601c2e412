//! `[[services.<name>.build]]` stages and `[services.<name>.package]` images as the file
//! describes them, and the errors that name what is wrong and where.

use deploykit_config::Config;

#[test]
fn the_configuration_describes_build_stages() {
    let text = include_str!("../../examples/config/deploykit.toml");
    let config = Config::from_toml_str("deploykit.toml", text).expect("loads");
    let pipeline = config.pipeline("web").expect("web");
    assert_eq!(
        pipeline.stage_names().collect::<Vec<_>>(),
        ["compile", "test"]
    );
    assert_eq!(config.pipeline("worker").unwrap().stage_names().count(), 0);
    let broken = text.replace(
        "steps = [[\"cargo\", \"test\", \"--bin\", \"web\"]]",
        "steps = []",
    );
    let err = Config::from_toml_str("deploykit.toml", &broken)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(
            "services.web.build[1]: invalid build.test.steps: a stage needs at least one step"
        ),
        "{err}"
    );
}

const WEB: &str = r#"
application = "shop"

[services.web]
command = ["node", "server.mjs"]
port = 8080

[[services.web.build]]
name = "bundle"
kind = "compile"
steps = [["npx", "esbuild", "src/app.js", "--bundle", "--outdir=dist"]]
inputs = ["src", "package-lock.json"]
tools = [["node", "--version"]]
outputs = [{ path = "dist", kind = "static" }, "meta.json"]
checks = [{ size = { path = "dist", max = 100000 } }, { command = ["node", "--check", "dist/app.js"] }]

[services.web.package]
base = "127.0.0.1:5000/base/node@sha256:1111111111111111111111111111111111111111111111111111111111111111"
files = { "/app/dist" = "dist", "/app/server.mjs" = "server.mjs" }
entrypoint = ["node", "/app/server.mjs"]
user = "65532"

[environments.production]
kind = "production"
"#;

#[test]
fn stages_have_kinds_inputs_typed_outputs_checks_and_an_image() {
    let config = Config::from_toml_str("deploykit.toml", WEB).expect("loads");
    let pipeline = config.pipeline("web").unwrap();
    assert_eq!(
        pipeline.stage_names().collect::<Vec<_>>(),
        ["bundle", "package"]
    );
}

#[test]
fn a_base_image_not_pinned_by_digest_is_refused_where_it_is_written() {
    let text = WEB.replace(
        "base/node@sha256:1111111111111111111111111111111111111111111111111111111111111111",
        "base/node:20",
    );
    let err = Config::from_toml_str("deploykit.toml", &text)
        .unwrap_err()
        .to_string();
    assert!(err.contains("deploykit.toml:"), "{err}");
    assert!(err.contains("services.web.package.base: "), "{err}");
    assert!(err.contains("is not pinned by digest"), "{err}");

    let text = WEB.replace("\"/app/dist\" = \"dist\"", "\"/app/dist\" = \"../dist\"");
    let err = Config::from_toml_str("deploykit.toml", &text)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("must stay inside the working directory"),
        "{err}"
    );

    let text = WEB.replace("kind = \"static\"", "kind = \"movie\"");
    let err = Config::from_toml_str("deploykit.toml", &text)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("services.web.build[0].outputs[0].kind: \"movie\" is not an artifact kind"),
        "{err}"
    );

    let text = WEB.replace("max = 100000", "min = 10, max = 5");
    let err = Config::from_toml_str("deploykit.toml", &text)
        .unwrap_err()
        .to_string();
    assert!(err.contains("max (5) is below min (10)"), "{err}");
}
