//! Policy -> Envoy: bootstrap, listener (LDS), clusters (CDS) and the API-key extension config
//! (ECDS), all file-based with `watched_directory` so a re-render reloads without a restart.
//!
//! Filter chain, in order:
//! `header_mutation` (strip client-sent copies of trusted headers) -> `cors` -> `jwt_authn` ->
//! `api_key_auth` (ECDS, secret file) -> `rbac` (per route; shadow rules in Audit) ->
//! `apiguard.decision-pending` + `apiguard.ownership` (only with ownership rules: `set_metadata`
//! and a second `rbac` with a CEL condition per route) -> `apiguard.decision` (`set_metadata`;
//! see [`decision`]) -> `local_ratelimit` (per route, per-client dynamic descriptors; `scope:
//! Replica` limits) -> `ratelimit` (`scope: Global` limits: the sensor's rate limit service) ->
//! `buffer` (413) -> `ext_proc` (only with `spec.openapi`, or `spec.discovery.sensitiveData` other
//! than Off: the runtime sensor checks the request against the contract, redacts the response,
//! scans JSON responses for sensitive data) -> `router`.

mod access_log;
mod api_key;
mod bootstrap;
mod clusters;
mod cors;
pub mod decision;
mod ext_proc;
mod hcm;
mod jwt;
mod listener;
mod paths;
mod ratelimit;
mod rbac;
mod routes;
pub mod types;

pub use access_log::access_log_format;
pub use bootstrap::static_bootstrap;
pub use clusters::target_address;

use crate::api::{
    ApiKeyAuthentication, ApiSecurityPolicySpec, AuthorizationRule, ClientCertificate,
    EastWestMtls, JwtAuthentication as PolicyJwt, PolicyMode,
};
use crate::render::{
    RenderError, RenderInput, RenderOptions, RenderedFile, RenderedGateway, policy_ref,
};
use crate::sensor::config::{SENSOR_CONFIG_FILE, SensorReport};
use api_key::build_api_key_auth;
use bootstrap::build_bootstrap;
use clusters::{build_clusters, certificates_metadata};
use listener::build_listener;
use std::collections::BTreeMap;
use types::*;

pub const BOOTSTRAP_FILE: &str = "bootstrap.yaml";
pub const LDS_FILE: &str = "lds.json";
pub(crate) const CDS_FILE: &str = "cds.json";
pub(crate) const API_KEYS_FILE: &str = "apikeys.json";
pub(crate) const SERVER_CERT_FILE: &str = "server.crt";
pub(crate) const SERVER_KEY_FILE: &str = "server.key";
pub(crate) const CLIENT_CA_FILE: &str = "client-ca.crt";
pub(crate) const UPSTREAM_CERT_FILE: &str = "upstream.crt";
pub(crate) const UPSTREAM_KEY_FILE: &str = "upstream.key";
pub(crate) const UPSTREAM_CA_FILE: &str = "upstream-ca.crt";
/// The key of the gateway Secret holding the operator's Redis password: the sensor's
/// `APIGUARD_REDIS_PASSWORD` (`secretKeyRef`), kept out of Envoy's files.
pub const REDIS_PASSWORD_FILE: &str = "redis-password";
/// The key of the gateway ConfigMap holding the CA of a Redis with a private CA (the operator's
/// `--redis-ca-file`), mounted beside the sensor's `sensor.yaml`.
pub const REDIS_CA_FILE: &str = "redis-ca.crt";
/// The keys of the gateway Secret holding the sensor's client certificate and key for a Redis
/// that asks for one (the operator's `--redis-client-cert-file`, `--redis-client-key-file`).
pub const REDIS_CLIENT_CERT_FILE: &str = "redis-client.crt";
/// See [`REDIS_CLIENT_CERT_FILE`].
pub const REDIS_CLIENT_KEY_FILE: &str = "redis-client.key";
/// The gateway Secret's keys only the sensor gets (never in Envoy's files).
pub const SENSOR_ONLY_SECRET_FILES: [&str; 3] = [
    REDIS_PASSWORD_FILE,
    REDIS_CLIENT_CERT_FILE,
    REDIS_CLIENT_KEY_FILE,
];
/// The workload identity the sensor pushes its inventory with (the names `sensor.yaml`'s
/// `report` section gives, beside it).
pub(crate) use crate::sensor::config::{IDENTITY_CA_FILE, IDENTITY_CERT_FILE, IDENTITY_KEY_FILE};

