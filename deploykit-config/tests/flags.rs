//! Feature flags: flagd's format and its published test vectors, bucketing bit for bit,
//! weights that would overflow, OpenFeature reasons and error codes, environments and the
//! kill switch, errors that name the field, `[flags]` in deploykit.toml, and random flag files
//! that never panic and evaluate the same after a save and load.

use deploykit_config::Config;
use deploykit_core::Error;
use deploykit_flags::{ErrorCode, EvaluationContext, FlagSet, Reason, fractional};
use proptest::prelude::*;
use serde_json::{Value, json};

/// Flags written after flagd's evaluator test kit (open-feature/flagd-testbed,
/// `evaluator/flags/testkit-flags.json`), whose expected results the tests below check.
const TESTKIT: &str = r#"{
  "$schema": "https://flagd.dev/schema/v0/flags.json",
  "flags": {
    "boolean-flag": { "state": "ENABLED", "variants": { "on": true, "off": false }, "defaultVariant": "on" },
    "string-flag": { "state": "ENABLED", "variants": { "greeting": "hi", "parting": "bye" }, "defaultVariant": "greeting" },
    "integer-flag": { "state": "ENABLED", "variants": { "one": 1, "ten": 10 }, "defaultVariant": "ten" },
    "float-flag": { "state": "ENABLED", "variants": { "tenth": 0.1, "half": 0.5 }, "defaultVariant": "half" },
    "object-flag": {
      "state": "ENABLED",
      "variants": { "empty": {}, "template": { "showImages": true, "title": "Check out these pics!", "imagesPerPage": 100 } },
      "defaultVariant": "template"
    },
    "boolean-zero-flag": { "state": "ENABLED", "variants": { "zero": false, "non-zero": true }, "defaultVariant": "zero" },
    "string-zero-flag": { "state": "ENABLED", "variants": { "zero": "", "non-zero": "str" }, "defaultVariant": "zero" },
    "integer-targeted-zero-flag": {
      "state": "ENABLED", "variants": { "zero": 0, "non-zero": 1 },
      "targeting": { "if": [{ "$ref": "is_ballmer" }, "zero"] }, "defaultVariant": "zero"
    },
    "wrong-flag": { "state": "ENABLED", "variants": { "one": "uno", "two": "dos" }, "defaultVariant": "one" },
    "null-default-flag": { "state": "ENABLED", "variants": { "on": true, "off": false }, "defaultVariant": null },
    "undefined-default-flag": { "state": "ENABLED", "variants": { "small": 10, "big": 1000 } },
    "no-default-flag-null-targeting-variant": {
      "state": "ENABLED", "variants": { "normal": "CFO", "special": "CEO" },
      "targeting": { "if": [{ "==": ["jobs@orange.com", { "var": ["email"] }] }, "special", null] }
    },
    "metadata-flag": {
      "state": "ENABLED", "variants": { "on": true, "off": false }, "defaultVariant": "on",
      "metadata": { "string": "1.0.2", "integer": 2, "boolean": true, "float": 0.1 }
    },
    "some-email-targeted-flag": {
      "state": "ENABLED", "variants": { "hi": "hi", "bye": "bye", "none": "none" }, "defaultVariant": "none",
      "targeting": { "if": [{ "$ref": "is_ballmer" }, "hi", "bye"] }
    },
    "fractional-flag": {
      "state": "ENABLED",
      "variants": { "clubs": "clubs", "diamonds": "diamonds", "hearts": "hearts", "spades": "spades", "wild": "wild" },
      "defaultVariant": "wild",
      "targeting": { "fractional": [
        { "cat": [{ "var": "$flagd.flagKey" }, { "var": "user.name" }] },
        ["clubs", 25], ["diamonds", 25], ["hearts", 25], ["spades", 25]
      ] }
    },
    "fractional-flag-shorthand": {
      "state": "ENABLED", "variants": { "heads": "heads", "tails": "tails", "draw": "draw" }, "defaultVariant": "draw",
      "targeting": { "fractional": [["heads"], ["tails", 1]] }
    },
    "fractional-flag-A-shared-seed": {
      "state": "ENABLED",
      "variants": { "clubs": "clubs", "diamonds": "diamonds", "hearts": "hearts", "spades": "spades", "wild": "wild" },
      "defaultVariant": "wild",
      "targeting": { "fractional": [
        { "cat": ["shared-seed", { "var": "user.name" }] },
        ["clubs", 25], ["diamonds", 25], ["hearts", 25], ["spades", 25]
      ] }
    },
    "fractional-flag-B-shared-seed": {
      "state": "ENABLED",
      "variants": { "clubs": "ace-of-clubs", "diamonds": "ace-of-diamonds", "hearts": "ace-of-hearts", "spades": "ace-of-spades", "wild": "wild" },
      "defaultVariant": "wild",
      "targeting": { "fractional": [
        { "cat": ["shared-seed", { "var": "user.name" }] },
        ["clubs", 25], ["diamonds", 25], ["hearts", 25], ["spades", 25]
      ] }
    },
    "fractional-hash-edge-flag": {
      "state": "ENABLED", "variants": { "lower": "lower", "upper": "upper" }, "defaultVariant": "lower",
      "targeting": { "fractional": [{ "var": "targetingKey" }, ["lower", 50], ["upper", 50]] }
    },
    "fractional-nested-if-flag": {
      "state": "ENABLED", "variants": { "premium": "premium", "standard": "standard", "fallback": "fallback" },
      "defaultVariant": "fallback",
      "targeting": { "fractional": [
        { "var": "targetingKey" },
        [{ "if": [{ "==": [{ "var": "tier" }, "premium"] }, "premium", "standard"] }, 50],
        ["standard", 50]
      ] }
    },
    "fractional-nested-var-flag": {
      "state": "ENABLED", "variants": { "red": "red", "green": "green", "blue": "blue", "fallback": "fallback" },
      "defaultVariant": "fallback",
      "targeting": { "fractional": [{ "var": "targetingKey" }, [{ "var": "color" }, 50], ["blue", 50]] }
    },
    "fractional-nested-weight-flag": {
      "state": "ENABLED", "variants": { "red": "red", "blue": "blue", "fallback": "fallback" },
      "defaultVariant": "fallback",
      "targeting": { "fractional": [
        { "var": "targetingKey" },
        ["red", { "if": [{ "==": [{ "var": "tier" }, "premium"] }, 100, 0] }],
        ["blue", 10]
      ] }
    },
    "fractional-as-condition-flag": {
      "state": "ENABLED", "variants": { "big": "hundreds", "small": "ones", "fallback": "zero" },
      "defaultVariant": "fallback",
      "targeting": { "if": [{ "fractional": [[false, 0], [true, 100]] }, "big", "small"] }
    },
    "fractional-as-condition-false-flag": {
      "state": "ENABLED", "variants": { "big": "hundreds", "small": "ones", "fallback": "zero" },
      "defaultVariant": "fallback",
      "targeting": { "if": [{ "fractional": [[false, 100], [true, 0]] }, "big", "small"] }
    },
    "fractional-single-entry-flag": {
      "state": "ENABLED", "variants": { "single": "single", "fallback": "fallback" }, "defaultVariant": "fallback",
      "targeting": { "fractional": [["single", 1]] }
    },
    "fractional-null-bucket-key-flag": {
      "state": "ENABLED", "variants": { "one": "one", "two": "two", "fallback": "fallback" }, "defaultVariant": "fallback",
      "targeting": { "fractional": [{ "var": "missing_key" }, ["one", 50], ["two", 50]] }
    },
    "fractional-zero-weights-flag": {
      "state": "ENABLED", "variants": { "one": "one", "two": "two", "fallback": "fallback" }, "defaultVariant": "fallback",
      "targeting": { "fractional": [{ "var": "targetingKey" }, ["one", 0], ["two", 0]] }
    },
    "fractional-negative-weight-flag": {
      "state": "ENABLED", "variants": { "one": "one", "two": "two", "fallback": "fallback" }, "defaultVariant": "fallback",
      "targeting": { "fractional": [{ "var": "targetingKey" }, ["one", -50], ["two", 100]] }
    },
    "starts-ends-flag": {
      "state": "ENABLED", "variants": { "prefix": "prefix", "postfix": "postfix", "none": "none" }, "defaultVariant": "none",
      "targeting": { "if": [
        { "starts_with": [{ "var": "id" }, "abc"] }, "prefix",
        { "if": [{ "ends_with": [{ "var": "id" }, "xyz"] }, "postfix", "none"] }
      ] }
    },
    "starts-with-non-string-flag": {
      "state": "ENABLED", "variants": { "true": "true", "false": "false", "fallback": "fallback" }, "defaultVariant": "fallback",
      "targeting": { "starts_with": [{ "var": "num" }, "abc"] }
    },
    "equal-greater-lesser-version-flag": {
      "state": "ENABLED", "variants": { "equal": "equal", "greater": "greater", "lesser": "lesser", "none": "none" },
      "defaultVariant": "none",
      "targeting": { "if": [
        { "sem_ver": [{ "var": "version" }, "=", "2.0.0"] }, "equal",
        { "if": [
          { "sem_ver": [{ "var": "version" }, ">", "2.0.0"] }, "greater",
          { "if": [{ "sem_ver": [{ "var": "version" }, "<", "2.0.0"] }, "lesser", "none"] }
        ] }
      ] }
    },
    "major-minor-version-flag": {
      "state": "ENABLED", "variants": { "minor": "minor", "major": "major", "none": "none" }, "defaultVariant": "none",
      "targeting": { "if": [
        { "sem_ver": [{ "var": "version" }, "~", "3.0.0"] }, "minor",
        { "if": [{ "sem_ver": [{ "var": "version" }, "^", "3.0.0"] }, "major", "none"] }
      ] }
    },
    "semver-invalid-version-flag": {
      "state": "ENABLED", "variants": { "true": "true", "false": "false", "fallback": "fallback" }, "defaultVariant": "fallback",
      "targeting": { "sem_ver": [{ "var": "version" }, "=", "1.0.0"] }
    },
    "semver-v-prefix-flag": {
      "state": "ENABLED", "variants": { "match": "match", "no-match": "no-match" }, "defaultVariant": "no-match",
      "targeting": { "if": [{ "sem_ver": [{ "var": "version" }, "=", "v1.0.0"] }, "match", "no-match"] }
    },
    "semver-partial-version-flag": {
      "state": "ENABLED", "variants": { "match": "match", "no-match": "no-match" }, "defaultVariant": "no-match",
      "targeting": { "if": [{ "sem_ver": [{ "var": "version" }, "^", "1"] }, "match", "no-match"] }
    },
    "semver-build-metadata-flag": {
      "state": "ENABLED", "variants": { "match": "match", "no-match": "no-match" }, "defaultVariant": "no-match",
      "targeting": { "if": [{ "sem_ver": [{ "var": "version" }, "=", "1.0.0+build"] }, "match", "no-match"] }
    },
    "semver-numeric-context-flag": {
      "state": "ENABLED", "variants": { "match": "match", "no-match": "no-match" }, "defaultVariant": "no-match",
      "targeting": { "if": [{ "sem_ver": [{ "var": "version" }, ">", "1.1"] }, "match", "no-match"] }
    },
    "targeting-key-flag": {
      "state": "ENABLED", "variants": { "miss": "miss", "hit": "hit" }, "defaultVariant": "miss",
      "targeting": { "if": [{ "==": [{ "var": "targetingKey" }, "5c3d8535-f81a-4478-a6d3-afaa4d51199e"] }, "hit", null] }
    },
    "disabled-boolean-flag": { "state": "DISABLED", "variants": { "on": true, "off": false }, "defaultVariant": "on" },
    "disabled-object-flag": { "state": "DISABLED", "variants": { "empty": {} }, "defaultVariant": "empty" }
  },
  "$evaluators": {
    "is_ballmer": { "==": ["ballmer@macrosoft.com", { "var": ["email"] }] }
  }
}"#;

