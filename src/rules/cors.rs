//! APG001 cors-wildcard-origin and APG002 cors-credentials-broad-origin for the CORS settings
//! of Envoy Gateway SecurityPolicies, Istio VirtualServices and Gateway API HTTPRoute `CORS`
//! filters (ingress-nginx CORS annotations
//! are in [`super::ingress_nginx`], container env vars in [`super::workloads`], the policy's own
//! CORS in the shared invariants).
//!
//! A wildcard origin is APG001; APG002 is credentials together with a `null` or non-loopback
//! `http://` origin, or with a wildcard when credentials are explicitly enabled.

use super::json::Reader;
use super::{Finding, ObjectRef, RuleId};
use serde_json::Value;

/// An origin that matches every origin.
pub(crate) fn is_match_all_origin(origin: &str) -> bool {
    matches!(origin.trim(), "*" | ".*" | "https://*" | "http://*")
}

/// A regular expression (Istio `regex`) that matches every origin.
pub(crate) fn is_match_all_regex(re: &str) -> bool {
    let re = re.trim();
    let inner = re.strip_prefix('^').unwrap_or(re);
    let inner = inner.strip_suffix('$').unwrap_or(inner);
    matches!(
        inner,
        ".*" | ".+"
            | "*"
            | "(.*)"
            | "(.+)"
            | "https?://.*"
            | "https?://.+"
            | "http.*"
            | "https://.*"
            | "https://.+"
    )
}

/// An origin that must never receive credentialed responses: `null` (sandboxed frames,
/// `file://`) or plaintext `http://` other than loopback.
pub(crate) fn is_untrusted_for_credentials(origin: &str) -> bool {
    let o = origin.trim();
    o == "null"
        || (o.starts_with("http://")
            && !["http://localhost", "http://127.0.0.1", "http://[::1]"]
                .iter()
                .any(|p| o.starts_with(p)))
}

pub(crate) fn wildcard_finding(obj: &ObjectRef, field: &str, what: &str, fix: &str) -> Finding {
    Finding::new(
        RuleId::Apg001,
        obj,
        field,
        format!("{what}, so any web site can call this API from its visitors' browsers"),
        fix,
    )
}

pub(crate) fn credentials_finding(obj: &ObjectRef, field: &str, origin: &str) -> Finding {
    Finding::new(
        RuleId::Apg002,
        obj,
        field,
        format!(
            "allows credentialed cross-origin requests from {origin:?}, an origin any attacker can occupy"
        ),
        "allow credentials only for exact https:// origins (or loopback during development), or turn credentials off",
    )
}

/// `gateway.envoyproxy.io/v1alpha1` SecurityPolicy `spec.cors`.
pub(crate) fn review_envoy_security_policy(
    object: &Value,
    obj: &ObjectRef,
    out: &mut Vec<Finding>,
) {
    let mut r = Reader::new(obj, out);
    let Some(spec) = r.object(object, "spec", "spec") else {
        return;
    };
    let Some(cors) = r.object(spec, "cors", "spec.cors") else {
        return;
    };
    let origins = r.strings(cors, "allowOrigins", "spec.cors.allowOrigins");
    let credentials = r.bool(cors, "allowCredentials", "spec.cors.allowCredentials") == Some(true);
    for (i, o) in origins.iter().enumerate() {
        let field = format!("spec.cors.allowOrigins[{i}]");
        if is_match_all_origin(o) {
            out.push(wildcard_finding(
                obj,
                &field,
                &format!("is {o:?}"),
                "list the exact origins, e.g. https://app.example.com (or a subdomain pattern https://*.example.com)",
            ));
            if credentials {
                out.push(credentials_finding(obj, &field, o));
            }
        } else if credentials && is_untrusted_for_credentials(o) {
            out.push(credentials_finding(obj, &field, o));
        }
    }
}