const TARGET_CLUSTER: &str = "target";
const LISTENER_NAME: &str = "gateway";
const JWT_FILTER: &str = "envoy.filters.http.jwt_authn";
const API_KEY_FILTER: &str = "envoy.filters.http.api_key_auth";
const RBAC_FILTER: &str = "envoy.filters.http.rbac";
const CORS_FILTER: &str = "envoy.filters.http.cors";
const RATELIMIT_FILTER: &str = "envoy.filters.http.local_ratelimit";
const BUFFER_FILTER: &str = "envoy.filters.http.buffer";
const API_KEY_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.http.api_key_auth.v3.ApiKeyAuth";

struct Ctx<'a> {
    input: &'a RenderInput<'a>,
    spec: &'a ApiSecurityPolicySpec,
    policy: String,
    audit: bool,
}

impl Ctx<'_> {
    fn invalid(&self, field: impl Into<String>, message: impl Into<String>) -> RenderError {
        RenderError::Invalid {
            policy: self.policy.clone(),
            field: field.into(),
            message: message.into(),
        }
    }
    fn opts(&self) -> &RenderOptions {
        self.input.options
    }
    fn config_path(&self, file: &str) -> String {
        format!("{}/{}", self.opts().config_dir.trim_end_matches('/'), file)
    }
    fn secret_path(&self, file: &str) -> String {
        format!("{}/{}", self.opts().secret_dir.trim_end_matches('/'), file)
    }
    fn jwt(&self) -> Option<&PolicyJwt> {
        self.spec
            .authentication
            .as_ref()
            .and_then(|a| a.jwt.as_ref())
            .filter(|j| !j.providers.is_empty())
    }
    fn api_keys(&self) -> Option<&ApiKeyAuthentication> {
        self.spec
            .authentication
            .as_ref()
            .and_then(|a| a.api_keys.as_ref())
    }
    fn allowed_clients(&self) -> &[String] {
        self.spec
            .authentication
            .as_ref()
            .and_then(|a| a.mtls.as_ref())
            .map(|m| m.allowed_clients.as_slice())
            .unwrap_or(&[])
    }
    /// The listener's client-certificate mode: `allowedClients` makes a certificate required.
    fn client_cert_mode(&self) -> crate::api::ClientCertificate {
        use crate::api::ClientCertificate;
        match self.spec.tls().client_certificate {
            ClientCertificate::None if !self.allowed_clients().is_empty() => {
                ClientCertificate::Required
            }
            m => m,
        }
    }
}

/// How a (non-public) route authenticates its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RouteAuthn {
    jwt: bool,
    api_key: bool,
    mtls: bool,
}

fn route_authn(ctx: &Ctx<'_>, rule: &AuthorizationRule) -> RouteAuthn {
    let allow = rule.allow.clone().unwrap_or_default();
    let token_conditions = !allow.scopes.is_empty()
        || !allow.claims.is_empty()
        || rule.ownership.is_some()
        || !rule.providers.is_empty();
    let has_jwt = ctx.jwt().is_some();
    let has_keys = ctx.api_keys().is_some();
    let api_key = has_keys && (!allow.api_key_clients.is_empty() || !has_jwt);
    let jwt = has_jwt && (token_conditions || !api_key);
    let mtls = !jwt && !api_key && !ctx.allowed_clients().is_empty();
    RouteAuthn { jwt, api_key, mtls }
}

/// The gateway's files by name.
type Files = BTreeMap<String, RenderedFile>;

/// The `version_info` of every discovery file.
const DISCOVERY_VERSION: &str = "apiguard";

/// A file for the ConfigMap.
fn plain(contents: String) -> RenderedFile {
    RenderedFile {
        contents,
        secret: false,
    }
}

/// A file for the Secret (private keys, API keys).
fn secret(contents: String) -> RenderedFile {
    RenderedFile {
        contents,
        secret: true,
    }
}

