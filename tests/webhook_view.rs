//! The reflector-backed cluster view against a mocked apiserver (a `tower::service_fn`
//! answering discovery, list and watch requests): caches fill and report synced only after
//! the initial lists, Envoy Gateway SecurityPolicies are watched only when discovery shows the
//! CRD, and the admission rules see the cached objects.

#[path = "support/webhook.rs"]
mod webhook_support;

use apiguard::admin::AdmissionMetrics;
use apiguard::rules::{ClusterView, EngineConfig};
use apiguard::webhook::Admission;
use apiguard::webhook::cluster::ReflectorView;
use axum::http;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame};
use serde_json::{Value, json};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, watch};
use webhook_support::*;

type MockBody = BoxBody<Bytes, Infallible>;

fn json_response(status: u16, body: &Value) -> http::Response<MockBody> {
    http::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .unwrap()
}

fn list(api_version: &str, kind: &str, items: Vec<Value>) -> Value {
    json!({"apiVersion": api_version, "kind": format!("{kind}List"), "metadata": {"resourceVersion": "100"}, "items": items})
}

struct MockApiserver {
    /// Paths requested that the mock does not know (the test fails if any).
    unknown: Arc<Mutex<Vec<String>>>,
    /// Released when the Service list may be answered.
    services_gate: Arc<Notify>,
}

fn security_policy() -> Value {
    json!({
        "apiVersion": "gateway.envoyproxy.io/v1alpha1",
        "kind": "SecurityPolicy",
        "metadata": {"name": "jwt", "namespace": "shop", "resourceVersion": "5"},
        "spec": {"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "status"}],
                 "jwt": {"providers": [{"name": "corp", "remoteJWKS": {"uri": "https://idp.example.com/jwks"}}]}}
    })
}

fn mock_client(with_envoy_gateway: bool) -> (kube::Client, MockApiserver) {
    let unknown = Arc::new(Mutex::new(Vec::new()));
    let services_gate = Arc::new(Notify::new());
    let (unknown2, gate2) = (unknown.clone(), services_gate.clone());
    let service = tower::service_fn(move |req: http::Request<kube::client::Body>| {
        let unknown = unknown2.clone();
        let gate = gate2.clone();
        async move {
            let path = req.uri().path().to_owned();
            let watch = req.uri().query().unwrap_or("").contains("watch=true");
            if watch {
                // An open watch with no events: the body never ends.
                let body =
                    StreamBody::new(futures::stream::pending::<Result<Frame<Bytes>, Infallible>>());
                return Ok::<_, Infallible>(
                    http::Response::builder()
                        .status(200)
                        .body(body.boxed())
                        .unwrap(),
                );
            }
            let mut policy = policy();
            policy["metadata"]["resourceVersion"] = json!("7");
            let resp = match path.as_str() {
                "/apis" => {
                    let groups = if with_envoy_gateway {
                        vec![json!({"name": "gateway.envoyproxy.io",
                                    "versions": [{"groupVersion": "gateway.envoyproxy.io/v1alpha1", "version": "v1alpha1"}],
                                    "preferredVersion": {"groupVersion": "gateway.envoyproxy.io/v1alpha1", "version": "v1alpha1"}})]
                    } else {
                        vec![]
                    };
                    json_response(
                        200,
                        &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
                    )
                }
                "/apis/gateway.envoyproxy.io/v1alpha1" if with_envoy_gateway => json_response(
                    200,
                    &json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "gateway.envoyproxy.io/v1alpha1",
                            "resources": [{"name": "securitypolicies", "singularName": "securitypolicy", "namespaced": true,
                                           "kind": "SecurityPolicy", "verbs": ["get", "list", "watch"]}]}),
                ),
                "/apis/gateway.envoyproxy.io/v1alpha1/securitypolicies" if with_envoy_gateway => {
                    json_response(
                        200,
                        &list(
                            "gateway.envoyproxy.io/v1alpha1",
                            "SecurityPolicy",
                            vec![security_policy()],
                        ),
                    )
                }
                "/apis/apiguard.dev/v1alpha1/apisecuritypolicies" => json_response(
                    200,
                    &list("apiguard.dev/v1alpha1", "ApiSecurityPolicy", vec![policy]),
                ),
                "/api/v1/services" => {
                    gate.notified().await;
                    json_response(
                        200,
                        &list(
                            "v1",
                            "Service",
                            vec![json!({"apiVersion": "v1", "kind": "Service",
                                        "metadata": {"name": "payments", "namespace": "shop", "resourceVersion": "9"},
                                        "spec": {"selector": {"app": "payments"}, "ports": [{"port": 8080}]}})],
                        ),
                    )
                }
                other => {
                    unknown.lock().unwrap().push(other.to_owned());
                    json_response(
                        404,
                        &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
                                "message": format!("mock apiserver: no {other}")}),
                    )
                }
            };
            Ok(resp)
        }
    });
    (
        kube::Client::new(service, "default"),
        MockApiserver {
            unknown,
            services_gate,
        },
    )
}

