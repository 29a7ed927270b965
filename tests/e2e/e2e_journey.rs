//! The user's journey on a real control plane, through the same path as the playground
//! (`tests/cluster.sh up --with-apiguard`): `kubectl apply -f crds/`, `helm install` the chart
//! with `webhook.url` pointing at a local `apiguard run` that has the chart Deployment's
//! environment and the chart ServiceAccount's credentials (there is no kubelet to run the pod),
//! then `kubectl` as a user:
//!
//! - every manifest of `examples/insecure/` is refused naming its rule, or (APG008/012/013, the
//!   warn rules) admitted with kubectl printing `Warning: APG0xx`; `--dry-run=server` answers
//!   the same; every secure example is admitted;
//! - an exempted object is admitted with the warning; an admitted Ingress edited to add CORS
//!   is refused; a new policy is followed by the webhook's cache (bypass refused);
//! - with the operator stopped, fail-closed: still refused, naming the webhook; exempt
//!   namespaces still work;
//! - `helm upgrade --set admission.mode=Warn` (and the operator restarted with the new values,
//!   as a rollout would) turns refusals into warnings;
//! - the controller: `examples/public-consumer-api.yaml` becomes Ready and gets its gateway
//!   ConfigMap, Secret, Deployment and Service, its NetworkPolicy and identity Secrets, all
//!   controlled by the policy;
//! - `helm uninstall` leaves no webhook.

use crate::support::cluster::{ControlPlane, control_plane};
use crate::support::playground::{StopOperator, cluster_sh, log_tail, operator_log_path};
use crate::support::tools::{poll_until, root};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

const WARN_RULES: &[&str] = &["APG008", "APG012", "APG013"];

/// kubectl's answer: success, and stdout + stderr together (where warnings and errors go).
struct Answer {
    ok: bool,
    text: String,
}

