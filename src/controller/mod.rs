//! The controller: reconciles every `ApiSecurityPolicy` into its gateway, certificates and
//! NetworkPolicies (docs/controller.md, docs/architecture.md), and reports status.
//!
//! - [`reconcile`]: the thin shell (fetch, call the pure core, apply, prune, status).
//! - [`conditions`], [`ownership`], [`certs`]: pure decisions, unit-tested.
//! - [`gateway`]: the seam to the pure gateway renderer.
//! - [`metrics`]: Prometheus metrics and health signals.
//! - [`leader`]: Lease-based leader election; only the leader reconciles.

pub mod certs;
pub mod conditions;
pub mod gateway;
pub mod leader;
pub mod metrics;
pub mod ownership;
pub mod reconcile;

use std::sync::Arc;

use futures::StreamExt;
use futures::future::{BoxFuture, FutureExt, Shared};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, PodSpec, Secret, Service};
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::controller::Controller;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;

pub use gateway::{EnvoyRenderer, GatewayInput, GatewayObjects, GatewayRenderer, RenderError};
pub use metrics::{ControllerMetrics, Health};
pub use reconcile::{ChildStores, Config, Context, ContextSettings, InputStores};

use crate::api::ApiSecurityPolicy;
use crate::api::names::labels::{MANAGED_BY, MANAGED_BY_VALUE};

/// A shutdown signal that can be awaited from several places.
pub(crate) type Shutdown = Shared<BoxFuture<'static, ()>>;

/// Turns any future into a `Shutdown`.
pub fn shutdown_on(f: impl std::future::Future<Output = ()> + Send + 'static) -> Shutdown {
    f.boxed().shared()
}

