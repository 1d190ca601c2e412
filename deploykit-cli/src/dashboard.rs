//! The daemon's web dashboard (`deploykit daemon --dashboard-listen ADDR`) and
//! `deploykit dashboard`, which prints a link that signs in to it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use deploykit_core::{Clock, EnvironmentName, Error, Result, StateStore, SystemClock};
use deploykit_dashboard::{Dashboard, SessionKey, login_link};
use serde_json::json;
use tokio::sync::watch;

use crate::context::Context;

/// The key that signs the dashboard's links and sessions: one per state directory, so a
/// link made by `deploykit dashboard` opens whichever daemon of this state serves it.
fn key_path(ctx: &Context) -> PathBuf {
    ctx.state.join("dashboard.key")
}

/// Where a daemon of `environment` writes its dashboard's address.
fn address_path(ctx: &Context, environment: &EnvironmentName) -> PathBuf {
    ctx.state.join(environment.as_str()).join("dashboard.url")
}

/// Binds the dashboard's listener before anything else starts, so a taken port fails the
/// daemon at once; writes its address for `deploykit dashboard`.
pub(crate) async fn bind(
    ctx: &Context,
    environment: &EnvironmentName,
    addr: std::net::SocketAddr,
) -> Result<(tokio::net::TcpListener, String)> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        Error::backend(
            format!("bind the dashboard to {addr} (--dashboard-listen)"),
            e.to_string(),
        )
    })?;
    let url = format!("http://{}", listener.local_addr().unwrap_or(addr));
    SessionKey::load_or_create(&key_path(ctx))?;
    let path = address_path(ctx, environment);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::backend(format!("create {}", dir.display()), e.to_string()))?;
    }
    std::fs::write(&path, &url)
        .map_err(|e| Error::backend(format!("write {}", path.display()), e.to_string()))?;
    Ok((listener, url))
}

/// Serves the dashboard until `stop`: once the daemon's socket answers, an orchestrator over
/// it (the same as every command's: its access rules, four eyes and audit apply to the
/// buttons) drives what the dashboard starts (a rollback) and adopts rollouts whose command
/// died.
pub(crate) async fn serve(
    ctx: &Context,
    environment: &EnvironmentName,
    listener: tokio::net::TcpListener,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    let started = tokio::time::Instant::now();
    while ctx.client().info().await.is_err() {
        if started.elapsed() > Duration::from_secs(30) {
            return Err(Error::backend(
                "start the dashboard",
                "the daemon's socket did not answer within 30 s",
            ));
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = stop.wait_for(|s| *s) => return Ok(()),
        }
    }
    let orchestrator = Arc::new(ctx.orchestrator().await?);
    let store: Arc<dyn StateStore> = ctx.store().await?;
    let services = ctx.config()?.services().map(|s| s.name.clone());
    let dashboard = Dashboard::builder(
        store,
        orchestrator.clone(),
        SessionKey::load(&key_path(ctx))?,
    )
    .environment(environment.clone(), Arc::new(ctx.client()))
    .services(services)
    .backup_state(ctx.state.join("backup-agent.json"))
    .build();
    let served = dashboard
        .serve(listener, async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await;
    if let Ok(orchestrator) = Arc::try_unwrap(orchestrator) {
        orchestrator.shutdown().await?;
    }
    served
}

/// `deploykit dashboard`: a link that signs `--actor` in to the running daemon's dashboard.
pub(crate) fn link(ctx: &Context, env: Option<&str>) -> Result<ExitCode> {
    let environment = ctx.environment(env)?;
    let path = address_path(ctx, &environment);
    let url = std::fs::read_to_string(&path).map_err(|_| {
        Error::not_found(format!(
            "dashboard of environment {environment} ({} is missing: start the daemon with \
             `deploykit daemon --dashboard-listen 127.0.0.1:8090`)",
            path.display()
        ))
    })?;
    let key = SessionKey::load(&key_path(ctx))?;
    // Whoever can read the key signs people in: `--actor` names whom (also with [access],
    // where the dashboard's actions are then checked against that person's rights).
    let actor = ctx
        .claimed_actor
        .as_deref()
        .map_or_else(|| ctx.actor.clone(), deploykit_core::Actor::new);
    let link = login_link(url.trim(), &key, &actor, SystemClock.now());
    ctx.print(
        format!(
            "{link}\n(signs in as {actor}; valid for {} minutes)",
            deploykit_dashboard::session::LOGIN_LINK_VALIDITY.as_secs() / 60
        ),
        json!({ "url": link, "actor": actor.to_string(), "dashboard": url.trim() }),
    );
    Ok(ExitCode::SUCCESS)
}
