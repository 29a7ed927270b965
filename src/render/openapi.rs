//! The OpenAPI document of `spec.openapi`: resolved from its source (inline, or a key of a
//! ConfigMap the caller read) and compiled once, so a document the sensor could not load never
//! reaches a gateway. Pure: the caller fetches the ConfigMap (the controller from the
//! apiserver, `apiguard render` from its files).

use super::policy_ref;
use crate::api::{ApiSecurityPolicy, OpenApi};
use crate::contract::{Contract, ContractOptions};
use k8s_openapi::api::core::v1::ConfigMap;

const CONFIG_MAP_FIELD: &str = "spec.openapi.source.configMapRef";
const INLINE_FIELD: &str = "spec.openapi.source.inline";

/// Why the policy's contract cannot be loaded. Every message names the policy and the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenApiError {
    /// The ConfigMap, or its key, does not exist.
    #[error("policy {policy}: {CONFIG_MAP_FIELD}: {what}")]
    ConfigMapNotFound { policy: String, what: String },
    /// The document does not parse or compile; `pointer` is its JSON pointer.
    #[error(
        "policy {policy}: {field}: the OpenAPI document {source_name} is invalid at {pointer}: {message}"
    )]
    Invalid {
        policy: String,
        field: &'static str,
        /// Where the document came from (`in ConfigMap shop/x key openapi.yaml`, `inline`).
        source_name: String,
        /// The JSON pointer of the problem (`(document)` for the whole document).
        pointer: String,
        message: String,
    },
}

/// The ConfigMap `spec.openapi.source.configMapRef` names (`None`: none, or an inline source).
pub fn config_map_name(policy: &ApiSecurityPolicy) -> Option<&str> {
    let source = &policy.spec.openapi.as_ref()?.source;
    source.config_map_ref.as_ref().map(|r| r.name.as_str())
}

/// Resolves and compiles the policy's document: `None` when the policy has no contract.
/// `config_map` is the ConfigMap [`config_map_name`] names, as the caller found it.
pub fn load_document(
    policy: &ApiSecurityPolicy,
    config_map: Option<&ConfigMap>,
) -> Result<Option<String>, OpenApiError> {
    let Some(openapi) = policy.spec.openapi.as_ref() else {
        return Ok(None);
    };
    let (document, field, source_name) = resolve(policy, openapi, config_map)?;
    compile(openapi, &document).map_err(|e| OpenApiError::Invalid {
        policy: policy_ref(policy),
        field,
        source_name,
        pointer: if e.pointer.is_empty() {
            "(document)".into()
        } else {
            e.pointer
        },
        message: e.message,
    })?;
    Ok(Some(document))
}

/// The document text, the field it came from, and how messages name its source.
fn resolve(
    policy: &ApiSecurityPolicy,
    openapi: &OpenApi,
    config_map: Option<&ConfigMap>,
) -> Result<(String, &'static str, String), OpenApiError> {
    let ns = policy.metadata.namespace.as_deref().unwrap_or("default");
    let Some(r) = &openapi.source.config_map_ref else {
        let inline = openapi.source.inline.clone().unwrap_or_default();
        return Ok((inline, INLINE_FIELD, "given inline".into()));
    };
    let missing = |what: String| OpenApiError::ConfigMapNotFound {
        policy: policy_ref(policy),
        what,
    };
    let cm =
        config_map.ok_or_else(|| missing(format!("ConfigMap {ns}/{} does not exist", r.name)))?;
    let data = cm.data.as_ref().and_then(|d| d.get(&r.key)).cloned();
    let binary = || {
        let b = cm.binary_data.as_ref()?.get(&r.key)?;
        String::from_utf8(b.0.clone()).ok()
    };
    let document = data
        .or_else(binary)
        .ok_or_else(|| missing(format!("ConfigMap {ns}/{} has no key {:?}", r.name, r.key)))?;
    Ok((
        document,
        CONFIG_MAP_FIELD,
        format!("in ConfigMap {ns}/{} key {}", r.name, r.key),
    ))
}

/// Compiles `document` the way the sensor will.
fn compile(openapi: &OpenApi, document: &str) -> Result<Contract, crate::contract::ContractError> {
    let options = ContractOptions {
        unknown_properties: openapi.unknown_properties.into(),
    };
    Contract::compile(document, &options)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ConfigMapKeyReference, OpenApiSource};
    use std::collections::BTreeMap;

    const DOC: &str = "openapi: 3.1.0\ninfo: {title: t, version: '1'}\npaths:\n  /orders:\n    get:\n      responses: {'200': {description: ok}}\n";

    fn policy(source: OpenApiSource) -> ApiSecurityPolicy {
        let mut p: ApiSecurityPolicy = serde_json::from_value(serde_json::json!({
            "apiVersion": "apiguard.dev/v1alpha1", "kind": "ApiSecurityPolicy",
            "metadata": {"name": "orders", "namespace": "shop"},
            "spec": {"target": {"service": "orders", "port": 8080}, "exposure": "Internal",
                     "openapi": {"source": {"inline": "x"}}},
        }))
        .unwrap();
        p.spec.openapi.as_mut().unwrap().source = source;
        p
    }

    fn by_ref() -> ApiSecurityPolicy {
        policy(OpenApiSource {
            config_map_ref: Some(ConfigMapKeyReference {
                name: "orders-openapi".into(),
                key: "openapi.yaml".into(),
            }),
            inline: None,
        })
    }

    fn config_map(key: &str, doc: &str) -> ConfigMap {
        ConfigMap {
            data: Some(BTreeMap::from([(key.to_string(), doc.to_string())])),
            ..Default::default()
        }
    }

    #[test]
    fn inline_and_config_map_documents_resolve() {
        let inline = policy(OpenApiSource {
            config_map_ref: None,
            inline: Some(DOC.into()),
        });
        assert_eq!(load_document(&inline, None), Ok(Some(DOC.to_string())));
        assert_eq!(config_map_name(&inline), None);
        let p = by_ref();
        assert_eq!(config_map_name(&p), Some("orders-openapi"));
        let cm = config_map("openapi.yaml", DOC);
        assert_eq!(load_document(&p, Some(&cm)), Ok(Some(DOC.to_string())));
        let mut none = p.clone();
        none.spec.openapi = None;
        assert_eq!(load_document(&none, None), Ok(None));
    }

    #[test]
    fn errors_name_the_policy_field_configmap_and_pointer() {
        let p = by_ref();
        let e = load_document(&p, None).unwrap_err();
        assert!(matches!(e, OpenApiError::ConfigMapNotFound { .. }));
        assert_eq!(
            e.to_string(),
            "policy shop/orders: spec.openapi.source.configMapRef: ConfigMap shop/orders-openapi does not exist"
        );
        let e = load_document(&p, Some(&config_map("other.yaml", DOC))).unwrap_err();
        assert!(e.to_string().contains("has no key \"openapi.yaml\""), "{e}");

        let bad = DOC.replace("'200'", "'9000'");
        let e = load_document(&p, Some(&config_map("openapi.yaml", &bad))).unwrap_err();
        let OpenApiError::Invalid { pointer, .. } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(pointer, "/paths/~1orders/get/responses/9000");
        let text = e.to_string();
        assert!(
            text.starts_with("policy shop/orders: spec.openapi.source.configMapRef: the OpenAPI document in ConfigMap shop/orders-openapi key openapi.yaml is invalid at /paths/~1orders/get"),
            "{text}"
        );
    }
}