/// Renders the gateway files for one policy.
pub fn render(input: &RenderInput<'_>) -> Result<RenderedGateway, RenderError> {
    let spec = &input.policy.spec;
    let ctx = Ctx {
        input,
        spec,
        policy: policy_ref(input.policy),
        audit: spec.mode == PolicyMode::Audit,
    };
    let mut files = Files::new();
    insert_server_certificates(&ctx, &mut files)?;
    insert_upstream_certificates(&ctx, &mut files)?;
    let lds = listener_file(&ctx, &files)?;
    files.insert(LDS_FILE.into(), plain(lds));
    let cds = clusters_file(&ctx, &files)?;
    files.insert(CDS_FILE.into(), plain(cds));
    if let Some(keys) = ctx.api_keys() {
        files.insert(API_KEYS_FILE.into(), secret(api_keys_file(&ctx, keys)?));
    }
    if ext_proc::sensor_needed(&ctx) {
        let contract = ext_proc::contract(&ctx)?;
        let report = insert_workload_identity(&ctx, &mut files)?;
        let runtime = ext_proc::runtime_section(&ctx)?;
        files.insert(
            SENSOR_CONFIG_FILE.into(),
            plain(ext_proc::sensor_config(&ctx, contract, report, runtime)),
        );
        if let Some(shared) = &ctx.opts().shared_state {
            if let Some(password) = &shared.password {
                files.insert(REDIS_PASSWORD_FILE.into(), secret(password.clone()));
            }
            if let Some(ca) = &shared.ca_pem {
                files.insert(REDIS_CA_FILE.into(), plain(ca.clone()));
            }
            if let Some(id) = &shared.client_identity {
                let pem = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
                files.insert(REDIS_CLIENT_CERT_FILE.into(), secret(pem(&id.cert_pem)));
                files.insert(REDIS_CLIENT_KEY_FILE.into(), secret(pem(&id.key_pem)));
            }
        }
    }
    files.insert(BOOTSTRAP_FILE.into(), plain(bootstrap_file(&ctx)?));
    Ok(RenderedGateway::new(files))
}

/// Unless TLS is disabled: the server certificate and key, and the client CA bundle when
/// client certificates are requested (each an error when not given).
fn insert_server_certificates(ctx: &Ctx<'_>, files: &mut Files) -> Result<(), RenderError> {
    if ctx.spec.tls().is_disabled() {
        return Ok(());
    }
    let id = ctx.input.identity;
    if id.server_cert_pem.is_empty() || id.server_key_pem.is_empty() {
        return Err(ctx.invalid(
            "spec.tls",
            "the gateway serves TLS but no server certificate and key were given",
        ));
    }
    files.insert(SERVER_CERT_FILE.into(), plain(id.server_cert_pem.clone()));
    files.insert(SERVER_KEY_FILE.into(), secret(id.server_key_pem.clone()));
    if ctx.client_cert_mode() != ClientCertificate::None {
        let ca = id.client_ca_pem.clone().ok_or_else(|| {
            ctx.invalid(
                "spec.tls.clientCertificate",
                "client certificates are requested but no client CA bundle was given",
            )
        })?;
        files.insert(CLIENT_CA_FILE.into(), plain(ca));
    }
    Ok(())
}

/// Unless east-west mTLS is disabled: the upstream certificate, key and trust bundle (an error
/// when not given).
fn insert_upstream_certificates(ctx: &Ctx<'_>, files: &mut Files) -> Result<(), RenderError> {
    if ctx.spec.east_west().mtls == EastWestMtls::Disabled {
        return Ok(());
    }
    let up = ctx.input.identity.upstream.as_ref().ok_or_else(|| {
        ctx.invalid(
            "spec.eastWest.mtls",
            "east-west mTLS is on but no upstream certificate, key and trust bundle were given",
        )
    })?;
    files.insert(UPSTREAM_CERT_FILE.into(), plain(up.cert_pem.clone()));
    files.insert(UPSTREAM_KEY_FILE.into(), secret(up.key_pem.clone()));
    files.insert(UPSTREAM_CA_FILE.into(), plain(up.trust_bundle_pem.clone()));
    Ok(())
}

