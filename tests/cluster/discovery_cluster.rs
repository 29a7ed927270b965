//! The discovery intake against the real control plane: `apiguard run` (controller + webhook
//! with its managed serving certificate) takes a sensor's inventory push on
//! `POST /v1/discovery` only with the policy's gateway certificate (no certificate: 401; the
//! target's workload certificate, or the gateway's for another policy: 403; too many: 429 with
//! `retry-after`), and writes the PolicyReport `apiguard-<policy>`, `status.discovery` and one
//! `ShadowEndpoint` Event per new shadow endpoint. The report goes with its policy.

use crate::support::controller::{Process, install_report_crds};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use crate::support::cluster::{
    control_plane, create_service, ensure_namespace, eventually, with_temp_ns,
};
use crate::support::controller::install_policy_crd;
use crate::support::tools::free_port;
use crate::support::webhook::{TlsClient, full, http_get};
use apiguard::api::ApiSecurityPolicy;
use apiguard::discovery::push::{PUSH_PATH, Push};
use apiguard::discovery::{EndpointReport, Report, SensitiveClass};
use apiguard::reports::{Outcome, PolicyReport};
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, DeleteParams, PostParams};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};

const OP_NS: &str = "apiguard-discovery";
const WAIT: Duration = Duration::from_secs(60);

