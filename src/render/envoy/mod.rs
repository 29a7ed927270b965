//! Policy -> Envoy: bootstrap, listener (LDS), clusters (CDS) and the API-key extension config
//! (ECDS), all file-based with `watched_directory` so a re-render reloads without a restart.
//!
//! Filter chain, in order:
//! `apiguard.outcome` (Lua, response only: decision of early denials) -> `header_mutation`
//! (strip client-sent copies of trusted headers) -> `cors` -> `jwt_authn` -> `api_key_auth`
//! (ECDS, secret file) -> `rbac` (per route; shadow rules in Audit) -> `apiguard.authz` (Lua:
//! ownership, decision) -> `local_ratelimit` (per route, per-client dynamic descriptors) ->
//! `buffer` (413) -> `router`.

pub mod lua;
pub mod types;

use super::{
    CLIENT_ID_HEADER, RenderError, RenderInput, RenderOptions, RenderedFile, RenderedGateway,
    policy_ref,
};
use crate::api::duration::parse_duration;
use crate::api::{
    ApiKeyAuthentication, ApiSecurityPolicy, ApiSecurityPolicySpec, Audit, AuthorizationRule,
    ClientCertificate, Cors, DefaultAction, EastWestMtls, JwtAuthentication as PolicyJwt,
    PolicyMode, TlsVersion, UnderscoreHeaders,
};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::json;
use std::collections::BTreeMap;
use types::*;

pub const BOOTSTRAP_FILE: &str = "bootstrap.yaml";
pub const LDS_FILE: &str = "lds.json";
pub const CDS_FILE: &str = "cds.json";
pub const API_KEYS_FILE: &str = "apikeys.json";
pub const SERVER_CERT_FILE: &str = "server.crt";
pub const SERVER_KEY_FILE: &str = "server.key";
pub const CLIENT_CA_FILE: &str = "client-ca.crt";
pub const UPSTREAM_CERT_FILE: &str = "upstream.crt";
pub const UPSTREAM_KEY_FILE: &str = "upstream.key";
pub const UPSTREAM_CA_FILE: &str = "upstream-ca.crt";

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

/// Renders the gateway files for one policy.
pub fn render(input: &RenderInput<'_>) -> Result<RenderedGateway, RenderError> {
    let spec = &input.policy.spec;
    let ctx = Ctx {
        input,
        spec,
        policy: policy_ref(input.policy),
        audit: spec.mode == PolicyMode::Audit,
    };
    let mut files = BTreeMap::new();
    let plain = |s: String| RenderedFile {
        contents: s,
        secret: false,
    };
    let secret = |s: String| RenderedFile {
        contents: s,
        secret: true,
    };

    let tls = spec.tls();
    if !tls.is_disabled() {
        let id = input.identity;
        if id.server_cert_pem.is_empty() || id.server_key_pem.is_empty() {
            return Err(ctx.invalid(
                "spec.tls",
                "the gateway serves TLS but no server certificate and key were given",
            ));
        }
        files.insert(SERVER_CERT_FILE.into(), plain(id.server_cert_pem.clone()));
        files.insert(SERVER_KEY_FILE.into(), secret(id.server_key_pem.clone()));
        if client_cert_mode(&ctx) != ClientCertificate::None {
            let ca = id.client_ca_pem.clone().ok_or_else(|| {
                ctx.invalid(
                    "spec.tls.clientCertificate",
                    "client certificates are requested but no client CA bundle was given",
                )
            })?;
            files.insert(CLIENT_CA_FILE.into(), plain(ca));
        }
    }
    if spec.east_west().mtls != EastWestMtls::Disabled {
        let up = input.identity.upstream.as_ref().ok_or_else(|| {
            ctx.invalid(
                "spec.eastWest.mtls",
                "east-west mTLS is on but no upstream certificate, key and trust bundle were given",
            )
        })?;
        files.insert(UPSTREAM_CERT_FILE.into(), plain(up.cert_pem.clone()));
        files.insert(UPSTREAM_KEY_FILE.into(), secret(up.key_pem.clone()));
        files.insert(UPSTREAM_CA_FILE.into(), plain(up.trust_bundle_pem.clone()));
    }

    let version = "apiguard".to_string();
    // Certificates only (their keys change with them): see `certificates_metadata`.
    let certificates = |files: &BTreeMap<String, RenderedFile>, names: &[&str]| {
        let present: Vec<(&str, &str)> = names
            .iter()
            .filter_map(|n| files.get(*n).map(|f| (*n, f.contents.as_str())))
            .collect();
        (!present.is_empty()).then(|| certificates_metadata(present.into_iter()))
    };
    let mut listener = build_listener(&ctx)?;
    listener.metadata = certificates(&files, &[SERVER_CERT_FILE, CLIENT_CA_FILE]);
    let lds = DiscoveryResponse {
        version_info: version.clone(),
        resources: vec![Any::Listener(listener)],
    };
    files.insert(LDS_FILE.into(), plain(to_json(&ctx, "listener", &lds)?));

    let mut clusters = build_clusters(&ctx)?;
    let upstream = certificates(&files, &[UPSTREAM_CERT_FILE, UPSTREAM_CA_FILE]);
    for c in clusters.iter_mut().filter(|c| c.name == TARGET_CLUSTER) {
        c.metadata = upstream.clone();
    }
    let cds = DiscoveryResponse {
        version_info: version.clone(),
        resources: clusters
            .into_iter()
            .map(|c| Any::Cluster(Box::new(c)))
            .collect(),
    };
    files.insert(CDS_FILE.into(), plain(to_json(&ctx, "clusters", &cds)?));

    if let Some(keys) = ctx.api_keys() {
        let ext = DiscoveryResponse {
            version_info: version,
            resources: vec![Any::TypedExtensionConfig(TypedExtensionConfig {
                name: API_KEY_FILTER.into(),
                typed_config: Box::new(Any::ApiKeyAuth(build_api_key_auth(&ctx, keys)?)),
            })],
        };
        files.insert(
            API_KEYS_FILE.into(),
            secret(to_json(&ctx, "API keys", &ext)?),
        );
    }

    let bootstrap = build_bootstrap(&ctx);
    let bootstrap_yaml =
        serde_saphyr::to_string(&bootstrap).map_err(|e| RenderError::Serialize {
            policy: ctx.policy.clone(),
            what: "bootstrap".into(),
            message: e.to_string(),
        })?;
    files.insert(BOOTSTRAP_FILE.into(), plain(bootstrap_yaml));
    Ok(RenderedGateway::new(files))
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

fn build_bootstrap(ctx: &Ctx<'_>) -> Bootstrap {
    let o = ctx.opts();
    let meta = &ctx.input.policy.metadata;
    let source = |path: String, dir: &str| ConfigSource {
        path_config_source: PathConfigSource {
            path,
            watched_directory: WatchedDirectory {
                path: dir.trim_end_matches('/').to_string(),
            },
        },
        resource_api_version: "V3",
    };
    Bootstrap {
        node: Node {
            id: format!(
                "apiguard~{}~{}",
                meta.namespace.as_deref().unwrap_or("default"),
                meta.name.as_deref().unwrap_or("")
            ),
            cluster: "apiguard-gateway".into(),
        },
        admin: Admin {
            address: socket(&o.admin_address, o.admin_port),
        },
        dynamic_resources: DynamicResources {
            lds_config: source(ctx.config_path(LDS_FILE), &o.config_dir),
            cds_config: source(ctx.config_path(CDS_FILE), &o.config_dir),
        },
        overload_manager: OverloadManager {
            resource_monitors: vec![ResourceMonitor {
                name: "envoy.resource_monitors.global_downstream_max_connections",
                typed_config: Any::DownstreamConnectionsConfig(DownstreamConnectionsConfig {
                    max_active_downstream_connections: 50_000,
                }),
            }],
        },
    }
}

fn socket(address: &str, port: u16) -> Address {
    Address {
        socket_address: SocketAddress {
            address: address.to_string(),
            port_value: port,
        },
    }
}

fn client_cert_mode(ctx: &Ctx<'_>) -> ClientCertificate {
    let tls = ctx.spec.tls();
    match tls.client_certificate {
        ClientCertificate::None if !ctx.allowed_clients().is_empty() => ClientCertificate::Required,
        m => m,
    }
}

fn tls_version(v: TlsVersion) -> &'static str {
    match v {
        TlsVersion::Tls10 => "TLSv1_0",
        TlsVersion::Tls11 => "TLSv1_1",
        TlsVersion::Tls12 => "TLSv1_2",
        TlsVersion::Tls13 => "TLSv1_3",
    }
}

