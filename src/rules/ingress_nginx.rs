//! Ingress (`networking.k8s.io/v1`, and the `v1beta1` and `extensions/v1beta1` shapes that old
//! manifests still use): the ingress-nginx annotations (CORS -> APG001/APG002, `ssl-redirect`
//! -> APG005, `proxy-ssl-protocols` -> APG006, snippets -> APG011, `auth-*` as the route's own
//! authentication), TLS coverage of every host (APG005; `spec.tls`, or GKE's Google-managed or
//! pre-shared certificates with their HTTP-to-HTTPS redirect), and the backends
//! (APG003/APG004/APG010, through `check_backend`). Also the ingress-nginx
//! controller's ConfigMap (`ssl-protocols` -> APG006).

use super::bypass::{BackendRef, RouteAuth, check_backend};
use super::cors::{
    credentials_finding, is_match_all_origin, is_untrusted_for_credentials, wildcard_finding,
};
use super::json::{Reader, annotation_field};
use super::{ClusterView, Finding, ObjectRef, Related, RuleId};
use serde_json::Value;

pub(crate) const PREFIX: &str = "nginx.ingress.kubernetes.io/";

/// Snippet annotations that inject raw nginx (or ModSecurity) configuration (APG011).
pub(crate) const SNIPPETS: &[&str] = &[
    "configuration-snippet",
    "server-snippet",
    "auth-snippet",
    "stream-snippet",
    "modsecurity-snippet",
];

/// GKE Ingress: Google-managed certificates (names of ManagedCertificate objects).
pub(crate) const GKE_MANAGED_CERTIFICATES: &str = "networking.gke.io/managed-certificates";
/// GKE Ingress: certificates uploaded to the Google Cloud project.
pub(crate) const GKE_PRE_SHARED_CERT: &str = "ingress.gcp.kubernetes.io/pre-shared-cert";
/// GKE Ingress: `"false"` removes the plaintext HTTP forwarding rule.
pub(crate) const GKE_ALLOW_HTTP: &str = "kubernetes.io/ingress.allow-http";
/// GKE Ingress: the FrontendConfig (same namespace) with the HTTP-to-HTTPS redirect.
pub(crate) const GKE_FRONTEND_CONFIG: &str = "networking.gke.io/v1beta1.FrontendConfig";

