//! PolicyReports (`wgpolicyk8s.io/v1alpha2`): the report format Kyverno, Kubewarden and
//! policy-reporter read, written by apiguard's background audit (`apiguard-audit` in each
//! namespace) and by anything else that reports per policy (`apiguard-<policy>`).
//!
//! - [`PolicyReport`] / [`ClusterPolicyReport`] and their parts: serde types of the upstream
//!   CRDs (the chart ships those CRDs, `policyReports.installCRDs`).
//! - [`ReportBuilder`]: results in, a report out, pure: results sorted, summary counted, and a
//!   result already in the previous report keeps its timestamp (when it was first found), so
//!   an unchanged set of results builds an identical report.
//! - [`ReportWriter`]: server-side applies a report only when its content differs from what
//!   is stored ([`same_content`]), and deletes reports.

mod writer;

pub use writer::{ReportWriter, Written};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::BTreeMap;

pub use k8s_openapi::api::core::v1::ObjectReference;

/// API group of the report kinds.
pub const GROUP: &str = "wgpolicyk8s.io";
/// Version of the report kinds apiguard writes.
pub const VERSION: &str = "v1alpha2";
/// `apiVersion` of the report kinds.
pub const API_VERSION: &str = "wgpolicyk8s.io/v1alpha2";
/// `source` of every result apiguard writes.
pub const SOURCE: &str = "apiguard";

/// Outcome of one check (`result`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Pass,
    Fail,
    Warn,
    Error,
    Skip,
}

/// Criticality of a result (`severity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResultSeverity {
    Critical,
    High,
    Medium,
    Low,
    Info,
}

/// When a result was found (protobuf `Timestamp`, as upstream).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
pub struct Timestamp {
    pub seconds: i64,
    pub nanos: i32,
}

impl Timestamp {
    /// Whole seconds of `at` (reports need no sub-second precision).
    pub fn from_unix(seconds: i64) -> Self {
        Timestamp { seconds, nanos: 0 }
    }

    /// Now, from the system clock (the I/O edge; builders take the time as an argument).
    pub fn now() -> Self {
        Self::from_unix(time::OffsetDateTime::now_utc().unix_timestamp())
    }
}

/// One result of a report.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportResult {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Name or identifier of the policy (for apiguard's rules, the rule ID, e.g. `APG001`).
    pub policy: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<ResultSeverity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Outcome>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scored: Option<bool>,
    /// The checked objects.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<ObjectReference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
}

impl ReportResult {
    /// A result of `policy`/`rule` about one object, with apiguard as its source.
    pub fn about(
        policy: impl Into<String>,
        rule: impl Into<String>,
        outcome: Outcome,
        object: ObjectReference,
        message: impl Into<String>,
    ) -> Self {
        ReportResult {
            source: Some(SOURCE.to_owned()),
            policy: policy.into(),
            rule: Some(rule.into()),
            result: Some(outcome),
            resources: vec![object],
            message: Some(message.into()),
            ..Default::default()
        }
    }

    /// With a severity.
    pub fn severity(mut self, severity: ResultSeverity) -> Self {
        self.severity = Some(severity);
        self
    }

    /// With a category.
    pub fn category(mut self, category: impl Into<String>) -> Self {
        self.category = Some(category.into());
        self
    }

    /// With one more property.
    pub fn property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.insert(key.into(), value.into());
        self
    }

    /// The result without its timestamp: what makes two results the same finding.
    fn untimed(&self) -> ReportResult {
        ReportResult {
            timestamp: None,
            ..self.clone()
        }
    }

    /// Sort key: policy, rule, first object, message.
    fn key(&self) -> impl Ord + '_ {
        let object = self
            .resources
            .first()
            .map(|r| (r.namespace.as_deref(), r.kind.as_deref(), r.name.as_deref()));
        (
            self.policy.as_str(),
            self.rule.as_deref(),
            object,
            self.message.as_deref(),
        )
    }
}

/// Counts of results by outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Summary {
    #[serde(default)]
    pub pass: i64,
    #[serde(default)]
    pub fail: i64,
    #[serde(default)]
    pub warn: i64,
    #[serde(default)]
    pub error: i64,
    #[serde(default)]
    pub skip: i64,
}

impl Summary {
    /// The counts of `results` (results without an outcome are not counted).
    pub fn of(results: &[ReportResult]) -> Self {
        let mut s = Summary::default();
        for r in results {
            match r.result {
                Some(Outcome::Pass) => s.pass += 1,
                Some(Outcome::Fail) => s.fail += 1,
                Some(Outcome::Warn) => s.warn += 1,
                Some(Outcome::Error) => s.error += 1,
                Some(Outcome::Skip) => s.skip += 1,
                None => {}
            }
        }
        s
    }
}

