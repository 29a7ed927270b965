//! The webhook's serving certificate: loaded from PEM files and hot-reloaded by polling.
//!
//! Kubernetes updates a mounted Secret by swapping a `..data` symlink, which file-path
//! inotify watches miss, so the files are re-read on an interval and compared by content
//! hash. The current certificate lives in an [`ArcSwap`]: a handshake takes the certificate
//! in force at that moment, connections already established keep theirs, and nothing blocks.

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

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

/// A serving certificate read from files and replaced when the files change.
pub struct ReloadingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: ArcSwap<CertifiedKey>,
    /// SHA-256 over both files' contents as last loaded successfully.
    fingerprint: Mutex<[u8; 32]>,
}

impl fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingCert")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn fingerprint(cert: &[u8], key: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update((cert.len() as u64).to_be_bytes());
    h.update(cert);
    h.update(key);
    h.finalize().into()
}

impl ReloadingCert {
    /// Load the certificate chain and key; fails (naming the file) when either is unusable.
    pub fn load(
        cert_path: impl Into<PathBuf>,
        key_path: impl Into<PathBuf>,
    ) -> Result<Self, TlsError> {
        let cert_path = cert_path.into();
        let key_path = key_path.into();
        let cert = read(&cert_path)?;
        let key = read(&key_path)?;
        let certified = certified_key(&cert, &key, &cert_path, &key_path)?;
        Ok(Self {
            current: ArcSwap::from_pointee(certified),
            fingerprint: Mutex::new(fingerprint(&cert, &key)),
            cert_path,
            key_path,
        })
    }

    /// The certificate new handshakes get.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }

    /// Re-read the files; swap in the new certificate when their content changed.
    ///
    /// Returns `Ok(true)` when a new certificate was installed. On an error (for example a
    /// rotation caught halfway, with the new certificate but the old key) the certificate in
    /// force stays, and the next call tries again.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let cert = read(&self.cert_path)?;
        let key = read(&self.key_path)?;
        let new_fingerprint = fingerprint(&cert, &key);
        let mut last = self
            .fingerprint
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if *last == new_fingerprint {
            return Ok(false);
        }
        let certified = certified_key(&cert, &key, &self.cert_path, &self.key_path)?;
        self.current.store(Arc::new(certified));
        *last = new_fingerprint;
        Ok(true)
    }

    /// Poll the files every `interval` until `shutdown` completes, logging reloads and errors.
    pub async fn watch(self: Arc<Self>, interval: Duration, shutdown: impl Future<Output = ()>) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = ticker.tick() => {}
            }
            let this = self.clone();
            // File reads are blocking; keep them off the request-serving workers.
            match tokio::task::spawn_blocking(move || this.reload_if_changed()).await {
                Ok(Ok(true)) => tracing::info!(
                    cert = %self.cert_path.display(),
                    "webhook serving certificate reloaded"
                ),
                Ok(Ok(false)) => {}
                Ok(Err(e)) => tracing::warn!(
                    error = %e,
                    "webhook serving certificate not reloaded; keeping the current one"
                ),
                Err(e) => tracing::error!(error = %e, "certificate reload task failed"),
            }
        }
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The webhook's TLS configuration: TLS 1.3 and 1.2 only (ring), HTTP/2 and HTTP/1.1 by
/// ALPN, the certificate from `resolver`.
pub fn server_config(resolver: Arc<dyn ResolvesServerCert>) -> Result<ServerConfig, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn reload_swaps_only_on_change_and_keeps_the_old_pair_on_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let (cert1, key1) = self_signed("one.test");
        std::fs::write(&cert_path, &cert1).unwrap();
        std::fs::write(&key_path, &key1).unwrap();
        let reloading = ReloadingCert::load(&cert_path, &key_path).unwrap();
        let first = reloading.current();
        assert!(!reloading.reload_if_changed().unwrap());
        assert!(Arc::ptr_eq(&first, &reloading.current()));

        // Halfway through a rotation: new certificate, old key.
        let (cert2, key2) = self_signed("two.test");
        std::fs::write(&cert_path, &cert2).unwrap();
        let err = reloading.reload_if_changed().unwrap_err();
        assert!(matches!(err, TlsError::Pair { .. }), "{err}");
        assert!(Arc::ptr_eq(&first, &reloading.current()));

        std::fs::write(&key_path, &key2).unwrap();
        assert!(reloading.reload_if_changed().unwrap());
        assert_ne!(first.cert[0], reloading.current().cert[0]);
    }

    #[test]
    fn load_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let err = ReloadingCert::load(&cert_path, &key_path).unwrap_err();
        assert!(err.to_string().contains("tls.crt"), "{err}");
        std::fs::write(&cert_path, "not pem").unwrap();
        std::fs::write(&key_path, "not pem").unwrap();
        let err = ReloadingCert::load(&cert_path, &key_path).unwrap_err();
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err}");
        let (cert, _) = self_signed("x.test");
        std::fs::write(&cert_path, cert).unwrap();
        let err = ReloadingCert::load(&cert_path, &key_path).unwrap_err();
        assert!(
            matches!(err, TlsError::BadKey { .. }) && err.to_string().contains("tls.key"),
            "{err}"
        );
    }
}
