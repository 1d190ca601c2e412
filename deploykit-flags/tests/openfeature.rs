//! The `openfeature` feature: an application using the standard OpenFeature client API over
//! `FlagSetProvider` gets the same value, variant, reason, metadata and error code as
//! evaluating the `FlagSet` directly, for every flag type, reason and error.

#![cfg(feature = "openfeature")]

use std::sync::Arc;

use deploykit_flags::openfeature::FlagSetProvider;
use deploykit_flags::{ErrorCode, EvaluationContext, EvaluationDetails, FlagSet, Reason};
use open_feature::{
    EvaluationContext as Context, EvaluationDetails as Details, EvaluationErrorCode,
    EvaluationReason, EvaluationResult, FlagMetadataValue, OpenFeature, StructValue,
    Value as OfValue,
};
use serde_json::{Value, json};

const FLAGS: &str = r##"{
  "flags": {
    "newCheckout": {
      "state": "ENABLED",
      "variants": { "on": true, "off": false },
      "defaultVariant": "off",
      "targeting": { "if": [
        { "==": [{ "var": "plan" }, "internal"] }, "on",
        { "sem_ver": [{ "var": "appVersion" }, ">=", "2.3.0"] },
        { "fractional": [["on", 20], ["off", 80]] },
        null
      ] },
      "metadata": { "owner": "checkout", "ticket": 1234 },
      "environments": { "staging": { "defaultVariant": "on" }, "production-eu": { "state": "DISABLED" } }
    },
    "headerColor": {
      "state": "ENABLED",
      "variants": { "red": "#FF0000", "blue": "#0000FF", "green": "#00FF00", "yellow": "#FFFF00" },
      "defaultVariant": "red",
      "targeting": { "fractional": [
        { "cat": [{ "var": "$flagd.flagKey" }, { "var": "user.email" }] },
        ["red", 25], ["blue", 25], ["green", 25], ["yellow", 25]
      ] }
    },
    "maxItems": { "state": "ENABLED", "variants": { "small": 10, "large": 100 }, "defaultVariant": "small",
      "targeting": { "if": [{ ">": [{ "var": "age" }, 30] }, "large"] } },
    "ratio": { "state": "ENABLED", "variants": { "low": 0.25, "high": 0.75 }, "defaultVariant": "high" },
    "theme": { "state": "ENABLED", "variants": { "dark": { "dark": true, "accent": "#222", "sizes": [1, 2] }, "light": { "dark": false } },
      "defaultVariant": "light", "targeting": { "if": [{ "in": ["@faas.com", { "var": "user.email" }] }, "dark"] } },
    "codeDefault": { "state": "ENABLED", "variants": { "on": true, "off": false } },
    "killed": { "state": "DISABLED", "variants": { "a": "x" }, "defaultVariant": "a" },
    "computed": { "state": "ENABLED", "variants": { "a": "x" }, "defaultVariant": "a", "targeting": { "var": "pick" } }
  },
  "metadata": { "flagSetId": "shop" }
}"##;

fn contexts() -> Vec<(EvaluationContext, Context)> {
    let mut out = vec![(EvaluationContext::default(), Context::default())];
    let users = [
        ("ana", "internal", "2.4.0", 25, "ana@faas.com"),
        ("ben", "free", "2.3.0", 41, "ben@example.com"),
        ("chloe", "free", "2.2.9", 31, "chloe@faas.com"),
        ("dan", "free", "v3.0.0-rc.1", 18, "dan@example.com"),
        ("eve", "free", "2.5.1", 64, "eve@example.com"),
    ];
    for (key, plan, version, age, email) in users {
        let direct = EvaluationContext::new(key)
            .with("plan", plan)
            .with("appVersion", version)
            .with("age", age)
            .with("pick", "a")
            .with("user", json!({ "email": email }));
        let of = Context::default()
            .with_targeting_key(key)
            .with_custom_field("plan", plan)
            .with_custom_field("appVersion", version)
            .with_custom_field("age", age)
            .with_custom_field("pick", "a")
            .with_custom_field(
                "user",
                open_feature::EvaluationContextFieldValue::new_struct(json!({ "email": email })),
            );
        out.push((direct, of));
    }
    // A computed variant that does not exist: a GENERAL error.
    out.push((
        EvaluationContext::new("z").with("pick", "nope"),
        Context::default()
            .with_targeting_key("z")
            .with_custom_field("pick", "nope"),
    ));
    out
}

fn reason(r: Reason) -> EvaluationReason {
    match r {
        Reason::Static => EvaluationReason::Static,
        Reason::Default => EvaluationReason::Default,
        Reason::TargetingMatch => EvaluationReason::TargetingMatch,
        Reason::Split => EvaluationReason::Split,
        Reason::Disabled => EvaluationReason::Disabled,
        Reason::Error => EvaluationReason::Error,
    }
}

fn metadata(v: &Value) -> FlagMetadataValue {
    match v {
        Value::Bool(b) => FlagMetadataValue::Bool(*b),
        Value::String(s) => FlagMetadataValue::String(s.clone()),
        Value::Number(n) if n.is_i64() => FlagMetadataValue::Int(n.as_i64().unwrap()),
        Value::Number(n) => FlagMetadataValue::Float(n.as_f64().unwrap()),
        other => panic!("metadata {other}"),
    }
}

/// What direct evaluation gave, with its value mapped for comparison.
struct Direct<T> {
    value: T,
    variant: Option<String>,
    reason: Reason,
    error_code: Option<ErrorCode>,
    error_message: Option<String>,
    flag_metadata: std::collections::BTreeMap<String, Value>,
}

