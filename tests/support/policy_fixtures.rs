//! Invalid `ApiSecurityPolicy` fixtures, one or more per invariant: used by the local CEL + Rust
//! test (`tests/offline/policy_invariants.rs`) and by the real-apiserver test
//! (`tests/cluster/policy_invariants_apiserver.rs`), so all three judges see the same objects.

use apiguard::api::invariants::{self as inv, Invariant};
use serde_json::{Value, json};

/// A valid policy exercising every part the invariants look at.
pub fn base() -> Value {
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
            "requestValidation": {"maxBodyBytes": 1048576},
            "openapi": {"source": {"configMapRef": {"name": "payments-openapi", "key": "openapi.yaml"}}},
            "runtime": {
                "detectors": [
                    {"name": "login-stuffing", "match": {"methods": ["POST"], "paths": ["/login"]},
                     "when": {"statuses": [401, 403]}, "by": {"clientIP": {}},
                     "threshold": {"count": 20, "window": "1m"}, "action": "Block", "blockFor": "15m"},
                    {"name": "order-enumeration", "match": {"paths": ["/users/{userId}/orders"]},
                     "by": {"claim": "sub"},
                     "threshold": {"distinct": {"pathParam": "userId"}, "count": 50, "window": "5m"}}
                ],
                "baseline": {"enabled": true, "sensitivity": "Medium"}
            }
        }
    })
}

