//! Certificates of one policy, decided purely: for each workload identity (the gateway, the
//! target's service account) keep the stored leaf until its `renew_at` or issue a new one.

use k8s_openapi::api::core::v1::Secret;
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::identity::rotation::CurrentIssuers;
use crate::identity::secrets::stored;
use crate::identity::{
    CertificateAuthority, Decision, ExpectedIdentity, IssueError, LeafRequest, ReissueReason,
    SpiffeId, decide, issue_leaf, rotation,
};

/// A leaf certificate ready to be written (or kept) in a Secret.
#[derive(Clone)]
pub struct Leaf {
    pub spiffe_id: SpiffeId,
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// When the controller must look at this leaf again.
    pub renew_at: OffsetDateTime,
    /// Why it was (re)issued in this reconcile; `None` when the stored leaf was kept.
    pub reissued: Option<ReissueReason>,
}

impl std::fmt::Debug for Leaf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leaf")
            .field("spiffe_id", &self.spiffe_id.uri())
            .field("not_after", &self.not_after)
            .field("renew_at", &self.renew_at)
            .field("reissued", &self.reissued)
            .finish_non_exhaustive()
    }
}

/// The DNS names of `service` in `namespace` (short and cluster-qualified forms).
pub(crate) fn service_dns_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

/// Keeps the leaf stored in `existing` if it is still good for `expected` at `now`, otherwise
/// issues a new one from `ca`.
pub(crate) fn plan_leaf(
    existing: Option<&Secret>,
    expected: &ExpectedIdentity,
    ca: &CertificateAuthority,
    lifetime: time::Duration,
    now: OffsetDateTime,
) -> Result<Leaf, IssueError> {
    let bundle = ca.roots_pem();
    let issuers = CurrentIssuers {
        active: ca.cert_der(),
        retired: &[],
        bundle_pem: &bundle,
    };
    let decision = match existing {
        Some(secret) => decide(&stored(secret), expected, &issuers, now),
        None => Decision::Reissue {
            reason: ReissueReason::Missing,
        },
    };
    if let (Decision::Keep { renew_at }, Some(secret)) = (decision, existing) {
        let data = stored(secret);
        let text = |b: Option<&[u8]>| String::from_utf8_lossy(b.unwrap_or_default()).into_owned();
        let cert_pem = text(data.tls_crt);
        if let Some((not_before, not_after)) = leaf_validity(&cert_pem) {
            return Ok(Leaf {
                spiffe_id: expected.spiffe_id.clone(),
                key_pem: text(data.tls_key),
                ca_pem: text(data.ca_crt),
                cert_pem,
                not_before,
                not_after,
                renew_at,
                reissued: None,
            });
        }
    }
    let reason = match decision {
        Decision::Reissue { reason } => reason,
        Decision::Keep { .. } => ReissueReason::Unparseable,
    };
    let request = LeafRequest {
        spiffe_id: expected.spiffe_id.clone(),
        dns_names: expected.dns_names.clone(),
        lifetime,
    };
    let issued = issue_leaf(ca, &request, now)?;
    Ok(Leaf {
        renew_at: rotation::renew_at(issued.not_before, issued.not_after),
        spiffe_id: issued.spiffe_id,
        cert_pem: issued.cert_pem,
        key_pem: issued.key_pem,
        ca_pem: issued.ca_bundle_pem,
        not_before: issued.not_before,
        not_after: issued.not_after,
        reissued: Some(reason),
    })
}

/// `notBefore` and `notAfter` of the first certificate in a PEM chain.
fn leaf_validity(cert_pem: &str) -> Option<(OffsetDateTime, OffsetDateTime)> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).ok()?;
    let (_, cert) = X509Certificate::from_der(&pem.contents).ok()?;
    let v = cert.validity();
    Some((v.not_before.to_datetime(), v.not_after.to_datetime()))
}

