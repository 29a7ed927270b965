//! The properties a message may carry: removes (and reports) those the schema does not declare
//! and those forbidden in the message's direction (`readOnly` in requests, `writeOnly` in
//! responses), recursively through objects, arrays, `$ref`s and `allOf`/`anyOf`/`oneOf`.
//!
//! The declared properties of a value are the union over every schema that applies to it
//! (`allOf` merged; `anyOf`/`oneOf` conservatively: a property survives if any branch declares
//! it). An object is open (nothing undeclared) when a schema says `additionalProperties` (other
//! than `false`) or `patternProperties`, or has no `properties` at all (a free-form object); a
//! forbidden property is removed only when every schema declaring it marks it.

use super::document::{Document, push_token, resolve};
use super::problem::FieldError;
use super::schema::{Direction, is_marked};
use serde_json::{Map, Value};

/// How many nested composition levels are followed for one value (against `$ref` cycles).
const MAX_DEPTH: usize = 16;

/// What to do with undeclared properties.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Policy {
    pub(crate) direction: Direction,
    /// Remove (report) properties no schema declares.
    pub(crate) undeclared: bool,
}

/// The schemas that apply to one object's properties.
#[derive(Default)]
struct Declared<'a> {
    properties: Vec<(&'a str, &'a Value)>,
    /// Schemas of `additionalProperties` (for the values of other properties).
    additional: Vec<&'a Value>,
    open: bool,
}

/// Walks `value` against `schemas`, removing what must go, reporting it at `location`.
pub(crate) fn strip(
    doc: &Document,
    schemas: &[&Value],
    value: &mut Value,
    location: &mut String,
    policy: Policy,
    out: &mut Vec<FieldError>,
) {
    match value {
        Value::Object(map) => strip_object(doc, schemas, map, location, policy, out),
        Value::Array(items) => {
            let mut item_schemas = Vec::new();
            for s in schemas {
                collect_items(doc, s, &mut item_schemas, 0);
            }
            if item_schemas.is_empty() {
                return;
            }
            for (i, item) in items.iter_mut().enumerate() {
                let len = location.len();
                location.push('/');
                location.push_str(&i.to_string());
                strip(doc, &item_schemas, item, location, policy, out);
                location.truncate(len);
            }
        }
        _ => {}
    }
}

fn strip_object(
    doc: &Document,
    schemas: &[&Value],
    map: &mut Map<String, Value>,
    location: &mut String,
    policy: Policy,
    out: &mut Vec<FieldError>,
) {
    let mut declared = Declared::default();
    for s in schemas {
        collect(doc, s, &mut declared, 0);
    }
    if schemas.is_empty() {
        declared.open = true;
    }
    let keyword = policy.direction.forbidden_keyword();
    let mut removed = Vec::new();
    for (name, child) in map.iter_mut() {
        let len = location.len();
        push_token(location, name);
        let own: Vec<&Value> = declared
            .properties
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, s)| *s)
            .collect();
        if own.is_empty() {
            if policy.undeclared && !declared.open {
                out.push(FieldError::new(location.clone(), undeclared_reason(policy)));
                removed.push(name.clone());
            } else {
                strip(doc, &declared.additional, child, location, policy, out);
            }
        } else if own.iter().all(|s| is_marked(doc, s, keyword)) {
            out.push(FieldError::new(location.clone(), keyword));
            removed.push(name.clone());
        } else {
            strip(doc, &own, child, location, policy, out);
        }
        location.truncate(len);
    }
    for name in removed {
        map.remove(&name);
    }
}

fn undeclared_reason(policy: Policy) -> &'static str {
    match policy.direction {
        Direction::Request => "unknownProperty",
        Direction::Response => "undeclared",
    }
}

/// Adds what `schema` (and its `$ref` target, and its composition branches) declares.
fn collect<'a>(doc: &'a Document, schema: &'a Value, declared: &mut Declared<'a>, depth: usize) {
    if depth > MAX_DEPTH {
        declared.open = true;
        return;
    }
    let Some(map) = schema.as_object() else {
        declared.open = true; // `true` (3.1): anything goes
        return;
    };
    let mut composed = false;
    if map.contains_key("$ref") {
        collect(doc, resolve(&doc.root, schema), declared, depth + 1);
        composed = true;
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        if let Some(Value::Array(branches)) = map.get(key) {
            for branch in branches {
                collect(doc, branch, declared, depth + 1);
            }
            composed = true;
        }
    }
    if let Some(Value::Object(props)) = map.get("properties") {
        declared
            .properties
            .extend(props.iter().map(|(n, s)| (n.as_str(), s)));
    } else if !composed {
        declared.open = true;
    }
    match map.get("additionalProperties") {
        None | Some(Value::Bool(false)) => {}
        Some(Value::Bool(true)) => declared.open = true,
        Some(other) => {
            declared.open = true;
            declared.additional.push(other);
        }
    }
    if map.contains_key("patternProperties") {
        declared.open = true;
    }
}

/// Adds the `items` schemas of `schema` (through `$ref`s and composition).
fn collect_items<'a>(doc: &'a Document, schema: &'a Value, out: &mut Vec<&'a Value>, depth: usize) {
    let Some(map) = schema.as_object() else {
        return;
    };
    if depth > MAX_DEPTH {
        return;
    }
    if map.contains_key("$ref") {
        collect_items(doc, resolve(&doc.root, schema), out, depth + 1);
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        if let Some(Value::Array(branches)) = map.get(key) {
            for branch in branches {
                collect_items(doc, branch, out, depth + 1);
            }
        }
    }
    if let Some(items) = map.get("items")
        && items.is_object()
    {
        out.push(items);
    }
}
