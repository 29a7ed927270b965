//! The `caBundle` of the webhook's ValidatingWebhookConfiguration: server-side applied
//! (field manager [`WEBHOOK_CA_BUNDLE`]) whenever it differs from the operator CA's roots —
//! after `helm upgrade` resets it, for example. The configuration is never created here.

use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use kube::api::{Api, Patch, PatchParams};

use crate::api::names::field_managers::WEBHOOK_CA_BUNDLE;

/// The apiserver refused or failed a read or apply of the ValidatingWebhookConfiguration.
#[derive(Debug, thiserror::Error)]
#[error("{action} ValidatingWebhookConfiguration {name}: {source}")]
pub(crate) struct CaBundleError {
    action: &'static str,
    name: String,
    #[source]
    source: Box<kube::Error>,
}

/// Whether any webhook of `vwc` does not carry exactly `bundle_pem` as its `caBundle`.
pub(crate) fn ca_bundle_outdated(vwc: &ValidatingWebhookConfiguration, bundle_pem: &str) -> bool {
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
pub(crate) enum CaBundleOutcome {
    /// Every webhook already trusts the CA.
    Current,
    /// The `caBundle`s were applied.
    Applied,
    /// The ValidatingWebhookConfiguration does not exist (not installed yet, or uninstalled:
    /// it is never created here).
    Absent,
}

/// Makes every webhook of ValidatingWebhookConfiguration `name` trust `bundle_pem`.
pub(crate) async fn ensure_ca_bundle(
    client: kube::Client,
    name: &str,
    bundle_pem: &str,
) -> Result<CaBundleOutcome, CaBundleError> {
    let api: Api<ValidatingWebhookConfiguration> = Api::all(client);
    let err = |action, source| CaBundleError {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::test_support::vwc;

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
}
