//! Where an object breaks the CRD's structural schema, by field: a value of the wrong type
//! named by its path (`spec.openapi.requests`), for the error of a policy that does not
//! deserialize (serde's own message names no field).
//!
//! The YAML 1.1 trap gets its own advice: kubectl reads YAML 1.1, where an unquoted `Off`,
//! `On`, `Yes` or `No` is a boolean, so `requests: Off` reaches the apiserver as `false`.

use super::ApiSecurityPolicy;
use kube::CustomResourceExt;
use serde_json::Value;
use std::sync::LazyLock;

/// The openAPIV3Schema of the CRD (as the apiserver checks it).
static SCHEMA: LazyLock<Value> = LazyLock::new(|| {
    let crd = serde_json::to_value(ApiSecurityPolicy::crd()).unwrap_or_default();
    crd.pointer("/spec/versions/0/schema/openAPIV3Schema")
        .cloned()
        .unwrap_or_default()
});

/// A value whose JSON type is not the schema's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeMismatch {
    /// `spec.openapi.requests`, `spec.rateLimits[0].limit.requests`.
    pub field: String,
    /// `is the boolean false, but must be a string (Enforce, Audit or Off)`.
    pub problem: String,
    /// What to write instead.
    pub fix: String,
}

/// The first value of `object` (a whole ApiSecurityPolicy) whose type differs from the
/// schema's, depth first in document order; None when every value has its type.
pub fn first_type_mismatch(object: &Value) -> Option<TypeMismatch> {
    mismatch(&SCHEMA, object, &mut String::new())
}

fn mismatch(schema: &Value, value: &Value, path: &mut String) -> Option<TypeMismatch> {
    if let Some(expected) = schema.get("type").and_then(Value::as_str)
        && !has_type(schema, expected, value)
    {
        return Some(describe(schema, expected, value, path));
    }
    match value {
        Value::Object(map) => {
            let properties = schema.get("properties").and_then(Value::as_object)?;
            for (key, child) in map {
                let Some(child_schema) = properties.get(key) else {
                    continue;
                };
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
                let found = mismatch(child_schema, child, path);
                path.truncate(len);
                if found.is_some() {
                    return found;
                }
            }
            None
        }
        Value::Array(items) => {
            let item_schema = schema.get("items")?;
            for (i, item) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                let found = mismatch(item_schema, item, path);
                path.truncate(len);
                if found.is_some() {
                    return found;
                }
            }
            None
        }
        _ => None,
    }
}

fn has_type(schema: &Value, expected: &str, value: &Value) -> bool {
    let int_or_string = schema
        .get("x-kubernetes-int-or-string")
        .and_then(Value::as_bool)
        == Some(true);
    match expected {
        "string" => value.is_string() || (int_or_string && value.is_i64()),
        "integer" => value.is_i64() || value.is_u64() || (int_or_string && value.is_string()),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        "object" => value.is_object(),
        "array" => value.is_array(),
        _ => true,
    }
}

fn json_type(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(_) => "a string".into(),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a mapping".into(),
    }
}

fn describe(schema: &Value, expected: &str, value: &Value, path: &str) -> TypeMismatch {
    let choices: Vec<&str> = schema
        .get("enum")
        .and_then(Value::as_array)
        .map(|e| e.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let wanted = match expected {
        "object" => "a mapping".to_string(),
        "array" => "a list".to_string(),
        "integer" => "an integer".to_string(),
        other if choices.is_empty() => format!("a {other}"),
        other => format!("a {other} ({})", choices.join(", ")),
    };
    let problem = format!("is {}, but must be {wanted}", json_type(value));
    // kubectl's YAML 1.1 turns unquoted on/off/yes/no into booleans.
    let yaml11 = choices.iter().find(|c| {
        let c = c.to_ascii_lowercase();
        value.as_bool().is_some_and(|b| {
            if b {
                matches!(c.as_str(), "on" | "yes" | "y" | "true")
            } else {
                matches!(c.as_str(), "off" | "no" | "n" | "false")
            }
        })
    });
    let fix = match yaml11 {
        Some(choice) => format!(
            "quote it: {path}: \"{choice}\" (kubectl reads YAML 1.1, where an unquoted {choice} is a boolean)"
        ),
        None => format!("write {wanted} (see `kubectl explain apisecuritypolicy.{path}`)"),
    };
    TypeMismatch {
        field: path.to_string(),
        problem,
        fix,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(spec: Value) -> Value {
        json!({"apiVersion": "apiguard.dev/v1alpha1", "kind": "ApiSecurityPolicy",
               "metadata": {"name": "a", "namespace": "b"}, "spec": spec})
    }

    #[test]
    fn an_unquoted_off_is_named_with_the_quoting_fix() {
        let p = policy(json!({"target": {"service": "s", "port": 80},
            "openapi": {"source": {"inline": "x"}, "requests": false}}));
        let m = first_type_mismatch(&p).unwrap();
        assert_eq!(m.field, "spec.openapi.requests");
        assert_eq!(
            m.problem,
            "is the boolean false, but must be a string (Enforce, Audit, Off)"
        );
        assert!(
            m.fix
                .starts_with("quote it: spec.openapi.requests: \"Off\""),
            "{}",
            m.fix
        );
    }

    #[test]
    fn other_mismatches_name_the_field_inside_lists() {
        let p = policy(json!({"target": {"service": "s", "port": 80},
            "rateLimits": [{"name": "a", "limit": {"requests": "many", "per": "Minute"}}]}));
        let m = first_type_mismatch(&p).unwrap();
        assert_eq!(m.field, "spec.rateLimits[0].limit.requests");
        assert_eq!(m.problem, "is a string, but must be an integer");
        let p = policy(json!({"target": {"service": "s", "port": 80}, "hosts": "a.example"}));
        let m = first_type_mismatch(&p).unwrap();
        assert_eq!(
            (m.field.as_str(), m.problem.as_str()),
            ("spec.hosts", "is a string, but must be a list")
        );
    }

    #[test]
    fn a_well_typed_policy_has_none() {
        let p = policy(json!({"target": {"service": "s", "port": 80},
            "openapi": {"source": {"inline": "x"}, "requests": "Off"}}));
        assert_eq!(first_type_mismatch(&p), None);
    }
}
