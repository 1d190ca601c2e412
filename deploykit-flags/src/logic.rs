//! flagd's targeting language: JSON Logic plus flagd's `fractional`, `sem_ver`, `starts_with`
//! and `ends_with`, and `$ref` to shared evaluators.
//!
//! A rule is compiled once, when the file loads, into an [`Expr`]; everything that is wrong
//! whatever the context (an unknown operation, a wrong number of arguments, a `$ref` to
//! nothing, a split whose weights overflow, a literal variant the flag does not have) is
//! refused there, with the field's path. Evaluation cannot fail: as in JSON Logic and flagd,
//! an operation given values it cannot use yields `null`, which makes the flag fall back to
//! its default variant.
//!
//! Coercions follow the Go implementation flagd runs (`==` compares two strings as strings and
//! anything else as numbers; `null` equals only `null`; `<` compares two strings lexically and
//! anything else as numbers), except that `cat` does not trim its result and renders `true`
//! and `false` instead of failing.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::semver::{self, SemVerOp};
use super::{EvaluationContext, index, key};
use deploykit_core::{Error, Result};

/// The deepest nesting a rule may have: deeper rules are refused, so neither compiling nor
/// evaluating one can exhaust the stack.
pub(crate) const MAX_DEPTH: usize = 64;

/// flagd's limit on a split's total weight (and so on each weight): `i32::MAX`.
pub(crate) const MAX_TOTAL_WEIGHT: u64 = i32::MAX as u64;

/// The operations a rule may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    If,
    Ternary,
    Eq,
    StrictEq,
    Ne,
    StrictNe,
    Not,
    NotNot,
    Or,
    And,
    Gt,
    Ge,
    Lt,
    Le,
    Max,
    Min,
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    In,
    Cat,
    Substr,
    Merge,
    Var,
    Missing,
    MissingSome,
    All,
    None,
    Some,
    Map,
    Filter,
    Reduce,
    Fractional,
    SemVer,
    StartsWith,
    EndsWith,
}

const OPS: [Op; 38] = [
    Op::If,
    Op::Ternary,
    Op::Eq,
    Op::StrictEq,
    Op::Ne,
    Op::StrictNe,
    Op::Not,
    Op::NotNot,
    Op::Or,
    Op::And,
    Op::Gt,
    Op::Ge,
    Op::Lt,
    Op::Le,
    Op::Max,
    Op::Min,
    Op::Add,
    Op::Sub,
    Op::Mul,
    Op::Div,
    Op::Mod,
    Op::In,
    Op::Cat,
    Op::Substr,
    Op::Merge,
    Op::Var,
    Op::Missing,
    Op::MissingSome,
    Op::All,
    Op::None,
    Op::Some,
    Op::Map,
    Op::Filter,
    Op::Reduce,
    Op::Fractional,
    Op::SemVer,
    Op::StartsWith,
    Op::EndsWith,
];

impl Op {
    /// The operation's name in a rule.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Op::If => "if",
            Op::Ternary => "?:",
            Op::Eq => "==",
            Op::StrictEq => "===",
            Op::Ne => "!=",
            Op::StrictNe => "!==",
            Op::Not => "!",
            Op::NotNot => "!!",
            Op::Or => "or",
            Op::And => "and",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Max => "max",
            Op::Min => "min",
            Op::Add => "+",
            Op::Sub => "-",
            Op::Mul => "*",
            Op::Div => "/",
            Op::Mod => "%",
            Op::In => "in",
            Op::Cat => "cat",
            Op::Substr => "substr",
            Op::Merge => "merge",
            Op::Var => "var",
            Op::Missing => "missing",
            Op::MissingSome => "missing_some",
            Op::All => "all",
            Op::None => "none",
            Op::Some => "some",
            Op::Map => "map",
            Op::Filter => "filter",
            Op::Reduce => "reduce",
            Op::Fractional => "fractional",
            Op::SemVer => "sem_ver",
            Op::StartsWith => "starts_with",
            Op::EndsWith => "ends_with",
        }
    }

    fn parse(name: &str) -> Option<Op> {
        OPS.into_iter().find(|op| op.name() == name)
    }

    /// Operations whose result is always `true`, `false` or `null`.
    fn is_boolean(self) -> bool {
        matches!(
            self,
            Op::Eq
                | Op::StrictEq
                | Op::Ne
                | Op::StrictNe
                | Op::Not
                | Op::NotNot
                | Op::Gt
                | Op::Ge
                | Op::Lt
                | Op::Le
                | Op::In
                | Op::All
                | Op::None
                | Op::Some
                | Op::SemVer
                | Op::StartsWith
                | Op::EndsWith
        )
    }
}

/// A compiled rule.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Expr {
    /// `null`, a boolean, a number or a string.
    Literal(Value),
    /// An array, whose elements are rules.
    Array(Vec<Expr>),
    /// An operation. `wrapped` is false when the file gave its one argument without an array
    /// (`{"var": "email"}`), so it is saved the same way.
    Op {
        op: Op,
        args: Vec<Expr>,
        wrapped: bool,
    },
    /// `{"$ref": name}`: a shared evaluator, compiled once.
    Ref(String, Arc<Expr>),
}