macro_rules! report_kind {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $plural:literal, $scope:ty) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
        #[serde(rename_all = "camelCase")]
        pub struct $name {
            #[serde(default)]
            pub api_version: String,
            #[serde(default)]
            pub kind: String,
            #[serde(default)]
            pub metadata: ObjectMeta,
            /// What the report is about (e.g. one Deployment); absent: the namespace.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub scope: Option<ObjectReference>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub scope_selector: Option<LabelSelector>,
            #[serde(default)]
            pub summary: Summary,
            #[serde(default)]
            pub results: Vec<ReportResult>,
        }

        impl $name {
            /// An empty report named `name` (namespaced reports also need
            /// `metadata.namespace`).
            pub fn named(name: impl Into<String>) -> Self {
                $name {
                    api_version: API_VERSION.to_owned(),
                    kind: $kind.to_owned(),
                    metadata: ObjectMeta {
                        name: Some(name.into()),
                        ..Default::default()
                    },
                    ..Default::default()
                }
            }
        }

        impl kube::Resource for $name {
            type DynamicType = ();
            type Scope = $scope;

            fn kind(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($kind)
            }
            fn group(_: &()) -> Cow<'_, str> {
                Cow::Borrowed(GROUP)
            }
            fn version(_: &()) -> Cow<'_, str> {
                Cow::Borrowed(VERSION)
            }
            fn plural(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($plural)
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

report_kind!(
    /// A namespaced report (`kubectl get policyreports -A`, short name `polr`).
    PolicyReport,
    "PolicyReport",
    "policyreports",
    k8s_openapi::NamespaceResourceScope
);
report_kind!(
    /// A cluster-scoped report (`kubectl get clusterpolicyreports`, short name `cpolr`).
    ClusterPolicyReport,
    "ClusterPolicyReport",
    "clusterpolicyreports",
    k8s_openapi::ClusterResourceScope
);

/// Builds a [`PolicyReport`] from results (pure).
#[derive(Debug, Clone)]
pub struct ReportBuilder {
    namespace: String,
    name: String,
    labels: BTreeMap<String, String>,
    results: Vec<ReportResult>,
}

impl ReportBuilder {
    /// A report `name` in `namespace`, labelled `app.kubernetes.io/managed-by: apiguard`.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        use crate::api::names::labels::{MANAGED_BY, MANAGED_BY_VALUE};
        ReportBuilder {
            namespace: namespace.into(),
            name: name.into(),
            labels: BTreeMap::from([(MANAGED_BY.to_owned(), MANAGED_BY_VALUE.to_owned())]),
            results: Vec::new(),
        }
    }

    /// With one more label (e.g. which part of apiguard writes the report).
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// Adds a result.
    pub fn push(&mut self, result: ReportResult) {
        self.results.push(result);
    }

    /// Adds results.
    pub fn extend(&mut self, results: impl IntoIterator<Item = ReportResult>) {
        self.results.extend(results);
    }

    /// Whether no result was added.
    pub fn is_empty(&self) -> bool {
        self.results.is_empty()
    }

    /// The report: results sorted and deduplicated, the summary counted. A result equal (but
    /// for its timestamp) to one in `previous` keeps that timestamp; a new one gets `now`
    /// (unless it carries its own).
    pub fn build(self, previous: Option<&PolicyReport>, now: Timestamp) -> PolicyReport {
        let seen: BTreeMap<String, Timestamp> = previous
            .into_iter()
            .flat_map(|p| p.results.iter())
            .filter_map(|r| Some((result_identity(r), r.timestamp?)))
            .collect();
        let mut results: Vec<ReportResult> = self
            .results
            .into_iter()
            .map(|mut r| {
                let first_seen = seen.get(&result_identity(&r)).copied();
                r.timestamp = first_seen.or(r.timestamp).or(Some(now));
                r
            })
            .collect();
        results.sort_by(|a, b| a.key().cmp(&b.key()));
        results.dedup_by(|a, b| a.untimed() == b.untimed());
        let mut report = PolicyReport::named(self.name);
        report.metadata.namespace = Some(self.namespace);
        report.metadata.labels = Some(self.labels);
        report.summary = Summary::of(&results);
        report.results = results;
        report
    }
}

fn result_identity(r: &ReportResult) -> String {
    serde_json::to_string(&r.untimed()).unwrap_or_default()
}