fn exact<'v>(annotations: &[(&'v str, &'v str)], key: &str) -> Option<&'v str> {
    annotations
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

/// Whether a GKE load balancer terminates TLS with certificates named in annotations (Google-
/// managed, or pre-shared): then every host is served over HTTPS without `spec.tls`.
fn gke_certificates(annotations: &[(&str, &str)]) -> bool {
    exact(annotations, GKE_MANAGED_CERTIFICATES).is_some()
        || exact(annotations, GKE_PRE_SHARED_CERT).is_some()
}

/// APG005 for a GKE Ingress with HTTPS: GKE also serves plaintext HTTP on port 80 unless
/// `kubernetes.io/ingress.allow-http: "false"` or its FrontendConfig redirects to HTTPS. A
/// FrontendConfig that is not among the objects seen is trusted.
fn gke_plaintext(
    obj: &ObjectRef,
    annotations: &[(&str, &str)],
    view: &dyn ClusterView,
    out: &mut Vec<Finding>,
) {
    if exact(annotations, GKE_ALLOW_HTTP) == Some("false") {
        return;
    }
    let fix = format!(
        "reference a FrontendConfig with spec.redirectToHttps.enabled: true ({GKE_FRONTEND_CONFIG} annotation), or set {GKE_ALLOW_HTTP}: \"false\""
    );
    match exact(annotations, GKE_FRONTEND_CONFIG) {
        None => out.push(Finding::new(
            RuleId::Apg005,
            obj,
            annotation_field(GKE_ALLOW_HTTP),
            "is not \"false\" and no FrontendConfig redirects to HTTPS, so the GKE load balancer also serves every host over plaintext HTTP on port 80",
            fix,
        )),
        Some(name) => {
            let config = view
                .related_in(Related::FrontendConfig, obj.namespace_or_default())
                .into_iter()
                .find(|c| c.pointer("/metadata/name").and_then(Value::as_str) == Some(name));
            if let Some(config) = config
                && config.pointer("/spec/redirectToHttps/enabled").and_then(Value::as_bool)
                    != Some(true)
            {
                out.push(Finding::new(
                    RuleId::Apg005,
                    obj,
                    annotation_field(GKE_FRONTEND_CONFIG),
                    format!("names FrontendConfig {name:?}, which does not set redirectToHttps.enabled: true, so plaintext HTTP on port 80 is served too"),
                    fix,
                ));
            }
        }
    }
}

fn ann<'v>(annotations: &[(&'v str, &'v str)], name: &str) -> Option<&'v str> {
    annotations
        .iter()
        .find(|(k, _)| k.strip_prefix(PREFIX) == Some(name))
        .map(|(_, v)| *v)
}

/// Whether the Ingress authenticates requests itself (external auth, basic/digest auth, or
/// required client certificates).
pub(crate) fn authenticates(annotations: &[(&str, &str)]) -> bool {
    ann(annotations, "auth-url").is_some_and(|v| !v.trim().is_empty())
        || ann(annotations, "auth-type").is_some_and(|v| !v.trim().is_empty())
        || ann(annotations, "auth-tls-verify-client").is_some_and(|v| v.trim() == "on")
}

/// Whether a TLS host entry covers `host` (exact, or a `*.` wildcard for one label).
fn tls_covers(tls_host: &str, host: &str) -> bool {
    if tls_host.eq_ignore_ascii_case(host) {
        return true;
    }
    match (tls_host.strip_prefix("*."), host.split_once('.')) {
        (Some(suffix), Some((_, rest))) => rest.eq_ignore_ascii_case(suffix),
        _ => false,
    }
}

/// An Ingress: its annotations, TLS coverage of its default backend and hosts (APG005), and
/// its backends (APG003/APG004/APG010).
pub fn review(
    object: &Value,
    obj: &ObjectRef,
    view: &dyn ClusterView,
    public_route: bool,
    out: &mut Vec<Finding>,
) {
    let mut found = Vec::new();
    let mut backends = Vec::new();
    let annotations;
    {
        let mut r = Reader::new(obj, out);
        annotations = r.annotations(object);
        annotation_rules(obj, &annotations, &mut found);
        let gke_tls = gke_certificates(&annotations);
        if gke_tls {
            gke_plaintext(obj, &annotations, view, &mut found);
        }
        if let Some(spec) = r.object(object, "spec", "spec") {
            backends = review_spec(&mut r, obj, spec, gke_tls, &mut found);
        }
    }
    let route = RouteAuth {
        authenticated: authenticates(&annotations),
        public: public_route,
    };
    let ns = obj.namespace_or_default();
    for (field, backend) in &backends {
        check_backend(obj, view, ns, backend.as_ref(), field, route, &mut found);
    }
    out.extend(found);
}

/// The hosts an Ingress serves over HTTPS.
struct TlsHosts<'v> {
    /// Every `spec.tls[].hosts` entry.
    hosts: Vec<&'v str>,
    /// `spec.tls` has entries.
    listed: bool,
    /// A GKE load balancer terminates TLS for every host ([`gke_certificates`]).
    gke: bool,
}

impl TlsHosts<'_> {
    /// Whether the Ingress has TLS at all.
    fn any(&self) -> bool {
        self.listed || self.gke
    }

    /// Whether a rule for `host` (None: a rule without host) is served over HTTPS.
    fn covers(&self, host: Option<&str>) -> bool {
        self.gke
            || match host {
                Some(h) => self.hosts.iter().any(|t| tls_covers(t, h)),
                None => self.listed,
            }
    }
}

/// `spec`: TLS coverage of the default backend and of every rule (APG005); returns every
/// backend with the field path of its name.
fn review_spec<'v>(
    r: &mut Reader<'_>,
    obj: &ObjectRef,
    spec: &'v Value,
    gke_tls: bool,
    found: &mut Vec<Finding>,
) -> Vec<(String, IngressBackend<'v>)> {
    let mut backends = Vec::new();
    let tls = r.array(spec, "tls", "spec.tls");
    let mut hosts = Vec::new();
    for (i, t) in tls.iter().enumerate() {
        hosts.extend(r.strings(t, "hosts", &format!("spec.tls[{i}].hosts")));
    }
    let tls = TlsHosts {
        hosts,
        listed: !tls.is_empty(),
        gke: gke_tls,
    };
    // `defaultBackend` (v1) or `backend` (v1beta1).
    for key in ["defaultBackend", "backend"] {
        let path = format!("spec.{key}");
        let Some(b) = r.object(spec, key, &path) else {
            continue;
        };
        if let Some(backend) = backend_of(r, b, &path) {
            backends.push(backend);
        }
        if !tls.any() {
            found.push(Finding::new(
                RuleId::Apg005,
                obj,
                "spec.tls",
                "is empty, so the default backend is served over plaintext HTTP",
                "add spec.tls with the host names and a certificate Secret",
            ));
        }
    }
    for (i, rule) in r.array(spec, "rules", "spec.rules").iter().enumerate() {
        review_rule(r, obj, rule, i, &tls, &mut backends, found);
    }
    backends
}

