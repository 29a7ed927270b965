//! Rendering: an `ApiSecurityPolicy` (plus the target Service and identity material the caller
//! fetched) becomes the Envoy gateway configuration, the NetworkPolicies and the Kubernetes
//! objects the controller applies.
//!
//! Everything here is a pure function of its inputs: no client, no clock, no randomness. The
//! same input always renders byte-identical files (maps are `BTreeMap`s, lists keep the
//! policy's order), so [`RenderedGateway::config_hash`] changes only when the configuration does.
//!
//! - [`envoy`]: bootstrap + file-based dynamic resources (LDS/CDS with `watched_directory`).
//! - [`network`]: NetworkPolicies around the target's pods.
//! - [`objects`]: ConfigMap, Secret, Deployment and Service of the gateway.
//! - [`openapi`]: the document of `spec.openapi`, resolved from its source and compiled.
//!
//! The `apiguard render` subcommand lives with the command line, in `crate::cli::render`.

pub mod envoy;
pub mod network;
pub mod objects;
pub mod openapi;

#[cfg(test)]
mod openapi_tests;
#[cfg(test)]
mod tests;

use crate::api::ApiSecurityPolicy;
use crate::sensor::config::DEFAULT_SENSOR_ADDR;
use k8s_openapi::api::core::v1::{ResourceRequirements, Service};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// The header that carries the authenticated API-key client id to the upstream (and into RBAC
/// and the access log). Client-sent copies are removed before authentication.
pub(crate) const CLIENT_ID_HEADER: &str = "x-apiguard-client-id";

/// Certificates and keys the gateway uses, as PEM strings fetched by the caller.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct GatewayIdentity {
    /// Serving certificate chain (leaf first) for downstream TLS.
    pub server_cert_pem: String,
    /// Its private key.
    pub server_key_pem: String,
    /// Roots that sign accepted client certificates (`tls.clientCertificate` Optional/Required).
    pub client_ca_pem: Option<String>,
    /// The gateway's own identity towards the target (east-west mTLS).
    pub upstream: Option<UpstreamIdentity>,
    /// The gateway's workload identity for the sensor's inventory push to the operator
    /// (used only with [`RenderOptions::discovery_report`]).
    pub workload: Option<WorkloadIdentity>,
}

impl std::fmt::Debug for GatewayIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayIdentity")
            .field("client_ca", &self.client_ca_pem.is_some())
            .field("upstream", &self.upstream)
            .field("workload", &self.workload)
            .finish_non_exhaustive()
    }
}

/// The gateway's SPIFFE certificate as the sensor presents it to the operator, and the roots
/// the operator's serving certificate must chain to.
#[derive(Clone, PartialEq, Eq)]
pub struct WorkloadIdentity {
    /// The gateway's SPIFFE certificate chain (`spiffe://<td>/ns/<ns>/sa/<policy>-apiguard`).
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
    /// The operator CA's roots.
    pub trust_bundle_pem: String,
}

impl std::fmt::Debug for WorkloadIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadIdentity").finish_non_exhaustive()
    }
}

/// Where the sensor pushes its discovery inventory (the operator's `POST /v1/discovery`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryReportOptions {
    /// `https://…/v1/discovery`.
    pub url: String,
    /// Seconds between two looks at the inventory (at least 1).
    pub interval_seconds: u64,
}

/// The gateway's client certificate for the target and how it checks the target.
#[derive(Clone, PartialEq, Eq)]
pub struct UpstreamIdentity {
    /// The gateway's SPIFFE certificate chain.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
    /// Roots the target's certificate must chain to.
    pub trust_bundle_pem: String,
    /// The SPIFFE ID (URI SAN) the target's certificate must carry.
    pub target_spiffe_id: String,
}

impl std::fmt::Debug for UpstreamIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamIdentity")
            .field("target_spiffe_id", &self.target_spiffe_id)
            .finish_non_exhaustive()
    }
}

