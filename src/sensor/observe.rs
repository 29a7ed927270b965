//! The sensor's metrics and decision log lines: the edge that records the pipeline's
//! `Event`s. Labels come from fixed sets (and the one policy the sensor serves); log lines
//! carry locations and reasons, never values from the traffic.

use super::pipeline::{Event, RequestVerdict, ResponseVerdict};
use crate::admin::Metrics;
use crate::contract::FieldError;
use crate::detect::{Action, Anomaly, Detection};
use crate::discovery::Sensitive;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub policy: String,
    /// `allowed`, `refused`, `audited`, `undeclared`, `undeclared_refused`,
    /// `undeclared_audited`, `unchecked`.
    pub decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResponseLabels {
    pub policy: String,
    /// `clean`, `redacted`, `would_redact`, `too_large`, `unchecked`.
    pub action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub policy: String,
    /// `true` (declared by the rules or the OpenAPI document) or `false` (shadow).
    pub declared: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SensitiveLabels {
    pub policy: String,
    /// `email`, `payment_card`, `iban`, `national_id`, `phone`, `jwt`, `private_key`,
    /// `cloud_key`.
    pub class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DetectionLabels {
    pub policy: String,
    /// The detector's name (from the policy: a bounded set).
    pub detector: String,
    /// `alert` or `block`.
    pub action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BlockedLabels {
    pub policy: String,
    pub detector: String,
    /// `refused`, or `audited` (Audit: let through).
    pub decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    /// `count` (adding a batch's counts), `publish` (a block), `poll` (the published blocks).
    pub operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    pub policy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// Config reloads: `loaded` or `failed`. Inventory pushes: `accepted`, `refused` (the
    /// operator answered another status than 202) or `error` (no answer: a file, the
    /// connection, TLS).
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PointLabels {
    /// `request_headers`, `request_body`, `response_headers`, `response_body`.
    pub point: &'static str,
}

/// Upper bounds (seconds) of the processing-time histogram: one message is expected to take
/// microseconds (headers) to a few milliseconds (a large JSON body).
const PROCESSING_BUCKETS: [f64; 12] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.05,
    0.2,
];

/// The sensor's metrics. Cloning is cheap: clones update the same series.
#[derive(Clone)]
pub struct SensorMetrics {
    pub requests: Family<RequestLabels, Counter>,
    pub responses: Family<ResponseLabels, Counter>,
    pub reloads: Family<ResultLabels, Counter>,
    pub processing: Family<PointLabels, Histogram>,
    /// gRPC streams that ended with an error from Envoy's side (reset, bad message).
    pub stream_errors: Counter,
    /// Endpoints in the discovery inventory, declared or not.
    pub endpoints: Family<EndpointLabels, Gauge>,
    /// Inventory pushes to the operator, by result.
    pub pushes: Family<ResultLabels, Counter>,
    /// Scanned responses in which a class of sensitive data was found.
    pub sensitive: Family<SensitiveLabels, Counter>,
    /// Keys that crossed a runtime detector's threshold.
    pub detections: Family<DetectionLabels, Counter>,
    /// Keys blocked now.
    pub active_blocks: Family<PolicyLabels, Gauge>,
    /// Requests from blocked keys.
    pub blocked: Family<BlockedLabels, Counter>,
    /// Traffic anomalies the baseline raised.
    pub anomalies: Family<PolicyLabels, Counter>,
    /// Shared-state operations of runtime detection that failed (detection went on locally).
    pub shared_errors: Family<OperationLabels, Counter>,
}

impl SensorMetrics {
    pub fn register(metrics: &Metrics) -> Self {
        let this = SensorMetrics {
            requests: Family::default(),
            responses: Family::default(),
            reloads: Family::default(),
            processing: Family::new_with_constructor(|| Histogram::new(PROCESSING_BUCKETS)),
            stream_errors: Counter::default(),
            endpoints: Family::default(),
            pushes: Family::default(),
            sensitive: Family::default(),
            detections: Family::default(),
            active_blocks: Family::default(),
            blocked: Family::default(),
            anomalies: Family::default(),
            shared_errors: Family::default(),
        };
        metrics.register(
            "apiguard_sensor_requests",
            "Requests checked against the API contract, by policy and decision",
            this.requests.clone(),
        );
        metrics.register(
            "apiguard_sensor_responses",
            "Responses of declared operations checked against the API contract, by policy and action",
            this.responses.clone(),
        );
        metrics.register(
            "apiguard_sensor_config_reloads",
            "Loads of sensor.yaml, by result (a failed load keeps the last good config)",
            this.reloads.clone(),
        );
        metrics.register(
            "apiguard_sensor_processing_seconds",
            "Time to process one ext_proc message, by point of the exchange",
            this.processing.clone(),
        );
        metrics.register(
            "apiguard_sensor_stream_errors",
            "ext_proc streams that ended with an error",
            this.stream_errors.clone(),
        );
        metrics.register(
            "apiguard_endpoints",
            "Endpoints in the discovery inventory (method and path template), by policy and whether the policy declares them",
            this.endpoints.clone(),
        );
        metrics.register(
            "apiguard_sensor_pushes",
            "Pushes of the discovery inventory to the operator, by result (accepted, refused, error)",
            this.pushes.clone(),
        );
        metrics.register(
            "apiguard_sensitive_responses",
            "JSON responses scanned for sensitive data (spec.discovery.sensitiveData) in which a class was found, by policy and class",
            this.sensitive.clone(),
        );
        metrics.register(
            "apiguard_detections",
            "Keys that crossed a runtime detector's threshold (spec.runtime.detectors), by policy, detector and action",
            this.detections.clone(),
        );
        metrics.register(
            "apiguard_active_blocks",
            "Keys a Block detector refuses now, by policy",
            this.active_blocks.clone(),
        );
        metrics.register(
            "apiguard_blocked_requests",
            "Requests from keys a Block detector blocks, by policy, detector and decision (refused, or audited in Audit)",
            this.blocked.clone(),
        );
        metrics.register(
            "apiguard_traffic_anomalies",
            "Sustained deviations from an endpoint's learned traffic baseline (spec.runtime.baseline), by policy",
            this.anomalies.clone(),
        );
        metrics.register(
            "apiguard_shared_detection_errors",
            "Operations of runtime detection on the shared state (Redis) that failed, by operation (count, publish, poll); detection went on per replica",
            this.shared_errors.clone(),
        );
        this
    }

    /// Counts a failed shared-state operation of runtime detection.
    pub fn shared_error(&self, operation: &'static str) {
        self.shared_errors
            .get_or_create(&OperationLabels { operation })
            .inc();
    }

    /// Counts and logs detections (one JSON-able line each: the detector, the key as shown,
    /// the count, the block's end).
    pub(crate) fn record_detections(&self, policy: &str, detections: &[Detection]) {
        for d in detections {
            let action = match d.action {
                Action::Alert => "alert",
                Action::Block => "block",
            };
            self.detections
                .get_or_create(&DetectionLabels {
                    policy: policy.to_string(),
                    detector: d.detector.clone(),
                    action,
                })
                .inc();
            tracing::warn!(
                policy,
                detector = d.detector,
                key = d.key,
                key_kind = %serde_json::to_value(d.key_kind).unwrap_or_default().as_str().unwrap_or(""),
                key_name = d.key_name.as_deref().unwrap_or(""),
                count = d.count,
                window_seconds = d.window_seconds,
                action,
                blocked_until = d.blocked_until_ms.map(crate::detect::format_ms).unwrap_or_default(),
                "detection: {d}"
            );
        }
    }

    /// Counts and logs traffic anomalies.
    pub(crate) fn record_anomalies(&self, policy: &str, anomalies: &[Anomaly]) {
        for a in anomalies {
            self.anomalies
                .get_or_create(&PolicyLabels {
                    policy: policy.to_string(),
                })
                .inc();
            tracing::warn!(
                policy,
                endpoint = a.endpoint,
                factor = a.factor,
                rate_per_minute = a.rate_per_minute,
                baseline_per_minute = a.baseline_per_minute,
                minutes = a.minutes,
                "traffic anomaly: {} at {:.1}x its baseline for {} minutes",
                a.endpoint,
                a.factor,
                a.minutes
            );
        }
    }

    /// Sets the active-blocks gauge.
    pub fn set_active_blocks(&self, policy: &str, n: usize) {
        self.active_blocks
            .get_or_create(&PolicyLabels {
                policy: policy.to_string(),
            })
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The inventory's size: `declared` and undeclared (shadow) endpoints of `policy`.
    pub fn set_endpoints(&self, policy: &str, declared: usize, undeclared: usize) {
        for (label, n) in [("true", declared), ("false", undeclared)] {
            self.endpoints
                .get_or_create(&EndpointLabels {
                    policy: policy.to_string(),
                    declared: label,
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// Counts and logs what the stages did.
    pub(crate) fn record(&self, policy: &str, events: &[Event]) {
        for event in events {
            match event {
                Event::Request {
                    operation,
                    verdict,
                    errors,
                } => {
                    self.requests
                        .get_or_create(&RequestLabels {
                            policy: policy.to_string(),
                            decision: verdict.label(),
                        })
                        .inc();
                    log_request(policy, operation.as_deref(), *verdict, errors);
                }
                Event::Response {
                    operation,
                    status,
                    verdict,
                    removed,
                    violations,
                } => {
                    self.responses
                        .get_or_create(&ResponseLabels {
                            policy: policy.to_string(),
                            action: verdict.label(),
                        })
                        .inc();
                    log_response(policy, operation, *status, *verdict, removed, violations);
                }
                // The method and path are not logged: only the classes found.
                Event::Sensitive { found, .. } => {
                    for (class, _) in found.classes() {
                        self.sensitive
                            .get_or_create(&SensitiveLabels {
                                policy: policy.to_string(),
                                class: class.as_str(),
                            })
                            .inc();
                    }
                    log_scan(policy, found);
                }
                Event::Blocked { detector, audited } => {
                    let decision = if *audited { "audited" } else { "refused" };
                    self.blocked
                        .get_or_create(&BlockedLabels {
                            policy: policy.to_string(),
                            detector: detector.clone(),
                            decision,
                        })
                        .inc();
                    tracing::debug!(policy, detector, decision, "runtime: blocked key");
                }
            }
        }
    }
}

/// `body/role:readOnly,query/limit:maximum`.
fn locations(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| format!("{}:{}", e.location, e.reason))
        .collect::<Vec<_>>()
        .join(",")
}

fn log_request(
    policy: &str,
    operation: Option<&str>,
    verdict: RequestVerdict,
    errors: &[FieldError],
) {
    let operation = operation.unwrap_or("");
    match verdict {
        RequestVerdict::Refused | RequestVerdict::UndeclaredRefused => tracing::info!(
            policy,
            operation,
            decision = verdict.label(),
            locations = %locations(errors),
            "contract: request refused"
        ),
        RequestVerdict::Audited | RequestVerdict::UndeclaredAudited => tracing::warn!(
            policy,
            operation,
            decision = verdict.label(),
            locations = %locations(errors),
            "contract: request would be refused (audit); let through"
        ),
        _ => tracing::debug!(
            policy,
            operation,
            decision = verdict.label(),
            "contract: request"
        ),
    }
}

fn log_response(
    policy: &str,
    operation: &str,
    status: u16,
    verdict: ResponseVerdict,
    removed: &[FieldError],
    violations: &[FieldError],
) {
    if removed.is_empty() && violations.is_empty() && verdict != ResponseVerdict::TooLarge {
        tracing::debug!(
            policy,
            operation,
            status,
            action = verdict.label(),
            "contract: response"
        );
        return;
    }
    tracing::info!(
        policy,
        operation,
        status,
        action = verdict.label(),
        removed = %locations(removed),
        violations = %locations(violations),
        "contract: response"
    );
}

/// A scanned response: the classes found and their counts (`email:2,payment_card:1`), never
/// a value, nor the path (it holds ids).
fn log_scan(policy: &str, found: &Sensitive) {
    let classes = found
        .classes()
        .map(|(c, n)| format!("{}:{n}", c.as_str()))
        .collect::<Vec<_>>()
        .join(",");
    tracing::debug!(
        policy,
        classes,
        "discovery: response scanned for sensitive data"
    );
}
