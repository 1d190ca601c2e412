//! Label and field selectors (`labelSelector`, `fieldSelector`): pure matching over JSON.

use serde_json::Value;

use super::patch::get_path;
use super::request::{Fail, Params};

/// The `labelSelector` and `fieldSelector` of a list, watch or collection delete, parsed.
#[derive(Clone, Debug)]
pub(super) struct Selector {
    labels: Vec<LabelReq>,
    fields: Vec<FieldReq>,
}

impl Selector {
    /// The selectors of query `q` (none selects everything).
    pub(super) fn from_params(q: &Params) -> Result<Self, Fail> {
        Ok(Selector {
            labels: parse_label_selector(q.get("labelSelector").unwrap_or(""))?,
            fields: parse_field_selector(q.get("fieldSelector").unwrap_or(""))?,
        })
    }

    /// Whether `object` has the labels and fields selected.
    pub(super) fn matches(&self, object: &Value) -> bool {
        labels_match(object, &self.labels) && fields_match(object, &self.fields)
    }
}

#[derive(Clone, Debug)]
enum LabelReq {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

fn split_top_level(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '(' => {
                depth += 1;
                cur.push(c);
            }
            ')' => {
                depth = depth.saturating_sub(1);
                cur.push(c);
            }
            ',' if depth == 0 => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out.into_iter()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect()
}

fn parse_set(key: &str, rest: &str) -> Result<(String, Vec<String>), Fail> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| Fail::bad_request(format!("unable to parse requirement: {rest:?}")))?;
    Ok((
        key.trim().to_string(),
        inner.split(',').map(|v| v.trim().to_string()).collect(),
    ))
}

fn parse_label_selector(s: &str) -> Result<Vec<LabelReq>, Fail> {
    split_top_level(s)
        .into_iter()
        .map(|term| {
            if let Some(key) = term.strip_prefix('!') {
                return Ok(LabelReq::NotExists(key.trim().to_string()));
            }
            if let Some((key, rest)) = term.split_once(" notin ") {
                let (k, vs) = parse_set(key, rest)?;
                return Ok(LabelReq::NotIn(k, vs));
            }
            if let Some((key, rest)) = term.split_once(" in ") {
                let (k, vs) = parse_set(key, rest)?;
                return Ok(LabelReq::In(k, vs));
            }
            if let Some((k, v)) = term.split_once("!=") {
                return Ok(LabelReq::NotEq(k.trim().into(), v.trim().into()));
            }
            if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                return Ok(LabelReq::Eq(k.trim().into(), v.trim().into()));
            }
            if term.contains(|c: char| c.is_whitespace() || "()<>".contains(c)) {
                return Err(Fail::bad_request(format!(
                    "unable to parse requirement: {term:?}"
                )));
            }
            Ok(LabelReq::Exists(term))
        })
        .collect()
}

fn labels_match(object: &Value, reqs: &[LabelReq]) -> bool {
    let labels = object
        .pointer("/metadata/labels")
        .and_then(Value::as_object);
    let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
    reqs.iter().all(|r| match r {
        LabelReq::Eq(k, v) => get(k) == Some(v.as_str()),
        LabelReq::NotEq(k, v) => get(k) != Some(v.as_str()),
        LabelReq::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
        LabelReq::NotIn(k, vs) => get(k).is_none_or(|x| vs.iter().all(|v| v != x)),
        LabelReq::Exists(k) => get(k).is_some(),
        LabelReq::NotExists(k) => get(k).is_none(),
    })
}

#[derive(Clone, Debug)]
struct FieldReq {
    path: Vec<String>,
    value: String,
    equal: bool,
}

fn parse_field_selector(s: &str) -> Result<Vec<FieldReq>, Fail> {
    split_top_level(s)
        .into_iter()
        .map(|term| {
            let (path, value, equal) = if let Some((p, v)) = term.split_once("!=") {
                (p, v, false)
            } else if let Some((p, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (p, v, true)
            } else {
                return Err(Fail::bad_request(format!(
                    "invalid field selector term {term:?}"
                )));
            };
            Ok(FieldReq {
                path: path.trim().split('.').map(str::to_string).collect(),
                value: value.trim().to_string(),
                equal,
            })
        })
        .collect()
}

fn fields_match(object: &Value, reqs: &[FieldReq]) -> bool {
    reqs.iter().all(|r| {
        let actual = get_path(object, &r.path).map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        });
        let actual = actual.unwrap_or_default();
        (actual == r.value) == r.equal
    })
}
