//! The operator-managed webhook serving certificate (`apiguard run` without `--tls-cert`).
//!
//! Every replica, not only the leader:
//! 1. makes sure the operator CA exists ([`super::ca::ensure_ca`]: create-or-adopt,
//!    race-free);
//! 2. makes sure the serving Secret holds a good certificate for the wanted names
//!    (`ensure_serving_secret`), safe against racing replicas;
//! 3. serves that certificate, swapped in without a restart when the Secret changes
//!    ([`SwappableCert`]), and trusts the CA's roots for client certificates (the sensors'
//!    discovery pushes, [`SwappableClientRoots`]);
//! 4. server-side applies `webhooks[].clientConfig.caBundle` of the named
//!    ValidatingWebhookConfiguration (`ensure_ca_bundle`) whenever it
//!    differs from the CA's roots.
//!
//! The Secret and the webhook configuration are watched by name, and looked at again at the
//! certificate's renewal time and every resync interval.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use time::OffsetDateTime;

use super::ca_bundle::{CaBundleOutcome, ensure_ca_bundle};
use super::client_auth::SwappableClientRoots;
use super::resolver::SwappableCert;
use super::serving_secret::{SecretOutcome, ServingConfig, ServingError, ensure_serving_secret};
use super::watch::watch_by_name;
use crate::admin::{Metrics, ReadyHandle};
use crate::api::names::field_managers::WEBHOOK_CA_BUNDLE;

/// Labels of `apiguard_webhook_certificates_issued_total`: the reason, from a fixed set.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IssuedLabels {
    pub reason: &'static str,
}

/// Labels of `apiguard_webhook_ca_bundle_applies_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApplyLabels {
    /// `applied` or `error`.
    pub result: &'static str,
}

/// Metrics of the managed serving certificate.
#[derive(Clone, Default)]
pub struct ServingMetrics {
    /// Unix time of the served certificate's `notAfter`.
    pub not_after: Gauge,
    /// Certificates this replica issued, by reason.
    pub issued: Family<IssuedLabels, Counter>,
    /// `caBundle` applies by this replica, by result.
    pub ca_bundle_applies: Family<ApplyLabels, Counter>,
}

impl ServingMetrics {
    /// Create the metrics and register them in `metrics`.
    pub fn register(metrics: &Metrics) -> Self {
        let this = Self::default();
        metrics.register(
            "apiguard_webhook_certificate_expiry_timestamp_seconds",
            "Unix time of the notAfter of the certificate the webhook serves",
            this.not_after.clone(),
        );
        metrics.register(
            "apiguard_webhook_certificates_issued",
            "Webhook serving certificates this replica issued, by reason",
            this.issued.clone(),
        );
        metrics.register(
            "apiguard_webhook_ca_bundle_applies",
            "Server-side applies of the webhook configuration's caBundle by this replica, by result",
            this.ca_bundle_applies.clone(),
        );
        this
    }
}

/// One look: ensure the Secret, serve its certificate, ensure the `caBundle`. Returns when
/// to look again at the latest.
pub(crate) async fn reconcile_once(
    client: kube::Client,
    config: &ServingConfig,
    cert: &SwappableCert,
    client_roots: Option<&SwappableClientRoots>,
    metrics: &ServingMetrics,
    now: OffsetDateTime,
) -> Result<OffsetDateTime, ServingError> {
    let (material, outcome) = ensure_serving_secret(client.clone(), config, now).await?;
    if let SecretOutcome::Issued(reason) = outcome {
        metrics
            .issued
            .get_or_create(&IssuedLabels {
                reason: reason.as_str(),
            })
            .inc();
    }
    let source = format!("Secret {}/{}", config.namespace, config.secret);
    let installed = cert
        .install_from_secret(&material.cert_pem, &material.key_pem, &source)
        .map_err(|source| ServingError::Unusable {
            namespace: config.namespace.clone(),
            name: config.secret.clone(),
            source: Box::new(source),
        })?;
    if installed {
        tracing::info!(
            secret.namespace = %config.namespace,
            secret.name = %config.secret,
            not_after = %material.not_after,
            "webhook serving certificate loaded"
        );
    }
    metrics.not_after.set(material.not_after.unix_timestamp());
    if let Some(roots) = client_roots {
        match roots.install(&material.ca_bundle_pem) {
            Ok(true) => tracing::info!(
                secret.namespace = %config.namespace,
                secret.name = %config.secret,
                "client certificates are verified against the operator CA's roots"
            ),
            Ok(false) => {}
            Err(e) => tracing::warn!(
                secret.namespace = %config.namespace,
                secret.name = %config.secret,
                error = %e,
                "the CA roots in the serving Secret cannot verify client certificates; keeping the previous ones"
            ),
        }
    }
    if let Some(name) = &config.webhook_config {
        match ensure_ca_bundle(client, name, &material.ca_bundle_pem).await {
            Ok(CaBundleOutcome::Applied) => {
                metrics
                    .ca_bundle_applies
                    .get_or_create(&ApplyLabels { result: "applied" })
                    .inc();
                tracing::info!(
                    webhook_configuration = %name,
                    field_manager = WEBHOOK_CA_BUNDLE,
                    "applied the operator CA as the webhooks' caBundle"
                );
            }
            Ok(CaBundleOutcome::Current) => {}
            Ok(CaBundleOutcome::Absent) => tracing::debug!(
                webhook_configuration = %name,
                "ValidatingWebhookConfiguration not found; caBundle not applied"
            ),
            Err(e) => {
                metrics
                    .ca_bundle_applies
                    .get_or_create(&ApplyLabels { result: "error" })
                    .inc();
                return Err(e.into());
            }
        }
    }
    Ok(material
        .renew_at
        .min(now + time::Duration::try_from(config.resync).unwrap_or(time::Duration::MINUTE)))
}

