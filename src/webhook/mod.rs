//! The validating admission webhook: `POST /validate` over HTTPS (rustls), answering
//! `admission.k8s.io/v1` AdmissionReviews with the rule engine (`crate::rules`) over a cluster
//! view kept by kube-runtime reflectors.
//!
//! - [`admission`]: one review in, one AdmissionReview out (+ metrics and decision logs).
//! - [`router`]: the axum routes with the body limit and the per-request deadline.
//! - [`server`]: the TLS configuration and the accept loop with graceful shutdown.
//! - [`cluster`]: the reflector-backed `ClusterView`.
//!
//! The serving certificate (from files or operator-managed) is `crate::certs`.

pub mod admission;
pub mod cluster;
pub mod server;

pub use admission::{Admission, ReviewError};

use axum::Router;
use axum::body::Bytes;
use axum::error_handling::HandleErrorLayer;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceBuilder;

/// Default largest request body: the apiserver's own limit for an object is 3 MiB.
pub(crate) const DEFAULT_MAX_BODY_BYTES: usize = 3 * 1024 * 1024;
/// Default deadline of one request (the apiserver's webhook timeout defaults to 10 s; answer
/// well before it).
pub(crate) const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Limits applied to every webhook request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Larger bodies get 413.
    pub max_body_bytes: usize,
    /// Requests not answered in time (slow body upload included) get 503.
    pub request_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

/// The webhook routes: `POST /validate`.
pub fn router(admission: Arc<Admission>, limits: Limits) -> Router {
    Router::new()
        .route("/validate", post(validate))
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(|_: tower::BoxError| async {
                    error_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "admission review not answered before the request deadline".to_owned(),
                    )
                }))
                .timeout(limits.request_timeout),
        )
        .with_state(admission)
}

fn error_response(status: StatusCode, message: String) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
}

async fn validate(
    State(admission): State<Arc<Admission>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            let status = rejection.status();
            let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
                "request body exceeds the webhook's body limit".to_owned()
            } else {
                format!("cannot read request body: {}", rejection.body_text())
            };
            return error_response(status, message);
        }
    };
    match admission.handle(&body) {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(e) if e.is_bad_request() => error_response(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e) => error_response(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
