//! What the unit tests of this module share: a scripted apiserver (tower-test) that answers
//! and checks the requests a function under test makes, in order, and the fixtures of the
//! serving certificate (the `ServingConfig` fixture is `serving_secret::tests::config`).

use std::net::{IpAddr, Ipv4Addr};

use axum::http::{Method, Request, Response, StatusCode};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::client::Body;
use time::OffsetDateTime;
use time::macros::datetime;
use tower_test::mock::{self, Handle};

use crate::identity::CertificateAuthority;
use crate::identity::serving::{IssuedServing, ServingNames, issue_serving};

pub(crate) type H = Handle<Request<Body>, Response<Body>>;

/// A `Status` failure answer.
pub(crate) fn status(code: u16, reason: &str) -> Response<Body> {
    Response::builder()
        .status(code)
        .body(Body::from(
            serde_json::to_vec(&serde_json::json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure", "message": reason, "reason": reason, "code": code
            }))
            .unwrap(),
        ))
        .unwrap()
}

/// `v` as the answer, with `code`.
pub(crate) fn json_with<T: serde::Serialize>(code: StatusCode, v: &T) -> Response<Body> {
    Response::builder()
        .status(code)
        .body(Body::from(serde_json::to_vec(v).unwrap()))
        .unwrap()
}

/// `v` as a 200 answer.
pub(crate) fn json<T: serde::Serialize>(v: &T) -> Response<Body> {
    json_with(StatusCode::OK, v)
}

/// The next request, which must be `method` on `path`: its body and the answer slot.
pub(crate) async fn expect(
    h: &mut H,
    method: Method,
    path: &str,
) -> (Vec<u8>, mock::SendResponse<Response<Body>>) {
    let (req, send) = tokio::time::timeout(std::time::Duration::from_secs(5), h.next_request())
        .await
        .expect("request in time")
        .expect("a request");
    assert_eq!(req.method(), method, "{}", req.uri());
    assert_eq!(req.uri().path(), path);
    let body = req.into_body().collect_bytes().await.unwrap().to_vec();
    (body, send)
}

pub(crate) const NOW: OffsetDateTime = datetime!(2026-03-01 12:00 UTC);
pub(crate) const NS: &str = "apiguard-system";

/// The names the serving certificate of the fixtures is for.
pub(crate) fn names() -> ServingNames {
    ServingNames {
        dns_names: vec!["apiguard.apiguard-system.svc".into()],
        ip_addresses: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
    }
}

pub(crate) fn ca() -> CertificateAuthority {
    CertificateAuthority::generate(NOW - time::Duration::days(1), time::Duration::days(3650))
        .unwrap()
}

pub(crate) fn issued(ca: &CertificateAuthority) -> IssuedServing {
    issue_serving(ca, &names(), time::Duration::days(90), NOW).unwrap()
}

pub(crate) fn vwc(bundles: &[Option<&str>]) -> ValidatingWebhookConfiguration {
    let webhooks: Vec<serde_json::Value> = bundles
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let mut client = serde_json::json!({"url": "https://127.0.0.1:8443/validate"});
            if let Some(b) = b {
                client["caBundle"] =
                    serde_json::to_value(ByteString(b.as_bytes().to_vec())).unwrap();
            }
            serde_json::json!({"name": format!("hook{i}.apiguard.dev"), "clientConfig": client,
                "sideEffects": "None", "admissionReviewVersions": ["v1"]})
        })
        .collect();
    serde_json::from_value(serde_json::json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": "apiguard"},
        "webhooks": webhooks,
    }))
    .unwrap()
}

pub(crate) const CA_GET: &str = "/api/v1/namespaces/apiguard-system/secrets/apiguard-ca";
pub(crate) const TLS_GET: &str = "/api/v1/namespaces/apiguard-system/secrets/apiguard-webhook-tls";
pub(crate) const POST: &str = "/api/v1/namespaces/apiguard-system/secrets";

pub(crate) fn with_version(mut secret: Secret, version: &str) -> Secret {
    secret.metadata.resource_version = Some(version.into());
    secret
}
