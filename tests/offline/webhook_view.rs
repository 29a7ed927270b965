//! The reflector-backed cluster view against a mocked apiserver (an axum router as the kube
//! client's service, answering discovery, list and watch requests): caches fill and report synced only after
//! the initial lists, Envoy Gateway SecurityPolicies are watched only when discovery shows the
//! CRD, and the admission rules see the cached objects.

use crate::support::webhook::*;
use apiguard::admin::AdmissionMetrics;
use apiguard::rules::{ClusterView, EngineConfig, Related};
use apiguard::webhook::Admission;
use apiguard::webhook::cluster::ReflectorView;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

fn mock_client(with_envoy_gateway: bool) -> (kube::Client, MockApiserver) {
    let mock = MockApiserver::new(with_envoy_gateway);
    (kube::Client::new(mock.router(), "default"), mock)
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
        view.related_in(Related::SecurityPolicy, "shop").is_empty(),
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
    let policies = view.related_in(Related::SecurityPolicy, "shop");
    assert_eq!(policies.len(), 1);
    assert_eq!(policies[0]["kind"], "SecurityPolicy");
    assert_eq!(policies[0]["spec"]["jwt"]["providers"][0]["name"], "corp");
    assert!(view.related_in(Related::SecurityPolicy, "other").is_empty());
    assert!(
        mock.unknown.lock().unwrap().is_empty(),
        "{:?}",
        mock.unknown.lock().unwrap()
    );
    let _ = stop.send(true);
}
