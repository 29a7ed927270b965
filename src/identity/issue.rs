//! Leaf issuance for SPIFFE workload identities.

use std::fmt;
use std::str::FromStr;

use rcgen::{
    CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, SanType,
};
use time::{Duration, OffsetDateTime};

use super::CertificateAuthority;

/// Why a SPIFFE ID was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    /// Not of the form `spiffe://<trustDomain>/ns/<ns>/sa/<sa>`.
    #[error(
        "SPIFFE ID '{input}': {reason} (expected spiffe://<trustDomain>/ns/<namespace>/sa/<serviceAccount>)"
    )]
    Malformed { input: String, reason: String },
    /// The trust domain has characters SPIFFE does not allow.
    #[error("trust domain '{0}' is invalid: use 1-255 lowercase letters, digits, '.', '-' or '_'")]
    TrustDomain(String),
    /// The namespace is not a DNS-1123 label.
    #[error(
        "namespace '{0}' is invalid: must be a DNS-1123 label (lowercase alphanumerics and '-', at most 63)"
    )]
    Namespace(String),
    /// The service account is not a DNS-1123 subdomain.
    #[error(
        "service account '{0}' is invalid: must be a DNS-1123 subdomain (lowercase alphanumerics, '-' and '.', at most 253)"
    )]
    ServiceAccount(String),
}

/// A workload identity `spiffe://<trustDomain>/ns/<namespace>/sa/<serviceAccount>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

impl SpiffeId {
    /// Builds and validates an ID from its parts.
    pub fn new(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, SpiffeIdError> {
        if !valid_trust_domain(trust_domain) {
            return Err(SpiffeIdError::TrustDomain(trust_domain.to_string()));
        }
        if !valid_dns_label(namespace) {
            return Err(SpiffeIdError::Namespace(namespace.to_string()));
        }
        if service_account.len() > 253 || !service_account.split('.').all(valid_dns_label) {
            return Err(SpiffeIdError::ServiceAccount(service_account.to_string()));
        }
        Ok(Self {
            trust_domain: trust_domain.to_string(),
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
        })
    }

    /// Parses `spiffe://<trustDomain>/ns/<ns>/sa/<sa>`.
    pub fn parse(input: &str) -> Result<Self, SpiffeIdError> {
        let malformed = |reason: &str| SpiffeIdError::Malformed {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        let rest = input
            .strip_prefix("spiffe://")
            .ok_or_else(|| malformed("scheme must be spiffe://"))?;
        if rest.contains(['?', '#']) {
            return Err(malformed("query and fragment are not allowed"));
        }
        let (trust_domain, path) = rest
            .split_once('/')
            .ok_or_else(|| malformed("path is missing"))?;
        if trust_domain.contains([':', '@']) {
            return Err(malformed(
                "the trust domain may not carry a port or user info",
            ));
        }
        let segments: Vec<&str> = path.split('/').collect();
        match segments.as_slice() {
            ["ns", ns, "sa", sa] => Self::new(trust_domain, ns, sa),
            _ => Err(malformed(
                "path must be /ns/<namespace>/sa/<serviceAccount>",
            )),
        }
    }

    /// The trust domain, e.g. `cluster.local`.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The Kubernetes namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The Kubernetes service account.
    pub fn service_account(&self) -> &str {
        &self.service_account
    }

    /// The URI form, as written into the certificate's URI SAN.
    pub fn uri(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

fn valid_trust_domain(td: &str) -> bool {
    !td.is_empty()
        && td.len() <= 255
        && td.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        })
}

fn valid_dns_label(label: &str) -> bool {
    let bytes = label.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// A DNS SAN: a DNS-1123 subdomain, optionally with a leading `*.` wildcard label.
pub(crate) fn valid_dns_name(name: &str) -> bool {
    let base = name.strip_prefix("*.").unwrap_or(name);
    name.len() <= 253 && base.split('.').all(valid_dns_label)
}

/// Why a leaf could not be issued.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// A DNS name is not a valid DNS-1123 subdomain.
    #[error(
        "DNS name '{0}' is invalid: must be a lowercase DNS-1123 subdomain, optionally starting with '*.'"
    )]
    InvalidDnsName(String),
    /// The lifetime is zero or negative.
    #[error("leaf lifetime must be positive, got {0}")]
    InvalidLifetime(Duration),
    /// The issuer is not valid now, so nothing it signs would be either.
    #[error(
        "issuer '{subject}' is not valid at {now} (valid {not_before} .. {not_after}); rotate the CA"
    )]
    IssuerNotValid {
        subject: String,
        now: OffsetDateTime,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    },
    /// Key generation or signing failed.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
}

