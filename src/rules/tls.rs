//! APG005 plaintext-listener and APG006 weak-tls for Gateway API Gateways and Envoy Gateway
//! ClientTrafficPolicies (ingress-nginx TLS settings are in [`super::ingress_nginx`], the
//! policy's own TLS in the shared invariants).

use super::json::Reader;
use super::{Finding, ObjectRef, RuleId};
use serde_json::Value;

/// `gateway.networking.k8s.io/v1` Gateway: a listener with `protocol: HTTP` serves plaintext.
pub(crate) fn review_gateway(object: &Value, obj: &ObjectRef, out: &mut Vec<Finding>) {
    let mut found = Vec::new();
    {
        let mut r = Reader::new(obj, out);
        let Some(spec) = r.object(object, "spec", "spec") else {
            return;
        };
        for (i, l) in r
            .array(spec, "listeners", "spec.listeners")
            .iter()
            .enumerate()
        {
            let base = format!("spec.listeners[{i}]");
            if !l.is_object() {
                r.wrong_type(&base, "a mapping", l);
                continue;
            }
            let name = r.str(l, "name", &format!("{base}.name")).unwrap_or("");
            let protocol = r.str(l, "protocol", &format!("{base}.protocol"));
            if protocol == Some("HTTP") {
                found.push(Finding::new(
                    RuleId::Apg005,
                    obj,
                    format!("{base}.protocol"),
                    format!("listener {name:?} serves plaintext HTTP: tokens, cookies and API keys cross the network in clear text"),
                    "use protocol: HTTPS with tls.certificateRefs (port 443); redirect plain HTTP with an HTTPRoute RequestRedirect filter on a listener exempted with a reason",
                ));
            }
        }
    }
    out.extend(found);
}

/// A TLS version string below 1.2 (`1.0`, `1.1`, `TLSv1`, `TLSv1.1`, `TLSv1_0`, Istio's
/// `TLSV1_0`/`TLSV1_1`, SSL), compared ASCII case-insensitively.
pub(crate) fn is_weak_tls_version(v: &str) -> bool {
    matches!(
        v.trim().to_ascii_uppercase().as_str(),
        "1.0"
            | "1.1"
            | "TLSV1"
            | "TLSV1.0"
            | "TLSV1.1"
            | "TLSV1_0"
            | "TLSV1_1"
            | "TLS1_0"
            | "TLS1_1"
            | "SSLV2"
            | "SSLV3"
    )
}

/// `gateway.envoyproxy.io/v1alpha1` ClientTrafficPolicy `spec.tls.minVersion`.
pub(crate) fn review_client_traffic_policy(
    object: &Value,
    obj: &ObjectRef,
    out: &mut Vec<Finding>,
) {
    let mut r = Reader::new(obj, out);
    let Some(spec) = r.object(object, "spec", "spec") else {
        return;
    };
    let Some(tls) = r.object(spec, "tls", "spec.tls") else {
        return;
    };
    if let Some(v) = r.str(tls, "minVersion", "spec.tls.minVersion")
        && is_weak_tls_version(v)
    {
        out.push(Finding::new(
            RuleId::Apg006,
            obj,
            "spec.tls.minVersion",
            format!("is {v:?}; TLS 1.0 and 1.1 are broken (BEAST, weak ciphers) and disallowed by PCI DSS"),
            "set spec.tls.minVersion: \"1.2\" (or \"1.3\")",
        ));
    }
}
