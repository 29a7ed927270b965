//! `scope: Global` rate limits: Envoy's rate limit service
//! (`envoy.service.ratelimit.v3.RateLimitService`), answered from fixed-window counters in
//! Redis shared by every gateway replica.
//!
//! The gateway's `ratelimit` filter sends one descriptor per global limit that applies to the
//! request: `(apiguard_limit, NAME)`, the route's match entries, and the client's value
//! (`(client, VALUE)` or Envoy's `(remote_address, IP)`; the names are in
//! [`crate::sensor::config`]). Each known limit is one `INCRBY` of the counter
//! `rl:NAME:HASH` of the policy (the client's value hashed: the store never sees a raw API key,
//! claim or header value); a count over the limit answers `OVER_LIMIT` (Envoy's 429).
//!
//! Failure: Redis unreachable, slow or not configured → `OK` (fail open): a global limit never
//! takes traffic down with Redis. Counted (`result="redis_error"` / `"no_redis"`) and logged
//! at most once per `WARN_INTERVAL` (10 s).
//!
//! Core: `GlobalLimits`, `requested_hits`, `verdict`, `response` (pure). Edge: `RateLimits`,
//! the tonic service.

use super::config::{
    CLIENT_ENTRY, GLOBAL_LIMIT_ENTRY, GlobalRateLimit, RATE_LIMIT_DOMAIN, REMOTE_ADDRESS_ENTRY,
};
use super::reload::ConfigFile;
use crate::admin::Metrics;
use crate::shared_state::{Key, SharedState};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{Code, DescriptorStatus};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitService;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tonic::{Request, Response, Status};

/// At most one warning per this interval while Redis fails (the rest are counted).
pub(crate) const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// The global limits of the config in force.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct GlobalLimits {
    /// `namespace/name` (the counters' policy).
    pub(crate) policy: String,
    /// `mode: Audit`: over the limit is counted, never refused.
    pub(crate) audit: bool,
    pub(crate) limits: Vec<GlobalRateLimit>,
}

impl GlobalLimits {
    fn get(&self, name: &str) -> Option<&GlobalRateLimit> {
        self.limits.iter().find(|l| l.name == name)
    }
}

/// One counter to hit for one descriptor of the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hit<'a> {
    /// The descriptor's index in the request.
    pub(crate) descriptor: usize,
    pub(crate) limit: &'a GlobalRateLimit,
    /// `rl:NAME:HASH` (see [`counter_name`]).
    pub(crate) counter: String,
    pub(crate) addend: u64,
}

/// The counters `request` asks to hit under `limits`. Descriptors of another domain, without
/// the limit entry or a client value, of a limit the config does not have (a reload in
/// between), or subtracting hits, count nothing (they are answered OK).
pub(crate) fn requested_hits<'a>(
    limits: &'a GlobalLimits,
    request: &RateLimitRequest,
) -> Vec<Hit<'a>> {
    if request.domain != RATE_LIMIT_DOMAIN {
        return Vec::new();
    }
    let default_addend = u64::from(request.hits_addend.max(1));
    request
        .descriptors
        .iter()
        .enumerate()
        .filter(|(_, d)| !d.is_negative_hits)
        .filter_map(|(i, d)| {
            let (name, client) = limit_and_client(d)?;
            let limit = limits.get(name)?;
            let addend = d.hits_addend.map_or(default_addend, |a| a.value.max(1));
            Some(Hit {
                descriptor: i,
                limit,
                counter: counter_name(name, client),
                addend,
            })
        })
        .take(crate::shared_state::MAX_BATCH)
        .collect()
}

/// The limit's name and the client's value of one descriptor.
fn limit_and_client(descriptor: &RateLimitDescriptor) -> Option<(&str, &str)> {
    let value = |key: &str| {
        descriptor
            .entries
            .iter()
            .find(|e| e.key == key)
            .map(|e| e.value.as_str())
    };
    let name = value(GLOBAL_LIMIT_ENTRY)?;
    let client = value(CLIENT_ENTRY).or_else(|| value(REMOTE_ADDRESS_ENTRY))?;
    Some((name, client))
}

