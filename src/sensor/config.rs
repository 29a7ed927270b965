//! `sensor.yaml`: written by the renderer next to the Envoy files (and into the gateway's
//! ConfigMap), read by `apiguard sensor`. Also the names both sides must agree on: where Envoy
//! finds the sensor and which request attributes it sends.
//!
//! Pure: parsing and printing only.

use crate::api::{
    PolicyMode, RequestContractMode, ResponseContractMode, SensitiveDataMode, UnknownPropertiesMode,
};
use serde::{Deserialize, Serialize};

/// The file name, in the Envoy directory and in the gateway ConfigMap.
pub const SENSOR_CONFIG_FILE: &str = "sensor.yaml";
/// `apiVersion` of the file.
pub const SENSOR_CONFIG_API_VERSION: &str = "apiguard.dev/v1alpha1";
/// `kind` of the file.
pub const SENSOR_CONFIG_KIND: &str = "SensorConfig";
/// Where Envoy finds the sensor's gRPC server, in a gateway pod (`render --sensor-addr`).
pub const DEFAULT_SENSOR_ADDR: &str = "127.0.0.1:9002";
/// The sensor's admin port in a gateway pod (`/healthz`, `/readyz`, `/metrics`); the kubelet's
/// probes reach it on the pod IP.
pub const SENSOR_ADMIN_PORT: u16 = 9003;
/// Envoy's cluster name for the sensor.
pub const SENSOR_CLUSTER: &str = "apiguard_sensor";
/// The `log_name` of the gateway's gRPC access log stream to the sensor.
pub const ACCESS_LOG_NAME: &str = "apiguard";

/// The Envoy attributes the ext_proc filter sends with the request headers
/// (`request_attributes`): the client address, the client certificate's URI SAN (mTLS
/// principal) and the matched route's name.
pub const REQUEST_ATTRIBUTES: &[&str] = &[
    "source.address",
    "connection.uri_san_peer_certificate",
    "xds.route_name",
];
/// The dynamic metadata namespace forwarded to the sensor: the JWT filter's verified payload
/// (under the key [`JWT_PAYLOAD_KEY`]).
pub const JWT_METADATA_NAMESPACE: &str = "envoy.filters.http.jwt_authn";
/// The key under [`JWT_METADATA_NAMESPACE`] holding the verified JWT payload.
pub const JWT_PAYLOAD_KEY: &str = "payload";

/// The whole `sensor.yaml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SensorConfig {
    /// Always [`SENSOR_CONFIG_API_VERSION`].
    pub api_version: String,
    /// Always [`SENSOR_CONFIG_KIND`].
    pub kind: String,
    /// The policy this gateway serves (for logs, metrics and problem bodies).
    pub policy: PolicyRef,
    /// The policy's mode: in Audit nothing is refused, whatever `openapi.requests` says.
    #[serde(default)]
    pub mode: PolicyMode,
    /// The OpenAPI contract; absent when the policy has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub openapi: Option<SensorContract>,
    /// Discovery (`spec.discovery.enabled`): the gateway streams its access log to the sensor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery: Option<SensorDiscovery>,
}

/// What discovery needs beside the contract: the routes `spec.authorization.rules` declare.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SensorDiscovery {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub declared: Vec<DeclaredRoute>,
    /// `spec.discovery.sensitiveData`: which JSON response bodies the sensor scans for
    /// sensitive data (Off: none; the gateway then sends no response body for it).
    #[serde(default, skip_serializing_if = "is_off")]
    pub sensitive_data: SensitiveDataMode,
}

fn is_off(mode: &SensitiveDataMode) -> bool {
    *mode == SensitiveDataMode::Off
}

/// One authorization rule's `match`: its methods (empty: any) and path patterns (exact,
/// `/prefix/*` or `{param}` templates; empty: any).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeclaredRoute {
    pub rule: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
}

/// The policy a sensor serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyRef {
    pub namespace: String,
    pub name: String,
}

/// The contract and how it is enforced (`spec.openapi`, with the document resolved).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SensorContract {
    /// The OpenAPI document, as the user wrote it (YAML or JSON).
    pub document: String,
    #[serde(default)]
    pub requests: RequestContractMode,
    #[serde(default)]
    pub responses: ResponseContractMode,
    #[serde(default)]
    pub unknown_properties: UnknownPropertiesMode,
    #[serde(default = "crate::api::policy::default_max_response_bytes")]
    pub max_response_bytes: u64,
    /// Refuse (404) a request whose method and path match no operation of the document
    /// (`spec.requestValidation.rejectUndeclaredRoutes`); in Audit it is logged and let
    /// through. `false`: it passes, counted.
    #[serde(default = "default_true")]
    pub reject_undeclared: bool,
}

fn default_true() -> bool {
    true
}

/// A `sensor.yaml` that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SensorConfigError {
    #[error("{file}: not a sensor config: {message}")]
    Parse { file: String, message: String },
    #[error("{file}: {field} must be {expected:?}, found {found:?}")]
    Header {
        file: String,
        field: &'static str,
        expected: &'static str,
        found: String,
    },
}