fn build_listener(ctx: &Ctx<'_>) -> Result<Listener, RenderError> {
    let o = ctx.opts();
    let tls = ctx.spec.tls();
    let transport_socket = if tls.is_disabled() {
        None
    } else {
        if tls.min_version < TlsVersion::Tls12 {
            return Err(ctx.invalid(
                "spec.tls.minVersion",
                "TLS versions below TLSv1_2 are insecure (APG006)",
            ));
        }
        let mode = client_cert_mode(ctx);
        let validation_context =
            (mode != ClientCertificate::None).then(|| CertificateValidationContext {
                trusted_ca: DataSource::file(ctx.config_path(CLIENT_CA_FILE)),
                match_typed_subject_alt_names: ctx
                    .allowed_clients()
                    .iter()
                    .map(|c| SubjectAltNameMatcher {
                        san_type: "URI",
                        matcher: StringMatcher::exact(c),
                    })
                    .collect(),
            });
        Some(TransportSocket {
            name: "envoy.transport_sockets.tls",
            typed_config: Any::DownstreamTlsContext(Box::new(DownstreamTlsContext {
                common_tls_context: CommonTlsContext {
                    tls_params: TlsParameters {
                        tls_minimum_protocol_version: tls_version(tls.min_version),
                        tls_maximum_protocol_version: "TLSv1_3",
                    },
                    tls_certificates: vec![TlsCertificate {
                        certificate_chain: DataSource::file(ctx.config_path(SERVER_CERT_FILE)),
                        private_key: DataSource::file(ctx.secret_path(SERVER_KEY_FILE)),
                    }],
                    validation_context,
                    alpn_protocols: vec!["h2", "http/1.1"],
                },
                require_client_certificate: mode == ClientCertificate::Required,
            })),
        })
    };
    let hcm = build_hcm(ctx)?;
    Ok(Listener {
        metadata: None,
        name: LISTENER_NAME.into(),
        address: socket(&o.listen_address, o.listen_port),
        filter_chains: vec![FilterChain {
            filters: vec![NetworkFilter {
                name: "envoy.filters.network.http_connection_manager",
                typed_config: Any::HttpConnectionManager(Box::new(hcm)),
            }],
            transport_socket,
        }],
    })
}

fn build_hcm(ctx: &Ctx<'_>) -> Result<HttpConnectionManager, RenderError> {
    let spec = ctx.spec;
    let validation = spec.request_validation();
    let mut filters = Vec::new();
    let lua = |name: &str, code: &str| HttpFilter {
        name: name.to_string(),
        typed_config: Some(Any::Lua(Lua {
            default_source_code: DataSource::inline(code.trim_start()),
        })),
        config_discovery: None,
        disabled: false,
    };
    let filter = |name: &str, config: Any| HttpFilter {
        name: name.to_string(),
        typed_config: Some(config),
        config_discovery: None,
        disabled: false,
    };
    filters.push(lua(lua::OUTCOME_FILTER, lua::OUTCOME));

    // Headers only the gateway may set: forwarded claims, the API-key client id.
    let mut trusted: Vec<String> = vec![CLIENT_ID_HEADER.to_string()];
    if let Some(jwt) = ctx.jwt() {
        for p in &jwt.providers {
            for fc in &p.forward_claims {
                trusted.push(fc.header.to_ascii_lowercase());
            }
        }
    }
    trusted.sort();
    trusted.dedup();
    filters.push(filter(
        "envoy.filters.http.header_mutation",
        Any::HeaderMutation(HeaderMutation {
            mutations: Mutations {
                request_mutations: trusted
                    .iter()
                    .map(|h| HeaderMutationRule { remove: h.clone() })
                    .collect(),
            },
        }),
    ));
    if spec.cors.is_some() {
        filters.push(filter(CORS_FILTER, Any::Cors(Empty {})));
    }
    if let Some(jwt) = ctx.jwt() {
        filters.push(filter(
            JWT_FILTER,
            Any::JwtAuthentication(build_jwt(ctx, jwt)?),
        ));
    }
    if ctx.api_keys().is_some() {
        filters.push(HttpFilter {
            name: API_KEY_FILTER.into(),
            typed_config: None,
            config_discovery: Some(ExtensionConfigSource {
                config_source: ConfigSource {
                    path_config_source: PathConfigSource {
                        path: ctx.secret_path(API_KEYS_FILE),
                        watched_directory: WatchedDirectory {
                            path: ctx.opts().secret_dir.trim_end_matches('/').to_string(),
                        },
                    },
                    resource_api_version: "V3",
                },
                type_urls: vec![API_KEY_TYPE_URL],
            }),
            // Enabled per route on the routes that take API keys.
            disabled: true,
        });
    }
    filters.push(filter(RBAC_FILTER, Any::Rbac(Rbac::default())));
    filters.push(lua(lua::AUTHZ_FILTER, lua::AUTHZ));
    if !spec.rate_limits.is_empty() {
        filters.push(filter(
            RATELIMIT_FILTER,
            Any::LocalRateLimit(LocalRateLimit {
                stat_prefix: "apiguard_ratelimit".into(),
                token_bucket: None,
                filter_enabled: None,
                filter_enforced: None,
                descriptors: Vec::new(),
                rate_limits: Vec::new(),
                max_dynamic_descriptors: None,
                always_consume_default_token_bucket: None,
            }),
        ));
    }
    if let Some(max) = validation.max_body_bytes {
        let max = u32::try_from(max).map_err(|_| {
            ctx.invalid(
                "spec.requestValidation.maxBodyBytes",
                "must be at most 4294967295",
            )
        })?;
        filters.push(filter(
            BUFFER_FILTER,
            Any::Buffer(Buffer {
                max_request_bytes: u64::from(max),
            }),
        ));
    }
    filters.push(filter("envoy.filters.http.router", Any::Router(Empty {})));

    let access_log = if spec.audit().access_log {
        vec![AccessLog {
            name: "envoy.access_loggers.file",
            typed_config: Any::FileAccessLog(FileAccessLog {
                path: ctx.opts().access_log_path.clone(),
                log_format: SubstitutionFormatString {
                    json_format: access_log_format(&spec.audit()),
                },
            }),
        }]
    } else {
        Vec::new()
    };
    let underscores = match validation.headers_with_underscores {
        UnderscoreHeaders::Reject => "REJECT_REQUEST",
        UnderscoreHeaders::Drop => "DROP_HEADER",
        UnderscoreHeaders::Allow => "ALLOW",
    };
    let client_certs =
        client_cert_mode(ctx) != ClientCertificate::None && !ctx.spec.tls().is_disabled();
    Ok(HttpConnectionManager {
        stat_prefix: "apiguard".into(),
        codec_type: "AUTO",
        use_remote_address: true,
        normalize_path: true,
        merge_slashes: true,
        path_with_escaped_slashes_action: "REJECT_REQUEST",
        common_http_protocol_options: HttpProtocolOptions {
            headers_with_underscores_action: underscores,
        },
        strip_any_host_port: true,
        route_config: build_routes(ctx)?,
        http_filters: filters,
        access_log,
        // The target learns the verified client identity; client-sent XFCC is replaced.
        forward_client_cert_details: client_certs.then_some("SANITIZE_SET"),
        set_current_client_cert_details: client_certs.then_some(ClientCertDetails { uri: true }),
        server_header_transformation: "PASS_THROUGH",
    })
}

