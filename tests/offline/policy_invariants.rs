//! Each invariant of `ApiSecurityPolicy` is checked twice — by the CEL rule in the CRD (evaluated
//! here locally with kube's `cel` feature, as the apiserver would) and by the Rust validation that
//! `lint` and the webhook use. Both must refuse the same fixtures with the same message and accept
//! the same valid policies. `tests/cluster/policy_invariants_apiserver.rs` sends the same fixtures to a
//! real kube-apiserver.

use crate::support::policy_fixtures::{base, cases};
use apiguard::api::invariants as inv;
use apiguard::api::validate::validate_spec;
use apiguard::api::{ApiSecurityPolicy, ApiSecurityPolicySpec};
use serde_json::Value;

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

#[test]
fn every_invariant_is_enforced_by_cel_and_rust() {
    let mut failures = Vec::new();
    for case in cases() {
        let (invariant, field) = (case.invariant, case.field);
        let p = policy(&case.document());

        let rust = rust_messages(&p.spec);
        if !rust
            .iter()
            .any(|(m, f)| *m == invariant.message && f == field)
        {
            failures.push(format!(
                "{}: Rust validation must report {:?} at {field}; got {rust:#?}",
                case.name, invariant.message
            ));
        }
        if !rust.iter().all(|(m, _)| *m == invariant.message) {
            failures.push(format!(
                "{}: only the mutated invariant should fire; got {rust:#?}",
                case.name
            ));
        }
        let cel = cel_messages(&p);
        if !cel.iter().any(|m| m.contains(invariant.message)) {
            failures.push(format!(
                "{}: the CRD's CEL rules must refuse with {:?}; got {cel:#?}",
                case.name, invariant.message
            ));
        }
        if !invariant.message.starts_with(invariant.rule.id()) {
            failures.push(format!(
                "{}: message must start with its rule ID",
                case.name
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_invariant_has_a_fixture() {
    let cases = cases();
    for invariant in inv::ALL {
        assert!(
            cases.iter().any(|c| c.invariant == *invariant),
            "no fixture for {:?}",
            invariant.message
        );
    }
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
