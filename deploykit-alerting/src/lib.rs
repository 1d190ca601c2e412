//! In-process alerting in the manner of Prometheus alerting rules and Alertmanager, plus
//! escalation.
//!
//! - [`AlertRule`]s are evaluated for every watched [`AlertTarget`] (a service in an
//!   environment, optionally one revision) against a [`Monitor`]: inactive → pending → firing
//!   → resolved, with `for_` and `keep_firing_for` as in Prometheus. Every state change is an
//!   [`AlertEvent`] on [`Alerting::subscribe`] (e.g. to roll a revision back when an alert
//!   fires for it).
//! - Firing alerts descend the [`Route`] tree to receivers and are grouped by the route's
//!   `group_by` labels; each group notifies its receiver after `group_wait`, sends changes no
//!   sooner than `group_interval` after its previous notification, and repeats an unchanged
//!   firing group after `repeat_interval`.
//! - [`InhibitRule`]s and [`Silence`]s mute alerts: muted alerts stay in [`Alerting::alerts`],
//!   marked, but are left out of notifications.
//! - [`Escalation`]s on a route: an unacknowledged firing group is also notified to the next
//!   receiver of the policy, with a higher `escalation_level`; see [`Alerting::acknowledge`].
//! - [`failover`]: failovers that stand still (a step that keeps failing, a driver that died)
//!   as a gauge read from the journal, and the `FailoverStalled` rule that fires on it.
//! - Notifications ([`AlertNotification`], serializable) are delivered to named
//!   [`AlertSink`]s; with the `webhook` feature, `WebhookNotifier` is one
//!   (it POSTs the notification as JSON).
//!
//! # Semantics and decisions
//!
//! - **No data** (an empty result, NaN, ±infinity) means a rule's condition does not hold, as
//!   in Prometheus: missing data never fires an alert, drops a pending one, and resolves a
//!   firing one once `keep_firing_for` has passed (the knob for riding out gaps). A **failed
//!   query** is different: that round changes nothing for the rule and target (no new alert,
//!   no promotion to firing, no resolution), like a failed Prometheus rule evaluation, so a
//!   broken monitor neither pages nor silently resolves everything.
//! - **Time**: `for_`, `keep_firing_for`, the group timers and escalation deadlines run on
//!   tokio's clock ([`tokio::time::Instant`]), so tests on a paused runtime are exact;
//!   timestamps in alerts and notifications come from the engine's [`Clock`]. Conditions are
//!   observed only when [`Alerting::evaluate`] runs (every `interval` under
//!   [`Alerting::spawn`]), so `for_` is effectively rounded up to whole evaluation rounds, as in
//!   Prometheus.
//! - **Timers**: each round ([`Alerting::evaluate`]) ends with a dispatch step
//!   ([`Alerting::dispatch`]) that sends every group notification and escalation that is due
//!   by tokio's clock. Deadlines are kept on their own schedule (a group flushed late still
//!   flushes next at its first deadline + `group_interval`). [`Alerting::spawn`] sleeps
//!   exactly until the earlier of the next evaluation and the next group or escalation
//!   deadline, so timers fire on time even with a long evaluation interval.
//! - **Groups** are per route: alerts taken by the same route (so the same receiver) with the
//!   same values of its `group_by` labels form one group, keyed
//!   `"{route path}:{receiver}:{group labels}"` (e.g. `0.1:pager:{service="web"}`). A group
//!   notification holds all its unmuted firing alerts, plus the alerts resolved since the
//!   receiver last heard of them firing; an alert that fires and resolves between two
//!   notifications is never sent. A failed delivery is retried at the group's next tick.
//! - **Escalation** is a policy on a route (inherited by child routes that set none): the
//!   steps' `after`s count from the group's first firing notification. A step is sent only
//!   while the group has unmuted firing alerts and is not acknowledged; an escalated receiver
//!   then also gets the group's later changes and its resolution, with its level.
//!   Acknowledgement stops further steps; when a group has resolved entirely and its
//!   resolution was sent, it is dropped, and a later alert starts a new group (and episode).
//!
//! ```
//! # use std::sync::{Arc, Mutex};
//! # use async_trait::async_trait;
//! # use deploykit_core::*;
//! # use deploykit_alerting::*;
//! # use deploykit_core::analysis::Condition;
//! # #[derive(Debug)]
//! # struct Fixed(f64);
//! # #[async_trait]
//! # impl Monitor for Fixed {
//! #     async fn instance_health(&self, _: &ServiceId, _: &RevisionId)
//! #         -> Result<Vec<InstanceObservation>> { Ok(vec![]) }
//! #     async fn query(&self, _: &MetricQuery) -> Result<Vec<Sample>> {
//! #         Ok(vec![Sample { at: Timestamp::from_millis(0), value: self.0 }])
//! #     }
//! # }
//! #[derive(Debug, Default)]
//! struct Pager(Mutex<Vec<AlertNotification>>);
//!
//! #[async_trait]
//! impl AlertSink for Pager {
//!     async fn deliver(&self, n: &AlertNotification) -> Result<()> {
//!         self.0.lock().unwrap().push(n.clone());
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<()> {
//! let pager = Arc::new(Pager::default());
//! let alerting = Alerting::builder()
//!     .rule(AlertRule::builder()
//!         .name("HighErrorRate")
//!         .expr("error_rate")
//!         .condition(Condition::above(0.05))
//!         .labels(labels([("severity", "critical")]))
//!         .build()?)
//!     .route(Route::builder().receiver("pager").group_wait(std::time::Duration::ZERO).build())
//!     .sink("pager", pager.clone())
//!     .build()?;
//! let mut events = alerting.subscribe();
//! alerting.watch(AlertTarget::new(ServiceId::new("web")?, EnvironmentName::new("prod")?));
//!
//! alerting.evaluate(&Fixed(0.2)).await; // `monitor` would be the real Monitor
//! let event = events.recv().await.unwrap();
//! assert_eq!(event.alert.state, AlertState::Firing);
//! assert_eq!(event.alert.label("service"), Some("web"));
//! let sent = pager.0.lock().unwrap().clone();
//! assert_eq!(sent.len(), 1);
//! assert_eq!(sent[0].alerts[0].value, Some(0.2));
//! # Ok(()) }
//! ```

mod alert;
#[cfg(feature = "email")]
pub mod email;
pub mod failover;
mod inhibit;
mod route;
mod rule;
mod silence;
mod trigger;
#[cfg(feature = "webhook")]
pub mod webhook;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::broadcast;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

pub use alert::{
    Acknowledgement, Alert, AlertEvent, AlertGroup, AlertNotification, AlertSink, AlertState,
    AlertTarget, Labels, NotificationStatus, fingerprint, labels,
};
pub use inhibit::InhibitRule;
pub use route::{
    DEFAULT_GROUP_INTERVAL, DEFAULT_GROUP_WAIT, DEFAULT_REPEAT_INTERVAL, Escalation, MatchOp,
    Matcher, Route,
};
pub use rule::{AlertRule, RESERVED_LABELS, environment_selector};
pub use silence::Silence;
pub use trigger::rollback_on_alerts;

use alert::render_labels;
use deploykit_core::model::{RevisionId, ServiceId};
use deploykit_core::monitor::{Monitor, MonitorExt};
use deploykit_core::time::{Clock, SystemClock, Timestamp};
use deploykit_core::{Error, Result};
use inhibit::CompiledInhibit;
use route::RouteTree;
use silence::SilenceEntry;

/// One alert of a rule for a target.
#[derive(Debug)]
struct Entry {
    alert: Alert,
    target: AlertTarget,
    /// Tokio time it became pending.
    active_since: Instant,
    /// Tokio time its condition stopped holding while firing.
    keep_firing_since: Option<Instant>,
    /// Keys of the groups it is in (while firing).
    groups: Vec<String>,
}

/// What one receiver of a group last heard.
#[derive(Debug)]
struct ReceiverState {
    name: String,
    level: u32,
    last_firing: BTreeSet<String>,
    last_sent: Option<Instant>,
}

impl ReceiverState {
    fn new(name: &str, level: u32) -> Self {
        ReceiverState {
            name: name.to_string(),
            level,
            last_firing: BTreeSet::new(),
            last_sent: None,
        }
    }
}

#[derive(Debug)]
struct Group {
    route: usize,
    labels: Labels,
    /// Fingerprints of its firing alerts.
    firing: BTreeSet<String>,
    /// Alerts resolved since the group's last tick.
    resolved: BTreeMap<String, Alert>,
    next_flush: Instant,
    /// The route's receiver first, then escalated ones.
    receivers: Vec<ReceiverState>,
    first_notified: Option<Instant>,
    escalation_level: u32,
    acknowledged: Option<Acknowledgement>,
}

#[derive(Debug, Default)]
struct State {
    targets: BTreeSet<AlertTarget>,
    /// Pending and firing alerts by fingerprint.
    alerts: BTreeMap<String, Entry>,
    groups: BTreeMap<String, Group>,
    silences: BTreeMap<String, SilenceEntry>,
    next_silence: u64,
}

/// A group's unmuted alerts at a dispatch step.
struct GroupView {
    key: String,
    /// Unmuted firing alerts, sorted by labels.
    firing: Vec<Alert>,
    /// Unmuted resolved alerts, sorted by labels.
    resolved: Vec<Alert>,
    /// Every resolved alert's fingerprint (muted or not): dropped from the group once flushed.
    dealt: Vec<String>,
}

/// A notification decided on, to deliver.
#[derive(Debug)]
struct Outgoing {
    notification: AlertNotification,
    /// The firing fingerprints it tells the receiver of.
    firing: BTreeSet<String>,
    escalation: bool,
}

/// The alerting engine: rules, targets, routing, grouping, silences, inhibition, escalation
/// and delivery. See the [module documentation](self).
///
/// Drive it with [`Alerting::spawn`], or call [`Alerting::evaluate`] yourself (tests on a paused
/// tokio clock do). Rounds are serialized: concurrent calls wait for each other.
#[derive(Debug)]
pub struct Alerting {
    rules: Vec<AlertRule>,
    routes: RouteTree,
    inhibit: Vec<CompiledInhibit>,
    sinks: BTreeMap<String, Arc<dyn AlertSink>>,
    clock: Arc<dyn Clock>,
    interval: Duration,
    state: Mutex<State>,
    round: tokio::sync::Mutex<()>,
    events: broadcast::Sender<AlertEvent>,
}

/// Builds an [`Alerting`] engine; see [`Alerting::builder`].
#[derive(Debug, Default)]
pub struct AlertingBuilder {
    rules: Vec<AlertRule>,
    route: Option<Route>,
    inhibit_rules: Vec<InhibitRule>,
    sinks: BTreeMap<String, Arc<dyn AlertSink>>,
    clock: Option<Arc<dyn Clock>>,
    interval: Option<Duration>,
}

/// The default evaluation interval.
pub const DEFAULT_EVALUATION_INTERVAL: Duration = Duration::from_secs(15);

impl AlertingBuilder {
    /// Add a rule.
    pub fn rule(mut self, rule: AlertRule) -> Self {
        self.rules.push(rule);
        self
    }

    /// Add rules.
    pub fn rules(mut self, rules: impl IntoIterator<Item = AlertRule>) -> Self {
        self.rules.extend(rules);
        self
    }

    /// The routing tree (required).
    pub fn route(mut self, route: Route) -> Self {
        self.route = Some(route);
        self
    }

    /// Add an inhibition rule.
    pub fn inhibit_rule(mut self, rule: InhibitRule) -> Self {
        self.inhibit_rules.push(rule);
        self
    }

    /// Deliver the notifications of receiver `name` to `sink`. Every receiver the routes name
    /// needs one.
    pub fn sink(mut self, name: impl Into<String>, sink: Arc<dyn AlertSink>) -> Self {
        self.sinks.insert(name.into(), sink);
        self
    }

    /// Where timestamps come from (default: [`SystemClock`]).
    pub fn clock(mut self, clock: impl Clock + 'static) -> Self {
        self.clock = Some(Arc::new(clock));
        self
    }

    /// Time between evaluation rounds under [`Alerting::spawn`] (default
    /// [`DEFAULT_EVALUATION_INTERVAL`], 15 s).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = Some(interval);
        self
    }

    /// Checks everything and builds the engine: every rule is valid and no two have the same
    /// name and labels, the route tree is valid and every receiver (including escalation
    /// receivers) has a sink, every regex compiles, and the interval is not zero.
    pub fn build(self) -> Result<Alerting> {
        let mut seen: BTreeMap<(String, Labels), usize> = BTreeMap::new();
        for (i, rule) in self.rules.iter().enumerate() {
            rule.validate()?;
            if let Some(j) = seen.insert((rule.name.clone(), rule.labels.clone()), i) {
                return Err(Error::invalid(
                    "alert.rules",
                    format!(
                        "rules[{i}] has the same name ({:?}) and labels as rules[{j}], so their \
                         alerts would be the same",
                        rule.name
                    ),
                ));
            }
        }
        let route = self
            .route
            .ok_or_else(|| Error::invalid("alert.route", "a routing tree is required"))?;
        let sinks = self.sinks;
        let routes = RouteTree::new(&route, &|r: &str| sinks.contains_key(r))?;
        let inhibit = self
            .inhibit_rules
            .iter()
            .enumerate()
            .map(|(i, r)| r.compile(&format!("alert.inhibit_rules[{i}]")))
            .collect::<Result<Vec<_>>>()?;
        let interval = self.interval.unwrap_or(DEFAULT_EVALUATION_INTERVAL);
        if interval.is_zero() {
            return Err(Error::invalid(
                "alert.interval",
                "must be greater than zero",
            ));
        }
        let (events, _) = broadcast::channel(1024);
        Ok(Alerting {
            rules: self.rules,
            routes,
            inhibit,
            sinks,
            clock: self.clock.unwrap_or_else(|| Arc::new(SystemClock)),
            interval,
            state: Mutex::new(State::default()),
            round: tokio::sync::Mutex::new(()),
            events,
        })
    }
}

