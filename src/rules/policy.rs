//! Rules over `ApiSecurityPolicy`: the cluster-state-free invariants (shared with the CRD's
//! CEL rules through [`crate::api::validate::validate_spec`]) plus the rules that are not
//! invariants: APG007 provider without audiences (warn), APG008, APG012, APG013, and the
//! cluster-state rules APG004 (target Service exposed directly) and APG010 (gateway of an
//! Internal/Private API exposed).

use super::bypass;
use super::{ClusterView, Finding, ObjectRef, RuleId, Severity};
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
            // serde names no field: the schema walk does, for a value of the wrong type.
            let finding = match crate::api::shape::first_type_mismatch(object) {
                Some(m) => Finding::new(RuleId::Apg014, obj, m.field, m.problem, m.fix),
                None => Finding::new(
                    RuleId::Apg014,
                    obj,
                    "spec",
                    format!("does not match the ApiSecurityPolicy schema: {e}"),
                    "fix the field named in the error (see `kubectl explain apisecuritypolicy.spec`)",
                ),
            };
            out.push(finding);
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
        let (problem, fix) = split_invariant(&v.field, body);
        out.push(Finding::new(v.invariant.rule, obj, v.field, problem, fix));
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

/// An invariant's message (`<field> <what is wrong>; <fix>`) split into what is wrong and the
/// fix, without the field path it starts with when that path names `field` (concrete indices
/// or `[]`) or one of its parents: reports print the field on their own. Every invariant's
/// message has a fix after its first `; ` (a test checks).
fn split_invariant(field: &str, body: &str) -> (String, String) {
    let (problem, fix) = body.split_once("; ").unwrap_or((body, ""));
    (
        strip_field(field, problem.trim()).to_string(),
        fix.trim().to_string(),
    )
}

/// `problem` without a leading field path that names `field` or a parent of it, and without a
/// parenthetical that follows it (`match.paths[] (spec.authorization.rules[] ...) must ...`).
fn strip_field<'a>(field: &str, problem: &'a str) -> &'a str {
    let Some((first, rest)) = problem.split_once(' ') else {
        return problem;
    };
    let generic = generic_path(field);
    let names_field = generic == first
        || generic.starts_with(&format!("{first}["))
        || generic.starts_with(&format!("{first}."))
        || generic.ends_with(&format!(".{first}"))
        || generic.contains(&format!(".{first}."))
        || generic.contains(&format!(".{first}["));
    if !names_field {
        return problem;
    }
    let rest = rest.trim_start();
    match rest.strip_prefix('(').and_then(|r| r.split_once(") ")) {
        Some((_, after)) => after.trim_start(),
        None => rest,
    }
}

/// A field path with every index written `[]` (`rules[2].name` -> `rules[].name`).
fn generic_path(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut in_index = false;
    for c in field.chars() {
        match c {
            '[' => {
                in_index = true;
                out.push('[');
            }
            ']' => {
                in_index = false;
                out.push(']');
            }
            _ if in_index => {}
            _ => out.push(c),
        }
    }
    out
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
    use crate::api::invariants as inv;

    /// Every invariant's message is `<field> <what is wrong>; <fix>`: split for the field the
    /// message names (indices made concrete), the problem starts with what is wrong, not with
    /// the field again, and the fix is an instruction that is not the problem again.
    #[test]
    fn every_invariant_splits_into_a_problem_and_an_instruction() {
        for i in inv::ALL {
            let body = i.message.split_once(": ").map_or(i.message, |(_, b)| b);
            let field = body.split(' ').next().unwrap().replace("[]", "[0]");
            let (problem, fix) = split_invariant(&field, body);
            let verb = problem.split_whitespace().next().unwrap_or("");
            assert!(
                ["must", "may", "needs", "is"].contains(&verb),
                "{}: problem {problem:?}",
                i.message
            );
            let first = fix.split_whitespace().next().unwrap_or("");
            assert!(
                first.starts_with(char::is_lowercase)
                    && !["keys", "tokens", "tls"].contains(&first),
                "{}: fix {fix:?}",
                i.message
            );
            assert!(!problem.contains(&fix), "{}", i.message);
        }
    }

    #[test]
    fn the_field_is_stripped_in_any_index_form() {
        let body =
            "spec.authentication.jwt.providers[].issuer must be an https:// URL (why); use https";
        let (problem, fix) = split_invariant("spec.authentication.jwt.providers[3].issuer", body);
        assert_eq!(problem, "must be an https:// URL (why)");
        assert_eq!(fix, "use https");
        let paths = "match.paths[] (spec.authorization.rules[] and spec.rateLimits[]) must be exact; write /a";
        let (problem, _) = split_invariant("spec.rateLimits[1].match.paths[0]", paths);
        assert_eq!(problem, "must be exact");
        let other = "spec.hosts must be empty unless spec.exposure is Public; remove the hosts";
        assert_eq!(
            split_invariant("spec.tls", other).0,
            "spec.hosts must be empty unless spec.exposure is Public"
        );
        assert_eq!(generic_path("a.b[12].c[0]"), "a.b[].c[]");
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
