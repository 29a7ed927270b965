//! The background audit against the real control plane: objects that got in while no webhook
//! was registered are reported in their namespace's PolicyReport `apiguard-audit` by the
//! in-process operator's leader; a fixed object drops out, a namespace with nothing left loses
//! its report, an exempt namespace gets none, and an audit cycle that finds nothing new
//! writes nothing (the report's resourceVersion stays).

use crate::support::controller::install_report_crds;
use std::sync::Arc;
use std::time::Duration;

use crate::support::cluster::{control_plane, ensure_namespace, eventually, with_temp_ns};
use crate::support::controller::Operator;
use apiguard::audit::{Audit, AuditConfig, AuditMetrics, metrics::ScopeLabel};
use apiguard::reports::{Outcome, PolicyReport};
use apiguard::rules::EngineConfig;
use k8s_openapi::api::networking::v1::Ingress;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);
/// A namespace the audit's engine exempts (as `--exempt-namespaces` would).
const EXEMPT_NS: &str = "apiguard-audit-exempt";

struct AuditedOperator {
    _operator: Operator,
    metrics: Arc<AuditMetrics>,
}

/// The operator this module's tests share, with the audit on: a full audit every 3 s (so a
/// test sees several cycles), changes after 300 ms of quiet.
fn operator() -> Arc<AuditedOperator> {
    crate::support::isolation::shared(|| {
        install_report_crds();
        let metrics = Arc::new(AuditMetrics::default());
        let mut engine = EngineConfig::default();
        engine.exempt_namespaces.insert(EXEMPT_NS.to_owned());
        engine
            .exempt_namespaces
            .insert(crate::support::controller::OPERATOR_NS.to_owned());
        let audit = Audit {
            config: AuditConfig {
                engine,
                interval: Duration::from_secs(3),
                debounce: Duration::from_millis(300),
            },
            metrics: metrics.clone(),
        };
        let operator = Operator::start_with_options("audit-tests", "apiguard-audit-tests", |o| {
            o.audit = Some(audit)
        });
        AuditedOperator {
            _operator: operator,
            metrics,
        }
    })
}

