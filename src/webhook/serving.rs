//! The operator-managed webhook serving certificate (`apiguard run` without `--tls-cert`).
//!
//! Every replica, not only the leader:
//! 1. makes sure the operator CA exists ([`ensure_ca`]: create-or-adopt, race-free);
//! 2. makes sure the serving Secret holds a good certificate for the wanted names
//!    ([`decide_secret`]), creating it (409: another replica won, re-read) or replacing it with
//!    a `resourceVersion` precondition (409: another replica renewed first, re-read), so racing
//!    replicas converge on one certificate;
//! 3. serves that certificate, swapped in without a restart when the Secret changes
//!    ([`ManagedCert`], a rustls resolver);
//! 4. server-side applies `webhooks[].clientConfig.caBundle` of the named
//!    ValidatingWebhookConfiguration (field manager [`WEBHOOK_CA_BUNDLE`]) whenever it
//!    differs from the CA's roots — after `helm upgrade` resets it, for example.
//!
//! The Secret and the webhook configuration are watched by name, and looked at again at the
//! certificate's renewal time and every resync interval.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use futures::StreamExt;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::admin::{Metrics, ReadyHandle};
use crate::api::names::field_managers::WEBHOOK_CA_BUNDLE;
use crate::identity::k8s::{IdentityK8sError, ensure_ca, stored};
use crate::identity::rotation::{Decision, ReissueReason, renew_at};
use crate::identity::serving::{
    ServingNames, decide_secret, issue_serving, serving_secret, serving_validity,
};
use crate::identity::{CertificateAuthority, IssueError};
use crate::webhook::tls::{TlsError, certified_key};

/// Default name of the serving certificate Secret in the operator namespace.
pub const DEFAULT_SERVING_SECRET: &str = "apiguard-webhook-tls";
/// How often the Secret, the CA and the webhook configuration are looked at even without a
/// watch event (a missed event, a CA replaced by hand).
pub const DEFAULT_RESYNC: Duration = Duration::from_secs(60);

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
pub enum ServingError {
    #[error("operator CA for the webhook serving certificate: {0}")]
    Ca(#[from] IdentityK8sError),
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
    #[error("{action} ValidatingWebhookConfiguration {name}: {source}")]
    WebhookConfigApi {
        action: &'static str,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
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
pub enum SecretOutcome {
    /// The stored certificate was good.
    Kept,
    /// This replica wrote a new certificate, for this reason.
    Issued(ReissueReason),
}

/// A serving certificate as read from (or written to) its Secret.
#[derive(Clone)]
pub struct ServingMaterial {
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
pub async fn ensure_serving_secret(
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

/// Whether any webhook of `vwc` does not carry exactly `bundle_pem` as its `caBundle`.
pub fn ca_bundle_outdated(vwc: &ValidatingWebhookConfiguration, bundle_pem: &str) -> bool {
    vwc.webhooks.iter().flatten().any(|hook| {
        hook.client_config
            .ca_bundle
            .as_ref()
            .is_none_or(|b| b.0 != bundle_pem.as_bytes())
    })
}

/// The server-side apply body that sets `caBundle` of every webhook of `vwc` (and nothing
/// else: `webhooks` is a map list keyed by `name`).
pub fn ca_bundle_apply(
    vwc: &ValidatingWebhookConfiguration,
    bundle_pem: &str,
) -> serde_json::Value {
    // ByteString serializes as base64, as the API wants `caBundle`.
    let encoded = serde_json::to_value(k8s_openapi::ByteString(bundle_pem.as_bytes().to_vec()))
        .unwrap_or_default();
    let webhooks: Vec<serde_json::Value> = vwc
        .webhooks
        .iter()
        .flatten()
        .map(|hook| {
            serde_json::json!({
                "name": hook.name,
                "clientConfig": {"caBundle": encoded},
            })
        })
        .collect();
    serde_json::json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": vwc.metadata.name},
        "webhooks": webhooks,
    })
}

/// What [`ensure_ca_bundle`] found or did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaBundleOutcome {
    /// Every webhook already trusts the CA.
    Current,
    /// The `caBundle`s were applied.
    Applied,
    /// The ValidatingWebhookConfiguration does not exist (not installed yet, or uninstalled:
    /// it is never created here).
    Absent,
}

/// Makes every webhook of ValidatingWebhookConfiguration `name` trust `bundle_pem`.
pub async fn ensure_ca_bundle(
    client: kube::Client,
    name: &str,
    bundle_pem: &str,
) -> Result<CaBundleOutcome, ServingError> {
    let api: Api<ValidatingWebhookConfiguration> = Api::all(client);
    let err = |action, source| ServingError::WebhookConfigApi {
        action,
        name: name.to_string(),
        source: Box::new(source),
    };
    let Some(vwc) = api.get_opt(name).await.map_err(|e| err("reading", e))? else {
        return Ok(CaBundleOutcome::Absent);
    };
    if !ca_bundle_outdated(&vwc, bundle_pem) {
        return Ok(CaBundleOutcome::Current);
    }
    let body = ca_bundle_apply(&vwc, bundle_pem);
    let params = PatchParams::apply(WEBHOOK_CA_BUNDLE).force();
    match api.patch(name, &params, &Patch::Apply(&body)).await {
        Ok(_) => Ok(CaBundleOutcome::Applied),
        // Deleted between the read and the apply (helm uninstall): it is not re-created.
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(CaBundleOutcome::Absent),
        Err(e) => Err(err("applying caBundle to", e)),
    }
}

/// The certificate the webhook serves, swapped in place when the Secret changes. Until the
/// first one is installed, handshakes fail (and `/readyz` says so).
#[derive(Default)]
pub struct ManagedCert {
    current: ArcSwapOption<CertifiedKey>,
    fingerprint: Mutex<Option<[u8; 32]>>,
}

impl std::fmt::Debug for ManagedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagedCert")
            .field("loaded", &self.current.load().is_some())
            .finish_non_exhaustive()
    }
}

