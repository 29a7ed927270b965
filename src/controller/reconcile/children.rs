//! The children of a policy: the one list of the kinds apiguard writes ([`child_kinds!`]), their
//! caches ([`ChildStores`]), and [`ChildSet`], which applies a policy's children, records each
//! one, and prunes the policy's objects it did not record (as stackable operator-rs's
//! `ClusterResources` does).
//!
//! Adding a kind of child is one line in the [`child_kinds!`] invocation below (it gets a cache,
//! a watch that re-triggers its policy, pruning, and a place in the readiness check), plus the
//! RBAC rules that let the operator watch, apply and delete it.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Debug;
use std::hash::{Hash, Hasher};

use futures::FutureExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, PartialObjectMeta, Patch, PatchParams, Preconditions};
use kube::runtime::Controller;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Context, Error};
use crate::api::ApiSecurityPolicy;
use crate::api::names::field_managers;
use crate::api::names::labels::{MANAGED_BY, MANAGED_BY_VALUE, POLICY};
use crate::controller::conditions::{Reason, Verdict};
use crate::controller::ownership::{self, Ownership};
use crate::controller::{config_map_trigger, owned_trigger};

/// A kind of object apiguard writes for policies. Implemented by [`child_kinds!`] for the kinds
/// it lists (and only those: a child of another kind does not compile).
pub(crate) trait ChildKind:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + Serialize
    + DeserializeOwned
    + Debug
    + Send
    + Sync
    + 'static
{
    /// This kind's cache.
    fn store(stores: &ChildStores) -> &Store<PartialObjectMeta<Self>>;
}

/// Defines, from the list of child kinds: [`ChildStores`] (a field per kind), [`ChildKind`] for
/// each kind, [`ChildStores::watch`], [`ChildStores::wait_until_ready`] and
/// [`ChildSet::prune_orphans`]. Each entry: `field: Kind => trigger`, where `trigger` adds the
/// kind's watch to the controller (`owned_trigger`: its controller ownerRef's policy).
macro_rules! child_kinds {
    ($($field:ident: $kind:ty => $trigger:path),+ $(,)?) => {
        /// Metadata-only caches of the children apiguard manages
        /// (`app.kubernetes.io/managed-by=apiguard`), one per child kind.
        #[derive(Clone)]
        pub struct ChildStores {
            $(pub $field: Store<PartialObjectMeta<$kind>>,)+
        }

        $(impl ChildKind for $kind {
            fn store(stores: &ChildStores) -> &Store<PartialObjectMeta<Self>> {
                &stores.$field
            }
        })+

        impl ChildStores {
            /// Starts a metadata watch of every child kind: the caches, and `controller`
            /// re-triggered by their changes (`policies`: the controller's policy cache).
            pub(crate) fn watch(
                client: &kube::Client,
                controller: Controller<ApiSecurityPolicy>,
                policies: &Store<ApiSecurityPolicy>,
            ) -> (Self, Controller<ApiSecurityPolicy>) {
                $(
                    let ($field, stream) = crate::controller::child_reflector::<$kind>(client);
                    let controller = $trigger(controller, stream, policies);
                )+
                (Self { $($field,)+ }, controller)
            }

            /// Waits until every cache has listed; false when one was dropped before.
            pub(crate) async fn wait_until_ready(&self) -> bool {
                let waits = [$(self.$field.wait_until_ready().boxed(),)+];
                futures::future::join_all(waits)
                    .await
                    .iter()
                    .all(Result::is_ok)
            }
        }

        impl ChildSet<'_> {
            /// Deletes the policy's objects (its label and controller ownerRef) of every child
            /// kind that this set did not record. Returns how many were deleted.
            pub(crate) async fn prune_orphans(&self) -> Result<usize, Error> {
                let mut deleted = 0;
                $(deleted += self.prune_kind::<$kind>().await?;)+
                Ok(deleted)
            }
        }
    };
}

// The one list of child kinds. Its order is the order of pruning.
child_kinds! {
    config_maps: ConfigMap => config_map_trigger,
    secrets: Secret => owned_trigger,
    deployments: Deployment => owned_trigger,
    services: Service => owned_trigger,
    network_policies: NetworkPolicy => owned_trigger,
}

/// Which condition a child counts toward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Group {
    /// `Programmed`: the gateway's objects.
    Gateway,
    /// `CertificatesReady`: the leaf Secrets and the trust bundle.
    Certificates,
    /// `NetworkIsolated`: the NetworkPolicies.
    Network,
}