/// Where and how the gateway runs.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderOptions {
    /// Address the gateway listener binds.
    pub listen_address: String,
    /// Port the gateway listener binds.
    pub listen_port: u16,
    /// Address of Envoy's admin interface (keep it on loopback).
    pub admin_address: String,
    /// Port of Envoy's admin interface.
    pub admin_port: u16,
    /// Send traffic here (`host:port`) instead of the target Service's cluster DNS name.
    pub upstream_override: Option<String>,
    /// Directory (inside the gateway container) holding the non-secret files.
    pub config_dir: String,
    /// Directory (inside the gateway container) holding the secret files.
    pub secret_dir: String,
    /// Access log destination.
    pub access_log_path: String,
    /// CA bundle used to verify remote JWKS endpoints.
    pub system_ca_file: String,
    /// The cluster's DNS domain (`cluster.local`).
    pub cluster_domain: String,
    /// Distinct per-client rate-limit buckets kept per route (least recently used evicted).
    pub max_dynamic_descriptors: u32,
    /// Envoy image of the gateway Deployment.
    pub envoy_image: String,
    /// Replicas of the gateway Deployment.
    pub replicas: i32,
    /// Where Envoy finds the sensor's gRPC server (`host:port`), and where the sensor sidecar
    /// listens.
    pub sensor_address: String,
    /// Image of the sensor sidecar (the operator's own image).
    pub sensor_image: String,
    /// Resources of the sensor sidecar.
    pub sensor_resources: ResourceRequirements,
    /// Directory (inside the sensor container) holding `sensor.yaml`.
    pub sensor_config_dir: String,
    /// Where the sensor of a gateway with discovery pushes its inventory (with the workload
    /// identity of [`GatewayIdentity::workload`]); None: no push, the inventory stays in the
    /// sidecar.
    pub discovery_report: Option<DiscoveryReportOptions>,
    /// The shared state store every gateway's sensor uses (`--redis-url`), which `scope:
    /// Global` rate limits need; None: none (the controller then refuses such policies).
    pub shared_state: Option<SharedStateOptions>,
}

/// The operator's Redis, passed to every sensor: the URL as an environment variable, the
/// password through the gateway's Secret (`secretKeyRef`), never in a ConfigMap or argument.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct SharedStateOptions {
    /// `redis://…`, `rediss://…`, `redis+sentinel://…` or `redis+cluster://…` (without a
    /// password: it comes apart).
    pub url: String,
    /// The password (from the operator's Secret), if any.
    pub password: Option<String>,
    /// The CA certificates (PEM) of a `rediss…` Redis with a private CA: the sensor checks the
    /// server against them instead of the system's roots.
    pub ca_pem: Option<String>,
    /// The client certificate and key (PEM) the sensor presents to a Redis that asks for one.
    pub client_identity: Option<crate::shared_state::ClientIdentity>,
}

impl std::fmt::Debug for SharedStateOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedStateOptions")
            .field("url", &self.url)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("ca_pem", &self.ca_pem.as_ref().map(String::len))
            .field("client_identity", &self.client_identity)
            .finish()
    }
}

/// The sensor image when none is configured: the operator's image of this version.
pub const DEFAULT_SENSOR_IMAGE: &str =
    concat!("ghcr.io/apiguard/apiguard:", env!("CARGO_PKG_VERSION"));

/// The sensor sidecar's resources when none are configured (JSON, as `--sensor-resources`
/// takes them).
pub const DEFAULT_SENSOR_RESOURCES: &str =
    r#"{"requests":{"cpu":"50m","memory":"64Mi"},"limits":{"cpu":"1","memory":"256Mi"}}"#;

/// Parses container resources given as JSON (`{"requests":{...},"limits":{...}}`); a
/// quantity may be a number (`{"cpu": 1}`, as Helm's `toJson` writes it).
pub fn parse_resources(json: &str) -> Result<ResourceRequirements, String> {
    let mut value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("not JSON: {e}"))?;
    for part in ["requests", "limits"] {
        if let Some(map) = value.get_mut(part).and_then(|m| m.as_object_mut()) {
            for q in map.values_mut().filter(|q| q.is_number()) {
                *q = serde_json::Value::String(q.to_string());
            }
        }
    }
    serde_json::from_value(value).map_err(|e| format!("not container resources: {e}"))
}

/// [`DEFAULT_SENSOR_RESOURCES`], parsed.
pub fn default_sensor_resources() -> ResourceRequirements {
    parse_resources(DEFAULT_SENSOR_RESOURCES).expect("DEFAULT_SENSOR_RESOURCES is valid")
}

