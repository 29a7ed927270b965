//! The edge of the discovery intake: `POST /v1/discovery` on the webhook's HTTPS endpoint.
//!
//! Per push: the client certificate (verified by the TLS server, its SPIFFE ID in
//! [`PeerIdentity`]) must be the policy's gateway identity; the policy's push budget must
//! allow it; the policy must exist. Then the merged view goes to the apiserver: the
//! PolicyReport `apiguard-<policy>` (server-side applied only when it changed, owned by the
//! policy so it goes with it), `status.discovery` (server-side applied under its own field
//! manager, so the reconcile's status writes keep it), and an Event per new shadow endpoint.
//! A policy with `spec.discovery.enabled: false` (or a push marked `discovery: false`) gets
//! none of these.
//!
//! A push's runtime report ([`super::runtime`]) gives one Event per new incident
//! (`AbuseDetected`, `ClientBlocked`, `TrafficAnomaly`) and `status.runtime` (field manager
//! `apiguard-runtime`). Each Event is named after what it announces and carries it in an
//! annotation: creating it again finds the first one (`409`), and an intake's first push of a
//! policy reads the policy's Events back, so neither a restart nor another operator replica
//! announces an incident twice.

use super::runtime::{Announcement, check, runtime_status};
use super::{
    Intake, IntakeLimits, Refusal, SHADOW_EVENT_REASON, authorize, carried_over, reported_shadow,
    results, status_of,
};
use crate::admin::Metrics;
use crate::api::ApiSecurityPolicy;
use crate::api::names::annotations::{ANNOUNCED, DECLARATIONS};
use crate::api::names::field_managers::{DISCOVERY, RUNTIME};
use crate::api::names::{discovery_report_name, labels, runtime_event_name};
use crate::discovery::push::{MAX_PUSH_BYTES, PUSH_PATH, Push, PushAnswer, RuntimeReport};
use crate::reports::{ReportBuilder, ReportWriter, Timestamp};
use crate::webhook::server::PeerIdentity;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::ListParams;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Resource, ResourceExt};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

/// Labels of `apiguard_discovery_pushes_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PushLabels {
    /// accepted, unauthenticated, forbidden, invalid, not_found, rate_limited, error.
    result: &'static str,
}

/// Labels of `apiguard_runtime_events_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    /// AbuseDetected, ClientBlocked, TrafficAnomaly.
    reason: &'static str,
}

/// The intake's metrics.
#[derive(Clone, Default)]
pub struct IntakeMetrics {
    pushes: Family<PushLabels, Counter>,
    runtime_events: Family<ReasonLabels, Counter>,
}

impl IntakeMetrics {
    /// Registers `apiguard_discovery_pushes_total{result}` and
    /// `apiguard_runtime_events_total{reason}` in `metrics`.
    pub fn register(metrics: &Metrics) -> Self {
        let this = Self::default();
        metrics.register(
            "apiguard_discovery_pushes",
            "Inventory pushes of gateway sensors received by this replica, by result",
            this.pushes.clone(),
        );
        metrics.register(
            "apiguard_runtime_events",
            "Events this replica published for gateway detections and anomalies, by reason",
            this.runtime_events.clone(),
        );
        this
    }

    /// Counts one push with `result`.
    pub fn count(&self, result: &'static str) {
        self.pushes.get_or_create(&PushLabels { result }).inc();
    }

    /// Counts one Event published for a detection or anomaly with `reason`
    /// ([`super::runtime::ABUSE_EVENT_REASON`], …).
    pub fn announced(&self, reason: &str) {
        let reason = match reason {
            super::runtime::ABUSE_EVENT_REASON => super::runtime::ABUSE_EVENT_REASON,
            super::runtime::BLOCK_EVENT_REASON => super::runtime::BLOCK_EVENT_REASON,
            _ => super::runtime::ANOMALY_EVENT_REASON,
        };
        self.runtime_events
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }
}

/// What the route needs.
pub struct IntakeService {
    client: kube::Client,
    trust_domain: String,
    /// This replica (its pod name), as Events name their reporting instance.
    instance: String,
    writer: ReportWriter,
    recorder: Recorder,
    metrics: IntakeMetrics,
    intake: Mutex<Intake>,
}