/// `spec.rules[i]`: its host covered by TLS (APG005), and its paths' backends (into `backends`).
fn review_rule<'v>(
    r: &mut Reader<'_>,
    obj: &ObjectRef,
    rule: &'v Value,
    i: usize,
    tls: &TlsHosts<'_>,
    backends: &mut Vec<(String, IngressBackend<'v>)>,
    found: &mut Vec<Finding>,
) {
    let base = format!("spec.rules[{i}]");
    if !rule.is_object() {
        r.wrong_type(&base, "a mapping", rule);
        return;
    }
    let host = r.str(rule, "host", &format!("{base}.host"));
    if !tls.covers(host) {
        found.push(plaintext_rule(obj, &base, host));
    }
    let Some(http) = r.object(rule, "http", &format!("{base}.http")) else {
        return;
    };
    for (j, p) in r
        .array(http, "paths", &format!("{base}.http.paths"))
        .iter()
        .enumerate()
    {
        let ppath = format!("{base}.http.paths[{j}]");
        let Some(b) = r.object(p, "backend", &format!("{ppath}.backend")) else {
            continue;
        };
        if let Some(backend) = backend_of(r, b, &format!("{ppath}.backend")) {
            backends.push(backend);
        }
    }
}

/// APG005 for the rule at `base` (with `host`, or without) that no TLS entry covers.
fn plaintext_rule(obj: &ObjectRef, base: &str, host: Option<&str>) -> Finding {
    let (field, what) = match host {
        Some(h) => (
            format!("{base}.host"),
            format!("host {h:?} is not listed in any spec.tls[].hosts"),
        ),
        None => (
            base.to_string(),
            "a rule without host is served while spec.tls is empty".to_string(),
        ),
    };
    Finding::new(
        RuleId::Apg005,
        obj,
        field,
        format!("{what}, so it is served over plaintext HTTP"),
        "list the host in spec.tls[].hosts with a certificate Secret",
    )
}

/// An Ingress backend: a Service (`service.name` in v1, `serviceName` in v1beta1) or another
/// resource (`resource`, e.g. a storage bucket).
enum IngressBackend<'v> {
    Service(&'v str),
    Resource {
        group: &'v str,
        kind: &'v str,
        name: &'v str,
    },
}

impl IngressBackend<'_> {
    fn as_ref(&self) -> BackendRef<'_> {
        match self {
            IngressBackend::Service(name) => BackendRef::Service(name),
            IngressBackend::Resource { group, kind, name } => BackendRef::of(group, kind, name),
        }
    }
}

/// The backend at `path` with the field path of its name.
fn backend_of<'v>(
    r: &mut Reader<'_>,
    backend: &'v Value,
    path: &str,
) -> Option<(String, IngressBackend<'v>)> {
    if let Some(svc) = r.object(backend, "service", &format!("{path}.service")) {
        let field = format!("{path}.service.name");
        return r
            .str(svc, "name", &field)
            .map(|n| (field, IngressBackend::Service(n)));
    }
    let field = format!("{path}.serviceName");
    if let Some(name) = r.str(backend, "serviceName", &field) {
        return Some((field, IngressBackend::Service(name)));
    }
    let resource = r.object(backend, "resource", &format!("{path}.resource"))?;
    let kind = r
        .str(resource, "kind", &format!("{path}.resource.kind"))
        .unwrap_or("resource");
    let group = r
        .str(resource, "apiGroup", &format!("{path}.resource.apiGroup"))
        .unwrap_or("");
    let field = format!("{path}.resource.name");
    r.str(resource, "name", &field)
        .map(|name| (field, IngressBackend::Resource { group, kind, name }))
}

