//! Feature flags: flagd-compatible splits, OpenFeature reasons and error codes, targeting,
//! overrides, the kill switch, and loader errors.

use deploykit_core::Error;
use deploykit_core::flags::{ErrorCode, EvaluationContext, FlagSet, Reason, fractional};

const FLAGS: &str = r##"{
  "headerColor": {
    "variants": { "red": "#FF0000", "blue": "#0000FF", "green": "#00FF00", "yellow": "#FFFF00" },
    "default_variant": "red",
    "targeting": [ { "fractional": [["red", 25], ["blue", 25], ["green", 25], ["yellow", 25]] } ]
  },
  "newCheckout": {
    "variants": { "on": true, "off": false },
    "default_variant": "off",
    "targeting": [
      { "when": { "equals": { "attribute": "plan", "value": "internal" } }, "variant": "on" },
      { "when": { "all": [
          { "sem_ver": { "attribute": "appVersion", "op": ">=", "version": "2.3.0" } },
          { "not": { "in": { "attribute": "country", "values": ["DE", "FR"] } } }
        ] }, "variant": "on" },
      { "when": { "number": { "attribute": "age", "op": "<", "value": 18 } }, "variant": "off" }
    ],
    "environments": {
      "staging": { "default_variant": "on" },
      "development": { "targeting": [ { "variant": "on" } ] },
      "production-eu": { "enabled": false }
    }
  },
  "maxItems": { "variants": { "small": 10, "large": 100 }, "default_variant": "small" },
  "theme": { "variants": { "a": { "dark": true }, "b": { "dark": false } }, "default_variant": "b" },
  "off": { "enabled": false, "variants": { "x": true }, "default_variant": "x" }
}"##;

fn flags() -> FlagSet {
    FlagSet::from_json(FLAGS).expect("flags load")
}

fn user(key: &str) -> EvaluationContext {
    EvaluationContext::new(key)
}

#[test]
fn splits_match_flagd_fractional() {
    let flags = flags();
    for (email, variant) in [
        ("rachel@faas.com", "blue"),
        ("monica@faas.com", "yellow"),
        ("joey@faas.com", "red"),
        ("ross@faas.com", "blue"),
    ] {
        let d = flags.string("headerColor", "#000000", &user(email), None);
        assert_eq!(d.variant.as_deref(), Some(variant), "{email}");
        assert_eq!(d.reason, Reason::Split);
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
    // The buckets are uniform: about 10% and 20% of 10,000.
    assert!((900..1100).contains(&in10), "{in10}");
    assert!((1850..2150).contains(&in20), "{in20}");
}

#[test]
fn targeting_rules_and_reasons() {
    let flags = flags();
    let d = flags.boolean(
        "newCheckout",
        false,
        &user("a").with("plan", "internal"),
        None,
    );
    assert_eq!(
        (d.value, d.reason, d.variant.as_deref()),
        (true, Reason::TargetingMatch, Some("on"))
    );
    let modern = user("b").with("appVersion", "2.4.1").with("country", "US");
    assert!(flags.boolean("newCheckout", false, &modern, None).value);
    let in_de = user("c").with("appVersion", "2.4.1").with("country", "DE");
    let d = flags.boolean("newCheckout", true, &in_de, None);
    assert_eq!((d.value, d.reason), (false, Reason::Default));
    let old = user("d").with("appVersion", "v2.2.9");
    assert_eq!(
        flags.boolean("newCheckout", true, &old, None).reason,
        Reason::Default
    );
    let d = flags.number("maxItems", 1.0, &user("e"), None);
    assert_eq!((d.value, d.reason), (10.0, Reason::Static));
    let d = flags.json("theme", serde_json::json!({}), &user("f"), None);
    assert_eq!(d.value, serde_json::json!({ "dark": false }));
}

#[test]
fn environments_override_and_the_kill_switch_wins() {
    let mut flags = flags();
    let nobody = user("z");
    assert!(
        flags
            .boolean("newCheckout", false, &nobody, Some("staging"))
            .value
    );
    let d = flags.boolean("newCheckout", false, &nobody, Some("development"));
    assert_eq!((d.value, d.reason), (true, Reason::TargetingMatch));
    let d = flags.boolean("newCheckout", true, &nobody, Some("production-eu"));
    assert_eq!(
        (d.value, d.reason, d.variant),
        (true, Reason::Disabled, None)
    );
    let d = flags.boolean("off", false, &nobody, None);
    assert_eq!((d.value, d.reason), (false, Reason::Disabled));
    assert!(flags.kill("newCheckout", true));
    let d = flags.boolean("newCheckout", false, &nobody, Some("staging"));
    assert_eq!((d.value, d.reason), (false, Reason::Disabled));
    assert!(!flags.kill("nope", true));
}

#[test]
fn failures_return_the_default_with_a_code() {
    let flags = flags();
    let d = flags.boolean("missing", true, &user("a"), None);
    assert_eq!(
        (d.value, d.reason, d.error_code),
        (true, Reason::Error, Some(ErrorCode::FlagNotFound))
    );
    let d = flags.boolean("headerColor", true, &user("a"), None);
    assert_eq!(
        (d.value, d.error_code),
        (true, Some(ErrorCode::TypeMismatch))
    );
    let d = flags.string("headerColor", "#000", &EvaluationContext::default(), None);
    assert_eq!(
        (d.value.as_str(), d.error_code),
        ("#000", Some(ErrorCode::TargetingKeyMissing))
    );
    let bad = user("b").with("appVersion", "two point four");
    let d = flags.boolean("newCheckout", false, &bad, None);
    assert_eq!(
        (d.value, d.error_code),
        (false, Some(ErrorCode::ParseError))
    );
    assert!(d.error_message.expect("message").contains("appVersion"));
}

#[test]
fn bad_flag_files_name_the_field() {
    let field = |json: &str| match FlagSet::from_json(json) {
        Err(Error::InvalidSpec { field, reason }) => format!("{field}: {reason}"),
        other => panic!("expected an error, got {other:?}"),
    };
    assert!(
        field(r#"{"f": {"variants": {"a": true}, "default_variant": "b"}}"#)
            .starts_with("flags.f.default_variant")
    );
    assert!(
        field(r#"{"f": {"variants": {"a": true, "b": "x"}, "default_variant": "a"}}"#)
            .starts_with("flags.f.variants: all variants")
    );
    assert!(
        field(r#"{"f": {"variants": {"a": true}, "default_variant": "a", "colour": 1}}"#)
            .contains("unknown field `colour`")
    );
    assert!(field(r#"{"f": {"variants": {"a": true}, "default_variant": "a",
        "targeting": [{"when": {"sem_ver": {"attribute": "v", "op": ">", "version": "x"}}, "variant": "a"}]}}"#)
        .starts_with("flags.f.targeting[0].when.version"));
    assert!(
        field(
            r#"{"f": {"variants": {"a": true}, "default_variant": "a",
        "targeting": [{"variant": "a", "fractional": [["a", 1]]}]}}"#
        )
        .starts_with("flags.f.targeting[0]: a rule chooses exactly one")
    );
    assert!(
        field(
            r#"{"f": {"variants": {"a": true}, "default_variant": "a",
        "environments": {"prod": {"default_variant": "zz"}}}}"#
        )
        .starts_with("flags.f.environments.prod.default_variant")
    );
    assert!(field("{ not json").starts_with("flags: line 1"));
}