/// Result of applying one child.
#[derive(Debug)]
enum Applied {
    Written,
    Unchanged,
    NotOwned(String),
    Failed(Error),
}

/// What happened to one group's children.
#[derive(Debug, Default)]
struct Tally {
    total: usize,
    not_owned: Vec<String>,
    failed: Vec<String>,
}

/// The children of one policy in one reconcile: each is applied when added and recorded (kind
/// and name, whether or not the apply succeeded), so [`ChildSet::prune_orphans`] deletes exactly
/// the policy's objects this reconcile did not want.
pub(crate) struct ChildSet<'a> {
    ctx: &'a Context,
    policy: &'a ApiSecurityPolicy,
    owner: &'a OwnerReference,
    /// (kind, name) of every child added.
    recorded: BTreeSet<(String, String)>,
    /// Metadata this reconcile already read, by (kind, name); `None`: the object does not
    /// exist. Such a child is not looked up again before it is applied.
    known: HashMap<(String, String), Option<ObjectMeta>>,
    tallies: BTreeMap<Group, Tally>,
    failures: usize,
}

fn kind_of<K: Resource<DynamicType = ()>>() -> String {
    K::kind(&()).to_string()
}

impl<'a> ChildSet<'a> {
    /// An empty set for `policy`, whose controller reference is `owner`.
    pub(crate) fn new(
        ctx: &'a Context,
        policy: &'a ApiSecurityPolicy,
        owner: &'a OwnerReference,
    ) -> Self {
        Self {
            ctx,
            policy,
            owner,
            recorded: BTreeSet::new(),
            known: HashMap::new(),
            tallies: BTreeMap::new(),
            failures: 0,
        }
    }

    /// Tells the set what this reconcile read of the `K` named `name` (`None`: absent).
    pub(crate) fn already_read<K: ChildKind>(&mut self, name: &str, meta: Option<ObjectMeta>) {
        self.known.insert((kind_of::<K>(), name.to_string()), meta);
    }

    /// Makes `obj` a child of the policy (common labels, the policy's controller ownerRef, the
    /// policy's namespace), records it and applies it, unless someone else owns it.
    pub(crate) async fn add<K: ChildKind>(&mut self, group: Group, mut obj: K) {
        own(obj.meta_mut(), self.policy, self.owner);
        self.apply(group, &obj, false).await;
    }

    /// Records and applies an object the namespace's policies share (the trust bundle), as the
    /// caller labelled and owned it; it is ours when labelled as managed by apiguard.
    pub(crate) async fn add_shared<K: ChildKind>(&mut self, group: Group, obj: K) {
        self.apply(group, &obj, true).await;
    }

    async fn apply<K: ChildKind>(&mut self, group: Group, obj: &K, shared: bool) {
        let key = (kind_of::<K>(), obj.name_any());
        let just_read = self.known.get(&key).cloned();
        self.recorded.insert(key);
        let uid = self.policy.uid().unwrap_or_default();
        let applied = apply_one(self.ctx, obj, &uid, shared, just_read).await;
        let tally = self.tallies.entry(group).or_default();
        tally.total += 1;
        match applied {
            Applied::Written | Applied::Unchanged => {}
            Applied::NotOwned(m) => tally.not_owned.push(m),
            Applied::Failed(e) => {
                tally.failed.push(e.to_string());
                self.failures += 1;
            }
        }
    }

    /// How many children of `group` were added.
    pub(crate) fn count(&self, group: Group) -> usize {
        self.tallies.get(&group).map_or(0, |t| t.total)
    }

    /// How many children could not be applied (a retry, unlike a child someone else owns).
    pub(crate) fn failures(&self) -> usize {
        self.failures
    }

    /// The condition of `group`: `NotOwned` or `ApplyFailed` naming the children concerned,
    /// else `ok_reason` with `ok_message`.
    pub(crate) fn verdict(&self, group: Group, ok_reason: Reason, ok_message: String) -> Verdict {
        let empty = Tally::default();
        let tally = self.tallies.get(&group).unwrap_or(&empty);
        if !tally.not_owned.is_empty() {
            Verdict::fail(Reason::NotOwned, tally.not_owned.join("; "))
        } else if !tally.failed.is_empty() {
            Verdict::fail(Reason::ApplyFailed, tally.failed.join("; "))
        } else {
            Verdict::ok(ok_reason, ok_message)
        }
    }

