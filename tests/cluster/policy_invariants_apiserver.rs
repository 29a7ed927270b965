//! The real kube-apiserver, with the CRD from `crds/` installed, refuses every invalid fixture
//! with the invariant's message (CEL runs before any webhook, so this is what kubectl shows),
//! and stores the valid policy.

use crate::support::cluster::{control_plane, with_temp_ns};
use crate::support::policy_fixtures::{base, cases};

fn with_namespace(mut doc: serde_json::Value, ns: &str) -> String {
    doc["metadata"]["namespace"] = serde_json::Value::String(ns.to_string());
    serde_json::to_string(&doc).expect("fixture serializes")
}

#[tokio::test]
async fn apiserver_refuses_each_invalid_fixture_with_the_invariant_message() {
    let _group = crate::support::isolation::enter(module_path!());
    let cp = control_plane();
    cp.install_crds();
    with_temp_ns(|_client, ns| async move {
        let valid = cp.kubectl_with_stdin(
            ["apply", "--dry-run=server", "-f", "-"],
            &with_namespace(base(), &ns),
        );
        assert!(
            valid.status.success(),
            "valid policy refused: {}",
            String::from_utf8_lossy(&valid.stderr)
        );

        let mut failures = Vec::new();
        for case in cases() {
            let out = cp.kubectl_with_stdin(
                ["apply", "--dry-run=server", "-f", "-"],
                &with_namespace(case.document(), &ns),
            );
            let stderr = String::from_utf8_lossy(&out.stderr);
            if out.status.success() {
                failures.push(format!("{}: accepted by the apiserver", case.name));
            } else if !stderr.contains(case.invariant.message) {
                failures.push(format!(
                    "{}: expected {:?} in kubectl's error, got {stderr}",
                    case.name, case.invariant.message
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    })
    .await;
}