/// The counter's name within the policy: the limit and the first 128 bits of the SHA-256 of
/// the client's value.
pub(crate) fn counter_name(limit: &str, client: &str) -> String {
    let digest = Sha256::digest(client.as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("rl:{limit}:{hex}")
}

/// What a descriptor's count means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Within the limit.
    Ok,
    /// Over the limit: refused (429).
    OverLimit,
    /// Over the limit in Audit: let through.
    Audited,
}

impl Outcome {
    /// The `result` label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::OverLimit => "over_limit",
            Outcome::Audited => "audited",
        }
    }
}

/// The outcome of `count` (every replica's hits in the window, these included) against `limit`.
pub(crate) fn verdict(limit: &GlobalRateLimit, count: u64, audit: bool) -> Outcome {
    match (count > u64::from(limit.requests), audit) {
        (false, _) => Outcome::Ok,
        (true, false) => Outcome::OverLimit,
        (true, true) => Outcome::Audited,
    }
}

/// The answer to a request of `descriptors` descriptors, given the outcome of the counted ones
/// (by descriptor index) and their counts: `OVER_LIMIT` when one is refused.
pub(crate) fn response(
    descriptors: usize,
    decided: &[(usize, &GlobalRateLimit, u64, Outcome)],
) -> RateLimitResponse {
    let mut statuses: Vec<DescriptorStatus> = (0..descriptors)
        .map(|_| DescriptorStatus {
            code: Code::Ok as i32,
            ..Default::default()
        })
        .collect();
    let mut overall = Code::Ok;
    for &(i, limit, count, outcome) in decided {
        let Some(status) = statuses.get_mut(i) else {
            continue;
        };
        status.limit_remaining =
            u32::try_from(u64::from(limit.requests).saturating_sub(count)).unwrap_or(0);
        if outcome == Outcome::OverLimit {
            status.code = Code::OverLimit as i32;
            overall = Code::OverLimit;
        }
    }
    RateLimitResponse {
        overall_code: overall as i32,
        statuses,
        ..Default::default()
    }
}

/// `apiguard_global_rate_limit_decisions_total{policy,limit,result}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub policy: String,
    /// `spec.rateLimits[].name`.
    pub limit: String,
    /// `ok`, `over_limit`, `audited` (over the limit in Audit, let through), `redis_error`
    /// (Redis unreachable or slow: let through), `no_redis` (the sensor has no `--redis-url`:
    /// let through).
    pub result: &'static str,
}

/// The rate limit service's metrics.
#[derive(Clone)]
pub struct RateLimitMetrics {
    pub decisions: Family<DecisionLabels, Counter>,
}

impl RateLimitMetrics {
    pub fn register(metrics: &Metrics) -> Self {
        let this = RateLimitMetrics {
            decisions: Family::default(),
        };
        metrics.register(
            "apiguard_global_rate_limit_decisions",
            "Decisions of scope: Global rate limits, by policy, limit and result (redis_error and no_redis fail open)",
            this.decisions.clone(),
        );
        this
    }

    fn count(&self, policy: &str, limit: &str, result: &'static str) {
        self.decisions
            .get_or_create(&DecisionLabels {
                policy: policy.to_string(),
                limit: limit.to_string(),
                result,
            })
            .inc();
    }
}

/// The rate limit service: each call is decided under the config in force.
pub(crate) struct RateLimits {
    config: Arc<ConfigFile>,
    store: Option<SharedState>,
    metrics: RateLimitMetrics,
    /// Unix ms of the last warning (0: none yet).
    last_warning: AtomicU64,
}

impl RateLimits {
    pub(crate) fn new(
        config: Arc<ConfigFile>,
        store: Option<SharedState>,
        metrics: RateLimitMetrics,
    ) -> Self {
        RateLimits {
            config,
            store,
            metrics,
            last_warning: AtomicU64::new(0),
        }
    }

