//! Crash recovery of the built operator: `apiguard run --no-webhook` is SIGKILLed (no graceful
//! shutdown, Lease not released) while it reconciles several new policies; a second replica
//! takes the Lease over once the dead holder's Lease expires (15 s default duration, no flag
//! to shorten it), converges every policy to Ready and creates nothing twice.

use crate::support::controller::Process;
use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::cluster::{ControlPlane, control_plane, eventually, with_temp_ns};
use crate::support::controller::install_policy_crd;
use apiguard::api::ApiSecurityPolicy;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, ListParams, PostParams};
use kube::{Resource, ResourceExt};
use serde_json::json;

const OP_NS: &str = "apiguard-crash";
const POLICIES: usize = 6;

fn start(cp: &ControlPlane, identity: &str) -> Process {
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    Process(
        Command::new(env!("CARGO_BIN_EXE_apiguard"))
            .args(["run", "--no-webhook", "--admin-addr", &admin.to_string()])
            .args(["--operator-namespace", OP_NS])
            .env("KUBECONFIG", &cp.kubeconfig)
            .env("POD_NAME", identity)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting apiguard run"),
    )
}

async fn holder(leases: &Api<Lease>) -> Option<String> {
    leases
        .get_opt("apiguard-controller")
        .await
        .ok()??
        .spec?
        .holder_identity
}

