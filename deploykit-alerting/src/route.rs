//! Label matchers and the Alertmanager-style routing tree, with escalation policies.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use regex::Regex;
use serde::{Deserialize, Serialize};
use typed_builder::TypedBuilder;

use super::Labels;
use deploykit_core::time::{duration_ms, option_duration_ms};
use deploykit_core::{Error, Result};

/// Alertmanager's default `group_wait`.
pub const DEFAULT_GROUP_WAIT: Duration = Duration::from_secs(30);
/// Alertmanager's default `group_interval`.
pub const DEFAULT_GROUP_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// Alertmanager's default `repeat_interval`.
pub const DEFAULT_REPEAT_INTERVAL: Duration = Duration::from_secs(4 * 60 * 60);

/// How a [`Matcher`] compares a label's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MatchOp {
    /// `name="value"`: equal.
    Eq,
    /// `name!="value"`: not equal.
    NotEq,
    /// `name=~"regex"`: the whole value matches the regex.
    Regex,
    /// `name!~"regex"`: the whole value does not match the regex.
    NotRegex,
}

impl MatchOp {
    /// The operator as written in a matcher (`=`, `!=`, `=~`, `!~`).
    pub fn as_str(self) -> &'static str {
        match self {
            MatchOp::Eq => "=",
            MatchOp::NotEq => "!=",
            MatchOp::Regex => "=~",
            MatchOp::NotRegex => "!~",
        }
    }
}

/// A label matcher, as in Alertmanager: `service="web"`, `severity!="info"`,
/// `service=~"web.*"`, `env!~"preview-.*"`.
///
/// A missing label matches as the empty string, and regexes are fully anchored (`web.*` is
/// `^(?:web.*)$`, so it matches `web2` but not `xweb1`). Regexes are compiled (and rejected with
/// an error naming the matcher) where matchers are used: building the engine, adding a
/// silence, or [`Matcher::parse`].
///
/// ```
/// use deploykit_alerting::{MatchOp, Matcher};
/// let m = Matcher::parse(r#"service=~"web.*""#)?;
/// assert_eq!(m, Matcher::regex("service", "web.*"));
/// assert_eq!(m.op, MatchOp::Regex);
/// assert_eq!(m.to_string(), r#"service=~"web.*""#);
/// assert!(Matcher::parse(r#"service=~"(""#).is_err());
/// # Ok::<(), deploykit_core::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Matcher {
    /// The label name.
    pub name: String,
    /// The comparison.
    pub op: MatchOp,
    /// The value, or the regex for [`MatchOp::Regex`] and [`MatchOp::NotRegex`].
    pub value: String,
}

impl Matcher {
    /// A matcher `name <op> value`.
    pub fn new(name: impl Into<String>, op: MatchOp, value: impl Into<String>) -> Self {
        Matcher {
            name: name.into(),
            op,
            value: value.into(),
        }
    }

    /// `name="value"`.
    pub fn eq(name: impl Into<String>, value: impl Into<String>) -> Self {
        Self::new(name, MatchOp::Eq, value)
    }

    /// `name!="value"`.
    pub fn not_eq(name: impl Into<String>, value: impl Into<String>) -> Self {
        Self::new(name, MatchOp::NotEq, value)
    }

    /// `name=~"regex"` (fully anchored).
    pub fn regex(name: impl Into<String>, regex: impl Into<String>) -> Self {
        Self::new(name, MatchOp::Regex, regex)
    }

    /// `name!~"regex"` (fully anchored).
    pub fn not_regex(name: impl Into<String>, regex: impl Into<String>) -> Self {
        Self::new(name, MatchOp::NotRegex, regex)
    }

