//! APG004 gateway-bypass and APG010 exposure-mismatch: traffic for a protected API must go
//! client -> gateway Service (`<policy>-apiguard`) -> target. A route or an externally
//! reachable Service that reaches the target (by name, or by selecting its pods) skips the
//! policy; one that exposes the gateway of an Internal/Private API exposes what must stay inside.

use super::json::Reader;
use super::{ClusterView, Finding, ObjectRef, RuleId};
use crate::api::ApiSecurityPolicy;
use crate::api::gateway_name;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

/// What a backend Service is, relative to the policies of its namespace.
pub(crate) enum Backend {
    /// The gateway Service of this policy (the right way in).
    Gateway(Arc<ApiSecurityPolicy>),
    /// This policy's target Service, or a Service selecting its pods (a bypass).
    Target(Arc<ApiSecurityPolicy>, &'static str),
    /// Not related to any policy.
    Unprotected,
}

fn policy_name(p: &ApiSecurityPolicy) -> &str {
    p.metadata.name.as_deref().unwrap_or("")
}

/// Whether two label selectors can select the same pods: both non-empty and one contained
/// in the other (every pod the narrower one selects is also selected by the wider one).
pub(crate) fn selectors_overlap(
    a: &BTreeMap<String, String>,
    b: &BTreeMap<String, String>,
) -> bool {
    let subset = |x: &BTreeMap<String, String>, y: &BTreeMap<String, String>| {
        x.iter().all(|(k, v)| y.get(k) == Some(v))
    };
    !a.is_empty() && !b.is_empty() && (subset(a, b) || subset(b, a))
}

fn target_selector(
    view: &dyn ClusterView,
    namespace: &str,
    p: &ApiSecurityPolicy,
) -> Option<BTreeMap<String, String>> {
    view.service(namespace, &p.spec.target.service)?
        .spec
        .as_ref()?
        .selector
        .clone()
}

/// Classifies the Service `name` in `namespace` (with `selector` when the Service's spec is
/// known).
pub(crate) fn classify(
    view: &dyn ClusterView,
    namespace: &str,
    name: &str,
    selector: Option<&BTreeMap<String, String>>,
) -> Backend {
    let policies = view.policies_in(namespace);
    for p in &policies {
        if name == gateway_name(policy_name(p)) {
            return Backend::Gateway(p.clone());
        }
    }
    for p in &policies {
        if name == p.spec.target.service {
            return Backend::Target(p.clone(), "is the target Service");
        }
    }
    let selector = match selector {
        Some(s) => Some(s.clone()),
        None => view
            .service(namespace, name)
            .and_then(|s| s.spec.as_ref()?.selector.clone()),
    };
    if let Some(sel) = selector {
        for p in &policies {
            if let Some(target) = target_selector(view, namespace, p)
                && selectors_overlap(&sel, &target)
            {
                return Backend::Target(p.clone(), "selects the pods of the target Service");
            }
        }
    }
    Backend::Unprotected
}

/// What protects a route as a whole, independent of its backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RouteAuth {
    /// The route itself authenticates (ingress-nginx auth annotations, an Envoy Gateway
    /// SecurityPolicy with an authentication method).
    pub authenticated: bool,
    /// The route is marked `apiguard.dev/public` with a reason.
    pub public: bool,
}