fn testkit() -> FlagSet {
    FlagSet::from_json(TESTKIT).expect("the test kit loads")
}

fn nobody() -> EvaluationContext {
    EvaluationContext::default()
}

fn user(name: impl Into<Value>) -> EvaluationContext {
    EvaluationContext::default().with("user", json!({ "name": name.into() }))
}

fn key(k: &str) -> EvaluationContext {
    EvaluationContext::new(k)
}

/// `field: reason` of a refused flag file.
fn refused(json: &str) -> String {
    match FlagSet::from_json(json) {
        Err(Error::InvalidSpec { field, reason }) => format!("{field}: {reason}"),
        other => panic!("expected the file to be refused, got {other:?}"),
    }
}

/// A one-flag file.
fn one(flag: Value) -> String {
    json!({ "flags": { "f": flag } }).to_string()
}

#[test]
fn flagd_fractional_vectors() {
    let flags = testkit();
    let string = |k: &str, ctx: &EvaluationContext| flags.string(k, "fallback", ctx, None);
    // @fractional-v2: (hash × total) >> 32.
    for (name, want) in [
        ("jack", "hearts"),
        ("queen", "spades"),
        ("ten", "clubs"),
        ("nine", "diamonds"),
        ("3", "clubs"),
    ] {
        let d = string("fractional-flag", &user(name));
        assert_eq!(
            (d.value.as_str(), d.reason),
            (want, Reason::Split),
            "{name}"
        );
    }
    for (k, want) in [("jon@company.com", "heads"), ("jane@company.com", "tails")] {
        assert_eq!(
            string("fractional-flag-shorthand", &key(k)).value,
            want,
            "{k}"
        );
    }
    for (name, a, b) in [
        ("seven", "hearts", "ace-of-hearts"),
        ("eight", "diamonds", "ace-of-diamonds"),
        ("nine", "clubs", "ace-of-clubs"),
        ("two", "spades", "ace-of-spades"),
    ] {
        assert_eq!(
            string("fractional-flag-A-shared-seed", &user(name)).value,
            a
        );
        assert_eq!(
            string("fractional-flag-B-shared-seed", &user(name)).value,
            b
        );
    }
    assert_eq!(
        string("fractional-single-entry-flag", &key("some-targeting-key")).value,
        "single"
    );
    // Keys whose hashes sit on the boundaries.
    for (k, want) in [
        ("ejOoVL", "lower"),
        ("bY9fO-", "lower"),
        ("SI7p-", "lower"),
        ("6LvT0", "upper"),
        ("ceQdGm", "upper"),
    ] {
        assert_eq!(
            string("fractional-hash-edge-flag", &key(k)).value,
            want,
            "{k}"
        );
    }
}

