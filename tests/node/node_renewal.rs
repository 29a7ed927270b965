//! Certificate renewal on a running gateway: with the tier's short leaf lifetime
//! (`identity.leafLifetime`), the controller renews the gateway's and the target's certificates
//! while a client keeps calling through the gateway; the new certificate reaches the running
//! Envoy (mounted files, no restart) and no request fails.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::envoy::Request;
use crate::support::node::{LEAF_LIFETIME, node_cluster, serial};
use crate::workload;

/// Pod UIDs with their containers' restart counts.
fn identities(pods: &[Value]) -> Vec<(String, Vec<u64>)> {
    let mut ids: Vec<(String, Vec<u64>)> = pods
        .iter()
        .map(|p| {
            let restarts = p["status"]["containerStatuses"]
                .as_array()
                .map(|s| {
                    s.iter()
                        .map(|c| c["restartCount"].as_u64().unwrap_or(0))
                        .collect()
                })
                .unwrap_or_default();
            (p["metadata"]["uid"].as_str().unwrap().to_owned(), restarts)
        })
        .collect();
    ids.sort();
    ids
}

#[test]
fn a_renewed_certificate_reaches_the_running_gateway_without_failed_requests() {
    let _serial = serial();
    let cluster = node_cluster();
    let api = workload::deploy(cluster, "renewal", json!({}));
    let before = identities(&api.gateway_pods());
    assert!(
        before
            .iter()
            .all(|(_, restarts)| restarts.iter().all(|r| *r == 0)),
        "a gateway container restarted before the test: {before:?}"
    );
    let first = api
        .served_certificate_serial()
        .expect("the gateway serves a certificate");

    // 5m leaves (backdated 5m) are renewed 100 s after issue; the kubelet updates the mounted
    // files within its sync period (10 s on the test node) and Envoy reloads them. Bounded:
    // four lifetimes' worth of renewals at most.
    assert_eq!(LEAF_LIFETIME, "5m");
    let deadline = Instant::now() + Duration::from_secs(330);
    let mut served = vec![first.clone()];
    let mut calls = 0;
    let mut failures = Vec::new();
    while Instant::now() < deadline && served.len() < 2 {
        calls += 1;
        match api.call(&Request::get(&format!("/public/renewal-{calls}"))) {
            Ok(r) if r.status == 200 => {}
            Ok(r) => failures.push(format!("call {calls}: {} {}", r.status, r.text())),
            Err(e) => failures.push(format!("call {calls}: {e}")),
        }
        if let Some(serial) = api.served_certificate_serial()
            && !served.contains(&serial)
        {
            served.push(serial);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        served.len() >= 2,
        "the gateway still serves {first} after {calls} calls: the renewal did not reach it"
    );
    // A few more calls with the new certificate in place.
    for i in 0..10 {
        calls += 1;
        match api.call(&Request::get(&format!("/public/after-{i}"))) {
            Ok(r) if r.status == 200 => {}
            Ok(r) => failures.push(format!("call {calls}: {} {}", r.status, r.text())),
            Err(e) => failures.push(format!("call {calls}: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {calls} calls failed during the renewal:\n{}",
        failures.len(),
        failures.join("\n")
    );
    let after = identities(&api.gateway_pods());
    assert_eq!(
        before, after,
        "the gateway pods were replaced or restarted to pick up the renewed certificate"
    );
    eprintln!(
        "renewal: served {served:?}, {calls} calls through the gateway, none failed, no restart"
    );
}
