//! The webhook's serving certificate Secret against the apiserver: the operator CA is ensured
//! first, then the Secret is kept holding a good certificate for the wanted names
//! (`crate::identity::serving::decide_secret`), created (409: another replica won, re-read) or
//! replaced with a `resourceVersion` precondition (409: another replica renewed first,
//! re-read), so racing replicas converge on one certificate.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use time::OffsetDateTime;

use super::ca::{CaSecretError, ensure_ca};
use super::ca_bundle::CaBundleError;
use super::resolver::TlsError;
use crate::identity::rotation::{Decision, ReissueReason, renew_at};
use crate::identity::secrets::stored;
use crate::identity::serving::{
    ServingNames, decide_secret, issue_serving, serving_secret, serving_validity,
};
use crate::identity::{CertificateAuthority, IssueError};

/// Default name of the serving certificate Secret in the operator namespace.
pub(crate) const DEFAULT_SERVING_SECRET: &str = "apiguard-webhook-tls";
/// How often the Secret, the CA and the webhook configuration are looked at even without a
/// watch event (a missed event, a CA replaced by hand).
pub(crate) const DEFAULT_RESYNC: Duration = Duration::from_secs(60);

/// What the managed serving certificate is made of.
#[derive(Debug, Clone)]
pub struct ServingConfig {
    /// The operator namespace (CA Secret and serving Secret live there).
    pub namespace: String,
    /// Name of the serving certificate Secret.
    pub secret: String,
    /// Name of the operator CA Secret.
    pub ca_secret: String,
    /// The certificate's SANs.
    pub names: ServingNames,
    /// Lifetime of a newly issued certificate (renewed at two thirds).
    pub lifetime: time::Duration,
    /// The ValidatingWebhookConfiguration whose `caBundle` is kept current (`None`: not
    /// managed).
    pub webhook_config: Option<String>,
    /// Longest time between two looks without a watch event.
    pub resync: Duration,
}

/// Why the serving certificate could not be ensured. Messages name the Secret or the
/// ValidatingWebhookConfiguration.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ServingError {
    #[error("operator CA for the webhook serving certificate: {0}")]
    Ca(#[from] CaSecretError),
    #[error("issuing the webhook serving certificate for Secret {namespace}/{name}: {source}")]
    Issue {
        namespace: String,
        name: String,
        #[source]
        source: IssueError,
    },
    #[error("{action} Secret {namespace}/{name}: {source}")]
    SecretApi {
        action: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error(transparent)]
    WebhookConfig(#[from] CaBundleError),
    #[error(
        "Secret {namespace}/{name}: still conflicting after {attempts} attempts to write the serving certificate"
    )]
    Conflicts {
        namespace: String,
        name: String,
        attempts: usize,
    },
    #[error("Secret {namespace}/{name} holds an unusable serving certificate: {source}")]
    Unusable {
        namespace: String,
        name: String,
        #[source]
        source: Box<TlsError>,
    },
}

/// What [`ensure_serving_secret`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SecretOutcome {
    /// The stored certificate was good.
    Kept,
    /// This replica wrote a new certificate, for this reason.
    Issued(ReissueReason),
}

/// A serving certificate as read from (or written to) its Secret.
#[derive(Clone)]
pub(crate) struct ServingMaterial {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    /// The CA's roots: the `caBundle` the webhook configuration must hold.
    pub ca_bundle_pem: String,
    pub not_after: OffsetDateTime,
    /// When to renew (two thirds into the certificate's lifetime).
    pub renew_at: OffsetDateTime,
}

impl std::fmt::Debug for ServingMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingMaterial")
            .field("not_after", &self.not_after)
            .field("renew_at", &self.renew_at)
            .finish_non_exhaustive()
    }
}

/// How many create/replace conflicts in a row are tolerated before giving up for this round.
const MAX_ATTEMPTS: usize = 5;