#[test]
fn flagd_nested_fractional_vectors() {
    let flags = testkit();
    let eval = |flag: &str, k: &str, attr: &str, v: &str| {
        flags.string(flag, "fallback", &key(k).with(attr, v), None)
    };
    for (k, tier, want) in [
        ("jon@company.com", "premium", "premium"),
        ("jon@company.com", "basic", "standard"),
        ("user1", "premium", "standard"),
        ("user1", "basic", "standard"),
    ] {
        assert_eq!(
            eval("fractional-nested-if-flag", k, "tier", tier).value,
            want
        );
    }
    for (k, color, want, error) in [
        ("jon@company.com", "red", "red", None),
        ("jon@company.com", "green", "green", None),
        ("user1", "red", "blue", None),
        (
            "jon@company.com",
            "yellow",
            "fallback",
            Some(ErrorCode::General),
        ),
        ("jon@company.com", "", "fallback", Some(ErrorCode::General)),
    ] {
        let d = eval("fractional-nested-var-flag", k, "color", color);
        assert_eq!(
            (d.value.as_str(), d.error_code),
            (want, error),
            "{k} {color}"
        );
    }
    for (k, tier, want) in [
        ("jon@company.com", "premium", "red"),
        ("jon@company.com", "basic", "blue"),
        ("user1", "premium", "red"),
        ("user1", "basic", "blue"),
    ] {
        assert_eq!(
            eval("fractional-nested-weight-flag", k, "tier", tier).value,
            want
        );
    }
    let d = flags.string(
        "fractional-as-condition-flag",
        "zero",
        &key("some-targeting-key"),
        None,
    );
    assert_eq!(
        (d.value.as_str(), d.reason),
        ("hundreds", Reason::TargetingMatch)
    );
    let d = flags.string(
        "fractional-as-condition-false-flag",
        "zero",
        &key("some-targeting-key"),
        None,
    );
    assert_eq!(d.value, "ones");
    // @operator-errors: no bucketing value, zero and negative weights.
    let d = flags.string("fractional-null-bucket-key-flag", "wrong", &nobody(), None);
    assert_eq!((d.value.as_str(), d.reason), ("fallback", Reason::Default));
    let d = flags.string(
        "fractional-zero-weights-flag",
        "wrong",
        &key("any-user"),
        None,
    );
    assert_eq!((d.value.as_str(), d.reason), ("fallback", Reason::Default));
    let d = flags.string(
        "fractional-negative-weight-flag",
        "wrong",
        &key("any-user"),
        None,
    );
    assert_eq!(d.value, "two");
}

#[test]
fn flagd_semver_and_string_vectors() {
    let flags = testkit();
    let version = |flag: &str, v: Value| {
        flags
            .string(flag, "fallback", &nobody().with("version", v), None)
            .value
    };
    for (v, want) in [
        ("2.0.0", "equal"),
        ("2.1.0", "greater"),
        ("1.9.0", "lesser"),
        ("2.0.0-alpha", "lesser"),
        ("2.0.0.0", "none"),
    ] {
        assert_eq!(
            version("equal-greater-lesser-version-flag", json!(v)),
            want,
            "{v}"
        );
    }
    for (v, want) in [("3.0.1", "minor"), ("3.1.0", "major"), ("4.0.0", "none")] {
        assert_eq!(version("major-minor-version-flag", json!(v)), want, "{v}");
    }
    for (v, want) in [
        ("1.0.0", "match"),
        ("v1.0.0", "match"),
        ("V1.0.0", "match"),
        ("2.0.0", "no-match"),
    ] {
        assert_eq!(version("semver-v-prefix-flag", json!(v)), want, "{v}");
    }
    for (v, want) in [
        (json!("1.5.0"), "match"),
        (json!("1.0"), "match"),
        (json!("1"), "match"),
        (json!(1), "match"),
        (json!(1.0), "match"),
        (json!(1.2), "match"),
        (json!("2.0.0"), "no-match"),
    ] {
        assert_eq!(
            version("semver-partial-version-flag", v.clone()),
            want,
            "{v}"
        );
    }
    for (v, want) in [
        (json!(1.2), "match"),
        (json!(1.1), "no-match"),
        (json!(2), "match"),
        (json!(1), "no-match"),
        (json!("1.2"), "match"),
    ] {
        assert_eq!(
            version("semver-numeric-context-flag", v.clone()),
            want,
            "{v}"
        );
    }
    for (v, want) in [
        ("1.0.0", "match"),
        ("1.0.0+other", "match"),
        ("2.0.0", "no-match"),
    ] {
        assert_eq!(version("semver-build-metadata-flag", json!(v)), want, "{v}");
    }
    // sem_ver on something that is not a version yields null: the default variant.
    let d = flags.string(
        "semver-invalid-version-flag",
        "wrong",
        &nobody().with("version", "not-a-version"),
        None,
    );
    assert_eq!((d.value.as_str(), d.reason), ("fallback", Reason::Default));

    for (id, want) in [
        ("abcdef", "prefix"),
        ("uvwxyz", "postfix"),
        ("abcxyz", "prefix"),
        ("lmnopq", "none"),
    ] {
        let d = flags.string(
            "starts-ends-flag",
            "fallback",
            &nobody().with("id", id),
            None,
        );
        assert_eq!(d.value, want, "{id}");
    }
    let d = flags.string(
        "starts-with-non-string-flag",
        "wrong",
        &nobody().with("num", 123),
        None,
    );
    assert_eq!((d.value.as_str(), d.reason), ("fallback", Reason::Default));
}