/// Errors that stop the controller.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("operator CA: {0}")]
    Ca(#[from] crate::certs::CaSecretError),
    #[error("leader election: {0}")]
    Lease(#[from] kube_lease_manager::LeaseManagerError),
}

fn managed_selector() -> watcher::Config {
    watcher::Config::default().labels(&format!("{MANAGED_BY}={MANAGED_BY_VALUE}"))
}

/// Whether two versions of a child differ only in what its own controller writes (status, for
/// objects with a generation): same generation, labels, annotations and owners.
fn same_desired_state(
    old: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    new: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> bool {
    new.generation.is_some()
        && old.generation == new.generation
        && old.labels == new.labels
        && old.annotations == new.annotations
        && old.owner_references == new.owner_references
        && old.deletion_timestamp == new.deletion_timestamp
}

/// A metadata-only reflector of apiguard-managed objects of kind `K`: its store, and the
/// stream that keeps it filled (also the controller's owned-object trigger).
fn child_reflector<K>(
    client: &kube::Client,
) -> (
    Store<PartialObjectMeta<K>>,
    impl futures::Stream<Item = Result<PartialObjectMeta<K>, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync,
    K: 'static,
{
    let (reader, writer) = reflector::store::<PartialObjectMeta<K>>();
    let previous = reader.clone();
    let stream = watcher(
        Api::<PartialObjectMeta<K>>::all(client.clone()),
        managed_selector(),
    )
    .default_backoff()
    // Only names, labels, owners and resourceVersions are read: managedFields would be most of
    // the memory of a metadata cache.
    .modify(|o: &mut PartialObjectMeta<K>| slim_meta(&mut o.metadata))
    // A Deployment's status churn (its controller's writes) is not a change of ours: only
    // updates that change what we wrote re-trigger the policy. Deletions always do.
    .filter(move |event| {
        let keep = match event {
            Ok(watcher::Event::Apply(o)) => previous
                .get(&ObjectRef::from_obj(o))
                .is_none_or(|old| !same_desired_state(&old.metadata, &o.metadata)),
            _ => true,
        };
        futures::future::ready(keep)
    })
    .reflect(writer)
    .touched_objects();
    (reader, stream)
}

/// Policies in the same namespace as `obj` whose target is the Service `obj` names.
fn policies_targeting(
    store: &Store<ApiSecurityPolicy>,
    namespace: Option<String>,
    service: &str,
) -> Vec<ObjectRef<ApiSecurityPolicy>> {
    store
        .state()
        .iter()
        .filter(|p| p.namespace() == namespace && p.spec.target.service == service)
        .map(|p| ObjectRef::from_obj(p.as_ref()))
        .collect()
}

/// The policies a change of one of apiguard's ConfigMaps concerns: its controlling policy, and
/// for the shared trust bundle the namespace's current anchor (its owner may be gone).
fn config_map_owners(
    store: &Store<ApiSecurityPolicy>,
    cm: &PartialObjectMeta<ConfigMap>,
) -> Vec<ObjectRef<ApiSecurityPolicy>> {
    let ns = cm.namespace();
    let mut refs: Vec<_> = cm
        .owner_references()
        .iter()
        .filter(|o| o.kind == ApiSecurityPolicy::kind(&()))
        .map(|o| ObjectRef::new(&o.name).within(ns.as_deref().unwrap_or_default()))
        .collect();
    if cm.name_any() == crate::api::names::TRUST_BUNDLE_CONFIGMAP
        && let Some(ns) = &ns
    {
        let all = store.state();
        refs.extend(
            ownership::bundle_anchor(ns, all.iter().map(|p| p.as_ref())).map(ObjectRef::from_obj),
        );
    }
    refs
}

/// What a policy event means for the other policies: those on the same Service re-decide the
/// conflict; when it is deleted (marked by a deletionTimestamp, see `policy_events`), the
/// namespace's new bundle anchor takes over the trust bundle.
fn policies_affected_by(
    store: &Store<ApiSecurityPolicy>,
    p: &ApiSecurityPolicy,
) -> Vec<ObjectRef<ApiSecurityPolicy>> {
    let mut refs: Vec<_> = policies_targeting(store, p.namespace(), &p.spec.target.service)
        .into_iter()
        .filter(|r| r.name != p.name_any())
        .collect();
    if p.metadata.deletion_timestamp.is_some()
        && let Some(ns) = p.namespace()
    {
        let all = store.state();
        let others = all
            .iter()
            .map(|o| o.as_ref())
            .filter(|o| o.uid() != p.uid());
        refs.extend(ownership::bundle_anchor(&ns, others).map(ObjectRef::from_obj));
    }
    refs
}

/// Every policy change, with deleted policies marked by a deletionTimestamp (a deletion
/// without finalizers arrives without one).
fn policy_events(
    api: Api<ApiSecurityPolicy>,
) -> impl futures::Stream<Item = Result<ApiSecurityPolicy, watcher::Error>> + Send + 'static {
    watcher(api, watcher::Config::default())
        .default_backoff()
        .filter_map(|event| {
            futures::future::ready(match event {
                Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => Some(Ok(p)),
                Ok(watcher::Event::Delete(mut p)) => {
                    p.metadata.deletion_timestamp.get_or_insert_with(|| {
                        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                            k8s_openapi::jiff::Timestamp::now(),
                        )
                    });
                    Some(Ok(p))
                }
                Ok(watcher::Event::Init | watcher::Event::InitDone) => None,
                Err(e) => Some(Err(e)),
            })
        })
}

/// Keeps of a Pod only what the target's identity needs: name, namespace, labels, creation
/// time and service account.
fn slim_pod(pod: &mut Pod) {
    let meta = std::mem::take(&mut pod.metadata);
    pod.metadata = kube::api::ObjectMeta {
        name: meta.name,
        namespace: meta.namespace,
        uid: meta.uid,
        resource_version: meta.resource_version,
        labels: meta.labels,
        creation_timestamp: meta.creation_timestamp,
        deletion_timestamp: meta.deletion_timestamp,
        ..Default::default()
    };
    let sa = pod.spec.take().and_then(|s| s.service_account_name);
    pod.spec = Some(PodSpec {
        service_account_name: sa,
        containers: Vec::new(),
        ..Default::default()
    });
    pod.status = None;
}

/// `kubectl apply` keeps a copy of the whole object in this annotation: never read here.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Drops what no reconcile reads from a cached object's metadata (often most of its size).
fn slim_meta(meta: &mut kube::api::ObjectMeta) {
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove(LAST_APPLIED);
    }
}