/// Compiles rules. Shared evaluators are compiled with `evaluators: None`: flagd does not
/// support a `$ref` inside one.
pub(crate) struct Compiler<'a> {
    pub(crate) evaluators: Option<&'a BTreeMap<String, Arc<Expr>>>,
}

fn arg_path(at: &str, i: usize, wrapped: bool) -> String {
    if wrapped {
        index(at, i)
    } else {
        at.to_string()
    }
}

impl Compiler<'_> {
    /// Compile the rule `v` found at `path`.
    pub(crate) fn compile(&self, v: &Value, path: &str) -> Result<Expr> {
        self.expr(v, path, 0)
    }

    fn expr(&self, v: &Value, path: &str, depth: usize) -> Result<Expr> {
        if depth > MAX_DEPTH {
            return Err(Error::invalid(
                path,
                format!("the rule is nested deeper than {MAX_DEPTH} levels"),
            ));
        }
        match v {
            Value::Array(items) => Ok(Expr::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, x)| self.expr(x, &index(path, i), depth + 1))
                    .collect::<Result<_>>()?,
            )),
            Value::Object(map) => self.operation(map, path, depth),
            scalar => Ok(Expr::Literal(scalar.clone())),
        }
    }

    fn operation(&self, map: &Map<String, Value>, path: &str, depth: usize) -> Result<Expr> {
        let mut entries = map.iter();
        let (Some((name, raw)), None) = (entries.next(), entries.next()) else {
            let keys: Vec<&String> = map.keys().collect();
            return Err(Error::invalid(
                path,
                if keys.is_empty() {
                    "an empty object is not an operation".to_string()
                } else {
                    format!("an operation is an object with one key, found {keys:?}")
                },
            ));
        };
        let at = key(path, name);
        if name == "$ref" {
            let Value::String(target) = raw else {
                return Err(Error::invalid(
                    at,
                    "a reference names a shared evaluator: {\"$ref\": \"name\"}",
                ));
            };
            let Some(evaluators) = self.evaluators else {
                return Err(Error::invalid(
                    at,
                    "a shared evaluator cannot refer to another (flagd does not support nested $ref)",
                ));
            };
            let Some(expr) = evaluators.get(target) else {
                return Err(Error::invalid(
                    at,
                    format!("there is no shared evaluator {target:?} in $evaluators"),
                ));
            };
            return Ok(Expr::Ref(target.clone(), expr.clone()));
        }
        let Some(op) = Op::parse(name) else {
            let known: Vec<&str> = OPS.iter().map(|o| o.name()).collect();
            return Err(Error::invalid(
                at,
                format!("unknown operation {name:?}; known: {}", known.join(" ")),
            ));
        };
        let (args, wrapped) = match raw {
            Value::Array(items) => (
                items
                    .iter()
                    .enumerate()
                    .map(|(i, x)| self.expr(x, &index(&at, i), depth + 1))
                    .collect::<Result<Vec<_>>>()?,
                true,
            ),
            single => (vec![self.expr(single, &at, depth + 1)?], false),
        };
        check(op, &args, &at, wrapped)?;
        Ok(Expr::Op { op, args, wrapped })
    }
}

/// What must hold of an operation's arguments whatever the context.
fn check(op: Op, args: &[Expr], at: &str, wrapped: bool) -> Result<()> {
    let arity = |min: usize, max: usize| -> Result<()> {
        if (min..=max).contains(&args.len()) {
            return Ok(());
        }
        let expected = if min == max {
            min.to_string()
        } else {
            format!("{min} to {max}")
        };
        Err(Error::invalid(
            at,
            format!(
                "`{}` takes {expected} arguments, found {}",
                op.name(),
                args.len()
            ),
        ))
    };
    let literal_string = |i: usize, what: &str| -> Result<()> {
        match args.get(i) {
            Some(Expr::Literal(v)) if !v.is_string() => Err(Error::invalid(
                arg_path(at, i, wrapped),
                format!("{what} is a string, found {v}"),
            )),
            _ => Ok(()),
        }
    };
    match op {
        Op::Eq | Op::StrictEq | Op::Ne | Op::StrictNe | Op::In | Op::Div | Op::Mod => arity(2, 2),
        Op::Lt | Op::Le | Op::Gt | Op::Ge => arity(2, 3),
        Op::Sub => arity(1, 2),
        Op::Substr => arity(2, 3),
        Op::MissingSome | Op::All | Op::None | Op::Some | Op::Map | Op::Filter => arity(2, 2),
        Op::Reduce => arity(2, 3),
        Op::Var => {
            arity(0, 2)?;
            match args.first() {
                Some(Expr::Literal(Value::Bool(_))) | Some(Expr::Array(_)) => Err(Error::invalid(
                    arg_path(at, 0, wrapped),
                    "a variable is named by a string like \"user.email\"",
                )),
                _ => Ok(()),
            }
        }
        Op::StartsWith | Op::EndsWith => {
            arity(2, 2)?;
            literal_string(0, "the value")?;
            literal_string(1, "the affix")
        }
        Op::SemVer => {
            arity(3, 3)?;
            if let Some(Expr::Literal(v)) = args.get(1)
                && v.as_str().and_then(SemVerOp::parse).is_none()
            {
                return Err(Error::invalid(
                    arg_path(at, 1, wrapped),
                    format!("{v} is not a sem_ver operator (= != < <= > >= ^ ~)"),
                ));
            }
            for i in [0, 2] {
                if let Some(Expr::Literal(v)) = args.get(i)
                    && version_text(v).is_none()
                {
                    return Err(Error::invalid(
                        arg_path(at, i, wrapped),
                        format!("{v} is not a semantic version"),
                    ));
                }
            }
            Ok(())
        }
        Op::Fractional => check_fractional(args, at, wrapped),
        _ => Ok(()),
    }
}

