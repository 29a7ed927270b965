//! The contract stage: requests checked against the OpenAPI contract (refused with a
//! problem+json body, or logged in Audit), responses redacted (or the would-be redaction
//! logged in Audit).
//!
//! An undeclared operation (a method and path that match no operation of the document) is an
//! undeclared route, as with `rejectUndeclaredRoutes`: refused with 404 problem+json
//! (`decision="undeclared_refused"`), logged and let through in Audit
//! (`decision="undeclared_audited"`), and let through when `rejectUndeclared` is false
//! (`decision="undeclared"`). Nothing from the request is echoed or logged: the path holds
//! values.

use super::pipeline::{
    Action, Event, Exchange, Operation, Reply, RequestVerdict, ResponseVerdict, Stage,
};
use crate::api::{RequestContractMode, ResponseContractMode};
use crate::contract::{Contract, FieldError, Request, RequestCheck, Unchecked};
use serde_json::json;

/// The media type of a refusal.
pub(crate) const PROBLEM_JSON: &str = "application/problem+json";
/// The problem `type` of an undeclared operation.
pub(crate) const UNDECLARED_PROBLEM_TYPE: &str =
    "https://apiguard.dev/problems/undeclared-operation";
/// Its `title`.
pub(crate) const UNDECLARED_TITLE: &str = "Operation not declared by the API contract";

/// The one error of an undeclared operation, in the problem body and the log line.
fn undeclared_error() -> FieldError {
    FieldError {
        location: "operation".into(),
        reason: "undeclared",
    }
}

/// The 404 problem+json of an undeclared operation: fixed text, nothing from the request.
fn undeclared_reply() -> Reply {
    let error = undeclared_error();
    let body = json!({
        "type": UNDECLARED_PROBLEM_TYPE,
        "title": UNDECLARED_TITLE,
        "status": 404,
        "detail": "the API contract declares no operation for this method and path",
        "errors": [{"location": error.location, "reason": error.reason}],
    });
    Reply {
        status: 404,
        content_type: PROBLEM_JSON,
        body: body.to_string().into_bytes(),
        details: "apiguard_contract_undeclared",
        headers: Vec::new(),
    }
}

/// How requests are treated, once the policy's mode is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestMode {
    Enforce,
    Audit,
    Off,
}

pub(crate) struct ContractStage {
    pub(crate) contract: Contract,
    pub(crate) requests: RequestMode,
    pub(crate) responses: ResponseContractMode,
    pub(crate) max_response_bytes: usize,
    /// Refuse operations the document does not declare (`rejectUndeclared`).
    pub(crate) reject_undeclared: bool,
}

impl RequestMode {
    /// `requests` under the policy's mode: a policy in Audit refuses nothing.
    pub(crate) fn new(requests: RequestContractMode, policy_audit: bool) -> Self {
        match requests {
            RequestContractMode::Off => RequestMode::Off,
            RequestContractMode::Audit => RequestMode::Audit,
            RequestContractMode::Enforce if policy_audit => RequestMode::Audit,
            RequestContractMode::Enforce => RequestMode::Enforce,
        }
    }
}

