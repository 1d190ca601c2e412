//! The commands: `run` dispatches a parsed command line to its handler.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use deploykit_core::{
    DeployRequest, DeploymentId, DeploymentStatus, EnvironmentName, Error, Orchestrator, Phase,
    PreviewRequest, Result, ServiceId, StateStore,
};
use deploykit_local::{LocalEnvironment, LocalOptions};
use serde_json::json;

use crate::context::{Context, exit_for, status_json};
use crate::progress::Follow;
use crate::{AuditAction, Cli, Command, NotifyAction, Output, PreviewAction};
use deploykit_local::proxy::{LocalCa, ProxyTls};

async fn follow(ctx: &Context, orchestrator: &Orchestrator, id: &DeploymentId) -> Result<ExitCode> {
    let client = ctx.client();
    let store = ctx.store().await?;
    let status = Follow::new(ctx.output == Output::Text)
        .run(orchestrator, store.as_ref(), &client, id)
        .await?;
    let text = match &status.rollback {
        Some((_, reason)) if status.phase != Phase::Succeeded => format!(
            "{} {}: {} ({reason})",
            status.spec.service, status.spec.target.label, status.phase
        ),
        _ => format!(
            "{} {}: {}",
            status.spec.service, status.spec.target.label, status.phase
        ),
    };
    ctx.print(text, status_json(&status));
    Ok(exit_for(status.phase))
}

/// A deployment's line in `history`: what it was (a manual rollback, a scale or a stop is
/// marked) and how it ended, with the revision a rollback returned to.
fn history_outcome(s: &DeploymentStatus) -> String {
    use deploykit_core::journal::DeploymentKind;
    let kind = match &s.spec.kind {
        DeploymentKind::Rollback => "manual rollback, ".to_string(),
        DeploymentKind::Scale { replicas } => format!("scale to {replicas}, "),
        DeploymentKind::Teardown => "stop, ".to_string(),
        DeploymentKind::Preview { branch, .. } => format!("preview of {branch}, "),
        DeploymentKind::Deploy => String::new(),
    };
    let ended = match (&s.outcome, &s.previous) {
        (Some(deploykit_core::Outcome::RolledBack { .. }), Some(previous)) => {
            format!("rolled back to {}", previous.label)
        }
        _ => s.phase.to_string(),
    };
    format!("{kind}{ended}")
}

