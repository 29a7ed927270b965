//! The fast path of `lint`'s YAML loading: a real repository is mostly objects no rule reads
//! (ConfigMaps, RBAC, CRDs, HPAs, ...). Their documents are still parsed in full, so a syntax
//! error is never missed, but into a small header (apiVersion, kind, name, namespace) instead
//! of a whole JSON tree: far fewer allocations for what is usually the bulk of the bytes.
//!
//! Documents are split at `---` lines (YAML forbids a document marker at column 0 inside
//! content), and a document's kind is read from its top-level `kind:` line. Whenever the text
//! is not that simple (directives, explicit document ends, content on the marker line, a kind
//! that is not a plain scalar) or anything fails to parse, [`parse`] answers `None` and the
//! caller takes the general path, which gives the same objects and names the error.

use crate::manifest::{Manifest, Source, push_object};
use crate::rules::coverage;
use serde::Deserialize;
use serde_json::{Map, Value};

/// The objects of a YAML text, or `None` to take the general path.
pub(crate) fn parse(name: &str, text: &str) -> Option<Vec<Manifest>> {
    let documents = split_documents(text)?;
    let mut out = Vec::with_capacity(documents.len());
    for (i, doc) in documents.iter().enumerate() {
        let document = i + 1;
        let (api_version, kind) = top_level_type(doc)?;
        let group = api_version.split_once('/').map_or("", |(g, _)| g);
        if kind.ends_with("List") || coverage::is_read(group, kind, doc) {
            let value: Value = serde_saphyr::from_str(doc).ok()?;
            if value.is_null() {
                continue;
            }
            push_object(name, document, None, value, &mut out).ok()?;
        } else {
            let header: Header = serde_saphyr::from_str(doc).ok()?;
            out.push(Manifest {
                source: Source {
                    file: name.to_string(),
                    document,
                    item: None,
                },
                object: header.into_object(api_version, kind)?,
            });
        }
    }
    Some(out)
}

/// What `lint` needs of an object no rule reads.
#[derive(Deserialize)]
struct Header {
    #[serde(rename = "apiVersion")]
    api_version: String,
    kind: String,
    #[serde(default)]
    metadata: Option<HeaderMeta>,
}

#[derive(Deserialize)]
struct HeaderMeta {
    #[serde(default)]
    name: Option<Value>,
    #[serde(default)]
    namespace: Option<Value>,
}

impl Header {
    /// The object as `apiVersion`, `kind` and the name and namespace; `None` when the parsed
    /// type disagrees with the text scan (the general path decides then).
    fn into_object(self, api_version: &str, kind: &str) -> Option<Value> {
        if self.api_version != api_version || self.kind != kind {
            return None;
        }
        let mut meta = Map::new();
        if let Some(m) = self.metadata {
            for (key, value) in [("name", m.name), ("namespace", m.namespace)] {
                if let Some(v) = value {
                    meta.insert(key.to_string(), v);
                }
            }
        }
        let mut object = Map::new();
        object.insert("apiVersion".into(), Value::String(self.api_version));
        object.insert("kind".into(), Value::String(self.kind));
        object.insert("metadata".into(), Value::Object(meta));
        Some(Value::Object(object))
    }
}

/// The non-empty documents of a YAML stream, or `None` when the stream uses what a line split
/// cannot follow (directives, `...` document ends, content after `---`).
fn split_documents(text: &str) -> Option<Vec<&str>> {
    let mut documents = Vec::new();
    let mut start = 0;
    let mut offset = 0;
    let mut has_content = false;
    for line in text.split_inclusive('\n') {
        let bare = line.trim_end_matches(['\n', '\r']);
        if bare.starts_with('%') || bare == "..." || bare.starts_with("... ") {
            return None;
        }
        if is_doc_marker(bare) {
            if is_content(&bare[3..]) {
                return None;
            }
            if has_content {
                documents.push(&text[start..offset]);
            }
            start = offset + line.len();
            has_content = false;
        } else if is_content(bare) {
            has_content = true;
        }
        offset += line.len();
    }
    if has_content {
        documents.push(&text[start..]);
    }
    Some(documents)
}

/// The `apiVersion` and `kind` of a document from its top-level lines, when both are plain
/// (or simply quoted) scalars.
fn top_level_type(doc: &str) -> Option<(&str, &str)> {
    let mut api_version = None;
    let mut kind = None;
    for line in doc.lines() {
        if let Some(v) = line.strip_prefix("apiVersion:") {
            api_version = Some(scalar(v)?);
        } else if let Some(v) = line.strip_prefix("kind:") {
            kind = Some(scalar(v)?);
        }
    }
    Some((api_version?, kind?))
}

/// A plain or quoted scalar on one line, without a trailing comment; `None` for anything else
/// (anchors, tags, flow collections, block scalars, escapes).
fn scalar(rest: &str) -> Option<&str> {
    let v = rest.trim();
    let v = match v.find(" #") {
        Some(i) => v[..i].trim_end(),
        None => v,
    };
    let quoted = v
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .or_else(|| v.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')));
    let text = quoted.unwrap_or(v);
    let simple = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '/' | '-' | '_'));
    // Unquoted, a number, a boolean or null is not a string: the general path reports it.
    let string = quoted.is_some()
        || (text.starts_with(|c: char| c.is_ascii_alphabetic())
            && !matches!(
                text.to_ascii_lowercase().as_str(),
                "true" | "false" | "null" | "yes" | "no" | "on" | "off" | "y" | "n"
            ));
    (simple && string).then_some(text)
}

