//! The operator-managed webhook serving certificate on a real control plane, through the
//! playground's path (`tests/cluster.sh apiguard-install`: `helm install` with `webhook.url`
//! and no caBundle, a local `apiguard run` with the chart Deployment's environment and the
//! chart ServiceAccount's credentials):
//!
//! - after install the operator has created its CA and the serving Secret, and set the
//!   webhook's `caBundle` to the CA (managedFields: field manager `apiguard-webhook-ca`,
//!   operation Apply); what it serves is the Secret's certificate, valid for 127.0.0.1 under
//!   that CA; an insecure manifest is refused through kubectl;
//! - `helm upgrade` with changed values and an operator restart: the caBundle stays, the CA
//!   Secret and the serving certificate are unchanged, denials still work;
//! - the caBundle reset by someone else is restored;
//! - two replicas: one serving Secret, both serve the same certificate; the Secret deleted
//!   while both run: exactly one new one, both serve it, the webhook keeps refusing;
//! - `helm uninstall`: no webhook configuration left, and the still-running operator does not
//!   bring it back.

use crate::support::cluster::{ControlPlane, control_plane};
use crate::support::playground::{StopOperator, cluster_sh, log_tail};
use crate::support::tools::{free_port, root, wait_until};
use k8s_openapi::ByteString;
use serde_json::Value;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const NS: &str = "apiguard-system";

/// A second `apiguard run` replica, killed when dropped.
struct Replica {
    child: Child,
    webhook: SocketAddr,
    log: std::path::PathBuf,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts another replica with exactly the environment `tests/cluster.sh` gave the first one
/// (the chart Deployment's), on its own loopback ports, and waits until it is ready.
fn start_replica(cp: &ControlPlane) -> Replica {
    let env = std::fs::read_to_string(cp.dir.join("apiguard/process.env")).unwrap();
    let (webhook_port, admin_port) = (free_port(), free_port());
    let log = cp.dir.join("apiguard/replica-2.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_apiguard"));
    cmd.arg("run").env_clear();
    for line in env.lines() {
        let (name, value) = line.split_once('=').unwrap();
        let value = match name {
            "APIGUARD_WEBHOOK_ADDR" => format!("127.0.0.1:{webhook_port}"),
            "APIGUARD_ADMIN_ADDR" => format!("127.0.0.1:{admin_port}"),
            "POD_NAME" => "apiguard-replica-2".to_owned(),
            _ => value.to_owned(),
        };
        cmd.env(name, value);
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start the second replica");
    let mut replica = Replica {
        child,
        webhook: SocketAddr::from(([127, 0, 0, 1], webhook_port)),
        log,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(status)) = replica.child.try_wait() {
            panic!(
                "the second replica exited ({status}):\n{}",
                log_tail(&replica.log)
            );
        }
        if http_status(admin_port, "/readyz") == Some(200) {
            return replica;
        }
        assert!(
            Instant::now() < deadline,
            "the second replica was not ready in 60s:\n{}",
            log_tail(&replica.log)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    std::io::Read::read_to_string(&mut stream, &mut response).ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}

fn decode(b64: &str) -> Vec<u8> {
    serde_json::from_value::<ByteString>(Value::from(b64))
        .unwrap_or_else(|e| panic!("not base64 ({e}): {b64}"))
        .0
}

fn secret_key(cp: &ControlPlane, name: &str, key: &str) -> Option<Vec<u8>> {
    let out = cp.kubectl(["-n", NS, "get", "secret", name, "-o", "json"]);
    if !out.status.success() {
        return None;
    }
    let secret: Value = serde_json::from_slice(&out.stdout).unwrap();
    secret["data"][key].as_str().map(decode)
}

fn vwc(cp: &ControlPlane) -> Value {
    serde_json::from_str(&cp.kubectl_ok([
        "get",
        "validatingwebhookconfiguration",
        "apiguard",
        "-o",
        "json",
        "--show-managed-fields",
    ]))
    .unwrap()
}

fn first_der(pem: &[u8]) -> Vec<u8> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem)
        .next()
        .expect("a certificate")
        .expect("valid PEM")
        .to_vec()
}