/// A TLS client configuration trusting `roots_pem`, presenting `identity` (cert, key) if any.
pub(crate) fn client_config(
    roots_pem: &[u8],
    identity: Option<(&[u8], &[u8])>,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(roots_pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let mut config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(cert)
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap(),
                PrivateKeyDer::from_pem_slice(key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// `POST /v1/discovery` with `body` on a new connection: status, retry-after, JSON answer.
pub(crate) async fn push(
    port: u16,
    config: Arc<rustls::ClientConfig>,
    body: &Value,
) -> (u16, Option<String>, Value) {
    let addr = ([127, 0, 0, 1], port).into();
    let mut client = TlsClient::connect(addr, config).await;
    client.sender.ready().await.unwrap();
    let request = hyper::Request::post(PUSH_PATH)
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(full(serde_json::to_vec(body).unwrap()))
        .unwrap();
    let response = client.sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let answer = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("answer is not JSON ({e}): {bytes:?}"));
    (status, retry_after, answer)
}

fn endpoint(method: &str, path: &str, declared: bool) -> EndpointReport {
    EndpointReport {
        method: method.into(),
        path: path.into(),
        declared,
        deprecated: false,
        requests: 3,
        statuses: [("2xx".to_string(), 3)].into(),
        authenticated: 3,
        sensitive: Vec::new(),
        sensitive_counts: Default::default(),
        content_types: Default::default(),
        parameters: Default::default(),
        first_seen: "2026-12-03T10:00:00Z".into(),
        last_seen: "2026-12-03T10:01:00Z".into(),
    }
}

fn inventory(ns: &str, name: &str, reporter: &str) -> Value {
    let mut orders = endpoint("GET", "/v1/orders", true);
    orders.sensitive = vec![SensitiveClass::Email];
    orders.sensitive_counts = [(SensitiveClass::Email, 3)].into();
    let push = Push {
        namespace: ns.into(),
        name: name.into(),
        reporter: reporter.into(),
        declarations: "0123abcd".into(),
        inventory: Report {
            policy: Some(format!("{ns}/{name}")),
            endpoints: vec![orders, endpoint("GET", "/v1/admin/export", false)],
            shadow: vec!["GET /v1/admin/export".into()],
            zombie: Vec::new(),
            observed: 6,
            overflow: 0,
        },
        discovery: true,
        runtime: None,
    };
    serde_json::to_value(push).unwrap()
}

pub(crate) async fn secret_data(
    client: &kube::Client,
    ns: &str,
    name: &str,
) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let secret = eventually(WAIT, &format!("Secret {ns}/{name}"), || async {
        Api::<Secret>::namespaced(client.clone(), ns)
            .get_opt(name)
            .await
            .ok()
            .flatten()
    })
    .await;
    let data = secret.data.unwrap_or_default();
    let get = |k: &str| data.get(k).map(|b| b.0.clone()).unwrap_or_default();
    (get("tls.crt"), get("tls.key"), get("ca.crt"))
}

fn shadow_events(ns: &str) -> Vec<Value> {
    events_with_reason(ns, "ShadowEndpoint")
}

/// The Events of namespace `ns` with `reason`, as kubectl lists them.
pub(crate) fn events_with_reason(ns: &str, reason: &str) -> Vec<Value> {
    let selector = format!("reason={reason}");
    let out = control_plane().kubectl_ok([
        "get",
        "events",
        "-n",
        ns,
        "--field-selector",
        selector.as_str(),
        "-o",
        "json",
    ]);
    let list: Value = serde_json::from_str(&out).unwrap();
    list["items"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn pushes_are_taken_only_from_the_gateway_and_become_report_status_and_events() {
    let _group = crate::support::isolation::enter(module_path!());
    let cp = control_plane();
    install_policy_crd();
    install_report_crds();
    let client = cp.client().await;
    ensure_namespace(&client, OP_NS).await;
    let (webhook, admin) = (free_port(), free_port());
    let url = format!("https://127.0.0.1:{webhook}{PUSH_PATH}");
    let _process = start_operator(
        webhook,
        admin,
        OP_NS,
        "discovery-replica",
        &["--discovery-report-interval", "5s"],
    )
    .await;
    let admin_addr: std::net::SocketAddr = ([127, 0, 0, 1], admin).into();
    let (_, _, roots) = secret_data(&client, OP_NS, "apiguard-webhook-tls").await;

    with_temp_ns(|client, ns| async move {
        create_service(&client, &ns, "api").await;
        let policy: ApiSecurityPolicy = serde_json::from_value(json!({
            "apiVersion": "apiguard.dev/v1alpha1", "kind": "ApiSecurityPolicy",
            "metadata": {"name": "shop", "namespace": ns},
            "spec": {"target": {"service": "api", "port": 8080}, "exposure": "Internal",
                "authentication": {"jwt": {"providers": [{"name": "corp", "issuer": "https://idp.example/",
                    "audiences": ["api"], "jwks": {"uri": "https://idp.example/jwks.json"}}]}},
                "authorization": {"rules": [{"name": "orders",
                    "match": {"methods": ["GET"], "paths": ["/v1/orders"]}, "allow": {"scopes": ["orders"]}}]}}}))
        .unwrap();
        let policies = Api::<ApiSecurityPolicy>::namespaced(client.clone(), &ns);
        policies.create(&PostParams::default(), &policy).await.unwrap();
        let (gw_cert, gw_key, _) =
            secret_data(&client, &ns, "shop-apiguard-gateway-identity").await;
        let (target_cert, target_key, _) =
            secret_data(&client, &ns, "shop-apiguard-target-identity").await;

        let gateway = client_config(&roots, Some((&gw_cert, &gw_key)));
        let body = inventory(&ns, "shop", "shop-apiguard-0");

        // Refused: no certificate, the target's identity, the gateway's for another policy.
        let (status, _, answer) = push(webhook, client_config(&roots, None), &body).await;
        assert_eq!(status, 401, "{answer}");
        assert_eq!(answer["accepted"], false);
        let target = client_config(&roots, Some((&target_cert, &target_key)));
        let (status, _, answer) = push(webhook, target, &body).await;
        assert_eq!(status, 403, "{answer}");
        let message = answer["message"].as_str().unwrap();
        assert!(
            message.contains("is not the gateway of") && message.contains("/sa/shop-apiguard"),
            "{message}"
        );
        let (status, _, answer) =
            push(webhook, gateway.clone(), &inventory(&ns, "payments", "x")).await;
        assert_eq!(status, 403, "{answer}");

        // Taken from the gateway.
        let (status, _, answer) = push(webhook, gateway.clone(), &body).await;
        assert_eq!(status, 202, "{answer}");
        assert_eq!(answer["accepted"], true);
        let reports: Api<PolicyReport> = Api::namespaced(client.clone(), &ns);
        let report = eventually(WAIT, "PolicyReport apiguard-shop", || async {
            reports.get_opt("apiguard-shop").await.ok().flatten()
        })
        .await;
        let results: Vec<(String, Outcome, String)> = report
            .results
            .iter()
            .map(|r| {
                (
                    r.rule.clone().unwrap_or_default(),
                    r.result.unwrap(),
                    r.properties.get("path").cloned().unwrap_or_default(),
                )
            })
            .collect();
        assert_eq!(
            results,
            [
                ("sensitive-data".into(), Outcome::Warn, "/v1/orders".into()),
                ("shadow-endpoint".into(), Outcome::Fail, "/v1/admin/export".into()),
            ],
            "{report:?}"
        );
        assert_eq!((report.summary.fail, report.summary.warn), (1, 1));
        let owner = &report.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("ApiSecurityPolicy", "shop"));
        let listed = control_plane().kubectl_ok(["get", "policyreports", "-A"]);
        assert!(listed.contains("apiguard-shop"), "{listed}");

        let discovery = policies.get("shop").await.unwrap().status.unwrap().discovery.unwrap();
        assert_eq!(
            (discovery.endpoints, discovery.undeclared, discovery.sensitive),
            (2, 1, 1)
        );
        assert!(discovery.last_report_time.starts_with("20"), "{discovery:?}");

        // One Event per new shadow endpoint, not per push; the reconcile keeps the status.
        let (status, _, _) = push(webhook, gateway.clone(), &body).await;
        assert_eq!(status, 202);
        let events = shadow_events(&ns);
        assert_eq!(events.len(), 1, "{events:?}");
        let note = events[0]["message"].as_str().unwrap_or_default();
        assert!(note.contains("GET /v1/admin/export"), "{note}");
        policies
            .patch(
                "shop",
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(json!({"metadata": {"labels": {"touched": "yes"}}})),
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let kept = policies.get("shop").await.unwrap().status.unwrap();
        assert!(kept.discovery.is_some(), "a reconcile dropped status.discovery");
        assert!(!kept.conditions.is_empty());

        // A burst, then 429 with retry-after.
        let mut limited = None;
        for _ in 0..15 {
            let (status, retry_after, _) = push(webhook, gateway.clone(), &body).await;
            if status == 429 {
                limited = retry_after;
                break;
            }
            assert_eq!(status, 202);
        }
        let retry_after: u64 = limited
            .expect("no 429 within 15 pushes")
            .parse()
            .unwrap();
        assert!((1..=2).contains(&retry_after), "{retry_after}");

        let (_, metrics) = http_get(admin_addr, "/metrics").await.unwrap();
        for needle in [
            "apiguard_discovery_pushes_total{result=\"unauthenticated\"} 1",
            "apiguard_discovery_pushes_total{result=\"forbidden\"} 2",
            "apiguard_discovery_pushes_total{result=\"rate_limited\"} 1",
        ] {
            assert!(metrics.contains(needle), "{needle} missing:\n{metrics}");
        }

        // The gateway is told where to push (its sensor.yaml) and holds its certificate files.
        let sensor_yaml = eventually(WAIT, "sensor.yaml with a report section", || async {
            let cm = Api::<ConfigMap>::namespaced(client.clone(), &ns)
                .get_opt("shop-apiguard")
                .await
                .ok()??;
            let text = cm.data?.get("sensor.yaml")?.clone();
            text.contains("report:").then_some(text)
        })
        .await;
        assert!(sensor_yaml.contains(&url), "{sensor_yaml}");

        // The report goes with its policy.
        policies.delete("shop", &DeleteParams::default()).await.unwrap();
        eventually(WAIT, "PolicyReport deleted with its policy", || async {
            reports
                .get_opt("apiguard-shop")
                .await
                .ok()
                .and_then(|r| r.is_none().then_some(()))
        })
        .await;
    })
    .await;
}

/// `apiguard run` (webhook and intake on `webhook`, admin on `admin`) against the shared control
/// plane, operator namespace `op_ns`, pod name `pod`, the push URL on its own listener, with
/// `extra` flags; ready (its `/readyz` answers 200).
pub(crate) async fn start_operator(
    webhook: u16,
    admin: u16,
    op_ns: &str,
    pod: &str,
    extra: &[&str],
) -> Process {
    let cp = control_plane();
    let url = format!("https://127.0.0.1:{webhook}{PUSH_PATH}");
    let process = Process(
        Command::new(env!("CARGO_BIN_EXE_apiguard"))
            .args([
                "run",
                "--no-audit",
                "--webhook-addr",
                &format!("127.0.0.1:{webhook}"),
                "--admin-addr",
                &format!("127.0.0.1:{admin}"),
                "--operator-namespace",
                op_ns,
                "--webhook-dns-name",
                "localhost",
                "--webhook-ip-address",
                "127.0.0.1",
                "--discovery-url",
                &url,
            ])
            .args(extra)
            .env("KUBECONFIG", &cp.kubeconfig)
            .env("POD_NAME", pod)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting apiguard run"),
    );
    let admin_addr = ([127, 0, 0, 1], admin).into();
    eventually(WAIT, "/readyz 200", || async {
        http_get(admin_addr, "/readyz")
            .await
            .filter(|(c, _)| *c == 200)
    })
    .await;
    process
}
