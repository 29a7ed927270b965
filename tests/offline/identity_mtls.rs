//! Real mutual-TLS handshakes (tokio-rustls on 127.0.0.1) with certificates issued by
//! `apiguard::identity`, including every step of a CA rotation.

use crate::support::tools::openssl_ok;
use std::sync::Arc;

use apiguard::identity::ca::PemSource;
use apiguard::identity::{
    CertificateAuthority, IssuedLeaf, LeafRequest, RotationState, SpiffeId, TrustedRoot, issue_leaf,
};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
};
use time::{Duration, OffsetDateTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The TLS clock: the test's injected time, so certificate validity is judged at `now`.
#[derive(Debug)]
struct FixedTime(UnixTime);

impl rustls::time_provider::TimeProvider for FixedTime {
    fn current_time(&self) -> Option<UnixTime> {
        Some(self.0)
    }
}

fn unix(t: OffsetDateTime) -> UnixTime {
    UnixTime::since_unix_epoch(std::time::Duration::from_secs(t.unix_timestamp() as u64))
}

/// The single URI SAN of a certificate, if it has exactly one.
fn spiffe_uri(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = X509Certificate::from_der(cert).ok()?;
    let san = parsed.subject_alternative_name().ok()??;
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [one] => Some(one.to_string()),
        _ => None,
    }
}

fn check_spiffe(cert: &CertificateDer<'_>, allowed: &[String]) -> Result<(), rustls::Error> {
    match spiffe_uri(cert) {
        Some(uri) if allowed.contains(&uri) => Ok(()),
        _ => Err(rustls::Error::InvalidCertificate(
            CertificateError::ApplicationVerificationFailure,
        )),
    }
}

/// WebPKI chain verification plus an allow-list of peer SPIFFE IDs (client side of the server).
#[derive(Debug)]
struct SpiffeClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    allowed: Vec<String>,
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        check_spiffe(end_entity, &self.allowed)?;
        Ok(ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// WebPKI chain + DNS verification plus the expected server SPIFFE ID.
#[derive(Debug)]
struct SpiffeServerVerifier {
    inner: Arc<WebPkiServerVerifier>,
    allowed: Vec<String>,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)?;
        check_spiffe(end_entity, &self.allowed)?;
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A workload as it runs: its Secret's tls.crt/tls.key and the trust bundle it loaded, plus
/// the peer identities it accepts.
#[derive(Clone)]
struct Peer {
    name: &'static str,
    chain: Vec<CertificateDer<'static>>,
    key_pem: String,
    bundle: Vec<CertificateDer<'static>>,
    dns_name: String,
    accepts: Vec<String>,
}

impl Peer {
    fn new(name: &'static str, leaf: &IssuedLeaf, bundle_pem: &str, accepts: &[&SpiffeId]) -> Self {
        Peer {
            name,
            chain: certs(&leaf.cert_pem),
            key_pem: leaf.key_pem.clone(),
            bundle: certs(bundle_pem),
            dns_name: format!(
                "{}.{}.svc",
                leaf.spiffe_id.service_account(),
                leaf.spiffe_id.namespace()
            ),
            accepts: accepts.iter().map(|id| id.uri()).collect(),
        }
    }

    fn with_bundle(&self, bundle_pem: &str) -> Self {
        Peer {
            bundle: certs(bundle_pem),
            ..self.clone()
        }
    }

    fn roots(&self) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        for c in &self.bundle {
            roots.add(c.clone()).expect("root parses");
        }
        Arc::new(roots)
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).expect("key parses")
    }

    fn server_config(&self, now: OffsetDateTime) -> rustls::ServerConfig {
        let inner = WebPkiClientVerifier::builder_with_provider(self.roots(), provider())
            .build()
            .expect("client verifier");
        rustls::ServerConfig::builder_with_details(provider(), Arc::new(FixedTime(unix(now))))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_client_cert_verifier(Arc::new(SpiffeClientVerifier {
                inner,
                allowed: self.accepts.clone(),
            }))
            .with_single_cert(self.chain.clone(), self.key())
            .expect("server cert")
    }

    fn client_config(&self, now: OffsetDateTime) -> rustls::ClientConfig {
        let inner = WebPkiServerVerifier::builder_with_provider(self.roots(), provider())
            .build()
            .expect("server verifier");
        rustls::ClientConfig::builder_with_details(provider(), Arc::new(FixedTime(unix(now))))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier {
                inner,
                allowed: self.accepts.clone(),
            }))
            .with_client_auth_cert(self.chain.clone(), self.key())
            .expect("client cert")
    }
}

fn certs(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("PEM parses")
}

