//! Feature flags in flagd's format, evaluated in-process with OpenFeature's model.
//!
//! A flag file is a [flagd flag definition](https://flagd.dev/reference/flag-definitions/)
//! as it is: `flags` (each with `state`, `variants`, `defaultVariant`, `targeting` in JSON
//! Logic with flagd's `fractional`, `sem_ver`, `starts_with` and `ends_with`, and
//! `metadata`), shared `$evaluators` used through `{"$ref": name}`, and the set's
//! `metadata`. deploykit adds one optional key per flag, `environments`: per-environment
//! changes (`state: "DISABLED"`, another `defaultVariant`, other `targeting`), which flagd
//! ignores. A flag whose own state is `DISABLED` is off everywhere (the kill switch).
//!
//! Everything that can be checked without a context is checked when the file loads, and a
//! mistake is an error naming its path (`flags.headerColor.targeting.fractional[2]`):
//! unknown keys and operations, wrong argument counts, `$ref`s to nothing, literal variants
//! the flag does not have, variants of mixed types, and splits whose weights are not whole
//! numbers or add up to more than flagd's limit (2³¹ − 1).
//!
//! Evaluation takes a flag key, the caller's default, an [`EvaluationContext`] and optionally
//! an environment, and returns [`EvaluationDetails`]: value, variant, [`Reason`], flag
//! metadata and, on failure, an [`ErrorCode`]. It never fails: on any error the caller's
//! default comes back with the reason `ERROR` and the code.
//!
//! Splits bucket exactly as flagd's `fractional` does: MurmurHash3 (x86, 32 bits, seed 0)
//! over the UTF-8 bytes of the bucketing value (by default the flag key followed by the
//! targeting key); bucket = (hash × total weight) >> 32; the first variant whose cumulative
//! weight exceeds it. So a flag evaluates the same here and in flagd, and raising a rollout
//! keeps everyone who was already in. deploykit reports `SPLIT` where the variant came
//! straight out of a split (flagd says `TARGETING_MATCH`).
//!
//! ```
//! use deploykit_flags::{EvaluationContext, FlagSet, Reason};
//! let flags = FlagSet::from_json(r##"{
//!   "flags": {
//!     "headerColor": {
//!       "state": "ENABLED",
//!       "variants": { "red": "#FF0000", "blue": "#0000FF", "green": "#00FF00", "yellow": "#FFFF00" },
//!       "defaultVariant": "red",
//!       "targeting": {
//!         "fractional": [
//!           { "cat": [{ "var": "$flagd.flagKey" }, { "var": "email" }] },
//!           ["red", 25], ["blue", 25], ["green", 25], ["yellow", 25]
//!         ]
//!       }
//!     }
//!   }
//! }"##)?;
//! let ctx = EvaluationContext::default().with("email", "rachel@faas.com");
//! let details = flags.string("headerColor", "#000000", &ctx, None);
//! assert_eq!(details.variant.as_deref(), Some("blue"));
//! assert_eq!(details.reason, Reason::Split);
//! # Ok::<(), deploykit_core::Error>(())
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use deploykit_core::{Error, Result};

mod document;
mod logic;
#[cfg(feature = "openfeature")]
pub mod openfeature;
mod semver;

use logic::Expr;

/// Why an evaluation returned what it did (OpenFeature's reasons).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Reason {
    /// The flag has no targeting: its default variant.
    Static,
    /// Targeting yielded nothing (`null`): the flag's default variant, or the caller's
    /// default when the flag has none.
    Default,
    /// Targeting chose the variant.
    TargetingMatch,
    /// A `fractional` split chose the variant.
    Split,
    /// The flag is disabled (everywhere, or in this environment): the caller's default.
    Disabled,
    /// Evaluation failed: the caller's default (see the error code).
    Error,
}

/// Why an evaluation failed (OpenFeature's error codes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// No flag with that key.
    FlagNotFound,
    /// The variant's value is not of the requested type.
    TypeMismatch,
    /// Targeting computed something that is not one of the flag's variants.
    General,
}

