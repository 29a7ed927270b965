//! Pure decisions about who owns what: which of several policies on one Service wins, and
//! whether an existing object is one this policy may write or delete.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::ResourceExt;

use crate::api::ApiSecurityPolicy;
use crate::api::names::labels::{MANAGED_BY, MANAGED_BY_VALUE, POLICY};

/// The older policy wins a Service: creationTimestamp, then name, decides.
fn age_key(p: &ApiSecurityPolicy) -> (Option<i64>, String) {
    (
        p.metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_second()),
        p.name_any(),
    )
}

/// The policy that already holds `policy`'s target Service, if it is not `policy` itself.
/// `others` are all policies known (any namespace; the policy itself may be among them).
/// Policies being deleted give the Service up.
pub(crate) fn conflicting_winner<'a>(
    policy: &ApiSecurityPolicy,
    others: impl IntoIterator<Item = &'a ApiSecurityPolicy>,
) -> Option<&'a ApiSecurityPolicy> {
    let ns = policy.namespace();
    let mine = age_key(policy);
    others
        .into_iter()
        .filter(|o| {
            o.namespace() == ns
                && o.spec.target.service == policy.spec.target.service
                && o.metadata.deletion_timestamp.is_none()
                && o.uid() != policy.uid()
        })
        .filter(|o| {
            // A missing timestamp (not yet persisted) sorts first in Option's order; treat
            // it as newest instead so a stored policy is never displaced by an unsaved one.
            let theirs = age_key(o);
            match (theirs.0, mine.0) {
                (Some(a), Some(b)) => (a, &theirs.1) < (b, &mine.1),
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => theirs.1 < mine.1,
            }
        })
        .min_by_key(|o| age_key(o))
}

/// The policy that owns a namespace's shared trust bundle: the oldest live policy there
/// (creationTimestamp, then name). Every policy computes the same answer, so the bundle has one
/// owner reference that changes only when that policy goes, instead of a list of every policy
/// (which changed, and re-triggered every owner, with each new policy).
pub(crate) fn bundle_anchor<'a>(
    namespace: &str,
    policies: impl IntoIterator<Item = &'a ApiSecurityPolicy>,
) -> Option<&'a ApiSecurityPolicy> {
    policies
        .into_iter()
        .filter(|p| p.namespace().as_deref() == Some(namespace))
        .filter(|p| p.metadata.deletion_timestamp.is_none() && p.uid().is_some())
        .min_by(|a, b| {
            // Not yet persisted (no timestamp) sorts last.
            let (ka, kb) = (age_key(a), age_key(b));
            (ka.0.is_none(), ka.0, ka.1).cmp(&(kb.0.is_none(), kb.0, kb.1))
        })
}

/// Whether `owner` is this policy's controller reference.
pub(crate) fn is_controller_ref_of(owner: &OwnerReference, policy_uid: &str) -> bool {
    owner.controller == Some(true) && owner.uid == policy_uid && owner.kind == "ApiSecurityPolicy"
}

/// What an existing object means for a policy that wants to write it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ownership {
    /// No such object: it will be created.
    Absent,
    /// The policy controls it (controller ownerRef with the policy's uid).
    Ours,
    /// Someone else's: described for the condition message.
    NotOwned(String),
}

/// Ownership of an object the policy controls alone.
pub fn ownership(existing: Option<&ObjectMeta>, policy_uid: &str) -> Ownership {
    let Some(meta) = existing else {
        return Ownership::Absent;
    };
    let refs = meta.owner_references.as_deref().unwrap_or(&[]);
    if refs.iter().any(|o| is_controller_ref_of(o, policy_uid)) {
        return Ownership::Ours;
    }
    let by = refs
        .iter()
        .find(|o| o.controller == Some(true))
        .map(|o| format!("controlled by {} {}", o.kind, o.name))
        .unwrap_or_else(|| "not created by this policy".to_string());
    Ownership::NotOwned(by)
}

/// Ownership of a namespace-wide object apiguard shares between policies (the trust bundle):
/// ours when labelled as managed by apiguard.
pub(crate) fn shared_ownership(existing: Option<&ObjectMeta>) -> Ownership {
    match existing {
        None => Ownership::Absent,
        Some(m)
            if m.labels
                .as_ref()
                .and_then(|l| l.get(MANAGED_BY))
                .is_some_and(|v| v == MANAGED_BY_VALUE) =>
        {
            Ownership::Ours
        }
        Some(_) => Ownership::NotOwned("not managed by apiguard".to_string()),
    }
}

