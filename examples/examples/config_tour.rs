//! A tour of configuration, secrets, feature flags, access control and the audit log.
//!
//! Run it with `cargo run -p deploykit-examples --example config_tour`. It loads
//! `examples/config/deploykit.toml` (three environments) and the encrypted
//! `deploykit.secrets.toml` beside it (opened with the demo identity `demo.agekey`), prints
//! production's effective configuration with secrets redacted and each setting's origin,
//! evaluates a feature flag for a few users, shows a production deploy refused for someone
//! without the release role, verifies the audit chain against a signed checkpoint, and then
//! edits one audit record and truncates the log behind deploykit's back: both are caught.
//!
//! It exits non-zero if anything it claims does not hold.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use deploykit_config::{Config, Setting};
use deploykit_core::access::AccessPolicy;
use deploykit_core::strategy::CanaryStep;
use deploykit_core::{
    Actor, DeployRequest, Digest, Error, Orchestrator, Phase, StateStore, StrategySpec,
};
use deploykit_examples::exit_code;
use deploykit_flags::{EvaluationContext, FlagSet, Reason};
use deploykit_secrets::{FileSecretProvider, Identity};
use deploykit_sqlite::SqliteStore;
use deploykit_testing::SimCluster;
use ed25519_dalek::SigningKey;

type BoxError = Box<dyn std::error::Error>;

#[tokio::main(flavor = "current_thread", start_paused = true)]
async fn main() -> ExitCode {
    exit_code("config_tour", run().await)
}

fn sample_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config")
}