impl IntakeService {
    /// The intake of one operator replica (`instance`, its pod name, in Events).
    pub fn new(
        client: kube::Client,
        trust_domain: String,
        instance: String,
        limits: IntakeLimits,
        metrics: IntakeMetrics,
    ) -> Self {
        let reporter = Reporter {
            controller: "apiguard".into(),
            instance: Some(instance.clone()),
        };
        IntakeService {
            writer: ReportWriter::new(client.clone(), DISCOVERY),
            recorder: Recorder::new(client.clone(), reporter),
            client,
            trust_domain,
            instance,
            metrics,
            intake: Mutex::new(Intake::new(limits)),
        }
    }
}

/// The route `POST /v1/discovery`, with its body limit.
pub fn router(service: Arc<IntakeService>) -> Router {
    Router::new()
        .route(PUSH_PATH, post(push))
        .layer(DefaultBodyLimit::max(MAX_PUSH_BYTES))
        .with_state(service)
}

/// An answer with a JSON [`PushAnswer`] body.
fn answer(status: StatusCode, message: impl Into<String>) -> Response {
    let body = PushAnswer {
        accepted: status == StatusCode::ACCEPTED,
        message: message.into(),
    };
    (status, axum::Json(body)).into_response()
}

fn refused(service: &IntakeService, refusal: &Refusal) -> Response {
    let (status, label) = match refusal {
        Refusal::NoCertificate => (StatusCode::UNAUTHORIZED, "unauthenticated"),
        Refusal::NoSpiffeId | Refusal::WrongIdentity { .. } => (StatusCode::FORBIDDEN, "forbidden"),
        Refusal::InvalidPolicy(_) => (StatusCode::BAD_REQUEST, "invalid"),
        Refusal::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
    };
    service.metrics.count(label);
    tracing::info!(result = label, reason = %refusal, "discovery push refused");
    let mut response = answer(status, refusal.to_string());
    if let Refusal::RateLimited {
        retry_after_seconds,
        ..
    } = refusal
        && let Ok(v) = HeaderValue::from_str(&retry_after_seconds.to_string())
    {
        response.headers_mut().insert(header::RETRY_AFTER, v);
    }
    response
}

async fn push(
    State(service): State<Arc<IntakeService>>,
    peer: Option<axum::Extension<PeerIdentity>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let peer = peer.map(|p| p.0).unwrap_or_default();
    if !peer.certificate {
        return refused(&service, &Refusal::NoCertificate);
    }
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            service.metrics.count("invalid");
            let status = rejection.status();
            return answer(
                status,
                format!("cannot read the push: {}", rejection.body_text()),
            );
        }
    };
    let push: Push = match serde_json::from_slice(&body) {
        Ok(push) => push,
        Err(e) => {
            service.metrics.count("invalid");
            return answer(
                StatusCode::BAD_REQUEST,
                format!("not a discovery push: {e}"),
            );
        }
    };
    let (namespace, name) = (push.namespace.clone(), push.name.clone());
    if let Err(refusal) = authorize(
        peer.certificate,
        peer.spiffe_id.as_deref(),
        &service.trust_domain,
        &namespace,
        &name,
    ) {
        return refused(&service, &refusal);
    }
    if let Some(Err(e)) = push.runtime.as_ref().map(check) {
        service.metrics.count("invalid");
        return answer(
            StatusCode::BAD_REQUEST,
            format!("not a discovery push: {e}"),
        );
    }
    let admitted = service
        .intake
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .admit(&namespace, &name, now_ms());
    if let Err(refusal) = admitted {
        return refused(&service, &refusal);
    }
    match record(&service, push).await {
        Ok(Some(message)) => {
            service.metrics.count("accepted");
            answer(StatusCode::ACCEPTED, message)
        }
        Ok(None) => {
            service.metrics.count("not_found");
            service
                .intake
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .forget(&namespace, &name);
            answer(
                StatusCode::NOT_FOUND,
                format!("ApiSecurityPolicy {namespace}/{name} not found"),
            )
        }
        Err(e) => {
            service.metrics.count("error");
            tracing::warn!(policy = %format!("{namespace}/{name}"), error = %e, "discovery push not recorded");
            answer(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not recorded, retry later: {e}"),
            )
        }
    }
}

fn now_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .unwrap_or(i64::MAX)
}

