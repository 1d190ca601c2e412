//! Names, labels and the validation of everything that ends up in one.

use std::collections::BTreeMap;
use std::net::IpAddr;

use deploykit_core::{Autoscale, Error, Result, Revision, ServiceId};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{
    LABEL_MANAGED_BY, LABEL_NAME, LABEL_REVISION, LABEL_VERSION, MANAGED_BY, RenderOptions,
};

/// The longest service name: `<service>-preview` must still be a DNS label.
const MAX_SERVICE_NAME: usize = 63 - "-preview".len();

/// `<service>-<first 8 hex of the revision id>`.
pub(crate) fn revision_name(service: &ServiceId, revision: &Revision) -> String {
    let id = revision.id.as_str();
    format!("{service}-{}", &id[..id.len().min(8)])
}

/// `<revision name>-secrets`: the revision's Secret.
pub(crate) fn secret_name(service: &ServiceId, revision: &Revision) -> String {
    format!("{}-secrets", revision_name(service, revision))
}

/// Labels of every object of `service`.
pub(crate) fn app_labels(service: &ServiceId) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_NAME.to_string(), service.to_string()),
        (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
    ])
}

/// Labels of `revision`'s objects and pods.
pub(crate) fn revision_labels(
    service: &ServiceId,
    revision: &Revision,
) -> Result<BTreeMap<String, String>> {
    let mut labels = app_labels(service);
    labels.insert(LABEL_REVISION.to_string(), revision.id.to_string());
    labels.insert(LABEL_VERSION.to_string(), label_value(revision)?);
    Ok(labels)
}

/// The selector of `revision`'s pods.
pub(crate) fn revision_selector(
    service: &ServiceId,
    revision: &Revision,
) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_NAME.to_string(), service.to_string()),
        (LABEL_REVISION.to_string(), revision.id.to_string()),
    ])
}

/// The selector of every pod of `service`: its name and deploykit as the manager, so that a
/// pod of another tool labelled `app.kubernetes.io/name=<service>` in the namespace is never
/// selected (every pod deploykit ever rendered carries both labels, so the selectors of the
/// objects that use this one, all of them changeable, could gain the second without a
/// migration).
pub(crate) fn app_selector(service: &ServiceId) -> BTreeMap<String, String> {
    app_labels(service)
}

/// Metadata with a name, the namespace and labels.
pub(crate) fn meta(
    name: impl Into<String>,
    options: &RenderOptions,
    labels: BTreeMap<String, String>,
) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(options.namespace.clone()),
        labels: Some(labels),
        ..ObjectMeta::default()
    }
}

/// The revision's label as a label value: characters other than letters, digits, `-`, `_`
/// and `.` become `-`, at most 63 characters, starting and ending with a letter or digit.
pub(crate) fn label_value(revision: &Revision) -> Result<String> {
    let replaced: String = revision
        .label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    let value = replaced.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    if value.is_empty() {
        return Err(Error::invalid(
            "revision.label",
            format!(
                "label {:?} of revision {} cannot be made a Kubernetes label value: it needs at \
                 least one ASCII letter or digit",
                revision.label, revision.id
            ),
        ));
    }
    Ok(value.to_string())
}

/// Whether `s` is a DNS label (RFC 1123): 1–63 of `a-z0-9-`, alphanumeric at both ends.
pub(crate) fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Whether `s` is a DNS subdomain (RFC 1123): dot-separated labels, at most 253 characters.
pub(crate) fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// Whether `s` is a hostname as Gateway API and Istio take it: a DNS subdomain, optionally
/// prefixed with `*.`.
pub(crate) fn is_hostname(s: &str) -> bool {
    is_dns_subdomain(s.strip_prefix("*.").unwrap_or(s))
}

/// Whether `s` is an HTTP header name (an RFC 7230 token).
pub(crate) fn is_header_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Whether `s` is a CIDR: an IP address, `/`, and a prefix length that fits it.
pub(crate) fn is_cidr(s: &str) -> bool {
    let Some((ip, prefix)) = s.split_once('/') else {
        return false;
    };
    let (Ok(ip), Ok(prefix)) = (ip.parse::<IpAddr>(), prefix.parse::<u8>()) else {
        return false;
    };
    prefix <= if ip.is_ipv4() { 32 } else { 128 }
}

