//! `apiguard lint PATH...`: the admission rules, offline, over manifest files.
//!
//! Every object of the run is reviewed against a view built from all objects of the same run
//! (so an Ingress is checked against the ApiSecurityPolicies and Services next to it). Output
//! as text, JSON (`{"findings":[...]}`, DESIGN.md section 1) or SARIF 2.1.0. Exit codes: 0 no
//! deny-level finding, 1 at least one, 2 usage or parse error.

use crate::catalog::{RuleId, Severity};
use crate::manifest::{self, LoadError, Manifest, Source};
use crate::rules::{self, AdmissionMode, EngineConfig, Finding, InMemoryView};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// Readable in a terminal.
    #[default]
    Text,
    /// `{"findings":[{"rule","severity","kind","namespace","name","message","exempted","file"}]}`.
    Json,
    /// SARIF 2.1.0, for code-scanning tools.
    Sarif,
}

/// Arguments of `apiguard lint`.
#[derive(clap::Args, Debug, Clone)]
pub struct LintArgs {
    /// Manifest files or directories (recursed; .yaml, .yml, .json); `-` reads standard input.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Admission mode to evaluate under: Enforce (deny findings fail the run), Warn or Audit
    /// (findings are reported, the run succeeds).
    #[arg(long, value_enum, ignore_case = true, default_value_t = AdmissionMode::Enforce)]
    pub mode: AdmissionMode,
    /// Namespaces whose objects are not checked (comma-separated; `""` for none).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "kube-system,kube-public,kube-node-lease"
    )]
    pub exempt_namespaces: Vec<String>,
}

impl LintArgs {
    pub fn config(&self) -> EngineConfig {
        EngineConfig {
            mode: self.mode,
            exempt_namespaces: self
                .exempt_namespaces
                .iter()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
        }
    }
}

/// A finding with the manifest it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LintFinding {
    pub finding: Finding,
    pub source: Source,
}

/// Reviews every manifest against a view of all of them.
pub fn lint_manifests(manifests: &[Manifest], config: &EngineConfig) -> Vec<LintFinding> {
    let view = InMemoryView::from_objects(manifests.iter().map(|m| &m.object));
    let mut out = Vec::new();
    for m in manifests {
        for finding in rules::review(&m.object, &view, config) {
            out.push(LintFinding {
                finding,
                source: m.source.clone(),
            });
        }
    }
    out
}

/// Whether the run fails: a non-exempted deny finding under Enforce.
pub fn fails(findings: &[LintFinding], mode: AdmissionMode) -> bool {
    mode == AdmissionMode::Enforce && findings.iter().any(|f| f.finding.is_blocking())
}

/// The text of every input, read once: file name -> text.
pub struct Inputs {
    pub manifests: Vec<Manifest>,
    pub texts: BTreeMap<String, String>,
}

/// Why `lint` could not read its input (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum LintError {
    #[error(transparent)]
    Load(#[from] LoadError),
    /// A YAML syntax error, with the document it is in.
    #[error("{path}: document {document}: not valid YAML: {message}")]
    Yaml {
        path: String,
        document: usize,
        message: String,
    },
}

/// The 1-based index (among non-empty documents, as the loader counts) of the first YAML
/// document of `text` that does not parse on its own.
pub fn failing_document(text: &str) -> Option<usize> {
    let mut chunks: Vec<String> = vec![String::new()];
    for line in text.lines() {
        if is_doc_marker(line) {
            chunks.push(String::new());
        }
        if let Some(last) = chunks.last_mut() {
            last.push_str(line);
            last.push('\n');
        }
    }
    let mut document = 0;
    for chunk in &chunks {
        let has_content = chunk.lines().enumerate().any(|(i, l)| {
            if i == 0 && is_doc_marker(l) {
                is_content(l.get(3..).unwrap_or(""))
            } else {
                is_content(l)
            }
        });
        if has_content {
            document += 1;
        }
        if serde_saphyr::from_multiple::<Value>(chunk).is_err() {
            return Some(document.max(1));
        }
    }
    None
}

