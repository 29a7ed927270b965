//! `networking.k8s.io/v1` Ingress: the ingress-nginx annotations (CORS -> APG001/APG002,
//! `ssl-redirect` -> APG005, `ssl-protocols` -> APG006, snippets -> APG011, `auth-*` as the
//! route's own authentication), TLS coverage of every host (APG005), and the backends
//! (APG003/APG004/APG010, through [`super::bypass::check_backend`]).

use super::bypass::{RouteAuth, check_backend};
use super::cors::{
    credentials_finding, is_match_all_origin, is_untrusted_for_credentials, wildcard_finding,
};
use super::json::{Reader, annotation_field};
use super::{ClusterView, Finding, ObjectRef, RuleId};
use serde_json::Value;

pub const PREFIX: &str = "nginx.ingress.kubernetes.io/";

/// Snippet annotations that inject raw nginx configuration (APG011).
pub const SNIPPETS: &[&str] = &["configuration-snippet", "server-snippet", "auth-snippet"];

fn ann<'v>(annotations: &[(&'v str, &'v str)], name: &str) -> Option<&'v str> {
    annotations
        .iter()
        .find(|(k, _)| k.strip_prefix(PREFIX) == Some(name))
        .map(|(_, v)| *v)
}

/// Whether the Ingress authenticates requests itself (external auth, basic/digest auth, or
/// required client certificates).
pub fn authenticates(annotations: &[(&str, &str)]) -> bool {
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

pub fn review(
    object: &Value,
    obj: &ObjectRef,
    view: &dyn ClusterView,
    public_route: bool,
    out: &mut Vec<Finding>,
) {
    let mut found = Vec::new();
    let mut backends: Vec<(String, String)> = Vec::new();
    let annotations;
    {
        let mut r = Reader::new(obj, out);
        annotations = r.annotations(object);
        annotation_rules(obj, &annotations, &mut found);

        let Some(spec) = r.object(object, "spec", "spec") else {
            out.extend(found);
            return;
        };
        let mut tls_hosts = Vec::new();
        let tls = r.array(spec, "tls", "spec.tls");
        for (i, t) in tls.iter().enumerate() {
            tls_hosts.extend(r.strings(t, "hosts", &format!("spec.tls[{i}].hosts")));
        }
        if let Some(b) = r.object(spec, "defaultBackend", "spec.defaultBackend") {
            if let Some(name) = backend_service(&mut r, b, "spec.defaultBackend") {
                backends.push(("spec.defaultBackend.service.name".into(), name.to_string()));
            }
            if tls.is_empty() {
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
            let base = format!("spec.rules[{i}]");
            if !rule.is_object() {
                r.wrong_type(&base, "a mapping", rule);
                continue;
            }
            let host = r.str(rule, "host", &format!("{base}.host"));
            let covered = match host {
                Some(h) => tls_hosts.iter().any(|t| tls_covers(t, h)),
                None => !tls.is_empty(),
            };
            if !covered {
                let (field, what) = match host {
                    Some(h) => (
                        format!("{base}.host"),
                        format!("host {h:?} is not listed in any spec.tls[].hosts"),
                    ),
                    None => (
                        base.clone(),
                        "a rule without host is served while spec.tls is empty".to_string(),
                    ),
                };
                found.push(Finding::new(
                    RuleId::Apg005,
                    obj,
                    field,
                    format!("{what}, so it is served over plaintext HTTP"),
                    "list the host in spec.tls[].hosts with a certificate Secret",
                ));
            }
            let Some(http) = r.object(rule, "http", &format!("{base}.http")) else {
                continue;
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
                if let Some(name) = backend_service(&mut r, b, &format!("{ppath}.backend")) {
                    backends.push((format!("{ppath}.backend.service.name"), name.to_string()));
                }
            }
        }
    }
    let route = RouteAuth {
        authenticated: authenticates(&annotations),
        public: public_route,
    };
    let ns = obj.namespace_or_default();
    for (field, service) in &backends {
        check_backend(obj, view, ns, service, field, route, &mut found);
    }
    out.extend(found);
}

fn backend_service<'v>(r: &mut Reader<'_>, backend: &'v Value, path: &str) -> Option<&'v str> {
    let svc = r.object(backend, "service", &format!("{path}.service"))?;
    r.str(svc, "name", &format!("{path}.service.name"))
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

    if let Some(protocols) = ann(annotations, "ssl-protocols") {
        let weak: Vec<&str> = protocols
            .split_whitespace()
            .filter(|p| super::tls::is_weak_tls_version(p))
            .collect();
        if !weak.is_empty() {
            out.push(Finding::new(
                RuleId::Apg006,
                obj,
                annotation_field(&format!("{PREFIX}ssl-protocols")),
                format!("enables {}; TLS below 1.2 is broken", weak.join(" ")),
                "set nginx.ingress.kubernetes.io/ssl-protocols: \"TLSv1.2 TLSv1.3\"",
            ));
        }
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