    /// Parses Alertmanager's matcher syntax: `name="value"`, `name!="value"`, `name=~"re"`,
    /// `name!~"re"` (the value may also be unquoted). The label name and any regex are
    /// validated.
    pub fn parse(s: &str) -> Result<Self> {
        let field = "alert.matcher";
        let at = s.find(['=', '!']).ok_or_else(|| {
            Error::invalid(
                field,
                format!("{s:?} is not a matcher (name=\"value\", !=, =~ or !~)"),
            )
        })?;
        let name = s[..at].trim();
        let rest = &s[at..];
        let (op, rest) = if let Some(r) = rest.strip_prefix("=~") {
            (MatchOp::Regex, r)
        } else if let Some(r) = rest.strip_prefix("!~") {
            (MatchOp::NotRegex, r)
        } else if let Some(r) = rest.strip_prefix("!=") {
            (MatchOp::NotEq, r)
        } else if let Some(r) = rest.strip_prefix('=') {
            (MatchOp::Eq, r)
        } else {
            return Err(Error::invalid(
                field,
                format!("{s:?}: expected one of =, !=, =~, !~ after {name:?}"),
            ));
        };
        let value =
            unquote(rest.trim()).map_err(|e| Error::invalid(field, format!("{s:?}: {e}")))?;
        let m = Matcher::new(name, op, value);
        m.compile(field)?;
        Ok(m)
    }

    /// Checks the name and compiles the regex; errors name `field` and the matcher.
    pub(super) fn compile(&self, field: &str) -> Result<CompiledMatcher> {
        check_label_name(field, &self.name)?;
        let re = match self.op {
            MatchOp::Eq | MatchOp::NotEq => None,
            MatchOp::Regex | MatchOp::NotRegex => {
                Some(Regex::new(&format!("^(?:{})$", self.value)).map_err(|e| {
                    Error::invalid(field, format!("invalid regex in matcher {self}: {e}"))
                })?)
            }
        };
        Ok(CompiledMatcher {
            matcher: self.clone(),
            re,
        })
    }
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}{:?}", self.name, self.op.as_str(), self.value)
    }
}

impl FromStr for Matcher {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Matcher::parse(s)
    }
}

fn unquote(v: &str) -> std::result::Result<String, String> {
    let Some(inner) = v.strip_prefix('"') else {
        return Ok(v.to_string());
    };
    let inner = inner
        .strip_suffix('"')
        .ok_or_else(|| "unterminated quoted value".to_string())?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some(c @ ('"' | '\\')) => out.push(c),
            // Keep other escapes as they are: they are regex escapes (`\d`, `\.`).
            Some(c) => {
                out.push('\\');
                out.push(c);
            }
            None => return Err("value ends with a lone backslash".into()),
        }
    }
    Ok(out)
}

/// Checks a Prometheus label name: `[a-zA-Z_][a-zA-Z0-9_]*`.
pub(super) fn check_label_name(field: &str, name: &str) -> Result<()> {
    let ok = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            field,
            format!("{name:?} is not a label name ([a-zA-Z_][a-zA-Z0-9_]*)"),
        ))
    }
}

/// A matcher with its regex compiled.
#[derive(Clone, Debug)]
pub(super) struct CompiledMatcher {
    matcher: Matcher,
    re: Option<Regex>,
}

impl CompiledMatcher {
    pub(super) fn matches(&self, labels: &Labels) -> bool {
        let v = labels.get(&self.matcher.name).map_or("", String::as_str);
        match (&self.matcher.op, &self.re) {
            (MatchOp::Eq, _) => v == self.matcher.value,
            (MatchOp::NotEq, _) => v != self.matcher.value,
            (MatchOp::Regex, Some(re)) => re.is_match(v),
            (MatchOp::NotRegex, Some(re)) => !re.is_match(v),
            // `compile` always sets the regex of a regex matcher.
            (MatchOp::Regex | MatchOp::NotRegex, None) => false,
        }
    }
}

/// Compiles `matchers`, naming each failure `field[i]`.
pub(super) fn compile_all(matchers: &[Matcher], field: &str) -> Result<Vec<CompiledMatcher>> {
    matchers
        .iter()
        .enumerate()
        .map(|(i, m)| m.compile(&format!("{field}[{i}]")))
        .collect()
}

/// Whether every matcher matches (true for none).
pub(super) fn matches_all(matchers: &[CompiledMatcher], labels: &Labels) -> bool {
    matchers.iter().all(|m| m.matches(labels))
}

