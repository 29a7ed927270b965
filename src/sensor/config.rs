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
    /// Where the sensor pushes its discovery inventory (the operator's `POST /v1/discovery`,
    /// over mTLS); absent: the inventory stays in the sidecar (`GET /inventory`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<SensorReport>,
    /// The policy's `spec.runtime` as written (detectors and the traffic baseline): the
    /// sensor counts the access log's requests into them and, for `Block` detectors, refuses
    /// blocked keys at the request headers. Absent: no detection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<crate::api::Runtime>,
    /// The policy's `scope: Global` rate limits, decided by the sensor's rate limit service
    /// (Envoy's `ratelimit` filter sends it the descriptors of [`GLOBAL_LIMIT_ENTRY`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub global_rate_limits: Vec<GlobalRateLimit>,
}

/// The rate limit domain the gateway's `ratelimit` filter sends to the sensor.
pub const RATE_LIMIT_DOMAIN: &str = "apiguard";
/// The descriptor entry naming the global limit (`spec.rateLimits[].name`); the first entry of
/// every descriptor the gateway sends.
pub const GLOBAL_LIMIT_ENTRY: &str = "apiguard_limit";
/// The descriptor entry holding the client's value (claim, API-key client, header) of a
/// limit keyed by one.
pub const CLIENT_ENTRY: &str = "client";
/// The entry Envoy's `remote_address` action writes (its key is Envoy's, not configurable):
/// the client IP of a limit keyed by it.
pub const REMOTE_ADDRESS_ENTRY: &str = "remote_address";

/// One `scope: Global` rate limit: `requests` per fixed window of `unitSeconds`, per client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GlobalRateLimit {
    /// `spec.rateLimits[].name`.
    pub name: String,
    /// Requests allowed per window; at least 1.
    pub requests: u32,
    /// The window, in seconds (1 to 86400).
    pub unit_seconds: u64,
}

impl GlobalRateLimit {
    /// The first problem of the limit at `index`, as `(field, message)`.
    fn check(&self, index: usize) -> Result<(), (String, String)> {
        let field = |f: &str| format!("globalRateLimits[{index}].{f}");
        if self.name.is_empty() {
            return Err((field("name"), "must not be empty".into()));
        }
        if self.requests == 0 {
            return Err((field("requests"), "must be at least 1".into()));
        }
        if !(1..=crate::shared_state::MAX_WINDOW_SECS).contains(&self.unit_seconds) {
            return Err((
                field("unitSeconds"),
                format!("must be 1-{}", crate::shared_state::MAX_WINDOW_SECS),
            ));
        }
        Ok(())
    }
}

/// Every global limit is valid and names are unique.
fn check_global_rate_limits(limits: &[GlobalRateLimit]) -> Result<(), (String, String)> {
    for (i, limit) in limits.iter().enumerate() {
        limit.check(i)?;
        if limits[..i].iter().any(|l| l.name == limit.name) {
            return Err((
                format!("globalRateLimits[{i}].name"),
                format!("{:?} is used twice", limit.name),
            ));
        }
    }
    Ok(())
}

/// The inventory push to the operator: the URL, how often, and the files of the gateway's
/// workload identity (relative paths are relative to `sensor.yaml`'s directory; they are read
/// at every push, so a renewed certificate is picked up).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SensorReport {
    /// `https://host[:port]/v1/discovery`.
    pub url: String,
    /// Seconds between two looks at the inventory (a push when it changed, and at least every
    /// [`HEARTBEAT_INTERVALS`] intervals); at least 1.
    #[serde(default = "default_report_interval")]
    pub interval_seconds: u64,
    /// The client certificate chain (PEM), whose URI SAN is the gateway's SPIFFE ID.
    pub cert_file: String,
    /// Its private key (PEM).
    pub key_file: String,
    /// The roots the operator's serving certificate must chain to (PEM).
    pub ca_file: String,
}

/// `report.intervalSeconds` when not given.
pub const DEFAULT_REPORT_INTERVAL_SECONDS: u64 = 30;
/// An unchanged inventory is pushed again after this many intervals (a heartbeat: the
/// operator shows when each gateway last reported).
pub const HEARTBEAT_INTERVALS: u32 = 10;
/// The file names the renderer gives the workload identity, beside `sensor.yaml`.
pub const IDENTITY_CERT_FILE: &str = "identity.crt";
/// The workload identity's private key (from the gateway Secret).
pub const IDENTITY_KEY_FILE: &str = "identity.key";
/// The roots the operator's certificate is checked against.
pub const IDENTITY_CA_FILE: &str = "identity-ca.crt";

fn default_report_interval() -> u64 {
    DEFAULT_REPORT_INTERVAL_SECONDS
}

impl SensorReport {
    /// The section for `url` every `interval_seconds`, with the renderer's file names.
    pub fn new(url: &str, interval_seconds: u64) -> Self {
        SensorReport {
            url: url.into(),
            interval_seconds,
            cert_file: IDENTITY_CERT_FILE.into(),
            key_file: IDENTITY_KEY_FILE.into(),
            ca_file: IDENTITY_CA_FILE.into(),
        }
    }

    /// The first problem of the section, as `(field, message)`.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.interval_seconds == 0 {
            return Err(("report.intervalSeconds", "must be at least 1".into()));
        }
        check_report_url(&self.url).map_err(|m| ("report.url", m))?;
        for (field, value) in [
            ("report.certFile", &self.cert_file),
            ("report.keyFile", &self.key_file),
            ("report.caFile", &self.ca_file),
        ] {
            if value.is_empty() {
                return Err((field, "must name a file".into()));
            }
        }
        Ok(())
    }
}

