//! The three report formats of `apiguard lint`: text for a terminal, JSON for scripts, SARIF
//! 2.1.0 for code scanning. Each carries the findings, the paths a directory walk skipped and
//! the files that could not be linted, so a CI step can always parse what it gets.

use super::load::{Inputs, document_lines};
use super::{LintFinding, Run};
use crate::catalog::{RuleId, Severity};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// Text output: one block per finding, the skipped paths with `verbose`, then a summary.
pub fn render_text(run: &Run, inputs: &Inputs, verbose: bool) -> String {
    let mut out = String::new();
    for lf in &run.findings {
        let f = &lf.finding;
        let status = match &f.exemption {
            Some(reason) => format!("{} (exempted: {reason})", f.severity),
            None => f.severity.to_string(),
        };
        out.push_str(&format!(
            "{status} {} {}  {}  ({})\n    {}: {}\n    fix: {}\n\n",
            f.rule.id(),
            f.rule.name(),
            f.object,
            lf.source,
            f.field,
            f.problem,
            f.remediation
        ));
    }
    if verbose && !inputs.skipped.is_empty() {
        out.push_str("skipped (not Kubernetes manifests):\n");
        for s in &inputs.skipped {
            out.push_str(&format!("    {}: {}\n", s.path, s.reason.explain()));
        }
        out.push('\n');
    }
    let findings = &run.findings;
    let count = |s: Severity| {
        findings
            .iter()
            .filter(|f| f.finding.severity == s && f.finding.exemption.is_none())
            .count()
    };
    let exempted = findings
        .iter()
        .filter(|f| f.finding.exemption.is_some())
        .count();
    out.push_str(&format!(
        "{} finding(s): {} deny, {} warn, {} exempted; {} object(s) in {} file(s) checked\n",
        findings.len(),
        count(Severity::Deny),
        count(Severity::Warn),
        exempted,
        run.checked,
        inputs.texts.len()
    ));
    if !run.namespace_exempted.is_empty() {
        let namespaces: Vec<String> = run
            .namespace_exempted
            .iter()
            .map(|(ns, n)| format!("{ns} ({n})"))
            .collect();
        out.push_str(&format!(
            "{} object(s) not checked: in namespaces exempted by --exempt-namespaces: {}\n",
            run.namespace_exempted.values().sum::<usize>(),
            namespaces.join(", ")
        ));
    }
    if !inputs.skipped.is_empty() {
        out.push_str(&format!(
            "{} path(s) skipped: not Kubernetes manifests ({}){}\n",
            inputs.skipped.len(),
            skip_tally(inputs),
            if verbose { "" } else { "; -v lists them" }
        ));
    }
    if !inputs.errors.is_empty() {
        out.push_str(&format!(
            "{} file(s) could not be linted (errors on stderr)\n",
            inputs.errors.len()
        ));
    }
    out
}

