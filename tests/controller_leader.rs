//! Leader election against the real control plane: two operators, one Lease; only the
//! holder reconciles; when it stops, the other takes over within the Lease duration and
//! converges without duplicating anything.

mod support;

use std::time::{Duration, Instant};

use apiguard::api::ApiSecurityPolicy;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use support::cluster::{eventually, with_temp_ns};
use support::controller::{OPERATOR_NS, Operator};

const LEASE: &str = "apiguard-leader-test";

async fn holder(client: &Client) -> Option<String> {
    Api::<Lease>::namespaced(client.clone(), OPERATOR_NS)
        .get_opt(LEASE)
        .await
        .ok()??
        .spec?
        .holder_identity
}

async fn create(client: &Client, ns: &str, name: &str) {
    let svc: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"selector": {"app": name}, "ports": [{"port": 8080}]},
    }))
    .unwrap();
    Api::<Service>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &svc)
        .await
        .unwrap();
    let p: ApiSecurityPolicy = serde_json::from_value(json!({
        "apiVersion": "apiguard.dev/v1alpha1", "kind": "ApiSecurityPolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"target": {"service": name, "port": 8080}, "exposure": "Internal",
            "authentication": {"jwt": {"providers": [{"name": "corp", "issuer": "https://idp.example/",
                "audiences": ["api"], "jwks": {"uri": "https://idp.example/jwks.json"}}]}},
            "authorization": {"rules": [{"name": "read", "match": {"methods": ["GET"], "paths": ["/x"]},
                "allow": {"scopes": ["x:read"]}}]}},
    }))
    .unwrap();
    Api::<ApiSecurityPolicy>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &p)
        .await
        .unwrap();
}

async fn ready(client: &Client, ns: &str, name: &str) -> bool {
    let Ok(p) = Api::<ApiSecurityPolicy>::namespaced(client.clone(), ns)
        .get(name)
        .await
    else {
        return false;
    };
    p.status.is_some_and(|s| {
        s.observed_generation == p.metadata.generation
            && s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_lease_holder_reconciles_and_the_other_takes_over() {
    let mut a = Operator::start("replica-a", LEASE);
    let mut b = Operator::start("replica-b", LEASE);
    with_temp_ns(|client, ns| async move {
        let first = eventually(Duration::from_secs(30), "a Lease holder", || {
            holder(&client)
        })
        .await;
        let (leader, follower) = if first == "replica-a" {
            (&mut a, &mut b)
        } else {
            (&mut b, &mut a)
        };
        assert_eq!(first, leader.identity);

        create(&client, &ns, "one").await;
        eventually(Duration::from_secs(30), "policy one Ready", || async {
            ready(&client, &ns, "one").await.then_some(())
        })
        .await;
        // The result counter is bumped when the reconcile returns, just after its status
        // write: wait (bounded) for the leader's count rather than racing it.
        eventually(
            Duration::from_secs(10),
            "the leader counted a reconcile",
            || async { (leader.reconciles() > 0).then_some(()) },
        )
        .await;
        assert_eq!(follower.reconciles(), 0, "the follower reconciled");
        assert!(leader.health.is_leader() && !follower.health.is_leader());
        assert!(leader.health.ready() && follower.health.ready());

        // The leader stops (graceful: it releases the Lease); the follower takes over within
        // the Lease duration and reconciles what changed meanwhile.
        let stopped_at = Instant::now();
        leader.stop();
        let new_holder = eventually(
            Duration::from_secs(20),
            "the follower holds the Lease",
            || async { holder(&client).await.filter(|h| *h == follower.identity) },
        )
        .await;
        assert_eq!(new_holder, follower.identity);
        assert!(
            stopped_at.elapsed() < Duration::from_secs(6 + 2),
            "takeover took {:?}",
            stopped_at.elapsed()
        );
        create(&client, &ns, "two").await;
        eventually(Duration::from_secs(30), "policy two Ready", || async {
            ready(&client, &ns, "two").await.then_some(())
        })
        .await;
        eventually(
            Duration::from_secs(10),
            "the new leader counted a reconcile",
            || async { (follower.reconciles() > 0).then_some(()) },
        )
        .await;
        // Converged without duplicates: exactly one gateway ConfigMap per policy, plus the
        // namespace's trust bundle.
        let cms = Api::<ConfigMap>::namespaced(client.clone(), &ns)
            .list(&ListParams::default().labels("app.kubernetes.io/managed-by=apiguard"))
            .await
            .unwrap();
        let mut names: Vec<_> = cms.items.iter().map(|c| c.name_any()).collect();
        names.sort();
        assert_eq!(
            names,
            ["apiguard-trust-bundle", "one-apiguard", "two-apiguard"]
        );
        assert!(ready(&client, &ns, "one").await);
    })
    .await;
}