/// Where a split's buckets start: after the bucketing expression, if the first argument is
/// one (a bucket is an array).
fn buckets_start(args: &[Expr]) -> usize {
    match args.first() {
        Some(Expr::Array(_)) | None => 0,
        Some(_) => 1,
    }
}

fn check_fractional(args: &[Expr], at: &str, wrapped: bool) -> Result<()> {
    if let Some(Expr::Literal(v @ (Value::Bool(_) | Value::Number(_)))) = args.first() {
        return Err(Error::invalid(
            arg_path(at, 0, wrapped),
            format!(
                "{v}: the first element of `fractional` is a bucket [variant, weight] or a \
                 bucketing expression that yields a string"
            ),
        ));
    }
    let start = buckets_start(args);
    if args.len() == start {
        return Err(Error::invalid(
            at,
            "`fractional` needs at least one bucket [variant, weight]",
        ));
    }
    // Only literal weights are known before evaluation; their total is checked here, and
    // computed ones when they are computed.
    let mut total: u128 = 0;
    for (i, bucket) in args.iter().enumerate().skip(start) {
        let here = arg_path(at, i, wrapped);
        let items = match bucket {
            Expr::Array(items) => items,
            Expr::Literal(v) => {
                return Err(Error::invalid(
                    here,
                    format!("{v}: a bucket is [variant, weight] or [variant]"),
                ));
            }
            _ => continue,
        };
        if items.is_empty() {
            return Err(Error::invalid(
                here,
                "a bucket names its variant: [variant, weight]",
            ));
        }
        let weight = match items.get(1) {
            None | Some(Expr::Literal(Value::Null)) => 1,
            Some(Expr::Literal(Value::Number(n))) => match literal_weight(n) {
                Ok(w) => w,
                Err(reason) => return Err(Error::invalid(index(&here, 1), reason)),
            },
            Some(Expr::Literal(other)) => {
                return Err(Error::invalid(
                    index(&here, 1),
                    format!("{other}: a weight is a whole number"),
                ));
            }
            Some(_) => continue,
        };
        total += u128::from(weight);
        if total > u128::from(MAX_TOTAL_WEIGHT) {
            return Err(Error::invalid(
                here,
                format!(
                    "the split's weights add up to {total} here, above flagd's limit of \
                     {MAX_TOTAL_WEIGHT}"
                ),
            ));
        }
    }
    Ok(())
}

/// A literal weight: a whole number up to the limit; negative weights count as 0 (flagd
/// clamps them).
fn literal_weight(n: &serde_json::Number) -> std::result::Result<u64, String> {
    match weight(n.as_f64().unwrap_or(f64::NAN)) {
        Weight::Ok(w) => Ok(w),
        Weight::NotWhole => Err(format!("{n}: a weight is a whole number")),
        Weight::TooLarge => Err(format!(
            "weight {n} is above flagd's limit of {MAX_TOTAL_WEIGHT}"
        )),
    }
}

enum Weight {
    Ok(u64),
    NotWhole,
    TooLarge,
}

fn weight(w: f64) -> Weight {
    if !w.is_finite() || w.fract() != 0.0 {
        Weight::NotWhole
    } else if w > MAX_TOTAL_WEIGHT as f64 {
        Weight::TooLarge
    } else if w <= 0.0 {
        Weight::Ok(0)
    } else {
        // Whole, positive and at most i32::MAX: exact.
        Weight::Ok(w as u64)
    }
}

/// The variant a targeting result names: strings as they are, booleans as `"true"` and
/// `"false"`, numbers as text; `None` for `null`; `Err` for arrays and objects.
pub(crate) fn variant_name(v: &Value) -> std::result::Result<Option<String>, ()> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        Value::Bool(b) => Ok(Some(b.to_string())),
        Value::Number(n) => Ok(Some(number_text(n.as_f64().unwrap_or(f64::NAN)))),
        Value::Array(_) | Value::Object(_) => Err(()),
    }
}