/// The JSON access log line: who, what, when, which rule, and the decision.
pub fn access_log_format(audit: &Audit) -> BTreeMap<String, String> {
    let mut f = BTreeMap::new();
    let mut put = |k: &str, v: &str| {
        f.insert(k.to_string(), v.to_string());
    };
    put("time", "%START_TIME%");
    put("client", "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%");
    put("method", "%REQ(:METHOD)%");
    put("path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%");
    put("authority", "%REQ(:AUTHORITY)%");
    put("rule", "%ROUTE_NAME%");
    put("status", "%RESPONSE_CODE%");
    put(
        "subject",
        "%DYNAMIC_METADATA(envoy.filters.http.jwt_authn:payload:sub)%",
    );
    put("client_id", &format!("%REQ({CLIENT_ID_HEADER})%"));
    put("client_cert", "%DOWNSTREAM_PEER_URI_SAN%");
    put("decision", "%DYNAMIC_METADATA(apiguard:decision)%");
    put("reason", "%RESPONSE_CODE_DETAILS%");
    put("response_flags", "%RESPONSE_FLAGS%");
    put("duration_ms", "%DURATION%");
    put("request_id", "%REQ(X-REQUEST-ID)%");
    for c in &audit.include_claims {
        put(
            &format!("claim_{c}"),
            &format!("%DYNAMIC_METADATA(envoy.filters.http.jwt_authn:payload:{c})%"),
        );
    }
    f
}

fn build_jwt(ctx: &Ctx<'_>, jwt: &PolicyJwt) -> Result<JwtAuthentication, RenderError> {
    let mut providers = BTreeMap::new();
    for (i, p) in jwt.providers.iter().enumerate() {
        let field = format!("spec.authentication.jwt.providers[{i}]");
        let dur = |value: &Option<String>, name: &str, default: u64| -> Result<u64, RenderError> {
            match value {
                None => Ok(default),
                Some(v) => parse_duration(v)
                    .map(|d| d.as_secs())
                    .map_err(|e| ctx.invalid(format!("{field}.{name}"), e.to_string())),
            }
        };
        let clock_skew_seconds = dur(&p.clock_skew, "clockSkew", 60)?;
        let max_lifetime = match &p.max_lifetime {
            None => None,
            Some(_) => Some(format!("{}s", dur(&p.max_lifetime, "maxLifetime", 0)?)),
        };
        let (remote_jwks, local_jwks) = if let Some(uri) = &p.jwks.uri {
            let cache = dur(&p.jwks.cache_duration, "jwks.cacheDuration", 300)?;
            (
                Some(RemoteJwks {
                    http_uri: HttpUri {
                        uri: uri.clone(),
                        cluster: jwks_cluster_name(&p.name),
                        timeout: "5s".into(),
                    },
                    cache_duration: format!("{cache}s"),
                    async_fetch: Empty {},
                }),
                None,
            )
        } else if let Some(inline) = &p.jwks.inline {
            check_jwks(inline).map_err(|m| ctx.invalid(format!("{field}.jwks.inline"), m))?;
            (None, Some(DataSource::inline(inline.clone())))
        } else if let Some(r) = &p.jwks.secret_ref {
            let doc = ctx.input.jwks_from_secret.get(&p.name).ok_or_else(|| {
                ctx.invalid(
                    format!("{field}.jwks.secretRef"),
                    format!("the JWKS of Secret {}/{} was not provided", r.name, r.key),
                )
            })?;
            check_jwks(doc).map_err(|m| {
                ctx.invalid(
                    format!("{field}.jwks.secretRef"),
                    format!("Secret {}/{}: {m}", r.name, r.key),
                )
            })?;
            (None, Some(DataSource::inline(doc.clone())))
        } else {
            return Err(ctx.invalid(
                format!("{field}.jwks"),
                "one of uri, inline or secretRef is required",
            ));
        };
        providers.insert(
            p.name.clone(),
            JwtProvider {
                issuer: p.issuer.clone(),
                audiences: p.audiences.clone(),
                remote_jwks,
                local_jwks,
                forward: true,
                payload_in_metadata: "payload".into(),
                clock_skew_seconds,
                max_lifetime,
                claim_to_headers: p
                    .forward_claims
                    .iter()
                    .map(|fc| JwtClaimToHeader {
                        header_name: fc.header.to_ascii_lowercase(),
                        claim_name: fc.claim.clone(),
                    })
                    .collect(),
                jwt_cache_config: JwtCacheConfig {
                    jwt_cache_size: 1000,
                },
            },
        );
    }
    let mut requirement_map = BTreeMap::new();
    for (i, rule) in ctx.spec.rules().iter().enumerate() {
        if rule.public || !route_authn(ctx, rule).jwt {
            continue;
        }
        for name in &rule.providers {
            if !providers.contains_key(name) {
                return Err(ctx.invalid(
                    format!("spec.authorization.rules[{i}].providers"),
                    format!("unknown JWT provider {name:?}"),
                ));
            }
        }
        let names: Vec<String> = if rule.providers.is_empty() {
            providers.keys().cloned().collect()
        } else {
            rule.providers.clone()
        };
        requirement_map.insert(rule.name.clone(), requirement(ctx, &names));
    }
    requirement_map.insert(
        ANY_PROVIDER.to_string(),
        requirement(ctx, &providers.keys().cloned().collect::<Vec<_>>()),
    );
    Ok(JwtAuthentication {
        providers,
        requirement_map,
    })
}

/// Requirement used by the catch-all route when `defaultAction: Allow`.
const ANY_PROVIDER: &str = "apiguard-any-provider";

fn requirement(ctx: &Ctx<'_>, providers: &[String]) -> JwtRequirement {
    let one = |p: &String| JwtRequirement {
        provider_name: Some(p.clone()),
        requires_any: None,
        allow_missing_or_failed: None,
    };
    let mut alternatives: Vec<JwtRequirement> = providers.iter().map(one).collect();
    if ctx.audit {
        // Audit: an invalid or missing token is let through; the shadow RBAC rule (which needs
        // a verified payload) records the would-be denial.
        alternatives.push(JwtRequirement {
            provider_name: None,
            requires_any: None,
            allow_missing_or_failed: Some(Empty {}),
        });
    }
    if alternatives.len() == 1 {
        alternatives.remove(0)
    } else {
        JwtRequirement {
            provider_name: None,
            requires_any: Some(JwtRequirementOrList {
                requirements: alternatives,
            }),
            allow_missing_or_failed: None,
        }
    }
}

