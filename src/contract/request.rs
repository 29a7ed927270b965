//! Checking one request against its operation: parameters, content type, body.

use super::document::percent_decode;
use super::operations::{Operation, is_json, select_media};
use super::params::In;
use super::problem::{FieldError, Problem};
use super::schema::{Direction, violations};
use super::shape::Policy;
use super::{Body, Contract, OperationRef, Request, RequestCheck, UnknownProperties};

impl Contract {
    /// Checks a request: [`RequestCheck::Undeclared`] when no operation matches its method and
    /// path, else allowed or refused (400, or 415 for the content type) with the reasons.
    pub fn check_request(&self, request: &Request<'_>) -> RequestCheck {
        let path = request.path.split('?').next().unwrap_or("");
        let segments: Vec<&str> = path.split('/').skip(1).collect();
        let best = self
            .operations
            .iter()
            .enumerate()
            .filter_map(|(i, op)| {
                op.matches(request.method, &segments)
                    .map(|(score, p)| (score, i, p))
            })
            .max_by_key(|(score, i, _)| (*score, std::cmp::Reverse(*i)));
        let Some((_, index, path_params)) = best else {
            return RequestCheck::Undeclared;
        };
        let op = &self.operations[index];
        let operation = OperationRef(index);
        if let Some(status_415) = content_type_error(op, request) {
            return RequestCheck::Refused {
                operation,
                problem: status_415,
            };
        }
        let mut errors = Vec::new();
        check_params(op, request, &path_params, &mut errors);
        self.check_body(op, request, &mut errors);
        if errors.is_empty() {
            RequestCheck::Allowed { operation }
        } else {
            RequestCheck::Refused {
                operation,
                problem: Problem {
                    status: 400,
                    errors,
                },
            }
        }
    }

    fn check_body(&self, op: &Operation, request: &Request<'_>, errors: &mut Vec<FieldError>) {
        let (Some(body), Some(bytes), Some(content_type)) =
            (&op.body, request.body, request.content_type)
        else {
            return;
        };
        let Some(media) = select_media(&body.media, content_type) else {
            return;
        };
        if !is_json(&super::operations::essence(content_type)) {
            return;
        }
        let policy = Policy {
            direction: Direction::Request,
            undeclared: self.options.unknown_properties == UnknownProperties::Reject,
        };
        let mut value = match self.parse_body(media, bytes, policy) {
            Body::Clean => return,
            Body::Value(value) => value,
            Body::Invalid => {
                errors.push(FieldError::new("body", "json"));
                return;
            }
        };
        if let Some(shape) = media.shape {
            self.shapes
                .strip(shape, &mut value, &mut "body".to_string(), policy, errors);
        }
        if let Some(validator) = &media.validator {
            violations(validator, &value, "body", errors);
        }
    }
}

/// 415 when the operation takes a body and the request's content type is missing (with a body
/// or a required one) or not one the operation declares.
fn content_type_error(op: &Operation, request: &Request<'_>) -> Option<Problem> {
    let body = op.body.as_ref()?;
    if body.media.is_empty() {
        return None;
    }
    let has_body = request.body.is_some_and(|b| !b.is_empty());
    let ok = match request.content_type {
        Some(ct) => !has_body && !body.required || select_media(&body.media, ct).is_some(),
        None => !has_body && !body.required,
    };
    (!ok).then(|| Problem {
        status: 415,
        errors: vec![FieldError::new("header/content-type", "contentType")],
    })
}

fn check_params(
    op: &Operation,
    request: &Request<'_>,
    path_params: &[(&str, &str)],
    errors: &mut Vec<FieldError>,
) {
    let query: Vec<(String, String)> = parse_query(request.query);
    for param in &op.params {
        let decoded: Vec<String> = match param.location {
            In::Path => path_params
                .iter()
                .filter(|(n, _)| *n == param.name)
                .map(|(_, v)| percent_decode(v))
                .collect(),
            In::Query => query
                .iter()
                .filter(|(n, _)| *n == param.name)
                .map(|(_, v)| v.clone())
                .collect(),
            In::Header => request
                .headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(&param.name))
                .map(|(_, v)| v.to_string())
                .collect(),
        };
        let values: Vec<&str> = decoded.iter().map(String::as_str).collect();
        param.check(&values, errors);
    }
}

/// `a=1&b=x%20y` → `[("a","1"), ("b","x y")]` (`+` is a space).
fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .trim_start_matches('?')
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |s: &str| percent_decode(&s.replace('+', " "));
            (decode(name), decode(value))
        })
        .collect()
}
