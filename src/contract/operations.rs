//! The document's operations, compiled once: method, path template, parameters, request body
//! and responses; and matching a request's method and path against them.

use super::document::{ContractError, Document, push_token, resolve};
use super::params::{Param, compile_params};
use super::schema::{Direction, compile};
use super::shape::{ShapeId, Shapes};
use super::tape::TapeJson;
use jsonschema::Validator;
use serde_json::Value;
use std::cell::RefCell;

/// The HTTP methods an OpenAPI path item may declare.
const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// One segment of a path template: `users`, `{id}`, or `{id}.json`.
#[derive(Debug)]
enum Segment {
    Literal(String),
    Param {
        prefix: String,
        name: String,
        suffix: String,
    },
}

/// A media type of a request body or response, with its schema.
#[derive(Debug)]
pub(crate) struct Media {
    /// `application/json`, `application/*`, `*/*` (lower case, no parameters).
    pub(crate) range: String,
    /// The compiled shape (for [`super::shape`]); `None` when there is no schema.
    pub(crate) shape: Option<ShapeId>,
    /// The compiled validator, for JSON media types with a schema.
    pub(crate) validator: Option<Validator>,
    /// The same validator over a borrowed [`super::tape::Tape`], for the fast path.
    pub(crate) fast: Option<Validator<TapeJson>>,
}

/// A request body.
#[derive(Debug)]
pub(crate) struct Body {
    pub(crate) required: bool,
    pub(crate) media: Vec<Media>,
}

/// Which statuses a response covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StatusKey {
    Exact(u16),
    /// `2XX`: the hundreds digit.
    Range(u16),
    Default,
}

#[derive(Debug)]
pub(crate) struct ResponseSpec {
    pub(crate) status: StatusKey,
    pub(crate) media: Vec<Media>,
}

/// One compiled operation.
#[derive(Debug)]
pub(crate) struct Operation {
    pub(crate) name: String,
    method: String,
    segments: Vec<Segment>,
    pub(crate) params: Vec<Param>,
    pub(crate) body: Option<Body>,
    pub(crate) responses: Vec<ResponseSpec>,
}

/// The rewritten components, per direction, that every validator embeds.
pub(crate) struct Components {
    pub(crate) request: Value,
    pub(crate) response: Value,
    /// The shapes of every body and response schema.
    pub(crate) shapes: RefCell<Shapes>,
}

/// Every operation of the document, in document order.
pub(crate) fn compile_operations(
    doc: &Document,
    components: &Components,
) -> Result<Vec<Operation>, ContractError> {
    let mut out = Vec::new();
    let Some(paths) = doc.root.get("paths").and_then(Value::as_object) else {
        return Ok(out);
    };
    for (template, item) in paths {
        let mut pointer = "/paths".to_string();
        push_token(&mut pointer, template);
        if !template.starts_with('/') {
            return Err(ContractError::at(&pointer, "a path template starts with /"));
        }
        let item = resolve(&doc.root, item);
        let Some(item_map) = item.as_object() else {
            return Err(ContractError::at(&pointer, "a path item is an object"));
        };
        for method in METHODS {
            let Some(op) = item_map.get(method) else {
                continue;
            };
            let at = format!("{pointer}/{method}");
            out.push(compile_operation(
                doc, components, template, item, method, op, &at,
            )?);
        }
    }
    Ok(out)
}

fn compile_operation(
    doc: &Document,
    components: &Components,
    template: &str,
    item: &Value,
    method: &str,
    op: &Value,
    pointer: &str,
) -> Result<Operation, ContractError> {
    if !op.is_object() {
        return Err(ContractError::at(pointer, "an operation is an object"));
    }
    let segments = parse_template(template).map_err(|m| {
        let mut at = "/paths".to_string();
        push_token(&mut at, template);
        ContractError::at(&at, m)
    })?;
    let params = compile_params(doc, &components.request, item, op, pointer)?;
    let body = match op.get("requestBody") {
        Some(body) => Some(compile_body(doc, components, body, pointer)?),
        None => None,
    };
    let responses = compile_responses(doc, components, op, pointer)?;
    Ok(Operation {
        name: format!("{} {template}", method.to_ascii_uppercase()),
        method: method.to_ascii_uppercase(),
        segments,
        params,
        body,
        responses,
    })
}

fn compile_body(
    doc: &Document,
    components: &Components,
    body: &Value,
    pointer: &str,
) -> Result<Body, ContractError> {
    let body = resolve(&doc.root, body);
    let at = format!("{pointer}/requestBody");
    let media = compile_content(doc, components, body, Direction::Request, &at)?;
    let required = body.get("required") == Some(&Value::Bool(true));
    Ok(Body { required, media })
}

