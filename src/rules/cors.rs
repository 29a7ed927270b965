//! APG001 cors-wildcard-origin and APG002 cors-credentials-broad-origin for the CORS settings
//! of Envoy Gateway SecurityPolicies and Istio VirtualServices (ingress-nginx CORS annotations
//! are in [`super::ingress_nginx`], container env vars in [`super::workloads`], the policy's own
//! CORS in the shared invariants).
//!
//! A wildcard origin is APG001; APG002 is credentials together with a `null` or non-loopback
//! `http://` origin, or with a wildcard when credentials are explicitly enabled.

use super::json::Reader;
use super::{Finding, ObjectRef, RuleId};
use serde_json::Value;

/// An origin that matches every origin.
pub fn is_match_all_origin(origin: &str) -> bool {
    matches!(origin.trim(), "*" | ".*" | "https://*" | "http://*")
}

/// A regular expression (Istio `regex`) that matches every origin.
pub fn is_match_all_regex(re: &str) -> bool {
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
pub fn is_untrusted_for_credentials(origin: &str) -> bool {
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
pub fn review_envoy_security_policy(object: &Value, obj: &ObjectRef, out: &mut Vec<Finding>) {
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
pub fn review_istio_virtual_service(object: &Value, obj: &ObjectRef, out: &mut Vec<Finding>) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
