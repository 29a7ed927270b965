//! Each invariant of `ApiSecurityPolicy` is checked twice — by the CEL rule in the CRD (evaluated
//! here locally with kube's `cel` feature, as the apiserver would) and by the Rust validation that
//! `lint` and the webhook use. Both must refuse the same fixtures with the same message and accept
//! the same valid policies.

use apiguard::api::invariants::{self as inv, Invariant};
use apiguard::api::validate::validate_spec;
use apiguard::api::{ApiSecurityPolicy, ApiSecurityPolicySpec};
use rstest::rstest;
use serde_json::{Value, json};

fn base() -> Value {
    json!({
        "apiVersion": "apiguard.dev/v1alpha1",
        "kind": "ApiSecurityPolicy",
        "metadata": {"name": "payments", "namespace": "shop"},
        "spec": {
            "target": {"service": "payments", "port": 8080},
            "exposure": "Public",
            "hosts": ["payments.shop.example"],
            "tls": {"minVersion": "TLSv1_3"},
            "authentication": {"jwt": {"providers": [{
                "name": "corp",
                "issuer": "https://idp.example.com/",
                "audiences": ["payments-api"],
                "jwks": {"uri": "https://idp.example.com/.well-known/jwks.json"},
                "forwardClaims": [{"claim": "sub", "header": "x-user-id"}]
            }]}},
            "authorization": {"rules": [
                {"name": "read-own-orders",
                 "match": {"methods": ["GET"], "paths": ["/users/{userId}/orders"]},
                 "allow": {"scopes": ["orders:read"]},
                 "ownership": {"pathParam": "userId", "claim": "sub"},
                 "providers": ["corp"]},
                {"name": "health", "match": {"methods": ["GET"], "paths": ["/healthz"]}, "public": true}
            ]},
            "cors": {"allowOrigins": ["https://shop.example", "https://*.shop.example"], "allowCredentials": true},
            "rateLimits": [{"name": "login", "match": {"methods": ["POST"], "paths": ["/login"]},
                            "limit": {"requests": 5, "per": "Minute"}, "by": {"claim": "sub"}}],
            "requestValidation": {"maxBodyBytes": 1048576}
        }
    })
}

fn set(doc: &mut Value, pointer: &str, value: Value) {
    let (parent, key) = pointer.rsplit_once('/').expect("pointer has a parent");
    let target = doc
        .pointer_mut(parent)
        .unwrap_or_else(|| panic!("no {parent} in fixture"));
    match target {
        Value::Object(map) => {
            map.insert(key.to_string(), value);
        }
        Value::Array(items) => {
            let i: usize = key.parse().expect("array index");
            if i == items.len() {
                items.push(value);
            } else {
                items[i] = value;
            }
        }
        _ => panic!("{parent} is not a container"),
    }
}

fn remove(doc: &mut Value, pointer: &str) {
    let (parent, key) = pointer.rsplit_once('/').expect("pointer has a parent");
    if let Some(Value::Object(map)) = doc.pointer_mut(parent) {
        map.remove(key);
    }
}

fn policy(doc: &Value) -> ApiSecurityPolicy {
    serde_json::from_value(doc.clone()).expect("fixture deserializes into ApiSecurityPolicy")
}

fn cel_messages(p: &ApiSecurityPolicy) -> Vec<String> {
    match p.validate_cel() {
        Ok(()) => vec![],
        Err(errors) => errors.iter().map(|e| e.to_string()).collect(),
    }
}

fn rust_messages(spec: &ApiSecurityPolicySpec) -> Vec<(&'static str, String)> {
    validate_spec(spec)
        .into_iter()
        .map(|v| (v.message(), v.field))
        .collect()
}

#[test]
fn valid_policy_passes_cel_and_rust() {
    let p = policy(&base());
    assert_eq!(cel_messages(&p), Vec::<String>::new());
    assert_eq!(rust_messages(&p.spec), vec![]);
}

type Mutation = fn(&mut Value);

#[rstest]
#[case::cors_wildcard(inv::CORS_NO_WILDCARD, "spec.cors.allowOrigins[1]",
    |d: &mut Value| set(d, "/spec/cors/allowOrigins/1", json!("*")))]
#[case::cors_credentials_null(inv::CORS_CREDENTIALS_ORIGINS, "spec.cors.allowOrigins[2]",
    |d: &mut Value| set(d, "/spec/cors/allowOrigins/2", json!("null")))]
#[case::cors_credentials_http(inv::CORS_CREDENTIALS_ORIGINS, "spec.cors.allowOrigins[0]",
    |d: &mut Value| set(d, "/spec/cors/allowOrigins/0", json!("http://shop.example")))]
#[case::internal_with_hosts(inv::HOSTS_ONLY_WHEN_EXPOSED, "spec.hosts",
    |d: &mut Value| set(d, "/spec/exposure", json!("Internal")))]