/// What to issue: one identity, the DNS names its Service needs, and a lifetime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafRequest {
    /// The workload identity (URI SAN).
    pub spiffe_id: SpiffeId,
    /// DNS SANs, e.g. `payments.shop.svc` and `payments.shop.svc.cluster.local`.
    pub dns_names: Vec<String>,
    /// Requested lifetime from `now` (default `DEFAULT_LEAF_LIFETIME`); capped at the
    /// issuer's expiry.
    pub lifetime: Duration,
}

impl LeafRequest {
    /// A request with the default 24 h lifetime and no DNS names.
    pub fn new(spiffe_id: SpiffeId) -> Self {
        Self {
            spiffe_id,
            dns_names: Vec::new(),
            lifetime: super::DEFAULT_LEAF_LIFETIME,
        }
    }
}

/// An issued leaf and what a workload needs next to it.
///
/// `Debug` does not print the private key.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedLeaf {
    /// Leaf certificate PEM followed by any intermediates (`tls.crt`).
    pub cert_pem: String,
    /// PKCS#8 private key PEM (`tls.key`).
    pub key_pem: String,
    /// Trusted roots PEM (`ca.crt`). During a CA rotation the controller replaces this with
    /// the rotation's bundle.
    pub ca_bundle_pem: String,
    /// Start of validity (backdated by `CLOCK_SKEW_ALLOWANCE`).
    pub not_before: OffsetDateTime,
    /// End of validity (never after the issuer's).
    pub not_after: OffsetDateTime,
    /// The identity in the URI SAN.
    pub spiffe_id: SpiffeId,
}

impl fmt::Debug for IssuedLeaf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedLeaf")
            .field("spiffe_id", &self.spiffe_id.uri())
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("key_pem", &"[redacted]")
            .finish_non_exhaustive()
    }
}

/// Issues a leaf for `request` signed by `ca`, with a fresh ECDSA P-256 key.
pub fn issue_leaf(
    ca: &CertificateAuthority,
    request: &LeafRequest,
    now: OffsetDateTime,
) -> Result<IssuedLeaf, IssueError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    issue_leaf_with_key(ca, request, key, now)
}

/// [`issue_leaf`] with a caller-supplied key (deterministic given the key).
pub fn issue_leaf_with_key(
    ca: &CertificateAuthority,
    request: &LeafRequest,
    key: KeyPair,
    now: OffsetDateTime,
) -> Result<IssuedLeaf, IssueError> {
    if request.lifetime <= Duration::ZERO {
        return Err(IssueError::InvalidLifetime(request.lifetime));
    }
    issuer_valid_at(ca, now)?;
    let uri = request.spiffe_id.uri();
    let mut sans = vec![SanType::URI(
        uri.clone()
            .try_into()
            .map_err(|_| IssueError::InvalidDnsName(uri.clone()))?,
    )];
    sans.extend(dns_sans(&request.dns_names)?);
    let mut params = CertificateParams::default();
    // X509-SVID convention: the identity lives in the URI SAN only; the subject stays empty
    // (which makes rcgen mark the SAN extension critical, as RFC 5280 requires).
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = sans;
    // ExplicitNoCa writes basicConstraints CA:FALSE and the subject key identifier.
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let signed = sign_leaf(params, &key, ca, now, request.lifetime)?;
    Ok(IssuedLeaf {
        cert_pem: signed.cert_pem,
        key_pem: signed.key_pem,
        ca_bundle_pem: signed.ca_bundle_pem,
        not_before: signed.not_before,
        not_after: signed.not_after,
        spiffe_id: request.spiffe_id.clone(),
    })
}