impl ManagedCert {
    pub fn new() -> Self {
        Self::default()
    }

    /// The certificate new handshakes get, if one is installed.
    pub fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.current.load_full()
    }

    /// Installs `cert_pem`/`key_pem` unless they are what is served already. `source` names
    /// the Secret in errors. Returns whether a new certificate was installed.
    pub fn install(&self, cert_pem: &[u8], key_pem: &[u8], source: &str) -> Result<bool, TlsError> {
        let mut h = Sha256::new();
        h.update((cert_pem.len() as u64).to_be_bytes());
        h.update(cert_pem);
        h.update(key_pem);
        let fingerprint: [u8; 32] = h.finalize().into();
        let mut last = self
            .fingerprint
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if *last == Some(fingerprint) {
            return Ok(false);
        }
        let certified = certified_key(
            cert_pem,
            key_pem,
            Path::new(&format!("{source} key tls.crt")),
            Path::new(&format!("{source} key tls.key")),
        )?;
        self.current.store(Some(Arc::new(certified)));
        *last = Some(fingerprint);
        Ok(true)
    }
}

impl ResolvesServerCert for ManagedCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.load_full()
    }
}

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
pub async fn reconcile_once(
    client: kube::Client,
    config: &ServingConfig,
    cert: &ManagedCert,
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
        .install(&material.cert_pem, &material.key_pem, &source)
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
                return Err(e);
            }
        }
    }
    Ok(material
        .renew_at
        .min(now + time::Duration::try_from(config.resync).unwrap_or(time::Duration::MINUTE)))
}

/// A stream yielding `()` whenever the object `name` changes (or the watch (re)starts).
fn watch_by_name<K>(api: Api<K>, kind: &str, name: &str) -> futures::stream::BoxStream<'static, ()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let what = format!("{kind} {name}");
    watcher(api, config)
        .default_backoff()
        .filter_map(move |event| {
            let what = what.clone();
            async move {
                match event {
                    Ok(watcher::Event::Apply(_))
                    | Ok(watcher::Event::Delete(_))
                    | Ok(watcher::Event::InitDone) => Some(()),
                    Ok(_) => None,
                    Err(e) => {
                        tracing::warn!(watched = %what, error = %e, "watch failed; retrying");
                        None
                    }
                }
            }
        })
        .boxed()
}

