//! APG003 unauthenticated-route for Gateway API HTTPRoutes and GRPCRoutes: every rule's
//! backends must be protected, either by being the gateway Service of an ApiSecurityPolicy or
//! by authentication in front of that rule (or by the route being marked `apiguard.dev/public`).
//! The backends are also checked for APG004/APG010 (see [`super::bypass`]). Ingress
//! authentication is read from the ingress-nginx annotations in [`super::ingress_nginx`].
//!
//! What authenticates a rule, following Envoy Gateway's policy attachment:
//! - a SecurityPolicy with `jwt` (not `optional: true`), `apiKeyAuth`, `basicAuth`, `oidc` or
//!   `extAuth`. The most specific SecurityPolicy wins and replaces the others (no merge): one
//!   targeting the rule (`sectionName` = the rule's `name`), else one targeting the whole route,
//!   else, for each parent Gateway, one targeting the route's listener (`sectionName`), else
//!   one targeting the whole Gateway. So a CORS-only policy on a route switches the gateway's
//!   authentication off for that route.
//! - a ClientTrafficPolicy on the parent Gateway (or the listener) that requires client
//!   certificates (`tls.clientValidation`, not `optional: true`): mTLS, like ingress-nginx's
//!   `auth-tls-verify-client: "on"`.
//!
//! A rule is authenticated only when it is through every parent Gateway it is attached to.

use super::bypass::{BackendRef, RouteAuth, check_backend};
use super::json::Reader;
use super::{ClusterView, Finding, ObjectRef, Related};
use serde_json::Value;
use std::sync::Arc;

/// The SecurityPolicy fields that authenticate requests.
pub(crate) const SECURITY_POLICY_AUTH: &[&str] =
    &["jwt", "apiKeyAuth", "basicAuth", "oidc", "extAuth"];

const GATEWAY_API_GROUP: &str = "gateway.networking.k8s.io";

/// Whether an Envoy Gateway SecurityPolicy authenticates requests: an authentication method
/// is set, and a JWT that is `optional: true` (requests without a token pass) does not count.
pub(crate) fn security_policy_authenticates(sp: &Value) -> bool {
    let Some(spec) = sp.get("spec").and_then(Value::as_object) else {
        return false;
    };
    SECURITY_POLICY_AUTH.iter().any(|k| match spec.get(*k) {
        None | Some(Value::Null) => false,
        Some(jwt) if *k == "jwt" => jwt.get("optional").and_then(Value::as_bool) != Some(true),
        Some(_) => true,
    })
}

/// Whether an Envoy Gateway ClientTrafficPolicy requires client certificates.
pub(crate) fn client_traffic_policy_requires_client_certificates(ctp: &Value) -> bool {
    ctp.pointer("/spec/tls/clientValidation")
        .and_then(Value::as_object)
        .is_some_and(|v| v.get("optional").and_then(Value::as_bool) != Some(true))
}

/// How a policy attaches to an object: to all of it, or to one section of it (a route rule's
/// or a Gateway listener's name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Attachment {
    Whole,
    Section(String),
}

/// The attachments of a policy (`targetRef`, `targetRefs[]`, `targetSelectors[]`) to the
/// object `kind`/`name` with `labels`.
pub(crate) fn attachments(
    policy: &Value,
    kind: &str,
    name: &str,
    labels: &[(&str, &str)],
) -> Vec<Attachment> {
    let Some(spec) = policy.get("spec") else {
        return Vec::new();
    };
    let group_ok = |t: &Value| {
        t.get("group")
            .and_then(Value::as_str)
            .is_none_or(|g| g == GATEWAY_API_GROUP)
    };
    let section = |t: &Value| match t.get("sectionName").and_then(Value::as_str) {
        Some(s) if !s.is_empty() => Attachment::Section(s.to_string()),
        _ => Attachment::Whole,
    };
    let by_ref = |t: &Value| {
        (t.get("kind").and_then(Value::as_str) == Some(kind)
            && t.get("name").and_then(Value::as_str) == Some(name)
            && group_ok(t))
        .then(|| section(t))
    };
    let by_selector = |t: &Value| {
        let wanted = t.get("matchLabels").and_then(Value::as_object)?;
        (t.get("kind").and_then(Value::as_str) == Some(kind)
            && group_ok(t)
            && !wanted.is_empty()
            && wanted.iter().all(|(k, v)| {
                labels
                    .iter()
                    .any(|(lk, lv)| lk == k && v.as_str() == Some(lv))
            }))
        .then_some(Attachment::Whole)
    };
    let list = |key: &str| {
        spec.get(key)
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
    };
    spec.get("targetRef")
        .and_then(by_ref)
        .into_iter()
        .chain(list("targetRefs").iter().filter_map(by_ref))
        .chain(list("targetSelectors").iter().filter_map(by_selector))
        .collect()
}

/// The policies of `kind` in `namespace` attached to the object, with how.
fn attached(
    view: &dyn ClusterView,
    kind: Related,
    namespace: &str,
    target_kind: &str,
    target_name: &str,
    labels: &[(&str, &str)],
) -> Vec<(Arc<Value>, Attachment)> {
    view.related_in(kind, namespace)
        .into_iter()
        .flat_map(|p| {
            attachments(&p, target_kind, target_name, labels)
                .into_iter()
                .map(move |a| (p.clone(), a))
        })
        .collect()
}

