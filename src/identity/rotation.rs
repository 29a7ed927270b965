//! Rotation decisions for a leaf Secret: keep it (until when) or reissue it (why).
//!
//! Pure: the stored bytes, the expected identity, the current issuers and `now` go in; a
//! [`Decision`] comes out. The controller requeues a kept Secret for exactly
//! [`Decision::Keep::renew_at`] instead of polling every object.

use std::collections::BTreeSet;
use std::fmt;

use rcgen::KeyPair;
use rustls::pki_types::CertificateDer;
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use super::{SpiffeId, ca, pem};

/// The data of a leaf Secret as stored (any key may be missing).
#[derive(Clone, Copy, Default)]
pub struct StoredSecret<'a> {
    /// `tls.crt`: leaf first, then intermediates.
    pub tls_crt: Option<&'a [u8]>,
    /// `tls.key`: the leaf's private key.
    pub tls_key: Option<&'a [u8]>,
    /// `ca.crt`: the trust bundle.
    pub ca_crt: Option<&'a [u8]>,
}

impl fmt::Debug for StoredSecret<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredSecret")
            .field("tls_crt_bytes", &self.tls_crt.map(<[u8]>::len))
            .field("tls_key", &self.tls_key.map(|_| "[redacted]"))
            .field("ca_crt_bytes", &self.ca_crt.map(<[u8]>::len))
            .finish()
    }
}

/// The identity a Secret must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedIdentity {
    /// The only URI SAN.
    pub spiffe_id: SpiffeId,
    /// The exact set of DNS SANs (order does not matter).
    pub dns_names: Vec<String>,
}

/// The issuers as they are now.
#[derive(Debug, Clone, Copy)]
pub struct CurrentIssuers<'a> {
    /// The certificate that issues new leaves.
    pub active: &'a CertificateDer<'static>,
    /// Earlier issuers still trusted during a CA rotation; their leaves move to `active`.
    pub retired: &'a [CertificateDer<'static>],
    /// The trust bundle every leaf Secret must carry in `ca.crt`.
    pub bundle_pem: &'a str,
}

/// Why a Secret must be reissued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReissueReason {
    /// The Secret or one of `tls.crt`, `tls.key`, `ca.crt` is absent or empty.
    Missing,
    /// The certificate or key cannot be parsed.
    Unparseable,
    /// `tls.key` does not belong to the certificate in `tls.crt`.
    KeyMismatch,
    /// The SANs are not exactly the expected SPIFFE ID and DNS names.
    WrongSan,
    /// The leaf was not signed by any current or retired issuer.
    WrongIssuer,
    /// The leaf is past its `notAfter`.
    Expired,
    /// The leaf's `notBefore` is in the future.
    NotYetValid,
    /// The leaf was signed by a retired issuer during a CA rotation.
    CaRotated,
    /// `ca.crt` differs from the current trust bundle.
    TrustBundleChanged,
    /// Two thirds of the leaf's lifetime have passed.
    RenewalDue,
}

impl ReissueReason {
    /// A bounded, stable label (for metrics, logs and Events).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "Missing",
            Self::Unparseable => "Unparseable",
            Self::KeyMismatch => "KeyMismatch",
            Self::WrongSan => "WrongSan",
            Self::WrongIssuer => "WrongIssuer",
            Self::Expired => "Expired",
            Self::NotYetValid => "NotYetValid",
            Self::CaRotated => "CaRotated",
            Self::TrustBundleChanged => "TrustBundleChanged",
            Self::RenewalDue => "RenewalDue",
        }
    }
}

impl fmt::Display for ReissueReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to do with a leaf Secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The Secret is good; look again at `renew_at`.
    Keep {
        /// Two thirds into the leaf's lifetime.
        renew_at: OffsetDateTime,
    },
    /// Issue a new leaf now.
    Reissue {
        /// Why.
        reason: ReissueReason,
    },
}

/// When a leaf valid `not_before .. not_after` is due for renewal: at 2/3 of its lifetime.
pub fn renew_at(not_before: OffsetDateTime, not_after: OffsetDateTime) -> OffsetDateTime {
    not_before + (not_after - not_before) * 2 / 3
}

/// Decides whether the stored Secret can be kept.
pub fn decide(
    stored: &StoredSecret<'_>,
    expected: &ExpectedIdentity,
    issuers: &CurrentIssuers<'_>,
    now: OffsetDateTime,
) -> Decision {
    match check(stored, expected, issuers, now) {
        Ok(renew_at) => Decision::Keep { renew_at },
        Err(reason) => Decision::Reissue { reason },
    }
}

fn present(b: Option<&[u8]>) -> Option<&[u8]> {
    b.filter(|b| !b.iter().all(u8::is_ascii_whitespace))
}

/// The certificate material of a stored Secret, parsed (`Missing` / `Unparseable` otherwise).
/// Shared by the workload identities and the webhook's serving certificate.
pub(crate) struct StoredParts {
    chain: Vec<CertificateDer<'static>>,
    key: KeyPair,
    /// `ca.crt`.
    pub bundle: Vec<CertificateDer<'static>>,
}