#[test]
fn flagd_evaluation_vectors() {
    let flags = testkit();
    let ballmer = nobody().with("email", "ballmer@macrosoft.com");
    let d = flags.boolean("boolean-flag", false, &nobody(), None);
    assert_eq!(
        (d.value, d.reason, d.variant.as_deref()),
        (true, Reason::Static, Some("on"))
    );
    assert_eq!(
        flags.string("string-flag", "bye", &nobody(), None).value,
        "hi"
    );
    assert_eq!(flags.integer("integer-flag", 1, &nobody(), None).value, 10);
    assert_eq!(flags.number("float-flag", 0.1, &nobody(), None).value, 0.5);
    assert_eq!(
        flags.json("object-flag", json!({}), &nobody(), None).value,
        json!({ "showImages": true, "title": "Check out these pics!", "imagesPerPage": 100 })
    );
    // Zero values are values.
    let d = flags.boolean("boolean-zero-flag", true, &nobody(), None);
    assert_eq!((d.value, d.reason), (false, Reason::Static));
    assert_eq!(
        flags
            .string("string-zero-flag", "hi", &nobody(), None)
            .value,
        ""
    );
    let d = flags.integer("integer-targeted-zero-flag", 1, &ballmer, None);
    assert_eq!((d.value, d.reason), (0, Reason::TargetingMatch));
    let d = flags.integer(
        "integer-targeted-zero-flag",
        1,
        &nobody().with("email", "ballmer@none.com"),
        None,
    );
    assert_eq!((d.value, d.reason), (0, Reason::Default));
    // Shared evaluators.
    assert_eq!(
        flags
            .string("some-email-targeted-flag", "x", &ballmer, None)
            .value,
        "hi"
    );
    assert_eq!(
        flags
            .string("some-email-targeted-flag", "x", &nobody(), None)
            .value,
        "bye"
    );
    // No default variant: the caller's default, reason DEFAULT.
    for default in [true, false] {
        let d = flags.boolean("null-default-flag", default, &nobody(), None);
        assert_eq!(
            (d.value, d.reason, d.variant),
            (default, Reason::Default, None)
        );
    }
    let d = flags.integer("undefined-default-flag", 100, &nobody(), None);
    assert_eq!((d.value, d.reason), (100, Reason::Default));
    let flag = "no-default-flag-null-targeting-variant";
    let d = flags.string(
        flag,
        "Inventor",
        &nobody().with("email", "wozniak@orange.com"),
        None,
    );
    assert_eq!((d.value.as_str(), d.reason), ("Inventor", Reason::Default));
    let d = flags.string(
        flag,
        "CEO",
        &nobody().with("email", "jobs@orange.com"),
        None,
    );
    assert_eq!(
        (d.value.as_str(), d.reason),
        ("CEO", Reason::TargetingMatch)
    );
    // The targeting key.
    let d = flags.string(
        "targeting-key-flag",
        "fallback",
        &key("5c3d8535-f81a-4478-a6d3-afaa4d51199e"),
        None,
    );
    assert_eq!(
        (d.value.as_str(), d.reason),
        ("hit", Reason::TargetingMatch)
    );
    let d = flags.string(
        "targeting-key-flag",
        "fallback",
        &key("f20bd32d-703b-48b6-bc8e-79d53c85134a"),
        None,
    );
    assert_eq!((d.value.as_str(), d.reason), ("miss", Reason::Default));
    // Disabled flags: the caller's default, no variant.
    let d = flags.boolean("disabled-boolean-flag", false, &nobody(), None);
    assert_eq!(
        (d.value, d.reason, d.variant),
        (false, Reason::Disabled, None)
    );
    let d = flags.json("disabled-object-flag", json!({"a": 1}), &nobody(), None);
    assert_eq!((d.value, d.reason), (json!({"a": 1}), Reason::Disabled));
    // Metadata.
    let d = flags.boolean("metadata-flag", false, &nobody(), None);
    assert_eq!(
        serde_json::to_value(&d.flag_metadata).unwrap(),
        json!({ "string": "1.0.2", "integer": 2, "boolean": true, "float": 0.1 })
    );
    assert!(
        flags
            .boolean("boolean-flag", true, &nobody(), None)
            .flag_metadata
            .is_empty()
    );
    // Errors.
    let d = flags.string("missing-flag", "uh-oh", &nobody(), None);
    assert_eq!(
        (d.value.as_str(), d.reason, d.error_code),
        ("uh-oh", Reason::Error, Some(ErrorCode::FlagNotFound))
    );
    let d = flags.integer("wrong-flag", 13, &nobody(), None);
    assert_eq!((d.value, d.error_code), (13, Some(ErrorCode::TypeMismatch)));
    let d = flags.integer("float-flag", 13, &nobody(), None);
    assert_eq!(
        d.error_code,
        Some(ErrorCode::TypeMismatch),
        "0.5 is not an integer"
    );
}

#[test]
fn flagd_properties_and_json_logic_in_targeting() {
    let flags = FlagSet::from_json(&one(json!({
        "state": "ENABLED",
        "variants": { "after": "after", "before": "before", "f": "f", "other": "other" },
        "defaultVariant": "other",
        "targeting": { "if": [
            { "and": [
                { ">": [{ "var": "$flagd.timestamp" }, 1_700_000_000] },
                { "!=": [{ "var": "country" }, "DE"] },
                { "!": { "in": [{ "var": "plan" }, ["free", "trial"]] } }
            ] }, "after",
            { "or": [{ "<": [{ "var": "$flagd.timestamp" }, 1_700_000_000] }, { "==": [{ "var": "plan" }, "free"] }] }, "before",
            { "var": "$flagd.flagKey" }
        ] }
    })))
    .unwrap();
    let eval = |ctx: EvaluationContext| flags.string("f", "", &ctx, None);
    assert_eq!(
        eval(nobody().with("country", "US").with("plan", "pro")).value,
        "after"
    );
    assert_eq!(
        eval(nobody().with("country", "DE").with("plan", "free")).value,
        "before"
    );
    let d = eval(nobody().with("country", "DE").with("plan", "pro"));
    assert_eq!((d.value.as_str(), d.reason), ("f", Reason::TargetingMatch));
}

/// What flagd would only notice at every evaluation (and answer with a default or a parse
/// error) deploykit refuses when the file loads, naming the field.
#[test]
fn definition_mistakes_flagd_finds_late_are_refused_at_load() {
    let flag = |targeting: Value| {
        one(json!({
            "state": "ENABLED",
            "variants": { "true": "true", "false": "false", "fallback": "fallback" },
            "defaultVariant": "fallback",
            "targeting": targeting
        }))
    };
    let e = refused(&flag(
        json!({ "if": [{ "$ref": "nonexistent_evaluator" }, "true", "false"] }),
    ));
    assert!(
        e.starts_with("flags.f.targeting.if[0].$ref: there is no shared evaluator"),
        "{e}"
    );
    let e = refused(&flag(
        json!({ "sem_ver": [{ "var": "version" }, "===", "1.0.0"] }),
    ));
    assert!(
        e.starts_with("flags.f.targeting.sem_ver[1]: \"===\" is not a sem_ver operator"),
        "{e}"
    );
    let e = refused(&flag(json!({ "sem_ver": [{ "var": "version" }, "="] })));
    assert!(
        e.starts_with("flags.f.targeting.sem_ver: `sem_ver` takes 3 arguments, found 2"),
        "{e}"
    );
    let e = refused(&flag(json!({ "starts_with": ["abc"] })));
    assert!(
        e.starts_with("flags.f.targeting.starts_with: `starts_with` takes 2"),
        "{e}"
    );
    let e = refused(&flag(json!({ "ends_with": [{ "var": "id" }, 5] })));
    assert!(
        e.starts_with("flags.f.targeting.ends_with[1]: the affix is a string"),
        "{e}"
    );
    let e = refused(&flag(json!({ "if": [{ "regex": ["a", "b"] }, "true"] })));
    assert!(
        e.starts_with("flags.f.targeting.if[0].regex: unknown operation \"regex\""),
        "{e}"
    );
    let e = refused(&flag(json!({ "if": [true, "purple", "true"] })));
    assert!(
        e.starts_with("flags.f.targeting.if[1]: the rule yields \"purple\", which is not"),
        "{e}"
    );
    let e = refused(&flag(json!({ "fractional": [["true", 1], ["maybe", 1]] })));
    assert!(
        e.starts_with("flags.f.targeting.fractional[1][0]: the rule yields \"maybe\""),
        "{e}"
    );
    let e = refused(&one(json!({
        "state": "ENABLED", "variants": { "on": true, "off": false },
        "targeting": { "==": [{ "var": "x" }, 1] }
    })));
    assert!(
        e.contains("needs variants named \"true\" and \"false\""),
        "{e}"
    );
    let e = refused(
        &json!({
            "flags": {},
            "$evaluators": { "a": { "!": [{ "$ref": "b" }] }, "b": true }
        })
        .to_string(),
    );
    assert!(
        e.starts_with("$evaluators.a[\"!\"][0].$ref: a shared evaluator cannot refer"),
        "{e}"
    );
}