/// Envoy rejects the whole listener for a JWKS without usable keys; say so at render time.
fn check_jwks(doc: &str) -> Result<(), String> {
    let v: serde_json::Value =
        serde_json::from_str(doc).map_err(|e| format!("the JWKS is not JSON: {e}"))?;
    match v.get("keys").and_then(|k| k.as_array()) {
        Some(keys) if !keys.is_empty() => Ok(()),
        _ => Err("the JWKS has no keys (expected {\"keys\":[...]})".into()),
    }
}

fn jwks_cluster_name(provider: &str) -> String {
    format!("jwks-{provider}")
}

fn build_api_key_auth(
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

// ---------------------------------------------------------------- routes

fn regex_escape(s: &str) -> String {
    regex::escape(s)
}

/// Envoy route match of one policy path: exact, `/prefix/*` or a `{param}` template.
fn path_match(path: &str) -> RouteMatch {
    if let Some(prefix) = path.strip_suffix("/*")
        && !prefix.contains('{')
    {
        return RouteMatch {
            prefix: Some(format!("{prefix}/")),
            ..Default::default()
        };
    }
    if !path.contains('{') && !path.contains('*') {
        return RouteMatch {
            path: Some(path.to_string()),
            ..Default::default()
        };
    }
    RouteMatch {
        safe_regex: Some(RegexMatcher {
            regex: path_regex(path),
        }),
        ..Default::default()
    }
}

/// Whether a request matching route path `path` can also match one of `paths`: exact paths
/// are tested against the other side's pattern; two patterns are assumed to overlap.
fn paths_may_overlap(paths: &[String], path: &str) -> bool {
    let is_exact = |p: &str| !p.contains('{') && !p.ends_with("/*");
    paths.iter().any(|p| match (is_exact(p), is_exact(path)) {
        (true, true) => p == path,
        (true, false) => pattern_matches(path, p),
        (false, true) => pattern_matches(p, path),
        (false, false) => true,
    })
}

/// Whether the exact path `exact` matches `pattern` (`{param}` = one segment, trailing `/*` =
/// anything below), without compiling a regex (this runs per route and rate limit).
fn pattern_matches(pattern: &str, exact: &str) -> bool {
    let (body, any_below) = match pattern.strip_suffix("/*") {
        Some(b) => (b, true),
        None => (pattern, false),
    };
    let mut want = body.split('/');
    let mut have = exact.split('/');
    loop {
        match (want.next(), have.next()) {
            (None, None) => return !any_below,
            (None, Some(rest)) => return any_below && (!rest.is_empty() || have.next().is_some()),
            (Some(_), None) => return false,
            (Some(w), Some(h)) => {
                let param = w.starts_with('{') && w.ends_with('}');
                if (param && h.is_empty()) || (!param && w != h) {
                    return false;
                }
            }
        }
    }
}

/// Anchored regex of a path pattern (used for route matching, without the query string).
fn path_regex(path: &str) -> String {
    let (body, tail) = match path.strip_suffix("/*") {
        Some(p) => (p, "/.*"),
        None => (path, ""),
    };
    let mut out = String::from("^");
    let mut rest = body;
    while let Some(start) = rest.find('{') {
        out.push_str(&regex_escape(&rest[..start]));
        out.push_str("[^/]+");
        rest = match rest[start..].find('}') {
            Some(end) => &rest[start + end + 1..],
            None => "",
        };
    }
    out.push_str(&regex_escape(rest));
    out.push_str(tail);
    out.push('$');
    out
}

fn method_matcher(methods: &[String]) -> Option<HeaderMatcher> {
    match methods {
        [] => None,
        [m] => Some(HeaderMatcher::string(":method", StringMatcher::exact(m))),
        ms => Some(HeaderMatcher::string(
            ":method",
            StringMatcher::regex(format!(
                "^({})$",
                ms.iter()
                    .map(|m| regex_escape(m))
                    .collect::<Vec<_>>()
                    .join("|")
            )),
        )),
    }
}

fn per_filter(entries: Vec<(&str, Any)>) -> BTreeMap<String, Any> {
    entries
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

fn route_to_target(name: &str, m: RouteMatch) -> Route {
    Route {
        name: name.to_string(),
        route_match: m,
        route: Some(RouteAction {
            cluster: TARGET_CLUSTER.into(),
            timeout: "30s".into(),
        }),
        direct_response: None,
        metadata: None,
        typed_per_filter_config: BTreeMap::new(),
    }
}

fn direct(name: &str, m: RouteMatch, status: u16, body: &str) -> Route {
    Route {
        name: name.to_string(),
        route_match: m,
        route: None,
        direct_response: Some(DirectResponseAction {
            status,
            body: Some(DataSource::inline(body)),
        }),
        metadata: None,
        typed_per_filter_config: BTreeMap::new(),
    }
}

fn jwt_disabled() -> Any {
    Any::JwtPerRoute(JwtPerRoute {
        disabled: true,
        requirement_name: None,
    })
}

fn rbac_route(ctx: &Ctx<'_>, policies: BTreeMap<String, RbacPolicy>) -> Any {
    let rules = RbacRules {
        action: "ALLOW",
        policies,
    };
    Any::RbacPerRoute(RbacPerRoute {
        rbac: if ctx.audit {
            Rbac {
                rules: None,
                shadow_rules: Some(rules),
                shadow_rules_stat_prefix: Some("apiguard_audit_".into()),
            }
        } else {
            Rbac {
                rules: Some(rules),
                shadow_rules: None,
                shadow_rules_stat_prefix: None,
            }
        },
    })
}

fn and_or(ids: Vec<Principal>, and: bool) -> Principal {
    if ids.len() == 1 {
        return ids.into_iter().next().expect("one element");
    }
    let set = PrincipalSet { ids };
    if and {
        Principal::And(set)
    } else {
        Principal::Or(set)
    }
}

fn jwt_claim(claim: &str, value: ValueMatcher) -> Principal {
    Principal::SourcedMetadata(SourcedMetadata {
        metadata_matcher: MetadataMatcher {
            filter: JWT_FILTER.into(),
            path: vec![
                PathSegment {
                    key: "payload".into(),
                },
                PathSegment { key: claim.into() },
            ],
            value,
        },
        metadata_source: "DYNAMIC",
    })
}

fn jwt_authenticated() -> Principal {
    jwt_claim("iss", ValueMatcher::Present(true))
}

fn claim_equals(claim: &str, value: &str) -> Principal {
    and_or(
        vec![
            jwt_claim(claim, ValueMatcher::String(StringMatcher::exact(value))),
            jwt_claim(
                claim,
                ValueMatcher::List(Box::new(ListMatcher {
                    one_of: ValueMatcher::String(StringMatcher::exact(value)),
                })),
            ),
        ],
        false,
    )
}

fn scope_principal(scope: &str) -> Principal {
    let in_list = format!("^(.* )?{}( .*)?$", regex_escape(scope));
    and_or(
        vec![
            jwt_claim(
                "scope",
                ValueMatcher::String(StringMatcher::regex(&in_list)),
            ),
            jwt_claim("scp", ValueMatcher::String(StringMatcher::regex(&in_list))),
            jwt_claim(
                "scp",
                ValueMatcher::List(Box::new(ListMatcher {
                    one_of: ValueMatcher::String(StringMatcher::exact(scope)),
                })),
            ),
        ],
        false,
    )
}

fn cidr(ctx: &Ctx<'_>, field: &str, c: &str) -> Result<CidrRange, RenderError> {
    let (addr, len) = c
        .split_once('/')
        .ok_or_else(|| ctx.invalid(field, format!("{c:?} is not a CIDR (address/length)")))?;
    let ip: std::net::IpAddr = addr
        .parse()
        .map_err(|_| ctx.invalid(field, format!("{c:?}: {addr:?} is not an IP address")))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let prefix_len: u32 = len
        .parse()
        .ok()
        .filter(|l| *l <= max)
        .ok_or_else(|| ctx.invalid(field, format!("{c:?}: prefix length must be 0..={max}")))?;
    Ok(CidrRange {
        address_prefix: ip.to_string(),
        prefix_len,
    })
}

fn rule_principal(
    ctx: &Ctx<'_>,
    index: usize,
    rule: &AuthorizationRule,
    authn: RouteAuthn,
) -> Result<Principal, RenderError> {
    let allow = rule.allow.clone().unwrap_or_default();
    let mut all = Vec::new();
    if authn.jwt {
        all.push(jwt_authenticated());
    }
    if authn.api_key {
        all.push(Principal::Header(HeaderMatcher::present(
            CLIENT_ID_HEADER,
            true,
        )));
    }
    if authn.mtls {
        all.push(and_or(
            ctx.allowed_clients()
                .iter()
                .map(|c| {
                    Principal::Authenticated(AuthenticatedPrincipal {
                        principal_name: StringMatcher::exact(c),
                    })
                })
                .collect(),
            false,
        ));
    }
    for s in &allow.scopes {
        all.push(scope_principal(s));
    }
    for c in &allow.claims {
        all.push(and_or(
            c.values.iter().map(|v| claim_equals(&c.name, v)).collect(),
            false,
        ));
    }
    if !allow.api_key_clients.is_empty() {
        all.push(and_or(
            allow
                .api_key_clients
                .iter()
                .map(|c| {
                    Principal::Header(HeaderMatcher::string(
                        CLIENT_ID_HEADER,
                        StringMatcher::exact(c),
                    ))
                })
                .collect(),
            false,
        ));
    }
    if !allow.source_cidrs.is_empty() {
        let field = format!("spec.authorization.rules[{index}].allow.sourceCIDRs");
        let ranges = allow
            .source_cidrs
            .iter()
            .map(|c| cidr(ctx, &field, c).map(Principal::RemoteIp))
            .collect::<Result<Vec<_>, _>>()?;
        all.push(and_or(ranges, false));
    }
    if all.is_empty() {
        return Err(ctx.invalid(
            format!("spec.authorization.rules[{index}]"),
            "the rule is not public but the policy configures no authentication method (jwt, apiKeys or mtls.allowedClients)",
        ));
    }
    Ok(and_or(all, true))
}

/// 1-based path segment index of `{param}` in `path`.
fn param_segment(path: &str, param: &str) -> Option<usize> {
    let needle = format!("{{{param}}}");
    path.split('/')
        .filter(|s| !s.is_empty())
        .position(|s| s == needle)
        .map(|i| i + 1)
}

fn build_routes(ctx: &Ctx<'_>) -> Result<RouteConfiguration, RenderError> {
    let spec = ctx.spec;
    let validation = spec.request_validation();
    let mut routes = Vec::new();

    if spec.cors.is_some() {
        // A preflight must reach a route that carries the CorsPolicy whatever the method
        // restrictions of the real routes are; the cors filter answers it for allowed origins.
        // Other origins fall through to a deny-all RBAC (no CORS headers).
        let mut r = route_to_target(
            "cors-preflight",
            RouteMatch {
                prefix: Some("/".into()),
                headers: vec![
                    HeaderMatcher::string(":method", StringMatcher::exact("OPTIONS")),
                    HeaderMatcher::present("origin", true),
                    HeaderMatcher::present("access-control-request-method", true),
                ],
                ..Default::default()
            },
        );
        r.typed_per_filter_config = per_filter(vec![
            (JWT_FILTER, jwt_disabled()),
            (RBAC_FILTER, rbac_route_enforced(BTreeMap::new())),
        ]);
        if ctx.jwt().is_none() {
            r.typed_per_filter_config.remove(JWT_FILTER);
        }
        routes.push(r);
    }

    let content_types = &validation.allowed_content_types;
    for (i, rule) in spec.rules().iter().enumerate() {
        let authn = route_authn(ctx, rule);
        let paths: Vec<String> = if rule.route.paths.is_empty() {
            vec!["/*".to_string()]
        } else {
            rule.route.paths.clone()
        };
        for path in &paths {
            let mut m = if path == "/*" {
                RouteMatch {
                    prefix: Some("/".into()),
                    ..Default::default()
                }
            } else {
                path_match(path)
            };
            if let Some(h) = method_matcher(&rule.route.methods) {
                m.headers.push(h);
            }
            if !content_types.is_empty() {
                let allowed = format!(
                    "^({})(;.*)?$",
                    content_types
                        .iter()
                        .map(|c| regex_escape(&c.to_ascii_lowercase()))
                        .collect::<Vec<_>>()
                        .join("|")
                );
                let mut wrong = m.clone();
                wrong
                    .headers
                    .push(HeaderMatcher::present("content-type", true));
                wrong.headers.push(HeaderMatcher {
                    name: "content-type".into(),
                    string_match: Some(StringMatcher {
                        safe_regex: Some(RegexMatcher { regex: allowed }),
                        ignore_case: false,
                        ..Default::default()
                    }),
                    present_match: None,
                    invert_match: true,
                });
                routes.push(direct(&rule.name, wrong, 415, "unsupported media type\n"));
                let mut untyped = m.clone();
                untyped
                    .headers
                    .push(HeaderMatcher::present("content-type", false));
                untyped.headers.push(HeaderMatcher::string(
                    "content-length",
                    StringMatcher::regex("^0*[1-9][0-9]*$"),
                ));
                routes.push(direct(&rule.name, untyped, 415, "unsupported media type\n"));
            }
            let mut route = route_to_target(&rule.name, m);
            let mut pf: Vec<(&str, Any)> = Vec::new();
            let mut meta = serde_json::Map::new();
            meta.insert("rule".into(), json!(rule.name));
            meta.insert("audit".into(), json!(ctx.audit));
            if rule.public {
                if ctx.jwt().is_some() {
                    pf.push((JWT_FILTER, jwt_disabled()));
                }
            } else {
                if ctx.jwt().is_some() {
                    pf.push((
                        JWT_FILTER,
                        if authn.jwt {
                            Any::JwtPerRoute(JwtPerRoute {
                                disabled: false,
                                requirement_name: Some(rule.name.clone()),
                            })
                        } else {
                            jwt_disabled()
                        },
                    ));
                }
                if authn.api_key {
                    pf.push((
                        API_KEY_FILTER,
                        Any::FilterConfig(Box::new(FilterConfig {
                            config: Some(Any::ApiKeyAuthPerRoute(ApiKeyAuthPerRoute {
                                allowed_clients: Vec::new(),
                                forwarding: api_key_forwarding(),
                            })),
                            disabled: false,
                        })),
                    ));
                }
                let mut policies = BTreeMap::new();
                policies.insert(
                    rule.name.clone(),
                    RbacPolicy {
                        permissions: vec![Permission { any: true }],
                        principals: vec![rule_principal(ctx, i, rule, authn)?],
                    },
                );
                pf.push((RBAC_FILTER, rbac_route(ctx, policies)));
                if let Some(own) = &rule.ownership {
                    let seg = param_segment(path, &own.path_param).ok_or_else(|| {
                        ctx.invalid(
                            format!("spec.authorization.rules[{i}].ownership.pathParam"),
                            format!("{{{}}} does not appear in path {path:?}", own.path_param),
                        )
                    })?;
                    meta.insert("owner_segment".into(), json!(seg));
                    meta.insert("owner_claim".into(), json!(own.claim));
                }
            }
            if let Some(rl) = rate_limit_config(ctx, rule, path)? {
                pf.push((RATELIMIT_FILTER, Any::LocalRateLimit(rl)));
            }
            route.typed_per_filter_config = per_filter(pf);
            let mut filter_metadata = BTreeMap::new();
            filter_metadata.insert(
                lua::AUTHZ_FILTER.to_string(),
                serde_json::Value::Object(meta),
            );
            route.metadata = Some(Metadata { filter_metadata });
            routes.push(route);
        }
    }

    // Everything no rule declares.
    let catch_all = RouteMatch {
        prefix: Some("/".into()),
        ..Default::default()
    };
    let undeclared = "undeclared-route";
    let default_allow = spec.default_action() == DefaultAction::Allow;
    if default_allow {
        let mut r = route_to_target(undeclared, catch_all);
        let mut pf = Vec::new();
        let mut principals = Vec::new();
        if ctx.jwt().is_some() {
            pf.push((
                JWT_FILTER,
                Any::JwtPerRoute(JwtPerRoute {
                    disabled: false,
                    requirement_name: Some(ANY_PROVIDER.into()),
                }),
            ));
            principals.push(jwt_authenticated());
        } else if ctx.api_keys().is_some() {
            pf.push((
                API_KEY_FILTER,
                Any::FilterConfig(Box::new(FilterConfig {
                    config: Some(Any::ApiKeyAuthPerRoute(ApiKeyAuthPerRoute {
                        allowed_clients: Vec::new(),
                        forwarding: api_key_forwarding(),
                    })),
                    disabled: false,
                })),
            ));
            principals.push(Principal::Header(HeaderMatcher::present(
                CLIENT_ID_HEADER,
                true,
            )));
        }
        let required = spec.authentication().required;
        if required && !principals.is_empty() {
            let mut policies = BTreeMap::new();
            policies.insert(
                undeclared.to_string(),
                RbacPolicy {
                    permissions: vec![Permission { any: true }],
                    principals,
                },
            );
            pf.push((RBAC_FILTER, rbac_route(ctx, policies)));
        }
        r.typed_per_filter_config = per_filter(pf);
        routes.push(r);
    } else if ctx.audit || !validation.reject_undeclared_routes {
        // Audit: let it through and record the would-be denial; Enforce: 403 from RBAC.
        let mut r = route_to_target(undeclared, catch_all);
        let mut pf = vec![(RBAC_FILTER, rbac_route(ctx, BTreeMap::new()))];
        if ctx.jwt().is_some() {
            pf.push((JWT_FILTER, jwt_disabled()));
        }
        r.typed_per_filter_config = per_filter(pf);
        let mut meta = serde_json::Map::new();
        meta.insert("rule".into(), json!(undeclared));
        meta.insert("audit".into(), json!(ctx.audit));
        let mut filter_metadata = BTreeMap::new();
        filter_metadata.insert(
            lua::AUTHZ_FILTER.to_string(),
            serde_json::Value::Object(meta),
        );
        r.metadata = Some(Metadata { filter_metadata });
        routes.push(r);
    } else {
        routes.push(direct(undeclared, catch_all, 404, "not found\n"));
    }

    let mut vh_config = BTreeMap::new();
    if let Some(cors) = &spec.cors {
        vh_config.insert(
            CORS_FILTER.to_string(),
            Any::CorsPolicy(cors_policy(ctx, cors)?),
        );
    }
    let domains = if spec.hosts.is_empty() {
        vec!["*".to_string()]
    } else {
        spec.hosts.clone()
    };
    Ok(RouteConfiguration {
        name: "gateway".into(),
        virtual_hosts: vec![VirtualHost {
            name: "api".into(),
            domains,
            routes,
            typed_per_filter_config: vh_config,
        }],
        request_headers_to_remove: Vec::new(),
    })
}

fn rbac_route_enforced(policies: BTreeMap<String, RbacPolicy>) -> Any {
    Any::RbacPerRoute(RbacPerRoute {
        rbac: Rbac {
            rules: Some(RbacRules {
                action: "ALLOW",
                policies,
            }),
            shadow_rules: None,
            shadow_rules_stat_prefix: None,
        },
    })
}

fn cors_policy(ctx: &Ctx<'_>, cors: &Cors) -> Result<CorsPolicy, RenderError> {
    let mut origins = Vec::new();
    for (i, o) in cors.allow_origins.iter().enumerate() {
        if matches!(o.as_str(), "*" | ".*" | "https://*" | "http://*") {
            return Err(ctx.invalid(
                format!("spec.cors.allowOrigins[{i}]"),
                "a match-all origin is rejected (APG001)",
            ));
        }
        match o.split_once("://*.") {
            Some((scheme, domain)) => origins.push(StringMatcher::regex(format!(
                "^{}://[A-Za-z0-9-]+(\\.[A-Za-z0-9-]+)*\\.{}$",
                regex_escape(scheme),
                regex_escape(domain)
            ))),
            None => origins.push(StringMatcher::exact(o)),
        }
    }
    let max_age = match &cors.max_age {
        None => String::new(),
        Some(m) => parse_duration(m)
            .map(|d| d.as_secs().to_string())
            .map_err(|e| ctx.invalid("spec.cors.maxAge", e.to_string()))?,
    };
    Ok(CorsPolicy {
        allow_origin_string_match: origins,
        allow_methods: cors.allow_methods.join(","),
        allow_headers: cors.allow_headers.join(","),
        expose_headers: cors.expose_headers.join(","),
        max_age,
        allow_credentials: cors.allow_credentials,
    })
}

fn percent(n: u32, key: &str) -> RuntimeFractionalPercent {
    RuntimeFractionalPercent {
        default_value: FractionalPercent {
            numerator: n,
            denominator: "HUNDRED",
        },
        runtime_key: key.to_string(),
    }
}

/// The local rate limit of one Envoy route: one descriptor per policy rate limit that can
/// apply to the route, each with a per-client (dynamic, empty-valued) entry.
fn rate_limit_config(
    ctx: &Ctx<'_>,
    rule: &AuthorizationRule,
    path: &str,
) -> Result<Option<LocalRateLimit>, RenderError> {
    let mut descriptors = Vec::new();
    let mut rate_limits = Vec::new();
    for (j, rl) in ctx.spec.rate_limits.iter().enumerate() {
        let field = format!("spec.rateLimits[{j}]");
        if rl.limit.requests == 0 {
            return Err(ctx.invalid(format!("{field}.limit.requests"), "must be greater than 0"));
        }
        let m = rl.route.clone().unwrap_or_default();
        let mut actions = vec![RateLimitAction::GenericKey {
            descriptor_key: "limit".into(),
            descriptor_value: rl.name.clone(),
        }];
        let mut entries = vec![DescriptorEntry {
            key: "limit".into(),
            value: rl.name.clone(),
        }];
        if !m.methods.is_empty() {
            let rule_methods = &rule.route.methods;
            let covered =
                !rule_methods.is_empty() && rule_methods.iter().all(|x| m.methods.contains(x));
            let disjoint =
                !rule_methods.is_empty() && rule_methods.iter().all(|x| !m.methods.contains(x));
            if disjoint {
                continue;
            }
            if !covered {
                actions.push(RateLimitAction::HeaderValueMatch {
                    descriptor_key: "method".into(),
                    descriptor_value: "match".into(),
                    expect_match: true,
                    headers: vec![method_matcher(&m.methods).expect("non-empty methods")],
                });
                entries.push(DescriptorEntry {
                    key: "method".into(),
                    value: "match".into(),
                });
            }
        }
        if !m.paths.is_empty() && !m.paths.iter().any(|p| p == path) {
            if !paths_may_overlap(&m.paths, path) {
                continue;
            }
            let regex = format!(
                "({})(\\?.*)?",
                m.paths
                    .iter()
                    .map(|p| path_regex(p)
                        .trim_start_matches('^')
                        .trim_end_matches('$')
                        .to_string())
                    .collect::<Vec<_>>()
                    .join("|")
            );
            actions.push(RateLimitAction::HeaderValueMatch {
                descriptor_key: "path".into(),
                descriptor_value: "match".into(),
                expect_match: true,
                headers: vec![HeaderMatcher::string(
                    ":path",
                    StringMatcher::regex(format!("^{regex}$")),
                )],
            });
            entries.push(DescriptorEntry {
                key: "path".into(),
                value: "match".into(),
            });
        }
        let by = rl.by.clone().unwrap_or_default();
        let key_entry = if let Some(claim) = &by.claim {
            if ctx.jwt().is_none() {
                return Err(ctx.invalid(
                    format!("{field}.by.claim"),
                    "a claim-keyed rate limit needs authentication.jwt",
                ));
            }
            actions.push(RateLimitAction::Metadata {
                descriptor_key: "client".into(),
                metadata_key: MetadataKey {
                    key: JWT_FILTER.into(),
                    path: vec![
                        PathSegment {
                            key: "payload".into(),
                        },
                        PathSegment { key: claim.clone() },
                    ],
                },
                source: "DYNAMIC",
            });
            "client"
        } else if by.api_key.is_some() {
            actions.push(RateLimitAction::RequestHeaders {
                header_name: CLIENT_ID_HEADER.into(),
                descriptor_key: "client".into(),
            });
            "client"
        } else if let Some(h) = &by.header {
            actions.push(RateLimitAction::RequestHeaders {
                header_name: h.to_ascii_lowercase(),
                descriptor_key: "client".into(),
            });
            "client"
        } else {
            actions.push(RateLimitAction::RemoteAddress(Empty {}));
            "remote_address"
        };
        entries.push(DescriptorEntry {
            key: key_entry.into(),
            value: String::new(),
        });
        let period = rl.limit.per.seconds();
        descriptors.push(LocalRateLimitDescriptor {
            entries,
            token_bucket: TokenBucket {
                max_tokens: rl.limit.requests,
                tokens_per_fill: rl.limit.requests,
                fill_interval: format!("{period}s"),
            },
        });
        rate_limits.push(RateLimit { actions });
    }
    if descriptors.is_empty() {
        return Ok(None);
    }
    Ok(Some(LocalRateLimit {
        stat_prefix: "apiguard_ratelimit".into(),
        // Requests no descriptor matches (e.g. no client key) are not limited by this bucket.
        token_bucket: Some(TokenBucket {
            max_tokens: 1_000_000_000,
            tokens_per_fill: 1_000_000_000,
            fill_interval: "1s".into(),
        }),
        filter_enabled: Some(percent(100, "apiguard.ratelimit.enabled")),
        filter_enforced: Some(percent(
            if ctx.audit { 0 } else { 100 },
            "apiguard.ratelimit.enforced",
        )),
        descriptors,
        rate_limits,
        max_dynamic_descriptors: Some(ctx.opts().max_dynamic_descriptors),
        always_consume_default_token_bucket: Some(false),
    }))
}

// ---------------------------------------------------------------- clusters

/// `host:port` of the target Service's port in the cluster.
pub fn target_address(
    policy: &ApiSecurityPolicy,
    service: &Service,
    cluster_domain: &str,
) -> Result<(String, u16), RenderError> {
    let spec = &policy.spec;
    let invalid = |m: String| RenderError::Invalid {
        policy: policy_ref(policy),
        field: "spec.target".into(),
        message: m,
    };
    let svc_name = service.metadata.name.as_deref().unwrap_or("");
    if svc_name != spec.target.service {
        return Err(invalid(format!(
            "the given Service is {svc_name:?}, the policy targets {:?}",
            spec.target.service
        )));
    }
    let ports = service
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .map(|p| p.as_slice())
        .unwrap_or(&[]);
    let port = match &spec.target.port {
        IntOrString::Int(n) => ports.iter().find(|p| p.port == *n),
        IntOrString::String(name) => ports.iter().find(|p| p.name.as_deref() == Some(name)),
    }
    .ok_or_else(|| {
        invalid(format!(
            "Service {svc_name} has no port {}",
            match &spec.target.port {
                IntOrString::Int(n) => n.to_string(),
                IntOrString::String(s) => format!("named {s:?}"),
            }
        ))
    })?;
    let port = u16::try_from(port.port)
        .map_err(|_| invalid(format!("Service port {} out of range", port.port)))?;
    let ns = policy
        .metadata
        .namespace
        .as_deref()
        .or(service.metadata.namespace.as_deref())
        .unwrap_or("default");
    Ok((format!("{svc_name}.{ns}.svc.{cluster_domain}"), port))
}

fn cluster(name: &str, host: &str, port: u16, tls: Option<TransportSocket>) -> Cluster {
    let is_ip = host.parse::<std::net::IpAddr>().is_ok();
    Cluster {
        name: name.to_string(),
        discovery_type: if is_ip { "STATIC" } else { "STRICT_DNS" },
        connect_timeout: "5s".into(),
        lb_policy: "ROUND_ROBIN",
        load_assignment: ClusterLoadAssignment {
            cluster_name: name.to_string(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    endpoint: Endpoint {
                        address: socket(host, port),
                    },
                }],
            }],
        },
        transport_socket: tls,
        dns_lookup_family: (!is_ip).then_some("V4_PREFERRED"),
        metadata: None,
    }
}