    /// Names of the recorded children of kind `K`.
    fn recorded_names<K: ChildKind>(&self) -> Vec<String> {
        let kind = kind_of::<K>();
        self.recorded
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, name)| name.clone())
            .collect()
    }

    /// Deletes the cached objects of kind `K` labelled for the policy and controlled by it that
    /// this set did not record.
    async fn prune_kind<K: ChildKind>(&self) -> Result<usize, Error> {
        let policy = self.policy;
        let ns = policy.namespace().unwrap_or_default();
        let uid = policy.uid().unwrap_or_default();
        let name = policy.name_any();
        let desired = self.recorded_names::<K>();
        let api: Api<K> = Api::namespaced(self.ctx.settings.client.clone(), &ns);
        let mut deleted = 0;
        for obj in K::store(&self.ctx.settings.children).state() {
            let meta = &obj.metadata;
            if meta.namespace.as_deref() != Some(ns.as_str())
                || !ownership::prunable(meta, &name, &uid, &desired)
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
                        kind: kind_of::<K>(),
                        namespace: ns,
                        name: child,
                        source: Box::new(e),
                    });
                }
            }
            self.ctx
                .applied
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&applied_key::<K>(&ns, &child));
        }
        Ok(deleted)
    }
}

/// Key of a child in [`Context`]'s record of what was last applied.
fn applied_key<K: ChildKind>(ns: &str, name: &str) -> String {
    format!("{}/{ns}/{name}", kind_of::<K>())
}

