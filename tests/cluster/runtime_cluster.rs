//! Detections reaching the operator, against the real control plane: `apiguard run` takes the
//! runtime report of a sensor's push (`POST /v1/discovery`, the gateway's certificate) for a
//! policy with discovery off, and announces each incident once — one `ClientBlocked` Event for
//! a block two gateway replicas both report, one `AbuseDetected` for an alert, one
//! `TrafficAnomaly` naming the endpoint for an anomaly, however often they are pushed, and
//! nothing again after an operator restart — with `status.runtime` kept through a reconcile.

use crate::discovery_cluster::{
    client_config, events_with_reason, push, secret_data, start_operator,
};
use crate::support::cluster::{
    control_plane, create_service, ensure_namespace, eventually, with_temp_ns,
};
use crate::support::controller::{Process, install_policy_crd, install_report_crds};
use crate::support::tools::free_port;
use crate::support::webhook::http_get;
use apiguard::api::{ApiSecurityPolicy, RuntimeStatus};
use apiguard::detect::{Action, Anomaly, Detection, KeyLabel};
use apiguard::discovery::Report;
use apiguard::discovery::push::{Push, RuntimeReport};
use apiguard::reports::PolicyReport;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use std::time::Duration;

const OP_NS: &str = "apiguard-runtime";
const WAIT: Duration = Duration::from_secs(60);
const MIN: i64 = 60_000;

/// `apiguard run` on `webhook` and `admin` (ports), ready.
async fn operator(webhook: u16, admin: u16) -> Process {
    start_operator(webhook, admin, OP_NS, "runtime-replica", &[]).await
}

fn now_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

fn detection(detector: &str, key: &str, action: Action, at_ms: i64) -> Detection {
    Detection {
        detector: detector.into(),
        key: key.into(),
        key_kind: if key.starts_with("sha256:") {
            KeyLabel::Claim
        } else {
            KeyLabel::ClientIp
        },
        key_name: key.starts_with("sha256:").then(|| "sub".into()),
        action,
        count: 20,
        distinct: None,
        window_seconds: 60,
        at_ms,
        blocked_until_ms: (action == Action::Block).then_some(at_ms + 15 * MIN),
    }
}

/// A push of `runtime` alone (discovery off in the sensor) from gateway replica `reporter`.
fn runtime_push(ns: &str, reporter: &str, runtime: RuntimeReport) -> Value {
    serde_json::to_value(Push {
        namespace: ns.into(),
        name: "shop".into(),
        reporter: reporter.into(),
        declarations: String::new(),
        inventory: Report {
            policy: Some(format!("{ns}/shop")),
            endpoints: Vec::new(),
            shadow: Vec::new(),
            zombie: Vec::new(),
            observed: 0,
            overflow: 0,
        },
        discovery: false,
        runtime: Some(runtime),
    })
    .unwrap()
}

async fn runtime_status(policies: &Api<ApiSecurityPolicy>) -> Option<RuntimeStatus> {
    policies.get("shop").await.ok()?.status?.runtime
}

fn counts(ns: &str) -> [usize; 3] {
    ["ClientBlocked", "AbuseDetected", "TrafficAnomaly"].map(|r| events_with_reason(ns, r).len())
}

