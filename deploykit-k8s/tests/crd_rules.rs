//! The CRDs' CEL validation rules (`x-kubernetes-validations`) and the structural constraints
//! the typed mirrors of `tests/render.rs` miss (`maxItems`, `maxLength`, `pattern`, `enum`,
//! `minimum`/`maximum`, `required`), evaluated on rendered objects as the API server would
//! on apply: CRD defaults first, then each rule with `self` = the node it is declared on.
//!
//! The rules are transcribed verbatim (expression and message) from the official CRDs, at the
//! JSON path of the schema node that declares them:
//! - Gateway API v1.3.0, standard channel: `config/crd/standard/gateway.networking.k8s.io_httproutes.yaml`
//!   (schema version `v1`) and `..._referencegrants.yaml` (`v1beta1`, which has no CEL rule);
//! - Istio 1.30.3 (istio/api `kubernetes/customresourcedefinitions.gen.yaml`, schema versions `v1`);
//! - cert-manager v1.21.1 `deploy/crds/cert-manager.io_certificates.yaml`: no CEL rule.
//!
//! Only rules on fields deploykit renders are transcribed; each group below says what was
//! left out. No transcribed rule is a transition rule (`oldSelf`): those would be skipped,
//! and `the_rule_table_is_whole` asserts there are none. The rules use no Kubernetes CEL
//! extension function (`isURL`, `quantity`, `lowerAscii`, `split`, `find`...): only the
//! standard `size`, `has`, `all`, `exists`, `exists_one`, `filter`, `in`, `startsWith`,
//! `endsWith`, `contains`, `matches`, `int` and `duration`, which the `cel` crate has.
//! Property names are escaped as Kubernetes does (`namespace` is `__namespace__`).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use deploykit_core::{
    DesiredState, HeaderRoute, Mirror, Protocol, Revision, RevisionTarget, Routes, Traffic, Weight,
};
use deploykit_k8s::render::{
    self, Caller, Issuer, IssuerKind, MeshPolicy, Plan, RenderOptions, RouteTimeouts, RouteTls,
    Router,
};
use serde_json::{Value, json};

mod fixtures;

use fixtures::*;

/// A CRD whose rules are checked: the objects of `kind` in `api_version`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Crd {
    kind: &'static str,
    api_version: &'static str,
}

/// Gateway API v1.3.0 standard `gateway.networking.k8s.io_httproutes.yaml`, version `v1`.
const HTTPROUTE: Crd = Crd {
    kind: "HTTPRoute",
    api_version: "gateway.networking.k8s.io/v1",
};
/// Gateway API v1.3.0 standard `gateway.networking.k8s.io_referencegrants.yaml`, `v1beta1`.
const REFERENCE_GRANT: Crd = Crd {
    kind: "ReferenceGrant",
    api_version: "gateway.networking.k8s.io/v1beta1",
};
/// Istio 1.30.3 `customresourcedefinitions.gen.yaml`, `virtualservices.networking.istio.io` v1.
const VIRTUAL_SERVICE: Crd = Crd {
    kind: "VirtualService",
    api_version: "networking.istio.io/v1",
};
/// Istio 1.30.3, `destinationrules.networking.istio.io` v1.
const DESTINATION_RULE: Crd = Crd {
    kind: "DestinationRule",
    api_version: "networking.istio.io/v1",
};
/// Istio 1.30.3, `peerauthentications.security.istio.io` v1.
const PEER_AUTHENTICATION: Crd = Crd {
    kind: "PeerAuthentication",
    api_version: "security.istio.io/v1",
};
/// Istio 1.30.3, `authorizationpolicies.security.istio.io` v1.
const AUTHORIZATION_POLICY: Crd = Crd {
    kind: "AuthorizationPolicy",
    api_version: "security.istio.io/v1",
};

/// The CRDs checked; other kinds (Ingress, Certificate, core objects) have no rule here.
const CRDS: [Crd; 6] = [
    HTTPROUTE,
    REFERENCE_GRANT,
    VIRTUAL_SERVICE,
    DESTINATION_RULE,
    PEER_AUTHENTICATION,
    AUTHORIZATION_POLICY,
];

/// One `x-kubernetes-validations` entry: the `rule` and `message` at `path` of `crd`'s schema
/// (`[*]` an array's items, `{*}` a map's values).
struct Rule {
    crd: Crd,
    path: &'static str,
    rule: &'static str,
    message: &'static str,
}

