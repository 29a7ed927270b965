//! The discovery intake: the operator's side of the sensors' inventory push
//! (`POST /v1/discovery` on the webhook's HTTPS endpoint, see [`crate::discovery::push`]).
//!
//! A gateway's sensor pushes its inventory with the gateway's workload certificate; the
//! operator takes it only from that policy's gateway identity, at a bounded rate, and turns
//! what every replica of the gateway reported into `status.discovery`, one Event per newly
//! seen shadow endpoint, and the PolicyReport `apiguard-<policy>` (a result per shadow
//! endpoint, zombie endpoint and endpoint with sensitive data).
//!
//! This module is the pure core — who may push, how often, how the replicas' inventories
//! merge, what the report, status and Events say — with the time passed in. [`handler`] is
//! the edge: the axum route, the apiserver reads and writes, the metrics.

pub mod handler;
pub mod runtime;

use crate::api::DiscoveryStatus;
use crate::api::names::gateway_name;
use crate::discovery::push::{Push, RuntimeReport};
use crate::discovery::{EndpointReport, Report};
use crate::identity::SpiffeId;
use crate::reports::{ObjectReference, Outcome, PolicyReport, ReportResult, ResultSeverity};
use runtime::{Announcement, RuntimeMemory, RuntimeTaken};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// `policy` of every discovery result: what produced it.
pub const RESULT_POLICY: &str = "apiguard-discovery";
/// `rule` of a shadow endpoint's result (`fail`).
pub const SHADOW_RULE: &str = "shadow-endpoint";
/// `rule` of a zombie endpoint's result (`warn`).
pub const ZOMBIE_RULE: &str = "zombie-endpoint";
/// `rule` of an endpoint with sensitive data in its responses (`warn`).
pub const SENSITIVE_RULE: &str = "sensitive-data";
/// `category` of every discovery result.
pub const CATEGORY: &str = "API discovery";
/// The Event reason of a newly seen shadow endpoint.
pub const SHADOW_EVENT_REASON: &str = "ShadowEndpoint";

/// How much the intake takes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IntakeLimits {
    /// Pushes one policy may make in a burst.
    pub burst: u32,
    /// Seconds to earn one more push after the burst (all the policy's replicas together).
    pub seconds_per_push: f64,
    /// A replica not heard from for this long (seconds) no longer counts in the merge.
    pub reporter_ttl_seconds: i64,
    /// The most replicas remembered per policy (the oldest is forgotten first).
    pub max_reporters: usize,
}

impl Default for IntakeLimits {
    /// A burst of 10, then one push every 2 s per policy (a gateway of 2 replicas pushing every
    /// 30 s needs one in 15 s); replicas forgotten after 15 minutes (a sensor with nothing
    /// new still pushes every 10 intervals); at most 64 replicas.
    fn default() -> Self {
        IntakeLimits {
            burst: 10,
            seconds_per_push: 2.0,
            reporter_ttl_seconds: 15 * 60,
            max_reporters: 64,
        }
    }
}

/// Why a push is not taken, before its content is looked at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "no client certificate: push with the gateway's workload certificate (Secret <policy>-apiguard-gateway-identity)"
    )]
    NoCertificate,
    #[error("the client certificate has no SPIFFE ID (one spiffe:// URI SAN)")]
    NoSpiffeId,
    #[error(
        "the client certificate's identity {found} is not the gateway of {policy} ({expected})"
    )]
    WrongIdentity {
        found: String,
        expected: String,
        policy: String,
    },
    #[error("{0}")]
    InvalidPolicy(String),
    #[error("too many pushes for {policy}; retry in {retry_after_seconds} s")]
    RateLimited {
        policy: String,
        retry_after_seconds: u64,
    },
}

/// Whether a client whose verified certificate carries `spiffe_id` (`certificate`: one was
/// presented) may push for policy `namespace/name` in trust domain `trust_domain`: only the
/// policy's gateway identity `spiffe://<td>/ns/<namespace>/sa/<name>-apiguard` may.
pub fn authorize(
    certificate: bool,
    spiffe_id: Option<&str>,
    trust_domain: &str,
    namespace: &str,
    name: &str,
) -> Result<(), Refusal> {
    if !certificate {
        return Err(Refusal::NoCertificate);
    }
    let found = spiffe_id.ok_or(Refusal::NoSpiffeId)?;
    let expected = SpiffeId::new(trust_domain, namespace, &gateway_name(name))
        .map_err(|e| Refusal::InvalidPolicy(format!("policy {namespace}/{name}: {e}")))?
        .uri();
    if found != expected {
        return Err(Refusal::WrongIdentity {
            found: found.to_owned(),
            expected,
            policy: format!("{namespace}/{name}"),
        });
    }
    Ok(())
}