impl SensorConfig {
    /// A config for `policy` with no contract.
    pub fn new(namespace: &str, name: &str, mode: PolicyMode) -> Self {
        SensorConfig {
            api_version: SENSOR_CONFIG_API_VERSION.into(),
            kind: SENSOR_CONFIG_KIND.into(),
            policy: PolicyRef {
                namespace: namespace.into(),
                name: name.into(),
            },
            mode,
            openapi: None,
            discovery: None,
        }
    }

    /// Parses `text`, read from `file` (named in errors).
    pub fn from_yaml(file: &str, text: &str) -> Result<Self, SensorConfigError> {
        let config: SensorConfig =
            serde_saphyr::from_str(text).map_err(|e| SensorConfigError::Parse {
                file: file.into(),
                message: e.to_string(),
            })?;
        for (field, expected, found) in [
            ("apiVersion", SENSOR_CONFIG_API_VERSION, &config.api_version),
            ("kind", SENSOR_CONFIG_KIND, &config.kind),
        ] {
            if found != expected {
                return Err(SensorConfigError::Header {
                    file: file.into(),
                    field,
                    expected,
                    found: found.clone(),
                });
            }
        }
        Ok(config)
    }

    /// The file's text (deterministic: the renderer hashes it).
    pub fn to_yaml(&self) -> String {
        serde_saphyr::to_string(self).expect("a SensorConfig always serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_contract() -> SensorConfig {
        let mut config = SensorConfig::new("shop", "orders", PolicyMode::Enforce);
        config.openapi = Some(SensorContract {
            document: "openapi: 3.1.0\ninfo: {title: t, version: '1'}\npaths: {}\n".into(),
            requests: RequestContractMode::Enforce,
            responses: ResponseContractMode::Redact,
            unknown_properties: UnknownPropertiesMode::Allow,
            max_response_bytes: 4096,
            reject_undeclared: false,
        });
        config
    }

    #[test]
    fn round_trips_through_yaml() {
        let config = with_contract();
        let text = config.to_yaml();
        assert_eq!(SensorConfig::from_yaml("sensor.yaml", &text), Ok(config));
    }

    #[test]
    fn contract_defaults_match_the_crd() {
        let text = "apiVersion: apiguard.dev/v1alpha1\nkind: SensorConfig\npolicy: {namespace: a, name: b}\nopenapi:\n  document: x\n";
        let config = SensorConfig::from_yaml("f", text).unwrap();
        assert_eq!(config.mode, PolicyMode::Enforce);
        let contract = config.openapi.unwrap();
        assert_eq!(contract.requests, RequestContractMode::Enforce);
        assert_eq!(contract.responses, ResponseContractMode::Audit);
        assert_eq!(contract.unknown_properties, UnknownPropertiesMode::Reject);
        assert_eq!(contract.max_response_bytes, 1_048_576);
        assert!(contract.reject_undeclared);
    }

    #[test]
    fn sensitive_data_round_trips_and_defaults_to_off() {
        let mut config = SensorConfig::new("shop", "orders", PolicyMode::Enforce);
        config.discovery = Some(SensorDiscovery {
            declared: Vec::new(),
            sensitive_data: SensitiveDataMode::Sampled,
        });
        let text = config.to_yaml();
        assert!(text.contains("sensitiveData: Sampled"), "{text}");
        assert_eq!(SensorConfig::from_yaml("sensor.yaml", &text), Ok(config));
        let off = "apiVersion: apiguard.dev/v1alpha1\nkind: SensorConfig\npolicy: {namespace: a, name: b}\ndiscovery: {}\n";
        let config = SensorConfig::from_yaml("f", off).unwrap();
        assert_eq!(
            config.discovery.unwrap().sensitive_data,
            SensitiveDataMode::Off
        );
        let bad = off.replace("discovery: {}", "discovery: {sensitiveData: Some}");
        let err = SensorConfig::from_yaml("f", &bad).unwrap_err().to_string();
        assert!(err.contains("Some"), "{err}");
    }

    #[test]
    fn errors_name_the_file_and_field() {
        let wrong_kind =
            "apiVersion: apiguard.dev/v1alpha1\nkind: Other\npolicy: {namespace: a, name: b}\n";
        let err = SensorConfig::from_yaml("/etc/gw/sensor.yaml", wrong_kind).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/etc/gw/sensor.yaml: kind must be \"SensorConfig\", found \"Other\""
        );
        let unknown = "apiVersion: apiguard.dev/v1alpha1\nkind: SensorConfig\npolicy: {namespace: a, name: b}\nextra: 1\n";
        let err = SensorConfig::from_yaml("/etc/gw/sensor.yaml", unknown).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("/etc/gw/sensor.yaml: not a sensor config"),
            "{text}"
        );
        assert!(text.contains("extra"), "{text}");
    }
}
