//! The reconcile shell: fetch inputs, call the pure core (validation, identity, renderer,
//! conditions), server-side apply the children, prune, write status.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use kube::api::{Api, DeleteParams, PartialObjectMeta, Patch, PatchParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use time::OffsetDateTime;

use super::certs::{self, Leaf};
use super::conditions::{self, Outcome, Verdict};
use super::gateway::{GatewayInput, GatewayObjects, GatewayRenderer, ServingCertificate};
use super::metrics::{ControllerMetrics, Health};
use super::ownership::{self, Ownership, conflicting_winner};
use crate::api::names::labels::{MANAGED_BY, MANAGED_BY_VALUE, POLICY};
use crate::api::names::{
    field_managers, gateway_identity_secret_name, gateway_name, target_identity_secret_name,
};
use crate::api::validate::validate_spec;
use crate::api::{
    ApiSecurityPolicy, ApiSecurityPolicyStatus, CertificateStatus, EastWestMtls, GatewayStatus,
    Isolation,
};
use crate::identity::secrets::{ca_from_secret, leaf_secret, trust_bundle_configmap};
use crate::identity::{CertificateAuthority, ExpectedIdentity, IssuedLeaf, SpiffeId};

/// How long to wait before looking again when nothing schedules an earlier look (a safety
/// net against missed watch events; certificates requeue at their own renew time).
pub const RESYNC: Duration = Duration::from_secs(3600);

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

/// Metadata-only caches of the children apiguard manages (`app.kubernetes.io/managed-by=apiguard`).
#[derive(Clone)]
pub struct ChildStores {
    pub config_maps: Store<PartialObjectMeta<ConfigMap>>,
    pub secrets: Store<PartialObjectMeta<Secret>>,
    pub deployments: Store<PartialObjectMeta<Deployment>>,
    pub services: Store<PartialObjectMeta<Service>>,
    pub network_policies: Store<PartialObjectMeta<NetworkPolicy>>,
}

/// Caches of what a policy reads: every Service (full, for the target's selector and ports)
/// and every Pod reduced to its labels and service account (the target's identity).
#[derive(Clone)]
pub struct InputStores {
    pub services: Store<Service>,
    pub pods: Store<Pod>,
}

/// What reconcile shares between calls.
pub struct Context {
    pub client: kube::Client,
    pub config: Config,
    pub renderer: Arc<dyn GatewayRenderer>,
    pub policies: Store<ApiSecurityPolicy>,
    pub children: ChildStores,
    pub inputs: InputStores,
    /// Cache of the CA Secret in the operator namespace.
    pub ca_secret: Store<Secret>,
    pub recorder: Option<Recorder>,
    pub metrics: Arc<ControllerMetrics>,
    pub health: Arc<Health>,
    /// (content hash, [`fingerprint`]) of each child as last applied: an unchanged child whose
    /// fingerprint is still the one our write produced is not sent again.
    applied: Mutex<HashMap<String, (u64, String)>>,
    /// Consecutive failures per policy, for exponential backoff.
    failures: Mutex<HashMap<String, u32>>,
    ca: Mutex<Option<(String, Arc<CertificateAuthority>)>>,
}

