//! The operator CA against the apiserver: the race-free bootstrap ([`ensure_ca`]) and a
//! user-supplied CA ([`load_ca`]). The Secret itself is built and read by
//! `crate::identity::secrets`.

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use time::OffsetDateTime;

use crate::identity::secrets::{SecretError, ca_from_secret, ca_secret};
use crate::identity::{CertificateAuthority, DEFAULT_CA_LIFETIME};

/// Why the operator CA could not be loaded or created. Messages name the Secret.
#[derive(Debug, thiserror::Error)]
pub enum CaSecretError {
    /// The Secret exists but does not hold a usable CA (or a new one could not be generated).
    #[error(transparent)]
    Secret(#[from] SecretError),
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

/// Loads a user-supplied CA from Secret `namespace/name`.
pub async fn load_ca(
    client: kube::Client,
    namespace: &str,
    name: &str,
    now: OffsetDateTime,
) -> Result<CertificateAuthority, CaSecretError> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let api_err = |action, source| CaSecretError::Api {
        action,
        namespace: namespace.to_string(),
        name: name.to_string(),
        source: Box::new(source),
    };
    match api.get_opt(name).await.map_err(|e| api_err("reading", e))? {
        Some(secret) => Ok(ca_from_secret(&secret, now)?),
        None => Err(CaSecretError::NotFound {
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
) -> Result<(CertificateAuthority, CaOrigin), CaSecretError> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let api_err = |action, source| CaSecretError::Api {
        action,
        namespace: namespace.to_string(),
        name: name.to_string(),
        source: Box::new(source),
    };
    if let Some(existing) = api.get_opt(name).await.map_err(|e| api_err("reading", e))? {
        return Ok((ca_from_secret(&existing, now)?, CaOrigin::Existing));
    }
    let ca = CertificateAuthority::generate(now, DEFAULT_CA_LIFETIME).map_err(SecretError::from)?;
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

#[cfg(test)]
mod tests {
    //! `ensure_ca` against a scripted apiserver (tower-test): the call sequence for the
    //! absent, present and lost-the-race cases.
    use super::*;
    use crate::certs::test_support::{expect, json, json_with, status};
    use crate::identity::TLS_KEY;
    use crate::identity::secrets::bytes;
    use axum::http::{Method, Request, Response, StatusCode};
    use kube::client::Body;
    use time::Duration;
    use time::macros::datetime;
    use tower_test::mock;

    const NOW: OffsetDateTime = datetime!(2026-02-01 00:00 UTC);

    const GET: &str = "/api/v1/namespaces/apiguard-system/secrets/apiguard-ca";
    const POST: &str = "/api/v1/namespaces/apiguard-system/secrets";

    #[tokio::test]
    async fn creates_the_ca_when_absent() {
        let (svc, mut h) = mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(svc, "default");
        let server = tokio::spawn(async move {
            let (_, send) = expect(&mut h, Method::GET, GET).await;
            send.send_response(status(404, "NotFound"));
            let (body, send) = expect(&mut h, Method::POST, POST).await;
            let created: Secret = serde_json::from_slice(&body).unwrap();
            assert_eq!(created.type_.as_deref(), Some("kubernetes.io/tls"));
            send.send_response(json_with(StatusCode::CREATED, &created));
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
            send.send_response(json(&secret));
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
            send.send_response(status(404, "NotFound"));
            let (_, send) = expect(&mut h, Method::POST, POST).await;
            send.send_response(status(409, "AlreadyExists"));
            let (_, send) = expect(&mut h, Method::GET, GET).await;
            send.send_response(json(&secret));
        });
        let (ca, origin) = ensure_ca(client, "apiguard-system", "apiguard-ca", NOW)
            .await
            .unwrap();
        assert_eq!(origin, CaOrigin::AdoptedAfterConflict);
        server.await.unwrap();
        assert_eq!(ca.fingerprint(), winner.fingerprint());
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
            send.send_response(json(&secret));
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
