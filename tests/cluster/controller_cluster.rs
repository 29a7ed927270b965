//! The controller against the real control plane (kube-apiserver + etcd +
//! kube-controller-manager from `tests/tools.sh`), each scenario in its own namespace, with
//! one in-process operator shared by the module's tests.

use std::sync::Arc;
use std::time::Duration;

use crate::support::cluster::{create_service, eventually, with_temp_ns};
use crate::support::controller::Operator;
use apiguard::api::ApiSecurityPolicy;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

/// The operator this module's tests share (stopped when the module's last test ends).
fn operator() -> Arc<Operator> {
    crate::support::isolation::shared(|| Operator::start("cluster-tests", "apiguard-controller"))
}

fn policy_json(ns: &str, name: &str, target: &str, path: &str) -> serde_json::Value {
    json!({
        "apiVersion": "apiguard.dev/v1alpha1", "kind": "ApiSecurityPolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "target": {"service": target, "port": 8080},
            "exposure": "Internal",
            "authentication": {"jwt": {"providers": [{"name": "corp", "issuer": "https://idp.example/",
                "audiences": ["api"], "jwks": {"uri": "https://idp.example/jwks.json"}}]}},
            "authorization": {"rules": [{"name": "read", "match": {"methods": ["GET"], "paths": [path]},
                "allow": {"scopes": ["items:read"]}}]},
        }
    })
}

async fn create_policy(client: &Client, ns: &str, name: &str, target: &str) -> ApiSecurityPolicy {
    let p: ApiSecurityPolicy =
        serde_json::from_value(policy_json(ns, name, target, "/items")).unwrap();
    Api::<ApiSecurityPolicy>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &p)
        .await
        .unwrap_or_else(|e| panic!("creating ApiSecurityPolicy {ns}/{name}: {e}"))
}

