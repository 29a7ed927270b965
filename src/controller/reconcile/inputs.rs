//! What programming a policy reads besides the policy: its target Service and the target's
//! service account (from the caches), and the Secrets its spec names.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::reflector::ObjectRef;

use super::halt::{Halt, Stop};
use super::{Context, Error};
use crate::api::ApiSecurityPolicy;
use crate::controller::conditions::Reason;
use crate::controller::gateway::ServingCertificate;
use crate::render::openapi::{self, OpenApiError};

/// The target Service, from the cache. A missing one is a condition (the Service watch brings
/// the policy back when it appears), not a retry.
pub(super) fn target(ctx: &Context, policy: &ApiSecurityPolicy) -> Result<Service, Stop> {
    let ns = policy.namespace().unwrap_or_default();
    let service = &policy.spec.target.service;
    ctx.settings.inputs
        .services
        .get(&ObjectRef::new(service).within(&ns))
        .map(|s| s.as_ref().clone())
        .ok_or_else(|| {
            Stop::programmed(
                Reason::TargetNotFound,
                format!(
                    "target Service {ns}/{service} does not exist; the policy is programmed when it is created"
                ),
            )
        })
}

/// The target service account: the one used by the newest pod the Service selects ("default"
/// when it selects no pod yet). During a rollout to a new service account the new pods are the
/// newest, so the certificate follows the rollout.
pub(crate) fn target_service_account<'a>(
    svc: &Service,
    pods: impl IntoIterator<Item = &'a Pod>,
) -> String {
    let ns = svc.namespace();
    let selector = svc
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .filter(|s| !s.is_empty());
    let Some(selector) = selector else {
        return "default".into();
    };
    pods.into_iter()
        .filter(|p| p.namespace() == ns && p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            let labels = p.labels();
            selector.iter().all(|(k, v)| labels.get(k) == Some(v))
        })
        .max_by_key(|p| {
            (
                p.metadata.creation_timestamp.as_ref().map(|t| t.0),
                p.name_any(),
            )
        })
        .and_then(|p| p.spec.as_ref()?.service_account_name.clone())
        .filter(|sa| !sa.is_empty())
        .unwrap_or_else(|| "default".into())
}

