//! The problem+json body (RFC 9457) of a refused request. It names where and why, never a value
//! from the request.

use serde_json::{Value, json};

/// Where a request or response breaks its contract and why: `body/role` + `readOnly`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FieldError {
    /// `body/items/0/price`, `path/id`, `query/limit`, `header/x-request-id`, `body`.
    pub location: String,
    /// A short, stable reason: `readOnly`, `unknownProperty`, `type`, `required`, `format`, ...
    pub reason: &'static str,
}

impl FieldError {
    pub(crate) fn new(location: impl Into<String>, reason: &'static str) -> Self {
        FieldError {
            location: location.into(),
            reason,
        }
    }
}

/// A refused request's problem details.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 400 or 415.
    pub status: u16,
    /// What was wrong, one entry per violation.
    pub errors: Vec<FieldError>,
}

/// The problem type of every refusal.
const PROBLEM_TYPE: &str = "https://apiguard.dev/problems/contract-violation";

impl Problem {
    /// The `title` of the problem: fixed per status.
    pub fn title(&self) -> &'static str {
        if self.status == 415 {
            "Unsupported content type"
        } else {
            "Request does not match the API contract"
        }
    }

    /// The `application/problem+json` body.
    pub fn to_json(&self) -> Value {
        let errors: Vec<Value> = self
            .errors
            .iter()
            .map(|e| json!({"location": e.location, "reason": e.reason}))
            .collect();
        let detail = match self.errors.len() {
            1 => "1 violation of the API contract".to_string(),
            n => format!("{n} violations of the API contract"),
        };
        json!({
            "type": PROBLEM_TYPE,
            "title": self.title(),
            "status": self.status,
            "detail": detail,
            "errors": errors,
        })
    }
}
