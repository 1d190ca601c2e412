//! Feature flags, evaluated in-process with the OpenFeature evaluation model.
//!
//! Evaluation takes a flag key, the caller's default and an [`EvaluationContext`] (targeting key
//! and attributes) and returns [`EvaluationDetails`]: value, variant, [`Reason`] and, on failure,
//! an [`ErrorCode`]. It never fails: on any error the caller's default comes back with the reason
//! `Error` and the code.
//!
//! Percentage rollouts bucket exactly as flagd's `fractional` does — MurmurHash3 x86_32, seed 0,
//! over the UTF-8 bytes of flag key and targeting key (no separator); bucket =
//! (hash × total weight) >> 32; the first variant whose cumulative weight exceeds the bucket —
//! so a flag evaluates the same in deploykit and in flagd, and raising a rollout keeps everyone
//! who was already in.
//!
//! ```
//! use deploykit_core::flags::{EvaluationContext, FlagSet, Reason};
//! let flags = FlagSet::from_json(r##"{
//!   "headerColor": {
//!     "variants": { "red": "#FF0000", "blue": "#0000FF", "green": "#00FF00", "yellow": "#FFFF00" },
//!     "default_variant": "red",
//!     "targeting": [ { "fractional": [["red", 25], ["blue", 25], ["green", 25], ["yellow", 25]] } ]
//!   }
//! }"##)?;
//! let ctx = EvaluationContext::new("rachel@faas.com");
//! let details = flags.string("headerColor", "#000000", &ctx, None);
//! assert_eq!(details.variant.as_deref(), Some("blue"));
//! assert_eq!(details.reason, Reason::Split);
//! # Ok::<(), deploykit_core::Error>(())
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A variant's value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FlagValue {
    /// A boolean.
    Bool(bool),
    /// A number.
    Number(f64),
    /// A string.
    String(String),
    /// Any JSON object or array.
    Json(serde_json::Value),
}

/// Why an evaluation returned what it did (OpenFeature's reasons).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Reason {
    /// The flag has no targeting: its default variant.
    Static,
    /// Targeting matched nothing: the flag's default variant.
    Default,
    /// A targeting rule chose the variant.
    TargetingMatch,
    /// A percentage split chose the variant.
    Split,
    /// The flag is disabled (or killed): the caller's default.
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
    /// A split needs a targeting key and the context has none.
    TargetingKeyMissing,
    /// A value in the context could not be parsed for a rule (e.g. not a version).
    ParseError,
    /// Anything else.
    General,
}

/// The result of one evaluation.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct EvaluationDetails<T> {
    /// The flag.
    pub flag_key: String,
    /// The value (the caller's default on error or when disabled).
    pub value: T,
    /// The variant chosen, if one was.
    pub variant: Option<String>,
    /// Why.
    pub reason: Reason,
    /// What failed, when the reason is `Error`.
    pub error_code: Option<ErrorCode>,
    /// A message for humans, when the reason is `Error`.
    pub error_message: Option<String>,
}

/// A context attribute.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AttributeValue {
    /// A boolean.
    Bool(bool),
    /// A number.
    Number(f64),
    /// A string.
    String(String),
}

impl From<&str> for AttributeValue {
    fn from(s: &str) -> Self {
        AttributeValue::String(s.to_string())
    }
}

impl From<f64> for AttributeValue {
    fn from(n: f64) -> Self {
        AttributeValue::Number(n)
    }
}

impl From<bool> for AttributeValue {
    fn from(b: bool) -> Self {
        AttributeValue::Bool(b)
    }
}

/// Who or what a flag is evaluated for.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct EvaluationContext {
    /// The targeting key (a user id, an email): what splits bucket on.
    pub targeting_key: Option<String>,
    /// Other attributes rules may look at.
    pub attributes: BTreeMap<String, AttributeValue>,
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
    pub fn with(mut self, name: impl Into<String>, value: impl Into<AttributeValue>) -> Self {
        self.attributes.insert(name.into(), value.into());
        self
    }

    fn get(&self, name: &str) -> Option<AttributeValue> {
        if name == "targetingKey" {
            return self.targeting_key.clone().map(AttributeValue::String);
        }
        self.attributes.get(name).cloned()
    }
}

/// A comparison for numeric and version conditions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Compare {
    /// `==`
    #[serde(rename = "==")]
    Eq,
    /// `!=`
    #[serde(rename = "!=")]
    Ne,
    /// `<`
    #[serde(rename = "<")]
    Lt,
    /// `<=`
    #[serde(rename = "<=")]
    Le,
    /// `>`
    #[serde(rename = ">")]
    Gt,
    /// `>=`
    #[serde(rename = ">=")]
    Ge,
}