fn skip_tally(inputs: &Inputs) -> String {
    let mut by: BTreeMap<&str, usize> = BTreeMap::new();
    for s in &inputs.skipped {
        *by.entry(s.reason.as_str()).or_default() += 1;
    }
    by.iter()
        .map(|(r, n)| format!("{n} {r}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One finding as JSON.
pub(crate) fn finding_json(lf: &LintFinding) -> Value {
    let f = &lf.finding;
    json!({
        "rule": f.rule.id(),
        "severity": f.severity.as_str(),
        "kind": f.object.kind,
        "namespace": f.object.namespace,
        "name": f.object.name,
        "field": f.field,
        "message": f.message,
        "remediation": f.remediation,
        "exempted": f.exemption.is_some(),
        "file": lf.source.to_string(),
    })
}

/// `{"findings": [...]}`, the shape of the findings alone (benches and tests use it).
pub fn render_json(findings: &[LintFinding]) -> Value {
    json!({ "findings": findings.iter().map(finding_json).collect::<Vec<_>>() })
}

/// The whole JSON report: findings, skipped paths, errors and a summary.
pub fn render_json_report(run: &Run, inputs: &Inputs) -> Value {
    let mut report = render_json(&run.findings);
    report["skipped"] = inputs
        .skipped
        .iter()
        .map(|s| json!({"path": s.path, "reason": s.reason.as_str(), "detail": s.reason.explain()}))
        .collect();
    report["errors"] = inputs
        .errors
        .iter()
        .map(|e| json!({"file": e.path(), "message": e.to_string()}))
        .collect();
    report["summary"] = json!({
        "files": inputs.texts.len(),
        "objects": run.checked,
        "notChecked": run.namespace_exempted,
        "skipped": inputs.skipped.len(),
        "errors": inputs.errors.len(),
    });
    report
}

fn sarif_level(s: Severity) -> &'static str {
    match s {
        Severity::Deny => "error",
        Severity::Warn => "warning",
    }
}

fn sarif_uri(file: &str) -> String {
    if file == "<stdin>" {
        "stdin".to_string()
    } else {
        file.replace('\\', "/")
    }
}

/// SARIF 2.1.0 output. Files that could not be linted are error notifications of the
/// invocation (which is then not successful); skipped paths are notes.
pub fn render_sarif(run: &Run, inputs: &Inputs) -> Value {
    let rules: Vec<Value> = RuleId::ALL
        .iter()
        .map(|r| {
            json!({
                "id": r.id(),
                "name": r.name(),
                "shortDescription": {"text": r.summary()},
                "fullDescription": {"text": r.summary()},
                "helpUri": format!("https://apiguard.dev/rules/{}", r.id()),
                "defaultConfiguration": {"level": sarif_level(r.severity())},
            })
        })
        .collect();
    let lines: BTreeMap<&str, Vec<usize>> = inputs
        .texts
        .iter()
        .map(|(k, v)| (k.as_str(), document_lines(v)))
        .collect();
    let results: Vec<Value> = run
        .findings
        .iter()
        .map(|lf| {
            let f = &lf.finding;
            let mut physical = json!({
                "artifactLocation": {"uri": sarif_uri(&lf.source.file)},
            });
            if let Some(line) = lines
                .get(lf.source.file.as_str())
                .and_then(|l| l.get(lf.source.document.checked_sub(1)?))
            {
                physical["region"] = json!({"startLine": line});
            }
            let mut result = json!({
                "ruleId": f.rule.id(),
                "ruleIndex": RuleId::ALL.iter().position(|r| *r == f.rule).unwrap_or(0),
                "level": sarif_level(f.severity),
                "message": {"text": f.message},
                "locations": [{
                    "physicalLocation": physical,
                    "logicalLocations": [{
                        "name": f.object.to_string(),
                        "fullyQualifiedName": format!("{} {}", f.object, f.field),
                        "kind": "object",
                    }],
                }],
                "properties": {"field": f.field, "remediation": f.remediation, "document": lf.source.to_string()},
            });
            if let Some(reason) = &f.exemption {
                result["suppressions"] = json!([{"kind": "inSource", "justification": reason}]);
            }
            result
        })
        .collect();
    let notification = |level: &str, path: &str, text: String| {
        json!({
            "level": level,
            "message": {"text": text},
            "locations": [{"physicalLocation": {"artifactLocation": {"uri": sarif_uri(path)}}}],
        })
    };
    let notifications: Vec<Value> = inputs
        .errors
        .iter()
        .map(|e| notification("error", e.path(), e.to_string()))
        .chain(
            inputs
                .skipped
                .iter()
                .map(|s| notification("note", &s.path, format!("skipped: {}", s.reason.explain()))),
        )
        .collect();
    json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "apiguard",
                "version": env!("CARGO_PKG_VERSION"),
                "informationUri": "https://github.com/apiguard/apiguard",
                "rules": rules,
            }},
            "invocations": [{
                "executionSuccessful": inputs.errors.is_empty(),
                "toolExecutionNotifications": notifications,
            }],
            "results": results,
        }],
    })
}
