//! What a Gateway says of an `HTTPRoute` (`status.parents`), and an Ingress controller of an
//! `Ingress` (`status.loadBalancer`), read before traffic counts as served: by
//! [`crate::KubeEnvironment`]'s observe and by the failover handover.

use deploykit_core::ServiceId;
use kube::api::DynamicObject;
use serde_json::Value;

/// Why the service's Ingress serves nothing, if it does not: it is missing, or no controller
/// has admitted it yet (no address in `status.loadBalancer.ingress`, which a controller
/// writes once it serves the Ingress). An Ingress's status has no observed generation, so an
/// admitted Ingress counts as serving its current rules.
pub(crate) fn ingress_problem(
    namespace: &str,
    service: &ServiceId,
    ingress: Option<&DynamicObject>,
) -> Option<String> {
    let Some(ingress) = ingress else {
        return Some(format!(
            "Ingress {namespace}/{service} does not exist (deleted behind deploykit's back?); \
             the next apply creates it again"
        ));
    };
    let addresses = ingress
        .data
        .pointer("/status/loadBalancer/ingress")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    if addresses > 0 {
        return None;
    }
    let class = ingress
        .data
        .pointer("/spec/ingressClassName")
        .and_then(Value::as_str)
        .map_or_else(
            || "the default IngressClass".to_string(),
            |c| format!("IngressClass {c}"),
        );
    Some(format!(
        "Ingress {namespace}/{service} has no address in status.loadBalancer.ingress: no \
         controller of {class} has admitted it yet (is one running, and does it publish its \
         address?)"
    ))
}

/// Why the route's current generation serves nothing, if a parent says so: a parent that
/// reports `Accepted` or `ResolvedRefs` false for it (the listener does not allow the route, a
/// backend reference is not permitted or does not exist, …), named with its reason and
/// message. Conditions of an older generation are not believed either way.
pub(crate) fn problem(route: &DynamicObject) -> Option<String> {
    let generation = route.metadata.generation;
    let name = route.metadata.name.as_deref().unwrap_or_default();
    let parents = route.data.pointer("/status/parents")?.as_array()?;
    parents.iter().find_map(|parent| {
        let gateway = parent
            .pointer("/parentRef/name")
            .and_then(Value::as_str)
            .unwrap_or("?");
        parent
            .get("conditions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|c| c.get("observedGeneration").and_then(Value::as_i64) == generation)
            .find(|c| {
                matches!(
                    c.get("type").and_then(Value::as_str),
                    Some("Accepted" | "ResolvedRefs")
                ) && c.get("status").and_then(Value::as_str) == Some("False")
            })
            .map(|c| {
                let field = |f: &str| c.get(f).and_then(Value::as_str).unwrap_or_default();
                format!(
                    "Gateway {gateway} reports {} False for HTTPRoute {name}: {} ({})",
                    field("type"),
                    field("reason"),
                    field("message")
                )
            })
    })
}

/// The parents (Gateways) that accepted the route's current generation with every reference
/// resolved; why not, naming the parent, the condition and its reason, when one has not.
pub(crate) fn accepted_parents(route: &DynamicObject) -> std::result::Result<Vec<String>, String> {
    let generation = route.metadata.generation;
    let name = route.metadata.name.as_deref().unwrap_or_default();
    let parents = route
        .data
        .pointer("/status/parents")
        .and_then(Value::as_array)
        .filter(|p| !p.is_empty())
        .ok_or_else(|| {
            format!(
                "HTTPRoute {name} has no status from a Gateway yet (generation {})",
                generation.unwrap_or_default()
            )
        })?;
    let mut accepted = Vec::new();
    for parent in parents {
        let gateway = parent
            .pointer("/parentRef/name")
            .and_then(Value::as_str)
            .unwrap_or("?");
        for kind in ["Accepted", "ResolvedRefs"] {
            let condition = parent
                .get("conditions")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .find(|c| c.get("type").and_then(Value::as_str) == Some(kind));
            let Some(c) = condition else {
                return Err(format!(
                    "Gateway {gateway} has not reported {kind} for HTTPRoute {name}"
                ));
            };
            let field = |f: &str| c.get(f).and_then(Value::as_str).unwrap_or_default();
            if c.get("observedGeneration").and_then(Value::as_i64) != generation {
                return Err(format!(
                    "Gateway {gateway} has not seen generation {} of HTTPRoute {name} yet",
                    generation.unwrap_or_default()
                ));
            }
            if field("status") != "True" {
                return Err(format!(
                    "Gateway {gateway} reports {kind} {} for HTTPRoute {name}: {} ({})",
                    field("status"),
                    field("reason"),
                    field("message")
                ));
            }
        }
        accepted.push(format!("Gateway {gateway}"));
    }
    Ok(accepted)
}
