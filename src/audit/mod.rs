//! The background audit (docs/audit.md): the admission rules over every existing object of
//! the checked kinds, reported as one PolicyReport `apiguard-audit` per namespace.
//!
//! - This module is the pure core: objects of one namespace in, findings and the report out.
//! - [`runner`]: the leader's loop (reflectors of the checked kinds, debounced re-audits of the
//!   namespaces that changed, a full audit every `--audit-interval`, report writes).
//! - [`metrics`]: the audit's Prometheus metrics.
//!
//! The rules only ever consult objects of the reviewed object's own namespace (policies,
//! Services, related policies), so a namespace is audited on its own: a change re-audits
//! just its namespace.

pub mod metrics;
pub mod runner;

pub use metrics::AuditMetrics;
pub use runner::{Audit, AuditConfig, run};

use crate::api::names::{AUDIT_REPORT, labels};
use crate::reports::{
    ObjectReference, Outcome, PolicyReport, ReportBuilder, ReportResult, ResultSeverity, Timestamp,
};
use crate::rules::{self, EngineConfig, Finding, InMemoryView, Severity};
use serde_json::Value;
use std::collections::BTreeMap;

/// `category` of the audit's results.
pub const CATEGORY: &str = "API security";

/// One finding about one existing object.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditFinding {
    /// The object (with its uid, so report readers can follow it).
    pub object: ObjectReference,
    pub finding: Finding,
}

/// Whether the audit reviews `object` itself. Pods and Jobs created by a controller
/// (`ownerReferences[].controller`) carry their owner's pod template, which is reviewed
/// already: reporting every replica would repeat one finding per pod.
pub fn audited(object: &Value) -> bool {
    let kind = object.get("kind").and_then(Value::as_str).unwrap_or("");
    if !matches!(kind, "Pod" | "Job") {
        return true;
    }
    let controlled = object
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .is_some_and(|owners| {
            owners
                .iter()
                .any(|o| o.get("controller").and_then(Value::as_bool) == Some(true))
        });
    !controlled
}

