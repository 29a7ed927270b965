//! `apiguard run --no-controller` behind a real kube-apiserver (tests/tools.sh builds it): the
//! webhook is registered by URL for one test namespace, and `kubectl apply` of an insecure
//! Ingress is refused naming APG001 (also with `--dry-run=server`), the exempted Ingress is
//! admitted with a warning, and a gateway bypass (APG004), which needs the cluster's
//! ApiSecurityPolicies from the reflector caches, is refused.

use crate::support::cluster::{control_plane, eventually, unique_name, with_temp_ns};
use crate::support::webhook::*;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    RuleWithOperations, ValidatingWebhook, ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::Api;
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The apiguard process; killed if the test fails before stopping it.
struct Apiguard(Child);

impl Drop for Apiguard {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_is_refused_by_the_apiguard_webhook() {
    let _group = crate::support::isolation::enter(module_path!());
    let control_plane = control_plane();
    control_plane.install_crds();
    with_temp_ns(|client, ns| async move {
        let dir = tempfile::tempdir().unwrap();
        let pki = TestPki::new();
        let (cert, key) = pki.leaf(1);
        write_secret_volume(dir.path(), 1, &cert, &key);
        let (webhook_addr, admin_addr) = (free_addr(), free_addr());
        let log_path = dir.path().join("apiguard.log");
        let mut apiguard = Apiguard(
            Command::new(env!("CARGO_BIN_EXE_apiguard"))
                .args(["run", "--no-controller"])
                .args(["--webhook-addr", &webhook_addr.to_string()])
                .args(["--admin-addr", &admin_addr.to_string()])
                .arg("--tls-cert")
                .arg(dir.path().join("tls.crt"))
                .arg("--tls-key")
                .arg(dir.path().join("tls.key"))
                .env("KUBECONFIG", &control_plane.kubeconfig)
                .env_remove("APIGUARD_MODE")
                .env_remove("APIGUARD_EXEMPT_NAMESPACES")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log_path).unwrap())
                .spawn()
                .expect("start apiguard run"),
        );
        let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
        eventually(Duration::from_secs(60), "apiguard /readyz", || async {
            matches!(http_get(admin_addr, "/readyz").await, Some((200, _))).then_some(())
        })
        .await;

        let name = unique_name("apiguard-webhook");
        let rule = |group: &str, version: &str, resource: &str| RuleWithOperations {
            operations: Some(vec!["CREATE".into(), "UPDATE".into()]),
            api_groups: Some(vec![group.to_owned()]),
            api_versions: Some(vec![version.to_owned()]),
            resources: Some(vec![resource.to_owned()]),
            scope: Some("Namespaced".into()),
        };
        let configuration = ValidatingWebhookConfiguration {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                ..ObjectMeta::default()
            },
            webhooks: Some(vec![ValidatingWebhook {
                name: "validate.apiguard.dev".into(),
                client_config: WebhookClientConfig {
                    url: Some(format!("https://{webhook_addr}/validate")),
                    ca_bundle: Some(ByteString(pki.ca.pem().into_bytes())),
                    service: None,
                },
                rules: Some(vec![
                    rule("networking.k8s.io", "v1", "ingresses"),
                    rule("apiguard.dev", "v1alpha1", "apisecuritypolicies"),
                    rule("", "v1", "services"),
                ]),
                // Only this test's namespace: other tests sharing the control plane never reach it.
                namespace_selector: Some(LabelSelector {
                    match_labels: Some(
                        [("kubernetes.io/metadata.name".to_owned(), ns.clone())].into(),
                    ),
                    ..LabelSelector::default()
                }),
                failure_policy: Some("Fail".into()),
                side_effects: "None".into(),
                admission_review_versions: vec!["v1".into()],
                timeout_seconds: Some(10),
                ..ValidatingWebhook::default()
            }]),
        };
        let configurations: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
        configurations
            .create(&PostParams::default(), &configuration)
            .await
            .expect("create the ValidatingWebhookConfiguration");

        let in_ns = |mut object: serde_json::Value| {
            object["metadata"]["namespace"] = ns.clone().into();
            // kubectl reads JSON manifests as well as YAML.
            object.to_string()
        };
        // The apiserver picks the configuration up asynchronously: retry until it is in force.
        let insecure = in_ns(cors_ingress(None));
        let stderr = eventually(
            Duration::from_secs(30),
            "the webhook to refuse the Ingress",
            || async {
                let out = control_plane
                    .kubectl_async(&["apply", "-f", "-"], &insecure)
                    .await;
                (!out.status.success()).then(|| String::from_utf8_lossy(&out.stderr).into_owned())
            },
        )
        .await;
        assert!(
            stderr.contains(r#"admission webhook "validate.apiguard.dev" denied the request"#)
                && stderr.contains(&format!("apiguard refused Ingress {ns}/web"))
                && stderr.contains("APG001")
                && stderr.contains("nginx.ingress.kubernetes.io/cors-allow-origin"),
            "kubectl does not show apiguard's denial: {stderr}\n{}",
            log()
        );

        let dry = control_plane
            .kubectl_async(&["apply", "--dry-run=server", "-f", "-"], &insecure)
            .await;
        assert!(!dry.status.success());
        assert!(String::from_utf8_lossy(&dry.stderr).contains("APG001"));

        let exempt = in_ns(cors_ingress(Some("public web fonts, no credentials")));
        let out = control_plane
            .kubectl_async(&["apply", "-f", "-"], &exempt)
            .await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "exempted Ingress refused: {stderr}");
        assert!(
            stderr.contains("Warning: APG001 exempted: public web fonts, no credentials"),
            "no exemption warning: {stderr}"
        );

        // Gateway bypass: needs the policy from the reflector cache.
        let target = in_ns(serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "payments"},
            "spec": {"selector": {"app": "payments"}, "ports": [{"port": 8080}]}
        }));
        let out = control_plane
            .kubectl_async(&["apply", "-f", "-"], &target)
            .await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = control_plane
            .kubectl_async(&["apply", "-f", "-"], &in_ns(policy()))
            .await;
        assert!(
            out.status.success(),
            "policy refused: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut bypass = cors_ingress(Some("fonts"));
        bypass["metadata"]["name"] = "payments-direct".into();
        bypass["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"] =
            serde_json::json!({"name": "payments", "port": {"number": 8080}});
        let bypass = in_ns(bypass);
        let stderr = eventually(
            Duration::from_secs(30),
            "APG004 once the policy is cached",
            || async {
                let out = control_plane
                    .kubectl_async(&["apply", "-f", "-"], &bypass)
                    .await;
                let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
                (!out.status.success() && stderr.contains("APG004")).then_some(stderr)
            },
        )
        .await;
        assert!(stderr.contains("payments"), "{stderr}");

        configurations
            .delete(&name, &DeleteParams::default())
            .await
            .expect("delete the ValidatingWebhookConfiguration");
        let kill = Command::new("kill")
            .args(["-TERM", &apiguard.0.id().to_string()])
            .status()
            .expect("kill");
        assert!(kill.success());
        let status = eventually(
            Duration::from_secs(15),
            "apiguard to exit after SIGTERM",
            || {
                let status = apiguard.0.try_wait().ok().flatten();
                async move { status }
            },
        )
        .await;
        assert!(status.success(), "apiguard exit {status}:\n{}", log());
    })
    .await;
}
