//! The Kubernetes edge of workload identity: object builders (pure), the race-free CA
//! bootstrap (`ensure_ca`) and the CA rotation driver (`drive_ca_rotation`); those two are
//! the only functions here that talk to the apiserver.

use std::collections::BTreeMap;

use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::{WatchStreamExt, watcher};
use time::OffsetDateTime;

use super::ca::{CaError, PemSource};
use super::{CA_CRT, CertificateAuthority, IssuedLeaf, StoredSecret, TLS_CRT, TLS_KEY, rfc3339};
use crate::api::names::TRUST_BUNDLE_CONFIGMAP;
use crate::api::names::annotations::{NOT_AFTER, SPIFFE_ID};
use crate::api::names::labels::{APP_COMPONENT, MANAGED_BY, MANAGED_BY_VALUE};

/// Default name of the CA Secret in the operator namespace.
pub const DEFAULT_CA_SECRET: &str = "apiguard-ca";
/// Secret type of every Secret written here.
pub const TLS_SECRET_TYPE: &str = "kubernetes.io/tls";

fn labels(component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY.to_string(), MANAGED_BY_VALUE.to_string()),
        (APP_COMPONENT.to_string(), component.to_string()),
    ])
}

fn bytes(s: &str) -> ByteString {
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
pub fn trust_bundle_configmap(
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

/// Errors of the Kubernetes edge. Messages name the Secret.
#[derive(Debug, thiserror::Error)]
pub enum IdentityK8sError {
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
    /// The user-supplied CA Secret does not exist.
    #[error("CA Secret {namespace}/{name} not found")]
    NotFound { namespace: String, name: String },
    /// The apiserver refused or failed a request.
    #[error("{action} Secret {namespace}/{name}: {source}")]
    Api {
        action: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
}

/// Loads a CA from a Secret (`tls.crt`, `tls.key`, optional `ca.crt`), validating it at `now`.
pub fn ca_from_secret(
    secret: &Secret,
    now: OffsetDateTime,
) -> Result<CertificateAuthority, IdentityK8sError> {
    let namespace = secret.metadata.namespace.clone().unwrap_or_default();
    let name = secret.metadata.name.clone().unwrap_or_default();
    let data = stored(secret);
    let missing = |key| IdentityK8sError::MissingKey {
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

/// Loads a user-supplied CA from Secret `namespace/name`.
pub async fn load_ca(
    client: kube::Client,
    namespace: &str,
    name: &str,
    now: OffsetDateTime,
) -> Result<CertificateAuthority, IdentityK8sError> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let api_err = |action, source| IdentityK8sError::Api {
        action,
        namespace: namespace.to_string(),
        name: name.to_string(),
        source: Box::new(source),
    };
    match api.get_opt(name).await.map_err(|e| api_err("reading", e))? {
        Some(secret) => ca_from_secret(&secret, now),
        None => Err(IdentityK8sError::NotFound {
            namespace: namespace.to_string(),
            name: name.to_string(),
        }),
    }
}

/// How [`ensure_ca`] obtained the CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaOrigin {
    /// The Secret already existed.
    Existing,
    /// This caller generated the CA and created the Secret.
    Created,
    /// Another replica created the Secret first (409); its CA was re-read and adopted.
    AdoptedAfterConflict,
}

/// Returns the operator's CA from Secret `namespace/name`, generating a 10-year root and
/// *creating* the Secret if it does not exist. Never overwrites: when another replica created
/// it first (409 AlreadyExists), the winner's Secret is re-read and used, so all replicas end
/// up with the same CA.
pub async fn ensure_ca(
    client: kube::Client,
    namespace: &str,
    name: &str,
    now: OffsetDateTime,
) -> Result<(CertificateAuthority, CaOrigin), IdentityK8sError> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let api_err = |action, source| IdentityK8sError::Api {
        action,
        namespace: namespace.to_string(),
        name: name.to_string(),
        source: Box::new(source),
    };
    if let Some(existing) = api.get_opt(name).await.map_err(|e| api_err("reading", e))? {
        return Ok((ca_from_secret(&existing, now)?, CaOrigin::Existing));
    }
    let ca = CertificateAuthority::generate(now, super::DEFAULT_CA_LIFETIME)?;
    let secret = ca_secret(name, namespace, &ca);
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            tracing::info!(
                secret.namespace = namespace,
                secret.name = name,
                ca.subject = ca.subject(),
                ca.fingerprint = %ca.fingerprint(),
                "created operator CA"
            );
            Ok((ca, CaOrigin::Created))
        }
        Err(kube::Error::Api(status)) if status.is_already_exists() => {
            let winner = api.get(name).await.map_err(|e| api_err("re-reading", e))?;
            Ok((
                ca_from_secret(&winner, now)?,
                CaOrigin::AdoptedAfterConflict,
            ))
        }
        Err(e) => Err(api_err("creating", e)),
    }
}

