//! The webhook's view of the cluster: kube-runtime reflector caches of ApiSecurityPolicies,
//! Services and every [`Related`] kind whose CRD is installed (Envoy Gateway SecurityPolicies
//! and ClientTrafficPolicies, GKE FrontendConfigs).

use crate::api::ApiSecurityPolicy;
use crate::rules::{ClusterView, Related};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use kube::core::DynamicObject;
use kube::discovery::Discovery;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use tokio::sync::watch;

/// Reflector-backed [`ClusterView`].
#[derive(Clone)]
pub struct ReflectorView {
    policies: Store<ApiSecurityPolicy>,
    services: Store<Service>,
    /// One cache per related kind whose CRD is installed (a missing kind is an empty view).
    related: BTreeMap<Related, Store<DynamicObject>>,
}

/// Why the cluster view could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("API discovery for {groups} failed: {source}")]
    Discovery { groups: String, source: kube::Error },
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
        let groups: BTreeSet<&str> = Related::ALL.iter().map(|r| r.group_kind().0).collect();
        let groups: Vec<&str> = groups.into_iter().collect();
        let discovery = Discovery::new(client.clone())
            .filter(&groups)
            .run()
            .await
            .map_err(|source| ViewError::Discovery {
                groups: groups.join(", "),
                source,
            })?;
        let mut related = BTreeMap::new();
        for kind in Related::ALL {
            let (group, kind_name) = kind.group_kind();
            let found = discovery
                .groups()
                .find(|g| g.name() == group)
                .and_then(|g| g.recommended_kind(kind_name));
            let Some((resource, _caps)) = found else {
                tracing::info!(
                    group,
                    kind = kind_name,
                    "CRD not installed: the rules see none of this kind (restart after installing it)"
                );
                continue;
            };
            tracing::info!(group, version = %resource.version, kind = kind_name, "watching");
            let writer = reflector::store::Writer::new(resource.clone());
            let store = writer.as_reader();
            related.insert(
                *kind,
                spawn_reflector(
                    Api::<DynamicObject>::all_with(client.clone(), &resource),
                    (store, writer),
                    kind_name,
                    shutdown.clone(),
                ),
            );
        }
        Ok(Self {
            policies,
            services,
            related,
        })
    }

    /// Completes once every cache has its initial list.
    pub async fn synced(&self) -> Result<(), reflector::store::WriterDropped> {
        self.policies.wait_until_ready().await?;
        self.services.wait_until_ready().await?;
        for store in self.related.values() {
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

    fn related_in(&self, kind: Related, namespace: &str) -> Vec<Arc<Value>> {
        let Some(store) = self.related.get(&kind) else {
            return Vec::new();
        };
        store
            .state_filter(|p| p.metadata.namespace.as_deref() == Some(namespace))
            .into_iter()
            .filter_map(|p| serde_json::to_value(p.as_ref()).ok().map(Arc::new))
            .collect()
    }
}
