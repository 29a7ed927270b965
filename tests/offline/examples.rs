//! Every example parses into the Rust types of its kind (a typo in an example fails the build),
//! and every secure example policy passes both the CRD's CEL rules and the Rust validation.

use apiguard::api::ApiSecurityPolicy;
use apiguard::api::validate::validate_spec;
use apiguard::manifest::{Manifest, load_paths};
use k8s_openapi::api::{apps::v1::Deployment, core::v1::*, networking::v1::Ingress};
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};
use std::process::Command;

fn examples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples")
}

/// The manifests of a directory of examples (`*.yaml`; raw OpenAPI documents,
/// `*.openapi.yaml`, are not manifests).
fn manifest_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .filter(|p| !p.to_string_lossy().ends_with(".openapi.yaml"))
        .collect();
    files.sort();
    files
}

fn typed<T: DeserializeOwned>(m: &Manifest) {
    // Wrong types and misspelled enum values fail here; unknown keys of ApiSecurityPolicy
    // are caught by `assert_no_unknown_fields` below.
    let parsed: T = serde_json::from_value(m.object.clone()).unwrap_or_else(|e| {
        panic!(
            "{}: {} {} does not parse: {e}",
            m.source,
            m.kind(),
            m.name()
        )
    });
    let _ = parsed;
}

fn check_typed(m: &Manifest) -> bool {
    match (m.api_version(), m.kind()) {
        ("apiguard.dev/v1alpha1", "ApiSecurityPolicy") => {
            let p: ApiSecurityPolicy =
                serde_json::from_value(m.object.clone()).unwrap_or_else(|e| {
                    panic!(
                        "{}: ApiSecurityPolicy {} does not parse: {e}",
                        m.source,
                        m.name()
                    )
                });
            // No field may be silently dropped: serializing back gives the same spec keys.
            let back = serde_json::to_value(&p.spec).unwrap();
            assert_no_unknown_fields(&m.object["spec"], &back, &format!("{} spec", m.source));
            true
        }
        ("v1", "Service") => {
            typed::<Service>(m);
            true
        }
        ("v1", "ServiceAccount") => {
            typed::<ServiceAccount>(m);
            true
        }
        ("v1", "ConfigMap") => {
            typed::<ConfigMap>(m);
            true
        }
        ("v1", "Secret") => {
            typed::<Secret>(m);
            true
        }
        ("apps/v1", "Deployment") => {
            typed::<Deployment>(m);
            true
        }
        ("networking.k8s.io/v1", "Ingress") => {
            typed::<Ingress>(m);
            true
        }
        _ => false,
    }
}

/// Every key in `given` must survive the round trip through the Rust type.
fn assert_no_unknown_fields(given: &serde_json::Value, back: &serde_json::Value, at: &str) {
    match (given, back) {
        (serde_json::Value::Object(g), serde_json::Value::Object(b)) => {
            for (k, v) in g {
                let Some(bv) = b.get(k) else {
                    // Defaults equal to the serialized default may be skipped (e.g. public: false).
                    assert!(
                        v == &serde_json::Value::Bool(false)
                            || v.as_array().is_some_and(Vec::is_empty),
                        "{at}.{k}: unknown field or typo (dropped by the Rust type)"
                    );
                    continue;
                };
                assert_no_unknown_fields(v, bv, &format!("{at}.{k}"));
            }
        }
        (serde_json::Value::Array(g), serde_json::Value::Array(b)) => {
            for (i, (gv, bv)) in g.iter().zip(b).enumerate() {
                assert_no_unknown_fields(gv, bv, &format!("{at}[{i}]"));
            }
        }
        _ => {}
    }
}

