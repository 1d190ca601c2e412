//! Embedders spawn deploykit's futures on multi-threaded runtimes (`tokio::spawn` needs
//! `Send + 'static` futures), so every public async API must return a `Send` future. This file
//! checks it at compile time: a future that is not `Send` (an entered tracing span or a
//! `std::sync::MutexGuard` held across an await, an `Rc`) makes the test crate fail to compile.
//! The functions below are never called; compiling them is the test.

#![allow(dead_code)]

use std::path::Path;

use deploykit_alerting::Alerting;
use deploykit_backup::{
    BackupRequest, DrillTargets, PruneOptions, ReadData, Repository, RestoreOptions,
    RetentionPolicy,
};
use deploykit_build::Pipeline;
use deploykit_core::analysis::{MetricCheck, Subject, measure};
use deploykit_core::secrets::SecretProvider;
use deploykit_core::{
    Actor, BuildContext, DeployRequest, DeploymentId, Environment, EnvironmentExt, EnvironmentName,
    Monitor, Orchestrator, OrchestratorBuilder, PreviewRequest, ReleaseRequest, Revision,
    RevisionId, ServiceId, Timestamp,
};
use deploykit_sqlite::SqliteStore;

fn send<T: Send>(_: T) {}

/// A spawnable future: `Send` and owning everything it borrows.
fn spawnable<F: std::future::Future + Send + 'static>(_: F) {}

#[allow(clippy::too_many_arguments)]
fn orchestrator_futures(
    builder: OrchestratorBuilder,
    orch: &Orchestrator,
    owned: Orchestrator,
    request: DeployRequest,
    preview: PreviewRequest,
    release: ReleaseRequest,
    id: &DeploymentId,
    service: &ServiceId,
    environment: &EnvironmentName,
    revision: &RevisionId,
    key: &ed25519_dalek::SigningKey,
) {
    send(builder.open());
    send(orch.deploy(request));
    send(orch.rollback(service, environment, Some(revision), Actor::system()));
    send(orch.pause(id, Actor::system(), "why"));
    send(orch.resume(id, Actor::system()));
    send(orch.abort(id, Actor::system(), "why"));
    send(orch.abort_revision(service, environment, revision, Actor::system(), "why"));
    send(orch.approve(id, Actor::system(), "why"));
    send(orch.reject(id, Actor::system(), "why"));
    send(orch.status(id));
    send(orch.journal(id));
    send(orch.wait(id));
    send(orch.history(service, environment));
    send(orch.audit_log());
    send(orch.audit_chain());
    send(orch.audit_checkpoint(key));
    send(orch.verify_audit(None));
    send(orch.preview(preview));
    send(orch.teardown_preview(environment, Actor::system()));
    send(orch.reap_previews());
    send(orch.release(release));
    spawnable(owned.shutdown());
}

#[allow(clippy::too_many_arguments)]
fn library_futures(
    pipeline: &Pipeline,
    ctx: &BuildContext,
    repo: &Repository,
    backup: BackupRequest,
    restore: &RestoreOptions,
    retention: &RetentionPolicy,
    alerting: &Alerting,
    monitor: &dyn Monitor,
    env: &dyn Environment,
    metric: &MetricCheck,
    subject: &Subject<'_>,
    secrets: &dyn SecretProvider,
    revision: Revision,
) {
    send(pipeline.run(ctx));
    send(repo.backup(backup));
    send(repo.restore("snapshot", Path::new("/tmp"), restore));
    send(repo.verify(ReadData::All));
    send(repo.forget(retention, true));
    send(repo.prune(PruneOptions::default()));
    send(repo.snapshots());
    send(repo.drill(Path::new("/tmp"), DrillTargets::default()));
    send(alerting.evaluate(monitor));
    send(alerting.dispatch());
    send(env.observe(&ServiceId::new("web").expect("name")));
    send(env.wait_settled(
        &ServiceId::new("web").expect("name"),
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(1),
    ));
    send(measure(
        monitor,
        "run",
        metric,
        subject,
        Timestamp::from_millis(0),
    ));
    send(revision.pin_secrets(secrets));
    spawnable(SqliteStore::open("deploykit.db"));
}

/// Nothing to run: the checks above are made by the compiler.
#[test]
fn public_futures_are_send() {}