/// Whether `stored` already says what `desired` says: the same results (timestamps included,
/// since [`ReportBuilder::build`] keeps them), summary, scope, and `desired`'s labels. Fields
/// others may have added to `stored` (other labels, annotations) do not count.
pub fn same_content(desired: &PolicyReport, stored: &PolicyReport) -> bool {
    let labels_kept = desired.metadata.labels.iter().flatten().all(|(k, v)| {
        stored
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(k))
            .is_some_and(|s| s == v)
    });
    labels_kept
        && desired.results == stored.results
        && desired.summary == stored.summary
        && desired.scope == stored.scope
        && desired.scope_selector == stored.scope_selector
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(name: &str) -> ObjectReference {
        ObjectReference {
            api_version: Some("networking.k8s.io/v1".into()),
            kind: Some("Ingress".into()),
            namespace: Some("shop".into()),
            name: Some(name.into()),
            ..Default::default()
        }
    }

    fn fail(name: &str) -> ReportResult {
        ReportResult::about(
            "APG005",
            "plaintext-listener",
            Outcome::Fail,
            object(name),
            "m",
        )
        .severity(ResultSeverity::High)
    }

    #[test]
    fn builds_sorted_counted_and_stamped() {
        let mut b =
            ReportBuilder::new("shop", "apiguard-audit").label("apiguard.dev/report", "audit");
        b.push(fail("b"));
        b.push(fail("a"));
        b.push(fail("a"));
        b.push(ReportResult::about(
            "APG003",
            "unauthenticated-route",
            Outcome::Skip,
            object("c"),
            "exempted",
        ));
        let report = b.build(None, Timestamp::from_unix(100));
        let names: Vec<_> = report
            .results
            .iter()
            .map(|r| (r.policy.as_str(), r.resources[0].name.as_deref().unwrap()))
            .collect();
        assert_eq!(names, [("APG003", "c"), ("APG005", "a"), ("APG005", "b")]);
        assert_eq!(
            report.summary,
            Summary {
                fail: 2,
                skip: 1,
                ..Default::default()
            }
        );
        assert!(
            report
                .results
                .iter()
                .all(|r| r.timestamp == Some(Timestamp::from_unix(100)))
        );
        assert_eq!(report.metadata.namespace.as_deref(), Some("shop"));
        assert_eq!(
            report.metadata.labels.as_ref().unwrap()["app.kubernetes.io/managed-by"],
            "apiguard"
        );
    }

    #[test]
    fn an_unchanged_result_keeps_its_first_timestamp() {
        let build = |names: &[&str], now| {
            let mut b = ReportBuilder::new("shop", "r");
            b.extend(names.iter().map(|n| fail(n)));
            b.build(None, Timestamp::from_unix(now))
        };
        let first = build(&["a"], 100);
        let mut b = ReportBuilder::new("shop", "r");
        b.extend([fail("a"), fail("b")]);
        let second = b.build(Some(&first), Timestamp::from_unix(200));
        assert_eq!(second.results[0].timestamp, Some(Timestamp::from_unix(100)));
        assert_eq!(second.results[1].timestamp, Some(Timestamp::from_unix(200)));
        assert!(!same_content(&second, &first));
        let mut b = ReportBuilder::new("shop", "r");
        b.extend([fail("b"), fail("a")]);
        let third = b.build(Some(&second), Timestamp::from_unix(300));
        assert!(same_content(&third, &second));
        assert!(same_content(&build(&["a"], 1), &build(&["a"], 1)));
    }

    #[test]
    fn same_content_ignores_what_others_add() {
        let mut b = ReportBuilder::new("shop", "r");
        b.push(fail("a"));
        let desired = b.build(None, Timestamp::from_unix(1));
        let mut stored = desired.clone();
        stored.metadata.resource_version = Some("7".into());
        stored
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("x".into(), "y".into());
        assert!(same_content(&desired, &stored));
        stored.metadata.labels = None;
        assert!(!same_content(&desired, &stored));
    }

    #[test]
    fn serializes_as_the_upstream_crd_expects() {
        let mut b = ReportBuilder::new("shop", "apiguard-audit");
        b.push(
            fail("a")
                .category("API security")
                .property("field", "spec.tls"),
        );
        let report = b.build(None, Timestamp::from_unix(5));
        let v = serde_json::to_value(&report).unwrap();
        assert_eq!(
            v,
            json!({
                "apiVersion": "wgpolicyk8s.io/v1alpha2",
                "kind": "PolicyReport",
                "metadata": {"name": "apiguard-audit", "namespace": "shop",
                    "labels": {"app.kubernetes.io/managed-by": "apiguard"}},
                "summary": {"pass": 0, "fail": 1, "warn": 0, "error": 0, "skip": 0},
                "results": [{
                    "source": "apiguard",
                    "policy": "APG005",
                    "rule": "plaintext-listener",
                    "category": "API security",
                    "severity": "high",
                    "timestamp": {"seconds": 5, "nanos": 0},
                    "result": "fail",
                    "resources": [{"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                        "namespace": "shop", "name": "a"}],
                    "message": "m",
                    "properties": {"field": "spec.tls"}
                }]
            })
        );
        // What other engines write reads back (Kyverno's results carry `scored`, no source
        // timestamp on old versions, and summaries without zero counts).
        let kyverno = json!({
            "apiVersion": "wgpolicyk8s.io/v1alpha2", "kind": "PolicyReport",
            "metadata": {"name": "x", "namespace": "n"},
            "summary": {"fail": 1},
            "results": [{"policy": "require-labels", "rule": "check", "result": "fail",
                "scored": true, "severity": "medium", "source": "kyverno",
                "timestamp": {"seconds": 1, "nanos": 2}}]
        });
        let back: PolicyReport = serde_json::from_value(kyverno).unwrap();
        assert_eq!(back.summary.fail, 1);
        assert_eq!(back.results[0].scored, Some(true));
        let round: PolicyReport = serde_json::from_value(v).unwrap();
        assert_eq!(round, report);
    }
}