async fn run() -> Result<bool, BoxError> {
    let mut holds = true;
    let dir = sample_dir();

    // 1. Configuration and secrets.
    let config = Config::load(&dir.join("deploykit.toml"))?;
    let names: Vec<String> = config.environments().map(|e| e.name.to_string()).collect();
    println!(
        "== configuration: application {}, environments {}",
        config.application,
        names.join(", ")
    );
    for service in config.services() {
        let stages: Vec<String> = config
            .pipeline(service.name.as_str())?
            .stage_names()
            .map(str::to_string)
            .collect();
        println!(
            "   service {}: build stages [{}]",
            service.name,
            stages.join(", ")
        );
    }
    let identity = Identity::from_key_file(&dir.join("demo.agekey"))?;
    let secrets_path = config
        .secrets_file()
        .ok_or("the sample names a secrets file")?;
    let provider = FileSecretProvider::open(secrets_path, &identity)?;
    config.check_secrets(&provider).await?;
    let versions = provider.versions();
    println!(
        "   secrets: {} keys in {}, every reference resolves\n",
        versions.len(),
        secrets_path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
    );

    // 2. Production's effective configuration, secrets redacted.
    let prod = config.environment("production")?;
    println!("== production (effective)");
    println!("   kind {}, replicas {}", prod.kind, prod.replicas);
    if let Some(a) = &prod.autoscale {
        println!(
            "   autoscale {}..{} at {}% CPU",
            a.min_replicas, a.max_replicas, a.target_cpu_percent
        );
    }
    println!(
        "   failure policy {:?}, progress deadline {}s",
        prod.failure_policy,
        prod.progress_deadline.as_secs()
    );
    if let StrategySpec::Canary(canary) = &prod.strategy {
        let steps: Vec<String> = canary.steps.iter().map(describe_step).collect();
        println!("   canary: {}", steps.join(" → "));
        if let Some(bg) = &canary.background_analysis {
            let metrics: Vec<&str> = bg.metrics.iter().map(|m| m.name.as_str()).collect();
            println!("   background analysis: {}", metrics.join(", "));
        }
    }
    if let Some(backup) = config.backup_policy("production")? {
        let runs: Vec<String> = backup
            .rotation
            .iter()
            .map(|r| format!("{} at \"{}\"", r.kind, r.cron))
            .collect();
        println!(
            "   backup: {}; RTO {:?}, RPO {:?}",
            runs.join(", "),
            backup.targets.rto,
            backup.targets.rpo
        );
    }
    println!("   settings:");
    for (name, setting, origin) in config.settings("production") {
        let shown = match setting {
            Setting::Value(v) => v.clone(),
            Setting::Secret(key) => format!(
                "<secret {key}, version {}>",
                versions.get(key).map_or("missing", String::as_str)
            ),
        };
        println!(
            "     {name:<19} = {shown:<58} from {} (line {})",
            origin.layer, origin.line
        );
    }
    println!();

    // 3. A feature flag for a few users: the [flags] of deploykit.toml, which flags.json
    //    beside it holds as a flagd file.
    let flags = config.flags().ok_or("the sample defines flags")?;
    let flagd_file = FlagSet::load(&dir.join("flags.json"))?;
    if &flagd_file != flags {
        println!("!! flags.json and the [flags] of deploykit.toml differ");
        holds = false;
    }
    println!(
        "== flag newCheckout in production (internal → on; DE/FR → off; app ≥ 2.3.0 → 20 % split)"
    );
    let users = [
        EvaluationContext::new("ana@shop.example").with("plan", "internal"),
        EvaluationContext::new("ben@shop.example")
            .with("country", "DE")
            .with("appVersion", "2.4.0"),
        EvaluationContext::new("chloe@shop.example").with("appVersion", "2.4.0"),
        EvaluationContext::new("eve@shop.example").with("appVersion", "2.4.0"),
        EvaluationContext::new("dan@shop.example").with("appVersion", "2.1.0"),
    ];
    for user in &users {
        let d = flags.boolean("newCheckout", false, user, Some("production"));
        println!(
            "   {:<20} {:<5} variant {:<4} reason {}",
            user.targeting_key.as_deref().unwrap_or("-"),
            d.value,
            d.variant.as_deref().unwrap_or("-"),
            d.reason
        );
    }
    let anonymous = flags.boolean(
        "newCheckout",
        false,
        &EvaluationContext::default().with("appVersion", "2.4.0"),
        Some("production"),
    );
    println!(
        "   {:<20} {:<5} reason {} (as in flagd, a split without a targeting key chooses nobody)",
        "(no targeting key)", anonymous.value, anonymous.reason,
    );
    let staging = flags.boolean("newCheckout", false, &users[4], Some("staging"));
    println!(
        "   {:<20} {:<5} reason {} in staging, whose default variant is on\n",
        "dan@shop.example", staging.value, staging.reason,
    );
    if !users.iter().all(|u| {
        let d = flags.boolean("newCheckout", false, u, Some("production"));
        d.error_code.is_none() && d.variant.is_some()
    }) || anonymous.reason != Reason::Default
        || !staging.value
    {
        println!("!! the flag did not evaluate as the tour says");
        holds = false;
    }

    // 4. Access control: only the release role deploys to production.
    let cluster = SimCluster::new();
    cluster.set_secret_provider(Arc::new(provider.clone()));
    let db = std::env::temp_dir().join(format!("deploykit-tour-{}.db", std::process::id()));
    let _ = std::fs::remove_file(&db);
    let mut policy = AccessPolicy::default();
    policy.bind("alice", "role:release")?;
    let store: Arc<dyn StateStore> = Arc::new(SqliteStore::open(&db).await?);
    let mut builder = Orchestrator::builder_shared(store.clone())
        .clock(Arc::new(cluster.clock()))
        .access_policy(policy)
        .secrets(Arc::new(provider.clone()));
    for env in config.environments() {
        builder = builder.environment_with_monitor(
            env.clone(),
            Arc::new(cluster.clone()),
            Arc::new(cluster.clone()),
        );
    }
    let orchestrator = builder.open().await?;
    let web = config.service("web")?.clone();
    let request = |env: &str, who: &str| {
        DeployRequest::builder()
            .service(web.clone())
            .environment(env)
            .artifact(Digest::of_bytes(b"web 1.4.2"))
            .label("1.4.2")
            .requested_by(Actor::new(who))
            .build()
    };
    println!("== access control");
    match orchestrator.deploy(request("production", "mallory")).await {
        Err(e @ Error::PermissionDenied { .. }) => {
            println!("   mallory → production: refused: {e}")
        }
        other => {
            println!("   mallory → production: NOT refused: {other:?}");
            holds = false;
        }
    }
    let id = orchestrator
        .deploy(request("development", "mallory"))
        .await?;
    let status = orchestrator.wait(&id).await?;
    println!(
        "   mallory → development: {} (everyone may deploy to development)",
        status.phase
    );
    holds &= status.phase == Phase::Succeeded;
    let delivered = cluster
        .resolved_secrets(&web.name, &status.spec.target.id)
        .and_then(Result::ok)
        .map(|s| s.keys().cloned().collect::<Vec<_>>())
        .unwrap_or_default();
    println!(
        "   its instances got secret variables {delivered:?}; the journal holds only references\n"
    );
    holds &= delivered == ["SENTRY_DSN"];

    // 5. The audit chain, a signed checkpoint, and tampering behind deploykit's back.
    let signer = SigningKey::from_bytes(&[7; 32]);
    let trusted = signer.verifying_key();
    let checkpoint = orchestrator.audit_checkpoint(&signer).await?;
    println!("== audit log");
    for entry in orchestrator.audit_chain().await? {
        let r = &entry.record;
        let target = format!("{}/{}", r.environment, r.service);
        println!(
            "   #{} {:<8} {:<7} {:<16} {:<8} {}  hash {}…",
            entry.seq,
            r.actor.to_string(),
            format!("{:?}", r.action).to_lowercase(),
            target,
            format!("{:?}", r.outcome).to_lowercase(),
            r.detail,
            &entry.hash[..12]
        );
    }
    let verified = orchestrator
        .verify_audit(Some((&checkpoint, &trusted)))
        .await?;
    println!(
        "   chain verifies: {} records, matches the signed checkpoint ({} records)",
        verified.records, checkpoint.checkpoint.count
    );
    orchestrator.shutdown().await?;
    drop(store);

    let conn = rusqlite::Connection::open(&db)?;
    let original: String =
        conn.query_row("SELECT body FROM audit WHERE seq = 0", [], |r| r.get(0))?;
    conn.execute(
        "UPDATE audit SET body = replace(body, '\"mallory\"', '\"alice\"') WHERE seq = 0",
        [],
    )?;
    holds &= report(
        "edit record 0 (mallory → alice)",
        &db,
        &checkpoint,
        &trusted,
    )
    .await?;
    conn.execute(
        "UPDATE audit SET body = ?1 WHERE seq = 0",
        rusqlite::params![original],
    )?;
    let last: i64 = conn.query_row("SELECT max(seq) FROM audit", [], |r| r.get(0))?;
    conn.execute("DELETE FROM audit WHERE seq = ?1", rusqlite::params![last])?;
    holds &= report("delete the last record", &db, &checkpoint, &trusted).await?;
    drop(conn);
    let _ = std::fs::remove_file(&db);
    Ok(holds)
}

