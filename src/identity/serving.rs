//! The webhook's own serving certificate, issued by the operator CA: what it must name (DNS
//! names and IP addresses of the webhook endpoint), when a stored one is still good, and the
//! Secret that holds it.
//!
//! Pure: the stored bytes, the wanted names, the CA and `now` go in; a [`Decision`] or an
//! `IssuedServing` comes out. `apiguard run` (`crate::certs::serving`) does the I/O.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use super::issue::{IssueError, dns_sans, issuer_valid_at, sign_leaf};
use super::rotation::{
    Decision, ReissueReason, StoredSecret, renew_at, same_certificates, stored_parts, validity_at,
};
use super::secrets::{TLS_SECRET_TYPE, stored};
use super::{CA_CRT, CertificateAuthority, TLS_CRT, TLS_KEY, ca, pem, rfc3339};
use crate::api::names::annotations::NOT_AFTER;
use crate::api::names::labels::{APP_COMPONENT, MANAGED_BY, MANAGED_BY_VALUE};

/// `app.kubernetes.io/component` of the serving certificate Secret.
pub(crate) const SERVING_COMPONENT: &str = "webhook-serving-certificate";

/// The names the webhook is reached by: the certificate's SANs, exactly.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServingNames {
    /// DNS SANs, e.g. `apiguard.apiguard-system.svc`.
    pub dns_names: Vec<String>,
    /// IP SANs, e.g. `127.0.0.1` for an out-of-cluster webhook on loopback.
    pub ip_addresses: Vec<IpAddr>,
}

impl ServingNames {
    /// Whether no name at all is wanted (a certificate nobody could verify).
    pub fn is_empty(&self) -> bool {
        self.dns_names.is_empty() && self.ip_addresses.is_empty()
    }
}

impl fmt::Display for ServingNames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self
            .dns_names
            .iter()
            .cloned()
            .chain(self.ip_addresses.iter().map(IpAddr::to_string))
            .collect();
        f.write_str(&names.join(", "))
    }
}

/// A newly issued serving certificate. `Debug` does not print the private key.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct IssuedServing {
    /// Certificate PEM followed by any intermediates (`tls.crt`).
    pub cert_pem: String,
    /// PKCS#8 private key PEM (`tls.key`).
    pub key_pem: String,
    /// The CA's roots (`ca.crt`): what the webhook configuration's `caBundle` must hold.
    pub ca_bundle_pem: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl fmt::Debug for IssuedServing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedServing")
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("key_pem", &"[redacted]")
            .finish_non_exhaustive()
    }
}

/// Issues a TLS server certificate for `names`, signed by `ca`, with a fresh ECDSA P-256 key.
pub(crate) fn issue_serving(
    ca: &CertificateAuthority,
    names: &ServingNames,
    lifetime: Duration,
    now: OffsetDateTime,
) -> Result<IssuedServing, IssueError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    issue_serving_with_key(ca, names, lifetime, key, now)
}

/// [`issue_serving`] with a caller-supplied key.
pub(crate) fn issue_serving_with_key(
    ca: &CertificateAuthority,
    names: &ServingNames,
    lifetime: Duration,
    key: KeyPair,
    now: OffsetDateTime,
) -> Result<IssuedServing, IssueError> {
    if lifetime <= Duration::ZERO {
        return Err(IssueError::InvalidLifetime(lifetime));
    }
    if names.is_empty() {
        return Err(IssueError::InvalidDnsName(
            "(none: the serving certificate needs at least one DNS name or IP address)".into(),
        ));
    }
    issuer_valid_at(ca, now)?;
    let mut sans = dns_sans(&names.dns_names)?;
    sans.extend(names.ip_addresses.iter().map(|ip| SanType::IpAddress(*ip)));
    let mut params = CertificateParams::default();
    let mut subject = DistinguishedName::new();
    subject.push(
        DnType::CommonName,
        names
            .dns_names
            .first()
            .cloned()
            .unwrap_or_else(|| names.ip_addresses[0].to_string()),
    );
    params.distinguished_name = subject;
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let signed = sign_leaf(params, &key, ca, now, lifetime)?;
    Ok(IssuedServing {
        cert_pem: signed.cert_pem,
        key_pem: signed.key_pem,
        ca_bundle_pem: signed.ca_bundle_pem,
        not_before: signed.not_before,
        not_after: signed.not_after,
    })
}