    /// Logs `message` unless one was logged within [`WARN_INTERVAL`].
    fn warn(&self, policy: &str, message: &str, error: &dyn std::fmt::Display) {
        let now = unix_ms();
        let last = self.last_warning.load(Ordering::Relaxed);
        let interval = u64::try_from(WARN_INTERVAL.as_millis()).unwrap_or(u64::MAX);
        if (last == 0 || now.saturating_sub(last) >= interval)
            && self
                .last_warning
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(policy, error = %error, "{message}");
        }
    }

    /// Decides `request` (fail open on every Redis problem).
    pub(crate) async fn decide(&self, request: &RateLimitRequest) -> RateLimitResponse {
        let pipeline = self.config.current();
        let limits = &pipeline.global_rate_limits;
        let hits = requested_hits(limits, request);
        if hits.is_empty() {
            return response(request.descriptors.len(), &[]);
        }
        let Some(store) = &self.store else {
            for hit in &hits {
                self.metrics
                    .count(&limits.policy, &hit.limit.name, "no_redis");
            }
            self.warn(
                &limits.policy,
                "global rate limit let through: the sensor has no --redis-url",
                &"no Redis",
            );
            return response(request.descriptors.len(), &[]);
        };
        match count(store, &limits.policy, &hits).await {
            Ok(counts) => {
                let decided: Vec<_> = hits
                    .iter()
                    .zip(counts)
                    .map(|(hit, n)| {
                        let outcome = verdict(hit.limit, n, limits.audit);
                        self.metrics
                            .count(&limits.policy, &hit.limit.name, outcome.label());
                        (hit.descriptor, hit.limit, n, outcome)
                    })
                    .collect();
                response(request.descriptors.len(), &decided)
            }
            Err(e) => {
                for hit in &hits {
                    self.metrics
                        .count(&limits.policy, &hit.limit.name, "redis_error");
                }
                self.warn(
                    &limits.policy,
                    "global rate limit let through: Redis did not answer (fail open)",
                    &e,
                );
                response(request.descriptors.len(), &[])
            }
        }
    }
}