#[test]
fn secure_examples_parse_and_validate() {
    let dir = examples_dir();
    let mut files = manifest_files(&dir);
    files.extend(manifest_files(&dir.join("openapi")));
    assert!(
        files.len() >= 7,
        "at least 7 example policies, found {}",
        files.len()
    );
    let manifests = load_paths(&files).unwrap();
    let mut policies = 0;
    for m in &manifests {
        assert!(
            check_typed(m),
            "{}: example of unexpected kind {}/{}",
            m.source,
            m.api_version(),
            m.kind()
        );
        if m.kind() == "ApiSecurityPolicy" {
            policies += 1;
            let p: ApiSecurityPolicy = serde_json::from_value(m.object.clone()).unwrap();
            assert_eq!(
                validate_spec(&p.spec),
                vec![],
                "{}: Rust validation",
                m.source
            );
            if let Err(e) = p.validate_cel() {
                panic!("{}: CEL validation: {e:?}", m.source);
            }
        }
    }
    assert!(policies >= 7);
}

#[test]
fn insecure_examples_parse() {
    let manifests = load_paths(&[examples_dir().join("insecure")]).unwrap();
    let mut ids = std::collections::BTreeSet::new();
    for m in &manifests {
        check_typed(m);
        let file = std::path::Path::new(&m.source.file)
            .file_name()
            .unwrap()
            .to_string_lossy()
            .to_string();
        ids.insert(file[..6].to_string());
    }
    let expected: std::collections::BTreeSet<String> = apiguard::catalog::RuleId::ALL
        .iter()
        .map(|r| r.id().to_string())
        .collect();
    assert_eq!(ids, expected, "one insecure example per rule ID");
}

/// examples/openapi: the ConfigMap holds the document next to it byte for byte, the document
/// compiles as a contract, and the example lints clean and renders like the others.
#[test]
fn openapi_example_holds_its_document_lints_clean_and_renders() {
    let dir = examples_dir().join("openapi");
    let document = std::fs::read_to_string(dir.join("orders-api.openapi.yaml")).unwrap();
    apiguard::contract::Contract::compile(&document, &Default::default())
        .expect("the example document compiles");
    let manifests = load_paths(&[dir.join("orders-api.yaml")]).unwrap();
    let config_map = manifests
        .iter()
        .find(|m| m.kind() == "ConfigMap")
        .expect("a ConfigMap");
    assert_eq!(
        config_map.object["data"]["openapi.yaml"].as_str(),
        Some(document.as_str()),
        "examples/openapi/orders-api.yaml's ConfigMap must hold orders-api.openapi.yaml verbatim"
    );
    let policy = manifests
        .iter()
        .find(|m| m.kind() == "ApiSecurityPolicy")
        .expect("a policy");
    let reference = &policy.object["spec"]["openapi"]["source"]["configMapRef"];
    assert_eq!(reference["name"], config_map.object["metadata"]["name"]);
    assert_eq!(reference["key"], "openapi.yaml");

    let apiguard = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_apiguard"))
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("run apiguard")
    };
    let lint = apiguard(&["lint", "examples/openapi", "--format", "json"]);
    let report: serde_json::Value = serde_json::from_slice(&lint.stdout).unwrap();
    assert_eq!(report["findings"], serde_json::json!([]), "{report:#}");
    assert_eq!(report["errors"], serde_json::json!([]), "{report:#}");
    assert_eq!(lint.status.code(), Some(0), "{report:#}");
    let render = apiguard(&["render", "-f", "examples/openapi/orders-api.yaml"]);
    assert!(
        render.status.success(),
        "render: {}",
        String::from_utf8_lossy(&render.stderr)
    );
}

/// The README's `apiguard discover` example: the orders API's access log against its policy and
/// contract shows the undeclared `/v1/admin/export` as a shadow endpoint.
#[test]
fn the_example_access_log_shows_a_shadow_endpoint() {
    let out = Command::new(env!("CARGO_BIN_EXE_apiguard"))
        .args([
            "discover",
            "--access-log",
            "examples/openapi/orders-gateway.log",
            "--policy",
            "examples/openapi/orders-api.yaml",
            "--format",
            "json",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run apiguard discover");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["shadow"],
        serde_json::json!(["GET /v1/admin/export"]),
        "{report:#}"
    );
    assert_eq!(report["observed"], 9, "{report:#}");
}
