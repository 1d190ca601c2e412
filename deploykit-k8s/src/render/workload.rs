//! Per-revision objects (ConfigMap, Secret, Deployment) and the service's autoscaler,
//! disruption budget and the namespace's LimitRange and ResourceQuota.

use std::collections::BTreeMap;
use std::time::Duration;

use deploykit_core::secrets::ExposeSecret;
use deploykit_core::{
    Autoscale, Error, Probe, ProbeAction, Resources, Result, Revision, RevisionTarget, ServiceId,
};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec,
    MetricTarget, ResourceMetricSource,
};
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::names::{
    app_labels, app_selector, meta, revision_labels, revision_name, revision_selector,
};
use super::{
    ANNOTATION_AUTOSCALE, ANNOTATION_REVISION_SPEC, LABEL_MANAGED_BY, MANAGED_BY, Quota,
    RenderOptions,
};
use super::{SecretValues, names};

/// The name of the container in every pod.
const CONTAINER: &str = "app";
/// The name of the container port (and of the Services' port).
pub(crate) const PORT_NAME: &str = "http";

/// The objects of one revision.
pub(crate) struct RevisionObjects {
    pub(crate) config_map: core::ConfigMap,
    pub(crate) secret: Option<core::Secret>,
    pub(crate) deployment: Deployment,
}

