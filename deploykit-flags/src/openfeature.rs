//! An [OpenFeature](https://openfeature.dev) provider over a [`FlagSet`] (feature
//! `openfeature`), so an application uses the standard client API of the `open-feature`
//! crate and gets exactly what [`FlagSet`]'s own evaluation gives.
//!
//! The Rust SDK passes no default value to providers (its default is the type's
//! `Default`), so where deploykit would return the caller's default — a disabled flag, a flag
//! without a default variant — the provider returns that type default with the same reason,
//! and errors become the SDK's errors with the same code.
//!
//! Context attributes map to JSON: booleans, integers, floats and strings as they are, a date
//! as seconds since the Unix epoch (comparable with `$flagd.timestamp`), and a struct when it
//! is a `serde_json::Value` (so `{"var": "user.name"}` can reach into it); any other struct is
//! an `INVALID_CONTEXT` error naming the attribute.
//!
//! ```
//! use deploykit_flags::FlagSet;
//! use deploykit_flags::openfeature::FlagSetProvider;
//! use open_feature::{EvaluationContext, OpenFeature};
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let flags = FlagSet::from_json(r#"{"flags": {"newCheckout": {
//!   "state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
//!   "targeting": {"if": [{"==": [{"var": "plan"}, "internal"]}, "on"]}
//! }}}"#)?;
//! let mut api = OpenFeature::singleton_mut().await;
//! api.set_named_provider("doc", FlagSetProvider::new(flags).environment("production")).await;
//! let client = api.create_named_client("doc");
//! let ctx = EvaluationContext::default().with_custom_field("plan", "internal");
//! assert!(client.get_bool_value("newCheckout", Some(&ctx), None).await.unwrap());
//! # Ok::<(), deploykit_core::Error>(())
//! # }).unwrap();
//! ```

use std::sync::Arc;

use open_feature::provider::{FeatureProvider, ProviderMetadata, ResolutionDetails};
use open_feature::{
    EvaluationContext as OpenFeatureContext, EvaluationContextFieldValue, EvaluationError,
    EvaluationErrorCode, EvaluationReason, EvaluationResult, FlagMetadata, FlagMetadataValue,
    StructValue, Value as OpenFeatureValue,
};
use serde_json::Value;

use super::{ErrorCode, EvaluationContext, EvaluationDetails, FlagSet, Reason};

/// An OpenFeature provider that evaluates a [`FlagSet`] in-process, optionally with one
/// environment's changes.
#[derive(Debug)]
pub struct FlagSetProvider {
    flags: Arc<FlagSet>,
    environment: Option<String>,
    metadata: ProviderMetadata,
}

impl FlagSetProvider {
    /// A provider over `flags`, without any environment's changes.
    pub fn new(flags: impl Into<Arc<FlagSet>>) -> Self {
        FlagSetProvider {
            flags: flags.into(),
            environment: None,
            metadata: ProviderMetadata::new("deploykit"),
        }
    }

    /// Evaluate with the changes the flags define for `environment`.
    pub fn environment(mut self, environment: impl Into<String>) -> Self {
        self.environment = Some(environment.into());
        self
    }

    fn env(&self) -> Option<&str> {
        self.environment.as_deref()
    }
}

/// An OpenFeature context as deploykit's.
fn context(ctx: &OpenFeatureContext) -> EvaluationResult<EvaluationContext> {
    let mut out = EvaluationContext {
        targeting_key: ctx.targeting_key.clone(),
        ..EvaluationContext::default()
    };
    for (name, field) in &ctx.custom_fields {
        let value = match field {
            EvaluationContextFieldValue::Bool(b) => Value::Bool(*b),
            EvaluationContextFieldValue::Int(i) => Value::from(*i),
            EvaluationContextFieldValue::Float(f) => Value::from(*f),
            EvaluationContextFieldValue::String(s) => Value::String(s.clone()),
            EvaluationContextFieldValue::DateTime(t) => Value::from(t.unix_timestamp()),
            EvaluationContextFieldValue::Struct(any) => match any.downcast_ref::<Value>() {
                Some(v) => v.clone(),
                None => {
                    return Err(EvaluationError::builder()
                        .code(EvaluationErrorCode::InvalidContext)
                        .message(format!(
                            "context attribute {name} is a struct the provider cannot read; \
                             give it as a serde_json::Value"
                        ))
                        .build());
                }
            },
        };
        out.attributes.insert(name.clone(), value);
    }
    Ok(out)
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

fn metadata_value(v: &Value) -> Option<FlagMetadataValue> {
    Some(match v {
        Value::Bool(b) => FlagMetadataValue::Bool(*b),
        Value::String(s) => FlagMetadataValue::String(s.clone()),
        Value::Number(n) => match n.as_i64() {
            Some(i) => FlagMetadataValue::Int(i),
            None => FlagMetadataValue::Float(n.as_f64()?),
        },
        _ => return None,
    })
}

/// deploykit's details as the SDK's resolution, or its error.
fn resolution<T>(d: EvaluationDetails<T>) -> EvaluationResult<ResolutionDetails<T>> {
    if let Some(code) = d.error_code {
        let message = d.error_message.unwrap_or_default();
        let code = match code {
            ErrorCode::FlagNotFound => EvaluationErrorCode::FlagNotFound,
            ErrorCode::TypeMismatch => EvaluationErrorCode::TypeMismatch,
            ErrorCode::General => EvaluationErrorCode::General(message.clone()),
        };
        return Err(EvaluationError::builder()
            .code(code)
            .message(message)
            .build());
    }
    let mut metadata = FlagMetadata::default();
    for (k, v) in &d.flag_metadata {
        if let Some(v) = metadata_value(v) {
            metadata.add_value(k.clone(), v);
        }
    }
    Ok(ResolutionDetails {
        value: d.value,
        variant: d.variant,
        reason: Some(reason(d.reason)),
        flag_metadata: (!metadata.values.is_empty()).then_some(metadata),
    })
}

/// A JSON value as the SDK's.
fn to_value(v: &Value) -> OpenFeatureValue {
    match v {
        // OpenFeature's values have no null: an empty structure stands for it.
        Value::Null => OpenFeatureValue::Struct(StructValue::default()),
        Value::Bool(b) => OpenFeatureValue::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => OpenFeatureValue::Int(i),
            None => OpenFeatureValue::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => OpenFeatureValue::String(s.clone()),
        Value::Array(items) => OpenFeatureValue::Array(items.iter().map(to_value).collect()),
        Value::Object(_) => OpenFeatureValue::Struct(to_struct(v)),
    }
}

fn to_struct(v: &Value) -> StructValue {
    let mut out = StructValue::default();
    if let Value::Object(m) = v {
        for (k, v) in m {
            out.add_field(k.clone(), to_value(v));
        }
    }
    out
}

#[open_feature::async_trait]
impl FeatureProvider for FlagSetProvider {
    fn metadata(&self) -> &ProviderMetadata {
        &self.metadata
    }

    async fn resolve_bool_value(
        &self,
        flag_key: &str,
        ctx: &OpenFeatureContext,
    ) -> EvaluationResult<ResolutionDetails<bool>> {
        resolution(
            self.flags
                .boolean(flag_key, false, &context(ctx)?, self.env()),
        )
    }

    async fn resolve_int_value(
        &self,
        flag_key: &str,
        ctx: &OpenFeatureContext,
    ) -> EvaluationResult<ResolutionDetails<i64>> {
        resolution(self.flags.integer(flag_key, 0, &context(ctx)?, self.env()))
    }

    async fn resolve_float_value(
        &self,
        flag_key: &str,
        ctx: &OpenFeatureContext,
    ) -> EvaluationResult<ResolutionDetails<f64>> {
        resolution(self.flags.number(flag_key, 0.0, &context(ctx)?, self.env()))
    }

    async fn resolve_string_value(
        &self,
        flag_key: &str,
        ctx: &OpenFeatureContext,
    ) -> EvaluationResult<ResolutionDetails<String>> {
        resolution(self.flags.string(flag_key, "", &context(ctx)?, self.env()))
    }

    async fn resolve_struct_value(
        &self,
        flag_key: &str,
        ctx: &OpenFeatureContext,
    ) -> EvaluationResult<ResolutionDetails<StructValue>> {
        let d = self.flags.json(
            flag_key,
            Value::Object(Default::default()),
            &context(ctx)?,
            self.env(),
        );
        let EvaluationDetails {
            flag_key,
            value,
            variant,
            reason,
            error_code,
            error_message,
            flag_metadata,
        } = d;
        resolution(EvaluationDetails {
            flag_key,
            value: to_struct(&value),
            variant,
            reason,
            error_code,
            error_message,
            flag_metadata,
        })
    }
}