/// The metadata that ties a listener or cluster to the certificates it reads from files.
/// Envoy reads `filename` data sources when it builds the resource, and a renewal rewrites
/// the files under the same names: without this, an otherwise identical resource is "unchanged"
/// and the old certificate stays in use until it expires. With it, a renewal changes the
/// resource and Envoy replaces it (new connections get the new certificate; the old listener
/// drains).
fn certificates_metadata<'a>(files: impl Iterator<Item = (&'a str, &'a str)>) -> Metadata {
    Metadata {
        filter_metadata: BTreeMap::from([(
            "apiguard.dev".to_string(),
            json!({ "certificates": super::hash_files(files) }),
        )]),
    }
}

fn split_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((host.to_string(), port.parse().ok()?))
}

fn build_clusters(ctx: &Ctx<'_>) -> Result<Vec<Cluster>, RenderError> {
    let (svc_host, svc_port) = target_address(
        ctx.input.policy,
        ctx.input.target_service,
        &ctx.opts().cluster_domain,
    )?;
    let (host, port) = match &ctx.opts().upstream_override {
        Some(o) => split_host_port(o)
            .ok_or_else(|| ctx.invalid("options.upstream", format!("{o:?} is not host:port")))?,
        None => (svc_host.clone(), svc_port),
    };
    let upstream_tls = if ctx.spec.east_west().mtls == EastWestMtls::Disabled {
        None
    } else {
        let up =
            ctx.input.identity.upstream.as_ref().ok_or_else(|| {
                ctx.invalid("spec.eastWest.mtls", "no upstream identity was given")
            })?;
        Some(TransportSocket {
            name: "envoy.transport_sockets.tls",
            typed_config: Any::UpstreamTlsContext(Box::new(UpstreamTlsContext {
                common_tls_context: CommonTlsContext {
                    tls_params: TlsParameters {
                        tls_minimum_protocol_version: "TLSv1_2",
                        tls_maximum_protocol_version: "TLSv1_3",
                    },
                    tls_certificates: vec![TlsCertificate {
                        certificate_chain: DataSource::file(ctx.config_path(UPSTREAM_CERT_FILE)),
                        private_key: DataSource::file(ctx.secret_path(UPSTREAM_KEY_FILE)),
                    }],
                    validation_context: Some(CertificateValidationContext {
                        trusted_ca: DataSource::file(ctx.config_path(UPSTREAM_CA_FILE)),
                        match_typed_subject_alt_names: vec![SubjectAltNameMatcher {
                            san_type: "URI",
                            matcher: StringMatcher::exact(&up.target_spiffe_id),
                        }],
                    }),
                    alpn_protocols: Vec::new(),
                },
                sni: svc_host.clone(),
            })),
        })
    };
    let mut clusters = vec![cluster(TARGET_CLUSTER, &host, port, upstream_tls)];
    if let Some(jwt) = ctx.jwt() {
        for (i, p) in jwt.providers.iter().enumerate() {
            let Some(uri) = &p.jwks.uri else { continue };
            let field = format!("spec.authentication.jwt.providers[{i}].jwks.uri");
            let rest = uri
                .strip_prefix("https://")
                .ok_or_else(|| ctx.invalid(&field, "must be an https:// URL (APG007)"))?;
            let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
            let (host, port) = match split_host_port(authority) {
                Some(hp) => hp,
                None => (authority.to_string(), 443),
            };
            if host.is_empty() {
                return Err(ctx.invalid(&field, "has no host"));
            }
            let tls = TransportSocket {
                name: "envoy.transport_sockets.tls",
                typed_config: Any::UpstreamTlsContext(Box::new(UpstreamTlsContext {
                    common_tls_context: CommonTlsContext {
                        tls_params: TlsParameters {
                            tls_minimum_protocol_version: "TLSv1_2",
                            tls_maximum_protocol_version: "TLSv1_3",
                        },
                        tls_certificates: Vec::new(),
                        validation_context: Some(CertificateValidationContext {
                            trusted_ca: DataSource::file(ctx.opts().system_ca_file.clone()),
                            match_typed_subject_alt_names: vec![SubjectAltNameMatcher {
                                san_type: "DNS",
                                matcher: StringMatcher::exact(&host),
                            }],
                        }),
                        alpn_protocols: Vec::new(),
                    },
                    sni: host.clone(),
                })),
            };
            clusters.push(cluster(&jwks_cluster_name(&p.name), &host, port, Some(tls)));
        }
    }
    Ok(clusters)
}