/// Adds the common labels and the policy's controller ownerRef.
fn own(meta: &mut ObjectMeta, policy: &ApiSecurityPolicy, owner: &OwnerReference) {
    let labels = meta.labels.get_or_insert_with(BTreeMap::new);
    labels.insert(MANAGED_BY.into(), MANAGED_BY_VALUE.into());
    labels.insert(POLICY.into(), policy.name_any());
    meta.namespace = policy.namespace();
    meta.owner_references = Some(vec![owner.clone()]);
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
pub(crate) fn fingerprint(live: &ObjectMeta, ours: &ObjectMeta) -> Option<String> {
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

/// Applies `obj` unless it is unchanged since our last write; refuses objects someone else
/// owns. `just_read`: the object's metadata as this reconcile already read it (`Some(None)`:
/// it does not exist), so it is not asked for again.
async fn apply_one<K: ChildKind>(
    ctx: &Context,
    obj: &K,
    policy_uid: &str,
    shared: bool,
    just_read: Option<Option<ObjectMeta>>,
) -> Applied {
    let kind = kind_of::<K>();
    let ns = obj.namespace().unwrap_or_default();
    let name = obj.name_any();
    let api: Api<K> = Api::namespaced(ctx.settings.client.clone(), &ns);
    let key = applied_key::<K>(&ns, &name);
    let cached = match just_read {
        Some(read) => Some(read),
        None => K::store(&ctx.settings.children)
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
        let applied = ctx.applied.lock().unwrap_or_else(|e| e.into_inner());
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
                ctx.applied
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

#[cfg(test)]
mod tests {
    use super::*;

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

    mod child_set {
        //! A [`ChildSet`] against a scripted apiserver (tower-test): what it applies, refuses
        //! and prunes.
        use super::super::super::{Config, ContextSettings, InputStores};
        use super::*;
        use crate::api::ApiSecurityPolicySpec;
        use crate::controller::{ControllerMetrics, EnvoyRenderer, Health};
        use axum::http::{Method, Request, Response};
        use kube::client::Body;
        use kube::runtime::reflector::{self, store::Writer};
        use kube::runtime::watcher;
        use std::sync::Arc;
        use tower_test::mock;

        fn policy() -> ApiSecurityPolicy {
            let spec: ApiSecurityPolicySpec = serde_json::from_value(serde_json::json!({
                "target": {"service": "api", "port": 8080},
                "exposure": "Internal",
            }))
            .unwrap();
            let mut p = ApiSecurityPolicy::new("payments", spec);
            p.metadata.namespace = Some("shop".into());
            p.metadata.uid = Some("p-uid".into());
            p
        }

        /// Metadata of an object labelled for the policy; controlled by it when `owned`.
        fn cached<K: ChildKind>(
            name: &str,
            owner: Option<&OwnerReference>,
        ) -> PartialObjectMeta<K> {
            PartialObjectMeta {
                types: None,
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    namespace: Some("shop".into()),
                    uid: Some(format!("{name}-uid")),
                    labels: Some(BTreeMap::from([
                        (POLICY.to_string(), "payments".to_string()),
                        (MANAGED_BY.to_string(), MANAGED_BY_VALUE.to_string()),
                    ])),
                    owner_references: owner.map(|o| vec![o.clone()]),
                    ..Default::default()
                },
                _phantom: Default::default(),
            }
        }

        fn store<K: ChildKind>(
            objects: Vec<PartialObjectMeta<K>>,
        ) -> (Store<PartialObjectMeta<K>>, Writer<PartialObjectMeta<K>>) {
            let (reader, mut writer) = reflector::store();
            for o in objects {
                writer.apply_watcher_event(&watcher::Event::Apply(o));
            }
            (reader, writer)
        }

        fn named<K: Resource<DynamicType = ()> + Default>(name: &str) -> K {
            let mut o = K::default();
            o.meta_mut().name = Some(name.into());
            o
        }

        #[tokio::test]
        async fn applies_what_is_added_refuses_foreign_objects_and_prunes_the_rest() {
            let p = policy();
            let owner = p.controller_owner_ref(&()).unwrap();
            let (config_maps, _cw) = store::<ConfigMap>(vec![cached("payments-apiguard", None)]);
            let (secrets, _sw) = store::<Secret>(vec![cached("old", Some(&owner))]);
            let (deployments, _dw) = store::<Deployment>(vec![]);
            let (services, _svw) = store::<Service>(vec![]);
            let (network_policies, _nw) = store::<NetworkPolicy>(vec![
                cached("keep", Some(&owner)),
                cached("old", Some(&owner)),
            ]);
            let (svc, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
            let server = tokio::spawn(async move {
                let mut calls = Vec::new();
                while let Some((req, send)) = handle.next_request().await {
                    let (parts, body) = req.into_parts();
                    let body = body.collect_bytes().await.unwrap();
                    calls.push(format!("{} {}", parts.method, parts.uri.path()));
                    let reply = if parts.method == Method::PATCH {
                        body.to_vec()
                    } else {
                        serde_json::to_vec(&serde_json::json!({"kind": "Status",
                            "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 200}))
                        .unwrap()
                    };
                    send.send_response(Response::builder().body(Body::from(reply)).unwrap());
                }
                calls
            });
            let ctx = Context::new(ContextSettings {
                client: kube::Client::new(svc, "default"),
                config: Config {
                    operator_namespace: "apiguard-system".into(),
                    trust_domain: "cluster.local".into(),
                    ca_secret: "apiguard-ca".into(),
                    leaf_lifetime: time::Duration::hours(24),
                    concurrency: Config::DEFAULT_CONCURRENCY,
                    debounce: Config::DEFAULT_DEBOUNCE,
                    ca_rotation_propagation: Config::DEFAULT_CA_ROTATION_PROPAGATION,
                },
                renderer: Arc::new(EnvoyRenderer::default()),
                policies: reflector::store().0,
                children: ChildStores {
                    config_maps,
                    secrets,
                    deployments,
                    services,
                    network_policies,
                },
                inputs: InputStores {
                    services: reflector::store().0,
                    pods: reflector::store().0,
                },
                ca_secret: reflector::store().0,
                recorder: None,
                metrics: Arc::new(ControllerMetrics::default()),
                health: Arc::new(Health::default()),
            });
            let mut children = ChildSet::new(&ctx, &p, &owner);
            // Someone else's ConfigMap under the gateway's name: refused, not written.
            children
                .add(Group::Gateway, named::<ConfigMap>("payments-apiguard"))
                .await;
            children
                .add(Group::Network, named::<NetworkPolicy>("keep"))
                .await;
            assert_eq!(children.count(Group::Gateway), 1);
            assert_eq!(children.count(Group::Network), 1);
            assert_eq!(children.count(Group::Certificates), 0);
            assert_eq!(children.failures(), 0);
            let gateway = children.verdict(Group::Gateway, Reason::Programmed, "ok".into());
            assert_eq!(gateway.reason, Reason::NotOwned);
            assert!(
                gateway.message.contains("ConfigMap shop/payments-apiguard"),
                "{}",
                gateway.message
            );
            let network = children.verdict(Group::Network, Reason::Applied, "ok".into());
            assert_eq!(network, Verdict::ok(Reason::Applied, "ok"));
            // What was added stays, whatever its kind; the rest of the policy's objects go.
            assert_eq!(children.prune_orphans().await.unwrap(), 2);
            drop(children);
            drop(ctx);
            let calls = server.await.unwrap();
            assert_eq!(
                calls,
                [
                    "PATCH /apis/networking.k8s.io/v1/namespaces/shop/networkpolicies/keep",
                    "DELETE /api/v1/namespaces/shop/secrets/old",
                    "DELETE /apis/networking.k8s.io/v1/namespaces/shop/networkpolicies/old",
                ]
            );
        }
    }
}
