//! `apiguard render` without `--envoy-dir`: the objects the controller would apply.

use crate::support::envoy::apiguard_render;
use serde_json::Value;

fn objects(example: &str) -> Vec<Value> {
    let path = format!("{}/examples/{example}", env!("CARGO_MANIFEST_DIR"));
    let out = apiguard_render(&["-f", &path]);
    apiguard::manifest::parse_str("render output", &out)
        .expect("render prints valid multi-document YAML")
        .into_iter()
        .map(|m| m.object)
        .collect()
}

#[test]
fn prints_gateway_objects_with_secrets_apart() {
    let objs = objects("partner-api-mtls-apikeys.yaml");
    let kinds: Vec<&str> = objs.iter().filter_map(|o| o["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        [
            "ConfigMap",
            "Secret",
            "Deployment",
            "Service",
            "NetworkPolicy"
        ],
        "the objects the controller applies"
    );
    let cm = &objs[0];
    assert_eq!(cm["metadata"]["name"], "partner-settlements-apiguard");
    assert_eq!(
        cm["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "apiguard"
    );
    assert_eq!(
        cm["metadata"]["labels"]["apiguard.dev/policy"],
        "partner-settlements"
    );
    let cm_text = cm.to_string();
    assert!(
        !cm_text.contains("PRIVATE KEY"),
        "no private key in the ConfigMap"
    );
    assert!(
        !cm_text.contains("replace-with-a-long-random-key-for-acme"),
        "no API key in the ConfigMap"
    );
    let secret_keys: Vec<&String> = objs[1]["data"].as_object().expect("data").keys().collect();
    assert_eq!(
        secret_keys,
        ["apikeys.json", "server.key", "upstream.key"],
        "secret files in the Secret"
    );
    assert_eq!(
        objs[2]["spec"]["template"]["spec"]["containers"][0]["image"],
        "envoyproxy/envoy:v1.40.0"
    );
}

#[test]
fn missing_service_is_a_clear_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("policy.yaml");
    let text = std::fs::read_to_string(format!(
        "{}/examples/public-consumer-api.yaml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("example");
    let policy_only = text.split("\n---").next().expect("first document");
    std::fs::write(&path, policy_only).expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_apiguard"))
        .args(["render", "-f"])
        .arg(&path)
        .output()
        .expect("run");
    assert!(
        !out.status.success(),
        "render without the target Service fails"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("targets Service shop/storefront which was not given"),
        "error names the missing Service: {err}"
    );
}