/// The result of one evaluation.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct EvaluationDetails<T> {
    /// The flag.
    pub flag_key: String,
    /// The value (the caller's default on error, when disabled, or when the flag has no
    /// default variant and targeting chose none).
    pub value: T,
    /// The variant chosen, if one was.
    pub variant: Option<String>,
    /// Why.
    pub reason: Reason,
    /// What failed, when the reason is `Error`.
    pub error_code: Option<ErrorCode>,
    /// A message for humans, when the reason is `Error`.
    pub error_message: Option<String>,
    /// The flag set's metadata overlaid with the flag's (strings, numbers and booleans).
    pub flag_metadata: BTreeMap<String, Value>,
}

/// Who or what a flag is evaluated for: the targeting key and any JSON attributes, which
/// rules read with `{"var": "name"}` (nested ones with `{"var": "user.name"}`).
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct EvaluationContext {
    /// The targeting key (a user id, an email): what splits bucket on by default, and
    /// `{"var": "targetingKey"}`.
    pub targeting_key: Option<String>,
    /// Other attributes rules may look at.
    pub attributes: BTreeMap<String, Value>,
}

impl EvaluationContext {
    /// A context with a targeting key.
    pub fn new(targeting_key: impl Into<String>) -> Self {
        EvaluationContext {
            targeting_key: Some(targeting_key.into()),
            attributes: BTreeMap::new(),
        }
    }

    /// The same context with one more attribute.
    pub fn with(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        self.attributes.insert(name.into(), value.into());
        self
    }
}

/// One flag, validated.
#[derive(Clone, Debug, PartialEq)]
struct Flag {
    enabled: bool,
    variants: BTreeMap<String, Value>,
    default_variant: Option<String>,
    targeting: Option<Expr>,
    metadata: BTreeMap<String, Value>,
    environments: BTreeMap<String, Override>,
}

/// deploykit's per-environment changes to a flag.
#[derive(Clone, Debug, Default, PartialEq)]
struct Override {
    disabled: bool,
    default_variant: Option<String>,
    /// `Some(None)`: no targeting in this environment (`"targeting": {}`).
    targeting: Option<Option<Expr>>,
}

/// A set of flags: loaded from a flagd flag file, evaluated in-process.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FlagSet {
    flags: BTreeMap<String, Flag>,
    evaluators: BTreeMap<String, Arc<Expr>>,
    metadata: BTreeMap<String, Value>,
}

/// `path.key`, or `path["key"]` when the key is not a plain name.
pub(crate) fn key(path: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '$'));
    match (plain, path.is_empty()) {
        (true, true) => key.to_string(),
        (true, false) => format!("{path}.{key}"),
        (false, _) => format!("{path}[{}]", Value::String(key.to_string())),
    }
}

/// `path[i]`.
pub(crate) fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

/// What an evaluation came to, before the caller's type is applied.
enum Outcome<'a> {
    Variant(&'a str, &'a Value, Reason),
    CallerDefault(Reason),
    Failed(ErrorCode, String),
}

impl FlagSet {
    /// Flags from the text of a flagd flag file. Errors name the field (`flags.f.variants`).
    pub fn from_json(json: &str) -> Result<Self> {
        let doc: Value = serde_json::from_str(json).map_err(|e| {
            Error::invalid(
                format!("line {}, column {}", e.line(), e.column()),
                format!("not JSON: {e}"),
            )
        })?;
        Self::from_value(&doc)
    }

    /// Flags from a flagd flag file already parsed into JSON (a `[flags]` table of
    /// `deploykit.toml` comes this way).
    pub fn from_value(doc: &Value) -> Result<Self> {
        document::parse(doc)
    }

