//! The `api_key_auth` filter: the ECDS config (credentials from the Secret) and forwarding.

use super::Ctx;
use super::types::*;
use crate::api::ApiKeyAuthentication;
use crate::render::{CLIENT_ID_HEADER, RenderError};
use std::collections::BTreeMap;

pub(super) fn build_api_key_auth(
    ctx: &Ctx<'_>,
    keys: &ApiKeyAuthentication,
) -> Result<ApiKeyAuth, RenderError> {
    if ctx.input.api_keys.is_empty() {
        return Err(ctx.invalid(
            "spec.authentication.apiKeys.secretRef",
            format!(
                "Secret {} provided no API keys (data maps client id -> key)",
                keys.secret_ref.name
            ),
        ));
    }
    let mut seen = BTreeMap::new();
    for (client, key) in ctx.input.api_keys {
        if key.trim().is_empty() {
            return Err(ctx.invalid(
                "spec.authentication.apiKeys.secretRef",
                format!(
                    "Secret {}: the key of client {client:?} is empty",
                    keys.secret_ref.name
                ),
            ));
        }
        if let Some(other) = seen.insert(key.as_str(), client.as_str()) {
            return Err(ctx.invalid(
                "spec.authentication.apiKeys.secretRef",
                format!(
                    "Secret {}: clients {other:?} and {client:?} share a key",
                    keys.secret_ref.name
                ),
            ));
        }
    }
    Ok(ApiKeyAuth {
        credentials: ctx
            .input
            .api_keys
            .iter()
            .map(|(client, key)| ApiKeyCredential {
                key: key.trim().to_string(),
                client: client.clone(),
            })
            .collect(),
        key_sources: vec![ApiKeySource {
            header: keys.header.to_ascii_lowercase(),
        }],
        forwarding: api_key_forwarding(),
    })
}

fn api_key_forwarding() -> ApiKeyForwarding {
    ApiKeyForwarding {
        header: CLIENT_ID_HEADER.into(),
        hide_credentials: true,
    }
}

/// Enables the (otherwise disabled) `api_key_auth` filter on a route.
pub(super) fn api_key_per_route() -> Any {
    Any::FilterConfig(Box::new(FilterConfig {
        config: Some(Any::ApiKeyAuthPerRoute(ApiKeyAuthPerRoute {
            allowed_clients: Vec::new(),
            forwarding: api_key_forwarding(),
        })),
        disabled: false,
    }))
}
