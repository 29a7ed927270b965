//! The trust bundle and CA rotation.
//!
//! A rotation walks three states, so that no valid peer is ever rejected:
//!
//! 1. [`RotationState::AddingRoot`]: the new root joins the bundle (both trusted) while the
//!    old CA still issues; this lasts `propagation`, long enough for every workload to load
//!    the two-root bundle.
//! 2. [`RotationState::Draining`]: the new CA issues and leaves signed by the old one are
//!    reissued; the old root stays in the bundle until every leaf it signed has expired.
//! 3. [`RotationState::Stable`] with only the new root.
//!
//! Everything is a pure function of the state and `now`; [`RotationStep::next_step_at`] tells
//! the controller when to look again.

use std::fmt;

use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};

use super::{CertificateAuthority, ca, pem};

/// The roots that anchor one issuing CA (exactly one for a generated root).
#[derive(Clone, PartialEq, Eq)]
pub struct TrustedRoot {
    roots: Vec<CertificateDer<'static>>,
    issuer_fingerprint: String,
    issuer_not_after: OffsetDateTime,
}

impl fmt::Debug for TrustedRoot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustedRoot")
            .field("issuer_fingerprint", &self.issuer_fingerprint)
            .field("issuer_not_after", &self.issuer_not_after)
            .field("roots", &self.roots.len())
            .finish()
    }
}

impl TrustedRoot {
    /// The roots of `ca`, keyed by its issuing certificate.
    pub fn of(ca: &CertificateAuthority) -> Self {
        Self {
            roots: ca.roots().to_vec(),
            issuer_fingerprint: ca.fingerprint(),
            issuer_not_after: ca.not_after(),
        }
    }

    /// Roots from PEM (e.g. persisted state); the first certificate is taken as the issuer,
    /// which holds for a generated root.
    pub fn from_pem(pem_text: &str) -> Result<Self, ca::CaError> {
        let roots = pem::certificates(pem_text.as_bytes()).map_err(|message| {
            ca::CaError::InvalidCertificate {
                source_name: "trust bundle".into(),
                message,
            }
        })?;
        let first = roots
            .first()
            .ok_or_else(|| ca::CaError::InvalidCertificate {
                source_name: "trust bundle".into(),
                message: "no CERTIFICATE block found".into(),
            })?;
        let parsed = ca::parse(first, "trust bundle")?;
        let (_, issuer_not_after) = ca::validity(&parsed);
        Ok(Self {
            issuer_fingerprint: hex::encode(Sha256::digest(first.as_ref())),
            issuer_not_after,
            roots,
        })
    }

    /// The same issuer without the roots `other` has (e.g. a CA loaded from a Secret whose
    /// `ca.crt` also holds the roots of the CA it rotates to or from).
    pub(crate) fn without_roots_of(&self, other: &TrustedRoot) -> Self {
        Self {
            roots: self
                .roots
                .iter()
                .filter(|r| !other.roots.contains(r))
                .cloned()
                .collect(),
            issuer_fingerprint: self.issuer_fingerprint.clone(),
            issuer_not_after: self.issuer_not_after,
        }
    }

    /// PEM of the roots.
    pub fn pem(&self) -> String {
        self.roots
            .iter()
            .map(|der| pem::encode_certificate(der))
            .collect()
    }

    /// DER of the roots.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// SHA-256 fingerprint of the issuing certificate these roots anchor.
    pub(crate) fn issuer_fingerprint(&self) -> &str {
        &self.issuer_fingerprint
    }
}

/// Where a CA rotation stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RotationState {
    /// One CA issues and is the only one trusted.
    Stable {
        /// The active CA's roots.
        root: TrustedRoot,
    },
    /// Both trusted, the old CA still issues until `leaves_move_at`.
    AddingRoot {
        /// The CA being replaced (still issuing).
        old: TrustedRoot,
        /// The CA taking over.
        new: TrustedRoot,
        /// When the bundle has reached every workload and the new CA starts issuing.
        leaves_move_at: OffsetDateTime,
        /// Longest leaf lifetime the old CA may have issued with; bounds how long its leaves live.
        max_leaf_lifetime: Duration,
    },
    /// Both trusted, the new CA issues; the old root leaves the bundle at `old_removed_at`.
    Draining {
        /// The CA being replaced (no longer issuing).
        old: TrustedRoot,
        /// The issuing CA.
        new: TrustedRoot,
        /// The latest `notAfter` of any leaf the old CA signed.
        old_removed_at: OffsetDateTime,
    },
}

/// The outcome of [`RotationState::advance`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationStep {
    /// The state after advancing.
    pub state: RotationState,
    /// `ca.crt` of the trust bundle for this state: all trusted roots.
    pub bundle_pem: String,
    /// When to call [`RotationState::advance`] again (`None`: nothing scheduled).
    pub next_step_at: Option<OffsetDateTime>,
}

