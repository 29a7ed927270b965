//! APG007 insecure-jwt-provider for token providers configured outside ApiSecurityPolicy:
//! Istio `security.istio.io` RequestAuthentication `spec.jwtRules[]` and Envoy Gateway
//! SecurityPolicy `spec.jwt.providers[]` and `spec.oidc.provider` (the policy's own providers
//! are checked by the shared invariants `JWT_ISSUER_HTTPS` and `JWKS_URI_HTTPS`).
//!
//! The treatment matches the policy's: keys, discovery documents and tokens must travel over
//! `https://`, with no exception for loopback. A JWT issuer is only compared with the token's
//! `iss` claim and may legitimately be a non-URL string (Istio's `testing@secure.istio.io`),
//! so only an `http://` issuer is a finding; a JWKS URI, an OIDC issuer (the base of its
//! discovery document) and the OIDC endpoints must be `https://`. Schemes compare
//! case-insensitively; empty strings count as unset.

use super::json::Reader;
use super::{Finding, ObjectRef, RuleId};
use serde_json::Value;

/// Whether `url` starts with `prefix` (ASCII case-insensitive, after trimming).
fn has_scheme(url: &str, prefix: &str) -> bool {
    url.trim()
        .get(..prefix.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(prefix))
}

/// An `https://` URL.
pub(crate) fn is_https_url(url: &str) -> bool {
    has_scheme(url, "https://")
}

/// A plaintext `http://` URL (loopback included, as in the policy invariants).
pub(crate) fn is_plaintext_http_url(url: &str) -> bool {
    has_scheme(url, "http://")
}

const ISSUER_PROBLEM: &str =
    "a JWT issuer must be an https:// URL; tokens from a plaintext issuer can be forged in transit";
const ISSUER_FIX: &str = "use the provider's https:// issuer URL";

/// A JWT issuer: only `http://` is insecure (non-URL issuers are allowed).
fn check_jwt_issuer(obj: &ObjectRef, field: String, issuer: &str, found: &mut Vec<Finding>) {
    if is_plaintext_http_url(issuer) {
        found.push(Finding::new(
            RuleId::Apg007,
            obj,
            field,
            format!("is {issuer:?}: {ISSUER_PROBLEM}"),
            ISSUER_FIX,
        ));
    }
}

/// A URL that must be `https://` (empty: unset).
fn check_https(
    obj: &ObjectRef,
    field: String,
    url: &str,
    problem: &str,
    fix: &str,
    found: &mut Vec<Finding>,
) {
    if !url.trim().is_empty() && !is_https_url(url) {
        found.push(Finding::new(
            RuleId::Apg007,
            obj,
            field,
            format!("is {url:?}, not an https:// URL; {problem}"),
            fix,
        ));
    }
}

const JWKS_PROBLEM: &str = "keys fetched over plaintext can be replaced by an attacker, who can then mint tokens this gateway accepts";

/// `security.istio.io` (any version) RequestAuthentication `spec.jwtRules[]`.
pub(crate) fn review_request_authentication(
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
        for (i, rule) in r
            .array(spec, "jwtRules", "spec.jwtRules")
            .iter()
            .enumerate()
        {
            let base = format!("spec.jwtRules[{i}]");
            if !rule.is_object() {
                r.wrong_type(&base, "a mapping", rule);
                continue;
            }
            if let Some(issuer) = r.str(rule, "issuer", &format!("{base}.issuer")) {
                check_jwt_issuer(obj, format!("{base}.issuer"), issuer, &mut found);
            }
            if let Some(uri) = r.str(rule, "jwksUri", &format!("{base}.jwksUri")) {
                check_https(
                    obj,
                    format!("{base}.jwksUri"),
                    uri,
                    JWKS_PROBLEM,
                    "serve the JWKS over https://, or inline the keys in jwks",
                    &mut found,
                );
            }
        }
    }
    out.extend(found);
}