/// What a taken push changed: the merged view of every replica, and the shadow endpoints this
/// intake had not seen before for the policy (to announce once).
#[derive(Debug, Clone, PartialEq)]
pub struct Taken {
    /// Every endpoint the policy's live replicas reported, merged.
    pub endpoints: Vec<EndpointReport>,
    /// `METHOD /path` of shadow endpoints new to this intake.
    pub new_shadow: Vec<String>,
    /// The declarations the view was learned under.
    pub declarations: String,
}

/// The intake's memory: per policy, each replica's latest inventory, the push budget, and the
/// shadow endpoints already announced. One per operator replica.
#[derive(Debug, Default)]
pub struct Intake {
    limits: IntakeLimits,
    policies: HashMap<(String, String), PolicyState>,
}

#[derive(Debug)]
struct PolicyState {
    declarations: String,
    /// By reporter: when (unix s) and what it last pushed.
    reporters: BTreeMap<String, (i64, Report)>,
    announced: BTreeSet<String>,
    tokens: f64,
    refilled_at_ms: i64,
    /// Detections and anomalies announced, blocks in force (kept when the declarations
    /// change: they are not about them).
    runtime: RuntimeMemory,
}

impl Intake {
    /// An empty intake with `limits`.
    pub fn new(limits: IntakeLimits) -> Self {
        Intake {
            limits,
            policies: HashMap::new(),
        }
    }

    /// Spends one push of `namespace/name`'s budget at `now_ms` (unix ms), or says when to
    /// retry.
    pub fn admit(&mut self, namespace: &str, name: &str, now_ms: i64) -> Result<(), Refusal> {
        let limits = self.limits;
        let state = self.state(namespace, name, now_ms);
        let earned = (now_ms - state.refilled_at_ms).max(0) as f64
            / 1000.0
            / limits.seconds_per_push.max(0.001);
        state.tokens = (state.tokens + earned).min(f64::from(limits.burst));
        state.refilled_at_ms = now_ms;
        if state.tokens >= 1.0 {
            state.tokens -= 1.0;
            return Ok(());
        }
        let missing = (1.0 - state.tokens) * limits.seconds_per_push;
        Err(Refusal::RateLimited {
            policy: format!("{namespace}/{name}"),
            retry_after_seconds: missing.ceil().max(1.0) as u64,
        })
    }

    /// Takes `push` at `now_ms`. `known_shadow` are the shadow endpoints already reported (in
    /// the stored PolicyReport): they are not announced again, even by a fresh operator.
    pub fn take(&mut self, push: Push, known_shadow: &BTreeSet<String>, now_ms: i64) -> Taken {
        let limits = self.limits;
        let state = self.state(&push.namespace, &push.name, now_ms);
        if state.declarations != push.declarations {
            state.declarations = push.declarations.clone();
            state.reporters.clear();
            state.announced.clear();
        }
        let now_s = now_ms / 1000;
        state
            .reporters
            .retain(|_, (at, _)| now_s - *at <= limits.reporter_ttl_seconds);
        if !state.reporters.contains_key(&push.reporter)
            && state.reporters.len() >= limits.max_reporters
            && let Some(oldest) = state
                .reporters
                .iter()
                .min_by_key(|(_, (at, _))| *at)
                .map(|(k, _)| k.clone())
        {
            state.reporters.remove(&oldest);
        }
        state
            .reporters
            .insert(push.reporter, (now_s, push.inventory));
        let endpoints = merge(state.reporters.values().map(|(_, r)| r));
        let new_shadow: Vec<String> = endpoints
            .iter()
            .filter(|e| e.is_shadow())
            .map(endpoint_name)
            .filter(|n| !known_shadow.contains(n) && !state.announced.contains(n))
            .collect();
        state.announced.extend(new_shadow.iter().cloned());
        Taken {
            endpoints,
            new_shadow,
            declarations: state.declarations.clone(),
        }
    }

    fn state(&mut self, namespace: &str, name: &str, now_ms: i64) -> &mut PolicyState {
        let burst = f64::from(self.limits.burst);
        self.policies
            .entry((namespace.to_owned(), name.to_owned()))
            .or_insert_with(|| PolicyState {
                declarations: String::new(),
                reporters: BTreeMap::new(),
                announced: BTreeSet::new(),
                tokens: burst,
                refilled_at_ms: now_ms,
                runtime: RuntimeMemory::default(),
            })
    }