/// Keeps the serving certificate and the `caBundle` current until `shutdown` completes:
/// reacts to changes of the Secret and of the webhook configuration, renews at two thirds of
/// the certificate's lifetime, and retries failures with backoff. `ready` turns true once a
/// certificate is served.
pub async fn run(
    client: kube::Client,
    config: ServingConfig,
    cert: Arc<ManagedCert>,
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
        let wait = match reconcile_once(client.clone(), &config, &cert, &metrics, now).await {
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
    use crate::identity::k8s::ca_secret;
    use crate::identity::serving::IssuedServing;
    use axum::http::{Method, Request, Response, StatusCode};
    use k8s_openapi::ByteString;
    use kube::client::Body;
    use std::net::{IpAddr, Ipv4Addr};
    use time::macros::datetime;
    use tower_test::mock::{self, Handle};

    const NOW: OffsetDateTime = datetime!(2026-03-01 12:00 UTC);
    const NS: &str = "apiguard-system";

    fn config() -> ServingConfig {
        ServingConfig {
            namespace: NS.into(),
            secret: "apiguard-webhook-tls".into(),
            ca_secret: "apiguard-ca".into(),
            names: ServingNames {
                dns_names: vec!["apiguard.apiguard-system.svc".into()],
                ip_addresses: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            },
            lifetime: time::Duration::days(90),
            webhook_config: Some("apiguard".into()),
            resync: DEFAULT_RESYNC,
        }
    }

    fn ca() -> CertificateAuthority {
        CertificateAuthority::generate(NOW - time::Duration::days(1), time::Duration::days(3650))
            .unwrap()
    }

    fn issued(ca: &CertificateAuthority) -> IssuedServing {
        issue_serving(ca, &config().names, time::Duration::days(90), NOW).unwrap()
    }

    fn vwc(bundles: &[Option<&str>]) -> ValidatingWebhookConfiguration {
        let webhooks: Vec<serde_json::Value> = bundles
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let mut client = serde_json::json!({"url": "https://127.0.0.1:8443/validate"});
                if let Some(b) = b {
                    client["caBundle"] =
                        serde_json::to_value(ByteString(b.as_bytes().to_vec())).unwrap();
                }
                serde_json::json!({"name": format!("hook{i}.apiguard.dev"), "clientConfig": client,
                    "sideEffects": "None", "admissionReviewVersions": ["v1"]})
            })
            .collect();
        serde_json::from_value(serde_json::json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": "apiguard"},
            "webhooks": webhooks,
        }))
        .unwrap()
    }

    #[test]
    fn the_ca_bundle_apply_names_each_webhook_and_sets_only_its_ca_bundle() {
        let current = vwc(&[Some("PEM"), Some("OLD")]);
        assert!(ca_bundle_outdated(&current, "PEM"));
        assert!(!ca_bundle_outdated(
            &vwc(&[Some("PEM"), Some("PEM")]),
            "PEM"
        ));
        assert!(ca_bundle_outdated(&vwc(&[None]), "PEM"));
        let body = ca_bundle_apply(&current, "PEM");
        assert_eq!(
            body,
            serde_json::json!({
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "ValidatingWebhookConfiguration",
                "metadata": {"name": "apiguard"},
                "webhooks": [
                    {"name": "hook0.apiguard.dev", "clientConfig": {"caBundle": "UEVN"}},
                    {"name": "hook1.apiguard.dev", "clientConfig": {"caBundle": "UEVN"}},
                ],
            })
        );
    }

    #[test]
    fn the_managed_cert_swaps_only_on_change_and_keeps_serving_on_a_bad_pair() {
        let ca = ca();
        let cert = ManagedCert::new();
        assert!(cert.current().is_none());
        let one = issued(&ca);
        assert!(
            cert.install(
                one.cert_pem.as_bytes(),
                one.key_pem.as_bytes(),
                "Secret a/b"
            )
            .unwrap()
        );
        let first = cert.current().unwrap();
        assert!(
            !cert
                .install(
                    one.cert_pem.as_bytes(),
                    one.key_pem.as_bytes(),
                    "Secret a/b"
                )
                .unwrap()
        );
        let two = issued(&ca);
        let err = cert
            .install(
                two.cert_pem.as_bytes(),
                one.key_pem.as_bytes(),
                "Secret a/b",
            )
            .unwrap_err();
        assert!(err.to_string().contains("Secret a/b key tls.crt"), "{err}");
        assert!(Arc::ptr_eq(&first, &cert.current().unwrap()));
        assert!(
            cert.install(
                two.cert_pem.as_bytes(),
                two.key_pem.as_bytes(),
                "Secret a/b"
            )
            .unwrap()
        );
        assert_ne!(first.cert[0], cert.current().unwrap().cert[0]);
    }

    // --- against a scripted apiserver: the call sequences of racing replicas ---------------

    type H = Handle<Request<Body>, Response<Body>>;

    fn status(code: u16, reason: &str) -> Response<Body> {
        Response::builder()
            .status(code)
            .body(Body::from(
                serde_json::to_vec(&serde_json::json!({
                    "kind": "Status", "apiVersion": "v1", "metadata": {},
                    "status": "Failure", "message": reason, "reason": reason, "code": code
                }))
                .unwrap(),
            ))
            .unwrap()
    }

    fn json<T: serde::Serialize>(v: &T) -> Response<Body> {
        Response::builder()
            .status(StatusCode::OK)
            .body(Body::from(serde_json::to_vec(v).unwrap()))
            .unwrap()
    }

    async fn expect(
        h: &mut H,
        method: Method,
        path: &str,
    ) -> (Vec<u8>, mock::SendResponse<Response<Body>>) {
        let (req, send) = tokio::time::timeout(Duration::from_secs(5), h.next_request())
            .await
            .expect("request in time")
            .expect("a request");
        assert_eq!(req.method(), method, "{}", req.uri());
        assert_eq!(req.uri().path(), path);
        let body = req.into_body().collect_bytes().await.unwrap().to_vec();
        (body, send)
    }

    const CA_GET: &str = "/api/v1/namespaces/apiguard-system/secrets/apiguard-ca";
    const TLS_GET: &str = "/api/v1/namespaces/apiguard-system/secrets/apiguard-webhook-tls";
    const POST: &str = "/api/v1/namespaces/apiguard-system/secrets";

    fn with_version(mut secret: Secret, version: &str) -> Secret {
        secret.metadata.resource_version = Some(version.into());
        secret
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
        let cert = ManagedCert::new();
        let metrics = ServingMetrics::default();
        let next = reconcile_once(client, &config(), &cert, &metrics, NOW)
            .await
            .unwrap();
        let (created, applied) = server.await.unwrap();
        assert!(cert.current().is_some());
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
