//! The Kubernetes objects of workload identity, built and read purely: the leaf, CA and
//! trust-bundle Secret/ConfigMap builders, the CA read back from its Secret, and the
//! conditional merge patch a CA rotation writes. No apiserver calls: `crate::certs` does the
//! I/O.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use time::OffsetDateTime;

use super::ca::{CaError, PemSource};
use super::{CA_CRT, CertificateAuthority, IssuedLeaf, StoredSecret, TLS_CRT, TLS_KEY, rfc3339};
use crate::api::names::TRUST_BUNDLE_CONFIGMAP;
use crate::api::names::annotations::{NOT_AFTER, SPIFFE_ID};
use crate::api::names::labels::{APP_COMPONENT, MANAGED_BY, MANAGED_BY_VALUE};

/// Default name of the CA Secret in the operator namespace.
pub(crate) const DEFAULT_CA_SECRET: &str = "apiguard-ca";
/// Secret type of every Secret written here.
pub(crate) const TLS_SECRET_TYPE: &str = "kubernetes.io/tls";

fn labels(component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY.to_string(), MANAGED_BY_VALUE.to_string()),
        (APP_COMPONENT.to_string(), component.to_string()),
    ])
}

pub(crate) fn bytes(s: &str) -> ByteString {
    ByteString(s.as_bytes().to_vec())
}

/// The `kubernetes.io/tls` Secret holding a workload's leaf (`tls.crt`, `tls.key`, `ca.crt`),
/// labelled as apiguard's and owned by `owner` (the policy) when given.
pub fn leaf_secret(
    name: &str,
    namespace: &str,
    leaf: &IssuedLeaf,
    owner: Option<OwnerReference>,
) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(labels("workload-identity")),
            annotations: Some(BTreeMap::from([
                (SPIFFE_ID.to_string(), leaf.spiffe_id.uri()),
                (NOT_AFTER.to_string(), rfc3339(leaf.not_after)),
            ])),
            owner_references: owner.map(|o| vec![o]),
            ..Default::default()
        },
        type_: Some(TLS_SECRET_TYPE.to_string()),
        data: Some(BTreeMap::from([
            (TLS_CRT.to_string(), bytes(&leaf.cert_pem)),
            (TLS_KEY.to_string(), bytes(&leaf.key_pem)),
            (CA_CRT.to_string(), bytes(&leaf.ca_bundle_pem)),
        ])),
        ..Default::default()
    }
}

/// The trust bundle ConfigMap `apiguard-trust-bundle` (`ca.crt` = every trusted root).
pub(crate) fn trust_bundle_configmap(
    namespace: &str,
    bundle_pem: &str,
    owner: Option<OwnerReference>,
) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(TRUST_BUNDLE_CONFIGMAP.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(labels("trust-bundle")),
            owner_references: owner.map(|o| vec![o]),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            CA_CRT.to_string(),
            bundle_pem.to_string(),
        )])),
        ..Default::default()
    }
}

/// The CA Secret (`tls.crt` issuer + chain, `tls.key`, `ca.crt` roots).
pub fn ca_secret(name: &str, namespace: &str, ca: &CertificateAuthority) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(labels("certificate-authority")),
            annotations: Some(BTreeMap::from([(
                NOT_AFTER.to_string(),
                rfc3339(ca.not_after()),
            )])),
            ..Default::default()
        },
        type_: Some(TLS_SECRET_TYPE.to_string()),
        data: Some(BTreeMap::from([
            (TLS_CRT.to_string(), bytes(&ca.cert_chain_pem())),
            (TLS_KEY.to_string(), bytes(&ca.key_pem())),
            (CA_CRT.to_string(), bytes(&ca.roots_pem())),
        ])),
        ..Default::default()
    }
}

/// The Secret's data as [`StoredSecret`] for [`super::decide`].
pub fn stored(secret: &Secret) -> StoredSecret<'_> {
    let get = |k: &str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(k))
            .map(|b| b.0.as_slice())
    };
    StoredSecret {
        tls_crt: get(TLS_CRT),
        tls_key: get(TLS_KEY),
        ca_crt: get(CA_CRT),
    }
}

/// Why a Secret does not hold a usable CA. Messages name the Secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The Secret exists but does not hold a usable CA.
    #[error(transparent)]
    InvalidCa(#[from] CaError),
    /// A required key is absent from the Secret.
    #[error("Secret {namespace}/{name} has no data key {key}")]
    MissingKey {
        namespace: String,
        name: String,
        key: &'static str,
    },
}

/// Loads a CA from a Secret (`tls.crt`, `tls.key`, optional `ca.crt`), validating it at `now`.
pub fn ca_from_secret(
    secret: &Secret,
    now: OffsetDateTime,
) -> Result<CertificateAuthority, SecretError> {
    let namespace = secret.metadata.namespace.clone().unwrap_or_default();
    let name = secret.metadata.name.clone().unwrap_or_default();
    let data = stored(secret);
    let missing = |key| SecretError::MissingKey {
        namespace: namespace.clone(),
        name: name.clone(),
        key,
    };
    let cert = data.tls_crt.ok_or_else(|| missing(TLS_CRT))?;
    let key = data.tls_key.ok_or_else(|| missing(TLS_KEY))?;
    Ok(CertificateAuthority::from_pem(
        cert,
        key,
        data.ca_crt,
        PemSource::secret(&namespace, &name),
        now,
    )?)
}