#[tokio::test]
async fn caches_sync_after_the_initial_lists_and_feed_the_rules() {
    let (client, mock) = mock_client(false);
    let (stop, stop_rx) = watch::channel(false);
    let view = ReflectorView::start(client, stop_rx)
        .await
        .expect("view starts");

    // The Service list is held back: not synced yet.
    let synced = tokio::time::timeout(Duration::from_millis(300), view.synced()).await;
    assert!(
        synced.is_err(),
        "synced before the Service list was answered"
    );
    mock.services_gate.notify_one();
    tokio::time::timeout(Duration::from_secs(10), view.synced())
        .await
        .expect("caches sync once every list is answered")
        .expect("writers alive");

    assert_eq!(view.policies_in("shop").len(), 1);
    assert!(view.policies_in("other").is_empty());
    assert!(view.service("shop", "payments").is_some());
    assert!(view.service("shop", "missing").is_none());
    assert!(
        view.security_policies_in("shop").is_empty(),
        "no CRD: empty view"
    );

    // An Ingress straight to the policy's target Service is a gateway bypass (APG004),
    // which the rules can only know from the cached policy.
    let mut ingress = cors_ingress(Some("fonts only"));
    ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"] =
        json!({"name": "payments", "port": {"number": 8080}});
    let admission = Admission::new(
        Arc::new(view.clone()),
        EngineConfig::default(),
        AdmissionMetrics::unregistered(),
    );
    let body = serde_json::to_vec(&review("CREATE", &ingress, "view-1", false)).unwrap();
    let answer: Value = serde_json::from_slice(&admission.handle(&body).unwrap()).unwrap();
    assert_eq!(answer["response"]["allowed"], false, "{answer}");
    let message = answer["response"]["status"]["message"].as_str().unwrap();
    assert!(message.contains("APG004"), "{message}");

    assert!(
        mock.unknown.lock().unwrap().is_empty(),
        "{:?}",
        mock.unknown.lock().unwrap()
    );
    let _ = stop.send(true);
}

#[tokio::test]
async fn envoy_gateway_security_policies_are_watched_when_the_crd_exists() {
    let (client, mock) = mock_client(true);
    mock.services_gate.notify_one();
    let (stop, stop_rx) = watch::channel(false);
    let view = ReflectorView::start(client, stop_rx)
        .await
        .expect("view starts");
    tokio::time::timeout(Duration::from_secs(10), view.synced())
        .await
        .expect("caches sync")
        .expect("writers alive");
    let policies = view.security_policies_in("shop");
    assert_eq!(policies.len(), 1);
    assert_eq!(policies[0]["kind"], "SecurityPolicy");
    assert_eq!(policies[0]["spec"]["jwt"]["providers"][0]["name"], "corp");
    assert!(view.security_policies_in("other").is_empty());
    assert!(
        mock.unknown.lock().unwrap().is_empty(),
        "{:?}",
        mock.unknown.lock().unwrap()
    );
    let _ = stop.send(true);
}