/// What a route backend points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BackendRef<'a> {
    /// A core Service.
    Service(&'a str),
    /// A multi-cluster `ServiceImport` (multicluster.x-k8s.io, net.gke.io): the Services of that name
    /// exported from every cluster of the set, this one included.
    ServiceImport(&'a str),
    /// Anything else (an Envoy Gateway `Backend`, a storage bucket resource, ...): no policy
    /// can protect it, so only the route's own authentication does.
    Other { kind: &'a str, name: &'a str },
}

impl<'a> BackendRef<'a> {
    /// The backend an object reference (`group`, `kind`, `name`) points at. ServiceImports of
    /// the Multi-Cluster Services API (`multicluster.x-k8s.io`) and of GKE (`net.gke.io`) are
    /// the Services of that name.
    pub(crate) fn of(group: &str, kind: &'a str, name: &'a str) -> BackendRef<'a> {
        match (group, kind) {
            ("", "Service") => BackendRef::Service(name),
            ("multicluster.x-k8s.io" | "net.gke.io", "ServiceImport") => {
                BackendRef::ServiceImport(name)
            }
            (_, kind) => BackendRef::Other { kind, name },
        }
    }

    fn describe(&self, namespace: &str) -> String {
        match self {
            BackendRef::Service(name) => format!("Service {namespace}/{name}"),
            BackendRef::ServiceImport(name) => format!("ServiceImport {namespace}/{name}"),
            BackendRef::Other { kind, name } => format!("{kind} {namespace}/{name}"),
        }
    }

    fn classify(&self, view: &dyn ClusterView, namespace: &str) -> Backend {
        match self {
            BackendRef::Service(name) | BackendRef::ServiceImport(name) => {
                classify(view, namespace, name, None)
            }
            BackendRef::Other { .. } => Backend::Unprotected,
        }
    }
}

/// Checks one route backend (Ingress, HTTPRoute or GRPCRoute): APG010 for the gateway of an
/// Internal/Private API, APG004 for a bypass, and APG003 for an unprotected backend when the
/// route has no authentication of its own and is not marked public.
pub(crate) fn check_backend(
    obj: &ObjectRef,
    view: &dyn ClusterView,
    namespace: &str,
    backend: BackendRef<'_>,
    field: &str,
    route: RouteAuth,
    out: &mut Vec<Finding>,
) {
    let what = backend.describe(namespace);
    match backend.classify(view, namespace) {
        Backend::Gateway(p) => {
            if !p.spec.exposure.is_external() {
                out.push(Finding::new(
                    RuleId::Apg010,
                    obj,
                    field,
                    format!(
                        "routes outside traffic to {}, the gateway of ApiSecurityPolicy {namespace}/{} whose exposure is {:?}",
                        match backend {
                            BackendRef::Service(name) => name.to_string(),
                            _ => what.clone(),
                        },
                        policy_name(&p),
                        p.spec.exposure
                    ),
                    "remove this route, or change the policy's spec.exposure to Public or Partner and list its hosts",
                ));
            }
        }
        Backend::Target(p, how) => out.push(Finding::new(
            RuleId::Apg004,
            obj,
            field,
            format!(
                "sends traffic to {what}, which {how} of ApiSecurityPolicy {}, bypassing its gateway (no authentication, authorization, CORS or rate limits are applied)",
                policy_name(&p)
            ),
            format!(
                "point the backend at the gateway Service {}",
                gateway_name(policy_name(&p))
            ),
        )),
        Backend::Unprotected => {
            if !route.authenticated && !route.public {
                out.push(Finding::new(
                    RuleId::Apg003,
                    obj,
                    field,
                    format!(
                        "publishes {what}, which no ApiSecurityPolicy protects, and the route has no authentication"
                    ),
                    "protect the Service with an ApiSecurityPolicy and route to its <policy>-apiguard gateway Service, add authentication to the route, or mark a deliberately public route with the annotation apiguard.dev/public: \"<reason>\"",
                ));
            }
        }
    }
}

fn is_external_type(t: Option<&str>) -> bool {
    matches!(t, Some("LoadBalancer" | "NodePort"))
}