/// Reads a Secret (`None`: it does not exist).
pub(super) async fn read_secret(
    ctx: &Context,
    ns: &str,
    name: &str,
) -> Result<Option<Secret>, Error> {
    Api::<Secret>::namespaced(ctx.settings.client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(|e| Error::Read {
            kind: "Secret",
            namespace: ns.to_string(),
            name: name.to_string(),
            source: Box::new(e),
        })
}

/// The document of `spec.openapi` (None: the policy has none), read from its ConfigMap and
/// compiled. A missing ConfigMap or key, or a document that does not compile, is a [`Stop`]
/// of the contract (the ConfigMap watch brings the policy back when it changes).
pub(super) async fn openapi_document(
    ctx: &Context,
    policy: &ApiSecurityPolicy,
) -> Result<Option<String>, Halt> {
    let ns = policy.namespace().unwrap_or_default();
    let config_map = match openapi::config_map_name(policy) {
        Some(name) => Api::<ConfigMap>::namespaced(ctx.settings.client.clone(), &ns)
            .get_opt(name)
            .await
            .map_err(|e| Error::Read {
                kind: "ConfigMap",
                namespace: ns.clone(),
                name: name.to_string(),
                source: Box::new(e),
            })?,
        None => None,
    };
    openapi::load_document(policy, config_map.as_ref()).map_err(|e| {
        let reason = match e {
            OpenApiError::ConfigMapNotFound { .. } => Reason::ConfigMapNotFound,
            OpenApiError::Invalid { .. } => Reason::InvalidOpenAPI,
        };
        Halt::Stop(Stop::contract(reason, e.to_string()))
    })
}

/// The OpenAPI document the gateway enforces now: `openapi.document` of the `sensor.yaml` in
/// the gateway's ConfigMap (None: no gateway yet, no contract in it, or a file this version
/// cannot read, which is logged).
pub(super) async fn last_loaded_document(
    ctx: &Context,
    policy: &ApiSecurityPolicy,
) -> Result<Option<String>, Error> {
    use crate::sensor::config::{SENSOR_CONFIG_FILE, SensorConfig};
    let ns = policy.namespace().unwrap_or_default();
    let name = policy.gateway_name();
    let config_map = Api::<ConfigMap>::namespaced(ctx.settings.client.clone(), &ns)
        .get_opt(&name)
        .await
        .map_err(|e| Error::Read {
            kind: "ConfigMap",
            namespace: ns.clone(),
            name: name.clone(),
            source: Box::new(e),
        })?;
    let Some(text) = config_map
        .and_then(|cm| cm.data)
        .and_then(|mut data| data.remove(SENSOR_CONFIG_FILE))
    else {
        return Ok(None);
    };
    match SensorConfig::from_yaml(&format!("ConfigMap {ns}/{name}"), &text) {
        Ok(config) => Ok(config.openapi.map(|o| o.document)),
        Err(e) => {
            tracing::warn!(error = %e, "the gateway's sensor.yaml cannot be read back; its contract is not kept");
            Ok(None)
        }
    }
}

/// Secrets the policy refers to, read for the renderer.
pub(super) struct References {
    pub(super) api_keys: BTreeMap<String, String>,
    pub(super) jwks: BTreeMap<String, String>,
    pub(super) serving: Option<ServingCertificate>,
}

/// Reads the Secrets named in the spec. A [`Stop`] when one is missing or incomplete (a
/// condition, not a retry: the Secret watch brings the policy back when it appears).
pub(super) async fn fetch_references(
    ctx: &Context,
    policy: &ApiSecurityPolicy,
) -> Result<References, Halt> {
    let ns = policy.namespace().unwrap_or_default();
    let spec = &policy.spec;
    let missing = |what: String| Halt::Stop(Stop::programmed(Reason::ReferenceNotFound, what));
    let mut refs = References {
        api_keys: BTreeMap::new(),
        jwks: BTreeMap::new(),
        serving: None,
    };
    let text = |secret: &Secret, key: &str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
    };
    let auth = spec.authentication();
    if let Some(keys) = &auth.api_keys {
        let name = &keys.secret_ref.name;
        let Some(secret) = read_secret(ctx, &ns, name).await? else {
            return Err(missing(format!(
                "Secret {ns}/{name} (spec.authentication.apiKeys.secretRef) does not exist"
            )));
        };
        for (client, key) in secret.data.unwrap_or_default() {
            match String::from_utf8(key.0) {
                Ok(k) => {
                    refs.api_keys.insert(client, k.trim().to_string());
                }
                Err(_) => {
                    return Err(missing(format!(
                        "Secret {ns}/{name} key {client} (spec.authentication.apiKeys.secretRef) is not UTF-8 text"
                    )));
                }
            }
        }
    }
    if let Some(jwt) = &auth.jwt {
        for (i, provider) in jwt.providers.iter().enumerate() {
            let Some(r) = &provider.jwks.secret_ref else {
                continue;
            };
            let field = format!("spec.authentication.jwt.providers[{i}].jwks.secretRef");
            let doc = match read_secret(ctx, &ns, &r.name).await? {
                Some(secret) => text(&secret, &r.key),
                None => None,
            };
            match doc {
                Some(doc) => {
                    refs.jwks.insert(provider.name.clone(), doc);
                }
                None => {
                    return Err(missing(format!(
                        "Secret {ns}/{} has no key {} ({field})",
                        r.name, r.key
                    )));
                }
            }
        }
    }
    if let Some(r) = &spec.tls().certificate_secret_ref {
        let field = "spec.tls.certificateSecretRef";
        let secret = read_secret(ctx, &ns, &r.name).await?;
        let pair = secret
            .as_ref()
            .and_then(|s| Some((text(s, "tls.crt")?, text(s, "tls.key")?)));
        match pair {
            Some((cert_pem, key_pem)) => {
                refs.serving = Some(ServingCertificate { cert_pem, key_pem })
            }
            None => {
                return Err(missing(format!(
                    "Secret {ns}/{} ({field}) does not exist or lacks tls.crt/tls.key",
                    r.name
                )));
            }
        }
    }
    Ok(refs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn pod(name: &str, labels: &[(&str, &str)], sa: Option<&str>, created: i64) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "shop",
                "labels": labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
                "creationTimestamp": k8s_openapi::jiff::Timestamp::from_second(created).unwrap().to_string()},
            "spec": {"containers": [], "serviceAccountName": sa},
        }))
        .unwrap()
    }

    #[test]
    fn the_target_identity_is_the_newest_selected_pods_service_account() {
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "api", "namespace": "shop"},
            "spec": {"selector": {"app": "api"}},
        }))
        .unwrap();
        let old = pod("api-1", &[("app", "api"), ("v", "1")], Some("api-v1"), 100);
        let new = pod("api-2", &[("app", "api"), ("v", "2")], Some("api-v2"), 200);
        let other = pod("web", &[("app", "web")], Some("web"), 300);
        let mut elsewhere = pod("api-x", &[("app", "api")], Some("x"), 400);
        elsewhere.metadata.namespace = Some("other".into());
        let pods = [old.clone(), other.clone(), new.clone(), elsewhere];
        assert_eq!(target_service_account(&svc, &pods), "api-v2");
        // While the newest goes away, the one left counts.
        let mut leaving = new.clone();
        leaving.metadata.deletion_timestamp = old.metadata.creation_timestamp.clone();
        assert_eq!(target_service_account(&svc, [&old, &leaving]), "api-v1");
        // No pod, no service account, or no selector: "default".
        assert_eq!(target_service_account(&svc, [&other]), "default");
        let no_sa = pod("api-3", &[("app", "api")], None, 500);
        assert_eq!(target_service_account(&svc, [&no_sa]), "default");
        let mut headless = svc.clone();
        headless.spec.as_mut().unwrap().selector = None;
        assert_eq!(target_service_account(&headless, &pods), "default");
    }
}
