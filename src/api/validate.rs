//! The Rust side of the policy invariants in [`super::invariants`]: the same checks the CRD's
//! CEL rules make, reporting the same messages, with the concrete field path of the offending
//! value. `apiguard lint` and the webhook use this; the apiserver uses the CEL.

use super::invariants::{self as inv, Invariant};
use super::policy::*;
use regex::Regex;
use std::sync::LazyLock;

/// An invariant the spec breaks, at a concrete field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub invariant: Invariant,
    /// The offending field, e.g. `spec.cors.allowOrigins[0]`.
    pub field: String,
}

impl Violation {
    pub fn message(&self) -> &'static str {
        self.invariant.message
    }
}

static PATH_TEMPLATE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(inv::PATH_TEMPLATE_PATTERN).expect("PATH_TEMPLATE_PATTERN is a valid regex")
});

/// Whether a path is a valid route path (exact, `/prefix/*` or `{param}` template).
pub fn is_valid_path_template(path: &str) -> bool {
    PATH_TEMPLATE.is_match(path)
}

fn is_match_all_origin(origin: &str) -> bool {
    matches!(origin, "*" | ".*" | "https://*" | "http://*")
}

fn is_loopback_http(origin: &str) -> bool {
    ["http://localhost", "http://127.0.0.1", "http://[::1]"]
        .iter()
        .any(|p| origin.starts_with(p))
}

fn is_reserved_header(header: &str) -> bool {
    let h = header.to_ascii_lowercase();
    inv::RESERVED_HEADERS.contains(&h.as_str()) || h.starts_with("x-envoy-") || h.starts_with(':')
}

fn duplicates<'a>(names: impl Iterator<Item = &'a str>) -> Vec<usize> {
    let names: Vec<&str> = names.collect();
    (0..names.len())
        .filter(|&i| names.iter().filter(|n| **n == names[i]).count() > 1)
        .collect()
}

/// Collects the violations of the checks.
struct Out(Vec<Violation>);

impl Out {
    fn push(&mut self, invariant: Invariant, field: String) {
        self.0.push(Violation { invariant, field });
    }
}

/// One concern's invariants: pushes the violations of `spec` it finds.
type Check = fn(&ApiSecurityPolicySpec, &mut Out);

/// The checks, in the order their violations were always collected (which decides the order
/// of violations of the same invariant, e.g. [`inv::PATH_TEMPLATES`] of rules before rate
/// limits).
const CHECKS: &[Check] = &[
    check_cors,
    check_hosts,
    check_authentication,
    check_default_action,
    check_tls,
    check_jwt_providers,
    check_forward_claims,
    check_rule_names,
    check_rule_paths,
    check_ownership,
    check_public_rules,
    check_rate_limit_names,
    check_rate_limit_paths,
    check_rate_limits,
    check_provider_references,
    check_openapi_source,
    check_discovery,
    check_detectors,
];

/// Every invariant the spec breaks, in [`inv::ALL`] order.
pub fn validate_spec(spec: &ApiSecurityPolicySpec) -> Vec<Violation> {
    let mut out = Out(Vec::new());
    for check in CHECKS {
        check(spec, &mut out);
    }
    let mut out = out.0;
    out.sort_by_key(|v| inv::ALL.iter().position(|i| *i == v.invariant));
    out
}

fn jwt_providers(spec: &ApiSecurityPolicySpec) -> &[JwtProvider] {
    spec.authentication
        .as_ref()
        .and_then(|a| a.jwt.as_ref())
        .map(|j| j.providers.as_slice())
        .unwrap_or(&[])
}

fn check_cors(spec: &ApiSecurityPolicySpec, out: &mut Out) {
    if let Some(cors) = &spec.cors {
        for (i, o) in cors.allow_origins.iter().enumerate() {
            if is_match_all_origin(o) {
                out.push(
                    inv::CORS_NO_WILDCARD,
                    format!("spec.cors.allowOrigins[{i}]"),
                );
            }
        }
        if cors.allow_credentials {
            for (i, o) in cors.allow_origins.iter().enumerate() {
                if o == "null" || (o.starts_with("http://") && !is_loopback_http(o)) {
                    out.push(
                        inv::CORS_CREDENTIALS_ORIGINS,
                        format!("spec.cors.allowOrigins[{i}]"),
                    );
                }
            }
        }
    }
}

fn check_hosts(spec: &ApiSecurityPolicySpec, out: &mut Out) {
    if !spec.hosts.is_empty() && !spec.exposure.is_external() {
        out.push(inv::HOSTS_ONLY_WHEN_EXPOSED, "spec.hosts".into());
    }
}