/// Decides whether the stored serving certificate can be kept: present, parseable, key and
/// certificate match, SANs exactly `names`, signed by `ca`, valid now, `ca.crt` equal to the
/// CA's roots, and not yet two thirds through its lifetime.
pub(crate) fn decide_serving(
    stored: &StoredSecret<'_>,
    names: &ServingNames,
    ca: &CertificateAuthority,
    now: OffsetDateTime,
) -> Decision {
    match check(stored, names, ca, now) {
        Ok(renew_at) => Decision::Keep { renew_at },
        Err(reason) => Decision::Reissue { reason },
    }
}

fn check(
    stored: &StoredSecret<'_>,
    names: &ServingNames,
    ca: &CertificateAuthority,
    now: OffsetDateTime,
) -> Result<OffsetDateTime, ReissueReason> {
    use ReissueReason::*;
    let parts = stored_parts(stored)?;
    let leaf = parts.leaf()?;
    if !sans_match(&leaf, names) {
        return Err(WrongSan);
    }
    if !ca.signed(&leaf) {
        return Err(WrongIssuer);
    }
    let (not_before, not_after) = validity_at(&leaf, now)?;
    if !same_certificates(&parts.bundle, ca.roots()) {
        return Err(TrustBundleChanged);
    }
    let renew_at = renew_at(not_before, not_after);
    if now >= renew_at {
        return Err(RenewalDue);
    }
    Ok(renew_at)
}

fn sans_match(leaf: &X509Certificate<'_>, names: &ServingNames) -> bool {
    let Ok(Some(san)) = leaf.subject_alternative_name() else {
        return false;
    };
    let mut dns = BTreeSet::new();
    let mut ips = BTreeSet::new();
    for name in &san.value.general_names {
        match name {
            GeneralName::DNSName(d) => {
                dns.insert(d.to_string());
            }
            GeneralName::IPAddress(raw) => match ip_from_bytes(raw) {
                Some(ip) => {
                    ips.insert(ip);
                }
                None => return false,
            },
            _ => return false,
        }
    }
    dns == names.dns_names.iter().cloned().collect::<BTreeSet<_>>()
        && ips == names.ip_addresses.iter().copied().collect::<BTreeSet<_>>()
}

fn ip_from_bytes(raw: &[u8]) -> Option<IpAddr> {
    match raw.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(raw).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(raw).ok()?)),
        _ => None,
    }
}

/// `notBefore`/`notAfter` of the first certificate in a PEM chain (`None`: not parseable).
pub(crate) fn serving_validity(cert_pem: &[u8]) -> Option<(OffsetDateTime, OffsetDateTime)> {
    let chain = pem::certificates(cert_pem).ok()?;
    let (_, leaf) = X509Certificate::from_der(chain.first()?).ok()?;
    Some(ca::validity(&leaf))
}

/// The `kubernetes.io/tls` Secret holding the serving certificate (`tls.crt`, `tls.key`,
/// `ca.crt`), labelled as apiguard's.
pub(crate) fn serving_secret(name: &str, namespace: &str, issued: &IssuedServing) -> Secret {
    let bytes = |s: &str| ByteString(s.as_bytes().to_vec());
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([
                (MANAGED_BY.to_string(), MANAGED_BY_VALUE.to_string()),
                (APP_COMPONENT.to_string(), SERVING_COMPONENT.to_string()),
            ])),
            annotations: Some(BTreeMap::from([(
                NOT_AFTER.to_string(),
                rfc3339(issued.not_after),
            )])),
            ..Default::default()
        },
        type_: Some(TLS_SECRET_TYPE.to_string()),
        data: Some(BTreeMap::from([
            (TLS_CRT.to_string(), bytes(&issued.cert_pem)),
            (TLS_KEY.to_string(), bytes(&issued.key_pem)),
            (CA_CRT.to_string(), bytes(&issued.ca_bundle_pem)),
        ])),
        ..Default::default()
    }
}