impl RevisionObjects {
    pub(crate) fn render(
        service: &ServiceId,
        target: &RevisionTarget,
        repository: &str,
        secrets: Option<&SecretValues>,
        options: &RenderOptions,
        autoscale: Option<&Autoscale>,
    ) -> Result<Self> {
        let rev = &*target.revision;
        if rev.service != *service {
            return Err(Error::invalid(
                "desired.revisions",
                format!(
                    "revision {} is a revision of {}, not of {service}",
                    rev.describe(),
                    rev.service
                ),
            ));
        }
        let name = revision_name(service, rev);
        let labels = revision_labels(service, rev)?;

        let env_name = format!("{name}-env");
        let config_map = core::ConfigMap {
            metadata: meta(&env_name, options, labels.clone()),
            data: (!rev.config.variables.is_empty()).then(|| rev.config.variables.clone()),
            immutable: Some(true),
            ..core::ConfigMap::default()
        };

        let secret_name = names::secret_name(service, rev);
        // No `secrets`: the revision's Secret exists already and is kept as it is.
        let secret = if rev.config.secrets.is_empty() || secrets.is_none() {
            None
        } else {
            let values = secrets.and_then(|s| s.get(&rev.id));
            let mut data = BTreeMap::new();
            for variable in rev.config.secrets.keys() {
                let value = values.and_then(|v| v.get(variable)).ok_or_else(|| {
                    Error::invalid(
                        format!("secrets.{}.{variable}", rev.id),
                        format!(
                            "no value resolved for secret variable {variable} of revision {}",
                            rev.describe()
                        ),
                    )
                })?;
                data.insert(
                    variable.clone(),
                    ByteString(value.expose_secret().as_bytes().to_vec()),
                );
            }
            Some(core::Secret {
                metadata: meta(&secret_name, options, labels.clone()),
                data: Some(data),
                immutable: Some(true),
                type_: Some("Opaque".into()),
                ..core::Secret::default()
            })
        };

        let mut env = Vec::new();
        if let Some(port) = rev.config.port {
            env.push(core::EnvVar {
                name: "PORT".into(),
                value: Some(port.to_string()),
                ..core::EnvVar::default()
            });
        }
        // Secrets as files: one `secret` volume of the revision's Secret instead of variables.
        let secret_files = options
            .secret_files
            .as_ref()
            .filter(|_| !rev.config.secrets.is_empty());
        for variable in rev.config.secrets.keys().filter(|_| secret_files.is_none()) {
            env.push(core::EnvVar {
                name: variable.clone(),
                value_from: Some(core::EnvVarSource {
                    secret_key_ref: Some(core::SecretKeySelector {
                        name: secret_name.clone(),
                        key: variable.clone(),
                        optional: None,
                    }),
                    ..core::EnvVarSource::default()
                }),
                ..core::EnvVar::default()
            });
        }

        let restricted = options.restricted;
        let probes = Probes::render(service, rev, restricted)?;
        let container = core::Container {
            name: CONTAINER.into(),
            image: Some(image(service, rev, repository)?),
            command: (!rev.config.command.is_empty()).then(|| rev.config.command.clone()),
            ports: rev.config.port.map(|port| {
                vec![core::ContainerPort {
                    name: Some(PORT_NAME.into()),
                    container_port: i32::from(port),
                    protocol: Some("TCP".into()),
                    ..core::ContainerPort::default()
                }]
            }),
            env_from: Some(vec![core::EnvFromSource {
                config_map_ref: Some(core::ConfigMapEnvSource {
                    name: env_name,
                    optional: None,
                }),
                ..core::EnvFromSource::default()
            }]),
            env: (!env.is_empty()).then_some(env),
            resources: Some(resources(&rev.config.resources, options)),
            readiness_probe: probes.readiness,
            liveness_probe: probes.liveness,
            startup_probe: probes.startup,
            security_context: restricted.then(|| core::SecurityContext {
                allow_privilege_escalation: Some(false),
                read_only_root_filesystem: Some(true),
                run_as_non_root: Some(true),
                capabilities: Some(core::Capabilities {
                    drop: Some(vec!["ALL".into()]),
                    add: None,
                }),
                ..core::SecurityContext::default()
            }),
            lifecycle: (!options.drain.is_zero()).then(|| core::Lifecycle {
                pre_stop: Some(core::LifecycleHandler {
                    sleep: Some(core::SleepAction {
                        seconds: whole_seconds(options.drain),
                    }),
                    ..core::LifecycleHandler::default()
                }),
                ..core::Lifecycle::default()
            }),
            volume_mounts: volume_mounts(restricted, secret_files),
            ..core::Container::default()
        };
        let pod = core::PodSpec {
            containers: vec![container],
            automount_service_account_token: Some(options.service_account_token),
            // With a mesh policy, the service's own ServiceAccount: its identity in the mesh.
            service_account_name: options.mesh_policy.as_ref().map(|_| service.to_string()),
            enable_service_links: Some(false),
            priority_class_name: options.priority_class.clone(),
            security_context: pod_security(options, secret_files.is_some()),
            termination_grace_period_seconds: Some(
                whole_seconds(options.drain) + whole_seconds(options.shutdown_grace),
            ),
            topology_spread_constraints: options.spread.then(|| {
                ["topology.kubernetes.io/zone", "kubernetes.io/hostname"]
                    .into_iter()
                    .map(|key| core::TopologySpreadConstraint {
                        max_skew: 1,
                        topology_key: key.into(),
                        when_unsatisfiable: "ScheduleAnyway".into(),
                        label_selector: Some(LabelSelector {
                            match_labels: Some(revision_selector(service, rev)),
                            match_expressions: None,
                        }),
                        ..core::TopologySpreadConstraint::default()
                    })
                    .collect()
            }),
            volumes: volumes(restricted, secret_files.map(|_| secret_name.as_str())),
            ..core::PodSpec::default()
        };

        let spec_json = serde_json::to_string(rev)
            .map_err(|e| Error::invalid("revision", format!("cannot be written as JSON: {e}")))?;
        let mut metadata = meta(&name, options, labels.clone());
        let mut annotations = BTreeMap::from([(ANNOTATION_REVISION_SPEC.to_string(), spec_json)]);
        if let Some(a) = autoscale {
            let bounds = serde_json::to_string(a).map_err(|e| {
                Error::invalid("autoscale", format!("cannot be written as JSON: {e}"))
            })?;
            annotations.insert(ANNOTATION_AUTOSCALE.to_string(), bounds);
        }
        metadata.annotations = Some(annotations);
        let deployment = Deployment {
            metadata,
            spec: Some(DeploymentSpec {
                // Autoscaled: the environment sets replicas through field manager
                // `deploykit-scale`, so deploykit's apply never owns (or resets) them.
                replicas: if autoscale.is_some() {
                    None
                } else {
                    Some(to_i32(target.replicas, "desired.revisions.replicas")?)
                },
                selector: LabelSelector {
                    match_labels: Some(revision_selector(service, rev)),
                    match_expressions: None,
                },
                template: core::PodTemplateSpec {
                    metadata: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                        labels: Some(labels),
                        ..Default::default()
                    }),
                    spec: Some(pod),
                },
                ..DeploymentSpec::default()
            }),
            status: None,
        };
        Ok(RevisionObjects {
            config_map,
            secret,
            deployment,
        })
    }
}

