//! The pages: what each shows, rendered on the server from the store, the environments'
//! observations, the backup agent's state and the audit log.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::time::Duration;

use deploykit_core::analysis::{AnalysisSpec, MetricCheck, MetricKind};
use deploykit_core::journal::{DeploymentKind, JournalEvent};
use deploykit_core::strategy::CanaryStep;
use deploykit_core::{
    DeploymentId, DeploymentStatus, EnvironmentName, Observed, Outcome, Phase, Result, ServiceId,
    StrategySpec,
};

use crate::chart::{self, Point, Threshold};
use crate::html::{action_form, esc, phase_badge, split_bar, time, url_part};
use crate::{Inner, Viewer};

/// How long a page waits for an environment's observation before showing it as unknown.
const OBSERVE_TIMEOUT: Duration = Duration::from_secs(3);
/// The newest audit records shown.
const AUDIT_ROWS: usize = 500;

fn deployment_link(s: &DeploymentStatus) -> String {
    format!(
        "<a href=\"/deployments/{}\">{}</a>",
        url_part(s.spec.id.as_str()),
        esc(s.spec.id.as_str())
    )
}

fn service_link(service: &ServiceId, environment: &EnvironmentName) -> String {
    format!(
        "<a href=\"/services/{}/{}\">{}</a>",
        url_part(environment.as_str()),
        url_part(service.as_str()),
        esc(service.as_str())
    )
}

/// The services to show per environment: the configured ones and every one with a history.
async fn services_by_environment(
    inner: &Inner,
) -> Result<Vec<(EnvironmentName, BTreeSet<ServiceId>)>> {
    let mut by_env: std::collections::BTreeMap<EnvironmentName, BTreeSet<ServiceId>> = inner
        .environments
        .iter()
        .map(|e| (e.clone(), inner.services.iter().cloned().collect()))
        .collect();
    for (service, environment) in inner.store.list_environments().await? {
        if !environment.as_str().starts_with("preview-") {
            by_env.entry(environment).or_default().insert(service);
        }
    }
    Ok(by_env.into_iter().collect())
}

/// The environment's observation of `service`, or why there is none.
async fn observe(
    inner: &Inner,
    service: &ServiceId,
    environment: &EnvironmentName,
) -> std::result::Result<Observed, String> {
    let Some(env) = inner.observers.get(environment) else {
        return Err("not run by this daemon".into());
    };
    match tokio::time::timeout(OBSERVE_TIMEOUT, env.observe(service)).await {
        Ok(Ok(o)) => Ok(o),
        Ok(Err(e)) => Err(e.chain()),
        Err(_) => Err(format!("no answer within {}s", OBSERVE_TIMEOUT.as_secs())),
    }
}

/// `(label, percent)` of what each revision really receives.
fn traffic_shares(o: &Observed) -> Vec<(String, u32)> {
    o.traffic
        .iter()
        .map(|(id, w)| {
            let label = o
                .revisions
                .iter()
                .find(|r| &r.revision.id == id)
                .map_or_else(|| id.to_string(), |r| r.revision.label.clone());
            (label, w.percent())
        })
        .collect()
}

fn instances_cell(o: &Observed) -> String {
    let mut out = String::new();
    for r in &o.revisions {
        let ready = r.instances.iter().filter(|i| i.ready).count();
        let restarts: u32 = r.instances.iter().map(|i| i.restarts).sum();
        let _ = write!(
            out,
            "<div class=\"rev\" data-revision=\"{l}\"><b>{l}</b> {ready}/{n} ready (want {d}){rs}</div>",
            l = esc(&r.revision.label),
            n = r.instances.len(),
            d = r.desired,
            rs = if restarts > 0 {
                format!(", {restarts} restart(s)")
            } else {
                String::new()
            }
        );
        for i in r
            .instances
            .iter()
            .filter_map(|i| i.failure.as_ref().map(|f| (i, f)))
        {
            let _ = write!(
                out,
                "<div class=\"failure\">{}: {}</div>",
                esc(&i.0.name),
                esc(&i.1.reason)
            );
        }
    }
    if out.is_empty() {
        out.push_str("<span class=\"muted\">nothing running</span>");
    }
    out
}