impl Alerting {
    /// A builder.
    pub fn builder() -> AlertingBuilder {
        AlertingBuilder::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The rules.
    pub fn rules(&self) -> &[AlertRule] {
        &self.rules
    }

    /// The evaluation interval.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Evaluate the rules for `target` from the next round on. Returns false if it was
    /// watched already.
    pub fn watch(&self, target: AlertTarget) -> bool {
        self.lock().targets.insert(target)
    }

    /// Stop evaluating rules for `target`: its firing alerts are resolved at once (and their
    /// resolution notified at their groups' next tick), its pending ones dropped. Returns false
    /// if it was not watched.
    pub fn unwatch(&self, target: &AlertTarget) -> bool {
        let ts = self.clock.now();
        let mut events = Vec::new();
        let removed = {
            let mut st = self.lock();
            let removed = st.targets.remove(target);
            let fps: Vec<String> = st
                .alerts
                .iter()
                .filter(|(_, e)| &e.target == target)
                .map(|(fp, _)| fp.clone())
                .collect();
            for fp in fps {
                self.deactivate(&mut st, &fp, ts, &mut events);
            }
            self.fill_mutes(&st, &mut events, ts);
            removed
        };
        self.publish(events);
        removed
    }

    /// The watched targets.
    pub fn targets(&self) -> Vec<AlertTarget> {
        self.lock().targets.iter().cloned().collect()
    }

    /// Every pending and firing alert, with its silences and inhibitions, sorted by labels.
    pub fn alerts(&self) -> Vec<Alert> {
        let ts = self.clock.now();
        let st = self.lock();
        let mut out: Vec<Alert> = st
            .alerts
            .values()
            .map(|e| self.with_mutes(&st, e.alert.clone(), ts))
            .collect();
        out.sort_by(|a, b| a.labels.cmp(&b.labels));
        out
    }

    /// Every alert group, by key.
    pub fn groups(&self) -> Vec<AlertGroup> {
        let ts = self.clock.now();
        let st = self.lock();
        st.groups
            .iter()
            .map(|(key, g)| {
                let mut alerts: Vec<Alert> = g
                    .firing
                    .iter()
                    .filter_map(|fp| st.alerts.get(fp))
                    .map(|e| self.with_mutes(&st, e.alert.clone(), ts))
                    .collect();
                alerts.sort_by(|a, b| a.labels.cmp(&b.labels));
                alerts.extend(g.resolved.values().cloned());
                AlertGroup {
                    key: key.clone(),
                    receiver: self.routes.nodes[g.route].receiver.clone(),
                    labels: g.labels.clone(),
                    alerts,
                    escalation_level: g.escalation_level,
                    acknowledged: g.acknowledged.clone(),
                }
            })
            .collect()
    }

    /// Every state change from now on: pending, firing, resolved, and inactive for a dropped
    /// pending alert. A receiver that lags more than 1024 events behind loses the oldest.
    pub fn subscribe(&self) -> broadcast::Receiver<AlertEvent> {
        self.events.subscribe()
    }

    /// Acknowledge a group (by its key) or every group holding an alert (by its fingerprint):
    /// no further escalation step is sent for it. Acknowledging twice keeps the first.
    pub fn acknowledge(&self, key: &str, by: &str) -> Result<()> {
        if by.trim().is_empty() {
            return Err(Error::invalid(
                "alert.acknowledge.by",
                "say who acknowledges",
            ));
        }
        let at = self.clock.now();
        let mut st = self.lock();
        let mut found = false;
        for (k, g) in st.groups.iter_mut() {
            if k == key || g.firing.contains(key) || g.resolved.contains_key(key) {
                found = true;
                g.acknowledged.get_or_insert_with(|| Acknowledgement {
                    by: by.to_string(),
                    at,
                });
            }
        }
        if found {
            Ok(())
        } else {
            Err(Error::not_found(format!("alert group or alert {key:?}")))
        }
    }

    /// Add (or, with the id of an existing one, replace) a silence and return its id. Checks
    /// that it ends after it starts, has at least one matcher and an author, and that every
    /// regex compiles.
    pub fn add_silence(&self, silence: Silence) -> Result<String> {
        let matchers = silence.compile()?;
        let mut st = self.lock();
        let mut silence = silence;
        if silence.id.is_empty() {
            loop {
                st.next_silence += 1;
                let id = format!("silence-{}", st.next_silence);
                if !st.silences.contains_key(&id) {
                    silence.id = id;
                    break;
                }
            }
        }
        let id = silence.id.clone();
        st.silences
            .insert(id.clone(), SilenceEntry { silence, matchers });
        Ok(id)
    }

    /// End a silence now (it is kept, expired, in [`Alerting::silences`]).
    pub fn expire_silence(&self, id: &str) -> Result<()> {
        let now = self.clock.now();
        let mut st = self.lock();
        let entry = st
            .silences
            .get_mut(id)
            .ok_or_else(|| Error::not_found(format!("silence {id}")))?;
        let s = &mut entry.silence;
        if s.ends_at > now {
            s.ends_at = now;
            if s.starts_at > now {
                s.starts_at = now;
            }
        }
        Ok(())
    }

    /// Every silence (active, future and expired), by id.
    pub fn silences(&self) -> Vec<Silence> {
        self.lock()
            .silences
            .values()
            .map(|e| e.silence.clone())
            .collect()
    }

    /// One round: query every rule for every watched target, update the alerts (publishing
    /// their state changes), then [dispatch](Alerting::dispatch) what is due.
    ///
    /// Queries that render to the same query for the same target are made once per round. A
    /// failed query is logged and leaves that rule's alert for that target as it was.
    pub async fn evaluate(&self, monitor: &dyn Monitor) {
        let _round = self.round.lock().await;
        let targets: Vec<AlertTarget> = self.lock().targets.iter().cloned().collect();
        type Key = (ServiceId, Option<RevisionId>, String);
        let mut cache: HashMap<Key, Option<Option<f64>>> = HashMap::new();
        let mut results = Vec::with_capacity(self.rules.len() * targets.len());
        for (ri, rule) in self.rules.iter().enumerate() {
            for target in &targets {
                let q = rule.query(target);
                let key = (q.service.clone(), q.revision.clone(), q.expr.clone());
                let outcome = match cache.get(&key) {
                    Some(o) => *o,
                    None => {
                        let o = match monitor.latest(&q).await {
                            Ok(v) => Some(v),
                            Err(e) => {
                                tracing::warn!(
                                    alert = %rule.name, %target, expr = %q.expr, error = %e,
                                    "alert rule query failed; its alert is left as it was"
                                );
                                None
                            }
                        };
                        cache.insert(key, o);
                        o
                    }
                };
                results.push((ri, target.clone(), outcome));
            }
        }
        let now = Instant::now();
        let ts = self.clock.now();
        let mut events = Vec::new();
        {
            let mut st = self.lock();
            for (ri, target, outcome) in results {
                if let Some(value) = outcome
                    && st.targets.contains(&target)
                {
                    self.apply(&mut st, ri, &target, value, now, ts, &mut events);
                }
            }
            self.fill_mutes(&st, &mut events, ts);
        }
        self.publish(events);
        self.dispatch_due(now).await;
    }

    /// Send the group notifications and escalation steps that are due by tokio's clock,
    /// without evaluating rules. [`Alerting::evaluate`] ends with this.
    pub async fn dispatch(&self) {
        let _round = self.round.lock().await;
        self.dispatch_due(Instant::now()).await;
    }

    /// Run the engine: evaluate every `interval` (the first round at once) and, in between,
    /// wake exactly at each group or escalation deadline to dispatch it. Abort the handle to
    /// stop.
    pub fn spawn(self: Arc<Self>, monitor: Arc<dyn Monitor>) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut next_eval = Instant::now();
            loop {
                if Instant::now() >= next_eval {
                    self.evaluate(monitor.as_ref()).await;
                    next_eval = next_tick(next_eval, self.interval, Instant::now());
                } else {
                    self.dispatch().await;
                }
                let now = Instant::now();
                let wake = self
                    .next_deadline(now)
                    .map_or(next_eval, |d| d.min(next_eval));
                tokio::time::sleep_until(wake.max(now + Duration::from_millis(1))).await;
            }
        })
    }

    /// The earliest group tick or escalation deadline after `now`.
    fn next_deadline(&self, now: Instant) -> Option<Instant> {
        let st = self.lock();
        let mut next: Option<Instant> = None;
        let mut consider = |t: Instant| {
            if t > now {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        for g in st.groups.values() {
            consider(g.next_flush);
            let steps = &self.routes.nodes[g.route].escalations;
            if let (Some(first), None, Some(step)) = (
                g.first_notified,
                &g.acknowledged,
                steps.get(g.escalation_level as usize),
            ) {
                consider(first + step.after);
            }
        }
        next
    }

    fn publish(&self, events: Vec<AlertEvent>) {
        for e in events {
            // No subscriber is fine.
            let _ = self.events.send(e);
        }
    }

    /// Updates one rule's alert for one target from a successful query.
    #[allow(clippy::too_many_arguments)]
    fn apply(
        &self,
        st: &mut State,
        ri: usize,
        target: &AlertTarget,
        value: Option<f64>,
        now: Instant,
        ts: Timestamp,
        events: &mut Vec<AlertEvent>,
    ) {
        let rule = &self.rules[ri];
        let labels = rule.alert_labels(target);
        let fp = fingerprint(&labels);
        let holds = value.is_some_and(|v| rule.condition.holds(v));
        let Some(entry) = st.alerts.get_mut(&fp) else {
            if !holds {
                return;
            }
            let alert = Alert {
                fingerprint: fp.clone(),
                annotations: rule.render_annotations(target, &labels, value),
                labels,
                state: AlertState::Pending,
                active_at: ts,
                started_at: None,
                ended_at: None,
                value,
                silenced_by: Vec::new(),
                inhibited_by: Vec::new(),
            };
            st.alerts.insert(
                fp.clone(),
                Entry {
                    alert: alert.clone(),
                    target: target.clone(),
                    active_since: now,
                    keep_firing_since: None,
                    groups: Vec::new(),
                },
            );
            if rule.for_.is_zero() {
                self.fire(st, &fp, AlertState::Inactive, now, ts, events);
            } else {
                events.push(AlertEvent {
                    alert,
                    previous: AlertState::Inactive,
                    at: ts,
                });
            }
            return;
        };
        if value.is_some() {
            entry.alert.value = value;
            entry.alert.annotations = rule.render_annotations(target, &entry.alert.labels, value);
        }
        match (entry.alert.state, holds) {
            (AlertState::Pending, true) if now.duration_since(entry.active_since) >= rule.for_ => {
                self.fire(st, &fp, AlertState::Pending, now, ts, events);
            }
            (AlertState::Firing, true) => entry.keep_firing_since = None,
            (AlertState::Firing, false) if !rule.keep_firing_for.is_zero() => {
                let since = *entry.keep_firing_since.get_or_insert(now);
                if now.duration_since(since) >= rule.keep_firing_for {
                    self.deactivate(st, &fp, ts, events);
                }
            }
            (_, false) => self.deactivate(st, &fp, ts, events),
            _ => {}
        }
    }

    /// Pending or new → firing: route the alert into its groups.
    fn fire(
        &self,
        st: &mut State,
        fp: &str,
        previous: AlertState,
        now: Instant,
        ts: Timestamp,
        events: &mut Vec<AlertEvent>,
    ) {
        let Some(labels) = st.alerts.get(fp).map(|e| e.alert.labels.clone()) else {
            return;
        };
        let mut keys = Vec::new();
        for idx in self.routes.matching(&labels) {
            let node = &self.routes.nodes[idx];
            let group_labels = node.group_labels(&labels);
            let key = format!(
                "{}:{}:{}",
                node.path,
                node.receiver,
                render_labels(&group_labels)
            );
            let g = st.groups.entry(key.clone()).or_insert_with(|| Group {
                route: idx,
                labels: group_labels,
                firing: BTreeSet::new(),
                resolved: BTreeMap::new(),
                next_flush: now + node.group_wait,
                receivers: vec![ReceiverState::new(&node.receiver, 0)],
                first_notified: None,
                escalation_level: 0,
                acknowledged: None,
            });
            g.firing.insert(fp.to_string());
            g.resolved.remove(fp);
            keys.push(key);
        }
        if let Some(e) = st.alerts.get_mut(fp) {
            e.alert.state = AlertState::Firing;
            e.alert.started_at = Some(ts);
            e.keep_firing_since = None;
            e.groups = keys;
            events.push(AlertEvent {
                alert: e.alert.clone(),
                previous,
                at: ts,
            });
        }
    }

    /// Pending → dropped (inactive), or firing → resolved (kept in its groups until notified).
    fn deactivate(&self, st: &mut State, fp: &str, ts: Timestamp, events: &mut Vec<AlertEvent>) {
        let Some(mut e) = st.alerts.remove(fp) else {
            return;
        };
        let previous = e.alert.state;
        if previous == AlertState::Firing {
            e.alert.state = AlertState::Resolved;
            e.alert.ended_at = Some(ts);
            for key in &e.groups {
                if let Some(g) = st.groups.get_mut(key) {
                    g.firing.remove(fp);
                    g.resolved.insert(fp.to_string(), e.alert.clone());
                }
            }
        } else {
            e.alert.state = AlertState::Inactive;
        }
        events.push(AlertEvent {
            alert: e.alert,
            previous,
            at: ts,
        });
    }

    /// `alert` with the silences and inhibitions muting it now.
    fn with_mutes(&self, st: &State, mut alert: Alert, ts: Timestamp) -> Alert {
        alert.silenced_by = st
            .silences
            .values()
            .filter(|s| s.mutes(&alert.labels, ts))
            .map(|s| s.silence.id.clone())
            .collect();
        let mut inhibited_by: Vec<String> = Vec::new();
        for rule in &self.inhibit {
            if !rule.is_target(&alert.labels) {
                continue;
            }
            for (sfp, source) in &st.alerts {
                if *sfp != alert.fingerprint
                    && source.alert.state == AlertState::Firing
                    && rule.inhibits(&source.alert.labels, &alert.labels)
                    && !inhibited_by.contains(sfp)
                {
                    inhibited_by.push(sfp.clone());
                }
            }
        }
        alert.inhibited_by = inhibited_by;
        alert
    }

    fn fill_mutes(&self, st: &State, events: &mut [AlertEvent], ts: Timestamp) {
        for e in events {
            e.alert = self.with_mutes(st, e.alert.clone(), ts);
        }
    }

    async fn dispatch_due(&self, now: Instant) {
        let ts = self.clock.now();
        let (outgoing, flushed) = {
            let mut st = self.lock();
            self.plan(&mut st, now, ts)
        };
        let delivered = self.deliver(&outgoing).await;
        let mut st = self.lock();
        let mut failed: BTreeSet<&str> = BTreeSet::new();
        for (o, ok) in outgoing.iter().zip(&delivered) {
            let n = &o.notification;
            let Some(g) = st.groups.get_mut(&n.group_key) else {
                continue;
            };
            if !ok && !o.escalation {
                failed.insert(&n.group_key);
            }
            let idx = match g.receivers.iter().position(|r| r.name == n.receiver) {
                Some(i) => i,
                None => {
                    g.receivers
                        .push(ReceiverState::new(&n.receiver, n.escalation_level));
                    g.receivers.len() - 1
                }
            };
            // A failed delivery leaves the receiver's record as it was, so the group's next
            // tick sends it again.
            if *ok {
                let r = &mut g.receivers[idx];
                r.last_firing = o.firing.clone();
                r.last_sent = Some(now);
            }
        }
        for (key, resolved) in flushed {
            if failed.contains(key.as_str()) {
                continue;
            }
            if let Some(g) = st.groups.get_mut(&key) {
                for fp in resolved {
                    g.resolved.remove(&fp);
                }
            }
        }
        st.groups
            .retain(|_, g| !g.firing.is_empty() || !g.resolved.is_empty());
    }

    /// Decides what is due: group ticks and escalation steps. Returns the notifications and,
    /// per flushed group, the resolved alerts it has dealt with.
    fn plan(
        &self,
        st: &mut State,
        now: Instant,
        ts: Timestamp,
    ) -> (Vec<Outgoing>, Vec<(String, Vec<String>)>) {
        // Unmuted firing and resolved alerts of each group, computed before mutating groups.
        let views: Vec<GroupView> = st
            .groups
            .iter()
            .map(|(key, g)| {
                let mut firing: Vec<Alert> = g
                    .firing
                    .iter()
                    .filter_map(|fp| st.alerts.get(fp))
                    .map(|e| self.with_mutes(st, e.alert.clone(), ts))
                    .filter(|a| !a.is_muted())
                    .collect();
                firing.sort_by(|a, b| a.labels.cmp(&b.labels));
                let mut resolved: Vec<Alert> = g
                    .resolved
                    .values()
                    .map(|a| self.with_mutes(st, a.clone(), ts))
                    .filter(|a| !a.is_muted())
                    .collect();
                resolved.sort_by(|a, b| a.labels.cmp(&b.labels));
                let dealt: Vec<String> = g.resolved.keys().cloned().collect();
                GroupView {
                    key: key.clone(),
                    firing,
                    resolved,
                    dealt,
                }
            })
            .collect();
        let mut outgoing = Vec::new();
        let mut flushed = Vec::new();
        for GroupView {
            key,
            firing,
            resolved,
            dealt,
        } in views
        {
            let Some(g) = st.groups.get_mut(&key) else {
                continue;
            };
            let node = &self.routes.nodes[g.route];
            let group_labels = g.labels.clone();
            let firing_set: BTreeSet<String> =
                firing.iter().map(|a| a.fingerprint.clone()).collect();
            let notification = |receiver: &str, level: u32, alerts: Vec<Alert>| {
                let status = if firing_set.is_empty() {
                    NotificationStatus::Resolved
                } else {
                    NotificationStatus::Firing
                };
                AlertNotification {
                    receiver: receiver.to_string(),
                    group_key: key.clone(),
                    group_labels: group_labels.clone(),
                    status,
                    alerts,
                    escalation_level: level,
                    at: ts,
                }
            };
            if g.next_flush <= now {
                for r in &g.receivers {
                    let told: Vec<Alert> = resolved
                        .iter()
                        .filter(|a| r.last_firing.contains(&a.fingerprint))
                        .cloned()
                        .collect();
                    let send = match r.last_sent {
                        None => !firing_set.is_empty(),
                        Some(last) => {
                            !firing_set.is_subset(&r.last_firing)
                                || !told.is_empty()
                                || (!firing_set.is_empty()
                                    && now.duration_since(last) >= node.repeat_interval)
                        }
                    };
                    if send {
                        let mut alerts = firing.clone();
                        alerts.extend(told);
                        outgoing.push(Outgoing {
                            notification: notification(&r.name, r.level, alerts),
                            firing: firing_set.clone(),
                            escalation: false,
                        });
                    }
                }
                if g.first_notified.is_none() && !firing_set.is_empty() {
                    g.first_notified = Some(now);
                }
                g.next_flush = next_tick(g.next_flush, node.group_interval, now);
                flushed.push((key.clone(), dealt));
            }
            if let (Some(first), None, false) =
                (g.first_notified, &g.acknowledged, firing_set.is_empty())
            {
                while let Some(step) = node.escalations.get(g.escalation_level as usize) {
                    if now < first + step.after {
                        break;
                    }
                    g.escalation_level += 1;
                    outgoing.push(Outgoing {
                        notification: notification(
                            &step.receiver,
                            g.escalation_level,
                            firing.clone(),
                        ),
                        firing: firing_set.clone(),
                        escalation: true,
                    });
                }
            }
        }
        (outgoing, flushed)
    }

    /// Delivers each sink's notifications in order, sinks concurrently; says which succeeded.
    async fn deliver(&self, outgoing: &[Outgoing]) -> Vec<bool> {
        let mut ok = vec![false; outgoing.len()];
        if outgoing.is_empty() {
            return ok;
        }
        let mut by_sink: BTreeMap<&str, Vec<(usize, AlertNotification)>> = BTreeMap::new();
        for (i, o) in outgoing.iter().enumerate() {
            by_sink
                .entry(o.notification.receiver.as_str())
                .or_default()
                .push((i, o.notification.clone()));
        }
        let mut tasks = JoinSet::new();
        for (name, batch) in by_sink {
            let Some(sink) = self.sinks.get(name).cloned() else {
                tracing::warn!(receiver = name, "no sink for alert receiver");
                continue;
            };
            tasks.spawn(async move {
                let mut done = Vec::with_capacity(batch.len());
                for (i, n) in batch {
                    let result = sink.deliver(&n).await;
                    if let Err(e) = &result {
                        tracing::warn!(
                            receiver = %n.receiver, group = %n.group_key, error = %e,
                            "alert notification failed; retried at the group's next tick"
                        );
                    }
                    done.push((i, result.is_ok()));
                }
                done
            });
        }
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(done) => {
                    for (i, success) in done {
                        ok[i] = success;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "alert sink panicked"),
            }
        }
        ok
    }
}