/// Issue 15, class 3: weights whose total passes 2^32 panicked (debug) or wrapped (release).
/// Now the file is refused, naming the bucket where the total passes flagd's limit.
#[test]
fn split_weights_that_would_overflow_are_refused() {
    let file = json!({ "flags": { "headerColor": {
        "state": "ENABLED",
        "variants": { "red": "#FF0000", "blue": "#0000FF", "green": "#00FF00" },
        "defaultVariant": "red",
        "targeting": { "if": [true, { "fractional": [
            ["red", 4294967295u64], ["blue", 4294967295u64], ["green", 1]
        ] }] }
    } } });
    let e = refused(&file.to_string());
    assert!(
        e.starts_with("flags.headerColor.targeting.if[1].fractional[0][1]: weight 4294967295 is above flagd's limit of 2147483647"),
        "{e}"
    );
    let e = refused(&one(json!({
        "state": "ENABLED", "variants": { "a": 1, "b": 2, "c": 3 }, "defaultVariant": "a",
        "targeting": { "fractional": [{ "var": "email" }, ["a", 2147483647], ["b", 2147483647], ["c", 1]] }
    })));
    assert!(
        e.starts_with(
            "flags.f.targeting.fractional[2]: the split's weights add up to 4294967294 here"
        ),
        "{e}"
    );
    let e = refused(&one(json!({
        "state": "ENABLED", "variants": { "a": 1 }, "defaultVariant": "a",
        "targeting": { "fractional": [["a", 0.5]] }
    })));
    assert!(
        e.starts_with("flags.f.targeting.fractional[0][1]: 0.5: a weight is a whole number"),
        "{e}"
    );
    // Exactly the limit is fine.
    let ok = one(json!({
        "state": "ENABLED", "variants": { "a": 1, "b": 2 }, "defaultVariant": "a",
        "targeting": { "fractional": [["a", 2147483646], ["b", 1]] }
    }));
    assert!(FlagSet::from_json(&ok).is_ok());
    // The helper's weights are u32: before, their sum times a large hash overflowed u64
    // ("monica@faas.com" hashes above 2^31 with this flag key).
    let huge = [("a".to_string(), u32::MAX), ("b".to_string(), u32::MAX)];
    assert_eq!(fractional("headerColor", "monica@faas.com", &huge), None);
}

#[test]
fn weights_computed_past_the_limit_yield_the_default() {
    let flags = FlagSet::from_json(&one(json!({
        "state": "ENABLED", "variants": { "a": 1, "b": 2 }, "defaultVariant": "b",
        "targeting": { "fractional": [["a", { "var": "w" }], ["b", { "var": "w" }]] }
    })))
    .unwrap();
    for w in [
        json!(4294967295u64),
        json!(2147483647),
        json!(1e300),
        json!(0.5),
        json!("x"),
    ] {
        let d = flags.integer("f", 0, &key("monica@faas.com").with("w", w.clone()), None);
        assert_eq!((d.value, d.reason), (2, Reason::Default), "{w}");
    }
    let d = flags.integer("f", 0, &key("monica@faas.com").with("w", 3), None);
    assert_eq!(d.reason, Reason::Split);
}

/// The bucketing of non-ASCII keys, checked against an independent MurmurHash3 (Python's
/// `mmh3`) with flagd's formula, including a split whose weights add up to exactly 2^31 − 1.
#[test]
fn non_ascii_keys_bucket_as_flagd_does() {
    let colors: Vec<(String, u32)> = ["red", "blue", "green", "yellow"]
        .iter()
        .map(|c| (c.to_string(), 25))
        .collect();
    let tiers: Vec<(String, u32)> = [
        ("red", 500_000_000),
        ("blue", 700_000_000),
        ("green", 900_000_000),
        ("yellow", 47_483_647),
    ]
    .iter()
    .map(|(c, w)| (c.to_string(), *w))
    .collect();
    for (k, color, tier) in [
        ("zoë@example.com", "green", "red"),
        ("用户@例子.中国", "green", "green"),
        ("🙂", "green", "green"),
        ("Ärger", "yellow", "green"),
        ("ĳssel", "blue", "blue"),
        ("José", "yellow", "green"),
        ("naïve café", "green", "blue"),
        ("\u{0}", "yellow", "blue"),
        ("Ω≈ç√∫", "yellow", "red"),
        ("𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "green", "green"),
        (" padded ", "red", "red"),
        ("ünïcödé-ünïcödé-ünïcödé", "green", "green"),
        ("rachel@faas.com", "blue", "green"),
        ("monica@faas.com", "yellow", "green"),
        ("joey@faas.com", "red", "green"),
    ] {
        assert_eq!(fractional("headerColor", k, &colors), Some(color), "{k:?}");
        assert_eq!(fractional("tiers", k, &tiers), Some(tier), "{k:?}");
    }
}

#[test]
fn raising_a_rollout_keeps_everyone_already_in() {
    let ten = vec![("on".to_string(), 10), ("off".to_string(), 90)];
    let twenty = vec![("on".to_string(), 20), ("off".to_string(), 80)];
    let (mut in10, mut in20) = (0, 0);
    for i in 0..10_000 {
        let key = format!("user-{i}");
        let a = fractional("rollout", &key, &ten);
        let b = fractional("rollout", &key, &twenty);
        if a == Some("on") {
            in10 += 1;
            assert_eq!(b, Some("on"), "{key} was in at 10% and fell out at 20%");
        }
        if b == Some("on") {
            in20 += 1;
        }
    }
    assert!((900..1100).contains(&in10), "{in10}");
    assert!((1850..2150).contains(&in20), "{in20}");
}

const ENVIRONMENTS: &str = r#"{
  "flags": {
    "newCheckout": {
      "state": "ENABLED",
      "variants": { "on": true, "off": false },
      "defaultVariant": "off",
      "targeting": { "if": [{ "==": [{ "var": "plan" }, "internal"] }, "on", null] },
      "environments": {
        "staging": { "defaultVariant": "on" },
        "development": { "targeting": {} , "defaultVariant": "on" },
        "production-eu": { "state": "DISABLED" }
      }
    }
  }
}"#;