fn check_authentication(spec: &ApiSecurityPolicySpec, out: &mut Out) {
    let rules = spec.rules();
    let all_public = !rules.is_empty() && rules.iter().all(|r| r.public);
    if let Some(auth) = &spec.authentication
        && !auth.required
        && !all_public
    {
        out.push(
            inv::UNAUTHENTICATED_ONLY_PUBLIC_RULES,
            "spec.authentication.required".into(),
        );
    }
    let has_method = spec.authentication.as_ref().is_some_and(|a| {
        a.jwt.is_some() || a.api_keys.is_some() || a.mtls.is_some() || !a.required
    });
    if !has_method && !all_public {
        out.push(inv::AUTHENTICATION_METHOD, "spec.authentication".into());
    }
}

fn check_default_action(spec: &ApiSecurityPolicySpec, out: &mut Out) {
    if spec.exposure.is_external() && spec.default_action() == DefaultAction::Allow {
        out.push(
            inv::DEFAULT_DENY_WHEN_EXPOSED,
            "spec.authorization.defaultAction".into(),
        );
    }
}

fn check_tls(spec: &ApiSecurityPolicySpec, out: &mut Out) {
    if let Some(tls) = &spec.tls {
        if spec.exposure.is_external() && tls.is_disabled() {
            out.push(inv::TLS_WHEN_EXPOSED, "spec.tls.mode".into());
        }
        if tls.min_version < TlsVersion::Tls12 {
            out.push(inv::TLS_MIN_VERSION, "spec.tls.minVersion".into());
        }
    }
}

fn check_jwt_providers(spec: &ApiSecurityPolicySpec, out: &mut Out) {
    let providers = jwt_providers(spec);
    for (i, p) in providers.iter().enumerate() {
        let base = format!("spec.authentication.jwt.providers[{i}]");
        if !p.issuer.starts_with("https://") {
            out.push(inv::JWT_ISSUER_HTTPS, format!("{base}.issuer"));
        }
        if let Some(uri) = &p.jwks.uri
            && !uri.starts_with("https://")
        {
            out.push(inv::JWKS_URI_HTTPS, format!("{base}.jwks.uri"));
        }
        let sources = [
            p.jwks.uri.is_some(),
            p.jwks.inline.is_some(),
            p.jwks.secret_ref.is_some(),
        ];
        if sources.iter().filter(|s| **s).count() != 1 {
            out.push(inv::JWKS_ONE_SOURCE, format!("{base}.jwks"));
        }
    }
    for i in duplicates(providers.iter().map(|p| p.name.as_str())) {
        out.push(
            inv::UNIQUE_PROVIDER_NAMES,
            format!("spec.authentication.jwt.providers[{i}].name"),
        );
    }
}

fn check_forward_claims(spec: &ApiSecurityPolicySpec, out: &mut Out) {
    for (i, p) in jwt_providers(spec).iter().enumerate() {
        for (j, fc) in p.forward_claims.iter().enumerate() {
            if is_reserved_header(&fc.header) {
                out.push(
                    inv::FORWARD_CLAIM_HEADER,
                    format!("spec.authentication.jwt.providers[{i}].forwardClaims[{j}].header"),
                );
            }
        }
    }
}

fn check_rule_names(spec: &ApiSecurityPolicySpec, out: &mut Out) {
    for i in duplicates(spec.rules().iter().map(|r| r.name.as_str())) {
        out.push(
            inv::UNIQUE_RULE_NAMES,
            format!("spec.authorization.rules[{i}].name"),
        );
    }
}

fn check_rule_paths(spec: &ApiSecurityPolicySpec, out: &mut Out) {
    for (i, r) in spec.rules().iter().enumerate() {
        for (j, p) in r.route.paths.iter().enumerate() {
            if !is_valid_path_template(p) {
                out.push(
                    inv::PATH_TEMPLATES,
                    format!("spec.authorization.rules[{i}].match.paths[{j}]"),
                );
            }
        }
    }
}

fn check_ownership(spec: &ApiSecurityPolicySpec, out: &mut Out) {
    for (i, r) in spec.rules().iter().enumerate() {
        if let Some(own) = &r.ownership {
            let param = format!("{{{}}}", own.path_param);
            if r.route.paths.is_empty() || r.route.paths.iter().any(|p| !p.contains(&param)) {
                out.push(
                    inv::OWNERSHIP_PARAM_IN_PATHS,
                    format!("spec.authorization.rules[{i}].ownership.pathParam"),
                );
            }
        }
    }
}