/// The first `previous + k * every` (k ≥ 1) after `now`.
fn next_tick(previous: Instant, every: Duration, now: Instant) -> Instant {
    let next = previous + every;
    if next > now {
        return next;
    }
    let behind = now.duration_since(next).as_nanos();
    let step = every.as_nanos().max(1);
    let rem = Duration::from_nanos((behind % step) as u64);
    now + (Duration::from_nanos(step as u64) - rem)
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;

    #[test]
    fn next_tick_keeps_the_schedule() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        assert_eq!(next_tick(t0, s(10), t0), t0 + s(10));
        assert_eq!(next_tick(t0, s(10), t0 + s(10)), t0 + s(20));
        assert_eq!(next_tick(t0, s(10), t0 + s(25)), t0 + s(30));
        assert_eq!(next_tick(t0, s(10), t0 + s(9)), t0 + s(10));
    }

    #[test]
    fn renders_label_sets() {
        assert_eq!(render_labels(&Labels::new()), "{}");
        assert_eq!(
            render_labels(&labels([("b", "2"), ("a", "x\"y")])),
            r#"{a="x\"y",b="2"}"#
        );
    }

    #[derive(Debug)]
    struct Nop;

    #[async_trait]
    impl AlertSink for Nop {
        async fn deliver(&self, _: &AlertNotification) -> Result<()> {
            Ok(())
        }
    }

    #[test]
    fn build_validation() {
        let rule = |name: &str| {
            AlertRule::builder()
                .name(name)
                .expr("x")
                .condition(deploykit_core::analysis::Condition::above(1.0))
                .build()
                .unwrap()
        };
        let field = |r: Result<Alerting>| match r {
            Err(Error::InvalidSpec { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(field(Alerting::builder().build()), "alert.route");
        assert_eq!(
            field(
                Alerting::builder()
                    .route(Route::builder().receiver("x").build())
                    .build()
            ),
            "alert.route.receiver"
        );
        assert_eq!(
            field(
                Alerting::builder()
                    .rule(rule("A"))
                    .rule(rule("A"))
                    .route(Route::builder().receiver("x").build())
                    .sink("x", Arc::new(Nop))
                    .build()
            ),
            "alert.rules"
        );
        assert_eq!(
            field(
                Alerting::builder()
                    .route(Route::builder().receiver("x").build())
                    .sink("x", Arc::new(Nop))
                    .inhibit_rule(InhibitRule::new(
                        vec![Matcher::regex("a", "(")],
                        vec![Matcher::eq("a", "b")],
                        ["x"]
                    ))
                    .build()
            ),
            "alert.inhibit_rules[0].source[0]"
        );
        assert!(
            Alerting::builder()
                .rule(rule("A"))
                .rule(rule("B"))
                .route(Route::builder().receiver("x").build())
                .sink("x", Arc::new(Nop))
                .build()
                .is_ok()
        );
    }
}