/// A YAML document marker line (`---`, optionally followed by content).
pub(super) fn is_doc_marker(line: &str) -> bool {
    line == "---" || line.starts_with("--- ") || line.starts_with("---\t")
}

/// A line that is part of a document's content (not blank, a comment, a directive or `...`).
pub(super) fn is_content(line: &str) -> bool {
    let t = line.trim();
    !t.is_empty() && !t.starts_with('#') && !t.starts_with('%') && t != "..."
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::parse_str;

    const STREAM: &str = "# leading comment\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  namespace: shop\ndata:\n  a: \"1\"\n---\n---\n# only a comment\n---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: web, namespace: shop}\nspec: {}\n---\napiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Service, metadata: {name: a}}\n- {apiVersion: rbac.authorization.k8s.io/v1, kind: Role, metadata: {name: r}}\n";

    #[test]
    fn same_objects_and_sources_as_the_general_path_for_read_kinds() {
        let fast = parse("f.yaml", STREAM).expect("fast path applies");
        let general = parse_str("f.yaml", STREAM).unwrap();
        assert_eq!(fast.len(), general.len());
        for (f, g) in fast.iter().zip(&general) {
            assert_eq!(f.source, g.source);
            assert_eq!(f.kind(), g.kind());
            assert_eq!(f.name(), g.name());
            assert_eq!(f.namespace(), g.namespace());
            if f.kind() != "ConfigMap" {
                assert_eq!(f.object, g.object, "read kinds are parsed whole");
            }
        }
        // The ConfigMap (no rule reads it) kept only its header.
        assert!(fast[0].object.get("data").is_none());
    }

    fn document() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let kind = prop::sample::select(vec![
            ("v1", "ConfigMap"),
            ("v1", "Service"),
            ("v1", "Secret"),
            ("apps/v1", "Deployment"),
            ("networking.k8s.io/v1", "Ingress"),
            ("rbac.authorization.k8s.io/v1", "Role"),
            ("gateway.envoyproxy.io/v1alpha1", "SecurityPolicy"),
        ]);
        let namespace = prop::option::of("[a-z]{1,6}");
        let extra = prop::sample::select(vec![
            "",
            "data:\n  ssl-protocols: TLSv1\n",
            "spec:\n  type: LoadBalancer\n",
            "# a comment\n",
            "data: {a: '1'}\n",
        ]);
        (kind, "[a-z]{1,8}", namespace, extra, any::<bool>()).prop_map(
            |((api_version, kind), name, namespace, extra, quoted)| {
                let kind = if quoted { format!("\"{kind}\"") } else { kind.to_string() };
                let ns = namespace.map(|n| format!("  namespace: {n}\n")).unwrap_or_default();
                format!("apiVersion: {api_version}\nkind: {kind}\nmetadata:\n  name: {name}\n{ns}{extra}")
            },
        )
    }

    proptest::proptest! {
        /// Whatever the stream, the fast path gives the general path's objects: same sources,
        /// types, names and namespaces, and whole objects for the kinds the rules read.
        #[test]
        fn fast_path_agrees_with_the_general_path(
            docs in proptest::collection::vec(document(), 1..8),
            separators in proptest::collection::vec(
                proptest::sample::select(vec!["---\n", "---\n---\n", "---\n# c\n"]), 8),
        ) {
            let mut text = String::new();
            for (i, d) in docs.iter().enumerate() {
                text.push_str(separators[i]);
                text.push_str(d);
            }
            let general = parse_str("f.yaml", &text).unwrap();
            let fast = parse("f.yaml", &text).expect("simple streams take the fast path");
            proptest::prop_assert_eq!(fast.len(), general.len());
            for (f, g) in fast.iter().zip(&general) {
                proptest::prop_assert_eq!(&f.source, &g.source);
                proptest::prop_assert_eq!((f.kind(), f.name(), f.namespace()), (g.kind(), g.name(), g.namespace()));
                let group = f.api_version().split_once('/').map_or("", |(g, _)| g);
                // The general object's own text stands for its document's.
                let own_text = g.object.to_string();
                if coverage::is_read(group, f.kind(), &own_text) {
                    proptest::prop_assert_eq!(&f.object, &g.object);
                }
            }
        }
    }

    #[test]
    fn anything_unusual_takes_the_general_path() {
        // A syntax error in a document of a kind no rule reads is not hidden.
        assert!(
            parse(
                "f.yaml",
                "apiVersion: v1\nkind: ConfigMap\ndata: [unclosed\n"
            )
            .is_none()
        );
        assert!(
            parse(
                "f.yaml",
                "%YAML 1.2\n---\napiVersion: v1\nkind: ConfigMap\n"
            )
            .is_none()
        );
        assert!(parse("f.yaml", "--- {apiVersion: v1, kind: ConfigMap}\n").is_none());
        assert!(parse("f.yaml", "apiVersion: v1\nkind: &k ConfigMap\n").is_none());
        assert!(parse("f.yaml", "{apiVersion: v1, kind: ConfigMap}\n").is_none());
        // Not a string: the general path says so.
        assert!(parse("f.yaml", "apiVersion: v1\nkind: 1\n").is_none());
        assert!(parse("f.yaml", "apiVersion: v1\nkind: true\n").is_none());
        assert!(parse("f.yaml", "apiVersion: v1\nkind: null\n").is_none());
        // A top-level line that disagrees with the parse (a key inside a block scalar).
        assert!(
            parse(
                "f.yaml",
                "apiVersion: v1\nkind: ConfigMap\ndata:\n  x: |\n    y\nkind: Secret\n"
            )
            .is_none()
        );
    }
}
