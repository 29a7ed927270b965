//! Loading Kubernetes manifests from files, directories and stdin: multi-document YAML, JSON,
//! and `kind: List`. Every object remembers where it came from, so findings and errors can
//! name the file and document.

use serde_json::Value;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Where an object was read from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Source {
    /// The file path as given (or `-` / `<stdin>` for standard input).
    pub file: String,
    /// 1-based index of the YAML document in the file (empty documents are not counted).
    pub document: usize,
    /// For objects inside a `kind: List`, the 0-based index in `items`.
    pub item: Option<usize>,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:doc{}", self.file, self.document)?;
        if let Some(i) = self.item {
            write!(f, ":items[{i}]")?;
        }
        Ok(())
    }
}

/// One Kubernetes object with its source.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub source: Source,
    pub object: Value,
}

impl Manifest {
    pub fn kind(&self) -> &str {
        self.object
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or("")
    }
    pub fn api_version(&self) -> &str {
        self.object
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or("")
    }
    pub fn name(&self) -> &str {
        self.object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
    }
    pub fn namespace(&self) -> Option<&str> {
        self.object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
    }
}

/// Why manifests could not be loaded. Always names the file (and document where known).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not valid YAML/JSON: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: document {document}{}: {message}", item.map(|i| format!(" items[{i}]")).unwrap_or_default())]
    NotAnObject {
        path: String,
        document: usize,
        item: Option<usize>,
        message: String,
    },
}

/// Parses manifests from text. `name` is used in sources and errors.
pub fn parse_str(name: &str, text: &str) -> Result<Vec<Manifest>, LoadError> {
    let documents = parse_documents(text).map_err(|message| LoadError::Parse {
        path: name.to_string(),
        message,
    })?;
    let mut out = Vec::new();
    for (i, doc) in documents.into_iter().enumerate() {
        let document = i + 1;
        if doc.is_null() {
            continue;
        }
        push_object(name, document, None, doc, &mut out)?;
    }
    Ok(out)
}

/// Every document of a text: JSON (one value, or a stream of concatenated values) when it
/// starts with `{` or `[`, else multi-document YAML (empty documents dropped).
pub(crate) fn parse_documents(text: &str) -> Result<Vec<Value>, String> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        serde_json::Deserializer::from_str(text)
            .into_iter::<StrictJson>()
            .map(|v| v.map(|StrictJson(v)| v))
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())
    } else {
        serde_saphyr::from_multiple::<Value>(text).map_err(|e| e.to_string())
    }
}

/// A JSON value read like [`Value`], except that a key repeated in one object is an error
/// (as it is in YAML): `serde_json` would keep the last copy silently, and tools disagree on
/// which copy wins.
struct StrictJson(Value);