/// Parses one input, naming the failing document of a YAML syntax error.
fn parse_input(name: &str, text: &str) -> Result<Vec<Manifest>, LintError> {
    match manifest::parse_str(name, text) {
        Ok(m) => Ok(m),
        Err(LoadError::Parse { path, message }) if !text.trim_start().starts_with(['{', '[']) => {
            match failing_document(text) {
                Some(document) => Err(LintError::Yaml {
                    path,
                    document,
                    message,
                }),
                None => Err(LoadError::Parse { path, message }.into()),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Loads `paths` like [`manifest::load_paths`], keeping the texts for line numbers.
pub fn load(paths: &[PathBuf]) -> Result<Inputs, LintError> {
    let mut manifests = Vec::new();
    let mut texts = BTreeMap::new();
    for p in manifest::expand_paths(paths)? {
        let (name, text) = manifest::read_input(&p)?;
        manifests.extend(parse_input(&name, &text)?);
        texts.insert(name, text);
    }
    Ok(Inputs { manifests, texts })
}

fn is_doc_marker(line: &str) -> bool {
    line == "---" || line.starts_with("--- ") || line.starts_with("---\t")
}

fn is_content(line: &str) -> bool {
    let t = line.trim();
    !t.is_empty() && !t.starts_with('#') && !t.starts_with('%') && t != "..."
}

/// The first content line (1-based) of every non-empty YAML document, in document order
/// (empty documents are not counted, like the loader). JSON text is one document at line 1
/// when it is a single value.
pub fn document_lines(text: &str) -> Vec<usize> {
    let mut starts = Vec::new();
    let mut current_has_content = false;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if is_doc_marker(line) {
            current_has_content = false;
            let rest = line.get(3..).unwrap_or("");
            if is_content(rest) {
                starts.push(n);
                current_has_content = true;
            }
        } else if !current_has_content && is_content(line) {
            starts.push(n);
            current_has_content = true;
        }
    }
    starts
}

/// Text output: one block per finding, then a summary line.
pub fn render_text(findings: &[LintFinding], objects: usize, files: usize) -> String {
    let mut out = String::new();
    for lf in findings {
        let f = &lf.finding;
        let status = match &f.exemption {
            Some(reason) => format!("{} (exempted: {reason})", f.severity),
            None => f.severity.to_string(),
        };
        out.push_str(&format!(
            "{status} {} {}  {}  ({})\n    {}\n    fix: {}\n\n",
            f.rule.id(),
            f.rule.name(),
            f.object,
            lf.source,
            f.message,
            f.remediation
        ));
    }
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
        objects,
        files
    ));
    out
}

/// JSON output, exactly the DESIGN.md shape.
pub fn render_json(findings: &[LintFinding]) -> Value {
    let items: Vec<Value> = findings
        .iter()
        .map(|lf| {
            let f = &lf.finding;
            json!({
                "rule": f.rule.id(),
                "severity": f.severity.as_str(),
                "kind": f.object.kind,
                "namespace": f.object.namespace,
                "name": f.object.name,
                "message": f.message,
                "exempted": f.exemption.is_some(),
                "file": lf.source.to_string(),
            })
        })
        .collect();
    json!({ "findings": items })
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

/// SARIF 2.1.0 output. `texts` (file name -> text) gives each document's first line.
pub fn render_sarif(findings: &[LintFinding], texts: &BTreeMap<String, String>) -> Value {
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
    let lines: BTreeMap<&str, Vec<usize>> = texts
        .iter()
        .map(|(k, v)| (k.as_str(), document_lines(v)))
        .collect();
    let results: Vec<Value> = findings
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
            "results": results,
        }],
    })
}

/// Runs `apiguard lint`: prints the report to stdout and returns the exit code. Load and
/// parse errors are returned (the caller prints them and exits 2).
pub fn run(args: &LintArgs) -> Result<ExitCode, LintError> {
    let inputs = load(&args.paths)?;
    let config = args.config();
    let findings = lint_manifests(&inputs.manifests, &config);
    let report = match args.format {
        Format::Text => render_text(&findings, inputs.manifests.len(), inputs.texts.len()),
        Format::Json => format!("{:#}\n", render_json(&findings)),
        Format::Sarif => format!("{:#}\n", render_sarif(&findings, &inputs.texts)),
    };
    print!("{report}");
    Ok(if fails(&findings, args.mode) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_lines_skip_empty_documents() {
        let text = "# c\n---\napiVersion: v1\nkind: A\n---\n---\n# only a comment\n---\nkind: B\n";
        assert_eq!(document_lines(text), vec![3, 9]);
        let docs = serde_saphyr::from_multiple::<Value>(text).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(document_lines("--- {a: 1}\n--- {b: 2}\n"), vec![1, 2]);
        assert_eq!(document_lines("{\"kind\": \"A\"}"), vec![1]);
    }

    #[test]
    fn yaml_errors_name_the_document() {
        let text = "a: 1\n---\n---\nb: 2\n---\nc: [unclosed\n";
        assert_eq!(failing_document(text), Some(3));
        let e = parse_input("f.yaml", text).unwrap_err().to_string();
        assert!(e.starts_with("f.yaml: document 3: not valid YAML:"), "{e}");
        assert!(e.contains("line 6"), "{e}");
        assert_eq!(failing_document("a: 1\n"), None);
    }
}
