//! APG005 plaintext-listener and APG006 weak-tls for Istio `networking.istio.io` Gateways
//! (`spec.servers[]`). Istio VirtualService CORS is in [`super::cors`], RequestAuthentication
//! JWT rules in [`super::jwt`].
//!
//! A server whose `port.protocol` carries plain HTTP (HTTP, HTTP2, GRPC, GRPC-WEB; Istio
//! compares protocols case-insensitively) is APG005 unless `tls.httpsRedirect: true` turns it
//! into a redirect to HTTPS. A `tls.minProtocolVersion` below TLS 1.2 is APG006.

use super::json::Reader;
use super::tls::is_weak_tls_version;
use super::{Finding, ObjectRef, RuleId};
use serde_json::Value;

/// Istio server port protocols that carry plaintext HTTP.
pub(crate) const PLAINTEXT_HTTP_PROTOCOLS: &[&str] = &["HTTP", "HTTP2", "GRPC", "GRPC-WEB"];

/// Whether an Istio `port.protocol` carries plaintext HTTP (case-insensitive, as Istio parses it).
pub(crate) fn is_plaintext_http_protocol(protocol: &str) -> bool {
    let p = protocol.trim();
    PLAINTEXT_HTTP_PROTOCOLS
        .iter()
        .any(|x| x.eq_ignore_ascii_case(p))
}

/// `port.number`: a number; another type is reported. Numbers that are not port-like (negative,
/// fractional) are left to Istio's own validation.
fn port_number(r: &mut Reader<'_>, port: &Value, path: &str) -> Option<u64> {
    match r.get(port, "number")? {
        Value::Number(n) => n.as_u64(),
        other => {
            r.wrong_type(path, "a number", other);
            None
        }
    }
}

