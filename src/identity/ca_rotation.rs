//! CA rotation of the operator's CA Secret, decided purely.
//!
//! The user asks for a rotation by annotating the CA Secret
//! (`kubectl -n apiguard-system annotate secret apiguard-ca apiguard.dev/rotate=requested`).
//! The state of a rotation lives in the Secret itself, so whichever replica leads next carries
//! it on:
//!
//! | state        | `tls.crt`/`tls.key` (issues) | extra keys              | `ca.crt`        | annotation `apiguard.dev/ca-rotation`        |
//! |--------------|------------------------------|-------------------------|-----------------|----------------------------------------------|
//! | Stable       | the CA                       | none                    | its roots       | absent                                       |
//! | AddingRoot   | the old CA                   | `next.crt`, `next.key`  | old + new roots | `{"state":"AddingRoot","leavesMoveAt":..}`   |
//! | Draining     | the new CA                   | `previous.crt` (roots)  | old + new roots | `{"state":"Draining","oldRemovedAt":..}`     |
//!
//! so [`super::secrets::ca_from_secret`] always yields the issuing CA with every trusted root.
//! `plan` reads the Secret, walks [`RotationState`] forward to `now` and says what the
//! Secret must become (if anything) and when to look again.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use super::ca::{CaError, PemSource};
use super::secrets::{SecretError, bytes, ca_from_secret};
use super::{
    CA_CRT, CertificateAuthority, RotationState, RotationStep, TLS_CRT, TLS_KEY, TrustedRoot,
    rfc3339,
};
use crate::api::names::annotations::{
    CA_ROTATION_STATE as STATE_ANNOTATION, NOT_AFTER, ROTATE_CA as ROTATE_ANNOTATION,
};

/// The value of the `apiguard.dev/rotate` annotation that starts a rotation.
pub(crate) const ROTATE_REQUESTED: &str = "requested";
/// Data key of the next CA's certificate while its root is being added.
pub const NEXT_CRT: &str = "next.crt";
/// Data key of the next CA's private key while its root is being added.
pub const NEXT_KEY: &str = "next.key";
/// Data key of the previous CA's roots while its leaves drain.
pub const PREVIOUS_CRT: &str = "previous.crt";

/// How a rotation is paced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotationSettings {
    /// How long both roots are trusted before the new CA issues (every workload must have
    /// loaded the two-root bundle by then).
    pub propagation: Duration,
    /// The longest lifetime the old CA issues leaves with: its root stays trusted that long
    /// after the new CA took over.
    pub max_leaf_lifetime: Duration,
}

/// The persisted part of a rotation in progress (annotation [`STATE_ANNOTATION`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all_fields = "camelCase", deny_unknown_fields)]
enum Persisted {
    AddingRoot {
        leaves_move_at: String,
        max_leaf_lifetime_seconds: i64,
    },
    Draining {
        old_removed_at: String,
    },
}

/// Why the CA Secret's rotation state cannot be used. Nothing is written in that case: the
/// current CA keeps issuing.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CaRotationError {
    /// The issuing CA or a required key of the Secret is unusable.
    #[error(transparent)]
    Secret(Box<SecretError>),
    /// A CA stored under another key (`next.*`, `previous.crt`) is unusable.
    #[error(transparent)]
    StoredCa(Box<CaError>),
    /// The state annotation is not what apiguard writes.
    #[error(
        "Secret {namespace}/{name} annotation {STATE_ANNOTATION}: {message}; remove the annotation and the keys next.crt, next.key, previous.crt to abandon the rotation"
    )]
    BadState {
        namespace: String,
        name: String,
        message: String,
    },
    /// Generating the new CA failed.
    #[error("generating the new CA for Secret {namespace}/{name}: {source}")]
    Generate {
        namespace: String,
        name: String,
        #[source]
        source: Box<CaError>,
    },
}

impl From<SecretError> for CaRotationError {
    fn from(e: SecretError) -> Self {
        Self::Secret(Box::new(e))
    }
}