/// `url` is `https://` with a host (the push always goes over TLS).
pub fn check_report_url(url: &str) -> Result<(), String> {
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    if uri.scheme_str() != Some("https") {
        return Err(format!("{url:?} must be an https:// URL"));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{url:?} has no host"));
    }
    Ok(())
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
    #[error("{file}: {field} {message}")]
    Invalid {
        file: String,
        field: String,
        message: String,
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
            report: None,
            runtime: None,
            global_rate_limits: Vec::new(),
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
        if let Some(report) = &config.report {
            report
                .check()
                .map_err(|(field, message)| SensorConfigError::Invalid {
                    file: file.into(),
                    field: field.into(),
                    message,
                })?;
        }
        check_global_rate_limits(&config.global_rate_limits).map_err(|(field, message)| {
            SensorConfigError::Invalid {
                file: file.into(),
                field,
                message,
            }
        })?;
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

    const HEADER: &str =
        "apiVersion: apiguard.dev/v1alpha1\nkind: SensorConfig\npolicy: {namespace: a, name: b}\n";

    #[test]
    fn the_report_section_round_trips_and_defaults_its_interval() {
        let mut config = with_contract();
        config.report = Some(SensorReport::new(
            "https://apiguard.apiguard-system.svc:443/v1/discovery",
            15,
        ));
        let text = config.to_yaml();
        assert!(text.contains("intervalSeconds: 15"), "{text}");
        assert!(text.contains("certFile: identity.crt"), "{text}");
        assert_eq!(SensorConfig::from_yaml("sensor.yaml", &text), Ok(config));

        let text = format!(
            "{HEADER}report:\n  url: https://op.example/v1/discovery\n  certFile: c\n  keyFile: k\n  caFile: ca\n"
        );
        let report = SensorConfig::from_yaml("f", &text).unwrap().report.unwrap();
        assert_eq!(report.interval_seconds, 30);
        assert_eq!(
            (
                report.cert_file.as_str(),
                report.key_file.as_str(),
                report.ca_file.as_str()
            ),
            ("c", "k", "ca")
        );
        // Without the section, nothing is pushed and nothing is printed.
        let plain = SensorConfig::new("a", "b", PolicyMode::Enforce);
        assert!(!plain.to_yaml().contains("report"));
    }

    #[test]
    fn global_rate_limits_round_trip_and_bad_ones_name_their_field() {
        let mut config = SensorConfig::new("shop", "orders", PolicyMode::Enforce);
        config.global_rate_limits = vec![GlobalRateLimit {
            name: "checkout".into(),
            requests: 10,
            unit_seconds: 60,
        }];
        let text = config.to_yaml();
        assert!(text.contains("unitSeconds: 60"), "{text}");
        assert_eq!(SensorConfig::from_yaml("sensor.yaml", &text), Ok(config));
        assert!(
            !SensorConfig::new("a", "b", PolicyMode::Enforce)
                .to_yaml()
                .contains("globalRateLimits")
        );
        let limit = |name: &str, requests: u32, unit: u64| {
            format!("  - {{name: {name}, requests: {requests}, unitSeconds: {unit}}}\n")
        };
        let cases = [
            (
                limit("a", 0, 60),
                "globalRateLimits[0].requests must be at least 1",
            ),
            (
                limit("a", 1, 0),
                "globalRateLimits[0].unitSeconds must be 1-86400",
            ),
            (
                limit("a", 1, 86_401),
                "globalRateLimits[0].unitSeconds must be 1-86400",
            ),
            (
                limit("a", 1, 1) + &limit("a", 2, 1),
                "globalRateLimits[1].name \"a\" is used twice",
            ),
        ];
        for (limits, expected) in cases {
            let text = format!("{HEADER}globalRateLimits:\n{limits}");
            let err = SensorConfig::from_yaml("/s.yaml", &text).unwrap_err();
            assert_eq!(err.to_string(), format!("/s.yaml: {expected}"));
        }
    }

    #[test]
    fn a_bad_report_section_names_its_field() {
        let section = |url: &str, interval: &str, extra: &str| {
            format!(
                "{HEADER}report:\n  url: {url}\n  intervalSeconds: {interval}\n  certFile: c\n  keyFile: k\n  caFile: ca\n{extra}"
            )
        };
        let err = SensorConfig::from_yaml(
            "/etc/s/sensor.yaml",
            &section("https://op/v1/discovery", "0", ""),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "/etc/s/sensor.yaml: report.intervalSeconds must be at least 1"
        );
        for url in ["http://op/v1/discovery", "op/v1/discovery", "https:///x"] {
            let err = SensorConfig::from_yaml("/etc/s/sensor.yaml", &section(url, "5", ""))
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with("/etc/s/sensor.yaml: report.url "),
                "{url}: {err}"
            );
        }
        let err = SensorConfig::from_yaml(
            "f",
            &section("https://op/v1/discovery", "5", "  token: x\n"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("token"), "{err}");
        let missing = format!("{HEADER}report:\n  url: https://op/v1/discovery\n");
        let err = SensorConfig::from_yaml("f", &missing)
            .unwrap_err()
            .to_string();
        assert!(err.contains("certFile"), "{err}");
    }
}