fn annotation_rules(obj: &ObjectRef, annotations: &[(&str, &str)], out: &mut Vec<Finding>) {
    for s in SNIPPETS {
        if ann(annotations, s).is_some() {
            out.push(Finding::new(
                RuleId::Apg011,
                obj,
                annotation_field(&format!("{PREFIX}{s}")),
                "injects raw nginx configuration, which can read the controller's secrets and override every other security setting (CVE-2021-25742, CVE-2025-1974)",
                "remove the snippet and use the dedicated annotations (e.g. more headers via a ConfigMap-referenced custom-headers), or move the logic into the application or an ApiSecurityPolicy",
            ));
        }
    }

    if ann(annotations, "enable-cors").map(str::trim) == Some("true") {
        let origin_field = annotation_field(&format!("{PREFIX}cors-allow-origin"));
        let creds = ann(annotations, "cors-allow-credentials").map(str::trim);
        // ingress-nginx defaults cors-allow-credentials to true.
        let credentials = creds != Some("false");
        let fix = "set nginx.ingress.kubernetes.io/cors-allow-origin to the exact origins, e.g. \"https://app.example.com, https://admin.example.com\"";
        match ann(annotations, "cors-allow-origin") {
            None => out.push(wildcard_finding(
                obj,
                &annotation_field(&format!("{PREFIX}enable-cors")),
                "is \"true\" without nginx.ingress.kubernetes.io/cors-allow-origin, which defaults to \"*\"",
                fix,
            )),
            Some(list) => {
                for o in list.split(',').map(str::trim).filter(|o| !o.is_empty()) {
                    if is_match_all_origin(o) {
                        out.push(wildcard_finding(obj, &origin_field, &format!("contains {o:?}"), fix));
                        if creds == Some("true") {
                            out.push(credentials_finding(obj, &origin_field, o));
                        }
                    } else if credentials && is_untrusted_for_credentials(o) {
                        out.push(credentials_finding(obj, &origin_field, o));
                    }
                }
            }
        }
    }

    if ann(annotations, "ssl-redirect").map(str::trim) == Some("false") {
        out.push(Finding::new(
            RuleId::Apg005,
            obj,
            annotation_field(&format!("{PREFIX}ssl-redirect")),
            "is \"false\", so clients may keep using plaintext HTTP",
            "remove the annotation (ingress-nginx redirects to HTTPS by default when spec.tls is set)",
        ));
    }

    if let Some(protocols) = ann(annotations, "proxy-ssl-protocols") {
        let weak = weak_protocols(protocols);
        if !weak.is_empty() {
            out.push(Finding::new(
                RuleId::Apg006,
                obj,
                annotation_field(&format!("{PREFIX}proxy-ssl-protocols")),
                format!(
                    "enables {} for the connection to the backend; TLS below 1.2 is broken",
                    weak.join(" ")
                ),
                "set nginx.ingress.kubernetes.io/proxy-ssl-protocols: \"TLSv1.2 TLSv1.3\"",
            ));
        }
    }
}

fn weak_protocols(protocols: &str) -> Vec<&str> {
    protocols
        .split_whitespace()
        .filter(|p| super::tls::is_weak_tls_version(p))
        .collect()
}

/// Whether a ConfigMap is ingress-nginx's controller configuration (by the labels its Helm
/// chart and static manifests set, or by its conventional names).
fn is_ingress_nginx_config(obj: &ObjectRef, labels: &[(&str, &str)]) -> bool {
    let nginx = |v: &str| v.contains("ingress-nginx") || v.contains("nginx-ingress");
    labels.iter().any(|(k, v)| {
        matches!(
            *k,
            "app.kubernetes.io/name" | "app.kubernetes.io/part-of" | "app" | "k8s-app"
        ) && nginx(v)
    }) || nginx(&obj.name)
        || obj.name == "nginx-configuration"
}

/// `v1` ConfigMap of the ingress-nginx controller: `data.ssl-protocols` sets the TLS versions
/// of every HTTPS server it serves (APG006).
pub(crate) fn review_controller_config(object: &Value, obj: &ObjectRef, out: &mut Vec<Finding>) {
    let mut r = Reader::new(obj, out);
    let labels = r.labels(object);
    if !is_ingress_nginx_config(obj, &labels) {
        return;
    }
    let Some(data) = r.object(object, "data", "data") else {
        return;
    };
    let Some(protocols) = r.str(data, "ssl-protocols", "data[ssl-protocols]") else {
        return;
    };
    let weak = weak_protocols(protocols);
    if !weak.is_empty() {
        out.push(Finding::new(
            RuleId::Apg006,
            obj,
            "data[ssl-protocols]",
            format!(
                "enables {} on every HTTPS server of this ingress-nginx controller; TLS below 1.2 is broken",
                weak.join(" ")
            ),
            "set ssl-protocols: \"TLSv1.2 TLSv1.3\" (the controller's default)",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_host_coverage() {
        assert!(tls_covers("a.example", "A.example"));
        assert!(tls_covers("*.example", "a.example"));
        assert!(!tls_covers("*.example", "a.b.example"));
        assert!(!tls_covers("b.example", "a.example"));
    }
}
