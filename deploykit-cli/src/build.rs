//! `deploykit build`: a service's build pipeline with the build cache, its image pushed to the
//! service's `image` repository, and a record of what was built; `deploykit deploy` builds
//! through the same function (without pushing).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use serde_json::json;

use deploykit_build::image_stage::image_descriptor;
use deploykit_build::{Build, BuildCache};
use deploykit_config::BuildCacheLocation;
use deploykit_core::backup::BackupTarget;
use deploykit_core::build::ArtifactKind;
use deploykit_core::{BuildContext, Digest, Error, Result, ServiceSpec};
use deploykit_image::{Reference, Registry};

use crate::context::Context;

/// The build cache's target: `[build] cache`, else the state directory's `build-cache/`.
async fn cache_target(ctx: &Context) -> Result<Arc<dyn BackupTarget>> {
    let dir = match ctx.config()?.build_cache() {
        Some(BuildCacheLocation::S3(s3)) => {
            let target = deploykit_aws::S3Target::builder(s3.bucket.clone())
                .prefix(s3.prefix.as_str())
                .force_path_style(crate::s3_env::path_style())
                .build()
                .await
                .map_err(|e| e.noting(format_args!("the build cache {s3}")))?;
            return Ok(Arc::new(target));
        }
        Some(BuildCacheLocation::Directory(dir)) => ctx.config_dir.join(dir),
        None => ctx.state_dir()?.join("build-cache"),
        Some(other) => {
            return Err(Error::invalid(
                "build.cache",
                format!("{other:?} is not supported by this deploykit"),
            ));
        }
    };
    Ok(Arc::new(deploykit_backup::LocalTarget::new(dir)?))
}

/// Builds `service` in the configuration's directory, with the cache.
pub(crate) async fn run(ctx: &Context, service: &str) -> Result<Build> {
    let pipeline = ctx.config()?.pipeline(service)?;
    if pipeline.is_empty() {
        return Ok(Build::default());
    }
    let cache = BuildCache::new(cache_target(ctx).await?, "");
    pipeline
        .with_cache(cache, service)
        .run(&BuildContext::new(&ctx.config_dir))
        .await
}

/// The service's spec with `--set` overrides, and its artifact digest: the build
/// pipeline's output if it has stages, else the content of the program it runs.
pub(crate) async fn service_and_artifact(
    ctx: &Context,
    name: &str,
    set: &[String],
) -> Result<(ServiceSpec, Digest)> {
    let mut spec = ctx.service(name)?.clone();
    for kv in set {
        let Some((k, v)) = kv.split_once('=') else {
            return Err(Error::invalid("--set", format!("{kv:?} is not KEY=VALUE")));
        };
        spec.variables.insert(k.to_string(), v.to_string());
    }
    let build = run(ctx, name).await?;
    if let Some(a) = build.deployable() {
        return Ok((spec, a.digest.clone()));
    }
    let program = spec.command.first().ok_or_else(|| {
        Error::invalid(
            format!("services.{name}.command"),
            "the local environment needs a command to run",
        )
    })?;
    let path = if program.contains('/') {
        ctx.config_dir.join(program)
    } else {
        PathBuf::from(program)
    };
    let digest = match std::fs::read(&path) {
        Ok(bytes) => Digest::of_bytes(&bytes),
        Err(_) => Digest::of_bytes(program.as_bytes()),
    };
    Ok((spec, digest))
}

/// Now, as RFC 3339 (UTC, milliseconds).
fn now_rfc3339() -> String {
    deploykit_core::Clock::now(&deploykit_core::SystemClock).to_string()
}

