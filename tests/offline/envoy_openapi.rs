//! `apiguard render` of a policy with `spec.openapi`: the document comes from a ConfigMap given
//! with `-f`, `--envoy-dir` writes `sensor.yaml` next to the Envoy files (and the real Envoy
//! accepts the `ext_proc` filter and the sensor's cluster), and a missing ConfigMap or an
//! invalid document is a clear error.

use crate::support::envoy::apiguard_render;
use crate::support::tools::tool;
use apiguard::render::envoy::{BOOTSTRAP_FILE, static_bootstrap};
use apiguard::render::{RenderedFile, RenderedGateway};
use apiguard::sensor::config::{SENSOR_CONFIG_FILE, SensorConfig};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

const DOCUMENT: &str = r#"openapi: 3.1.0
info: {title: orders, version: "1"}
paths:
  /users/{userId}/orders:
    get:
      parameters: [{name: userId, in: path, required: true, schema: {type: string}}]
      responses:
        "200":
          description: ok
          content:
            application/json:
              schema: {type: array, items: {type: object, properties: {id: {type: string}}}}
"#;

/// The BOLA example with a contract from ConfigMap `orders-openapi`, and that ConfigMap
/// holding `document` (none when `None`).
fn manifests(dir: &Path, document: Option<&str>) -> std::path::PathBuf {
    let example = format!(
        "{}/examples/bola-user-orders.yaml",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut text = std::fs::read_to_string(example).expect("example");
    text = text.replacen(
        "  requestValidation:\n",
        "  openapi:\n    source: {configMapRef: {name: orders-openapi, key: openapi.yaml}}\n    requests: Enforce\n    responses: Redact\n  requestValidation:\n",
        1,
    );
    if let Some(doc) = document {
        let cm = serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "orders-openapi", "namespace": "shop"},
            "data": {"openapi.yaml": doc},
        });
        text.push_str("\n---\n");
        text.push_str(&serde_json::to_string(&cm).expect("JSON"));
        text.push('\n');
    }
    let path = dir.join("policy.yaml");
    std::fs::write(&path, text).expect("write manifests");
    path
}

fn render_err(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_apiguard"))
        .arg("render")
        .args(args)
        .output()
        .expect("run apiguard render");
    assert!(!out.status.success(), "render {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn read_dir(dir: &Path) -> RenderedGateway {
    let mut files = BTreeMap::new();
    for e in std::fs::read_dir(dir).expect("envoy dir") {
        let e = e.expect("entry");
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || name == "ca.crt" {
            continue;
        }
        let contents = std::fs::read_to_string(e.path()).expect("read file");
        let secret = name.ends_with(".key");
        files.insert(name, RenderedFile { contents, secret });
    }
    RenderedGateway::new(files)
}

fn validate(bootstrap: &Path) {
    let out = Command::new(tool("envoy"))
        .args(["--mode", "validate", "--disable-hot-restart", "-c"])
        .arg(bootstrap)
        .output()
        .expect("run envoy --mode validate");
    assert!(
        out.status.success(),
        "{} rejected:\n{}{}",
        bootstrap.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn envoy_dir_with_a_contract_writes_sensor_yaml_and_envoy_accepts_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let policy = manifests(tmp.path(), Some(DOCUMENT));
    let dir = tmp.path().join("envoy");
    apiguard_render(&[
        "-f",
        policy.to_str().unwrap(),
        "--envoy-dir",
        dir.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--sensor-addr",
        "127.0.0.1:19002",
    ]);
    let text = std::fs::read_to_string(dir.join(SENSOR_CONFIG_FILE)).expect("sensor.yaml");
    let config = SensorConfig::from_yaml(SENSOR_CONFIG_FILE, &text).expect("sensor.yaml parses");
    assert_eq!(config.openapi.expect("contract").document, DOCUMENT);
    let cds = std::fs::read_to_string(dir.join("cds.json")).unwrap();
    assert!(
        cds.contains("19002"),
        "--sensor-addr reaches the sensor cluster: {cds}"
    );

    validate(&dir.join(BOOTSTRAP_FILE));
    let full = static_bootstrap(&read_dir(&dir)).expect("static bootstrap");
    let path = tmp.path().join("static.json");
    std::fs::write(&path, full).unwrap();
    validate(&path);
}

#[test]
fn printed_objects_carry_sensor_yaml_and_the_sidecar() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let policy = manifests(tmp.path(), Some(DOCUMENT));
    let out = apiguard_render(&["-f", policy.to_str().unwrap()]);
    assert!(
        out.contains("sensor.yaml: |") || out.contains("sensor.yaml:"),
        "{out}"
    );
    assert!(out.contains("name: sensor"), "{out}");
}

#[test]
fn a_missing_config_map_or_an_invalid_document_is_a_clear_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let policy = manifests(tmp.path(), None);
    let err = render_err(&["-f", policy.to_str().unwrap()]);
    assert!(
        err.contains("policy shop/orders")
            && err.contains("spec.openapi.source.configMapRef")
            && err.contains("ConfigMap shop/orders-openapi does not exist"),
        "{err}"
    );
    let invalid = DOCUMENT.replace("\"200\":", "\"9000\":");
    let policy = manifests(tmp.path(), Some(&invalid));
    let err = render_err(&["-f", policy.to_str().unwrap()]);
    assert!(
        err.contains("policy shop/orders")
            && err.contains("ConfigMap shop/orders-openapi key openapi.yaml")
            && err.contains("/paths/~1users~1{userId}~1orders/get"),
        "{err}"
    );
}
