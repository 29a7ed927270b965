//! The API contract: an OpenAPI 3.0.x or 3.1.x document compiled once, against which the
//! runtime sensor checks requests (refusing what the contract does not allow, with a
//! problem+json body) and redacts responses (removing what the contract does not declare).
//!
//! Pure: no I/O. `document` parses and resolves `$ref`s (errors name the JSON pointer),
//! `schema` rewrites schemas per direction and compiles one validator per operation and media
//! type, `shape` removes undeclared and `readOnly`/`writeOnly` properties, `operations` and
//! `params` hold the compiled operations and match paths, `request` and `response` check
//! messages, `problem` is the problem+json body. See `docs/contract.md`.
//!
//! `starter` reads a document the other way: into a starter `ApiSecurityPolicy`
//! (`apiguard policy from-openapi`, `docs/openapi.md`).

mod document;
mod operations;
mod params;
mod problem;
mod request;
mod response;
pub(crate) mod schema;
mod shape;
pub mod starter;
mod tape;
#[cfg(test)]
mod tests;

pub use document::ContractError;
pub use problem::{FieldError, Problem};

use operations::{Components, Operation, compile_operations};
use schema::{Direction, components};

/// What the contract does with a request property its schema does not declare.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum UnknownProperties {
    /// Refuse it (`unknownProperty`): an object schema without `additionalProperties` is
    /// closed for requests (mass assignment).
    #[default]
    Reject,
    /// Let it through.
    Allow,
}

impl From<crate::api::UnknownPropertiesMode> for UnknownProperties {
    /// `spec.openapi.unknownProperties` of a policy.
    fn from(mode: crate::api::UnknownPropertiesMode) -> Self {
        match mode {
            crate::api::UnknownPropertiesMode::Reject => UnknownProperties::Reject,
            crate::api::UnknownPropertiesMode::Allow => UnknownProperties::Allow,
        }
    }
}

/// How a document is enforced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContractOptions {
    /// Requests only; responses always lose undeclared properties.
    pub unknown_properties: UnknownProperties,
}

/// A JSON body, read by [`Contract::parse_body`].
enum Body {
    Clean,
    Value(serde_json::Value),
    Invalid,
}

/// A compiled contract: every operation with its validators, built once.
#[derive(Debug)]
pub struct Contract {
    shapes: shape::Shapes,
    options: ContractOptions,
    operations: Vec<Operation>,
}

/// One request, as the sensor sees it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Request<'a> {
    /// `GET`, `PATCH` (any case).
    pub method: &'a str,
    /// The path, percent-encoded as received (a `?query` part is ignored).
    pub path: &'a str,
    /// The raw query string, without `?` (`limit=10&x=y`), empty when none.
    pub query: &'a str,
    /// The request headers (names in any case).
    pub headers: &'a [(&'a str, &'a str)],
    /// The `content-type` header.
    pub content_type: Option<&'a str>,
    /// The body, when there is one.
    pub body: Option<&'a [u8]>,
}

/// One operation of a compiled contract, for [`Contract::redact_response`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OperationRef(usize);

/// The verdict on a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestCheck {
    /// No operation matches its method and path.
    Undeclared,
    /// It matches `operation` and keeps its contract.
    Allowed { operation: OperationRef },
    /// It matches `operation` and breaks its contract.
    Refused {
        operation: OperationRef,
        problem: Problem,
    },
}

/// Why a response was not checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unchecked {
    /// Larger than the limit.
    TooLarge,
    /// Not a JSON content type.
    NotJson,
    /// No schema for its operation, status and content type.
    NoSchema,
}

/// What redacting a response did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseCheck {
    /// The new body, when properties were removed.
    pub body: Option<Vec<u8>>,
    /// The removed properties (`writeOnly` or `undeclared`).
    pub removed: Vec<FieldError>,
    /// Other violations of the schema (reported, not enforced).
    pub violations: Vec<FieldError>,
    /// Set when the body was not checked, and why.
    pub unchecked: Option<Unchecked>,
}

impl ResponseCheck {
    fn unchecked(why: Unchecked) -> Self {
        ResponseCheck {
            unchecked: Some(why),
            ..Default::default()
        }
    }
}

impl Contract {
    /// Parses and compiles a document (YAML or JSON): every validator is built here, once.
    pub fn compile(text: &str, options: &ContractOptions) -> Result<Contract, ContractError> {
        let doc = document::parse(text)?;
        let components = Components {
            request: components(&doc, Direction::Request),
            response: components(&doc, Direction::Response),
            shapes: Default::default(),
        };
        let operations = compile_operations(&doc, &components)?;
        let mut shapes = components.shapes.into_inner();
        shapes.done();
        Ok(Contract {
            shapes,
            options: options.clone(),
            operations,
        })
    }

    /// A JSON body for checking under `policy`: [`Body::Clean`] when the fast path finds
    /// nothing to report (it parses without duplicate keys, the shape walk would remove nothing,
    /// and it is valid against `media`'s schema, all read from a borrowed [`tape::Tape`]);
    /// otherwise the `Value` the full check reports from, built from the tape when it parsed.
    fn parse_body(&self, media: &operations::Media, bytes: &[u8], policy: shape::Policy) -> Body {
        match tape::Tape::parse(bytes) {
            Some(tape) if self.tape_clean(media, &tape, policy) => Body::Clean,
            Some(tape) => Body::Value(tape.to_value()),
            None => serde_json::from_slice(bytes).map_or(Body::Invalid, Body::Value),
        }
    }

    fn tape_clean(
        &self,
        media: &operations::Media,
        tape: &tape::Tape<'_>,
        policy: shape::Policy,
    ) -> bool {
        let root = tape.root();
        media
            .shape
            .is_none_or(|shape| self.shapes.clean(shape, root, policy))
            && media.fast.as_ref().is_none_or(|v| v.is_valid(root))
    }

    /// Whether the fast path says `bytes` is clean.
    #[cfg(test)]
    fn quick_clean(&self, media: &operations::Media, bytes: &[u8], policy: shape::Policy) -> bool {
        tape::Tape::parse(bytes).is_some_and(|tape| self.tape_clean(media, &tape, policy))
    }

    /// The operation's method and path template: `PATCH /users/{id}`.
    pub fn operation_name(&self, operation: OperationRef) -> &str {
        self.operations
            .get(operation.0)
            .map_or("", |op| op.name.as_str())
    }
}