/// A self-contained bootstrap with the listener, clusters and extension configs of `gateway`
/// inlined as static resources: `envoy --mode validate` checks file-based dynamic resources
/// only when they are static, so this is what validation runs on. Not for serving.
pub fn static_bootstrap(gateway: &RenderedGateway) -> Result<String, String> {
    use serde_json::Value;
    let file = |name: &str| -> Result<Value, String> {
        let f = gateway
            .files
            .get(name)
            .ok_or_else(|| format!("the rendered gateway has no {name}"))?;
        if name.ends_with(".yaml") {
            serde_saphyr::from_str(&f.contents).map_err(|e| format!("{name}: {e}"))
        } else {
            serde_json::from_str(&f.contents).map_err(|e| format!("{name}: {e}"))
        }
    };
    let resources = |v: Value| -> Vec<Value> {
        match v.get("resources") {
            Some(Value::Array(items)) => items
                .iter()
                .cloned()
                .map(|mut r| {
                    if let Some(o) = r.as_object_mut() {
                        o.remove("@type");
                    }
                    r
                })
                .collect(),
            _ => Vec::new(),
        }
    };
    let mut extensions = BTreeMap::new();
    if gateway.files.contains_key(API_KEYS_FILE) {
        for ext in resources(file(API_KEYS_FILE)?) {
            if let (Some(Value::String(name)), Some(config)) =
                (ext.get("name"), ext.get("typed_config"))
            {
                extensions.insert(name.clone(), config.clone());
            }
        }
    }
    let mut listeners = resources(file(LDS_FILE)?);
    fn inline_discovery(v: &mut Value, ext: &BTreeMap<String, Value>) {
        match v {
            Value::Object(o) => {
                if o.contains_key("config_discovery")
                    && let Some(Value::String(name)) = o.get("name")
                    && let Some(config) = ext.get(name)
                {
                    let config = config.clone();
                    o.remove("config_discovery");
                    o.insert("typed_config".into(), config);
                }
                for child in o.values_mut() {
                    inline_discovery(child, ext);
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|c| inline_discovery(c, ext)),
            _ => {}
        }
    }
    for l in &mut listeners {
        inline_discovery(l, &extensions);
    }
    let clusters = resources(file(CDS_FILE)?);
    let mut bootstrap = file(BOOTSTRAP_FILE)?;
    let o = bootstrap
        .as_object_mut()
        .ok_or_else(|| "bootstrap is not an object".to_string())?;
    o.remove("dynamic_resources");
    o.insert(
        "static_resources".into(),
        json!({"listeners": listeners, "clusters": clusters}),
    );
    serde_json::to_string_pretty(&bootstrap).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_patterns() {
        assert_eq!(
            path_regex("/users/{userId}/orders"),
            "^/users/[^/]+/orders$"
        );
        assert_eq!(path_regex("/a.b/*"), "^/a\\.b/.*$");
        assert_eq!(path_match("/orders").path.as_deref(), Some("/orders"));
        assert_eq!(path_match("/orders/*").prefix.as_deref(), Some("/orders/"));
        assert!(path_match("/u/{id}").safe_regex.is_some());
        assert_eq!(param_segment("/users/{userId}/orders", "userId"), Some(2));
        assert_eq!(param_segment("/users/{userId}/orders", "other"), None);
    }

    #[test]
    fn rate_limit_paths_overlap() {
        let p = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(paths_may_overlap(&p(&["/login"]), "/login"));
        assert!(!paths_may_overlap(&p(&["/login"]), "/cart"));
        assert!(paths_may_overlap(&p(&["/cart/*"]), "/cart/1"));
        assert!(paths_may_overlap(
            &p(&["/users/1/checkout"]),
            "/users/{id}/checkout"
        ));
        assert!(!paths_may_overlap(
            &p(&["/users/1/checkout"]),
            "/users/{id}/orders"
        ));
    }

    #[test]
    fn jwks_checked() {
        assert!(check_jwks("{\"keys\":[{}]}").is_ok());
        assert!(check_jwks("{\"keys\":[]}").is_err());
        assert!(check_jwks("nope").is_err());
    }
}