/// One line on a deployment: its phase, revision, where it stands.
fn deployment_summary(s: &DeploymentStatus) -> String {
    let mut out = format!(
        "{} {} <b>{}</b>",
        phase_badge(s.phase),
        deployment_link(s),
        esc(&s.spec.target.label)
    );
    if let Some((gate, reason)) = &s.awaiting {
        let _ = write!(
            out,
            " <span class=\"awaiting\">waiting for approval of {}: {}</span>",
            esc(gate),
            esc(reason)
        );
    }
    if let (Some((_, reason)), true) = (&s.rollback, s.phase != Phase::Succeeded) {
        let _ = write!(out, " <span class=\"reason\">{}</span>", esc(reason));
    }
    out
}

/// `/`: every environment's services with what runs, the live traffic split and the last
/// deployment; deployments in flight first.
pub(crate) async fn overview(inner: &Inner) -> Result<String> {
    let mut main = String::from("<h1>Services</h1>");
    let active = inner.orchestrator.active_deployments().await?;
    if !active.is_empty() {
        main.push_str("<section class=\"inflight\"><h2>In flight</h2><ul>");
        for s in &active {
            let _ = write!(
                main,
                "<li>{} in {}: {}</li>",
                service_link(&s.spec.service, &s.spec.environment),
                esc(s.spec.environment.as_str()),
                deployment_summary(s)
            );
        }
        main.push_str("</ul></section>");
    }
    for (environment, services) in services_by_environment(inner).await? {
        let _ = write!(
            main,
            "<section class=\"env\" data-environment=\"{e}\"><h2>{e}</h2><table><thead><tr>\
             <th>Service</th><th>Instances</th><th>Traffic</th><th>Last deployment</th>\
             </tr></thead><tbody>",
            e = esc(environment.as_str())
        );
        for service in services {
            let last = match inner
                .store
                .list_deployments(&service, &environment)
                .await?
                .first()
            {
                Some(id) => Some(inner.orchestrator.status(id).await?),
                None => None,
            };
            let (instances, traffic) = match observe(inner, &service, &environment).await {
                Ok(o) => (instances_cell(&o), split_bar(&traffic_shares(&o))),
                Err(why) => (
                    format!("<span class=\"muted\">unknown: {}</span>", esc(&why)),
                    String::new(),
                ),
            };
            let _ = write!(
                main,
                "<tr data-service=\"{s}\"><td>{link}</td><td>{instances}</td><td>{traffic}</td><td>{last}</td></tr>",
                s = esc(service.as_str()),
                link = service_link(&service, &environment),
                last = last
                    .as_ref()
                    .map_or_else(|| "never deployed".to_string(), deployment_summary),
            );
        }
        main.push_str("</tbody></table></section>");
    }
    Ok(main)
}

/// The thresholds of the metric named `name` in the deployment's analyses, with its unit.
fn metric_spec<'a>(strategy: &'a StrategySpec, name: &str) -> Option<&'a MetricCheck> {
    let analyses: Vec<&AnalysisSpec> = match strategy {
        StrategySpec::Canary(c) => c
            .steps
            .iter()
            .filter_map(|s| match s {
                CanaryStep::Analysis { analysis } => Some(analysis),
                _ => None,
            })
            .chain(c.background_analysis.as_ref())
            .collect(),
        StrategySpec::BlueGreen(b) => b.pre_promotion_analysis.iter().collect(),
        _ => Vec::new(),
    };
    analyses
        .into_iter()
        .flat_map(|a| a.metrics.iter())
        .find(|m| m.name == name)
}

