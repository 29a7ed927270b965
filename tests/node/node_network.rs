//! The generated NetworkPolicies, enforced by kube-router on the node: the target's pods accept
//! only the gateway and the namespaces of `eastWest.allowedCallers`; the gateway still reaches
//! the target and resolves its name (CoreDNS); with `network.egressAllowCIDRs` the target reaches
//! an allowed pod and not another one. The cloud-metadata deny is checked in kube-router's
//! iptables rules and ipsets for the target's policy, never by sending traffic to
//! 169.254.169.254 (on this machine that is the VM's own metadata service).

use std::process::Command;
use std::time::Duration;

use serde_json::json;

use crate::support::envoy::Request;
use crate::support::node::{NodeCluster, node_cluster, serial};
use crate::support::tools::wait_until;
use crate::workload::{self, POLICY};

/// `apiguard-echo connect IP:8080` from a pod: true when the TCP connection was established.
fn connects(cluster: &NodeCluster, ns: &str, pod: &str, ip: &str) -> (bool, String) {
    cluster.exec(
        ns,
        pod,
        &[
            "/usr/local/bin/apiguard-echo",
            "connect",
            &format!("{ip}:8080"),
            "--timeout",
            "3s",
        ],
    )
}

/// Waits until `pod` connects to `ip` (or, with `expected` false, is refused): kube-router
/// applies a policy change within seconds of the watch event.
fn expect_connects(cluster: &NodeCluster, ns: &str, pod: &str, ip: &str, expected: bool) {
    let (last, output) = crate::support::tools::poll_until(
        Duration::from_secs(30),
        || connects(cluster, ns, pod, ip),
        |(ok, _)| *ok == expected,
    );
    assert_eq!(
        last,
        expected,
        "{ns}/{pod} -> {ip}:8080: expected {}, got: {output}",
        if expected {
            "a connection"
        } else {
            "a refusal"
        }
    );
}

fn target_pod(cluster: &NodeCluster, ns: &str) -> (String, String) {
    let pods = cluster.ready_pods(ns, "app=orders", 1);
    (
        pods[0]["metadata"]["name"].as_str().unwrap().to_owned(),
        pods[0]["status"]["podIP"].as_str().unwrap().to_owned(),
    )
}

#[test]
fn network_policies_isolate_the_target_and_keep_the_gateway_working() {
    let _serial = serial();
    let cluster = node_cluster();
    // Callers and egress destinations, in namespaces of their own.
    let callers = cluster.namespace("callers");
    let others = cluster.namespace("others");
    let caller_ip =
        cluster.run_echo_pod(&callers.name, "checkout", json!({"app": "checkout"}), &[]);
    let stranger_ip =
        cluster.run_echo_pod(&others.name, "stranger", json!({"app": "stranger"}), &[]);
    let api = workload::deploy(
        cluster,
        "netpol",
        json!({"eastWest": {"allowedCallers": [
            {"serviceAccount": "checkout", "namespace": callers.name}]}}),
    );
    let ns = api.ns().to_owned();
    let (target, target_ip) = target_pod(cluster, &ns);
    cluster
        .get(&ns, "networkpolicy", &format!("{POLICY}-apiguard-target"))
        .expect("the target NetworkPolicy exists");

    // Ingress: the gateway (through its Service, by name) and the allowed caller's namespace
    // reach the target; a pod of another namespace does not.
    let through_gateway = api.call(&Request::get("/public/netpol")).unwrap();
    assert_eq!(through_gateway.status, 200, "{}", through_gateway.text());
    expect_connects(cluster, &callers.name, "checkout", &target_ip, true);
    expect_connects(cluster, &others.name, "stranger", &target_ip, false);
    // (Both answer when nothing isolates them: the refusal above is the policy's.)
    expect_connects(cluster, &others.name, "stranger", &caller_ip, true);

    // The cloud-metadata deny (the default egress rule: everything but 169.254.169.254/32), in
    // kube-router's rules for this policy.
    assert_metadata_excluded(&ns);

    // egressAllowCIDRs: the target reaches the allowed pod, not another one.
    let patch = json!({"spec": {"network": {"egressAllowCIDRs": [format!("{caller_ip}/32")]}}});
    cluster.cp.kubectl_ok([
        "-n",
        &ns,
        "patch",
        "apisecuritypolicy",
        POLICY,
        "--type",
        "merge",
        "-p",
        &patch.to_string(),
    ]);
    wait_until(
        Duration::from_secs(60),
        "the target NetworkPolicy allows egress to the caller's pod",
        || {
            let np = cluster.get(&ns, "networkpolicy", &format!("{POLICY}-apiguard-target"))?;
            np.to_string()
                .contains(&format!("{caller_ip}/32"))
                .then_some(())
        },
    );
    expect_connects(cluster, &ns, &target, &caller_ip, true);
    expect_connects(cluster, &ns, &target, &stranger_ip, false);
    // And the gateway still answers.
    let after = api.call(&Request::get("/public/egress")).unwrap();
    assert_eq!(after.status, 200, "{}", after.text());
}

/// kube-router turns the target policy's egress `ipBlock {cidr: 0.0.0.0/0, except:
/// [169.254.169.254/32]}` into an ipset that holds the address as `nomatch`, matched by the
/// rules of that policy's chain.
fn assert_metadata_excluded(ns: &str) {
    let ipsets = wait_until(
        Duration::from_secs(30),
        "an ipset of kube-router excluding 169.254.169.254",
        || {
            let out = Command::new("ipset").arg("save").output().ok()?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.lines()
                .any(|l| l.contains("169.254.169.254") && l.contains("nomatch"))
                .then_some(text)
        },
    );
    let sets: Vec<&str> = ipsets
        .lines()
        .filter(|l| l.starts_with("add ") && l.contains("169.254.169.254") && l.contains("nomatch"))
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    let rules = Command::new("iptables-save")
        .arg("-t")
        .arg("filter")
        .output()
        .unwrap();
    let rules = String::from_utf8_lossy(&rules.stdout);
    let policy = format!("{POLICY}-apiguard-target");
    let for_policy: Vec<&str> = rules
        .lines()
        .filter(|l| l.contains(&policy) && l.contains(ns))
        .collect();
    assert!(
        for_policy.iter().any(|l| sets
            .iter()
            .any(|s| l.contains(&format!("--match-set {s} dst")))),
        "no rule of policy {ns}/{policy} matches the sets {sets:?} that exclude 169.254.169.254:\n{}",
        for_policy.join("\n")
    );
}