/// The most specific of `policies` for `section` (`None`: the whole object): those attached to
/// that section if any, else those attached to the whole object. Several at the same level
/// conflict (Envoy Gateway keeps the oldest), so the verdict must hold for all of them.
fn most_specific<'p>(
    policies: &'p [(Arc<Value>, Attachment)],
    section: Option<&str>,
) -> Vec<&'p Value> {
    let of = |want: &Attachment| -> Vec<&'p Value> {
        policies
            .iter()
            .filter(|(_, a)| a == want)
            .map(|(p, _)| p.as_ref())
            .collect()
    };
    if let Some(s) = section {
        let specific = of(&Attachment::Section(s.to_string()));
        if !specific.is_empty() {
            return specific;
        }
    }
    of(&Attachment::Whole)
}

/// Whether every one of `policies` satisfies `check` (and there is one).
fn all_of(policies: &[&Value], check: fn(&Value) -> bool) -> bool {
    !policies.is_empty() && policies.iter().all(|p| check(p))
}

/// A parent Gateway of a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Parent {
    pub namespace: String,
    pub name: String,
    /// The listener the route attaches to (`None`: every listener of the Gateway).
    pub section: Option<String>,
}

/// Whether the policies of one kind attached to a Gateway satisfy `check` for the listeners a
/// route uses. For a route on every listener, listener-specific policies override the
/// Gateway-wide one on their listeners, so all of them must satisfy it, and since the
/// Gateway's other listeners are unknown here, a Gateway-wide one must exist and satisfy it.
fn gateway_satisfies(
    policies: &[(Arc<Value>, Attachment)],
    parent: &Parent,
    check: fn(&Value) -> bool,
) -> bool {
    match &parent.section {
        Some(section) => all_of(&most_specific(policies, Some(section)), check),
        None => {
            all_of(&most_specific(policies, None), check) && policies.iter().all(|(p, _)| check(p))
        }
    }
}

/// The route as the attachment rules see it.
pub(crate) struct RouteTarget<'a> {
    pub namespace: &'a str,
    pub kind: &'a str,
    pub name: &'a str,
    pub labels: &'a [(&'a str, &'a str)],
    pub parents: &'a [Parent],
}

/// The policies attached to a route and to each of its parent Gateways, looked up once per
/// route (every rule is then decided from them).
pub(crate) struct RouteAttachments {
    route: Vec<(Arc<Value>, Attachment)>,
    parents: Vec<ParentAttachments>,
}

struct ParentAttachments {
    /// The Gateway requires client certificates on the listeners the route uses.
    client_certificates: bool,
    /// The SecurityPolicies attached to the Gateway, and the parent they are judged for.
    security_policies: Vec<(Arc<Value>, Attachment)>,
    parent: Parent,
}

impl RouteAttachments {
    pub(crate) fn of(view: &dyn ClusterView, route: &RouteTarget<'_>) -> Self {
        let on_gateway = |kind: Related, parent: &Parent| {
            attached(view, kind, &parent.namespace, "Gateway", &parent.name, &[])
        };
        RouteAttachments {
            route: attached(
                view,
                Related::SecurityPolicy,
                route.namespace,
                route.kind,
                route.name,
                route.labels,
            ),
            parents: route
                .parents
                .iter()
                .map(|parent| ParentAttachments {
                    client_certificates: gateway_satisfies(
                        &on_gateway(Related::ClientTrafficPolicy, parent),
                        parent,
                        client_traffic_policy_requires_client_certificates,
                    ),
                    security_policies: on_gateway(Related::SecurityPolicy, parent),
                    parent: parent.clone(),
                })
                .collect(),
        }
    }

    /// Whether requests to the route rule named `rule` (`None`: a rule without a name) are
    /// authenticated through every parent Gateway.
    pub(crate) fn rule_authenticated(&self, rule: Option<&str>) -> bool {
        let route_level = most_specific(&self.route, rule);
        if self.parents.is_empty() {
            return all_of(&route_level, security_policy_authenticates);
        }
        self.parents.iter().all(|p| {
            p.client_certificates
                || if route_level.is_empty() {
                    gateway_satisfies(
                        &p.security_policies,
                        &p.parent,
                        security_policy_authenticates,
                    )
                } else {
                    all_of(&route_level, security_policy_authenticates)
                }
        })
    }
}

/// One backend of a route rule, with its field path.
struct RouteBackend<'v> {
    field: String,
    namespace: String,
    kind: &'v str,
    group: &'v str,
    name: &'v str,
}

impl RouteBackend<'_> {
    fn as_ref(&self) -> BackendRef<'_> {
        BackendRef::of(self.group, self.kind, self.name)
    }
}

/// A route rule: its `name` (when set) and its backends.
type RouteRule<'v> = (Option<&'v str>, Vec<RouteBackend<'v>>);

