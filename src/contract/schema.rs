//! Schema rewrites per direction and the one-per-operation compiled validator.
//!
//! Rewrites: OpenAPI 3.0's `nullable: true` becomes a JSON-schema type array (or an `anyOf`
//! with `{"type": "null"}` when there is no `type`, and `null` joins an `enum`); a property that
//! is `readOnly` (requests) or `writeOnly` (responses) leaves `required`, because it must not be
//! sent in that direction. Unknown, `readOnly` and `writeOnly` properties themselves are handled
//! by [`super::shape`], before validation.

use super::document::{ContractError, Document, Version, push_token, resolve};
use super::problem::FieldError;
use jsonschema::error::ValidationErrorKind;
use jsonschema::json::Json;
use jsonschema::{Draft, Retrieve, ValidationOptions, Validator};
use serde_json::{Map, Value, json};
use std::sync::Arc;

/// Which way a message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    Request,
    Response,
}

impl Direction {
    /// The keyword that marks a property forbidden in this direction.
    pub(crate) fn forbidden_keyword(self) -> &'static str {
        match self {
            Direction::Request => "readOnly",
            Direction::Response => "writeOnly",
        }
    }
}

/// Keys whose values are data, not schemas: never rewritten.
const DATA_KEYS: [&str; 5] = ["enum", "const", "default", "example", "examples"];

/// The document's `components/schemas`, rewritten once per direction, for embedding.
pub(crate) fn components(doc: &Document, direction: Direction) -> Value {
    let schemas = doc
        .root
        .pointer("/components/schemas")
        .cloned()
        .unwrap_or_else(|| json!({}));
    json!({"schemas": rewrite(doc, schemas, direction)})
}

/// `schema` rewritten for `direction` (recursively).
pub(crate) fn rewrite(doc: &Document, mut schema: Value, direction: Direction) -> Value {
    rewrite_node(doc, &mut schema, direction);
    schema
}

fn rewrite_node(doc: &Document, node: &mut Value, direction: Direction) {
    match node {
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                if !DATA_KEYS.contains(&key.as_str()) {
                    rewrite_node(doc, child, direction);
                }
            }
            drop_forbidden_required(doc, map, direction);
            if doc.version == Version::V30 && map.get("nullable") == Some(&Value::Bool(true)) {
                make_nullable(map);
            }
        }
        Value::Array(items) => items
            .iter_mut()
            .for_each(|c| rewrite_node(doc, c, direction)),
        _ => {}
    }
}

/// `required` without the properties this direction must not carry.
fn drop_forbidden_required(doc: &Document, map: &mut Map<String, Value>, direction: Direction) {
    let keyword = direction.forbidden_keyword();
    let forbidden: Vec<String> = match map.get("properties").and_then(Value::as_object) {
        Some(props) => props
            .iter()
            .filter(|(_, s)| is_marked(doc, s, keyword))
            .map(|(name, _)| name.clone())
            .collect(),
        None => return,
    };
    if let Some(Value::Array(required)) = map.get_mut("required") {
        required.retain(|r| !r.as_str().is_some_and(|r| forbidden.iter().any(|f| f == r)));
        if required.is_empty() {
            map.remove("required");
        }
    }
}

/// Whether a property schema (or its `$ref` target) says `keyword: true`.
pub(crate) fn is_marked(doc: &Document, schema: &Value, keyword: &str) -> bool {
    let marked = |s: &Value| s.get(keyword) == Some(&Value::Bool(true));
    marked(schema) || marked(resolve(&doc.root, schema))
}

/// OpenAPI 3.0 `nullable: true` as JSON schema.
fn make_nullable(map: &mut Map<String, Value>) {
    map.remove("nullable");
    if let Some(Value::Array(options)) = map.get_mut("enum")
        && !options.contains(&Value::Null)
    {
        options.push(Value::Null);
    }
    match map.get_mut("type") {
        Some(Value::String(t)) => {
            let t = std::mem::take(t);
            map.insert("type".into(), json!([t, "null"]));
        }
        Some(Value::Array(types)) if !types.contains(&json!("null")) => types.push(json!("null")),
        Some(_) => {}
        None => {
            let inner = Value::Object(std::mem::take(map));
            map.insert("anyOf".into(), json!([inner, {"type": "null"}]));
        }
    }
}