/// Keeps of a Service what rendering reads (selector, ports, type): not its status,
/// managedFields or last-applied copy.
fn slim_service(svc: &mut Service) {
    slim_meta(&mut svc.metadata);
    svc.status = None;
}

/// Pod events that can change a target's service account: a pod appears, goes, or changes its
/// labels or service account (not the status churn of a running pod).
fn pod_identity_changes(
    pods: Api<Pod>,
    reader: Store<Pod>,
    writer: reflector::store::Writer<Pod>,
) -> impl futures::Stream<Item = Result<Pod, watcher::Error>> + Send + 'static {
    watcher(pods, watcher::Config::default())
        .default_backoff()
        .modify(slim_pod)
        .filter(move |event| {
            let keep = match event {
                Ok(watcher::Event::Apply(p)) => {
                    reader.get(&ObjectRef::from_obj(p)).is_none_or(|old| {
                        old.metadata.labels != p.metadata.labels
                            || old.spec.as_ref().map(|s| &s.service_account_name)
                                != p.spec.as_ref().map(|s| &s.service_account_name)
                            || old.metadata.deletion_timestamp.is_some()
                                != p.metadata.deletion_timestamp.is_some()
                    })
                }
                _ => true,
            };
            futures::future::ready(keep)
        })
        .reflect(writer)
        .touched_objects()
}

/// Policies whose target Service selects `pod`.
fn policies_selecting(
    policies: &Store<ApiSecurityPolicy>,
    services: &Store<Service>,
    pod: &Pod,
) -> Vec<ObjectRef<ApiSecurityPolicy>> {
    let ns = pod.namespace();
    let within = ns.clone().unwrap_or_default();
    let labels = pod.labels();
    let selects = |sel: &std::collections::BTreeMap<String, String>| {
        !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v))
    };
    policies_in(policies, ns, |p| {
        let service = ObjectRef::new(&p.spec.target.service).within(&within);
        services
            .get(&service)
            .and_then(|s| s.spec.as_ref()?.selector.clone())
            .is_some_and(|sel| selects(&sel))
    })
}

/// The policies in `namespace` for which `pick` holds.
fn policies_in(
    store: &Store<ApiSecurityPolicy>,
    namespace: Option<String>,
    pick: impl Fn(&ApiSecurityPolicy) -> bool,
) -> Vec<ObjectRef<ApiSecurityPolicy>> {
    store
        .state()
        .iter()
        .filter(|p| p.namespace() == namespace && pick(p))
        .map(|p| ObjectRef::from_obj(p.as_ref()))
        .collect()
}

/// Policies in `namespace` that name Secret `name` in their spec.
fn policies_referencing_secret(
    store: &Store<ApiSecurityPolicy>,
    namespace: Option<String>,
    name: &str,
) -> Vec<ObjectRef<ApiSecurityPolicy>> {
    policies_in(store, namespace, |p| {
        let auth = p.spec.authentication();
        let api_keys = auth
            .api_keys
            .as_ref()
            .is_some_and(|k| k.secret_ref.name == name);
        let jwks = auth.jwt.as_ref().is_some_and(|j| {
            j.providers
                .iter()
                .any(|pr| pr.jwks.secret_ref.as_ref().is_some_and(|r| r.name == name))
        });
        let serving = p
            .spec
            .tls()
            .certificate_secret_ref
            .is_some_and(|r| r.name == name);
        api_keys || jwks || serving
    })
}

/// Policies in `namespace` whose `spec.openapi.source.configMapRef` names ConfigMap `name`.
fn policies_referencing_config_map(
    store: &Store<ApiSecurityPolicy>,
    namespace: Option<String>,
    name: &str,
) -> Vec<ObjectRef<ApiSecurityPolicy>> {
    policies_in(store, namespace, |p| {
        crate::render::openapi::config_map_name(p) == Some(name)
    })
}