fn object_reference(object: &Value) -> ObjectReference {
    let s = |p: &str| {
        object
            .pointer(p)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    ObjectReference {
        api_version: s("/apiVersion"),
        kind: s("/kind"),
        namespace: s("/metadata/namespace"),
        name: s("/metadata/name"),
        uid: s("/metadata/uid"),
        ..Default::default()
    }
}

/// The findings of every audited object among `objects` (all of one namespace), the rules
/// consulting those same objects as the cluster view. Exempt namespaces yield nothing.
pub fn audit_namespace(objects: &[Value], config: &EngineConfig) -> Vec<AuditFinding> {
    let view = InMemoryView::from_objects(objects);
    objects
        .iter()
        .filter(|o| audited(o))
        .flat_map(|object| {
            let reference = object_reference(object);
            rules::review(object, &view, config)
                .into_iter()
                .map(move |finding| AuditFinding {
                    object: reference.clone(),
                    finding,
                })
        })
        .collect()
}

/// `objects` grouped by namespace (`default` for objects without one, as the rules read them).
pub fn by_namespace(objects: impl IntoIterator<Item = Value>) -> BTreeMap<String, Vec<Value>> {
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for object in objects {
        let ns = object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .unwrap_or("default")
            .to_owned();
        out.entry(ns).or_default().push(object);
    }
    out
}

/// The report result of a finding: deny findings `fail` (severity high), warn findings
/// `warn` (medium), exempted findings `skip` with the exemption's reason. `policy` is the rule
/// ID, `rule` its name; the field and the fix are properties.
pub fn result_of(f: &AuditFinding) -> ReportResult {
    let finding = &f.finding;
    let (outcome, severity) = match (&finding.exemption, finding.severity) {
        (Some(_), _) => (Outcome::Skip, None),
        (None, Severity::Deny) => (Outcome::Fail, Some(ResultSeverity::High)),
        (None, Severity::Warn) => (Outcome::Warn, Some(ResultSeverity::Medium)),
    };
    let message = match &finding.exemption {
        Some(reason) => format!("exempted ({reason}): {}", finding.message),
        None => finding.message.clone(),
    };
    let mut result = ReportResult::about(
        finding.rule.id(),
        finding.rule.name(),
        outcome,
        f.object.clone(),
        message,
    )
    .category(CATEGORY)
    .property("field", &finding.field)
    .property("remediation", &finding.remediation);
    if let Some(severity) = severity {
        result = result.severity(severity);
    }
    if let Some(reason) = &finding.exemption {
        result = result.property("exemption", reason);
    }
    result
}

/// The `apiguard-audit` report of `namespace`, or `None` when nothing is left to report
/// (the report is then deleted rather than kept empty).
pub fn report(
    namespace: &str,
    findings: &[AuditFinding],
    previous: Option<&PolicyReport>,
    now: Timestamp,
) -> Option<PolicyReport> {
    if findings.is_empty() {
        return None;
    }
    let mut builder =
        ReportBuilder::new(namespace, AUDIT_REPORT).label(labels::REPORT, labels::REPORT_AUDIT);
    builder.extend(findings.iter().map(result_of));
    Some(builder.build(previous, now))
}

/// Non-exempted findings by (rule ID, severity), for the findings gauge.
pub fn counts(findings: &[AuditFinding]) -> BTreeMap<(&'static str, &'static str), i64> {
    let mut out = BTreeMap::new();
    for f in findings.iter().filter(|f| f.finding.exemption.is_none()) {
        *out.entry((f.finding.rule.id(), f.finding.severity.as_str()))
            .or_default() += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reports::Summary;
    use serde_json::json;

    fn ingress(name: &str, tls: bool, annotations: Value) -> Value {
        let mut spec = json!({"rules": [{"host": "shop.example", "http": {"paths": [{"path": "/",
            "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]});
        if tls {
            spec["tls"] = json!([{"hosts": ["shop.example"], "secretName": "t"}]);
        }
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}"),
                "annotations": annotations},
            "spec": spec})
    }

    fn public() -> Value {
        json!({"apiguard.dev/public": "marketing site"})
    }

    #[test]
    fn an_insecure_ingress_fails_and_an_exempted_one_is_skipped() {
        let objects = vec![
            ingress("plain", false, public()),
            ingress(
                "probe",
                false,
                json!({"apiguard.dev/public": "status page",
                "apiguard.dev/exempt": "APG005=health probe only"}),
            ),
            ingress("good", true, public()),
        ];
        let findings = audit_namespace(&objects, &EngineConfig::default());
        let report = report("shop", &findings, None, Timestamp::from_unix(1)).unwrap();
        assert_eq!(report.metadata.name.as_deref(), Some("apiguard-audit"));
        assert_eq!(report.metadata.namespace.as_deref(), Some("shop"));
        assert_eq!(
            report.metadata.labels.as_ref().unwrap()["apiguard.dev/report"],
            "audit"
        );
        let rows: Vec<_> = report
            .results
            .iter()
            .map(|r| {
                (
                    r.policy.as_str(),
                    r.result.unwrap(),
                    r.resources[0].name.as_deref().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            rows,
            [
                ("APG005", Outcome::Fail, "plain"),
                ("APG005", Outcome::Skip, "probe")
            ],
            "{report:#?}"
        );
        assert_eq!(
            report.summary,
            Summary {
                fail: 1,
                skip: 1,
                ..Default::default()
            }
        );
        let fail = &report.results[0];
        assert_eq!(fail.rule.as_deref(), Some("plaintext-listener"));
        assert_eq!(fail.severity, Some(ResultSeverity::High));
        assert_eq!(fail.resources[0].uid.as_deref(), Some("uid-plain"));
        assert!(
            fail.message
                .as_deref()
                .unwrap()
                .starts_with("APG005: Ingress shop/plain")
        );
        let skip = &report.results[1];
        assert_eq!(skip.properties["exemption"], "health probe only");
        assert!(
            skip.message
                .as_deref()
                .unwrap()
                .starts_with("exempted (health probe only): APG005")
        );
        assert_eq!(counts(&findings), BTreeMap::from([(("APG005", "deny"), 1)]));
    }

    #[test]
    fn nothing_left_means_no_report_and_exempt_namespaces_are_skipped() {
        let fixed = vec![ingress("plain", true, public())];
        assert!(audit_namespace(&fixed, &EngineConfig::default()).is_empty());
        assert_eq!(report("shop", &[], None, Timestamp::from_unix(1)), None);
        let mut config = EngineConfig::default();
        config.exempt_namespaces.insert("shop".into());
        assert!(audit_namespace(&[ingress("plain", false, public())], &config).is_empty());
    }

    #[test]
    fn the_view_is_the_namespace_objects() {
        // A LoadBalancer Service in front of a policy's target: APG004 needs the policy from
        // the same namespace.
        let policy = json!({"apiVersion": "apiguard.dev/v1alpha1", "kind": "ApiSecurityPolicy",
            "metadata": {"name": "api", "namespace": "shop"},
            "spec": {"target": {"service": "api", "port": 8080}, "exposure": "Internal"}});
        let target = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "api", "namespace": "shop"},
            "spec": {"selector": {"app": "api"}, "ports": [{"port": 8080}]}});
        let lb = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "api-lb", "namespace": "shop"},
            "spec": {"type": "LoadBalancer", "selector": {"app": "api"}, "ports": [{"port": 80}]}});
        let findings = audit_namespace(&[policy, target, lb.clone()], &EngineConfig::default());
        assert!(
            findings
                .iter()
                .any(|f| f.finding.rule.id() == "APG004"
                    && f.object.name.as_deref() == Some("api-lb")),
            "{findings:#?}"
        );
        assert!(audit_namespace(&[lb], &EngineConfig::default()).is_empty());
    }

    #[test]
    fn controlled_pods_and_jobs_are_audited_through_their_owner() {
        let pod = |owners: Value| {
            json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "p", "namespace": "shop", "ownerReferences": owners},
                "spec": {"containers": [{"name": "c", "image": "i",
                    "env": [{"name": "ALLOWED_ORIGINS", "value": "*"}]}]}})
        };
        let owned = pod(
            json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "r",
            "uid": "u", "controller": true}]),
        );
        assert!(!audited(&owned));
        assert!(audit_namespace(&[owned], &EngineConfig::default()).is_empty());
        let bare = pod(json!([]));
        assert!(audited(&bare));
        assert_eq!(audit_namespace(&[bare], &EngineConfig::default()).len(), 1);
    }

    #[test]
    fn objects_group_by_namespace() {
        let groups = by_namespace([
            json!({"metadata": {"name": "a", "namespace": "x"}}),
            json!({"metadata": {"name": "b"}}),
            json!({"metadata": {"name": "c", "namespace": "x"}}),
        ]);
        assert_eq!(groups.keys().collect::<Vec<_>>(), ["default", "x"]);
        assert_eq!(groups["x"].len(), 2);
    }
}
