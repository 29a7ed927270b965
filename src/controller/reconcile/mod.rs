//! The reconcile shell: fetch inputs, call the pure core (validation, identity, renderer,
//! conditions), server-side apply the children, prune, write status.
//!
//! - this module: the context, errors, and one reconcile: accept -> program -> status.
//! - `program`: the phases that program an accepted policy.
//! - `inputs`: the target Service and its service account, the Secrets the spec names.
//! - `children`: the child kinds, and the child set that applies and prunes them.
//! - `halt`: how a phase stops early (a condition to report, or an error to retry).

mod children;
mod halt;
mod inputs;
mod program;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use time::OffsetDateTime;

use children::ChildSet;
pub use children::ChildStores;

use super::conditions::{self, Outcome, Reason, State, Verdict};
use super::gateway::GatewayRenderer;
use super::metrics::{ControllerMetrics, Health};
use super::ownership::conflicting_winner;
use crate::api::names::field_managers;
use crate::api::validate::validate_spec;
use crate::api::{ApiSecurityPolicy, ApiSecurityPolicyStatus, Isolation};
use crate::identity::CertificateAuthority;
use crate::identity::secrets::ca_from_secret;
use program::Programmed;

/// How long to wait before looking again when nothing schedules an earlier look (a safety
/// net against missed watch events; certificates requeue at their own renew time).
pub(crate) const RESYNC: Duration = Duration::from_secs(3600);

/// Controller settings (from `apiguard run` flags).
#[derive(Debug, Clone)]
pub struct Config {
    /// Namespace of the operator (CA Secret, Lease).
    pub operator_namespace: String,
    /// SPIFFE trust domain of issued identities.
    pub trust_domain: String,
    /// Name of the CA Secret in the operator namespace.
    pub ca_secret: String,
    /// Lifetime of issued leaf certificates.
    pub leaf_lifetime: time::Duration,
    /// Reconciles running at once (0: unbounded). Bounded so a burst of new policies does not
    /// become a burst of thousands of concurrent API calls.
    pub concurrency: u16,
    /// How long a reconcile request waits for more events about the same policy (its children's
    /// watch echoes arrive together), so one reconcile answers them all.
    pub debounce: Duration,
    /// How long both roots are trusted in a CA rotation before the new CA issues
    /// (`--ca-rotation-propagation`).
    pub ca_rotation_propagation: Duration,
}

impl Config {
    /// Default reconcile concurrency.
    pub const DEFAULT_CONCURRENCY: u16 = 16;
    /// Default debounce.
    pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(100);
    /// Default CA rotation propagation time.
    pub const DEFAULT_CA_ROTATION_PROPAGATION: Duration = Duration::from_secs(600);
}

/// Caches of what a policy reads: every Service (full, for the target's selector and ports)
/// and every Pod reduced to its labels and service account (the target's identity).
#[derive(Clone)]
pub struct InputStores {
    pub services: Store<Service>,
    pub pods: Store<Pod>,
}

/// What reconcile shares between calls: what it was built from, and what it remembers.
pub struct Context {
    pub settings: ContextSettings,
    /// (content hash, fingerprint) of each child as last applied: an unchanged child whose
    /// fingerprint is still the one our write produced is not sent again.
    applied: Mutex<HashMap<String, (u64, String)>>,
    /// Consecutive failures per policy, for exponential backoff.
    failures: Mutex<HashMap<String, u32>>,
    ca: Mutex<Option<(String, Arc<CertificateAuthority>)>>,
}

/// Everything a [`Context`] is built from: the client, the settings, the renderer, the caches
/// and where metrics, health and Events go.
pub struct ContextSettings {
    pub client: kube::Client,
    pub config: Config,
    pub renderer: Arc<dyn GatewayRenderer>,
    pub policies: Store<ApiSecurityPolicy>,
    pub children: ChildStores,
    pub inputs: InputStores,
    /// Cache of the CA Secret in the operator namespace.
    pub ca_secret: Store<Secret>,
    /// Where Events go (`None`: not published).
    pub recorder: Option<Recorder>,
    pub metrics: Arc<ControllerMetrics>,
    pub health: Arc<Health>,
}

impl Context {
    pub fn new(settings: ContextSettings) -> Self {
        Self {
            settings,
            applied: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            ca: Mutex::new(None),
        }
    }
}

/// Reconcile failures. Each variant has a fixed metric label.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {kind} {namespace}/{name}: {source}")]
    Read {
        kind: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("applying {kind} {namespace}/{name}: {source}")]
    Apply {
        kind: String,
        namespace: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("deleting {kind} {namespace}/{name}: {source}")]
    Delete {
        kind: String,
        namespace: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("writing status of ApiSecurityPolicy {namespace}/{name}: {source}")]
    Status {
        namespace: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("CA Secret {namespace}/{name}: {message}")]
    Ca {
        namespace: String,
        name: String,
        message: String,
    },
    #[error("ApiSecurityPolicy {namespace}/{name} has no uid (not read from the apiserver?)")]
    Incomplete { namespace: String, name: String },
    #[error("the controller's caches were dropped before they synced (shutting down)")]
    CachesClosed,
    #[error("{0} child object(s) could not be applied; see the policy's conditions")]
    ChildrenFailed(usize),
}