fn thresholds(check: Option<&MetricCheck>) -> Vec<Threshold> {
    let Some(check) = check else {
        return Vec::new();
    };
    let unit = check.unit.as_deref();
    match &check.kind {
        MetricKind::Threshold {
            success, failure, ..
        } => {
            let mut lines = vec![Threshold {
                label: format!("success {}", success.describe(unit)),
                value: success.threshold,
            }];
            if let Some(f) = failure {
                lines.push(Threshold {
                    label: format!("failure {}", f.describe(unit)),
                    value: f.threshold,
                });
            }
            lines
        }
        MetricKind::Judgement(j) => vec![
            Threshold {
                label: format!("pass ≥ {}", j.pass_score),
                value: j.pass_score,
            },
            Threshold {
                label: format!("marginal ≥ {}", j.marginal_score),
                value: j.marginal_score,
            },
        ],
        _ => Vec::new(),
    }
}

fn kind_text(kind: &DeploymentKind) -> String {
    match kind {
        DeploymentKind::Deploy => "deploy".to_string(),
        DeploymentKind::Rollback => "manual rollback".to_string(),
        DeploymentKind::Preview { branch, .. } => format!("preview of {branch}"),
        DeploymentKind::Teardown => "stop".to_string(),
        DeploymentKind::Scale { replicas } => format!("scale to {replicas}"),
    }
}