impl<'de> serde::Deserialize<'de> for StrictJson {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(StrictJson)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(StrictJson(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(serde::de::Error::custom(format_args!(
                    "the key {key:?} appears twice in the same object; keep one (tools disagree on which copy wins)"
                )));
            }
            let StrictJson(value) = map.next_value()?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

/// Adds the object(s) of one parsed document (`kind: List` items one by one) to `out`.
pub(crate) fn push_object(
    path: &str,
    document: usize,
    item: Option<usize>,
    doc: Value,
    out: &mut Vec<Manifest>,
) -> Result<(), LoadError> {
    let err = |message: String| LoadError::NotAnObject {
        path: path.to_string(),
        document,
        item,
        message,
    };
    let Value::Object(map) = &doc else {
        return Err(err(format!(
            "expected a Kubernetes object (a mapping), found {}",
            type_name(&doc)
        )));
    };
    let kind = match map.get("kind") {
        Some(Value::String(k)) if !k.is_empty() => k.clone(),
        Some(other) => {
            return Err(err(format!(
                "`kind` must be a non-empty string, found {}",
                type_name(other)
            )));
        }
        None => return Err(err("missing `kind`".to_string())),
    };
    match map.get("apiVersion") {
        Some(Value::String(v)) if !v.is_empty() => {}
        Some(other) => {
            return Err(err(format!(
                "`apiVersion` must be a non-empty string, found {}",
                type_name(other)
            )));
        }
        None => return Err(err("missing `apiVersion`".to_string())),
    }
    if kind == "List" || (kind.ends_with("List") && map.get("items").is_some_and(Value::is_array)) {
        let Some(Value::Array(items)) = map.get("items") else {
            return Err(err("`kind: List` without an `items` array".to_string()));
        };
        if item.is_some() {
            return Err(err("nested List".to_string()));
        }
        for (i, it) in items.iter().enumerate() {
            push_object(path, document, Some(i), it.clone(), out)?;
        }
        return Ok(());
    }
    out.push(Manifest {
        source: Source {
            file: path.to_string(),
            document,
            item,
        },
        object: doc,
    });
    Ok(())
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

fn is_manifest_file(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

/// Every manifest file under `paths`: files as given, directories recursed (sorted, only
/// `.yaml`, `.yml` and `.json`), `-` for stdin.
pub(crate) fn expand_paths(paths: &[PathBuf]) -> Result<Vec<PathBuf>, LoadError> {
    let mut out = Vec::new();
    for p in paths {
        if p.as_os_str() == "-" || p.is_file() {
            out.push(p.clone());
        } else if p.is_dir() {
            walk(p, &mut out)?;
        } else {
            return Err(LoadError::Read {
                path: p.display().to_string(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no such file or directory",
                ),
            });
        }
    }
    Ok(out)
}

/// The entries of a directory, sorted (walks are deterministic).
pub(crate) fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let read_err = |source| LoadError::Read {
        path: dir.display().to_string(),
        source,
    };
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(read_err)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(read_err)?;
    entries.sort();
    Ok(entries)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), LoadError> {
    for e in sorted_entries(dir)? {
        if e.is_dir() {
            walk(&e, out)?;
        } else if is_manifest_file(&e) {
            out.push(e);
        }
    }
    Ok(())
}

/// Reads one input (`-` is stdin): its display name and its text.
pub(crate) fn read_input(path: &Path) -> Result<(String, String), LoadError> {
    if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|source| LoadError::Read {
                path: "<stdin>".into(),
                source,
            })?;
        return Ok(("<stdin>".to_string(), text));
    }
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: name.clone(),
        source,
    })?;
    Ok((name, text))
}

/// Loads every manifest under `paths` (see `expand_paths`).
pub fn load_paths(paths: &[PathBuf]) -> Result<Vec<Manifest>, LoadError> {
    let mut out = Vec::new();
    for p in expand_paths(paths)? {
        let (name, text) = read_input(&p)?;
        out.extend(parse_str(&name, &text)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_yaml_and_lists() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\n---\napiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: ConfigMap, metadata: {name: b}}\n- {apiVersion: v1, kind: Secret, metadata: {name: c}}\n";
        let m = parse_str("x.yaml", text).unwrap();
        let got: Vec<(String, String)> = m
            .iter()
            .map(|m| (m.kind().to_string(), m.source.to_string()))
            .collect();
        assert_eq!(got[0], ("Service".into(), "x.yaml:doc1".into()));
        assert_eq!(got[1].0, "ConfigMap");
        assert!(got[1].1.ends_with(":items[0]"), "{got:?}");
        assert_eq!(got[2].0, "Secret");
        assert_eq!(m.len(), 3);
    }

    #[test]
    fn json_is_accepted() {
        let m = parse_str(
            "x.json",
            r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"a"}}"#,
        )
        .unwrap();
        assert_eq!(m[0].name(), "a");
    }

    #[test]
    fn errors_name_file_and_document() {
        let e = parse_str(
            "bad.yaml",
            "apiVersion: v1\nkind: Service\n---\n- just\n- a list\n",
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("bad.yaml: document 2"), "{e}");
        let e = parse_str("bad.yaml", "kind: Service\n").unwrap_err();
        assert!(e.to_string().contains("missing `apiVersion`"), "{e}");
        let e = parse_str("bad.yaml", "a: [unclosed\n").unwrap_err();
        assert!(
            e.to_string().starts_with("bad.yaml: not valid YAML/JSON"),
            "{e}"
        );
    }
}
