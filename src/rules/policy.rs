//! Rules over `ApiSecurityPolicy`: the cluster-state-free invariants (shared with the CRD's
//! CEL rules through [`crate::api::validate::validate_spec`]) plus the rules that are not
//! invariants: APG007 provider without audiences (warn), APG008, APG012, APG013, and the
//! cluster-state rules APG004 (target Service exposed directly) and APG010 (gateway of an
//! Internal/Private API exposed).

use super::bypass;
use super::{ClusterView, Finding, ObjectRef, RuleId, Severity};
use crate::api::invariants::{self as inv, Invariant};
use crate::api::validate::validate_spec;
use crate::api::{ApiSecurityPolicy, ApiSecurityPolicySpec, Isolation, RouteMatch};
use serde::Deserialize;
use serde_json::Value;

/// Largest request body limit APG013 accepts without a warning.
pub(crate) const MAX_BODY_BYTES_LIMIT: u64 = 10 * 1024 * 1024;

/// Words that make a route a sensitive flow (APG008), matched against path segments.
pub(crate) const SENSITIVE_WORDS: &[&str] = &[
    "login", "signin", "token", "signup", "register", "password", "reset", "otp", "checkout",
    "payment", "transfer",
];

pub fn review(object: &Value, obj: &ObjectRef, view: &dyn ClusterView, out: &mut Vec<Finding>) {
    let policy: ApiSecurityPolicy = match ApiSecurityPolicy::deserialize(object) {
        Ok(p) => p,
        Err(e) => {
            out.push(Finding::new(
                RuleId::Apg014,
                obj,
                "spec",
                format!("does not match the ApiSecurityPolicy schema: {e}"),
                "fix the field named in the error (see `kubectl explain apisecuritypolicy.spec`)",
            ));
            return;
        }
    };
    let spec = &policy.spec;
    for v in validate_spec(spec) {
        let text = v.message();
        let body = text
            .strip_prefix(v.invariant.rule.id())
            .and_then(|t| t.strip_prefix(": "))
            .unwrap_or(text);
        let remediation = invariant_remediation(&v.invariant, body);
        out.push(Finding {
            rule: v.invariant.rule,
            severity: v.invariant.rule.severity(),
            object: obj.clone(),
            message: format!("{}: {} {}: {}", v.invariant.rule.id(), obj, v.field, body),
            problem: invariant_problem(&v.field, body),
            field: v.field,
            remediation,
            exemption: None,
        });
    }
    audiences(spec, obj, out);
    if spec.exposure.is_external() {
        sensitive_flows(spec, obj, out);
        if spec.network().isolation == Isolation::None {
            out.push(Finding::new(
                RuleId::Apg012,
                obj,
                "spec.network.isolation",
                "is None on a Public/Partner API, so any workload in the cluster can call its pods directly, past the gateway",
                "remove spec.network.isolation (Strict is the default) so only the gateway and eastWest.allowedCallers reach the pods",
            ));
        }
        match spec.request_validation().max_body_bytes {
            None => out.push(Finding::new(
                RuleId::Apg013,
                obj,
                "spec.requestValidation.maxBodyBytes",
                "is not set on a Public/Partner API, so request bodies are unbounded",
                "set spec.requestValidation.maxBodyBytes to the largest body the API needs (e.g. 1048576)",
            )),
            Some(n) if n > MAX_BODY_BYTES_LIMIT => out.push(Finding::new(
                RuleId::Apg013,
                obj,
                "spec.requestValidation.maxBodyBytes",
                format!("is {n} bytes, above the 10 MiB ({MAX_BODY_BYTES_LIMIT} bytes) bound for a Public/Partner API"),
                "lower spec.requestValidation.maxBodyBytes to at most 10485760, or move large uploads to pre-signed object storage URLs",
            )),
            Some(_) => {}
        }
    }
    bypass::review_policy(&policy, obj, view, out);
}

/// What is wrong, from an invariant's message: without the fix after `; ` and without the
/// field path it starts with when that path is (a parent of) `field`, which reports print on
/// its own.
fn invariant_problem(field: &str, body: &str) -> String {
    let problem = body.split_once("; ").map_or(body, |(p, _)| p).trim();
    if let Some((first, rest)) = problem.split_once(' ')
        && (field == first
            || field.starts_with(&format!("{first}["))
            || field.starts_with(&format!("{first}.")))
    {
        return rest.trim_start().to_string();
    }
    problem.to_string()
}

/// The fix for an invariant: the part of its message after `; ` when that is an instruction,
/// otherwise an explicit one.
fn invariant_remediation(invariant: &Invariant, body: &str) -> String {
    if *invariant == inv::JWT_ISSUER_HTTPS {
        return "use the provider's https:// issuer URL".into();
    }
    if *invariant == inv::JWKS_URI_HTTPS {
        return "serve the JWKS over https://, or use jwks.inline or jwks.secretRef".into();
    }
    if *invariant == inv::TLS_MIN_VERSION {
        return "set spec.tls.minVersion to TLSv1_2 or TLSv1_3".into();
    }
    if *invariant == inv::RATE_LIMIT_POSITIVE {
        return "set limit.requests to at least 1; to block a route, leave it out of spec.authorization.rules".into();
    }
    body.split_once("; ")
        .map(|(_, fix)| fix)
        .unwrap_or(body)
        .to_string()
}