/// One real TLS 1.3 connection over loopback, `client` dialing `server`, both judging
/// certificates at `now`. Ok only if both sides completed the handshake, saw the other's
/// certificate and exchanged application data.
async fn handshake(server: &Peer, client: &Peer, now: OffsetDateTime) -> Result<(), String> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let acceptor = TlsAcceptor::from(Arc::new(server.server_config(now)));
    let connector = TlsConnector::from(Arc::new(client.client_config(now)));
    let server_name = ServerName::try_from(server.dns_name.clone()).map_err(|e| e.to_string())?;

    let server_task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let mut tls = acceptor
            .accept(tcp)
            .await
            .map_err(|e| format!("server: {e}"))?;
        let peer_certs = tls.get_ref().1.peer_certificates().map(<[_]>::len);
        if peer_certs.unwrap_or(0) == 0 {
            return Err("server: no client certificate".to_string());
        }
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf)
            .await
            .map_err(|e| format!("server read: {e}"))?;
        tls.write_all(b"pong")
            .await
            .map_err(|e| format!("server write: {e}"))?;
        tls.shutdown().await.ok();
        Ok::<_, String>(())
    });
    let client_result = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let mut tls = connector
            .connect(server_name, tcp)
            .await
            .map_err(|e| format!("client: {e}"))?;
        tls.write_all(b"ping")
            .await
            .map_err(|e| format!("client write: {e}"))?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf)
            .await
            .map_err(|e| format!("client read: {e}"))?;
        if &buf != b"pong" {
            return Err("client: wrong reply".to_string());
        }
        Ok::<_, String>(())
    };
    let client_result = tokio::time::timeout(TIMEOUT, client_result)
        .await
        .map_err(|_| "client timed out".to_string())?;
    let server_result = tokio::time::timeout(TIMEOUT, server_task)
        .await
        .map_err(|_| "server timed out".to_string())?
        .map_err(|e| e.to_string())?;
    match (server_result, client_result) {
        (Ok(()), Ok(())) => Ok(()),
        (s, c) => Err(format!(
            "{} <- {}: server {:?}, client {:?}",
            server.name, client.name, s, c
        )),
    }
}

/// Both directions: a serves b, then b serves a.
async fn mutual(a: &Peer, b: &Peer, now: OffsetDateTime) -> Result<(), String> {
    handshake(a, b, now).await?;
    handshake(b, a, now).await
}

fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::new("cluster.local", ns, sa).unwrap()
}

