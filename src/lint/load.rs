//! Reading what `apiguard lint` is given: files named on the command line, directories walked
//! the way a repository is laid out, and `-` (stdin).
//!
//! A file named explicitly must be a manifest: anything it does not parse into is an error. A
//! directory walk meets everything a repository holds (Helm charts, values files,
//! kustomizations, CI workflows, OpenAPI documents), so there a file that is not a Kubernetes
//! manifest is skipped and listed with the reason, and only a file that is one and does not
//! parse is an error. Errors never stop the run: every other file is still linted, and the
//! report carries both (exit 2 wins).
//!
//! Files are read and parsed on every core; the result is in the walk's (sorted) order.

use super::fast::{is_content, is_doc_marker};
use crate::manifest::{self, LoadError, Manifest};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Why a directory walk left a path out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SkipReason {
    /// A directory with a `Chart.yaml`: templates are not manifests until rendered.
    HelmChart,
    /// A Kustomize `kustomization.yaml`: configuration for `kustomize build`.
    Kustomization,
    /// Text with Go template actions (`{{ ... }}`) that is not YAML as written.
    Template,
    /// YAML or JSON in which no document has both `apiVersion` and `kind`.
    NotKubernetes,
    /// Neither YAML nor JSON, and nothing in it looks like a Kubernetes object.
    NotYaml,
}

impl SkipReason {
    /// A short machine-readable name (the JSON `reason`).
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::HelmChart => "helm-chart",
            SkipReason::Kustomization => "kustomization",
            SkipReason::Template => "template",
            SkipReason::NotKubernetes => "not-kubernetes",
            SkipReason::NotYaml => "not-yaml",
        }
    }

    /// What a user reads, with what to do instead.
    pub fn explain(self) -> &'static str {
        match self {
            SkipReason::HelmChart => {
                "Helm chart: lint what it renders (helm template RELEASE CHART | apiguard lint -)"
            }
            SkipReason::Kustomization => {
                "Kustomize configuration: lint what it builds (kustomize build DIR | apiguard lint -)"
            }
            SkipReason::Template => "template (Go/Helm {{ }} actions), not YAML until rendered",
            SkipReason::NotKubernetes => "no document has apiVersion and kind",
            SkipReason::NotYaml => "not YAML or JSON",
        }
    }
}

/// A path a directory walk left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub path: String,
    pub reason: SkipReason,
}

/// Everything read for one run.
#[derive(Debug, Default)]
pub struct Inputs {
    /// Every object, in file order.
    pub manifests: Vec<Manifest>,
    /// The text of every file that gave objects: display name -> text (for line numbers).
    pub texts: BTreeMap<String, String>,
    /// Paths a directory walk left out, with the reason.
    pub skipped: Vec<Skipped>,
    /// Files that could not be read or parsed (the run exits 2).
    pub errors: Vec<LintError>,
}

/// Why a file could not be linted.
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

impl LintError {
    /// The file the error is about.
    pub fn path(&self) -> &str {
        match self {
            LintError::Load(
                LoadError::Read { path, .. }
                | LoadError::Parse { path, .. }
                | LoadError::NotAnObject { path, .. },
            )
            | LintError::Yaml { path, .. } => path,
        }
    }
}

/// One file to read, and whether the user named it (errors) or a walk found it (may be skipped).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Candidate {
    path: PathBuf,
    explicit: bool,
}

/// What reading one file gave.
enum Outcome {
    Parsed {
        name: String,
        text: String,
        manifests: Vec<Manifest>,
    },
    Skipped(Skipped),
    Failed(LintError),
}

/// Loads `paths`: files as given, directories walked (sorted; `.yaml`, `.yml`, `.json`;
/// hidden directories such as `.git` are not entered, `.github` is), `-` for stdin.
pub fn load(paths: &[PathBuf]) -> Inputs {
    let mut candidates = Vec::new();
    let mut inputs = Inputs::default();
    for p in paths {
        if p.as_os_str() == "-" || p.is_file() {
            candidates.push(Candidate {
                path: p.clone(),
                explicit: true,
            });
        } else if p.is_dir() {
            if let Err(e) = walk(p, &mut candidates, &mut inputs.skipped) {
                inputs.errors.push(e.into());
            }
        } else {
            inputs.errors.push(
                LoadError::Read {
                    path: p.display().to_string(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "no such file or directory",
                    ),
                }
                .into(),
            );
        }
    }
    for outcome in read_all(&candidates) {
        match outcome {
            Outcome::Parsed {
                name,
                text,
                manifests,
            } => {
                inputs.manifests.extend(manifests);
                inputs.texts.insert(name, text);
            }
            Outcome::Skipped(s) => inputs.skipped.push(s),
            Outcome::Failed(e) => inputs.errors.push(e),
        }
    }
    inputs
        .skipped
        .sort_by(|a, b| (&a.path, a.reason).cmp(&(&b.path, b.reason)));
    inputs
}