impl ContractStage {
    fn check(
        &self,
        exchange: &mut Exchange,
        body: Option<&[u8]>,
        events: &mut Vec<Event>,
    ) -> Action {
        let context = &exchange.request;
        let headers: Vec<(&str, &str)> = context
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let off = self.requests == RequestMode::Off;
        let request = Request {
            method: &context.method,
            path: &context.path,
            query: &context.query,
            headers: &headers,
            content_type: context.content_type(),
            // Off: only the operation is wanted (for the response); skip parsing the body.
            body: if off { None } else { body },
        };
        let (operation, problem) = match self.contract.check_request(&request) {
            RequestCheck::Undeclared => {
                let (verdict, errors, action) = match (self.reject_undeclared, self.requests) {
                    (false, _) | (_, RequestMode::Off) => {
                        (RequestVerdict::Undeclared, Vec::new(), Action::Continue)
                    }
                    (true, RequestMode::Audit) => (
                        RequestVerdict::UndeclaredAudited,
                        vec![undeclared_error()],
                        Action::Continue,
                    ),
                    (true, RequestMode::Enforce) => (
                        RequestVerdict::UndeclaredRefused,
                        vec![undeclared_error()],
                        Action::Respond(undeclared_reply()),
                    ),
                };
                events.push(Event::Request {
                    operation: None,
                    verdict,
                    errors,
                });
                return action;
            }
            RequestCheck::Allowed { operation } => (operation, None),
            RequestCheck::Refused { operation, problem } => (operation, Some(problem)),
        };
        let name = self.contract.operation_name(operation).to_string();
        exchange.operation = Some(Operation {
            id: operation,
            name: name.clone(),
        });
        let (verdict, errors, action) = match (problem, self.requests) {
            (_, RequestMode::Off) => (RequestVerdict::Unchecked, Vec::new(), Action::Continue),
            (None, _) => (RequestVerdict::Allowed, Vec::new(), Action::Continue),
            (Some(problem), RequestMode::Audit) => {
                (RequestVerdict::Audited, problem.errors, Action::Continue)
            }
            (Some(problem), RequestMode::Enforce) => {
                let reply = Reply {
                    status: problem.status,
                    content_type: PROBLEM_JSON,
                    body: problem.to_json().to_string().into_bytes(),
                    details: "apiguard_contract_refused",
                    headers: Vec::new(),
                };
                (
                    RequestVerdict::Refused,
                    problem.errors,
                    Action::Respond(reply),
                )
            }
        };
        events.push(Event::Request {
            operation: Some(name),
            verdict,
            errors,
        });
        action
    }
}

impl Stage for ContractStage {
    fn request_headers(&self, exchange: &mut Exchange, events: &mut Vec<Event>) -> Action {
        if exchange.request_ends_at_headers {
            self.check(exchange, None, events)
        } else {
            Action::Continue
        }
    }

    fn request_body(
        &self,
        exchange: &mut Exchange,
        body: Option<&[u8]>,
        events: &mut Vec<Event>,
    ) -> Action {
        self.check(exchange, body, events)
    }

    /// Only the responses of declared operations are checked.
    fn wants_response_body(&self, exchange: &Exchange) -> bool {
        self.responses != ResponseContractMode::Off && exchange.operation.is_some()
    }

    fn response_body(
        &self,
        exchange: &mut Exchange,
        body: Option<&[u8]>,
        events: &mut Vec<Event>,
    ) -> Action {
        if self.responses == ResponseContractMode::Off {
            return Action::Continue;
        }
        let (Some(operation), Some(head)) = (&exchange.operation, &exchange.response) else {
            return Action::Continue;
        };
        let event = |verdict, removed, violations| Event::Response {
            operation: operation.name.clone(),
            status: head.status,
            verdict,
            removed,
            violations,
        };
        // A body the edge did not buffer is larger than maxResponseBytes.
        let Some(body) = body else {
            events.push(event(ResponseVerdict::TooLarge, vec![], vec![]));
            return Action::Continue;
        };
        let check = self.contract.redact_response(
            operation.id,
            head.status,
            head.content_type.as_deref(),
            body,
            self.max_response_bytes,
        );
        let (verdict, action) = match (check.unchecked, check.body) {
            (Some(Unchecked::TooLarge), _) => (ResponseVerdict::TooLarge, Action::Continue),
            (Some(_), _) => (ResponseVerdict::Unchecked, Action::Continue),
            (None, Some(new)) if self.responses == ResponseContractMode::Redact => {
                (ResponseVerdict::Redacted, Action::ReplaceBody(new))
            }
            (None, Some(_)) => (ResponseVerdict::WouldRedact, Action::Continue),
            (None, None) => (ResponseVerdict::Clean, Action::Continue),
        };
        events.push(event(verdict, check.removed, check.violations));
        action
    }
}