/// Check what a rule in result position can yield: literal variant names must be variants;
/// operations that yield booleans need variants `"true"` and `"false"`.
pub(crate) fn check_results(
    e: &Expr,
    variants: &BTreeMap<String, Value>,
    path: &str,
) -> Result<()> {
    let known = |name: &str, at: &str| -> Result<()> {
        if variants.contains_key(name) {
            Ok(())
        } else {
            let names: Vec<&String> = variants.keys().collect();
            Err(Error::invalid(
                at,
                format!(
                    "the rule yields {name:?}, which is not one of the flag's variants {names:?}"
                ),
            ))
        }
    };
    match e {
        Expr::Literal(v) => match variant_name(v) {
            Ok(Some(name)) => known(&name, path),
            _ => Ok(()),
        },
        Expr::Array(_) => Err(Error::invalid(
            path,
            "the rule yields an array, not the name of a variant",
        )),
        Expr::Ref(name, inner) => check_results(inner, variants, path).map_err(|e| match e {
            Error::InvalidSpec { field, reason } => Error::invalid(
                field,
                format!("through shared evaluator {name:?}: {reason}"),
            ),
            other => other,
        }),
        Expr::Op { op, args, wrapped } => {
            let at = key(path, op.name());
            match op {
                Op::If | Op::Ternary => {
                    for (i, branch) in args.iter().enumerate() {
                        let is_result = i % 2 == 1 || i + 1 == args.len();
                        if is_result {
                            check_results(branch, variants, &arg_path(&at, i, *wrapped))?;
                        }
                    }
                    Ok(())
                }
                // `or` and `and` yield an operand before the last only when it is truthy (or
                // falsy): only the last one is always a possible result.
                Op::Or | Op::And => match args.len() {
                    0 => Ok(()),
                    n => check_results(&args[n - 1], variants, &arg_path(&at, n - 1, *wrapped)),
                },
                Op::Fractional => {
                    for (i, bucket) in args.iter().enumerate().skip(buckets_start(args)) {
                        if let Expr::Array(items) = bucket
                            && let Some(first) = items.first()
                        {
                            let bucket_at = arg_path(&at, i, *wrapped);
                            check_results(first, variants, &index(&bucket_at, 0))?;
                        }
                    }
                    Ok(())
                }
                op if op.is_boolean() => {
                    for name in ["true", "false"] {
                        if !variants.contains_key(name) {
                            return Err(Error::invalid(
                                path,
                                format!(
                                    "`{}` yields true or false here, so the flag needs variants \
                                     named \"true\" and \"false\"",
                                    op.name()
                                ),
                            ));
                        }
                    }
                    Ok(())
                }
                _ => Ok(()),
            }
        }
    }
}

/// The rule as JSON, as it was written.
pub(crate) fn to_json(e: &Expr) -> Value {
    match e {
        Expr::Literal(v) => v.clone(),
        Expr::Array(items) => Value::Array(items.iter().map(to_json).collect()),
        Expr::Ref(name, _) => {
            let mut m = Map::new();
            m.insert("$ref".into(), Value::String(name.clone()));
            Value::Object(m)
        }
        Expr::Op { op, args, wrapped } => {
            let args = match (wrapped, args.as_slice()) {
                (false, [single]) => to_json(single),
                _ => Value::Array(args.iter().map(to_json).collect()),
            };
            let mut m = Map::new();
            m.insert(op.name().into(), args);
            Value::Object(m)
        }
    }
}

/// What a rule is evaluated against.
pub(crate) struct Env<'a> {
    /// The flag being evaluated (`$flagd.flagKey`).
    pub(crate) flag_key: &'a str,
    /// The caller's context.
    pub(crate) ctx: &'a EvaluationContext,
    /// Seconds since the Unix epoch (`$flagd.timestamp`).
    pub(crate) timestamp: i64,
}

/// The data `var` reads: the evaluation context, or an element inside `map`, `filter`,
/// `reduce`, `all`, `some` and `none`.
#[derive(Clone, Copy)]
enum Data<'a> {
    Root,
    Item(&'a Value),
}

impl Env<'_> {
    fn flagd(&self) -> Value {
        let mut m = Map::new();
        m.insert("flagKey".into(), Value::String(self.flag_key.to_string()));
        m.insert("timestamp".into(), Value::from(self.timestamp));
        Value::Object(m)
    }

    fn root(&self) -> Value {
        let mut m: Map<String, Value> = self
            .ctx
            .attributes
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if let Some(tk) = &self.ctx.targeting_key {
            m.insert("targetingKey".into(), Value::String(tk.clone()));
        }
        m.insert("$flagd".into(), self.flagd());
        Value::Object(m)
    }

    /// `var`: a dotted path into the data; `None` when absent or `null`.
    fn lookup(&self, data: Data<'_>, path: &str) -> Option<Value> {
        let mut parts = path.split('.').filter(|p| !p.is_empty());
        match data {
            Data::Item(v) => walk(v, parts).cloned(),
            Data::Root => {
                let Some(head) = parts.next() else {
                    return Some(self.root());
                };
                let start = match head {
                    "$flagd" => self.flagd(),
                    "targetingKey" if self.ctx.targeting_key.is_some() => {
                        Value::String(self.ctx.targeting_key.clone().unwrap_or_default())
                    }
                    other => return walk(self.ctx.attributes.get(other)?, parts).cloned(),
                };
                walk(&start, parts).cloned()
            }
        }
    }
}

