//! Failover as a journaled procedure, against a simulated primary and standby: the happy path
//! and its report, refusals (unhealthy standby, lag, no right), escalation, a step the site
//! refuses for good, a backend that says yes and does nothing, a process that dies at every
//! journal point (another resumes it), two processes racing, and randomised worlds.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use deploykit_core::access::{AccessPolicy, Effect};
use deploykit_core::failover::{
    AssessmentPolicy, Direction, FailoverId, FailoverOutcome, FailoverSpec, FailoverStatus,
    Failovers, HealthWatch, ProbeResult, Step, Trigger, Verdict,
};
use deploykit_core::store::{StateStore, StateStoreLayer};
use deploykit_core::{Actor, EnvironmentName, Error, Result, ServiceId, Timestamp};
use deploykit_testing::{MemoryStore, RecordingNotifier, SimClock, SimFailoverSite};
use proptest::prelude::*;

fn spec(id: &str, clock: &SimClock) -> FailoverSpec {
    FailoverSpec::builder()
        .id(FailoverId::new(id).unwrap())
        .direction(Direction::Failover)
        .from(EnvironmentName::new("production").unwrap())
        .to(EnvironmentName::new("production-dr").unwrap())
        .services(vec![
            ServiceId::new("web").unwrap(),
            ServiceId::new("api").unwrap(),
        ])
        .requested_by(Actor::new("alice"))
        .reason("eu-west-1 is down")
        .requested_at(deploykit_core::Clock::now(clock))
        .build()
}

fn failovers(
    store: &dyn_store::Shared,
    site: &SimFailoverSite,
    clock: SimClock,
    owner: &str,
) -> Failovers {
    Failovers::new(store.clone(), Arc::new(site.clone()), Arc::new(clock)).with_owner(owner)
}

mod dyn_store {
    pub(crate) type Shared = std::sync::Arc<dyn deploykit_core::store::StateStore>;
}

/// The world a finished failover must leave: the primary fenced, the standby promoted at full
/// size serving all traffic, and every step performed in order (a resumed step may repeat,
/// never go back).
fn assert_failed_over(site: &SimFailoverSite) {
    let s = site.state();
    assert!(s.primary_fenced && s.standby_promoted, "{s:?}");
    assert_eq!(s.standby_replicas.0, s.standby_replicas.1, "{s:?}");
    assert_eq!(s.traffic_to, "standby", "{s:?}");
    assert!(
        s.performed.windows(2).all(|w| w[0] <= w[1]),
        "steps out of order: {:?}",
        s.performed
    );
    assert_eq!(
        s.writes_after_promotion.get("primary"),
        None,
        "split brain: {s:?}"
    );
}

fn kinds(status: &FailoverStatus) -> Vec<Step> {
    status.done.iter().map(|(s, _, _)| *s).collect()
}

