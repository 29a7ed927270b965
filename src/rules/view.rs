//! [`InMemoryView`]: a [`ClusterView`] built from manifests (the objects of one `lint` run,
//! or a test's fixtures).

use super::{ClusterView, Related};
use crate::api::ApiSecurityPolicy;
use k8s_openapi::api::core::v1::Service;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The ApiSecurityPolicies, Services and [`Related`] objects among some objects,
/// indexed by namespace. Objects without a namespace are in `default`. Objects that do not
/// parse into their type are left out (their own review reports them).
#[derive(Debug, Default, Clone)]
pub struct InMemoryView {
    policies: BTreeMap<String, Vec<Arc<ApiSecurityPolicy>>>,
    services: BTreeMap<(String, String), Arc<Service>>,
    related: BTreeMap<(Related, String), Vec<Arc<Value>>>,
}

fn namespace_of(object: &Value) -> String {
    object
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or("default")
        .to_string()
}

impl InMemoryView {
    /// An empty view (nothing else exists).
    pub fn new() -> Self {
        Self::default()
    }

    pub fn from_objects<'a>(objs: impl IntoIterator<Item = &'a Value>) -> Self {
        let mut view = InMemoryView::default();
        for o in objs {
            view.add(o);
        }
        view
    }

    /// Adds everything `other` holds, as if its objects had been added after this view's.
    pub(crate) fn merge(&mut self, other: InMemoryView) {
        for (ns, mut policies) in other.policies {
            self.policies.entry(ns).or_default().append(&mut policies);
        }
        self.services.extend(other.services);
        for (key, mut objects) in other.related {
            self.related.entry(key).or_default().append(&mut objects);
        }
    }

    /// Adds one object if it is of a kind the view holds.
    pub fn add(&mut self, object: &Value) {
        let api_version = object
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or("");
        let kind = object.get("kind").and_then(Value::as_str).unwrap_or("");
        let ns = namespace_of(object);
        match (api_version.split('/').next().unwrap_or(""), kind) {
            ("apiguard.dev", "ApiSecurityPolicy") => {
                if let Ok(mut p) = ApiSecurityPolicy::deserialize(object) {
                    p.metadata.namespace = Some(ns.clone());
                    self.policies.entry(ns).or_default().push(Arc::new(p));
                }
            }
            ("v1", "Service") => {
                if let Ok(mut s) = Service::deserialize(object) {
                    let name = s.metadata.name.clone().unwrap_or_default();
                    s.metadata.namespace = Some(ns.clone());
                    self.services.insert((ns, name), Arc::new(s));
                }
            }
            _ => {
                if let Some(related) = Related::of(api_version, kind) {
                    self.related
                        .entry((related, ns))
                        .or_default()
                        .push(Arc::new(object.clone()));
                }
            }
        }
    }
}

impl ClusterView for InMemoryView {
    fn policies_in(&self, namespace: &str) -> Vec<Arc<ApiSecurityPolicy>> {
        self.policies.get(namespace).cloned().unwrap_or_default()
    }

    fn service(&self, namespace: &str, name: &str) -> Option<Arc<Service>> {
        self.services
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    fn related_in(&self, kind: Related, namespace: &str) -> Vec<Arc<Value>> {
        self.related
            .get(&(kind, namespace.to_string()))
            .cloned()
            .unwrap_or_default()
    }
}
