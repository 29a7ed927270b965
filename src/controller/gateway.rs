//! The seam between the controller and the pure gateway renderer: what reconcile hands the
//! renderer, and the typed objects it gets back.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;

use super::certs::Leaf;
use crate::api::ApiSecurityPolicy;
use crate::identity::SpiffeId;

/// Everything the renderer needs for one policy; no client, no clock.
#[derive(Debug, Clone, Copy)]
pub struct GatewayInput<'a> {
    pub policy: &'a ApiSecurityPolicy,
    /// The target Service as it is in the cluster.
    pub target: &'a Service,
    /// The gateway's own leaf (served to the target for east-west mTLS, and the sensor's
    /// client certificate towards the operator).
    pub gateway_leaf: &'a Leaf,
    /// The identity the target presents (what the gateway verifies upstream).
    pub target_identity: &'a SpiffeId,
    /// PEM of the roots every workload trusts (also what the sensor checks the operator's
    /// serving certificate against).
    pub trust_bundle_pem: &'a str,
    /// The gateway's serving certificate for clients (from `tls.certificateSecretRef`, else
    /// the gateway leaf, which then also carries `hosts`).
    pub serving: &'a ServingCertificate,
    /// Roots accepted for client certificates (used when the policy asks for them).
    pub client_ca_pem: Option<&'a str>,
    /// Whether the gateway talks mTLS to the target (`eastWest.mtls` not Disabled).
    pub upstream_mtls: bool,
    /// API-key client id -> key, from `authentication.apiKeys.secretRef`.
    pub api_keys: &'a BTreeMap<String, String>,
    /// Provider name -> JWKS document, for providers with `jwks.secretRef`.
    pub jwks_from_secret: &'a BTreeMap<String, String>,
    /// The compiled-and-checked OpenAPI document of `spec.openapi` (None: no contract).
    pub openapi_document: Option<&'a str>,
}

/// A serving certificate chain and its key (PEM).
#[derive(Clone, PartialEq, Eq)]
pub struct ServingCertificate {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for ServingCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCertificate").finish_non_exhaustive()
    }
}

/// The gateway and network objects of one policy. Metadata (labels, ownerRef) is completed
/// by the controller.
#[derive(Debug, Clone, Default)]
pub struct GatewayObjects {
    pub config_maps: Vec<ConfigMap>,
    pub secrets: Vec<Secret>,
    pub deployments: Vec<Deployment>,
    pub services: Vec<Service>,
    pub network_policies: Vec<NetworkPolicy>,
    /// Deterministic hash of the gateway configuration (`status.gateway.configHash`).
    pub config_hash: String,
    /// Name of the gateway Service (`status.gateway.service`).
    pub gateway_service: String,
}

/// A renderer refused the policy; the message names the field.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct RenderError(pub String);

/// Renders the gateway and network objects of a policy. Implemented by the pure renderer in
/// `crate::render`; a trait so the controller's call sequence can be tested on its own.
pub trait GatewayRenderer: Send + Sync + 'static {
    fn render(&self, input: &GatewayInput<'_>) -> Result<GatewayObjects, RenderError>;
    /// Whether the gateways get a shared state store (`--redis-url`), which `scope: Global`
    /// rate limits need.
    fn has_shared_state(&self) -> bool {
        false
    }
}

/// The Envoy renderer (`crate::render`) behind the controller's seam.
#[derive(Debug, Clone, Default)]
pub struct EnvoyRenderer {
    pub options: crate::render::RenderOptions,
}

impl GatewayRenderer for EnvoyRenderer {
    fn has_shared_state(&self) -> bool {
        self.options.shared_state.is_some()
    }

    fn render(&self, input: &GatewayInput<'_>) -> Result<GatewayObjects, RenderError> {
        use crate::render;
        let err = |e: render::RenderError| RenderError(e.to_string());
        let identity = render::GatewayIdentity {
            server_cert_pem: input.serving.cert_pem.clone(),
            server_key_pem: input.serving.key_pem.clone(),
            client_ca_pem: input.client_ca_pem.map(str::to_string),
            upstream: input.upstream_mtls.then(|| render::UpstreamIdentity {
                cert_pem: input.gateway_leaf.cert_pem.clone(),
                key_pem: input.gateway_leaf.key_pem.clone(),
                trust_bundle_pem: input.trust_bundle_pem.to_string(),
                target_spiffe_id: input.target_identity.uri(),
            }),
            // The gateway leaf also identifies the gateway's sensor to the operator (the
            // inventory push; rendered only with `options.discovery_report`).
            workload: Some(render::WorkloadIdentity {
                cert_pem: input.gateway_leaf.cert_pem.clone(),
                key_pem: input.gateway_leaf.key_pem.clone(),
                trust_bundle_pem: input.trust_bundle_pem.to_string(),
            }),
        };
        let rendered = render::render_gateway(&render::RenderInput {
            policy: input.policy,
            target_service: input.target,
            identity: &identity,
            api_keys: input.api_keys,
            jwks_from_secret: input.jwks_from_secret,
            openapi_document: input.openapi_document,
            options: &self.options,
        })
        .map_err(err)?;
        let objects = render::objects::gateway_objects(input.policy, &rendered, &self.options)
            .map_err(err)?;
        let network =
            render::network::target_network_policy(input.policy, input.target).map_err(err)?;
        let gateway_service = objects.service.metadata.name.clone().unwrap_or_default();
        Ok(GatewayObjects {
            config_maps: vec![objects.config_map],
            secrets: vec![objects.secret],
            deployments: vec![objects.deployment],
            services: vec![objects.service],
            network_policies: network.into_iter().collect(),
            config_hash: rendered.config_hash,
            gateway_service,
        })
    }
}
