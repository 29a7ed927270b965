//! The issuing certificate authority: a generated self-signed root, or a CA/intermediate the
//! user supplies.

use std::fmt;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::pem;

/// Why a CA could not be generated or loaded. Messages name the file/key that failed.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The certificate PEM is missing, empty or not X.509.
    #[error("{source_name}: {message}")]
    InvalidCertificate {
        source_name: String,
        message: String,
    },
    /// The private key PEM cannot be used.
    #[error(
        "{source_name}: not a usable private key ({message}); apiguard needs an unencrypted PKCS#8 key (`-----BEGIN PRIVATE KEY-----`), convert with `openssl pkcs8 -topk8 -nocrypt -in KEY`"
    )]
    InvalidKey {
        source_name: String,
        message: String,
    },
    /// The key does not belong to the certificate.
    #[error("{key_name} does not match the public key of the certificate in {cert_name}")]
    KeyMismatch { cert_name: String, key_name: String },
    /// The certificate cannot sign certificates.
    #[error("{source_name}: certificate '{subject}' is not a CA ({message})")]
    NotACa {
        source_name: String,
        subject: String,
        message: String,
    },
    /// The CA is outside its validity period.
    #[error(
        "{source_name}: CA certificate '{subject}' is not valid at {now} (valid {not_before} .. {not_after})"
    )]
    NotValid {
        source_name: String,
        subject: String,
        now: OffsetDateTime,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    },
    /// An intermediate was supplied without the root it chains to.
    #[error(
        "{source_name}: certificate '{subject}' is an intermediate CA but no self-signed root was supplied; add the root to ca.crt (or the chain)"
    )]
    MissingRoot {
        source_name: String,
        subject: String,
    },
    /// Key generation or signing failed.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
}

/// Where the PEM inputs of [`CertificateAuthority::from_pem`] came from, so error messages
/// name the Secret key or file that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PemSource {
    cert: String,
    key: String,
    ca: String,
}

impl PemSource {
    /// A Secret: `Secret <ns>/<name> key tls.crt|tls.key|ca.crt`.
    pub fn secret(namespace: &str, name: &str) -> Self {
        let at = |k: &str| format!("Secret {namespace}/{name} key {k}");
        Self {
            cert: at(super::TLS_CRT),
            key: at(super::TLS_KEY),
            ca: at(super::CA_CRT),
        }
    }

    /// A Secret with other keys than `tls.crt`/`tls.key`/`ca.crt` (e.g. the next CA of a
    /// rotation in `next.crt`/`next.key`).
    pub fn secret_keys(namespace: &str, name: &str, cert: &str, key: &str, ca: &str) -> Self {
        let at = |k: &str| format!("Secret {namespace}/{name} key {k}");
        Self {
            cert: at(cert),
            key: at(key),
            ca: at(ca),
        }
    }

    /// Files: the certificate (and chain) file and the key file.
    pub fn files(cert: &std::path::Path, key: &std::path::Path) -> Self {
        Self {
            cert: cert.display().to_string(),
            key: key.display().to_string(),
            ca: cert.display().to_string(),
        }
    }

    /// Anything else, e.g. `generated root`: `<label> tls.crt` etc.
    pub fn described(label: &str) -> Self {
        let at = |k: &str| format!("{label} {k}");
        Self {
            cert: at(super::TLS_CRT),
            key: at(super::TLS_KEY),
            ca: at(super::CA_CRT),
        }
    }

    fn name(&self, key: &str) -> String {
        match key {
            super::TLS_KEY => self.key.clone(),
            super::CA_CRT => self.ca.clone(),
            _ => self.cert.clone(),
        }
    }
}