#[case::unauthenticated(inv::UNAUTHENTICATED_ONLY_PUBLIC_RULES, "spec.authentication.required",
    |d: &mut Value| set(d, "/spec/authentication/required", json!(false)))]
#[case::no_method(inv::AUTHENTICATION_METHOD, "spec.authentication",
    |d: &mut Value| { remove(d, "/spec/authentication/jwt"); remove(d, "/spec/authorization/rules/0/providers"); })]
#[case::default_allow(inv::DEFAULT_DENY_WHEN_EXPOSED, "spec.authorization.defaultAction",
    |d: &mut Value| set(d, "/spec/authorization/defaultAction", json!("Allow")))]
#[case::plaintext(inv::TLS_WHEN_EXPOSED, "spec.tls.mode",
    |d: &mut Value| set(d, "/spec/tls/mode", json!("Disabled")))]
#[case::weak_tls(inv::TLS_MIN_VERSION, "spec.tls.minVersion",
    |d: &mut Value| set(d, "/spec/tls/minVersion", json!("TLSv1_1")))]
#[case::http_issuer(inv::JWT_ISSUER_HTTPS, "spec.authentication.jwt.providers[0].issuer",
    |d: &mut Value| set(d, "/spec/authentication/jwt/providers/0/issuer", json!("http://idp.example.com/")))]
#[case::http_jwks(inv::JWKS_URI_HTTPS, "spec.authentication.jwt.providers[0].jwks.uri",
    |d: &mut Value| set(d, "/spec/authentication/jwt/providers/0/jwks/uri", json!("http://idp.example.com/jwks")))]
#[case::two_jwks_sources(inv::JWKS_ONE_SOURCE, "spec.authentication.jwt.providers[0].jwks",
    |d: &mut Value| set(d, "/spec/authentication/jwt/providers/0/jwks/inline", json!("{\"keys\":[]}")))]
#[case::duplicate_provider(inv::UNIQUE_PROVIDER_NAMES, "spec.authentication.jwt.providers[0].name",
    |d: &mut Value| { let p = d.pointer("/spec/authentication/jwt/providers/0").cloned().unwrap(); set(d, "/spec/authentication/jwt/providers/1", p); })]
#[case::reserved_header(inv::FORWARD_CLAIM_HEADER, "spec.authentication.jwt.providers[0].forwardClaims[0].header",
    |d: &mut Value| set(d, "/spec/authentication/jwt/providers/0/forwardClaims/0/header", json!("Authorization")))]
#[case::envoy_header(inv::FORWARD_CLAIM_HEADER, "spec.authentication.jwt.providers[0].forwardClaims[0].header",
    |d: &mut Value| set(d, "/spec/authentication/jwt/providers/0/forwardClaims/0/header", json!("x-envoy-original-path")))]
#[case::duplicate_rule(inv::UNIQUE_RULE_NAMES, "spec.authorization.rules[0].name",
    |d: &mut Value| set(d, "/spec/authorization/rules/1/name", json!("read-own-orders")))]
#[case::bad_path(inv::PATH_TEMPLATES, "spec.authorization.rules[1].match.paths[0]",
    |d: &mut Value| set(d, "/spec/authorization/rules/1/match/paths/0", json!("/health/{unclosed")))]
#[case::rate_limit_path(inv::PATH_TEMPLATES, "spec.rateLimits[0].match.paths[0]",
    |d: &mut Value| set(d, "/spec/rateLimits/0/match/paths/0", json!("/login/**")))]
#[case::relative_path(inv::PATH_TEMPLATES, "spec.authorization.rules[1].match.paths[0]",
    |d: &mut Value| set(d, "/spec/authorization/rules/1/match/paths/0", json!("healthz")))]
#[case::ownership_param(inv::OWNERSHIP_PARAM_IN_PATHS, "spec.authorization.rules[0].ownership.pathParam",
    |d: &mut Value| set(d, "/spec/authorization/rules/0/ownership/pathParam", json!("customerId")))]
#[case::public_with_allow(inv::RULE_PUBLIC_OR_ALLOW, "spec.authorization.rules[1].public",
    |d: &mut Value| set(d, "/spec/authorization/rules/1/allow", json!({"scopes": ["x"]})))]
#[case::duplicate_rate_limit(inv::UNIQUE_RATE_LIMIT_NAMES, "spec.rateLimits[0].name",
    |d: &mut Value| { let r = d.pointer("/spec/rateLimits/0").cloned().unwrap(); set(d, "/spec/rateLimits/1", r); })]
#[case::zero_rate(inv::RATE_LIMIT_POSITIVE, "spec.rateLimits[0].limit.requests",
    |d: &mut Value| set(d, "/spec/rateLimits/0/limit/requests", json!(0)))]
#[case::two_keys(inv::RATE_LIMIT_ONE_KEY, "spec.rateLimits[0].by",
    |d: &mut Value| set(d, "/spec/rateLimits/0/by/header", json!("x-tenant")))]