fn audiences(spec: &ApiSecurityPolicySpec, obj: &ObjectRef, out: &mut Vec<Finding>) {
    let providers = spec
        .authentication
        .as_ref()
        .and_then(|a| a.jwt.as_ref())
        .map(|j| j.providers.as_slice())
        .unwrap_or(&[]);
    for (i, p) in providers.iter().enumerate() {
        if p.audiences.is_empty() {
            out.push(
                Finding::new(
                    RuleId::Apg007,
                    obj,
                    format!("spec.authentication.jwt.providers[{i}].audiences"),
                    format!("is empty, so provider {:?} accepts tokens minted for any API of its issuer", p.name),
                    "list the audiences (aud claim values) issued for this API",
                )
                .with_severity(Severity::Warn),
            );
        }
    }
}

/// Whether a path names a sensitive flow: a segment (ignoring `-`, `_` and `.`) contains one
/// of [`SENSITIVE_WORDS`].
pub(crate) fn is_sensitive_path(path: &str) -> bool {
    path.split('/').any(|seg| {
        if seg.starts_with('{') {
            return false;
        }
        let norm: String = seg
            .chars()
            .filter(|c| !matches!(c, '-' | '_' | '.'))
            .flat_map(char::to_lowercase)
            .collect();
        SENSITIVE_WORDS.iter().any(|w| norm.contains(w))
    })
}

/// Reads (GET, HEAD, OPTIONS) are not flows; a rule matching every method includes writes.
fn changes_state(route: &RouteMatch) -> bool {
    route.methods.is_empty()
        || route
            .methods
            .iter()
            .any(|m| !matches!(m.as_str(), "GET" | "HEAD" | "OPTIONS"))
}

/// Path with every `{param}` replaced by `{}`, so templates compare by shape.
fn shape(path: &str) -> String {
    path.split('/')
        .map(|s| if s.starts_with('{') { "{}" } else { s })
        .collect::<Vec<_>>()
        .join("/")
}

fn path_covered(limit_path: &str, route_path: &str) -> bool {
    let (l, r) = (shape(limit_path), shape(route_path));
    if l == r || l == "/*" {
        return true;
    }
    match l.strip_suffix("/*") {
        Some(prefix) => r == prefix || r.starts_with(&format!("{prefix}/")),
        None => false,
    }
}

/// Whether a rate limit's match covers `path` of `route` (every method of the route).
fn covered(limit: Option<&RouteMatch>, route: &RouteMatch, path: &str) -> bool {
    let Some(m) = limit else { return true };
    let methods_ok = m.methods.is_empty()
        || (!route.methods.is_empty() && route.methods.iter().all(|x| m.methods.contains(x)));
    let paths_ok = m.paths.is_empty() || m.paths.iter().any(|p| path_covered(p, path));
    methods_ok && paths_ok
}

fn sensitive_flows(spec: &ApiSecurityPolicySpec, obj: &ObjectRef, out: &mut Vec<Finding>) {
    for (i, rule) in spec.rules().iter().enumerate() {
        if !changes_state(&rule.route) {
            continue;
        }
        for (j, path) in rule.route.paths.iter().enumerate() {
            if !is_sensitive_path(path) {
                continue;
            }
            if spec
                .rate_limits
                .iter()
                .any(|rl| covered(rl.route.as_ref(), &rule.route, path))
            {
                continue;
            }
            out.push(Finding::new(
                RuleId::Apg008,
                obj,
                format!("spec.authorization.rules[{i}].match.paths[{j}]"),
                format!(
                    "rule {:?} serves the sensitive flow {path:?} on a Public/Partner API and no spec.rateLimits[] entry covers it (credential stuffing, enumeration, fraud)",
                    rule.name
                ),
                format!(
                    "add a spec.rateLimits[] entry matching {path:?} (e.g. {{name: {}, match: {{paths: [\"{path}\"]}}, limit: {{requests: 10, per: Minute}}, by: {{clientIP: {{}}}}}})",
                    rule.name
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_invariant_has_a_remediation_that_is_an_instruction() {
        for i in inv::ALL {
            let body = i
                .message
                .split_once(": ")
                .map(|(_, b)| b)
                .unwrap_or(i.message);
            let fix = invariant_remediation(i, body);
            let first = fix.split_whitespace().next().unwrap_or("");
            assert!(
                first.starts_with(char::is_lowercase)
                    && !["keys", "tokens", "tls"].contains(&first),
                "{}: {fix}",
                i.message
            );
        }
    }

    #[test]
    fn sensitive_paths() {
        assert!(is_sensitive_path("/login"));
        assert!(is_sensitive_path("/v1/sign-in"));
        assert!(is_sensitive_path("/oauth/token"));
        assert!(is_sensitive_path("/users/{id}/password/reset"));
        assert!(!is_sensitive_path("/orders/{id}"));
        assert!(!is_sensitive_path("/users/{token}"));
    }

    #[test]
    fn coverage() {
        let route = RouteMatch {
            methods: vec!["POST".into()],
            paths: vec!["/users/{id}/password".into()],
        };
        assert!(covered(None, &route, "/users/{id}/password"));
        let prefix = RouteMatch {
            methods: vec![],
            paths: vec!["/users/*".into()],
        };
        assert!(covered(Some(&prefix), &route, "/users/{id}/password"));
        let other = RouteMatch {
            methods: vec!["GET".into()],
            paths: vec!["/users/{userId}/password".into()],
        };
        assert!(!covered(Some(&other), &route, "/users/{id}/password"));
        let templ = RouteMatch {
            methods: vec!["POST".into()],
            paths: vec!["/users/{userId}/password".into()],
        };
        assert!(covered(Some(&templ), &route, "/users/{id}/password"));
    }
}
