//! Parsing an OpenAPI document (YAML or JSON) into a `serde_json::Value`, its version, local
//! `$ref` resolution, and errors that name the JSON pointer of the problem.

use serde_json::Value;
use std::fmt;

/// How many `$ref` hops are followed before a chain is called a cycle.
const MAX_REF_HOPS: usize = 32;

/// A document that does not parse or compile: the JSON pointer of the problem and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContractError {
    /// The JSON pointer (RFC 6901) of the problem; empty for the whole document.
    pub pointer: String,
    /// What is wrong there.
    pub message: String,
}

impl ContractError {
    pub(crate) fn at(pointer: &str, message: impl Into<String>) -> Self {
        ContractError {
            pointer: pointer.to_string(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ContractError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pointer = if self.pointer.is_empty() {
            "(document)"
        } else {
            &self.pointer
        };
        write!(f, "{pointer}: {}", self.message)
    }
}

impl std::error::Error for ContractError {}

/// The OpenAPI version: 3.0.x (JSON schema draft 4 semantics after the `nullable` rewrite) or
/// 3.1.x (JSON schema draft 2020-12).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Version {
    V30,
    V31,
}

/// A parsed document whose local `$ref`s all resolve.
#[derive(Debug)]
pub(crate) struct Document {
    pub(crate) root: Value,
    pub(crate) version: Version,
}

/// Parses `text` (JSON when it starts with `{`, else YAML), reads its version and checks that
/// every `$ref` is local and resolves.
pub(crate) fn parse(text: &str) -> Result<Document, ContractError> {
    let root: Value = if text.trim_start().starts_with('{') {
        serde_json::from_str(text)
            .map_err(|e| ContractError::at("", format!("invalid JSON: {e}")))?
    } else {
        serde_saphyr::from_str(text)
            .map_err(|e| ContractError::at("", format!("invalid YAML: {e}")))?
    };
    if !root.is_object() {
        return Err(ContractError::at("", "an OpenAPI document is an object"));
    }
    let version = version(&root)?;
    if let Some(paths) = root.get("paths")
        && !paths.is_object()
    {
        return Err(ContractError::at("/paths", "must be an object"));
    }
    check_refs(&root, &root, &mut String::new())?;
    Ok(Document { root, version })
}

fn version(root: &Value) -> Result<Version, ContractError> {
    match root.get("openapi").and_then(Value::as_str) {
        Some(v) if v.starts_with("3.0.") || v == "3.0" => Ok(Version::V30),
        Some(v) if v.starts_with("3.1.") || v == "3.1" => Ok(Version::V31),
        Some(v) => Err(ContractError::at(
            "/openapi",
            format!("unsupported OpenAPI version {v:?} (3.0.x and 3.1.x are)"),
        )),
        None => Err(ContractError::at(
            "/openapi",
            "missing: the OpenAPI version (3.0.x or 3.1.x) is required",
        )),
    }
}

/// Every `$ref` under `node` (at `pointer`) is local (`#/...`) and its target exists.
fn check_refs(root: &Value, node: &Value, pointer: &mut String) -> Result<(), ContractError> {
    match node {
        Value::Object(map) => {
            if let Some(target) = map.get("$ref") {
                let Some(target) = target.as_str() else {
                    return Err(ContractError::at(pointer, "$ref must be a string"));
                };
                lookup(root, target).map_err(|m| ContractError::at(pointer, m))?;
            }
            for (key, child) in map {
                let len = pointer.len();
                push_token(pointer, key);
                check_refs(root, child, pointer)?;
                pointer.truncate(len);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                let len = pointer.len();
                pointer.push('/');
                pointer.push_str(&i.to_string());
                check_refs(root, child, pointer)?;
                pointer.truncate(len);
            }
        }
        _ => {}
    }
    Ok(())
}

/// The target of a local `$ref` (`#/components/schemas/User`).
fn lookup<'a>(root: &'a Value, target: &str) -> Result<&'a Value, String> {
    let Some(pointer) = target.strip_prefix('#') else {
        return Err(format!(
            "$ref {target:?} is not local (only #/... references are supported)"
        ));
    };
    let decoded = percent_decode(pointer);
    root.pointer(&decoded)
        .ok_or_else(|| format!("$ref target {target:?} does not exist"))
}

/// `node` with its `$ref` chain followed (at most [`MAX_REF_HOPS`] hops; an unresolvable or
/// cyclic chain stops where it is).
pub(crate) fn resolve<'a>(root: &'a Value, mut node: &'a Value) -> &'a Value {
    for _ in 0..MAX_REF_HOPS {
        match node.get("$ref").and_then(Value::as_str) {
            Some(target) => match lookup(root, target) {
                Ok(next) => node = next,
                Err(_) => return node,
            },
            None => return node,
        }
    }
    node
}

/// Appends `/token` to a JSON pointer, escaping `~` and `/`.
pub(crate) fn push_token(pointer: &mut String, token: &str) {
    pointer.push('/');
    if !token.contains(['~', '/']) {
        pointer.push_str(token);
        return;
    }
    for c in token.chars() {
        match c {
            '~' => pointer.push_str("~0"),
            '/' => pointer.push_str("~1"),
            c => pointer.push(c),
        }
    }
}

/// `%XX` sequences decoded (invalid ones kept as they are); used for `$ref` fragments and
/// request paths and queries.
pub(crate) fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = bytes.get(i + 1..i + 3)
            && let Ok(hex) = std::str::from_utf8(hex)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
