//! The alerting engine on a paused clock, with a `SimCluster` as the monitor and recording
//! sinks: rule states, grouping timers, silences, inhibition, escalation, routing, delivery
//! retries and validation.

use std::sync::Arc;
use std::time::Duration;

use deploykit_alerting::{
    AlertEvent, AlertRule, AlertState, AlertTarget, Alerting, AlertingBuilder, Escalation,
    InhibitRule, Matcher, NotificationStatus, Route, Silence, labels,
};
use deploykit_core::analysis::Condition;
use deploykit_core::{EnvironmentName, Error, RevisionId, ServiceId, Timestamp};
use deploykit_testing::{RecordingAlertSink, SimCluster};
use tokio::sync::broadcast;
use tokio::time::{Instant, sleep_until};

const EXPR: &str = "error_rate";

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn svc(name: &str) -> ServiceId {
    ServiceId::new(name).unwrap()
}

fn target(service: &str) -> AlertTarget {
    AlertTarget::new(svc(service), EnvironmentName::new("prod").unwrap())
}

/// A simulated cluster serving the metric, and the paused clock's origin.
struct World {
    sim: SimCluster,
    start: Instant,
    t0: Timestamp,
}

impl World {
    fn new() -> Self {
        let sim = SimCluster::new();
        World {
            t0: sim.clock().start(),
            start: Instant::now(),
            sim,
        }
    }

    /// The wall-clock time `s` seconds after the start.
    fn ts(&self, s: u64) -> Timestamp {
        self.t0.plus(secs(s))
    }

    /// Seconds since the start of a timestamp.
    fn at(&self, ts: Timestamp) -> u64 {
        ts.since(self.t0).as_secs()
    }

    /// Serve `value` (NaN: no data) for `service`.
    fn set(&self, service: &str, value: f64) {
        self.sim.set_metric(&svc(service), None, EXPR, vec![value]);
    }

    /// At each of `times` (seconds from the start), set every service's value from `value`
    /// and run one round.
    async fn drive(
        &self,
        alerting: &Alerting,
        services: &[&str],
        times: impl IntoIterator<Item = u64>,
        value: impl Fn(&str, u64) -> f64,
    ) {
        for t in times {
            sleep_until(self.start + secs(t)).await;
            for s in services {
                self.set(s, value(s, t));
            }
            alerting.evaluate(&self.sim).await;
        }
    }
}

fn rule(name: &str, threshold: f64) -> AlertRule {
    AlertRule::builder()
        .name(name)
        .expr(EXPR)
        .condition(Condition::above(threshold))
        .build()
        .unwrap()
}

fn engine(world: &World, rules: Vec<AlertRule>, route: Route) -> AlertingBuilder {
    Alerting::builder()
        .rules(rules)
        .route(route)
        .clock(world.sim.clock())
}

fn drain(rx: &mut broadcast::Receiver<AlertEvent>) -> Vec<(AlertState, AlertState)> {
    let mut out = Vec::new();
    while let Ok(e) = rx.try_recv() {
        out.push((e.previous, e.alert.state));
    }
    out
}

fn every(step: u64, from: u64, to: u64) -> impl Iterator<Item = u64> {
    (from..=to).step_by(step as usize)
}

#[tokio::test(start_paused = true)]
async fn without_for_a_flapping_condition_fires_at_once_each_time() {
    let w = World::new();
    let pager = RecordingAlertSink::new();
    let alerting = engine(
        &w,
        vec![rule("HighErrorRate", 0.05)],
        Route::builder().receiver("pager").build(),
    )
    .sink("pager", Arc::new(pager.clone()))
    .build()
    .unwrap();
    let rev = RevisionId::parse("0123456789abcdef").unwrap();
    alerting.watch(target("web").with_revision(rev.clone()));
    let mut rx = alerting.subscribe();

    let flap = [0.2, 0.0, 0.2, 0.0];
    for (i, v) in flap.iter().enumerate() {
        sleep_until(w.start + secs(15 * i as u64)).await;
        w.sim.set_metric(&svc("web"), Some(&rev), EXPR, vec![*v]);
        alerting.evaluate(&w.sim).await;
    }
    use AlertState::*;
    assert_eq!(
        drain(&mut rx),
        [
            (Inactive, Firing),
            (Firing, Resolved),
            (Inactive, Firing),
            (Firing, Resolved),
        ]
    );

    // The event carries what a rollback needs: the service and revision.
    w.sim.set_metric(&svc("web"), Some(&rev), EXPR, vec![0.3]);
    alerting.evaluate(&w.sim).await;
    let e = rx.try_recv().unwrap();
    assert!(e.is_firing());
    assert_eq!(e.service(), Some("web"));
    assert_eq!(e.environment(), Some("prod"));
    assert_eq!(e.revision(), Some("0123456789abcdef"));
    assert_eq!(e.alert.value, Some(0.3));
}