/// `IssuerNotValid` unless `ca` may sign at `now`.
pub(crate) fn issuer_valid_at(
    ca: &CertificateAuthority,
    now: OffsetDateTime,
) -> Result<(), IssueError> {
    if now < ca.not_before() || now >= ca.not_after() {
        return Err(IssueError::IssuerNotValid {
            subject: ca.subject().to_string(),
            now,
            not_before: ca.not_before(),
            not_after: ca.not_after(),
        });
    }
    Ok(())
}

/// DNS SANs for `names`, each checked (`InvalidDnsName` names the first bad one).
pub(crate) fn dns_sans(names: &[String]) -> Result<Vec<SanType>, IssueError> {
    names
        .iter()
        .map(|name| {
            if !valid_dns_name(name) {
                return Err(IssueError::InvalidDnsName(name.clone()));
            }
            Ok(SanType::DnsName(
                name.clone()
                    .try_into()
                    .map_err(|_| IssueError::InvalidDnsName(name.clone()))?,
            ))
        })
        .collect()
}

/// A signed leaf: PEM chain (leaf + the CA's intermediates), key, roots, and its validity.
pub(crate) struct SignedLeaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_bundle_pem: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

/// Sets the validity window of `params` (backdated by the clock-skew allowance, `lifetime`
/// long, clipped to the CA's own validity) and signs it with `ca`.
pub(crate) fn sign_leaf(
    mut params: CertificateParams,
    key: &KeyPair,
    ca: &CertificateAuthority,
    now: OffsetDateTime,
    lifetime: Duration,
) -> Result<SignedLeaf, IssueError> {
    params.use_authority_key_identifier_extension = true;
    params.not_before = (now - super::CLOCK_SKEW_ALLOWANCE).max(ca.not_before());
    params.not_after = (now + lifetime).min(ca.not_after());
    // Certificates carry whole seconds; truncate so the returned times equal the encoded ones.
    params.not_before = params
        .not_before
        .replace_nanosecond(0)
        .unwrap_or(params.not_before);
    params.not_after = params
        .not_after
        .replace_nanosecond(0)
        .unwrap_or(params.not_after);
    let cert = params.signed_by(key, ca.issuer())?;
    let mut cert_pem = cert.pem();
    cert_pem.push_str(&ca.leaf_chain_pem());
    Ok(SignedLeaf {
        cert_pem,
        key_pem: key.serialize_pem(),
        ca_bundle_pem: ca.roots_pem(),
        not_before: params.not_before,
        not_after: params.not_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;
    use time::macros::datetime;
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

    const NOW: OffsetDateTime = datetime!(2026-03-01 12:00 UTC);

    #[rstest]
    #[case("spiffe://cluster.local/ns/shop/sa/frontend")]
    #[case("spiffe://prod.example_corp-1/ns/a/sa/b.c")]
    fn parses_valid_ids(#[case] input: &str) {
        let id = SpiffeId::parse(input).unwrap();
        assert_eq!(id.uri(), input);
    }

    #[rstest]
    #[case("https://cluster.local/ns/a/sa/b", "scheme")]
    #[case("spiffe://cluster.local", "path is missing")]
    #[case("spiffe://cluster.local/ns/a", "path must be")]
    #[case("spiffe://cluster.local/ns/a/sa/b/extra", "path must be")]
    #[case("spiffe://cluster.local/ns/a/sa/b?x=1", "query")]
    #[case("spiffe://cluster.local:8080/ns/a/sa/b", "port")]
    #[case("spiffe://Cluster.Local/ns/a/sa/b", "trust domain 'Cluster.Local'")]
    #[case("spiffe:///ns/a/sa/b", "trust domain ''")]
    #[case("spiffe://cluster.local/ns/Shop/sa/b", "namespace 'Shop'")]
    #[case("spiffe://cluster.local/ns/-a/sa/b", "namespace '-a'")]
    #[case("spiffe://cluster.local/ns/a/sa/", "service account ''")]
    #[case("spiffe://cluster.local/ns/a/sa/b_c", "service account 'b_c'")]
    fn rejects_invalid_ids(#[case] input: &str, #[case] expected: &str) {
        let err = SpiffeId::parse(input).unwrap_err().to_string();
        assert!(err.contains(expected), "{input}: {err}");
    }

    proptest::proptest! {
        #[test]
        fn valid_ids_round_trip(
            td in "[a-z0-9][a-z0-9._-]{0,30}",
            ns in "[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?",
            sa in "[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\\.[a-z0-9]{1,5}){0,2}",
        ) {
            let id = SpiffeId::new(&td, &ns, &sa).unwrap();
            proptest::prop_assert_eq!(SpiffeId::parse(&id.uri()).unwrap(), id);
        }

        #[test]
        fn parse_never_panics(input in "\\PC{0,80}") {
            let _ = SpiffeId::parse(&input);
        }
    }

    fn ca() -> CertificateAuthority {
        CertificateAuthority::generate(NOW - Duration::days(1), Duration::days(30)).unwrap()
    }

    #[test]
    fn leaf_carries_identity_usages_and_validity() {
        let ca = ca();
        let mut req = LeafRequest::new(SpiffeId::new("cluster.local", "shop", "payments").unwrap());
        req.dns_names = vec!["payments.shop.svc".into()];
        let leaf = issue_leaf(&ca, &req, NOW).unwrap();
        assert_eq!(leaf.not_before, NOW - Duration::minutes(5));
        assert_eq!(leaf.not_after, NOW + Duration::hours(24));
        let der = super::super::pem::certificates(leaf.cert_pem.as_bytes()).unwrap();
        assert_eq!(der.len(), 1);
        let (_, cert) = X509Certificate::from_der(&der[0]).unwrap();
        let sans: Vec<_> = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .clone();
        assert_eq!(
            sans,
            vec![
                GeneralName::URI("spiffe://cluster.local/ns/shop/sa/payments"),
                GeneralName::DNSName("payments.shop.svc"),
            ]
        );
        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature() && !ku.key_cert_sign());
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        assert!(!cert.basic_constraints().unwrap().unwrap().value.ca);
        assert!(ca.signed(&cert));
        assert_eq!(leaf.ca_bundle_pem, ca.cert_pem());
        assert!(!format!("{leaf:?}").contains("PRIVATE"));
    }

    #[test]
    fn leaf_never_outlives_its_issuer() {
        let ca = ca();
        let mut req = LeafRequest::new(SpiffeId::new("cluster.local", "a", "b").unwrap());
        req.lifetime = Duration::days(365);
        let leaf = issue_leaf(&ca, &req, NOW).unwrap();
        assert_eq!(leaf.not_after, ca.not_after());
    }

    #[test]
    fn refuses_expired_issuer_bad_dns_and_bad_lifetime() {
        let ca = ca();
        let mut req = LeafRequest::new(SpiffeId::new("cluster.local", "a", "b").unwrap());
        let err = issue_leaf(&ca, &req, NOW + Duration::days(60)).unwrap_err();
        assert!(matches!(err, IssueError::IssuerNotValid { .. }), "{err}");
        req.dns_names = vec!["Bad_Name".into()];
        let err = issue_leaf(&ca, &req, NOW).unwrap_err();
        assert_eq!(
            err.to_string(),
            "DNS name 'Bad_Name' is invalid: must be a lowercase DNS-1123 subdomain, optionally starting with '*.'"
        );
        req.dns_names.clear();
        req.lifetime = Duration::ZERO;
        assert!(matches!(
            issue_leaf(&ca, &req, NOW),
            Err(IssueError::InvalidLifetime(_))
        ));
    }
}