pub fn set(doc: &mut Value, pointer: &str, value: Value) {
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

pub fn remove(doc: &mut Value, pointer: &str) {
    let (parent, key) = pointer.rsplit_once('/').expect("pointer has a parent");
    if let Some(Value::Object(map)) = doc.pointer_mut(parent) {
        map.remove(key);
    }
}

/// One invalid fixture: the invariant it breaks and the field the Rust check must name.
pub struct Case {
    pub name: &'static str,
    pub invariant: Invariant,
    pub field: &'static str,
    pub mutate: fn(&mut Value),
}

impl Case {
    /// The base policy with this case's mutation applied.
    pub fn document(&self) -> Value {
        let mut doc = base();
        (self.mutate)(&mut doc);
        doc
    }
}

/// Every invalid fixture.
pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "cors_wildcard",
            invariant: inv::CORS_NO_WILDCARD,
            field: "spec.cors.allowOrigins[1]",
            mutate: |d: &mut Value| set(d, "/spec/cors/allowOrigins/1", json!("*")),
        },
        Case {
            name: "cors_credentials_null",
            invariant: inv::CORS_CREDENTIALS_ORIGINS,
            field: "spec.cors.allowOrigins[2]",
            mutate: |d: &mut Value| set(d, "/spec/cors/allowOrigins/2", json!("null")),
        },
        Case {
            name: "cors_credentials_http",
            invariant: inv::CORS_CREDENTIALS_ORIGINS,
            field: "spec.cors.allowOrigins[0]",
            mutate: |d: &mut Value| {
                set(d, "/spec/cors/allowOrigins/0", json!("http://shop.example"))
            },
        },
        Case {
            name: "internal_with_hosts",
            invariant: inv::HOSTS_ONLY_WHEN_EXPOSED,
            field: "spec.hosts",
            mutate: |d: &mut Value| set(d, "/spec/exposure", json!("Internal")),
        },
        Case {
            name: "unauthenticated",
            invariant: inv::UNAUTHENTICATED_ONLY_PUBLIC_RULES,
            field: "spec.authentication.required",
            mutate: |d: &mut Value| set(d, "/spec/authentication/required", json!(false)),
        },
        Case {
            name: "no_method",
            invariant: inv::AUTHENTICATION_METHOD,
            field: "spec.authentication",
            mutate: |d: &mut Value| {
                remove(d, "/spec/authentication/jwt");
                remove(d, "/spec/authorization/rules/0/providers");
            },
        },
        Case {
            name: "default_allow",
            invariant: inv::DEFAULT_DENY_WHEN_EXPOSED,
            field: "spec.authorization.defaultAction",
            mutate: |d: &mut Value| set(d, "/spec/authorization/defaultAction", json!("Allow")),
        },
        Case {
            name: "plaintext",
            invariant: inv::TLS_WHEN_EXPOSED,
            field: "spec.tls.mode",
            mutate: |d: &mut Value| set(d, "/spec/tls/mode", json!("Disabled")),
        },
        Case {
            name: "weak_tls",
            invariant: inv::TLS_MIN_VERSION,
            field: "spec.tls.minVersion",
            mutate: |d: &mut Value| set(d, "/spec/tls/minVersion", json!("TLSv1_1")),
        },
        Case {
            name: "http_issuer",
            invariant: inv::JWT_ISSUER_HTTPS,
            field: "spec.authentication.jwt.providers[0].issuer",
            mutate: |d: &mut Value| {
                set(
                    d,
                    "/spec/authentication/jwt/providers/0/issuer",
                    json!("http://idp.example.com/"),
                )
            },
        },
        Case {
            name: "http_jwks",
            invariant: inv::JWKS_URI_HTTPS,
            field: "spec.authentication.jwt.providers[0].jwks.uri",
            mutate: |d: &mut Value| {
                set(
                    d,
                    "/spec/authentication/jwt/providers/0/jwks/uri",
                    json!("http://idp.example.com/jwks"),
                )
            },
        },
        Case {
            name: "two_jwks_sources",
            invariant: inv::JWKS_ONE_SOURCE,
            field: "spec.authentication.jwt.providers[0].jwks",
            mutate: |d: &mut Value| {
                set(
                    d,
                    "/spec/authentication/jwt/providers/0/jwks/inline",
                    json!("{\"keys\":[]}"),
                )
            },
        },
        Case {
            name: "duplicate_provider",
            invariant: inv::UNIQUE_PROVIDER_NAMES,
            field: "spec.authentication.jwt.providers[0].name",
            mutate: |d: &mut Value| {
                let p = d
                    .pointer("/spec/authentication/jwt/providers/0")
                    .cloned()
                    .unwrap();
                set(d, "/spec/authentication/jwt/providers/1", p);
            },
        },
        Case {
            name: "reserved_header",
            invariant: inv::FORWARD_CLAIM_HEADER,
            field: "spec.authentication.jwt.providers[0].forwardClaims[0].header",
            mutate: |d: &mut Value| {
                set(
                    d,
                    "/spec/authentication/jwt/providers/0/forwardClaims/0/header",
                    json!("Authorization"),
                )
            },
        },
        Case {
            name: "envoy_header",
            invariant: inv::FORWARD_CLAIM_HEADER,
            field: "spec.authentication.jwt.providers[0].forwardClaims[0].header",
            mutate: |d: &mut Value| {
                set(
                    d,
                    "/spec/authentication/jwt/providers/0/forwardClaims/0/header",
                    json!("x-envoy-original-path"),
                )
            },
        },
        Case {
            name: "duplicate_rule",
            invariant: inv::UNIQUE_RULE_NAMES,
            field: "spec.authorization.rules[0].name",
            mutate: |d: &mut Value| {
                set(
                    d,
                    "/spec/authorization/rules/1/name",
                    json!("read-own-orders"),
                )
            },
        },
        Case {
            name: "bad_path",
            invariant: inv::PATH_TEMPLATES,
            field: "spec.authorization.rules[1].match.paths[0]",
            mutate: |d: &mut Value| {
                set(
                    d,
                    "/spec/authorization/rules/1/match/paths/0",
                    json!("/health/{unclosed"),
                )
            },
        },
        Case {
            name: "rate_limit_path",
            invariant: inv::PATH_TEMPLATES,
            field: "spec.rateLimits[0].match.paths[0]",
            mutate: |d: &mut Value| set(d, "/spec/rateLimits/0/match/paths/0", json!("/login/**")),
        },
        Case {
            name: "relative_path",
            invariant: inv::PATH_TEMPLATES,
            field: "spec.authorization.rules[1].match.paths[0]",
            mutate: |d: &mut Value| {
                set(
                    d,
                    "/spec/authorization/rules/1/match/paths/0",
                    json!("healthz"),
                )
            },
        },
        Case {
            name: "ownership_param",
            invariant: inv::OWNERSHIP_PARAM_IN_PATHS,
            field: "spec.authorization.rules[0].ownership.pathParam",
            mutate: |d: &mut Value| {
                set(
                    d,
                    "/spec/authorization/rules/0/ownership/pathParam",
                    json!("customerId"),
                )
            },
        },
        Case {
            name: "public_with_allow",
            invariant: inv::RULE_PUBLIC_OR_ALLOW,
            field: "spec.authorization.rules[1].public",
            mutate: |d: &mut Value| {
                set(
                    d,
                    "/spec/authorization/rules/1/allow",
                    json!({"scopes": ["x"]}),
                )
            },
        },
        Case {
            name: "duplicate_rate_limit",
            invariant: inv::UNIQUE_RATE_LIMIT_NAMES,
            field: "spec.rateLimits[0].name",
            mutate: |d: &mut Value| {
                let r = d.pointer("/spec/rateLimits/0").cloned().unwrap();
                set(d, "/spec/rateLimits/1", r);
            },
        },
        Case {
            name: "zero_rate",
            invariant: inv::RATE_LIMIT_POSITIVE,
            field: "spec.rateLimits[0].limit.requests",
            mutate: |d: &mut Value| set(d, "/spec/rateLimits/0/limit/requests", json!(0)),
        },
        Case {
            name: "two_keys",
            invariant: inv::RATE_LIMIT_ONE_KEY,
            field: "spec.rateLimits[0].by",
            mutate: |d: &mut Value| set(d, "/spec/rateLimits/0/by/header", json!("x-tenant")),
        },
        Case {
            name: "unknown_provider",
            invariant: inv::PROVIDER_REFERENCES,
            field: "spec.authorization.rules[0].providers[0]",
            mutate: |d: &mut Value| {
                set(
                    d,
                    "/spec/authorization/rules/0/providers/0",
                    json!("partner-idp"),
                )
            },
        },
        Case {
            name: "openapi_two_sources",
            invariant: inv::OPENAPI_ONE_SOURCE,
            field: "spec.openapi.source",
            mutate: |d: &mut Value| set(d, "/spec/openapi/source/inline", json!("openapi: 3.1.0")),
        },
        Case {
            name: "openapi_no_source",
            invariant: inv::OPENAPI_ONE_SOURCE,
            field: "spec.openapi.source",
            mutate: |d: &mut Value| remove(d, "/spec/openapi/source/configMapRef"),
        },
        Case {
            name: "openapi_empty_inline",
            invariant: inv::OPENAPI_ONE_SOURCE,
            field: "spec.openapi.source",
            mutate: |d: &mut Value| {
                remove(d, "/spec/openapi/source/configMapRef");
                set(d, "/spec/openapi/source/inline", json!(""));
            },
        },
        Case {
            name: "sensitive_data_without_discovery",
            invariant: inv::SENSITIVE_DATA_NEEDS_DISCOVERY,
            field: "spec.discovery.sensitiveData",
            mutate: |d: &mut Value| {
                set(
                    d,
                    "/spec/discovery",
                    json!({"enabled": false, "sensitiveData": "Sampled"}),
                )
            },
        },
        Case {
            name: "duplicate_detector_names",
            invariant: inv::UNIQUE_DETECTOR_NAMES,
            field: "spec.runtime.detectors[1].name",
            mutate: |d: &mut Value| {
                set(d, "/spec/runtime/detectors/1/name", json!("login-stuffing"))
            },
        },
        Case {
            name: "distinct_param_not_in_paths",
            invariant: inv::DISTINCT_PARAM_IN_PATHS,
            field: "spec.runtime.detectors[1].threshold.distinct.pathParam",
            mutate: |d: &mut Value| {
                set(
                    d,
                    "/spec/runtime/detectors/1/threshold/distinct/pathParam",
                    json!("orderId"),
                )
            },
        },
        Case {
            name: "distinct_without_paths",
            invariant: inv::DISTINCT_PARAM_IN_PATHS,
            field: "spec.runtime.detectors[1].threshold.distinct.pathParam",
            mutate: |d: &mut Value| remove(d, "/spec/runtime/detectors/1/match"),
        },
        Case {
            name: "block_for_on_an_alert",
            invariant: inv::BLOCK_FOR_ONLY_WITH_BLOCK,
            field: "spec.runtime.detectors[0].blockFor",
            mutate: |d: &mut Value| remove(d, "/spec/runtime/detectors/0/action"),
        },
    ]
}