    /// Read and load the flag file at `path`; errors name the file and the field.
    pub fn load(path: &Path) -> Result<Self> {
        let place = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::invalid(place.clone(), format!("cannot read the flag file: {e}"))
        })?;
        Self::from_json(&text).map_err(|e| match e {
            Error::InvalidSpec { field, reason } => {
                Error::invalid(format!("{place}: {field}"), reason)
            }
            other => other,
        })
    }

    /// The flags as a flagd flag file (pretty JSON), which loads back to an equal set.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&self.to_value()).unwrap_or_default()
    }

    /// The flags as a flagd flag document.
    pub fn to_value(&self) -> Value {
        document::save(self)
    }

    /// The flag keys, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.flags.keys().map(String::as_str)
    }

    /// Every environment a flag has changes for, with the field that names it
    /// (`flags.f.environments.staging`), for checking against the configuration.
    pub fn environment_overrides(&self) -> impl Iterator<Item = (String, &str)> {
        self.flags.iter().flat_map(|(k, f)| {
            f.environments.keys().map(move |env| {
                (
                    key(&key(&key("flags", k), "environments"), env),
                    env.as_str(),
                )
            })
        })
    }

    /// The kill switch: `true` disables the flag everywhere (its state becomes `DISABLED`,
    /// whatever its environments say), `false` enables it again. Returns whether the flag
    /// exists.
    pub fn kill(&mut self, key: &str, killed: bool) -> bool {
        self.flags
            .get_mut(key)
            .map(|f| f.enabled = !killed)
            .is_some()
    }

    fn outcome<'a>(
        &'a self,
        flag_key: &str,
        flag: &'a Flag,
        ctx: &EvaluationContext,
        environment: Option<&str>,
    ) -> Outcome<'a> {
        let o = environment.and_then(|e| flag.environments.get(e));
        if !flag.enabled || o.is_some_and(|o| o.disabled) {
            return Outcome::CallerDefault(Reason::Disabled);
        }
        let default = o
            .and_then(|o| o.default_variant.as_ref())
            .or(flag.default_variant.as_ref());
        let targeting = match o.and_then(|o| o.targeting.as_ref()) {
            Some(t) => t.as_ref(),
            None => flag.targeting.as_ref(),
        };
        let pick = |name: &str, reason: Reason| match flag.variants.get_key_value(name) {
            Some((k, v)) => Outcome::Variant(k, v, reason),
            None => Outcome::Failed(
                ErrorCode::General,
                format!("flag {flag_key}: targeting yielded {name:?}, which is not a variant"),
            ),
        };
        let fallback = |reason: Reason| match default {
            Some(d) => pick(d, reason),
            None => Outcome::CallerDefault(Reason::Default),
        };
        let Some(rule) = targeting else {
            return fallback(Reason::Static);
        };
        let env = logic::Env {
            flag_key,
            ctx,
            timestamp: now(),
        };
        let (result, split) = logic::evaluate(rule, &env);
        match logic::variant_name(&result) {
            Ok(None) => fallback(Reason::Default),
            Ok(Some(name)) => pick(
                &name,
                if split {
                    Reason::Split
                } else {
                    Reason::TargetingMatch
                },
            ),
            Err(()) => Outcome::Failed(
                ErrorCode::General,
                format!("flag {flag_key}: targeting yielded {result}, not a variant name"),
            ),
        }
    }

    fn evaluate<T>(
        &self,
        key: &str,
        default: T,
        ctx: &EvaluationContext,
        environment: Option<&str>,
        cast: impl Fn(&Value) -> Option<T>,
    ) -> EvaluationDetails<T> {
        let mut details = EvaluationDetails {
            flag_key: key.to_string(),
            value: default,
            variant: None,
            reason: Reason::Error,
            error_code: None,
            error_message: None,
            flag_metadata: BTreeMap::new(),
        };
        let Some(flag) = self.flags.get(key) else {
            details.error_code = Some(ErrorCode::FlagNotFound);
            details.error_message = Some(format!("flag {key} not found"));
            return details;
        };
        details.flag_metadata = self.metadata.clone();
        details.flag_metadata.extend(flag.metadata.clone());
        match self.outcome(key, flag, ctx, environment) {
            Outcome::Variant(variant, value, reason) => match cast(value) {
                Some(v) => {
                    details.value = v;
                    details.variant = Some(variant.to_string());
                    details.reason = reason;
                }
                None => {
                    details.error_code = Some(ErrorCode::TypeMismatch);
                    details.error_message = Some(format!(
                        "flag {key}: variant {variant} is {value}, not of the requested type"
                    ));
                }
            },
            Outcome::CallerDefault(reason) => details.reason = reason,
            Outcome::Failed(code, message) => {
                details.error_code = Some(code);
                details.error_message = Some(message);
            }
        }
        details
    }

    /// Evaluate a flag of any type: the value is `None` where the caller's default applies
    /// (disabled, no default variant, or an error).
    pub fn resolve(
        &self,
        key: &str,
        ctx: &EvaluationContext,
        environment: Option<&str>,
    ) -> EvaluationDetails<Option<Value>> {
        self.evaluate(key, None, ctx, environment, |v| Some(Some(v.clone())))
    }

    /// Evaluate a boolean flag.
    pub fn boolean(
        &self,
        key: &str,
        default: bool,
        ctx: &EvaluationContext,
        environment: Option<&str>,
    ) -> EvaluationDetails<bool> {
        self.evaluate(key, default, ctx, environment, Value::as_bool)
    }

    /// Evaluate a string flag.
    pub fn string(
        &self,
        key: &str,
        default: &str,
        ctx: &EvaluationContext,
        environment: Option<&str>,
    ) -> EvaluationDetails<String> {
        self.evaluate(key, default.to_string(), ctx, environment, |v| {
            v.as_str().map(str::to_string)
        })
    }

    /// Evaluate a number flag.
    pub fn number(
        &self,
        key: &str,
        default: f64,
        ctx: &EvaluationContext,
        environment: Option<&str>,
    ) -> EvaluationDetails<f64> {
        self.evaluate(key, default, ctx, environment, Value::as_f64)
    }

    /// Evaluate a number flag as an integer: a variant with a fraction, or beyond `i64`, is a
    /// type mismatch.
    pub fn integer(
        &self,
        key: &str,
        default: i64,
        ctx: &EvaluationContext,
        environment: Option<&str>,
    ) -> EvaluationDetails<i64> {
        self.evaluate(key, default, ctx, environment, |v| {
            v.as_i64().or_else(|| {
                let f = v.as_f64()?;
                // Whole and inside i64's range (2^63 itself is not): exact.
                (f.fract() == 0.0
                    && (-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&f))
                .then_some(f as i64)
            })
        })
    }

    /// Evaluate an object flag.
    pub fn json(
        &self,
        key: &str,
        default: Value,
        ctx: &EvaluationContext,
        environment: Option<&str>,
    ) -> EvaluationDetails<Value> {
        self.evaluate(key, default, ctx, environment, |v| {
            v.is_object().then(|| v.clone())
        })
    }
}

