//! Path, query and header parameters: compiled once (a validator per parameter schema) and
//! checked from their raw text, coerced to the schema's type first.

use super::document::{ContractError, Document, resolve};
use super::problem::FieldError;
use super::schema::{Direction, compile, push_unique, violations};
use jsonschema::Validator;
use serde_json::{Number, Value};

/// Where a parameter is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum In {
    Path,
    Query,
    Header,
}

impl In {
    fn prefix(self) -> &'static str {
        match self {
            In::Path => "path",
            In::Query => "query",
            In::Header => "header",
        }
    }
}

/// The JSON type a parameter's text is read as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    String,
    Integer,
    Number,
    Boolean,
}

#[derive(Debug)]
pub(crate) struct Param {
    pub(crate) name: String,
    pub(crate) location: In,
    required: bool,
    /// `Some(kind of the items)` for an array parameter.
    array: Option<Kind>,
    kind: Kind,
    validator: Option<Validator>,
}

/// The parameters of an operation: the path item's, overridden by the operation's (same name
/// and location). Cookie parameters are not checked.
pub(crate) fn compile_params(
    doc: &Document,
    components: &Value,
    item: &Value,
    op: &Value,
    pointer: &str,
) -> Result<Vec<Param>, ContractError> {
    let mut out: Vec<Param> = Vec::new();
    let item_pointer = pointer.rsplit_once('/').map_or("", |(p, _)| p).to_string();
    for (holder, at) in [(item, item_pointer.as_str()), (op, pointer)] {
        let Some(list) = holder.get("parameters").and_then(Value::as_array) else {
            continue;
        };
        for (i, param) in list.iter().enumerate() {
            let at = format!("{at}/parameters/{i}");
            if let Some(param) = compile_param(doc, components, param, &at)? {
                out.retain(|p| !(p.name == param.name && p.location == param.location));
                out.push(param);
            }
        }
    }
    Ok(out)
}

fn compile_param(
    doc: &Document,
    components: &Value,
    param: &Value,
    pointer: &str,
) -> Result<Option<Param>, ContractError> {
    let param = resolve(&doc.root, param);
    let name = param.get("name").and_then(Value::as_str);
    let location = match param.get("in").and_then(Value::as_str) {
        Some("path") => In::Path,
        Some("query") => In::Query,
        Some("header") => In::Header,
        Some("cookie") => return Ok(None),
        _ => {
            return Err(ContractError::at(
                pointer,
                "a parameter's `in` is path, query, header or cookie",
            ));
        }
    };
    let Some(name) = name else {
        return Err(ContractError::at(pointer, "a parameter has a `name`"));
    };
    let required = location == In::Path || param.get("required") == Some(&Value::Bool(true));
    let schema = param.get("schema");
    let resolved = schema.map(|s| resolve(&doc.root, s));
    let (kind, array) = match resolved.map(|s| type_of(s)) {
        Some(Some("array")) => {
            let items = resolved
                .and_then(|s| s.get("items"))
                .map(|s| resolve(&doc.root, s));
            (Kind::String, Some(kind_of(items.and_then(type_of))))
        }
        Some(t) => (kind_of(t), None),
        None => (Kind::String, None),
    };
    let validator = match schema {
        Some(schema) => {
            let at = format!("{pointer}/schema");
            Some(compile(doc, schema, components, Direction::Request, &at)?)
        }
        None => None,
    };
    let name = if location == In::Header {
        name.to_ascii_lowercase()
    } else {
        name.to_string()
    };
    Ok(Some(Param {
        name,
        location,
        required,
        array,
        kind,
        validator,
    }))
}

/// The first non-null `type` of a schema.
fn type_of(schema: &Value) -> Option<&str> {
    match schema.get("type")? {
        Value::String(t) => Some(t),
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).find(|t| *t != "null"),
        _ => None,
    }
}

fn kind_of(t: Option<&str>) -> Kind {
    match t {
        Some("integer") => Kind::Integer,
        Some("number") => Kind::Number,
        Some("boolean") => Kind::Boolean,
        _ => Kind::String,
    }
}

/// The text read as `kind`; left a string when it is not one (the validator then says `type`).
fn coerce(text: &str, kind: Kind) -> Value {
    let parsed = match kind {
        Kind::String => None,
        Kind::Integer => text.parse::<i64>().ok().map(Value::from),
        Kind::Number => text
            .parse::<f64>()
            .ok()
            .and_then(Number::from_f64)
            .map(Value::Number),
        Kind::Boolean => text.parse::<bool>().ok().map(Value::Bool),
    };
    parsed.unwrap_or_else(|| Value::String(text.to_string()))
}

impl Param {
    /// Checks this parameter's values (empty: absent) and reports at `path/id`, `query/limit`.
    pub(crate) fn check(&self, values: &[&str], out: &mut Vec<FieldError>) {
        let location = format!("{}/{}", self.location.prefix(), self.name);
        if values.is_empty() {
            if self.required {
                push_unique(out, FieldError::new(location, "required"));
            }
            return;
        }
        let value = match self.array {
            Some(kind) => {
                let items: Vec<&str> = if values.len() == 1 {
                    values[0].split(',').collect()
                } else {
                    values.to_vec()
                };
                Value::Array(items.into_iter().map(|v| coerce(v, kind)).collect())
            }
            None => coerce(values[0], self.kind),
        };
        if let Some(validator) = &self.validator {
            violations(validator, &value, &location, out);
        }
    }
}