fn check_public_rules(spec: &ApiSecurityPolicySpec, out: &mut Out) {
    for (i, r) in spec.rules().iter().enumerate() {
        if r.public && (r.allow.is_some() || r.ownership.is_some()) {
            out.push(
                inv::RULE_PUBLIC_OR_ALLOW,
                format!("spec.authorization.rules[{i}].public"),
            );
        }
    }
}

fn check_rate_limit_names(spec: &ApiSecurityPolicySpec, out: &mut Out) {
    for i in duplicates(spec.rate_limits.iter().map(|r| r.name.as_str())) {
        out.push(
            inv::UNIQUE_RATE_LIMIT_NAMES,
            format!("spec.rateLimits[{i}].name"),
        );
    }
}

fn check_rate_limit_paths(spec: &ApiSecurityPolicySpec, out: &mut Out) {
    for (i, rl) in spec.rate_limits.iter().enumerate() {
        for (j, p) in rl.route.iter().flat_map(|m| m.paths.iter()).enumerate() {
            if !is_valid_path_template(p) {
                out.push(
                    inv::PATH_TEMPLATES,
                    format!("spec.rateLimits[{i}].match.paths[{j}]"),
                );
            }
        }
    }
}

fn check_rate_limits(spec: &ApiSecurityPolicySpec, out: &mut Out) {
    for (i, rl) in spec.rate_limits.iter().enumerate() {
        if rl.limit.requests == 0 {
            out.push(
                inv::RATE_LIMIT_POSITIVE,
                format!("spec.rateLimits[{i}].limit.requests"),
            );
        }
        if let Some(by) = &rl.by {
            let set = [
                by.claim.is_some(),
                by.client_ip.is_some(),
                by.api_key.is_some(),
                by.header.is_some(),
            ];
            if set.iter().filter(|s| **s).count() != 1 {
                out.push(inv::RATE_LIMIT_ONE_KEY, format!("spec.rateLimits[{i}].by"));
            }
        }
    }
}

fn check_provider_references(spec: &ApiSecurityPolicySpec, out: &mut Out) {
    let providers = jwt_providers(spec);
    for (i, r) in spec.rules().iter().enumerate() {
        for (j, name) in r.providers.iter().enumerate() {
            if !providers.iter().any(|p| &p.name == name) {
                out.push(
                    inv::PROVIDER_REFERENCES,
                    format!("spec.authorization.rules[{i}].providers[{j}]"),
                );
            }
        }
    }
}

fn check_discovery(spec: &ApiSecurityPolicySpec, out: &mut Out) {
    let discovery = spec.discovery();
    if !discovery.enabled && discovery.sensitive_data != SensitiveDataMode::Off {
        out.push(
            inv::SENSITIVE_DATA_NEEDS_DISCOVERY,
            "spec.discovery.sensitiveData".into(),
        );
    }
}

fn check_detectors(spec: &ApiSecurityPolicySpec, out: &mut Out) {
    let Some(runtime) = &spec.runtime else {
        return;
    };
    let detectors = &runtime.detectors;
    for i in duplicates(detectors.iter().map(|d| d.name.as_str())) {
        out.push(
            inv::UNIQUE_DETECTOR_NAMES,
            format!("spec.runtime.detectors[{i}].name"),
        );
    }
    for (i, d) in detectors.iter().enumerate() {
        if let Some(distinct) = &d.threshold.distinct {
            let param = format!("{{{}}}", distinct.path_param);
            let paths = d.route.as_ref().map(|r| r.paths.as_slice()).unwrap_or(&[]);
            if paths.is_empty() || paths.iter().any(|p| !p.contains(&param)) {
                out.push(
                    inv::DISTINCT_PARAM_IN_PATHS,
                    format!("spec.runtime.detectors[{i}].threshold.distinct.pathParam"),
                );
            }
        }
        if d.block_for.is_some() && d.action != DetectorAction::Block {
            out.push(
                inv::BLOCK_FOR_ONLY_WITH_BLOCK,
                format!("spec.runtime.detectors[{i}].blockFor"),
            );
        }
    }
}

fn check_openapi_source(spec: &ApiSecurityPolicySpec, out: &mut Out) {
    if let Some(openapi) = &spec.openapi {
        let source = &openapi.source;
        let inline = source.inline.as_ref().is_some_and(|d| !d.is_empty());
        if usize::from(source.config_map_ref.is_some()) + usize::from(inline) != 1 {
            out.push(inv::OPENAPI_ONE_SOURCE, "spec.openapi.source".into());
        }
    }
}
