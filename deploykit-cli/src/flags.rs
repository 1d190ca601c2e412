//! `deploykit flags eval`: evaluate one feature flag from the configuration's flags (the
//! flagd file `flags = "..."` names, or the inline `[flags]` table) for a context, as an
//! application would, and print value, variant and reason.

use std::process::ExitCode;

use clap::Subcommand;
use deploykit_core::{Error, Result};
use deploykit_flags::{EvaluationContext, Reason};
use serde_json::{Map, Value, json};

use crate::Output;
use crate::context::Context;

/// `deploykit flags ...`.
#[derive(Subcommand, Debug)]
pub(crate) enum FlagsAction {
    /// Evaluate one flag: its value, variant and reason (exit 1 if evaluation failed).
    Eval {
        /// The flag's key.
        key: String,
        /// A context attribute, `KEY=VALUE` (repeatable). VALUE is read as JSON when it is
        /// JSON (`42`, `true`, `"42"`, `["a"]`), else as a string; a dotted KEY
        /// (`user.email=ana@example.com`) makes a nested attribute.
        #[arg(long = "context", value_name = "KEY=VALUE")]
        context: Vec<String>,
        /// The targeting key (a user id, an email): what splits bucket on.
        #[arg(long)]
        targeting_key: Option<String>,
        /// Apply this environment's changes to the flag (default: the flag as defined,
        /// without any environment's changes).
        #[arg(long, short)]
        env: Option<String>,
    },
}

/// Run a `flags` command.
pub(crate) fn run(ctx: &Context, action: FlagsAction) -> Result<ExitCode> {
    match action {
        FlagsAction::Eval {
            key,
            context,
            targeting_key,
            env,
        } => eval(ctx, &key, &context, targeting_key, env.as_deref()),
    }
}

/// `KEY=VALUE` pairs as an evaluation context.
fn evaluation_context(
    pairs: &[String],
    targeting_key: Option<String>,
) -> Result<EvaluationContext> {
    let mut attributes = Map::new();
    for pair in pairs {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(Error::invalid(
                "--context",
                format!("{pair:?} is not KEY=VALUE"),
            ));
        };
        let value = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_string()));
        let parts: Vec<&str> = k.split('.').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(Error::invalid(
                "--context",
                format!("{k:?} is not an attribute name (like `plan` or `user.email`)"),
            ));
        }
        insert(&mut attributes, &parts, value).map_err(|prefix| {
            Error::invalid(
                "--context",
                format!("{k}: {prefix} is given both as a value and as an object"),
            )
        })?;
    }
    let mut ctx = match targeting_key {
        Some(k) => EvaluationContext::new(k),
        None => EvaluationContext::default(),
    };
    for (k, v) in attributes {
        ctx = ctx.with(k, v);
    }
    Ok(ctx)
}

/// Set `parts` (a dotted path) to `value`; `Err(prefix)` where a value is in the way.
fn insert(
    map: &mut Map<String, Value>,
    parts: &[&str],
    value: Value,
) -> std::result::Result<(), String> {
    match parts {
        [] => Ok(()),
        [last] => {
            // A later plain value replaces an earlier one; it does not replace an object
            // other pairs built (`user.email=…` then `user=…`).
            if map.get(*last).is_some_and(Value::is_object) {
                return Err((*last).to_string());
            }
            map.insert((*last).to_string(), value);
            Ok(())
        }
        [first, rest @ ..] => {
            let entry = map
                .entry((*first).to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            match entry {
                Value::Object(inner) => {
                    insert(inner, rest, value).map_err(|p| format!("{first}.{p}"))
                }
                _ => Err((*first).to_string()),
            }
        }
    }
}

fn eval(
    ctx: &Context,
    key: &str,
    pairs: &[String],
    targeting_key: Option<String>,
    env: Option<&str>,
) -> Result<ExitCode> {
    let flags = ctx.config()?.flags().ok_or_else(|| {
        Error::invalid(
            "flags",
            "the configuration defines no flags: add `flags = \"flags.json\"` (a flagd flag \
             file) or a [flags] table",
        )
    })?;
    if let Some(env) = env {
        ctx.environment(Some(env))?;
    }
    let evaluation = evaluation_context(pairs, targeting_key)?;
    let d = flags.resolve(key, &evaluation, env);
    match ctx.output {
        Output::Json => crate::outln!(
            "{}",
            json!({
                "flag": key,
                "environment": env,
                "value": d.value,
                "variant": d.variant,
                "reason": d.reason.to_string(),
                "error_code": d.error_code.map(|c| c.to_string()),
                "error_message": d.error_message,
                "metadata": d.flag_metadata,
            })
        ),
        Output::Text => {
            let value = match &d.value {
                Some(v) => v.to_string(),
                None => "(none: the caller's default applies)".to_string(),
            };
            crate::outln!("{key} = {value}");
            crate::outln!("  variant  {}", d.variant.as_deref().unwrap_or("-"));
            crate::outln!("  reason   {}", d.reason);
            if let Some(code) = d.error_code {
                crate::outln!(
                    "  error    {code}: {}",
                    d.error_message.as_deref().unwrap_or("")
                );
            }
        }
    }
    Ok(if d.reason == Reason::Error {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_pairs_nest_and_read_json() {
        let pairs: Vec<String> = [
            "plan=internal",
            "age=42",
            "user.email=a@b",
            "user.vip=true",
            "id=\"7\"",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let ctx = evaluation_context(&pairs, Some("k".into())).unwrap();
        assert_eq!(ctx.targeting_key.as_deref(), Some("k"));
        assert_eq!(ctx.attributes["plan"], json!("internal"));
        assert_eq!(ctx.attributes["age"], json!(42));
        assert_eq!(ctx.attributes["user"], json!({"email": "a@b", "vip": true}));
        assert_eq!(ctx.attributes["id"], json!("7"));
        for bad in ["noequals", "user=1", ".x=1"] {
            let pairs = vec!["user.email=a".to_string(), bad.to_string()];
            assert!(evaluation_context(&pairs, None).is_err(), "{bad}");
        }
    }
}
