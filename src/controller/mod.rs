//! The controller: reconciles every `ApiSecurityPolicy` into its gateway, certificates and
//! NetworkPolicies (DESIGN.md section 3), and reports status.
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
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::controller::Controller;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;

pub use gateway::{EnvoyRenderer, GatewayInput, GatewayObjects, GatewayRenderer, RenderError};
pub use metrics::{ControllerMetrics, Health};
pub use reconcile::{ChildStores, Config, Context, FIELD_MANAGER};

use crate::api::ApiSecurityPolicy;
use ownership::{MANAGED_BY_LABEL, MANAGED_BY_VALUE};

/// A shutdown signal that can be awaited from several places.
pub type Shutdown = Shared<BoxFuture<'static, ()>>;

/// Turns any future into a [`Shutdown`].
pub fn shutdown_on(f: impl std::future::Future<Output = ()> + Send + 'static) -> Shutdown {
    f.boxed().shared()
}

/// Errors that stop the controller.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("operator CA: {0}")]
    Ca(#[from] crate::identity::k8s::IdentityK8sError),
    #[error("leader election: {0}")]
    Lease(#[from] kube_lease_manager::LeaseManagerError),
}

fn managed_selector() -> watcher::Config {
    watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"))
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
    let stream = watcher(
        Api::<PartialObjectMeta<K>>::all(client.clone()),
        managed_selector(),
    )
    .default_backoff()
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

/// Policies in `namespace` that name Secret `name` in their spec.
fn policies_referencing_secret(
    store: &Store<ApiSecurityPolicy>,
    namespace: Option<String>,
    name: &str,
) -> Vec<ObjectRef<ApiSecurityPolicy>> {
    store
        .state()
        .iter()
        .filter(|p| p.namespace() == namespace)
        .filter(|p| {
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
        .map(|p| ObjectRef::from_obj(p.as_ref()))
        .collect()
}

/// Runs the reconcile loop until `stop` resolves (graceful: running reconciles finish).
/// Marks `health` ready once every cache has synced.
pub async fn run_controller(
    client: kube::Client,
    config: Config,
    renderer: Arc<dyn GatewayRenderer>,
    metrics: Arc<ControllerMetrics>,
    health: Arc<Health>,
    reporter: Reporter,
    stop: Shutdown,
) {
    let policies_api = Api::<ApiSecurityPolicy>::all(client.clone());
    let (config_maps, cm_stream) = child_reflector::<ConfigMap>(&client);
    let (secrets, secret_stream) = child_reflector::<Secret>(&client);
    let (deployments, deploy_stream) = child_reflector::<Deployment>(&client);
    let (services, svc_stream) = child_reflector::<Service>(&client);
    let (network_policies, np_stream) = child_reflector::<NetworkPolicy>(&client);

    // The CA Secret: cached, and any change re-reconciles every policy.
    let (ca_reader, ca_writer) = reflector::store::<Secret>();
    let ca_stream = watcher(
        Api::<Secret>::namespaced(client.clone(), &config.operator_namespace),
        watcher::Config::default().fields(&format!("metadata.name={}", config.ca_secret)),
    )
    .default_backoff()
    .reflect(ca_writer)
    .touched_objects()
    .filter_map(|r| futures::future::ready(r.ok().map(|_| ())));

    let controller = Controller::new(policies_api.clone(), watcher::Config::default());
    let policies = controller.store();
    let by_service = policies.clone();
    let by_policy = policies.clone();
    let by_secret = policies.clone();
    let controller = controller
        .owns_stream(cm_stream)
        .owns_stream(secret_stream)
        .owns_stream(deploy_stream)
        .owns_stream(svc_stream)
        .owns_stream(np_stream)
        // A policy waiting for its Service reconciles when the Service appears or changes
        // (metadata only: the mapping needs names).
        .watches_stream(
            watcher(
                Api::<PartialObjectMeta<Service>>::all(client.clone()),
                watcher::Config::default(),
            )
            .default_backoff()
            .touched_objects(),
            move |svc| policies_targeting(&by_service, svc.namespace(), &svc.name_any()),
        )
        // When a policy goes away or changes target, the others on its Service re-decide
        // the conflict.
        .watches(policies_api, watcher::Config::default(), move |p| {
            policies_targeting(&by_policy, p.namespace(), &p.spec.target.service)
                .into_iter()
                .filter(|r| r.name != p.name_any())
                .collect::<Vec<_>>()
        })
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
        .reconcile_all_on(ca_stream)
        .graceful_shutdown_on(stop);

    let children = ChildStores {
        config_maps,
        secrets,
        deployments,
        services,
        network_policies,
    };
    let ctx = Arc::new(Context::new(
        client.clone(),
        config,
        renderer,
        policies.clone(),
        children.clone(),
        ca_reader.clone(),
        Some(Recorder::new(client, reporter)),
        metrics,
        health.clone(),
    ));

    let synced = {
        let health = health.clone();
        async move {
            let waits = [
                policies.wait_until_ready().boxed(),
                children.config_maps.wait_until_ready().boxed(),
                children.secrets.wait_until_ready().boxed(),
                children.deployments.wait_until_ready().boxed(),
                children.services.wait_until_ready().boxed(),
                children.network_policies.wait_until_ready().boxed(),
                ca_reader.wait_until_ready().boxed(),
            ];
            if futures::future::join_all(waits)
                .await
                .iter()
                .all(Result::is_ok)
            {
                health.set_caches_synced();
                tracing::info!("controller caches synced");
            }
        }
    };
    let run = controller
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => tracing::debug!(policy = %obj, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile error"),
            }
        });
    tokio::join!(synced, run);
}

/// Everything `apiguard run` passes to the controller.
#[derive(Clone)]
pub struct Options {
    pub config: Config,
    pub leader: leader::LeaderConfig,
    pub renderer: Arc<dyn GatewayRenderer>,
    pub metrics: Arc<ControllerMetrics>,
    pub health: Arc<Health>,
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
            async move {
                health.set_leader(true);
                let now = time::OffsetDateTime::now_utc();
                let (ca, origin) = crate::identity::k8s::ensure_ca(
                    client.clone(),
                    &config.operator_namespace,
                    &config.ca_secret,
                    now,
                )
                .await?;
                tracing::info!(ca.fingerprint = %ca.fingerprint(), origin = ?origin, "leading; reconciling policies");
                run_controller(client, config, renderer, metrics, health.clone(), reporter, lost)
                    .await;
                health.set_leader(false);
                Ok::<(), RunError>(())
            }
        }
    })
    .await;
    health.set_leader(false);
    result
}
