//! Controller metrics (bounded labels only) and the health signals behind `/healthz` and
//! `/readyz`.

use crate::admin::MetricSink;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

use super::conditions;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `success` or an error kind (a fixed `&'static str` per error variant).
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ConditionLabel {
    pub condition: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CertificateLabel {
    /// `gateway` or `workload`.
    pub identity: &'static str,
}

/// Per-policy facts the gauges are computed from (bounded by the number of policies).
#[derive(Debug, Clone, Default)]
struct PolicyFacts {
    true_conditions: Vec<&'static str>,
    /// Seconds since the Unix epoch of each certificate's notAfter, by identity kind.
    not_after: Vec<(&'static str, i64)>,
}

/// The controller's metrics. Register once into the admin server's registry.
#[derive(Debug)]
pub struct ControllerMetrics {
    pub reconcile_total: Family<ResultLabel, Counter>,
    pub reconcile_duration: Histogram,
    policies: Family<ConditionLabel, Gauge>,
    certificates_expiry: Family<CertificateLabel, Gauge>,
    facts: Mutex<HashMap<String, PolicyFacts>>,
}

impl Default for ControllerMetrics {
    fn default() -> Self {
        Self {
            reconcile_total: Family::default(),
            reconcile_duration: Histogram::new(exponential_buckets(0.005, 2.0, 12)),
            policies: Family::default(),
            certificates_expiry: Family::default(),
            facts: Mutex::new(HashMap::new()),
        }
    }
}

impl ControllerMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(mut registry: impl MetricSink) -> std::sync::Arc<Self> {
        let m = std::sync::Arc::new(Self::default());
        registry.add(
            "apiguard_reconcile",
            "Policy reconciliations by result",
            m.reconcile_total.clone(),
        );
        registry.add(
            "apiguard_reconcile_duration_seconds",
            "Time taken by one policy reconciliation",
            m.reconcile_duration.clone(),
        );
        registry.add(
            "apiguard_policies",
            "Policies whose condition is True, by condition type",
            m.policies.clone(),
        );
        registry.add(
            "apiguard_certificates_expiry_seconds",
            "Seconds until the earliest issued certificate expires (Unix time of notAfter minus now), by identity kind",
            m.certificates_expiry.clone(),
        );
        m
    }

    pub fn reconciled(&self, result: &'static str, took: Duration) {
        self.reconcile_total
            .get_or_create(&ResultLabel { result })
            .inc();
        self.reconcile_duration.observe(took.as_secs_f64());
    }

    /// Records a policy's current conditions and certificates, then recomputes the gauges.
    pub fn observe_policy(
        &self,
        key: &str,
        conditions_now: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
        not_after: Vec<(&'static str, i64)>,
        now_unix: i64,
    ) {
        let true_conditions = conditions::ALL
            .into_iter()
            .filter(|c| conditions::is_true(conditions_now, c))
            .collect();
        let mut facts = self.facts.lock().unwrap_or_else(|e| e.into_inner());
        facts.insert(
            key.to_string(),
            PolicyFacts {
                true_conditions,
                not_after,
            },
        );
        self.recompute(&facts, now_unix);
    }

    /// Forgets a deleted policy.
    pub(crate) fn forget_policy(&self, key: &str, now_unix: i64) {
        let mut facts = self.facts.lock().unwrap_or_else(|e| e.into_inner());
        facts.remove(key);
        self.recompute(&facts, now_unix);
    }

    fn recompute(&self, facts: &HashMap<String, PolicyFacts>, now_unix: i64) {
        for condition in conditions::ALL {
            let n = facts
                .values()
                .filter(|f| f.true_conditions.contains(&condition))
                .count();
            self.policies
                .get_or_create(&ConditionLabel { condition })
                .set(n as i64);
        }
        for identity in ["gateway", "workload"] {
            let earliest = facts
                .values()
                .flat_map(|f| f.not_after.iter())
                .filter(|(k, _)| *k == identity)
                .map(|(_, t)| *t)
                .min();
            if let Some(t) = earliest {
                self.certificates_expiry
                    .get_or_create(&CertificateLabel { identity })
                    .set(t - now_unix);
            }
        }
    }

    /// Number of policies with `condition` True (for tests and the benchmark).
    pub fn policies_with(&self, condition: &'static str) -> i64 {
        self.policies
            .get_or_create(&ConditionLabel { condition })
            .get()
    }
}

/// Liveness and readiness of the controller part of the process.
#[derive(Debug)]
pub struct Health {
    caches_synced: AtomicBool,
    leader: AtomicBool,
    stopped: AtomicBool,
    in_flight: Mutex<HashMap<String, Instant>>,
    /// A reconcile running longer than this means the loop is wedged.
    pub wedged_after: Duration,
}

impl Default for Health {
    fn default() -> Self {
        Self::new(Duration::from_secs(300))
    }
}

impl Health {
    pub fn new(wedged_after: Duration) -> Self {
        Self {
            caches_synced: AtomicBool::new(false),
            leader: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            in_flight: Mutex::new(HashMap::new()),
            wedged_after,
        }
    }

    pub(crate) fn set_leader(&self, leader: bool) {
        self.leader.store(leader, Ordering::SeqCst);
        if !leader {
            self.caches_synced.store(false, Ordering::SeqCst);
        }
    }
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::SeqCst)
    }
    pub(crate) fn set_caches_synced(&self) {
        self.caches_synced.store(true, Ordering::SeqCst);
    }
    /// The controller loop ended while it should be running.
    pub(crate) fn set_stopped(&self) {
        self.stopped.store(true, Ordering::SeqCst);
    }

    pub fn started(&self, key: &str, at: Instant) {
        let mut m = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        m.insert(key.to_string(), at);
    }
    pub fn finished(&self, key: &str) {
        let mut m = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        m.remove(key);
    }

    /// Ready: a standby replica (not leader) is ready (it serves the webhook); the leader is
    /// ready once its caches are synced.
    pub fn ready(&self) -> bool {
        !self.is_leader() || self.caches_synced.load(Ordering::SeqCst)
    }

    /// Live unless the loop stopped unexpectedly or a reconcile has run longer than
    /// [`Self::wedged_after`]. Returns the problem.
    pub fn live(&self, now: Instant) -> Result<(), String> {
        if self.stopped.load(Ordering::SeqCst) {
            return Err("controller loop stopped".to_string());
        }
        let m = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        match m
            .iter()
            .map(|(k, t)| (k, now.duration_since(*t)))
            .max_by_key(|(_, d)| *d)
        {
            Some((key, age)) if age > self.wedged_after => Err(format!(
                "reconcile of {key} has run for {}s (limit {}s)",
                age.as_secs(),
                self.wedged_after.as_secs()
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;
    use prometheus_client::registry::Registry;

    #[test]
    fn metrics_are_exported_with_bounded_labels() {
        let mut registry = Registry::default();
        let m = ControllerMetrics::register(&mut registry);
        m.reconciled("success", Duration::from_millis(20));
        m.reconciled("apply_failed", Duration::from_millis(20));
        let ready = k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
            type_: "Ready".into(),
            status: "True".into(),
            reason: "Ready".into(),
            message: String::new(),
            observed_generation: None,
            last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ),
        };
        m.observe_policy(
            "shop/a",
            std::slice::from_ref(&ready),
            vec![("gateway", 1_000)],
            400,
        );
        m.observe_policy(
            "shop/b",
            &[ready],
            vec![("gateway", 700), ("workload", 900)],
            400,
        );
        assert_eq!(m.policies_with("Ready"), 2);
        m.forget_policy("shop/b", 400);
        assert_eq!(m.policies_with("Ready"), 1);
        let mut out = String::new();
        encode(&mut out, &registry).unwrap();
        assert!(
            out.contains("apiguard_reconcile_total{result=\"success\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("apiguard_reconcile_duration_seconds_count 2"),
            "{out}"
        );
        assert!(
            out.contains("apiguard_policies{condition=\"Ready\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("apiguard_policies{condition=\"Accepted\"} 0"),
            "{out}"
        );
        assert!(
            out.contains("apiguard_certificates_expiry_seconds{identity=\"gateway\"} 600"),
            "{out}"
        );
        assert!(
            !out.contains("shop/"),
            "policy names must not become labels: {out}"
        );
    }

    #[test]
    fn liveness_fails_when_a_reconcile_is_wedged_and_readiness_waits_for_caches() {
        let h = Health::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert!(h.ready());
        h.set_leader(true);
        assert!(!h.ready());
        h.set_caches_synced();
        assert!(h.ready());
        h.started("shop/a", t0);
        assert!(h.live(t0 + Duration::from_secs(5)).is_ok());
        let err = h.live(t0 + Duration::from_secs(11)).unwrap_err();
        assert!(err.contains("shop/a"), "{err}");
        h.finished("shop/a");
        assert!(h.live(t0 + Duration::from_secs(11)).is_ok());
        h.set_stopped();
        assert!(h.live(t0).is_err());
    }
}