fn walk<'v, 'p>(mut v: &'v Value, parts: impl Iterator<Item = &'p str>) -> Option<&'v Value> {
    for part in parts {
        v = match v {
            Value::Object(m) => m.get(part)?,
            Value::Array(items) => items.get(part.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    (!v.is_null()).then_some(v)
}

/// Evaluate a targeting rule: what it yields, and whether that came straight out of a
/// `fractional` split (the reason is then `SPLIT`).
pub(crate) fn evaluate(e: &Expr, env: &Env<'_>) -> (Value, bool) {
    match e {
        Expr::Op {
            op: Op::If | Op::Ternary,
            args,
            ..
        } => {
            let mut i = 0;
            while i + 1 < args.len() {
                if truthy(&eval(&args[i], Data::Root, env)) {
                    return evaluate(&args[i + 1], env);
                }
                i += 2;
            }
            match args.len() % 2 {
                1 => args
                    .last()
                    .map_or((Value::Null, false), |e| evaluate(e, env)),
                _ => (Value::Null, false),
            }
        }
        Expr::Op {
            op: Op::Fractional, ..
        } => (eval(e, Data::Root, env), true),
        Expr::Ref(_, inner) => evaluate(inner, env),
        other => (eval(other, Data::Root, env), false),
    }
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(m) => !m.is_empty(),
    }
}

fn to_number(v: &Value) -> f64 {
    match v {
        Value::Null => 0.0,
        Value::Bool(b) => f64::from(u8::from(*b)),
        Value::Number(n) => n.as_f64().unwrap_or(f64::NAN),
        Value::String(s) if s.trim().is_empty() => 0.0,
        Value::String(s) => s.trim().parse().unwrap_or(f64::NAN),
        Value::Array(_) | Value::Object(_) => f64::NAN,
    }
}

/// A number as text: the shortest decimal that reads back the same, without an exponent
/// (`1`, `0.5`, `1000000000000000000000`).
pub(crate) fn number_text(f: f64) -> String {
    format!("{f}")
}

fn to_text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => number_text(n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(to_text).collect::<Vec<_>>().join(","),
        Value::Object(_) => "[object Object]".into(),
    }
}

fn loose_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Null, _) | (_, Value::Null) => a.is_null() && b.is_null(),
        (Value::String(x), Value::String(y)) => x == y,
        _ => to_number(a) == to_number(b),
    }
}

fn strict_eq(a: &Value, b: &Value) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b) && loose_eq(a, b)
}

fn less(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::String(x), Value::String(y)) => x < y,
        _ => to_number(a) < to_number(b),
    }
}

fn less_eq(a: &Value, b: &Value) -> bool {
    less(a, b) || loose_eq(a, b)
}

fn number(f: f64) -> Value {
    // Not finite (a division by zero): `null`, as JSON has no such number.
    Value::from(f)
}

/// A version as `sem_ver` reads a value: strings and numbers, normalised.
fn version_text(v: &Value) -> Option<String> {
    let text = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => number_text(n.as_f64()?),
        _ => return None,
    };
    let normalised = semver::normalise(&text);
    semver::parse(&normalised).is_some().then_some(normalised)
}

fn eval(e: &Expr, data: Data<'_>, env: &Env<'_>) -> Value {
    match e {
        Expr::Literal(v) => v.clone(),
        Expr::Array(items) => Value::Array(items.iter().map(|x| eval(x, data, env)).collect()),
        Expr::Ref(_, inner) => eval(inner, data, env),
        Expr::Op { op, args, .. } => operate(*op, args, data, env),
    }
}

