//! Typed serde structs for the subset of Envoy's v3 API apiguard emits.
//!
//! Field names are Envoy's proto field names (the JSON/YAML form Envoy reads). Only what the
//! renderer needs is modelled; every struct serializes to exactly the fields that are set, so
//! the output stays small and its hash changes only when the configuration does.

use serde::Serialize;
use std::collections::BTreeMap;

fn is_false(b: &bool) -> bool {
    !*b
}

/// A `google.protobuf.Any`: the message with its `@type` URL.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(tag = "@type")]
pub enum Any {
    #[serde(rename = "type.googleapis.com/envoy.config.listener.v3.Listener")]
    Listener(Listener),
    #[serde(rename = "type.googleapis.com/envoy.config.cluster.v3.Cluster")]
    Cluster(Box<Cluster>),
    #[serde(rename = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig")]
    TypedExtensionConfig(TypedExtensionConfig),
    #[serde(
        rename = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
    )]
    HttpConnectionManager(Box<HttpConnectionManager>),
    #[serde(rename = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router")]
    Router(Empty),
    #[serde(
        rename = "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig"
    )]
    HttpGrpcAccessLog(HttpGrpcAccessLog),
    #[serde(
        rename = "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication"
    )]
    JwtAuthentication(JwtAuthentication),
    #[serde(
        rename = "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig"
    )]
    JwtPerRoute(JwtPerRoute),
    #[serde(
        rename = "type.googleapis.com/envoy.extensions.filters.http.api_key_auth.v3.ApiKeyAuth"
    )]
    ApiKeyAuth(ApiKeyAuth),
    #[serde(
        rename = "type.googleapis.com/envoy.extensions.filters.http.api_key_auth.v3.ApiKeyAuthPerRoute"
    )]
    ApiKeyAuthPerRoute(ApiKeyAuthPerRoute),
    #[serde(rename = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC")]
    Rbac(Rbac),
    #[serde(rename = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute")]
    RbacPerRoute(RbacPerRoute),
    #[serde(rename = "type.googleapis.com/envoy.extensions.filters.http.set_metadata.v3.Config")]
    SetMetadata(SetMetadata),
    #[serde(rename = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors")]
    Cors(Empty),
    #[serde(rename = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy")]
    CorsPolicy(CorsPolicy),
    #[serde(
        rename = "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
    )]
    LocalRateLimit(LocalRateLimit),
    #[serde(rename = "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit")]
    GlobalRateLimit(GlobalRateLimitFilter),
    #[serde(
        rename = "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimitPerRoute"
    )]
    RateLimitPerRoute(RateLimitPerRoute),
    #[serde(rename = "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer")]
    Buffer(Buffer),
    #[serde(rename = "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.BufferPerRoute")]
    BufferPerRoute(BufferPerRoute),
    #[serde(
        rename = "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation"
    )]
    HeaderMutation(HeaderMutation),
    #[serde(rename = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog")]
    FileAccessLog(FileAccessLog),
    #[serde(
        rename = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
    )]
    DownstreamTlsContext(Box<DownstreamTlsContext>),
    #[serde(
        rename = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
    )]
    UpstreamTlsContext(Box<UpstreamTlsContext>),
    #[serde(
        rename = "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig"
    )]
    DownstreamConnectionsConfig(DownstreamConnectionsConfig),
    #[serde(rename = "type.googleapis.com/envoy.config.route.v3.FilterConfig")]
    FilterConfig(Box<FilterConfig>),
    #[serde(
        rename = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor"
    )]
    ExternalProcessor(Box<ExternalProcessor>),
    #[serde(
        rename = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute"
    )]
    ExtProcPerRoute(ExtProcPerRoute),
    #[serde(rename = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions")]
    UpstreamHttpProtocolOptions(UpstreamHttpProtocolOptions),
}

/// An empty message (`{}`).
#[derive(Serialize, Debug, Clone, PartialEq, Default)]
pub struct Empty {}

// ---------------------------------------------------------------- bootstrap