impl Context {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: kube::Client,
        config: Config,
        renderer: Arc<dyn GatewayRenderer>,
        policies: Store<ApiSecurityPolicy>,
        children: ChildStores,
        inputs: InputStores,
        ca_secret: Store<Secret>,
        recorder: Option<Recorder>,
        metrics: Arc<ControllerMetrics>,
        health: Arc<Health>,
    ) -> Self {
        Self {
            client,
            config,
            renderer,
            policies,
            children,
            inputs,
            ca_secret,
            recorder,
            metrics,
            health,
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
    pub fn metric_label(&self) -> &'static str {
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

fn read_err(kind: &'static str, ns: &str, name: &str, e: kube::Error) -> Error {
    Error::Read {
        kind,
        namespace: ns.to_string(),
        name: name.to_string(),
        source: Box::new(e),
    }
}

/// Result of ensuring one child.
#[derive(Debug)]
enum Applied {
    Written,
    Unchanged,
    NotOwned(String),
    Failed(Error),
}

/// Which condition a child counts toward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Group {
    Gateway,
    Certificates,
}

fn content_hash<T: Serialize>(obj: &T) -> u64 {
    let mut h = DefaultHasher::new();
    serde_json::to_vec(obj).unwrap_or_default().hash(&mut h);
    h.finish()
}

/// What must stay the same for a child to still be as we wrote it. Objects with a
/// `metadata.generation` (Deployments, NetworkPolicies) bump it on every spec change but not on
/// status updates or the annotations their controllers add (a Deployment's revision): their
/// fingerprint is the generation plus the live values of the labels and annotations *we* set
/// (`ours`) and the owners. Others (ConfigMaps, Secrets, Services): the resourceVersion.
pub fn fingerprint(live: &ObjectMeta, ours: &ObjectMeta) -> Option<String> {
    match live.generation {
        Some(generation) => {
            let pick = |live: &Option<BTreeMap<String, String>>,
                        ours: &Option<BTreeMap<String, String>>| {
                ours.iter()
                    .flat_map(|m| m.keys())
                    .map(|k| (k.clone(), live.as_ref().and_then(|l| l.get(k)).cloned()))
                    .collect::<Vec<_>>()
            };
            let mut h = DefaultHasher::new();
            serde_json::to_vec(&(
                pick(&live.labels, &ours.labels),
                pick(&live.annotations, &ours.annotations),
                &live.owner_references,
            ))
            .unwrap_or_default()
            .hash(&mut h);
            Some(format!(
                "generation {generation}, metadata {:x}",
                h.finish()
            ))
        }
        None => live.resource_version.clone(),
    }
}

/// Adds the common labels and the policy's controller ownerRef.
fn own(meta: &mut ObjectMeta, policy: &ApiSecurityPolicy, owner: &OwnerReference) {
    let labels = meta.labels.get_or_insert_with(BTreeMap::new);
    labels.insert(MANAGED_BY.into(), MANAGED_BY_VALUE.into());
    labels.insert(POLICY.into(), policy.name_any());
    meta.namespace = policy.namespace();
    meta.owner_references = Some(vec![owner.clone()]);
}

impl Context {
    fn ca(&self, now: OffsetDateTime) -> Result<Arc<CertificateAuthority>, Error> {
        let ns = &self.config.operator_namespace;
        let name = &self.config.ca_secret;
        let ca_err = |message: String| Error::Ca {
            namespace: ns.clone(),
            name: name.clone(),
            message,
        };
        let secret = self
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

    /// Applies `obj` unless it is unchanged since our last write; refuses objects someone else
    /// owns. `just_read`: the object's metadata as this reconcile already read it (`Some(None)`:
    /// it does not exist), so it is not asked for again.
    async fn ensure<K>(
        &self,
        store: &Store<PartialObjectMeta<K>>,
        obj: &K,
        policy_uid: &str,
        shared: bool,
        just_read: Option<Option<&ObjectMeta>>,
    ) -> Applied
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
            + Clone
            + Serialize
            + DeserializeOwned
            + Debug,
        K: Send + Sync + 'static,
    {
        let kind = K::kind(&()).to_string();
        let ns = obj.namespace().unwrap_or_default();
        let name = obj.name_any();
        let api: Api<K> = Api::namespaced(self.client.clone(), &ns);
        let key = format!("{kind}/{ns}/{name}");
        let cached = match just_read {
            Some(read) => Some(read.cloned()),
            None => store
                .get(&ObjectRef::new(&name).within(&ns))
                .map(|m| Some(m.metadata.clone())),
        };
        let meta = match cached {
            Some(m) => m,
            None => match api.get_metadata_opt(&name).await {
                Ok(m) => m.map(|m| m.metadata),
                Err(e) => {
                    return Applied::Failed(Error::Read {
                        kind: "object",
                        namespace: ns,
                        name: format!("{kind} {name}"),
                        source: Box::new(e),
                    });
                }
            },
        };
        let verdict = if shared {
            ownership::shared_ownership(meta.as_ref())
        } else {
            ownership::ownership(meta.as_ref(), policy_uid)
        };
        if let Ownership::NotOwned(why) = verdict {
            return Applied::NotOwned(format!(
                "{kind} {ns}/{name} already exists and is {why}; apiguard does not take it over (delete or rename it)"
            ));
        }
        let hash = content_hash(obj);
        if let Some(seen) = meta.as_ref().and_then(|m| fingerprint(m, obj.meta())) {
            let applied = self.applied.lock().unwrap_or_else(|e| e.into_inner());
            if applied.get(&key) == Some(&(hash, seen)) {
                return Applied::Unchanged;
            }
        }
        let params = PatchParams::apply(field_managers::CONTROLLER).force();
        match api.patch(&name, &params, &Patch::Apply(obj)).await {
            Ok(written) => {
                tracing::debug!(
                    kind,
                    namespace = ns,
                    name,
                    resource_version = written.resource_version(),
                    "applied"
                );
                if let Some(seen) = fingerprint(written.meta(), obj.meta()) {
                    self.applied
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(key, (hash, seen));
                }
                Applied::Written
            }
            Err(e) => Applied::Failed(Error::Apply {
                kind,
                namespace: ns,
                name,
                source: Box::new(e),
            }),
        }
    }

    /// Deletes objects labelled for the policy and controlled by it that are not desired.
    async fn prune<K>(
        &self,
        store: &Store<PartialObjectMeta<K>>,
        policy: &ApiSecurityPolicy,
        desired: &[String],
    ) -> Result<usize, Error>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + Debug
            + Send
            + Sync
            + 'static,
    {
        let ns = policy.namespace().unwrap_or_default();
        let uid = policy.uid().unwrap_or_default();
        let name = policy.name_any();
        let api: Api<K> = Api::namespaced(self.client.clone(), &ns);
        let mut deleted = 0;
        for obj in store.state() {
            let meta = &obj.metadata;
            if meta.namespace.as_deref() != Some(ns.as_str())
                || !ownership::prunable(meta, &name, &uid, desired)
            {
                continue;
            }
            let child = meta.name.clone().unwrap_or_default();
            let dp = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: meta.uid.clone(),
                    resource_version: None,
                }),
                ..DeleteParams::background()
            };
            match api.delete(&child, &dp).await {
                Ok(_) => deleted += 1,
                // Already gone, or replaced by another object of the same name.
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(e) => {
                    return Err(Error::Delete {
                        kind: K::kind(&()).to_string(),
                        namespace: ns,
                        name: child,
                        source: Box::new(e),
                    });
                }
            }
            self.applied
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&format!("{}/{ns}/{child}", K::kind(&())));
        }
        Ok(deleted)
    }

    async fn publish(&self, policy: &ApiSecurityPolicy, ev: KubeEvent) {
        if let Some(recorder) = &self.recorder
            && let Err(e) = recorder.publish(&ev, &policy.object_ref(&())).await
        {
            tracing::warn!(error = %e, reason = ev.reason, "could not publish Event");
        }
    }
}