fn ready(p: &ApiSecurityPolicy) -> bool {
    p.status.as_ref().is_some_and(|s| {
        s.observed_generation == p.metadata.generation
            && s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

/// Names of the `K`s labelled for `policy`, each checked to be controlled by it.
async fn children<K>(api: &Api<K>, policy: &ApiSecurityPolicy) -> BTreeSet<String>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    let name = policy.name_any();
    let list = api
        .list(&ListParams::default().labels(&format!("apiguard.dev/policy={name}")))
        .await
        .unwrap();
    list.items
        .iter()
        .map(|o| {
            let owners: Vec<_> = o
                .meta()
                .owner_references
                .iter()
                .flatten()
                .filter(|r| r.controller == Some(true))
                .collect();
            assert!(
                owners.len() == 1 && Some(&owners[0].uid) == policy.metadata.uid.as_ref(),
                "{} is not controlled by policy {name} alone: {owners:?}",
                o.name_any()
            );
            o.name_any()
        })
        .collect()
}

fn set<const N: usize>(names: [String; N]) -> BTreeSet<String> {
    names.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sigkilled_operator_is_replaced_after_its_lease_expires_and_converges_without_duplicates()
{
    let _group = crate::support::isolation::enter(module_path!());
    let cp = control_plane();
    install_policy_crd();
    let client = cp.client().await;
    crate::support::cluster::ensure_namespace(&client, OP_NS).await;
    let leases = Api::<Lease>::namespaced(client.clone(), OP_NS);

    let mut first = start(cp, "crash-a");
    eventually(
        Duration::from_secs(30),
        "crash-a holds the Lease",
        || async { (holder(&leases).await.as_deref() == Some("crash-a")).then_some(()) },
    )
    .await;

    with_temp_ns(|client, ns| async move {
        let policies = Api::<ApiSecurityPolicy>::namespaced(client.clone(), &ns);
        let cms = Api::<ConfigMap>::namespaced(client.clone(), &ns);
        for i in 0..POLICIES {
            let svc: Service = serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": format!("api{i}"), "namespace": ns},
                "spec": {"selector": {"app": format!("api{i}")}, "ports": [{"port": 8080}]}}))
            .unwrap();
            Api::<Service>::namespaced(client.clone(), &ns)
                .create(&PostParams::default(), &svc)
                .await
                .unwrap();
            let p: ApiSecurityPolicy = serde_json::from_value(json!({
                "apiVersion": "apiguard.dev/v1alpha1", "kind": "ApiSecurityPolicy",
                "metadata": {"name": format!("p{i}"), "namespace": ns},
                "spec": {"target": {"service": format!("api{i}"), "port": 8080},
                    "exposure": "Internal",
                    "authentication": {"jwt": {"providers": [{"name": "corp",
                        "issuer": "https://idp.example/", "audiences": ["api"],
                        "jwks": {"uri": "https://idp.example/jwks.json"}}]}},
                    "authorization": {"rules": [{"name": "r",
                        "match": {"methods": ["GET"], "paths": ["/x"]},
                        "allow": {"scopes": ["x"]}}]}}}))
            .unwrap();
            policies.create(&PostParams::default(), &p).await.unwrap();
        }
        // Kill as soon as the first reconcile has written something: the others are
        // queued or in flight.
        eventually(
            Duration::from_secs(30),
            "a first gateway ConfigMap",
            || async {
                let list = cms
                    .list(&ListParams::default().labels("apiguard.dev/policy"))
                    .await
                    .ok()?;
                (!list.items.is_empty()).then_some(())
            },
        )
        .await;
        first.0.kill().expect("SIGKILL crash-a");
        first.0.wait().unwrap();
        let killed = Instant::now();
        let ready_at_kill = policies
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .filter(|p| ready(p))
            .count();
        eprintln!("{ready_at_kill}/{POLICIES} policies Ready when crash-a was killed");
        // A SIGKILLed holder cannot release its Lease.
        assert_eq!(holder(&leases).await.as_deref(), Some("crash-a"));

        let _second = start(cp, "crash-b");
        eventually(
            Duration::from_secs(60),
            "crash-b takes the Lease over",
            || async { (holder(&leases).await.as_deref() == Some("crash-b")).then_some(()) },
        )
        .await;
        eprintln!(
            "crash-b took the Lease {:?} after the kill",
            killed.elapsed()
        );
        let lease = leases
            .get("apiguard-controller")
            .await
            .unwrap()
            .spec
            .unwrap();
        assert!(
            lease.lease_transitions.unwrap_or(0) >= 1,
            "no Lease transition recorded: {lease:?}"
        );

        eventually(Duration::from_secs(90), "every policy Ready", || async {
            let list = policies.list(&ListParams::default()).await.ok()?;
            (list.items.len() == POLICIES && list.items.iter().all(ready)).then_some(())
        })
        .await;

        // Exactly one set of children per policy, each controlled by its policy.
        let deployments = Api::<Deployment>::namespaced(client.clone(), &ns);
        let services = Api::<Service>::namespaced(client.clone(), &ns);
        let secrets = Api::<Secret>::namespaced(client.clone(), &ns);
        let nps = Api::<NetworkPolicy>::namespaced(client.clone(), &ns);
        for p in policies.list(&ListParams::default()).await.unwrap().items {
            let name = p.name_any();
            let gw = p.gateway_name();
            assert_eq!(children(&cms, &p).await, set([gw.clone()]), "{name}");
            assert_eq!(
                children(&deployments, &p).await,
                set([gw.clone()]),
                "{name}"
            );
            assert_eq!(children(&services, &p).await, set([gw.clone()]), "{name}");
            assert_eq!(
                children(&nps, &p).await,
                set([format!("{gw}-target")]),
                "{name}"
            );
            assert_eq!(
                children(&secrets, &p).await,
                set([
                    format!("{gw}-secrets"),
                    format!("{gw}-gateway-identity"),
                    format!("{gw}-target-identity"),
                ]),
                "{name}"
            );
        }
        // Nothing unlabelled or stray either: every apiguard-managed object belongs to a
        // policy of this namespace (the trust bundle aside).
        let managed = ListParams::default().labels("app.kubernetes.io/managed-by=apiguard");
        let n_cms = cms
            .list(&managed)
            .await
            .unwrap()
            .items
            .iter()
            .filter(|c| c.name_any() != "apiguard-trust-bundle")
            .count();
        assert_eq!(n_cms, POLICIES);
        assert_eq!(
            deployments.list(&managed).await.unwrap().items.len(),
            POLICIES
        );
        assert_eq!(
            secrets.list(&managed).await.unwrap().items.len(),
            3 * POLICIES
        );
    })
    .await;
}