/// `networking.istio.io` VirtualService `spec.http[].corsPolicy`.
pub(crate) fn review_istio_virtual_service(
    object: &Value,
    obj: &ObjectRef,
    out: &mut Vec<Finding>,
) {
    let mut found = Vec::new();
    {
        let mut r = Reader::new(obj, out);
        let Some(spec) = r.object(object, "spec", "spec") else {
            return;
        };
        for (i, http) in r.array(spec, "http", "spec.http").iter().enumerate() {
            let base = format!("spec.http[{i}].corsPolicy");
            let Some(cors) = r.object(http, "corsPolicy", &base) else {
                continue;
            };
            let credentials = r.bool(
                cors,
                "allowCredentials",
                &format!("{base}.allowCredentials"),
            ) == Some(true);
            let fix = "list exact origins as {exact: https://app.example.com} (or a precise regex such as ^https://[a-z]+\\.example\\.com$)";
            for (j, m) in r
                .array(cors, "allowOrigins", &format!("{base}.allowOrigins"))
                .iter()
                .enumerate()
            {
                let mpath = format!("{base}.allowOrigins[{j}]");
                if !m.is_object() {
                    r.wrong_type(&mpath, "a mapping (exact, prefix or regex)", m);
                    continue;
                }
                let exact = r.str(m, "exact", &format!("{mpath}.exact"));
                let prefix = r.str(m, "prefix", &format!("{mpath}.prefix"));
                let regex = r.str(m, "regex", &format!("{mpath}.regex"));
                let (field, wildcard, origin) = if let Some(e) = exact {
                    (format!("{mpath}.exact"), is_match_all_origin(e), e)
                } else if let Some(p) = prefix {
                    let all = matches!(
                        p.trim(),
                        "" | "*" | "http" | "https" | "http://" | "https://"
                    );
                    (format!("{mpath}.prefix"), all, p)
                } else if let Some(re) = regex {
                    (format!("{mpath}.regex"), is_match_all_regex(re), re)
                } else {
                    continue;
                };
                if wildcard {
                    found.push(wildcard_finding(
                        obj,
                        &field,
                        &format!("matches every origin ({origin:?})"),
                        fix,
                    ));
                    if credentials {
                        found.push(credentials_finding(obj, &field, origin));
                    }
                } else if credentials && regex.is_none() && is_untrusted_for_credentials(origin) {
                    found.push(credentials_finding(obj, &field, origin));
                }
            }
            // The deprecated `allowOrigin` list of plain strings.
            let legacy = r.strings(cors, "allowOrigin", &format!("{base}.allowOrigin"));
            for (j, o) in legacy.iter().enumerate() {
                let field = format!("{base}.allowOrigin[{j}]");
                if is_match_all_origin(o) {
                    found.push(wildcard_finding(obj, &field, &format!("is {o:?}"), fix));
                    if credentials {
                        found.push(credentials_finding(obj, &field, o));
                    }
                } else if credentials && is_untrusted_for_credentials(o) {
                    found.push(credentials_finding(obj, &field, o));
                }
            }
        }
    }
    out.extend(found);
}

/// Gateway API (v1.3+) HTTPRoute `CORS` filters (HTTPCORSFilter): `spec.rules[].filters[]`
/// and `spec.rules[].backendRefs[].filters[]` with `type: CORS` (or no type) and a `cors`
/// mapping. Called from the HTTPRoute dispatch next to [`super::authn::review_route`].
pub(crate) fn review_route_cors_filters(object: &Value, obj: &ObjectRef, out: &mut Vec<Finding>) {
    let mut found = Vec::new();
    {
        let mut r = Reader::new(obj, out);
        let Some(spec) = r.object(object, "spec", "spec") else {
            return;
        };
        for (i, rule) in r.array(spec, "rules", "spec.rules").iter().enumerate() {
            let base = format!("spec.rules[{i}]");
            if !rule.is_object() {
                r.wrong_type(&base, "a mapping", rule);
                continue;
            }
            route_filters(&mut r, rule, &base, &mut found);
            for (k, b) in r
                .array(rule, "backendRefs", &format!("{base}.backendRefs"))
                .iter()
                .enumerate()
            {
                route_filters(&mut r, b, &format!("{base}.backendRefs[{k}]"), &mut found);
            }
        }
    }
    out.extend(found);
}

