//! Certificates from the identity module on the wire through a real Envoy: the gateway reaches
//! the target over mTLS and checks the target's SPIFFE ID; partners present client
//! certificates whose URI SAN must be allowed.

use crate::support::envoy::{Gateway, Request, echo_upstream_mtls};
use apiguard::identity::{
    CertificateAuthority, DEFAULT_CA_LIFETIME, LeafRequest, SpiffeId, issue_leaf,
};
use std::path::Path;
use time::OffsetDateTime;

fn manifests(mtls: &str, allowed_client: &str) -> String {
    format!(
        r#"
apiVersion: apiguard.dev/v1alpha1
kind: ApiSecurityPolicy
metadata: {{name: payments, namespace: test}}
spec:
  target: {{service: payments, port: http}}
  exposure: Partner
  hosts: [api.test.example]
  tls: {{minVersion: TLSv1_3, clientCertificate: Required}}
  authentication:
    mtls: {{allowedClients: ["{allowed_client}"]}}
  authorization:
    rules:
    - name: list-payments
      match: {{methods: [GET], paths: ["/payments"]}}
  eastWest: {{mtls: {mtls}}}
---
apiVersion: v1
kind: Service
metadata: {{name: payments, namespace: test}}
spec:
  selector: {{app: payments}}
  ports: [{{name: http, port: 9000, targetPort: 9000}}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: payments, namespace: test}}
spec:
  selector: {{matchLabels: {{app: payments}}}}
  template:
    metadata: {{labels: {{app: payments}}}}
    spec:
      serviceAccountName: payments
      containers: [{{name: api, image: example/payments:1}}]
"#
    )
}

fn make_ca(dir: &Path) -> CertificateAuthority {
    let ca = CertificateAuthority::generate(OffsetDateTime::now_utc(), DEFAULT_CA_LIFETIME)
        .expect("generate CA");
    std::fs::create_dir_all(dir).expect("ca dir");
    std::fs::write(dir.join("ca.crt"), ca.cert_pem()).expect("ca.crt");
    std::fs::write(dir.join("ca.key"), ca.key_pem()).expect("ca.key");
    ca
}

fn leaf(ca: &CertificateAuthority, ns: &str, sa: &str) -> (String, String) {
    let id = SpiffeId::new("cluster.local", ns, sa).expect("SPIFFE ID");
    let mut req = LeafRequest::new(id);
    req.dns_names = vec!["localhost".into()];
    let l = issue_leaf(ca, &req, OffsetDateTime::now_utc()).expect("issue leaf");
    (l.cert_pem, l.key_pem)
}

const PARTNER: &str = "spiffe://cluster.local/ns/partners/sa/acme";

#[tokio::test]
async fn upstream_mtls_with_identity_certificates_and_partner_client_certificates() {
    let ca_home = tempfile::tempdir().expect("tempdir");
    let ca_dir = ca_home.path().join("ca");
    let ca = make_ca(&ca_dir);
    let (target_cert, target_key) = leaf(&ca, "test", "payments");
    let upstream = echo_upstream_mtls(&target_cert, &target_key, &ca.roots_pem()).await;
    let gateway =
        Gateway::start_with_ca(&manifests("Strict", PARTNER), upstream.addr, Some(ca_dir)).await;
    let (partner_cert, partner_key) = leaf(&ca, "partners", "acme");
    let (other_cert, other_key) = leaf(&ca, "partners", "globex");

    let r = gateway
        .try_send(
            &Request::get("/payments"),
            Some((&partner_cert, &partner_key)),
        )
        .await
        .expect("allowed partner connects");
    assert_eq!(
        r.status,
        200,
        "allowed partner certificate, gateway -> target over mTLS with the target's SPIFFE ID: {}",
        r.text()
    );
    let xfcc = r.upstream_header("x-forwarded-client-cert");
    assert!(
        xfcc.iter().any(|v| v.contains(PARTNER)),
        "the target learns the verified partner identity: {xfcc:?}"
    );

    let no_cert = gateway.try_send(&Request::get("/payments"), None).await;
    assert!(
        no_cert.is_err(),
        "no client certificate -> handshake refused (Required), got {no_cert:?}"
    );
    let other = gateway
        .try_send(&Request::get("/payments"), Some((&other_cert, &other_key)))
        .await;
    assert!(
        other.is_err() || other.as_ref().map(|r| r.status) == Ok(403),
        "a certificate with another SPIFFE ID is refused, got {other:?}"
    );
    let r = gateway
        .try_send(&Request::get("/admin"), Some((&partner_cert, &partner_key)))
        .await
        .expect("connects");
    assert_eq!(r.status, 404, "undeclared route -> 404");
}

#[tokio::test]
async fn upstream_with_the_wrong_spiffe_id_is_refused() {
    let ca_home = tempfile::tempdir().expect("tempdir");
    let ca_dir = ca_home.path().join("ca");
    let ca = make_ca(&ca_dir);
    // The target presents a certificate of another workload: the gateway must not talk to it.
    let (cert, key) = leaf(&ca, "test", "impostor");
    let upstream = echo_upstream_mtls(&cert, &key, &ca.roots_pem()).await;
    let gateway =
        Gateway::start_with_ca(&manifests("Strict", PARTNER), upstream.addr, Some(ca_dir)).await;
    let (partner_cert, partner_key) = leaf(&ca, "partners", "acme");
    let r = gateway
        .try_send(
            &Request::get("/payments"),
            Some((&partner_cert, &partner_key)),
        )
        .await
        .expect("partner connects");
    assert_eq!(
        r.status,
        503,
        "target SAN mismatch -> 503 upstream failure: {}",
        r.text()
    );
}
