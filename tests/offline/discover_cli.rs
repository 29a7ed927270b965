//! `apiguard discover` as a user runs it: a scripted gateway access log against a policy with
//! declared routes (rules and an OpenAPI ConfigMap), the table, the JSON report (shadow and
//! zombie endpoints), the OpenAPI skeleton round trip through `apiguard policy from-openapi` and
//! `apiguard lint`, and bad input exiting 2 with `file:line` and the field.

use crate::support::tools::root;
use serde_json::{Value, json};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

const UUID: &str = "6f1c0e3a-4b5d-4e6f-8a9b-0c1d2e3f4a5b";

const POLICY: &str = r#"apiVersion: v1
kind: ConfigMap
metadata: {name: users-openapi, namespace: shop}
data:
  openapi.yaml: |
    openapi: 3.1.0
    info: {title: users, version: '1'}
    paths:
      /users/{userId}:
        get:
          responses: {'200': {description: ok}}
      /v0/users:
        get:
          deprecated: true
          responses: {'200': {description: ok}}
---
apiVersion: apiguard.dev/v1alpha1
kind: ApiSecurityPolicy
metadata: {name: users, namespace: shop}
spec:
  target: {service: users, port: 8080}
  exposure: Internal
  openapi:
    source:
      configMapRef: {name: users-openapi, key: openapi.yaml}
  authorization:
    rules:
      - name: list-users
        match: {methods: [GET], paths: [/users]}
        public: true
"#;

/// One gateway access-log line (the fields `render::envoy::access_log_format` writes).
fn line(second: u32, method: &str, path: &str, status: u16, subject: Option<&str>) -> String {
    json!({
        "time": format!("2026-12-03T07:00:{second:02}.000Z"),
        "client": "10.0.0.7", "method": method, "path": path, "authority": "users.shop",
        "rule": null, "status": status, "subject": subject, "client_id": null,
        "client_cert": null, "decision": "allow", "reason": "via_upstream",
        "response_flags": "-", "duration_ms": 2, "request_id": "r",
        "response_content_type": "application/json",
    })
    .to_string()
}

fn access_log() -> String {
    [
        line(1, "GET", "/users", 200, None),
        line(2, "GET", "/users/123", 200, Some("alice")),
        line(3, "GET", &format!("/users/{UUID}"), 404, Some("bob")),
        line(4, "GET", "/v1/admin/export?format=csv", 403, None),
        line(5, "GET", "/v1/admin/export", 200, Some("mallory")),
        line(6, "GET", "/v0/users", 200, Some("alice")),
        String::new(),
        line(7, "DELETE", "/orders/98765", 401, None),
    ]
    .join("\n")
}

fn apiguard(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_apiguard"))
        .args(args)
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run apiguard");
    let mut input = child.stdin.take().unwrap();
    let _ = input.write_all(stdin.unwrap_or_default());
    drop(input);
    child.wait_with_output().expect("apiguard output")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

struct Files {
    _dir: tempfile::TempDir,
    log: String,
    policy: String,
}

fn files(log: &str) -> Files {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, content: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, content).expect("write");
        path.display().to_string()
    };
    Files {
        log: write("access.log", log),
        policy: write("policy.yaml", POLICY),
        _dir: dir,
    }
}

fn discover(f: &Files, format: &str) -> Output {
    apiguard(
        &[
            "discover",
            "--access-log",
            &f.log,
            "--policy",
            &f.policy,
            "--format",
            format,
        ],
        None,
    )
}