impl From<CaError> for CaRotationError {
    fn from(e: CaError) -> Self {
        Self::StoredCa(Box::new(e))
    }
}

/// What [`plan`] decided.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// The state the Secret is in after the plan ("Stable", "AddingRoot", "Draining").
    pub state: &'static str,
    /// The state it was in before.
    pub previous_state: &'static str,
    /// The Secret to write (the input with its data and annotations changed; same
    /// resourceVersion, so the write is conditional), `None` when it is already right.
    pub write: Option<Secret>,
    /// When to plan again without a change of the Secret (`None`: only on a change).
    pub next_step_at: Option<OffsetDateTime>,
    /// Things the user should know (a request ignored, and why).
    pub notes: Vec<String>,
}

/// Decides what the CA Secret must become at `now`: starts a requested rotation (the new CA
/// comes from `generate`, called only then), moves a rotation in progress forward, or nothing.
/// `old_leaves_not_after`: the latest `notAfter` seen on a leaf signed by the old CA, if known
/// (the old root is kept at least that long).
pub(crate) fn plan(
    secret: &Secret,
    now: OffsetDateTime,
    settings: RotationSettings,
    old_leaves_not_after: Option<OffsetDateTime>,
    generate: impl FnOnce(OffsetDateTime) -> Result<CertificateAuthority, CaError>,
) -> Result<Plan, CaRotationError> {
    let target = CaSecret::of(secret);
    let current = ca_from_secret(secret, now)?;
    // The state as stored, with the CA that is not issuing (if any).
    let (state, mut next_ca) = target.stored_state(&current, now)?;
    let previous_state = state.name();
    let requested = target.apply_request(state, now, settings, generate)?;
    if let Some(started) = requested.started_with {
        next_ca = Some(started);
    }
    if let RotationState::Stable { .. } = requested.state {
        // No rotation and none started: the Secret is the user's or ensure_ca's, untouched.
        return Ok(Plan {
            state: previous_state,
            previous_state,
            write: None,
            next_step_at: None,
            notes: requested.notes,
        });
    }
    let step = requested.state.advance(now, old_leaves_not_after);
    let want = target.wanted(&current, next_ca.as_ref(), &step, requested.drop_request)?;
    let write = (want != target.stored).then(|| {
        let mut out = secret.clone();
        out.data = Some(want.data);
        out.metadata.annotations = Some(want.annotations);
        out
    });
    Ok(Plan {
        state: step.state.name(),
        previous_state,
        write,
        next_step_at: step.next_step_at,
        notes: requested.notes,
    })
}

/// The data and annotations of a CA Secret: what a plan reads and may rewrite.
#[derive(Clone, PartialEq)]
struct SecretContent {
    data: BTreeMap<String, ByteString>,
    annotations: BTreeMap<String, String>,
}

/// The CA Secret being planned: names it in errors and reads its keys.
struct CaSecret {
    namespace: String,
    name: String,
    stored: SecretContent,
}

/// The state after a rotation request (if any) was looked at.
struct Requested {
    state: RotationState,
    /// The new CA of a rotation this request started.
    started_with: Option<CertificateAuthority>,
    /// Whether the write removes the request annotation.
    drop_request: bool,
    /// Things the user should know (a request ignored, and why).
    notes: Vec<String>,
}

impl CaSecret {
    fn of(secret: &Secret) -> Self {
        Self {
            namespace: secret.metadata.namespace.clone().unwrap_or_default(),
            name: secret.metadata.name.clone().unwrap_or_default(),
            stored: SecretContent {
                data: secret.data.clone().unwrap_or_default(),
                annotations: secret.metadata.annotations.clone().unwrap_or_default(),
            },
        }
    }

    fn bad_state(&self, message: String) -> CaRotationError {
        CaRotationError::BadState {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            message,
        }
    }