fn leaf(ca: &CertificateAuthority, who: &SpiffeId, now: OffsetDateTime) -> IssuedLeaf {
    let mut req = LeafRequest::new(who.clone());
    req.dns_names = vec![format!("{}.{}.svc", who.service_account(), who.namespace())];
    issue_leaf(ca, &req, now).unwrap()
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

#[tokio::test]
async fn issued_certificates_complete_a_mutual_tls_handshake() {
    let t = now();
    let ca = CertificateAuthority::generate(t, Duration::days(3650)).unwrap();
    let (api, caller) = (id("shop", "payments"), id("shop", "frontend"));
    let server = Peer::new("payments", &leaf(&ca, &api, t), &ca.roots_pem(), &[&caller]);
    let client = Peer::new("frontend", &leaf(&ca, &caller, t), &ca.roots_pem(), &[&api]);
    // Both directions: frontend also serves payments.
    mutual(&server, &client, t).await.unwrap();
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_refused() {
    let t = now();
    let ca = CertificateAuthority::generate(t, Duration::days(3650)).unwrap();
    let rogue = CertificateAuthority::generate(t, Duration::days(3650)).unwrap();
    let (api, caller) = (id("shop", "payments"), id("shop", "frontend"));
    let server = Peer::new("payments", &leaf(&ca, &api, t), &ca.roots_pem(), &[&caller]);
    // Same identity, trusts the real CA, but its certificate comes from the rogue CA.
    let intruder = Peer::new(
        "rogue-frontend",
        &leaf(&rogue, &caller, t),
        &ca.roots_pem(),
        &[&api],
    );
    let err = handshake(&server, &intruder, t).await.unwrap_err();
    assert!(err.contains("server Err"), "{err}");
    // And a client that trusts only its own CA refuses the real server.
    let wrong_trust = intruder.with_bundle(&rogue.roots_pem());
    assert!(
        handshake(&server, &wrong_trust, t)
            .await
            .unwrap_err()
            .contains("client Err")
    );
}

#[tokio::test]
async fn an_expired_client_certificate_is_refused() {
    let t = now();
    let ca = CertificateAuthority::generate(t - Duration::days(10), Duration::days(3650)).unwrap();
    let (api, caller) = (id("shop", "payments"), id("shop", "frontend"));
    let server = Peer::new("payments", &leaf(&ca, &api, t), &ca.roots_pem(), &[&caller]);
    let old = leaf(&ca, &caller, t - Duration::days(2));
    assert!(old.not_after < t);
    let expired = Peer::new("frontend-expired", &old, &ca.roots_pem(), &[&api]);
    let err = handshake(&server, &expired, t).await.unwrap_err();
    assert!(err.contains("server Err"), "{err}");
    // Control: the same identity freshly issued is accepted.
    let fresh = Peer::new("frontend", &leaf(&ca, &caller, t), &ca.roots_pem(), &[&api]);
    handshake(&server, &fresh, t).await.unwrap();
}

#[tokio::test]
async fn a_san_the_verifier_does_not_expect_is_refused() {
    let t = now();
    let ca = CertificateAuthority::generate(t, Duration::days(3650)).unwrap();
    let (api, caller, other) = (
        id("shop", "payments"),
        id("shop", "frontend"),
        id("shop", "reporting"),
    );
    let server = Peer::new("payments", &leaf(&ca, &api, t), &ca.roots_pem(), &[&caller]);
    // Valid chain from the right CA, but an identity the server does not allow.
    let stranger = Peer::new("reporting", &leaf(&ca, &other, t), &ca.roots_pem(), &[&api]);
    let err = handshake(&server, &stranger, t).await.unwrap_err();
    assert!(err.contains("server Err"), "{err}");
    // The client side checks the server's identity too.
    let picky = Peer::new(
        "frontend",
        &leaf(&ca, &caller, t),
        &ca.roots_pem(),
        &[&other],
    );
    let err = handshake(&server, &picky, t).await.unwrap_err();
    assert!(err.contains("client Err"), "{err}");
}

#[tokio::test]
async fn a_user_supplied_intermediate_from_openssl_issues_working_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("ext.cnf"),
        "[v3_ca]\nbasicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\n\
         [v3_inter]\nbasicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n",
    )
    .unwrap();
    openssl_ok(
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            "root.key",
        ],
        d,
    );
    openssl_ok(
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "root.key",
            "-subj",
            "/O=Example Corp/CN=Corp Root",
            "-days",
            "30",
            "-config",
            "ext.cnf",
            "-extensions",
            "v3_ca",
            "-out",
            "root.crt",
        ],
        d,
    );
    openssl_ok(
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            "inter.key",
        ],
        d,
    );
    openssl_ok(
        &[
            "req",
            "-new",
            "-key",
            "inter.key",
            "-subj",
            "/O=Example Corp/CN=Mesh Intermediate",
            "-out",
            "inter.csr",
        ],
        d,
    );
    openssl_ok(
        &[
            "x509",
            "-req",
            "-in",
            "inter.csr",
            "-CA",
            "root.crt",
            "-CAkey",
            "root.key",
            "-CAcreateserial",
            "-days",
            "20",
            "-extfile",
            "ext.cnf",
            "-extensions",
            "v3_inter",
            "-out",
            "inter.crt",
        ],
        d,
    );
    let read = |n: &str| std::fs::read(d.join(n)).unwrap();

    let t = now();
    let ca = CertificateAuthority::from_pem(
        &read("inter.crt"),
        &read("inter.key"),
        Some(&read("root.crt")),
        PemSource::files(&d.join("inter.crt"), &d.join("inter.key")),
        t,
    )
    .unwrap();
    let (api, caller) = (id("shop", "payments"), id("shop", "frontend"));
    let la = leaf(&ca, &api, t);
    // tls.crt carries the intermediate; ca.crt only the corporate root.
    assert_eq!(certs(&la.cert_pem).len(), 2);
    assert_eq!(la.ca_bundle_pem, ca.roots_pem());
    assert!(la.not_after <= ca.not_after());
    let pa = Peer::new("payments", &la, &la.ca_bundle_pem, &[&caller]);
    let lb = leaf(&ca, &caller, t);
    let pb = Peer::new("frontend", &lb, &lb.ca_bundle_pem, &[&api]);
    mutual(&pa, &pb, t).await.unwrap();
}

