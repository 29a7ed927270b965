//! Router tests of `POST /validate` with `tower::ServiceExt::oneshot`: decisions, warnings,
//! modes, malformed and oversize bodies, DELETE, dry-run, deadline and metrics.

use crate::support::webhook::*;
use apiguard::admin::{AdmissionMetrics, Metrics};
use apiguard::rules::AdmissionMode;
use apiguard::webhook::{Limits, router};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use futures::StreamExt;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use std::time::Duration;
use tower::ServiceExt;

async fn post(app: axum::Router, body: impl Into<Body>) -> (StatusCode, Value) {
    let resp = app
        .oneshot(
            Request::post("/validate")
                .header("content-type", "application/json")
                .body(body.into())
                .unwrap(),
        )
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "answer is not JSON ({e}): {}",
            String::from_utf8_lossy(&bytes)
        )
    });
    (status, value)
}

async fn post_review(mode: AdmissionMode, review: &Value) -> Value {
    let (status, answer) = post(app(mode), review.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1", "{answer}");
    assert_eq!(answer["kind"], "AdmissionReview", "{answer}");
    assert_eq!(
        answer["response"]["uid"], review["request"]["uid"],
        "{answer}"
    );
    answer["response"].clone()
}

fn warnings(response: &Value) -> Vec<String> {
    response["warnings"]
        .as_array()
        .map(|w| w.iter().map(|s| s.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn clean_object_is_allowed() {
    let response = post_review(
        AdmissionMode::Enforce,
        &review("CREATE", &clean_service(), "uid-clean", false),
    )
    .await;
    assert_eq!(response["allowed"], true, "{response}");
    assert!(warnings(&response).is_empty(), "{response}");
}

#[tokio::test]
async fn cors_ingress_without_origin_is_denied_naming_apg001() {
    let response = post_review(
        AdmissionMode::Enforce,
        &review("CREATE", &cors_ingress(None), "uid-deny", false),
    )
    .await;
    assert_eq!(response["allowed"], false, "{response}");
    assert_eq!(response["status"]["code"], 403, "{response}");
    assert_eq!(response["status"]["status"], "Failure", "{response}");
    let message = response["status"]["message"].as_str().unwrap();
    assert!(message.contains("APG001"), "{message}");
    assert!(
        message.contains(CORS_ANNOTATION),
        "message names the field: {message}"
    );
    assert!(
        message.contains("Ingress shop/web"),
        "message names the object: {message}"
    );
    assert_eq!(
        response["auditAnnotations"]["findings"], "APG001",
        "{response}"
    );
    // Every blocking finding is listed with its field and its fix.
    let findings = apiguard::rules::review(
        &cors_ingress(None),
        &apiguard::rules::InMemoryView::new(),
        &apiguard::rules::EngineConfig::default(),
    );
    assert!(!findings.is_empty());
    for f in findings.iter().filter(|f| f.is_blocking()) {
        assert!(message.contains(f.rule.id()), "{message}");
        assert!(message.contains(&f.field), "{message}");
        assert!(message.contains(&f.remediation), "{message}");
    }
}

#[tokio::test]
async fn exempted_cors_ingress_is_allowed_with_a_warning() {
    let response = post_review(
        AdmissionMode::Enforce,
        &review(
            "CREATE",
            &cors_ingress(Some("public font CDN, no credentials")),
            "uid-exempt",
            false,
        ),
    )
    .await;
    assert_eq!(response["allowed"], true, "{response}");
    let warnings = warnings(&response);
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("APG001") && w.contains("public font CDN")),
        "{warnings:?}"
    );
}

#[tokio::test]
async fn warn_mode_admits_with_the_finding_as_warning_and_audit_mode_admits_silently() {
    let body = review("CREATE", &cors_ingress(None), "uid-modes", false);
    let warned = post_review(AdmissionMode::Warn, &body).await;
    assert_eq!(warned["allowed"], true, "{warned}");
    assert!(
        warnings(&warned).iter().any(|w| w.contains("APG001")),
        "{warned}"
    );
    let audited = post_review(AdmissionMode::Audit, &body).await;
    assert_eq!(audited["allowed"], true, "{audited}");
    assert!(warnings(&audited).is_empty(), "{audited}");
    // The finding is still recorded in the apiserver's audit log.
    assert_eq!(
        audited["auditAnnotations"]["findings"], "APG001",
        "{audited}"
    );
}

#[tokio::test]
async fn update_is_reviewed_like_create() {
    let response = post_review(
        AdmissionMode::Enforce,
        &review("UPDATE", &cors_ingress(None), "uid-update", false),
    )
    .await;
    assert_eq!(response["allowed"], false, "{response}");
}

#[tokio::test]
async fn delete_is_allowed() {
    let response = post_review(
        AdmissionMode::Enforce,
        &review("DELETE", &cors_ingress(None), "uid-delete", false),
    )
    .await;
    assert_eq!(response["allowed"], true, "{response}");
    assert!(response.get("auditAnnotations").is_none(), "{response}");
}

#[tokio::test]
async fn dry_run_gets_the_same_answer() {
    let wet = post_review(
        AdmissionMode::Enforce,
        &review("CREATE", &cors_ingress(None), "uid-same", false),
    )
    .await;
    let dry = post_review(
        AdmissionMode::Enforce,
        &review("CREATE", &cors_ingress(None), "uid-same", true),
    )
    .await;
    assert_eq!(dry["allowed"], false);
    assert_eq!(wet, dry);
}

#[tokio::test]
async fn namespace_missing_from_the_object_is_taken_from_the_request() {
    // kubectl create -n kube-system sends the object without metadata.namespace; kube-system
    // is exempt by default, so the insecure Ingress is admitted.
    let mut ingress = cors_ingress(None);
    ingress["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("namespace");
    let mut body = review("CREATE", &ingress, "uid-ns", false);
    body["request"]["namespace"] = json!("kube-system");
    let response = post_review(AdmissionMode::Enforce, &body).await;
    assert_eq!(response["allowed"], true, "{response}");
    body["request"]["namespace"] = json!("shop");
    let response = post_review(AdmissionMode::Enforce, &body).await;
    assert_eq!(response["allowed"], false, "{response}");
}

#[tokio::test]
async fn malformed_bodies_get_400_with_a_clear_error() {
    for (body, expect) in [
        ("{not json".to_owned(), "not a valid admission.k8s.io/v1 AdmissionReview"),
        (String::new(), "not a valid admission.k8s.io/v1 AdmissionReview"),
        (
            json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}).to_string(),
            "no `request`",
        ),
        (
            json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": 5}})
                .to_string(),
            "not a valid admission.k8s.io/v1 AdmissionReview",
        ),
    ] {
        let (status, answer) = post(app(AdmissionMode::Enforce), body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        let error = answer["error"].as_str().unwrap();
        assert!(error.contains(expect), "{body}: {error}");
    }
    let mut v1beta1 = review("CREATE", &clean_service(), "uid-old", false);
    v1beta1["apiVersion"] = json!("admission.k8s.io/v1beta1");
    let (status, answer) = post(app(AdmissionMode::Enforce), v1beta1.to_string()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("admissionReviewVersions"),
        "{answer}"
    );
    let mut no_object = review("CREATE", &clean_service(), "uid-no-object", false);
    no_object["request"]["object"] = Value::Null;
    let (status, answer) = post(app(AdmissionMode::Enforce), no_object.to_string()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        answer["error"].as_str().unwrap().contains("uid-no-object"),
        "{answer}"
    );
}

#[tokio::test]
async fn oversize_body_gets_413() {
    // Default limit: 3 MiB.
    let mut big = cors_ingress(None);
    big["metadata"]["annotations"]["padding"] = json!("x".repeat(3 * 1024 * 1024));
    let (status, answer) = post(
        app(AdmissionMode::Enforce),
        review("CREATE", &big, "uid-big", false).to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("body limit"));

    // A configured limit, with a body of unknown length (chunked upload).
    let small = router(
        admission(AdmissionMode::Enforce, AdmissionMetrics::unregistered()),
        Limits {
            max_body_bytes: 1024,
            ..Limits::default()
        },
    );
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        vec![Ok(vec![b' '; 800]), Ok(vec![b' '; 800])];
    let (status, _) = post(small, Body::from_stream(futures::stream::iter(chunks))).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn a_request_whose_body_never_completes_hits_the_deadline() {
    let app = router(
        admission(AdmissionMode::Enforce, AdmissionMetrics::unregistered()),
        Limits {
            request_timeout: Duration::from_millis(100),
            ..Limits::default()
        },
    );
    let stalled = futures::stream::once(async { Ok::<_, std::io::Error>(b"{".to_vec()) })
        .chain(futures::stream::pending());
    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        post(app, Body::from_stream(stalled)),
    )
    .await
    .expect("the webhook answers before the test gives up");
    assert_eq!(answer.0, StatusCode::SERVICE_UNAVAILABLE, "{}", answer.1);
    assert!(answer.1["error"].as_str().unwrap().contains("deadline"));
}

#[tokio::test]
async fn decisions_are_counted_with_bounded_labels() {
    let metrics = Metrics::new();
    let admission_metrics = AdmissionMetrics::register(&metrics);
    let app = router(
        admission(AdmissionMode::Enforce, admission_metrics),
        Limits::default(),
    );
    for body in [
        review("CREATE", &cors_ingress(None), "m1", false),
        review("CREATE", &clean_service(), "m2", false),
        review(
            "CREATE",
            &json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "c", "namespace": "shop"}}),
            "m3",
            false,
        ),
    ] {
        post(app.clone(), body.to_string()).await;
    }
    post(app, "garbage").await;
    let text = metrics.encode();
    for line in [
        r#"apiguard_admission_requests_total{kind="Ingress",operation="CREATE",decision="denied"} 1"#,
        r#"apiguard_admission_requests_total{kind="Service",operation="CREATE",decision="allowed"} 1"#,
        r#"apiguard_admission_requests_total{kind="other",operation="CREATE",decision="allowed"} 1"#,
        r#"apiguard_admission_requests_total{kind="other",operation="unknown",decision="invalid"} 1"#,
        r#"apiguard_admission_findings_total{rule="APG001",severity="deny",mode="enforce"} 1"#,
        "apiguard_admission_duration_seconds_count 4",
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
}