/// The name of the volume holding a revision's secrets as files.
const SECRETS_VOLUME: &str = "secrets";
/// `defaultMode` of the secret files: read by their owner only (the kubelet adds group read
/// for the pod's `fsGroup`).
const SECRET_FILE_MODE: i32 = 0o400;
/// The pod's `fsGroup` with secret files and no [`RenderOptions::run_as`]: the group the
/// files are readable by, which the app's processes get as a supplementary group.
pub(crate) const SECRET_FILES_GROUP: i64 = 65532;

/// The container's mounts: `/tmp` (restricted) and the secret files' directory.
fn volume_mounts(
    restricted: bool,
    secret_files: Option<&String>,
) -> Option<Vec<core::VolumeMount>> {
    let mut mounts = Vec::new();
    if restricted {
        mounts.push(core::VolumeMount {
            name: "tmp".into(),
            mount_path: "/tmp".into(),
            ..core::VolumeMount::default()
        });
    }
    if let Some(dir) = secret_files {
        mounts.push(core::VolumeMount {
            name: SECRETS_VOLUME.into(),
            mount_path: dir.clone(),
            read_only: Some(true),
            ..core::VolumeMount::default()
        });
    }
    (!mounts.is_empty()).then_some(mounts)
}

/// The pod's volumes: `/tmp`'s `emptyDir` (restricted) and the revision's Secret as files.
fn volumes(restricted: bool, secret: Option<&str>) -> Option<Vec<core::Volume>> {
    let mut volumes = Vec::new();
    if restricted {
        volumes.push(core::Volume {
            name: "tmp".into(),
            empty_dir: Some(core::EmptyDirVolumeSource::default()),
            ..core::Volume::default()
        });
    }
    if let Some(secret) = secret {
        volumes.push(core::Volume {
            name: SECRETS_VOLUME.into(),
            secret: Some(core::SecretVolumeSource {
                secret_name: Some(secret.to_string()),
                default_mode: Some(SECRET_FILE_MODE),
                ..core::SecretVolumeSource::default()
            }),
            ..core::Volume::default()
        });
    }
    (!volumes.is_empty()).then_some(volumes)
}

/// `<repository>@sha256:…` for a sha256 artifact, else `<repository>:<label>`.
fn image(service: &ServiceId, rev: &Revision, repository: &str) -> Result<String> {
    let artifact = rev.artifact.as_str();
    if artifact.starts_with("sha256:") {
        return Ok(format!("{repository}@{artifact}"));
    }
    if !names::is_image_tag(&rev.label) {
        return Err(Error::invalid(
            "revision.label",
            format!(
                "label {:?} of revision {} of {service} is not a valid image tag, and its \
                 artifact {} is not a sha256 digest to pin the image by",
                rev.label,
                rev.id,
                rev.artifact.short()
            ),
        ));
    }
    Ok(format!("{repository}:{}", rev.label))
}

/// The defaults of [`RenderOptions::default_resources`]: cpu 100m/500m, memory 128/256 MiB.
pub(crate) fn builtin_resources() -> Resources {
    Resources::builder()
        .cpu_request_millis(100)
        .cpu_limit_millis(500)
        .memory_request_mib(128)
        .memory_limit_mib(256)
        .build()
}

fn to_i32(value: u32, field: &str) -> Result<i32> {
    i32::try_from(value)
        .map_err(|_| Error::invalid(field, format!("{value} is too large for Kubernetes")))
}

