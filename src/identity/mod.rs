//! Workload identity: the CA that issues and rotates east-west mTLS certificates.
//!
//! The operator's CA (a self-signed ECDSA P-256 root it generates, or a CA/intermediate the
//! user brings) issues short-lived leaf certificates whose only identity is a SPIFFE URI SAN
//! `spiffe://<trustDomain>/ns/<ns>/sa/<sa>`. Everything here is a pure function
//! of its inputs: the current time is always passed in (`now`), and the only randomness is
//! the generation of fresh private keys.
//!
//! - [`ca`]: generate or load the issuing [`CertificateAuthority`].
//! - [`issue`]: [`SpiffeId`] and leaf issuance ([`issue_leaf`]).
//! - [`rotation`]: should a stored leaf Secret be kept (until when) or reissued (why).
//! - [`bundle`]: the trust bundle and the CA rotation state machine.
//! - [`ca_rotation`]: what the CA Secret must become as a requested rotation proceeds.
//! - [`serving`]: the webhook's own serving certificate (DNS/IP SANs) and when to renew it.
//! - [`secrets`]: the Secret/ConfigMap builders and parsers (the CA read back from its Secret).
//!
//! The apiserver side (CA bootstrap, the rotation driver, the webhook's serving certificate)
//! is `crate::certs`.

pub mod bundle;
pub mod ca;
pub mod ca_rotation;
pub mod issue;
pub(crate) mod pem;
pub mod rotation;
pub mod secrets;
pub mod serving;

pub use bundle::{RotationState, RotationStep, TrustedRoot};
pub use ca::{CaError, CertificateAuthority};
pub use issue::{IssueError, IssuedLeaf, LeafRequest, SpiffeId, SpiffeIdError, issue_leaf};
pub use rotation::{Decision, ExpectedIdentity, ReissueReason, StoredSecret, decide};

/// Secret/ConfigMap data key of the certificate (leaf first, then intermediates).
pub(crate) const TLS_CRT: &str = "tls.crt";
/// Secret data key of the PKCS#8 private key.
pub(crate) const TLS_KEY: &str = "tls.key";
/// Secret/ConfigMap data key of the trusted roots.
pub(crate) const CA_CRT: &str = "ca.crt";

/// Default trust domain when none is configured.
pub(crate) const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
/// Default leaf lifetime: 24 hours.
pub(crate) const DEFAULT_LEAF_LIFETIME: time::Duration = time::Duration::hours(24);
/// Default lifetime of a generated root: 10 years.
pub const DEFAULT_CA_LIFETIME: time::Duration = time::Duration::days(3650);
/// How far `notBefore` is backdated so peers with a slightly slow clock accept a fresh leaf.
pub(crate) const CLOCK_SKEW_ALLOWANCE: time::Duration = time::Duration::minutes(5);

/// `t` as RFC 3339 (`2026-01-01T00:00:00Z`), for messages, annotations and CLI output.
pub(crate) fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}