/// Compiles the validator of one schema (at `pointer` in the document): the rewritten schema
/// under `allOf`, next to the rewritten `components` its `$ref`s point into.
pub(crate) fn compile<F: Json>(
    doc: &Document,
    schema: &Value,
    components: &Value,
    direction: Direction,
    pointer: &str,
) -> Result<Validator<F>, ContractError> {
    let root = json!({
        "allOf": [rewrite(doc, schema.clone(), direction)],
        "components": components,
    });
    let draft = match doc.version {
        Version::V30 => Draft::Draft4,
        Version::V31 => Draft::Draft202012,
    };
    ValidationOptions::<Arc<dyn Retrieve>, F>::default()
        .with_draft(draft)
        .should_validate_formats(true)
        .with_format("uuid", is_uuid)
        .build(&root)
        .map_err(|e| {
            let at = e.instance_path().to_string();
            let place = match at.strip_prefix("/allOf/0") {
                Some(rest) => format!("{pointer}{rest}"),
                None => at,
            };
            ContractError::at(&place, format!("invalid schema: {}", e.masked()))
        })
}

/// `8-4-4-4-12` hexadecimal digits (also discovery's UUID path segments).
pub(crate) fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// Most errors reported for one message.
pub(crate) const MAX_ERRORS: usize = 20;

/// The violations of `value` against `validator`, located under `prefix` (`body`, `query/limit`).
pub(crate) fn violations(
    validator: &Validator,
    value: &Value,
    prefix: &str,
    out: &mut Vec<FieldError>,
) {
    if validator.is_valid(value) {
        return;
    }
    for error in validator.iter_errors(value) {
        if out.len() >= MAX_ERRORS {
            return;
        }
        let mut location = format!("{prefix}{}", error.instance_path());
        let reason = match error.kind() {
            ValidationErrorKind::Required { property } => {
                if let Some(name) = property.as_str() {
                    push_token(&mut location, name);
                }
                "required"
            }
            ValidationErrorKind::AdditionalProperties { unexpected }
            | ValidationErrorKind::UnevaluatedProperties { unexpected } => {
                for name in unexpected {
                    let mut at = location.clone();
                    push_token(&mut at, name);
                    push_unique(out, FieldError::new(at, "unknownProperty"));
                }
                continue;
            }
            kind => reason(kind),
        };
        push_unique(out, FieldError::new(location, reason));
    }
}

pub(crate) fn push_unique(out: &mut Vec<FieldError>, error: FieldError) {
    if out.len() < MAX_ERRORS && !out.contains(&error) {
        out.push(error);
    }
}

/// The stable reason of a validation error: its keyword (`falseSchema` is `forbidden`).
fn reason(kind: &ValidationErrorKind) -> &'static str {
    match kind {
        ValidationErrorKind::FalseSchema => "forbidden",
        ValidationErrorKind::Custom { .. } | ValidationErrorKind::Referencing(_) => "schema",
        ValidationErrorKind::BacktrackLimitExceeded { .. }
        | ValidationErrorKind::RegexEngineFailure { .. } => "pattern",
        ValidationErrorKind::Type { .. } => "type",
        ValidationErrorKind::Enum { .. } => "enum",
        ValidationErrorKind::Constant { .. } => "const",
        ValidationErrorKind::Format { .. } => "format",
        ValidationErrorKind::Minimum { .. } => "minimum",
        ValidationErrorKind::Maximum { .. } => "maximum",
        ValidationErrorKind::ExclusiveMinimum { .. } => "exclusiveMinimum",
        ValidationErrorKind::ExclusiveMaximum { .. } => "exclusiveMaximum",
        ValidationErrorKind::MinLength { .. } => "minLength",
        ValidationErrorKind::MaxLength { .. } => "maxLength",
        ValidationErrorKind::MinItems { .. } => "minItems",
        ValidationErrorKind::MaxItems { .. } => "maxItems",
        ValidationErrorKind::Pattern { .. } => "pattern",
        ValidationErrorKind::MultipleOf { .. } => "multipleOf",
        ValidationErrorKind::UniqueItems => "uniqueItems",
        ValidationErrorKind::AnyOf { .. } => "anyOf",
        ValidationErrorKind::OneOfMultipleValid { .. }
        | ValidationErrorKind::OneOfNotValid { .. } => "oneOf",
        ValidationErrorKind::Not { .. } => "not",
        _ => "schema",
    }
}