/// The certificate the webhook at `addr` serves, verified against `ca_pem` for the IP SAN
/// 127.0.0.1 (what the apiserver does with the caBundle and the URL).
fn served_certificate(addr: SocketAddr, ca_pem: &[u8]) -> Result<Vec<u8>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.map_err(|e| e.to_string())?).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let mut conn =
        rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    let mut tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp)
            .map_err(|e| format!("TLS handshake with {addr}: {e}"))?;
    }
    Ok(conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or("no peer certificate")?
        .to_vec())
}

fn webhook_addr(cp: &ControlPlane) -> SocketAddr {
    let env = std::fs::read_to_string(cp.dir.join("apiguard/apiguard.env")).unwrap();
    let port = env
        .lines()
        .find_map(|l| l.strip_prefix("WEBHOOK_PORT="))
        .unwrap();
    format!("127.0.0.1:{port}").parse().unwrap()
}

fn answer(output: Output) -> (bool, String) {
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

/// The APG001 example, renamed into namespace `certs`: refused naming APG001.
fn assert_insecure_refused(cp: &ControlPlane, name: &str) {
    let text =
        std::fs::read_to_string(root().join("examples/insecure/APG001-cors-wildcard-origin.yaml"))
            .unwrap();
    let mut object = apiguard::manifest::parse_str("APG001", &text)
        .unwrap()
        .remove(0)
        .object;
    object["metadata"]["name"] = Value::from(name);
    object["metadata"]["namespace"] = Value::from("certs");
    let (ok, text) = answer(cp.kubectl_with_stdin(["apply", "-f", "-"], &object.to_string()));
    assert!(!ok, "{name} was admitted:\n{text}");
    assert!(
        text.contains("APG001") && text.contains("denied the request"),
        "{name} was not refused by the webhook naming APG001:\n{text}"
    );
}

fn serving_secrets(cp: &ControlPlane) -> Vec<String> {
    cp.kubectl_ok([
        "-n",
        NS,
        "get",
        "secrets",
        "-l",
        "app.kubernetes.io/component=webhook-serving-certificate",
        "-o",
        "name",
    ])
    .lines()
    .map(str::to_owned)
    .collect()
}

#[test]
fn the_operator_manages_its_webhook_serving_certificate() {
    let _group = crate::support::isolation::enter(module_path!());
    let cp = control_plane();
    cp.kubectl_ok(["create", "namespace", "certs"]);

    cluster_sh(cp, "apiguard-install", &[]);
    let _operator = StopOperator(cp);
    let first = webhook_addr(cp);

    // The CA and the serving Secret exist; the caBundle is the CA's, applied by the operator.
    let ca_roots = secret_key(cp, "apiguard-ca", "ca.crt").expect("the operator CA Secret");
    let ca_cert = secret_key(cp, "apiguard-ca", "tls.crt").unwrap();
    let serving = secret_key(cp, "apiguard-webhook-tls", "tls.crt").expect("the serving Secret");
    assert_eq!(
        secret_key(cp, "apiguard-webhook-tls", "ca.crt").as_deref(),
        Some(ca_roots.as_slice())
    );
    let bundle = wait_until(Duration::from_secs(30), "caBundle set", || {
        cp.webhook_ca_bundle("apiguard")
    });
    assert_eq!(bundle, ca_roots, "the caBundle is the operator CA");
    let managed = vwc(cp)["metadata"]["managedFields"].clone();
    let by_operator = managed
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["manager"] == "apiguard-webhook-ca")
        .unwrap_or_else(|| panic!("no apiguard-webhook-ca in managedFields: {managed}"));
    assert_eq!(by_operator["operation"], "Apply");
    assert!(
        by_operator["fieldsV1"].to_string().contains("caBundle"),
        "{by_operator}"
    );
    assert_eq!(
        served_certificate(first, &ca_roots).unwrap(),
        first_der(&serving)
    );
    assert_insecure_refused(cp, "after-install");

    // helm upgrade with changed values; the operator restarted (as a rollout would): the CA
    // and the serving certificate are kept, the caBundle stays.
    cp.helm_ok(&[
        "upgrade",
        "apiguard",
        "charts/apiguard",
        "-n",
        NS,
        "--reuse-values",
        "--set",
        "webhook.timeoutSeconds=7",
    ]);
    assert_eq!(vwc(cp)["webhooks"][0]["timeoutSeconds"], 7);
    assert_eq!(
        cp.webhook_ca_bundle("apiguard").as_deref(),
        Some(ca_roots.as_slice()),
        "helm upgrade lost the caBundle"
    );
    cluster_sh(cp, "apiguard-stop", &[]);
    cluster_sh(cp, "apiguard-start", &[]);
    assert_eq!(
        secret_key(cp, "apiguard-ca", "tls.crt").unwrap(),
        ca_cert,
        "the CA changed"
    );
    assert_eq!(
        secret_key(cp, "apiguard-webhook-tls", "tls.crt").unwrap(),
        serving,
        "a still-good serving certificate was reissued"
    );
    assert_eq!(
        cp.webhook_ca_bundle("apiguard").as_deref(),
        Some(ca_roots.as_slice())
    );
    assert_insecure_refused(cp, "after-upgrade");

    // Someone (a tool re-applying the chart's manifest) drops the caBundle: it comes back.
    cp.kubectl_ok([
        "patch",
        "validatingwebhookconfiguration",
        "apiguard",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/webhooks/0/clientConfig/caBundle"}]"#,
    ]);
    let restored = wait_until(Duration::from_secs(30), "caBundle restored", || {
        cp.webhook_ca_bundle("apiguard")
    });
    assert_eq!(restored, ca_roots);
    assert_insecure_refused(cp, "after-drift");

    // A second replica: the same Secret, the same certificate.
    let second = start_replica(cp);
    assert_eq!(serving_secrets(cp), ["secret/apiguard-webhook-tls"]);
    assert_eq!(
        served_certificate(second.webhook, &ca_roots).unwrap(),
        first_der(&serving),
        "the replicas serve different certificates"
    );

    // The Secret deleted while both run: both race to re-create it, one wins, both serve it.
    cp.kubectl_ok(["-n", NS, "delete", "secret", "apiguard-webhook-tls"]);
    let renewed = wait_until(Duration::from_secs(30), "serving Secret re-created", || {
        secret_key(cp, "apiguard-webhook-tls", "tls.crt")
    });
    assert_ne!(renewed, serving, "the deleted certificate came back");
    let want = first_der(&renewed);
    for addr in [first, second.webhook] {
        wait_until(
            Duration::from_secs(30),
            &format!("{addr} serves the new certificate"),
            || (served_certificate(addr, &ca_roots).ok()? == want).then_some(()),
        );
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(serving_secrets(cp), ["secret/apiguard-webhook-tls"]);
    assert_eq!(
        secret_key(cp, "apiguard-webhook-tls", "tls.crt").unwrap(),
        renewed,
        "the replicas kept replacing each other's certificate"
    );
    assert_insecure_refused(cp, "after-secret-deleted");
    let second_log = std::fs::read_to_string(&second.log).unwrap_or_default();
    drop(second);
    assert!(
        !second_log.contains("ERROR"),
        "the second replica logged errors:\n{second_log}"
    );

    // helm uninstall: no registration left, and the running operator does not re-create it.
    cp.helm_ok(&["uninstall", "apiguard", "-n", NS]);
    std::thread::sleep(Duration::from_secs(3));
    let left = cp.kubectl_ok(["get", "validatingwebhookconfigurations", "-o", "name"]);
    assert!(left.trim().is_empty(), "left behind: {left}");
}
