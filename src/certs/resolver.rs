//! The one rustls certificate resolver of the webhook: [`SwappableCert`], fed either by the
//! file reloader (`--tls-cert`/`--tls-key`, `files::ReloadingCert`) or by the
//! operator-managed serving Secret (`serving::run`).
//!
//! The current certificate lives in an [`ArcSwapOption`]: a handshake takes the certificate
//! in force at that moment, connections already established keep theirs, and nothing blocks.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwapOption;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};

/// Why the serving certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no PEM certificate (-----BEGIN CERTIFICATE-----) found")]
    NoCertificate { path: PathBuf },
    #[error("{path}: invalid PEM certificate: {message}")]
    BadCertificate { path: PathBuf, message: String },
    #[error("{path}: no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {message}")]
    BadKey { path: PathBuf, message: String },
    #[error("certificate {cert} and key {key} do not form a usable pair: {source}")]
    Pair {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The crypto provider of every TLS endpoint apiguard serves: ring.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Parse a PEM certificate chain and private key into a [`CertifiedKey`], checking that the
/// key belongs to the first certificate. `cert_path`/`key_path` only name the inputs in errors.
pub fn certified_key(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert_path: &Path,
    key_path: &Path,
) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadCertificate {
            path: cert_path.to_owned(),
            message: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert_path.to_owned(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::BadKey {
        path: key_path.to_owned(),
        message: e.to_string(),
    })?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|source| TlsError::Pair {
        cert: cert_path.to_owned(),
        key: key_path.to_owned(),
        source,
    })
}

/// SHA-256 over a certificate and key PEM (the certificate's length first, so the boundary
/// between the two counts).
fn fingerprint(cert: &[u8], key: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update((cert.len() as u64).to_be_bytes());
    h.update(cert);
    h.update(key);
    h.finalize().into()
}

/// The certificate the webhook serves, swapped in place when its source changes. Until the
/// first one is installed, handshakes fail (and `/readyz` says so).
#[derive(Default)]
pub struct SwappableCert {
    current: ArcSwapOption<CertifiedKey>,
    /// Fingerprint of the PEM installed last.
    fingerprint: Mutex<Option<[u8; 32]>>,
}

impl fmt::Debug for SwappableCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SwappableCert")
            .field("loaded", &self.current.load().is_some())
            .finish_non_exhaustive()
    }
}

impl SwappableCert {
    pub fn new() -> Self {
        Self::default()
    }

    /// The certificate new handshakes get, if one is installed.
    pub fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.current.load_full()
    }

    /// Installs `cert_pem`/`key_pem` unless they are what is served already; on an error the
    /// certificate in force stays. `cert_from`/`key_from` name the inputs in errors. Returns
    /// whether a new certificate was installed.
    pub fn install(
        &self,
        cert_pem: &[u8],
        key_pem: &[u8],
        cert_from: &Path,
        key_from: &Path,
    ) -> Result<bool, TlsError> {
        let new_fingerprint = fingerprint(cert_pem, key_pem);
        let mut last = self
            .fingerprint
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if *last == Some(new_fingerprint) {
            return Ok(false);
        }
        let certified = certified_key(cert_pem, key_pem, cert_from, key_from)?;
        self.current.store(Some(Arc::new(certified)));
        *last = Some(new_fingerprint);
        Ok(true)
    }

    /// [`Self::install`] from a Secret's `tls.crt`/`tls.key`; `source` (`Secret ns/name`)
    /// names it in errors.
    pub(crate) fn install_from_secret(
        &self,
        cert_pem: &[u8],
        key_pem: &[u8],
        source: &str,
    ) -> Result<bool, TlsError> {
        self.install(
            cert_pem,
            key_pem,
            Path::new(&format!("{source} key tls.crt")),
            Path::new(&format!("{source} key tls.key")),
        )
    }
}

impl ResolvesServerCert for SwappableCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.load_full()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::test_support::{ca, issued};

    #[test]
    fn the_swappable_cert_swaps_only_on_change_and_keeps_serving_on_a_bad_pair() {
        let ca = ca();
        let cert = SwappableCert::new();
        assert!(cert.current().is_none());
        let one = issued(&ca);
        assert!(
            cert.install_from_secret(
                one.cert_pem.as_bytes(),
                one.key_pem.as_bytes(),
                "Secret a/b"
            )
            .unwrap()
        );
        let first = cert.current().unwrap();
        assert!(
            !cert
                .install_from_secret(
                    one.cert_pem.as_bytes(),
                    one.key_pem.as_bytes(),
                    "Secret a/b"
                )
                .unwrap()
        );
        let two = issued(&ca);
        let err = cert
            .install_from_secret(
                two.cert_pem.as_bytes(),
                one.key_pem.as_bytes(),
                "Secret a/b",
            )
            .unwrap_err();
        assert!(err.to_string().contains("Secret a/b key tls.crt"), "{err}");
        assert!(Arc::ptr_eq(&first, &cert.current().unwrap()));
        assert!(
            cert.install_from_secret(
                two.cert_pem.as_bytes(),
                two.key_pem.as_bytes(),
                "Secret a/b"
            )
            .unwrap()
        );
        assert_ne!(first.cert[0], cert.current().unwrap().cert[0]);
    }
}
