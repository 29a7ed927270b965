//! The seam between the controller and the pure gateway renderer: what reconcile hands the
//! renderer, and the typed objects it gets back.

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
    /// The gateway's own leaf (served to the target for east-west mTLS).
    pub gateway_leaf: &'a Leaf,
    /// The identity the target presents (what the gateway verifies upstream).
    pub target_identity: &'a SpiffeId,
    /// PEM of the roots every workload trusts.
    pub trust_bundle_pem: &'a str,
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
}