/// `$flagd.timestamp`: seconds since the Unix epoch.
fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// flagd's `fractional` bucketing for the common case: the variant for `flag_key` +
/// `targeting_key` among `split`'s (variant, weight) pairs. `None` when the weights add up
/// to 0 or to more than flagd's limit of 2³¹ − 1 (never a wrapped or panicking sum).
pub fn fractional<'a>(
    flag_key: &str,
    targeting_key: &str,
    split: &'a [(String, u32)],
) -> Option<&'a str> {
    let weights: Vec<u64> = split.iter().map(|(_, w)| u64::from(*w)).collect();
    let i = logic::bucket(&format!("{flag_key}{targeting_key}"), &weights)?;
    split.get(i).map(|(v, _)| v.as_str())
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Reason::Static => "STATIC",
            Reason::Default => "DEFAULT",
            Reason::TargetingMatch => "TARGETING_MATCH",
            Reason::Split => "SPLIT",
            Reason::Disabled => "DISABLED",
            Reason::Error => "ERROR",
        };
        f.write_str(s)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            ErrorCode::FlagNotFound => "FLAG_NOT_FOUND",
            ErrorCode::TypeMismatch => "TYPE_MISMATCH",
            ErrorCode::General => "GENERAL",
        };
        f.write_str(s)
    }
}