fn operate(op: Op, args: &[Expr], data: Data<'_>, env: &Env<'_>) -> Value {
    let arg = |i: usize| args.get(i).map_or(Value::Null, |e| eval(e, data, env));
    let all = || args.iter().map(|e| eval(e, data, env)).collect::<Vec<_>>();
    match op {
        Op::If | Op::Ternary => {
            let mut i = 0;
            while i + 1 < args.len() {
                if truthy(&arg(i)) {
                    return arg(i + 1);
                }
                i += 2;
            }
            if args.len() % 2 == 1 {
                arg(args.len() - 1)
            } else {
                Value::Null
            }
        }
        Op::Eq => Value::Bool(loose_eq(&arg(0), &arg(1))),
        Op::Ne => Value::Bool(!loose_eq(&arg(0), &arg(1))),
        Op::StrictEq => Value::Bool(strict_eq(&arg(0), &arg(1))),
        Op::StrictNe => Value::Bool(!strict_eq(&arg(0), &arg(1))),
        Op::Not => Value::Bool(!truthy(&arg(0))),
        Op::NotNot => Value::Bool(truthy(&arg(0))),
        Op::Or | Op::And => {
            let mut last = Value::Null;
            for e in args {
                last = eval(e, data, env);
                if truthy(&last) == (op == Op::Or) {
                    return last;
                }
            }
            last
        }
        Op::Lt | Op::Le | Op::Gt | Op::Ge => {
            let v = all();
            let cmp = |a: &Value, b: &Value| match op {
                Op::Lt => less(a, b),
                Op::Le => less_eq(a, b),
                Op::Gt => less(b, a),
                _ => less_eq(b, a),
            };
            Value::Bool(v.windows(2).all(|w| cmp(&w[0], &w[1])))
        }
        Op::Max | Op::Min => {
            let v: Vec<f64> = all().iter().map(to_number).collect();
            if v.is_empty() || v.iter().any(|f| f.is_nan()) {
                return Value::Null;
            }
            let pick = if op == Op::Max { f64::max } else { f64::min };
            number(v.into_iter().reduce(pick).unwrap_or(f64::NAN))
        }
        Op::Add => number(all().iter().map(to_number).sum()),
        Op::Mul => number(all().iter().map(to_number).product()),
        Op::Sub => match args.len() {
            1 => number(-to_number(&arg(0))),
            _ => number(to_number(&arg(0)) - to_number(&arg(1))),
        },
        Op::Div => number(to_number(&arg(0)) / to_number(&arg(1))),
        Op::Mod => number(to_number(&arg(0)) % to_number(&arg(1))),
        Op::In => {
            let (needle, hay) = (arg(0), arg(1));
            Value::Bool(match &hay {
                Value::String(s) => s.contains(&to_text(&needle)),
                Value::Array(items) => items.iter().any(|x| strict_eq(&needle, x)),
                _ => false,
            })
        }
        Op::Cat => Value::String(all().iter().map(to_text).collect()),
        Op::Substr => {
            let chars: Vec<char> = to_text(&arg(0)).chars().collect();
            let len = chars.len() as f64;
            let clamp = |f: f64| f.clamp(0.0, len) as usize;
            let start = to_number(&arg(1));
            if start.is_nan() {
                return Value::Null;
            }
            let from = clamp(if start < 0.0 {
                len + start.trunc()
            } else {
                start.trunc()
            });
            let to = match args.get(2) {
                None => chars.len(),
                Some(_) => {
                    let n = to_number(&arg(2));
                    if n.is_nan() {
                        return Value::Null;
                    }
                    if n < 0.0 {
                        clamp(len + n.trunc())
                    } else {
                        clamp(from as f64 + n.trunc())
                    }
                }
            };
            Value::String(chars[from..to.max(from)].iter().collect())
        }
        Op::Merge => Value::Array(
            all()
                .into_iter()
                .flat_map(|v| match v {
                    Value::Array(items) => items,
                    other => vec![other],
                })
                .collect(),
        ),
        Op::Var => {
            let found = match arg(0) {
                Value::Null => env.lookup(data, ""),
                Value::String(s) => env.lookup(data, &s),
                Value::Number(n) => env.lookup(data, &number_text(n.as_f64().unwrap_or(f64::NAN))),
                _ => None,
            };
            found.unwrap_or_else(|| arg(1))
        }
        Op::Missing => {
            let keys = match all().as_slice() {
                [Value::Array(items)] => items.clone(),
                other => other.to_vec(),
            };
            Value::Array(missing(keys, data, env))
        }
        Op::MissingSome => {
            let need = to_number(&arg(0));
            let Value::Array(keys) = arg(1) else {
                return Value::Array(Vec::new());
            };
            let total = keys.len();
            let absent = missing(keys, data, env);
            if (total - absent.len()) as f64 >= need {
                Value::Array(Vec::new())
            } else {
                Value::Array(absent)
            }
        }
        Op::All | Op::None | Op::Some | Op::Map | Op::Filter | Op::Reduce => {
            let items = match arg(0) {
                Value::Array(items) => items,
                _ => Vec::new(),
            };
            let Some(logic) = args.get(1) else {
                return Value::Null;
            };
            let test = |item: &Value| eval(logic, Data::Item(item), env);
            match op {
                Op::All => Value::Bool(!items.is_empty() && items.iter().all(|x| truthy(&test(x)))),
                Op::Some => Value::Bool(items.iter().any(|x| truthy(&test(x)))),
                Op::None => Value::Bool(!items.iter().any(|x| truthy(&test(x)))),
                Op::Map => Value::Array(items.iter().map(test).collect()),
                Op::Filter => {
                    Value::Array(items.into_iter().filter(|x| truthy(&test(x))).collect())
                }
                _ => {
                    let mut acc = arg(2);
                    for current in items {
                        let mut scope = Map::new();
                        scope.insert("current".into(), current);
                        scope.insert("accumulator".into(), acc);
                        acc = test(&Value::Object(scope));
                    }
                    acc
                }
            }
        }
        Op::StartsWith | Op::EndsWith => match (arg(0), arg(1)) {
            (Value::String(s), Value::String(affix)) => Value::Bool(if op == Op::StartsWith {
                s.starts_with(&affix)
            } else {
                s.ends_with(&affix)
            }),
            _ => Value::Null,
        },
        Op::SemVer => {
            let (have, op_name, want) = (arg(0), arg(1), arg(2));
            let (Some(have), Some(compare), Some(want)) = (
                version_text(&have),
                op_name.as_str().and_then(SemVerOp::parse),
                version_text(&want),
            ) else {
                return Value::Null;
            };
            match (semver::parse(&have), semver::parse(&want)) {
                (Some(a), Some(b)) => Value::Bool(compare.holds(&a, &b)),
                _ => Value::Null,
            }
        }
        Op::Fractional => fractional_op(args, data, env),
    }
}

