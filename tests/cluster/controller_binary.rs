//! The built binary as an operator: `apiguard run --no-webhook` against the real control
//! plane reconciles a policy to Ready, serves /readyz, /healthz and the controller metrics,
//! and on SIGTERM stops gracefully and releases its Lease.

use crate::support::controller::Process;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::cluster::{control_plane, eventually, with_temp_ns};
use crate::support::controller::install_policy_crd;
use crate::support::tools::free_port;
use apiguard::api::ApiSecurityPolicy;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, PostParams};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const OP_NS: &str = "apiguard-binary";

/// `GET path` on the admin port: (status code, body).
async fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .ok()?
        .ok()?;
    let code = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((code, body))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_binary_reconciles_reports_and_stops_gracefully() {
    let _group = crate::support::isolation::enter(module_path!());
    let cp = control_plane();
    install_policy_crd();
    let client = cp.client().await;
    crate::support::cluster::ensure_namespace(&client, OP_NS).await;
    let admin = free_port();
    let mut process = Process(
        Command::new(env!("CARGO_BIN_EXE_apiguard"))
            .args([
                "run",
                "--no-webhook",
                "--admin-addr",
                &format!("127.0.0.1:{admin}"),
                "--operator-namespace",
                OP_NS,
            ])
            .env("KUBECONFIG", &cp.kubeconfig)
            .env("POD_NAME", "binary-replica")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting apiguard run"),
    );

    eventually(Duration::from_secs(30), "/readyz 200", || async {
        get(admin, "/readyz").await.filter(|(c, _)| *c == 200)
    })
    .await;
    let (code, body) = get(admin, "/healthz").await.unwrap();
    assert_eq!((code, body.as_str()), (200, "ok\n"));

    with_temp_ns(|client, ns| async move {
        let svc: Service = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "api", "namespace": ns},
            "spec": {"selector": {"app": "api"}, "ports": [{"port": 8080}]}})).unwrap();
        Api::<Service>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &svc)
            .await
            .unwrap();
        let p: ApiSecurityPolicy = serde_json::from_value(json!({
            "apiVersion": "apiguard.dev/v1alpha1", "kind": "ApiSecurityPolicy",
            "metadata": {"name": "bin", "namespace": ns},
            "spec": {"target": {"service": "api", "port": 8080}, "exposure": "Internal",
                "authentication": {"jwt": {"providers": [{"name": "corp", "issuer": "https://idp.example/",
                    "audiences": ["api"], "jwks": {"uri": "https://idp.example/jwks.json"}}]}},
                "authorization": {"rules": [{"name": "r", "match": {"methods": ["GET"], "paths": ["/x"]},
                    "allow": {"scopes": ["x"]}}]}}})).unwrap();
        let api = Api::<ApiSecurityPolicy>::namespaced(client.clone(), &ns);
        api.create(&PostParams::default(), &p).await.unwrap();
        eventually(Duration::from_secs(30), "policy Ready", || async {
            let p = api.get("bin").await.ok()?;
            p.status?
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
                .then_some(())
        })
        .await;
    })
    .await;

    // The reconcile is counted when it returns, a moment after its status write made the
    // policy Ready (its Event is published in between).
    let needles = [
        "apiguard_reconcile_total{result=\"success\"}",
        "apiguard_reconcile_duration_seconds_count",
        "apiguard_policies{condition=\"Ready\"} 1",
        "apiguard_certificates_expiry_seconds{identity=\"gateway\"}",
    ];
    let metrics = eventually(
        Duration::from_secs(30),
        "the reconcile's metrics",
        || async {
            let (_, metrics) = get(admin, "/metrics").await?;
            needles
                .iter()
                .all(|n| metrics.contains(n))
                .then_some(metrics)
                .filter(|m| !m.contains("apiguard_reconcile_duration_seconds_count 0"))
        },
    )
    .await;
    assert!(!metrics.contains("result=\"apply_failed\""), "{metrics}");
    let leases = Api::<Lease>::namespaced(client.clone(), OP_NS);
    let holder = leases
        .get("apiguard-controller")
        .await
        .unwrap()
        .spec
        .unwrap()
        .holder_identity;
    assert_eq!(holder.as_deref(), Some("binary-replica"));

    // SIGTERM: graceful stop, exit 0, Lease released.
    let pid = process.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let start = Instant::now();
    let status = loop {
        if let Some(s) = process.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "apiguard did not stop within 20s of SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "apiguard exited with {status}");
    let lease = leases.get("apiguard-controller").await.unwrap();
    let holder = lease.spec.unwrap().holder_identity;
    assert!(
        holder.as_deref().is_none_or(str::is_empty),
        "Lease still held by {holder:?} after shutdown"
    );
}
