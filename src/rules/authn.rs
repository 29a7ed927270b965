//! APG003 unauthenticated-route for Gateway API HTTPRoutes: every backend must be protected,
//! either by being the gateway Service of an ApiSecurityPolicy or by an Envoy Gateway
//! SecurityPolicy with an authentication method targeting the route or one of its parent
//! Gateways (or by the route being marked `apiguard.dev/public`). The backends are also checked
//! for APG004/APG010 (see [`super::bypass`]). Ingress authentication is read from the
//! ingress-nginx annotations in [`super::ingress_nginx`].

use super::bypass::{RouteAuth, check_backend};
use super::json::Reader;
use super::{ClusterView, Finding, ObjectRef};
use serde_json::Value;

/// The SecurityPolicy fields that authenticate requests.
pub const SECURITY_POLICY_AUTH: &[&str] = &["jwt", "apiKeyAuth", "basicAuth", "oidc", "extAuth"];

/// Whether an Envoy Gateway SecurityPolicy authenticates requests.
pub fn security_policy_authenticates(sp: &Value) -> bool {
    let Some(spec) = sp.get("spec").and_then(Value::as_object) else {
        return false;
    };
    SECURITY_POLICY_AUTH
        .iter()
        .any(|k| spec.get(*k).is_some_and(|v| !v.is_null()))
}

/// Whether a SecurityPolicy targets the object `kind`/`name` (via `targetRef` or `targetRefs`).
pub fn security_policy_targets(sp: &Value, kind: &str, name: &str) -> bool {
    let Some(spec) = sp.get("spec") else {
        return false;
    };
    let matches = |t: &Value| {
        t.get("kind").and_then(Value::as_str) == Some(kind)
            && t.get("name").and_then(Value::as_str) == Some(name)
    };
    spec.get("targetRef").is_some_and(matches)
        || spec
            .get("targetRefs")
            .and_then(Value::as_array)
            .is_some_and(|refs| refs.iter().any(matches))
}

fn authenticated_by_security_policy(
    view: &dyn ClusterView,
    namespace: &str,
    kind: &str,
    name: &str,
) -> bool {
    view.security_policies_in(namespace)
        .iter()
        .any(|sp| security_policy_targets(sp, kind, name) && security_policy_authenticates(sp))
}

/// `gateway.networking.k8s.io/v1` HTTPRoute.
pub fn review_http_route(
    object: &Value,
    obj: &ObjectRef,
    view: &dyn ClusterView,
    public_route: bool,
    out: &mut Vec<Finding>,
) {
    let ns = obj.namespace_or_default().to_string();
    let mut found = Vec::new();
    let mut parents: Vec<(String, String)> = Vec::new();
    let mut backends: Vec<(String, String, String)> = Vec::new();
    {
        let mut r = Reader::new(obj, out);
        let Some(spec) = r.object(object, "spec", "spec") else {
            return;
        };
        for (i, p) in r
            .array(spec, "parentRefs", "spec.parentRefs")
            .iter()
            .enumerate()
        {
            let base = format!("spec.parentRefs[{i}]");
            let kind = r
                .str(p, "kind", &format!("{base}.kind"))
                .unwrap_or("Gateway");
            let Some(name) = r.str(p, "name", &format!("{base}.name")) else {
                continue;
            };
            let pns = r
                .str(p, "namespace", &format!("{base}.namespace"))
                .unwrap_or(&ns);
            if kind == "Gateway" {
                parents.push((pns.to_string(), name.to_string()));
            }
        }
        for (i, rule) in r.array(spec, "rules", "spec.rules").iter().enumerate() {
            for (j, b) in r
                .array(rule, "backendRefs", &format!("spec.rules[{i}].backendRefs"))
                .iter()
                .enumerate()
            {
                let base = format!("spec.rules[{i}].backendRefs[{j}]");
                let kind = r
                    .str(b, "kind", &format!("{base}.kind"))
                    .unwrap_or("Service");
                let group = r.str(b, "group", &format!("{base}.group")).unwrap_or("");
                let Some(name) = r.str(b, "name", &format!("{base}.name")) else {
                    continue;
                };
                let bns = r
                    .str(b, "namespace", &format!("{base}.namespace"))
                    .unwrap_or(&ns);
                if kind == "Service" && group.is_empty() {
                    backends.push((format!("{base}.name"), bns.to_string(), name.to_string()));
                }
            }
        }
    }
    let authenticated = authenticated_by_security_policy(view, &ns, "HTTPRoute", &obj.name)
        || parents
            .iter()
            .any(|(pns, name)| authenticated_by_security_policy(view, pns, "Gateway", name));
    let route = RouteAuth {
        authenticated,
        public: public_route,
    };
    for (field, bns, service) in &backends {
        check_backend(obj, view, bns, service, field, route, &mut found);
    }
    out.extend(found);
}