impl Compare {
    fn holds(self, ord: std::cmp::Ordering) -> bool {
        use std::cmp::Ordering::*;
        match self {
            Compare::Eq => ord == Equal,
            Compare::Ne => ord != Equal,
            Compare::Lt => ord == Less,
            Compare::Le => ord != Greater,
            Compare::Gt => ord == Greater,
            Compare::Ge => ord != Less,
        }
    }
}

/// A targeting condition over the context.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// The attribute equals the value.
    Equals {
        /// Attribute name (`targetingKey` for the targeting key).
        attribute: String,
        /// The value.
        value: AttributeValue,
    },
    /// The attribute is one of the values.
    In {
        /// Attribute name.
        attribute: String,
        /// The values.
        values: Vec<AttributeValue>,
    },
    /// The attribute, a number, compares with the value.
    Number {
        /// Attribute name.
        attribute: String,
        /// The comparison.
        op: Compare,
        /// The value.
        value: f64,
    },
    /// The attribute, a semantic version, compares with the version.
    SemVer {
        /// Attribute name.
        attribute: String,
        /// The comparison.
        op: Compare,
        /// The version.
        version: String,
    },
    /// All conditions hold.
    All(Vec<Condition>),
    /// At least one condition holds.
    Any(Vec<Condition>),
    /// The condition does not hold.
    Not(Box<Condition>),
}

impl Condition {
    fn holds(&self, ctx: &EvaluationContext) -> std::result::Result<bool, (ErrorCode, String)> {
        Ok(match self {
            Condition::Equals { attribute, value } => ctx.get(attribute).as_ref() == Some(value),
            Condition::In { attribute, values } => {
                ctx.get(attribute).is_some_and(|v| values.contains(&v))
            }
            Condition::Number {
                attribute,
                op,
                value,
            } => match ctx.get(attribute) {
                Some(AttributeValue::Number(n)) => {
                    n.partial_cmp(value).is_some_and(|o| op.holds(o))
                }
                _ => false,
            },
            Condition::SemVer {
                attribute,
                op,
                version,
            } => match ctx.get(attribute) {
                Some(AttributeValue::String(s)) => {
                    let have = semver::Version::parse(s.trim_start_matches('v')).map_err(|e| {
                        (
                            ErrorCode::ParseError,
                            format!("attribute {attribute} {s:?} is not a version: {e}"),
                        )
                    })?;
                    let want = semver::Version::parse(version.trim_start_matches('v'))
                        .map_err(|e| (ErrorCode::General, e.to_string()))?;
                    op.holds(have.cmp(&want))
                }
                _ => false,
            },
            Condition::All(cs) => {
                for c in cs {
                    if !c.holds(ctx)? {
                        return Ok(false);
                    }
                }
                true
            }
            Condition::Any(cs) => {
                for c in cs {
                    if c.holds(ctx)? {
                        return Ok(true);
                    }
                }
                false
            }
            Condition::Not(c) => !c.holds(ctx)?,
        })
    }

    fn validate(&self, field: &str) -> Result<()> {
        match self {
            Condition::SemVer { version, .. } => {
                semver::Version::parse(version.trim_start_matches('v')).map_err(|e| {
                    Error::invalid(
                        format!("{field}.version"),
                        format!("{version:?} is not a semantic version: {e}"),
                    )
                })?;
            }
            Condition::All(cs) | Condition::Any(cs) => {
                for c in cs {
                    c.validate(field)?;
                }
            }
            Condition::Not(c) => c.validate(field)?,
            _ => {}
        }
        Ok(())
    }
}

/// One targeting rule: when the condition holds (or always, without one), a variant, or a
/// percentage split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// When the rule applies; always without one.
    #[serde(default)]
    pub when: Option<Condition>,
    /// The variant it chooses.
    #[serde(default)]
    pub variant: Option<String>,
    /// Or a split: (variant, weight) pairs, bucketed as flagd's `fractional`.
    #[serde(default)]
    pub fractional: Option<Vec<(String, u32)>>,
}

/// Per-environment changes to a flag.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlagOverride {
    /// Enable or disable the flag in this environment.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Another default variant.
    #[serde(default)]
    pub default_variant: Option<String>,
    /// Other targeting.
    #[serde(default)]
    pub targeting: Option<Vec<Rule>>,
}

/// A flag: typed variants, a default, targeting, per-environment overrides and a kill switch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flag {
    /// Whether it is on (default true). Disabled flags return the caller's default.
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    /// Killed flags are disabled everywhere, whatever the overrides say.
    #[serde(default)]
    pub killed: bool,
    /// Variants by name.
    pub variants: BTreeMap<String, FlagValue>,
    /// The variant when targeting matches nothing.
    pub default_variant: String,
    /// Rules, first match wins.
    #[serde(default)]
    pub targeting: Vec<Rule>,
    /// Changes per environment name.
    #[serde(default)]
    pub environments: BTreeMap<String, FlagOverride>,
}