/// Run one command.
pub(crate) async fn run(cli: Cli) -> Result<ExitCode> {
    if let Command::Demo(args) = &cli.command {
        return crate::demo::run(args, cli.output).await;
    }
    let ctx = Context::load(&cli);
    match cli.command {
        Command::Demo(_) | Command::SampleApp => unreachable!("handled before"),
        Command::Daemon {
            env,
            listen,
            sticky_cookie,
            max_body_bytes,
            drain_timeout,
            grace,
            metrics_listen,
            dashboard_listen,
            tls,
            tls_cert,
            tls_key,
            socket_group,
        } => {
            let tls = match (tls, tls_cert, tls_key) {
                (_, Some(cert), Some(key)) => Some(ProxyTls::from_pem_files(&cert, &key)?),
                (true, _, _) => {
                    let ca = LocalCa::open_or_create(&ctx.state_dir()?.join("tls"))?;
                    let hosts: Vec<String> = ctx
                        .config()?
                        .services()
                        .map(|s| format!("{}.localhost", s.name))
                        .collect();
                    tracing::info!(ca = %ca.cert_path().display(), "the proxy serves HTTPS; clients trust this CA");
                    Some(ProxyTls::issued_by(&ca, &hosts)?)
                }
                _ => None,
            };
            let proxy = deploykit_local::proxy::ProxyConfig {
                sticky_cookie,
                max_body_bytes,
                tls,
                ..Default::default()
            };
            let options = LocalOptions::new(ctx.state_dir()?)
                .listen(listen)
                .workdir(&ctx.config_dir)
                .proxy(proxy)
                .drain_timeout(Duration::from_secs(drain_timeout))
                .grace(Duration::from_secs(grace));
            daemon(
                &ctx,
                env.as_deref(),
                options,
                metrics_listen,
                dashboard_listen,
                socket_group,
            )
            .await
        }
        Command::Dashboard { env } => crate::dashboard::link(&ctx, env.as_deref()),
        Command::Down { keep_instances } => {
            ctx.client().shutdown(!keep_instances).await?;
            ctx.print("daemon stopped", json!({ "stopped": true }));
            Ok(ExitCode::SUCCESS)
        }
        Command::Build {
            service,
            explain,
            no_push,
            tag,
        } => crate::build::command(&ctx, &service, explain, no_push, tag).await,
        Command::Keygen { path } => {
            let signer = deploykit_build::attest::Signer::generate(&path)?;
            let id = deploykit_build::attest::key_id(&signer.public());
            let public = deploykit_build::attest::public_path(&path);
            ctx.print(
                format!(
                    "key {id}: private {}, public {}",
                    path.display(),
                    public.display()
                ),
                json!({ "key_id": id, "private": path, "public": public }),
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Render {
            service,
            env,
            namespace,
            label,
        } => crate::build::render(&ctx, &service, env.as_deref(), &namespace, &label).await,
        Command::Deploy {
            service,
            env,
            label,
            set,
            no_wait,
        } => {
            let environment = ctx.environment(env.as_deref())?;
            let (spec, artifact) = crate::build::service_and_artifact(&ctx, &service, &set).await?;
            let label = label.unwrap_or_else(|| {
                let ts = deploykit_core::Clock::now(&deploykit_core::SystemClock);
                format!("{}", ts.as_millis() / 1000)
            });
            let orchestrator = ctx.orchestrator().await?;
            let id = orchestrator
                .deploy(
                    DeployRequest::builder()
                        .service(spec)
                        .environment(environment.as_str())
                        .artifact(artifact)
                        .label(label)
                        .requested_by(ctx.actor.clone())
                        .build(),
                )
                .await?;
            if no_wait {
                // Hand the rollout to a background `deploykit resume`, which takes the lease
                // as soon as this process lets go of it.
                orchestrator.shutdown().await?;
                ctx.resume_in_background()?;
                ctx.print(&id, json!({ "id": id.to_string() }));
                return Ok(ExitCode::SUCCESS);
            }
            let code = follow(&ctx, &orchestrator, &id).await?;
            orchestrator.shutdown().await?;
            Ok(code)
        }
        Command::Resume => {
            let store = ctx.store().await?;
            let active = store.list_active().await?;
            let orchestrator = ctx.orchestrator().await?;
            let mut code = ExitCode::SUCCESS;
            if active.is_empty() {
                ctx.print("nothing in flight", json!({ "resumed": [] }));
            }
            for id in active {
                let c = follow(&ctx, &orchestrator, &id).await?;
                if c != ExitCode::SUCCESS {
                    code = c;
                }
            }
            orchestrator.shutdown().await?;
            Ok(code)
        }
        Command::Status { service, env, id } => status(&ctx, service, env, id).await,
        Command::History { service, env } => history(&ctx, &service, env.as_deref()).await,
        Command::Promote { id } => approve(&ctx, &id, "promoted from the command line").await,
        Command::Approve { id, reason } => approve(&ctx, &id, &reason).await,
        Command::Abort { id, reason } => {
            let orchestrator = ctx.orchestrator().await?;
            let id = DeploymentId::new(id);
            orchestrator.abort(&id, ctx.actor.clone(), reason).await?;
            let code = follow(&ctx, &orchestrator, &id).await?;
            orchestrator.shutdown().await?;
            Ok(code)
        }
        Command::Rollback { service, env, to } => {
            let environment = ctx.environment(env.as_deref())?;
            let service = ctx.service_id(&service)?;
            let orchestrator = ctx.orchestrator().await?;
            let to = match to.as_deref() {
                Some(query) => Some(
                    orchestrator
                        .find_revision(&service, &environment, query)
                        .await?
                        .id
                        .clone(),
                ),
                None => None,
            };
            let id = orchestrator
                .rollback(&service, &environment, to.as_ref(), ctx.actor.clone())
                .await?;
            let code = follow(&ctx, &orchestrator, &id).await?;
            orchestrator.shutdown().await?;
            Ok(code)
        }
        Command::Scale {
            service,
            replicas,
            env,
        } => {
            let environment = ctx.environment(env.as_deref())?;
            let service = ctx.service_id(&service)?;
            let orchestrator = ctx.orchestrator().await?;
            let id = orchestrator
                .scale(&service, &environment, replicas, ctx.actor.clone())
                .await?;
            let code = follow(&ctx, &orchestrator, &id).await?;
            orchestrator.shutdown().await?;
            Ok(code)
        }
        Command::Stop { service, env } => {
            let environment = ctx.environment(env.as_deref())?;
            let service = ctx.service_id(&service)?;
            let orchestrator = ctx.orchestrator().await?;
            let started = orchestrator
                .stop(&service, &environment, ctx.actor.clone())
                .await?;
            let code = match started {
                Some(id) => follow(&ctx, &orchestrator, &id).await?,
                None => {
                    ctx.print(
                        format!("{service} runs nothing in {environment}"),
                        json!({ "service": service.to_string(), "stopped": false }),
                    );
                    ExitCode::SUCCESS
                }
            };
            orchestrator.shutdown().await?;
            Ok(code)
        }
        Command::Validate => validate(&ctx).await,
        Command::Preview { action } => preview(&ctx, action).await,
        Command::Backup(args) => crate::backup::backup(&ctx, args).await,
        Command::Restore(args) => crate::backup::restore(&ctx, args).await,
        Command::Drill(args) => crate::backup::drill(&ctx, args).await,
        Command::Pg { action } => crate::pg::run(&ctx, action).await,
        Command::Failover { action } => crate::failover::run(&ctx, action).await,
        Command::Audit {
            action: AuditAction::Verify,
        } => {
            let store = ctx.store().await?;
            let entries = store.audit_log().await?;
            // The largest log verified here before: a log rolled back to an older copy fails.
            let mut witness =
                deploykit_core::audit::Witness::open(ctx.state.join("audit-witness.json"))?;
            let now = deploykit_core::Clock::now(&deploykit_core::SystemClock);
            let verified = witness.check(&entries, None, now)?;
            ctx.print(
                format!(
                    "audit log intact: {} records, head {} (extends every log verified here \
                     before)",
                    verified.records, verified.head
                ),
                json!({ "records": verified.records, "head": verified.head }),
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Flags { action } => crate::flags::run(&ctx, action),
        Command::Notify {
            action: NotifyAction::Test { channel, env },
        } => crate::notify::test(&ctx, env.as_deref(), channel.as_deref()).await,
        Command::Logs(args) => crate::logs::run(&ctx, args).await,
    }
}

/// Serves deploykit's metrics on `addr`, fed by following the journal of the store every
/// command on this state writes; the task to abort at the end, and the address bound.
async fn serve_metrics(
    ctx: &Context,
    addr: std::net::SocketAddr,
) -> Result<(tokio::task::JoinHandle<()>, std::net::SocketAddr)> {
    use deploykit_core::event::JournalFollower;
    use deploykit_telemetry::metrics::{self, Metrics};
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        Error::backend(
            format!("bind the metrics listener to {addr}"),
            e.to_string(),
        )
    })?;
    let bound = listener.local_addr().unwrap_or(addr);
    let store: Arc<dyn deploykit_core::StateStore> = ctx.store().await?;
    let mut follower = JournalFollower::from_now(store).await?;
    let registry = Arc::new(Metrics::new());
    let fed = registry.clone();
    let task = tokio::spawn(async move {
        let follow = async move {
            let mut failing = false;
            loop {
                match follower.poll().await {
                    Ok(events) => {
                        failing = false;
                        for event in &events {
                            fed.observe(event);
                        }
                    }
                    // Said once per outage, not once a second.
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!(error = %e.chain(), "metrics: cannot read the journal");
                    }
                    Err(_) => {}
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        };
        tokio::select! {
            () = follow => {}
            served = metrics::serve(listener, registry) => {
                if let Err(e) = served {
                    tracing::warn!(error = %e, "metrics listener stopped");
                }
            }
        }
    });
    Ok((task, bound))
}

async fn daemon(
    ctx: &Context,
    env: Option<&str>,
    mut options: LocalOptions,
    metrics_listen: Option<std::net::SocketAddr>,
    dashboard_listen: Option<std::net::SocketAddr>,
    socket_group: Option<String>,
) -> Result<ExitCode> {
    let environment = ctx.environment(env)?;
    // With [access], each change through the socket is checked as the user at the other end.
    let access = match (ctx.config()?.access_policy().cloned(), socket_group) {
        (Some(policy), group) => {
            let access = deploykit_local::daemon::SocketAccess::new(policy, environment.clone())?;
            Some(match group {
                Some(group) => access.shared_with_group(&group)?,
                None => access,
            })
        }
        (None, Some(_)) => {
            return Err(Error::invalid(
                "--socket-group",
                "sharing the daemon's socket needs [access] in deploykit.toml: without it, \
                 every member of the group could change and stop anything",
            ));
        }
        (None, None) => None,
    };
    let scheme = if options.proxy.tls.is_some() {
        "https"
    } else {
        "http"
    };
    options.state_dir = ctx.local_state(&environment)?.join(environment.as_str());
    let socket = ctx.socket_for(&environment)?;
    let config = ctx.config()?;
    let services: Vec<_> = config.services().collect();
    if let [only] = services.as_slice() {
        options = options.default_service(only.name.clone());
    }
    let service_names: Vec<String> = services.iter().map(|s| s.name.to_string()).collect();
    let log_settings = config.log_settings(environment.as_str())?;
    options.log = crate::log_agent::policy(&log_settings);
    options = options.environment(environment.as_str());
    let provider = ctx.secrets()?;
    if let Some(secrets) = &provider {
        options = options.secrets(secrets.clone());
    }
    let secret_values =
        crate::log_agent::secret_values(config, environment.as_str(), provider.as_ref()).await;
    let log_dir = options.state_dir.join("logs");
    let logs =
        deploykit_local::LocalLogs::new(log_dir.clone(), options.log.clone(), environment.as_str());
    let state_dir = options.state_dir.clone();
    let metrics = match metrics_listen {
        Some(addr) => Some(serve_metrics(ctx, addr).await?),
        None => None,
    };
    let dashboard = match dashboard_listen {
        Some(addr) => Some(crate::dashboard::bind(ctx, &environment, addr).await?),
        None => None,
    };
    let notify_channels = crate::notify::channels(config)?;
    let local = LocalEnvironment::open(options).await?;
    let agent = crate::log_agent::LogAgent::start(
        &log_settings,
        logs,
        log_dir,
        environment.as_str(),
        &state_dir,
        service_names,
        secret_values,
    )
    .await?;
    ctx.print(
        format!(
            "deploykit daemon: environment {environment}, proxy on {scheme}://{}, socket {}{} (Ctrl-C \
             stops routing; instances keep running for the next daemon)",
            local.proxy_addr(),
            socket.display(),
            metrics
                .as_ref()
                .map(|(_, addr)| format!(", metrics on http://{addr}/metrics"))
                .unwrap_or_default()
                + &dashboard
                    .as_ref()
                    .map(|(_, url)| format!(", dashboard on {url}/ (deploykit dashboard signs in)"))
                    .unwrap_or_default()
        ),
        json!({
            "proxy": local.proxy_addr().to_string(),
            "scheme": scheme,
            "socket": socket,
            "metrics": metrics.as_ref().map(|(_, addr)| format!("http://{addr}/metrics")),
            "dashboard": dashboard.as_ref().map(|(_, url)| url.clone()),
        }),
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Error::backend("handle SIGTERM", e.to_string()))?;
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    // Stops the dashboard and the notifications once the daemon stops serving.
    let (stop_dashboard, stopped_dashboard) = tokio::sync::watch::channel(false);
    let stopped_notifications = stopped_dashboard.clone();
    let daemon = async {
        let served = deploykit_local::daemon::serve(local, &socket, shutdown, access).await;
        let _ = stop_dashboard.send(true);
        served
    };
    let dashboard = async {
        match dashboard {
            Some((listener, _)) => {
                let served =
                    crate::dashboard::serve(ctx, &environment, listener, stopped_dashboard).await;
                if let Err(e) = &served {
                    tracing::warn!(error = %e.chain(), "the dashboard stopped");
                }
                served
            }
            None => Ok(()),
        }
    };
    let notifications = async {
        if notify_channels.is_empty() {
            return;
        }
        let delivered = match ctx.store().await {
            Ok(store) => {
                crate::notify::deliver(store, notify_channels, &state_dir, stopped_notifications)
                    .await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = delivered {
            tracing::warn!(error = %e.chain(), "notifications stopped");
        }
    };
    let (served, _, ()) = tokio::join!(daemon, dashboard, notifications);
    if let Some((task, _)) = metrics {
        task.abort();
    }
    let stopped = agent.stop().await;
    served?;
    stopped?;
    Ok(ExitCode::SUCCESS)
}

async fn approve(ctx: &Context, id: &str, reason: &str) -> Result<ExitCode> {
    let orchestrator = ctx.orchestrator().await?;
    let id = DeploymentId::new(id);
    orchestrator
        .approve(&id, ctx.actor.clone(), reason.to_string())
        .await?;
    let code = follow(ctx, &orchestrator, &id).await?;
    orchestrator.shutdown().await?;
    Ok(code)
}

async fn status(
    ctx: &Context,
    service: Option<String>,
    env: Option<String>,
    id: Option<String>,
) -> Result<ExitCode> {
    let store = ctx.store().await?;
    if let Some(id) = id {
        let s = load_status(store.as_ref(), &DeploymentId::new(id)).await?;
        ctx.print(describe(&s), status_json(&s));
        return Ok(ExitCode::SUCCESS);
    }
    let environment = ctx.environment(env.as_deref())?;
    let services: Vec<ServiceId> = match service {
        Some(s) => vec![known_service(ctx, store.as_ref(), &s, &environment).await?],
        None => ctx.config()?.services().map(|s| s.name.clone()).collect(),
    };
    let client = ctx.client();
    let mut text = String::new();
    let mut out = Vec::new();
    let mut unreachable = None;
    for service in services {
        let latest = store.list_deployments(&service, &environment).await?;
        let last = match latest.first() {
            Some(id) => Some(load_status(store.as_ref(), id).await?),
            None => None,
        };
        let observed = match &unreachable {
            Some(_) => None,
            None => match deploykit_core::Environment::observe(&client, &service).await {
                Ok(o) => Some(o),
                Err(e) if e.is_retryable() => {
                    unreachable = Some(ctx.daemon().await.err().unwrap_or(e));
                    None
                }
                Err(e) => return Err(e),
            },
        };
        text.push_str(&format!("{service} in {environment}\n"));
        match &last {
            Some(s) => text.push_str(&format!("  last deployment: {}\n", describe(s))),
            None => text.push_str("  never deployed\n"),
        }
        if let Some(o) = &observed {
            text.push_str(&format!("  running: {}\n", o.summary()));
            text.push_str(&format!(
                "  traffic: {}\n",
                crate::progress::traffic_summary(o)
            ));
            for r in &o.revisions {
                for i in &r.instances {
                    text.push_str(&format!(
                        "    {}  {}  {}\n",
                        i.name,
                        r.revision.label,
                        instance_text(i)
                    ));
                }
            }
        }
        out.push(json!({
            "service": service.to_string(),
            "environment": environment.to_string(),
            "last_deployment": last.as_ref().map(status_json),
            "observed": observed,
        }));
    }
    if let Some(e) = unreachable {
        // What the journal knows is still worth showing; the exit code says it is not all.
        if ctx.output == Output::Text {
            crate::out::line(text.trim_end());
        }
        return Err(e);
    }
    ctx.print(text.trim_end(), json!(out));
    Ok(ExitCode::SUCCESS)
}

/// `ready, 0 restarts` or `not ready, 3 restarts, crash-looping: exited with code 1 …`.
fn instance_text(i: &deploykit_core::InstanceObservation) -> String {
    use deploykit_core::FailureKind;
    let mut text = format!(
        "{}, {} restart{}",
        if i.ready { "ready" } else { "not ready" },
        i.restarts,
        if i.restarts == 1 { "" } else { "s" }
    );
    if let Some(f) = &i.failure {
        let what = match &f.kind {
            FailureKind::Readiness => "failing readiness".to_string(),
            FailureKind::Liveness => "failing liveness".to_string(),
            FailureKind::Startup => "failing its startup probe".to_string(),
            FailureKind::CrashLoop => "crash-looping".to_string(),
            FailureKind::Custom(name) => format!("failing check {name}"),
            FailureKind::Configuration => "not configurable".to_string(),
            other => other.to_string(),
        };
        text.push_str(&format!(", {what}: {}", f.reason));
    }
    text
}

async fn load_status(store: &dyn StateStore, id: &DeploymentId) -> Result<DeploymentStatus> {
    let entries = store
        .load(id)
        .await?
        .ok_or_else(|| Error::not_found(format!("deployment {id}")))?;
    DeploymentStatus::from_journal(&entries)
}

/// A service named on the command line: one of the configuration's, or one that has a history
/// in this environment (removed from the configuration since).
async fn known_service(
    ctx: &Context,
    store: &dyn StateStore,
    name: &str,
    environment: &EnvironmentName,
) -> Result<ServiceId> {
    match ctx.service_id(name) {
        Ok(id) => Ok(id),
        Err(unknown) => match ServiceId::new(name) {
            Ok(id) if !store.list_deployments(&id, environment).await?.is_empty() => Ok(id),
            _ => Err(unknown),
        },
    }
}

async fn history(ctx: &Context, service: &str, env: Option<&str>) -> Result<ExitCode> {
    let environment = ctx.environment(env)?;
    let store = ctx.store().await?;
    let service = known_service(ctx, store.as_ref(), service, &environment).await?;
    let mut rows = Vec::new();
    for id in store.list_deployments(&service, &environment).await? {
        rows.push(load_status(store.as_ref(), &id).await?);
    }
    let json: Vec<_> = rows
        .iter()
        .map(|s| {
            let mut row = status_json(s);
            row["requested_by"] = json!(s.spec.requested_by.to_string());
            row["kind"] = json!(history_outcome(s));
            row["created_at"] = json!(s.created_at.to_string());
            row
        })
        .collect();
    let mut text = format!("{service} in {environment}, newest first:");
    if rows.is_empty() {
        text.push_str("\n  never deployed");
    }
    for s in &rows {
        text.push_str(&format!(
            "\n  {}  {:<10} revision {}  {}  by {}  {}",
            s.spec.id,
            s.spec.target.label,
            s.spec.target.id,
            history_outcome(s),
            s.spec.requested_by,
            s.created_at
        ));
    }
    ctx.print(text, json!(json));
    Ok(ExitCode::SUCCESS)
}

/// `deploykit validate`: the configuration loads (every error names file:line:column), each
/// service's build pipeline and artifact resolve, and, with `DEPLOYKIT_AGE_KEY_FILE`, the
/// secrets file opens and holds every secret a service asks for. Nothing is deployed or built.
async fn validate(ctx: &Context) -> Result<ExitCode> {
    let config = ctx.config()?;
    let mut checked = Vec::new();
    for service in config.services() {
        config.pipeline(service.name.as_str())?;
        checked.push(service.name.to_string());
    }
    let secrets = match (config.secrets_file(), ctx.secrets()?) {
        (None, _) => "no secrets file".to_string(),
        (Some(file), None) => format!(
            "secrets file {} not opened (set DEPLOYKIT_AGE_KEY_FILE to check it)",
            file.display()
        ),
        (Some(file), Some(provider)) => {
            let mut count = 0;
            for environment in config.environments() {
                for service in config.services() {
                    // The revision a deploy would make: the environment's layers applied.
                    let revision = deploykit_core::Revision::new(
                        service,
                        environment,
                        deploykit_core::Digest::of_bytes(b"validate"),
                        "validate",
                    )?;
                    deploykit_core::secrets::resolve(
                        Some(provider.as_ref()),
                        &revision.config.secrets,
                        "set DEPLOYKIT_AGE_KEY_FILE",
                    )
                    .await
                    .map_err(|e| {
                        e.noting(format_args!(
                            "service {} in environment {}",
                            service.name, environment.name
                        ))
                    })?;
                    count += revision.config.secrets.len();
                }
            }
            format!(
                "secrets file {} opened; {count} secret reference(s) resolved",
                file.display()
            )
        }
    };
    let environments: Vec<String> = config.environments().map(|e| e.name.to_string()).collect();
    ctx.print(
        format!(
            "{} is valid: services {}; environments {}; {secrets}",
            ctx.config_path.display(),
            checked.join(", "),
            environments.join(", ")
        ),
        json!({ "valid": true, "services": checked, "environments": environments, "secrets": secrets }),
    );
    Ok(ExitCode::SUCCESS)
}

fn describe(s: &DeploymentStatus) -> String {
    let mut text = format!(
        "{} {} {} → {}",
        s.spec.id, s.spec.service, s.spec.target.label, s.phase
    );
    if let Some((gate, what)) = &s.awaiting {
        text.push_str(&format!(" (waiting for approval at {gate}: {what})"));
    }
    let now = deploykit_core::Clock::now(&deploykit_core::SystemClock);
    if let Some(until) = s.waits_until().filter(|until| *until > now) {
        let left = Duration::from_secs(until.since(now).as_secs());
        text.push_str(&format!(
            " (waiting {} more, until {until})",
            humantime::format_duration(left)
        ));
    }
    if let Some((_, reason)) = &s.rollback {
        text.push_str(&format!(" (rollback: {reason})"));
    }
    text
}

async fn preview(ctx: &Context, action: PreviewAction) -> Result<ExitCode> {
    match action {
        PreviewAction::Create {
            service,
            branch,
            label,
        } => {
            let (spec, artifact) = crate::build::service_and_artifact(ctx, &service, &[]).await?;
            let orchestrator = ctx.orchestrator().await?;
            let preview = orchestrator
                .preview(
                    PreviewRequest::builder()
                        .service(spec)
                        .branch(branch)
                        .artifact(artifact)
                        .label(label.unwrap_or_else(|| "preview".into()))
                        .requested_by(ctx.actor.clone())
                        .build(),
                )
                .await?;
            let code = follow(ctx, &orchestrator, &preview.deployment).await?;
            let host = format!("{}-{}.localhost", service, preview.environment);
            ctx.print(
                format!("preview {} at http://{host}/", preview.environment),
                json!({ "environment": preview.environment.to_string(), "host": host }),
            );
            orchestrator.shutdown().await?;
            Ok(code)
        }
        PreviewAction::Delete { branch } => {
            let environment = deploykit_core::preview_name(&branch)?;
            let orchestrator = ctx.orchestrator().await?;
            let ids = orchestrator
                .teardown_preview(&environment, ctx.actor.clone())
                .await?;
            let mut code = ExitCode::SUCCESS;
            for id in &ids {
                code = follow(ctx, &orchestrator, id).await?;
            }
            orchestrator.shutdown().await?;
            Ok(code)
        }
        PreviewAction::List => {
            let store = ctx.store().await?;
            let previews: Vec<(ServiceId, EnvironmentName)> = store
                .list_environments()
                .await?
                .into_iter()
                .filter(|(_, e)| e.as_str().starts_with("preview-"))
                .collect();
            let text = previews
                .iter()
                .map(|(s, e)| format!("{e}  {s}  http://{s}-{e}.localhost/"))
                .collect::<Vec<_>>()
                .join("\n");
            let json: Vec<_> = previews
                .iter()
                .map(|(s, e)| json!({ "service": s.to_string(), "environment": e.to_string() }))
                .collect();
            ctx.print(
                if text.is_empty() {
                    "no previews".into()
                } else {
                    text
                },
                json!(json),
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
