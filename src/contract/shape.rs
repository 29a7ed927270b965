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
use super::tape::TapeNode;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::fmt::Write as _;

/// How many nested composition levels are followed for one value (against `$ref` cycles).
const MAX_DEPTH: usize = 16;

/// Most shapes compiled for one document (a bigger one leaves the rest open).
const MAX_SHAPES: usize = 20_000;

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

/// One index into [`Shapes`].
pub(crate) type ShapeId = usize;

/// A declared property: whether every schema declaring it marks it, and its own shape.
#[derive(Debug)]
struct Prop {
    name: String,
    read_only: bool,
    write_only: bool,
    shape: ShapeId,
}

/// What a set of schemas declares, compiled: the walk at request time reads only this.
#[derive(Debug)]
struct Node {
    props: Vec<Prop>,
    open: bool,
    additional: Option<ShapeId>,
    items: Option<ShapeId>,
}

const OPEN: Node = Node {
    props: Vec::new(),
    open: true,
    additional: None,
    items: None,
};

/// Every compiled shape of a document (cyclic `$ref`s are cycles of ids).
#[derive(Debug, Default)]
pub(crate) struct Shapes {
    nodes: Vec<Node>,
    /// The shape of each set of schemas (by address in the document), while compiling.
    memo: HashMap<Vec<usize>, ShapeId>,
}

impl Shapes {
    /// The shape of the value `schemas` (all in `doc`) apply to, compiled once.
    pub(crate) fn build(&mut self, doc: &Document, schemas: &[&Value]) -> ShapeId {
        let mut key: Vec<usize> = schemas
            .iter()
            .map(|s| std::ptr::from_ref(*s) as usize)
            .collect();
        key.sort_unstable();
        key.dedup();
        if let Some(id) = self.memo.get(&key) {
            return *id;
        }
        let id = self.nodes.len();
        self.nodes.push(OPEN);
        self.memo.insert(key, id);
        if id >= MAX_SHAPES || schemas.is_empty() {
            return id;
        }
        let mut declared = Declared::default();
        for s in schemas {
            collect(doc, s, &mut declared, 0);
        }
        let mut props: Vec<Prop> = Vec::new();
        for (name, _) in &declared.properties {
            if props.iter().any(|p| p.name == *name) {
                continue;
            }
            let own: Vec<&Value> = declared
                .properties
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, s)| *s)
                .collect();
            props.push(Prop {
                name: name.to_string(),
                read_only: own.iter().all(|s| is_marked(doc, s, "readOnly")),
                write_only: own.iter().all(|s| is_marked(doc, s, "writeOnly")),
                shape: self.build(doc, &own),
            });
        }
        let additional =
            (!declared.additional.is_empty()).then(|| self.build(doc, &declared.additional));
        let mut items = Vec::new();
        for s in schemas {
            collect_items(doc, s, &mut items, 0);
        }
        let items = (!items.is_empty()).then(|| self.build(doc, &items));
        self.nodes[id] = Node {
            props,
            open: declared.open,
            additional,
            items,
        };
        id
    }

    /// The memo is for compiling only.
    pub(crate) fn done(&mut self) {
        self.memo = HashMap::new();
    }

    /// Walks `value` against shape `id`, removing what must go, reporting it at `location`.
    pub(crate) fn strip(
        &self,
        id: ShapeId,
        value: &mut Value,
        location: &mut String,
        policy: Policy,
        out: &mut Vec<FieldError>,
    ) {
        let Some(node) = self.nodes.get(id) else {
            return;
        };
        match value {
            Value::Object(map) => self.strip_object(node, map, location, policy, out),
            Value::Array(items) => {
                let Some(item_shape) = node.items else {
                    return;
                };
                for (i, item) in items.iter_mut().enumerate() {
                    let len = location.len();
                    let _ = write!(location, "/{i}");
                    self.strip(item_shape, item, location, policy, out);
                    location.truncate(len);
                }
            }
            _ => {}
        }
    }

    /// Whether [`Shapes::strip`] would leave `node` as it is (report nothing): the read-only
    /// walk of the fast path.
    pub(crate) fn clean(&self, id: ShapeId, node: TapeNode<'_>, policy: Policy) -> bool {
        let Some(shape) = self.nodes.get(id) else {
            return true;
        };
        if let Some(members) = node.members() {
            for (name, child) in members {
                let clean = match shape.props.iter().find(|p| p.name == name) {
                    None if policy.undeclared && !shape.open => false,
                    None => shape
                        .additional
                        .is_none_or(|additional| self.clean(additional, child, policy)),
                    Some(prop) => {
                        let forbidden = match policy.direction {
                            Direction::Request => prop.read_only,
                            Direction::Response => prop.write_only,
                        };
                        !forbidden && self.clean(prop.shape, child, policy)
                    }
                };
                if !clean {
                    return false;
                }
            }
        } else if let (Some(items), Some(elements)) = (shape.items, node.elements()) {
            return elements
                .into_iter()
                .all(|item| self.clean(items, item, policy));
        }
        true
    }

    fn strip_object(
        &self,
        node: &Node,
        map: &mut Map<String, Value>,
        location: &mut String,
        policy: Policy,
        out: &mut Vec<FieldError>,
    ) {
        let mut removed = Vec::new();
        for (name, child) in map.iter_mut() {
            let len = location.len();
            push_token(location, name);
            match node.props.iter().find(|p| p.name == *name) {
                None if policy.undeclared && !node.open => {
                    out.push(FieldError::new(location.clone(), undeclared_reason(policy)));
                    removed.push(name.clone());
                }
                None => {
                    if let Some(additional) = node.additional {
                        self.strip(additional, child, location, policy, out);
                    }
                }
                Some(prop) => {
                    let forbidden = match policy.direction {
                        Direction::Request => prop.read_only,
                        Direction::Response => prop.write_only,
                    };
                    if forbidden {
                        out.push(FieldError::new(
                            location.clone(),
                            policy.direction.forbidden_keyword(),
                        ));
                        removed.push(name.clone());
                    } else {
                        self.strip(prop.shape, child, location, policy, out);
                    }
                }
            }
            location.truncate(len);
        }
        for name in removed {
            map.remove(&name);
        }
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