/// A rotation was requested while another is in progress, or to the same CA.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RotationError {
    /// Only a stable bundle can start a rotation.
    #[error("a CA rotation is already in progress (state {0}); wait until it completes")]
    InProgress(&'static str),
    /// The new CA is the current one.
    #[error("the new CA is the CA already in use (fingerprint {0})")]
    SameCa(String),
}

impl RotationState {
    /// A single trusted, issuing CA.
    pub fn stable(root: TrustedRoot) -> Self {
        Self::Stable { root }
    }

    /// Starts rotating to `new`: it joins the bundle now and starts issuing after
    /// `propagation`. `max_leaf_lifetime` is the longest lifetime the old CA issues with.
    pub fn begin_rotation(
        &self,
        new: TrustedRoot,
        now: OffsetDateTime,
        propagation: Duration,
        max_leaf_lifetime: Duration,
    ) -> Result<Self, RotationError> {
        match self {
            Self::Stable { root } if root.issuer_fingerprint == new.issuer_fingerprint => {
                Err(RotationError::SameCa(new.issuer_fingerprint))
            }
            Self::Stable { root } => Ok(Self::AddingRoot {
                old: root.clone(),
                new,
                leaves_move_at: now + propagation,
                max_leaf_lifetime,
            }),
            other => Err(RotationError::InProgress(other.name())),
        }
    }

    /// A bounded label for the state.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Stable { .. } => "Stable",
            Self::AddingRoot { .. } => "AddingRoot",
            Self::Draining { .. } => "Draining",
        }
    }

    /// Moves the rotation forward as far as `now` allows. `old_leaves_not_after` is the latest
    /// `notAfter` the controller has seen on a leaf signed by the old CA (if any); the old
    /// root is kept at least that long, and at least one `max_leaf_lifetime` after the new CA
    /// took over, so leaves still held in memory by a workload stay trusted.
    pub fn advance(
        &self,
        now: OffsetDateTime,
        old_leaves_not_after: Option<OffsetDateTime>,
    ) -> RotationStep {
        let mut state = self.clone();
        loop {
            let next = match &state {
                Self::AddingRoot {
                    old,
                    new,
                    leaves_move_at,
                    max_leaf_lifetime,
                } if now >= *leaves_move_at => {
                    // Leaves issued by the old CA up to now expire by now + lifetime, and never
                    // after the old issuer itself.
                    let bound = (now + *max_leaf_lifetime).min(old.issuer_not_after);
                    Self::Draining {
                        old: old.clone(),
                        new: new.clone(),
                        old_removed_at: old_leaves_not_after.map_or(bound, |t| t.max(bound)),
                    }
                }
                Self::Draining {
                    old,
                    new,
                    old_removed_at,
                } => {
                    let removed_at =
                        old_leaves_not_after.map_or(*old_removed_at, |t| t.max(*old_removed_at));
                    if now >= removed_at {
                        Self::Stable { root: new.clone() }
                    } else if removed_at != *old_removed_at {
                        Self::Draining {
                            old: old.clone(),
                            new: new.clone(),
                            old_removed_at: removed_at,
                        }
                    } else {
                        break;
                    }
                }
                _ => break,
            };
            state = next;
        }
        RotationStep {
            bundle_pem: state.bundle_pem(),
            next_step_at: state.next_step_at(),
            state,
        }
    }

    /// When this state ends by itself.
    pub fn next_step_at(&self) -> Option<OffsetDateTime> {
        match self {
            Self::Stable { .. } => None,
            Self::AddingRoot { leaves_move_at, .. } => Some(*leaves_move_at),
            Self::Draining { old_removed_at, .. } => Some(*old_removed_at),
        }
    }

    /// Every trusted root set, the issuing one last.
    pub fn trusted(&self) -> Vec<&TrustedRoot> {
        match self {
            Self::Stable { root } => vec![root],
            Self::AddingRoot { old, new, .. } => vec![new, old],
            Self::Draining { old, new, .. } => vec![old, new],
        }
    }

    /// `ca.crt` of the trust bundle: every trusted root, without duplicates.
    pub fn bundle_pem(&self) -> String {
        let mut seen: Vec<&CertificateDer<'static>> = Vec::new();
        let mut out = String::new();
        for root in self.trusted() {
            for der in &root.roots {
                if !seen.contains(&der) {
                    seen.push(der);
                    out.push_str(&pem::encode_certificate(der));
                }
            }
        }
        out
    }

    /// The CA that issues leaves in this state.
    pub fn issuing(&self) -> &TrustedRoot {
        match self {
            Self::Stable { root } => root,
            Self::AddingRoot { old, .. } => old,
            Self::Draining { new, .. } => new,
        }
    }

    /// A CA still trusted whose leaves must move to the issuing one.
    pub fn retired(&self) -> Option<&TrustedRoot> {
        match self {
            Self::Draining { old, .. } => Some(old),
            _ => None,
        }
    }
}