    /// Whether `namespace/name`'s runtime memory was seeded with the announcements of its
    /// existing Events ([`Intake::seed_runtime`]).
    pub fn runtime_seeded(&self, namespace: &str, name: &str) -> bool {
        self.policies
            .get(&(namespace.to_owned(), name.to_owned()))
            .is_some_and(|s| s.runtime.seeded())
    }

    /// Seeds `namespace/name`'s runtime memory with what its existing Events announced (read
    /// back from their annotations), so a fresh operator does not announce them again.
    pub fn seed_runtime(
        &mut self,
        namespace: &str,
        name: &str,
        announced: Vec<Announcement>,
        now_ms: i64,
    ) {
        self.state(namespace, name, now_ms)
            .runtime
            .seed(announced, now_ms);
    }

    /// Takes the runtime report of `reporter` (a gateway replica; `None`: it reports no
    /// detections) for `namespace/name` at `now_ms`: what to announce, and the blocks in force.
    pub fn take_runtime(
        &mut self,
        namespace: &str,
        name: &str,
        reporter: &str,
        report: Option<&RuntimeReport>,
        now_ms: i64,
    ) -> RuntimeTaken {
        let limits = self.limits;
        self.state(namespace, name, now_ms).runtime.take(
            reporter,
            report,
            now_ms,
            limits.reporter_ttl_seconds.saturating_mul(1000),
            limits.max_reporters,
        )
    }

    /// Forgets a policy (deleted).
    pub fn forget(&mut self, namespace: &str, name: &str) {
        self.policies
            .remove(&(namespace.to_owned(), name.to_owned()));
    }
}

/// `GET /v1/admin/export`.
pub fn endpoint_name(e: &EndpointReport) -> String {
    format!("{} {}", e.method, e.path)
}

/// The replicas' inventories as one: an endpoint reported by several is counted once, its
/// counts added, its flags and classes joined, its first/last seen the earliest/latest.
pub fn merge<'a>(reports: impl Iterator<Item = &'a Report>) -> Vec<EndpointReport> {
    let mut by_key: BTreeMap<(String, String), EndpointReport> = BTreeMap::new();
    for e in reports.flat_map(|r| r.endpoints.iter()) {
        let key = (e.path.clone(), e.method.clone());
        match by_key.get_mut(&key) {
            None => {
                by_key.insert(key, e.clone());
            }
            Some(m) => add_endpoint(m, e),
        }
    }
    by_key.into_values().collect()
}

fn add_endpoint(m: &mut EndpointReport, e: &EndpointReport) {
    m.declared |= e.declared;
    m.deprecated |= e.deprecated;
    m.requests += e.requests;
    m.authenticated += e.authenticated;
    for (k, v) in &e.statuses {
        *m.statuses.entry(k.clone()).or_default() += v;
    }
    for (k, v) in &e.content_types {
        *m.content_types.entry(k.clone()).or_default() += v;
    }
    for (k, v) in &e.sensitive_counts {
        *m.sensitive_counts.entry(*k).or_default() += v;
    }
    for class in &e.sensitive {
        if !m.sensitive.contains(class) {
            m.sensitive.push(*class);
        }
    }
    m.sensitive.sort();
    for (k, v) in &e.parameters {
        m.parameters.entry(k.clone()).or_insert(*v);
    }
    // RFC 3339 UTC times of one format order as strings do.
    if !e.first_seen.is_empty() && (m.first_seen.is_empty() || e.first_seen < m.first_seen) {
        m.first_seen = e.first_seen.clone();
    }
    if e.last_seen > m.last_seen {
        m.last_seen = e.last_seen.clone();
    }
}

/// `status.discovery` of the merged endpoints and the report's results (which carry what other
/// operator replicas took, [`carried_over`]), reported at `report_time` (RFC 3339): the
/// endpoints known to either, and the findings of the report, so status and report agree.
pub fn status_of(
    endpoints: &[EndpointReport],
    results: &[ReportResult],
    report_time: String,
) -> DiscoveryStatus {
    let key = |r: &ReportResult| {
        Some(format!(
            "{} {}",
            r.properties.get("method")?,
            r.properties.get("path")?
        ))
    };
    let known: BTreeSet<String> = endpoints
        .iter()
        .map(endpoint_name)
        .chain(results.iter().filter_map(key))
        .collect();
    let with_rule = |rule: &str| {
        let set: BTreeSet<String> = results
            .iter()
            .filter(|r| r.rule.as_deref() == Some(rule))
            .filter_map(key)
            .collect();
        i64::try_from(set.len()).unwrap_or(i64::MAX)
    };
    DiscoveryStatus {
        endpoints: i64::try_from(known.len()).unwrap_or(i64::MAX),
        undeclared: with_rule(SHADOW_RULE),
        sensitive: with_rule(SENSITIVE_RULE),
        zombie: with_rule(ZOMBIE_RULE),
        last_report_time: report_time,
    }
}

