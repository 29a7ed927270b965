//! Careful reading of objects without a typed model (Gateway API, Envoy Gateway, Istio, and
//! the annotations and pod templates of typed kinds): unknown fields are tolerated, a field of
//! the wrong type becomes an APG014 finding naming the field, and nothing here can panic
//! (no indexing, no unwrap on user data).

use super::{Finding, ObjectRef, RuleId};
use serde_json::Value;

/// A human name for a JSON value's type, for messages.
pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// Reads fields of one object, reporting wrong types as APG014 findings into `out`.
pub(crate) struct Reader<'a> {
    pub obj: &'a ObjectRef,
    pub out: &'a mut Vec<Finding>,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(obj: &'a ObjectRef, out: &'a mut Vec<Finding>) -> Self {
        Reader { obj, out }
    }

    /// Records that the field at `path` has the wrong type.
    pub(crate) fn wrong_type(&mut self, path: &str, expected: &str, found: &Value) {
        self.out.push(Finding::new(
            RuleId::Apg014,
            self.obj,
            path,
            format!("must be {expected}, found {}", type_name(found)),
            format!(
                "write {path} as {expected} (see the API reference of {})",
                self.obj.kind
            ),
        ));
    }

    /// The field `key` of `parent` (absent, null, or a non-mapping parent: `None`).
    pub(crate) fn get<'v>(&self, parent: &'v Value, key: &str) -> Option<&'v Value> {
        parent.as_object()?.get(key).filter(|v| !v.is_null())
    }

    /// A string field; another type is reported.
    pub(crate) fn str<'v>(&mut self, parent: &'v Value, key: &str, path: &str) -> Option<&'v str> {
        let v = self.get(parent, key)?;
        self.as_str(v, path)
    }

    /// A string value; another type is reported.
    pub(crate) fn as_str<'v>(&mut self, v: &'v Value, path: &str) -> Option<&'v str> {
        match v {
            Value::String(s) => Some(s),
            Value::Null => None,
            other => {
                self.wrong_type(path, "a string", other);
                None
            }
        }
    }

    /// A boolean field; another type is reported.
    pub(crate) fn bool(&mut self, parent: &Value, key: &str, path: &str) -> Option<bool> {
        match self.get(parent, key)? {
            Value::Bool(b) => Some(*b),
            other => {
                self.wrong_type(path, "a boolean", other);
                None
            }
        }
    }

    /// A list field (absent: empty); another type is reported.
    pub(crate) fn array<'v>(&mut self, parent: &'v Value, key: &str, path: &str) -> &'v [Value] {
        match self.get(parent, key) {
            None => &[],
            Some(Value::Array(items)) => items,
            Some(other) => {
                self.wrong_type(path, "a list", other);
                &[]
            }
        }
    }

    /// A mapping field; another type is reported.
    pub(crate) fn object<'v>(
        &mut self,
        parent: &'v Value,
        key: &str,
        path: &str,
    ) -> Option<&'v Value> {
        match self.get(parent, key)? {
            v @ Value::Object(_) => Some(v),
            other => {
                self.wrong_type(path, "a mapping", other);
                None
            }
        }
    }

    /// A list of strings (absent: empty); non-strings are reported and skipped.
    pub(crate) fn strings<'v>(&mut self, parent: &'v Value, key: &str, path: &str) -> Vec<&'v str> {
        let mut out = Vec::new();
        for (i, v) in self.array(parent, key, path).iter().enumerate() {
            if let Some(s) = self.as_str(v, &format!("{path}[{i}]")) {
                out.push(s);
            }
        }
        out
    }

    /// `metadata.annotations` as string pairs; non-string values are reported and skipped.
    pub(crate) fn annotations<'v>(&mut self, object: &'v Value) -> Vec<(&'v str, &'v str)> {
        self.string_map(object, "annotations")
    }

    /// `metadata.labels` as string pairs; non-string values are reported and skipped.
    pub(crate) fn labels<'v>(&mut self, object: &'v Value) -> Vec<(&'v str, &'v str)> {
        self.string_map(object, "labels")
    }

    fn string_map<'v>(&mut self, object: &'v Value, key: &str) -> Vec<(&'v str, &'v str)> {
        let Some(meta) = self.object(object, "metadata", "metadata") else {
            return Vec::new();
        };
        let Some(map) = self
            .object(meta, key, &format!("metadata.{key}"))
            .and_then(Value::as_object)
        else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (k, v) in map {
            if let Some(s) = self.as_str(v, &format!("metadata.{key}[{k}]")) {
                out.push((k.as_str(), s));
            }
        }
        out
    }
}

/// The field path of an annotation, e.g. `metadata.annotations[apiguard.dev/exempt]`.
pub(crate) fn annotation_field(key: &str) -> String {
    format!("metadata.annotations[{key}]")
}