#[test]
fn environments_change_a_flag_and_the_kill_switch_wins() {
    let mut flags = FlagSet::from_json(ENVIRONMENTS).unwrap();
    let nobody = key("z");
    let d = flags.boolean("newCheckout", false, &nobody, None);
    assert_eq!((d.value, d.reason), (false, Reason::Default));
    let d = flags.boolean("newCheckout", false, &nobody, Some("staging"));
    assert_eq!((d.value, d.reason), (true, Reason::Default));
    let d = flags.boolean("newCheckout", false, &nobody, Some("development"));
    assert_eq!((d.value, d.reason), (true, Reason::Static));
    let d = flags.boolean("newCheckout", true, &nobody, Some("production-eu"));
    assert_eq!(
        (d.value, d.reason, d.variant),
        (true, Reason::Disabled, None)
    );
    let internal = key("a").with("plan", "internal");
    assert!(
        flags
            .boolean("newCheckout", false, &internal, Some("staging"))
            .value
    );
    assert!(flags.kill("newCheckout", true));
    for env in [None, Some("staging"), Some("development")] {
        let d = flags.boolean("newCheckout", false, &internal, env);
        assert_eq!((d.value, d.reason), (false, Reason::Disabled), "{env:?}");
    }
    // A kill survives a save and load (it is flagd's DISABLED state).
    let saved = FlagSet::from_json(&flags.to_json()).unwrap();
    assert_eq!(saved, flags);
    assert!(flags.kill("newCheckout", false));
    assert!(flags.boolean("newCheckout", false, &internal, None).value);
    assert!(!flags.kill("nope", true));
    let e = refused(&one(json!({
        "state": "ENABLED", "variants": { "a": 1 }, "defaultVariant": "a",
        "environments": { "prod": { "state": "ENABLED" } }
    })));
    assert!(
        e.starts_with(
            "flags.f.environments.prod.state: \"ENABLED\": an environment can only disable"
        ),
        "{e}"
    );
}