#[tokio::test(start_paused = true)]
async fn with_for_a_blip_never_fires_and_a_breach_fires_once() {
    let w = World::new();
    let pager = RecordingAlertSink::new();
    let slow = AlertRule::builder()
        .name("HighErrorRate")
        .expr(EXPR)
        .condition(Condition::above(0.05))
        .for_(secs(60))
        .annotations(labels([(
            "summary",
            "{{service}} in {{environment}} fails {{value}} ({{labels.alertname}})",
        )]))
        .build()
        .unwrap();
    let alerting = engine(&w, vec![slow], Route::builder().receiver("pager").build())
        .sink("pager", Arc::new(pager.clone()))
        .build()
        .unwrap();
    alerting.watch(target("web"));
    let mut rx = alerting.subscribe();
    use AlertState::*;

    // A 30 s blip (0–30 s): pending, then dropped silently.
    w.drive(&alerting, &["web"], every(15, 0, 120), |_, t| {
        if t <= 30 { 0.2 } else { 0.0 }
    })
    .await;
    assert_eq!(drain(&mut rx), [(Inactive, Pending), (Pending, Inactive)]);
    assert!(alerting.alerts().is_empty());
    assert!(pager.notifications().is_empty());

    // A 2 min breach (135–255 s): pending at 135, firing at 195, resolved at 270.
    w.drive(&alerting, &["web"], every(15, 135, 900), |_, t| {
        if t <= 255 { 0.2 } else { 0.0 }
    })
    .await;
    assert_eq!(
        drain(&mut rx),
        [(Inactive, Pending), (Pending, Firing), (Firing, Resolved)]
    );
    let sent = pager.notifications();
    let firing: Vec<_> = sent
        .iter()
        .filter(|n| n.status == NotificationStatus::Firing)
        .collect();
    assert_eq!(firing.len(), 1, "{sent:#?}");
    assert_eq!(w.at(firing[0].at), 195 + 30, "group_wait after firing");
    let alert = &firing[0].alerts[0];
    assert_eq!(alert.active_at, w.ts(135));
    assert_eq!(alert.started_at, Some(w.ts(195)));
    assert_eq!(
        alert.annotations["summary"],
        "web in prod fails 0.2 (HighErrorRate)"
    );
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[1].status, NotificationStatus::Resolved);
    assert_eq!(sent[1].alerts[0].ended_at, Some(w.ts(270)));
}