/// Children of one policy, grouped by the condition they count toward.
#[derive(Default)]
struct Desired {
    config_maps: Vec<(Group, ConfigMap)>,
    secrets: Vec<(Group, Secret)>,
    deployments: Vec<Deployment>,
    services: Vec<Service>,
    network_policies: Vec<NetworkPolicy>,
}

impl Desired {
    fn names<K: Resource>(items: impl Iterator<Item = K>) -> Vec<String> {
        items.map(|o| o.name_any()).collect()
    }
}

/// Tally of one group's children.
#[derive(Default)]
struct Tally {
    total: usize,
    not_owned: Vec<String>,
    failed: Vec<String>,
}

impl Tally {
    fn add(&mut self, a: Applied, failures: &mut Vec<Error>) {
        self.total += 1;
        match a {
            Applied::Written | Applied::Unchanged => {}
            Applied::NotOwned(m) => self.not_owned.push(m),
            Applied::Failed(e) => {
                self.failed.push(e.to_string());
                failures.push(e);
            }
        }
    }
    fn verdict(&self, ok_reason: &'static str, ok_message: String) -> Verdict {
        if !self.not_owned.is_empty() {
            Verdict::fail("NotOwned", self.not_owned.join("; "))
        } else if !self.failed.is_empty() {
            Verdict::fail("ApplyFailed", self.failed.join("; "))
        } else {
            Verdict::ok(ok_reason, ok_message)
        }
    }
}

/// The target service account: the one used by the newest pod the Service selects ("default"
/// when it selects no pod yet). During a rollout to a new service account the new pods are the
/// newest, so the certificate follows the rollout.
pub fn target_service_account<'a>(
    svc: &Service,
    pods: impl IntoIterator<Item = &'a Pod>,
) -> String {
    let ns = svc.namespace();
    let selector = svc
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .filter(|s| !s.is_empty());
    let Some(selector) = selector else {
        return "default".into();
    };
    pods.into_iter()
        .filter(|p| p.namespace() == ns && p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            let labels = p.labels();
            selector.iter().all(|(k, v)| labels.get(k) == Some(v))
        })
        .max_by_key(|p| {
            (
                p.metadata.creation_timestamp.as_ref().map(|t| t.0),
                p.name_any(),
            )
        })
        .and_then(|p| p.spec.as_ref()?.service_account_name.clone())
        .filter(|sa| !sa.is_empty())
        .unwrap_or_else(|| "default".into())
}

fn not_after_rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

fn leaf_as_issued(leaf: &Leaf) -> IssuedLeaf {
    IssuedLeaf {
        cert_pem: leaf.cert_pem.clone(),
        key_pem: leaf.key_pem.clone(),
        ca_bundle_pem: leaf.ca_pem.clone(),
        not_before: leaf.not_before,
        not_after: leaf.not_after,
        spiffe_id: leaf.spiffe_id.clone(),
    }
}

/// Reconciles one policy, recording metrics and the in-flight marker for liveness.
pub async fn reconcile(policy: Arc<ApiSecurityPolicy>, ctx: Arc<Context>) -> Result<Action, Error> {
    let key = format!(
        "{}/{}",
        policy.namespace().unwrap_or_default(),
        policy.name_any()
    );
    let start = Instant::now();
    ctx.health.started(&key, start);
    let result = reconcile_inner(&policy, &ctx, OffsetDateTime::now_utc()).await;
    ctx.health.finished(&key);
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
    ctx.metrics.reconciled(label, start.elapsed());
    result
}

/// Delay before retry `attempt` (1-based): 1 s doubling up to 5 minutes.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.saturating_sub(1).min(9)).min(Duration::from_secs(300))
}