#[tokio::test(start_paused = true)]
async fn a_failover_runs_every_step_in_order_and_reports_rto_and_rpo() {
    let clock = SimClock::new();
    let store: dyn_store::Shared = Arc::new(MemoryStore::new());
    let site = SimFailoverSite::new();
    let lost_since = clock.start();
    site.set(|s| {
        s.primary_up = false;
        s.last_replicated_commit = Some(Timestamp::from_millis(lost_since.as_millis() - 1_500));
    });
    tokio::time::advance(Duration::from_secs(12)).await;
    let spec = spec("f-1", &clock).triggered(Trigger::Automatic {
        lost_since,
        evidence: vec![
            "http: connection refused".into(),
            "postgres: timeout".into(),
        ],
    });
    let told = RecordingNotifier::new();
    let runner = failovers(&store, &site, clock, "a").with_notifiers(vec![Arc::new(told.clone())]);
    let status = runner.run(spec).await.unwrap();
    runner.flush(Duration::from_secs(5)).await;
    // Every fact was told, in order, as `failover_<kind>` for the environment failed over.
    let told_kinds: Vec<String> = told
        .notifications()
        .iter()
        .map(|n| n.kind.clone())
        .collect();
    assert_eq!(told_kinds.len(), 13, "{told_kinds:?}");
    assert_eq!(told_kinds[0], "failover_requested");
    assert_eq!(told_kinds[1], "failover_assessed");
    assert_eq!(told_kinds[12], "failover_finished");
    let last = told.notifications().pop().unwrap();
    assert_eq!(last.environment, "production");
    assert_eq!(last.phase, deploykit_core::Phase::Succeeded);
    assert_eq!(
        last.headline(),
        "web,api/production failover to production-dr: succeeded"
    );
    assert_eq!(
        status.finished.as_ref().unwrap().0,
        FailoverOutcome::Succeeded
    );
    assert_eq!(kinds(&status), Step::ALL.to_vec());
    assert_failed_over(&site);
    assert_eq!(site.state().performed, Step::ALL.to_vec(), "each step once");
    // A client's write lands on the standby now.
    assert_eq!(site.write(), Some("standby"));

    let report = failovers(&store, &site, clock, "a")
        .report(&FailoverId::new("f-1").unwrap())
        .await
        .unwrap();
    assert_eq!(report.trigger, "automatic");
    assert_eq!(report.rpo, Some(Duration::from_millis(1_500)));
    let rto = report.rto.expect("verified");
    assert!(
        rto >= Duration::from_secs(12) && rto < Duration::from_secs(13),
        "{rto:?}"
    );
    let md = report.to_markdown();
    for needle in [
        "# Failover of production to production-dr: succeeded",
        "| **RTO** | 12.",
        "| **RPO** (window of commits that may be lost) | 1.5 s |",
        "- http: connection refused",
        "fence the primary: done",
        "verify: done, probes pass",
    ] {
        assert!(md.contains(needle), "{needle:?} missing from\n{md}");
    }
    let json = report.to_json();
    assert_eq!(json["rpo_ms"], 1500);
    assert_eq!(json["outcome"]["outcome"], "succeeded");
    assert_eq!(json["timeline"].as_array().unwrap().len(), 13);
    // Audited: requested and finished, once per service moved.
    let audit = store.audit_log().await.unwrap();
    let failovers_audited: Vec<_> = audit
        .iter()
        .filter(|e| e.record.action == deploykit_core::audit::AuditAction::Failover)
        .collect();
    assert_eq!(failovers_audited.len(), 4, "{audit:?}");
    deploykit_core::audit::verify(&audit, None).unwrap();
}