#[tokio::test(start_paused = true)]
async fn keep_firing_for_rides_out_a_brief_dip() {
    let w = World::new();
    let pager = RecordingAlertSink::new();
    let sticky = AlertRule::builder()
        .name("HighErrorRate")
        .expr(EXPR)
        .condition(Condition::above(0.05))
        .keep_firing_for(secs(120))
        .build()
        .unwrap();
    let alerting = engine(&w, vec![sticky], Route::builder().receiver("pager").build())
        .sink("pager", Arc::new(pager.clone()))
        .build()
        .unwrap();
    alerting.watch(target("web"));
    let mut rx = alerting.subscribe();

    // High 0–60 s, a 30 s dip (75–90 s, the second round without data), high again
    // 105–300 s, then low for good.
    w.drive(&alerting, &["web"], every(15, 0, 900), |_, t| match t {
        75 => 0.0,
        90 => f64::NAN,
        t if t <= 300 => 0.2,
        _ => 0.0,
    })
    .await;
    use AlertState::*;
    assert_eq!(drain(&mut rx), [(Inactive, Firing), (Firing, Resolved)]);
    let sent = pager.notifications();
    assert_eq!(sent.len(), 2, "{sent:#?}");
    assert_eq!(sent[0].status, NotificationStatus::Firing);
    assert_eq!(w.at(sent[0].at), 30);
    assert_eq!(sent[1].status, NotificationStatus::Resolved);
    // Low from 315 s: resolved 120 s later, notified at the group's next tick (30 + 2 × 300).
    assert_eq!(sent[1].alerts[0].ended_at, Some(w.ts(435)));
    assert_eq!(w.at(sent[1].at), 630);
    assert!(alerting.groups().is_empty(), "a resolved group is dropped");

    // Without keep_firing_for, the same dip resolves the alert and fires it again.
    let w = World::new();
    let alerting = engine(
        &w,
        vec![rule("HighErrorRate", 0.05)],
        Route::builder().receiver("pager").build(),
    )
    .sink("pager", Arc::new(RecordingAlertSink::new()))
    .build()
    .unwrap();
    alerting.watch(target("web"));
    let mut rx = alerting.subscribe();
    w.drive(&alerting, &["web"], every(15, 0, 120), |_, t| match t {
        75 | 90 => 0.0,
        _ => 0.2,
    })
    .await;
    assert_eq!(
        drain(&mut rx),
        [(Inactive, Firing), (Firing, Resolved), (Inactive, Firing)]
    );
}

#[tokio::test(start_paused = true)]
async fn group_wait_and_group_interval() {
    let w = World::new();
    let pager = RecordingAlertSink::new();
    let alerting = engine(
        &w,
        vec![rule("HighErrorRate", 0.05)],
        Route::builder()
            .receiver("pager")
            .group_by(["alertname"])
            .group_wait(secs(30))
            .group_interval(secs(300))
            .build(),
    )
    .sink("pager", Arc::new(pager.clone()))
    .build()
    .unwrap();
    let services = ["api", "db", "web"];
    for s in services {
        alerting.watch(target(s));
    }
    // api fires at 0 s, db at 10 s, web at 40 s.
    let fires_at = |s: &str| match s {
        "api" => 0,
        "db" => 10,
        _ => 40,
    };
    w.drive(&alerting, &services, every(10, 0, 600), |s, t| {
        if t >= fires_at(s) { 0.2 } else { 0.0 }
    })
    .await;

    let sent = pager.notifications();
    assert_eq!(sent.len(), 2, "{sent:#?}");
    let services_of = |i: usize| -> Vec<String> {
        sent[i]
            .alerts
            .iter()
            .map(|a| a.labels["service"].clone())
            .collect()
    };
    assert_eq!(w.at(sent[0].at), 30);
    assert_eq!(services_of(0), ["api", "db"]);
    assert_eq!(w.at(sent[1].at), 330, "the third only at 5 min 30 s");
    assert_eq!(services_of(1), ["api", "db", "web"]);
    assert_eq!(sent[0].group_key, sent[1].group_key);
    assert_eq!(
        sent[0].group_labels,
        labels([("alertname", "HighErrorRate")])
    );

    // Unchanged, the group is repeated only after repeat_interval (4 h by default).
    w.drive(
        &alerting,
        &services,
        every(30, 630, 4 * 3600 + 900),
        |_, _| 0.2,
    )
    .await;
    let sent = pager.notifications();
    assert_eq!(sent.len(), 3, "{sent:#?}");
    assert_eq!(
        w.at(sent[2].at),
        330 + 4 * 3600,
        "on the first tick 4 h after"
    );
}