/// One step of an escalation policy: if a firing group has not been acknowledged `after` its
/// first notification, it is also notified to `receiver`.
///
/// `after` is measured from the group's first firing notification (not from the previous
/// step), so a policy's steps have strictly increasing `after`s.
///
/// ```
/// use std::time::Duration;
/// use deploykit_alerting::Escalation;
/// let step = Escalation::new(Duration::from_secs(600), "team-lead");
/// assert_eq!(step.receiver, "team-lead");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Escalation {
    /// How long after the group's first notification.
    #[serde(with = "duration_ms", rename = "after_ms")]
    pub after: Duration,
    /// The receiver to notify then.
    pub receiver: String,
}

impl Escalation {
    /// Notify `receiver` if the group is still unacknowledged `after` its first notification.
    pub fn new(after: Duration, receiver: impl Into<String>) -> Self {
        Escalation {
            after,
            receiver: receiver.into(),
        }
    }
}

/// A node of the routing tree, as in Alertmanager's `route`.
///
/// An alert enters at the root (which matches everything) and descends: the first child whose
/// `matchers` all match takes it, unless that child has `continue_`, in which case the
/// following siblings are tried too. If no child takes it, the node itself does. Every node
/// that takes an alert groups it by its `group_by` labels (`"..."` groups by all labels) and
/// notifies its `receiver`.
///
/// Unset fields (`receiver`, `group_by`, the three timers, `escalations`) are inherited from the
/// parent; at the root they default to no grouping labels (one group), [`DEFAULT_GROUP_WAIT`],
/// [`DEFAULT_GROUP_INTERVAL`], [`DEFAULT_REPEAT_INTERVAL`] and no escalation. The root must
/// name a receiver and has no matchers.
///
/// ```
/// use std::time::Duration;
/// use deploykit_alerting::{Escalation, Matcher, Route};
/// let tree = Route::builder()
///     .receiver("chat")
///     .group_by(["alertname", "service"])
///     .routes(vec![Route::builder()
///         .matchers(vec![Matcher::eq("severity", "critical")])
///         .receiver("pager")
///         .group_wait(Duration::from_secs(10))
///         .escalations(vec![Escalation::new(Duration::from_secs(600), "team-lead")])
///         .build()])
///     .build();
/// assert_eq!(tree.routes[0].receiver.as_deref(), Some("pager"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, TypedBuilder)]
#[non_exhaustive]
pub struct Route {
    /// All must match for the alert to enter this route (a missing label is `""`).
    #[builder(default)]
    #[serde(default)]
    pub matchers: Vec<Matcher>,
    /// The receiver (inherited when unset).
    #[builder(default, setter(into, strip_option))]
    #[serde(default)]
    pub receiver: Option<String>,
    /// Keep trying the following siblings after this route matched.
    #[builder(default)]
    #[serde(default, rename = "continue")]
    pub continue_: bool,
    /// Labels that split alerts into groups (inherited when unset; `"..."` means all labels).
    #[builder(default, setter(transform = |labels: impl IntoIterator<Item = impl Into<String>>| {
        Some(labels.into_iter().map(Into::into).collect())
    }))]
    #[serde(default)]
    pub group_by: Option<Vec<String>>,
    /// How long a new group waits for more alerts before its first notification.
    #[builder(default, setter(strip_option))]
    #[serde(default, with = "option_duration_ms", rename = "group_wait_ms")]
    pub group_wait: Option<Duration>,
    /// How long after a notification a group's changes (new or resolved alerts) may be sent.
    #[builder(default, setter(strip_option))]
    #[serde(default, with = "option_duration_ms", rename = "group_interval_ms")]
    pub group_interval: Option<Duration>,
    /// How long before an unchanged firing group is notified again.
    #[builder(default, setter(strip_option))]
    #[serde(default, with = "option_duration_ms", rename = "repeat_interval_ms")]
    pub repeat_interval: Option<Duration>,
    /// The escalation policy of this route's groups (inherited when unset).
    #[builder(default, setter(strip_option))]
    #[serde(default)]
    pub escalations: Option<Vec<Escalation>>,
    /// Child routes, tried in order.
    #[builder(default)]
    #[serde(default)]
    pub routes: Vec<Route>,
}

/// Grouping of a resolved route.
#[derive(Clone, Debug)]
pub(super) enum GroupBy {
    /// Group by these labels.
    Labels(Vec<String>),
    /// `...`: every label.
    All,
}