/// A `v1` Service of type LoadBalancer or NodePort.
pub(crate) fn review_service(
    object: &Value,
    obj: &ObjectRef,
    view: &dyn ClusterView,
    out: &mut Vec<Finding>,
) {
    let mut r = Reader::new(obj, out);
    let Some(spec) = r.object(object, "spec", "spec") else {
        return;
    };
    let service_type = r.str(spec, "type", "spec.type");
    let mut selector = BTreeMap::new();
    if let Some(sel) = r
        .object(spec, "selector", "spec.selector")
        .and_then(Value::as_object)
    {
        for (k, v) in sel {
            if let Some(v) = r.as_str(v, &format!("spec.selector[{k}]")) {
                selector.insert(k.clone(), v.to_string());
            }
        }
    }
    if !is_external_type(service_type) {
        return;
    }
    let ty = service_type.unwrap_or("");
    let ns = obj.namespace_or_default();
    match classify(view, ns, &obj.name, Some(&selector)) {
        Backend::Gateway(p) => {
            if !p.spec.exposure.is_external() {
                out.push(Finding::new(
                    RuleId::Apg010,
                    obj,
                    "spec.type",
                    format!(
                        "is {ty}, exposing the gateway of ApiSecurityPolicy {ns}/{} whose exposure is {:?} outside the cluster",
                        policy_name(&p),
                        p.spec.exposure
                    ),
                    "use type ClusterIP, or change the policy's spec.exposure to Public or Partner",
                ));
            }
        }
        Backend::Target(p, how) => {
            let field = if obj.name == p.spec.target.service {
                "spec.type"
            } else {
                "spec.selector"
            };
            out.push(Finding::new(
                RuleId::Apg004,
                obj,
                field,
                format!(
                    "this {ty} Service {how} of ApiSecurityPolicy {}, so clients reach the API directly, bypassing its gateway",
                    policy_name(&p)
                ),
                format!(
                    "use type ClusterIP (the gateway Service {} is the way in), or remove the Service",
                    gateway_name(policy_name(&p))
                ),
            ));
        }
        Backend::Unprotected => {}
    }
}

/// APG004/APG010 seen from the policy: its target Service, or its own gateway Service when the
/// API is Internal/Private, is exposed outside the cluster.
pub(crate) fn review_policy(
    policy: &ApiSecurityPolicy,
    obj: &ObjectRef,
    view: &dyn ClusterView,
    out: &mut Vec<Finding>,
) {
    let ns = obj.namespace_or_default();
    let target = &policy.spec.target.service;
    if let Some(svc) = view.service(ns, target) {
        let ty = svc.spec.as_ref().and_then(|s| s.type_.as_deref());
        if is_external_type(ty) {
            out.push(Finding::new(
                RuleId::Apg004,
                obj,
                "spec.target.service",
                format!(
                    "names Service {ns}/{target}, which is of type {}, so clients reach the API directly, bypassing the gateway",
                    ty.unwrap_or("")
                ),
                format!(
                    "change Service {target} to type ClusterIP; expose the API through the gateway Service {}",
                    gateway_name(&obj.name)
                ),
            ));
        }
    }
    if !policy.spec.exposure.is_external() {
        let gw = gateway_name(&obj.name);
        if let Some(svc) = view.service(ns, &gw) {
            let ty = svc.spec.as_ref().and_then(|s| s.type_.as_deref());
            if is_external_type(ty) {
                out.push(Finding::new(
                    RuleId::Apg010,
                    obj,
                    "spec.exposure",
                    format!(
                        "is {:?}, but its gateway Service {ns}/{gw} is of type {}",
                        policy.spec.exposure,
                        ty.unwrap_or("")
                    ),
                    format!("make Service {gw} type ClusterIP, or change spec.exposure to Public or Partner"),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn overlap() {
        let t = sel(&[("app", "payments")]);
        assert!(selectors_overlap(&sel(&[("app", "payments")]), &t));
        assert!(selectors_overlap(
            &sel(&[("app", "payments"), ("tier", "api")]),
            &t
        ));
        assert!(!selectors_overlap(&sel(&[("app", "web")]), &t));
        assert!(!selectors_overlap(&sel(&[("tier", "api")]), &t));
        assert!(!selectors_overlap(&sel(&[]), &t));
    }
}