/// `gateway.networking.k8s.io` HTTPRoute and GRPCRoute.
pub(crate) fn review_route(
    object: &Value,
    obj: &ObjectRef,
    view: &dyn ClusterView,
    public_route: bool,
    out: &mut Vec<Finding>,
) {
    let ns = obj.namespace_or_default().to_string();
    let (labels, parents, rules) = {
        let mut r = Reader::new(obj, out);
        let labels = r.labels(object);
        let Some(spec) = r.object(object, "spec", "spec") else {
            return;
        };
        let parents = read_parent_gateways(&mut r, spec, &ns);
        let rules = read_rules(&mut r, spec, &ns);
        (labels, parents, rules)
    };
    let attachments = RouteAttachments::of(
        view,
        &RouteTarget {
            namespace: &ns,
            kind: &obj.kind,
            name: &obj.name,
            labels: &labels,
            parents: &parents,
        },
    );
    let mut found = Vec::new();
    for (rule, backends) in &rules {
        if backends.is_empty() {
            continue;
        }
        let route = RouteAuth {
            authenticated: attachments.rule_authenticated(*rule),
            public: public_route,
        };
        for b in backends {
            check_backend(
                obj,
                view,
                &b.namespace,
                b.as_ref(),
                &b.field,
                route,
                &mut found,
            );
        }
    }
    out.extend(found);
}

/// The route's parent Gateways (`spec.parentRefs` of kind Gateway; the route's namespace when
/// a ref names none).
fn read_parent_gateways(r: &mut Reader<'_>, spec: &Value, ns: &str) -> Vec<Parent> {
    let mut parents = Vec::new();
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
        let namespace = r
            .str(p, "namespace", &format!("{base}.namespace"))
            .unwrap_or(ns)
            .to_string();
        let section = r
            .str(p, "sectionName", &format!("{base}.sectionName"))
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        if kind == "Gateway" {
            parents.push(Parent {
                namespace,
                name: name.to_string(),
                section,
            });
        }
    }
    parents
}

/// `spec.rules`, each with its name and backends.
fn read_rules<'v>(r: &mut Reader<'_>, spec: &'v Value, ns: &str) -> Vec<RouteRule<'v>> {
    let mut rules = Vec::new();
    for (i, rule) in r.array(spec, "rules", "spec.rules").iter().enumerate() {
        let name = r
            .str(rule, "name", &format!("spec.rules[{i}].name"))
            .filter(|n| !n.is_empty());
        rules.push((name, read_backends(r, rule, i, ns)));
    }
    rules
}

/// The `backendRefs` of rule `i` (the route's namespace when a ref names none).
fn read_backends<'v>(
    r: &mut Reader<'_>,
    rule: &'v Value,
    i: usize,
    ns: &str,
) -> Vec<RouteBackend<'v>> {
    let mut backends = Vec::new();
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
        let namespace = r
            .str(b, "namespace", &format!("{base}.namespace"))
            .unwrap_or(ns)
            .to_string();
        backends.push(RouteBackend {
            field: format!("{base}.name"),
            namespace,
            kind,
            group,
            name,
        });
    }
    backends
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn optional_jwt_is_not_authentication() {
        let sp = |jwt: Value| json!({"spec": {"jwt": jwt}});
        assert!(security_policy_authenticates(&sp(json!({"providers": []}))));
        assert!(!security_policy_authenticates(&sp(
            json!({"optional": true, "providers": []})
        )));
        assert!(security_policy_authenticates(&json!({"spec": {
            "jwt": {"optional": true}, "basicAuth": {"users": {"name": "u"}}}})));
        assert!(!security_policy_authenticates(
            &json!({"spec": {"cors": {}}})
        ));
    }

    #[test]
    fn attachments_by_ref_section_and_selector() {
        let sp = json!({"spec": {
            "targetRefs": [
                {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "web", "sectionName": "admin"},
                {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "other"}],
            "targetSelectors": [{"kind": "HTTPRoute", "matchLabels": {"team": "shop"}}]}});
        assert_eq!(
            attachments(&sp, "HTTPRoute", "web", &[]),
            vec![Attachment::Section("admin".into())]
        );
        assert_eq!(
            attachments(&sp, "HTTPRoute", "x", &[("team", "shop")]),
            vec![Attachment::Whole]
        );
        assert!(attachments(&sp, "GRPCRoute", "web", &[]).is_empty());
        let other_group = json!({"spec": {"targetRef": {"group": "example.com", "kind": "HTTPRoute", "name": "web"}}});
        assert!(attachments(&other_group, "HTTPRoute", "web", &[]).is_empty());
    }

    #[test]
    fn client_certificates_unless_optional() {
        assert!(client_traffic_policy_requires_client_certificates(
            &json!({"spec": {"tls": {"clientValidation": {"caCertificateRefs": [{"name": "ca"}]}}}})
        ));
        assert!(!client_traffic_policy_requires_client_certificates(
            &json!({"spec": {"tls": {"clientValidation": {"optional": true}}}})
        ));
        assert!(!client_traffic_policy_requires_client_certificates(
            &json!({"spec": {"tls": {"minVersion": "1.2"}}})
        ));
    }
}
