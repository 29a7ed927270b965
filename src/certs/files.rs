//! The webhook's serving certificate from PEM files (`--tls-cert`/`--tls-key`), hot-reloaded
//! by polling into a [`SwappableCert`].
//!
//! Kubernetes updates a mounted Secret by swapping a `..data` symlink, which file-path
//! inotify watches miss, so the files are re-read on an interval and compared by content
//! hash.

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::resolver::{SwappableCert, TlsError};

/// A serving certificate read from files and replaced when the files change.
pub struct ReloadingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    cert: Arc<SwappableCert>,
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

impl ReloadingCert {
    /// Load the certificate chain and key; fails (naming the file) when either is unusable.
    pub fn load(
        cert_path: impl Into<PathBuf>,
        key_path: impl Into<PathBuf>,
    ) -> Result<Self, TlsError> {
        let this = Self {
            cert_path: cert_path.into(),
            key_path: key_path.into(),
            cert: Arc::new(SwappableCert::new()),
        };
        this.reload_if_changed()?;
        Ok(this)
    }

    /// The resolver the files feed (what the TLS server is given).
    pub(crate) fn resolver(&self) -> Arc<SwappableCert> {
        self.cert.clone()
    }

    /// The certificate new handshakes get.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.cert
            .current()
            .expect("a ReloadingCert holds a certificate from the moment it is loaded")
    }

    /// Re-read the files; swap in the new certificate when their content changed.
    ///
    /// Returns `Ok(true)` when a new certificate was installed. On an error (for example a
    /// rotation caught halfway, with the new certificate but the old key) the certificate in
    /// force stays, and the next call tries again.
    pub(crate) fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let cert = read(&self.cert_path)?;
        let key = read(&self.key_path)?;
        self.cert
            .install(&cert, &key, &self.cert_path, &self.key_path)
    }

    /// Poll the files every `interval` until `shutdown` completes, logging reloads and errors.
    pub async fn watch(self: Arc<Self>, interval: Duration, shutdown: impl Future<Output = ()>) {
        let this = self.clone();
        crate::poll::every(
            interval,
            shutdown,
            move || this.reload_if_changed(),
            |result| match result {
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
            },
        )
        .await
    }
}

/// Serves what `resolver` serves.
impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.cert.resolve(client_hello)
    }
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