/// A route with inherited settings filled in and matchers compiled.
#[derive(Debug)]
pub(super) struct RouteNode {
    /// `0` for the root, `0.2` for its third child, ...
    pub(super) path: String,
    pub(super) matchers: Vec<CompiledMatcher>,
    pub(super) receiver: String,
    pub(super) continue_: bool,
    pub(super) group_by: GroupBy,
    pub(super) group_wait: Duration,
    pub(super) group_interval: Duration,
    pub(super) repeat_interval: Duration,
    pub(super) escalations: Vec<Escalation>,
    pub(super) children: Vec<usize>,
}

impl RouteNode {
    /// The labels of `labels` this route groups by.
    pub(super) fn group_labels(&self, labels: &Labels) -> Labels {
        match &self.group_by {
            GroupBy::All => labels.clone(),
            GroupBy::Labels(names) => names
                .iter()
                .filter_map(|n| labels.get(n).map(|v| (n.clone(), v.clone())))
                .collect(),
        }
    }
}

/// The routing tree, flattened (index 0 is the root).
#[derive(Debug)]
pub(super) struct RouteTree {
    pub(super) nodes: Vec<RouteNode>,
}

impl RouteTree {
    /// Resolves and validates `root`; `known` tells whether a receiver has a sink.
    pub(super) fn new(root: &Route, known: &dyn Fn(&str) -> bool) -> Result<Self> {
        let field = "alert.route";
        if !root.matchers.is_empty() {
            return Err(Error::invalid(
                format!("{field}.matchers"),
                "the root route matches every alert and takes no matchers",
            ));
        }
        if root.receiver.is_none() {
            return Err(Error::invalid(
                format!("{field}.receiver"),
                "the root route needs a receiver",
            ));
        }
        let inherited = Inherited {
            receiver: String::new(),
            group_by: Vec::new(),
            group_wait: DEFAULT_GROUP_WAIT,
            group_interval: DEFAULT_GROUP_INTERVAL,
            repeat_interval: DEFAULT_REPEAT_INTERVAL,
            escalations: Vec::new(),
        };
        let mut tree = RouteTree { nodes: Vec::new() };
        tree.add(root, &inherited, field, "0".into(), known)?;
        Ok(tree)
    }

    fn add(
        &mut self,
        route: &Route,
        parent: &Inherited,
        field: &str,
        path: String,
        known: &dyn Fn(&str) -> bool,
    ) -> Result<usize> {
        let matchers = compile_all(&route.matchers, &format!("{field}.matchers"))?;
        let settings = Inherited {
            receiver: route
                .receiver
                .clone()
                .unwrap_or_else(|| parent.receiver.clone()),
            group_by: route
                .group_by
                .clone()
                .unwrap_or_else(|| parent.group_by.clone()),
            group_wait: route.group_wait.unwrap_or(parent.group_wait),
            group_interval: route.group_interval.unwrap_or(parent.group_interval),
            repeat_interval: route.repeat_interval.unwrap_or(parent.repeat_interval),
            escalations: route
                .escalations
                .clone()
                .unwrap_or_else(|| parent.escalations.clone()),
        };
        if !known(&settings.receiver) {
            return Err(Error::invalid(
                format!("{field}.receiver"),
                format!("no sink for receiver {:?}", settings.receiver),
            ));
        }
        let group_by = if settings.group_by.iter().any(|l| l == "...") {
            if settings.group_by.len() > 1 {
                return Err(Error::invalid(
                    format!("{field}.group_by"),
                    "\"...\" (all labels) must be the only entry",
                ));
            }
            GroupBy::All
        } else {
            for (i, l) in settings.group_by.iter().enumerate() {
                check_label_name(&format!("{field}.group_by[{i}]"), l)?;
            }
            GroupBy::Labels(settings.group_by.clone())
        };
        let ms = Duration::from_millis(1);
        for (name, d, min) in [
            ("group_wait", settings.group_wait, Duration::ZERO),
            ("group_interval", settings.group_interval, ms),
            ("repeat_interval", settings.repeat_interval, ms),
        ] {
            deploykit_core::validate::check_duration(
                &format!("{field}.{name}"),
                d,
                min,
                deploykit_core::time::DAY * 30,
            )?;
        }
        let mut previous = Duration::ZERO;
        for (i, e) in settings.escalations.iter().enumerate() {
            let f = format!("{field}.escalations[{i}]");
            if e.after <= previous {
                return Err(Error::invalid(
                    format!("{f}.after"),
                    "each step's `after` (counted from the first notification) must be greater \
                     than zero and than the previous step's",
                ));
            }
            previous = e.after;
            deploykit_core::validate::check_duration(
                &format!("{f}.after"),
                e.after,
                ms,
                deploykit_core::time::DAY * 30,
            )?;
            if !known(&e.receiver) {
                return Err(Error::invalid(
                    format!("{f}.receiver"),
                    format!("no sink for receiver {:?}", e.receiver),
                ));
            }
        }
        let index = self.nodes.len();
        self.nodes.push(RouteNode {
            path: path.clone(),
            matchers,
            receiver: settings.receiver.clone(),
            continue_: route.continue_,
            group_by,
            group_wait: settings.group_wait,
            group_interval: settings.group_interval,
            repeat_interval: settings.repeat_interval,
            escalations: settings.escalations.clone(),
            children: Vec::new(),
        });
        for (i, child) in route.routes.iter().enumerate() {
            let c = self.add(
                child,
                &settings,
                &format!("{field}.routes[{i}]"),
                format!("{path}.{i}"),
                known,
            )?;
            self.nodes[index].children.push(c);
        }
        Ok(index)
    }