fn step_text(step: &CanaryStep) -> String {
    match step {
        CanaryStep::SetWeight { weight } => format!("traffic {}%", weight.percent()),
        CanaryStep::Pause { duration: Some(d) } => format!("pause {}s", d.as_secs()),
        CanaryStep::Pause { duration: None } => "pause until approved".to_string(),
        CanaryStep::Analysis { analysis } => format!(
            "analysis: {}",
            analysis
                .metrics
                .iter()
                .map(|m| m.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        CanaryStep::SetCanaryScale { .. } => "canary scale".to_string(),
        CanaryStep::SetHeaderRoute { name, value } => format!("header route {name}: {value}"),
        CanaryStep::SetMirror { percent } => format!("mirror {}%", percent.percent()),
        _ => "step".to_string(),
    }
}

/// The buttons for what an operator may do to `s` now.
fn actions(s: &DeploymentStatus, viewer: &Viewer) -> String {
    if s.phase.is_terminal() {
        return String::new();
    }
    let base = format!("/deployments/{}", url_part(s.spec.id.as_str()));
    let token = &viewer.form_token;
    let mut out = String::from("<div class=\"actions\">");
    if let Some((gate, _)) = &s.awaiting {
        let label = if gate == "promotion" {
            "Promote"
        } else {
            "Approve"
        };
        out.push_str(&action_form(
            &format!("{base}/approve"),
            label,
            "primary",
            token,
            true,
            "",
        ));
        out.push_str(&action_form(
            &format!("{base}/reject"),
            "Reject",
            "danger",
            token,
            true,
            "",
        ));
    }
    // An operator's hold is resumed; a gate (also shown as paused) is approved or rejected.
    if s.paused.is_some() {
        out.push_str(&action_form(
            &format!("{base}/resume"),
            "Resume",
            "primary",
            token,
            false,
            "",
        ));
    } else if s.phase == Phase::Progressing && s.awaiting.is_none() {
        out.push_str(&action_form(
            &format!("{base}/pause"),
            "Pause",
            "",
            token,
            true,
            "",
        ));
    }
    if s.abort.is_none() && s.phase != Phase::RollingBack {
        out.push_str(&action_form(
            &format!("{base}/abort"),
            "Abort",
            "danger",
            token,
            true,
            "",
        ));
    }
    out.push_str("</div>");
    out
}

/// `/deployments/{id}`: the deployment's steps, analysis charts against their thresholds,
/// judgements, rollback reason, outcome, timeline, and the operator's buttons.
pub(crate) async fn deployment(inner: &Inner, viewer: &Viewer, id: &str) -> Result<String> {
    let id = DeploymentId::new(id);
    let entries = inner.orchestrator.journal(&id).await?;
    let s = DeploymentStatus::from_journal(&entries)?;
    let events = deploykit_core::event::timeline(&entries)?;
    let strategy = match &s.spec.strategy {
        StrategySpec::Rolling(_) => "rolling",
        StrategySpec::BlueGreen(_) => "blue-green",
        StrategySpec::Canary(_) => "canary",
        _ => "other",
    };
    let kind = kind_text(&s.spec.kind);
    let mut main = format!(
        "<h1 data-deployment=\"{id}\">{service} <b>{label}</b> in {env} {badge}</h1>\
         <p class=\"meta\">{kind} by <b>{by}</b>, {strategy}, {replicas} instance(s), revision \
         <code>{rev}</code>, created {created}{previous}</p>",
        id = esc(s.spec.id.as_str()),
        service = service_link(&s.spec.service, &s.spec.environment),
        label = esc(&s.spec.target.label),
        env = esc(s.spec.environment.as_str()),
        badge = phase_badge(s.phase),
        kind = esc(&kind),
        by = esc(s.spec.requested_by.as_str()),
        replicas = s.spec.replicas,
        rev = esc(s.spec.target.id.as_str()),
        created = time(s.created_at),
        previous = s
            .previous
            .as_ref()
            .map(|p| format!(", replacing <b>{}</b>", esc(&p.label)))
            .unwrap_or_default(),
    );
    if let Some((gate, reason)) = &s.awaiting {
        let _ = write!(
            main,
            "<div class=\"banner wait\" id=\"awaiting\">Waiting for approval of <b>{}</b>: {}</div>",
            esc(gate),
            esc(reason)
        );
    }
    if let Some(p) = &s.paused {
        let _ = write!(
            main,
            "<div class=\"banner wait\">Paused by <b>{}</b>: {}</div>",
            esc(p.by.as_str()),
            esc(&p.reason)
        );
    }
    if let Some((cause, reason)) = &s.rollback {
        let _ = write!(
            main,
            "<div class=\"banner bad\" id=\"rollback\">Rolled back because {}: {}</div>",
            esc(&cause.to_string()),
            esc(reason)
        );
    }
    if let Some(outcome) = &s.outcome {
        let text = match outcome {
            Outcome::Succeeded => format!("{} serves", s.spec.target.label),
            Outcome::RolledBack { verification } => format!("verified: {verification}"),
            Outcome::Frozen { reason } => format!("frozen: {reason}"),
            Outcome::Failed { reason } => format!("failed: {reason}"),
        };
        let _ = write!(
            main,
            "<div class=\"banner {}\" id=\"outcome\">{} {}</div>",
            if s.phase == Phase::Succeeded {
                "ok"
            } else {
                "bad"
            },
            phase_badge(s.phase),
            esc(&text)
        );
    }
    main.push_str(&actions(&s, viewer));

    // Traffic: what was last applied, and what the environment serves now.
    if let Some(applied) = &s.last_applied {
        let _ = write!(
            main,
            "<h2>Traffic</h2><p>applied: {}</p>",
            esc(&applied.summary())
        );
        if let Ok(o) = observe(inner, &s.spec.service, &s.spec.environment).await {
            let _ = write!(
                main,
                "<p class=\"now\">serving now: {}</p>",
                split_bar(&traffic_shares(&o))
            );
        }
    }

    // Steps, marked by those the journal says were reached.
    if let StrategySpec::Canary(c) = &s.spec.strategy {
        let reached: BTreeSet<usize> = events
            .iter()
            .filter_map(|e| match e.entry.event {
                JournalEvent::StepReached { step } => Some(step),
                _ => None,
            })
            .collect();
        main.push_str("<h2>Steps</h2><ol class=\"steps\">");
        for (i, step) in c.steps.iter().enumerate() {
            let class = if reached.contains(&(i + 1)) {
                "done"
            } else if reached.contains(&i) || (i == 0 && s.started_at.is_some()) {
                if s.phase.is_terminal() {
                    "stopped"
                } else {
                    "current"
                }
            } else {
                "todo"
            };
            let _ = write!(main, "<li class=\"{class}\">{}</li>", esc(&step_text(step)));
        }
        main.push_str("</ol>");
    }

    // Analysis: every measurement, charted per metric against its thresholds.
    let measurements: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.entry.event {
            JournalEvent::Measured { measurement } => Some(measurement),
            _ => None,
        })
        .collect();
    if !measurements.is_empty() {
        main.push_str("<h2>Analysis</h2>");
        let metrics: BTreeSet<&str> = measurements.iter().map(|m| m.metric.as_str()).collect();
        for metric in metrics {
            let check = metric_spec(&s.spec.strategy, metric);
            let points: Vec<Point> = measurements
                .iter()
                .filter(|m| m.metric == metric)
                .map(|m| Point {
                    at: m.at,
                    value: m.value,
                    outcome: m.outcome,
                })
                .collect();
            let unit = check.and_then(|c| c.unit.as_deref());
            let _ = write!(
                main,
                "<figure class=\"metric\"><figcaption>{}</figcaption>{}",
                esc(metric),
                chart::measurements(metric, unit, s.created_at, &points, &thresholds(check))
            );
            let judgement = matches!(check.map(|c| &c.kind), Some(MetricKind::Judgement(_)));
            main.push_str(
                "<table class=\"measurements\"><thead><tr><th>When</th><th>Run</th>\
                 <th>Result</th><th>Detail</th></tr></thead><tbody>",
            );
            for m in measurements.iter().filter(|m| m.metric == metric) {
                let detail = if judgement || m.detail.contains('\n') {
                    format!("<pre class=\"judgement\">{}</pre>", esc(&m.detail))
                } else {
                    esc(&m.detail)
                };
                let _ = write!(
                    main,
                    "<tr class=\"{o}\"><td>+{t:.1}s</td><td>{run}</td><td>{o}</td><td>{detail}</td></tr>",
                    t = m.at.since(s.created_at).as_secs_f64(),
                    run = esc(&m.run),
                    o = esc(&m.outcome.to_string()),
                );
            }
            main.push_str("</tbody></table></figure>");
        }
    }

    // The timeline: every journal entry.
    main.push_str("<h2>Timeline</h2><ol class=\"timeline\">");
    for e in &events {
        let _ = write!(
            main,
            "<li class=\"{kind}\"><span class=\"at\">+{t:.2}s</span> {desc}</li>",
            kind = e.entry.event.kind(),
            t = e.entry.at.since(s.created_at).as_secs_f64(),
            desc = esc(&e.description())
        );
    }
    main.push_str("</ol>");
    Ok(main)
}

/// `/services/{env}/{service}`: its history, newest first, and a rollback to an earlier
/// revision.
pub(crate) async fn service(
    inner: &Inner,
    viewer: &Viewer,
    environment: &str,
    service: &str,
) -> Result<String> {
    let environment = EnvironmentName::new(environment)?;
    let service = ServiceId::new(service)?;
    let ids = inner.store.list_deployments(&service, &environment).await?;
    let mut main = format!(
        "<h1>{} in {}</h1>",
        esc(service.as_str()),
        esc(environment.as_str())
    );
    if let Ok(o) = observe(inner, &service, &environment).await {
        let _ = write!(
            main,
            "<div class=\"now\">{}<div>{}</div></div>",
            split_bar(&traffic_shares(&o)),
            instances_cell(&o)
        );
    }
    let revisions = inner
        .orchestrator
        .history(&service, &environment)
        .await
        .unwrap_or_default();
    if revisions.len() > 1 {
        let mut options = String::new();
        for r in revisions.iter().skip(1) {
            let _ = write!(
                options,
                "<option value=\"{}\">{} ({})</option>",
                esc(r.id.as_str()),
                esc(&r.label),
                esc(r.id.as_str())
            );
        }
        main.push_str(&action_form(
            &format!(
                "/services/{}/{}/rollback",
                url_part(environment.as_str()),
                url_part(service.as_str())
            ),
            "Roll back",
            "danger",
            &viewer.form_token,
            true,
            &format!("<select name=\"to\">{options}</select>"),
        ));
    }
    main.push_str(
        "<h2>History</h2><table class=\"history\"><thead><tr><th>Deployment</th><th>Revision</th>\
         <th>Kind</th><th>Outcome</th><th>By</th><th>Created</th></tr></thead><tbody>",
    );
    if ids.is_empty() {
        main.push_str("<tr><td colspan=\"6\">never deployed</td></tr>");
    }
    for id in ids {
        let s = inner.orchestrator.status(&id).await?;
        let kind = kind_text(&s.spec.kind);
        let _ = write!(
            main,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}{}</td><td>{}</td><td>{}</td></tr>",
            deployment_link(&s),
            esc(&s.spec.target.label),
            esc(&kind),
            phase_badge(s.phase),
            s.rollback
                .as_ref()
                .filter(|_| s.phase != Phase::Succeeded)
                .map(|(_, r)| format!(" <span class=\"reason\">{}</span>", esc(r)))
                .unwrap_or_default(),
            esc(s.spec.requested_by.as_str()),
            time(s.created_at)
        );
    }
    main.push_str("</tbody></table>");
    Ok(main)
}