#[tokio::test(start_paused = true)]
async fn refusals_do_nothing_and_say_why_and_force_is_audited() {
    let clock = SimClock::new();
    let store: dyn_store::Shared = Arc::new(MemoryStore::new());

    // An unhealthy standby: refused, even forced.
    let site = SimFailoverSite::new();
    site.set(|s| s.standby_healthy = false);
    let status = failovers(&store, &site, clock, "a")
        .run(spec("f-sick", &clock).forced(true))
        .await
        .unwrap();
    match &status.finished.as_ref().unwrap().0 {
        FailoverOutcome::Refused { reason } => assert!(reason.contains("not healthy"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert!(site.state().performed.is_empty(), "nothing was done");

    // Too far behind: refused unless forced.
    let site = SimFailoverSite::new();
    site.set(|s| s.lag = Some(Duration::from_secs(30)));
    let status = failovers(&store, &site, clock, "a")
        .run(spec("f-lag", &clock))
        .await
        .unwrap();
    match &status.finished.as_ref().unwrap().0 {
        FailoverOutcome::Refused { reason } => {
            assert!(
                reason.contains("30.0 s behind, more than the 5.0 s allowed"),
                "{reason}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(site.state().performed.is_empty());
    let status = failovers(&store, &site, clock, "a")
        .run(spec("f-forced", &clock).forced(true))
        .await
        .unwrap();
    assert_eq!(
        status.finished.as_ref().unwrap().0,
        FailoverOutcome::Succeeded
    );
    assert!(
        status
            .assessed
            .as_ref()
            .unwrap()
            .1
            .starts_with("FORCED by alice")
    );
    let report = failovers(&store, &site, clock, "a")
        .report(&FailoverId::new("f-forced").unwrap())
        .await
        .unwrap();
    assert!(report.forced);
    assert!(
        report
            .to_markdown()
            .contains("| forced past the lag limit | yes |")
    );

    // A standby whose state cannot be read is refused after a few attempts.
    let site = SimFailoverSite::new();
    site.fail_readiness((0..10).map(|_| Error::transient("read the standby", "timeout")));
    let status = failovers(&store, &site, clock, "a")
        .run(spec("f-unknown", &clock))
        .await
        .unwrap();
    assert!(
        matches!(&status.finished.as_ref().unwrap().0, FailoverOutcome::Refused { reason } if reason.contains("could not be assessed")),
        "{status:?}"
    );

    // The same id twice is refused before anything happens.
    let again = failovers(&store, &site, clock, "a")
        .run(spec("f-lag", &clock))
        .await;
    assert!(
        matches!(again, Err(Error::AlreadyExists { .. })),
        "{again:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn without_the_right_nothing_is_journaled_and_the_refusal_is_audited() {
    let clock = SimClock::new();
    let store: dyn_store::Shared = Arc::new(MemoryStore::new());
    let site = SimFailoverSite::new();
    let mut policy = AccessPolicy::empty();
    policy
        .rule("role:sre", "failover", "production/*", Effect::Allow)
        .unwrap();
    policy.bind("bob", "role:sre").unwrap();
    let guarded = |owner: &str| {
        failovers(&store, &site, clock, owner)
            .with_access_policy(policy.clone())
            .unwrap()
    };
    let e = guarded("a").run(spec("f-alice", &clock)).await.unwrap_err();
    assert!(matches!(e, Error::PermissionDenied { .. }), "{e:?}");
    assert!(store.records("failover/f-alice").await.unwrap().is_none());
    assert!(site.state().performed.is_empty());
    let audit = store.audit_log().await.unwrap();
    let denied = audit.last().unwrap();
    assert_eq!(denied.record.actor, Actor::new("alice"));
    assert_eq!(
        denied.record.outcome,
        deploykit_core::audit::AuditOutcome::Denied
    );

    let mut bobs = spec("f-bob", &clock);
    bobs.requested_by = Actor::new("bob");
    let status = guarded("a").run(bobs).await.unwrap();
    assert_eq!(status.finished.unwrap().0, FailoverOutcome::Succeeded);
}

#[tokio::test(start_paused = true)]
async fn a_stalled_step_is_escalated_and_retried_a_final_error_fails_and_a_lie_is_caught() {
    let clock = SimClock::new();
    let store: dyn_store::Shared = Arc::new(MemoryStore::new());

    // Promotion fails for a while: escalated each step timeout, then done.
    let site = SimFailoverSite::new();
    site.fail(
        Step::PromoteDatabase,
        (0..40).map(|_| Error::transient("promote", "the standby is still replaying")),
    );
    let status = failovers(&store, &site, clock, "a")
        .run(spec("f-slow", &clock).with_step_timeout(Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(
        status.finished.as_ref().unwrap().0,
        FailoverOutcome::Succeeded
    );
    assert!(status.escalations >= 2, "{status:?}");
    assert_failed_over(&site);
    // 40 failed attempts and the one that worked: journaling an escalation never loses the
    // step's success (which would do the step once more).
    let promotions = site
        .state()
        .performed
        .iter()
        .filter(|s| **s == Step::PromoteDatabase)
        .count();
    assert_eq!(promotions, 41);

    // The site says a step cannot be done: the failover fails, saying which and why, and what
    // was done stays done.
    let site = SimFailoverSite::new();
    site.fail(
        Step::Scale,
        [Error::invalid(
            "standby.replicas",
            "the standby has no capacity",
        )],
    );
    let status = failovers(&store, &site, clock, "a")
        .run(spec("f-final", &clock))
        .await
        .unwrap();
    match &status.finished.as_ref().unwrap().0 {
        FailoverOutcome::Failed { reason } => {
            assert!(
                reason.starts_with("scale the standby up: invalid standby.replicas"),
                "{reason}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(kinds(&status), vec![Step::Fence, Step::PromoteDatabase]);

    // A backend that says yes to switching traffic and does nothing: verification never
    // passes, the failover never reports success, and it is escalated.
    let site = SimFailoverSite::new();
    site.lie(Step::SwitchTraffic);
    let runner = failovers(&store, &site, clock, "a");
    let lying = spec("f-lie", &clock).with_step_timeout(Duration::from_secs(10));
    let outcome = tokio::time::timeout(Duration::from_secs(120), runner.run(lying)).await;
    assert!(outcome.is_err(), "it must not end: {outcome:?}");
    let status = runner
        .status(&FailoverId::new("f-lie").unwrap())
        .await
        .unwrap();
    assert!(status.finished.is_none());
    assert_eq!(status.in_progress.map(|(s, _)| s), Some(Step::Verify));
    assert!(status.escalations >= 5, "{status:?}");
    let report = runner
        .report(&FailoverId::new("f-lie").unwrap())
        .await
        .unwrap();
    assert!(
        report
            .to_markdown()
            .contains("traffic does not reach the standby"),
        "{}",
        report.to_markdown()
    );
}

/// A store that "kills" the driving process right after record `crash_at` of any failover
/// reaches it: the append never returns.
#[derive(Debug)]
struct Crashing {
    inner: MemoryStore,
    crash_at: u64,
    crashed: AtomicBool,
    notify: Arc<tokio::sync::Notify>,
}

#[async_trait]
impl StateStoreLayer for Crashing {
    fn inner(&self) -> &dyn StateStore {
        &self.inner
    }
    async fn append_record(&self, log: &str, seq: u64, record: &serde_json::Value) -> Result<()> {
        if self.crashed.load(Ordering::SeqCst) {
            return std::future::pending().await;
        }
        self.inner.append_record(log, seq, record).await?;
        if seq == self.crash_at {
            self.crashed.store(true, Ordering::SeqCst);
            self.notify.notify_one();
            return std::future::pending().await;
        }
        Ok(())
    }
}

/// Kill the process after `crash_at` records, let its lease lapse, and resume with another.
async fn crash_and_resume(crash_at: u64, site: SimFailoverSite, world: &str) -> FailoverStatus {
    let clock = SimClock::new();
    let memory = MemoryStore::new();
    let notify = Arc::new(tokio::sync::Notify::new());
    let crashing: dyn_store::Shared = Arc::new(Crashing {
        inner: memory.clone(),
        crash_at,
        crashed: AtomicBool::new(false),
        notify: notify.clone(),
    });
    let first = failovers(&crashing, &site, clock, "first");
    let spec = spec("f-crash", &clock);
    let ended = tokio::select! {
        r = first.run(spec) => { r.unwrap(); true }
        () = notify.notified() => false,
    };
    let store: dyn_store::Shared = Arc::new(memory);
    let second = failovers(&store, &site, clock, "second");
    let id = FailoverId::new("f-crash").unwrap();
    if ended {
        // It ended before the crash point (a refusal is short).
        return second.status(&id).await.unwrap();
    }
    if second.status(&id).await.unwrap().is_finished() {
        // It died after writing its last record: nothing is left to do.
        assert!(second.resume_unfinished().await.unwrap().is_empty());
        return second.status(&id).await.unwrap();
    }
    if crash_at > 0 {
        // At once: the dead process still holds the lease.
        let held = second.resume(&id).await;
        assert!(
            matches!(held, Err(Error::LeaseHeld { .. })),
            "{world} crash at {crash_at}: {held:?}"
        );
    }
    tokio::time::advance(Duration::from_secs(31)).await;
    let resumed = second.resume_unfinished().await.unwrap();
    assert_eq!(resumed.len(), 1, "{world} crash at {crash_at}");
    second.status(&id).await.unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_process_dying_at_every_journal_point_is_resumed_to_the_same_end() {
    // The uninterrupted run has 13 records: requested, assessed, 5 × (started, done), finished.
    for crash_at in 0..13 {
        let site = SimFailoverSite::new();
        let status = crash_and_resume(crash_at, site.clone(), "healthy").await;
        assert_eq!(
            status.finished.as_ref().map(|f| &f.0),
            Some(&FailoverOutcome::Succeeded),
            "crash at {crash_at}: {status:?}"
        );
        assert_eq!(kinds(&status), Step::ALL.to_vec(), "crash at {crash_at}");
        assert_failed_over(&site);
        // Only the step in flight when the process died is performed twice.
        let performed = site.state().performed;
        assert!(
            performed.len() <= Step::ALL.len() + 1,
            "crash at {crash_at}: {performed:?}"
        );
    }
    // A refusal interrupted: still a refusal, nothing done.
    for crash_at in 0..2 {
        let site = SimFailoverSite::new();
        site.set(|s| s.lag = Some(Duration::from_secs(60)));
        let status = crash_and_resume(crash_at, site.clone(), "behind").await;
        assert!(
            matches!(
                status.finished.as_ref().map(|f| &f.0),
                Some(FailoverOutcome::Refused { .. })
            ),
            "{status:?}"
        );
        assert!(site.state().performed.is_empty());
    }
}

#[tokio::test(start_paused = true)]
async fn two_processes_racing_on_one_failover_leave_one_valid_journal() {
    let clock = SimClock::new();
    let store: dyn_store::Shared = Arc::new(MemoryStore::new());
    let site = SimFailoverSite::new();
    site.fail(
        Step::PromoteDatabase,
        (0..3).map(|_| Error::transient("promote", "replaying")),
    );
    let a = failovers(&store, &site, clock, "a");
    let b = failovers(&store, &site, clock, "b");
    let spec = spec("f-race", &clock);
    let id = spec.id.clone();
    let (ra, rb) = tokio::join!(a.run(spec), async {
        tokio::task::yield_now().await;
        b.resume(&id).await
    });
    let winners = [&ra, &rb].iter().filter(|r| r.is_ok()).count();
    assert!(winners >= 1, "{ra:?} {rb:?}");
    for r in [&ra, &rb] {
        if let Err(e) = r {
            assert!(
                matches!(e, Error::LeaseHeld { .. } | Error::NotFound { .. }),
                "the loser is told another process drives it: {e:?}"
            );
        }
    }
    let status = a.status(&id).await.unwrap();
    assert_eq!(status.finished.unwrap().0, FailoverOutcome::Succeeded);
    assert_failed_over(&site);
}

#[tokio::test(start_paused = true)]
async fn a_rehearsal_never_holds_up_a_real_failover() {
    let clock = SimClock::new();
    let store: dyn_store::Shared = Arc::new(MemoryStore::new());
    let scratch = SimFailoverSite::new();
    scratch.fail(
        Step::PromoteDatabase,
        (0..20).map(|_| Error::transient("promote", "seeding the scratch standby")),
    );
    let mut rehearsal = spec("r-1", &clock);
    rehearsal.direction = Direction::Rehearsal;
    let rehearsing = failovers(&store, &scratch, clock, "rehearsal");
    let real_site = SimFailoverSite::new();
    let real = failovers(&store, &real_site, clock, "real");
    let (r, f) = tokio::join!(rehearsing.run(rehearsal), async {
        // The rehearsal is under way (holding its lease) when the primary is lost.
        tokio::time::sleep(Duration::from_secs(1)).await;
        real.run(spec("f-real", &clock)).await
    });
    assert_eq!(f.unwrap().finished.unwrap().0, FailoverOutcome::Succeeded);
    assert_eq!(r.unwrap().finished.unwrap().0, FailoverOutcome::Succeeded);
    assert_failed_over(&real_site);
}

#[tokio::test(start_paused = true)]
async fn a_second_request_while_one_runs_is_refused_and_journals_nothing() {
    let clock = SimClock::new();
    let store: dyn_store::Shared = Arc::new(MemoryStore::new());
    let site = SimFailoverSite::new();
    site.fail(
        Step::SwitchTraffic,
        (0..10).map(|_| Error::transient("switch", "the load balancer is busy")),
    );
    let first = failovers(&store, &site, clock, "first");
    let second = failovers(&store, &site, clock, "second");
    let (a, b) = tokio::join!(first.run(spec("f-first", &clock)), async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        second.run(spec("f-second", &clock)).await
    });
    assert_eq!(a.unwrap().finished.unwrap().0, FailoverOutcome::Succeeded);
    let e = b.unwrap_err();
    assert!(
        matches!(&e, Error::LeaseHeld { owner, .. } if owner == "first"),
        "{e}"
    );
    // Nothing of the second was journaled: no failover is left for anyone to resume later.
    assert_eq!(
        second.list().await.unwrap(),
        vec![FailoverId::new("f-first").unwrap()]
    );
    assert!(second.resume_unfinished().await.unwrap().is_empty());
    // Once the first has ended, the environment may be failed over (back) again.
    let again = second.run(spec("f-later", &clock)).await.unwrap();
    assert!(again.is_finished());
}

#[test]
fn a_journal_out_of_order_is_refused() {
    let clock_start = Timestamp::from_millis(0);
    let spec = FailoverSpec::builder()
        .id(FailoverId::new("f-bad").unwrap())
        .direction(Direction::Failover)
        .from(EnvironmentName::new("a").unwrap())
        .to(EnvironmentName::new("b").unwrap())
        .services(vec![ServiceId::new("web").unwrap()])
        .requested_by(Actor::new("x"))
        .reason("test")
        .requested_at(clock_start)
        .build();
    use deploykit_core::failover::{FailoverEvent, FailoverRecord, StepOutcome};
    let rec = |seq, event| FailoverRecord::new(seq, clock_start, "t", event);
    let requested = rec(
        0,
        FailoverEvent::Requested {
            spec: Arc::new(spec),
        },
    );
    let assessed = rec(
        1,
        FailoverEvent::Assessed {
            readiness: deploykit_core::failover::StandbyReadiness::new(true, None, "ok"),
            decision: "go".into(),
        },
    );
    let cases: Vec<(Vec<FailoverRecord>, &str)> = vec![
        (vec![], "empty"),
        (vec![assessed.clone()], "not `requested`"),
        (
            vec![
                requested.clone(),
                rec(1, FailoverEvent::StepStarted { step: Step::Fence }),
            ],
            "before the assessment",
        ),
        (
            vec![
                requested.clone(),
                assessed.clone(),
                rec(2, FailoverEvent::StepStarted { step: Step::Scale }),
            ],
            "out of turn",
        ),
        (
            vec![
                requested.clone(),
                assessed.clone(),
                rec(
                    2,
                    FailoverEvent::StepDone {
                        step: Step::Fence,
                        outcome: StepOutcome::new("x"),
                    },
                ),
            ],
            "done but not started",
        ),
        (
            vec![
                requested.clone(),
                assessed.clone(),
                rec(
                    2,
                    FailoverEvent::Finished {
                        outcome: FailoverOutcome::Succeeded,
                    },
                ),
            ],
            "does not fit",
        ),
        (
            vec![
                requested.clone(),
                rec(5, FailoverEvent::StepStarted { step: Step::Fence }),
            ],
            "it says it is record 5",
        ),
    ];
    for (records, want) in cases {
        let e = FailoverStatus::from_records(&records).unwrap_err();
        assert!(
            format!("{e:?}").contains(want) || e.to_string().contains(want),
            "{want}: {e:?}"
        );
    }
}

#[test]
fn a_quorum_must_be_possible() {
    let e =
        HealthWatch::new(AssessmentPolicy::new(3, Duration::from_secs(5)), ["a", "b"]).unwrap_err();
    assert!(
        e.to_string()
            .contains("3 probes must fail, and there are 2 (a, b)"),
        "{e}"
    );
    assert!(HealthWatch::new(AssessmentPolicy::new(0, Duration::from_secs(5)), ["a"]).is_err());
    let mut w = HealthWatch::new(AssessmentPolicy::new(1, Duration::from_secs(5)), ["a"]).unwrap();
    let e = w
        .observe(Timestamp::from_millis(0), &[ProbeResult::fail("zzz", "?")])
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("\"zzz\" is not one of the watched probes"),
        "{e}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Whatever the probes do, the primary counts as lost exactly when at least `quorum` of
    /// them have failed without a break for the grace period (checked against a direct
    /// recomputation), and the outage start is the earliest such failure.
    #[test]
    fn the_assessment_needs_a_quorum_failing_for_the_grace(
        quorum in 1usize..=3,
        grace_s in 1u64..20,
        rounds in prop::collection::vec(prop::collection::vec(prop::option::of(any::<bool>()), 3), 1..60),
    ) {
        let probes = ["http", "db", "alert"];
        let grace = Duration::from_secs(grace_s);
        let mut watch = HealthWatch::new(AssessmentPolicy::new(quorum, grace), probes).unwrap();
        let mut since: [Option<u64>; 3] = [None; 3];
        for (i, round) in rounds.iter().enumerate() {
            let t = i as u64 * 1000;
            let results: Vec<ProbeResult> = round
                .iter()
                .zip(probes)
                .filter_map(|(r, p)| r.map(|ok| if ok { ProbeResult::pass(p) } else { ProbeResult::fail(p, "down") }))
                .collect();
            for (j, r) in round.iter().enumerate() {
                match r {
                    Some(true) => since[j] = None,
                    Some(false) => { since[j].get_or_insert(t); }
                    None => {}
                }
            }
            let verdict = watch.observe(Timestamp::from_millis(t), &results).unwrap();
            let long: Vec<u64> = since.iter().flatten().copied().filter(|s| t - s >= grace_s * 1000).collect();
            match verdict {
                Verdict::Lost { since: start, evidence } => {
                    prop_assert!(long.len() >= quorum, "lost with {long:?} at {t}");
                    prop_assert_eq!(start.as_millis(), *long.iter().min().unwrap());
                    prop_assert_eq!(evidence.len(), long.len());
                }
                Verdict::Suspect { failing } => {
                    prop_assert!(long.len() < quorum);
                    prop_assert_eq!(failing.len(), since.iter().flatten().count());
                }
                Verdict::Healthy => prop_assert!(since.iter().all(Option::is_none)),
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Random worlds: each step fails transiently a few times, the process dies at a random
    /// journal point, and another resumes. It always ends failed over, with every step done
    /// in order, no write taken by the fenced primary, and a journal that folds cleanly.
    #[test]
    fn random_faults_and_a_random_death_always_end_failed_over(
        failures in prop::collection::vec(0usize..4, 5),
        crash_at in 0u64..16,
        writes in 0u32..5,
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(async {
            let site = SimFailoverSite::new();
            for (step, n) in Step::ALL.iter().zip(&failures) {
                site.fail(*step, (0..*n).map(|_| Error::transient("step", "not yet")));
            }
            let writer = site.clone();
            let count = Arc::new(AtomicU64::new(0));
            let counter = count.clone();
            // Clients keep writing throughout.
            let clients = tokio::spawn(async move {
                for _ in 0..writes * 100 {
                    if writer.write().is_some() {
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            });
            let status = crash_and_resume(crash_at, site.clone(), "random").await;
            clients.abort();
            prop_assert_eq!(status.finished.as_ref().map(|f| f.0.clone()), Some(FailoverOutcome::Succeeded));
            assert_failed_over(&site);
            Ok(())
        })?;
    }
}

/// The alerting engine watching failovers from production: `FailoverStalled` to `oncall`, then
/// to `lead` if unacknowledged for 60 s.
fn stall_alerting(
    oncall: &deploykit_testing::RecordingAlertSink,
    lead: &deploykit_testing::RecordingAlertSink,
) -> deploykit_alerting::Alerting {
    use deploykit_alerting::{Alerting, Escalation, Route};
    let alerting = Alerting::builder()
        .rules(deploykit_alerting::failover::failover_rules())
        .route(
            Route::builder()
                .receiver("oncall")
                .group_wait(Duration::ZERO)
                .group_interval(Duration::from_secs(10))
                .escalations(vec![Escalation::new(Duration::from_secs(60), "lead")])
                .build(),
        )
        .sink("oncall", Arc::new(oncall.clone()))
        .sink("lead", Arc::new(lead.clone()))
        .build()
        .unwrap();
    alerting.watch(deploykit_alerting::failover::target("production").unwrap());
    alerting
}

/// The alerting engine watching production's failovers ([`stall_alerting`]), its two
/// receivers, and the monitor reading the journal in `store` through a process of its own
/// (any site will do: it only reads).
fn stall_watch(
    store: &dyn_store::Shared,
    clock: SimClock,
) -> (
    deploykit_testing::RecordingAlertSink,
    deploykit_testing::RecordingAlertSink,
    deploykit_alerting::Alerting,
    deploykit_alerting::failover::FailoverMonitor,
) {
    let (oncall, lead) = (
        deploykit_testing::RecordingAlertSink::new(),
        deploykit_testing::RecordingAlertSink::new(),
    );
    let alerting = stall_alerting(&oncall, &lead);
    let monitor = deploykit_alerting::failover::FailoverMonitor::new(Arc::new(failovers(
        store,
        &SimFailoverSite::new(),
        clock,
        "watcher",
    )))
    .with_clock(Arc::new(clock));
    (oncall, lead, alerting, monitor)
}

/// One round of the engine, and its deliveries (each from a task of its own) done.
async fn evaluate(alerting: &deploykit_alerting::Alerting, monitor: &dyn deploykit_core::Monitor) {
    alerting.evaluate(monitor).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
}

/// `(receiver, level, firing?, value)` of each notification.
fn heard(sink: &deploykit_testing::RecordingAlertSink) -> Vec<(String, u32, bool, Option<f64>)> {
    sink.notifications()
        .iter()
        .map(|n| {
            (
                n.receiver.clone(),
                n.escalation_level,
                n.status == deploykit_alerting::NotificationStatus::Firing,
                n.alerts[0].value,
            )
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_stalled_failover_pages_through_the_alerting_engine_escalates_and_resolves() {
    let clock = SimClock::new();
    let store: dyn_store::Shared = Arc::new(MemoryStore::new());
    let (oncall, lead, alerting, monitor) = stall_watch(&store, clock);

    // Promotion fails for about five minutes against a step timeout of 30 s.
    let site = SimFailoverSite::new();
    site.fail(
        Step::PromoteDatabase,
        (0..60).map(|_| Error::transient("promote", "the standby is still replaying")),
    );
    let driver = failovers(&store, &site, clock, "driver");
    let run = driver.run(spec("f-stall", &clock).with_step_timeout(Duration::from_secs(30)));
    tokio::pin!(run);
    let mut firing_at = None;
    let status = loop {
        tokio::select! {
            status = &mut run => break status.unwrap(),
            () = tokio::time::sleep(Duration::from_secs(5)) => {
                evaluate(&alerting, &monitor).await;
                if firing_at.is_none() && !oncall.notifications().is_empty() {
                    firing_at = Some(driver.status(&FailoverId::new("f-stall").unwrap()).await.unwrap());
                }
            }
        }
    };
    assert_eq!(
        status.finished.as_ref().unwrap().0,
        FailoverOutcome::Succeeded
    );
    // Paged once the promotion had run 30 s, not before.
    let paged = firing_at.expect("the stall was never alerted");
    assert_eq!(
        paged.in_progress.map(|(s, _)| s),
        Some(Step::PromoteDatabase)
    );
    let oncall_heard = heard(&oncall);
    assert!(oncall_heard[0].2, "{oncall_heard:?}");
    assert!(
        oncall_heard[0].3.is_some_and(|v| (30.0..40.0).contains(&v)),
        "{oncall_heard:?}"
    );
    // Nobody acknowledged it: escalated to the lead a minute later.
    let lead_heard = heard(&lead);
    assert!(
        lead_heard.first().is_some_and(|h| h.1 == 1 && h.2),
        "{lead_heard:?}"
    );
    // The failover moved on and ended: both hear it resolved.
    for _ in 0..3 {
        evaluate(&alerting, &monitor).await;
        tokio::time::advance(Duration::from_secs(5)).await;
    }
    for h in [heard(&oncall), heard(&lead)] {
        assert!(h.last().is_some_and(|h| !h.2), "{h:?}");
    }
    let summary = &oncall.notifications()[0].alerts[0].annotations["summary"];
    assert!(
        summary.starts_with("a failover from production has stood still for 30 s"),
        "{summary}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failover_whose_process_died_pages_and_resolves_once_another_resumes_it() {
    let clock = SimClock::new();
    let store: dyn_store::Shared = Arc::new(MemoryStore::new());
    let (oncall, _lead, alerting, monitor) = stall_watch(&store, clock);

    // The driver dies while scaling (which fails at first); it never journals an escalation.
    let site = SimFailoverSite::new();
    site.fail(
        Step::Scale,
        (0..3).map(|_| Error::transient("scale", "no capacity yet")),
    );
    let id = FailoverId::new("f-dead").unwrap();
    let dead = failovers(&store, &site, clock, "dead");
    let spec = spec("f-dead", &clock).with_step_timeout(Duration::from_secs(20));
    let reader = failovers(&store, &site, clock, "reader");
    let status = {
        let run = dead.run(spec);
        tokio::pin!(run);
        loop {
            tokio::select! {
                ended = &mut run => panic!("it must still be scaling: {ended:?}"),
                () = tokio::time::sleep(Duration::from_millis(50)) => {
                    let status = reader.status(&id).await.unwrap();
                    if status.in_progress.is_some_and(|(s, _)| s == Step::Scale) {
                        break status;
                    }
                }
            }
        }
    };
    // The driver is gone (its future dropped mid-step).
    drop(dead);
    assert_eq!(status.in_progress.map(|(s, _)| s), Some(Step::Scale));
    assert_eq!(status.escalations, 0);

    for _ in 0..3 {
        evaluate(&alerting, &monitor).await;
        tokio::time::advance(Duration::from_secs(5)).await;
    }
    assert!(
        oncall.notifications().is_empty(),
        "15 s < 20 s: not stalled yet"
    );
    for _ in 0..4 {
        evaluate(&alerting, &monitor).await;
        tokio::time::advance(Duration::from_secs(5)).await;
    }
    let firing = heard(&oncall);
    assert_eq!(firing.len(), 1, "{firing:?}");
    assert!(
        firing[0].2 && firing[0].3.is_some_and(|v| v >= 20.0),
        "{firing:?}"
    );

    // Another process takes it over (the lease has lapsed) and ends it: resolved.
    let second = failovers(&store, &site, clock, "second");
    let resumed = second.resume_unfinished().await.unwrap();
    assert_eq!(
        resumed[0].finished.as_ref().map(|f| &f.0),
        Some(&FailoverOutcome::Succeeded)
    );
    for _ in 0..3 {
        evaluate(&alerting, &monitor).await;
        tokio::time::advance(Duration::from_secs(5)).await;
    }
    let last = heard(&oncall);
    assert!(last.last().is_some_and(|h| !h.2), "{last:?}");
}

#[tokio::test]
async fn the_failover_monitor_answers_only_its_gauge() {
    use deploykit_alerting::failover::{FailoverMonitor, STALLED};
    use deploykit_core::monitor::{MetricQuery, Monitor};
    let clock = SimClock::new();
    let store: dyn_store::Shared = Arc::new(MemoryStore::new());
    let monitor = FailoverMonitor::new(Arc::new(failovers(
        &store,
        &SimFailoverSite::new(),
        clock,
        "watcher",
    )));
    let web = ServiceId::new("failover").unwrap();
    let none = monitor
        .query(&MetricQuery::new(
            web.clone(),
            format!("{STALLED}{{environment=\"production\"}}"),
        ))
        .await
        .unwrap();
    assert_eq!(none.len(), 1);
    assert_eq!(none[0].value, 0.0, "no failover: 0, not missing data");
    let e = monitor
        .query(&MetricQuery::new(web, "error_rate"))
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("answers deploykit_failover_stalled with an environment"),
        "{e}"
    );
}