    /// The bytes of data key `k`, which must be present.
    fn key(&self, k: &'static str) -> Result<&[u8], CaRotationError> {
        self.stored
            .data
            .get(k)
            .map(|b| b.0.as_slice())
            .ok_or_else(|| {
                CaRotationError::from(SecretError::MissingKey {
                    namespace: self.namespace.clone(),
                    name: self.name.clone(),
                    key: k,
                })
            })
    }

    /// The rotation state the Secret stores (annotation [`STATE_ANNOTATION`]), with the next
    /// CA while its root is being added.
    fn stored_state(
        &self,
        current: &CertificateAuthority,
        now: OffsetDateTime,
    ) -> Result<(RotationState, Option<CertificateAuthority>), CaRotationError> {
        let Some(json) = self.stored.annotations.get(STATE_ANNOTATION) else {
            return Ok((RotationState::stable(TrustedRoot::of(current)), None));
        };
        let persisted = serde_json::from_str::<Persisted>(json)
            .map_err(|e| self.bad_state(format!("not a rotation state ({e})")))?;
        match persisted {
            Persisted::AddingRoot {
                leaves_move_at,
                max_leaf_lifetime_seconds,
            } => {
                let (state, next) =
                    self.adding_root(current, &leaves_move_at, max_leaf_lifetime_seconds, now)?;
                Ok((state, Some(next)))
            }
            Persisted::Draining { old_removed_at } => {
                Ok((self.draining(current, &old_removed_at)?, None))
            }
        }
    }

    /// The stored AddingRoot state, and the next CA (keys `next.crt`, `next.key`).
    fn adding_root(
        &self,
        current: &CertificateAuthority,
        leaves_move_at: &str,
        max_leaf_lifetime_seconds: i64,
        now: OffsetDateTime,
    ) -> Result<(RotationState, CertificateAuthority), CaRotationError> {
        let leaves_move_at =
            parse_time(leaves_move_at).map_err(|e| self.bad_state(format!("leavesMoveAt: {e}")))?;
        if max_leaf_lifetime_seconds < 0 {
            return Err(self.bad_state(format!(
                "maxLeafLifetimeSeconds is negative ({max_leaf_lifetime_seconds})"
            )));
        }
        let next = CertificateAuthority::from_pem(
            self.key(NEXT_CRT)?,
            self.key(NEXT_KEY)?,
            None,
            PemSource::secret_keys(&self.namespace, &self.name, NEXT_CRT, NEXT_KEY, NEXT_CRT),
            now,
        )?;
        let new = TrustedRoot::of(&next);
        let old = TrustedRoot::of(current).without_roots_of(&new);
        let state = RotationState::AddingRoot {
            old,
            new,
            leaves_move_at,
            max_leaf_lifetime: Duration::seconds(max_leaf_lifetime_seconds),
        };
        Ok((state, next))
    }

    /// The stored Draining state (the old roots in key `previous.crt`).
    fn draining(
        &self,
        current: &CertificateAuthority,
        old_removed_at: &str,
    ) -> Result<RotationState, CaRotationError> {
        let old_removed_at =
            parse_time(old_removed_at).map_err(|e| self.bad_state(format!("oldRemovedAt: {e}")))?;
        let source_name = format!("Secret {}/{} key {PREVIOUS_CRT}", self.namespace, self.name);
        let previous = std::str::from_utf8(self.key(PREVIOUS_CRT)?).map_err(|_| {
            CaError::InvalidCertificate {
                source_name: source_name.clone(),
                message: "not UTF-8 PEM text".into(),
            }
        })?;
        let old = TrustedRoot::from_pem(previous).map_err(|e| match e {
            CaError::InvalidCertificate { message, .. } => CaError::InvalidCertificate {
                source_name,
                message,
            },
            other => other,
        })?;
        let new = TrustedRoot::of(current).without_roots_of(&old);
        Ok(RotationState::Draining {
            old,
            new,
            old_removed_at,
        })
    }