/// `/previews`: every preview environment with its service, address and last deployment.
pub(crate) async fn previews(inner: &Inner) -> Result<String> {
    let mut main = String::from(
        "<h1>Previews</h1><table><thead><tr><th>Preview</th><th>Service</th><th>Address</th>\
         <th>Last deployment</th></tr></thead><tbody>",
    );
    let mut any = false;
    for (service, environment) in inner.store.list_environments().await? {
        if !environment.as_str().starts_with("preview-") {
            continue;
        }
        any = true;
        let last = match inner
            .store
            .list_deployments(&service, &environment)
            .await?
            .first()
        {
            Some(id) => deployment_summary(&inner.orchestrator.status(id).await?),
            None => String::new(),
        };
        let host = format!("{service}-{environment}.localhost");
        let _ = write!(
            main,
            "<tr><td>{}</td><td>{}</td><td><code>http://{}/</code></td><td>{last}</td></tr>",
            esc(environment.as_str()),
            service_link(&service, &environment),
            esc(&host)
        );
    }
    if !any {
        main.push_str("<tr><td colspan=\"4\">no previews (deploykit preview create)</td></tr>");
    }
    main.push_str("</tbody></table>");
    Ok(main)
}

/// `/backups`: the backup agent, each policy's duties with their last runs, and the last
/// drill's measured RTO and RPO.
pub(crate) fn backups(inner: &Inner) -> Result<String> {
    use deploykit_backup::agent::AgentState;
    let Some(path) = &inner.backups else {
        return Ok("<h1>Backups</h1><p>No backup agent state is configured.</p>".into());
    };
    let state = AgentState::load(path)?;
    let now = inner.clock.now();
    let mut main = String::from("<h1>Backups</h1>");
    match &state.agent {
        Some(a) if a.is_alive(now) => {
            let _ = write!(
                main,
                "<p class=\"agent ok\">backup agent running (pid {}, last seen {})</p>",
                a.pid,
                time(a.heartbeat)
            );
        }
        Some(a) => {
            let _ = write!(
                main,
                "<p class=\"agent bad\">backup agent not running (last seen {})</p>",
                time(a.stopped.unwrap_or(a.heartbeat))
            );
        }
        None => main.push_str(
            "<p class=\"agent muted\">the backup agent never ran here (deploykit backup agent)</p>",
        ),
    }
    for (env, record) in &state.environments {
        let findings = state.findings(env, now);
        let _ = write!(
            main,
            "<section class=\"policy\" data-environment=\"{e}\"><h2>{e} {ok}</h2>\
             <p>repository <code>{repo}</code></p><table><thead><tr><th>Duty</th><th>Next due</th>\
             <th>Last success</th><th>Last failure</th><th>Measured</th></tr></thead><tbody>",
            e = esc(env),
            ok = if findings.is_ok() {
                "<span class=\"badge ok\">ok</span>"
            } else {
                "<span class=\"badge bad\">needs attention</span>"
            },
            repo = esc(&record.repository),
        );
        for (duty, d) in &record.duties {
            let success = d.last_success.as_ref().map_or_else(
                || "never".to_string(),
                |r| format!("{} ({})", time(r.finished), esc(&r.kind)),
            );
            let failure = d.last_failure.as_ref().map_or_else(String::new, |r| {
                format!("{}: {}", time(r.finished), esc(&r.detail))
            });
            let measured = d.last_drill.as_ref().map_or_else(String::new, |m| {
                format!(
                    "<span class=\"drill {}\">RTO {:.1}s, RPO {:.1}s{}</span>",
                    if m.met { "ok" } else { "bad" },
                    m.rto_ms as f64 / 1000.0,
                    m.rpo_ms as f64 / 1000.0,
                    if m.met { "" } else { " (target missed)" }
                )
            });
            let _ = write!(
                main,
                "<tr><td>{}</td><td>{}</td><td>{success}</td><td>{failure}</td><td>{measured}</td></tr>",
                duty.as_str(),
                d.next_due.map(time).unwrap_or_else(|| "-".into()),
            );
        }
        main.push_str("</tbody></table>");
        for p in &findings.problems {
            let _ = write!(main, "<p class=\"problem\">{}</p>", esc(p));
        }
        main.push_str("</section>");
    }
    Ok(main)
}