/// `deploykit build SERVICE [--explain] [--no-push] [--tag T]`.
pub(crate) async fn command(
    ctx: &Context,
    service: &str,
    explain: bool,
    no_push: bool,
    tag: Option<String>,
) -> Result<ExitCode> {
    ctx.service(service)?;
    let started = now_rfc3339();
    let build = run(ctx, service).await?;
    if build.stages.is_empty() {
        return Err(Error::invalid(
            format!("services.{service}"),
            "has no [[services.<name>.build]] stages and no [services.<name>.package] image to build",
        ));
    }
    let mut text = String::new();
    for stage in &build.stages {
        let verb = stage.outcome.verb();
        text.push_str(&format!(
            "{:<10} {verb:<8} {:>8.2?}",
            stage.name, stage.elapsed
        ));
        if explain {
            text.push_str(&format!("  {}", stage.outcome.reason()));
        }
        text.push('\n');
    }
    for a in &build.artifacts {
        text.push_str(&format!(
            "{:<7} {:<24} {}\n",
            a.kind.as_str(),
            a.name,
            a.digest
        ));
    }
    let referrers = match ctx.config()?.signing_key() {
        Some(key) => {
            let signer = deploykit_build::attest::Signer::from_pem_file(&ctx.config_dir.join(key))?;
            let signed = deploykit_build::attest::sign_build(
                service,
                &build,
                &signer,
                &started,
                &now_rfc3339(),
            )?;
            if !signed.is_empty() {
                text.push_str(&format!(
                    "signed  provenance and SBOM with key {}\n",
                    deploykit_build::attest::key_id(&signer.public())
                ));
            }
            signed
        }
        None => Vec::new(),
    };
    let image = build
        .artifacts
        .iter()
        .rev()
        .find(|a| a.kind == ArtifactKind::Image);
    let mut pushed = None;
    if let Some(image) = image {
        match (ctx.config()?.image(service)?, no_push) {
            (Some(repository), false) => {
                let mut target: Reference = repository.parse()?;
                target = match &tag {
                    Some(tag) => format!("{}:{tag}", target.name()).parse()?,
                    None => target.with_digest(image.digest.as_str())?,
                };
                let (layout, descriptor) = image_descriptor(image)?;
                let registry = Registry::from_env();
                // The base's layers are mounted from its repository when it is on the same
                // registry, not uploaded again.
                let mount_from: Vec<String> = deploykit_build::image_stage::base_of(&build)
                    .filter(|base| base.registry() == target.registry())
                    .map(|base| base.repository().to_string())
                    .into_iter()
                    .collect();
                let report = registry
                    .push(&layout, &descriptor, &target, &mount_from)
                    .await?;
                for (layout, referrer) in &referrers {
                    registry.push_referrer(layout, referrer, &target).await?;
                }
                let reference = target.with_digest(&report.digest)?;
                text.push_str(&format!(
                    "pushed  {reference} ({} blobs uploaded, {} bytes; {} already there, {} mounted)\n",
                    report.uploaded, report.uploaded_bytes, report.present, report.mounted
                ));
                pushed = Some(json!({
                    "reference": reference.to_string(),
                    "uploaded": report.uploaded,
                    "uploaded_bytes": report.uploaded_bytes,
                    "present": report.present,
                    "mounted": report.mounted,
                }));
            }
            (Some(_), true) => text.push_str("not pushed (--no-push)\n"),
            (None, _) => text.push_str(&format!(
                "not pushed: services.{service} names no `image` repository to push to\n"
            )),
        }
    }
    let deployable = build.deployable().map(|a| a.digest.to_string());
    let record = json!({
        "service": service,
        "artifact": deployable,
        "image": pushed.as_ref().map(|p| p["reference"].clone()),
        "push": pushed,
        "attestations": referrers.iter().map(|(_, d)| d.digest.clone()).collect::<Vec<_>>(),
        "stages": build.stages.iter().map(|s| json!({
            "name": s.name,
            "kind": s.kind,
            "outcome": s.outcome.verb(),
            "why": s.outcome.reason(),
            "elapsed_ms": s.elapsed.as_millis() as u64,
        })).collect::<Vec<_>>(),
        "artifacts": build.artifacts.iter().map(|a| json!({
            "name": a.name,
            "kind": a.kind,
            "digest": a.digest.to_string(),
            "size": a.size,
        })).collect::<Vec<_>>(),
    });
    let builds: PathBuf = ctx.state_dir()?.join("builds");
    std::fs::create_dir_all(&builds)
        .and_then(|()| std::fs::write(builds.join(format!("{service}.json")), record.to_string()))
        .map_err(|e| Error::backend("record the build", format!("{}: {e}", builds.display())))?;
    ctx.print(text.trim_end(), record);
    Ok(ExitCode::SUCCESS)
}

/// `deploykit render SERVICE --namespace NS`: the Kubernetes objects that run the service's
/// current build (built now, with the cache, not pushed) at full traffic, its image pinned by
/// digest in the service's `image` repository.
pub(crate) async fn render(
    ctx: &Context,
    service: &str,
    env: Option<&str>,
    namespace: &str,
    label: &str,
) -> Result<ExitCode> {
    let environment = ctx.environment(env)?;
    let config = ctx.config()?;
    let repository = config.image(service)?.ok_or_else(|| {
        Error::invalid(
            format!("services.{service}.image"),
            "names no image repository: Kubernetes pulls the image from there",
        )
    })?;
    let repository = repository.to_string();
    let env_spec = config.environment(environment.as_str())?.clone();
    let (spec, artifact) = service_and_artifact(ctx, service, &[]).await?;
    let revision = deploykit_core::Revision::new(&spec, &env_spec, artifact, label)?;
    let desired = deploykit_core::DesiredState::new(
        vec![deploykit_core::RevisionTarget::new(
            revision,
            env_spec.replicas,
        )],
        deploykit_core::Traffic::ByReadyInstances,
    );
    let options = deploykit_k8s::render::RenderOptions::new(namespace).image(service, repository);
    let plan = deploykit_k8s::render::plan(
        &spec.name,
        &desired,
        &std::collections::BTreeMap::new(),
        &options,
    )?;
    let namespace_plan = deploykit_k8s::render::Plan {
        objects: deploykit_k8s::render::namespace_plan(&options),
    };
    let yaml = format!(
        "{}---\n{}",
        namespace_plan.to_applicable_yaml(),
        plan.to_applicable_yaml()
    );
    ctx.print(yaml.trim_end(), json!({ "yaml": yaml }));
    Ok(ExitCode::SUCCESS)
}