/// Whether `s` is a valid image tag.
pub(crate) fn is_image_tag(s: &str) -> bool {
    s.len() <= 128
        && s.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Checks everything in `options` that `plan` relies on but the router (checked by
/// `routes::check_router`), and the service name's length.
/// The longest `drain` or `shutdown_grace` accepted.
const MAX_TERMINATION: std::time::Duration = std::time::Duration::from_secs(3600);

pub(crate) fn check_options(service: &ServiceId, options: &RenderOptions) -> Result<()> {
    if service.as_str().len() > MAX_SERVICE_NAME {
        return Err(Error::invalid(
            "service.name",
            format!(
                "{service:?} is too long for Kubernetes: {service}-preview must fit in 63 \
                 characters, so at most {MAX_SERVICE_NAME}"
            ),
        ));
    }
    if !is_dns_label(&options.namespace) {
        return Err(Error::invalid(
            "namespace",
            format!(
                "{:?} is not a namespace name: 1-63 lowercase letters, digits and '-'",
                options.namespace
            ),
        ));
    }
    if let Some(class) = &options.priority_class
        && !is_dns_subdomain(class)
    {
        return Err(Error::invalid(
            "priority_class",
            format!("{class:?} is not a PriorityClass name"),
        ));
    }
    if let Some(run_as) = options.run_as {
        if run_as.user < 0 || run_as.group < 0 {
            return Err(Error::invalid(
                "run_as",
                format!(
                    "user {} and group {} must be 0 or more",
                    run_as.user, run_as.group
                ),
            ));
        }
        if run_as.user == 0 && options.restricted {
            return Err(Error::invalid(
                "run_as.user",
                "0 is root, which the restricted Pod Security Standard forbids (runAsNonRoot); \
                 choose another user or set restricted(false)",
            ));
        }
    }
    for (field, value) in [
        ("drain", options.drain),
        ("shutdown_grace", options.shutdown_grace),
    ] {
        if value > MAX_TERMINATION {
            return Err(Error::invalid(
                field,
                format!(
                    "{value:?} is more than {MAX_TERMINATION:?}: a pod would take that long to stop"
                ),
            ));
        }
    }
    if let Some(dir) = &options.secret_files {
        let bad = !dir.starts_with('/')
            || dir == "/"
            || dir.trim_end_matches('/') == "/tmp"
            || dir.split('/').any(|part| part == ".." || part == ".")
            || dir.contains("//")
            || dir.contains(':')
            || dir.chars().any(|c| c.is_control());
        if bad {
            return Err(Error::invalid(
                "secret_files",
                format!(
                    "{dir:?} is not a directory to mount secrets in: an absolute path without \
                     '.', '..', '//' or ':', other than / and /tmp"
                ),
            ));
        }
    }
    let net = &options.network;
    for ns in &net.allow_from_namespaces {
        if !is_dns_label(ns) {
            return Err(Error::invalid(
                "network.allow_from_namespaces",
                format!("{ns:?} is not a namespace name"),
            ));
        }
    }
    for ns in net.gateway_namespaces.iter().flatten() {
        if !is_dns_label(ns) {
            return Err(Error::invalid(
                "network.gateway_namespaces",
                format!("{ns:?} is not a namespace name"),
            ));
        }
    }
    if net.allow_dns && !is_dns_label(&net.dns_namespace) {
        return Err(Error::invalid(
            "network.dns_namespace",
            format!("{:?} is not a namespace name", net.dns_namespace),
        ));
    }
    for (i, peer) in net.allow_egress_to.iter().enumerate() {
        if let Some(ns) = &peer.namespace
            && !is_dns_label(ns)
        {
            return Err(Error::invalid(
                format!("network.allow_egress_to[{i}].namespace"),
                format!("{ns:?} is not a namespace name"),
            ));
        }
        if peer.namespace.is_none() && peer.pod_labels.is_empty() {
            return Err(Error::invalid(
                format!("network.allow_egress_to[{i}]"),
                "names neither a namespace nor pod labels: it would allow every pod of this \
                 namespace; name them",
            ));
        }
        if peer.ports.contains(&0) {
            return Err(Error::invalid(
                format!("network.allow_egress_to[{i}].ports"),
                "port 0 is not a port",
            ));
        }
    }
    for (i, rule) in net.allow_egress.iter().enumerate() {
        if !is_cidr(&rule.cidr) {
            return Err(Error::invalid(
                format!("network.allow_egress[{i}].cidr"),
                format!(
                    "{:?} is not a CIDR such as 10.0.0.0/16 or fd00::/8",
                    rule.cidr
                ),
            ));
        }
        if rule.ports.contains(&0) {
            return Err(Error::invalid(
                format!("network.allow_egress[{i}].ports"),
                "port 0 is not a port",
            ));
        }
    }
    Ok(())
}

/// Checks an image repository: no tag, digest or whitespace.
pub(crate) fn check_repository(service: &ServiceId, repository: &str) -> Result<()> {
    let last = repository.rsplit('/').next().unwrap_or_default();
    if repository.is_empty()
        || repository.contains('@')
        || last.contains(':')
        || repository
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(Error::invalid(
            format!("images.{service}"),
            format!(
                "{repository:?} is not an image repository: give it without a tag or digest, \
                 e.g. registry.example.com/team/{service}"
            ),
        ));
    }
    Ok(())
}

/// Checks autoscaling bounds (those of a desired state; `EnvironmentSpec` checks them too).
pub(crate) fn check_autoscale(a: &Autoscale) -> Result<()> {
    if a.min_replicas == 0 || a.min_replicas > a.max_replicas {
        return Err(Error::invalid(
            "desired.autoscale.min_replicas",
            format!(
                "{} must be at least 1 and at most max_replicas {}",
                a.min_replicas, a.max_replicas
            ),
        ));
    }
    if !(1..=100).contains(&a.target_cpu_percent) {
        return Err(Error::invalid(
            "desired.autoscale.target_cpu_percent",
            format!("{} is outside 1-100", a.target_cpu_percent),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_values() {
        assert!(is_dns_label("web-1"));
        assert!(!is_dns_label("Web"));
        assert!(!is_dns_label("-web"));
        assert!(is_hostname("*.example.com"));
        assert!(is_hostname("shop.example.com"));
        assert!(!is_hostname("shop..example.com"));
        assert!(is_cidr("10.0.0.0/16"));
        assert!(is_cidr("fd00::/8"));
        assert!(!is_cidr("10.0.0.0/33"));
        assert!(!is_cidr("10.0.0.0"));
        assert!(is_header_name("x-canary"));
        assert!(!is_header_name("x canary"));
        assert!(is_image_tag("v1.2.3"));
        assert!(!is_image_tag("-v1"));
        assert!(!is_image_tag("v1/2"));
    }
}
