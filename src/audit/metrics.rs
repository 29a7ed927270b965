//! The background audit's metrics (bounded labels: scope, rule ID, severity, write action).

use crate::admin::MetricSink;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScopeLabel {
    /// `full` (every namespace: start, interval) or `changes` (namespaces whose objects changed).
    pub scope: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FindingLabels {
    pub rule: &'static str,
    pub severity: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabel {
    /// `applied`, `deleted` or `error`.
    pub action: &'static str,
}

/// The audit's metrics. Register once into the admin server's registry.
#[derive(Debug)]
pub struct AuditMetrics {
    pub runs: Family<ScopeLabel, Counter>,
    pub duration: Histogram,
    pub findings: Family<FindingLabels, Gauge>,
    pub objects: Gauge,
    pub report_writes: Family<WriteLabel, Counter>,
}

impl Default for AuditMetrics {
    fn default() -> Self {
        AuditMetrics {
            runs: Family::default(),
            duration: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            findings: Family::default(),
            objects: Gauge::default(),
            report_writes: Family::default(),
        }
    }
}

impl AuditMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(mut registry: impl MetricSink) -> Arc<Self> {
        let m = Arc::new(Self::default());
        registry.add(
            "apiguard_audit_runs",
            "Background audit runs, by scope",
            m.runs.clone(),
        );
        registry.add(
            "apiguard_audit_duration_seconds",
            "Time one background audit run takes (rules and report writes)",
            m.duration.clone(),
        );
        registry.add(
            "apiguard_audit_findings",
            "Non-exempted findings on existing objects at the last audit, by rule and severity",
            m.findings.clone(),
        );
        registry.add(
            "apiguard_audit_objects",
            "Objects of the checked kinds the last full audit reviewed",
            m.objects.clone(),
        );
        registry.add(
            "apiguard_audit_report_writes",
            "PolicyReport writes of the background audit, by action",
            m.report_writes.clone(),
        );
        m
    }

    /// Records one run.
    pub fn ran(&self, scope: &'static str, took: Duration) {
        self.runs.get_or_create(&ScopeLabel { scope }).inc();
        self.duration.observe(took.as_secs_f64());
    }

    /// Records a report write.
    pub fn wrote(&self, action: &'static str) {
        self.report_writes
            .get_or_create(&WriteLabel { action })
            .inc();
    }

    /// Sets the findings gauge to `per_namespace` summed (series that dropped to zero stay, at 0).
    pub fn set_findings<'a>(
        &self,
        per_namespace: impl IntoIterator<Item = &'a BTreeMap<(&'static str, &'static str), i64>>,
    ) {
        let mut total: BTreeMap<(&'static str, &'static str), i64> = BTreeMap::new();
        for counts in per_namespace {
            for (key, n) in counts {
                *total.entry(*key).or_default() += n;
            }
        }
        for rule in crate::rules::RuleId::ALL {
            for severity in ["deny", "warn"] {
                let key = (rule.id(), severity);
                let labels = FindingLabels {
                    rule: rule.id(),
                    severity,
                };
                match total.get(&key) {
                    Some(n) => {
                        self.findings.get_or_create(&labels).set(*n);
                    }
                    None => {
                        if let Some(g) = self.findings.get(&labels) {
                            g.set(0);
                        }
                    }
                }
            }
        }
    }
}