    /// A request starts a rotation from Stable; during one it is dropped, with the reason.
    fn apply_request(
        &self,
        state: RotationState,
        now: OffsetDateTime,
        settings: RotationSettings,
        generate: impl FnOnce(OffsetDateTime) -> Result<CertificateAuthority, CaError>,
    ) -> Result<Requested, CaRotationError> {
        let (namespace, name) = (&self.namespace, &self.name);
        let mut notes = Vec::new();
        let mut drop_request = false;
        let mut started_with = None;
        let mut state = state;
        match self.stored.annotations.get(ROTATE_ANNOTATION).map(String::as_str) {
            None => {}
            Some(ROTATE_REQUESTED) if matches!(state, RotationState::Stable { .. }) => {
                let next = generate(now).map_err(|source| CaRotationError::Generate {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    source: Box::new(source),
                })?;
                state = state
                    .begin_rotation(
                        TrustedRoot::of(&next),
                        now,
                        settings.propagation,
                        settings.max_leaf_lifetime,
                    )
                    .map_err(|e| self.bad_state(e.to_string()))?;
                started_with = Some(next);
                drop_request = true;
            }
            Some(ROTATE_REQUESTED) => {
                notes.push(format!(
                    "ignored {ROTATE_ANNOTATION}={ROTATE_REQUESTED} on Secret {namespace}/{name}: a CA rotation is already in progress (state {}); request it again once the state is Stable",
                    state.name()
                ));
                drop_request = true;
            }
            Some(other) => notes.push(format!(
                "ignored {ROTATE_ANNOTATION}={other:?} on Secret {namespace}/{name}: the only value is {ROTATE_REQUESTED:?}"
            )),
        }
        Ok(Requested {
            state,
            started_with,
            drop_request,
            notes,
        })
    }

    /// The data and annotations the Secret stores for `step`.
    fn wanted(
        &self,
        current: &CertificateAuthority,
        next_ca: Option<&CertificateAuthority>,
        step: &RotationStep,
        drop_request: bool,
    ) -> Result<SecretContent, CaRotationError> {
        let mut want = self.stored.clone();
        self.store_issuer(&mut want, current, next_ca, &step.state)?;
        want.data.insert(CA_CRT.into(), bytes(&step.bundle_pem));
        want.data.remove(NEXT_CRT);
        want.data.remove(NEXT_KEY);
        want.data.remove(PREVIOUS_CRT);
        if drop_request {
            want.annotations.remove(ROTATE_ANNOTATION);
        }
        self.store_state(&mut want, next_ca, &step.state)?;
        // Keep the stored bytes when only the order of equivalent PEM differs: rewrite only
        // what changed in meaning.
        if same_certificates(self.stored.data.get(CA_CRT), want.data.get(CA_CRT))
            && let Some(v) = self.stored.data.get(CA_CRT)
        {
            want.data.insert(CA_CRT.into(), v.clone());
        }
        Ok(want)
    }

    /// `tls.crt`/`tls.key` (and `notAfter`) of the CA `state` issues from, when that is no
    /// longer the current one.
    fn store_issuer(
        &self,
        want: &mut SecretContent,
        current: &CertificateAuthority,
        next_ca: Option<&CertificateAuthority>,
        state: &RotationState,
    ) -> Result<(), CaRotationError> {
        let issuing = state.issuing().issuer_fingerprint();
        if issuing == current.fingerprint() {
            return Ok(());
        }
        let next = next_ca
            .filter(|n| n.fingerprint() == issuing)
            .ok_or_else(|| {
                self.bad_state(format!(
                    "state {} issues from a CA this Secret does not hold",
                    state.name()
                ))
            })?;
        want.data
            .insert(TLS_CRT.into(), bytes(&next.cert_chain_pem()));
        want.data.insert(TLS_KEY.into(), bytes(&next.key_pem()));
        want.annotations
            .insert(NOT_AFTER.into(), rfc3339(next.not_after()));
        Ok(())
    }