/// Backs off per object after an error (exponentially, reset by a success).
pub fn error_policy(policy: Arc<ApiSecurityPolicy>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = format!(
        "{}/{}",
        policy.namespace().unwrap_or_default(),
        policy.name_any()
    );
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

async fn reconcile_inner(
    policy: &ApiSecurityPolicy,
    ctx: &Context,
    now: OffsetDateTime,
) -> Result<Action, Error> {
    let ns = policy.namespace().unwrap_or_default();
    let name = policy.name_any();
    let key = format!("{ns}/{name}");
    if policy.metadata.deletion_timestamp.is_some() {
        // Children go with it through their ownerRefs (garbage collection).
        ctx.metrics.forget_policy(&key, now.unix_timestamp());
        return Ok(Action::await_change());
    }
    // Answers from caches that have not listed yet would be wrong (TargetNotFound, the
    // "default" service account): wait for them (immediate once synced).
    if ctx.inputs.services.wait_until_ready().await.is_err()
        || ctx.inputs.pods.wait_until_ready().await.is_err()
    {
        return Err(Error::CachesClosed);
    }
    let uid = policy.uid().unwrap_or_default();
    let Some(owner) = policy.controller_owner_ref(&()) else {
        return Err(Error::Incomplete {
            namespace: ns,
            name,
        });
    };
    let spec = &policy.spec;
    let isolation_disabled = spec.network().isolation == Isolation::None;
    let pending = |why: &str| Verdict::unknown("Pending", why.to_string());

    // 1. Accepted: the spec's invariants, then the one-policy-per-Service rule.
    let violations = validate_spec(spec);
    let all_policies = ctx.policies.state();
    let winner = conflicting_winner(policy, all_policies.iter().map(|p| p.as_ref()));
    let accepted = if !violations.is_empty() {
        let msgs: Vec<String> = violations
            .iter()
            .map(|v| format!("{} (at {})", v.message(), v.field))
            .collect();
        Verdict::fail("Invalid", msgs.join("; "))
    } else if let Some(w) = winner {
        Verdict::fail(
            "Conflict",
            format!(
                "Service {ns}/{} is already protected by the older ApiSecurityPolicy {ns}/{}; only one policy may target a Service",
                spec.target.service,
                w.name_any()
            ),
        )
    } else {
        Verdict::ok("Accepted", "the policy is valid")
    };

    let mut failures = Vec::new();
    let mut requeue = RESYNC;
    let mut gateway_status = None;
    let mut cert_status = Vec::new();
    let mut expiries = Vec::new();

    let outcome = if accepted.state != conditions::State::True {
        if accepted.reason == "Conflict" {
            // The losing policy must not run a second gateway for the same Service.
            prune_all(ctx, policy, &Desired::default()).await?;
        }
        // An invalid edit leaves the last accepted objects in place.
        let why = "the policy is not accepted";
        Outcome {
            accepted,
            programmed: Verdict::fail("NotAccepted", why),
            certificates: pending(why),
            network: pending(why),
            isolation_disabled,
        }
    } else {
        // 2. Inputs: target Service (cached), CA.
        let target = ctx
            .inputs
            .services
            .get(&ObjectRef::new(&spec.target.service).within(&ns))
            .map(|s| s.as_ref().clone());
        match target {
            None => {
                let why = format!(
                    "target Service {ns}/{} does not exist; the policy is programmed when it is created",
                    spec.target.service
                );
                Outcome {
                    accepted,
                    programmed: Verdict::fail("TargetNotFound", why.clone()),
                    certificates: Verdict::unknown("TargetNotFound", why.clone()),
                    network: Verdict::unknown("TargetNotFound", why),
                    isolation_disabled,
                }
            }
            Some(target) => {
                let ca = ctx.ca(now)?;
                let pods = ctx.inputs.pods.state();
                let target_sa = target_service_account(&target, pods.iter().map(|p| p.as_ref()));
                program(
                    ProgramInput {
                        policy,
                        owner: &owner,
                        uid: &uid,
                        target: &target,
                        target_sa: &target_sa,
                        ca: &ca,
                        now,
                    },
                    ctx,
                    accepted,
                    isolation_disabled,
                    Programmed {
                        failures: &mut failures,
                        requeue: &mut requeue,
                        gateway_status: &mut gateway_status,
                        cert_status: &mut cert_status,
                        expiries: &mut expiries,
                    },
                )
                .await?
            }
        }
    };

    // 3. Status, written only when it says something new.
    let stamp = Time(
        k8s_openapi::jiff::Timestamp::from_second(now.unix_timestamp())
            .unwrap_or_else(|_| k8s_openapi::jiff::Timestamp::now()),
    );
    let previous = policy.status.as_ref();
    let status = conditions::status(
        &outcome,
        previous,
        policy.metadata.generation,
        gateway_status,
        cert_status,
        &stamp,
    );
    let before = previous.map(|s| s.conditions.clone()).unwrap_or_default();
    if previous.is_none_or(|p| !conditions::equivalent(p, &status)) {
        write_status(ctx, policy, &status).await?;
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
    }
    ctx.metrics
        .observe_policy(&key, &status.conditions, expiries, now.unix_timestamp());

    if !failures.is_empty() {
        return Err(Error::ChildrenFailed(failures.len()));
    }
    Ok(Action::requeue(requeue))
}

async fn write_status(
    ctx: &Context,
    policy: &ApiSecurityPolicy,
    status: &ApiSecurityPolicyStatus,
) -> Result<(), Error> {
    let ns = policy.namespace().unwrap_or_default();
    let name = policy.name_any();
    let api: Api<ApiSecurityPolicy> = Api::namespaced(ctx.client.clone(), &ns);
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

async fn prune_all(
    ctx: &Context,
    policy: &ApiSecurityPolicy,
    desired: &Desired,
) -> Result<usize, Error> {
    let c = &ctx.children;
    let mut n = 0;
    n += ctx
        .prune(
            &c.config_maps,
            policy,
            &Desired::names(desired.config_maps.iter().map(|(_, o)| o.clone())),
        )
        .await?;
    n += ctx
        .prune(
            &c.secrets,
            policy,
            &Desired::names(desired.secrets.iter().map(|(_, o)| o.clone())),
        )
        .await?;
    n += ctx
        .prune(
            &c.deployments,
            policy,
            &Desired::names(desired.deployments.iter().cloned()),
        )
        .await?;
    n += ctx
        .prune(
            &c.services,
            policy,
            &Desired::names(desired.services.iter().cloned()),
        )
        .await?;
    n += ctx
        .prune(
            &c.network_policies,
            policy,
            &Desired::names(desired.network_policies.iter().cloned()),
        )
        .await?;
    Ok(n)
}

struct ProgramInput<'a> {
    policy: &'a ApiSecurityPolicy,
    owner: &'a OwnerReference,
    uid: &'a str,
    target: &'a Service,
    target_sa: &'a str,
    ca: &'a CertificateAuthority,
    now: OffsetDateTime,
}

struct Programmed<'a> {
    failures: &'a mut Vec<Error>,
    requeue: &'a mut Duration,
    gateway_status: &'a mut Option<GatewayStatus>,
    cert_status: &'a mut Vec<CertificateStatus>,
    expiries: &'a mut Vec<(&'static str, i64)>,
}