#[derive(Serialize, Debug, Clone, PartialEq)]
pub(crate) struct Bootstrap {
    pub node: Node,
    pub admin: Admin,
    pub dynamic_resources: DynamicResources,
    pub overload_manager: OverloadManager,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub(crate) struct OverloadManager {
    pub resource_monitors: Vec<ResourceMonitor>,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub(crate) struct ResourceMonitor {
    pub name: &'static str,
    pub typed_config: Any,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct DownstreamConnectionsConfig {
    pub max_active_downstream_connections: u64,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub id: String,
    pub cluster: String,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Admin {
    pub address: Address,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub(crate) struct DynamicResources {
    pub lds_config: ConfigSource,
    pub cds_config: ConfigSource,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct ConfigSource {
    pub path_config_source: PathConfigSource,
    pub resource_api_version: &'static str,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct PathConfigSource {
    pub path: String,
    pub watched_directory: WatchedDirectory,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct WatchedDirectory {
    pub path: String,
}

/// A file-based xDS response: what `path_config_source` files contain.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub(crate) struct DiscoveryResponse {
    pub version_info: String,
    pub resources: Vec<Any>,
}

// ---------------------------------------------------------------- core

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Address {
    pub socket_address: SocketAddress,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct SocketAddress {
    pub address: String,
    pub port_value: u16,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct DataSource {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inline_string: Option<String>,
}

impl DataSource {
    pub fn file(path: impl Into<String>) -> Self {
        Self {
            filename: Some(path.into()),
            inline_string: None,
        }
    }
    pub fn inline(s: impl Into<String>) -> Self {
        Self {
            filename: None,
            inline_string: Some(s.into()),
        }
    }
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct TypedExtensionConfig {
    pub name: String,
    pub typed_config: Box<Any>,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct TransportSocket {
    pub name: &'static str,
    pub typed_config: Any,
}

#[derive(Serialize, Debug, Clone, PartialEq, Default)]
pub struct StringMatcher {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub safe_regex: Option<RegexMatcher>,
    #[serde(skip_serializing_if = "is_false")]
    pub ignore_case: bool,
}

impl StringMatcher {
    pub fn exact(s: impl Into<String>) -> Self {
        Self {
            exact: Some(s.into()),
            ..Default::default()
        }
    }
    pub fn regex(r: impl Into<String>) -> Self {
        Self {
            safe_regex: Some(RegexMatcher { regex: r.into() }),
            ..Default::default()
        }
    }
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct RegexMatcher {
    pub regex: String,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct HeaderMatcher {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub string_match: Option<StringMatcher>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub present_match: Option<bool>,
    #[serde(skip_serializing_if = "is_false")]
    pub invert_match: bool,
}

impl HeaderMatcher {
    pub fn string(name: &str, m: StringMatcher) -> Self {
        Self {
            name: name.to_string(),
            string_match: Some(m),
            present_match: None,
            invert_match: false,
        }
    }
    pub fn present(name: &str, present: bool) -> Self {
        Self {
            name: name.to_string(),
            string_match: None,
            present_match: Some(present),
            invert_match: false,
        }
    }
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Metadata {
    pub filter_metadata: BTreeMap<String, serde_json::Value>,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct RuntimeFractionalPercent {
    pub default_value: FractionalPercent,
    pub runtime_key: String,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct FractionalPercent {
    pub numerator: u32,
    pub denominator: &'static str,
}

// ---------------------------------------------------------------- listener

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Listener {
    pub name: String,
    pub address: Address,
    pub filter_chains: Vec<FilterChain>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct FilterChain {
    pub filters: Vec<NetworkFilter>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transport_socket: Option<TransportSocket>,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct NetworkFilter {
    pub name: &'static str,
    pub typed_config: Any,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct HttpConnectionManager {
    pub stat_prefix: String,
    pub codec_type: &'static str,
    pub use_remote_address: bool,
    pub normalize_path: bool,
    pub merge_slashes: bool,
    pub path_with_escaped_slashes_action: &'static str,
    pub common_http_protocol_options: HttpProtocolOptions,
    pub strip_any_host_port: bool,
    pub route_config: RouteConfiguration,
    pub http_filters: Vec<HttpFilter>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub access_log: Vec<AccessLog>,
    /// `envoy.extensions.filters.network.http_connection_manager.v3.LocalReplyConfig`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_reply_config: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forward_client_cert_details: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub set_current_client_cert_details: Option<ClientCertDetails>,
    pub server_header_transformation: &'static str,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct ClientCertDetails {
    pub uri: bool,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct HttpProtocolOptions {
    pub headers_with_underscores_action: &'static str,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct HttpFilter {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub typed_config: Option<Any>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_discovery: Option<ExtensionConfigSource>,
    #[serde(skip_serializing_if = "is_false")]
    pub disabled: bool,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct ExtensionConfigSource {
    pub config_source: ConfigSource,
    pub type_urls: Vec<&'static str>,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct AccessLog {
    pub name: &'static str,
    pub typed_config: Any,
}

/// Envoy's gRPC access log service client (`envoy.access_loggers.http_grpc`): every request's
/// entry, streamed off the request path.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct HttpGrpcAccessLog {
    pub common_config: CommonGrpcAccessLogConfig,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub additional_request_headers_to_log: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub additional_response_headers_to_log: Vec<String>,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct CommonGrpcAccessLogConfig {
    pub log_name: String,
    pub grpc_service: GrpcService,
    pub transport_api_version: &'static str,
    /// How long entries wait in Envoy's buffer before they are sent.
    pub buffer_flush_interval: String,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct FileAccessLog {
    pub path: String,
    pub log_format: SubstitutionFormatString,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct SubstitutionFormatString {
    pub json_format: BTreeMap<String, String>,
}

// ---------------------------------------------------------------- routes

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct RouteConfiguration {
    pub name: String,
    pub virtual_hosts: Vec<VirtualHost>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub request_headers_to_remove: Vec<String>,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct VirtualHost {
    pub name: String,
    pub domains: Vec<String>,
    pub routes: Vec<Route>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub typed_per_filter_config: BTreeMap<String, Any>,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Route {
    pub name: String,
    #[serde(rename = "match")]
    pub route_match: RouteMatch,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<RouteAction>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direct_response: Option<DirectResponseAction>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub typed_per_filter_config: BTreeMap<String, Any>,
}

#[derive(Serialize, Debug, Clone, PartialEq, Default)]
pub struct RouteMatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub safe_regex: Option<RegexMatcher>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatcher>,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct RouteAction {
    pub cluster: String,
    pub timeout: String,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct DirectResponseAction {
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<DataSource>,
}

/// `envoy.config.route.v3.FilterConfig`: per-route filter config with enable/disable.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct FilterConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config: Option<Any>,
    #[serde(skip_serializing_if = "is_false")]
    pub disabled: bool,
}

// ---------------------------------------------------------------- clusters

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Cluster {
    pub name: String,
    #[serde(rename = "type")]
    pub discovery_type: &'static str,
    pub connect_timeout: String,
    pub lb_policy: &'static str,
    pub load_assignment: ClusterLoadAssignment,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transport_socket: Option<TransportSocket>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns_lookup_family: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
    /// Upstream protocol options by extension name (HTTP/2 to a gRPC server).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub typed_extension_protocol_options: BTreeMap<String, Any>,
}

/// `envoy.extensions.upstreams.http.v3.HttpProtocolOptions`: here only HTTP/2.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct UpstreamHttpProtocolOptions {
    pub explicit_http_config: ExplicitHttpConfig,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct ExplicitHttpConfig {
    pub http2_protocol_options: Empty,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct ClusterLoadAssignment {
    pub cluster_name: String,
    pub endpoints: Vec<LocalityLbEndpoints>,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct LocalityLbEndpoints {
    pub lb_endpoints: Vec<LbEndpoint>,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct LbEndpoint {
    pub endpoint: Endpoint,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Endpoint {
    pub address: Address,
}

// ---------------------------------------------------------------- TLS

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct DownstreamTlsContext {
    pub common_tls_context: CommonTlsContext,
    pub require_client_certificate: bool,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct UpstreamTlsContext {
    pub common_tls_context: CommonTlsContext,
    pub sni: String,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct CommonTlsContext {
    pub tls_params: TlsParameters,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tls_certificates: Vec<TlsCertificate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validation_context: Option<CertificateValidationContext>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub alpn_protocols: Vec<&'static str>,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct TlsParameters {
    pub tls_minimum_protocol_version: &'static str,
    pub tls_maximum_protocol_version: &'static str,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct TlsCertificate {
    pub certificate_chain: DataSource,
    pub private_key: DataSource,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct CertificateValidationContext {
    pub trusted_ca: DataSource,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub match_typed_subject_alt_names: Vec<SubjectAltNameMatcher>,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct SubjectAltNameMatcher {
    pub san_type: &'static str,
    pub matcher: StringMatcher,
}

// ---------------------------------------------------------------- jwt_authn

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct JwtAuthentication {
    pub providers: BTreeMap<String, JwtProvider>,
    pub requirement_map: BTreeMap<String, JwtRequirement>,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct JwtProvider {
    pub issuer: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_jwks: Option<RemoteJwks>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_jwks: Option<DataSource>,
    pub forward: bool,
    pub payload_in_metadata: String,
    pub clock_skew_seconds: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_lifetime: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub claim_to_headers: Vec<JwtClaimToHeader>,
    pub jwt_cache_config: JwtCacheConfig,
}

/// Verified tokens are cached (per worker), so a client reusing its token skips signature checks.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct JwtCacheConfig {
    pub jwt_cache_size: u32,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct RemoteJwks {
    pub http_uri: HttpUri,
    pub cache_duration: String,
    pub async_fetch: Empty,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct HttpUri {
    pub uri: String,
    pub cluster: String,
    pub timeout: String,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct JwtClaimToHeader {
    pub header_name: String,
    pub claim_name: String,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct JwtRequirement {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requires_any: Option<JwtRequirementOrList>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_missing_or_failed: Option<Empty>,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct JwtRequirementOrList {
    pub requirements: Vec<JwtRequirement>,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct JwtPerRoute {
    #[serde(skip_serializing_if = "is_false")]
    pub disabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requirement_name: Option<String>,
}

// ---------------------------------------------------------------- api_key_auth

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct ApiKeyAuth {
    pub credentials: Vec<ApiKeyCredential>,
    pub key_sources: Vec<ApiKeySource>,
    pub forwarding: ApiKeyForwarding,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct ApiKeyCredential {
    pub key: String,
    pub client: String,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct ApiKeySource {
    pub header: String,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct ApiKeyForwarding {
    pub header: String,
    pub hide_credentials: bool,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct ApiKeyAuthPerRoute {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allowed_clients: Vec<String>,
    /// Repeated here: a per-route config replaces the filter-level forwarding settings.
    pub forwarding: ApiKeyForwarding,
}

// ---------------------------------------------------------------- rbac

#[derive(Serialize, Debug, Clone, PartialEq, Default)]
pub struct Rbac {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rules: Option<RbacRules>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow_rules: Option<RbacRules>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow_rules_stat_prefix: Option<String>,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct RbacPerRoute {
    pub rbac: Rbac,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct RbacRules {
    pub action: &'static str,
    pub policies: BTreeMap<String, RbacPolicy>,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct RbacPolicy {
    pub permissions: Vec<Permission>,
    pub principals: Vec<Principal>,
    /// A CEL condition as a syntax tree (`google.api.expr.v1alpha1.Expr`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub condition: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cel_config: Option<CelConfig>,
}

/// `envoy.config.core.v3.CelExpressionConfig`.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct CelConfig {
    pub enable_string_functions: bool,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Permission {
    pub any: bool,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub enum Principal {
    #[serde(rename = "any")]
    Any(bool),
    #[serde(rename = "and_ids")]
    And(PrincipalSet),
    #[serde(rename = "or_ids")]
    Or(PrincipalSet),
    #[serde(rename = "sourced_metadata")]
    SourcedMetadata(SourcedMetadata),
    #[serde(rename = "header")]
    Header(HeaderMatcher),
    #[serde(rename = "remote_ip")]
    RemoteIp(CidrRange),
    #[serde(rename = "authenticated")]
    Authenticated(AuthenticatedPrincipal),
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct PrincipalSet {
    pub ids: Vec<Principal>,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct AuthenticatedPrincipal {
    pub principal_name: StringMatcher,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct CidrRange {
    pub address_prefix: String,
    pub prefix_len: u32,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct SourcedMetadata {
    pub metadata_matcher: MetadataMatcher,
    pub metadata_source: &'static str,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct MetadataMatcher {
    pub filter: String,
    pub path: Vec<PathSegment>,
    pub value: ValueMatcher,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct PathSegment {
    pub key: String,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub enum ValueMatcher {
    #[serde(rename = "string_match")]
    String(StringMatcher),
    #[serde(rename = "present_match")]
    Present(bool),
    #[serde(rename = "list_match")]
    List(Box<ListMatcher>),
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct ListMatcher {
    pub one_of: ValueMatcher,
}

// ---------------------------------------------------------------- lua, cors, buffer, headers

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct SetMetadata {
    pub metadata: Vec<SetMetadataEntry>,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct SetMetadataEntry {
    pub metadata_namespace: String,
    pub value: serde_json::Value,
    #[serde(skip_serializing_if = "is_false")]
    pub allow_overwrite: bool,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct CorsPolicy {
    pub allow_origin_string_match: Vec<StringMatcher>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub allow_methods: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub allow_headers: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub expose_headers: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub max_age: String,
    pub allow_credentials: bool,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Buffer {
    pub max_request_bytes: u64,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct BufferPerRoute {
    #[serde(skip_serializing_if = "is_false")]
    pub disabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub buffer: Option<Buffer>,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct HeaderMutation {
    pub mutations: Mutations,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Mutations {
    pub request_mutations: Vec<HeaderMutationRule>,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct HeaderMutationRule {
    pub remove: String,
}

// ---------------------------------------------------------------- local_ratelimit

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct LocalRateLimit {
    pub stat_prefix: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_bucket: Option<TokenBucket>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filter_enabled: Option<RuntimeFractionalPercent>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filter_enforced: Option<RuntimeFractionalPercent>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub descriptors: Vec<LocalRateLimitDescriptor>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<RateLimit>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_dynamic_descriptors: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub always_consume_default_token_bucket: Option<bool>,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct TokenBucket {
    pub max_tokens: u32,
    pub tokens_per_fill: u32,
    pub fill_interval: String,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct LocalRateLimitDescriptor {
    pub entries: Vec<DescriptorEntry>,
    pub token_bucket: TokenBucket,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct DescriptorEntry {
    pub key: String,
    pub value: String,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct RateLimit {
    pub actions: Vec<RateLimitAction>,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub enum RateLimitAction {
    #[serde(rename = "generic_key")]
    GenericKey {
        descriptor_key: String,
        descriptor_value: String,
    },
    #[serde(rename = "remote_address")]
    RemoteAddress(Empty),
    #[serde(rename = "request_headers")]
    RequestHeaders {
        header_name: String,
        descriptor_key: String,
    },
    #[serde(rename = "header_value_match")]
    HeaderValueMatch {
        descriptor_key: String,
        descriptor_value: String,
        expect_match: bool,
        headers: Vec<HeaderMatcher>,
    },
    #[serde(rename = "metadata")]
    Metadata {
        descriptor_key: String,
        metadata_key: MetadataKey,
        source: &'static str,
    },
}

// ---------------------------------------------------------------- ratelimit (global)

/// `envoy.extensions.filters.http.ratelimit.v3.RateLimit`.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct GlobalRateLimitFilter {
    pub domain: String,
    pub failure_mode_deny: bool,
    pub timeout: String,
    pub rate_limit_service: RateLimitServiceConfig,
    pub stat_prefix: String,
}

/// `envoy.config.ratelimit.v3.RateLimitServiceConfig`.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct RateLimitServiceConfig {
    pub grpc_service: GrpcService,
    pub transport_api_version: &'static str,
}

/// `envoy.extensions.filters.http.ratelimit.v3.RateLimitPerRoute`: the descriptors of a route.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct RateLimitPerRoute {
    pub rate_limits: Vec<RateLimit>,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct MetadataKey {
    pub key: String,
    pub path: Vec<PathSegment>,
}

// ---------------------------------------------------------------- ext_proc

/// `envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor`.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct ExternalProcessor {
    pub grpc_service: GrpcService,
    pub failure_mode_allow: bool,
    /// The status a client gets when the processor fails and the filter fails closed.
    pub status_on_error: HttpStatus,
    pub processing_mode: ProcessingMode,
    pub message_timeout: String,
    pub request_attributes: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata_options: Option<ExtProcMetadataOptions>,
    /// The processor may change the processing mode for one exchange (in its answer to the
    /// headers): the sensor skips the response bodies no stage needs.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub allow_mode_override: bool,
    /// With a `STREAMED` request body: Envoy sends the body right behind the headers instead
    /// of waiting for the headers' answer (the sensor answers both once the body is checked).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub send_body_without_waiting_for_header_response: bool,
}

/// `envoy.type.v3.HttpStatus`.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct HttpStatus {
    pub code: u16,
}

/// `envoy.config.core.v3.GrpcService` through Envoy's own gRPC client.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct GrpcService {
    pub envoy_grpc: EnvoyGrpc,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct EnvoyGrpc {
    pub cluster_name: String,
}

/// Which parts of a message Envoy sends to the processor (`HeaderSendMode`, `BodySendMode`).
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct ProcessingMode {
    pub request_header_mode: &'static str,
    pub response_header_mode: &'static str,
    pub request_body_mode: &'static str,
    pub response_body_mode: &'static str,
    pub request_trailer_mode: &'static str,
    pub response_trailer_mode: &'static str,
}

/// Dynamic metadata namespaces forwarded to the processor.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct ExtProcMetadataOptions {
    pub forwarding_namespaces: MetadataNamespaces,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct MetadataNamespaces {
    pub untyped: Vec<String>,
}

/// `ExtProcPerRoute`: here only turning the processor off on a route.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct ExtProcPerRoute {
    pub disabled: bool,
}