    /// The state annotation of `state`, with the keys that state keeps (`next.*` while the
    /// root is added, `previous.crt` while the old leaves drain).
    fn store_state(
        &self,
        want: &mut SecretContent,
        next_ca: Option<&CertificateAuthority>,
        state: &RotationState,
    ) -> Result<(), CaRotationError> {
        match state {
            RotationState::Stable { .. } => {
                want.annotations.remove(STATE_ANNOTATION);
            }
            RotationState::AddingRoot {
                new,
                leaves_move_at,
                max_leaf_lifetime,
                ..
            } => {
                let next = next_ca
                    .filter(|n| n.fingerprint() == new.issuer_fingerprint())
                    .ok_or_else(|| self.bad_state("AddingRoot without the next CA".into()))?;
                want.data
                    .insert(NEXT_CRT.into(), bytes(&next.cert_chain_pem()));
                want.data.insert(NEXT_KEY.into(), bytes(&next.key_pem()));
                want.annotations.insert(
                    STATE_ANNOTATION.into(),
                    persist(&Persisted::AddingRoot {
                        leaves_move_at: rfc3339(*leaves_move_at),
                        max_leaf_lifetime_seconds: max_leaf_lifetime.whole_seconds(),
                    }),
                );
            }
            RotationState::Draining {
                old,
                old_removed_at,
                ..
            } => {
                want.data.insert(PREVIOUS_CRT.into(), bytes(&old.pem()));
                want.annotations.insert(
                    STATE_ANNOTATION.into(),
                    persist(&Persisted::Draining {
                        old_removed_at: rfc3339(*old_removed_at),
                    }),
                );
            }
        }
        Ok(())
    }
}

/// Whether two `ca.crt` values hold the same set of certificates (any order).
fn same_certificates(a: Option<&ByteString>, b: Option<&ByteString>) -> bool {
    let set = |v: Option<&ByteString>| {
        let mut certs = super::pem::certificates(&v?.0).ok()?;
        certs.sort_by(|x, y| x.as_ref().cmp(y.as_ref()));
        Some(certs)
    };
    matches!((set(a), set(b)), (Some(x), Some(y)) if x == y)
}

fn persist(state: &Persisted) -> String {
    // Serializing two string/integer fields cannot fail.
    serde_json::to_string(state).unwrap_or_default()
}