/// Ensures the CA and the serving Secret (creating or renewing it, safe against other replicas
/// doing the same), and returns the certificate to serve.
pub(crate) async fn ensure_serving_secret(
    client: kube::Client,
    config: &ServingConfig,
    now: OffsetDateTime,
) -> Result<(ServingMaterial, SecretOutcome), ServingError> {
    let (ca, _) = ensure_ca(client.clone(), &config.namespace, &config.ca_secret, now).await?;
    let api: Api<Secret> = Api::namespaced(client, &config.namespace);
    let secret_err = |action, source| ServingError::SecretApi {
        action,
        namespace: config.namespace.clone(),
        name: config.secret.clone(),
        source: Box::new(source),
    };
    for _ in 0..MAX_ATTEMPTS {
        let existing = api
            .get_opt(&config.secret)
            .await
            .map_err(|e| secret_err("reading", e))?;
        let decision = decide_secret(existing.as_ref(), &config.names, &ca, now);
        let reason = match (decision, existing.as_ref()) {
            (Decision::Keep { renew_at }, Some(secret)) => {
                return Ok((
                    material_of(secret, &ca, renew_at, config)?,
                    SecretOutcome::Kept,
                ));
            }
            (Decision::Reissue { reason }, _) => reason,
            (Decision::Keep { .. }, None) => ReissueReason::Missing,
        };
        let issued = issue_serving(&ca, &config.names, config.lifetime, now).map_err(|source| {
            ServingError::Issue {
                namespace: config.namespace.clone(),
                name: config.secret.clone(),
                source,
            }
        })?;
        let mut secret = serving_secret(&config.secret, &config.namespace, &issued);
        let written = match &existing {
            None => api.create(&PostParams::default(), &secret).await,
            Some(old) => {
                // Optimistic concurrency: the write fails (409) if anyone wrote in between.
                secret.metadata.resource_version = old.metadata.resource_version.clone();
                api.replace(&config.secret, &PostParams::default(), &secret)
                    .await
            }
        };
        match written {
            Ok(_) => {
                tracing::info!(
                    secret.namespace = %config.namespace,
                    secret.name = %config.secret,
                    reason = reason.as_str(),
                    names = %config.names,
                    not_after = %issued.not_after,
                    "issued the webhook serving certificate"
                );
                let material = ServingMaterial {
                    cert_pem: issued.cert_pem.into_bytes(),
                    key_pem: issued.key_pem.into_bytes(),
                    ca_bundle_pem: issued.ca_bundle_pem,
                    not_after: issued.not_after,
                    renew_at: renew_at(issued.not_before, issued.not_after),
                };
                return Ok((material, SecretOutcome::Issued(reason)));
            }
            // Another replica created or renewed it first, or it was deleted meanwhile:
            // read again and decide again (usually: keep the winner's).
            Err(kube::Error::Api(status))
                if status.is_already_exists() || status.code == 409 || status.code == 404 =>
            {
                tracing::debug!(
                    secret.name = %config.secret,
                    reason = %status.reason,
                    "serving Secret changed concurrently; re-reading"
                );
            }
            Err(e) => {
                let action = if existing.is_some() {
                    "replacing"
                } else {
                    "creating"
                };
                return Err(secret_err(action, e));
            }
        }
    }
    Err(ServingError::Conflicts {
        namespace: config.namespace.clone(),
        name: config.secret.clone(),
        attempts: MAX_ATTEMPTS,
    })
}

