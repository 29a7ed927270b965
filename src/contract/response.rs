//! Redacting one response: properties that are `writeOnly` or undeclared are removed
//! (excessive data exposure); other violations are reported, never blocking.

use super::operations::{Operation, ResponseSpec, StatusKey, is_json, select_media};
use super::problem::FieldError;
use super::schema::{Direction, violations};
use super::shape::Policy;
use super::{Body, Contract, OperationRef, ResponseCheck, Unchecked};

impl Contract {
    /// Redacts a response of `operation` (from [`super::RequestCheck`]): the new body when
    /// something was removed, the removed locations, and the other violations. A body larger
    /// than `max_bytes` passes unchecked.
    pub fn redact_response(
        &self,
        operation: OperationRef,
        status: u16,
        content_type: Option<&str>,
        body: &[u8],
        max_bytes: usize,
    ) -> ResponseCheck {
        let Some(op) = self.operations.get(operation.0) else {
            return ResponseCheck::unchecked(Unchecked::NoSchema);
        };
        if body.len() > max_bytes {
            return ResponseCheck::unchecked(Unchecked::TooLarge);
        }
        let Some(content_type) = content_type.filter(|ct| is_json(&super::operations::essence(ct)))
        else {
            return ResponseCheck::unchecked(Unchecked::NotJson);
        };
        let media = response_for(op, status).and_then(|r| select_media(&r.media, content_type));
        let Some((media, shape)) = media.and_then(|m| m.shape.map(|s| (m, s))) else {
            return ResponseCheck::unchecked(Unchecked::NoSchema);
        };
        let policy = Policy {
            direction: Direction::Response,
            undeclared: true,
        };
        let mut value = match self.parse_body(media, body, policy) {
            Body::Clean => return ResponseCheck::default(),
            Body::Value(value) => value,
            Body::Invalid => {
                let mut check = ResponseCheck::default();
                check.violations.push(FieldError::new("body", "json"));
                return check;
            }
        };
        let mut check = ResponseCheck::default();
        self.shapes.strip(
            shape,
            &mut value,
            &mut "body".to_string(),
            policy,
            &mut check.removed,
        );
        if let Some(validator) = &media.validator {
            violations(validator, &value, "body", &mut check.violations);
        }
        if !check.removed.is_empty() {
            check.body = serde_json::to_vec(&value).ok();
        }
        check
    }
}

/// The response a status selects: exact, then its range (`2XX`), then `default`.
fn response_for(op: &Operation, status: u16) -> Option<&ResponseSpec> {
    let find = |key: StatusKey| op.responses.iter().find(|r| r.status == key);
    find(StatusKey::Exact(status))
        .or_else(|| find(StatusKey::Range(status / 100)))
        .or_else(|| find(StatusKey::Default))
}