fn enabled_by_default() -> bool {
    true
}

impl Flag {
    fn validate(&self, key: &str) -> Result<()> {
        let field = format!("flags.{key}");
        let known = |v: &str, f: &str| -> Result<()> {
            if self.variants.contains_key(v) {
                Ok(())
            } else {
                Err(Error::invalid(
                    f.to_string(),
                    format!("variant {v:?} is not one of the flag's variants"),
                ))
            }
        };
        if self.variants.is_empty() {
            return Err(Error::invalid(
                format!("{field}.variants"),
                "a flag needs variants",
            ));
        }
        let kinds: Vec<std::mem::Discriminant<FlagValue>> =
            self.variants.values().map(std::mem::discriminant).collect();
        if kinds.windows(2).any(|w| w[0] != w[1]) {
            return Err(Error::invalid(
                format!("{field}.variants"),
                "all variants of a flag must have the same type",
            ));
        }
        known(&self.default_variant, &format!("{field}.default_variant"))?;
        let rules = |rules: &[Rule], f: &str| -> Result<()> {
            for (i, r) in rules.iter().enumerate() {
                let rf = format!("{f}[{i}]");
                match (&r.variant, &r.fractional) {
                    (Some(v), None) => known(v, &format!("{rf}.variant"))?,
                    (None, Some(split)) => {
                        if split.is_empty()
                            || split.iter().map(|s| u64::from(s.1)).sum::<u64>() == 0
                        {
                            return Err(Error::invalid(
                                format!("{rf}.fractional"),
                                "a split needs variants with weights above 0",
                            ));
                        }
                        for (v, _) in split {
                            known(v, &format!("{rf}.fractional"))?;
                        }
                    }
                    _ => {
                        return Err(Error::invalid(
                            rf,
                            "a rule chooses exactly one of `variant` or `fractional`",
                        ));
                    }
                }
                if let Some(c) = &r.when {
                    c.validate(&format!("{rf}.when"))?;
                }
            }
            Ok(())
        };
        rules(&self.targeting, &format!("{field}.targeting"))?;
        for (env, o) in &self.environments {
            let f = format!("{field}.environments.{env}");
            if let Some(v) = &o.default_variant {
                known(v, &format!("{f}.default_variant"))?;
            }
            if let Some(t) = &o.targeting {
                rules(t, &format!("{f}.targeting"))?;
            }
        }
        Ok(())
    }
}

/// flagd's `fractional` bucketing: the variant for `flag_key` + `targeting_key`.
pub fn fractional<'a>(
    flag_key: &str,
    targeting_key: &str,
    split: &'a [(String, u32)],
) -> Option<&'a str> {
    let mut bytes = Vec::with_capacity(flag_key.len() + targeting_key.len());
    bytes.extend_from_slice(flag_key.as_bytes());
    bytes.extend_from_slice(targeting_key.as_bytes());
    let hash = murmur3::murmur3_32(&mut Cursor::new(&bytes), 0).ok()?;
    let total: u64 = split.iter().map(|(_, w)| u64::from(*w)).sum();
    let bucket = (u64::from(hash) * total) >> 32;
    let mut cumulative = 0u64;
    for (variant, weight) in split {
        cumulative += u64::from(*weight);
        if bucket < cumulative {
            return Some(variant);
        }
    }
    None
}

/// A set of flags, loaded from JSON and evaluated in-process.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FlagSet {
    flags: HashMap<String, Flag>,
}

type Outcome<'a> =
    std::result::Result<(&'a str, &'a FlagValue, Reason), (Reason, Option<ErrorCode>, String)>;

impl FlagSet {
    /// Flags from a JSON object of flag key → flag. Unknown fields, unknown variants, mixed
    /// variant types and invalid versions are errors naming the field.
    pub fn from_json(json: &str) -> Result<Self> {
        let flags: HashMap<String, Flag> = serde_json::from_str(json).map_err(|e| {
            Error::invalid(
                "flags",
                format!("line {}, column {}: {e}", e.line(), e.column()),
            )
        })?;
        for (key, flag) in &flags {
            flag.validate(key)?;
        }
        Ok(FlagSet { flags })
    }

    /// Add or replace a flag.
    pub fn insert(&mut self, key: impl Into<String>, flag: Flag) -> Result<()> {
        let key = key.into();
        flag.validate(&key)?;
        self.flags.insert(key, flag);
        Ok(())
    }

    /// Kill a flag everywhere at once (or revive it). Returns whether the flag exists.
    pub fn kill(&mut self, key: &str, killed: bool) -> bool {
        self.flags.get_mut(key).map(|f| f.killed = killed).is_some()
    }