/// Whether an object found by label may be pruned for this policy: it carries the policy's
/// label *and* the policy's controller ownerRef, and is not in `desired`.
pub(crate) fn prunable(
    meta: &ObjectMeta,
    policy_name: &str,
    policy_uid: &str,
    desired: &[String],
) -> bool {
    let labelled = meta
        .labels
        .as_ref()
        .and_then(|l| l.get(POLICY))
        .is_some_and(|v| v == policy_name);
    let owned = meta
        .owner_references
        .as_deref()
        .unwrap_or(&[])
        .iter()
        .any(|o| is_controller_ref_of(o, policy_uid));
    let name = meta.name.as_deref().unwrap_or_default();
    labelled && owned && meta.deletion_timestamp.is_none() && !desired.iter().any(|d| d == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ApiSecurityPolicySpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;
    use std::collections::BTreeMap;

    pub(crate) fn policy(
        name: &str,
        uid: &str,
        created: Option<i64>,
        target: &str,
    ) -> ApiSecurityPolicy {
        let spec: ApiSecurityPolicySpec = serde_json::from_value(serde_json::json!({
            "target": {"service": target, "port": 8080},
            "exposure": "Internal",
        }))
        .unwrap();
        let mut p = ApiSecurityPolicy::new(name, spec);
        p.metadata.namespace = Some("shop".into());
        p.metadata.uid = Some(uid.into());
        p.metadata.creation_timestamp = created.map(|s| Time(Timestamp::from_second(s).unwrap()));
        p
    }

    #[test]
    fn the_older_policy_wins_then_the_name() {
        let a = policy("a", "1", Some(100), "api");
        let b = policy("b", "2", Some(50), "api");
        let c = policy("c", "3", Some(50), "api");
        let other_target = policy("d", "4", Some(1), "web");
        let all = [a.clone(), b.clone(), c.clone(), other_target];
        assert_eq!(conflicting_winner(&a, &all).unwrap().name_any(), "b");
        assert!(conflicting_winner(&b, &all).is_none());
        assert_eq!(conflicting_winner(&c, &all).unwrap().name_any(), "b");
    }

    #[test]
    fn a_policy_being_deleted_or_in_another_namespace_gives_the_service_up() {
        let a = policy("a", "1", Some(100), "api");
        let mut old = policy("old", "2", Some(1), "api");
        old.metadata.deletion_timestamp = Some(Time(Timestamp::from_second(200).unwrap()));
        let mut elsewhere = policy("x", "3", Some(1), "api");
        elsewhere.metadata.namespace = Some("other".into());
        assert!(conflicting_winner(&a, &[old, elsewhere]).is_none());
    }

    #[test]
    fn the_oldest_live_policy_of_the_namespace_anchors_the_trust_bundle() {
        let a = policy("a", "1", Some(100), "api");
        let b = policy("b", "2", Some(50), "web");
        let c = policy("c", "3", Some(50), "db");
        let unsaved = policy("0", "4", None, "x");
        let mut gone = policy("g", "5", Some(1), "y");
        gone.metadata.deletion_timestamp = Some(Time(Timestamp::from_second(200).unwrap()));
        let mut elsewhere = policy("e", "6", Some(1), "z");
        elsewhere.metadata.namespace = Some("other".into());
        let all = [
            a.clone(),
            c.clone(),
            b.clone(),
            unsaved.clone(),
            gone,
            elsewhere,
        ];
        assert_eq!(bundle_anchor("shop", &all).unwrap().name_any(), "b");
        assert_eq!(bundle_anchor("other", &all).unwrap().name_any(), "e");
        assert!(bundle_anchor("none", &all).is_none());
        // Order of the input does not matter; unsaved policies come last.
        let rev: Vec<_> = all.iter().rev().cloned().collect();
        assert_eq!(bundle_anchor("shop", &rev).unwrap().name_any(), "b");
        assert_eq!(
            bundle_anchor("shop", [&unsaved, &a]).unwrap().name_any(),
            "a"
        );
    }

    fn owner(uid: &str, controller: bool) -> OwnerReference {
        OwnerReference {
            api_version: "apiguard.dev/v1alpha1".into(),
            kind: "ApiSecurityPolicy".into(),
            name: "p".into(),
            uid: uid.into(),
            controller: Some(controller),
            block_owner_deletion: Some(true),
        }
    }

    #[test]
    fn only_our_controller_reference_makes_an_object_ours() {
        assert_eq!(ownership(None, "u"), Ownership::Absent);
        let mut m = ObjectMeta {
            owner_references: Some(vec![owner("u", true)]),
            ..Default::default()
        };
        assert_eq!(ownership(Some(&m), "u"), Ownership::Ours);
        m.owner_references = Some(vec![owner("u", false)]);
        assert!(matches!(ownership(Some(&m), "u"), Ownership::NotOwned(_)));
        m.owner_references = Some(vec![owner("other", true)]);
        assert_eq!(
            ownership(Some(&m), "u"),
            Ownership::NotOwned("controlled by ApiSecurityPolicy p".into())
        );
        m.owner_references = None;
        assert_eq!(
            ownership(Some(&m), "u"),
            Ownership::NotOwned("not created by this policy".into())
        );
    }

    #[test]
    fn prune_needs_label_ownerref_and_absence_from_desired() {
        let meta = |name: &str, label: Option<&str>, uid: &str| ObjectMeta {
            name: Some(name.into()),
            labels: label.map(|l| BTreeMap::from([(POLICY.to_string(), l.to_string())])),
            owner_references: Some(vec![owner(uid, true)]),
            ..Default::default()
        };
        let desired = vec!["keep".to_string()];
        assert!(prunable(&meta("old", Some("p"), "u"), "p", "u", &desired));
        assert!(!prunable(&meta("keep", Some("p"), "u"), "p", "u", &desired));
        assert!(!prunable(&meta("old", None, "u"), "p", "u", &desired));
        assert!(!prunable(&meta("old", Some("p"), "x"), "p", "u", &desired));
        assert!(!prunable(&meta("old", Some("q"), "u"), "p", "u", &desired));
    }

    #[test]
    fn shared_objects_are_ours_when_labelled() {
        let mut m = ObjectMeta::default();
        assert!(matches!(shared_ownership(Some(&m)), Ownership::NotOwned(_)));
        m.labels = Some(BTreeMap::from([(
            MANAGED_BY.to_string(),
            MANAGED_BY_VALUE.to_string(),
        )]));
        assert_eq!(shared_ownership(Some(&m)), Ownership::Ours);
    }
}