#[test]
fn bad_flag_files_name_the_field() {
    let cases = [
        (one(json!({"state": "ENABLED", "variants": {"a": true}, "defaultVariant": "b"})),
         "flags.f.defaultVariant: \"b\" is not one of the flag's variants"),
        (one(json!({"state": "ENABLED", "variants": {"a": true, "b": "x"}, "defaultVariant": "a"})),
         "flags.f.variants.b: is a string and variant \"a\" is a boolean"),
        (one(json!({"state": "ENABLED", "variants": {"a": true}, "defaultVariant": "a", "colour": 1})),
         "flags.f.colour: unknown key \"colour\""),
        (one(json!({"state": "ON", "variants": {"a": true}})),
         "flags.f.state: \"ON\": expected \"ENABLED\" or \"DISABLED\""),
        (one(json!({"variants": {"a": true}})), "flags.f.state: missing"),
        (one(json!({"state": "ENABLED", "variants": {}})), "flags.f.variants: a flag needs variants"),
        (one(json!({"state": "ENABLED", "variants": {"a": [1]}})),
         "flags.f.variants.a: [1]: a variant is a boolean"),
        (one(json!({"state": "ENABLED", "variants": {"a": 1}, "metadata": {"owner": {"team": "x"}}})),
         "flags.f.metadata.owner: metadata values are strings"),
        (json!({"flags": {"my.flag": {"state": "ENABLED", "variants": {"a": 1}, "targeting": {"x": 1}}}}).to_string(),
         "flags[\"my.flag\"].targeting.x: unknown operation"),
        (json!({"flags": {}, "flagz": {}}).to_string(), "flagz: unknown key \"flagz\""),
        (json!({"flags": [{"state": "ENABLED", "variants": {"a": 1}}]}).to_string(),
         "flags[0].key: a flag in a list needs its `key`"),
        ("{ not json".to_string(), "line 1, column 3: not JSON"),
        // deploykit's earlier format is named as such.
        (json!({"f": {"variants": {"a": true}, "default_variant": "a"}}).to_string(),
         "flags: missing: a flag file is flagd's format"),
    ];
    for (file, want) in cases {
        let got = refused(&file);
        assert!(
            got.starts_with(want),
            "{file}\n  got:  {got}\n  want: {want}"
        );
    }
    // The array form of flagd's daemon loads like the object form.
    let listed = json!({"flags": [{"key": "f", "state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "a"}]});
    let keyed = one(json!({"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "a"}));
    assert_eq!(
        FlagSet::from_value(&listed).unwrap(),
        FlagSet::from_json(&keyed).unwrap()
    );
}

#[test]
fn a_flag_file_loaded_from_disk_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flags.json");
    std::fs::write(
        &path,
        one(json!({"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "z"})),
    )
    .unwrap();
    match FlagSet::load(&path) {
        Err(Error::InvalidSpec { field, .. }) => {
            assert_eq!(field, format!("{}: flags.f.defaultVariant", path.display()));
        }
        other => panic!("{other:?}"),
    }
    std::fs::write(&path, TESTKIT).unwrap();
    assert_eq!(FlagSet::load(&path).unwrap(), testkit());
}

#[test]
fn flags_in_deploykit_toml_inline_or_by_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("flags.json"), ENVIRONMENTS).unwrap();
    let envs = "[environments.staging]\nkind = \"staging\"\n[environments.development]\nkind = \"development\"\n[environments.production-eu]\nkind = \"production\"\n";
    let file = dir.path().join("deploykit.toml");
    let by_file = format!("application = \"shop\"\nflags = \"flags.json\"\n{envs}");
    std::fs::write(&file, &by_file).unwrap();
    let config = Config::load(&file).unwrap();
    let from_file = config.flags().expect("flags").clone();
    assert_eq!(from_file, FlagSet::from_json(ENVIRONMENTS).unwrap());

    let inline = format!(
        r#"application = "shop"
{envs}
[flags.flags.newCheckout]
state = "ENABLED"
variants = {{ on = true, off = false }}
defaultVariant = "off"
targeting = {{ if = [{{ "==" = [{{ var = "plan" }}, "internal"] }}, "on"] }}
environments = {{ staging = {{ defaultVariant = "on" }}, development = {{ targeting = {{}}, defaultVariant = "on" }}, production-eu = {{ state = "DISABLED" }} }}
"#
    );
    let config = Config::from_toml_str("deploykit.toml", &inline).unwrap();
    let inline_flags = config.flags().expect("flags");
    for env in [
        None,
        Some("staging"),
        Some("development"),
        Some("production-eu"),
    ] {
        for ctx in [key("a"), key("b").with("plan", "internal")] {
            assert_eq!(
                inline_flags.boolean("newCheckout", false, &ctx, env),
                from_file.boolean("newCheckout", false, &ctx, env),
                "{env:?} {ctx:?}"
            );
        }
    }
    // Errors name the file, its line and the field.
    let bad = inline.replace("defaultVariant = \"off\"", "defaultVariant = \"of\"");
    let e = Config::from_toml_str("deploykit.toml", &bad)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("deploykit.toml:")
            && e.contains(": flags.flags.newCheckout.defaultVariant: \"of\""),
        "{e}"
    );
    std::fs::write(
        dir.path().join("flags.json"),
        one(json!({"state": "ENABLED", "variants": {"a": 1}, "targeting": {"if": [{"nope": 1}]}})),
    )
    .unwrap();
    let e = Config::load(&file).unwrap_err().to_string();
    assert!(
        e.contains("flags.json: flags.f.targeting.if[0].nope: unknown operation"),
        "{e}"
    );
    // A flag's environments must be the configuration's.
    std::fs::write(dir.path().join("flags.json"), ENVIRONMENTS).unwrap();
    std::fs::write(&file, "application = \"shop\"\nflags = \"flags.json\"\n[environments.staging]\nkind = \"staging\"\n").unwrap();
    let e = Config::load(&file).unwrap_err().to_string();
    assert!(
        e.contains("flags.json: flags.newCheckout.environments.development: "),
        "{e}"
    );
    assert!(e.contains("defines no environment \"development\""), "{e}");
    let e = Config::from_toml_str("deploykit.toml", "application = \"shop\"\nflags = 3\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("deploykit.toml:2:9: flags: expected a flag file"),
        "{e}"
    );
    std::fs::remove_file(dir.path().join("flags.json")).unwrap();
    let e = Config::load(&file).unwrap_err().to_string();
    assert!(e.contains("flags.json: cannot read the flag file"), "{e}");
}

// ---- Property tests -------------------------------------------------------------------

/// MurmurHash3 x86_32, seed 0, written from the reference (SMHasher) for these tests.
fn reference_murmur3(data: &[u8]) -> u32 {
    let (c1, c2) = (0xcc9e_2d51u32, 0x1b87_3593u32);
    let mut h = 0u32;
    let chunks = data.chunks_exact(4);
    let tail = chunks.remainder();
    for c in chunks {
        let k = u32::from_le_bytes([c[0], c[1], c[2], c[3]])
            .wrapping_mul(c1)
            .rotate_left(15)
            .wrapping_mul(c2);
        h = (h ^ k)
            .rotate_left(13)
            .wrapping_mul(5)
            .wrapping_add(0xe654_6b64);
    }
    if !tail.is_empty() {
        let mut k = 0u32;
        for (i, b) in tail.iter().enumerate() {
            k ^= u32::from(*b) << (8 * i);
        }
        h ^= k.wrapping_mul(c1).rotate_left(15).wrapping_mul(c2);
    }
    h ^= data.len() as u32;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

const NAMES: &[&str] = &["a", "b", "on", "true", "false", "ünï", "x.y", "1"];
const VARS: &[&str] = &[
    "age",
    "country",
    "email",
    "user.name",
    "version",
    "targetingKey",
    "$flagd.flagKey",
    "missing",
    "",
];
const FLAG_KEYS: &[&str] = &["f", "g", "my.flag", "ünïcödé", "$weird key"];
const ENVS: &[&str] = &["staging", "production"];

/// `{name: args}`.
fn op(name: &str, args: Value) -> Value {
    Value::Object([(name.to_string(), args)].into_iter().collect())
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::from),
        4 => prop::sample::select(NAMES).prop_map(Value::from),
        1 => (-1000i64..1000).prop_map(Value::from),
        1 => prop::sample::select(&["1.2.3", "2.0.0-rc.1", "v1", "x", "DE"][..]).prop_map(Value::from),
        4 => prop::sample::select(VARS).prop_map(|v| json!({ "var": v })),
    ]
}

fn weight() -> impl Strategy<Value = Value> {
    prop_oneof![
        12 => (0u64..100).prop_map(Value::from),
        1 => Just(json!(u32::MAX)),
        1 => Just(json!(i32::MAX)),
        1 => Just(json!(u64::MAX)),
        1 => (-100i64..0).prop_map(Value::from),
        1 => Just(json!(0.5)),
        1 => prop::sample::select(VARS).prop_map(|v| json!({ "var": v })),
    ]
}

fn rule() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 48, 4, |inner| {
        let op2 = |name: &'static str, inner: BoxedStrategy<Value>| {
            (inner.clone(), inner).prop_map(move |(a, b)| op(name, json!([a, b])))
        };
        let inner = inner.boxed();
        prop_oneof![
            8 => prop::collection::vec(inner.clone(), 0..5).prop_map(|a| json!({ "if": a })),
            2 => op2("==", inner.clone()),
            2 => op2("!=", inner.clone()),
            2 => op2("<", inner.clone()),
            2 => op2("in", inner.clone()),
            2 => op2("starts_with", inner.clone()),
            2 => op2("ends_with", inner.clone()),
            2 => prop::collection::vec(inner.clone(), 0..4).prop_map(|a| json!({ "and": a })),
            2 => prop::collection::vec(inner.clone(), 0..4).prop_map(|a| json!({ "or": a })),
            2 => prop::collection::vec(inner.clone(), 0..4).prop_map(|a| json!({ "cat": a })),
            2 => inner.clone().prop_map(|a| json!({ "!": a })),
            2 => (
                inner.clone(),
                prop::sample::select(&["=", "!=", "<", ">=", "^", "~", "==="][..]),
                inner.clone()
            )
                .prop_map(|(a, op, b)| json!({ "sem_ver": [a, op, b] })),
            8 => (
                prop::option::of(inner.clone()),
                prop::collection::vec((inner.clone(), prop::option::of(weight())), 1..5)
            )
                .prop_map(|(by, buckets)| {
                    let mut args: Vec<Value> = by.into_iter().collect();
                    args.extend(buckets.into_iter().map(|(v, w)| match w {
                        Some(w) => json!([v, w]),
                        None => json!([v]),
                    }));
                    json!({ "fractional": args })
                }),
            2 => prop::sample::select(&["shared", "shared", "shared", "absent"][..])
                .prop_map(|n| json!({ "$ref": n })),
            1 => inner.prop_map(|a| json!({ "nope": [a] })),
        ]
    })
}

fn flag() -> impl Strategy<Value = Value> {
    (
        0usize..4,
        prop::sample::subsequence(NAMES, 1..=NAMES.len()),
        // Mostly one of the flag's variants, sometimes another name.
        prop::option::of(prop_oneof![
            9 => any::<prop::sample::Index>().prop_map(Ok),
            1 => prop::sample::select(NAMES).prop_map(Err),
        ]),
        prop::option::of(rule()),
        prop::collection::btree_map(
            prop::sample::select(ENVS),
            (
                any::<bool>(),
                prop::option::of(prop::sample::select(NAMES)),
                prop::option::of(rule()),
            ),
            0..2,
        ),
        any::<bool>(),
    )
        .prop_map(|(kind, names, default, targeting, envs, enabled)| {
            let variants: serde_json::Map<String, Value> = names
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let v = match kind {
                        0 => json!(i % 2 == 0),
                        1 => json!(format!("value-{i}")),
                        2 => json!(i * 10),
                        _ => json!({ "i": i }),
                    };
                    (n.to_string(), v)
                })
                .collect();
            let mut f = json!({
                "state": if enabled { "ENABLED" } else { "DISABLED" },
                "variants": variants,
                "metadata": { "owner": "team-ü", "version": 3 }
            });
            if let Some(d) = default {
                f["defaultVariant"] = json!(d.map_or_else(|n| n, |i| *i.get(&names)));
            }
            if let Some(t) = targeting {
                f["targeting"] = t;
            }
            if !envs.is_empty() {
                let envs: serde_json::Map<String, Value> = envs
                    .into_iter()
                    .map(|(env, (disabled, default, targeting))| {
                        let mut o = json!({});
                        if disabled {
                            o["state"] = json!("DISABLED");
                        }
                        if let Some(d) = default {
                            o["defaultVariant"] = json!(d);
                        }
                        if let Some(t) = targeting {
                            o["targeting"] = t;
                        }
                        (env.to_string(), o)
                    })
                    .collect();
                f["environments"] = Value::Object(envs);
            }
            f
        })
}