impl Error {
    /// Bounded metric label.
    pub(crate) fn metric_label(&self) -> &'static str {
        match self {
            Error::Read { .. } => "read_failed",
            Error::Apply { .. } | Error::ChildrenFailed(_) => "apply_failed",
            Error::Delete { .. } => "prune_failed",
            Error::Status { .. } => "status_failed",
            Error::Ca { .. } => "ca_unavailable",
            Error::Incomplete { .. } => "invalid_object",
            Error::CachesClosed => "caches_closed",
        }
    }
}

impl Context {
    fn ca(&self, now: OffsetDateTime) -> Result<Arc<CertificateAuthority>, Error> {
        let ns = &self.settings.config.operator_namespace;
        let name = &self.settings.config.ca_secret;
        let ca_err = |message: String| Error::Ca {
            namespace: ns.clone(),
            name: name.clone(),
            message,
        };
        let secret = self
            .settings
            .ca_secret
            .get(&ObjectRef::new(name).within(ns))
            .ok_or_else(|| ca_err("not found (the operator creates it at start-up)".into()))?;
        let rv = secret.resource_version().unwrap_or_default();
        let mut cached = self.ca.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((seen, ca)) = cached.as_ref()
            && *seen == rv
        {
            return Ok(ca.clone());
        }
        let ca = Arc::new(ca_from_secret(&secret, now).map_err(|e| ca_err(e.to_string()))?);
        *cached = Some((rv, ca.clone()));
        Ok(ca)
    }

    async fn publish(&self, policy: &ApiSecurityPolicy, ev: KubeEvent) {
        if let Some(recorder) = &self.settings.recorder
            && let Err(e) = recorder.publish(&ev, &policy.object_ref(&())).await
        {
            tracing::warn!(error = %e, reason = ev.reason, "could not publish Event");
        }
    }
}

/// Reconciles one policy, recording metrics and the in-flight marker for liveness.
pub async fn reconcile(policy: Arc<ApiSecurityPolicy>, ctx: Arc<Context>) -> Result<Action, Error> {
    let key = policy_key(&policy);
    let start = Instant::now();
    ctx.settings.health.started(&key, start);
    let result = reconcile_inner(&policy, &ctx, OffsetDateTime::now_utc()).await;
    ctx.settings.health.finished(&key);
    let label = match &result {
        Ok(_) => {
            ctx.failures
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key);
            "success"
        }
        Err(e) => e.metric_label(),
    };
    ctx.settings.metrics.reconciled(label, start.elapsed());
    result
}

/// Delay before retry `attempt` (1-based): 1 s doubling up to 5 minutes.
pub(crate) fn backoff(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.saturating_sub(1).min(9)).min(Duration::from_secs(300))
}