/// `/audit`: whether the hash chain verifies, and the newest records.
pub(crate) async fn audit(inner: &Inner) -> Result<String> {
    let entries = inner.store.audit_log().await?;
    let mut main = String::from("<h1>Audit log</h1>");
    match deploykit_core::audit::verify(&entries, None) {
        Ok(v) => {
            let _ = write!(
                main,
                "<p class=\"banner ok\" id=\"audit-status\">hash chain intact: {} records, head \
                 <code>{}</code></p>",
                v.records,
                esc(&v.head)
            );
        }
        Err(e) => {
            let _ = write!(
                main,
                "<p class=\"banner bad\" id=\"audit-status\">does not verify: {}</p>",
                esc(&e.to_string())
            );
        }
    }
    main.push_str(
        "<table class=\"audit\"><thead><tr><th>#</th><th>When</th><th>Who</th><th>Action</th>\
         <th>Outcome</th><th>Where</th><th>Detail</th></tr></thead><tbody>",
    );
    for e in entries.iter().rev().take(AUDIT_ROWS) {
        let r = &e.record;
        let outcome = format!("{:?}", r.outcome).to_lowercase();
        let _ = write!(
            main,
            "<tr class=\"{outcome}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{outcome}</td>\
             <td>{}/{}{}</td><td>{}</td></tr>",
            e.seq,
            time(r.at),
            esc(r.actor.as_str()),
            esc(&r.action.to_string()),
            esc(r.environment.as_str()),
            esc(r.service.as_str()),
            r.deployment
                .as_ref()
                .map(|d| format!(
                    " <a href=\"/deployments/{}\">{}</a>",
                    url_part(d.as_str()),
                    esc(d.as_str())
                ))
                .unwrap_or_default(),
            esc(&r.detail)
        );
    }
    main.push_str("</tbody></table>");
    Ok(main)
}