/// Reads and parses every candidate, on all cores, keeping the candidates' order.
fn read_all(candidates: &[Candidate]) -> Vec<Outcome> {
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(candidates.len())
        .max(1);
    if threads == 1 {
        return candidates.iter().map(read_one).collect();
    }
    let next = AtomicUsize::new(0);
    let mut done: Vec<(usize, Outcome)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(c) = candidates.get(i) else {
                            break out;
                        };
                        out.push((i, read_one(c)));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, o)| o).collect()
}

fn read_one(c: &Candidate) -> Outcome {
    let (name, text) = match manifest::read_input(&c.path) {
        Ok(read) => read,
        Err(e) => return Outcome::Failed(e.into()),
    };
    if !c.explicit && is_kustomization(&c.path) {
        return skip(name, SkipReason::Kustomization);
    }
    match parse_input(&name, &text) {
        Ok(manifests) => Outcome::Parsed {
            name,
            text,
            manifests,
        },
        Err(e) if c.explicit => Outcome::Failed(e),
        Err(e) => match walked_file_verdict(&text, &e) {
            Some(reason) => skip(name, reason),
            None => Outcome::Failed(e),
        },
    }
}

fn skip(path: String, reason: SkipReason) -> Outcome {
    Outcome::Skipped(Skipped { path, reason })
}

/// Why a walked file that did not load is not a manifest at all (`None`: it is one, broken).
fn walked_file_verdict(text: &str, error: &LintError) -> Option<SkipReason> {
    match error {
        LintError::Load(LoadError::NotAnObject { .. }) => {
            let documents = manifest::parse_documents(text).ok()?;
            (!documents.iter().any(is_kubernetes_object)).then_some(SkipReason::NotKubernetes)
        }
        LintError::Load(LoadError::Read { .. }) => None,
        LintError::Load(LoadError::Parse { .. }) | LintError::Yaml { .. } => {
            if has_template_actions(text) {
                Some(SkipReason::Template)
            } else if looks_like_kubernetes(text) {
                None
            } else {
                Some(SkipReason::NotYaml)
            }
        }
    }
}

fn is_kubernetes_object(doc: &Value) -> bool {
    let non_empty = |k: &str| {
        doc.get(k)
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty())
    };
    non_empty("apiVersion") && non_empty("kind")
}

/// Whether text that did not parse still reads like a manifest: a top-level `apiVersion:` and
/// `kind:` line (so a broken manifest is reported, not skipped).
fn looks_like_kubernetes(text: &str) -> bool {
    let top = |key: &str| {
        text.lines().any(|l| {
            l.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with(':'))
        })
    };
    (top("apiVersion") || top("\"apiVersion\"")) && (top("kind") || top("\"kind\""))
}

fn has_template_actions(text: &str) -> bool {
    text.contains("{{") && text.contains("}}")
}

fn is_kustomization(path: &Path) -> bool {
    matches!(
        path.file_name().and_then(|n| n.to_str()),
        Some("kustomization.yaml" | "kustomization.yml" | "Kustomization")
    )
}

fn is_manifest_file(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    ) || is_kustomization(path)
}

/// Hidden directories other than `.github` (CI workflows are skipped file by file, so a user
/// sees them listed) are version-control or tool state, not manifests.
fn is_ignored_dir(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.') && n != ".github")
}