async fn read_secret(ctx: &Context, ns: &str, name: &str) -> Result<Option<Secret>, Error> {
    Api::<Secret>::namespaced(ctx.client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(|e| read_err("Secret", ns, name, e))
}

/// Secrets the policy refers to, read for the renderer.
struct References {
    api_keys: BTreeMap<String, String>,
    jwks: BTreeMap<String, String>,
    serving: Option<ServingCertificate>,
}

/// Reads the Secrets named in the spec. `Ok(Err(verdict))`: one is missing or incomplete
/// (a condition, not a retry: the Secret watch brings the policy back when it appears).
async fn fetch_references(
    ctx: &Context,
    policy: &ApiSecurityPolicy,
) -> Result<Result<References, Verdict>, Error> {
    let ns = policy.namespace().unwrap_or_default();
    let spec = &policy.spec;
    let missing = |what: String| Verdict::fail("ReferenceNotFound", what);
    let mut refs = References {
        api_keys: BTreeMap::new(),
        jwks: BTreeMap::new(),
        serving: None,
    };
    let text = |secret: &Secret, key: &str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
    };
    let auth = spec.authentication();
    if let Some(keys) = &auth.api_keys {
        let name = &keys.secret_ref.name;
        let Some(secret) = read_secret(ctx, &ns, name).await? else {
            return Ok(Err(missing(format!(
                "Secret {ns}/{name} (spec.authentication.apiKeys.secretRef) does not exist"
            ))));
        };
        for (client, key) in secret.data.unwrap_or_default() {
            match String::from_utf8(key.0) {
                Ok(k) => {
                    refs.api_keys.insert(client, k.trim().to_string());
                }
                Err(_) => {
                    return Ok(Err(missing(format!(
                        "Secret {ns}/{name} key {client} (spec.authentication.apiKeys.secretRef) is not UTF-8 text"
                    ))));
                }
            }
        }
    }
    if let Some(jwt) = &auth.jwt {
        for (i, provider) in jwt.providers.iter().enumerate() {
            let Some(r) = &provider.jwks.secret_ref else {
                continue;
            };
            let field = format!("spec.authentication.jwt.providers[{i}].jwks.secretRef");
            let doc = match read_secret(ctx, &ns, &r.name).await? {
                Some(secret) => text(&secret, &r.key),
                None => None,
            };
            match doc {
                Some(doc) => {
                    refs.jwks.insert(provider.name.clone(), doc);
                }
                None => {
                    return Ok(Err(missing(format!(
                        "Secret {ns}/{} has no key {} ({field})",
                        r.name, r.key
                    ))));
                }
            }
        }
    }
    if let Some(r) = &spec.tls().certificate_secret_ref {
        let field = "spec.tls.certificateSecretRef";
        let secret = read_secret(ctx, &ns, &r.name).await?;
        let pair = secret
            .as_ref()
            .and_then(|s| Some((text(s, "tls.crt")?, text(s, "tls.key")?)));
        match pair {
            Some((cert_pem, key_pem)) => {
                refs.serving = Some(ServingCertificate { cert_pem, key_pem })
            }
            None => {
                return Ok(Err(missing(format!(
                    "Secret {ns}/{} ({field}) does not exist or lacks tls.crt/tls.key",
                    r.name
                ))));
            }
        }
    }
    Ok(Ok(refs))
}