/// A CA able to issue leaf certificates.
///
/// `Debug` never prints the private key; [`CertificateAuthority::key_pem`] is the only way to
/// get it out (for writing the CA Secret or `ca.key`).
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    /// Intermediates between the issuer and a root (not the issuer itself, not the root).
    chain: Vec<CertificateDer<'static>>,
    /// Self-signed roots that anchor the issuer.
    roots: Vec<CertificateDer<'static>>,
    subject: String,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("subject", &self.subject)
            .field("fingerprint_sha256", &self.fingerprint())
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("intermediates", &self.chain.len())
            .field("roots", &self.roots.len())
            .field("private_key", &"[redacted]")
            .finish()
    }
}

impl CertificateAuthority {
    /// Generates a self-signed ECDSA P-256 root valid from `now` for `lifetime`
    /// (default [`super::DEFAULT_CA_LIFETIME`]), named `apiguard root CA <id>` where `<id>` is
    /// the start of its key identifier, so successive roots are told apart.
    pub fn generate(now: OffsetDateTime, lifetime: Duration) -> Result<Self, CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        Self::generate_with_key(key, now, lifetime)
    }

    /// [`CertificateAuthority::generate`] with a caller-supplied key.
    pub(crate) fn generate_with_key(
        key: KeyPair,
        now: OffsetDateTime,
        lifetime: Duration,
    ) -> Result<Self, CaError> {
        let mut params = CertificateParams::default();
        let key_id = params.key_identifier(&key);
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "apiguard");
        dn.push(
            DnType::CommonName,
            format!("apiguard root CA {}", hex::encode(&key_id[..4])),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = now - super::CLOCK_SKEW_ALLOWANCE;
        params.not_after = now + lifetime;
        params.serial_number = Some(serial_from(&key_id, now));
        let cert = params.self_signed(&key)?;
        let der = cert.der().clone();
        Self::from_parts(
            der.clone(),
            key,
            Vec::new(),
            vec![der],
            PemSource::described("generated root"),
            now,
        )
    }

    /// Loads a CA from PEM: `cert_pem` is the issuing certificate, optionally followed by its
    /// chain (`tls.crt`); `key_pem` its PKCS#8 key (`tls.key`); `ca_pem` optional extra
    /// chain/roots (`ca.crt`). The issuer must be a CA, match the key and be valid at `now`; an
    /// intermediate needs its self-signed root in `cert_pem` or `ca_pem`.
    pub fn from_pem(
        cert_pem: &[u8],
        key_pem: &[u8],
        ca_pem: Option<&[u8]>,
        source: PemSource,
        now: OffsetDateTime,
    ) -> Result<Self, CaError> {
        let cert_name = source.name(super::TLS_CRT);
        let key_name = source.name(super::TLS_KEY);
        let mut certs =
            pem::certificates(cert_pem).map_err(|message| CaError::InvalidCertificate {
                source_name: cert_name.clone(),
                message,
            })?;
        if certs.is_empty() {
            return Err(CaError::InvalidCertificate {
                source_name: cert_name,
                message: "no CERTIFICATE block found".into(),
            });
        }
        let mut extra = match ca_pem {
            Some(pem_bytes) => {
                pem::certificates(pem_bytes).map_err(|message| CaError::InvalidCertificate {
                    source_name: source.name(super::CA_CRT),
                    message,
                })?
            }
            None => Vec::new(),
        };
        let issuer_der = certs.remove(0);
        certs.append(&mut extra);
        let key_text = std::str::from_utf8(key_pem).map_err(|_| CaError::InvalidKey {
            source_name: key_name.clone(),
            message: "not UTF-8 PEM text".into(),
        })?;
        let key = KeyPair::from_pem(key_text).map_err(|e| CaError::InvalidKey {
            source_name: key_name.clone(),
            message: e.to_string(),
        })?;
        // Split the extra certificates into roots (self-signed) and intermediates, dropping
        // duplicates of the issuer.
        let mut roots = Vec::new();
        let mut chain = Vec::new();
        for der in certs {
            if der == issuer_der {
                continue;
            }
            let parsed = parse(&der, &cert_name)?;
            if is_self_signed(&parsed) {
                if !roots.contains(&der) {
                    roots.push(der);
                }
            } else if !chain.contains(&der) {
                chain.push(der);
            }
        }
        let parsed_issuer = parse(&issuer_der, &cert_name)?;
        if is_self_signed(&parsed_issuer) {
            roots.insert(0, issuer_der.clone());
        } else if roots.is_empty() {
            return Err(CaError::MissingRoot {
                source_name: cert_name,
                subject: parsed_issuer.subject().to_string(),
            });
        }
        Self::from_parts(issuer_der, key, chain, roots, source, now)
    }

    fn from_parts(
        cert_der: CertificateDer<'static>,
        key: KeyPair,
        chain: Vec<CertificateDer<'static>>,
        roots: Vec<CertificateDer<'static>>,
        source: PemSource,
        now: OffsetDateTime,
    ) -> Result<Self, CaError> {
        let cert_name = source.name(super::TLS_CRT);
        let parsed = parse(&cert_der, &cert_name)?;
        let subject = parsed.subject().to_string();
        if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(CaError::KeyMismatch {
                cert_name,
                key_name: source.name(super::TLS_KEY),
            });
        }
        match parsed.basic_constraints() {
            Ok(Some(bc)) if bc.value.ca => {}
            Ok(_) => {
                return Err(CaError::NotACa {
                    source_name: cert_name,
                    subject,
                    message: "basicConstraints CA:TRUE is missing".into(),
                });
            }
            Err(e) => {
                return Err(CaError::InvalidCertificate {
                    source_name: cert_name,
                    message: format!("basicConstraints: {e}"),
                });
            }
        }
        if let Ok(Some(ku)) = parsed.key_usage()
            && !ku.value.key_cert_sign()
        {
            return Err(CaError::NotACa {
                source_name: cert_name,
                subject,
                message: "keyUsage lacks keyCertSign".into(),
            });
        }
        let (not_before, not_after) = validity(&parsed);
        if now < not_before || now >= not_after {
            return Err(CaError::NotValid {
                source_name: cert_name,
                subject,
                now,
                not_before,
                not_after,
            });
        }
        let issuer =
            Issuer::from_ca_cert_der(&cert_der, key).map_err(|e| CaError::InvalidCertificate {
                source_name: cert_name,
                message: e.to_string(),
            })?;
        Ok(Self {
            issuer,
            cert_der,
            chain,
            roots,
            subject,
            not_before,
            not_after,
        })
    }

    /// The rcgen issuer used to sign leaves.
    pub(crate) fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }

    /// DER of the issuing certificate.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// PEM of the issuing certificate.
    pub fn cert_pem(&self) -> String {
        pem::encode_certificate(&self.cert_der)
    }

    /// PEM of the issuing certificate followed by its intermediates (what goes in `tls.crt`).
    pub(crate) fn cert_chain_pem(&self) -> String {
        let mut out = self.cert_pem();
        out.push_str(&self.chain_pem());
        out
    }

    /// PEM of the intermediates above the issuer (empty when the issuer is a root or signed
    /// directly by one).
    pub(crate) fn chain_pem(&self) -> String {
        self.chain
            .iter()
            .map(|der| pem::encode_certificate(der))
            .collect()
    }

    /// What a leaf carries after its own certificate: the issuer when it is an intermediate,
    /// then the intermediates above it. Empty for a root issuer.
    pub(crate) fn leaf_chain_pem(&self) -> String {
        if self.roots.contains(&self.cert_der) {
            return String::new();
        }
        let mut out = self.cert_pem();
        out.push_str(&self.chain_pem());
        out
    }

    /// PEM of the self-signed roots that anchor this CA (what goes in `ca.crt`).
    pub fn roots_pem(&self) -> String {
        self.roots
            .iter()
            .map(|der| pem::encode_certificate(der))
            .collect()
    }

    /// DER of the roots that anchor this CA.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The private key as PKCS#8 PEM. Only for writing the CA Secret or `ca.key`; never log it.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Subject of the issuing certificate, e.g. `O=apiguard, CN=apiguard root CA 1a2b3c4d`.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// Start of the issuer's validity.
    pub(crate) fn not_before(&self) -> OffsetDateTime {
        self.not_before
    }

    /// End of the issuer's validity; no leaf outlives it.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// Lowercase hex SHA-256 of the issuing certificate's DER.
    pub fn fingerprint(&self) -> String {
        hex::encode(Sha256::digest(self.cert_der.as_ref()))
    }

    /// Whether this CA's issuing certificate signed `leaf` (a real signature check, not a
    /// name comparison).
    pub fn signed(&self, leaf: &X509Certificate<'_>) -> bool {
        match X509Certificate::from_der(&self.cert_der) {
            Ok((_, me)) => {
                leaf.issuer() == me.subject()
                    && leaf.verify_signature(Some(me.public_key())).is_ok()
            }
            Err(_) => false,
        }
    }
}