pub(crate) fn stored_parts(stored: &StoredSecret<'_>) -> Result<StoredParts, ReissueReason> {
    use ReissueReason::*;
    let (Some(crt), Some(key), Some(ca_crt)) = (
        present(stored.tls_crt),
        present(stored.tls_key),
        present(stored.ca_crt),
    ) else {
        return Err(Missing);
    };
    let chain = pem::certificates(crt).map_err(|_| Unparseable)?;
    let key = std::str::from_utf8(key)
        .ok()
        .and_then(|k| KeyPair::from_pem(k).ok())
        .ok_or(Unparseable)?;
    let bundle = pem::certificates(ca_crt).map_err(|_| Unparseable)?;
    Ok(StoredParts { chain, key, bundle })
}

impl StoredParts {
    /// The leaf (first certificate of `tls.crt`): `Unparseable`, or `KeyMismatch` when
    /// `tls.key` is not its key.
    pub(crate) fn leaf(&self) -> Result<X509Certificate<'_>, ReissueReason> {
        let der = self.chain.first().ok_or(ReissueReason::Unparseable)?;
        let (_, leaf) = X509Certificate::from_der(der).map_err(|_| ReissueReason::Unparseable)?;
        if leaf.public_key().subject_public_key.data.as_ref() != self.key.public_key_raw() {
            return Err(ReissueReason::KeyMismatch);
        }
        Ok(leaf)
    }
}

/// The leaf's validity window, or `Expired` / `NotYetValid` at `now`.
pub(crate) fn validity_at(
    leaf: &X509Certificate<'_>,
    now: OffsetDateTime,
) -> Result<(OffsetDateTime, OffsetDateTime), ReissueReason> {
    let (not_before, not_after) = ca::validity(leaf);
    if now >= not_after {
        return Err(ReissueReason::Expired);
    }
    if now < not_before {
        return Err(ReissueReason::NotYetValid);
    }
    Ok((not_before, not_after))
}

/// Whether two certificate lists hold the same certificates (order and repeats aside).
pub(crate) fn same_certificates(a: &[CertificateDer<'_>], b: &[CertificateDer<'_>]) -> bool {
    let set = |certs: &[CertificateDer<'_>]| {
        certs
            .iter()
            .map(|c| c.as_ref().to_vec())
            .collect::<BTreeSet<_>>()
    };
    set(a) == set(b)
}

fn check(
    stored: &StoredSecret<'_>,
    expected: &ExpectedIdentity,
    issuers: &CurrentIssuers<'_>,
    now: OffsetDateTime,
) -> Result<OffsetDateTime, ReissueReason> {
    use ReissueReason::*;
    let parts = stored_parts(stored)?;
    let leaf = parts.leaf()?;
    if !sans_match(&leaf, expected) {
        return Err(WrongSan);
    }
    let signed_by = |issuer: &CertificateDer<'_>| {
        X509Certificate::from_der(issuer).is_ok_and(|(_, issuer)| {
            leaf.issuer() == issuer.subject()
                && leaf.verify_signature(Some(issuer.public_key())).is_ok()
        })
    };
    let by_active = signed_by(issuers.active);
    if !by_active && !issuers.retired.iter().any(signed_by) {
        return Err(WrongIssuer);
    }
    let (not_before, not_after) = validity_at(&leaf, now)?;
    if !by_active {
        return Err(CaRotated);
    }
    let expected_bundle = pem::certificates(issuers.bundle_pem.as_bytes()).unwrap_or_default();
    if !same_certificates(&parts.bundle, &expected_bundle) {
        return Err(TrustBundleChanged);
    }
    let renew_at = renew_at(not_before, not_after);
    if now >= renew_at {
        return Err(RenewalDue);
    }
    Ok(renew_at)
}

fn sans_match(leaf: &X509Certificate<'_>, expected: &ExpectedIdentity) -> bool {
    let Ok(Some(san)) = leaf.subject_alternative_name() else {
        return false;
    };
    let mut uris = Vec::new();
    let mut dns = BTreeSet::new();
    for name in &san.value.general_names {
        match name {
            GeneralName::URI(u) => uris.push(*u),
            GeneralName::DNSName(d) => {
                dns.insert(*d);
            }
            _ => return false,
        }
    }
    let expected_uri = expected.spiffe_id.uri();
    let expected_dns: BTreeSet<&str> = expected.dns_names.iter().map(String::as_str).collect();
    uris == [expected_uri.as_str()] && dns == expected_dns
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn renews_at_two_thirds_of_the_lifetime() {
        let nb = datetime!(2026-01-01 00:00 UTC);
        assert_eq!(
            renew_at(nb, nb + time::Duration::hours(24)),
            datetime!(2026-01-01 16:00 UTC)
        );
    }

    #[test]
    fn debug_of_stored_secret_hides_the_key() {
        let s = StoredSecret {
            tls_crt: Some(b"abc"),
            tls_key: Some(b"-----BEGIN PRIVATE KEY-----secret"),
            ca_crt: None,
        };
        let dbg = format!("{s:?}");
        assert!(!dbg.contains("secret"), "{dbg}");
    }
}