/// Keeps the serving certificate and the `caBundle` current until `shutdown` completes:
/// reacts to changes of the Secret and of the webhook configuration, renews at two thirds of
/// the certificate's lifetime, and retries failures with backoff. `ready` turns true once a
/// certificate is served.
pub async fn run(
    client: kube::Client,
    config: ServingConfig,
    cert: Arc<SwappableCert>,
    client_roots: Option<Arc<SwappableClientRoots>>,
    ready: ReadyHandle,
    metrics: ServingMetrics,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &config.namespace);
    let mut events = watch_by_name(secrets, "Secret", &config.secret);
    if let Some(name) = &config.webhook_config {
        let vwcs: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
        events = futures::stream::select(
            events,
            watch_by_name(vwcs, "ValidatingWebhookConfiguration", name),
        )
        .boxed();
    }
    tokio::pin!(shutdown);
    let mut backoff = Duration::from_secs(1);
    loop {
        let now = OffsetDateTime::now_utc();
        let wait = match reconcile_once(
            client.clone(),
            &config,
            &cert,
            client_roots.as_deref(),
            &metrics,
            now,
        )
        .await
        {
            Ok(next) => {
                backoff = Duration::from_secs(1);
                ready.set_ready(cert.current().is_some());
                let until = next - OffsetDateTime::now_utc();
                Duration::try_from(until).unwrap_or(Duration::ZERO)
            }
            Err(e) => {
                // Serving goes on with the certificate in force (if any); retry soon.
                ready.set_ready(cert.current().is_some());
                tracing::error!(error = %e, retry_in = ?backoff, "webhook serving certificate not ensured");
                let wait = backoff;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                wait
            }
        };
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(wait) => {}
            event = events.next() => {
                if event.is_none() {
                    // The watch streams never end on their own; if they do, poll.
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::ca_bundle::ca_bundle_apply;
    use crate::certs::serving_secret::tests::config;
    use crate::certs::test_support::{
        CA_GET, NOW, NS, POST, TLS_GET, ca, expect, json, status, vwc,
    };
    use crate::identity::secrets::{ca_secret, stored};
    use axum::http::{Method, Request, Response};
    use kube::client::Body;
    use tower_test::mock;

    #[tokio::test]
    async fn an_absent_secret_is_created_and_the_ca_bundle_applied_with_the_field_manager() {
        let ca = ca();
        let ca_obj = ca_secret("apiguard-ca", NS, &ca);
        let bundle = ca.roots_pem();
        let current = vwc(&[None]);
        let (svc, mut h) = mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(svc, "default");
        let server = tokio::spawn(async move {
            let (_, send) = expect(&mut h, Method::GET, CA_GET).await;
            send.send_response(json(&ca_obj));
            let (_, send) = expect(&mut h, Method::GET, TLS_GET).await;
            send.send_response(status(404, "NotFound"));
            let (body, send) = expect(&mut h, Method::POST, POST).await;
            let created: Secret = serde_json::from_slice(&body).unwrap();
            send.send_response(json(&created));
            let vwc_path =
                "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/apiguard";
            let (_, send) = expect(&mut h, Method::GET, vwc_path).await;
            send.send_response(json(&current));
            let (req, send) = h.next_request().await.unwrap();
            assert_eq!(req.method(), Method::PATCH);
            let query = req.uri().query().unwrap_or_default().to_owned();
            assert!(
                query.contains("fieldManager=apiguard-webhook-ca") && query.contains("force=true"),
                "{query}"
            );
            assert_eq!(
                req.headers()["content-type"],
                "application/apply-patch+yaml"
            );
            let body: serde_json::Value =
                serde_json::from_slice(&req.into_body().collect_bytes().await.unwrap()).unwrap();
            send.send_response(json(&current));
            (created, body)
        });
        let cert = SwappableCert::new();
        let metrics = ServingMetrics::default();
        let roots = SwappableClientRoots::new();
        let next = reconcile_once(client, &config(), &cert, Some(&roots), &metrics, NOW)
            .await
            .unwrap();
        let (created, applied) = server.await.unwrap();
        assert!(cert.current().is_some());
        // The CA's roots now verify client certificates (the sensors' pushes).
        assert!(roots.is_installed());
        assert_eq!(roots.install(&bundle), Ok(false), "the same roots");
        assert_eq!(next, NOW + time::Duration::seconds(60));
        assert_eq!(
            applied,
            ca_bundle_apply(&vwc(&[None]), &bundle),
            "the apply body"
        );
        assert_eq!(stored(&created).ca_crt.unwrap(), bundle.as_bytes());
        assert_eq!(
            metrics
                .issued
                .get_or_create(&IssuedLabels { reason: "Missing" })
                .get(),
            1
        );
        assert_eq!(
            metrics
                .ca_bundle_applies
                .get_or_create(&ApplyLabels { result: "applied" })
                .get(),
            1
        );
    }
}