/// Verify the tampered log; it must fail.
async fn report(
    what: &str,
    db: &Path,
    checkpoint: &deploykit_core::audit::SignedCheckpoint,
    trusted: &ed25519_dalek::VerifyingKey,
) -> Result<bool, BoxError> {
    let store = SqliteStore::open(db).await?;
    let entries = store.audit_log().await?;
    match deploykit_core::audit::verify(&entries, Some((checkpoint, trusted))) {
        Err(e @ Error::AuditTampered { .. }) => {
            println!("   {what}: detected: {e}");
            Ok(true)
        }
        other => {
            println!("   {what}: NOT detected: {other:?}");
            Ok(false)
        }
    }
}

fn describe_step(step: &CanaryStep) -> String {
    match step {
        CanaryStep::SetWeight { weight } => format!("{}%", weight.percent()),
        CanaryStep::Pause {
            duration: Some(d), ..
        } => format!("pause {}s", d.as_secs()),
        CanaryStep::Pause { duration: None, .. } => "approval".into(),
        CanaryStep::Analysis { analysis } => {
            let names: Vec<&str> = analysis.metrics.iter().map(|m| m.name.as_str()).collect();
            format!("analysis({})", names.join(","))
        }
        CanaryStep::SetCanaryScale { scale } => format!("scale {scale:?}"),
        CanaryStep::SetHeaderRoute { name, value } => format!("header {name}={value}"),
        CanaryStep::SetMirror { percent } => format!("mirror {}%", percent.percent()),
        other => format!("{other:?}"),
    }
}