/// An Ingress marked deliberately public (so only TLS is in question), with or without TLS.
fn ingress(ns: &str, name: &str, tls: bool, exempt: Option<&str>) -> Value {
    let mut annotations = json!({"apiguard.dev/public": "status page"});
    if let Some(reason) = exempt {
        annotations["apiguard.dev/exempt"] = json!(format!("APG005={reason}"));
    }
    let mut spec = json!({"rules": [{"host": format!("{name}.example"), "http": {"paths": [{"path": "/",
        "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]});
    if tls {
        spec["tls"] = json!([{"hosts": [format!("{name}.example")], "secretName": "tls"}]);
    }
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": name, "namespace": ns, "annotations": annotations}, "spec": spec})
}

async fn create_ingress(client: &Client, object: Value) {
    let ns = object["metadata"]["namespace"].as_str().unwrap().to_owned();
    let ingress: Ingress = serde_json::from_value(object).unwrap();
    Api::<Ingress>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &ingress)
        .await
        .unwrap_or_else(|e| panic!("creating Ingress in {ns}: {e}"));
}

async fn report(client: &Client, ns: &str) -> Option<PolicyReport> {
    Api::<PolicyReport>::namespaced(client.clone(), ns)
        .get_opt("apiguard-audit")
        .await
        .expect("reading the PolicyReport")
}

/// (rule ID, outcome, object name) of each result.
fn rows(report: &PolicyReport) -> Vec<(String, Outcome, String)> {
    report
        .results
        .iter()
        .map(|r| {
            (
                r.policy.clone(),
                r.result.unwrap(),
                r.resources[0].name.clone().unwrap_or_default(),
            )
        })
        .collect()
}

fn full_runs(metrics: &AuditMetrics) -> u64 {
    metrics
        .runs
        .get_or_create(&ScopeLabel { scope: "full" })
        .get()
}

#[tokio::test(flavor = "multi_thread")]
async fn existing_objects_are_reported_fixed_ones_drop_out_and_unchanged_reports_are_not_rewritten()
{
    let _group = crate::support::isolation::enter(module_path!());
    let op = operator();
    with_temp_ns(|client, ns| async move {
        // No webhook is registered in this group: both Ingresses get in.
        create_ingress(&client, ingress(&ns, "plain", false, None)).await;
        create_ingress(
            &client,
            ingress(&ns, "probe", false, Some("health probe only")),
        )
        .await;
        let first = eventually(WAIT, "the audit report of the insecure Ingress", || {
            let (client, ns) = (client.clone(), ns.clone());
            async move { report(&client, &ns).await.filter(|r| r.results.len() == 2) }
        })
        .await;
        assert_eq!(
            rows(&first),
            [
                ("APG005".into(), Outcome::Fail, "plain".into()),
                ("APG005".into(), Outcome::Skip, "probe".into())
            ]
        );
        assert_eq!((first.summary.fail, first.summary.skip), (1, 1));
        let fail = &first.results[0];
        assert_eq!(fail.source.as_deref(), Some("apiguard"));
        assert_eq!(fail.rule.as_deref(), Some("plaintext-listener"));
        assert!(fail.resources[0].uid.is_some(), "{fail:?}");
        assert_eq!(
            first.results[1].properties["exemption"],
            "health probe only"
        );
        let listed = control_plane().kubectl_ok(["get", "policyreports", "-A"]);
        assert!(
            listed
                .lines()
                .any(|l| l.starts_with(&ns) && l.contains("apiguard-audit")),
            "{listed}"
        );

        // Two full audit cycles later, nothing changed: no write.
        let runs = full_runs(&op.metrics);
        eventually(WAIT, "two more full audits", || {
            let done = full_runs(&op.metrics) >= runs + 2;
            async move { done.then_some(()) }
        })
        .await;
        let again = report(&client, &ns)
            .await
            .expect("the report is still there");
        assert_eq!(
            again.metadata.resource_version, first.metadata.resource_version,
            "an audit that found nothing new rewrote the report"
        );

        // Fixed: the Ingress drops out; the exempted one stays as skip.
        Api::<Ingress>::namespaced(client.clone(), &ns)
            .patch(
                "plain",
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"spec": {"tls": [{"hosts": ["plain.example"], "secretName": "tls"}]}}),
                ),
            )
            .await
            .unwrap();
        let fixed = eventually(WAIT, "the fixed Ingress to drop out", || {
            let (client, ns) = (client.clone(), ns.clone());
            async move { report(&client, &ns).await.filter(|r| r.results.len() == 1) }
        })
        .await;
        assert_eq!(
            rows(&fixed),
            [("APG005".into(), Outcome::Skip, "probe".into())]
        );
        assert_eq!((fixed.summary.fail, fixed.summary.skip), (0, 1));

        // Nothing left: the report goes.
        Api::<Ingress>::namespaced(client.clone(), &ns)
            .delete("probe", &DeleteParams::default())
            .await
            .unwrap();
        eventually(
            WAIT,
            "the report of a namespace with nothing left to go",
            || {
                let (client, ns) = (client.clone(), ns.clone());
                async move { report(&client, &ns).await.is_none().then_some(()) }
            },
        )
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn exempt_namespaces_get_no_report() {
    let _group = crate::support::isolation::enter(module_path!());
    let op = operator();
    let client = control_plane().client().await;
    ensure_namespace(&client, EXEMPT_NS).await;
    let _ = Api::<Ingress>::namespaced(client.clone(), EXEMPT_NS)
        .delete("plain", &DeleteParams::default())
        .await;
    create_ingress(&client, ingress(EXEMPT_NS, "plain", false, None)).await;
    let runs = full_runs(&op.metrics);
    eventually(WAIT, "two more full audits", || {
        let done = full_runs(&op.metrics) >= runs + 2;
        async move { done.then_some(()) }
    })
    .await;
    assert!(report(&client, EXEMPT_NS).await.is_none());
    Api::<Ingress>::namespaced(client.clone(), EXEMPT_NS)
        .delete("plain", &DeleteParams::default())
        .await
        .unwrap();
}