fn direct<T, U>(d: EvaluationDetails<T>, f: impl FnOnce(T) -> U) -> Direct<U> {
    Direct {
        value: f(d.value),
        variant: d.variant,
        reason: d.reason,
        error_code: d.error_code,
        error_message: d.error_message,
        flag_metadata: d.flag_metadata,
    }
}

/// The client's answer is the direct one.
fn same<T: std::fmt::Debug, U: PartialEq<T> + std::fmt::Debug>(
    what: &str,
    direct: Direct<T>,
    client: EvaluationResult<Details<U>>,
) {
    match (direct.error_code, client) {
        (None, Ok(d)) => {
            assert!(
                d.value == direct.value,
                "{what}: value {:?} vs {:?}",
                d.value,
                direct.value
            );
            assert_eq!(d.variant, direct.variant, "{what}: variant");
            assert_eq!(d.reason, Some(reason(direct.reason)), "{what}: reason");
            let want: std::collections::HashMap<String, FlagMetadataValue> = direct
                .flag_metadata
                .iter()
                .map(|(k, v)| (k.clone(), metadata(v)))
                .collect();
            assert_eq!(d.flag_metadata.values, want, "{what}: metadata");
        }
        (Some(code), Err(e)) => {
            let want = match code {
                ErrorCode::FlagNotFound => EvaluationErrorCode::FlagNotFound,
                ErrorCode::TypeMismatch => EvaluationErrorCode::TypeMismatch,
                ErrorCode::General => {
                    EvaluationErrorCode::General(direct.error_message.clone().unwrap_or_default())
                }
            };
            assert_eq!(e.code, want, "{what}: error code");
            assert_eq!(e.message, direct.error_message, "{what}: message");
        }
        (code, client) => panic!("{what}: direct error {code:?}, client {client:?}"),
    }
}

/// A StructValue compares with the JSON object it came from.
#[derive(Debug, PartialEq)]
struct Json(Value);

impl PartialEq<Json> for StructValue {
    fn eq(&self, other: &Json) -> bool {
        fn to_json(v: &OfValue) -> Value {
            match v {
                OfValue::Bool(b) => json!(b),
                OfValue::Int(i) => json!(i),
                OfValue::Float(f) => json!(f),
                OfValue::String(s) => json!(s),
                OfValue::Array(items) => Value::Array(items.iter().map(to_json).collect()),
                OfValue::Struct(s) => Value::Object(
                    s.fields
                        .iter()
                        .map(|(k, v)| (k.clone(), to_json(v)))
                        .collect(),
                ),
            }
        }
        to_json(&OfValue::Struct(self.clone())) == other.0
    }
}

#[tokio::test]
async fn the_openfeature_client_sees_what_direct_evaluation_gives() {
    let flags = Arc::new(FlagSet::from_json(FLAGS).unwrap());
    let mut api = OpenFeature::singleton_mut().await;
    for env in [None, Some("staging"), Some("production-eu")] {
        let name = format!("deploykit-{env:?}");
        let provider = FlagSetProvider::new(flags.clone());
        let provider = match env {
            Some(e) => provider.environment(e),
            None => provider,
        };
        api.set_named_provider(&name, provider).await;
        let client = api.create_named_client(&name);
        let mut reasons = std::collections::BTreeSet::new();
        for key in flags.keys().chain(["missing"]) {
            for (ctx, of) in contexts() {
                let what = format!("{key} {env:?} {:?}", ctx.targeting_key);
                // The SDK's default for each type is the type's Default.
                let d = flags.boolean(key, false, &ctx, env);
                reasons.insert(d.reason.to_string());
                let client_details = client.get_bool_details(key, Some(&of), None).await;
                same(&what, direct(d, |v| v), client_details);
                let d = flags.string(key, "", &ctx, env);
                reasons.insert(d.reason.to_string());
                let client_details = client.get_string_details(key, Some(&of), None).await;
                same(&what, direct(d, |v| v), client_details);
                let d = flags.integer(key, 0, &ctx, env);
                reasons.insert(d.reason.to_string());
                let client_details = client.get_int_details(key, Some(&of), None).await;
                same(&what, direct(d, |v| v), client_details);
                let d = flags.number(key, 0.0, &ctx, env);
                reasons.insert(d.reason.to_string());
                let client_details = client.get_float_details(key, Some(&of), None).await;
                same(&what, direct(d, |v| v), client_details);
                let d = flags.json(key, json!({}), &ctx, env);
                reasons.insert(d.reason.to_string());
                let client_details = client
                    .get_struct_details::<StructValue>(key, Some(&of), None)
                    .await;
                same(&what, direct(d, Json), client_details);
            }
        }
        if env.is_none() {
            // Every reason and error shows up somewhere above.
            for r in [
                "STATIC",
                "DEFAULT",
                "TARGETING_MATCH",
                "SPLIT",
                "DISABLED",
                "ERROR",
            ] {
                assert!(reasons.contains(r), "{r} never seen: {reasons:?}");
            }
        }
    }
}

#[tokio::test]
async fn opaque_struct_attributes_are_an_invalid_context() {
    #[derive(Debug)]
    struct Opaque;
    let flags = FlagSet::from_json(FLAGS).unwrap();
    let mut api = OpenFeature::singleton_mut().await;
    api.set_named_provider("opaque", FlagSetProvider::new(flags))
        .await;
    let client = api.create_named_client("opaque");
    let ctx = Context::default().with_custom_field(
        "who",
        open_feature::EvaluationContextFieldValue::new_struct(Opaque),
    );
    let e = client
        .get_bool_details("newCheckout", Some(&ctx), None)
        .await
        .unwrap_err();
    assert_eq!(e.code, EvaluationErrorCode::InvalidContext);
    assert!(e.message.unwrap().contains("who"));
}