    fn resolve<'a>(
        &'a self,
        key: &str,
        ctx: &EvaluationContext,
        environment: Option<&str>,
    ) -> Outcome<'a> {
        let Some(flag) = self.flags.get(key) else {
            return Err((
                Reason::Error,
                Some(ErrorCode::FlagNotFound),
                format!("flag {key} not found"),
            ));
        };
        let o = environment.and_then(|e| flag.environments.get(e));
        let enabled = o.and_then(|o| o.enabled).unwrap_or(flag.enabled);
        if flag.killed || !enabled {
            return Err((Reason::Disabled, None, String::new()));
        }
        let default = o
            .and_then(|o| o.default_variant.as_deref())
            .unwrap_or(&flag.default_variant);
        let rules = o
            .and_then(|o| o.targeting.as_deref())
            .unwrap_or(&flag.targeting);
        let pick = |v: &'a str| {
            flag.variants
                .get_key_value(v)
                .map(|(k, val)| (k.as_str(), val))
        };
        if rules.is_empty() {
            return pick(default)
                .map(|(k, v)| (k, v, Reason::Static))
                .ok_or_else(general);
        }
        for rule in rules {
            let applies = match &rule.when {
                None => true,
                Some(c) => c
                    .holds(ctx)
                    .map_err(|(code, msg)| (Reason::Error, Some(code), msg))?,
            };
            if !applies {
                continue;
            }
            if let Some(split) = &rule.fractional {
                let Some(tk) = &ctx.targeting_key else {
                    return Err((
                        Reason::Error,
                        Some(ErrorCode::TargetingKeyMissing),
                        format!("flag {key} splits by targeting key and the context has none"),
                    ));
                };
                let variant = fractional(key, tk, split).ok_or_else(general)?;
                return pick(variant)
                    .map(|(k, v)| (k, v, Reason::Split))
                    .ok_or_else(general);
            }
            if let Some(v) = &rule.variant {
                return pick(v)
                    .map(|(k, v)| (k, v, Reason::TargetingMatch))
                    .ok_or_else(general);
            }
        }
        pick(default)
            .map(|(k, v)| (k, v, Reason::Default))
            .ok_or_else(general)
    }

    fn evaluate<T: Clone>(
        &self,
        key: &str,
        default: T,
        ctx: &EvaluationContext,
        environment: Option<&str>,
        cast: impl Fn(&FlagValue) -> Option<T>,
    ) -> EvaluationDetails<T> {
        let fail = |reason, code, message: String| EvaluationDetails {
            flag_key: key.to_string(),
            value: default.clone(),
            variant: None,
            reason,
            error_code: code,
            error_message: (!message.is_empty()).then_some(message),
        };
        match self.resolve(key, ctx, environment) {
            Ok((variant, value, reason)) => match cast(value) {
                Some(v) => EvaluationDetails {
                    flag_key: key.to_string(),
                    value: v,
                    variant: Some(variant.to_string()),
                    reason,
                    error_code: None,
                    error_message: None,
                },
                None => fail(
                    Reason::Error,
                    Some(ErrorCode::TypeMismatch),
                    format!("flag {key} variant {variant} is not of the requested type"),
                ),
            },
            Err((reason, code, message)) => fail(reason, code, message),
        }
    }

    /// Evaluate a boolean flag.
    pub fn boolean(
        &self,
        key: &str,
        default: bool,
        ctx: &EvaluationContext,
        environment: Option<&str>,
    ) -> EvaluationDetails<bool> {
        self.evaluate(key, default, ctx, environment, |v| match v {
            FlagValue::Bool(b) => Some(*b),
            _ => None,
        })
    }

    /// Evaluate a string flag.
    pub fn string(
        &self,
        key: &str,
        default: &str,
        ctx: &EvaluationContext,
        environment: Option<&str>,
    ) -> EvaluationDetails<String> {
        self.evaluate(key, default.to_string(), ctx, environment, |v| match v {
            FlagValue::String(s) => Some(s.clone()),
            _ => None,
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
        self.evaluate(key, default, ctx, environment, |v| match v {
            FlagValue::Number(n) => Some(*n),
            _ => None,
        })
    }

    /// Evaluate a JSON (object or array) flag.
    pub fn json(
        &self,
        key: &str,
        default: serde_json::Value,
        ctx: &EvaluationContext,
        environment: Option<&str>,
    ) -> EvaluationDetails<serde_json::Value> {
        self.evaluate(key, default, ctx, environment, |v| match v {
            FlagValue::Json(j) => Some(j.clone()),
            _ => None,
        })
    }
}

fn general() -> (Reason, Option<ErrorCode>, String) {
    (
        Reason::Error,
        Some(ErrorCode::General),
        "flag definition is inconsistent".into(),
    )
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
            ErrorCode::TargetingKeyMissing => "TARGETING_KEY_MISSING",
            ErrorCode::ParseError => "PARSE_ERROR",
            ErrorCode::General => "GENERAL",
        };
        f.write_str(s)
    }
}
