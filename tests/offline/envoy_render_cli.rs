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

#[test]
fn discovery_url_has_the_sensor_push_its_inventory_with_the_gateway_identity() {
    let path = format!(
        "{}/examples/bola-user-orders.yaml",
        env!("CARGO_MANIFEST_DIR")
    );
    let out = apiguard_render(&[
        "-f",
        &path,
        "--discovery-url",
        "https://apiguard.apiguard-system.svc/v1/discovery",
        "--discovery-interval",
        "20",
    ]);
    let objs: Vec<Value> = apiguard::manifest::parse_str("render output", &out)
        .expect("valid YAML")
        .into_iter()
        .map(|m| m.object)
        .collect();
    let data = &objs[0]["data"];
    let sensor = apiguard::sensor::config::SensorConfig::from_yaml(
        "sensor.yaml",
        data["sensor.yaml"].as_str().expect("sensor.yaml"),
    )
    .expect("sensor.yaml parses");
    let report = sensor.report.expect("a report section");
    assert_eq!(
        (report.url.as_str(), report.interval_seconds),
        ("https://apiguard.apiguard-system.svc/v1/discovery", 20)
    );
    let cert = data["identity.crt"].as_str().expect("identity.crt");
    assert!(cert.contains("BEGIN CERTIFICATE"), "{cert}");
    // The gateway's certificate: the same the gateway serves.
    assert_eq!(data["identity.crt"], data["server.crt"]);
    assert!(
        data["identity-ca.crt"]
            .as_str()
            .is_some_and(|c| c.contains("BEGIN CERTIFICATE"))
    );
    assert!(
        data.get("identity.key").is_none(),
        "no key in the ConfigMap"
    );
    assert!(
        objs[1]["data"].get("identity.key").is_some(),
        "the key is in the Secret"
    );
    let pod = &objs[2]["spec"]["template"]["spec"];
    let sensor_volume = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == "sensor")
        .expect("the sensor volume");
    assert_eq!(
        sensor_volume["projected"]["sources"][1]["secret"]["items"][0]["key"],
        "identity.key"
    );

    // Without the flag: no push, no identity files.
    let plain = objects("bola-user-orders.yaml");
    assert!(plain[0]["data"].get("identity.crt").is_none());
    assert!(
        !plain[0]["data"]["sensor.yaml"]
            .as_str()
            .unwrap_or_default()
            .contains("report")
    );
}

#[test]
fn a_discovery_url_that_is_not_https_is_refused() {
    let path = format!(
        "{}/examples/bola-user-orders.yaml",
        env!("CARGO_MANIFEST_DIR")
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_apiguard"))
        .args([
            "render",
            "-f",
            &path,
            "--discovery-url",
            "http://op/v1/discovery",
        ])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--discovery-url") && err.contains("https://"),
        "{err}"
    );
}