fn document() -> impl Strategy<Value = Value> {
    (
        prop::collection::btree_map(prop::sample::select(FLAG_KEYS), flag(), 1..4),
        prop::option::weighted(0.8, rule()),
    )
        .prop_map(|(flags, shared)| {
            let mut doc = json!({ "flags": flags, "metadata": { "flagSetId": "shop" } });
            if let Some(s) = shared {
                doc["$evaluators"] = json!({ "shared": without_refs(s) });
            }
            doc
        })
}

/// A shared evaluator cannot use `$ref` (tested above): keep the random ones loadable.
fn without_refs(v: Value) -> Value {
    match v {
        Value::Object(m) if m.contains_key("$ref") => json!({ "var": "email" }),
        Value::Object(m) => {
            Value::Object(m.into_iter().map(|(k, v)| (k, without_refs(v))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(without_refs).collect()),
        other => other,
    }
}

fn contexts() -> Vec<EvaluationContext> {
    let mut out = vec![EvaluationContext::default()];
    for (i, tk) in ["rachel@faas.com", "ünïcödé", "", "1"].iter().enumerate() {
        out.push(
            key(tk)
                .with("age", i as i64 * 20)
                .with("country", ["DE", "FR", "US", "1"][i])
                .with("email", format!("{tk}@x"))
                .with("user", json!({ "name": (["ana", "ben", "ünï", "a"][i]) }))
                .with("version", ["1.2.3", "2.0.0-rc.1", "x", "v1"][i]),
        );
    }
    out
}

/// Every evaluation of every flag of `set`, for comparing two sets.
fn evaluations(set: &FlagSet) -> Vec<String> {
    let mut out = Vec::new();
    for k in set.keys() {
        for ctx in contexts() {
            for env in [None, Some("staging"), Some("production")] {
                out.push(format!("{:?}", set.resolve(k, &ctx, env)));
                out.push(format!("{:?}", set.boolean(k, true, &ctx, env)));
            }
        }
    }
    out
}

/// A JSON document as TOML (`None` if it holds a `null`, which TOML cannot say).
fn to_toml(v: &Value) -> Option<toml::Value> {
    Some(match v {
        Value::Null => return None,
        Value::Bool(b) => toml::Value::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => toml::Value::Integer(i),
            None if n.is_u64() => return None,
            None => toml::Value::Float(n.as_f64()?),
        },
        Value::String(s) => toml::Value::String(s.clone()),
        Value::Array(items) => {
            toml::Value::Array(items.iter().map(to_toml).collect::<Option<_>>()?)
        }
        Value::Object(m) => toml::Value::Table(
            m.iter()
                .map(|(k, v)| Some((k.clone(), to_toml(v)?)))
                .collect::<Option<_>>()?,
        ),
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Random flag files never panic; those that load evaluate the same after a save and
    /// load, and the same file as a `[flags]` table in deploykit.toml is accepted or refused
    /// alike and evaluates the same.
    #[test]
    fn random_flag_files_round_trip(doc in document()) {
        let text = doc.to_string();
        let loaded = FlagSet::from_json(&text);
        if let Ok(set) = &loaded {
            let saved = set.to_json();
            let again = FlagSet::from_json(&saved).expect("a saved set loads");
            prop_assert_eq!(&again, set);
            prop_assert_eq!(evaluations(&again), evaluations(set));
        }
        if let Some(toml::Value::Table(flags)) = to_toml(&doc) {
            let mut root = toml::Table::new();
            root.insert("application".into(), "shop".into());
            for env in ENVS {
                let mut e = toml::Table::new();
                e.insert("kind".into(), "staging".into());
                root.entry("environments").or_insert_with(|| toml::Table::new().into())
                    .as_table_mut().unwrap().insert(env.to_string(), e.into());
            }
            root.insert("flags".into(), flags.into());
            let config = Config::from_toml_str("deploykit.toml", &toml::to_string(&root).unwrap());
            match (&loaded, &config) {
                (Ok(set), Ok(config)) => {
                    let inline = config.flags().expect("flags");
                    prop_assert_eq!(evaluations(inline), evaluations(set));
                }
                (Err(Error::InvalidSpec { field, .. }), Err(Error::InvalidSpec { field: f, .. })) => {
                    prop_assert!(f.ends_with(&format!("flags.{field}")), "{} vs {}", f, field);
                }
                (json, toml) => prop_assert!(false, "JSON {:?} but TOML {:?}", json, toml),
            }
        }
    }

    /// Any JSON at all, and any text, loads or is refused without a panic.
    #[test]
    fn arbitrary_input_never_panics(
        v in any::<i64>().prop_map(Value::from).prop_recursive(6, 64, 6, |inner| prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop::sample::select(&["flags", "state", "variants", "defaultVariant", "targeting",
                    "fractional", "if", "var", "$ref", "$evaluators", "environments", "a"][..]),
                inner, 0..6,
            ).prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())),
        ]),
        text in ".{0,64}",
    ) {
        let _ = FlagSet::from_value(&v);
        let _ = FlagSet::from_json(&text);
        if let Ok(set) = FlagSet::from_value(&v) {
            let _ = evaluations(&set);
        }
    }

    /// Bucketing equals flagd's formula over an independent MurmurHash3, for any key
    /// (non-ASCII included) and any weights; a split past the limit does not load.
    #[test]
    fn bucketing_matches_the_reference(
        flag_key in "\\PC{0,12}",
        targeting_key in "\\PC{0,24}",
        weights in prop::collection::vec(prop_oneof![0u32..1000, Just(u32::MAX), Just(1u32 << 30)], 1..5),
    ) {
        let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
        let names: Vec<String> = (0..weights.len()).map(|i| format!("v{i}")).collect();
        let flag = json!({
            "state": "ENABLED",
            "variants": names.iter().map(|n| (n.clone(), json!(n))).collect::<serde_json::Map<_, _>>(),
            "targeting": { "fractional": names.iter().zip(&weights).map(|(n, w)| json!([n, w])).collect::<Vec<_>>() }
        });
        let file = json!({ "flags": op(&flag_key, flag) });
        let loaded = FlagSet::from_value(&file);
        if flag_key.is_empty() || total > i32::MAX as u64 {
            prop_assert!(loaded.is_err());
            return Ok(());
        }
        let set = loaded.unwrap();
        let d = set.string(&flag_key, "none", &key(&targeting_key), None);
        let reference = (total > 0).then(|| {
            let hash = reference_murmur3(format!("{flag_key}{targeting_key}").as_bytes());
            let point = (u64::from(hash) * total) >> 32;
            let mut cumulative = 0;
            weights.iter().position(|w| { cumulative += u64::from(*w); point < cumulative })
        }).flatten();
        // flagd buckets nobody without a targeting key.
        let expected = reference.filter(|_| !targeting_key.is_empty());
        match expected {
            Some(i) => prop_assert_eq!((d.value.as_str(), d.reason), (names[i].as_str(), Reason::Split)),
            None => prop_assert_eq!((d.value.as_str(), d.reason), ("none", Reason::Default)),
        }
        let split: Vec<(String, u32)> = names.iter().cloned().zip(weights.iter().copied()).collect();
        prop_assert_eq!(fractional(&flag_key, &targeting_key, &split), reference.map(|i| names[i].as_str()));
    }
}