/// How many conflicting writes in a row one rotation step tolerates before waiting for the
/// next change.
const ROTATION_ATTEMPTS: usize = 5;
/// When a step failed for a reason that may pass (the apiserver), it is retried after this.
const ROTATION_RETRY: std::time::Duration = std::time::Duration::from_secs(10);

/// The merge patch that turns `old` into `new` (data and annotations; removed keys become
/// `null`), conditional on `old`'s resourceVersion: the apiserver answers 409 if the Secret
/// changed since it was read. A patch (not a replace) so the operator needs no `update` verb.
fn rotation_patch(old: &Secret, new: &Secret) -> serde_json::Value {
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

/// One look at the CA Secret: plan and write (re-reading on conflicts). Returns when to look
/// again without a change.
async fn rotation_step(
    api: &Api<Secret>,
    namespace: &str,
    name: &str,
    settings: super::ca_rotation::RotationSettings,
    recorder: Option<&Recorder>,
) -> Option<OffsetDateTime> {
    let event = |secret: &Secret, warning: bool, reason: &str, note: String| {
        let ev = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.into(),
            note: Some(note),
            action: "RotateCA".into(),
            secondary: None,
        };
        let obj = secret.object_ref(&());
        async move {
            if let Some(recorder) = recorder
                && let Err(e) = recorder.publish(&ev, &obj).await
            {
                tracing::warn!(error = %e, reason = ev.reason, "could not publish Event");
            }
        }
    };
    for _ in 0..ROTATION_ATTEMPTS {
        let secret = match api.get_opt(name).await {
            Ok(Some(s)) => s,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(secret.namespace = namespace, secret.name = name, error = %e, "CA rotation: reading the CA Secret failed; retrying");
                return Some(OffsetDateTime::now_utc() + ROTATION_RETRY);
            }
        };
        let now = OffsetDateTime::now_utc();
        let plan = match super::ca_rotation::plan(&secret, now, settings, None, |now| {
            CertificateAuthority::generate(now, super::DEFAULT_CA_LIFETIME)
        }) {
            Ok(p) => p,
            Err(e) => {
                // Nothing is written: the current CA keeps issuing until the Secret is fixed.
                tracing::error!(secret.namespace = namespace, secret.name = name, error = %e, "CA rotation cannot proceed");
                event(&secret, true, "CARotationFailed", e.to_string()).await;
                return None;
            }
        };
        for note in &plan.notes {
            tracing::warn!(secret.namespace = namespace, secret.name = name, "{note}");
            event(&secret, true, "CARotationRequestIgnored", note.clone()).await;
        }
        let Some(new) = plan.write else {
            return plan.next_step_at;
        };
        let patch = rotation_patch(&secret, &new);
        match api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                if plan.previous_state != plan.state {
                    let what = match plan.state {
                        "AddingRoot" => {
                            "the new root joins the trust bundle; the old CA still issues"
                        }
                        "Draining" => {
                            "the new CA issues; the old root stays trusted until its leaves have expired"
                        }
                        _ => "the old root left the trust bundle; rotation complete",
                    };
                    let next = plan
                        .next_step_at
                        .map(|t| format!(" (next step at {})", rfc3339(t)))
                        .unwrap_or_default();
                    tracing::info!(
                        secret.namespace = namespace,
                        secret.name = name,
                        from = plan.previous_state,
                        to = plan.state,
                        next_step_at = ?plan.next_step_at.map(rfc3339),
                        "CA rotation: {what}"
                    );
                    event(
                        &secret,
                        false,
                        &format!("CARotation{}", plan.state),
                        format!("{}: {what}{next}", plan.state),
                    )
                    .await;
                }
                return plan.next_step_at;
            }
            Err(kube::Error::Api(status)) if status.code == 409 => {
                tracing::debug!(
                    secret.name = name,
                    "CA Secret changed concurrently; re-reading"
                );
            }
            Err(e) => {
                tracing::warn!(secret.namespace = namespace, secret.name = name, error = %e, "CA rotation: writing the CA Secret failed; retrying");
                return Some(OffsetDateTime::now_utc() + ROTATION_RETRY);
            }
        }
    }
    Some(OffsetDateTime::now_utc() + ROTATION_RETRY)
}