/// Hits the counters of `hits` in one round trip.
async fn count(
    store: &SharedState,
    policy: &str,
    hits: &[Hit<'_>],
) -> Result<Vec<u64>, crate::shared_state::Error> {
    let keys = hits
        .iter()
        .map(|h| Key::new(policy, &h.counter))
        .collect::<Result<Vec<_>, _>>()?;
    let batch: Vec<_> = keys
        .iter()
        .zip(hits)
        .map(|(key, hit)| (key, hit.limit.unit_seconds, hit.addend))
        .collect();
    store.hit_many(&batch).await
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[tonic::async_trait]
impl RateLimitService for RateLimits {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        Ok(Response::new(self.decide(request.get_ref()).await))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;

    fn limits(audit: bool) -> GlobalLimits {
        GlobalLimits {
            policy: "shop/orders".into(),
            audit,
            limits: vec![
                GlobalRateLimit {
                    name: "checkout".into(),
                    requests: 10,
                    unit_seconds: 60,
                },
                GlobalRateLimit {
                    name: "login".into(),
                    requests: 2,
                    unit_seconds: 1,
                },
            ],
        }
    }

    fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
        RateLimitDescriptor {
            entries: entries
                .iter()
                .map(|(k, v)| Entry {
                    key: k.to_string(),
                    value: v.to_string(),
                })
                .collect(),
            ..Default::default()
        }
    }

    fn request(descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
        RateLimitRequest {
            domain: RATE_LIMIT_DOMAIN.into(),
            descriptors,
            hits_addend: 0,
        }
    }

    #[test]
    fn descriptors_name_the_limit_and_the_client() {
        let limits = limits(false);
        let req = request(vec![
            descriptor(&[
                (GLOBAL_LIMIT_ENTRY, "checkout"),
                ("method", "match"),
                (CLIENT_ENTRY, "tenant-a"),
            ]),
            descriptor(&[
                (GLOBAL_LIMIT_ENTRY, "login"),
                (REMOTE_ADDRESS_ENTRY, "10.0.0.1"),
            ]),
            // A limit this config does not have (reloaded in between): not counted.
            descriptor(&[(GLOBAL_LIMIT_ENTRY, "gone"), (CLIENT_ENTRY, "x")]),
            // No client value: not counted.
            descriptor(&[(GLOBAL_LIMIT_ENTRY, "login")]),
        ]);
        let hits = requested_hits(&limits, &req);
        assert_eq!(hits.len(), 2);
        assert_eq!(
            (
                hits[0].descriptor,
                hits[0].limit.name.as_str(),
                hits[0].addend
            ),
            (0, "checkout", 1)
        );
        assert_eq!(hits[0].counter, counter_name("checkout", "tenant-a"));
        assert_eq!(hits[1].descriptor, 1);
        assert_eq!(hits[1].counter, counter_name("login", "10.0.0.1"));
    }

    #[test]
    fn another_domain_and_negative_hits_count_nothing() {
        let limits = limits(false);
        let mut req = request(vec![descriptor(&[
            (GLOBAL_LIMIT_ENTRY, "checkout"),
            (CLIENT_ENTRY, "a"),
        ])]);
        req.domain = "other".into();
        assert!(requested_hits(&limits, &req).is_empty());
        req.domain = RATE_LIMIT_DOMAIN.into();
        req.descriptors[0].is_negative_hits = true;
        assert!(requested_hits(&limits, &req).is_empty());
    }

    #[test]
    fn the_addend_comes_from_the_descriptor_then_the_request() {
        let limits = limits(false);
        let mut req = request(vec![descriptor(&[
            (GLOBAL_LIMIT_ENTRY, "checkout"),
            (CLIENT_ENTRY, "a"),
        ])]);
        req.hits_addend = 3;
        assert_eq!(requested_hits(&limits, &req)[0].addend, 3);
        req.descriptors[0].hits_addend =
            Some(envoy_types::pb::google::protobuf::UInt64Value { value: 5 });
        assert_eq!(requested_hits(&limits, &req)[0].addend, 5);
    }

    #[test]
    fn counter_names_hash_the_client_and_fit_a_key() {
        let name = counter_name("checkout", "Bearer secret-token");
        assert!(name.starts_with("rl:checkout:"), "{name}");
        assert!(!name.contains("secret"), "{name}");
        assert_eq!(name.len(), "rl:checkout:".len() + 32);
        assert_ne!(name, counter_name("checkout", "another"));
        assert_ne!(name, counter_name("login", "Bearer secret-token"));
        let long = "x".repeat(10_000);
        Key::new("shop/orders", &counter_name("checkout", &long)).unwrap();
    }

    #[test]
    fn the_eleventh_of_ten_is_over_and_audit_lets_it_through() {
        let limits = limits(false);
        let checkout = &limits.limits[0];
        assert_eq!(verdict(checkout, 10, false), Outcome::Ok);
        assert_eq!(verdict(checkout, 11, false), Outcome::OverLimit);
        assert_eq!(verdict(checkout, 11, true), Outcome::Audited);
        assert_eq!(verdict(checkout, 1, true), Outcome::Ok);
    }

    #[test]
    fn one_refused_descriptor_makes_the_answer_over_limit() {
        let limits = limits(false);
        let (checkout, login) = (&limits.limits[0], &limits.limits[1]);
        let answer = response(
            3,
            &[
                (0, checkout, 4, Outcome::Ok),
                (2, login, 3, Outcome::OverLimit),
            ],
        );
        assert_eq!(answer.overall_code, Code::OverLimit as i32);
        let codes: Vec<i32> = answer.statuses.iter().map(|s| s.code).collect();
        assert_eq!(
            codes,
            [Code::Ok as i32, Code::Ok as i32, Code::OverLimit as i32]
        );
        assert_eq!(answer.statuses[0].limit_remaining, 6);
        assert_eq!(answer.statuses[2].limit_remaining, 0);
        let audited = response(1, &[(0, checkout, 50, Outcome::Audited)]);
        assert_eq!(audited.overall_code, Code::Ok as i32);
        assert_eq!(response(0, &[]).overall_code, Code::Ok as i32);
    }
}
