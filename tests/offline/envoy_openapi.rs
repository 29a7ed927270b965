//! `apiguard render` of a policy with `spec.openapi`: the document comes from a ConfigMap given
//! with `-f`, `--envoy-dir` writes `sensor.yaml` next to the Envoy files (and the real Envoy
//! accepts the `ext_proc` filter and the sensor's cluster), and a missing ConfigMap or an
//! invalid document is a clear error.

use crate::support::envoy::{apiguard_render, envoy_validate, read_rendered_dir};
use crate::support::tools::tool;
use apiguard::render::envoy::{BOOTSTRAP_FILE, static_bootstrap};
use apiguard::sensor::config::{SENSOR_CONFIG_FILE, SensorConfig};
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

/// Envoy accepts `bootstrap`.
fn validate(bootstrap: &Path) {
    let (ok, log) = envoy_validate(bootstrap);
    assert!(ok, "{} rejected:\n{log}", bootstrap.display());
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
    let full = static_bootstrap(&read_rendered_dir(&dir)).expect("static bootstrap");
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

/// A plaintext Internal policy whose routes are all public, with an inline contract.
fn live_manifests(mode: &str) -> String {
    let document = DOCUMENT.trim_end().replace('\n', "\n        ");
    format!(
        r#"apiVersion: apiguard.dev/v1alpha1
kind: ApiSecurityPolicy
metadata: {{name: items, namespace: test}}
spec:
  target: {{service: items, port: 8080}}
  exposure: Internal
  mode: {mode}
  tls: {{mode: Disabled}}
  authentication: {{required: false}}
  authorization:
    rules:
    - name: orders
      match: {{methods: [GET], paths: ["/users/{{userId}}/orders"]}}
      public: true
  eastWest: {{mtls: Disabled}}
  openapi:
    source:
      inline: |
        {document}
---
apiVersion: v1
kind: Service
metadata: {{name: items, namespace: test}}
spec:
  selector: {{app: items}}
  ports: [{{name: http, port: 8080}}]
"#
    )
}

/// Envoy serving `manifests` with the sensor expected at a port nothing listens on.
struct LiveEnvoy {
    _dir: tempfile::TempDir,
    child: std::process::Child,
    port: u16,
}

impl Drop for LiveEnvoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn envoy_without_sensor(manifests: &str, upstream: std::net::SocketAddr) -> LiveEnvoy {
    use crate::support::tools::free_port;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("policy.yaml");
    std::fs::write(&file, manifests).unwrap();
    let envoy_dir = dir.path().join("envoy");
    let (port, admin, sensor) = (free_port(), free_port(), free_port());
    apiguard_render(&[
        "-f",
        file.to_str().unwrap(),
        "--envoy-dir",
        envoy_dir.to_str().unwrap(),
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--admin",
        &format!("127.0.0.1:{admin}"),
        "--upstream",
        &upstream.to_string(),
        "--sensor-addr",
        &format!("127.0.0.1:{sensor}"),
        "--access-log",
        dir.path().join("access.log").to_str().unwrap(),
    ]);
    let log = std::fs::File::create(dir.path().join("envoy.log")).unwrap();
    let child = Command::new(tool("envoy"))
        .arg("-c")
        .arg(envoy_dir.join(BOOTSTRAP_FILE))
        .args(["--disable-hot-restart", "--concurrency", "1"])
        .args(["--base-id", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::from(log))
        .spawn()
        .expect("start envoy");
    let mut envoy = LiveEnvoy {
        _dir: dir,
        child,
        port,
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if let Ok(Some(status)) = envoy.child.try_wait() {
            panic!("envoy exited with {status}");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "envoy not listening within 30s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    envoy
}

async fn status(envoy: &LiveEnvoy, path: &str) -> u16 {
    use crate::support::envoy::{Request, raw_request};
    let addr = ([127, 0, 0, 1], envoy.port).into();
    let r = raw_request(addr, None, None, &Request::get(path).host("items"))
        .await
        .expect("a response");
    r.status
}

#[tokio::test]
async fn an_unreachable_sensor_fails_closed_in_enforce_and_open_in_audit() {
    let upstream = crate::support::envoy::echo_upstream().await;
    let enforce = envoy_without_sensor(&live_manifests("Enforce"), upstream.addr).await;
    assert_eq!(
        status(&enforce, "/users/alice/orders").await,
        503,
        "fail closed"
    );
    // Routes the gateway answers itself never call the sensor.
    assert_eq!(status(&enforce, "/undeclared").await, 404);
    drop(enforce);

    let audit = envoy_without_sensor(&live_manifests("Audit"), upstream.addr).await;
    assert_eq!(
        status(&audit, "/users/alice/orders").await,
        200,
        "fail open"
    );
}
