//! `apiguard lint` run as a user runs it: exit codes, the JSON shape of docs/lint.md, SARIF
//! 2.1.0 fields, text output, parse errors, stdin, modes and namespace exemptions.

use serde_json::Value;
use std::io::Write;
use std::path::PathBuf;

use crate::support::tools::root;
use std::process::{Command, Output, Stdio};

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

const REPO: &str = "tests/fixtures/repo";

/// The findings of a JSON report as (rule, "Kind ns/name", field) triples, sorted.
fn triples(report: &Value) -> Vec<(String, String, String)> {
    let mut out: Vec<_> = report["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .map(|f| {
            (
                f["rule"].as_str().unwrap().to_string(),
                format!(
                    "{} {}/{}",
                    f["kind"].as_str().unwrap(),
                    f["namespace"].as_str().unwrap_or(""),
                    f["name"].as_str().unwrap()
                ),
                f["field"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

fn expected_repo_findings() -> Vec<(String, String, String)> {
    let mut v: Vec<(String, String, String)> = [
        (
            "APG001",
            "Ingress shop/shop",
            "metadata.annotations[nginx.ingress.kubernetes.io/enable-cors]",
        ),
        (
            "APG003",
            "HTTPRoute shop/orders",
            "spec.rules[1].backendRefs[0].name",
        ),
        (
            "APG006",
            "ConfigMap kube-system/ingress-nginx-controller",
            "data[ssl-protocols]",
        ),
    ]
    .iter()
    .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
    .collect();
    v.sort();
    v
}

fn skipped_of(report: &Value) -> Vec<(String, String)> {
    report["skipped"]
        .as_array()
        .expect("skipped")
        .iter()
        .map(|s| {
            let path = s["path"].as_str().unwrap();
            let rel = path.strip_prefix(&format!("{REPO}/")).unwrap_or(path);
            (rel.to_string(), s["reason"].as_str().unwrap().to_string())
        })
        .collect()
}

#[test]
fn a_repository_tree_lints_to_its_findings_in_every_format() {
    // JSON: the three real problems, every non-manifest skipped with its reason, no error.
    let out = lint(&[REPO, "--format", "json"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(triples(&report), expected_repo_findings(), "{report:#}");
    let mut skipped = skipped_of(&report);
    skipped.sort();
    assert_eq!(
        skipped,
        [
            (".github/workflows/ci.yaml", "not-kubernetes"),
            ("charts/shop/", "helm-chart"),
            ("docker-compose.yaml", "not-kubernetes"),
            ("k8s/base/kustomization.yaml", "kustomization"),
            ("k8s/overlays/prod/kustomization.yaml", "kustomization"),
            ("openapi.json", "not-kubernetes"),
        ]
        .map(|(p, r)| (p.to_string(), r.to_string()))
    );
    assert_eq!(report["errors"], serde_json::json!([]));
    assert_eq!(report["summary"]["objects"], 8);
    assert_eq!(report["summary"]["files"], 6);
    // The kube-system objects are checked offline by default.
    assert_eq!(report["summary"]["notChecked"], serde_json::json!({}));

    // SARIF: the same findings, the skipped paths as notes of a successful invocation.
    let out = lint(&[REPO, "--format", "sarif"]);
    assert_eq!(out.status.code(), Some(1));
    let sarif: Value = serde_json::from_slice(&out.stdout).expect("SARIF report");
    let run = &sarif["runs"][0];
    let mut rules: Vec<&str> = run["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["ruleId"].as_str().unwrap())
        .collect();
    rules.sort();
    assert_eq!(rules, ["APG001", "APG003", "APG006"]);
    let invocation = &run["invocations"][0];
    assert_eq!(invocation["executionSuccessful"], true);
    let notes = invocation["toolExecutionNotifications"].as_array().unwrap();
    assert_eq!(notes.len(), 6, "{notes:#?}");
    assert!(notes.iter().all(|n| n["level"] == "note"), "{notes:#?}");

    // Text: the findings, and the skipped paths counted (listed with -v).
    let out = lint(&[REPO]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    for rule in ["APG001", "APG003", "APG006"] {
        assert!(text.contains(&format!("deny {rule} ")), "{text}");
    }
    assert!(
        text.contains(
            "3 finding(s): 3 deny, 0 warn, 0 exempted; 8 object(s) in 6 file(s) checked\n"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "6 path(s) skipped: not Kubernetes manifests (1 helm-chart, 2 kustomization, 3 not-kubernetes); -v lists them\n"
        ),
        "{text}"
    );
    assert!(!text.contains("docker-compose.yaml"), "{text}");
    let out = lint(&[REPO, "-v"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains(&format!(
            "{REPO}/charts/shop/: Helm chart: lint what it renders"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "{REPO}/docker-compose.yaml: no document has apiVersion and kind"
        )),
        "{text}"
    );
}

#[test]
fn namespace_exemptions_are_opt_in_offline_and_never_silent() {
    let out = lint(&[
        REPO,
        "--format",
        "json",
        "--exempt-namespaces",
        "kube-system,kube-public",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rules: Vec<String> = triples(&report).into_iter().map(|t| t.0).collect();
    assert_eq!(rules, ["APG001", "APG003"]);
    assert_eq!(
        report["summary"]["notChecked"],
        serde_json::json!({"kube-system": 2})
    );
    assert_eq!(report["summary"]["objects"], 6);
    let out = lint(&[REPO, "--exempt-namespaces", "kube-system"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains(
            "2 object(s) not checked: in namespaces exempted by --exempt-namespaces: kube-system (2)\n"
        ),
        "{text}"
    );
}

fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn a_broken_manifest_is_an_error_reported_with_everything_else() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    copy_tree(&root().join(REPO), &repo);
    // A manifest with a YAML error, and Helm templates outside a chart directory.
    std::fs::write(
        repo.join("k8s/base/broken.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: broken\n  labels: {app: [unclosed\n",
    )
    .unwrap();
    std::fs::create_dir_all(repo.join("deploy/templates")).unwrap();
    std::fs::write(
        repo.join("deploy/templates/service.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {{ .Release.Name }}\n  labels:\n    {{- include \"labels\" . | nindent 4 }}\n",
    )
    .unwrap();
    let repo_arg = repo.to_str().unwrap();

    for format in ["json", "sarif", "text"] {
        let out = lint(&[repo_arg, "--format", format]);
        assert_eq!(out.status.code(), Some(2), "{format}: exit 2 wins over 1");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("broken.yaml: document 1: not valid YAML"),
            "{format}: {stderr}"
        );
        match format {
            "json" => {
                let report: Value = serde_json::from_slice(&out.stdout).expect("still JSON");
                assert_eq!(triples(&report), expected_repo_findings());
                let errors = report["errors"].as_array().unwrap();
                assert_eq!(errors.len(), 1, "{errors:#?}");
                assert!(
                    errors[0]["file"]
                        .as_str()
                        .unwrap()
                        .ends_with("k8s/base/broken.yaml")
                );
                assert!(skipped_of(&report).iter().any(|(p, r)| {
                    p.ends_with("deploy/templates/service.yaml") && r == "template"
                }));
            }
            "sarif" => {
                let sarif: Value = serde_json::from_slice(&out.stdout).expect("still SARIF");
                let invocation = &sarif["runs"][0]["invocations"][0];
                assert_eq!(invocation["executionSuccessful"], false);
                let errors: Vec<&Value> = invocation["toolExecutionNotifications"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|n| n["level"] == "error")
                    .collect();
                assert_eq!(errors.len(), 1);
                assert_eq!(sarif["runs"][0]["results"].as_array().unwrap().len(), 3);
            }
            _ => {
                let text = String::from_utf8(out.stdout).unwrap();
                assert!(text.contains("deny APG001 "), "{text}");
                assert!(
                    text.contains("1 file(s) could not be linted (errors on stderr)"),
                    "{text}"
                );
            }
        }
    }

    // Named explicitly, a file that is not a manifest is an error, not a skip.
    let out = lint(&[repo.join("charts/shop/values.yaml").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("values.yaml: document 1: missing `kind`"),
        "{stderr}"
    );
}

#[test]
fn text_findings_say_the_field_and_the_fix_once() {
    let policy = r#"{"apiVersion":"apiguard.dev/v1alpha1","kind":"ApiSecurityPolicy",
      "metadata":{"name":"orders","namespace":"shop"},
      "spec":{"target":{"service":"orders","port":8080},"exposure":"Public","hosts":["o.example"],
        "authentication":{"jwt":{"providers":[{"name":"corp","issuer":"https://idp.example/",
          "audiences":["o"],"jwks":{"uri":"https://idp.example/jwks"}}]}},
        "authorization":{"rules":[{"name":"r","match":{"paths":["/o"]}}]},
        "cors":{"allowOrigins":["*"]},"requestValidation":{"maxBodyBytes":1024}}}"#;
    let out = lint_stdin(&["-"], policy);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    let block: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("deny APG001"))
        .take(3)
        .collect();
    assert_eq!(block.len(), 3, "{text}");
    let (problem, fix) = (block[1].trim(), block[2].trim());
    assert!(
        problem.starts_with("spec.cors.allowOrigins[0]: must not contain"),
        "{problem}"
    );
    assert_eq!(
        problem.matches("spec.cors.allowOrigins").count(),
        1,
        "{problem}"
    );
    let fix_text = fix.strip_prefix("fix: ").expect("a fix line");
    assert!(
        !problem.contains(fix_text),
        "the fix is said twice: {problem}"
    );

    // An object with generateName and no name.
    let nameless = CORS_INGRESS.replace(r#""name":"web","#, r#""generateName":"web-","#);
    let out = lint_stdin(&["-"], &nameless);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("cors-wildcard-origin  Ingress shop/(unnamed)  (<stdin>:doc1)"),
        "{text}"
    );
    assert!(!text.contains("   ("), "{text}");
}

/// kubectl reads YAML 1.1, where an unquoted `Off` is the boolean false; lint reads the same
/// and names the field with the quoting fix, instead of a schema error naming no field.
#[test]
fn an_unquoted_off_is_named_with_its_field_and_the_quoting_fix() {
    let policy = "apiVersion: apiguard.dev/v1alpha1
kind: ApiSecurityPolicy
metadata: {name: items, namespace: shop}
spec:
  target: {service: items, port: 8080}
  openapi:
    source: {inline: \"openapi: 3.1.0\"}
    requests: Enforce
    responses: Off
";
    let out = lint_stdin(&["-", "--format", "json"], policy);
    let f = json_findings(&out);
    let finding = f
        .iter()
        .find(|f| f["field"] == "spec.openapi.responses")
        .unwrap_or_else(|| panic!("no finding on spec.openapi.responses: {f:#?}"));
    assert_eq!(finding["rule"], "APG014");
    let text = finding.to_string();
    assert!(
        text.contains("is the boolean false")
            && text.contains("quote it")
            && text.contains("\\\"Off\\\""),
        "{finding:#}"
    );
    let quoted = policy.replace("responses: Off", "responses: \"Off\"");
    let f = json_findings(&lint_stdin(&["-", "--format", "json"], &quoted));
    assert!(
        f.iter().all(|f| f["field"] != "spec.openapi.responses"),
        "{f:#?}"
    );
}