/// The latest `notAfter` among leaves (PEM `tls.crt` values) signed by `issuer`.
pub fn latest_not_after_signed_by<'a>(
    issuer: &CertificateAuthority,
    leaves: impl IntoIterator<Item = &'a [u8]>,
) -> Option<OffsetDateTime> {
    leaves
        .into_iter()
        .filter_map(|pem_bytes| pem::certificates(pem_bytes).ok()?.into_iter().next())
        .filter_map(|der| {
            let parsed = ca::parse(&der, "leaf").ok()?;
            issuer.signed(&parsed).then(|| ca::validity(&parsed).1)
        })
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const T0: OffsetDateTime = datetime!(2026-01-01 00:00 UTC);

    fn roots() -> (CertificateAuthority, CertificateAuthority) {
        (
            CertificateAuthority::generate(T0, Duration::days(3650)).unwrap(),
            CertificateAuthority::generate(T0, Duration::days(3650)).unwrap(),
        )
    }

    #[test]
    fn walks_add_then_move_then_drop() {
        let (a, b) = roots();
        let (ra, rb) = (TrustedRoot::of(&a), TrustedRoot::of(&b));
        let stable = RotationState::stable(ra.clone());
        assert_eq!(stable.bundle_pem(), a.cert_pem());
        let s1 = stable
            .begin_rotation(rb.clone(), T0, Duration::hours(1), Duration::hours(24))
            .unwrap();
        let step = s1.advance(T0 + Duration::minutes(30), None);
        assert_eq!(step.state.name(), "AddingRoot");
        assert_eq!(step.state.issuing(), &ra);
        assert_eq!(step.next_step_at, Some(T0 + Duration::hours(1)));
        assert!(step.bundle_pem.contains(&a.cert_pem()) && step.bundle_pem.contains(&b.cert_pem()));

        let switch = T0 + Duration::hours(2);
        let step = step.state.advance(switch, Some(T0 + Duration::hours(20)));
        assert_eq!(step.state.name(), "Draining");
        assert_eq!(step.state.issuing(), &rb);
        assert_eq!(step.state.retired(), Some(&ra));
        // The lifetime bound wins over the observed leaves.
        assert_eq!(step.next_step_at, Some(switch + Duration::hours(24)));

        // A later observation of a longer-lived old leaf extends the drain.
        let later = switch + Duration::hours(30);
        let step2 = step.state.advance(switch + Duration::hours(1), Some(later));
        assert_eq!(step2.next_step_at, Some(later));
        let step3 = step2.state.advance(later - Duration::seconds(1), None);
        assert_eq!(step3.state.name(), "Draining");
        let done = step3.state.advance(later, None);
        assert_eq!(done.state, RotationState::stable(rb));
        assert_eq!(done.bundle_pem, b.cert_pem());
        assert_eq!(done.next_step_at, None);
    }

    #[test]
    fn a_late_controller_jumps_through_every_due_step() {
        let (a, b) = roots();
        let s = RotationState::stable(TrustedRoot::of(&a))
            .begin_rotation(
                TrustedRoot::of(&b),
                T0,
                Duration::hours(1),
                Duration::hours(24),
            )
            .unwrap();
        // AddingRoot is due at T0+1h; at T0+3d the old leaves (<= switch + 24h) are gone too,
        // but the drain is measured from when the new CA actually took over (now).
        let step = s.advance(T0 + Duration::days(3), None);
        assert_eq!(step.state.name(), "Draining");
        let step = step.state.advance(T0 + Duration::days(4), None);
        assert_eq!(step.state.name(), "Stable");
    }

    #[test]
    fn refuses_overlapping_or_no_op_rotations() {
        let (a, b) = roots();
        let stable = RotationState::stable(TrustedRoot::of(&a));
        assert!(matches!(
            stable.begin_rotation(TrustedRoot::of(&a), T0, Duration::ZERO, Duration::ZERO),
            Err(RotationError::SameCa(_))
        ));
        let adding = stable
            .begin_rotation(TrustedRoot::of(&b), T0, Duration::ZERO, Duration::ZERO)
            .unwrap();
        assert_eq!(
            adding
                .begin_rotation(TrustedRoot::of(&a), T0, Duration::ZERO, Duration::ZERO)
                .unwrap_err()
                .to_string(),
            "a CA rotation is already in progress (state AddingRoot); wait until it completes"
        );
    }

    #[test]
    fn root_round_trips_through_pem() {
        let (a, _) = roots();
        let r = TrustedRoot::from_pem(&a.cert_pem()).unwrap();
        assert_eq!(r, TrustedRoot::of(&a));
    }
}