/// How a child kind's changes re-trigger policies: the policy its controller ownerRef names.
fn owned_trigger<K>(
    controller: Controller<ApiSecurityPolicy>,
    stream: impl futures::Stream<Item = Result<PartialObjectMeta<K>, watcher::Error>> + Send + 'static,
    _policies: &Store<ApiSecurityPolicy>,
) -> Controller<ApiSecurityPolicy>
where
    K: Resource<DynamicType = ()> + Send + 'static,
{
    controller.owns_stream(stream)
}

/// How ConfigMap changes re-trigger policies: [`config_map_owners`] (the shared trust bundle
/// also triggers the namespace's current anchor).
fn config_map_trigger(
    controller: Controller<ApiSecurityPolicy>,
    stream: impl futures::Stream<Item = Result<PartialObjectMeta<ConfigMap>, watcher::Error>>
    + Send
    + 'static,
    policies: &Store<ApiSecurityPolicy>,
) -> Controller<ApiSecurityPolicy> {
    let policies = policies.clone();
    controller.watches_stream(stream, move |cm| config_map_owners(&policies, &cm))
}

/// The CA Secret: its cache, and a stream that ticks on every change (also sent to `changed`,
/// for the CA rotation driver: the leader watches the CA Secret once).
fn watch_ca_secret(
    client: &kube::Client,
    config: &Config,
    changed: tokio::sync::watch::Sender<()>,
) -> (
    Store<Secret>,
    impl futures::Stream<Item = ()> + Send + 'static,
) {
    let (reader, writer) = reflector::store::<Secret>();
    let stream = watcher(
        Api::<Secret>::namespaced(client.clone(), &config.operator_namespace),
        watcher::Config::default().fields(&format!("metadata.name={}", config.ca_secret)),
    )
    .default_backoff()
    .reflect(writer)
    .touched_objects()
    .filter_map(|r| futures::future::ready(r.ok().map(|_| ())))
    .inspect(move |()| {
        changed.send_replace(());
    });
    (reader, stream)
}