/// The effective requests and limits: the revision's, else the options' defaults, else the
/// built-in defaults; a default limit is raised to an explicit request (and a default request
/// lowered to an explicit limit).
fn effective(resources: &Resources, options: &RenderOptions) -> [u32; 4] {
    let d = builtin_resources().overlay(&options.default_resources);
    let pick = |explicit: Option<u32>, default: Option<u32>| (explicit, default.unwrap_or(1));
    let (cpu_req, cpu_req_d) = pick(resources.cpu_request_millis, d.cpu_request_millis);
    let (cpu_lim, cpu_lim_d) = pick(resources.cpu_limit_millis, d.cpu_limit_millis);
    let (mem_req, mem_req_d) = pick(resources.memory_request_mib, d.memory_request_mib);
    let (mem_lim, mem_lim_d) = pick(resources.memory_limit_mib, d.memory_limit_mib);
    let pair = |req: Option<u32>, req_d: u32, lim: Option<u32>, lim_d: u32| match (req, lim) {
        (Some(r), Some(l)) => (r, l),
        (Some(r), None) => (r, lim_d.max(r)),
        (None, Some(l)) => (req_d.min(l), l),
        (None, None) => (req_d.min(lim_d), lim_d),
    };
    let (cr, cl) = pair(cpu_req, cpu_req_d, cpu_lim, cpu_lim_d);
    let (mr, ml) = pair(mem_req, mem_req_d, mem_lim, mem_lim_d);
    [cr, cl, mr, ml]
}

fn cpu(millis: u32) -> Quantity {
    Quantity(format!("{millis}m"))
}

fn memory(mib: u32) -> Quantity {
    Quantity(format!("{mib}Mi"))
}

fn resources(resources: &Resources, options: &RenderOptions) -> core::ResourceRequirements {
    let [cr, cl, mr, ml] = effective(resources, options);
    core::ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), cpu(cr)),
            ("memory".to_string(), memory(mr)),
        ])),
        limits: Some(BTreeMap::from([
            ("cpu".to_string(), cpu(cl)),
            ("memory".to_string(), memory(ml)),
        ])),
        claims: None,
    }
}

/// The three probes of a container.
struct Probes {
    readiness: Option<core::Probe>,
    liveness: Option<core::Probe>,
    startup: Option<core::Probe>,
}

/// Timing of a derived probe: period, failure threshold.
const DERIVED: [(&str, u64, u32); 3] = [
    ("readiness", 5, 3),
    ("liveness", 10, 3),
    ("startup", 2, 150),
];

impl Probes {
    fn render(service: &ServiceId, rev: &Revision, restricted: bool) -> Result<Self> {
        let health = &rev.config.health;
        if let Some((name, probe)) = health.custom.iter().next() {
            let reason = match &probe.action {
                ProbeAction::Custom { name } => custom_probe(name),
                _ => format!(
                    "named check {name} cannot run on Kubernetes, which has one readiness probe \
                     per container: make it the readiness probe"
                ),
            };
            return Err(Error::invalid(format!("health.custom.{name}"), reason));
        }
        let port = rev.config.port;
        let mut out = [None, None, None];
        let given = [&health.readiness, &health.liveness, &health.startup];
        for (slot, ((kind, period, failures), probe)) in
            out.iter_mut().zip(DERIVED.into_iter().zip(given))
        {
            *slot = match probe {
                Some(p) => Some(convert(kind, p, port)?),
                None if port.is_some() => Some(core::Probe {
                    tcp_socket: Some(core::TCPSocketAction {
                        port: IntOrString::String(PORT_NAME.into()),
                        host: None,
                    }),
                    period_seconds: Some(period as i32),
                    timeout_seconds: Some(1),
                    success_threshold: Some(1),
                    failure_threshold: Some(failures as i32),
                    ..core::Probe::default()
                }),
                None if restricted => {
                    return Err(Error::invalid(
                        format!("health.{kind}"),
                        format!(
                            "service {service} has no port, so its missing {kind} probe cannot \
                             be derived as a TCP probe (revision {}): set a port, give it \
                             readiness, liveness and startup probes, or turn \
                             RenderOptions::restricted off",
                            rev.describe()
                        ),
                    ));
                }
                None => None,
            };
        }
        let [readiness, liveness, startup] = out;
        Ok(Probes {
            readiness,
            liveness,
            startup,
        })
    }
}

