//! The checked-in CRD is exactly what `apiguard crd` prints, and has what users rely on.

use std::process::Command;

const CHECKED_IN: &str = "crds/apiguard.dev_apisecuritypolicies.yaml";
const REGENERATE: &str = "cargo run -q -- crd > crds/apiguard.dev_apisecuritypolicies.yaml";

fn generated() -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_apiguard"))
        .arg("crd")
        .output()
        .expect("run apiguard crd");
    assert!(
        out.status.success(),
        "apiguard crd failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn checked_in_crd_matches_generated() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(CHECKED_IN);
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated(),
        "{CHECKED_IN} is out of date with the Rust types; regenerate it with:\n    {REGENERATE}"
    );
}

#[test]
fn crd_has_names_columns_descriptions_and_cel() {
    let crd: serde_json::Value = serde_saphyr::from_str(&generated()).expect("CRD is YAML");
    assert_eq!(crd["spec"]["names"]["shortNames"][0], "asp");
    assert_eq!(crd["spec"]["names"]["categories"][0], "apiguard");
    let version = &crd["spec"]["versions"][0];
    let columns: Vec<&str> = version["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(columns, ["Exposure", "Mode", "Ready", "Blocks", "Age"]);
    // Blocks only in `-o wide`.
    assert_eq!(version["additionalPrinterColumns"][3]["priority"], 1);
    let schema = &version["schema"]["openAPIV3Schema"];

    // Every property, at every depth, has a description (so `kubectl explain` reads well).
    type Rules = std::collections::BTreeSet<String>;
    fn walk(node: &serde_json::Value, path: &str, missing: &mut Vec<String>, rules: &mut Rules) {
        if let Some(v) = node
            .get("x-kubernetes-validations")
            .and_then(|v| v.as_array())
        {
            rules.extend(v.iter().map(|r| r["rule"].as_str().unwrap().to_string()));
        }
        if let Some(props) = node.get("properties").and_then(|p| p.as_object()) {
            for (name, child) in props {
                let here = format!("{path}.{name}");
                if child
                    .get("description")
                    .and_then(|d| d.as_str())
                    .is_none_or(str::is_empty)
                    && !here.starts_with(".metadata")
                {
                    missing.push(here.clone());
                }
                walk(child, &here, missing, rules);
            }
        }
        if let Some(items) = node.get("items") {
            walk(items, &format!("{path}[]"), missing, rules);
        }
    }
    let (mut missing, mut rules) = (vec![], Rules::new());
    walk(schema, "", &mut missing, &mut rules);
    assert_eq!(
        missing,
        Vec::<String>::new(),
        "properties without a description"
    );
    let expected: Rules = apiguard::api::invariants::ALL
        .iter()
        .map(|i| i.cel.to_string())
        .collect();
    assert_eq!(
        rules, expected,
        "the CRD's CEL rules are exactly the invariants"
    );
}