/// How long until `at`, from `now` (zero when past): the requeue delay for a renewal.
pub fn until(at: OffsetDateTime, now: OffsetDateTime) -> std::time::Duration {
    let d = at - now;
    if d.is_negative() {
        std::time::Duration::ZERO
    } else {
        d.unsigned_abs()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::secrets::leaf_secret;
    use time::Duration;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-02-01 00:00 UTC);

    fn expected(sa: &str) -> ExpectedIdentity {
        ExpectedIdentity {
            spiffe_id: SpiffeId::new("cluster.local", "shop", sa).unwrap(),
            dns_names: service_dns_names("payments-apiguard", "shop"),
        }
    }

    fn as_secret(leaf: &Leaf) -> Secret {
        let issued = crate::identity::IssuedLeaf {
            cert_pem: leaf.cert_pem.clone(),
            key_pem: leaf.key_pem.clone(),
            ca_bundle_pem: leaf.ca_pem.clone(),
            not_before: leaf.not_before,
            not_after: leaf.not_after,
            spiffe_id: leaf.spiffe_id.clone(),
        };
        leaf_secret("x", "shop", &issued, None)
    }

    #[test]
    fn a_missing_secret_gets_a_leaf_renewed_at_two_thirds() {
        let ca = CertificateAuthority::generate(NOW, Duration::days(10)).unwrap();
        let leaf = plan_leaf(None, &expected("gw"), &ca, Duration::hours(24), NOW).unwrap();
        assert_eq!(leaf.reissued, Some(ReissueReason::Missing));
        assert_eq!(leaf.not_after, NOW + Duration::hours(24));
        // notBefore is backdated 5 minutes: 2/3 of 24h05m after it.
        let nb = NOW - Duration::minutes(5);
        assert_eq!(leaf.renew_at, nb + (leaf.not_after - nb) * 2 / 3);
    }

    #[test]
    fn a_good_leaf_is_kept_until_renew_at_then_reissued() {
        let ca = CertificateAuthority::generate(NOW, Duration::days(10)).unwrap();
        let first = plan_leaf(None, &expected("gw"), &ca, Duration::hours(24), NOW).unwrap();
        let secret = as_secret(&first);
        let later = NOW + Duration::hours(1);
        let kept = plan_leaf(
            Some(&secret),
            &expected("gw"),
            &ca,
            Duration::hours(24),
            later,
        )
        .unwrap();
        assert_eq!(kept.reissued, None);
        assert_eq!(kept.cert_pem, first.cert_pem);
        assert_eq!(kept.key_pem, first.key_pem);
        assert_eq!(kept.renew_at, first.renew_at);
        assert_eq!(
            until(kept.renew_at, later),
            (first.renew_at - later).unsigned_abs()
        );
        let due = plan_leaf(
            Some(&secret),
            &expected("gw"),
            &ca,
            Duration::hours(24),
            first.renew_at,
        )
        .unwrap();
        assert_eq!(due.reissued, Some(ReissueReason::RenewalDue));
        assert_ne!(due.cert_pem, first.cert_pem);
    }

    #[test]
    fn a_leaf_for_another_identity_or_ca_is_reissued() {
        let ca = CertificateAuthority::generate(NOW, Duration::days(10)).unwrap();
        let first = plan_leaf(None, &expected("gw"), &ca, Duration::hours(24), NOW).unwrap();
        let secret = as_secret(&first);
        let other = plan_leaf(
            Some(&secret),
            &expected("api"),
            &ca,
            Duration::hours(24),
            NOW,
        )
        .unwrap();
        assert_eq!(other.reissued, Some(ReissueReason::WrongSan));
        let new_ca = CertificateAuthority::generate(NOW, Duration::days(10)).unwrap();
        let rotated = plan_leaf(
            Some(&secret),
            &expected("gw"),
            &new_ca,
            Duration::hours(24),
            NOW,
        )
        .unwrap();
        assert_eq!(rotated.reissued, Some(ReissueReason::WrongIssuer));
    }

    #[test]
    fn until_is_zero_in_the_past() {
        assert_eq!(
            until(NOW, NOW + Duration::seconds(5)),
            std::time::Duration::ZERO
        );
        assert_eq!(
            until(NOW + Duration::seconds(5), NOW),
            std::time::Duration::from_secs(5)
        );
    }
}