#[rustfmt::skip]
static RULES: &[Rule] = &[
    // HTTPRoute: 41 of the 78 rules of its v1 schema
    Rule { crd: HTTPROUTE, path: r#".spec.parentRefs"#,
        rule: r#"self.all(p1, self.all(p2, p1.group == p2.group && p1.kind == p2.kind && p1.name == p2.name && (((!has(p1.__namespace__) || p1.__namespace__ == '') && (!has(p2.__namespace__) || p2.__namespace__ == '')) || (has(p1.__namespace__) && has(p2.__namespace__) && p1.__namespace__ == p2.__namespace__ )) ? ((!has(p1.sectionName) || p1.sectionName == '') == (!has(p2.sectionName) || p2.sectionName == '')) : true))"#,
        message: r#"sectionName must be specified when parentRefs includes 2 or more references to the same parent"# },
    Rule { crd: HTTPROUTE, path: r#".spec.parentRefs"#,
        rule: r#"self.all(p1, self.exists_one(p2, p1.group == p2.group && p1.kind == p2.kind && p1.name == p2.name && (((!has(p1.__namespace__) || p1.__namespace__ == '') && (!has(p2.__namespace__) || p2.__namespace__ == '')) || (has(p1.__namespace__) && has(p2.__namespace__) && p1.__namespace__ == p2.__namespace__ )) && (((!has(p1.sectionName) || p1.sectionName == '') && (!has(p2.sectionName) || p2.sectionName == '')) || (has(p1.sectionName) && has(p2.sectionName) && p1.sectionName == p2.sectionName))))"#,
        message: r#"sectionName must be unique when parentRefs includes 2 or more references to the same parent"# },
    Rule { crd: HTTPROUTE, path: r#".spec.rules"#,
        rule: r#"(self.size() > 0 ? self[0].matches.size() : 0) + (self.size() > 1 ? self[1].matches.size() : 0) + (self.size() > 2 ? self[2].matches.size() : 0) + (self.size() > 3 ? self[3].matches.size() : 0) + (self.size() > 4 ? self[4].matches.size() : 0) + (self.size() > 5 ? self[5].matches.size() : 0) + (self.size() > 6 ? self[6].matches.size() : 0) + (self.size() > 7 ? self[7].matches.size() : 0) + (self.size() > 8 ? self[8].matches.size() : 0) + (self.size() > 9 ? self[9].matches.size() : 0) + (self.size() > 10 ? self[10].matches.size() : 0) + (self.size() > 11 ? self[11].matches.size() : 0) + (self.size() > 12 ? self[12].matches.size() : 0) + (self.size() > 13 ? self[13].matches.size() : 0) + (self.size() > 14 ? self[14].matches.size() : 0) + (self.size() > 15 ? self[15].matches.size() : 0) <= 128"#,
        message: r#"While 16 rules and 64 matches per rule are allowed, the total number of matches across all rules in a route must be less than 128"# },
    Rule { crd: HTTPROUTE, path: r#".spec.rules[*]"#,
        rule: r#"(has(self.backendRefs) && size(self.backendRefs) > 0) ? (!has(self.filters) || self.filters.all(f, !has(f.requestRedirect))): true"#,
        message: r#"RequestRedirect filter must not be used together with backendRefs"# },
    Rule { crd: HTTPROUTE, path: r#".spec.rules[*]"#,
        rule: r#"(has(self.filters) && self.filters.exists_one(f, has(f.requestRedirect) && has(f.requestRedirect.path) && f.requestRedirect.path.type == 'ReplacePrefixMatch' && has(f.requestRedirect.path.replacePrefixMatch))) ? ((size(self.matches) != 1 || !has(self.matches[0].path) || self.matches[0].path.type != 'PathPrefix') ? false : true) : true"#,
        message: r#"When using RequestRedirect filter with path.replacePrefixMatch, exactly one PathPrefix match must be specified"# },
    Rule { crd: HTTPROUTE, path: r#".spec.rules[*]"#,
        rule: r#"(has(self.filters) && self.filters.exists_one(f, has(f.urlRewrite) && has(f.urlRewrite.path) && f.urlRewrite.path.type == 'ReplacePrefixMatch' && has(f.urlRewrite.path.replacePrefixMatch))) ? ((size(self.matches) != 1 || !has(self.matches[0].path) || self.matches[0].path.type != 'PathPrefix') ? false : true) : true"#,
        message: r#"When using URLRewrite filter with path.replacePrefixMatch, exactly one PathPrefix match must be specified"# },
    Rule { crd: HTTPROUTE, path: r#".spec.rules[*]"#,
        rule: r#"(has(self.backendRefs) && self.backendRefs.exists_one(b, (has(b.filters) && b.filters.exists_one(f, has(f.requestRedirect) && has(f.requestRedirect.path) && f.requestRedirect.path.type == 'ReplacePrefixMatch' && has(f.requestRedirect.path.replacePrefixMatch))) )) ? ((size(self.matches) != 1 || !has(self.matches[0].path) || self.matches[0].path.type != 'PathPrefix') ? false : true) : true"#,
        message: r#"Within backendRefs, when using RequestRedirect filter with path.replacePrefixMatch, exactly one PathPrefix match must be specified"# },
    Rule { crd: HTTPROUTE, path: r#".spec.rules[*]"#,
        rule: r#"(has(self.backendRefs) && self.backendRefs.exists_one(b, (has(b.filters) && b.filters.exists_one(f, has(f.urlRewrite) && has(f.urlRewrite.path) && f.urlRewrite.path.type == 'ReplacePrefixMatch' && has(f.urlRewrite.path.replacePrefixMatch))) )) ? ((size(self.matches) != 1 || !has(self.matches[0].path) || self.matches[0].path.type != 'PathPrefix') ? false : true) : true"#,
        message: r#"Within backendRefs, When using URLRewrite filter with path.replacePrefixMatch, exactly one PathPrefix match must be specified"# },
    Rule { crd: HTTPROUTE, path: r#".spec.rules[*].backendRefs[*]"#,
        rule: r#"(size(self.group) == 0 && self.kind == 'Service') ? has(self.port) : true"#,
        message: r#"Must have port for Service reference"# },
    Rule { crd: HTTPROUTE, path: r#".spec.rules[*].filters"#,
        rule: r#"!(self.exists(f, f.type == 'RequestRedirect') && self.exists(f, f.type == 'URLRewrite'))"#,
        message: r#"May specify either httpRouteFilterRequestRedirect or httpRouteFilterRequestRewrite, but not both"# },
    Rule { crd: HTTPROUTE, path: r#".spec.rules[*].filters"#,
        rule: r#"self.filter(f, f.type == 'RequestHeaderModifier').size() <= 1"#,
        message: r#"RequestHeaderModifier filter cannot be repeated"# },
    Rule { crd: HTTPROUTE, path: r#".spec.rules[*].filters"#,
        rule: r#"self.filter(f, f.type == 'ResponseHeaderModifier').size() <= 1"#,
        message: r#"ResponseHeaderModifier filter cannot be repeated"# },
    Rule { crd: HTTPROUTE, path: r#".spec.rules[*].filters"#,
        rule: r#"self.filter(f, f.type == 'RequestRedirect').size() <= 1"#,
        message: r#"RequestRedirect filter cannot be repeated"# },
    Rule { crd: HTTPROUTE, path: r#".spec.rules[*].filters"#,
        rule: r#"self.filter(f, f.type == 'URLRewrite').size() <= 1"#,
        message: r#"URLRewrite filter cannot be repeated"# },
    Rule { crd: HTTPROUTE, path: r#".spec.rules[*].filters[*]"#,
        rule: r#"!(has(self.requestHeaderModifier) && self.type != 'RequestHeaderModifier')"#,
        message: r#"filter.requestHeaderModifier must be nil if the filter.type is not RequestHeaderModifier"# },
    Rule { crd: HTTPROUTE, path: r#".spec.rules[*].filters[*]"#,
        rule: r#"!(!has(self.requestHeaderModifier) && self.type == 'RequestHeaderModifier')"#,
        message: r#"filter.requestHeaderModifier must be specified for RequestHeaderModifier filter.type"# },
    Rule { crd: HTTPROUTE, path: r#".spec.rules[*].filters[*]"#,
        rule: r#"!(has(self.responseHeaderModifier) && self.type != 'ResponseHeaderModifier')"#,
        message: r#"filter.responseHeaderModifier must be nil if the filter.type is not ResponseHeaderModifier"# },
    Rule { crd: HTTPROUTE, path: r#".spec.rules[*].filters[*]"#,
        rule: r#"!(!has(self.responseHeaderModifier) && self.type == 'ResponseHeaderModifier')"#,
        message: r#"filter.responseHeaderModifier must be specified for ResponseHeaderModifier filter.type"# },
    Rule { crd: HTTPROUTE, path: r#".spec.rules[*].filters[*]"#,
        rule: r#"!(has(self.requestMirror) && self.type != 'RequestMirror')"#,
        message: r#"filter.requestMirror must be nil if the filter.type is not RequestMirror"# },
    Rule { crd: HTTPROUTE, path: r#".spec.rules[*].filters[*]"#,
        rule: r#"!(!has(self.requestMirror) && self.type == 'RequestMirror')"#,
        message: r#"filter.requestMirror must be specified for RequestMirror filter.type"# },
    Rule { crd: HTTPROUTE, path: r#".spec.rules[*].filters[*]"#,
        rule: r#"!(has(self.requestRedirect) && self.type != 'RequestRedirect')"#,
        message: r#"filter.requestRedirect must be nil if the filter.type is not RequestRedirect"# },
    Rule { crd: HTTPROUTE, path: r#".spec.rules[*].filters[*]"#,
        rule: r#"!(!has(self.requestRedirect) && self.type == 'RequestRedirect')"#,
        message: r#"filter.requestRedirect must be specified for RequestRedirect filter.type"# },
    Rule { crd: HTTPROUTE, path: r#".spec.rules[*].filters[*]"#,
        rule: r#"!(has(self.urlRewrite) && self.type != 'URLRewrite')"#,
        message: r#"filter.urlRewrite must be nil if the filter.type is not URLRewrite"# },
    Rule { crd: HTTPROUTE, path: r#".spec.rules[*].filters[*]"#,
        rule: r#"!(!has(self.urlRewrite) && self.type == 'URLRewrite')"#,
        message: r#"filter.urlRewrite must be specified for URLRewrite filter.type"# },
    Rule { crd: HTTPROUTE, path: r#".spec.rules[*].filters[*]"#,
        rule: r#"!(has(self.extensionRef) && self.type != 'ExtensionRef')"#,
        message: r#"filter.extensionRef must be nil if the filter.type is not ExtensionRef"# },
    Rule { crd: HTTPROUTE, path: r#".spec.rules[*].filters[*]"#,
        rule: r#"!(!has(self.extensionRef) && self.type == 'ExtensionRef')"#,
        message: r#"filter.extensionRef must be specified for ExtensionRef filter.type"# },
    Rule { crd: HTTPROUTE, path: r#".spec.rules[*].filters[*].requestMirror"#,
        rule: r#"!(has(self.percent) && has(self.fraction))"#,
        message: r#"Only one of percent or fraction may be specified in HTTPRequestMirrorFilter"# },
    Rule { crd: HTTPROUTE, path: r#".spec.rules[*].filters[*].requestMirror.backendRef"#,
        rule: r#"(size(self.group) == 0 && self.kind == 'Service') ? has(self.port) : true"#,
        message: r#"Must have port for Service reference"# },
    Rule { crd: HTTPROUTE, path: r#".spec.rules[*].filters[*].requestMirror.fraction"#,
        rule: r#"self.numerator <= self.denominator"#,
        message: r#"numerator must be less than or equal to denominator"# },
    Rule { crd: HTTPROUTE, path: r#".spec.rules[*].matches[*].path"#,
        rule: r#"(self.type in ['Exact','PathPrefix']) ? self.value.startsWith('/') : true"#,
        message: r#"value must be an absolute path and start with '/' when type one of ['Exact', 'PathPrefix']"# },
    Rule { crd: HTTPROUTE, path: r#".spec.rules[*].matches[*].path"#,
        rule: r#"(self.type in ['Exact','PathPrefix']) ? !self.value.contains('//') : true"#,
        message: r#"must not contain '//' when type one of ['Exact', 'PathPrefix']"# },
    Rule { crd: HTTPROUTE, path: r#".spec.rules[*].matches[*].path"#,
        rule: r#"(self.type in ['Exact','PathPrefix']) ? !self.value.contains('/./') : true"#,
        message: r#"must not contain '/./' when type one of ['Exact', 'PathPrefix']"# },
    Rule { crd: HTTPROUTE, path: r#".spec.rules[*].matches[*].path"#,
        rule: r#"(self.type in ['Exact','PathPrefix']) ? !self.value.contains('/../') : true"#,
        message: r#"must not contain '/../' when type one of ['Exact', 'PathPrefix']"# },
    Rule { crd: HTTPROUTE, path: r#".spec.rules[*].matches[*].path"#,
        rule: r#"(self.type in ['Exact','PathPrefix']) ? !self.value.contains('%2f') : true"#,
        message: r#"must not contain '%2f' when type one of ['Exact', 'PathPrefix']"# },
    Rule { crd: HTTPROUTE, path: r#".spec.rules[*].matches[*].path"#,
        rule: r#"(self.type in ['Exact','PathPrefix']) ? !self.value.contains('%2F') : true"#,
        message: r#"must not contain '%2F' when type one of ['Exact', 'PathPrefix']"# },
    Rule { crd: HTTPROUTE, path: r#".spec.rules[*].matches[*].path"#,
        rule: r#"(self.type in ['Exact','PathPrefix']) ? !self.value.contains('#') : true"#,
        message: r#"must not contain '#' when type one of ['Exact', 'PathPrefix']"# },
    Rule { crd: HTTPROUTE, path: r#".spec.rules[*].matches[*].path"#,
        rule: r#"(self.type in ['Exact','PathPrefix']) ? !self.value.endsWith('/..') : true"#,
        message: r#"must not end with '/..' when type one of ['Exact', 'PathPrefix']"# },
    Rule { crd: HTTPROUTE, path: r#".spec.rules[*].matches[*].path"#,
        rule: r#"(self.type in ['Exact','PathPrefix']) ? !self.value.endsWith('/.') : true"#,
        message: r#"must not end with '/.' when type one of ['Exact', 'PathPrefix']"# },
    Rule { crd: HTTPROUTE, path: r#".spec.rules[*].matches[*].path"#,
        rule: r#"self.type in ['Exact','PathPrefix'] || self.type == 'RegularExpression'"#,
        message: r#"type must be one of ['Exact', 'PathPrefix', 'RegularExpression']"# },
    Rule { crd: HTTPROUTE, path: r#".spec.rules[*].matches[*].path"#,
        rule: r#"(self.type in ['Exact','PathPrefix']) ? self.value.matches(r"""^(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|[%][0-9a-fA-F]{2})+$""") : true"#,
        message: r#"must only contain valid characters (matching ^(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|[%][0-9a-fA-F]{2})+$) for types ['Exact', 'PathPrefix']"# },
    Rule { crd: HTTPROUTE, path: r#".spec.rules[*].timeouts"#,
        rule: r#"!(has(self.request) && has(self.backendRequest) && duration(self.request) != duration('0s') && duration(self.backendRequest) > duration(self.request))"#,
        message: r#"backendRequest timeout cannot be longer than request timeout"# },
    // Not transcribed (deploykit renders none of these fields): the other 37 rules, all on
    // `.spec.rules[*].backendRefs[*].filters` and below (per-backend filters), and on
    // `.spec.rules[*].filters[*].requestRedirect.path` / `.urlRewrite.path`.
    // VirtualService: 2 of the 6 rules of its v1 schema
    Rule { crd: VIRTUAL_SERVICE, path: r#".spec.http[*].retries.perTryTimeout"#,
        rule: r#"duration(self) >= duration('1ms')"#,
        message: r#"must be a valid duration greater than 1ms"# },
    Rule { crd: VIRTUAL_SERVICE, path: r#".spec.http[*].timeout"#,
        rule: r#"duration(self) >= duration('1ms')"#,
        message: r#"must be a valid duration greater than 1ms"# },
    // Not transcribed (not rendered): corsPolicy.maxAge, fault.delay.{fixed,exponential}Delay,
    // retries.backoff (the same `duration(self) >= duration('1ms')` rule).
    // DestinationRule: 2 of the 39 rules of its v1 schema
    Rule { crd: DESTINATION_RULE, path: r#".spec.trafficPolicy.outlierDetection.baseEjectionTime"#,
        rule: r#"duration(self) >= duration('1ms')"#,
        message: r#"must be a valid duration greater than 1ms"# },
    Rule { crd: DESTINATION_RULE, path: r#".spec.trafficPolicy.outlierDetection.interval"#,
        rule: r#"duration(self) >= duration('1ms')"#,
        message: r#"must be a valid duration greater than 1ms"# },
    // Not transcribed (not rendered): the same duration rule on 37 other paths (connectionPool
    // tcp/http timeouts, loadBalancer warmup, subsets[*] and portLevelSettings[*] copies).
    // PeerAuthentication: 4 of the 5 rules of its v1 schema
    Rule { crd: PEER_AUTHENTICATION, path: r#".spec"#,
        rule: r#"has(self.portLevelMtls) ? (((has(self.selector) && has(self.selector.matchLabels)) ? self.selector.matchLabels : {}).size() > 0) : true"#,
        message: r#"portLevelMtls requires selector"# },
    Rule { crd: PEER_AUTHENTICATION, path: r#".spec.selector.matchLabels"#,
        rule: r#"self.all(key, !key.contains("*"))"#,
        message: r#"wildcard not allowed in label key match"# },
    Rule { crd: PEER_AUTHENTICATION, path: r#".spec.selector.matchLabels"#,
        rule: r#"self.all(key, key.size() != 0)"#,
        message: r#"key must not be empty"# },
    Rule { crd: PEER_AUTHENTICATION, path: r#".spec.selector.matchLabels{*}"#,
        rule: r#"!self.contains("*")"#,
        message: r#"wildcard not allowed in label value match"# },
    // Not transcribed (not rendered): `.spec.portLevelMtls` (port keys between 1 and 65535).
    // AuthorizationPolicy: 5 of the 7 rules of its v1 schema
    Rule { crd: AUTHORIZATION_POLICY, path: r#".spec"#,
        rule: r#"(has(self.selector) ? 1 : 0) + (has(self.targetRef) ? 1 : 0) + (has(self.targetRefs) ? 1 : 0) <= 1"#,
        message: r#"only one of targetRefs or selector can be set"# },
    Rule { crd: AUTHORIZATION_POLICY, path: r#".spec.rules[*].from[*].source"#,
        rule: r#"(has(self.serviceAccounts) || has(self.notServiceAccounts)) ? (!has(self.principals) &&
!has(self.notPrincipals) && !has(self.namespaces) && !has(self.notNamespaces)) : true"#,
        message: r#"Cannot set serviceAccounts with namespaces or principals"# },
    Rule { crd: AUTHORIZATION_POLICY, path: r#".spec.selector.matchLabels"#,
        rule: r#"self.all(key, !key.contains("*"))"#,
        message: r#"wildcard not allowed in label key match"# },
    Rule { crd: AUTHORIZATION_POLICY, path: r#".spec.selector.matchLabels"#,
        rule: r#"self.all(key, key.size() != 0)"#,
        message: r#"key must not be empty"# },
    Rule { crd: AUTHORIZATION_POLICY, path: r#".spec.selector.matchLabels{*}"#,
        rule: r#"!self.contains("*")"#,
        message: r#"wildcard not allowed in label value match"# },
    // Not transcribed (not rendered): `.spec.targetRef.namespace`, `.spec.targetRefs[*].namespace`.
];

/// Rules no rendered object reaches: deploykit renders a mirror's `percent`, never `fraction`
/// (so this one runs only in the negative tests). A rule missing from here that no object
/// reaches, or listed here and reached, fails `every_rendered_object_passes_every_rule`.
const NOT_REACHED: &[(&str, &str)] = &[(
    "HTTPRoute",
    ".spec.rules[*].filters[*].requestMirror.fraction",
)];

/// A schema `default`, applied by the API server before validation where the field is absent.
struct Default {
    crd: Crd,
    path: &'static str,
    value: &'static str,
}

/// The defaults of the rendered fields, parents before children (Gateway API v1.3.0).
#[rustfmt::skip]
static DEFAULTS: &[Default] = &[
    Default { crd: HTTPROUTE, path: r#".spec.parentRefs[*].group"#, value: r#""gateway.networking.k8s.io""# },
    Default { crd: HTTPROUTE, path: r#".spec.parentRefs[*].kind"#, value: r#""Gateway""# },
    Default { crd: HTTPROUTE, path: r#".spec.rules"#, value: r#"[{"matches":[{"path":{"type":"PathPrefix","value":"/"}}]}]"# },
    Default { crd: HTTPROUTE, path: r#".spec.rules[*].backendRefs[*].group"#, value: r#""""# },
    Default { crd: HTTPROUTE, path: r#".spec.rules[*].backendRefs[*].kind"#, value: r#""Service""# },
    Default { crd: HTTPROUTE, path: r#".spec.rules[*].backendRefs[*].weight"#, value: r#"1"# },
    Default { crd: HTTPROUTE, path: r#".spec.rules[*].filters[*].requestMirror.backendRef.group"#, value: r#""""# },
    Default { crd: HTTPROUTE, path: r#".spec.rules[*].filters[*].requestMirror.backendRef.kind"#, value: r#""Service""# },
    Default { crd: HTTPROUTE, path: r#".spec.rules[*].filters[*].requestMirror.fraction.denominator"#, value: r#"100"# },
    Default { crd: HTTPROUTE, path: r#".spec.rules[*].matches"#, value: r#"[{"path":{"type":"PathPrefix","value":"/"}}]"# },
    Default { crd: HTTPROUTE, path: r#".spec.rules[*].matches[*].headers[*].type"#, value: r#""Exact""# },
    Default { crd: HTTPROUTE, path: r#".spec.rules[*].matches[*].path"#, value: r#"{"type":"PathPrefix","value":"/"}"# },
    Default { crd: HTTPROUTE, path: r#".spec.rules[*].matches[*].path.type"#, value: r#""PathPrefix""# },
    Default { crd: HTTPROUTE, path: r#".spec.rules[*].matches[*].path.value"#, value: r#""/""# },
];

/// A structural constraint of the schema.
#[derive(Debug)]
enum Check {
    MaxItems(usize),
    MinItems(usize),
    MaxLength(usize),
    MinLength(usize),
    Minimum(i64),
    Maximum(i64),
    Pattern(&'static str),
    Enum(&'static [&'static str]),
    Required(&'static [&'static str]),
}

struct Shape {
    crd: Crd,
    path: &'static str,
    check: Check,
}

/// The structural constraints of the rendered fields (Gateway API v1.3.0; Istio's schemas have
/// none on what deploykit renders, cert-manager's only `issuerRef.name` required, which the
/// typed mirror checks).
#[rustfmt::skip]
static SHAPES: &[Shape] = &[
    Shape { crd: HTTPROUTE, path: r#""#, check: Check::Required(&["spec"]) },
    Shape { crd: HTTPROUTE, path: r#".spec.hostnames"#, check: Check::MaxItems(16) },
    Shape { crd: HTTPROUTE, path: r#".spec.hostnames[*]"#, check: Check::MaxLength(253) },
    Shape { crd: HTTPROUTE, path: r#".spec.hostnames[*]"#, check: Check::MinLength(1) },
    Shape { crd: HTTPROUTE, path: r#".spec.hostnames[*]"#, check: Check::Pattern(r#"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"#) },
    Shape { crd: HTTPROUTE, path: r#".spec.parentRefs"#, check: Check::MaxItems(32) },
    Shape { crd: HTTPROUTE, path: r#".spec.parentRefs[*]"#, check: Check::Required(&["name"]) },
    Shape { crd: HTTPROUTE, path: r#".spec.parentRefs[*].group"#, check: Check::MaxLength(253) },
    Shape { crd: HTTPROUTE, path: r#".spec.parentRefs[*].group"#, check: Check::Pattern(r#"^$|^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"#) },
    Shape { crd: HTTPROUTE, path: r#".spec.parentRefs[*].kind"#, check: Check::MaxLength(63) },
    Shape { crd: HTTPROUTE, path: r#".spec.parentRefs[*].kind"#, check: Check::MinLength(1) },
    Shape { crd: HTTPROUTE, path: r#".spec.parentRefs[*].kind"#, check: Check::Pattern(r#"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$"#) },
    Shape { crd: HTTPROUTE, path: r#".spec.parentRefs[*].name"#, check: Check::MaxLength(253) },
    Shape { crd: HTTPROUTE, path: r#".spec.parentRefs[*].name"#, check: Check::MinLength(1) },
    Shape { crd: HTTPROUTE, path: r#".spec.parentRefs[*].namespace"#, check: Check::MaxLength(63) },
    Shape { crd: HTTPROUTE, path: r#".spec.parentRefs[*].namespace"#, check: Check::MinLength(1) },
    Shape { crd: HTTPROUTE, path: r#".spec.parentRefs[*].namespace"#, check: Check::Pattern(r#"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"#) },
    Shape { crd: HTTPROUTE, path: r#".spec.parentRefs[*].port"#, check: Check::Minimum(1) },
    Shape { crd: HTTPROUTE, path: r#".spec.parentRefs[*].port"#, check: Check::Maximum(65535) },
    Shape { crd: HTTPROUTE, path: r#".spec.parentRefs[*].sectionName"#, check: Check::MaxLength(253) },
    Shape { crd: HTTPROUTE, path: r#".spec.parentRefs[*].sectionName"#, check: Check::MinLength(1) },
    Shape { crd: HTTPROUTE, path: r#".spec.parentRefs[*].sectionName"#, check: Check::Pattern(r#"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"#) },
    Shape { crd: HTTPROUTE, path: r#".spec.rules"#, check: Check::MaxItems(16) },
    Shape { crd: HTTPROUTE, path: r#".spec.rules[*].backendRefs"#, check: Check::MaxItems(16) },
    Shape { crd: HTTPROUTE, path: r#".spec.rules[*].backendRefs[*]"#, check: Check::Required(&["name"]) },
    Shape { crd: HTTPROUTE, path: r#".spec.rules[*].backendRefs[*].group"#, check: Check::MaxLength(253) },
    Shape { crd: HTTPROUTE, path: r#".spec.rules[*].backendRefs[*].group"#, check: Check::Pattern(r#"^$|^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"#) },
    Shape { crd: HTTPROUTE, path: r#".spec.rules[*].backendRefs[*].kind"#, check: Check::MaxLength(63) },
    Shape { crd: HTTPROUTE, path: r#".spec.rules[*].backendRefs[*].kind"#, check: Check::MinLength(1) },
    Shape { crd: HTTPROUTE, path: r#".spec.rules[*].backendRefs[*].kind"#, check: Check::Pattern(r#"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$"#) },
    Shape { crd: HTTPROUTE, path: r#".spec.rules[*].backendRefs[*].name"#, check: Check::MaxLength(253) },
    Shape { crd: HTTPROUTE, path: r#".spec.rules[*].backendRefs[*].name"#, check: Check::MinLength(1) },
    Shape { crd: HTTPROUTE, path: r#".spec.rules[*].backendRefs[*].namespace"#, check: Check::MaxLength(63) },
    Shape { crd: HTTPROUTE, path: r#".spec.rules[*].backendRefs[*].namespace"#, check: Check::MinLength(1) },
    Shape { crd: HTTPROUTE, path: r#".spec.rules[*].backendRefs[*].namespace"#, check: Check::Pattern(r#"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"#) },
    Shape { crd: HTTPROUTE, path: r#".spec.rules[*].backendRefs[*].port"#, check: Check::Minimum(1) },
    Shape { crd: HTTPROUTE, path: r#".spec.rules[*].backendRefs[*].port"#, check: Check::Maximum(65535) },
    Shape { crd: HTTPROUTE, path: r#".spec.rules[*].backendRefs[*].weight"#, check: Check::Minimum(0) },
    Shape { crd: HTTPROUTE, path: r#".spec.rules[*].backendRefs[*].weight"#, check: Check::Maximum(1000000) },
    Shape { crd: HTTPROUTE, path: r#".spec.rules[*].filters"#, check: Check::MaxItems(16) },
    Shape { crd: HTTPROUTE, path: r#".spec.rules[*].filters[*]"#, check: Check::Required(&["type"]) },
    Shape { crd: HTTPROUTE, path: r#".spec.rules[*].filters[*].requestMirror"#, check: Check::Required(&["backendRef"]) },
    Shape { crd: HTTPROUTE, path: r#".spec.rules[*].filters[*].requestMirror.backendRef"#, check: Check::Required(&["name"]) },
    Shape { crd: HTTPROUTE, path: r#".spec.rules[*].filters[*].requestMirror.backendRef.group"#, check: Check::MaxLength(253) },
    Shape { crd: HTTPROUTE, path: r#".spec.rules[*].filters[*].requestMirror.backendRef.group"#, check: Check::Pattern(r#"^$|^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"#) },
    Shape { crd: HTTPROUTE, path: r#".spec.rules[*].filters[*].requestMirror.backendRef.kind"#, check: Check::MaxLength(63) },
    Shape { crd: HTTPROUTE, path: r#".spec.rules[*].filters[*].requestMirror.backendRef.kind"#, check: Check::MinLength(1) },
    Shape { crd: HTTPROUTE, path: r#".spec.rules[*].filters[*].requestMirror.backendRef.kind"#, check: Check::Pattern(r#"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$"#) },
    Shape { crd: HTTPROUTE, path: r#".spec.rules[*].filters[*].requestMirror.backendRef.name"#, check: Check::MaxLength(253) },
    Shape { crd: HTTPROUTE, path: r#".spec.rules[*].filters[*].requestMirror.backendRef.name"#, check: Check::MinLength(1) },
    Shape { crd: HTTPROUTE, path: r#".spec.rules[*].filters[*].requestMirror.backendRef.namespace"#, check: Check::MaxLength(63) },
    Shape { crd: HTTPROUTE, path: r#".spec.rules[*].filters[*].requestMirror.backendRef.namespace"#, check: Check::MinLength(1) },
    Shape { crd: HTTPROUTE, path: r#".spec.rules[*].filters[*].requestMirror.backendRef.namespace"#, check: Check::Pattern(r#"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"#) },
    Shape { crd: HTTPROUTE, path: r#".spec.rules[*].filters[*].requestMirror.backendRef.port"#, check: Check::Minimum(1) },
    Shape { crd: HTTPROUTE, path: r#".spec.rules[*].filters[*].requestMirror.backendRef.port"#, check: Check::Maximum(65535) },
    Shape { crd: HTTPROUTE, path: r#".spec.rules[*].filters[*].requestMirror.fraction"#, check: Check::Required(&["numerator"]) },
    Shape { crd: HTTPROUTE, path: r#".spec.rules[*].filters[*].requestMirror.fraction.denominator"#, check: Check::Minimum(1) },
    Shape { crd: HTTPROUTE, path: r#".spec.rules[*].filters[*].requestMirror.fraction.numerator"#, check: Check::Minimum(0) },
    Shape { crd: HTTPROUTE, path: r#".spec.rules[*].filters[*].requestMirror.percent"#, check: Check::Minimum(0) },
    Shape { crd: HTTPROUTE, path: r#".spec.rules[*].filters[*].requestMirror.percent"#, check: Check::Maximum(100) },
    Shape { crd: HTTPROUTE, path: r#".spec.rules[*].filters[*].type"#, check: Check::Enum(&["RequestHeaderModifier", "ResponseHeaderModifier", "RequestMirror", "RequestRedirect", "URLRewrite", "ExtensionRef"]) },
    Shape { crd: HTTPROUTE, path: r#".spec.rules[*].matches"#, check: Check::MaxItems(64) },
    Shape { crd: HTTPROUTE, path: r#".spec.rules[*].matches[*].headers"#, check: Check::MaxItems(16) },
    Shape { crd: HTTPROUTE, path: r#".spec.rules[*].matches[*].headers[*]"#, check: Check::Required(&["name", "value"]) },
    Shape { crd: HTTPROUTE, path: r#".spec.rules[*].matches[*].headers[*].name"#, check: Check::MaxLength(256) },
    Shape { crd: HTTPROUTE, path: r#".spec.rules[*].matches[*].headers[*].name"#, check: Check::MinLength(1) },
    Shape { crd: HTTPROUTE, path: r#".spec.rules[*].matches[*].headers[*].name"#, check: Check::Pattern(r#"^[A-Za-z0-9!#$%&'*+\-.^_\x60|~]+$"#) },
    Shape { crd: HTTPROUTE, path: r#".spec.rules[*].matches[*].headers[*].type"#, check: Check::Enum(&["Exact", "RegularExpression"]) },
    Shape { crd: HTTPROUTE, path: r#".spec.rules[*].matches[*].headers[*].value"#, check: Check::MaxLength(4096) },
    Shape { crd: HTTPROUTE, path: r#".spec.rules[*].matches[*].headers[*].value"#, check: Check::MinLength(1) },
    Shape { crd: HTTPROUTE, path: r#".spec.rules[*].matches[*].path.type"#, check: Check::Enum(&["Exact", "PathPrefix", "RegularExpression"]) },
    Shape { crd: HTTPROUTE, path: r#".spec.rules[*].matches[*].path.value"#, check: Check::MaxLength(1024) },
    Shape { crd: HTTPROUTE, path: r#".spec.rules[*].timeouts.backendRequest"#, check: Check::Pattern(r#"^([0-9]{1,5}(h|m|s|ms)){1,4}$"#) },
    Shape { crd: HTTPROUTE, path: r#".spec.rules[*].timeouts.request"#, check: Check::Pattern(r#"^([0-9]{1,5}(h|m|s|ms)){1,4}$"#) },
    Shape { crd: REFERENCE_GRANT, path: r#".spec"#, check: Check::Required(&["from", "to"]) },
    Shape { crd: REFERENCE_GRANT, path: r#".spec.from"#, check: Check::MaxItems(16) },
    Shape { crd: REFERENCE_GRANT, path: r#".spec.from"#, check: Check::MinItems(1) },
    Shape { crd: REFERENCE_GRANT, path: r#".spec.from[*]"#, check: Check::Required(&["group", "kind", "namespace"]) },
    Shape { crd: REFERENCE_GRANT, path: r#".spec.from[*].group"#, check: Check::MaxLength(253) },
    Shape { crd: REFERENCE_GRANT, path: r#".spec.from[*].group"#, check: Check::Pattern(r#"^$|^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"#) },
    Shape { crd: REFERENCE_GRANT, path: r#".spec.from[*].kind"#, check: Check::MaxLength(63) },
    Shape { crd: REFERENCE_GRANT, path: r#".spec.from[*].kind"#, check: Check::MinLength(1) },
    Shape { crd: REFERENCE_GRANT, path: r#".spec.from[*].kind"#, check: Check::Pattern(r#"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$"#) },
    Shape { crd: REFERENCE_GRANT, path: r#".spec.from[*].namespace"#, check: Check::MaxLength(63) },
    Shape { crd: REFERENCE_GRANT, path: r#".spec.from[*].namespace"#, check: Check::MinLength(1) },
    Shape { crd: REFERENCE_GRANT, path: r#".spec.from[*].namespace"#, check: Check::Pattern(r#"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"#) },
    Shape { crd: REFERENCE_GRANT, path: r#".spec.to"#, check: Check::MaxItems(16) },
    Shape { crd: REFERENCE_GRANT, path: r#".spec.to"#, check: Check::MinItems(1) },
    Shape { crd: REFERENCE_GRANT, path: r#".spec.to[*]"#, check: Check::Required(&["group", "kind"]) },
    Shape { crd: REFERENCE_GRANT, path: r#".spec.to[*].group"#, check: Check::MaxLength(253) },
    Shape { crd: REFERENCE_GRANT, path: r#".spec.to[*].group"#, check: Check::Pattern(r#"^$|^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"#) },
    Shape { crd: REFERENCE_GRANT, path: r#".spec.to[*].kind"#, check: Check::MaxLength(63) },
    Shape { crd: REFERENCE_GRANT, path: r#".spec.to[*].kind"#, check: Check::MinLength(1) },
    Shape { crd: REFERENCE_GRANT, path: r#".spec.to[*].kind"#, check: Check::Pattern(r#"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$"#) },
    Shape { crd: REFERENCE_GRANT, path: r#".spec.to[*].name"#, check: Check::MaxLength(253) },
    Shape { crd: REFERENCE_GRANT, path: r#".spec.to[*].name"#, check: Check::MinLength(1) },
];

/// Nodes whose schema is a map (`additionalProperties`): their keys are data, not property
/// names, so they are not escaped.
const MAPS: &[&str] = &[
    ".metadata.labels",
    ".metadata.annotations",
    ".spec.selector.matchLabels",
    ".spec.workloadSelector.matchLabels",
    ".spec.http[*].match[*].headers",
    ".spec.portLevelMtls",
];

// ---- paths -------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
enum Seg<'a> {
    Field(&'a str),
    Items,
    Values,
}

fn segments(path: &str) -> Vec<Seg<'_>> {
    let mut out = Vec::new();
    let mut rest = path;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("[*]") {
            out.push(Seg::Items);
            rest = r;
        } else if let Some(r) = rest.strip_prefix("{*}") {
            out.push(Seg::Values);
            rest = r;
        } else {
            let r = rest
                .strip_prefix('.')
                .expect("a path is .field, [*] or {*}");
            let end = r.find(['.', '[', '{']).unwrap_or(r.len());
            out.push(Seg::Field(&r[..end]));
            rest = &r[end..];
        }
    }
    out
}

/// The nodes at `segs` under `node`, with their concrete paths.
fn nodes<'v>(node: &'v Value, at: String, segs: &[Seg<'_>], out: &mut Vec<(String, &'v Value)>) {
    let Some((first, rest)) = segs.split_first() else {
        out.push((at, node));
        return;
    };
    match (first, node) {
        (Seg::Field(f), Value::Object(m)) => {
            if let Some(child) = m.get(*f) {
                nodes(child, format!("{at}.{f}"), rest, out);
            }
        }
        (Seg::Items, Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                nodes(item, format!("{at}[{i}]"), rest, out);
            }
        }
        (Seg::Values, Value::Object(m)) => {
            for (k, v) in m {
                nodes(v, format!("{at}[{k:?}]"), rest, out);
            }
        }
        _ => {}
    }
}

fn nodes_mut(node: &mut Value, segs: &[Seg<'_>], f: &mut dyn FnMut(&mut Value)) {
    let Some((first, rest)) = segs.split_first() else {
        f(node);
        return;
    };
    match (first, node) {
        (Seg::Field(name), Value::Object(m)) => {
            if let Some(child) = m.get_mut(*name) {
                nodes_mut(child, rest, f);
            }
        }
        (Seg::Items, Value::Array(items)) => items.iter_mut().for_each(|i| nodes_mut(i, rest, f)),
        (Seg::Values, Value::Object(m)) => m.values_mut().for_each(|v| nodes_mut(v, rest, f)),
        _ => {}
    }
}

/// Applies `crd`'s defaults where the field is absent and its parent present.
fn apply_defaults(crd: Crd, object: &mut Value) {
    for d in DEFAULTS.iter().filter(|d| d.crd == crd) {
        let segs = segments(d.path);
        let (Seg::Field(field), parent) = segs.split_last().unwrap() else {
            panic!("a default is on a field: {}", d.path)
        };
        let value: Value = serde_json::from_str(d.value).unwrap();
        nodes_mut(object, parent, &mut |node| {
            if let Value::Object(m) = node {
                m.entry(field.to_string()).or_insert_with(|| value.clone());
            }
        });
    }
}

// ---- CEL ---------------------------------------------------------------------------------

/// CEL's reserved words, which Kubernetes escapes as `__word__` in property names.
const RESERVED: &[&str] = &[
    "true",
    "false",
    "null",
    "in",
    "as",
    "break",
    "const",
    "continue",
    "else",
    "for",
    "function",
    "if",
    "import",
    "let",
    "loop",
    "package",
    "namespace",
    "return",
    "var",
    "void",
    "while",
];

/// A property name as a CEL field name (Kubernetes' escaping); `None`: not accessible.
fn escape(name: &str) -> Option<String> {
    if RESERVED.contains(&name) {
        return Some(format!("__{name}__"));
    }
    let ok_first = |c: char| c.is_ascii_alphabetic() || "_.-/".contains(c);
    let ok = |c: char| c.is_ascii_alphanumeric() || "_.-/".contains(c);
    let mut chars = name.chars();
    if !chars.next().is_some_and(ok_first) || !chars.all(ok) {
        return None;
    }
    Some(
        name.replace("__", "__underscores__")
            .replace('.', "__dot__")
            .replace('-', "__dash__")
            .replace('/', "__slash__"),
    )
}

/// `value` (at schema path `path`) as a CEL value: integers are `int`, objects are maps of
/// escaped property names, maps keep their keys.
fn to_cel(value: &Value, path: &str) -> cel::Value {
    match value {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => cel::Value::Int(i),
            None => cel::Value::Float(n.as_f64().unwrap()),
        },
        Value::String(s) => cel::Value::String(Arc::new(s.clone())),
        Value::Array(items) => {
            let at = format!("{path}[*]");
            cel::Value::List(Arc::new(items.iter().map(|i| to_cel(i, &at)).collect()))
        }
        Value::Object(m) => {
            let is_map = MAPS.contains(&path);
            let mut out = HashMap::new();
            for (k, v) in m {
                let (key, at) = if is_map {
                    (Some(k.clone()), format!("{path}{{*}}"))
                } else {
                    (escape(k), format!("{path}.{k}"))
                };
                if let Some(key) = key {
                    out.insert(cel::objects::Key::String(Arc::new(key)), to_cel(v, &at));
                }
            }
            cel::Value::Map(cel::objects::Map { map: Arc::new(out) })
        }
    }
}

/// A failed rule or constraint on one object.
#[derive(Debug, Clone)]
struct Violation {
    object: String,
    at: String,
    message: String,
}

/// The compiled rules, and how often each was evaluated.
struct Checker {
    programs: Vec<cel::Program>,
    root: cel::Context<'static, 'static>,
    evaluated: RefCell<Vec<usize>>,
    patterns: Vec<Option<regex::Regex>>,
}

impl Checker {
    fn new() -> Checker {
        let programs = RULES
            .iter()
            .map(|r| {
                cel::Program::compile(r.rule)
                    .unwrap_or_else(|e| panic!("{} {}: {e}\n{}", r.crd.kind, r.path, r.rule))
            })
            .collect();
        let patterns = SHAPES
            .iter()
            .map(|s| match s.check {
                Check::Pattern(p) => Some(regex::Regex::new(p).unwrap()),
                _ => None,
            })
            .collect();
        Checker {
            programs,
            root: cel::Context::default(),
            evaluated: RefCell::new(vec![0; RULES.len()]),
            patterns,
        }
    }

    /// Evaluates rule `index` with `self` = `node` (at schema path of the rule).
    fn eval(&self, index: usize, node: &Value) -> Result<bool, String> {
        self.evaluated.borrow_mut()[index] += 1;
        let mut ctx = self.root.new_inner_scope();
        ctx.add_variable_from_value("self", to_cel(node, RULES[index].path));
        match self.programs[index].execute(&ctx) {
            Ok(cel::Value::Bool(b)) => Ok(b),
            Ok(other) => Err(format!("evaluated to {other:?}, not a bool")),
            Err(e) => Err(format!("evaluation error: {e}")),
        }
    }

    /// Every violation of `object` (rendered JSON): CEL rules and structural constraints, after
    /// the CRD's defaults. Objects of other kinds have none.
    fn check(&self, object: &Value) -> Vec<Violation> {
        let kind = object["kind"].as_str().unwrap_or_default();
        let api_version = object["apiVersion"].as_str().unwrap_or_default();
        let name = format!(
            "{kind}/{}",
            object["metadata"]["name"].as_str().unwrap_or("?")
        );
        let mut out = Vec::new();
        let Some(crd) = CRDS
            .into_iter()
            .find(|c| c.kind == kind && c.api_version == api_version)
        else {
            return out;
        };
        let mut object = object.clone();
        apply_defaults(crd, &mut object);
        for (index, rule) in RULES.iter().enumerate().filter(|(_, r)| r.crd == crd) {
            if rule.rule.contains("oldSelf") {
                continue; // a transition rule: there is no old object (none is transcribed)
            }
            let mut found = Vec::new();
            nodes(&object, String::new(), &segments(rule.path), &mut found);
            for (at, node) in found {
                let message = match self.eval(index, node) {
                    Ok(true) => continue,
                    Ok(false) => rule.message.to_string(),
                    Err(e) => format!("{}: {e}", rule.message),
                };
                out.push(Violation {
                    object: name.clone(),
                    at,
                    message,
                });
            }
        }
        for (shape, pattern) in SHAPES
            .iter()
            .zip(&self.patterns)
            .filter(|(s, _)| s.crd == crd)
        {
            let mut found = Vec::new();
            nodes(&object, String::new(), &segments(shape.path), &mut found);
            for (at, node) in found {
                if let Some(message) = shape_violation(&shape.check, pattern.as_ref(), node) {
                    out.push(Violation {
                        object: name.clone(),
                        at,
                        message,
                    });
                }
            }
        }
        out
    }
}

/// How `node` breaks `check`, if it does (as the API server words it, roughly).
fn shape_violation(check: &Check, pattern: Option<&regex::Regex>, node: &Value) -> Option<String> {
    let len = |v: &Value| v.as_str().map(|s| s.chars().count());
    let bad = match check {
        Check::MaxItems(n) => node.as_array().is_some_and(|a| a.len() > *n),
        Check::MinItems(n) => node.as_array().is_some_and(|a| a.len() < *n),
        Check::MaxLength(n) => len(node).is_some_and(|l| l > *n),
        Check::MinLength(n) => len(node).is_some_and(|l| l < *n),
        Check::Minimum(n) => node.as_f64().is_some_and(|v| v < *n as f64),
        Check::Maximum(n) => node.as_f64().is_some_and(|v| v > *n as f64),
        Check::Pattern(_) => node.as_str().is_some_and(|s| !pattern.unwrap().is_match(s)),
        Check::Enum(values) => node.as_str().is_some_and(|s| !values.contains(&s)),
        Check::Required(fields) => node
            .as_object()
            .is_some_and(|m| fields.iter().any(|f| !m.contains_key(*f))),
    };
    bad.then(|| format!("{check:?}"))
}

thread_local! {
    static CHECKER: Checker = Checker::new();
}

fn violations(object: &Value) -> Vec<Violation> {
    CHECKER.with(|c| c.check(object))
}

fn plan_violations(plan: &Plan) -> Vec<Violation> {
    plan.objects
        .iter()
        .flat_map(|o| violations(&o.to_json()))
        .collect()
}

/// v2 takes `percent`, the `x-canary: always` header route, and `mirror` percent mirrored.
fn canary(a: &Revision, b: &Revision, percent: u32, mirror: Option<u32>) -> Routes {
    let mut routes = Routes::split(&a.id, &b.id, Weight::new(percent).unwrap());
    routes.header = Some(HeaderRoute::new("x-canary", "always", b.id.clone()));
    routes.mirror = mirror.map(|m| Mirror::new(b.id.clone(), Weight::new(m).unwrap()));
    routes
}

fn render_with(revs: &(Arc<Revision>, Arc<Revision>), traffic: Traffic, o: &RenderOptions) -> Plan {
    let (a, b) = revs;
    let desired = DesiredState::new(
        vec![
            RevisionTarget::new(a.clone(), 3),
            RevisionTarget::new(b.clone(), 1),
        ],
        traffic,
    );
    render::plan(&web().name, &desired, &secrets_for(&[a, b]), o).unwrap()
}

/// The plans of every router and feature that renders a checked kind.
fn scenarios() -> Vec<(&'static str, Plan)> {
    let revs = revisions();
    let (v1, v2) = &revs;
    let timeouts = RouteTimeouts::new(Duration::from_millis(3_723_004))
        .unwrap()
        .backend_request(Duration::from_millis(2500))
        .unwrap();
    let mut preview = Routes::all_to(&v1.id);
    preview.preview = Some(v2.id.clone());
    let mesh = MeshPolicy::default().allow(vec![
        Caller::Service("api".into()),
        Caller::Namespace("monitoring".into()),
        Caller::Principal("cluster.local/ns/batch/sa/worker".into()),
    ]);
    let policy = revisions_with(full_policy(Protocol::Grpc));
    let routed = |p, m| Traffic::routed(canary(v1, v2, p, m));
    let cert = |kind| RouteTls::cert_manager(Issuer::new(kind, "letsencrypt"));
    vec![
        (
            "rolling_gateway",
            render_with(&revs, Traffic::ByReadyInstances, &options(gateway())),
        ),
        (
            "canary_gateway",
            render_with(&revs, routed(25, None), &options(gateway())),
        ),
        (
            "canary_istio",
            render_with(&revs, routed(25, None), &options(istio())),
        ),
        (
            "mirror_10_gateway",
            render_with(&revs, routed(10, Some(10)), &options(gateway())),
        ),
        (
            "mirror_10_istio",
            render_with(&revs, routed(10, Some(10)), &options(istio())),
        ),
        (
            "preview_gateway",
            render_with(&revs, Traffic::routed(preview.clone()), &options(gateway())),
        ),
        (
            "preview_istio",
            render_with(&revs, Traffic::routed(preview.clone()), &options(istio())),
        ),
        (
            "timeouts_gateway",
            render_with(
                &revs,
                routed(10, Some(20)),
                &options(gateway()).route_timeouts(timeouts),
            ),
        ),
        (
            "timeouts_istio",
            render_with(
                &revs,
                routed(10, Some(20)),
                &options(istio()).route_timeouts(timeouts),
            ),
        ),
        (
            "tls_gateway_reference_grant",
            render_with(
                &revs,
                routed(25, None),
                &options(gateway()).tls(cert(IssuerKind::Issuer)),
            ),
        ),
        (
            "tls_ingress",
            render_with(
                &revs,
                Traffic::routed(preview),
                &options(Router::ingress("apps.example.com", "ingress-nginx").class("nginx"))
                    .tls(cert(IssuerKind::ClusterIssuer)),
            ),
        ),
        (
            "mesh_istio",
            render_with(
                &revs,
                routed(25, None),
                &options(istio()).mesh_policy(mesh.clone()),
            ),
        ),
        (
            "mesh_gateway",
            render_with(
                &revs,
                routed(25, None),
                &options(gateway()).mesh_policy(mesh),
            ),
        ),
        (
            "policy_istio",
            render_with(
                &policy,
                Traffic::routed(canary(&policy.0, &policy.1, 60, None)),
                &options(istio()),
            ),
        ),
        (
            "policy_gateway",
            render_with(
                &policy,
                Traffic::routed(canary(&policy.0, &policy.1, 60, None)),
                &options(gateway()),
            ),
        ),
    ]
}

fn object(plan: &Plan, kind: &str, name: &str) -> Value {
    plan.get(kind, name)
        .unwrap_or_else(|| panic!("no {kind}/{name}"))
        .to_json()
}

/// The messages of the violations of `object`.
fn messages(object: &Value) -> Vec<String> {
    violations(object).into_iter().map(|v| v.message).collect()
}

// ---- tests ---------------------------------------------------------------------------------

#[test]
fn the_rule_table_is_whole() {
    let mut per_crd = BTreeMap::<&str, usize>::new();
    for rule in RULES {
        assert!(
            !rule.rule.contains("oldSelf"),
            "a transition rule: {}",
            rule.rule
        );
        *per_crd.entry(rule.crd.kind).or_default() += 1;
    }
    assert_eq!(
        per_crd,
        BTreeMap::from([
            ("HTTPRoute", 41),
            ("VirtualService", 2),
            ("DestinationRule", 2),
            ("PeerAuthentication", 4),
            ("AuthorizationPolicy", 5),
        ])
    );
    // Every rule parses, every pattern compiles; paths are well formed.
    CHECKER.with(|c| assert_eq!(c.programs.len(), RULES.len()));
    for path in RULES
        .iter()
        .map(|r| r.path)
        .chain(SHAPES.iter().map(|s| s.path))
    {
        assert!(path.is_empty() || !segments(path).is_empty(), "{path}");
    }
}

#[test]
fn every_rendered_object_passes_every_rule() {
    let mut seen = BTreeMap::<String, usize>::new();
    let mut failures = Vec::new();
    for (name, plan) in scenarios() {
        for object in &plan.objects {
            *seen.entry(object.kind().to_string()).or_default() += 1;
            for v in violations(&object.to_json()) {
                failures.push(format!("{name}: {} at {}: {}", v.object, v.at, v.message));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "rules broken by rendered objects:\n{}",
        failures.join("\n")
    );
    for kind in [
        "HTTPRoute",
        "ReferenceGrant",
        "VirtualService",
        "DestinationRule",
        "PeerAuthentication",
        "AuthorizationPolicy",
        "Certificate",
        "Ingress",
    ] {
        assert!(
            seen.contains_key(kind),
            "no scenario renders a {kind}: {seen:?}"
        );
    }
    // Each rule was evaluated on some rendered node, but the listed ones.
    let counts = CHECKER.with(|c| c.evaluated.borrow().clone());
    let mut skipped = Vec::new();
    for (rule, n) in RULES.iter().zip(&counts) {
        let listed = NOT_REACHED.contains(&(rule.crd.kind, rule.path));
        if *n == 0 {
            skipped.push(format!("{} {}: {}", rule.crd.kind, rule.path, rule.message));
        }
        assert_eq!(
            *n == 0,
            listed,
            "{} {} evaluated {n} times",
            rule.crd.kind,
            rule.path
        );
    }
    let evaluated = counts.iter().filter(|n| **n > 0).count();
    println!(
        "{evaluated} CEL rules evaluated ({} evaluations), {} not reached by rendered objects:\n  {}",
        counts.iter().sum::<usize>(),
        skipped.len(),
        skipped.join("\n  ")
    );
    assert_eq!(evaluated + skipped.len(), RULES.len());
}

#[test]
fn a_backend_request_timeout_longer_than_the_request_timeout_breaks_its_rule() {
    let plan = &scenarios()[7].1;
    let mut route = object(plan, "HTTPRoute", "web");
    assert!(messages(&route).is_empty());
    route["spec"]["rules"][1]["timeouts"] = json!({"request": "1s", "backendRequest": "1s1ms"});
    assert_eq!(
        messages(&route),
        ["backendRequest timeout cannot be longer than request timeout"]
    );
    // A request timeout of 0s disables the limit: any backendRequest holds.
    route["spec"]["rules"][1]["timeouts"] = json!({"request": "0s", "backendRequest": "1h"});
    assert!(messages(&route).is_empty());
    // A duration outside the pattern breaks the structural constraint, not the rule.
    route["spec"]["rules"][1]["timeouts"] = json!({"request": "1.5s"});
    let v = violations(&route);
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(v[0].at, ".spec.rules[1].timeouts.request");
    assert!(v[0].message.starts_with("Pattern"), "{v:?}");
}

#[test]
fn a_mirror_with_percent_and_fraction_breaks_its_rule() {
    let plan = render_with(
        &revisions(),
        Traffic::routed(canary(&revisions().0, &revisions().1, 10, Some(10))),
        &options(gateway()),
    );
    let mut route = object(&plan, "HTTPRoute", "web");
    let mirror = &mut route["spec"]["rules"][1]["filters"][0]["requestMirror"];
    assert_eq!(mirror["percent"], 10);
    mirror["fraction"] = json!({"numerator": 1, "denominator": 10});
    assert_eq!(
        messages(&route),
        ["Only one of percent or fraction may be specified in HTTPRequestMirrorFilter"]
    );
    // fraction alone, numerator over denominator (denominator defaulted to 100).
    let mirror = &mut route["spec"]["rules"][1]["filters"][0]["requestMirror"];
    mirror.as_object_mut().unwrap().remove("percent");
    mirror["fraction"] = json!({"numerator": 101});
    assert_eq!(
        messages(&route),
        ["numerator must be less than or equal to denominator"]
    );
    // A requestMirror on a filter of another type.
    let filter = &mut route["spec"]["rules"][1]["filters"][0];
    filter["requestMirror"]["fraction"] = json!({"numerator": 1});
    filter["type"] = json!("RequestHeaderModifier");
    assert_eq!(
        messages(&route),
        [
            "filter.requestHeaderModifier must be specified for RequestHeaderModifier filter.type",
            "filter.requestMirror must be nil if the filter.type is not RequestMirror",
        ]
    );
    // percent over 100 is the schema's maximum.
    let mut route = object(&plan, "HTTPRoute", "web");
    route["spec"]["rules"][1]["filters"][0]["requestMirror"]["percent"] = json!(101);
    assert_eq!(messages(&route), ["Maximum(100)"]);
}

#[test]
fn a_path_not_starting_with_a_slash_breaks_its_rule() {
    let plan = &scenarios()[1].1;
    let mut route = object(plan, "HTTPRoute", "web");
    route["spec"]["rules"][0]["matches"][0]["path"] = json!({"type": "PathPrefix", "value": "api"});
    assert_eq!(
        messages(&route),
        [
            "value must be an absolute path and start with '/' when type one of ['Exact', 'PathPrefix']"
        ]
    );
    route["spec"]["rules"][0]["matches"][0]["path"] = json!({"value": "/a//b#c"});
    assert_eq!(
        messages(&route),
        [
            "must not contain '//' when type one of ['Exact', 'PathPrefix']",
            "must not contain '#' when type one of ['Exact', 'PathPrefix']",
            "must only contain valid characters (matching ^(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|[%][0-9a-fA-F]{2})+$) for types ['Exact', 'PathPrefix']",
        ]
    );
    route["spec"]["rules"][0]["matches"][0]["path"] =
        json!({"type": "Exact", "value": format!("/{}", "a".repeat(1024))});
    assert_eq!(messages(&route), ["MaxLength(1024)"]);
}

#[test]
fn parent_refs_backend_refs_and_istio_objects_break_their_rules() {
    let plan = &scenarios()[1].1;
    let route = object(plan, "HTTPRoute", "web");
    // The same Gateway twice, once without a listener: `__namespace__` is compared.
    let mut twice = route.clone();
    let parent = twice["spec"]["parentRefs"][0].clone();
    let mut other = parent.clone();
    other.as_object_mut().unwrap().remove("sectionName");
    twice["spec"]["parentRefs"] = json!([parent, other]);
    assert_eq!(
        messages(&twice),
        [
            "sectionName must be specified when parentRefs includes 2 or more references to the same parent"
        ]
    );
    // In another namespace it is another parent.
    twice["spec"]["parentRefs"][1]["namespace"] = json!("other");
    assert!(messages(&twice).is_empty());
    // The same listener twice.
    twice["spec"]["parentRefs"][1] = twice["spec"]["parentRefs"][0].clone();
    assert_eq!(
        messages(&twice),
        [
            "sectionName must be unique when parentRefs includes 2 or more references to the same parent"
        ]
    );
    // A Service backend without a port (group and kind defaulted to "" and Service).
    let mut portless = route.clone();
    portless["spec"]["rules"][1]["backendRefs"][0]
        .as_object_mut()
        .unwrap()
        .remove("port");
    assert_eq!(
        messages(&portless),
        ["Must have port for Service reference"]
    );
    // Structural: weight, hostname pattern, backendRefs maxItems.
    let mut bad = route.clone();
    bad["spec"]["rules"][1]["backendRefs"][0]["weight"] = json!(1_000_001);
    bad["spec"]["hostnames"] = json!(["Shop.example.com"]);
    let backend = bad["spec"]["rules"][0]["backendRefs"][0].clone();
    bad["spec"]["rules"][0]["backendRefs"] = json!(vec![backend; 17]);
    let v: Vec<(String, String)> = violations(&bad)
        .into_iter()
        .map(|v| (v.at, v.message))
        .collect();
    assert_eq!(
        v,
        [
            (".spec.hostnames[0]".into(), r#"Pattern("^(\\*\\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")"#.into()),
            (".spec.rules[0].backendRefs".into(), "MaxItems(16)".into()),
            (".spec.rules[1].backendRefs[0].weight".into(), "Maximum(1000000)".into()),
        ]
    );

    // Istio: a timeout under 1ms, selector and targetRefs, a wildcard label.
    let plan = &scenarios()[8].1;
    let mut vs = object(plan, "VirtualService", "web");
    vs["spec"]["http"][0]["timeout"] = json!("0s");
    assert_eq!(messages(&vs), ["must be a valid duration greater than 1ms"]);
    let plan = &scenarios()[11].1;
    let mut policy = object(plan, "AuthorizationPolicy", "web");
    assert!(messages(&policy).is_empty());
    policy["spec"]["targetRefs"] = json!([{"kind": "Service", "group": "", "name": "web"}]);
    policy["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] = json!("web*");
    assert_eq!(
        messages(&policy),
        [
            "only one of targetRefs or selector can be set",
            "wildcard not allowed in label value match",
        ]
    );
    let plan = &scenarios()[9].1;
    let mut grant = plan
        .objects
        .iter()
        .find(|o| o.kind() == "ReferenceGrant")
        .expect("a ReferenceGrant for the Gateway in another namespace")
        .to_json();
    assert!(messages(&grant).is_empty(), "{grant}");
    grant["spec"]["from"][0]["namespace"] = json!("Gateway");
    assert_eq!(
        messages(&grant),
        [r#"Pattern("^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")"#]
    );
    let plan = &scenarios()[11].1;
    let mut peer = object(plan, "PeerAuthentication", "web");
    peer["spec"]["selector"] = json!({"matchLabels": {"": "web"}});
    peer["spec"]["portLevelMtls"] = json!({"8080": {"mode": "DISABLE"}});
    assert_eq!(messages(&peer), ["key must not be empty"]);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
    #[test]
    fn every_rule_holds_for_any_timeouts_weights_and_mirror(
        request_ms in 1u64..(99_999 * 3_600_000),
        backend_permille in proptest::option::of(1u64..=1000),
        weight in 0u32..=100,
        mirror in proptest::option::of(0u32..=100),
        istio_router in proptest::bool::ANY,
    ) {
        let request = Duration::from_millis(request_ms);
        let mut timeouts = RouteTimeouts::new(request).unwrap();
        if let Some(p) = backend_permille {
            let backend = Duration::from_millis((request_ms * p / 1000).max(1));
            timeouts = timeouts.backend_request(backend).unwrap();
        }
        let revs = revisions();
        let router = if istio_router { istio() } else { gateway() };
        let plan = render_with(
            &revs,
            Traffic::routed(canary(&revs.0, &revs.1, weight, mirror)),
            &options(router).route_timeouts(timeouts),
        );
        let v = plan_violations(&plan);
        proptest::prop_assert!(v.is_empty(), "{v:?}");
    }
}