#[test]
fn the_json_report_names_shadow_and_zombie_endpoints() {
    let f = files(&access_log());
    let out = discover(&f, "json");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(report["policy"], "shop/users");
    assert_eq!(report["observed"], 7);
    let mut shadow: Vec<&str> = report["shadow"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    shadow.sort_unstable();
    assert_eq!(shadow, ["DELETE /orders/{param}", "GET /v1/admin/export"]);
    assert_eq!(report["zombie"], json!(["GET /v0/users"]));
    let endpoint = |path: &str| {
        report["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["path"] == path)
            .unwrap_or_else(|| panic!("{path} in {report:#}"))
            .clone()
    };
    let users = endpoint("/users/{userId}");
    assert_eq!(users["declared"], true);
    assert_eq!(
        users["requests"], 2,
        "/users/123 and /users/<uuid>: one endpoint"
    );
    assert_eq!(users["statuses"], json!({"2xx": 1, "4xx": 1}));
    assert_eq!(users["authenticated"], 2);
    assert_eq!(users["parameters"], json!({"userId": "string"}));
    assert_eq!(users["firstSeen"], "2026-12-03T07:00:02Z");
    assert_eq!(users["lastSeen"], "2026-12-03T07:00:03Z");
    let export = endpoint("/v1/admin/export");
    assert_eq!(export["declared"], false);
    assert_eq!(export["requests"], 2, "the query string is ignored");
    assert_eq!(export["statuses"], json!({"2xx": 1, "4xx": 1}));
    assert_eq!(endpoint("/users")["declared"], true, "declared by a rule");
    assert_eq!(endpoint("/v0/users")["deprecated"], true);
    assert_eq!(
        endpoint("/users")["contentTypes"],
        json!({"application/json": 1})
    );
    assert_eq!(
        endpoint("/users")["sensitive"],
        json!([]),
        "no bodies in a log"
    );
}

#[test]
fn the_table_marks_findings() {
    let f = files(&access_log());
    let out = discover(&f, "table");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    let row = |path: &str| {
        table
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(path))
            .unwrap_or_else(|| panic!("{path} in\n{table}"))
            .to_string()
    };
    assert!(row("/v1/admin/export").ends_with("shadow"), "{table}");
    assert!(row("/v0/users").ends_with("zombie"), "{table}");
    assert!(!row("/users").contains("shadow"), "{table}");
    assert!(
        table.contains("5 endpoints, 7 requests, 2 shadow, 1 zombie"),
        "{table}"
    );
}

#[test]
fn without_a_policy_everything_is_learned_and_nothing_declared() {
    let out = apiguard(
        &["discover", "--access-log", "-"],
        Some(access_log().as_bytes()),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert!(table.contains("/users/{param}"), "{table}");
    assert!(table.contains("no --policy"), "{table}");
}

/// The skeleton is a document `apiguard policy from-openapi` accepts, and its policy lints
/// with no deny-level finding.
#[test]
fn the_openapi_skeleton_round_trips_into_a_policy_that_lints() {
    let f = files(&access_log());
    let out = discover(&f, "openapi");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let doc: Value = serde_saphyr::from_str(&text(&out.stdout)).expect("YAML");
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["paths"]["/v0/users"]["get"]["deprecated"], true);
    let starter = apiguard(
        &[
            "policy",
            "from-openapi",
            "-",
            "--namespace",
            "shop",
            "--service",
            "users",
        ],
        Some(&out.stdout),
    );
    assert_eq!(starter.status.code(), Some(0), "{}", text(&starter.stderr));
    let yaml = text(&starter.stdout);
    assert!(yaml.contains("/v1/admin/export"), "{yaml}");
    assert!(yaml.contains("/users/{userId}"), "{yaml}");
    let lint = apiguard(&["lint", "-", "--format", "json"], Some(yaml.as_bytes()));
    let report: Value = serde_json::from_slice(&lint.stdout)
        .unwrap_or_else(|e| panic!("lint JSON ({e}): {}", text(&lint.stdout)));
    let denies: Vec<&Value> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["severity"] == "deny")
        .collect();
    assert_eq!(denies, Vec::<&Value>::new(), "{report:#}");
    assert_eq!(lint.status.code(), Some(0), "{report:#}");
}

#[test]
fn bad_input_exits_2_naming_the_file_line_and_field() {
    let mut log = access_log();
    log.push_str("\n{\"time\":\"2026-12-03T07:00:09Z\",\"method\":\"GET\",\"status\":200}\n");
    let f = files(&log);
    let out = discover(&f, "json");
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(out.stdout.is_empty());
    assert!(
        err.contains(&format!("{}:9: path is missing; ", f.log)),
        "{err}"
    );

    let out = apiguard(&["discover", "--access-log", "no/such.log"], None);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--access-log no/such.log cannot be read"),
        "{err}"
    );

    let out = apiguard(
        &["discover", "--access-log", "-", "--policy", "crds"],
        Some(b""),
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--policy holds no ApiSecurityPolicy"), "{err}");
    assert!(Path::new(&root().join("crds")).is_dir());
}