fn material_of(
    secret: &Secret,
    ca: &CertificateAuthority,
    renew_at: OffsetDateTime,
    config: &ServingConfig,
) -> Result<ServingMaterial, ServingError> {
    let data = stored(secret);
    let cert_pem = data.tls_crt.unwrap_or_default().to_vec();
    let not_after = serving_validity(&cert_pem)
        .map(|(_, not_after)| not_after)
        .ok_or_else(|| ServingError::Unusable {
            namespace: config.namespace.clone(),
            name: config.secret.clone(),
            source: Box::new(TlsError::NoCertificate {
                path: "tls.crt".into(),
            }),
        })?;
    Ok(ServingMaterial {
        key_pem: data.tls_key.unwrap_or_default().to_vec(),
        cert_pem,
        ca_bundle_pem: ca.roots_pem(),
        not_after,
        renew_at,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::certs::test_support::{
        CA_GET, NOW, NS, POST, TLS_GET, ca, expect, issued, json, names, status, with_version,
    };
    use crate::identity::secrets::ca_secret;
    use axum::http::{Method, Request, Response};
    use kube::client::Body;
    use tower_test::mock;

    pub(crate) fn config() -> ServingConfig {
        ServingConfig {
            namespace: NS.into(),
            secret: "apiguard-webhook-tls".into(),
            ca_secret: "apiguard-ca".into(),
            names: names(),
            lifetime: time::Duration::days(90),
            webhook_config: Some("apiguard".into()),
            resync: DEFAULT_RESYNC,
        }
    }

    #[tokio::test]
    async fn losing_the_create_race_adopts_the_winners_certificate() {
        let ca = ca();
        let ca_obj = ca_secret("apiguard-ca", NS, &ca);
        let winner = with_version(
            serving_secret("apiguard-webhook-tls", NS, &issued(&ca)),
            "7",
        );
        let winner_crt = stored(&winner).tls_crt.unwrap().to_vec();
        let (svc, mut h) = mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(svc, "default");
        let server = tokio::spawn(async move {
            let (_, send) = expect(&mut h, Method::GET, CA_GET).await;
            send.send_response(json(&ca_obj));
            let (_, send) = expect(&mut h, Method::GET, TLS_GET).await;
            send.send_response(status(404, "NotFound"));
            let (body, send) = expect(&mut h, Method::POST, POST).await;
            let mine: Secret = serde_json::from_slice(&body).unwrap();
            assert_eq!(mine.type_.as_deref(), Some("kubernetes.io/tls"));
            send.send_response(status(409, "AlreadyExists"));
            let (_, send) = expect(&mut h, Method::GET, TLS_GET).await;
            send.send_response(json(&winner));
            assert!(h.next_request().await.is_none(), "wrote after adopting");
        });
        let (material, outcome) = ensure_serving_secret(client, &config(), NOW).await.unwrap();
        server.await.unwrap();
        assert_eq!(outcome, SecretOutcome::Kept);
        assert_eq!(material.cert_pem, winner_crt);
        assert_eq!(material.ca_bundle_pem, ca.roots_pem());
    }

    #[tokio::test]
    async fn renewal_replaces_with_a_resource_version_precondition_and_rereads_on_conflict() {
        let ca = ca();
        let ca_obj = ca_secret("apiguard-ca", NS, &ca);
        let old = issued(&ca);
        let stale = with_version(serving_secret("apiguard-webhook-tls", NS, &old), "3");
        // At renewal time both replicas reissue; the other one wrote first.
        let later = renew_at(old.not_before, old.not_after) + time::Duration::hours(1);
        let renewed = with_version(
            serving_secret(
                "apiguard-webhook-tls",
                NS,
                &issue_serving(&ca, &config().names, time::Duration::days(90), later).unwrap(),
            ),
            "4",
        );
        let renewed_crt = stored(&renewed).tls_crt.unwrap().to_vec();
        let (svc, mut h) = mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(svc, "default");
        let server = tokio::spawn(async move {
            let (_, send) = expect(&mut h, Method::GET, CA_GET).await;
            send.send_response(json(&ca_obj));
            let (_, send) = expect(&mut h, Method::GET, TLS_GET).await;
            send.send_response(json(&stale));
            let (body, send) = expect(&mut h, Method::PUT, TLS_GET).await;
            let mine: Secret = serde_json::from_slice(&body).unwrap();
            assert_eq!(mine.metadata.resource_version.as_deref(), Some("3"));
            send.send_response(status(409, "Conflict"));
            let (_, send) = expect(&mut h, Method::GET, TLS_GET).await;
            send.send_response(json(&renewed));
        });
        let (material, outcome) = ensure_serving_secret(client, &config(), later)
            .await
            .unwrap();
        server.await.unwrap();
        assert_eq!(outcome, SecretOutcome::Kept);
        assert_eq!(material.cert_pem, renewed_crt);
    }
}