/// Every Service (the targets), cached without status or managedFields.
fn watch_services(
    client: &kube::Client,
) -> (
    Store<Service>,
    impl futures::Stream<Item = Result<Service, watcher::Error>> + Send + 'static,
) {
    let (reader, writer) = reflector::store::<Service>();
    let stream = watcher(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(slim_service)
    .reflect(writer)
    .touched_objects();
    (reader, stream)
}

/// Every Pod reduced to labels and service account ([`pod_identity_changes`]).
fn watch_pods(
    client: &kube::Client,
) -> (
    Store<Pod>,
    impl futures::Stream<Item = Result<Pod, watcher::Error>> + Send + 'static,
) {
    let (reader, writer) = reflector::store::<Pod>();
    let stream = pod_identity_changes(Api::<Pod>::all(client.clone()), reader.clone(), writer);
    (reader, stream)
}

/// The controller over the policies, cached without managedFields or kubectl's last-applied
/// copy.
fn policy_controller(client: &kube::Client, config: &Config) -> Controller<ApiSecurityPolicy> {
    let (reader, writer) = reflector::store::<ApiSecurityPolicy>();
    let stream = watcher(
        Api::<ApiSecurityPolicy>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(|p: &mut ApiSecurityPolicy| slim_meta(&mut p.metadata))
    .reflect(writer)
    .applied_objects();
    Controller::for_stream(stream, reader).with_config(
        kube::runtime::controller::Config::default()
            .concurrency(config.concurrency)
            .debounce(config.debounce),
    )
}

/// Adds the triggers of what policies read: their target Service, the pods behind it, the
/// other policies, the Secrets and ConfigMaps they name, and the CA Secret.
fn with_input_triggers(
    controller: Controller<ApiSecurityPolicy>,
    client: &kube::Client,
    services: (
        Store<Service>,
        impl futures::Stream<Item = Result<Service, watcher::Error>> + Send + 'static,
    ),
    pods: impl futures::Stream<Item = Result<Pod, watcher::Error>> + Send + 'static,
    ca: impl futures::Stream<Item = ()> + Send + 'static,
) -> Controller<ApiSecurityPolicy> {
    let policies = controller.store();
    let by_service = policies.clone();
    let by_policy = policies.clone();
    let by_secret = policies.clone();
    let by_config_map = policies.clone();
    let by_pod = policies;
    let (services_for_pods, service_stream) = services;
    controller
        // A policy waiting for its Service reconciles when the Service appears or changes.
        .watches_stream(service_stream, move |svc| {
            policies_targeting(&by_service, svc.namespace(), &svc.name_any())
        })
        // A new pod behind the target, or a new service account: a new target certificate.
        .watches_stream(pods, move |pod| {
            policies_selecting(&by_pod, &services_for_pods, &pod)
        })
        // When a policy goes away or changes target, the others on its Service re-decide
        // the conflict, and a deleted bundle anchor hands the trust bundle on.
        .watches_stream(
            policy_events(Api::<ApiSecurityPolicy>::all(client.clone())),
            move |p| policies_affected_by(&by_policy, &p),
        )
        // Secrets a policy names (API keys, JWKS, serving certificate): metadata only.
        .watches_stream(
            watcher(
                Api::<PartialObjectMeta<Secret>>::all(client.clone()),
                watcher::Config::default(),
            )
            .default_backoff()
            .touched_objects(),
            move |s| policies_referencing_secret(&by_secret, s.namespace(), &s.name_any()),
        )
        // ConfigMaps holding a policy's OpenAPI document: metadata only (read when used).
        .watches_stream(
            watcher(
                Api::<PartialObjectMeta<ConfigMap>>::all(client.clone()),
                watcher::Config::default(),
            )
            .default_backoff()
            .touched_objects(),
            move |cm| {
                policies_referencing_config_map(&by_config_map, cm.namespace(), &cm.name_any())
            },
        )
        .reconcile_all_on(ca)
}

/// Marks `health` ready once every cache has listed.
async fn mark_synced(
    health: Arc<Health>,
    policies: Store<ApiSecurityPolicy>,
    children: ChildStores,
    inputs: InputStores,
    ca_secret: Store<Secret>,
) {
    let (policies_ok, children_ok, others) = tokio::join!(
        policies.wait_until_ready(),
        children.wait_until_ready(),
        futures::future::join_all([
            ca_secret.wait_until_ready().boxed(),
            inputs.services.wait_until_ready().boxed(),
            inputs.pods.wait_until_ready().boxed(),
        ]),
    );
    if policies_ok.is_ok() && children_ok && others.iter().all(Result::is_ok) {
        health.set_caches_synced();
        tracing::info!("controller caches synced");
    }
}

/// Runs the reconcile loop until `stop` resolves (graceful: running reconciles finish).
/// Marks `health` ready once every cache has synced.
pub(crate) async fn run_controller(
    client: kube::Client,
    config: Config,
    renderer: Arc<dyn GatewayRenderer>,
    metrics: Arc<ControllerMetrics>,
    health: Arc<Health>,
    reporter: Reporter,
    stop: Shutdown,
) {
    let (ca_changed, ca_changes) = tokio::sync::watch::channel(());
    let (ca_secret, ca_stream) = watch_ca_secret(&client, &config, ca_changed);
    let rotation = drive_ca_rotation(&client, &config, &reporter, ca_changes, stop.clone());
    let (services, service_stream) = watch_services(&client);
    let (pods, pod_stream) = watch_pods(&client);
    let controller = policy_controller(&client, &config);
    let policies = controller.store();
    let (children, controller) = ChildStores::watch(&client, controller, &policies);
    let controller = with_input_triggers(
        controller,
        &client,
        (services.clone(), service_stream),
        pod_stream,
        ca_stream,
    )
    .graceful_shutdown_on(stop);
    let inputs = InputStores { services, pods };
    let ctx = Arc::new(Context::new(ContextSettings {
        client: client.clone(),
        config,
        renderer,
        policies: policies.clone(),
        children: children.clone(),
        inputs: inputs.clone(),
        ca_secret: ca_secret.clone(),
        recorder: Some(Recorder::new(client, reporter)),
        metrics,
        health: health.clone(),
    }));
    let synced = mark_synced(health, policies, children, inputs, ca_secret);
    let run = controller
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => tracing::debug!(policy = %obj, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile error"),
            }
        });
    tokio::join!(synced, run, rotation);
}