/// With discovery or runtime detection on and `options.discovery_report` set: the workload
/// certificate, key and roots the sensor pushes its inventory and detections with, and the `report` section of `sensor.yaml` (an
/// error when no workload identity was given). None: no push.
fn insert_workload_identity(
    ctx: &Ctx<'_>,
    files: &mut Files,
) -> Result<Option<SensorReport>, RenderError> {
    let Some(report) = ctx.opts().discovery_report.as_ref() else {
        return Ok(None);
    };
    if !ext_proc::sensor_reports(ctx) {
        return Ok(None);
    }
    let id = ctx.input.identity.workload.as_ref().ok_or_else(|| {
        ctx.invalid(
            "options.discoveryReport",
            "the sensor pushes its inventory but no workload certificate, key and trust bundle were given",
        )
    })?;
    files.insert(IDENTITY_CERT_FILE.into(), plain(id.cert_pem.clone()));
    files.insert(IDENTITY_KEY_FILE.into(), secret(id.key_pem.clone()));
    files.insert(IDENTITY_CA_FILE.into(), plain(id.trust_bundle_pem.clone()));
    Ok(Some(SensorReport::new(
        &report.url,
        report.interval_seconds,
    )))
}

/// The metadata naming the certificates among `names` present in `files` (None: none is).
/// Certificates only (their keys change with them): see `certificates_metadata`.
fn certificates(files: &Files, names: &[&str]) -> Option<Metadata> {
    let present: Vec<(&str, &str)> = names
        .iter()
        .filter_map(|n| files.get(*n).map(|f| (*n, f.contents.as_str())))
        .collect();
    (!present.is_empty()).then(|| certificates_metadata(present.into_iter()))
}

/// LDS: the listener, carrying its server and client CA certificates' metadata.
fn listener_file(ctx: &Ctx<'_>, files: &Files) -> Result<String, RenderError> {
    let mut listener = build_listener(ctx)?;
    listener.metadata = certificates(files, &[SERVER_CERT_FILE, CLIENT_CA_FILE]);
    let lds = DiscoveryResponse {
        version_info: DISCOVERY_VERSION.to_string(),
        resources: vec![Any::Listener(listener)],
    };
    to_json(ctx, "listener", &lds)
}

/// CDS: the clusters, the target's carrying its upstream certificates' metadata.
fn clusters_file(ctx: &Ctx<'_>, files: &Files) -> Result<String, RenderError> {
    let mut clusters = build_clusters(ctx)?;
    if ext_proc::sensor_needed(ctx) {
        clusters.push(ext_proc::sensor_cluster(ctx)?);
    }
    let upstream = certificates(files, &[UPSTREAM_CERT_FILE, UPSTREAM_CA_FILE]);
    for c in clusters.iter_mut().filter(|c| c.name == TARGET_CLUSTER) {
        c.metadata = upstream.clone();
    }
    let cds = DiscoveryResponse {
        version_info: DISCOVERY_VERSION.to_string(),
        resources: clusters
            .into_iter()
            .map(|c| Any::Cluster(Box::new(c)))
            .collect(),
    };
    to_json(ctx, "clusters", &cds)
}

/// ECDS: the `api_key_auth` filter config with the keys.
fn api_keys_file(ctx: &Ctx<'_>, keys: &ApiKeyAuthentication) -> Result<String, RenderError> {
    let ext = DiscoveryResponse {
        version_info: DISCOVERY_VERSION.to_string(),
        resources: vec![Any::TypedExtensionConfig(TypedExtensionConfig {
            name: API_KEY_FILTER.into(),
            typed_config: Box::new(Any::ApiKeyAuth(build_api_key_auth(ctx, keys)?)),
        })],
    };
    to_json(ctx, "API keys", &ext)
}

/// The bootstrap, as YAML.
fn bootstrap_file(ctx: &Ctx<'_>) -> Result<String, RenderError> {
    serde_saphyr::to_string(&build_bootstrap(ctx)).map_err(|e| RenderError::Serialize {
        policy: ctx.policy.clone(),
        what: "bootstrap".into(),
        message: e.to_string(),
    })
}

fn to_json<T: serde::Serialize>(ctx: &Ctx<'_>, what: &str, v: &T) -> Result<String, RenderError> {
    serde_json::to_string(v)
        .map(|mut s| {
            s.push('\n');
            s
        })
        .map_err(|e| RenderError::Serialize {
            policy: ctx.policy.clone(),
            what: what.into(),
            message: e.to_string(),
        })
}
