//! Configuration errors name the field path of the bad value.

use deploykit_logs::{
    BuiltinPattern, OverflowPolicy, Pipeline, PipelineConfig, Processor, StageConfig,
};

fn error_of(text: &str) -> String {
    match PipelineConfig::from_toml_str(text) {
        Err(error) => error.to_string(),
        Ok(config) => match Processor::new(&config, Vec::<String>::new()) {
            Err(error) => error.to_string(),
            Ok(_) => panic!("{text} was accepted"),
        },
    }
}

#[test]
fn a_full_config_parses() {
    let config = PipelineConfig::from_toml_str(
        r#"
        memory_limit_bytes = 1048576
        overflow = "drop_newest"
        batch_max_records = 100

        [multiline]
        start = '^\d{4}'

        [[stages]]
        type = "parse_json"

        [[stages]]
        type = "filter"
        min_level = "warn"

        [[stages]]
        type = "redact"
        builtin = ["bearer", "aws_access_key"]

        [[stages]]
        type = "rate_limit"
        per_second = 100
        key = "instance"
        "#,
    )
    .unwrap();
    assert_eq!(config.overflow, OverflowPolicy::DropNewest);
    assert_eq!(config.stages.len(), 4);
    assert!(matches!(
        &config.stages[2],
        StageConfig::Redact { builtin, .. } if builtin == &[BuiltinPattern::Bearer, BuiltinPattern::AwsAccessKey]
    ));
    Processor::new(&config, ["secret"]).unwrap();
}

#[test]
fn errors_name_the_stage_and_key() {
    let cases = [
        (
            "[[stages]]\ntype = \"parse_json\"\n[[stages]]\ntype = \"parse_regex\"\npattern = '(?P<x>['\n",
            "logs.pipeline.stages[1].pattern",
        ),
        (
            "[[stages]]\ntype = \"filter\"\nline_matches = '(unclosed'\n",
            "logs.pipeline.stages[0].line_matches",
        ),
        (
            "[[stages]]\ntype = \"filter\"\nfield = \"user\"\n",
            "logs.pipeline.stages[0].field",
        ),
        ("[[stages]]\ntype = \"filter\"\n", "logs.pipeline.stages[0]"),
        (
            "[[stages]]\ntype = \"parse_json\"\n[[stages]]\ntype = \"sample\"\none_in = 0\n",
            "logs.pipeline.stages[1].one_in",
        ),
        (
            "[[stages]]\ntype = \"rate_limit\"\nper_second = 0\n",
            "logs.pipeline.stages[0].per_second",
        ),
        (
            "[[stages]]\ntype = \"redact\"\npatterns = ['ok', '[bad']\n",
            "logs.pipeline.stages[0].patterns[1]",
        ),
        (
            "[[stages]]\ntype = \"parse_regex\"\npattern = 'no names'\n",
            "logs.pipeline.stages[0].pattern",
        ),
        ("overflow = \"spill\"\n", "logs.pipeline.overflow"),
        (
            "memory_limit_bytes = \"lots\"\n",
            "logs.pipeline.memory_limit_bytes",
        ),
        ("memry_limit_bytes = 5\n", "logs.pipeline"),
        ("[multiline]\nmax_lines = 3\n", "logs.pipeline.multiline"),
        (
            "[[stages]]\ntype = \"teleport\"\n",
            "logs.pipeline.stages[0]",
        ),
        (
            "[[stages]]\ntype = \"filter\"\nmin_level = \"loud\"\n",
            "logs.pipeline.stages[0]",
        ),
    ];
    for (text, path) in cases {
        let error = error_of(text);
        assert!(
            error.contains(&format!("invalid {path}")),
            "{text:?} gave {error:?}, expected {path}"
        );
    }
}

#[tokio::test]
async fn pipeline_level_values_are_checked_at_start() {
    struct Nowhere;
    #[async_trait::async_trait]
    impl deploykit_logs::Forwarder for Nowhere {
        fn name(&self) -> &str {
            "nowhere"
        }
        async fn send(&self, _: &[deploykit_logs::Record]) -> deploykit_core::Result<()> {
            Ok(())
        }
    }
    for (text, path) in [
        (
            "memory_limit_bytes = 0\n",
            "logs.pipeline.memory_limit_bytes",
        ),
        ("batch_max_records = 0\n", "logs.pipeline.batch_max_records"),
        (
            "[multiline]\nstart = '('\n",
            "logs.pipeline.multiline.start",
        ),
        (
            "[multiline]\nstart = 'x'\ncontinuation = '['\n",
            "logs.pipeline.multiline.continuation",
        ),
    ] {
        let config = PipelineConfig::from_toml_str(text).unwrap();
        let error = Pipeline::start(&config, Vec::<String>::new(), std::sync::Arc::new(Nowhere))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains(&format!("invalid {path}")),
            "{text:?} gave {error:?}"
        );
    }
}