/// The leader also drives CA rotations (state kept in the CA Secret, so the next leader
/// carries on), woken by the controller's own watch of the CA Secret (`changes`).
fn drive_ca_rotation(
    client: &kube::Client,
    config: &Config,
    reporter: &Reporter,
    changes: tokio::sync::watch::Receiver<()>,
    stop: Shutdown,
) -> impl std::future::Future<Output = ()> + use<> {
    let client = client.clone();
    let namespace = config.operator_namespace.clone();
    let name = config.ca_secret.clone();
    let settings = crate::identity::ca_rotation::RotationSettings {
        propagation: time::Duration::try_from(config.ca_rotation_propagation)
            .unwrap_or(time::Duration::MAX),
        max_leaf_lifetime: config.leaf_lifetime,
    };
    let recorder = Some(Recorder::new(client.clone(), reporter.clone()));
    let changes = futures::stream::unfold(changes, |mut rx| async move {
        rx.changed().await.ok().map(|()| ((), rx))
    });
    async move {
        crate::certs::drive_ca_rotation(
            client, &namespace, &name, settings, recorder, changes, stop,
        )
        .await
    }
}

/// Everything `apiguard run` passes to the controller.
#[derive(Clone)]
pub struct Options {
    pub config: Config,
    pub leader: leader::LeaderConfig,
    pub renderer: Arc<dyn GatewayRenderer>,
    pub metrics: Arc<ControllerMetrics>,
    pub health: Arc<Health>,
    /// The background audit, run by the leader alongside reconciliation (`None`: off).
    pub audit: Option<crate::audit::Audit>,
}

/// The controller with leader election: every replica competes for the Lease; the holder
/// ensures the CA and reconciles until it loses the Lease or `shutdown` resolves.
pub async fn run(client: kube::Client, opts: Options, shutdown: Shutdown) -> Result<(), RunError> {
    let Options {
        config,
        leader,
        renderer,
        metrics,
        health,
        audit,
    } = opts;
    let reporter = Reporter {
        controller: "apiguard".into(),
        instance: Some(leader.identity.clone()),
    };
    let result = leader::lead(client.clone(), &leader, shutdown.clone(), {
        let health = health.clone();
        move |lost: Shutdown| {
            let client = client.clone();
            let config = config.clone();
            let renderer = renderer.clone();
            let metrics = metrics.clone();
            let health = health.clone();
            let reporter = reporter.clone();
            let audit = audit.clone();
            async move {
                health.set_leader(true);
                let now = time::OffsetDateTime::now_utc();
                let (ca, origin) = crate::certs::ensure_ca(
                    client.clone(),
                    &config.operator_namespace,
                    &config.ca_secret,
                    now,
                )
                .await?;
                tracing::info!(ca.fingerprint = %ca.fingerprint(), origin = ?origin, "leading; reconciling policies");
                // The controller also drives CA rotations, on its own watch of the CA Secret.
                let audit = audit.map(|a| {
                    crate::audit::run(client.clone(), a.config, a.metrics, lost.clone())
                });
                let audit = async move {
                    if let Some(audit) = audit {
                        audit.await;
                    }
                };
                let reconcile =
                    run_controller(client, config, renderer, metrics, health.clone(), reporter, lost);
                tokio::join!(reconcile, audit);
                health.set_leader(false);
                Ok::<(), RunError>(())
            }
        }
    })
    .await;
    health.set_leader(false);
    result
}