fn compile_responses(
    doc: &Document,
    components: &Components,
    op: &Value,
    pointer: &str,
) -> Result<Vec<ResponseSpec>, ContractError> {
    let mut out = Vec::new();
    let Some(responses) = op.get("responses").and_then(Value::as_object) else {
        return Ok(out);
    };
    for (code, response) in responses {
        let mut at = format!("{pointer}/responses");
        push_token(&mut at, code);
        let status = status_key(code).ok_or_else(|| {
            ContractError::at(&at, "not a status code, a range like 2XX, or default")
        })?;
        let response = resolve(&doc.root, response);
        let media = compile_content(doc, components, response, Direction::Response, &at)?;
        out.push(ResponseSpec { status, media });
    }
    Ok(out)
}

fn status_key(code: &str) -> Option<StatusKey> {
    if code == "default" {
        return Some(StatusKey::Default);
    }
    let upper = code.to_ascii_uppercase();
    if let Some(digit) = upper.strip_suffix("XX")
        && let Ok(d @ 1..=5) = digit.parse::<u16>()
    {
        return Some(StatusKey::Range(d));
    }
    match code.parse::<u16>() {
        Ok(n @ 100..=599) => Some(StatusKey::Exact(n)),
        _ => None,
    }
}

/// The `content` map of a request body or response.
fn compile_content(
    doc: &Document,
    all: &Components,
    holder: &Value,
    direction: Direction,
    pointer: &str,
) -> Result<Vec<Media>, ContractError> {
    let (components, shapes) = match direction {
        Direction::Request => (&all.request, &all.shapes),
        Direction::Response => (&all.response, &all.shapes),
    };
    let mut out = Vec::new();
    let Some(content) = holder.get("content").and_then(Value::as_object) else {
        return Ok(out);
    };
    for (range, media) in content {
        let mut at = format!("{pointer}/content");
        push_token(&mut at, range);
        let range = essence(range);
        let schema = media.get("schema");
        let shape = schema.map(|s| shapes.borrow_mut().build(doc, &[s]));
        let (validator, fast) = match schema {
            Some(schema) if is_json(&range) || range.ends_with("/*") => {
                let at = format!("{at}/schema");
                (
                    Some(compile(doc, schema, components, direction, &at)?),
                    Some(compile(doc, schema, components, direction, &at)?),
                )
            }
            _ => (None, None),
        };
        out.push(Media {
            range,
            shape,
            validator,
            fast,
        });
    }
    Ok(out)
}

/// A media type without parameters, lower case: `application/json`.
pub(crate) fn essence(media: &str) -> String {
    media
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// `application/json` or `application/*+json`.
pub(crate) fn is_json(essence: &str) -> bool {
    essence == "application/json" || essence.ends_with("+json")
}

/// The media entry a content type selects: exact, then `type/*`, then `*/*`.
pub(crate) fn select_media<'a>(media: &'a [Media], content_type: &str) -> Option<&'a Media> {
    let essence = essence(content_type);
    let major = essence.split('/').next().unwrap_or("");
    let wildcard = format!("{major}/*");
    media
        .iter()
        .find(|m| m.range == essence)
        .or_else(|| media.iter().find(|m| m.range == wildcard))
        .or_else(|| media.iter().find(|m| m.range == "*/*"))
}

fn parse_template(template: &str) -> Result<Vec<Segment>, String> {
    template
        .split('/')
        .skip(1)
        .map(|segment| match segment.find('{') {
            None => Ok(Segment::Literal(segment.to_string())),
            Some(open) => {
                let close = segment[open..]
                    .find('}')
                    .map(|c| c + open)
                    .ok_or_else(|| format!("unclosed {{ in segment {segment:?}"))?;
                Ok(Segment::Param {
                    prefix: segment[..open].to_string(),
                    name: segment[open + 1..close].to_string(),
                    suffix: segment[close + 1..].to_string(),
                })
            }
        })
        .collect()
}

impl Operation {
    /// The path parameters (raw, percent-decoded later) when `method` and `segments` match;
    /// and how many literal segments matched (more is a better match).
    pub(crate) fn matches<'p>(
        &self,
        method: &str,
        segments: &[&'p str],
    ) -> Option<(usize, Vec<(&str, &'p str)>)> {
        if !self.method.eq_ignore_ascii_case(method) || segments.len() != self.segments.len() {
            return None;
        }
        let mut literal = 0;
        let mut params = Vec::new();
        for (segment, actual) in self.segments.iter().zip(segments) {
            match segment {
                Segment::Literal(l) if l == actual => literal += 1,
                Segment::Literal(_) => return None,
                Segment::Param {
                    prefix,
                    name,
                    suffix,
                } => {
                    let value = actual
                        .strip_prefix(prefix.as_str())?
                        .strip_suffix(suffix.as_str())?;
                    if value.is_empty() {
                        return None;
                    }
                    params.push((name.as_str(), value));
                }
            }
        }
        Some((literal, params))
    }
}