fn parse_time(s: &str) -> Result<OffsetDateTime, String> {
    let ts: k8s_openapi::jiff::Timestamp = s
        .parse()
        .map_err(|e| format!("{s:?} is not an RFC 3339 time ({e})"))?;
    OffsetDateTime::from_unix_timestamp_nanos(ts.as_nanosecond())
        .map_err(|e| format!("{s:?} is out of range ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn data_keys(secret: &Secret) -> Vec<String> {
        secret
            .data
            .as_ref()
            .map(|d| d.keys().cloned().collect())
            .unwrap_or_default()
    }
    use crate::identity::secrets::ca_secret;
    use time::macros::datetime;

    const T0: OffsetDateTime = datetime!(2026-03-01 00:00 UTC);
    const NS: &str = "apiguard-system";
    const NAME: &str = "apiguard-ca";

    fn settings() -> RotationSettings {
        RotationSettings {
            propagation: Duration::minutes(10),
            max_leaf_lifetime: Duration::hours(24),
        }
    }

    fn gen_ca() -> CertificateAuthority {
        CertificateAuthority::generate(T0 - Duration::days(1), Duration::days(3650)).unwrap()
    }

    fn no_generate(_: OffsetDateTime) -> Result<CertificateAuthority, CaError> {
        panic!("no CA may be generated here")
    }

    fn annotate(secret: &mut Secret, k: &str, v: &str) {
        secret
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(k.into(), v.into());
    }

    fn ann(secret: &Secret, k: &str) -> Option<String> {
        secret.metadata.annotations.as_ref()?.get(k).cloned()
    }

    fn roots_in_bundle(secret: &Secret) -> usize {
        let d = secret.data.as_ref().unwrap();
        crate::identity::pem::certificates(&d[CA_CRT].0)
            .unwrap()
            .len()
    }

    /// Stable old CA, then a requested rotation to `new`.
    fn requested(old: &CertificateAuthority) -> Secret {
        let mut s = ca_secret(NAME, NS, old);
        s.metadata.resource_version = Some("7".into());
        annotate(&mut s, ROTATE_ANNOTATION, ROTATE_REQUESTED);
        s
    }

    fn start(old: &CertificateAuthority, new: &CertificateAuthority) -> Secret {
        let new_pem = (new.cert_pem(), new.key_pem());
        plan(&requested(old), T0, settings(), None, move |_| {
            CertificateAuthority::from_pem(
                new_pem.0.as_bytes(),
                new_pem.1.as_bytes(),
                None,
                PemSource::described("test"),
                T0,
            )
        })
        .unwrap()
        .write
        .unwrap()
    }

    #[test]
    fn a_stable_secret_without_a_request_is_left_alone() {
        let s = ca_secret(NAME, NS, &gen_ca());
        let p = plan(&s, T0, settings(), None, no_generate).unwrap();
        assert_eq!((p.previous_state, p.state), ("Stable", "Stable"));
        assert!(p.write.is_none());
        assert_eq!(p.next_step_at, None);
        assert!(p.notes.is_empty());
    }

    #[test]
    fn a_request_adds_the_new_root_while_the_old_ca_issues() {
        let (old, new) = (gen_ca(), gen_ca());
        let s = start(&old, &new);
        // Conditional write: the resourceVersion read is kept.
        assert_eq!(s.metadata.resource_version.as_deref(), Some("7"));
        assert_eq!(ann(&s, ROTATE_ANNOTATION), None, "the request is consumed");
        let state: serde_json::Value =
            serde_json::from_str(&ann(&s, STATE_ANNOTATION).unwrap()).unwrap();
        assert_eq!(state["state"], "AddingRoot");
        assert_eq!(state["leavesMoveAt"], "2026-03-01T00:10:00Z");
        assert_eq!(state["maxLeafLifetimeSeconds"], 86400);
        assert_eq!(
            data_keys(&s),
            ["ca.crt", "next.crt", "next.key", "tls.crt", "tls.key"]
        );
        let loaded = ca_from_secret(&s, T0).unwrap();
        assert_eq!(loaded.fingerprint(), old.fingerprint(), "the old CA issues");
        assert_eq!(loaded.roots().len(), 2);
        assert!(loaded.roots().contains(new.cert_der()));
        assert_eq!(roots_in_bundle(&s), 2);

        // Nothing more to do before leavesMoveAt; the plan says when to look again.
        let p = plan(&s, T0 + Duration::minutes(5), settings(), None, no_generate).unwrap();
        assert_eq!(p.state, "AddingRoot");
        assert!(p.write.is_none(), "{:?}", p.write);
        assert_eq!(p.next_step_at, Some(T0 + Duration::minutes(10)));
    }

    #[test]
    fn after_propagation_the_new_ca_issues_and_the_old_root_drains() {
        let (old, new) = (gen_ca(), gen_ca());
        let s = start(&old, &new);
        let at = T0 + Duration::minutes(10);
        let p = plan(&s, at, settings(), None, no_generate).unwrap();
        assert_eq!((p.previous_state, p.state), ("AddingRoot", "Draining"));
        assert_eq!(p.next_step_at, Some(at + Duration::hours(24)));
        let d = p.write.unwrap();
        assert_eq!(
            data_keys(&d),
            ["ca.crt", "previous.crt", "tls.crt", "tls.key"]
        );
        let loaded = ca_from_secret(&d, at).unwrap();
        assert_eq!(loaded.fingerprint(), new.fingerprint(), "the new CA issues");
        assert_eq!(loaded.roots().len(), 2);
        assert!(loaded.roots().contains(old.cert_der()));
        assert_eq!(ann(&d, NOT_AFTER), Some(rfc3339(new.not_after())));
        let state: serde_json::Value =
            serde_json::from_str(&ann(&d, STATE_ANNOTATION).unwrap()).unwrap();
        assert_eq!(
            state,
            serde_json::json!({"state": "Draining", "oldRemovedAt": "2026-03-02T00:10:00Z"})
        );

        // Draining holds until oldRemovedAt, then only the new root is left.
        let p = plan(&d, at + Duration::hours(23), settings(), None, no_generate).unwrap();
        assert!(p.write.is_none());
        // A longer-lived old leaf, once seen, keeps the old root longer.
        let late = at + Duration::hours(30);
        let p = plan(
            &d,
            at + Duration::hours(23),
            settings(),
            Some(late),
            no_generate,
        )
        .unwrap();
        assert_eq!(p.next_step_at, Some(late));
        assert!(p.write.is_some());

        let done = at + Duration::hours(24);
        let p = plan(&d, done, settings(), None, no_generate).unwrap();
        assert_eq!((p.previous_state, p.state), ("Draining", "Stable"));
        assert_eq!(p.next_step_at, None);
        let st = p.write.unwrap();
        assert_eq!(data_keys(&st), ["ca.crt", "tls.crt", "tls.key"]);
        assert_eq!(ann(&st, STATE_ANNOTATION), None);
        assert_eq!(roots_in_bundle(&st), 1);
        let loaded = ca_from_secret(&st, done).unwrap();
        assert_eq!(loaded.fingerprint(), new.fingerprint());
        assert_eq!(loaded.roots_pem(), new.cert_pem());
        // And it stays there.
        let p = plan(&st, done, settings(), None, no_generate).unwrap();
        assert!(p.write.is_none() && p.state == "Stable");
    }

    #[test]
    fn a_late_leader_moves_to_draining_measured_from_now() {
        let (old, new) = (gen_ca(), gen_ca());
        let s = start(&old, &new);
        let late = T0 + Duration::days(3);
        let p = plan(&s, late, settings(), None, no_generate).unwrap();
        assert_eq!(p.state, "Draining");
        assert_eq!(p.next_step_at, Some(late + Duration::hours(24)));
    }

    #[test]
    fn a_request_during_a_rotation_is_dropped_with_the_reason() {
        let (old, new) = (gen_ca(), gen_ca());
        let mut s = start(&old, &new);
        annotate(&mut s, ROTATE_ANNOTATION, ROTATE_REQUESTED);
        let p = plan(&s, T0 + Duration::minutes(1), settings(), None, no_generate).unwrap();
        assert_eq!(p.state, "AddingRoot");
        assert_eq!(
            p.notes,
            [
                "ignored apiguard.dev/rotate=requested on Secret apiguard-system/apiguard-ca: a CA rotation is already in progress (state AddingRoot); request it again once the state is Stable"
            ]
        );
        let w = p.write.unwrap();
        assert_eq!(ann(&w, ROTATE_ANNOTATION), None);
        // Nothing else changed: the same next CA is kept.
        assert_eq!(w.data, s.data);
        assert_eq!(ann(&w, STATE_ANNOTATION), ann(&s, STATE_ANNOTATION));
    }

    #[test]
    fn an_unknown_request_value_is_reported_and_left() {
        let mut s = ca_secret(NAME, NS, &gen_ca());
        annotate(&mut s, ROTATE_ANNOTATION, "yes");
        let p = plan(&s, T0, settings(), None, no_generate).unwrap();
        assert!(p.write.is_none());
        assert_eq!(
            p.notes,
            [
                "ignored apiguard.dev/rotate=\"yes\" on Secret apiguard-system/apiguard-ca: the only value is \"requested\""
            ]
        );
    }

    #[test]
    fn bad_state_is_an_error_naming_the_secret_and_nothing_is_written() {
        let (old, new) = (gen_ca(), gen_ca());
        let mut s = start(&old, &new);
        annotate(&mut s, STATE_ANNOTATION, "{\"state\":\"Sideways\"}");
        let err = plan(&s, T0, settings(), None, no_generate)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "Secret apiguard-system/apiguard-ca annotation apiguard.dev/ca-rotation: not a rotation state (unknown variant `Sideways`"
            ),
            "{err}"
        );

        annotate(
            &mut s,
            STATE_ANNOTATION,
            "{\"state\":\"AddingRoot\",\"leavesMoveAt\":\"soon\",\"maxLeafLifetimeSeconds\":60}",
        );
        let err = plan(&s, T0, settings(), None, no_generate)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("Secret apiguard-system/apiguard-ca annotation apiguard.dev/ca-rotation: leavesMoveAt: \"soon\" is not an RFC 3339 time"),
            "{err}"
        );

        let mut s = start(&old, &new);
        s.data.as_mut().unwrap().remove(NEXT_KEY);
        assert_eq!(
            plan(&s, T0, settings(), None, no_generate)
                .unwrap_err()
                .to_string(),
            "Secret apiguard-system/apiguard-ca has no data key next.key"
        );
        let mut s = start(&old, &new);
        s.data
            .as_mut()
            .unwrap()
            .insert(NEXT_KEY.into(), bytes(&old.key_pem()));
        assert_eq!(
            plan(&s, T0, settings(), None, no_generate)
                .unwrap_err()
                .to_string(),
            "Secret apiguard-system/apiguard-ca key next.key does not match the public key of the certificate in Secret apiguard-system/apiguard-ca key next.crt"
        );
    }

    #[test]
    fn draining_without_the_previous_roots_is_an_error() {
        let (old, new) = (gen_ca(), gen_ca());
        let s = start(&old, &new);
        let mut d = plan(&s, T0 + Duration::hours(1), settings(), None, no_generate)
            .unwrap()
            .write
            .unwrap();
        d.data.as_mut().unwrap().remove(PREVIOUS_CRT);
        assert_eq!(
            plan(&d, T0 + Duration::hours(2), settings(), None, no_generate)
                .unwrap_err()
                .to_string(),
            "Secret apiguard-system/apiguard-ca has no data key previous.crt"
        );
        d.data
            .as_mut()
            .unwrap()
            .insert(PREVIOUS_CRT.into(), bytes("garbage"));
        let err = plan(&d, T0 + Duration::hours(2), settings(), None, no_generate)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("Secret apiguard-system/apiguard-ca key previous.crt: "),
            "{err}"
        );
    }

    #[test]
    fn a_broken_issuing_ca_is_reported_not_replaced() {
        let mut s = requested(&gen_ca());
        s.data.as_mut().unwrap().remove(TLS_KEY);
        assert_eq!(
            plan(&s, T0, settings(), None, no_generate)
                .unwrap_err()
                .to_string(),
            "Secret apiguard-system/apiguard-ca has no data key tls.key"
        );
    }

    #[test]
    fn zero_propagation_goes_straight_to_draining() {
        let old = gen_ca();
        let p = plan(
            &requested(&old),
            T0,
            RotationSettings {
                propagation: Duration::ZERO,
                max_leaf_lifetime: Duration::minutes(3),
            },
            None,
            |now| CertificateAuthority::generate(now, Duration::days(365)),
        )
        .unwrap();
        assert_eq!(p.state, "Draining");
        let d = p.write.unwrap();
        assert_ne!(
            ca_from_secret(&d, T0).unwrap().fingerprint(),
            old.fingerprint()
        );
        assert_eq!(
            data_keys(&d),
            ["ca.crt", "previous.crt", "tls.crt", "tls.key"]
        );
    }
}