/// `gateway.envoyproxy.io/v1alpha1` SecurityPolicy `spec.jwt.providers[]` (issuer,
/// `remoteJWKS.uri`) and `spec.oidc.provider` (issuer, authorization and token endpoints).
pub(crate) fn review_envoy_security_policy(
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
        if let Some(jwt) = r.object(spec, "jwt", "spec.jwt") {
            for (i, p) in r
                .array(jwt, "providers", "spec.jwt.providers")
                .iter()
                .enumerate()
            {
                let base = format!("spec.jwt.providers[{i}]");
                if !p.is_object() {
                    r.wrong_type(&base, "a mapping", p);
                    continue;
                }
                if let Some(issuer) = r.str(p, "issuer", &format!("{base}.issuer")) {
                    check_jwt_issuer(obj, format!("{base}.issuer"), issuer, &mut found);
                }
                let uri = r
                    .object(p, "remoteJWKS", &format!("{base}.remoteJWKS"))
                    .and_then(|jwks| r.str(jwks, "uri", &format!("{base}.remoteJWKS.uri")));
                if let Some(uri) = uri {
                    check_https(
                        obj,
                        format!("{base}.remoteJWKS.uri"),
                        uri,
                        JWKS_PROBLEM,
                        "serve the JWKS over https://, or use localJWKS",
                        &mut found,
                    );
                }
            }
        }
        let provider = r
            .object(spec, "oidc", "spec.oidc")
            .and_then(|oidc| r.object(oidc, "provider", "spec.oidc.provider"));
        if let Some(provider) = provider {
            let checks: [(&str, &str, &str); 3] = [
                (
                    "issuer",
                    "the provider's discovery document and signing keys fetched over plaintext can be replaced by an attacker",
                    "use the provider's https:// issuer URL",
                ),
                (
                    "authorizationEndpoint",
                    "users are sent to the login page over plaintext, where credentials and authorization codes can be stolen",
                    "use the provider's https:// authorization endpoint",
                ),
                (
                    "tokenEndpoint",
                    "the client secret, authorization codes and the tokens issued for them cross the network in clear text",
                    "use the provider's https:// token endpoint",
                ),
            ];
            for (key, problem, fix) in checks {
                let field = format!("spec.oidc.provider.{key}");
                if let Some(url) = r.str(provider, key, &field) {
                    check_https(obj, field, url, problem, fix, &mut found);
                }
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

    fn run(
        f: fn(&Value, &ObjectRef, &mut Vec<Finding>),
        api_version: &str,
        kind: &str,
        spec: Value,
    ) -> Vec<Finding> {
        let object = json!({
            "apiVersion": api_version,
            "kind": kind,
            "metadata": {"name": "auth", "namespace": "shop"},
            "spec": spec,
        });
        let obj = ObjectRef::of(&object);
        let mut out = Vec::new();
        f(&object, &obj, &mut out);
        out
    }

    fn request_authentication(spec: Value) -> Vec<Finding> {
        run(
            review_request_authentication,
            "security.istio.io/v1",
            "RequestAuthentication",
            spec,
        )
    }

    fn security_policy(spec: Value) -> Vec<Finding> {
        run(
            review_envoy_security_policy,
            "gateway.envoyproxy.io/v1alpha1",
            "SecurityPolicy",
            spec,
        )
    }

    #[test]
    fn schemes() {
        assert!(is_https_url("https://idp.example/"));
        assert!(is_https_url(" HTTPS://idp.example/"));
        assert!(!is_https_url("http://idp.example/"));
        assert!(!is_https_url("httpsx"));
        assert!(!is_https_url("é"));
        assert!(is_plaintext_http_url("HTTP://idp.example"));
        assert!(is_plaintext_http_url("http://localhost:8080/jwks"));
        assert!(!is_plaintext_http_url("testing@secure.istio.io"));
        assert!(!is_plaintext_http_url("https://idp.example"));
    }

    #[test]
    fn istio_jwt_rules() {
        let f = request_authentication(json!({
            "selector": {"matchLabels": {"istio": "ingressgateway"}},
            "jwtRules": [
                // The Istio samples' issuer: not a URL, fine.
                {"issuer": "testing@secure.istio.io",
                 "jwksUri": "https://raw.githubusercontent.com/istio/istio/release-1.24/security/tools/jwt/samples/jwks.json"},
                {"issuer": "http://idp.example", "jwksUri": "http://idp.example/jwks"},
                // No loopback exception, as for ApiSecurityPolicy.
                {"issuer": "https://idp.example", "jwksUri": "http://127.0.0.1:8080/jwks"},
                {"issuer": "https://idp.example", "jwks": "{\"keys\": []}"},
                {"issuer": "https://idp.example", "jwksUri": ""},
                {"issuer": "issuer-without-scheme", "jwksUri": "idp.example/jwks"},
            ]
        }));
        assert_eq!(
            rules_and_fields(&f),
            vec![
                (RuleId::Apg007, "spec.jwtRules[1].issuer"),
                (RuleId::Apg007, "spec.jwtRules[1].jwksUri"),
                (RuleId::Apg007, "spec.jwtRules[2].jwksUri"),
                (RuleId::Apg007, "spec.jwtRules[5].jwksUri"),
            ],
            "{f:#?}"
        );
        assert_eq!(
            f[0].message,
            "APG007: RequestAuthentication shop/auth spec.jwtRules[1].issuer: is \"http://idp.example\": a JWT issuer must be an https:// URL; tokens from a plaintext issuer can be forged in transit; use the provider's https:// issuer URL"
        );
        assert!(f.iter().all(|x| x.severity == RuleId::Apg007.severity()));
    }

    #[test]
    fn envoy_jwt_and_oidc() {
        let f = security_policy(json!({
            "targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "api"}],
            "jwt": {"providers": [
                {"name": "ok", "issuer": "https://idp.example", "remoteJWKS": {"uri": "https://idp.example/jwks"}},
                {"name": "email-issuer", "issuer": "svc@idp.example", "remoteJWKS": {"uri": "https://idp.example/jwks"}},
                {"name": "no-issuer", "remoteJWKS": {"uri": "http://idp.example/jwks"}},
                {"name": "plain", "issuer": "http://idp.example", "localJWKS": {"type": "Inline", "inline": "{}"}},
            ]},
            "oidc": {
                "provider": {
                    "issuer": "http://keycloak.example/realms/shop",
                    "authorizationEndpoint": "http://keycloak.example/realms/shop/protocol/openid-connect/auth",
                    "tokenEndpoint": "https://keycloak.example/realms/shop/protocol/openid-connect/token",
                },
                "clientID": "shop",
                "clientSecret": {"name": "shop-oidc"},
            },
        }));
        assert_eq!(
            rules_and_fields(&f),
            vec![
                (RuleId::Apg007, "spec.jwt.providers[2].remoteJWKS.uri"),
                (RuleId::Apg007, "spec.jwt.providers[3].issuer"),
                (RuleId::Apg007, "spec.oidc.provider.issuer"),
                (RuleId::Apg007, "spec.oidc.provider.authorizationEndpoint"),
            ],
            "{f:#?}"
        );
        // An OIDC issuer is a URL: anything but https:// is a finding.
        let f = security_policy(json!({"oidc": {"provider": {"issuer": "keycloak.example",
            "tokenEndpoint": "http://localhost:8080/token"}}}));
        assert_eq!(
            rules_and_fields(&f),
            vec![
                (RuleId::Apg007, "spec.oidc.provider.issuer"),
                (RuleId::Apg007, "spec.oidc.provider.tokenEndpoint"),
            ],
            "{f:#?}"
        );
    }

    #[test]
    fn wrong_types_are_apg014_not_panics() {
        let f = request_authentication(json!({"jwtRules": [
            "http://idp.example",
            {"issuer": 1, "jwksUri": ["http://idp.example/jwks"]},
        ]}));
        assert_eq!(
            rules_and_fields(&f),
            vec![
                (RuleId::Apg014, "spec.jwtRules[0]"),
                (RuleId::Apg014, "spec.jwtRules[1].issuer"),
                (RuleId::Apg014, "spec.jwtRules[1].jwksUri"),
            ],
            "{f:#?}"
        );
        assert_eq!(
            rules_and_fields(&request_authentication(
                json!({"jwtRules": {"issuer": "x"}})
            )),
            vec![(RuleId::Apg014, "spec.jwtRules")]
        );
        assert_eq!(
            rules_and_fields(&request_authentication(json!([]))),
            vec![(RuleId::Apg014, "spec")]
        );

        let f = security_policy(json!({
            "jwt": {"providers": [
                7,
                {"name": "a", "issuer": false, "remoteJWKS": "http://idp.example/jwks"},
                {"name": "b", "remoteJWKS": {"uri": {"value": "http://x"}}},
            ]},
            "oidc": {"provider": {"issuer": null, "authorizationEndpoint": 3, "tokenEndpoint": []}},
        }));
        assert_eq!(
            rules_and_fields(&f),
            vec![
                (RuleId::Apg014, "spec.jwt.providers[0]"),
                (RuleId::Apg014, "spec.jwt.providers[1].issuer"),
                (RuleId::Apg014, "spec.jwt.providers[1].remoteJWKS"),
                (RuleId::Apg014, "spec.jwt.providers[2].remoteJWKS.uri"),
                (RuleId::Apg014, "spec.oidc.provider.authorizationEndpoint"),
                (RuleId::Apg014, "spec.oidc.provider.tokenEndpoint"),
            ],
            "{f:#?}"
        );
        assert_eq!(
            rules_and_fields(&security_policy(
                json!({"jwt": [], "oidc": {"provider": "x"}})
            )),
            vec![
                (RuleId::Apg014, "spec.jwt"),
                (RuleId::Apg014, "spec.oidc.provider")
            ]
        );
        assert!(security_policy(json!({"jwt": {}, "oidc": {}})).is_empty());
    }
}