fn missing(keys: Vec<Value>, data: Data<'_>, env: &Env<'_>) -> Vec<Value> {
    keys.into_iter()
        .filter(|k| {
            env.lookup(data, &to_text(k))
                .is_none_or(|v| v.as_str() == Some(""))
        })
        .collect()
}

/// flagd's `fractional`: `[bucketing value?, [variant, weight]...]`. Without a bucketing
/// value (or with one that is `null`), the flag key followed by the targeting key. Anything
/// it cannot use yields `null`.
fn fractional_op(args: &[Expr], data: Data<'_>, env: &Env<'_>) -> Value {
    let values: Vec<Value> = args.iter().map(|e| eval(e, data, env)).collect();
    let (key, buckets) = match values.split_first() {
        Some((Value::String(s), rest)) => (s.clone(), rest),
        Some((first, rest)) => {
            let buckets = if first.is_null() { rest } else { &values[..] };
            match env.lookup(Data::Root, "targetingKey") {
                Some(Value::String(tk)) if !tk.is_empty() => {
                    (format!("{}{tk}", env.flag_key), buckets)
                }
                _ => return Value::Null,
            }
        }
        None => return Value::Null,
    };
    let mut variants = Vec::with_capacity(buckets.len());
    let mut weights = Vec::with_capacity(buckets.len());
    for bucket in buckets {
        let Value::Array(items) = bucket else {
            return Value::Null;
        };
        let Some(variant) = items.first() else {
            return Value::Null;
        };
        if variant.is_array() || variant.is_object() {
            return Value::Null;
        }
        let w = match items.get(1) {
            None | Some(Value::Null) => 1,
            Some(Value::Number(n)) => match weight(n.as_f64().unwrap_or(f64::NAN)) {
                Weight::Ok(w) => w,
                Weight::NotWhole | Weight::TooLarge => return Value::Null,
            },
            Some(_) => return Value::Null,
        };
        variants.push(variant);
        weights.push(w);
    }
    match bucket(&key, &weights) {
        Some(i) => variants[i].clone(),
        None => Value::Null,
    }
}

