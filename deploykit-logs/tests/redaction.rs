//! Redaction: no secret value survives in any output; the count is exact.

use std::sync::Arc;

use deploykit_logs::{
    PipelineConfig, Processor, REDACTED, Record, Redactor, Source, Stream, Verdict,
};
use proptest::prelude::*;

fn record(line: &str) -> Record {
    Record::new(
        Source::new("api", "production", "r1", "api-1"),
        Stream::Stdout,
        0,
        line,
    )
}

fn output(record: &Record) -> String {
    let mut out = Vec::new();
    record.write_json(&mut out);
    String::from_utf8(out).unwrap()
}

fn processor(stages: &str, secrets: &[String]) -> Processor {
    let config = PipelineConfig::from_toml_str(stages).unwrap();
    Processor::new(&config, secrets).unwrap()
}

/// Secrets: upper-case letters, digits and punctuation JSON escapes, so that they never occur
/// by chance in the lower-case filler nor inside `[REDACTED]`.
fn secret() -> impl Strategy<Value = String> {
    "[A-Z0-9][A-Z0-9\"\\\\/+=]{5,14}[0-9]"
}

fn filler() -> impl Strategy<Value = String> {
    "[a-z ]{0,12}"
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn no_secret_survives_in_raw_lines(
        secrets in proptest::collection::btree_set(secret(), 1..4),
        pieces in proptest::collection::vec((filler(), 0usize..8), 1..6),
    ) {
        let secrets: Vec<String> = secrets.into_iter().collect();
        // No secret may contain another (leftmost-longest would then count differently).
        prop_assume!(secrets.iter().all(|a| secrets.iter().all(|b| a == b || !a.contains(b.as_str()))));
        let mut line = String::new();
        let mut embedded = 0;
        for (text, pick) in &pieces {
            line.push_str(text);
            if let Some(secret) = secrets.get(*pick) {
                line.push_str(secret);
                embedded += 1;
            }
        }
        let processor = processor("", &secrets);
        let mut rec = record(&line);
        prop_assert_eq!(processor.process(&mut rec), Verdict::Keep);
        let out = output(&rec);
        for secret in &secrets {
            prop_assert!(!rec.line.contains(secret.as_str()));
            prop_assert!(!out.contains(secret.as_str()));
        }
        prop_assert_eq!(processor.stats().redactions, embedded);
        prop_assert_eq!(rec.line.matches(REDACTED).count() as u64, embedded);
    }

    #[test]
    fn no_secret_survives_in_json_values_and_keys(
        secrets in proptest::collection::btree_set(secret(), 1..4),
        members in proptest::collection::vec((filler(), 0usize..6, any::<bool>()), 1..6),
    ) {
        let secrets: Vec<String> = secrets.into_iter().collect();
        prop_assume!(secrets.iter().all(|a| secrets.iter().all(|b| a == b || !a.contains(b.as_str()))));
        let mut object = serde_json::Map::new();
        let mut embedded = 0;
        for (index, (text, pick, as_key)) in members.iter().enumerate() {
            match secrets.get(*pick) {
                Some(secret) if *as_key => {
                    object.insert(format!("{secret}{index}"), serde_json::Value::from(text.as_str()));
                    embedded += 1;
                }
                Some(secret) => {
                    object.insert(format!("k{index}"), serde_json::Value::from(format!("{text}{secret}{text}")));
                    embedded += 1;
                }
                None => {
                    object.insert(format!("k{index}"), serde_json::Value::from(text.as_str()));
                }
            }
        }
        object.insert("level".into(), "error".into());
        let line = serde_json::to_string(&object).unwrap();
        let processor = processor("[[stages]]\ntype = \"parse_json\"\n", &secrets);
        let mut rec = record(&line);
        prop_assert_eq!(processor.process(&mut rec), Verdict::Keep);
        let out = output(&rec);
        let escaped: Vec<String> = secrets
            .iter()
            .map(|s| serde_json::to_string(s).unwrap().trim_matches('"').to_string())
            .collect();
        for (secret, escaped) in secrets.iter().zip(&escaped) {
            prop_assert!(!out.contains(secret.as_str()), "{} in {}", secret, out);
            prop_assert!(!out.contains(escaped.as_str()), "{} in {}", escaped, out);
            for (key, value) in rec.fields().iter() {
                prop_assert!(!key.contains(secret.as_str()));
                prop_assert!(!value.to_string().contains(escaped.as_str()));
            }
        }
        prop_assert_eq!(processor.stats().redactions, embedded);
        prop_assert!(serde_json::from_str::<serde_json::Value>(&rec.line).is_ok());
    }
}

#[test]
fn a_secret_hidden_by_a_json_unicode_escape_is_found() {
    let secret = "Swordfish42".to_string();
    // `\u0053` is `S`: the raw line does not contain the secret's text.
    let line = r#"{"level":"info","note":"pw \u0053wordfish42 used"}"#;
    let processor = processor(
        "[[stages]]\ntype = \"parse_json\"\n",
        std::slice::from_ref(&secret),
    );
    let mut rec = record(line);
    processor.process(&mut rec);
    let out = output(&rec);
    assert!(!out.contains("wordfish42"), "{out}");
    assert_eq!(processor.stats().redactions, 1);
}

#[test]
fn token_patterns_are_redacted() {
    let processor = processor(
        r#"
        [[stages]]
        type = "parse_json"
        [[stages]]
        type = "redact"
        builtin = ["bearer", "aws_access_key", "password"]
        patterns = ['card=(?P<secret>\d{16})']
        "#,
        &[],
    );
    let cases = [
        (
            "GET /x Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.abc.def",
            "eyJhbGci",
        ),
        (
            "using key AKIAIOSFODNN7EXAMPLE for s3",
            "AKIAIOSFODNN7EXAMPLE",
        ),
        ("connecting with password=hunter2&user=x", "hunter2"),
        ("charged card=4111111111111111 ok", "4111111111111111"),
        (
            r#"{"level":"info","password":"hunter3","user":"x"}"#,
            "hunter3",
        ),
        (r#"{"level":"info","auth":"Bearer tok3n.value"}"#, "tok3n"),
    ];
    for (line, secret) in cases {
        let mut rec = record(line);
        processor.process(&mut rec);
        let out = output(&rec);
        assert!(!out.contains(secret), "{secret} survived in {out}");
        assert!(out.contains(REDACTED), "{out}");
    }
    let mut kept = record("password=[REDACTED] already");
    processor.process(&mut kept);
    assert_eq!(kept.line, "password=[REDACTED] already");
}

#[test]
fn redactor_counts_and_ignores_empty_secrets() {
    let redactor = Redactor::new(["", "abc123"], Vec::new()).unwrap();
    let (text, count) = redactor.redact_str("abc123 and abc123abc123").unwrap();
    assert_eq!(text, "[REDACTED] and [REDACTED][REDACTED]");
    assert_eq!(count, 3);
    assert!(redactor.redact_str("nothing").is_none());
    let shared = Arc::new(redactor);
    assert!(!shared.is_empty());
}
