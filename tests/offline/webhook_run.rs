//! `apiguard run` as a process: usage errors exit 2 with the fix; with `--no-controller`
//! (flags and `APIGUARD_*` environment) against a mocked apiserver (KUBECONFIG) it becomes ready after the caches sync, denies an
//! insecure Ingress over TLS, exposes the decision in /metrics and its JSON log, and exits 0
//! on SIGTERM.

use crate::support::webhook::*;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn apiguard() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_apiguard"));
    for (key, _) in std::env::vars() {
        if key.starts_with("APIGUARD_") {
            cmd.env_remove(&key);
        }
    }
    cmd.env_remove("POD_NAMESPACE");
    cmd
}

fn run_to_end(cmd: &mut Command) -> (i32, String) {
    let out = cmd.output().expect("run apiguard");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn run_without_certificates_says_how_to_get_them() {
    let (code, stderr) = run_to_end(apiguard().arg("run"));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--tls-cert"), "{stderr}");
    assert!(stderr.contains("--no-webhook"), "{stderr}");

    let (code, stderr) = run_to_end(apiguard().args(["run", "--no-webhook", "--no-controller"]));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("nothing to run"), "{stderr}");
}

#[test]
fn webhook_needs_its_certificate_files() {
    let (code, stderr) = run_to_end(apiguard().args(["run", "--no-controller"]));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--tls-cert"), "{stderr}");

    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("missing.crt");
    let (code, stderr) = run_to_end(
        apiguard()
            .args(["run", "--no-controller", "--admin-addr", "127.0.0.1:0"])
            .arg("--tls-cert")
            .arg(&cert)
            .arg("--tls-key")
            .arg(dir.path().join("missing.key")),
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("missing.crt"), "{stderr}");

    let (code, stderr) = run_to_end(apiguard().args(["run", "--no-controller", "--mode", "Block"]));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("Enforce"), "{stderr}");
}

fn write_kubeconfig(path: &Path, server: SocketAddr) {
    std::fs::write(
        path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: mock\n  cluster:\n    server: http://{server}\n\
             users:\n- name: tester\n  user: {{}}\ncontexts:\n- name: mock\n  context:\n    cluster: mock\n    user: tester\n    namespace: default\n\
             current-context: mock\n"
        ),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_the_webhook_until_sigterm() {
    let mock = MockApiserver::new(false).open();
    let apiserver = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let apiserver_addr = apiserver.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(apiserver, mock.router()).await });

    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    let (cert, key) = pki.leaf(42);
    write_secret_volume(dir.path(), 1, &cert, &key);
    let kubeconfig = dir.path().join("kubeconfig");
    write_kubeconfig(&kubeconfig, apiserver_addr);
    let (webhook_addr, admin_addr) = (free_addr(), free_addr());
    let log_path = dir.path().join("apiguard.log");
    // Some settings by flag, some by environment (as the Helm chart sets them).
    let mut child = apiguard()
        .args(["run", "--webhook-addr", &webhook_addr.to_string()])
        .env("APIGUARD_NO_CONTROLLER", "true")
        .env("APIGUARD_LOG_FORMAT", "json")
        .env("APIGUARD_ADMIN_ADDR", admin_addr.to_string())
        .env("POD_NAMESPACE", "guard-system")
        .arg("--tls-cert")
        .arg(dir.path().join("tls.crt"))
        .arg("--tls-key")
        .arg(dir.path().join("tls.key"))
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .expect("start apiguard run");
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some((200, _)) = http_get(admin_addr, "/readyz").await {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("apiguard exited early ({status}):\n{}", log());
        }
        assert!(
            Instant::now() < deadline,
            "not ready within 30 s:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        http_get(admin_addr, "/healthz").await.map(|r| r.0),
        Some(200)
    );

    let mut client = TlsClient::connect(webhook_addr, pki.client_config()).await;
    let (status, answer) = client
        .validate(full(
            review("CREATE", &cors_ingress(None), "run-1", false).to_string(),
        ))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["response"]["allowed"], false, "{answer}");
    assert!(
        answer["response"]["status"]["message"]
            .as_str()
            .unwrap()
            .contains("APG001"),
        "{answer}"
    );
    // Objects in the operator namespace ($POD_NAMESPACE here) are exempt.
    let mut own = cors_ingress(None);
    own["metadata"]["namespace"] = "guard-system".into();
    let (_, answer) = client
        .validate(full(review("CREATE", &own, "run-2", false).to_string()))
        .await;
    assert_eq!(answer["response"]["allowed"], true, "{answer}");

    let (status, metrics) = http_get(admin_addr, "/metrics").await.expect("metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains(
            r#"apiguard_admission_requests_total{kind="Ingress",operation="CREATE",decision="denied"} 1"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"apiguard_admission_findings_total{rule="APG001",severity="deny",mode="enforce"} 1"#
        ),
        "{metrics}"
    );

    let decision = log()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["uid"] == "run-1")
        .unwrap_or_else(|| panic!("no JSON decision log line for run-1:\n{}", log()));
    assert_eq!(decision["message"], "admission decision");
    assert_eq!(decision["decision"], "denied");
    assert_eq!(decision["kind"], "Ingress");
    assert_eq!(decision["namespace"], "shop");
    assert_eq!(decision["name"], "web");
    assert_eq!(decision["rules"], "APG001");

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("apiguard did not stop within 15 s of SIGTERM:\n{}", log());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exit {status}:\n{}", log());
    assert!(log().contains("apiguard stopped"), "{}", log());
}