/// The merge patch that turns `old` into `new` (data and annotations; removed keys become
/// `null`), conditional on `old`'s resourceVersion: the apiserver answers 409 if the Secret
/// changed since it was read. A patch (not a replace) so the operator needs no `update` verb.
pub(crate) fn rotation_patch(old: &Secret, new: &Secret) -> serde_json::Value {
    fn diff<V: serde::Serialize>(
        old: Option<&BTreeMap<String, V>>,
        new: Option<&BTreeMap<String, V>>,
    ) -> serde_json::Map<String, serde_json::Value> {
        let mut out = serde_json::Map::new();
        for k in old.into_iter().flat_map(|m| m.keys()) {
            if !new.is_some_and(|m| m.contains_key(k)) {
                out.insert(k.clone(), serde_json::Value::Null);
            }
        }
        for (k, v) in new.into_iter().flatten() {
            out.insert(
                k.clone(),
                serde_json::to_value(v).unwrap_or(serde_json::Value::Null),
            );
        }
        out
    }
    serde_json::json!({
        "metadata": {
            "resourceVersion": old.metadata.resource_version,
            "annotations": diff(old.metadata.annotations.as_ref(), new.metadata.annotations.as_ref()),
        },
        "data": diff(old.data.as_ref(), new.data.as_ref()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{LeafRequest, SpiffeId, issue_leaf};
    use time::Duration;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-02-01 00:00 UTC);

    #[test]
    fn leaf_secret_is_a_labelled_owned_tls_secret() {
        let ca = CertificateAuthority::generate(NOW, Duration::days(10)).unwrap();
        let leaf = issue_leaf(
            &ca,
            &LeafRequest::new(SpiffeId::new("cluster.local", "shop", "api").unwrap()),
            NOW,
        )
        .unwrap();
        let owner = OwnerReference {
            api_version: "apiguard.dev/v1alpha1".into(),
            kind: "ApiSecurityPolicy".into(),
            name: "payments".into(),
            uid: "1234".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        };
        let s = leaf_secret("api-identity", "shop", &leaf, Some(owner.clone()));
        assert_eq!(s.type_.as_deref(), Some("kubernetes.io/tls"));
        assert_eq!(s.metadata.owner_references, Some(vec![owner]));
        let labels = s.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[MANAGED_BY], "apiguard");
        let ann = s.metadata.annotations.as_ref().unwrap();
        assert_eq!(ann[SPIFFE_ID], "spiffe://cluster.local/ns/shop/sa/api");
        assert_eq!(ann[NOT_AFTER], "2026-02-02T00:00:00Z");
        let data = stored(&s);
        assert_eq!(data.tls_crt, Some(leaf.cert_pem.as_bytes()));
        assert_eq!(data.tls_key, Some(leaf.key_pem.as_bytes()));
        assert_eq!(data.ca_crt, Some(ca.cert_pem().as_bytes()));
    }

    #[test]
    fn ca_secret_round_trips_and_errors_name_the_secret() {
        let ca = CertificateAuthority::generate(NOW, Duration::days(10)).unwrap();
        let mut s = ca_secret("apiguard-ca", "apiguard-system", &ca);
        let loaded = ca_from_secret(&s, NOW).unwrap();
        assert_eq!(loaded.fingerprint(), ca.fingerprint());
        s.data.as_mut().unwrap().remove(TLS_KEY);
        assert_eq!(
            ca_from_secret(&s, NOW).unwrap_err().to_string(),
            "Secret apiguard-system/apiguard-ca has no data key tls.key"
        );
    }

    #[test]
    fn rotation_patch_is_conditional_and_nulls_removed_keys() {
        let ca = CertificateAuthority::generate(NOW, Duration::days(10)).unwrap();
        let mut old = ca_secret("apiguard-ca", "apiguard-system", &ca);
        old.metadata.resource_version = Some("42".into());
        old.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert("apiguard.dev/rotate".into(), "requested".into());
        let mut new = old.clone();
        new.metadata.annotations.as_mut().unwrap().clear();
        new.data
            .as_mut()
            .unwrap()
            .insert("next.crt".into(), bytes("PEM"));
        let patch = rotation_patch(&old, &new);
        assert_eq!(patch["metadata"]["resourceVersion"], "42");
        assert_eq!(
            patch["metadata"]["annotations"],
            serde_json::json!({"apiguard.dev/not-after": null, "apiguard.dev/rotate": null})
        );
        assert_eq!(patch["data"]["next.crt"], "UEVN");
        assert_eq!(patch["data"].as_object().unwrap().len(), 4);
    }

    #[test]
    fn trust_bundle_configmap_has_the_fixed_name() {
        let cm = trust_bundle_configmap("shop", "PEM", None);
        assert_eq!(cm.metadata.name.as_deref(), Some("apiguard-trust-bundle"));
        assert_eq!(cm.data.unwrap()["ca.crt"], "PEM");
    }
}