fn custom_probe(name: &str) -> String {
    format!("custom probe {name} cannot run on Kubernetes: use http, tcp or exec")
}

/// Whole seconds, rounded up.
fn seconds(d: Duration) -> i32 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    i32::try_from(s).unwrap_or(i32::MAX)
}

fn convert(kind: &str, probe: &Probe, service_port: Option<u16>) -> Result<core::Probe> {
    let port = |p: Option<u16>| -> Result<IntOrString> {
        match (p, service_port) {
            (None, Some(_)) => Ok(IntOrString::String(PORT_NAME.into())),
            (Some(p), Some(sp)) if p == sp => Ok(IntOrString::String(PORT_NAME.into())),
            (Some(p), _) => Ok(IntOrString::Int(i32::from(p))),
            (None, None) => Err(Error::invalid(
                format!("health.{kind}.action.port"),
                format!("the {kind} probe has no port and the service has none to default to"),
            )),
        }
    };
    let mut out = core::Probe {
        initial_delay_seconds: Some(seconds(probe.initial_delay)).filter(|s| *s > 0),
        period_seconds: Some(seconds(probe.period).max(1)),
        timeout_seconds: Some(seconds(probe.timeout).max(1)),
        success_threshold: Some(i32::try_from(probe.success_threshold).unwrap_or(i32::MAX)),
        failure_threshold: Some(i32::try_from(probe.failure_threshold).unwrap_or(i32::MAX)),
        ..core::Probe::default()
    };
    match &probe.action {
        ProbeAction::Http {
            path,
            port: p,
            headers,
        } => {
            out.http_get = Some(core::HTTPGetAction {
                path: Some(path.clone()),
                port: port(*p)?,
                http_headers: (!headers.is_empty()).then(|| {
                    headers
                        .iter()
                        .map(|(name, value)| core::HTTPHeader {
                            name: name.clone(),
                            value: value.clone(),
                        })
                        .collect()
                }),
                ..core::HTTPGetAction::default()
            });
        }
        ProbeAction::Tcp { port: p } => {
            out.tcp_socket = Some(core::TCPSocketAction {
                port: port(*p)?,
                host: None,
            });
        }
        ProbeAction::Command { argv } => {
            out.exec = Some(core::ExecAction {
                command: Some(argv.clone()),
            });
        }
        ProbeAction::Custom { name } => {
            return Err(Error::invalid(format!("health.{kind}"), custom_probe(name)));
        }
        other => {
            return Err(Error::invalid(
                format!("health.{kind}"),
                format!("probe {other} cannot run on Kubernetes: use http, tcp or exec"),
            ));
        }
    }
    Ok(out)
}

/// The HorizontalPodAutoscaler `<service>` scaling `revision`'s Deployment on CPU.
pub(crate) fn autoscaler(
    service: &ServiceId,
    revision: &Revision,
    autoscale: &Autoscale,
    options: &RenderOptions,
) -> Result<HorizontalPodAutoscaler> {
    Ok(HorizontalPodAutoscaler {
        metadata: meta(service.as_str(), options, app_labels(service)),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name: revision_name(service, revision),
            },
            min_replicas: Some(to_i32(autoscale.min_replicas, "autoscale.min_replicas")?),
            max_replicas: to_i32(autoscale.max_replicas, "autoscale.max_replicas")?,
            metrics: Some(vec![MetricSpec {
                type_: "Resource".into(),
                resource: Some(ResourceMetricSource {
                    name: "cpu".into(),
                    target: MetricTarget {
                        type_: "Utilization".into(),
                        average_utilization: Some(to_i32(
                            autoscale.target_cpu_percent,
                            "autoscale.target_cpu_percent",
                        )?),
                        ..MetricTarget::default()
                    },
                }),
                ..MetricSpec::default()
            }]),
            behavior: None,
        }),
        status: None,
    })
}