#[tokio::test(start_paused = true)]
async fn silences_mute_matching_services_until_they_expire() {
    let w = World::new();
    let pager = RecordingAlertSink::new();
    let alerting = engine(
        &w,
        vec![rule("HighErrorRate", 0.05)],
        Route::builder()
            .receiver("pager")
            .group_by(["service"])
            .build(),
    )
    .sink("pager", Arc::new(pager.clone()))
    .build()
    .unwrap();
    let services = ["web", "web2", "xweb1"];
    for s in services {
        alerting.watch(target(s));
    }
    let id = alerting
        .add_silence(
            Silence::builder()
                .matchers(vec![Matcher::parse(r#"service=~"web.*""#).unwrap()])
                .starts_at(w.ts(0))
                .ends_at(w.ts(3600))
                .author("ops")
                .comment("deploying")
                .build(),
        )
        .unwrap();

    w.drive(&alerting, &services, every(15, 0, 120), |_, _| 0.2)
        .await;
    let sent = pager.take();
    assert_eq!(sent.len(), 1, "{sent:#?}");
    assert_eq!(sent[0].alerts.len(), 1);
    assert_eq!(sent[0].alerts[0].labels["service"], "xweb1");

    // Silenced alerts stay in the state, marked.
    let alerts = alerting.alerts();
    assert_eq!(alerts.len(), 3);
    for a in &alerts {
        let expected: Vec<String> = if a.labels["service"] == "xweb1" {
            vec![]
        } else {
            vec![id.clone()]
        };
        assert_eq!(a.silenced_by, expected, "{}", a.labels["service"]);
        assert_eq!(a.state, AlertState::Firing);
    }

    // Expired, the silenced groups are notified at their next tick.
    alerting.expire_silence(&id).unwrap();
    assert!(!alerting.silences()[0].is_active(w.ts(150)));
    w.drive(&alerting, &services, every(15, 135, 345), |_, _| 0.2)
        .await;
    let mut notified: Vec<String> = pager
        .take()
        .iter()
        .map(|n| {
            assert_eq!(w.at(n.at), 330);
            n.alerts[0].labels["service"].clone()
        })
        .collect();
    notified.sort();
    assert_eq!(notified, ["web", "web2"]);
    assert!(alerting.alerts().iter().all(|a| a.silenced_by.is_empty()));
    assert!(alerting.expire_silence("nope").is_err());
}

#[tokio::test(start_paused = true)]
async fn a_critical_alert_inhibits_warnings_of_its_own_service_only() {
    let w = World::new();
    let pager = RecordingAlertSink::new();
    let with_severity = |name: &str, threshold: f64, severity: &str| {
        AlertRule::builder()
            .name(name)
            .expr(EXPR)
            .condition(Condition::above(threshold))
            .labels(labels([("severity", severity)]))
            .build()
            .unwrap()
    };
    let alerting = engine(
        &w,
        vec![
            with_severity("VeryHighErrorRate", 0.1, "critical"),
            with_severity("HighErrorRate", 0.05, "warning"),
        ],
        Route::builder().receiver("pager").build(),
    )
    .inhibit_rule(InhibitRule::new(
        vec![Matcher::eq("severity", "critical")],
        vec![Matcher::eq("severity", "warning")],
        ["service"],
    ))
    .sink("pager", Arc::new(pager.clone()))
    .build()
    .unwrap();
    alerting.watch(target("web"));
    alerting.watch(target("api"));

    // web is at 0.2 (critical and warning fire), api at 0.07 (warning only).
    w.drive(&alerting, &["web", "api"], every(15, 0, 60), |s, _| {
        if s == "web" { 0.2 } else { 0.07 }
    })
    .await;
    let sent = pager.take();
    assert_eq!(sent.len(), 1);
    let names: Vec<(String, String)> = sent[0]
        .alerts
        .iter()
        .map(|a| (a.labels["service"].clone(), a.labels["severity"].clone()))
        .collect();
    assert_eq!(
        names,
        [
            ("api".to_string(), "warning".to_string()),
            ("web".to_string(), "critical".to_string()),
        ]
    );
    let alerts = alerting.alerts();
    assert_eq!(alerts.len(), 3);
    let critical = alerts
        .iter()
        .find(|a| a.labels["severity"] == "critical")
        .unwrap();
    for a in &alerts {
        let expected = if a.labels["severity"] == "warning" && a.labels["service"] == "web" {
            vec![critical.fingerprint.clone()]
        } else {
            vec![]
        };
        assert_eq!(a.inhibited_by, expected, "{:?}", a.labels);
    }

    // web falls to 0.07: the critical alert resolves and web's warning is no longer muted.
    w.drive(&alerting, &["web", "api"], every(15, 75, 330), |_, _| 0.07)
        .await;
    let sent = pager.take();
    assert_eq!(sent.len(), 1, "{sent:#?}");
    assert_eq!(w.at(sent[0].at), 330);
    let states: Vec<(String, String, AlertState)> = sent[0]
        .alerts
        .iter()
        .map(|a| {
            (
                a.labels["service"].clone(),
                a.labels["severity"].clone(),
                a.state,
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            ("api".into(), "warning".into(), AlertState::Firing),
            ("web".into(), "warning".into(), AlertState::Firing),
            ("web".into(), "critical".into(), AlertState::Resolved),
        ]
    );
}

fn escalating(w: &World, oncall: &RecordingAlertSink, lead: &RecordingAlertSink) -> Alerting {
    engine(
        w,
        vec![rule("HighErrorRate", 0.05)],
        Route::builder()
            .receiver("oncall")
            .escalations(vec![Escalation::new(secs(600), "lead")])
            .build(),
    )
    .sink("oncall", Arc::new(oncall.clone()))
    .sink("lead", Arc::new(lead.clone()))
    .build()
    .unwrap()
}

#[tokio::test(start_paused = true)]
async fn an_unacknowledged_group_escalates_to_the_next_receiver() {
    let w = World::new();
    let (oncall, lead) = (RecordingAlertSink::new(), RecordingAlertSink::new());
    let alerting = escalating(&w, &oncall, &lead);
    alerting.watch(target("web"));

    w.drive(&alerting, &["web"], every(15, 0, 615), |_, _| 0.2)
        .await;
    assert_eq!(oncall.notifications().len(), 1);
    assert!(
        lead.notifications().is_empty(),
        "not yet: 10 min after 30 s"
    );
    w.drive(&alerting, &["web"], every(15, 630, 1200), |_, _| 0.2)
        .await;
    let escalated = lead.notifications();
    assert_eq!(escalated.len(), 1, "{escalated:#?}");
    assert_eq!(w.at(escalated[0].at), 630);
    assert_eq!(escalated[0].escalation_level, 1);
    assert_eq!(escalated[0].receiver, "lead");
    assert_eq!(escalated[0].status, NotificationStatus::Firing);
    assert_eq!(alerting.groups()[0].escalation_level, 1);

    // The resolution reaches everyone who was paged, each with their level.
    w.drive(&alerting, &["web"], every(15, 1215, 1800), |_, _| 0.0)
        .await;
    let resolved = lead.notifications();
    assert_eq!(resolved.len(), 2);
    assert_eq!(resolved[1].status, NotificationStatus::Resolved);
    assert_eq!(resolved[1].escalation_level, 1);
    let to_oncall = oncall.notifications();
    assert_eq!(to_oncall.len(), 2);
    assert_eq!(to_oncall[1].status, NotificationStatus::Resolved);
    assert_eq!(to_oncall[1].escalation_level, 0);
}

#[tokio::test(start_paused = true)]
async fn acknowledgement_stops_escalation() {
    let w = World::new();
    let (oncall, lead) = (RecordingAlertSink::new(), RecordingAlertSink::new());
    let alerting = escalating(&w, &oncall, &lead);
    alerting.watch(target("web"));

    w.drive(&alerting, &["web"], every(15, 0, 300), |_, _| 0.2)
        .await;
    let key = oncall.notifications()[0].group_key.clone();
    assert!(alerting.acknowledge("no-such-group", "alice").is_err());
    alerting.acknowledge(&key, "alice").unwrap();
    let ack = alerting.groups()[0].acknowledged.clone().unwrap();
    assert_eq!((ack.by.as_str(), ack.at), ("alice", w.ts(300)));
    w.drive(&alerting, &["web"], every(15, 315, 3000), |_, _| 0.2)
        .await;
    assert!(lead.notifications().is_empty());

    // Acknowledging by an alert's fingerprint works too.
    let w2 = World::new();
    let (oncall, lead) = (RecordingAlertSink::new(), RecordingAlertSink::new());
    let alerting = escalating(&w2, &oncall, &lead);
    alerting.watch(target("api"));
    w2.drive(&alerting, &["api"], every(15, 0, 60), |_, _| 0.2)
        .await;
    let fp = alerting.alerts()[0].fingerprint.clone();
    alerting.acknowledge(&fp, "bob").unwrap();
    w2.drive(&alerting, &["api"], every(60, 120, 3000), |_, _| 0.2)
        .await;
    assert!(lead.notifications().is_empty());
}

#[tokio::test(start_paused = true)]
async fn routing_first_match_and_continue() {
    let by_severity = |sev: &str, receiver: &str, cont: bool| {
        Route::builder()
            .matchers(vec![Matcher::eq("severity", sev)])
            .receiver(receiver)
            .continue_(cont)
            .group_wait(Duration::ZERO)
            .build()
    };
    for cont in [false, true] {
        let w = World::new();
        let sinks: Vec<RecordingAlertSink> = (0..3).map(|_| RecordingAlertSink::new()).collect();
        let critical = AlertRule::builder()
            .name("Down")
            .expr(EXPR)
            .condition(Condition::above(0.5))
            .labels(labels([("severity", "critical")]))
            .build()
            .unwrap();
        let info = AlertRule::builder()
            .name("Slow")
            .expr(EXPR)
            .condition(Condition::above(0.05))
            .labels(labels([("severity", "info")]))
            .build()
            .unwrap();
        let alerting = engine(
            &w,
            vec![critical, info],
            Route::builder()
                .receiver("default")
                .group_wait(Duration::ZERO)
                .routes(vec![
                    by_severity("critical", "pager", cont),
                    by_severity("critical", "chat", false),
                ])
                .build(),
        )
        .sink("default", Arc::new(sinks[0].clone()))
        .sink("pager", Arc::new(sinks[1].clone()))
        .sink("chat", Arc::new(sinks[2].clone()))
        .build()
        .unwrap();
        alerting.watch(target("web"));
        w.drive(&alerting, &["web"], [0], |_, _| 0.9).await;

        let names = |s: &RecordingAlertSink| -> Vec<String> {
            s.notifications()
                .iter()
                .flat_map(|n| n.alerts.iter().map(|a| a.name().to_string()))
                .collect()
        };
        assert_eq!(names(&sinks[0]), ["Slow"], "no child matched: the parent");
        assert_eq!(names(&sinks[1]), ["Down"], "the first match");
        if cont {
            assert_eq!(names(&sinks[2]), ["Down"], "continue: the next match too");
        } else {
            assert!(names(&sinks[2]).is_empty(), "first match wins");
        }
        let keys: Vec<String> = alerting.groups().into_iter().map(|g| g.key).collect();
        assert_eq!(keys.len(), if cont { 3 } else { 2 }, "{keys:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_failed_delivery_is_retried_at_the_next_tick() {
    let w = World::new();
    let pager = RecordingAlertSink::new();
    let alerting = engine(
        &w,
        vec![rule("HighErrorRate", 0.05)],
        Route::builder().receiver("pager").build(),
    )
    .sink("pager", Arc::new(pager.clone()))
    .build()
    .unwrap();
    alerting.watch(target("web"));
    pager.fail_next(1);
    w.drive(&alerting, &["web"], every(15, 0, 600), |_, _| 0.2)
        .await;
    let sent = pager.notifications();
    assert_eq!(sent.len(), 1, "{sent:#?}");
    assert_eq!(w.at(sent[0].at), 330);
}

#[tokio::test(start_paused = true)]
async fn query_errors_leave_alerts_as_they_were() {
    let w = World::new();
    let pager = RecordingAlertSink::new();
    let alerting = engine(
        &w,
        vec![rule("HighErrorRate", 0.05)],
        Route::builder().receiver("pager").build(),
    )
    .sink("pager", Arc::new(pager.clone()))
    .build()
    .unwrap();
    alerting.watch(target("web"));
    let mut rx = alerting.subscribe();
    w.drive(&alerting, &["web"], [0], |_, _| 0.2).await;
    w.sim.fail_next(
        deploykit_testing::Op::Monitor,
        3,
        deploykit_testing::Fault::Transient,
    );
    w.drive(&alerting, &["web"], [15, 30, 45], |_, _| 0.0).await;
    assert_eq!(alerting.alerts()[0].state, AlertState::Firing);
    w.drive(&alerting, &["web"], [60], |_, _| 0.0).await;
    assert!(alerting.alerts().is_empty());
    assert_eq!(
        drain(&mut rx),
        [
            (AlertState::Inactive, AlertState::Firing),
            (AlertState::Firing, AlertState::Resolved)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn spawn_wakes_exactly_at_group_deadlines() {
    let w = World::new();
    let pager = RecordingAlertSink::new();
    let alerting = Arc::new(
        engine(
            &w,
            vec![rule("HighErrorRate", 0.05)],
            Route::builder()
                .receiver("pager")
                .group_wait(secs(7))
                .build(),
        )
        .interval(secs(60))
        .sink("pager", Arc::new(pager.clone()))
        .build()
        .unwrap(),
    );
    alerting.watch(target("web"));
    w.set("web", 0.2);
    let handle = alerting.clone().spawn(Arc::new(w.sim.clone()));
    sleep_until(w.start + secs(100)).await;
    handle.abort();
    let sent = pager.notifications();
    assert_eq!(sent.len(), 1);
    assert_eq!(w.at(sent[0].at), 7, "between two evaluations, 60 s apart");
}

#[tokio::test(start_paused = true)]
async fn unwatching_resolves_a_targets_alerts() {
    let w = World::new();
    let pager = RecordingAlertSink::new();
    let alerting = engine(
        &w,
        vec![rule("HighErrorRate", 0.05)],
        Route::builder().receiver("pager").build(),
    )
    .sink("pager", Arc::new(pager.clone()))
    .build()
    .unwrap();
    alerting.watch(target("web"));
    w.drive(&alerting, &["web"], every(15, 0, 30), |_, _| 0.2)
        .await;
    assert!(alerting.unwatch(&target("web")));
    assert!(!alerting.unwatch(&target("web")));
    assert!(alerting.alerts().is_empty());
    w.drive(&alerting, &["web"], every(15, 45, 330), |_, _| 0.2)
        .await;
    let sent = pager.notifications();
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[1].status, NotificationStatus::Resolved);
    assert_eq!(w.at(sent[1].at), 330);
}

fn invalid_field(e: Error) -> (String, String) {
    match e {
        Error::InvalidSpec { field, reason } => (field, reason),
        other => panic!("expected InvalidSpec, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn validation_errors_name_the_field() {
    let w = World::new();
    // A bad regex names the matcher.
    let err = engine(
        &w,
        vec![],
        Route::builder()
            .receiver("pager")
            .routes(vec![
                Route::builder()
                    .matchers(vec![Matcher::regex("service", "web(")])
                    .build(),
            ])
            .build(),
    )
    .sink("pager", Arc::new(RecordingAlertSink::new()))
    .build()
    .unwrap_err();
    let (field, reason) = invalid_field(err);
    assert_eq!(field, "alert.route.routes[0].matchers[0]");
    assert!(reason.contains(r#"service=~"web(""#), "{reason}");

    // A silence ending before it starts, or without matchers, or with a bad regex.
    let alerting = engine(&w, vec![], Route::builder().receiver("pager").build())
        .sink("pager", Arc::new(RecordingAlertSink::new()))
        .build()
        .unwrap();
    let silence = |m: Vec<Matcher>, start: u64, end: u64| {
        Silence::builder()
            .matchers(m)
            .starts_at(w.ts(start))
            .ends_at(w.ts(end))
            .author("ops")
            .build()
    };
    let cases = [
        (
            silence(vec![Matcher::eq("a", "b")], 60, 30),
            "alert.silence.ends_at",
        ),
        (silence(vec![], 0, 30), "alert.silence.matchers"),
        (
            silence(
                vec![Matcher::eq("a", "b"), Matcher::not_regex("b", "[")],
                0,
                30,
            ),
            "alert.silence.matchers[1]",
        ),
    ];
    for (s, expected) in cases {
        assert_eq!(
            invalid_field(alerting.add_silence(s).unwrap_err()).0,
            expected
        );
    }
    assert!(alerting.silences().is_empty());

    // A rule with an empty expression.
    let err = AlertRule::builder()
        .name("A")
        .expr("")
        .condition(Condition::above(1.0))
        .build()
        .unwrap_err();
    assert_eq!(invalid_field(err).0, "alert.expr");
    // An unknown receiver in an escalation policy.
    let err = engine(
        &w,
        vec![],
        Route::builder()
            .receiver("pager")
            .escalations(vec![Escalation::new(secs(60), "nobody")])
            .build(),
    )
    .sink("pager", Arc::new(RecordingAlertSink::new()))
    .build()
    .unwrap_err();
    assert_eq!(invalid_field(err).0, "alert.route.escalations[0].receiver");
}

#[test]
fn notifications_serialize_for_webhooks() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let w = World::new();
        let pager = RecordingAlertSink::new();
        let alerting = engine(
            &w,
            vec![rule("HighErrorRate", 0.05)],
            Route::builder()
                .receiver("pager")
                .group_wait(Duration::ZERO)
                .build(),
        )
        .sink("pager", Arc::new(pager.clone()))
        .build()
        .unwrap();
        alerting.watch(target("web"));
        w.drive(&alerting, &["web"], [0], |_, _| 0.2).await;
        let json = serde_json::to_value(&pager.notifications()[0]).unwrap();
        assert_eq!(json["status"], "firing");
        assert_eq!(json["receiver"], "pager");
        assert_eq!(json["escalation_level"], 0);
        assert_eq!(json["alerts"][0]["labels"]["alertname"], "HighErrorRate");
        assert_eq!(json["alerts"][0]["state"], "firing");
        assert_eq!(json["alerts"][0]["value"], 0.2);
    });
}

/// A one-route HTTP/1.1 server on loopback: answers the first request 503 and the rest 200,
/// and records each request's body.
async fn webhook_server() -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/alerts", listener.local_addr().unwrap());
    let bodies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = bodies.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let body = loop {
                match conn.read(&mut chunk).await {
                    Ok(0) | Err(_) => break None,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
                let text = String::from_utf8_lossy(&buf).to_string();
                let Some(end) = text.find("\r\n\r\n") else {
                    continue;
                };
                let len: usize = text[..end]
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    break Some(text[end + 4..end + 4 + len].to_string());
                }
            };
            let Some(body) = body else { continue };
            let code = {
                let mut seen = seen.lock().unwrap();
                seen.push(body);
                if seen.len() == 1 { 503 } else { 200 }
            };
            let reply =
                format!("HTTP/1.1 {code} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            let _ = conn.write_all(reply.as_bytes()).await;
        }
    });
    (url, bodies)
}

#[tokio::test]
async fn the_webhook_notifier_is_an_alert_sink() {
    let (url, bodies) = webhook_server().await;
    let hook = deploykit_alerting::webhook::WebhookNotifier::new(&url).unwrap();
    let w = World::new();
    let alerting = engine(
        &w,
        vec![rule("HighErrorRate", 0.05)],
        Route::builder()
            .receiver("hook")
            .group_wait(Duration::ZERO)
            .build(),
    )
    .sink("hook", Arc::new(hook))
    .build()
    .unwrap();
    alerting.watch(target("web"));
    w.set("web", 0.2);
    alerting.evaluate(&w.sim).await;
    let bodies = bodies.lock().unwrap().clone();
    // The 503 was retried by the notifier.
    assert_eq!(bodies.len(), 2, "{bodies:?}");
    assert_eq!(bodies[0], bodies[1]);
    let json: serde_json::Value = serde_json::from_str(&bodies[1]).unwrap();
    assert_eq!(json["receiver"], "hook");
    assert_eq!(json["status"], "firing");
    assert_eq!(json["alerts"][0]["labels"]["service"], "web");
}
