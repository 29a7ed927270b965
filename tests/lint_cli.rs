//! `apiguard lint` run as a user runs it: exit codes, the JSON shape of DESIGN.md, SARIF
//! 2.1.0 fields, text output, parse errors, stdin, modes and namespace exemptions.

use serde_json::Value;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn lint(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_apiguard"))
        .arg("lint")
        .args(args)
        .current_dir(root())
        .output()
        .expect("run apiguard")
}

fn json_findings(out: &Output) -> Vec<Value> {
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    v["findings"].as_array().expect("findings array").clone()
}

const WARN_RULES: &[&str] = &["APG008", "APG012", "APG013"];

#[test]
fn insecure_examples_fail_with_the_rule_each_file_is_named_for() {
    let out = lint(&["examples/insecure", "--format", "json"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let findings = json_findings(&out);
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("examples/insecure"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 14);
    for file in files {
        let name = file.file_name().unwrap().to_str().unwrap();
        let rule = &name[..6];
        let of_file: Vec<&Value> = findings
            .iter()
            .filter(|f| f["file"].as_str().unwrap().contains(name))
            .collect();
        let expected = if WARN_RULES.contains(&rule) {
            "warn"
        } else {
            "deny"
        };
        assert!(
            of_file
                .iter()
                .any(|f| f["rule"] == rule && f["severity"] == expected && f["exempted"] == false),
            "{name}: no {expected} {rule} finding in {of_file:#?}"
        );
        assert!(
            of_file.iter().all(|f| f["rule"] == rule),
            "{name}: findings of other rules: {of_file:#?}"
        );
    }
}

#[test]
fn secure_examples_are_clean() {
    let mut args: Vec<String> = std::fs::read_dir(root().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| p.strip_prefix(root()).unwrap().display().to_string())
        .collect();
    args.sort();
    assert!(args.len() >= 5, "{args:?}");
    args.extend(["--format".into(), "json".into()]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = lint(&refs);
    assert_eq!(json_findings(&out), Vec::<Value>::new());
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn json_has_exactly_the_design_shape() {
    let out = lint(&[
        "examples/insecure/APG004-gateway-bypass.yaml",
        "--format",
        "json",
    ]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut top: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    top.sort();
    assert_eq!(top, ["errors", "findings", "skipped", "summary"]);
    assert_eq!(v["errors"], serde_json::json!([]));
    assert_eq!(v["skipped"], serde_json::json!([]));
    assert_eq!(v["summary"]["files"], 1);
    assert_eq!(v["summary"]["objects"], 2, "{:#}", v["summary"]);
    let f = &v["findings"][0];
    let mut keys: Vec<&str> = f.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "exempted",
            "field",
            "file",
            "kind",
            "message",
            "name",
            "namespace",
            "remediation",
            "rule",
            "severity"
        ]
    );
    assert_eq!(
        f["field"],
        "spec.rules[0].http.paths[0].backend.service.name"
    );
    assert!(
        f["remediation"]
            .as_str()
            .unwrap()
            .starts_with("point the backend at the gateway Service "),
        "{f:#}"
    );
    assert_eq!(f["rule"], "APG004");
    assert_eq!(f["severity"], "deny");
    assert_eq!(f["kind"], "Ingress");
    assert_eq!(f["namespace"], "shop");
    assert_eq!(f["name"], "payments-direct");
    assert_eq!(f["exempted"], false);
    assert_eq!(
        f["file"],
        "examples/insecure/APG004-gateway-bypass.yaml:doc2"
    );
    assert!(
        f["message"]
            .as_str()
            .unwrap()
            .starts_with("APG004: Ingress shop/payments-direct ")
    );
}

#[test]
fn sarif_has_the_fields_code_scanning_reads() {
    let out = lint(&["examples/insecure", "--format", "sarif"]);
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["$schema"].as_str().unwrap().contains("sarif"));
    assert_eq!(v["version"], "2.1.0");
    let run = &v["runs"][0];
    let driver = &run["tool"]["driver"];
    assert_eq!(driver["name"], "apiguard");
    assert!(
        driver["informationUri"]
            .as_str()
            .unwrap()
            .starts_with("https://")
    );
    let rules = driver["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 14);
    for (i, r) in rules.iter().enumerate() {
        assert_eq!(r["id"], format!("APG{:03}", i + 1));
        assert!(r["name"].as_str().is_some_and(|n| !n.is_empty()));
        assert!(
            r["shortDescription"]["text"]
                .as_str()
                .is_some_and(|t| !t.is_empty())
        );
        let level = r["defaultConfiguration"]["level"].as_str().unwrap();
        assert!(level == "error" || level == "warning");
    }
    let results = run["results"].as_array().unwrap();
    assert_eq!(results.len(), 14);
    for r in results {
        let id = r["ruleId"].as_str().unwrap();
        assert_eq!(rules[r["ruleIndex"].as_u64().unwrap() as usize]["id"], id);
        let level = r["level"].as_str().unwrap();
        assert_eq!(level == "warning", WARN_RULES.contains(&id), "{r:#}");
        assert!(r["message"]["text"].as_str().unwrap().starts_with(id));
        let loc = &r["locations"][0]["physicalLocation"];
        let uri = loc["artifactLocation"]["uri"].as_str().unwrap();
        assert!(uri.starts_with("examples/insecure/APG"), "{uri}");
        // The region points at the first line of the object's document.
        let line = loc["region"]["startLine"].as_u64().expect("startLine") as usize;
        let text = std::fs::read_to_string(root().join(uri)).unwrap();
        let at = text.lines().nth(line - 1).unwrap();
        assert!(at.starts_with("apiVersion:"), "{uri}:{line}: {at}");
    }
    let bypass = results.iter().find(|r| r["ruleId"] == "APG004").unwrap();
    assert!(bypass["locations"][0]["physicalLocation"]["region"]["startLine"].as_u64() > Some(20));
}

#[test]
fn text_output_is_readable() {
    let out = lint(&["examples/insecure/APG001-cors-wildcard-origin.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("deny APG001 cors-wildcard-origin  Ingress shop/catalog-web"),
        "{text}"
    );
    assert!(
        text.contains("(examples/insecure/APG001-cors-wildcard-origin.yaml:doc1)"),
        "{text}"
    );
    assert!(
        text.contains("fix: set nginx.ingress.kubernetes.io/cors-allow-origin"),
        "{text}"
    );
    assert!(
        text.ends_with(
            "1 finding(s): 1 deny, 0 warn, 0 exempted; 1 object(s) in 1 file(s) checked\n"
        ),
        "{text}"
    );
}

#[test]
fn parse_errors_name_file_and_document_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\nkind: [unclosed\n",
    )
    .unwrap();
    let out = lint(&[bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}: document 2: not valid YAML", bad.display())),
        "{err}"
    );
    assert!(err.contains("line 5"), "{err}");

    let not_object = dir.path().join("list.yaml");
    std::fs::write(
        &not_object,
        "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\n- 1\n",
    )
    .unwrap();
    let out = lint(&[not_object.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("list.yaml: document 2: expected a Kubernetes object"),
        "{err}"
    );

    let out = lint(&[dir.path().join("missing.yaml").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let out = lint(&["examples", "--format", "xml"]);
    assert_eq!(out.status.code(), Some(2));
}

fn lint_stdin(args: &[&str], input: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_apiguard"))
        .arg("lint")
        .args(args)
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

const CORS_INGRESS: &str = r#"{"apiVersion":"networking.k8s.io/v1","kind":"Ingress",
 "metadata":{"name":"web","namespace":"shop","annotations":{
   "nginx.ingress.kubernetes.io/enable-cors":"true",
   "nginx.ingress.kubernetes.io/auth-url":"https://auth.example/verify"}},
 "spec":{"tls":[{"hosts":["web.example"]}],"rules":[{"host":"web.example","http":{"paths":[
   {"path":"/","pathType":"Prefix","backend":{"service":{"name":"web","port":{"number":80}}}}]}}]}}"#;

#[test]
fn stdin_is_read_with_dash() {
    let out = lint_stdin(&["-", "--format", "json"], CORS_INGRESS);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let f = json_findings(&out);
    assert_eq!(f.len(), 1, "{f:#?}");
    assert_eq!(f[0]["rule"], "APG001");
    assert_eq!(f[0]["file"], "<stdin>:doc1");
}

#[test]
fn modes_and_namespace_exemptions() {
    // Warn and Audit report but do not fail.
    for mode in ["Warn", "audit"] {
        let out = lint_stdin(&["-", "--format", "json", "--mode", mode], CORS_INGRESS);
        assert_eq!(out.status.code(), Some(0), "{mode}");
        assert_eq!(json_findings(&out).len(), 1, "{mode}");
    }
    let out = lint_stdin(
        &["-", "--format", "json", "--exempt-namespaces", "shop"],
        CORS_INGRESS,
    );
    assert_eq!(out.status.code(), Some(0));
    assert!(json_findings(&out).is_empty());

    let exempted = CORS_INGRESS.replace(
        r#""nginx.ingress.kubernetes.io/enable-cors":"true","#,
        r#""nginx.ingress.kubernetes.io/enable-cors":"true","apiguard.dev/exempt":"APG001=public read-only catalogue","#,
    );
    let out = lint_stdin(&["-", "--format", "json"], &exempted);
    assert_eq!(out.status.code(), Some(0));
    let f = json_findings(&out);
    assert_eq!((f.len(), &f[0]["exempted"]), (1, &Value::Bool(true)));
}

#[test]
fn list_and_directory_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("nested");
    std::fs::create_dir(&sub).unwrap();
    let list = format!(r#"{{"apiVersion":"v1","kind":"List","items":[{CORS_INGRESS}]}}"#);
    std::fs::write(sub.join("list.json"), list).unwrap();
    std::fs::write(sub.join("notes.txt"), "not a manifest").unwrap();
    let out = lint(&[dir.path().to_str().unwrap(), "--format", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let f = json_findings(&out);
    assert_eq!(f.len(), 1);
    assert!(
        f[0]["file"]
            .as_str()
            .unwrap()
            .ends_with("list.json:doc1:items[0]"),
        "{f:#?}"
    );
}