/// Drives CA rotations of Secret `namespace/name` until `stop` resolves: on every change of
/// the Secret (e.g. the user's `apiguard.dev/rotate=requested`) and when the current step is
/// due, plans ([`super::ca_rotation::plan`]) and writes the Secret conditionally, recording
/// each step (and an ignored request or an unusable state) as an Event on the Secret. Run by
/// the leader only.
pub async fn drive_ca_rotation(
    client: kube::Client,
    namespace: &str,
    name: &str,
    settings: super::ca_rotation::RotationSettings,
    recorder: Option<Recorder>,
    stop: impl std::future::Future<Output = ()>,
) {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let mut changes = watcher(
        api.clone(),
        watcher::Config::default().fields(&format!("metadata.name={name}")),
    )
    .default_backoff()
    .touched_objects()
    .boxed();
    let mut stop = std::pin::pin!(stop);
    let mut due: Option<OffsetDateTime> = None;
    loop {
        let wait = due.map(|t| {
            let d = t - OffsetDateTime::now_utc();
            // A little after the due time, so the step is due when planned.
            std::time::Duration::try_from(d).unwrap_or_default()
                + std::time::Duration::from_millis(50)
        });
        tokio::select! {
            _ = &mut stop => return,
            change = changes.next() => match change {
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "CA Secret watch failed; retrying");
                    continue;
                }
                None => return,
            },
            _ = tokio::time::sleep(wait.unwrap_or_default()), if wait.is_some() => {}
        }
        due = rotation_step(&api, namespace, name, settings, recorder.as_ref()).await;
    }
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

    mod apiserver {
        //! `ensure_ca` against a scripted apiserver (tower-test): the call sequence for the
        //! absent, present and lost-the-race cases.
        use super::*;
        use axum::http::{Method, Request, Response, StatusCode};
        use kube::client::Body;
        use tower_test::mock::{self, Handle};

        type H = Handle<Request<Body>, Response<Body>>;

        fn status_body(code: u16, reason: &str) -> Body {
            Body::from(
                serde_json::to_vec(&serde_json::json!({
                    "kind": "Status", "apiVersion": "v1", "metadata": {},
                    "status": "Failure", "message": reason, "reason": reason, "code": code
                }))
                .unwrap(),
            )
        }

        fn json<T: serde::Serialize>(code: StatusCode, v: &T) -> Response<Body> {
            Response::builder()
                .status(code)
                .body(Body::from(serde_json::to_vec(v).unwrap()))
                .unwrap()
        }

        async fn expect(
            h: &mut H,
            method: Method,
            path: &str,
        ) -> (Vec<u8>, mock::SendResponse<Response<Body>>) {
            let (req, send) =
                tokio::time::timeout(std::time::Duration::from_secs(5), h.next_request())
                    .await
                    .expect("request in time")
                    .expect("a request");
            assert_eq!(req.method(), method);
            assert_eq!(req.uri().path(), path);
            let body = req.into_body().collect_bytes().await.unwrap().to_vec();
            (body, send)
        }

        const GET: &str = "/api/v1/namespaces/apiguard-system/secrets/apiguard-ca";
        const POST: &str = "/api/v1/namespaces/apiguard-system/secrets";

        #[tokio::test]
        async fn creates_the_ca_when_absent() {
            let (svc, mut h) = mock::pair::<Request<Body>, Response<Body>>();
            let client = kube::Client::new(svc, "default");
            let server = tokio::spawn(async move {
                let (_, send) = expect(&mut h, Method::GET, GET).await;
                send.send_response(
                    Response::builder()
                        .status(404)
                        .body(status_body(404, "NotFound"))
                        .unwrap(),
                );
                let (body, send) = expect(&mut h, Method::POST, POST).await;
                let created: Secret = serde_json::from_slice(&body).unwrap();
                assert_eq!(created.type_.as_deref(), Some("kubernetes.io/tls"));
                send.send_response(json(StatusCode::CREATED, &created));
                created
            });
            let (ca, origin) = ensure_ca(client, "apiguard-system", "apiguard-ca", NOW)
                .await
                .unwrap();
            assert_eq!(origin, CaOrigin::Created);
            let created = server.await.unwrap();
            assert_eq!(
                ca_from_secret(&created, NOW).unwrap().fingerprint(),
                ca.fingerprint()
            );
        }

        #[tokio::test]
        async fn uses_an_existing_ca_without_writing() {
            let existing = CertificateAuthority::generate(NOW, Duration::days(10)).unwrap();
            let secret = ca_secret("apiguard-ca", "apiguard-system", &existing);
            let (svc, mut h) = mock::pair::<Request<Body>, Response<Body>>();
            let client = kube::Client::new(svc, "default");
            let server = tokio::spawn(async move {
                let (_, send) = expect(&mut h, Method::GET, GET).await;
                send.send_response(json(StatusCode::OK, &secret));
                // No further request may arrive: the handle ends when the client is dropped.
                assert!(
                    h.next_request().await.is_none(),
                    "ensure_ca wrote to an existing CA"
                );
            });
            let (ca, origin) = ensure_ca(client, "apiguard-system", "apiguard-ca", NOW)
                .await
                .unwrap();
            assert_eq!(origin, CaOrigin::Existing);
            server.await.unwrap();
            assert_eq!(ca.fingerprint(), existing.fingerprint());
        }

        #[tokio::test]
        async fn adopts_the_winner_after_losing_the_create_race() {
            let winner = CertificateAuthority::generate(NOW, Duration::days(10)).unwrap();
            let secret = ca_secret("apiguard-ca", "apiguard-system", &winner);
            let (svc, mut h) = mock::pair::<Request<Body>, Response<Body>>();
            let client = kube::Client::new(svc, "default");
            let server = tokio::spawn(async move {
                let (_, send) = expect(&mut h, Method::GET, GET).await;
                send.send_response(
                    Response::builder()
                        .status(404)
                        .body(status_body(404, "NotFound"))
                        .unwrap(),
                );
                let (_, send) = expect(&mut h, Method::POST, POST).await;
                send.send_response(
                    Response::builder()
                        .status(409)
                        .body(status_body(409, "AlreadyExists"))
                        .unwrap(),
                );
                let (_, send) = expect(&mut h, Method::GET, GET).await;
                send.send_response(json(StatusCode::OK, &secret));
            });
            let (ca, origin) = ensure_ca(client, "apiguard-system", "apiguard-ca", NOW)
                .await
                .unwrap();
            assert_eq!(origin, CaOrigin::AdoptedAfterConflict);
            server.await.unwrap();
            assert_eq!(ca.fingerprint(), winner.fingerprint());
        }

        #[tokio::test]
        async fn a_rotation_step_rereads_and_replans_after_a_conflict() {
            // rotation_step reads the clock: a CA valid now.
            let old = CertificateAuthority::generate(OffsetDateTime::now_utc(), Duration::days(10))
                .unwrap();
            let mut secret = ca_secret("apiguard-ca", "apiguard-system", &old);
            secret
                .metadata
                .annotations
                .as_mut()
                .unwrap()
                .insert("apiguard.dev/rotate".into(), "requested".into());
            let (svc, mut h) = mock::pair::<Request<Body>, Response<Body>>();
            let client = kube::Client::new(svc, "default");
            let server = tokio::spawn(async move {
                let mut patches = Vec::new();
                for (rv, code) in [("1", 409u16), ("2", 200)] {
                    let mut current = secret.clone();
                    current.metadata.resource_version = Some(rv.into());
                    let (_, send) = expect(&mut h, Method::GET, GET).await;
                    send.send_response(json(StatusCode::OK, &current));
                    let (body, send) = expect(&mut h, Method::PATCH, GET).await;
                    let patch: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    patches.push(patch);
                    if code == 409 {
                        send.send_response(
                            Response::builder()
                                .status(409)
                                .body(status_body(409, "Conflict"))
                                .unwrap(),
                        );
                    } else {
                        send.send_response(json(StatusCode::OK, &current));
                    }
                }
                patches
            });
            let api: Api<Secret> = Api::namespaced(client, "apiguard-system");
            let settings = crate::identity::ca_rotation::RotationSettings {
                propagation: Duration::minutes(10),
                max_leaf_lifetime: Duration::hours(24),
            };
            let before = OffsetDateTime::now_utc();
            let next = rotation_step(&api, "apiguard-system", "apiguard-ca", settings, None)
                .await
                .expect("AddingRoot has a next step");
            assert!(
                next >= before + Duration::minutes(10) && next < before + Duration::minutes(11)
            );
            let patches = server.await.unwrap();
            // Each attempt is conditional on the resourceVersion it read.
            assert_eq!(patches[0]["metadata"]["resourceVersion"], "1");
            assert_eq!(patches[1]["metadata"]["resourceVersion"], "2");
            assert_eq!(
                patches[1]["metadata"]["annotations"]["apiguard.dev/rotate"],
                serde_json::Value::Null
            );
            let state: serde_json::Value = serde_json::from_str(
                patches[1]["metadata"]["annotations"]["apiguard.dev/ca-rotation"]
                    .as_str()
                    .unwrap(),
            )
            .unwrap();
            assert_eq!(state["state"], "AddingRoot");
            assert!(patches[1]["data"]["next.key"].is_string());
        }

        #[tokio::test]
        async fn a_broken_ca_secret_is_an_error_naming_it() {
            let mut secret = ca_secret(
                "apiguard-ca",
                "apiguard-system",
                &CertificateAuthority::generate(NOW, Duration::days(10)).unwrap(),
            );
            let other = CertificateAuthority::generate(NOW, Duration::days(10)).unwrap();
            secret
                .data
                .as_mut()
                .unwrap()
                .insert(TLS_KEY.into(), bytes(&other.key_pem()));
            let (svc, mut h) = mock::pair::<Request<Body>, Response<Body>>();
            let client = kube::Client::new(svc, "default");
            let server = tokio::spawn(async move {
                let (_, send) = expect(&mut h, Method::GET, GET).await;
                send.send_response(json(StatusCode::OK, &secret));
            });
            let err = ensure_ca(client, "apiguard-system", "apiguard-ca", NOW)
                .await
                .unwrap_err();
            server.await.unwrap();
            assert_eq!(
                err.to_string(),
                "Secret apiguard-system/apiguard-ca key tls.key does not match the public key of the certificate in Secret apiguard-system/apiguard-ca key tls.crt"
            );
        }
    }
}