impl Default for RenderOptions {
    fn default() -> Self {
        Self {
            listen_address: "0.0.0.0".into(),
            listen_port: 8443,
            admin_address: "127.0.0.1".into(),
            admin_port: 9901,
            upstream_override: None,
            config_dir: "/etc/apiguard/gateway".into(),
            secret_dir: "/etc/apiguard/gateway".into(),
            access_log_path: "/dev/stdout".into(),
            system_ca_file: "/etc/ssl/certs/ca-certificates.crt".into(),
            cluster_domain: "cluster.local".into(),
            max_dynamic_descriptors: 10_000,
            envoy_image: "envoyproxy/envoy:v1.40.0".into(),
            replicas: 2,
            sensor_address: DEFAULT_SENSOR_ADDR.into(),
            sensor_image: DEFAULT_SENSOR_IMAGE.into(),
            sensor_resources: default_sensor_resources(),
            sensor_config_dir: "/etc/apiguard/sensor".into(),
            discovery_report: None,
            shared_state: None,
        }
    }
}

/// Everything the renderer needs, fetched by the caller.
#[derive(Debug, Clone, Copy)]
pub struct RenderInput<'a> {
    pub policy: &'a ApiSecurityPolicy,
    pub target_service: &'a Service,
    pub identity: &'a GatewayIdentity,
    /// API-key client id -> key, from the Secret `authentication.apiKeys.secretRef`.
    pub api_keys: &'a BTreeMap<String, String>,
    /// Provider name -> JWKS document, for providers with `jwks.secretRef`.
    pub jwks_from_secret: &'a BTreeMap<String, String>,
    /// The OpenAPI document of `spec.openapi`, resolved from its source (see [`openapi`]);
    /// `None` when the policy has no contract.
    pub openapi_document: Option<&'a str>,
    pub options: &'a RenderOptions,
}

/// One rendered file of the gateway.
#[derive(Clone, PartialEq, Eq)]
pub struct RenderedFile {
    pub contents: String,
    /// Secret files (private keys, API keys) go into the Secret, never the ConfigMap.
    pub secret: bool,
}

impl std::fmt::Debug for RenderedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.secret {
            write!(f, "RenderedFile(secret, {} bytes)", self.contents.len())
        } else {
            write!(f, "RenderedFile({:?})", self.contents)
        }
    }
}

/// The gateway's files, by file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedGateway {
    pub files: BTreeMap<String, RenderedFile>,
    /// `sha256:` of every file name and contents in name order.
    pub config_hash: String,
}

impl RenderedGateway {
    pub fn new(files: BTreeMap<String, RenderedFile>) -> Self {
        let config_hash = hash_files(files.iter().map(|(n, f)| (n.as_str(), f.contents.as_str())));
        Self { files, config_hash }
    }
    /// Files for the ConfigMap.
    pub(crate) fn config_files(&self) -> BTreeMap<String, String> {
        self.files
            .iter()
            .filter(|(_, f)| !f.secret)
            .map(|(n, f)| (n.clone(), f.contents.clone()))
            .collect()
    }
    /// Files for the Secret.
    pub fn secret_files(&self) -> BTreeMap<String, String> {
        self.files
            .iter()
            .filter(|(_, f)| f.secret)
            .map(|(n, f)| (n.clone(), f.contents.clone()))
            .collect()
    }
}

/// The canonical hash of a set of files: length-prefixed names and contents, in the given order.
pub(crate) fn hash_files<'a>(files: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let mut h = Sha256::new();
    for (name, contents) in files {
        h.update((name.len() as u64).to_be_bytes());
        h.update(name.as_bytes());
        h.update((contents.len() as u64).to_be_bytes());
        h.update(contents.as_bytes());
    }
    format!("sha256:{}", hex::encode(h.finalize()))
}

/// Why a policy cannot be rendered. Every variant names the policy and the field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RenderError {
    #[error("policy {policy}: {field}: {message}")]
    Invalid {
        policy: String,
        field: String,
        message: String,
    },
    #[error("policy {policy}: cannot serialize {what}: {message}")]
    Serialize {
        policy: String,
        what: String,
        message: String,
    },
}

/// Renders the gateway files for one policy.
pub fn render_gateway(input: &RenderInput<'_>) -> Result<RenderedGateway, RenderError> {
    envoy::render(input)
}

/// `<namespace>/<name>` of a policy, for messages.
pub(crate) fn policy_ref(policy: &ApiSecurityPolicy) -> String {
    format!(
        "{}/{}",
        policy.metadata.namespace.as_deref().unwrap_or("default"),
        policy.metadata.name.as_deref().unwrap_or("")
    )
}