/// (status, reason, message) of condition `type_`.
fn condition(p: &ApiSecurityPolicy, type_: &str) -> Option<(String, String, String)> {
    p.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Waits until condition `type_` has `status` (and `reason` when given) for the current
/// generation; returns the policy.
async fn wait_condition(
    client: &Client,
    ns: &str,
    name: &str,
    type_: &str,
    status: &str,
    reason: Option<&str>,
) -> ApiSecurityPolicy {
    let api = Api::<ApiSecurityPolicy>::namespaced(client.clone(), ns);
    eventually(
        WAIT,
        &format!("{ns}/{name} {type_}={status} {reason:?}"),
        || async {
            let p = api.get(name).await.ok()?;
            let (s, r, _) = condition(&p, type_)?;
            let current = p.status.as_ref()?.observed_generation == p.metadata.generation;
            (current && s == status && reason.is_none_or(|want| want == r)).then_some(p)
        },
    )
    .await
}

fn owned_by(meta: &impl Resource, p: &ApiSecurityPolicy) -> bool {
    meta.meta()
        .owner_references
        .as_deref()
        .unwrap_or(&[])
        .iter()
        .any(|o| o.uid == p.uid().unwrap() && o.controller == Some(true))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_policy_gets_its_children_follows_edits_restores_drift_and_is_cleaned_up() {
    let _group = crate::support::isolation::enter(module_path!());
    let _op = operator();
    with_temp_ns(|client, ns| async move {
        create_service(&client, &ns, "api").await;
        create_policy(&client, &ns, "payments", "api").await;
        let p = wait_condition(&client, &ns, "payments", "Ready", "True", None).await;
        assert_eq!(p.status.as_ref().unwrap().observed_generation, Some(1));
        for t in [
            "Accepted",
            "Programmed",
            "CertificatesReady",
            "NetworkIsolated",
        ] {
            assert_eq!(condition(&p, t).unwrap().0, "True", "{t}");
        }

        // Every child exists, controlled by the policy.
        let cms = Api::<ConfigMap>::namespaced(client.clone(), &ns);
        let secrets = Api::<Secret>::namespaced(client.clone(), &ns);
        let deployments = Api::<Deployment>::namespaced(client.clone(), &ns);
        let services = Api::<Service>::namespaced(client.clone(), &ns);
        let nps = Api::<NetworkPolicy>::namespaced(client.clone(), &ns);
        let cm = cms.get("payments-apiguard").await.unwrap();
        assert!(owned_by(&cm, &p));
        assert!(owned_by(
            &deployments.get("payments-apiguard").await.unwrap(),
            &p
        ));
        assert!(owned_by(
            &services.get("payments-apiguard").await.unwrap(),
            &p
        ));
        assert!(owned_by(
            &nps.get("payments-apiguard-target").await.unwrap(),
            &p
        ));
        for s in [
            "payments-apiguard-gateway-identity",
            "payments-apiguard-target-identity",
        ] {
            let secret = secrets.get(s).await.unwrap();
            assert!(owned_by(&secret, &p), "{s}");
            assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
        }
        let bundle = cms.get("apiguard-trust-bundle").await.unwrap();
        assert!(bundle.data.unwrap()["ca.crt"].contains("BEGIN CERTIFICATE"));
        // Written by the one field manager, with server-side apply.
        let managers: Vec<_> = cm
            .metadata
            .managed_fields
            .unwrap_or_default()
            .into_iter()
            .map(|m| {
                (
                    m.manager.unwrap_or_default(),
                    m.operation.unwrap_or_default(),
                )
            })
            .collect();
        assert_eq!(managers, [("apiguard".to_string(), "Apply".to_string())]);
        let status = p.status.as_ref().unwrap();
        let gateway = status.gateway.as_ref().unwrap();
        assert_eq!(gateway.service, "payments-apiguard");
        assert_eq!(status.certificates.len(), 2);

        // The transitions were published as one Event on the policy, naming each.
        let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), &ns);
        eventually(WAIT, "Ready Event", || async {
            let list = events.list(&Default::default()).await.ok()?;
            list.items
                .iter()
                .any(|e| {
                    let note = e.note.as_deref().unwrap_or_default();
                    e.reason.as_deref() == Some("Ready")
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("payments")
                        && e.type_.as_deref() == Some("Normal")
                        && [
                            "Accepted",
                            "Programmed",
                            "CertificatesReady",
                            "NetworkIsolated",
                        ]
                        .iter()
                        .all(|c| note.contains(&format!("{c} is True")))
                })
                .then_some(())
        })
        .await;

        // A steady state is not rewritten.
        let rv = p.resource_version();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let api = Api::<ApiSecurityPolicy>::namespaced(client.clone(), &ns);
        assert_eq!(api.get("payments").await.unwrap().resource_version(), rv);

        // Edit: the ConfigMap and the config hash follow.
        let old_files = cms.get("payments-apiguard").await.unwrap().data;
        let old_hash = gateway.config_hash.clone();
        let edited = policy_json(&ns, "payments", "api", "/orders");
        api.patch(
            "payments",
            &PatchParams::apply("test-user").force(),
            &Patch::Apply(&edited),
        )
        .await
        .unwrap();
        let p2 = wait_condition(&client, &ns, "payments", "Ready", "True", None).await;
        assert_eq!(p2.status.as_ref().unwrap().observed_generation, Some(2));
        let new_hash = &p2
            .status
            .as_ref()
            .unwrap()
            .gateway
            .as_ref()
            .unwrap()
            .config_hash;
        assert_ne!(new_hash, &old_hash);
        let cm = cms.get("payments-apiguard").await.unwrap();
        let files = cm.data.clone().unwrap();
        assert_ne!(
            Some(&files),
            old_files.as_ref(),
            "the gateway files did not change"
        );
        assert!(files.values().any(|f| f.contains("/orders")), "{files:?}");
        assert!(
            !files.values().any(|f| f.contains("\"/items\"")),
            "{files:?}"
        );

        // Drift: a deleted NetworkPolicy comes back; an edited ConfigMap is restored.
        let np_uid = nps.get("payments-apiguard-target").await.unwrap().uid();
        nps.delete("payments-apiguard-target", &DeleteParams::default())
            .await
            .unwrap();
        eventually(WAIT, "NetworkPolicy restored", || async {
            let np = nps.get_opt("payments-apiguard-target").await.ok()??;
            (np.uid() != np_uid).then_some(())
        })
        .await;
        let files = cms.get("payments-apiguard").await.unwrap().data.unwrap();
        let tampered: std::collections::BTreeMap<_, _> = files
            .keys()
            .map(|k| (k.clone(), "tampered".to_string()))
            .collect();
        cms.patch(
            "payments-apiguard",
            &PatchParams::default(),
            &Patch::Merge(json!({ "data": tampered })),
        )
        .await
        .unwrap();
        eventually(WAIT, "ConfigMap restored", || async {
            let cm = cms.get("payments-apiguard").await.ok()?;
            (cm.data? == files).then_some(())
        })
        .await;

        // Delete: garbage collection removes every child.
        api.delete("payments", &DeleteParams::foreground())
            .await
            .unwrap();
        eventually(
            Duration::from_secs(60),
            "children garbage-collected",
            || async {
                let left = cms.get_opt("payments-apiguard").await.ok()?.is_some()
                    || deployments
                        .get_opt("payments-apiguard")
                        .await
                        .ok()?
                        .is_some()
                    || services.get_opt("payments-apiguard").await.ok()?.is_some()
                    || nps
                        .get_opt("payments-apiguard-target")
                        .await
                        .ok()?
                        .is_some()
                    || secrets
                        .get_opt("payments-apiguard-gateway-identity")
                        .await
                        .ok()?
                        .is_some()
                    || cms.get_opt("apiguard-trust-bundle").await.ok()?.is_some();
                (!left).then_some(())
            },
        )
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_newer_of_two_policies_on_one_service_gets_conflict_until_the_older_goes() {
    let _group = crate::support::isolation::enter(module_path!());
    let _op = operator();
    with_temp_ns(|client, ns| async move {
        create_service(&client, &ns, "api").await;
        create_policy(&client, &ns, "first", "api").await;
        wait_condition(&client, &ns, "first", "Ready", "True", None).await;
        // creationTimestamp has 1 s resolution: make sure the second is strictly newer.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        create_policy(&client, &ns, "second", "api").await;
        let second = wait_condition(
            &client,
            &ns,
            "second",
            "Accepted",
            "False",
            Some("Conflict"),
        )
        .await;
        let (_, _, message) = condition(&second, "Accepted").unwrap();
        assert!(message.contains(&format!("{ns}/first")), "{message}");
        let cms = Api::<ConfigMap>::namespaced(client.clone(), &ns);
        assert!(cms.get_opt("second-apiguard").await.unwrap().is_none());
        let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), &ns);
        eventually(WAIT, "Conflict warning Event", || async {
            let list = events.list(&Default::default()).await.ok()?;
            list.items
                .iter()
                .any(|e| {
                    e.reason.as_deref() == Some("Conflict") && e.type_.as_deref() == Some("Warning")
                })
                .then_some(())
        })
        .await;
        // The first one is unaffected.
        let api = Api::<ApiSecurityPolicy>::namespaced(client.clone(), &ns);
        let first = api.get("first").await.unwrap();
        assert_eq!(condition(&first, "Ready").unwrap().0, "True");
        // When the older policy goes, the newer takes over.
        api.delete("first", &DeleteParams::default()).await.unwrap();
        wait_condition(&client, &ns, "second", "Ready", "True", None).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_policy_before_its_service_waits_with_target_not_found_then_becomes_ready() {
    let _group = crate::support::isolation::enter(module_path!());
    let _op = operator();
    with_temp_ns(|client, ns| async move {
        create_policy(&client, &ns, "early", "later").await;
        let p = wait_condition(
            &client,
            &ns,
            "early",
            "Programmed",
            "False",
            Some("TargetNotFound"),
        )
        .await;
        assert_eq!(condition(&p, "Ready").unwrap().0, "False");
        create_service(&client, &ns, "later").await;
        wait_condition(&client, &ns, "early", "Ready", "True", None).await;
    })
    .await;
}

/// The SPIFFE ID in the target identity Secret of policy `name`.
async fn target_spiffe_id(client: &Client, ns: &str, name: &str) -> Option<String> {
    let s = Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt(&format!("{name}-apiguard-target-identity"))
        .await
        .ok()??;
    s.annotations().get("apiguard.dev/spiffe-id").cloned()
}

async fn create_pod(client: &Client, ns: &str, name: &str, app: &str, sa: &str) {
    let accounts =
        Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(client.clone(), ns);
    let account = serde_json::from_value(json!({"metadata": {"name": sa}})).unwrap();
    match accounts.create(&PostParams::default(), &account).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("creating ServiceAccount {ns}/{sa}: {e}"),
    }
    // No kubelet here: the pod stays Pending, which is all the controller looks at.
    let pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {"serviceAccountName": sa, "automountServiceAccountToken": false,
            "containers": [{"name": "api", "image": "example.invalid/api:1"}]},
    }))
    .unwrap();
    Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap_or_else(|e| panic!("creating Pod {ns}/{name}: {e}"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_target_certificate_follows_the_pods_service_account() {
    let _group = crate::support::isolation::enter(module_path!());
    let _op = operator();
    with_temp_ns(|client, ns| async move {
        create_service(&client, &ns, "api").await;
        create_pod(&client, &ns, "api-1", "api", "api-v1").await;
        create_policy(&client, &ns, "orders", "api").await;
        wait_condition(&client, &ns, "orders", "Ready", "True", None).await;
        let v1 = format!("spiffe://cluster.local/ns/{ns}/sa/api-v1");
        assert_eq!(target_spiffe_id(&client, &ns, "orders").await, Some(v1));
        // A rollout to a new service account: the newer pod's identity wins, with no edit of
        // the policy (the pod watch brings it back).
        tokio::time::sleep(Duration::from_millis(1100)).await; // a newer creationTimestamp
        create_pod(&client, &ns, "api-2", "api", "api-v2").await;
        let v2 = format!("spiffe://cluster.local/ns/{ns}/sa/api-v2");
        eventually(WAIT, "target certificate for api-v2", || async {
            (target_spiffe_id(&client, &ns, "orders").await.as_deref() == Some(v2.as_str()))
                .then_some(())
        })
        .await;
        let p = wait_condition(&client, &ns, "orders", "Ready", "True", None).await;
        let certs = &p.status.as_ref().unwrap().certificates;
        assert!(certs.iter().any(|c| c.spiffe_id == v2), "{certs:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_trust_bundle_passes_to_the_next_oldest_policy_when_its_owner_goes() {
    let _group = crate::support::isolation::enter(module_path!());
    let _op = operator();
    with_temp_ns(|client, ns| async move {
        create_service(&client, &ns, "a").await;
        create_service(&client, &ns, "b").await;
        let first = create_policy(&client, &ns, "first", "a").await;
        wait_condition(&client, &ns, "first", "Ready", "True", None).await;
        tokio::time::sleep(Duration::from_millis(1100)).await; // a newer creationTimestamp
        let second = create_policy(&client, &ns, "second", "b").await;
        wait_condition(&client, &ns, "second", "Ready", "True", None).await;
        let cms = Api::<ConfigMap>::namespaced(client.clone(), &ns);
        let owners = |cm: &ConfigMap| {
            cm.owner_references()
                .iter()
                .map(|o| o.uid.clone())
                .collect::<Vec<_>>()
        };
        let bundle = cms.get("apiguard-trust-bundle").await.unwrap();
        assert_eq!(owners(&bundle), vec![first.uid().unwrap()]);
        Api::<ApiSecurityPolicy>::namespaced(client.clone(), &ns)
            .delete("first", &DeleteParams::default())
            .await
            .unwrap();
        let want = vec![second.uid().unwrap()];
        eventually(WAIT, "bundle owned by the second policy", || async {
            let cm = cms.get_opt("apiguard-trust-bundle").await.ok()??;
            (owners(&cm) == want).then_some(())
        })
        .await;
        // And it stays (the garbage collector does not take it with the first policy).
        tokio::time::sleep(Duration::from_secs(3)).await;
        let cm = cms.get("apiguard-trust-bundle").await.unwrap();
        assert_eq!(owners(&cm), want);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_object_someone_else_made_is_not_taken_over() {
    let _group = crate::support::isolation::enter(module_path!());
    let _op = operator();
    with_temp_ns(|client, ns| async move {
        let cms = Api::<ConfigMap>::namespaced(client.clone(), &ns);
        let theirs: ConfigMap = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "taken-apiguard", "namespace": ns},
            "data": {"owner": "someone else"},
        }))
        .unwrap();
        cms.create(&PostParams::default(), &theirs).await.unwrap();
        create_service(&client, &ns, "api").await;
        create_policy(&client, &ns, "taken", "api").await;
        let p = wait_condition(
            &client,
            &ns,
            "taken",
            "Programmed",
            "False",
            Some("NotOwned"),
        )
        .await;
        let (_, _, message) = condition(&p, "Programmed").unwrap();
        assert!(message.contains("taken-apiguard"), "{message}");
        let cm = cms.get("taken-apiguard").await.unwrap();
        assert_eq!(cm.data.unwrap()["owner"], "someone else");
        assert!(cm.metadata.owner_references.is_none());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_example_policy_becomes_ready() {
    let _group = crate::support::isolation::enter(module_path!());
    let _op = operator();
    let cp = crate::support::cluster::control_plane();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no examples in {}", dir.display());
    let namespace_field = regex::Regex::new(r"namespace: [a-z0-9-]+").unwrap();
    for file in files {
        let namespace_field = &namespace_field;
        with_temp_ns(|client, ns| async move {
            let text = std::fs::read_to_string(&file).unwrap();
            let policies: Vec<String> = text
                .split("\n---")
                .filter(|doc| doc.contains("kind: ApiSecurityPolicy"))
                .filter_map(|doc| {
                    let line = doc.lines().find(|l| l.starts_with("metadata:"))?;
                    let name = line.split("name: ").nth(1)?;
                    Some(name.split([',', '}']).next()?.trim().to_string())
                })
                .collect();
            assert!(!policies.is_empty(), "{}: no policy", file.display());
            // Put every object into the test namespace.
            let text = namespace_field.replace_all(&text, format!("namespace: {ns}").as_str());
            cp.kubectl_ok_with_stdin(["apply", "-f", "-"], &text);
            for name in policies {
                let p = wait_condition(&client, &ns, &name, "Ready", "True", None).await;
                let status = p.status.unwrap();
                assert!(
                    status
                        .gateway
                        .is_some_and(|g| g.config_hash.starts_with("sha256:")),
                    "{}: {name}",
                    file.display()
                );
            }
        })
        .await;
    }
}