    /// The routes that take an alert with `labels` (at least the root), in tree order.
    pub(super) fn matching(&self, labels: &Labels) -> Vec<usize> {
        let mut out = Vec::new();
        self.walk(0, labels, &mut out);
        out
    }

    fn walk(&self, index: usize, labels: &Labels, out: &mut Vec<usize>) -> bool {
        let node = &self.nodes[index];
        if !matches_all(&node.matchers, labels) {
            return false;
        }
        let mut taken = false;
        for &c in &node.children {
            if self.walk(c, labels, out) {
                taken = true;
                if !self.nodes[c].continue_ {
                    break;
                }
            }
        }
        if !taken {
            out.push(index);
        }
        true
    }
}

/// Settings passed down the tree.
#[derive(Clone)]
struct Inherited {
    receiver: String,
    group_by: Vec<String>,
    group_wait: Duration,
    group_interval: Duration,
    repeat_interval: Duration,
    escalations: Vec<Escalation>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels;

    fn m(s: &str) -> CompiledMatcher {
        Matcher::parse(s).unwrap().compile("t").unwrap()
    }

    #[test]
    fn regexes_are_fully_anchored() {
        let web = m(r#"service=~"web.*""#);
        assert!(web.matches(&labels([("service", "web")])));
        assert!(web.matches(&labels([("service", "web2")])));
        assert!(!web.matches(&labels([("service", "xweb1")])));
        let not = m(r#"service!~"web|api""#);
        assert!(not.matches(&labels([("service", "webx")])));
        assert!(!not.matches(&labels([("service", "api")])));
    }

    #[test]
    fn missing_labels_match_as_empty() {
        assert!(m(r#"team="""#).matches(&Labels::new()));
        assert!(m(r#"team!="ops""#).matches(&Labels::new()));
        assert!(!m(r#"team="ops""#).matches(&Labels::new()));
        assert!(m(r#"team=~".*""#).matches(&Labels::new()));
    }

    #[test]
    fn parses_all_operators_and_quoting() {
        assert_eq!(Matcher::parse("a=b").unwrap(), Matcher::eq("a", "b"));
        assert_eq!(
            Matcher::parse(r#" a != "x \"y\"" "#).unwrap(),
            Matcher::not_eq("a", r#"x "y""#)
        );
        assert_eq!(
            Matcher::parse(r#"a!~"\d+""#).unwrap(),
            Matcher::not_regex("a", r"\d+")
        );
        assert!(Matcher::parse("novalue").is_err());
        assert!(Matcher::parse(r#"1a="x""#).is_err());
        assert!(Matcher::parse(r#"a="x"#).is_err());
    }

    #[test]
    fn bad_regex_names_the_matcher_and_field() {
        let err = compile_all(
            &[Matcher::eq("a", "b"), Matcher::regex("service", "web(")],
            "alert.silence.matchers",
        )
        .unwrap_err();
        match err {
            Error::InvalidSpec { field, reason } => {
                assert_eq!(field, "alert.silence.matchers[1]");
                assert!(reason.contains(r#"service=~"web(""#), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    fn tree(root: Route) -> RouteTree {
        RouteTree::new(&root, &|_| true).unwrap()
    }

    #[test]
    fn first_matching_child_wins_unless_continue() {
        let child = |sev: &str, recv: &str, cont: bool| {
            Route::builder()
                .matchers(vec![Matcher::eq("severity", sev)])
                .receiver(recv)
                .continue_(cont)
                .build()
        };
        let t = tree(
            Route::builder()
                .receiver("default")
                .routes(vec![
                    child("critical", "pager", false),
                    child("critical", "chat", false),
                ])
                .build(),
        );
        let crit = labels([("severity", "critical")]);
        let got: Vec<_> = t
            .matching(&crit)
            .into_iter()
            .map(|i| t.nodes[i].receiver.as_str())
            .collect();
        assert_eq!(got, ["pager"]);
        let got: Vec<_> = t
            .matching(&labels([("severity", "info")]))
            .into_iter()
            .map(|i| t.nodes[i].receiver.as_str())
            .collect();
        assert_eq!(got, ["default"]);

        let t = tree(
            Route::builder()
                .receiver("default")
                .routes(vec![
                    child("critical", "pager", true),
                    child("critical", "chat", false),
                ])
                .build(),
        );
        let got: Vec<_> = t
            .matching(&crit)
            .into_iter()
            .map(|i| t.nodes[i].receiver.as_str())
            .collect();
        assert_eq!(got, ["pager", "chat"]);
    }

    #[test]
    fn children_inherit_unset_settings() {
        let t = tree(
            Route::builder()
                .receiver("default")
                .group_by(["service"])
                .group_interval(Duration::from_secs(60))
                .routes(vec![
                    Route::builder()
                        .group_wait(Duration::from_secs(5))
                        .routes(vec![Route::builder().build()])
                        .build(),
                ])
                .build(),
        );
        let leaf = &t.nodes[2];
        assert_eq!(leaf.path, "0.0.0");
        assert_eq!(leaf.receiver, "default");
        assert_eq!(leaf.group_wait, Duration::from_secs(5));
        assert_eq!(leaf.group_interval, Duration::from_secs(60));
        assert_eq!(leaf.repeat_interval, DEFAULT_REPEAT_INTERVAL);
        assert_eq!(
            leaf.group_labels(&labels([("service", "web"), ("x", "y")])),
            labels([("service", "web")])
        );
        assert_eq!(t.nodes[0].group_wait, DEFAULT_GROUP_WAIT);
    }

    #[test]
    fn validates_the_tree() {
        let field = |r: Route, known: &dyn Fn(&str) -> bool| match RouteTree::new(&r, known) {
            Err(Error::InvalidSpec { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            field(Route::builder().build(), &|_| true),
            "alert.route.receiver"
        );
        assert_eq!(
            field(
                Route::builder()
                    .receiver("a")
                    .routes(vec![Route::builder().receiver("nope").build()])
                    .build(),
                &|r| r == "a"
            ),
            "alert.route.routes[0].receiver"
        );
        assert_eq!(
            field(
                Route::builder()
                    .receiver("a")
                    .routes(vec![
                        Route::builder()
                            .matchers(vec![Matcher::regex("service", "[")])
                            .build()
                    ])
                    .build(),
                &|_| true
            ),
            "alert.route.routes[0].matchers[0]"
        );
        assert_eq!(
            field(
                Route::builder()
                    .receiver("a")
                    .escalations(vec![
                        Escalation::new(Duration::from_secs(60), "b"),
                        Escalation::new(Duration::from_secs(60), "c"),
                    ])
                    .build(),
                &|_| true
            ),
            "alert.route.escalations[1].after"
        );
        assert_eq!(
            field(
                Route::builder()
                    .receiver("a")
                    .group_interval(Duration::ZERO)
                    .build(),
                &|_| true
            ),
            "alert.route.group_interval"
        );
    }
}