/// The PodDisruptionBudget `<service>` over every pod of the service.
pub(crate) fn disruption_budget(
    service: &ServiceId,
    options: &RenderOptions,
) -> Result<PodDisruptionBudget> {
    Ok(PodDisruptionBudget {
        metadata: meta(service.as_str(), options, app_labels(service)),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(to_i32(
                options.pdb_max_unavailable,
                "pdb_max_unavailable",
            )?)),
            selector: Some(LabelSelector {
                match_labels: Some(app_selector(service)),
                match_expressions: None,
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    })
}

fn namespace_labels() -> BTreeMap<String, String> {
    BTreeMap::from([(LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string())])
}

/// The LimitRange `deploykit-defaults`: default requests and limits for containers.
pub(crate) fn limit_range(options: &RenderOptions) -> core::LimitRange {
    let [cr, cl, mr, ml] = effective(&Resources::default(), options);
    core::LimitRange {
        metadata: meta("deploykit-defaults", options, namespace_labels()),
        spec: Some(core::LimitRangeSpec {
            limits: vec![core::LimitRangeItem {
                type_: "Container".into(),
                default: Some(BTreeMap::from([
                    ("cpu".to_string(), cpu(cl)),
                    ("memory".to_string(), memory(ml)),
                ])),
                default_request: Some(BTreeMap::from([
                    ("cpu".to_string(), cpu(cr)),
                    ("memory".to_string(), memory(mr)),
                ])),
                ..core::LimitRangeItem::default()
            }],
        }),
    }
}

/// The ResourceQuota `deploykit-quota`: caps on the namespace's total limits and pods.
pub(crate) fn resource_quota(quota: &Quota, options: &RenderOptions) -> core::ResourceQuota {
    core::ResourceQuota {
        metadata: meta("deploykit-quota", options, namespace_labels()),
        spec: Some(core::ResourceQuotaSpec {
            hard: Some(BTreeMap::from([
                ("limits.cpu".to_string(), cpu(quota.cpu_millis)),
                ("limits.memory".to_string(), memory(quota.memory_mib)),
                ("pods".to_string(), Quantity(quota.pods.to_string())),
            ])),
            ..core::ResourceQuotaSpec::default()
        }),
        status: None,
    }
}

/// Whole seconds of `d`, rounded up (a drain of 1.5 s sleeps 2 s).
fn whole_seconds(d: Duration) -> i64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    i64::try_from(secs).unwrap_or(i64::MAX)
}

/// The pod's security context: the restricted standard's, the user and group it runs as, and
/// with secret files an `fsGroup` that can read them.
fn pod_security(options: &RenderOptions, secret_files: bool) -> Option<core::PodSecurityContext> {
    let mut context = options.restricted.then(|| core::PodSecurityContext {
        run_as_non_root: Some(true),
        seccomp_profile: Some(core::SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        }),
        ..core::PodSecurityContext::default()
    });
    if let Some(run_as) = options.run_as {
        let c = context.get_or_insert_with(core::PodSecurityContext::default);
        c.run_as_user = Some(run_as.user);
        c.run_as_group = Some(run_as.group);
        c.fs_group = Some(run_as.group);
    }
    if secret_files {
        let c = context.get_or_insert_with(core::PodSecurityContext::default);
        c.fs_group.get_or_insert(SECRET_FILES_GROUP);
    }
    context
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_round_up() {
        assert_eq!(seconds(Duration::from_millis(1500)), 2);
        assert_eq!(seconds(Duration::from_secs(3)), 3);
        assert_eq!(seconds(Duration::from_millis(1)), 1);
        assert_eq!(seconds(Duration::ZERO), 0);
    }

    #[test]
    fn default_limits_follow_explicit_requests() {
        let options = RenderOptions::new("ns");
        let r = Resources::builder().cpu_request_millis(800).build();
        assert_eq!(effective(&r, &options), [800, 800, 128, 256]);
        let r = Resources::builder().memory_limit_mib(64).build();
        assert_eq!(effective(&r, &options), [100, 500, 64, 64]);
        assert_eq!(
            effective(&Resources::default(), &options),
            [100, 500, 128, 256]
        );
    }
}