#[case::unknown_provider(inv::PROVIDER_REFERENCES, "spec.authorization.rules[0].providers[0]",
    |d: &mut Value| set(d, "/spec/authorization/rules/0/providers/0", json!("partner-idp")))]
fn invariant_is_enforced_by_cel_and_rust(
    #[case] invariant: Invariant,
    #[case] field: &str,
    #[case] mutate: Mutation,
) {
    let mut doc = base();
    mutate(&mut doc);
    let p = policy(&doc);

    let rust = rust_messages(&p.spec);
    assert!(
        rust.iter()
            .any(|(m, f)| *m == invariant.message && f == field),
        "Rust validation must report {:?} at {field}; got {rust:#?}",
        invariant.message
    );
    assert!(
        rust.iter().all(|(m, _)| *m == invariant.message),
        "only the mutated invariant should fire; got {rust:#?}"
    );

    let cel = cel_messages(&p);
    assert!(
        cel.iter().any(|m| m.contains(invariant.message)),
        "the CRD's CEL rules must refuse with {:?}; got {cel:#?}",
        invariant.message
    );
    assert!(
        invariant.message.starts_with(invariant.rule.id()),
        "message starts with its rule ID"
    );
}

#[test]
fn every_invariant_has_a_fixture_above() {
    // The rstest cases cover each invariant in `inv::ALL`; keep this list in step.
    let src = include_str!("policy_invariants.rs");
    for invariant in inv::ALL {
        let name = inv_name(invariant);
        assert!(
            src.contains(&format!("(inv::{name},")),
            "no fixture for invariant {name}"
        );
    }
}

fn inv_name(i: &Invariant) -> &'static str {
    const NAMES: &[(&str, Invariant)] = &[
        ("CORS_NO_WILDCARD", inv::CORS_NO_WILDCARD),
        ("CORS_CREDENTIALS_ORIGINS", inv::CORS_CREDENTIALS_ORIGINS),
        ("HOSTS_ONLY_WHEN_EXPOSED", inv::HOSTS_ONLY_WHEN_EXPOSED),
        (
            "UNAUTHENTICATED_ONLY_PUBLIC_RULES",
            inv::UNAUTHENTICATED_ONLY_PUBLIC_RULES,
        ),
        ("AUTHENTICATION_METHOD", inv::AUTHENTICATION_METHOD),
        ("DEFAULT_DENY_WHEN_EXPOSED", inv::DEFAULT_DENY_WHEN_EXPOSED),
        ("TLS_WHEN_EXPOSED", inv::TLS_WHEN_EXPOSED),
        ("TLS_MIN_VERSION", inv::TLS_MIN_VERSION),
        ("JWT_ISSUER_HTTPS", inv::JWT_ISSUER_HTTPS),
        ("JWKS_URI_HTTPS", inv::JWKS_URI_HTTPS),
        ("JWKS_ONE_SOURCE", inv::JWKS_ONE_SOURCE),
        ("UNIQUE_PROVIDER_NAMES", inv::UNIQUE_PROVIDER_NAMES),
        ("FORWARD_CLAIM_HEADER", inv::FORWARD_CLAIM_HEADER),
        ("UNIQUE_RULE_NAMES", inv::UNIQUE_RULE_NAMES),
        ("PATH_TEMPLATES", inv::PATH_TEMPLATES),
        ("OWNERSHIP_PARAM_IN_PATHS", inv::OWNERSHIP_PARAM_IN_PATHS),
        ("RULE_PUBLIC_OR_ALLOW", inv::RULE_PUBLIC_OR_ALLOW),
        ("UNIQUE_RATE_LIMIT_NAMES", inv::UNIQUE_RATE_LIMIT_NAMES),
        ("RATE_LIMIT_POSITIVE", inv::RATE_LIMIT_POSITIVE),
        ("RATE_LIMIT_ONE_KEY", inv::RATE_LIMIT_ONE_KEY),
        ("PROVIDER_REFERENCES", inv::PROVIDER_REFERENCES),
    ];
    NAMES
        .iter()
        .find(|(_, x)| x == i)
        .map(|(n, _)| *n)
        .expect("invariant listed in NAMES")
}

#[test]
fn path_template_grammar() {
    use apiguard::api::validate::is_valid_path_template as ok;
    for good in [
        "/",
        "/*",
        "/healthz",
        "/orders/*",
        "/users/{userId}/orders",
        "/a/{b}/c/*",
        "/v1/items:batchGet",
    ] {
        assert!(ok(good), "{good} should be valid");
    }
    for bad in [
        "", "healthz", "/a//b", "/a/*/b", "/{}", "/{1x}", "/a/{b", "/a b", "/**",
    ] {
        assert!(!ok(bad), "{bad} should be invalid");
    }
}