/// [`decide_serving`] over a Secret as read from the apiserver (`None`: absent).
pub(crate) fn decide_secret(
    secret: Option<&Secret>,
    names: &ServingNames,
    ca: &CertificateAuthority,
    now: OffsetDateTime,
) -> Decision {
    match secret {
        Some(secret) => decide_serving(&stored(secret), names, ca, now),
        None => Decision::Reissue {
            reason: ReissueReason::Missing,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-03-01 12:00 UTC);

    fn ca() -> CertificateAuthority {
        CertificateAuthority::generate(NOW - Duration::days(1), Duration::days(3650)).unwrap()
    }

    fn names() -> ServingNames {
        ServingNames {
            dns_names: vec![
                "apiguard.apiguard-system.svc".into(),
                "apiguard.apiguard-system.svc.cluster.local".into(),
            ],
            ip_addresses: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
        }
    }

    fn secret_of(issued: &IssuedServing) -> Secret {
        serving_secret("apiguard-webhook-tls", "apiguard-system", issued)
    }

    #[test]
    fn issues_a_server_certificate_for_exactly_the_names() {
        let ca = ca();
        let issued = issue_serving(&ca, &names(), Duration::days(90), NOW).unwrap();
        assert_eq!(issued.not_before, NOW - Duration::minutes(5));
        assert_eq!(issued.not_after, NOW + Duration::days(90));
        assert_eq!(issued.ca_bundle_pem, ca.roots_pem());
        let der = pem::certificates(issued.cert_pem.as_bytes()).unwrap();
        let (_, cert) = X509Certificate::from_der(&der[0]).unwrap();
        let sans = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .clone();
        assert_eq!(
            sans,
            vec![
                GeneralName::DNSName("apiguard.apiguard-system.svc"),
                GeneralName::DNSName("apiguard.apiguard-system.svc.cluster.local"),
                GeneralName::IPAddress(&[127, 0, 0, 1]),
            ]
        );
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && !eku.client_auth);
        assert!(!cert.basic_constraints().unwrap().unwrap().value.ca);
        assert!(ca.signed(&cert));
        assert!(!format!("{issued:?}").contains("PRIVATE"));
        let secret = secret_of(&issued);
        assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
        assert_eq!(
            secret.metadata.labels.as_ref().unwrap()[APP_COMPONENT],
            SERVING_COMPONENT
        );
    }

    #[test]
    fn keeps_a_good_certificate_until_two_thirds_of_its_lifetime() {
        let ca = ca();
        let issued = issue_serving(&ca, &names(), Duration::days(90), NOW).unwrap();
        let secret = secret_of(&issued);
        let renew = renew_at(issued.not_before, issued.not_after);
        assert_eq!(
            decide_secret(Some(&secret), &names(), &ca, NOW),
            Decision::Keep { renew_at: renew }
        );
        // SAN order does not matter.
        let mut reordered = names();
        reordered.dns_names.reverse();
        assert!(matches!(
            decide_secret(Some(&secret), &reordered, &ca, NOW),
            Decision::Keep { .. }
        ));
        assert_eq!(
            decide_secret(Some(&secret), &names(), &ca, renew),
            Decision::Reissue {
                reason: ReissueReason::RenewalDue
            }
        );
        assert_eq!(
            decide_secret(Some(&secret), &names(), &ca, issued.not_after),
            Decision::Reissue {
                reason: ReissueReason::Expired
            }
        );
    }

    #[test]
    fn reissues_for_every_reason_a_stored_certificate_is_not_good() {
        let ca = ca();
        let issued = issue_serving(&ca, &names(), Duration::days(90), NOW).unwrap();
        let reason = |secret: Option<&Secret>, names: &ServingNames, ca: &CertificateAuthority| {
            match decide_secret(secret, names, ca, NOW) {
                Decision::Reissue { reason } => reason,
                Decision::Keep { .. } => panic!("kept"),
            }
        };
        assert_eq!(reason(None, &names(), &ca), ReissueReason::Missing);

        let mut no_key = secret_of(&issued);
        no_key.data.as_mut().unwrap().remove(TLS_KEY);
        assert_eq!(reason(Some(&no_key), &names(), &ca), ReissueReason::Missing);

        let mut garbage = secret_of(&issued);
        garbage
            .data
            .as_mut()
            .unwrap()
            .insert(TLS_CRT.into(), ByteString(b"not a certificate".to_vec()));
        assert_eq!(
            reason(Some(&garbage), &names(), &ca),
            ReissueReason::Unparseable
        );

        let other = issue_serving(&ca, &names(), Duration::days(90), NOW).unwrap();
        let mut mismatched = secret_of(&issued);
        mismatched
            .data
            .as_mut()
            .unwrap()
            .insert(TLS_KEY.into(), ByteString(other.key_pem.into_bytes()));
        assert_eq!(
            reason(Some(&mismatched), &names(), &ca),
            ReissueReason::KeyMismatch
        );

        // A new SAN wanted (e.g. the chart's Service renamed, or the loopback IP added).
        let mut more = names();
        more.dns_names.push("localhost".into());
        assert_eq!(
            reason(Some(&secret_of(&issued)), &more, &ca),
            ReissueReason::WrongSan
        );
        let mut fewer = names();
        fewer.ip_addresses.clear();
        assert_eq!(
            reason(Some(&secret_of(&issued)), &fewer, &ca),
            ReissueReason::WrongSan
        );

        // A different CA (the CA Secret was replaced): its roots do not sign the old leaf.
        let new_ca = CertificateAuthority::generate(NOW, Duration::days(3650)).unwrap();
        assert_eq!(
            reason(Some(&secret_of(&issued)), &names(), &new_ca),
            ReissueReason::WrongIssuer
        );

        let mut stale_bundle = secret_of(&issued);
        stale_bundle
            .data
            .as_mut()
            .unwrap()
            .insert(CA_CRT.into(), ByteString(new_ca.roots_pem().into_bytes()));
        assert_eq!(
            reason(Some(&stale_bundle), &names(), &ca),
            ReissueReason::TrustBundleChanged
        );

        let future =
            issue_serving(&ca, &names(), Duration::days(90), NOW + Duration::days(1)).unwrap();
        assert_eq!(
            reason(Some(&secret_of(&future)), &names(), &ca),
            ReissueReason::NotYetValid
        );
    }

    #[test]
    fn during_a_ca_rotation_the_bundle_carries_every_trusted_root() {
        // The CA Secret of a rotation: the new issuer, and the old root still in ca.crt.
        let old = ca();
        let new = CertificateAuthority::generate(NOW, Duration::days(3650)).unwrap();
        let mut secret =
            crate::identity::secrets::ca_secret("apiguard-ca", "apiguard-system", &new);
        secret.data.as_mut().unwrap().insert(
            CA_CRT.into(),
            ByteString(format!("{}{}", new.roots_pem(), old.roots_pem()).into_bytes()),
        );
        let rotating = crate::identity::secrets::ca_from_secret(&secret, NOW).unwrap();
        let issued = issue_serving(&rotating, &names(), Duration::days(90), NOW).unwrap();
        let bundle = pem::certificates(issued.ca_bundle_pem.as_bytes()).unwrap();
        assert_eq!(bundle.len(), 2, "{}", issued.ca_bundle_pem);
        assert!(bundle.contains(old.cert_der()) && bundle.contains(new.cert_der()));
        assert!(matches!(
            decide_secret(Some(&secret_of(&issued)), &names(), &rotating, NOW),
            Decision::Keep { .. }
        ));
        // A certificate from before the rotation carries only the old root: reissued.
        let before = issue_serving(&new, &names(), Duration::days(90), NOW).unwrap();
        assert_eq!(
            decide_secret(Some(&secret_of(&before)), &names(), &rotating, NOW),
            Decision::Reissue {
                reason: ReissueReason::TrustBundleChanged
            }
        );
    }

    #[test]
    fn refuses_no_names_bad_names_and_bad_lifetimes() {
        let ca = ca();
        let err = issue_serving(&ca, &ServingNames::default(), Duration::days(1), NOW).unwrap_err();
        assert!(err.to_string().contains("at least one DNS name"), "{err}");
        let bad = ServingNames {
            dns_names: vec!["Not_A_Name".into()],
            ip_addresses: vec![],
        };
        let err = issue_serving(&ca, &bad, Duration::days(1), NOW).unwrap_err();
        assert!(err.to_string().contains("Not_A_Name"), "{err}");
        assert!(matches!(
            issue_serving(&ca, &names(), Duration::ZERO, NOW),
            Err(IssueError::InvalidLifetime(_))
        ));
        assert!(matches!(
            issue_serving(&ca, &names(), Duration::days(1), NOW + Duration::days(4000)),
            Err(IssueError::IssuerNotValid { .. })
        ));
        // Capped at the CA's expiry.
        let short =
            CertificateAuthority::generate(NOW - Duration::days(1), Duration::days(10)).unwrap();
        let issued = issue_serving(&short, &names(), Duration::days(90), NOW).unwrap();
        assert_eq!(issued.not_after, short.not_after());
        assert_eq!(
            serving_validity(issued.cert_pem.as_bytes()),
            Some((issued.not_before, issued.not_after))
        );
    }
}
