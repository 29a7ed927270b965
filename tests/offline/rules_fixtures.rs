//! Per-rule fixtures: `tests/fixtures/rules/<APGxxx>/{allow,deny}-*.yaml`. Each file is one lint
//! run (its objects form the cluster view). A `deny-*` file must produce a non-exempted finding
//! of its directory's rule (a warn finding for the warn rules APG008/APG012/APG013 and the
//! APG007 audience check); an `allow-*` file must produce none. The full findings of every
//! file are snapshotted.

use apiguard::catalog::RuleId;
use apiguard::lint::lint_manifests;
use apiguard::manifest::parse_str;
use apiguard::rules::EngineConfig;
use serde::Serialize;
use std::path::Path;

#[derive(Serialize)]
struct Snap {
    rule: &'static str,
    severity: &'static str,
    object: String,
    field: String,
    message: String,
    remediation: String,
    exemption: Option<String>,
    file: String,
}

#[test]
fn rule_fixtures() {
    insta::glob!("../fixtures", "rules/*/*.yaml", |path: &Path| {
        let text = std::fs::read_to_string(path).unwrap();
        let rule_dir = path.parent().and_then(|p| p.file_name()).unwrap();
        let rule: RuleId = rule_dir.to_str().unwrap().parse().unwrap();
        let file = path.file_name().unwrap().to_str().unwrap();
        let manifests = parse_str(file, &text).unwrap_or_else(|e| panic!("{e}"));
        let findings = lint_manifests(&manifests, &EngineConfig::default());
        let hits = findings
            .iter()
            .filter(|f| f.finding.rule == rule && f.finding.exemption.is_none())
            .count();
        if file.starts_with("deny-") {
            assert!(
                hits > 0,
                "{rule_dir:?}/{file}: expected a {rule} finding, got {findings:#?}"
            );
        } else {
            assert!(
                file.starts_with("allow-"),
                "fixture names start with allow- or deny-: {file}"
            );
            assert_eq!(
                hits, 0,
                "{rule_dir:?}/{file}: expected no {rule} finding, got {findings:#?}"
            );
        }
        for lf in &findings {
            says_field_and_fix_once(&lf.finding, file);
        }
        let snap: Vec<Snap> = findings
            .into_iter()
            .map(|lf| Snap {
                rule: lf.finding.rule.id(),
                severity: lf.finding.severity.as_str(),
                object: lf.finding.object.to_string(),
                field: lf.finding.field,
                message: lf.finding.message,
                remediation: lf.finding.remediation,
                exemption: lf.finding.exemption,
                file: lf.source.to_string(),
            })
            .collect();
        insta::assert_yaml_snapshot!(snap);
    });
}

/// The message names the field once (what is wrong does not start with the field again, in
/// any index form, or a parent of it), says the fix once, and has no double space.
fn says_field_and_fix_once(finding: &apiguard::rules::Finding, file: &str) {
    let generic: String = {
        let mut in_index = false;
        finding
            .field
            .chars()
            .filter(|c| {
                let keep = !in_index || *c == ']';
                in_index = (in_index || *c == '[') && *c != ']';
                keep
            })
            .collect()
    };
    let first = finding.problem.split(' ').next().unwrap_or("");
    for form in [finding.field.as_str(), generic.as_str()] {
        let names_field = form == first
            || form.starts_with(&format!("{first}."))
            || form.starts_with(&format!("{first}["));
        assert!(
            !(first.contains('.') && names_field),
            "{file}: the problem repeats the field {}: {:?}",
            finding.field,
            finding.message
        );
    }
    assert!(
        !finding.remediation.is_empty(),
        "{file}: no fix: {:?}",
        finding.message
    );
    assert_eq!(
        finding
            .message
            .matches(finding.remediation.as_str())
            .count(),
        1,
        "{file}: the fix is not said exactly once: {:?}",
        finding.message
    );
    assert!(
        !finding.problem.contains(finding.remediation.as_str()),
        "{file}: the problem holds the fix: {:?}",
        finding.message
    );
    assert!(
        !finding.message.contains("  "),
        "{file}: double space: {:?}",
        finding.message
    );
}

#[test]
fn every_rule_has_allow_and_deny_fixtures() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rules");
    for rule in RuleId::ALL {
        let dir = root.join(rule.id());
        let names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names.iter().any(|n| n.starts_with("deny-")),
            "{rule}: no deny fixture"
        );
        assert!(
            names.iter().any(|n| n.starts_with("allow-")),
            "{rule}: no allow fixture"
        );
    }
}