/// A 16-byte positive serial derived from the key id and time; unique per key.
fn serial_from(key_id: &[u8], now: OffsetDateTime) -> rcgen::SerialNumber {
    let mut h = Sha256::new();
    h.update(key_id);
    h.update(now.unix_timestamp_nanos().to_be_bytes());
    let mut bytes = h.finalize()[..16].to_vec();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    rcgen::SerialNumber::from_slice(&bytes)
}

pub(crate) fn parse<'a>(
    der: &'a CertificateDer<'_>,
    source_name: &str,
) -> Result<X509Certificate<'a>, CaError> {
    X509Certificate::from_der(der.as_ref())
        .map(|(_, c)| c)
        .map_err(|e| CaError::InvalidCertificate {
            source_name: source_name.to_string(),
            message: format!("not an X.509 certificate: {e}"),
        })
}

pub(crate) fn is_self_signed(cert: &X509Certificate<'_>) -> bool {
    cert.subject() == cert.issuer() && cert.verify_signature(None).is_ok()
}

/// `(notBefore, notAfter)` of a parsed certificate.
pub(crate) fn validity(cert: &X509Certificate<'_>) -> (OffsetDateTime, OffsetDateTime) {
    let v = cert.validity();
    let conv = |t: i64| {
        OffsetDateTime::from_unix_timestamp(t).unwrap_or(if t < 0 {
            OffsetDateTime::UNIX_EPOCH
        } else {
            time::macros::datetime!(9999-12-31 23:59:59 UTC)
        })
    };
    (
        conv(v.not_before.timestamp()),
        conv(v.not_after.timestamp()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject_key_id(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
        cert.iter_extensions()
            .find_map(|ext| match ext.parsed_extension() {
                x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(id) => {
                    Some(id.0.to_vec())
                }
                _ => None,
            })
    }
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-01-01 00:00 UTC);

    #[test]
    fn generated_root_is_a_ca_named_after_its_key() {
        let ca = CertificateAuthority::generate(NOW, Duration::days(3650)).unwrap();
        assert!(
            ca.subject().contains("apiguard root CA "),
            "{}",
            ca.subject()
        );
        assert_eq!(ca.not_after(), NOW + Duration::days(3650));
        assert_eq!(ca.roots().len(), 1);
        let parsed = parse(ca.cert_der(), "t").unwrap();
        assert!(parsed.basic_constraints().unwrap().unwrap().value.ca);
        let ku = parsed.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign());
        assert!(is_self_signed(&parsed));
        assert!(subject_key_id(&parsed).is_some_and(|id| !id.is_empty()));
    }

    #[test]
    fn debug_redacts_the_private_key() {
        let ca = CertificateAuthority::generate(NOW, Duration::days(1)).unwrap();
        let key_pem = ca.key_pem();
        let body: String = key_pem.lines().nth(1).unwrap().chars().take(20).collect();
        let dbg = format!("{ca:?}");
        assert!(dbg.contains("[redacted]"));
        assert!(!dbg.contains(&body), "{dbg}");
        assert!(!dbg.contains("PRIVATE KEY"));
    }

    #[test]
    fn round_trips_through_pem() {
        let ca = CertificateAuthority::generate(NOW, Duration::days(1)).unwrap();
        let loaded = CertificateAuthority::from_pem(
            ca.cert_pem().as_bytes(),
            ca.key_pem().as_bytes(),
            None,
            PemSource::described("test"),
            NOW,
        )
        .unwrap();
        assert_eq!(loaded.fingerprint(), ca.fingerprint());
    }

    #[test]
    fn rejects_a_key_of_another_ca() {
        let a = CertificateAuthority::generate(NOW, Duration::days(1)).unwrap();
        let b = CertificateAuthority::generate(NOW, Duration::days(1)).unwrap();
        let err = CertificateAuthority::from_pem(
            a.cert_pem().as_bytes(),
            b.key_pem().as_bytes(),
            None,
            PemSource::secret("ns", "ca"),
            NOW,
        )
        .unwrap_err();
        assert!(matches!(err, CaError::KeyMismatch { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            "Secret ns/ca key tls.key does not match the public key of the certificate in Secret ns/ca key tls.crt"
        );
    }

    #[test]
    fn rejects_an_expired_ca() {
        let ca = CertificateAuthority::generate(NOW, Duration::days(1)).unwrap();
        let err = CertificateAuthority::from_pem(
            ca.cert_pem().as_bytes(),
            ca.key_pem().as_bytes(),
            None,
            PemSource::described("dir"),
            NOW + Duration::days(2),
        )
        .unwrap_err();
        assert!(matches!(err, CaError::NotValid { .. }), "{err}");
    }

    #[test]
    fn rejects_a_leaf_as_ca() {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(vec!["leaf.example".to_string()]).unwrap();
        params.not_before = NOW - Duration::hours(1);
        params.not_after = NOW + Duration::hours(1);
        let cert = params.self_signed(&key).unwrap();
        let err = CertificateAuthority::from_pem(
            cert.pem().as_bytes(),
            key.serialize_pem().as_bytes(),
            None,
            PemSource::described("dir"),
            NOW,
        )
        .unwrap_err();
        assert!(matches!(err, CaError::NotACa { .. }), "{err}");
    }

    #[test]
    fn rejects_garbage_with_the_source_name() {
        let err =
            CertificateAuthority::from_pem(b"hello", b"", None, PemSource::secret("a", "b"), NOW)
                .unwrap_err();
        assert!(
            err.to_string().starts_with("Secret a/b key tls.crt"),
            "{err}"
        );
    }

    #[test]
    fn an_intermediate_needs_its_root_and_chains_to_it() {
        let root = CertificateAuthority::generate(NOW, Duration::days(30)).unwrap();
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "team intermediate");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.use_authority_key_identifier_extension = true;
        params.not_before = NOW - Duration::hours(1);
        params.not_after = NOW + Duration::days(10);
        let inter = params.signed_by(&key, root.issuer()).unwrap();
        let err = CertificateAuthority::from_pem(
            inter.pem().as_bytes(),
            key.serialize_pem().as_bytes(),
            None,
            PemSource::described("dir"),
            NOW,
        )
        .unwrap_err();
        assert!(matches!(err, CaError::MissingRoot { .. }), "{err}");
        let ca = CertificateAuthority::from_pem(
            inter.pem().as_bytes(),
            key.serialize_pem().as_bytes(),
            Some(root.cert_pem().as_bytes()),
            PemSource::described("dir"),
            NOW,
        )
        .unwrap();
        assert_eq!(ca.roots_pem(), root.cert_pem());
        assert!(ca.chain_pem().is_empty());
        assert_eq!(ca.not_after(), NOW + Duration::days(10));
    }
}