/// Writes what `push` changes; `None` when the policy does not exist. Returns what was done.
async fn record(service: &IntakeService, mut push: Push) -> Result<Option<String>, kube::Error> {
    let (namespace, name) = (push.namespace.clone(), push.name.clone());
    let policies: Api<ApiSecurityPolicy> = Api::namespaced(service.client.clone(), &namespace);
    let Some(policy) = policies.get_opt(&name).await? else {
        return Ok(None);
    };
    let runtime = push.runtime.take();
    let reporter = push.reporter.clone();
    let mut done = Vec::new();
    if push.discovery && policy.spec.discovery().enabled {
        done.push(record_discovery(service, &policies, &policy, push).await?);
    }
    let had_runtime = policy.status.as_ref().is_some_and(|s| s.runtime.is_some());
    if runtime.is_some() || had_runtime {
        done.push(record_runtime(service, &policies, &policy, &reporter, runtime.as_ref()).await?);
    }
    if done.is_empty() {
        done.push(
            "nothing recorded: discovery is off for this policy and the push has no runtime report"
                .into(),
        );
    }
    Ok(Some(done.join("; ")))
}

/// Writes the discovery part of `push`: the PolicyReport, `status.discovery`, Events of new
/// shadow endpoints.
async fn record_discovery(
    service: &IntakeService,
    policies: &Api<ApiSecurityPolicy>,
    policy: &ApiSecurityPolicy,
    push: Push,
) -> Result<String, kube::Error> {
    let (namespace, name) = (push.namespace.clone(), push.name.clone());
    let report_name = discovery_report_name(&name);
    let stored = service.writer.get(&namespace, &report_name).await?;
    let known = reported_shadow(stored.as_ref());
    let taken = service
        .intake
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take(push, &known, now_ms());
    let object = policy.object_ref(&());
    let fresh = results(&object, &taken.endpoints);
    let kept = carried_over(stored.as_ref(), &taken.declarations, &fresh);
    let mut builder = ReportBuilder::new(&namespace, &report_name)
        .label(labels::REPORT, labels::REPORT_DISCOVERY)
        .label(labels::POLICY, &name);
    builder.extend(fresh);
    builder.extend(kept);
    let mut desired = builder.build(stored.as_ref(), Timestamp::now());
    desired.metadata.annotations = Some(BTreeMap::from([(
        DECLARATIONS.to_owned(),
        taken.declarations.clone(),
    )]));
    desired.metadata.owner_references = policy.owner_ref(&()).map(|o| vec![o]);
    let same_declarations = stored
        .as_ref()
        .and_then(|s| s.metadata.annotations.as_ref())
        .and_then(|a| a.get(DECLARATIONS))
        .is_some_and(|d| *d == taken.declarations);
    // New declarations are written even when the results happen to be the same.
    let compare_with = stored.as_ref().filter(|_| same_declarations);
    let written = match service.writer.apply(&desired, compare_with).await {
        Ok((written, _)) => written.as_str(),
        // The PolicyReport CRDs are not installed (policyReports.installCRDs=false and no
        // other engine brought them): status and Events still tell.
        Err(kube::Error::Api(s)) if s.code == 404 => {
            tracing::warn!(
                policy = %format!("{namespace}/{name}"),
                "PolicyReport apiguard-{name} not written: the wgpolicyk8s.io/v1alpha2 PolicyReport CRD is not installed"
            );
            "no_crd"
        }
        Err(e) => return Err(e),
    };
    let report_time = crate::identity::rfc3339(time::OffsetDateTime::now_utc());
    let discovery = status_of(&taken.endpoints, &desired.results, report_time);
    let patch = serde_json::json!({
        "apiVersion": ApiSecurityPolicy::api_version(&()),
        "kind": ApiSecurityPolicy::kind(&()),
        "status": { "discovery": discovery },
    });
    policies
        .patch_status(
            &name,
            &PatchParams::apply(DISCOVERY).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    for endpoint in &taken.new_shadow {
        let event = Event {
            type_: EventType::Warning,
            reason: SHADOW_EVENT_REASON.into(),
            note: Some(format!(
                "{endpoint} is called but not declared (shadow endpoint): declare it in spec.authorization.rules or the OpenAPI document, or stop serving it"
            )),
            action: "Discover".into(),
            secondary: None,
        };
        if let Err(e) = service.recorder.publish(&event, &object).await {
            tracing::warn!(policy = %format!("{namespace}/{}", policy.name_any()), error = %e, "could not publish a ShadowEndpoint Event");
        }
    }
    tracing::info!(
        policy = %format!("{namespace}/{name}"),
        endpoints = discovery.endpoints,
        undeclared = discovery.undeclared,
        sensitive = discovery.sensitive,
        new_shadow = taken.new_shadow.len(),
        report = written,
        "discovery push recorded"
    );
    Ok(format!(
        "recorded: {} endpoints, {} undeclared, {} with sensitive data",
        discovery.endpoints, discovery.undeclared, discovery.sensitive
    ))
}

/// Writes the runtime part of a push from `reporter` (`None`: it reports no detections): an
/// Event per new incident, `status.runtime`.
async fn record_runtime(
    service: &IntakeService,
    policies: &Api<ApiSecurityPolicy>,
    policy: &ApiSecurityPolicy,
    reporter: &str,
    report: Option<&RuntimeReport>,
) -> Result<String, kube::Error> {
    let namespace = policy.namespace().unwrap_or_default();
    let name = policy.name_any();
    let events: Api<K8sEvent> = Api::namespaced(service.client.clone(), &namespace);
    let seeded = service
        .intake
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .runtime_seeded(&namespace, &name);
    if !seeded {
        let selector = format!(
            "{}={name},{}={}",
            labels::POLICY,
            labels::ANNOUNCEMENT,
            labels::ANNOUNCEMENT_RUNTIME
        );
        match events.list(&ListParams::default().labels(&selector)).await {
            Ok(existing) => {
                let announced: Vec<Announcement> = existing
                    .items
                    .iter()
                    .filter_map(|e| e.metadata.annotations.as_ref()?.get(ANNOUNCED))
                    .filter_map(|text| Announcement::from_annotation(text))
                    .collect();
                service
                    .intake
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .seed_runtime(&namespace, &name, announced, now_ms());
            }
            // Not fatal: an Event that exists is still found when created again (409), and
            // the next push reads them again.
            Err(e) => {
                tracing::warn!(policy = %format!("{namespace}/{name}"), error = %e, "could not read back the policy's runtime Events (RBAC: list events.k8s.io events)");
            }
        }
    }
    let taken = service
        .intake
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take_runtime(&namespace, &name, reporter, report, now_ms());
    let object = policy.object_ref(&());
    let mut published = Vec::new();
    for announcement in taken.announce {
        let event = runtime_event(&service.instance, &name, &object, &announcement);
        match events.create(&Default::default(), &event).await {
            Ok(_) => {
                service.metrics.announced(&announcement.reason);
                published.push(announcement);
            }
            // Announced already: by this replica before a restart, or by another replica.
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => {
                tracing::warn!(policy = %format!("{namespace}/{name}"), reason = %announcement.reason, error = %e, "could not publish a runtime Event");
            }
        }
    }
    let previous = policy.status.as_ref().and_then(|s| s.runtime.as_ref());
    let status = runtime_status(previous, &published, taken.active_blocks, now_ms());
    let patch = serde_json::json!({
        "apiVersion": ApiSecurityPolicy::api_version(&()),
        "kind": ApiSecurityPolicy::kind(&()),
        "status": { "runtime": status },
    });
    policies
        .patch_status(
            &name,
            &PatchParams::apply(RUNTIME).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    tracing::info!(
        policy = %format!("{namespace}/{name}"),
        announced = published.len(),
        active_blocks = status.active_blocks,
        detections = status.detections,
        anomalies = status.anomalies,
        "runtime report recorded"
    );
    Ok(format!(
        "runtime: {} announced, {} blocks in force",
        published.len(),
        status.active_blocks
    ))
}

/// The Event announcing `announcement` about `policy` (`object`), named after what it
/// announces ([`Announcement::id`]) and carrying it in its annotation.
fn runtime_event(
    instance: &str,
    policy: &str,
    object: &ObjectReference,
    announcement: &Announcement,
) -> K8sEvent {
    K8sEvent {
        metadata: ObjectMeta {
            name: Some(runtime_event_name(policy, &announcement.id())),
            namespace: object.namespace.clone(),
            labels: Some(BTreeMap::from([
                (labels::POLICY.to_owned(), policy.to_owned()),
                (
                    labels::ANNOUNCEMENT.to_owned(),
                    labels::ANNOUNCEMENT_RUNTIME.to_owned(),
                ),
            ])),
            annotations: Some(BTreeMap::from([(
                ANNOUNCED.to_owned(),
                announcement.annotation(),
            )])),
            ..Default::default()
        },
        event_time: Some(MicroTime(jiff::Timestamp::now())),
        action: Some("Detect".into()),
        reason: Some(announcement.reason.clone()),
        note: Some(announcement.note.clone()),
        regarding: Some(object.clone()),
        reporting_controller: Some("apiguard".into()),
        reporting_instance: Some(instance.to_owned()),
        type_: Some("Warning".into()),
        ..Default::default()
    }
}
