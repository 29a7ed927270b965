//! The per-exchange pipeline: an ordered list of [`Stage`]s, each seeing the request headers,
//! the request body, the response headers and the response body, and returning an [`Action`].
//! The first stage that answers the client stops the exchange; a stage that replaces a body
//! hands the new body to the stages after it.
//!
//! Pure: no I/O, no clock. What happened is returned as [`Event`]s, which the edge turns into
//! metrics and log lines. The stages: the contract ([`super::contract_stage`]), then the
//! sensitive-data scan ([`super::scan_stage`], which sees the body as the contract left it). A
//! later feature (block enforcement, a global rate limit) is one more `Stage` in
//! [`Pipeline::stages`], not a change to the gRPC layer.

use super::context::{RequestContext, ResponseHead};
use crate::contract::{FieldError, OperationRef};
use crate::discovery::Sensitive;

/// The state of one HTTP exchange, shared by the stages.
#[derive(Debug, Default)]
pub(crate) struct Exchange {
    pub(crate) request: RequestContext,
    /// The headers were the whole request: no body message will follow.
    pub(crate) request_ends_at_headers: bool,
    /// The contract's operation, once a stage resolved it (`PATCH /users/{id}`).
    pub(crate) operation: Option<Operation>,
    /// Set once the response headers arrived.
    pub(crate) response: Option<ResponseHead>,
    /// The sensitive-data stage picked this response (JSON, in the sample) at its headers.
    pub(crate) scan_response: bool,
}

/// An operation of the contract the exchange's snapshot of the config compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Operation {
    pub(crate) id: OperationRef,
    pub(crate) name: String,
}

/// What a stage asks Envoy to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Go on unchanged.
    Continue,
    /// Answer the client now; the request goes no further.
    Respond(Reply),
    /// Replace the body of the message being processed.
    ReplaceBody(Vec<u8>),
}

/// A response the sensor sends instead of the upstream's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) content_type: &'static str,
    pub(crate) body: Vec<u8>,
    /// Envoy's response code details (`%RESPONSE_CODE_DETAILS%` in the access log).
    pub(crate) details: &'static str,
    /// More response headers (`retry-after`), beside the content type.
    pub(crate) headers: Vec<(&'static str, String)>,
}

/// What a request check decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestVerdict {
    Allowed,
    Refused,
    /// Would have been refused; let through (Audit).
    Audited,
    /// No operation of the contract matches; let through (`rejectUndeclared: false`, or
    /// `requests: Off`).
    Undeclared,
    /// No operation of the contract matches; refused (404).
    UndeclaredRefused,
    /// No operation of the contract matches; would have been refused, let through (Audit).
    UndeclaredAudited,
    /// Not checked (`requests: Off`).
    Unchecked,
}

impl RequestVerdict {
    /// The `decision` label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            RequestVerdict::Allowed => "allowed",
            RequestVerdict::Refused => "refused",
            RequestVerdict::Audited => "audited",
            RequestVerdict::Undeclared => "undeclared",
            RequestVerdict::UndeclaredRefused => "undeclared_refused",
            RequestVerdict::UndeclaredAudited => "undeclared_audited",
            RequestVerdict::Unchecked => "unchecked",
        }
    }
}

/// What a response check did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResponseVerdict {
    /// Nothing to remove.
    Clean,
    /// Properties were removed.
    Redacted,
    /// Properties would have been removed (`responses: Audit`).
    WouldRedact,
    /// Larger than `maxResponseBytes`: passed unchecked.
    TooLarge,
    /// Not JSON, or no schema for the status: passed unchecked.
    Unchecked,
}

impl ResponseVerdict {
    /// The `action` label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            ResponseVerdict::Clean => "clean",
            ResponseVerdict::Redacted => "redacted",
            ResponseVerdict::WouldRedact => "would_redact",
            ResponseVerdict::TooLarge => "too_large",
            ResponseVerdict::Unchecked => "unchecked",
        }
    }
}

/// What a stage did, for metrics and logs. Locations and reasons only, never values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    Request {
        operation: Option<String>,
        verdict: RequestVerdict,
        errors: Vec<FieldError>,
    },
    Response {
        operation: String,
        status: u16,
        verdict: ResponseVerdict,
        removed: Vec<FieldError>,
        violations: Vec<FieldError>,
    },
    /// A JSON response body scanned for sensitive data (`spec.discovery.sensitiveData`):
    /// the classes and counts found (possibly none), never the values. The method and path
    /// are the request's, to count into the inventory's endpoint; they are never logged (a
    /// path holds ids).
    Sensitive {
        method: String,
        path: String,
        found: Sensitive,
    },
    /// A request from a key a detector blocks: refused (or let through, audited, in Audit).
    Blocked { detector: String, audited: bool },
}