/// `networking.istio.io` (any version) Gateway `spec.servers[]`.
pub(crate) fn review_gateway(object: &Value, obj: &ObjectRef, out: &mut Vec<Finding>) {
    let mut found = Vec::new();
    {
        let mut r = Reader::new(obj, out);
        let Some(spec) = r.object(object, "spec", "spec") else {
            return;
        };
        for (i, server) in r.array(spec, "servers", "spec.servers").iter().enumerate() {
            let base = format!("spec.servers[{i}]");
            if !server.is_object() {
                r.wrong_type(&base, "a mapping", server);
                continue;
            }
            let hosts = r.strings(server, "hosts", &format!("{base}.hosts"));
            let (number, protocol) = match r.object(server, "port", &format!("{base}.port")) {
                Some(port) => (
                    port_number(&mut r, port, &format!("{base}.port.number")),
                    r.str(port, "protocol", &format!("{base}.port.protocol")),
                ),
                None => (None, None),
            };
            let tls = r.object(server, "tls", &format!("{base}.tls"));
            let (redirect, min_version) = match tls {
                Some(tls) => (
                    r.bool(tls, "httpsRedirect", &format!("{base}.tls.httpsRedirect")),
                    r.str(
                        tls,
                        "minProtocolVersion",
                        &format!("{base}.tls.minProtocolVersion"),
                    ),
                ),
                None => (None, None),
            };
            let port = number.map_or_else(|| "its port".to_string(), |n| format!("port {n}"));
            if let Some(p) = protocol
                && is_plaintext_http_protocol(p)
                && redirect != Some(true)
            {
                let p = p.trim().to_ascii_uppercase();
                found.push(Finding::new(
                    RuleId::Apg005,
                    obj,
                    format!("{base}.port.protocol"),
                    format!(
                        "server for hosts {hosts:?} on {port} serves plaintext {p} without tls.httpsRedirect: true, so tokens, cookies and API keys cross the network in clear text"
                    ),
                    "serve HTTPS (port 443, protocol HTTPS) with tls.mode SIMPLE or MUTUAL and tls.credentialName, and set tls.httpsRedirect: true on the port-80 HTTP server",
                ));
            }
            if let Some(v) = min_version
                && is_weak_tls_version(v)
            {
                found.push(Finding::new(
                    RuleId::Apg006,
                    obj,
                    format!("{base}.tls.minProtocolVersion"),
                    format!(
                        "is {v:?} for the server for hosts {hosts:?} on {port}; TLS 1.0 and 1.1 are broken (BEAST, weak ciphers) and disallowed by PCI DSS"
                    ),
                    "set tls.minProtocolVersion: TLSV1_2 (or TLSV1_3), or remove it (Istio's default minimum is TLS 1.2)",
                ));
            }
        }
    }
    out.extend(found);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::testing::rules_and_fields;
    use serde_json::json;

    fn review(spec: Value) -> Vec<Finding> {
        let object = json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "Gateway",
            "metadata": {"name": "edge", "namespace": "istio-ingress"},
            "spec": spec,
        });
        let obj = ObjectRef::of(&object);
        let mut out = Vec::new();
        review_gateway(&object, &obj, &mut out);
        out
    }

    #[test]
    fn protocols() {
        for p in ["HTTP", "http", "Http2", "grpc", "GRPC-WEB", " HTTP "] {
            assert!(is_plaintext_http_protocol(p), "{p}");
        }
        for p in ["HTTPS", "TLS", "TCP", "MONGO", "", "HTTP_PROXY"] {
            assert!(!is_plaintext_http_protocol(p), "{p}");
        }
    }

    #[test]
    fn plaintext_servers_without_redirect() {
        let f = review(json!({"selector": {"istio": "ingressgateway"}, "servers": [
            {"port": {"number": 80, "name": "http", "protocol": "http"}, "hosts": ["a.example"]},
            {"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["b.example"],
             "tls": {"httpsRedirect": true}},
            {"port": {"number": 8080, "name": "h2", "protocol": "HTTP2"}, "hosts": ["*"],
             "tls": {"httpsRedirect": false}},
            {"port": {"number": 443, "name": "https", "protocol": "HTTPS"}, "hosts": ["a.example"],
             "tls": {"mode": "SIMPLE", "credentialName": "a-cert"}},
            {"port": {"protocol": "GRPC"}},
        ]}));
        assert_eq!(
            rules_and_fields(&f),
            vec![
                (RuleId::Apg005, "spec.servers[0].port.protocol"),
                (RuleId::Apg005, "spec.servers[2].port.protocol"),
                (RuleId::Apg005, "spec.servers[4].port.protocol"),
            ],
            "{f:#?}"
        );
        assert!(
            f[0].message.starts_with(
                "APG005: Gateway istio-ingress/edge spec.servers[0].port.protocol: server for hosts [\"a.example\"] on port 80 serves plaintext HTTP without"
            ),
            "{}",
            f[0].message
        );
        assert!(
            f[2].message.contains("hosts [] on its port"),
            "{}",
            f[2].message
        );
    }

    #[test]
    fn weak_min_protocol_versions() {
        for v in ["TLSV1_0", "TLSV1_1", "TLSv1_0", "tlsv1.1", "1.0", "SSLv3"] {
            assert!(is_weak_tls_version(v), "{v}");
        }
        for v in ["TLSV1_2", "TLSV1_3", "TLS_AUTO", "1.2", "Auto", ""] {
            assert!(!is_weak_tls_version(v), "{v}");
        }
        let f = review(json!({"servers": [
            {"port": {"number": 443, "protocol": "HTTPS"}, "hosts": ["a.example"],
             "tls": {"mode": "SIMPLE", "credentialName": "c", "minProtocolVersion": "TLSV1_0"}},
            {"port": {"number": 8443, "protocol": "HTTPS"}, "hosts": ["b.example"],
             "tls": {"mode": "MUTUAL", "credentialName": "c", "minProtocolVersion": "TLSV1_1"}},
            {"port": {"number": 9443, "protocol": "HTTPS"}, "hosts": ["c.example"],
             "tls": {"mode": "SIMPLE", "credentialName": "c", "minProtocolVersion": "TLSV1_2"}},
            {"port": {"number": 9444, "protocol": "TLS"}, "hosts": ["d.example"],
             "tls": {"mode": "SIMPLE", "credentialName": "c", "minProtocolVersion": "TLS_AUTO"}},
        ]}));
        assert_eq!(
            rules_and_fields(&f),
            vec![
                (RuleId::Apg006, "spec.servers[0].tls.minProtocolVersion"),
                (RuleId::Apg006, "spec.servers[1].tls.minProtocolVersion"),
            ],
            "{f:#?}"
        );
    }

    #[test]
    fn wrong_types_are_apg014_not_panics() {
        let f = review(json!({"servers": [
            "http",
            {"port": "80", "hosts": "a.example"},
            {"port": {"number": "80", "protocol": 80}, "tls": {"httpsRedirect": "true"}},
            {"port": {"number": 80, "protocol": "HTTP"}, "hosts": ["a.example", 7],
             "tls": {"httpsRedirect": "yes", "minProtocolVersion": 1.0}},
            {"port": {"number": -1, "protocol": "HTTP"}, "tls": []},
        ]}));
        let fields = rules_and_fields(&f);
        for expected in [
            (RuleId::Apg014, "spec.servers[0]"),
            (RuleId::Apg014, "spec.servers[1].port"),
            (RuleId::Apg014, "spec.servers[1].hosts"),
            (RuleId::Apg014, "spec.servers[2].port.number"),
            (RuleId::Apg014, "spec.servers[2].port.protocol"),
            (RuleId::Apg014, "spec.servers[2].tls.httpsRedirect"),
            (RuleId::Apg014, "spec.servers[3].hosts[1]"),
            (RuleId::Apg014, "spec.servers[3].tls.httpsRedirect"),
            (RuleId::Apg014, "spec.servers[3].tls.minProtocolVersion"),
            // A redirect that is not a boolean redirects nothing.
            (RuleId::Apg005, "spec.servers[3].port.protocol"),
            (RuleId::Apg014, "spec.servers[4].tls"),
            (RuleId::Apg005, "spec.servers[4].port.protocol"),
        ] {
            assert!(fields.contains(&expected), "{expected:?} missing: {f:#?}");
        }
        assert_eq!(f.len(), 12, "{f:#?}");
        assert_eq!(
            rules_and_fields(&review(json!("servers"))),
            vec![(RuleId::Apg014, "spec")]
        );
        assert_eq!(
            rules_and_fields(&review(json!({"servers": {"port": 80}}))),
            vec![(RuleId::Apg014, "spec.servers")]
        );
        assert!(review(json!({})).is_empty());
        assert!(review(Value::Null).is_empty());
    }
}