/// Backs off per object after an error (exponentially, reset by a success).
pub(crate) fn error_policy(
    policy: Arc<ApiSecurityPolicy>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    let key = policy_key(&policy);
    let attempt = {
        let mut f = ctx.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = f.entry(key).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    let delay = backoff(attempt);
    tracing::warn!(
        policy.namespace = policy.namespace().unwrap_or_default(),
        policy.name = policy.name_any(),
        error = %error,
        attempt,
        retry_in_s = delay.as_secs(),
        "reconcile failed"
    );
    Action::requeue(delay)
}

/// `namespace/name` of a policy: its key in metrics, health and backoff.
fn policy_key(policy: &ApiSecurityPolicy) -> String {
    format!(
        "{}/{}",
        policy.namespace().unwrap_or_default(),
        policy.name_any()
    )
}

/// One reconcile: accept -> program (or refuse) -> status.
async fn reconcile_inner(
    policy: &ApiSecurityPolicy,
    ctx: &Context,
    now: OffsetDateTime,
) -> Result<Action, Error> {
    let key = policy_key(policy);
    if policy.metadata.deletion_timestamp.is_some() {
        // Children go with it through their ownerRefs (garbage collection).
        ctx.settings
            .metrics
            .forget_policy(&key, now.unix_timestamp());
        return Ok(Action::await_change());
    }
    // Answers from caches that have not listed yet would be wrong (TargetNotFound, the
    // "default" service account): wait for them (immediate once synced).
    if ctx
        .settings
        .inputs
        .services
        .wait_until_ready()
        .await
        .is_err()
        || ctx.settings.inputs.pods.wait_until_ready().await.is_err()
    {
        return Err(Error::CachesClosed);
    }
    let Some(owner) = policy.controller_owner_ref(&()) else {
        return Err(Error::Incomplete {
            namespace: policy.namespace().unwrap_or_default(),
            name: policy.name_any(),
        });
    };
    let accepted = accept(ctx, policy);
    let Programmed {
        outcome,
        gateway_status,
        cert_status,
        expiries,
        requeue,
        failures,
    } = if accepted.state == State::True {
        program::program(ctx, policy, &owner, accepted, now).await?
    } else {
        refuse(ctx, policy, &owner, accepted).await?
    };
    let status = conditions::status(
        &outcome,
        policy.status.as_ref(),
        policy.metadata.generation,
        gateway_status,
        cert_status,
        &time_of(now),
    );
    update_status(ctx, policy, &status, outcome.isolation_disabled).await?;
    ctx.settings
        .metrics
        .observe_policy(&key, &status.conditions, expiries, now.unix_timestamp());
    if failures > 0 {
        return Err(Error::ChildrenFailed(failures));
    }
    Ok(Action::requeue(requeue))
}

/// Accepted: the spec's invariants, then the one-policy-per-Service rule.
fn accept(ctx: &Context, policy: &ApiSecurityPolicy) -> Verdict {
    let ns = policy.namespace().unwrap_or_default();
    let spec = &policy.spec;
    let violations = validate_spec(spec);
    let all_policies = ctx.settings.policies.state();
    let winner = conflicting_winner(policy, all_policies.iter().map(|p| p.as_ref()));
    if !violations.is_empty() {
        let msgs: Vec<String> = violations
            .iter()
            .map(|v| format!("{} (at {})", v.message(), v.field))
            .collect();
        Verdict::fail(Reason::Invalid, msgs.join("; "))
    } else if let Some(w) = winner {
        Verdict::fail(
            Reason::Conflict,
            format!(
                "Service {ns}/{} is already protected by the older ApiSecurityPolicy {ns}/{}; only one policy may target a Service",
                spec.target.service,
                w.name_any()
            ),
        )
    } else {
        Verdict::ok(Reason::Accepted, "the policy is valid")
    }
}

/// A policy that is not accepted. A Conflict's loser must not run a second gateway for the same
/// Service: its children are pruned. An invalid edit leaves the last accepted objects in place.
async fn refuse(
    ctx: &Context,
    policy: &ApiSecurityPolicy,
    owner: &OwnerReference,
    accepted: Verdict,
) -> Result<Programmed, Error> {
    if accepted.reason == Reason::Conflict {
        ChildSet::new(ctx, policy, owner).prune_orphans().await?;
    }
    let why = "the policy is not accepted";
    let pending = || Verdict::unknown(Reason::Pending, why);
    Ok(Programmed::nothing_applied(Outcome {
        accepted,
        programmed: Verdict::fail(Reason::NotAccepted, why),
        certificates: pending(),
        network: pending(),
        contract: None,
        isolation_disabled: policy.spec.network().isolation == Isolation::None,
    }))
}

/// `now` as a Kubernetes timestamp.
fn time_of(now: OffsetDateTime) -> Time {
    Time(
        k8s_openapi::jiff::Timestamp::from_second(now.unix_timestamp())
            .unwrap_or_else(|_| k8s_openapi::jiff::Timestamp::now()),
    )
}

/// Writes `status` only when it says something new, and publishes one Event for its
/// transitions.
async fn update_status(
    ctx: &Context,
    policy: &ApiSecurityPolicy,
    status: &ApiSecurityPolicyStatus,
    isolation_disabled: bool,
) -> Result<(), Error> {
    let previous = policy.status.as_ref();
    if previous.is_some_and(|p| conditions::equivalent(p, status)) {
        return Ok(());
    }
    write_status(ctx, policy, status).await?;
    let before = previous.map(|s| s.conditions.clone()).unwrap_or_default();
    let transitions = conditions::transitions(&before, &status.conditions);
    if let Some(summary) = conditions::event_summary(&transitions, isolation_disabled) {
        ctx.publish(
            policy,
            KubeEvent {
                type_: if summary.warning {
                    EventType::Warning
                } else {
                    EventType::Normal
                },
                reason: summary.reason,
                note: Some(summary.note),
                action: "Reconcile".into(),
                secondary: None,
            },
        )
        .await;
    }
    Ok(())
}

async fn write_status(
    ctx: &Context,
    policy: &ApiSecurityPolicy,
    status: &ApiSecurityPolicyStatus,
) -> Result<(), Error> {
    let ns = policy.namespace().unwrap_or_default();
    let name = policy.name_any();
    let api: Api<ApiSecurityPolicy> = Api::namespaced(ctx.settings.client.clone(), &ns);
    let body = serde_json::json!({
        "apiVersion": ApiSecurityPolicy::api_version(&()),
        "kind": ApiSecurityPolicy::kind(&()),
        "status": status,
    });
    api.patch_status(
        &name,
        &PatchParams::apply(field_managers::CONTROLLER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(|e| Error::Status {
        namespace: ns,
        name,
        source: Box::new(e),
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_one_second_to_five_minutes() {
        let secs: Vec<u64> = (1..=11).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(backoff(u32::MAX).as_secs(), 300);
    }

    #[test]
    fn error_metric_labels_are_fixed() {
        let e = Error::ChildrenFailed(2);
        assert_eq!(e.metric_label(), "apply_failed");
        let e = Error::Ca {
            namespace: "a".into(),
            name: "b".into(),
            message: "c".into(),
        };
        assert_eq!(e.metric_label(), "ca_unavailable");
    }
}