/// CA rotation A -> B: at every step, every workload that exists then — holding a leaf from
/// the old or the new root, with the bundle of this step or (propagation lag) the previous one
/// — completes a handshake with every other, in both directions, at that step's time.
#[tokio::test]
async fn ca_rotation_never_rejects_a_valid_peer() {
    let t0 = now();
    let lifetime = Duration::hours(24);
    let propagation = Duration::hours(1);
    let ca_a =
        CertificateAuthority::generate(t0 - Duration::days(1), Duration::days(3650)).unwrap();
    let ca_b = CertificateAuthority::generate(t0, Duration::days(3650)).unwrap();
    let (x, y) = (id("shop", "payments"), id("shop", "frontend"));

    // Step 0: stable on A; both workloads hold A leaves.
    let s0 = RotationState::stable(TrustedRoot::of(&ca_a));
    let b0 = s0.bundle_pem();
    let x_a = leaf(&ca_a, &x, t0);
    let y_a = leaf(&ca_a, &y, t0);
    let xa = Peer::new("x(A)", &x_a, &b0, &[&y]);
    let ya = Peer::new("y(A)", &y_a, &b0, &[&x]);
    mutual(&xa, &ya, t0).await.unwrap();

    // Step 1: B added to the bundle; A still issues.
    let t1 = t0 + Duration::minutes(10);
    let s1 = s0
        .begin_rotation(TrustedRoot::of(&ca_b), t1, propagation, lifetime)
        .unwrap()
        .advance(t1, None);
    assert_eq!(s1.state.name(), "AddingRoot");
    assert_eq!(s1.state.issuing(), &TrustedRoot::of(&ca_a));
    let b1 = s1.bundle_pem.clone();
    // y renews from A during the propagation window; its last A leaf outlives the switch.
    let y_a_last = leaf(&ca_a, &y, s1.next_step_at.unwrap() - Duration::seconds(1));
    for (p, q) in [
        (xa.with_bundle(&b1), ya.clone()), // x has the new bundle, y lags
        (xa.with_bundle(&b1), ya.with_bundle(&b1)),
    ] {
        mutual(&p, &q, t1).await.unwrap();
    }
    let t1_end = s1.next_step_at.unwrap() - Duration::seconds(1);
    assert_eq!(s1.state.advance(t1_end, None).state.name(), "AddingRoot");
    mutual(&xa, &Peer::new("y(A')", &y_a_last, &b1, &[&x]), t1_end)
        .await
        .unwrap();

    // Step 2: B issues; A's leaves are reissued from B but still held by lagging workloads.
    let t2 = s1.next_step_at.unwrap();
    let old_leaves = [x_a.cert_pem.as_bytes(), y_a_last.cert_pem.as_bytes()];
    let observed = apiguard::identity::bundle::latest_not_after_signed_by(&ca_a, old_leaves);
    assert_eq!(observed, Some(y_a_last.not_after));
    let s2 = s1.state.advance(t2, observed);
    assert_eq!(s2.state.name(), "Draining");
    assert_eq!(s2.state.issuing(), &TrustedRoot::of(&ca_b));
    let b2 = s2.bundle_pem.clone();
    assert_eq!(b2.matches("BEGIN CERTIFICATE").count(), 2);
    let x_b = leaf(&ca_b, &x, t2);
    let xb = Peer::new("x(B)", &x_b, &b2, &[&y]);
    let ya_lagging = Peer::new("y(A')", &y_a_last, &b1, &[&x]);
    mutual(&xb, &ya_lagging, t2).await.unwrap();
    mutual(&xb, &ya_lagging.with_bundle(&b2), t2).await.unwrap();
    // Negative control: had B started issuing before its root reached y (skipping step 1),
    // y would have refused x. This is the window the AddingRoot step closes.
    assert!(mutual(&xb, &ya.with_bundle(&b0), t2).await.is_err());

    // One second before the last A leaf expires the rotation is still draining, and that
    // leaf is still trusted next to B leaves.
    let t_edge = y_a_last.not_after - Duration::seconds(1);
    assert!(t_edge < s2.next_step_at.unwrap());
    let s_edge = s2.state.advance(t_edge, None);
    assert_eq!(s_edge.state.name(), "Draining");
    let x_b_renewed = leaf(&ca_b, &x, t_edge - Duration::hours(1));
    let xb2 = Peer::new("x(B')", &x_b_renewed, &s_edge.bundle_pem, &[&y]);
    mutual(
        &xb2,
        &Peer::new("y(A')", &y_a_last, &s_edge.bundle_pem, &[&x]),
        t_edge,
    )
    .await
    .unwrap();

    // Step 3: old root dropped; every A leaf has expired by now, B leaves work with both the
    // final and the lagging bundle.
    let t3 = s2.next_step_at.unwrap();
    let s3 = s2.state.advance(t3, None);
    assert_eq!(s3.state, RotationState::stable(TrustedRoot::of(&ca_b)));
    assert_eq!(s3.bundle_pem, ca_b.roots_pem());
    assert!(x_a.not_after <= t3 && y_a_last.not_after <= t3);
    let y_b = leaf(&ca_b, &y, t3 - Duration::hours(2));
    let yb = Peer::new("y(B)", &y_b, &s3.bundle_pem, &[&x]);
    mutual(&xb2.with_bundle(&s3.bundle_pem), &yb, t3)
        .await
        .unwrap();
    mutual(&xb2, &yb, t3).await.unwrap();
    mutual(&xb2.with_bundle(&s3.bundle_pem), &yb.with_bundle(&b2), t3)
        .await
        .unwrap();
}
