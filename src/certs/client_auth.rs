//! Optional client certificates on the webhook's HTTPS endpoint: [`SwappableClientRoots`].
//!
//! The apiserver calls `POST /validate` without a client certificate; gateway sensors push
//! their discovery inventory (`crate::intake`) with their workload certificate. So the server
//! asks for a certificate, accepts a connection without one, and verifies one that is
//! presented against the operator CA's roots — which change on a CA rotation, so they are
//! swapped in place like the serving certificate ([`super::SwappableCert`]). Until roots are
//! installed (a serving certificate from files: the operator CA is not known), a presented
//! certificate is refused and a connection without one is served as before.
//!
//! What the certificate *says* (its SPIFFE ID) is read per connection by the server and
//! checked by the handler that needs it; this only proves the chain.

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

use super::provider;

/// A client-certificate verifier whose trusted roots can be replaced while serving.
#[derive(Debug, Default)]
pub struct SwappableClientRoots {
    current: ArcSwapOption<Installed>,
}

#[derive(Debug)]
struct Installed {
    /// The PEM the verifier was built from (a reinstall of the same roots is a no-op).
    pem: String,
    verifier: Arc<dyn ClientCertVerifier>,
}

impl SwappableClientRoots {
    /// No roots yet: presented certificates are refused.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts the certificates of `roots_pem` from now on (handshakes in progress keep the
    /// previous ones). `Ok(true)` when they changed; an error names what is wrong with the PEM.
    pub fn install(&self, roots_pem: &str) -> Result<bool, String> {
        if self
            .current
            .load()
            .as_ref()
            .is_some_and(|i| i.pem == roots_pem)
        {
            return Ok(false);
        }
        let mut store = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(roots_pem.as_bytes()) {
            let cert = cert.map_err(|e| format!("invalid PEM certificate: {e}"))?;
            store
                .add(cert)
                .map_err(|e| format!("not a usable root certificate: {e}"))?;
        }
        if store.is_empty() {
            return Err("no PEM certificate (-----BEGIN CERTIFICATE-----) found".into());
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider())
            .allow_unauthenticated()
            .build()
            .map_err(|e| format!("cannot verify client certificates with these roots: {e}"))?;
        self.current.store(Some(Arc::new(Installed {
            pem: roots_pem.to_owned(),
            verifier,
        })));
        Ok(true)
    }

    /// Whether roots are installed.
    pub fn is_installed(&self) -> bool {
        self.current.load().is_some()
    }
}

impl ClientCertVerifier for SwappableClientRoots {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    /// No hints: a client sends the one certificate it has (the roots are swappable, and a
    /// hint list borrowed from them could not outlive a swap).
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match self.current.load().as_ref() {
            Some(installed) => {
                installed
                    .verifier
                    .verify_client_cert(end_entity, intermediates, now)
            }
            None => Err(rustls::Error::General(
                "client certificates are not accepted: no trust roots are loaded".into(),
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The SPIFFE ID (the `spiffe://` URI SAN) of a DER certificate, if it has exactly one.
pub fn spiffe_id_of(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    let mut uris = san.value.general_names.iter().filter_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(u) if u.starts_with("spiffe://") => Some(*u),
        _ => None,
    });
    let first = uris.next()?;
    uris.next().is_none().then(|| first.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{CertificateAuthority, LeafRequest, SpiffeId, issue_leaf};
    use time::OffsetDateTime;

    fn ca() -> CertificateAuthority {
        CertificateAuthority::generate(OffsetDateTime::now_utc(), time::Duration::days(1)).unwrap()
    }

    fn leaf(ca: &CertificateAuthority, sa: &str) -> CertificateDer<'static> {
        let id = SpiffeId::new("cluster.local", "shop", sa).unwrap();
        let issued = issue_leaf(ca, &LeafRequest::new(id), OffsetDateTime::now_utc()).unwrap();
        CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes())
            .next()
            .unwrap()
            .unwrap()
    }

    #[test]
    fn without_roots_a_presented_certificate_is_refused_and_none_is_fine() {
        let roots = SwappableClientRoots::new();
        assert!(roots.offer_client_auth());
        assert!(!roots.client_auth_mandatory());
        let ca = ca();
        let e = roots
            .verify_client_cert(&leaf(&ca, "gw"), &[], UnixTime::now())
            .unwrap_err();
        assert!(e.to_string().contains("no trust roots"), "{e}");
    }

    #[test]
    fn verifies_against_the_installed_roots_and_follows_a_swap() {
        let roots = SwappableClientRoots::new();
        let (old, new) = (ca(), ca());
        assert_eq!(roots.install(&old.roots_pem()), Ok(true));
        assert_eq!(roots.install(&old.roots_pem()), Ok(false));
        assert!(
            roots
                .verify_client_cert(&leaf(&old, "gw"), &[], UnixTime::now())
                .is_ok()
        );
        assert!(
            roots
                .verify_client_cert(&leaf(&new, "gw"), &[], UnixTime::now())
                .is_err()
        );
        assert_eq!(roots.install(&new.roots_pem()), Ok(true));
        assert!(
            roots
                .verify_client_cert(&leaf(&new, "gw"), &[], UnixTime::now())
                .is_ok()
        );
        assert!(
            roots
                .verify_client_cert(&leaf(&old, "gw"), &[], UnixTime::now())
                .is_err()
        );
    }

    #[test]
    fn bad_roots_are_errors_and_keep_the_previous_ones() {
        let roots = SwappableClientRoots::new();
        let ca = ca();
        roots.install(&ca.roots_pem()).unwrap();
        assert!(roots.install("not pem").unwrap_err().contains("no PEM"));
        assert!(roots.is_installed());
        assert!(
            roots
                .verify_client_cert(&leaf(&ca, "gw"), &[], UnixTime::now())
                .is_ok()
        );
    }

    #[test]
    fn reads_the_spiffe_id_of_a_leaf() {
        let ca = ca();
        assert_eq!(
            spiffe_id_of(&leaf(&ca, "orders-apiguard")).as_deref(),
            Some("spiffe://cluster.local/ns/shop/sa/orders-apiguard")
        );
        assert_eq!(spiffe_id_of(b"garbage"), None);
    }
}