/// flagd's bucketing: MurmurHash3 (x86, 32 bits, seed 0) of the UTF-8 bytes of `value`,
/// mapped to `[0, total weight)` as `(hash × total) >> 32`; the first bucket whose cumulative
/// weight exceeds that. `None` when the weights add up to 0 or to more than flagd's limit.
pub(crate) fn bucket(value: &str, weights: &[u64]) -> Option<usize> {
    let total = weights
        .iter()
        .try_fold(0u64, |sum, w| sum.checked_add(*w))
        .filter(|t| (1..=MAX_TOTAL_WEIGHT).contains(t))?;
    let hash = murmur3::murmur3_32(&mut Cursor::new(value.as_bytes()), 0).ok()?;
    let point = u64::from(hash).checked_mul(total)? >> 32;
    let mut cumulative = 0u64;
    weights.iter().position(|w| {
        cumulative += w;
        point < cumulative
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(rule: Value, ctx: &EvaluationContext) -> Value {
        let expr = Compiler { evaluators: None }
            .compile(&rule, "targeting")
            .expect("compiles");
        eval(
            &expr,
            Data::Root,
            &Env {
                flag_key: "flag",
                ctx,
                timestamp: 1_700_000_000,
            },
        )
    }

    #[test]
    fn json_logic_operations() {
        let ctx = EvaluationContext::new("user-1")
            .with("age", 42)
            .with("email", "ana@example.com")
            .with("v", "2.0.0.0")
            .with("tags", json!(["a", "b"]))
            .with("user", json!({"name": "ana", "langs": ["de", "fr"]}));
        for (rule, want) in [
            (json!({"==": [1, "1"]}), json!(true)),
            (json!({"===": [1, "1"]}), json!(false)),
            (json!({"==": [null, 0]}), json!(false)),
            (json!({"!=": ["a", "b"]}), json!(true)),
            (json!({"<": [1, {"var": "age"}, 100]}), json!(true)),
            (json!({"<=": ["b", "a"]}), json!(false)),
            (json!({">=": [{"var": "age"}, 42]}), json!(true)),
            (
                json!({"in": ["example.com", {"var": "email"}]}),
                json!(true),
            ),
            (json!({"in": ["c", {"var": "tags"}]}), json!(false)),
            (
                json!({"cat": [{"var": "$flagd.flagKey"}, "-", {"var": "user.name"}]}),
                json!("flag-ana"),
            ),
            (json!({"var": "user.langs.1"}), json!("fr")),
            (json!({"var": ["nope", "fallback"]}), json!("fallback")),
            (json!({"var": "targetingKey"}), json!("user-1")),
            (json!({"var": "$flagd.timestamp"}), json!(1_700_000_000)),
            (json!({"and": [true, "x", 0]}), json!(0)),
            (json!({"or": [false, "", "y"]}), json!("y")),
            (json!({"!": [[]]}), json!(true)),
            (json!({"!!": ["0"]}), json!(true)),
            (json!({"if": [false, "a", false, "b", "c"]}), json!("c")),
            (json!({"+": [1, "2", true]}), json!(4.0)),
            (json!({"/": [1, 0]}), Value::Null),
            (json!({"%": [7, 3]}), json!(1.0)),
            (json!({"max": [1, 3, 2]}), json!(3.0)),
            (json!({"substr": ["deploykit", -3]}), json!("kit")),
            (json!({"substr": ["deploykit", 1, 3]}), json!("epl")),
            (json!({"merge": [[1], 2, [3, 4]]}), json!([1, 2, 3, 4])),
            (json!({"missing": ["age", "nope"]}), json!(["nope"])),
            (json!({"missing_some": [1, ["age", "nope"]]}), json!([])),
            (
                json!({"some": [{"var": "user.langs"}, {"==": [{"var": ""}, "fr"]}]}),
                json!(true),
            ),
            (json!({"all": [[], true]}), json!(false)),
            (
                json!({"map": [[1, 2], {"*": [{"var": ""}, 2]}]}),
                json!([2.0, 4.0]),
            ),
            (
                json!({"reduce": [[1, 2, 3], {"+": [{"var": "current"}, {"var": "accumulator"}]}, 0]}),
                json!(6.0),
            ),
            (
                json!({"starts_with": [{"var": "email"}, "ana"]}),
                json!(true),
            ),
            (json!({"ends_with": [{"var": "age"}, "2"]}), Value::Null),
            (json!({"sem_ver": ["1.2", ">", "1.1.9"]}), json!(true)),
            (
                json!({"sem_ver": [{"var": "age"}, "^", "42.9.9"]}),
                json!(true),
            ),
            (
                json!({"sem_ver": [{"var": "v"}, "=", "2.0.0"]}),
                Value::Null,
            ),
        ] {
            assert_eq!(run(rule.clone(), &ctx), want, "{rule}");
        }
    }

    #[test]
    fn static_mistakes_are_refused_with_their_path() {
        let refuse = |rule: Value| match (Compiler { evaluators: None }).compile(&rule, "t") {
            Err(Error::InvalidSpec { field, reason }) => format!("{field}: {reason}"),
            other => panic!("{rule} compiled: {other:?}"),
        };
        assert!(refuse(json!({"nope": [1]})).starts_with("t.nope: unknown operation"));
        assert!(
            refuse(json!({"if": [true, {"==": [1]}]})).starts_with("t.if[1][\"==\"]: `==` takes 2")
        );
        assert!(refuse(json!({"a": 1, "b": 2})).contains("one key"));
        assert!(refuse(json!({"sem_ver": ["1.0.0", "===", "1.0.0"]})).starts_with("t.sem_ver[1]"));
        assert!(refuse(json!({"sem_ver": [{"var": "v"}, "=", "x"]})).starts_with("t.sem_ver[2]"));
        assert!(refuse(json!({"starts_with": ["abc"]})).contains("takes 2"));
        assert!(refuse(json!({"$ref": "x"})).contains("nested $ref"));
        assert!(refuse(json!({"fractional": [["a", 1.5]]})).starts_with("t.fractional[0][1]"));
        assert!(
            refuse(json!({"fractional": ["k", ["a", 2147483648u64]]}))
                .starts_with("t.fractional[1][1]")
        );
        assert!(
            refuse(json!({"fractional": [["a", 2147483647u64], ["b", 1]]}))
                .starts_with("t.fractional[1]: the split's weights add up to 2147483648")
        );
        let mut deep = json!("x");
        for _ in 0..=MAX_DEPTH {
            deep = json!({"!": [deep]});
        }
        assert!(refuse(deep).contains("nested deeper"));
    }

    #[test]
    fn bucketing_never_overflows() {
        assert_eq!(bucket("k", &[]), None);
        assert_eq!(bucket("k", &[0, 0]), None);
        assert_eq!(bucket("k", &[u64::MAX, 1]), None);
        assert_eq!(bucket("k", &[MAX_TOTAL_WEIGHT + 1]), None);
        assert_eq!(bucket("k", &[MAX_TOTAL_WEIGHT]), Some(0));
    }
}