async fn program(
    input: ProgramInput<'_>,
    ctx: &Context,
    accepted: Verdict,
    isolation_disabled: bool,
    out: Programmed<'_>,
) -> Result<Outcome, Error> {
    let ProgramInput {
        policy,
        owner,
        uid,
        target,
        target_sa,
        ca,
        now,
    } = input;
    let ns = policy.namespace().unwrap_or_default();
    let name = policy.name_any();
    let td = &ctx.config.trust_domain;
    let gw = gateway_name(&name);
    let mtls = policy.spec.east_west().mtls;

    // Identities: the gateway's and the target's service account.
    let id_err =
        |e: crate::identity::SpiffeIdError| Verdict::fail("InvalidIdentity", e.to_string());
    let gateway_id = SpiffeId::new(td, &ns, &gw);
    let target_id = SpiffeId::new(td, &ns, target_sa);
    let (gateway_id, target_id) = match (gateway_id, target_id) {
        (Ok(g), Ok(t)) => (g, t),
        (Err(e), _) | (_, Err(e)) => {
            let v = id_err(e);
            return Ok(Outcome {
                accepted,
                programmed: Verdict::unknown("InvalidIdentity", v.message.clone()),
                certificates: v.clone(),
                network: Verdict::unknown("InvalidIdentity", v.message),
                isolation_disabled,
            });
        }
    };
    let gateway_secret = gateway_identity_secret_name(&name);
    let target_secret = target_identity_secret_name(&name);
    let refs = match fetch_references(ctx, policy).await? {
        Ok(r) => r,
        Err(v) => {
            return Ok(Outcome {
                accepted,
                programmed: v.clone(),
                certificates: Verdict::unknown(v.reason, v.message.clone()),
                network: Verdict::unknown(v.reason, v.message),
                isolation_disabled,
            });
        }
    };
    // Without a user-supplied serving certificate the gateway leaf also serves `hosts`.
    let mut gateway_dns = certs::service_dns_names(&gw, &ns);
    if refs.serving.is_none() {
        gateway_dns.extend(policy.spec.hosts.iter().cloned());
    }
    let expected_gateway = ExpectedIdentity {
        spiffe_id: gateway_id,
        dns_names: gateway_dns,
    };
    let expected_target = ExpectedIdentity {
        spiffe_id: target_id.clone(),
        dns_names: certs::service_dns_names(&target.name_any(), &ns),
    };
    let lifetime = ctx.config.leaf_lifetime;
    let existing_gw = read_secret(ctx, &ns, &gateway_secret).await?;
    // What this reconcile read, so applying the Secrets does not read them again.
    let mut just_read: HashMap<String, Option<ObjectMeta>> = HashMap::new();
    just_read.insert(
        gateway_secret.clone(),
        existing_gw.as_ref().map(|s| s.metadata.clone()),
    );
    let gateway_leaf = certs::plan_leaf(existing_gw.as_ref(), &expected_gateway, ca, lifetime, now);
    let mut leaves = Vec::new();
    let gateway_leaf = match gateway_leaf {
        Ok(l) => l,
        Err(e) => {
            let v = Verdict::fail("IssueFailed", e.to_string());
            return Ok(Outcome {
                accepted,
                programmed: Verdict::unknown("IssueFailed", v.message.clone()),
                certificates: v.clone(),
                network: Verdict::unknown("IssueFailed", v.message),
                isolation_disabled,
            });
        }
    };
    leaves.push(("gateway", gateway_secret.clone(), gateway_leaf.clone()));
    let want_target_leaf = mtls != EastWestMtls::Disabled;
    if want_target_leaf {
        let existing = read_secret(ctx, &ns, &target_secret).await?;
        just_read.insert(
            target_secret.clone(),
            existing.as_ref().map(|s| s.metadata.clone()),
        );
        match certs::plan_leaf(existing.as_ref(), &expected_target, ca, lifetime, now) {
            Ok(l) => leaves.push(("workload", target_secret.clone(), l)),
            Err(e) => {
                let v = Verdict::fail("IssueFailed", e.to_string());
                return Ok(Outcome {
                    accepted,
                    programmed: Verdict::unknown("IssueFailed", v.message.clone()),
                    certificates: v.clone(),
                    network: Verdict::unknown("IssueFailed", v.message),
                    isolation_disabled,
                });
            }
        }
    }

    // Gateway and network objects from the pure renderer.
    let bundle = ca.roots_pem();
    let serving = refs.serving.clone().unwrap_or_else(|| ServingCertificate {
        cert_pem: gateway_leaf.cert_pem.clone(),
        key_pem: gateway_leaf.key_pem.clone(),
    });
    let rendered = ctx.renderer.render(&GatewayInput {
        policy,
        target,
        gateway_leaf: &gateway_leaf,
        target_identity: &target_id,
        trust_bundle_pem: &bundle,
        serving: &serving,
        // The operator's roots verify client certificates whenever the renderer asks for them
        // (`tls.clientCertificate`, or implied by `authentication.mtls.allowedClients`).
        client_ca_pem: Some(bundle.as_str()),
        upstream_mtls: want_target_leaf,
        api_keys: &refs.api_keys,
        jwks_from_secret: &refs.jwks,
    });
    let GatewayObjects {
        config_maps,
        secrets,
        deployments,
        services,
        network_policies,
        config_hash,
        gateway_service,
    } = match rendered {
        Ok(r) => r,
        Err(e) => {
            return Ok(Outcome {
                accepted,
                programmed: Verdict::fail("RenderFailed", e.to_string()),
                certificates: Verdict::unknown("RenderFailed", e.to_string()),
                network: Verdict::unknown("RenderFailed", e.to_string()),
                isolation_disabled,
            });
        }
    };
    let mut desired = Desired::default();
    for mut cm in config_maps {
        own(&mut cm.metadata, policy, owner);
        desired.config_maps.push((Group::Gateway, cm));
    }
    for mut s in secrets {
        own(&mut s.metadata, policy, owner);
        desired.secrets.push((Group::Gateway, s));
    }
    for (_, secret_name, leaf) in &leaves {
        let mut s = leaf_secret(secret_name, &ns, &leaf_as_issued(leaf), None);
        own(&mut s.metadata, policy, owner);
        desired.secrets.push((Group::Certificates, s));
    }
    for mut d in deployments {
        own(&mut d.metadata, policy, owner);
        desired.deployments.push(d);
    }
    for mut s in services {
        own(&mut s.metadata, policy, owner);
        desired.services.push(s);
    }
    for mut np in network_policies {
        own(&mut np.metadata, policy, owner);
        desired.network_policies.push(np);
    }

    // Apply: certificates first (the gateway mounts them), then gateway, then network.
    let c = &ctx.children;
    let (mut gw_t, mut cert_t, mut net_t) = (Tally::default(), Tally::default(), Tally::default());
    for (group, s) in &desired.secrets {
        let a = ctx
            .ensure(
                &c.secrets,
                s,
                uid,
                false,
                just_read.get(&s.name_any()).map(|m| m.as_ref()),
            )
            .await;
        match group {
            Group::Certificates => cert_t.add(a, out.failures),
            _ => gw_t.add(a, out.failures),
        }
    }
    // The namespace's trust bundle, shared by every policy in it. Its one owner reference is
    // the namespace's oldest policy (`bundle_anchor`): the ConfigMap lives as long as that
    // policy, and when it goes, the next oldest takes the bundle over (the policy watch maps a
    // deletion to the new anchor).
    let mut bundle_cm = trust_bundle_configmap(&ns, &bundle, None);
    let all = ctx.policies.state();
    let anchor = ownership::bundle_anchor(&ns, all.iter().map(|p| p.as_ref()))
        .and_then(|p| p.controller_owner_ref(&()))
        .unwrap_or_else(|| owner.clone());
    bundle_cm.metadata.owner_references = Some(vec![OwnerReference {
        controller: Some(false),
        ..anchor
    }]);
    cert_t.add(
        ctx.ensure(&c.config_maps, &bundle_cm, uid, true, None)
            .await,
        out.failures,
    );
    for (_, cm) in &desired.config_maps {
        gw_t.add(
            ctx.ensure(&c.config_maps, cm, uid, false, None).await,
            out.failures,
        );
    }
    for d in &desired.deployments {
        gw_t.add(
            ctx.ensure(&c.deployments, d, uid, false, None).await,
            out.failures,
        );
    }
    for s in &desired.services {
        gw_t.add(
            ctx.ensure(&c.services, s, uid, false, None).await,
            out.failures,
        );
    }
    for np in &desired.network_policies {
        net_t.add(
            ctx.ensure(&c.network_policies, np, uid, false, None).await,
            out.failures,
        );
    }
    prune_all(ctx, policy, &desired).await?;

    // Verdicts, status details, and the next look at the certificates.
    let programmed = gw_t.verdict(
        "Programmed",
        format!("gateway Service {ns}/{gateway_service} configured (config {config_hash})"),
    );
    if programmed.state == conditions::State::True {
        *out.gateway_status = Some(GatewayStatus {
            service: gateway_service,
            config_hash,
        });
    }
    let certificates_verdict = cert_t.verdict(
        "Issued",
        format!(
            "{} certificate(s) valid; next renewal at {}",
            leaves.len(),
            leaves
                .iter()
                .map(|(_, _, l)| l.renew_at)
                .min()
                .map(not_after_rfc3339)
                .unwrap_or_default()
        ),
    );
    for (kind, secret, leaf) in &leaves {
        out.cert_status.push(CertificateStatus {
            spiffe_id: leaf.spiffe_id.uri(),
            secret: secret.clone(),
            not_after: not_after_rfc3339(leaf.not_after),
        });
        out.expiries.push((kind, leaf.not_after.unix_timestamp()));
        if let Some(reason) = leaf.reissued {
            tracing::info!(
                policy.namespace = ns,
                policy.name = name,
                spiffe_id = leaf.spiffe_id.uri(),
                reason = reason.as_str(),
                "issued certificate"
            );
        }
    }
    if let Some(earliest) = leaves.iter().map(|(_, _, l)| l.renew_at).min() {
        *out.requeue = (*out.requeue).min(certs::until(earliest, now));
    }
    let network = if isolation_disabled {
        Verdict::fail(
            "IsolationDisabled",
            "spec.network.isolation is None: the API's pods accept traffic from anywhere",
        )
    } else {
        net_t.verdict(
            "Applied",
            format!(
                "{} NetworkPolicy object(s) isolate the API's pods",
                net_t.total
            ),
        )
    };
    Ok(Outcome {
        accepted,
        programmed,
        certificates: certificates_verdict,
        network,
        isolation_disabled,
    })
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

    fn pod(name: &str, labels: &[(&str, &str)], sa: Option<&str>, created: i64) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "shop",
                "labels": labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
                "creationTimestamp": k8s_openapi::jiff::Timestamp::from_second(created).unwrap().to_string()},
            "spec": {"containers": [], "serviceAccountName": sa},
        }))
        .unwrap()
    }

    #[test]
    fn the_target_identity_is_the_newest_selected_pods_service_account() {
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "api", "namespace": "shop"},
            "spec": {"selector": {"app": "api"}},
        }))
        .unwrap();
        let old = pod("api-1", &[("app", "api"), ("v", "1")], Some("api-v1"), 100);
        let new = pod("api-2", &[("app", "api"), ("v", "2")], Some("api-v2"), 200);
        let other = pod("web", &[("app", "web")], Some("web"), 300);
        let mut elsewhere = pod("api-x", &[("app", "api")], Some("x"), 400);
        elsewhere.metadata.namespace = Some("other".into());
        let pods = [old.clone(), other.clone(), new.clone(), elsewhere];
        assert_eq!(target_service_account(&svc, &pods), "api-v2");
        // While the newest goes away, the one left counts.
        let mut leaving = new.clone();
        leaving.metadata.deletion_timestamp = old.metadata.creation_timestamp.clone();
        assert_eq!(target_service_account(&svc, [&old, &leaving]), "api-v1");
        // No pod, no service account, or no selector: "default".
        assert_eq!(target_service_account(&svc, [&other]), "default");
        let no_sa = pod("api-3", &[("app", "api")], None, 500);
        assert_eq!(target_service_account(&svc, [&no_sa]), "default");
        let mut headless = svc.clone();
        headless.spec.as_mut().unwrap().selector = None;
        assert_eq!(target_service_account(&headless, &pods), "default");
    }

    #[test]
    fn status_and_foreign_annotations_keep_the_fingerprint_edits_of_ours_change_it() {
        let ours = ObjectMeta {
            labels: Some(BTreeMap::from([("a".into(), "b".into())])),
            annotations: Some(BTreeMap::from([("ours".into(), "1".into())])),
            ..Default::default()
        };
        let base = ObjectMeta {
            generation: Some(1),
            resource_version: Some("10".into()),
            ..ours.clone()
        };
        let fp = |live: &ObjectMeta| fingerprint(live, &ours);
        // The Deployment controller writes status and its revision annotation.
        let mut by_controller = ObjectMeta {
            resource_version: Some("11".into()),
            ..base.clone()
        };
        by_controller
            .annotations
            .as_mut()
            .unwrap()
            .insert("deployment.kubernetes.io/revision".into(), "1".into());
        assert_eq!(fp(&base), fp(&by_controller));
        let spec_edit = ObjectMeta {
            generation: Some(2),
            ..base.clone()
        };
        assert_ne!(fp(&base), fp(&spec_edit));
        let label_edit = ObjectMeta {
            labels: None,
            ..base.clone()
        };
        assert_ne!(fp(&base), fp(&label_edit));
        let mut annotation_edit = base.clone();
        annotation_edit
            .annotations
            .as_mut()
            .unwrap()
            .insert("ours".into(), "2".into());
        assert_ne!(fp(&base), fp(&annotation_edit));
        // Without a generation every write counts.
        let cm = ObjectMeta {
            resource_version: Some("7".into()),
            ..Default::default()
        };
        assert_eq!(fingerprint(&cm, &ours).as_deref(), Some("7"));
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