impl Event {
    /// The method, path and classes of an [`Event::Sensitive`] that found something.
    pub(crate) fn sensitive(&self) -> Option<(&str, &str, &Sensitive)> {
        match self {
            Event::Sensitive {
                method,
                path,
                found,
            } if !found.is_empty() => Some((method, path, found)),
            _ => None,
        }
    }
}

/// One step of the pipeline. Every method defaults to [`Action::Continue`]; a stage overrides
/// the ones it needs. `events` collects what it did.
pub(crate) trait Stage: Send + Sync {
    /// The request headers ([`Exchange::request_ends_at_headers`] says whether a body follows).
    fn request_headers(&self, _exchange: &mut Exchange, _events: &mut Vec<Event>) -> Action {
        Action::Continue
    }
    /// The whole request body (`None` when it was larger than the sensor buffers).
    fn request_body(
        &self,
        _exchange: &mut Exchange,
        _body: Option<&[u8]>,
        _events: &mut Vec<Event>,
    ) -> Action {
        Action::Continue
    }
    /// The response headers ([`Exchange::response`] is set).
    fn response_headers(&self, _exchange: &mut Exchange, _events: &mut Vec<Event>) -> Action {
        Action::Continue
    }
    /// Whether the stage needs this exchange's response body; asked after the response
    /// headers ran. When no stage does, Envoy is asked not to send it (a `mode_override`,
    /// honoured when the filter allows it). Defaults to true.
    fn wants_response_body(&self, _exchange: &Exchange) -> bool {
        true
    }
    /// The whole response body (`None` when it was larger than the sensor buffers).
    fn response_body(
        &self,
        _exchange: &mut Exchange,
        _body: Option<&[u8]>,
        _events: &mut Vec<Event>,
    ) -> Action {
        Action::Continue
    }
}

/// The compiled `sensor.yaml`: the policy it serves and its stages, in order. Swapped whole on
/// reload; an exchange keeps the snapshot it started with.
pub(crate) struct Pipeline {
    /// `namespace/name`.
    pub(crate) policy: String,
    /// The declared endpoints discovery templates against; None: discovery is off.
    pub(crate) discovery: Option<super::learn::DiscoveryConfig>,
    /// The runtime detectors and baseline; None: no detection.
    pub(crate) runtime: Option<super::runtime_settings::RuntimeSettings>,
    pub(crate) stages: Vec<Box<dyn Stage>>,
    /// The most body bytes buffered per message (responses: `maxResponseBytes`, so a larger
    /// body is known to be too large without holding all of it).
    pub(crate) max_request_bytes: usize,
    pub(crate) max_response_bytes: usize,
    /// The `scope: Global` rate limits the rate limit service decides.
    pub(crate) global_rate_limits: super::rate_limit::GlobalLimits,
}

/// Which of the four points of an exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Point {
    RequestHeaders,
    RequestBody,
    ResponseHeaders,
    ResponseBody,
}

impl Point {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Point::RequestHeaders => "request_headers",
            Point::RequestBody => "request_body",
            Point::ResponseHeaders => "response_headers",
            Point::ResponseBody => "response_body",
        }
    }
}

impl Pipeline {
    /// Whether any stage needs the response body of `exchange` ([`Stage::wants_response_body`]).
    pub(crate) fn wants_response_body(&self, exchange: &Exchange) -> bool {
        self.stages.iter().any(|s| s.wants_response_body(exchange))
    }

    /// Runs every stage at `point` (bodies: with `body`). A `Respond` stops at once; a
    /// `ReplaceBody` is what the later stages see and what is returned (unless a later stage
    /// answers the client).
    pub(crate) fn run(
        &self,
        point: Point,
        exchange: &mut Exchange,
        body: Option<&[u8]>,
        events: &mut Vec<Event>,
    ) -> Action {
        let mut replaced: Option<Vec<u8>> = None;
        for stage in &self.stages {
            let current = replaced.as_deref().or(body);
            let action = match point {
                Point::RequestHeaders => stage.request_headers(exchange, events),
                Point::RequestBody => stage.request_body(exchange, current, events),
                Point::ResponseHeaders => stage.response_headers(exchange, events),
                Point::ResponseBody => stage.response_body(exchange, current, events),
            };
            match action {
                Action::Continue => {}
                Action::Respond(reply) => return Action::Respond(reply),
                Action::ReplaceBody(new) => replaced = Some(new),
            }
        }
        replaced.map_or(Action::Continue, Action::ReplaceBody)
    }
}