/// The `CORS` filters in `parent.filters` (`base` is the parent's field path).
fn route_filters(r: &mut Reader<'_>, parent: &Value, base: &str, found: &mut Vec<Finding>) {
    let obj = r.obj;
    for (j, f) in r
        .array(parent, "filters", &format!("{base}.filters"))
        .iter()
        .enumerate()
    {
        let fbase = format!("{base}.filters[{j}]");
        if !f.is_object() {
            r.wrong_type(&fbase, "a mapping", f);
            continue;
        }
        let ty = r.str(f, "type", &format!("{fbase}.type"));
        if ty.is_some_and(|t| t != "CORS") {
            continue;
        }
        let cbase = format!("{fbase}.cors");
        let Some(cors) = r.object(f, "cors", &cbase) else {
            continue;
        };
        let credentials = r.bool(
            cors,
            "allowCredentials",
            &format!("{cbase}.allowCredentials"),
        ) == Some(true);
        let opath = format!("{cbase}.allowOrigins");
        for (k, v) in r.array(cors, "allowOrigins", &opath).iter().enumerate() {
            let field = format!("{opath}[{k}]");
            let Some(o) = r.as_str(v, &field) else {
                continue;
            };
            if is_match_all_origin(o) {
                found.push(wildcard_finding(
                    obj,
                    &field,
                    &format!("is {o:?}"),
                    "list the exact origins, e.g. https://app.example.com (or a subdomain pattern https://*.example.com)",
                ));
                if credentials {
                    found.push(credentials_finding(obj, &field, o));
                }
            } else if credentials && is_untrusted_for_credentials(o) {
                found.push(credentials_finding(obj, &field, o));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::testing::rules_and_fields;

    #[test]
    fn origins() {
        assert!(is_match_all_origin("*"));
        assert!(!is_match_all_origin("https://*.example.com"));
        assert!(is_match_all_regex("^.*$"));
        assert!(is_match_all_regex(".+"));
        assert!(!is_match_all_regex("^https://[a-z]+\\.example\\.com$"));
        assert!(is_untrusted_for_credentials("null"));
        assert!(is_untrusted_for_credentials("http://shop.example"));
        assert!(!is_untrusted_for_credentials("http://localhost:3000"));
        assert!(!is_untrusted_for_credentials("https://shop.example"));
    }

    fn route(rules: serde_json::Value) -> Vec<Finding> {
        let object = serde_json::json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"parentRefs": [{"name": "edge"}], "rules": rules},
        });
        let obj = ObjectRef::of(&object);
        let mut out = Vec::new();
        review_route_cors_filters(&object, &obj, &mut out);
        out
    }

    #[test]
    fn route_cors_filters() {
        let f = route(serde_json::json!([
            {"filters": [
                {"type": "RequestHeaderModifier", "requestHeaderModifier": {"add": [{"name": "x", "value": "*"}]}},
                {"type": "CORS", "cors": {"allowOrigins": ["https://app.example", "*"]}},
            ]},
            {"filters": [{"type": "CORS", "cors": {"allowOrigins": ["https://*"], "allowCredentials": true}}]},
            {"filters": [{"type": "CORS", "cors": {"allowOrigins":
                ["https://app.example", "http://localhost:3000", "http://app.example", "null"],
                "allowCredentials": true}}]},
            // The same origins without credentials: only wildcards matter.
            {"filters": [{"type": "CORS", "cors": {"allowOrigins": ["http://app.example", "null"]}}]},
            {"backendRefs": [{"name": "web", "port": 8080,
                "filters": [{"type": "CORS", "cors": {"allowOrigins": ["*"]}}]}]},
        ]));
        assert_eq!(
            rules_and_fields(&f),
            vec![
                (
                    RuleId::Apg001,
                    "spec.rules[0].filters[1].cors.allowOrigins[1]"
                ),
                (
                    RuleId::Apg001,
                    "spec.rules[1].filters[0].cors.allowOrigins[0]"
                ),
                (
                    RuleId::Apg002,
                    "spec.rules[1].filters[0].cors.allowOrigins[0]"
                ),
                (
                    RuleId::Apg002,
                    "spec.rules[2].filters[0].cors.allowOrigins[2]"
                ),
                (
                    RuleId::Apg002,
                    "spec.rules[2].filters[0].cors.allowOrigins[3]"
                ),
                (
                    RuleId::Apg001,
                    "spec.rules[4].backendRefs[0].filters[0].cors.allowOrigins[0]"
                ),
            ],
            "{f:#?}"
        );
        assert!(
            route(serde_json::json!([
                {"filters": [{"type": "CORS", "cors": {"allowOrigins": ["https://app.example",
                    "https://*.example.com"], "allowCredentials": true}}]},
                // A cors mapping under another type is not a CORS filter.
                {"filters": [{"type": "RequestMirror", "cors": {"allowOrigins": ["*"]}}]},
            ]))
            .is_empty()
        );
    }

    #[test]
    fn route_cors_filters_wrong_types_are_apg014() {
        let f = route(serde_json::json!([
            "CORS",
            {"filters": {"type": "CORS"}},
            {"filters": ["CORS", {"type": 1}, {"type": "CORS", "cors": ["*"]}]},
            {"filters": [{"type": "CORS", "cors": {"allowOrigins": "*", "allowCredentials": "true"}}]},
            {"filters": [{"type": "CORS", "cors": {"allowOrigins": [1, "*"]}}]},
            {"backendRefs": {"name": "web"}},
        ]));
        assert_eq!(
            rules_and_fields(&f),
            vec![
                (RuleId::Apg014, "spec.rules[0]"),
                (RuleId::Apg014, "spec.rules[1].filters"),
                (RuleId::Apg014, "spec.rules[2].filters[0]"),
                (RuleId::Apg014, "spec.rules[2].filters[1].type"),
                (RuleId::Apg014, "spec.rules[2].filters[2].cors"),
                (
                    RuleId::Apg014,
                    "spec.rules[3].filters[0].cors.allowCredentials"
                ),
                (RuleId::Apg014, "spec.rules[3].filters[0].cors.allowOrigins"),
                (
                    RuleId::Apg014,
                    "spec.rules[4].filters[0].cors.allowOrigins[0]"
                ),
                (RuleId::Apg014, "spec.rules[5].backendRefs"),
                // Findings follow the APG014s (review() sorts them).
                (
                    RuleId::Apg001,
                    "spec.rules[4].filters[0].cors.allowOrigins[1]"
                ),
            ],
            "{f:#?}"
        );
    }
}