fn answer(output: Output) -> Answer {
    Answer {
        ok: output.status.success(),
        text: format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

fn apply_file(cp: &ControlPlane, file: &Path, dry_run: bool) -> Answer {
    let file = file.to_str().unwrap();
    let mut args = vec!["apply", "-f", file];
    if dry_run {
        args.push("--dry-run=server");
    }
    answer(cp.kubectl(args))
}

fn apply_json(cp: &ControlPlane, object: &Value) -> Answer {
    answer(cp.kubectl_with_stdin(["apply", "-f", "-"], &object.to_string()))
}

fn assert_refused(answer: &Answer, rule: &str, what: &str) {
    assert!(!answer.ok, "{what} was admitted:\n{}", answer.text);
    assert!(
        answer.text.contains(rule),
        "{what} was refused without naming {rule}:\n{}",
        answer.text
    );
}

fn assert_admitted_with_warning(answer: &Answer, rule: &str, what: &str) {
    assert!(answer.ok, "{what} was refused:\n{}", answer.text);
    assert!(
        answer.text.contains(&format!("Warning: {rule}")),
        "{what}: kubectl printed no `Warning: {rule}`:\n{}",
        answer.text
    );
}

fn examples(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// The APG001 example Ingress, renamed, as JSON.
fn cors_ingress(name: &str, namespace: &str) -> Value {
    let text =
        std::fs::read_to_string(root().join("examples/insecure/APG001-cors-wildcard-origin.yaml"))
            .unwrap();
    let mut docs = apiguard::manifest::parse_str("APG001", &text).unwrap();
    assert_eq!(docs.len(), 1);
    let mut object = docs.remove(0).object;
    object["metadata"]["name"] = Value::from(name);
    object["metadata"]["namespace"] = Value::from(namespace);
    object
}

#[test]
fn a_user_installs_apiguard_and_insecure_manifests_are_refused() {
    let _group = crate::support::isolation::enter(module_path!());
    let cp = control_plane();
    // The CRDs of the other kinds the examples use (Gateway API, Envoy Gateway, Istio), as a
    // cluster with those projects installed has them.
    cp.kubectl_ok(["apply", "-f", "tests/fixtures/crds/"]);
    cp.kubectl_ok([
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "-f",
        "tests/fixtures/crds/",
    ]);
    // The examples' namespaces.
    let mut namespaces = std::collections::BTreeSet::new();
    for file in examples("examples/insecure")
        .into_iter()
        .chain(examples("examples"))
    {
        let text = std::fs::read_to_string(&file).unwrap();
        for m in apiguard::manifest::parse_str(&file.display().to_string(), &text).unwrap() {
            if let Some(ns) = m.namespace() {
                namespaces.insert(ns.to_owned());
            }
        }
    }
    for ns in namespaces.iter().chain(["journey".to_owned()].iter()) {
        cp.kubectl_ok(["create", "namespace", ns]);
    }

    // kubectl apply -f crds/; helm install ...; the operator started and ready.
    cluster_sh(cp, "apiguard-install", &[]);
    let _operator = StopOperator(cp);
    let vwc = cp.kubectl_ok([
        "get",
        "validatingwebhookconfiguration",
        "apiguard",
        "-o",
        "json",
    ]);
    let vwc: Value = serde_json::from_str(&vwc).unwrap();
    assert_eq!(vwc["webhooks"][0]["failurePolicy"], "Fail");
    assert!(
        vwc["webhooks"][0]["clientConfig"]["url"]
            .as_str()
            .is_some_and(|u| u.starts_with("https://127.0.0.1:")),
        "{vwc}"
    );
    // No caBundle was given to helm: the operator set its CA (tests/e2e/e2e_serving_cert.rs covers
    // the certificate's life in detail).
    let ca = cp.kubectl_ok([
        "-n",
        "apiguard-system",
        "get",
        "secret",
        "apiguard-ca",
        "-o",
        "jsonpath={.data.ca\\.crt}",
    ]);
    assert!(!ca.is_empty(), "no operator CA");
    assert_eq!(
        vwc["webhooks"][0]["clientConfig"]["caBundle"].as_str(),
        Some(ca.as_str()),
        "the webhook does not trust the operator CA"
    );

    // Every insecure example: refused naming its rule (or admitted with the warning), and the
    // dry run answers the same.
    for file in examples("examples/insecure") {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let rule = &name[..6];
        if WARN_RULES.contains(&rule) {
            let dry = apply_file(cp, &file, true);
            assert_admitted_with_warning(&dry, rule, &format!("{name} (dry run)"));
            let real = apply_file(cp, &file, false);
            assert_admitted_with_warning(&real, rule, &name);
        } else if rule == "APG004" {
            // The policy and the Ingress that bypasses it, in one file: the webhook refuses the
            // Ingress once its cache has the policy created just before it.
            let real = poll_until(
                Duration::from_secs(15),
                || {
                    let answer = apply_file(cp, &file, false);
                    if answer.ok {
                        // Admitted before the cache had the policy: remove the Ingress so the
                        // next attempt creates it again (re-applying an unchanged object sends
                        // the apiserver nothing, and the webhook would never be asked again).
                        cp.kubectl_ok([
                            "delete",
                            "ingress",
                            "payments-direct",
                            "-n",
                            "shop",
                            "--ignore-not-found",
                        ]);
                    }
                    answer
                },
                |a| !a.ok,
            );
            assert_refused(&real, rule, &name);
            assert!(
                real.text.contains("payments-direct"),
                "the Ingress is the refused object:\n{}",
                real.text
            );
            let dry = apply_file(cp, &file, true);
            assert_refused(&dry, rule, &format!("{name} (dry run)"));
        } else {
            let dry = apply_file(cp, &file, true);
            assert_refused(&dry, rule, &format!("{name} (dry run)"));
            let real = apply_file(cp, &file, false);
            assert_refused(&real, rule, &name);
        }
    }

    // Every secure example is admitted (dry run, then for real).
    for file in examples("examples") {
        let name = file.display().to_string();
        let dry = apply_file(cp, &file, true);
        assert!(dry.ok, "{name} (dry run) refused:\n{}", dry.text);
        let real = apply_file(cp, &file, false);
        assert!(real.ok, "{name} refused:\n{}", real.text);
        assert!(
            !real.text.contains("denied the request"),
            "{name}:\n{}",
            real.text
        );
    }

    // An exempted object: admitted, and kubectl prints the warning.
    let mut exempt = cors_ingress("catalog-web-exempt", "shop");
    exempt["metadata"]["annotations"]["apiguard.dev/exempt"] =
        Value::from("APG001=the CDN's public font bucket, no credentials or user data");
    let exempted = apply_json(cp, &exempt);
    assert_admitted_with_warning(&exempted, "APG001", "the exempted Ingress");

    // Kinds reviewed since the rules learnt real repositories: the ingress-nginx controller's
    // ConfigMap with TLS 1.0 (APG006; other ConfigMaps are filtered out by the chart's
    // matchCondition and admitted) and a GRPCRoute with no authentication (APG003).
    let weak_tls = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "ingress-nginx-controller", "namespace": "journey",
            "labels": {"app.kubernetes.io/name": "ingress-nginx", "app.kubernetes.io/component": "controller"}},
        "data": {"ssl-protocols": "TLSv1 TLSv1.2 TLSv1.3", "use-forwarded-headers": "true"}
    });
    assert_refused(
        &apply_json(cp, &weak_tls),
        "APG006",
        "the ingress-nginx ConfigMap enabling TLS 1.0",
    );
    let settings = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "settings", "namespace": "journey"},
        "data": {"LOG_LEVEL": "info"}
    });
    let admitted = apply_json(cp, &settings);
    assert!(
        admitted.ok,
        "an ordinary ConfigMap was refused:\n{}",
        admitted.text
    );
    let grpc = serde_json::json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
        "metadata": {"name": "yages", "namespace": "journey"},
        "spec": {"parentRefs": [{"name": "edge"}],
            "rules": [{"matches": [{"method": {"service": "yages.Echo"}}],
                       "backendRefs": [{"name": "yages", "port": 9000}]}]}
    });
    assert_refused(
        &apply_json(cp, &grpc),
        "APG003",
        "the unauthenticated GRPCRoute",
    );

    // Updates are checked: an admitted Ingress edited to add wildcard CORS is refused.
    let mut clean = cors_ingress("catalog-api", "shop");
    clean["metadata"]["annotations"]
        .as_object_mut()
        .unwrap()
        .retain(|k, _| !k.contains("cors"));
    let admitted = apply_json(cp, &clean);
    assert!(
        admitted.ok,
        "the Ingress without CORS was refused:\n{}",
        admitted.text
    );
    let edited = answer(cp.kubectl([
        "-n",
        "shop",
        "annotate",
        "ingress",
        "catalog-api",
        "nginx.ingress.kubernetes.io/enable-cors=true",
    ]));
    assert_refused(&edited, "APG001", "the edit adding enable-cors");

    // The webhook's view follows the cluster: a new policy, then an Ingress straight at its
    // target is a bypass.
    let policy = serde_json::json!({
        "apiVersion": "apiguard.dev/v1alpha1",
        "kind": "ApiSecurityPolicy",
        "metadata": {"name": "notes", "namespace": "journey"},
        "spec": {
            "target": {"service": "notes", "port": 8080},
            "exposure": "Internal",
            "authentication": {"jwt": {"providers": [{
                "name": "corp", "issuer": "https://idp.journey.example/",
                "audiences": ["notes"],
                "jwks": {"uri": "https://idp.journey.example/jwks.json"}}]}},
            "authorization": {"rules": [{"name": "read",
                "match": {"methods": ["GET"], "paths": ["/notes/*"]},
                "allow": {"scopes": ["notes:read"]}}]},
            "requestValidation": {"maxBodyBytes": 65536}
        }
    });
    let created = apply_json(cp, &policy);
    assert!(created.ok, "the policy was refused:\n{}", created.text);
    let mut bypass = cors_ingress("notes-direct", "journey");
    bypass["metadata"]["annotations"]
        .as_object_mut()
        .unwrap()
        .retain(|k, _| !k.contains("cors"));
    bypass["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"] =
        serde_json::json!({"name": "notes", "port": {"number": 8080}});
    let refused = poll_until(
        Duration::from_secs(15),
        || {
            answer(cp.kubectl_with_stdin(
                ["apply", "--dry-run=server", "-f", "-"],
                &bypass.to_string(),
            ))
        },
        |a| !a.ok,
    );
    assert_refused(
        &refused,
        "APG004",
        "the Ingress straight at the new policy's target",
    );

    // Outage: the operator stopped; failurePolicy Fail keeps refusing, naming the webhook.
    cluster_sh(cp, "apiguard-stop", &[]);
    let outage = apply_json(cp, &cors_ingress("catalog-outage", "shop"));
    assert!(
        !outage.ok,
        "admitted while the webhook is down:\n{}",
        outage.text
    );
    assert!(
        outage
            .text
            .contains("failed calling webhook \"validate.apiguard.dev\""),
        "the error does not name the webhook:\n{}",
        outage.text
    );
    // ... but an ordinary Service, which the webhook's match conditions skip, still goes in.
    let service = serde_json::json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "plain", "namespace": "journey"},
        "spec": {"ports": [{"port": 80}]}});
    let plain = apply_json(cp, &service);
    assert!(
        plain.ok,
        "a ClusterIP Service needs no webhook:\n{}",
        plain.text
    );
    // ... and exempt namespaces are not sent to the webhook at all.
    let system = apply_json(cp, &cors_ingress("catalog-web", "kube-system"));
    assert!(
        system.ok,
        "kube-system is locked out while the webhook is down:\n{}",
        system.text
    );

    // helm upgrade with changed values, the operator restarted with them (as a rollout would).
    cluster_sh(cp, "apiguard-start", &[]);
    let upgraded = cp.helm_ok(&[
        "upgrade",
        "apiguard",
        "charts/apiguard",
        "-n",
        "apiguard-system",
        "--reuse-values",
        "--set",
        "admission.mode=Warn",
    ]);
    assert!(upgraded.contains("mode: Warn"), "{upgraded}");
    cluster_sh(cp, "apiguard-stop", &[]);
    cluster_sh(cp, "apiguard-start", &[]);
    let env = std::fs::read_to_string(cp.dir.join("apiguard/process.env")).unwrap();
    assert!(env.lines().any(|l| l == "APIGUARD_MODE=Warn"), "{env}");
    let warned = apply_file(
        cp,
        &root().join("examples/insecure/APG011-dangerous-ingress-snippet.yaml"),
        false,
    );
    assert_admitted_with_warning(&warned, "APG011", "APG011 in Warn mode");

    // The controller (APIGUARD_CONTROLLER defaults to true in tests/cluster.sh): the public
    // consumer example (policy + ServiceAccount + Service + Deployment) becomes Ready and gets
    // its gateway objects, controlled by the policy.
    let file = root().join("examples/public-consumer-api.yaml");
    let applied = apply_file(cp, &file, false);
    assert!(applied.ok, "{}:\n{}", file.display(), applied.text);
    let deadline = Instant::now() + Duration::from_secs(60);
    let policy = loop {
        let out = cp.kubectl_ok([
            "get",
            "apisecuritypolicy",
            "storefront",
            "-n",
            "shop",
            "-o",
            "json",
        ]);
        let policy: Value = serde_json::from_str(&out).unwrap();
        let status = &policy["status"];
        let ready = status["observedGeneration"] == policy["metadata"]["generation"]
            && status["conditions"].as_array().is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            });
        if ready {
            break policy;
        }
        assert!(
            Instant::now() < deadline,
            "shop/storefront not Ready within 60s: {status}\noperator log:\n{}",
            log_tail(&operator_log_path(cp))
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(
        policy["status"]["gateway"]["service"],
        "storefront-apiguard"
    );
    let uid = policy["metadata"]["uid"].as_str().unwrap().to_owned();
    for (kind, name) in [
        ("configmap", "storefront-apiguard"),
        ("secret", "storefront-apiguard-secrets"),
        ("deployment", "storefront-apiguard"),
        ("service", "storefront-apiguard"),
        ("networkpolicy", "storefront-apiguard-target"),
        ("secret", "storefront-apiguard-gateway-identity"),
        ("secret", "storefront-apiguard-target-identity"),
    ] {
        let out = cp.kubectl_ok(["get", kind, name, "-n", "shop", "-o", "json"]);
        let object: Value = serde_json::from_str(&out).unwrap();
        let owners = object["metadata"]["ownerReferences"].as_array();
        assert!(
            owners.is_some_and(|o| o
                .iter()
                .any(|r| r["uid"] == uid.as_str() && r["controller"] == true)),
            "{kind} shop/{name} is not controlled by the policy: {}",
            object["metadata"]
        );
    }
    let bundle = cp.kubectl_ok([
        "get",
        "configmap",
        "apiguard-trust-bundle",
        "-n",
        "shop",
        "-o",
        "jsonpath={.data.ca\\.crt}",
    ]);
    assert!(
        bundle.contains("BEGIN CERTIFICATE"),
        "trust bundle: {bundle}"
    );

    // helm uninstall leaves no webhook registration (a leftover fail-closed one would lock
    // users out).
    cp.helm_ok(&["uninstall", "apiguard", "-n", "apiguard-system"]);
    let left = cp.kubectl_ok(["get", "validatingwebhookconfigurations", "-o", "name"]);
    assert!(left.trim().is_empty(), "left behind: {left}");
    cluster_sh(cp, "apiguard-stop", &[]);
    let after = apply_json(cp, &cors_ingress("catalog-after", "shop"));
    assert!(after.ok, "refused after uninstall:\n{}", after.text);
}
