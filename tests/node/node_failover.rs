//! The operator's failover on the node: the pod holding the controller Lease is deleted; the
//! other replica takes the Lease and reconciles, the Deployment replaces the pod, and the
//! webhook (every replica serves it, behind its Service) answers every request meanwhile.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::node::{RELEASE_NS, node_cluster, serial};
use crate::support::tools::{root, wait_until};

#[test]
fn the_other_replica_takes_over_and_the_webhook_keeps_answering() {
    let _serial = serial();
    let cluster = node_cluster();
    let operators = cluster.ready_pods(RELEASE_NS, "app.kubernetes.io/name=apiguard", 2);
    let holder = wait_until(Duration::from_secs(60), "a Lease holder", || {
        let lease = cluster.get(RELEASE_NS, "lease", "apiguard-controller")?;
        lease["spec"]["holderIdentity"].as_str().map(str::to_owned)
    });
    let other = operators
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_owned())
        .find(|n| *n != holder)
        .expect("a second replica");

    // The webhook, asked again and again while the leader goes away.
    let stop = Arc::new(AtomicBool::new(false));
    let asker = {
        let stop = stop.clone();
        let example = root().join("examples/insecure/APG001-cors-wildcard-origin.yaml");
        let example = example.to_str().unwrap().to_owned();
        std::thread::spawn(move || {
            let mut answers = Vec::new();
            for _ in 0..400 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let out = node_cluster()
                    .cp
                    .kubectl(["create", "--dry-run=server", "-f", &example]);
                answers.push(format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ));
                std::thread::sleep(Duration::from_millis(250));
            }
            answers
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    cluster
        .cp
        .kubectl_ok(["-n", RELEASE_NS, "delete", "pod", &holder, "--wait=false"]);

    let new_holder = wait_until(
        Duration::from_secs(90),
        "the Lease taken over by the other replica",
        || {
            let lease = cluster.get(RELEASE_NS, "lease", "apiguard-controller")?;
            let now = lease["spec"]["holderIdentity"].as_str()?.to_owned();
            (now != holder).then_some(now)
        },
    );
    // The surviving replica, or the Deployment's replacement pod when it starts first (the
    // leader releases the Lease on SIGTERM, and a local image starts a pod in seconds).
    let live = cluster.pods(RELEASE_NS, "app.kubernetes.io/name=apiguard");
    assert!(
        live.iter()
            .any(|p| p["metadata"]["name"] == new_holder.as_str()),
        "the Lease went to {new_holder}, which is no operator pod"
    );
    eprintln!(
        "failover: {holder} deleted; {new_holder} took the Lease (the other replica was {other})"
    );
    // The new leader reconciles: a policy whose target does not exist gets its condition.
    let ns = cluster.namespace("failover");
    let policy = json!({
        "apiVersion": "apiguard.dev/v1alpha1", "kind": "ApiSecurityPolicy",
        "metadata": {"name": "missing", "namespace": ns.name},
        "spec": {"target": {"service": "missing", "port": 8080}, "exposure": "Internal",
                 "authentication": {"mtls": {"allowedClients": ["spiffe://cluster.local/ns/a/sa/b"]}}},
    });
    cluster
        .cp
        .kubectl_ok_with_stdin(["apply", "-f", "-"], &policy.to_string());
    let condition: Value = wait_until(
        Duration::from_secs(60),
        "the new leader's condition on a new policy",
        || {
            let p = cluster.get(&ns.name, "apisecuritypolicy", "missing")?;
            p["status"]["conditions"]
                .as_array()?
                .iter()
                .find(|c| c["type"] == "Programmed")
                .cloned()
        },
    );
    assert_eq!(condition["reason"], "TargetNotFound", "{condition}");
    // The Deployment brings back a second replica.
    let replaced = cluster.ready_pods(RELEASE_NS, "app.kubernetes.io/name=apiguard", 2);
    assert!(
        replaced
            .iter()
            .all(|p| p["metadata"]["name"] != holder.as_str()),
        "the deleted pod is still listed"
    );
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let answers = asker.join().unwrap();
    assert!(
        answers.len() > 10,
        "too few webhook calls: {}",
        answers.len()
    );
    let unanswered: Vec<&String> = answers.iter().filter(|a| !a.contains("APG001")).collect();
    assert!(
        unanswered.is_empty(),
        "{} of {} admission requests were not answered by the webhook during the failover:\n{}",
        unanswered.len(),
        answers.len(),
        unanswered
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
}