#[tokio::test(flavor = "multi_thread")]
async fn detections_become_one_event_per_incident_and_status_runtime() {
    let _group = crate::support::isolation::enter(module_path!());
    let cp = control_plane();
    install_policy_crd();
    install_report_crds();
    let client = cp.client().await;
    ensure_namespace(&client, OP_NS).await;
    let (webhook, admin) = (free_port(), free_port());
    let first_operator = operator(webhook, admin).await;
    let (_, _, roots) = secret_data(&client, OP_NS, "apiguard-webhook-tls").await;

    with_temp_ns(|client, ns| async move {
        create_service(&client, &ns, "api").await;
        let policy: ApiSecurityPolicy = serde_json::from_value(json!({
            "apiVersion": "apiguard.dev/v1alpha1", "kind": "ApiSecurityPolicy",
            "metadata": {"name": "shop", "namespace": ns},
            "spec": {"target": {"service": "api", "port": 8080}, "exposure": "Internal",
                "discovery": {"enabled": false},
                "authentication": {"jwt": {"providers": [{"name": "corp", "issuer": "https://idp.example/",
                    "audiences": ["api"], "jwks": {"uri": "https://idp.example/jwks.json"}}]}},
                "authorization": {"rules": [{"name": "orders",
                    "match": {"methods": ["GET"], "paths": ["/v1/orders"]}, "allow": {"scopes": ["orders"]}}]}}}))
        .unwrap();
        let policies = Api::<ApiSecurityPolicy>::namespaced(client.clone(), &ns);
        policies.create(&PostParams::default(), &policy).await.unwrap();
        let (gw_cert, gw_key, _) =
            secret_data(&client, &ns, "shop-apiguard-gateway-identity").await;
        let gateway = client_config(&roots, Some((&gw_cert, &gw_key)));

        // Two gateway replicas block the same client, a few seconds apart.
        let now = now_ms();
        let ip = "203.0.113.7";
        let blocked_0 = detection("login-stuffing", ip, Action::Block, now - 5_000);
        let blocked_1 = detection("login-stuffing", ip, Action::Block, now - 1_000);
        let replica_0 = RuntimeReport {
            detections: vec![blocked_0.clone()],
            anomalies: Vec::new(),
            active_blocks: blocked_0.active_block().into_iter().collect(),
        };
        let replica_1 = RuntimeReport {
            detections: vec![blocked_1.clone()],
            anomalies: Vec::new(),
            active_blocks: blocked_1.active_block().into_iter().collect(),
        };
        for (reporter, report) in [("shop-apiguard-0", &replica_0), ("shop-apiguard-1", &replica_1)] {
            let (status, _, answer) =
                push(webhook, gateway.clone(), &runtime_push(&ns, reporter, report.clone())).await;
            assert_eq!(status, 202, "{answer}");
        }
        let status = eventually(WAIT, "status.runtime", || async {
            runtime_status(&policies).await
        })
        .await;
        assert_eq!((status.active_blocks, status.detections), (1, 1), "{status:?}");
        assert!(status.last_detection_time.is_some(), "{status:?}");
        let wide = control_plane().kubectl_ok(["get", "asp", "shop", "-n", ns.as_str(), "-o", "wide"]);
        // kubectl aligns columns: the value starts where its header does (an empty column
        // before it leaves blanks, not a shift).
        let mut lines = wide.lines();
        let header = lines.next().unwrap_or_default();
        let row = lines.next().unwrap_or_default();
        let at = header.find("BLOCKS").unwrap_or_else(|| panic!("no BLOCKS column:\n{wide}"));
        let value = row.get(at..).unwrap_or_default().split_whitespace().next();
        assert_eq!(value, Some("1"), "{wide}");
        let blocked = events_with_reason(&ns, "ClientBlocked");
        assert_eq!(blocked.len(), 1, "{blocked:?}");
        let note = blocked[0]["message"].as_str().unwrap_or_default();
        assert!(note.contains("login-stuffing") && note.contains(ip), "{note}");
        assert_eq!(blocked[0]["type"], "Warning");
        assert_eq!(blocked[0]["involvedObject"]["name"], "shop");

        // Discovery is off for this policy: no report, no status.discovery.
        let reports: Api<PolicyReport> = Api::namespaced(client.clone(), &ns);
        assert!(reports.get_opt("apiguard-shop").await.unwrap().is_none());
        let stored = policies.get("shop").await.unwrap().status.unwrap();
        assert!(stored.discovery.is_none(), "{stored:?}");

        // An alert (a hashed claim, shown as given), then an anomaly; the lists pushed again.
        let key = "sha256:2bd806c97f0e00af";
        let mut full = replica_0.clone();
        full.detections
            .push(detection("bola", key, Action::Alert, now - 500));
        let (status, _, answer) =
            push(webhook, gateway.clone(), &runtime_push(&ns, "shop-apiguard-0", full.clone())).await;
        assert_eq!(status, 202, "{answer}");
        full.anomalies.push(Anomaly {
            endpoint: "GET /v1/orders".into(),
            factor: 10.2,
            rate_per_minute: 407.3,
            baseline_per_minute: 40.1,
            minutes: 3,
            at_ms: now - 200,
        });
        for reporter in ["shop-apiguard-0", "shop-apiguard-0", "shop-apiguard-1"] {
            let (status, _, answer) =
                push(webhook, gateway.clone(), &runtime_push(&ns, reporter, full.clone())).await;
            assert_eq!(status, 202, "{answer}");
        }
        assert_eq!(counts(&ns), [1, 1, 1]);
        let alert = &events_with_reason(&ns, "AbuseDetected")[0];
        let note = alert["message"].as_str().unwrap_or_default();
        assert!(note.contains("bola") && note.contains(key), "{note}");
        let anomaly = &events_with_reason(&ns, "TrafficAnomaly")[0];
        let note = anomaly["message"].as_str().unwrap_or_default();
        assert!(
            note.contains("GET /v1/orders") && note.contains("10.2 times its baseline"),
            "{note}"
        );
        let status = runtime_status(&policies).await.unwrap();
        assert_eq!(
            (status.active_blocks, status.detections, status.anomalies),
            (1, 2, 1),
            "{status:?}"
        );

        let (_, metrics) = http_get(([127, 0, 0, 1], admin).into(), "/metrics").await.unwrap();
        for needle in [
            "apiguard_runtime_events_total{reason=\"ClientBlocked\"} 1",
            "apiguard_runtime_events_total{reason=\"AbuseDetected\"} 1",
            "apiguard_runtime_events_total{reason=\"TrafficAnomaly\"} 1",
        ] {
            assert!(metrics.contains(needle), "{needle} missing:\n{metrics}");
        }

        // A reconcile keeps status.runtime.
        policies
            .patch(
                "shop",
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(json!({"metadata": {"labels": {"touched": "yes"}}})),
            )
            .await
            .unwrap();
        eventually(WAIT, "the reconcile's conditions", || async {
            let s = policies.get("shop").await.ok()?.status?;
            (!s.conditions.is_empty()).then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let kept = policies.get("shop").await.unwrap().status.unwrap();
        assert_eq!(
            kept.runtime.as_ref().map(|r| (r.detections, r.anomalies)),
            Some((2, 1)),
            "a reconcile dropped status.runtime: {kept:?}"
        );

        // A restarted operator announces nothing again, and the counts go on from the status.
        drop(first_operator);
        let _second = operator(webhook, admin).await;
        for reporter in ["shop-apiguard-1", "shop-apiguard-0"] {
            let (status, _, answer) =
                push(webhook, gateway.clone(), &runtime_push(&ns, reporter, full.clone())).await;
            assert_eq!(status, 202, "{answer}");
        }
        assert_eq!(counts(&ns), [1, 1, 1]);
        let status = runtime_status(&policies).await.unwrap();
        assert_eq!(
            (status.active_blocks, status.detections, status.anomalies),
            (1, 2, 1),
            "{status:?}"
        );

        // A report that cannot be right is refused naming the field.
        let mut bad = full.clone();
        bad.detections[0].blocked_until_ms = None;
        let (status, _, answer) =
            push(webhook, gateway.clone(), &runtime_push(&ns, "shop-apiguard-0", bad)).await;
        assert_eq!(status, 400, "{answer}");
        let message = answer["message"].as_str().unwrap_or_default();
        assert!(message.contains("runtime.detections[0].blockedUntil"), "{message}");
    })
    .await;
}