fn walk(dir: &Path, out: &mut Vec<Candidate>, skipped: &mut Vec<Skipped>) -> Result<(), LoadError> {
    if dir.join("Chart.yaml").is_file() {
        skipped.push(Skipped {
            path: format!("{}/", dir.display()),
            reason: SkipReason::HelmChart,
        });
        return Ok(());
    }
    for e in manifest::sorted_entries(dir)? {
        if e.is_dir() {
            if !is_ignored_dir(&e) {
                walk(&e, out, skipped)?;
            }
        } else if is_manifest_file(&e) {
            out.push(Candidate {
                path: e,
                explicit: false,
            });
        }
    }
    Ok(())
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

/// Parses one input, naming the failing document of a YAML syntax error and saying what a
/// duplicate key is in plain words.
pub(crate) fn parse_input(name: &str, text: &str) -> Result<Vec<Manifest>, LintError> {
    if let Some(manifests) = super::fast::parse(name, text) {
        return Ok(manifests);
    }
    if text.trim_start().starts_with("{{") {
        // Not JSON, whatever its first character says: a template.
        return Err(LoadError::Parse {
            path: name.to_string(),
            message: "a Go/Helm template ({{ ... }} actions), not YAML until rendered; lint what it renders (helm template RELEASE CHART | apiguard lint -)".to_string(),
        }
        .into());
    }
    match manifest::parse_str(name, text) {
        Ok(m) => Ok(m),
        Err(LoadError::Parse { path, message }) if !text.trim_start().starts_with(['{', '[']) => {
            let mut message = plain_yaml_message(&message);
            if has_template_actions(text) {
                message.push_str("\n(the file has Go/Helm template actions {{ ... }}: lint what it renders, e.g. helm template RELEASE CHART | apiguard lint -)");
            }
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

/// The parser's message, with its duplicate-key wording (which names a parser option) replaced
/// by what the user did: the key, and that a mapping may hold it once.
fn plain_yaml_message(message: &str) -> String {
    const MARKER: &str = "duplicate mapping key";
    let Some(at) = message.find(MARKER) else {
        return message.to_string();
    };
    // `duplicate mapping key: name, set DuplicateKeyPolicy ...` for a plain key; without the
    // key for a complex one (a mapping or a sequence used as a key).
    let key = message[at + MARKER.len()..]
        .strip_prefix(": ")
        .and_then(|rest| rest.split([',', '\n']).next())
        .map(str::trim)
        .filter(|k| !k.is_empty());
    let location = message[..at]
        .rfind("line ")
        .map(|i| message[i..at].trim().trim_end_matches(':'))
        .filter(|l| !l.is_empty())
        .map(|l| format!(" (at {l})"))
        .unwrap_or_default();
    let what = match key {
        Some(key) => format!("the key {key:?}"),
        None => "a (complex) key".to_string(),
    };
    format!(
        "{what} appears twice in the same mapping{location}; keep one (YAML allows each key once per mapping, and tools disagree on which copy wins)"
    )
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

    #[test]
    fn a_template_is_not_called_bad_json() {
        let text = "{{- if .Values.ingress.enabled }}\napiVersion: networking.k8s.io/v1\nkind: Ingress\n{{- end }}\n";
        let e = parse_input("templates/ingress.yaml", text).unwrap_err();
        let message = e.to_string();
        assert!(message.contains("Go/Helm template"), "{message}");
        // Not the JSON parser's complaint about the first `{`.
        assert!(!message.contains("key must be a string"), "{message}");
        assert!(!message.contains("column"), "{message}");
        assert_eq!(walked_file_verdict(text, &e), Some(SkipReason::Template));
    }

    #[test]
    fn duplicate_keys_are_named_in_plain_words() {
        let text = "apiVersion: v1\nkind: Service\nmetadata:\n  name: a\n  name: b\n";
        let e = parse_input("svc.yaml", text).unwrap_err().to_string();
        assert!(
            e.starts_with("svc.yaml: document 1: not valid YAML: "),
            "{e}"
        );
        assert!(e.contains("\"name\" appears twice"), "{e}");
        assert!(e.contains("line 5"), "{e}");
        assert!(!e.to_ascii_lowercase().contains("policy"), "{e}");
        let complex = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata:\n  ? [a]\n  : x\n  ? [a]\n  : y\n";
        if let Err(e) = parse_input("cm.yaml", complex) {
            let e = e.to_string();
            assert!(!e.contains("DuplicateKeyPolicy"), "{e}");
        }
    }

    #[test]
    fn duplicate_keys_in_json_are_an_error_too() {
        let text =
            r#"{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a", "name": "b"}}"#;
        let e = parse_input("svc.json", text).unwrap_err().to_string();
        assert!(e.starts_with("svc.json"), "{e}");
        assert!(e.contains("\"name\" appears twice"), "{e}");
    }

    fn verdict(text: &str) -> Option<SkipReason> {
        let e = parse_input("x.yaml", text).unwrap_err();
        walked_file_verdict(text, &e)
    }

    #[test]
    fn walked_files_that_are_not_manifests_are_told_apart_from_broken_ones() {
        // Helm values, a CI workflow, a docker-compose file: YAML without apiVersion/kind.
        assert_eq!(
            verdict("replicaCount: 2\nimage:\n  repository: web\n"),
            Some(SkipReason::NotKubernetes)
        );
        assert_eq!(
            verdict("name: ci\non: [push]\njobs:\n  test:\n    runs-on: ubuntu-latest\n"),
            Some(SkipReason::NotKubernetes)
        );
        // A Helm template.
        assert_eq!(
            verdict(
                "apiVersion: v1\nkind: Service\nmetadata:\n  name: {{ .Release.Name }}\n  {{- include \"labels\" . | nindent 4 }}\n"
            ),
            Some(SkipReason::Template)
        );
        // A broken manifest is an error, not a skip.
        assert_eq!(
            verdict("apiVersion: v1\nkind: Service\nmetadata: [unclosed\n"),
            None
        );
        // A manifest file with a document that is not an object is an error too.
        assert_eq!(
            verdict("apiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\n- 1\n"),
            None
        );
        assert_eq!(verdict("just: [words\n"), Some(SkipReason::NotYaml));
    }
}
