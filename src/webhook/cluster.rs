//! The webhook's view of the cluster: kube-runtime reflector caches of ApiSecurityPolicies,
//! Services and (when its CRD is installed) Envoy Gateway SecurityPolicies.

use crate::api::ApiSecurityPolicy;
use crate::rules::ClusterView;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use kube::core::{DynamicObject, GroupVersionKind};
use kube::discovery::Discovery;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde_json::Value;
use std::sync::Arc;
use tokio::sync::watch;

/// Group, version and kind of Envoy Gateway's SecurityPolicy.
pub const ENVOY_SECURITY_POLICY: (&str, &str, &str) =
    ("gateway.envoyproxy.io", "v1alpha1", "SecurityPolicy");

/// Reflector-backed [`ClusterView`].
#[derive(Clone)]
pub struct ReflectorView {
    policies: Store<ApiSecurityPolicy>,
    services: Store<Service>,
    /// `None` when the SecurityPolicy CRD is not installed (an empty view of that kind).
    security_policies: Option<Store<DynamicObject>>,
}

/// Why the cluster view could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("API discovery for {group} failed: {source}")]
    Discovery {
        group: &'static str,
        source: kube::Error,
    },
}

impl ReflectorView {
    /// Start the reflectors (their tasks run until `shutdown` completes). The view answers
    /// from the caches as they fill; await [`ReflectorView::synced`] before serving.
    pub async fn start(client: Client, shutdown: watch::Receiver<bool>) -> Result<Self, ViewError> {
        let policies = spawn_reflector(
            Api::<ApiSecurityPolicy>::all(client.clone()),
            reflector::store(),
            "ApiSecurityPolicy",
            shutdown.clone(),
        );
        let services = spawn_reflector(
            Api::<Service>::all(client.clone()),
            reflector::store(),
            "Service",
            shutdown.clone(),
        );
        let (group, version, kind) = ENVOY_SECURITY_POLICY;
        let discovery = Discovery::new(client.clone())
            .filter(&[group])
            .run()
            .await
            .map_err(|source| ViewError::Discovery { group, source })?;
        let security_policies = match discovery
            .resolve_gvk(&GroupVersionKind::gvk(group, version, kind))
        {
            Some((resource, _caps)) => {
                tracing::info!(
                    group,
                    version,
                    kind,
                    "watching Envoy Gateway SecurityPolicies"
                );
                let writer = reflector::store::Writer::new(resource.clone());
                let store = writer.as_reader();
                Some(spawn_reflector(
                    Api::<DynamicObject>::all_with(client, &resource),
                    (store, writer),
                    "SecurityPolicy",
                    shutdown,
                ))
            }
            None => {
                tracing::info!(
                    group,
                    version,
                    kind,
                    "CRD not installed: rules see no Envoy Gateway SecurityPolicies (restart after installing Envoy Gateway)"
                );
                None
            }
        };
        Ok(Self {
            policies,
            services,
            security_policies,
        })
    }

    /// Completes once every cache has its initial list.
    pub async fn synced(&self) -> Result<(), reflector::store::WriterDropped> {
        self.policies.wait_until_ready().await?;
        self.services.wait_until_ready().await?;
        if let Some(store) = &self.security_policies {
            store.wait_until_ready().await?;
        }
        Ok(())
    }
}

fn spawn_reflector<K>(
    api: Api<K>,
    (store, writer): (Store<K>, reflector::store::Writer<K>),
    kind: &'static str,
    mut shutdown: watch::Receiver<bool>,
) -> Store<K>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
{
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
        .default_backoff()
        .touched_objects()
        .for_each(move |event| {
            if let Err(e) = event {
                tracing::warn!(kind, error = %e, "webhook cache watch error; retrying");
            }
            futures::future::ready(())
        });
    tokio::spawn(async move {
        tokio::select! {
            _ = stream => {}
            _ = shutdown.wait_for(|stop| *stop) => {}
        }
    });
    store
}

impl ClusterView for ReflectorView {
    fn policies_in(&self, namespace: &str) -> Vec<Arc<ApiSecurityPolicy>> {
        self.policies
            .state_filter(|p| p.metadata.namespace.as_deref() == Some(namespace))
    }

    fn service(&self, namespace: &str, name: &str) -> Option<Arc<Service>> {
        self.services.get(&ObjectRef::new(name).within(namespace))
    }

    fn security_policies_in(&self, namespace: &str) -> Vec<Arc<Value>> {
        let Some(store) = &self.security_policies else {
            return Vec::new();
        };
        store
            .state_filter(|p| p.metadata.namespace.as_deref() == Some(namespace))
            .into_iter()
            .filter_map(|p| serde_json::to_value(p.as_ref()).ok().map(Arc::new))
            .collect()
    }
}