/// `status.discovery` of the merged endpoints alone, reported at `report_time` (RFC 3339).
pub fn status(endpoints: &[EndpointReport], report_time: String) -> DiscoveryStatus {
    let count = |f: &dyn Fn(&EndpointReport) -> bool| {
        i64::try_from(endpoints.iter().filter(|e| f(e)).count()).unwrap_or(i64::MAX)
    };
    DiscoveryStatus {
        endpoints: count(&|_| true),
        undeclared: count(&|e| e.is_shadow()),
        sensitive: count(&|e| !e.sensitive.is_empty()),
        zombie: count(&|e| e.is_zombie()),
        last_report_time: report_time,
    }
}

/// The PolicyReport results of the merged endpoints, about `policy` (the ApiSecurityPolicy):
/// `fail` per shadow endpoint, `warn` per zombie endpoint and per endpoint whose responses
/// carried sensitive data. Only stable facts (method, path, classes): counts would change the
/// report on every push.
pub fn results(policy: &ObjectReference, endpoints: &[EndpointReport]) -> Vec<ReportResult> {
    let mut out = Vec::new();
    for e in endpoints {
        let name = endpoint_name(e);
        let result = |rule: &str, outcome: Outcome, severity: ResultSeverity, message: String| {
            ReportResult::about(RESULT_POLICY, rule, outcome, policy.clone(), message)
                .severity(severity)
                .category(CATEGORY)
                .property("method", e.method.clone())
                .property("path", e.path.clone())
        };
        if e.is_shadow() {
            out.push(result(
                SHADOW_RULE,
                Outcome::Fail,
                ResultSeverity::Medium,
                format!(
                    "{name} is called but not declared by the policy's authorization rules or OpenAPI document (shadow endpoint)"
                ),
            ));
        }
        if e.is_zombie() {
            out.push(result(
                ZOMBIE_RULE,
                Outcome::Warn,
                ResultSeverity::Low,
                format!("{name} is declared deprecated and still called (zombie endpoint)"),
            ));
        }
        if !e.sensitive.is_empty() {
            let classes: Vec<&str> = e.sensitive.iter().map(|c| c.as_str()).collect();
            let classes = classes.join(",");
            out.push(
                result(
                    SENSITIVE_RULE,
                    Outcome::Warn,
                    ResultSeverity::High,
                    format!("responses of {name} carry sensitive data: {classes}"),
                )
                .property("classes", classes),
            );
        }
    }
    out
}

/// Results of `stored` (the PolicyReport in the cluster) to keep beside `fresh`: those learned
/// under the same `declarations` (another operator replica may have taken pushes this one has
/// not seen) whose rule and endpoint `fresh` does not already have. Under other declarations,
/// nothing is kept: what was shadow may be declared now.
pub fn carried_over(
    stored: Option<&PolicyReport>,
    declarations: &str,
    fresh: &[ReportResult],
) -> Vec<ReportResult> {
    use crate::api::names::annotations::DECLARATIONS;
    let Some(stored) = stored else {
        return Vec::new();
    };
    let same = stored
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DECLARATIONS))
        .is_some_and(|d| d == declarations);
    if !same {
        return Vec::new();
    }
    let key = |r: &ReportResult| {
        (
            r.rule.clone(),
            r.properties.get("method").cloned(),
            r.properties.get("path").cloned(),
        )
    };
    let fresh_keys: BTreeSet<_> = fresh.iter().map(key).collect();
    stored
        .results
        .iter()
        .filter(|r| r.policy == RESULT_POLICY && !fresh_keys.contains(&key(r)))
        .cloned()
        .collect()
}

/// The shadow endpoints (`METHOD /path`) a stored report already has.
pub fn reported_shadow(stored: Option<&PolicyReport>) -> BTreeSet<String> {
    stored
        .into_iter()
        .flat_map(|r| r.results.iter())
        .filter(|r| r.rule.as_deref() == Some(SHADOW_RULE))
        .filter_map(|r| {
            Some(format!(
                "{} {}",
                r.properties.get("method")?,
                r.properties.get("path")?
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests;
