//! `ApiSecurityPolicy` (`apiguard.dev/v1alpha1`): one API's security, declared.
//!
//! Doc comments on every field become the CRD's descriptions (`kubectl explain asp.spec...`).
//! Invariants that need no cluster state are attached as CEL rules from [`super::invariants`].

// kube's `KubeSchema` derive copies each struct into a private module to build its schema;
// `unreachable_pub` reports those copies at the originals, which are exported (`crate::api`).
#![allow(unreachable_pub)]

use super::invariants as inv;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Pattern of a duration field: one or more `<number><unit>` with unit `ms`, `s`, `m` or `h`.
pub(crate) const DURATION_PATTERN: &str = r"^([0-9]+(ms|s|m|h))+$";

/// The desired security of one API: how it is exposed, who may call which route, and the
/// gateway, certificates and network rules apiguard derives from that.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "apiguard.dev",
    version = "v1alpha1",
    kind = "ApiSecurityPolicy",
    plural = "apisecuritypolicies",
    singular = "apisecuritypolicy",
    shortname = "asp",
    category = "apiguard",
    namespaced,
    cel,
    status = "ApiSecurityPolicyStatus",
    derive = "PartialEq",
    doc = "ApiSecurityPolicy declares the security of one API: authentication, authorization, CORS, rate limits, request validation, east-west mTLS and network isolation. apiguard compiles it into an Envoy gateway, certificates and NetworkPolicies.",
    printcolumn = r#"{"name":"Exposure","type":"string","jsonPath":".spec.exposure","description":"Who may reach the API"}"#,
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mode","description":"Enforce or Audit"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status","description":"Whether the gateway, certificates and network rules are in place"}"#,
    printcolumn = r#"{"name":"Blocks","type":"integer","jsonPath":".status.runtime.activeBlocks","description":"Clients the gateway's detectors block now","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(
    validation = inv::HOSTS_ONLY_WHEN_EXPOSED.to_rule(),
    validation = inv::UNAUTHENTICATED_ONLY_PUBLIC_RULES.to_rule(),
    validation = inv::AUTHENTICATION_METHOD.to_rule(),
    validation = inv::DEFAULT_DENY_WHEN_EXPOSED.to_rule(),
    validation = inv::TLS_WHEN_EXPOSED.to_rule(),
    validation = inv::UNIQUE_RATE_LIMIT_NAMES.to_rule(),
    validation = inv::PROVIDER_REFERENCES.to_rule()
)]
#[serde(rename_all = "camelCase")]
pub struct ApiSecurityPolicySpec {
    /// The Service (in the policy's namespace) that implements the API. Its pods receive
    /// traffic only through the gateway apiguard generates.
    pub target: Target,
    /// Who may reach the API. Public and Partner APIs are served on `hosts` through the
    /// gateway; Internal APIs only inside the cluster; Private APIs only from `eastWest.allowedCallers`.
    pub exposure: Exposure,
    /// Host names the gateway serves (Public and Partner exposure only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(max = 253)))]
    pub hosts: Vec<String>,
    /// Enforce denies what the policy forbids; Audit lets every request through and records
    /// in the gateway's access log what would have been denied (for a safe rollout).
    #[serde(default)]
    pub mode: PolicyMode,
    /// TLS served by the gateway to clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    /// How callers prove who they are: JWTs, API keys and/or client certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<Authentication>,
    /// Which authenticated callers may use which routes. Rules are evaluated in order; the
    /// first rule whose match fits the request decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization: Option<Authorization>,
    /// Cross-origin resource sharing for browser clients. Absent: no CORS headers are sent and
    /// browsers refuse cross-origin calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<Cors>,
    /// Request rate limits, each counted per client (claim, IP, API key or header value).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub rate_limits: Vec<RateLimit>,
    /// Limits on what a request may carry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_validation: Option<RequestValidation>,
    /// Mutual TLS between the gateway, the API and its in-cluster callers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub east_west: Option<EastWest>,
    /// NetworkPolicies generated around the API's pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<Network>,
    /// Access logging by the gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<Audit>,
    /// The API's OpenAPI contract, enforced at the gateway by the runtime sensor: request
    /// shapes (path and query parameters, required headers, content type, JSON bodies, mass
    /// assignment) and response redaction (excessive data exposure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub openapi: Option<OpenApi>,
    /// Learning the endpoints really called (on by default): the gateway streams its access
    /// log to the sensor sidecar, which keeps an inventory (method, path template, counts,
    /// status classes, declared or shadow) served on its admin port at `/inventory`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery: Option<Discovery>,
    /// Runtime detection and response: detectors counting abusive patterns per client (failed
    /// logins, enumeration of object ids) that alert or block, and a per-endpoint traffic
    /// baseline that alerts on sustained deviations. Run by the gateway's sensor sidecar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<Runtime>,
}

/// The Service that implements the API.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    /// Name of the Service, in the policy's namespace.
    #[schemars(length(min = 1, max = 63))]
    pub service: String,
    /// The Service port the API listens on: its number or its name.
    pub port: IntOrString,
}

/// Who may reach the API.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Exposure {
    /// Reachable from the internet on `hosts`.
    Public,
    /// Reachable on `hosts` by known partners (typically with client certificates or API keys).
    Partner,
    /// Reachable only from inside the cluster.
    Internal,
    /// Reachable only from the callers listed in `eastWest.allowedCallers`.
    Private,
}

impl Exposure {
    /// Public and Partner APIs are served to the outside world through the gateway.
    pub(crate) fn is_external(self) -> bool {
        matches!(self, Exposure::Public | Exposure::Partner)
    }
}

/// Whether the gateway enforces the policy or only records would-be denials.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PolicyMode {
    /// Requests the policy forbids are denied.
    #[default]
    Enforce,
    /// Every request is let through; would-be denials are recorded in the access log.
    Audit,
}

/// TLS served to clients by the gateway.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(validation = inv::TLS_MIN_VERSION.to_rule())]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// Terminate (default): the gateway serves TLS. Disabled: the gateway serves plaintext
    /// HTTP, allowed only for Internal and Private exposure (e.g. behind another TLS terminator).
    #[serde(default)]
    pub mode: TlsMode,
    /// Lowest TLS version the gateway accepts. TLSv1_2 by default; TLSv1_0 and TLSv1_1 are
    /// rejected (APG006).
    #[serde(default)]
    pub min_version: TlsVersion,
    /// A `kubernetes.io/tls` Secret in the policy's namespace with the gateway's serving
    /// certificate. Absent: the operator's CA issues one for `hosts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_secret_ref: Option<LocalObjectReference>,
    /// Whether clients must present a certificate: None (default), Optional or Required
    /// (partner mTLS; the accepted identities are `authentication.mtls.allowedClients`).
    #[serde(default)]
    pub client_certificate: ClientCertificate,
}

impl TlsSpec {
    pub(crate) fn is_disabled(&self) -> bool {
        self.mode == TlsMode::Disabled
    }
}

/// Whether the gateway terminates TLS.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TlsMode {
    /// The gateway serves TLS (default).
    #[default]
    Terminate,
    /// The gateway serves plaintext HTTP (Internal and Private exposure only).
    Disabled,
}

/// A TLS protocol version.
#[derive(
    JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default,
)]
pub enum TlsVersion {
    /// TLS 1.0 (insecure; rejected).
    #[serde(rename = "TLSv1_0")]
    Tls10,
    /// TLS 1.1 (insecure; rejected).
    #[serde(rename = "TLSv1_1")]
    Tls11,
    /// TLS 1.2.
    #[default]
    #[serde(rename = "TLSv1_2")]
    Tls12,
    /// TLS 1.3.
    #[serde(rename = "TLSv1_3")]
    Tls13,
}

/// Whether the gateway asks clients for a certificate.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ClientCertificate {
    /// No client certificate is requested.
    #[default]
    None,
    /// A client certificate is verified when presented.
    Optional,
    /// Every client must present a valid certificate.
    Required,
}

/// A reference to an object by name in the policy's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct LocalObjectReference {
    /// Name of the object.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// A key of a Secret in the policy's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SecretKeyReference {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the Secret's data.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// How callers authenticate.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Authentication {
    /// Whether routes require an authenticated caller (default true). May be false only when
    /// every authorization rule is `public: true` (APG003).
    #[serde(default = "default_true")]
    pub required: bool,
    /// JSON Web Token validation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtAuthentication>,
    /// API keys sent in a request header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_keys: Option<ApiKeyAuthentication>,
    /// Client certificates (requires `tls.clientCertificate` Optional or Required for north-south
    /// traffic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<MtlsAuthentication>,
}

impl Default for Authentication {
    fn default() -> Self {
        Self {
            required: true,
            jwt: None,
            api_keys: None,
            mtls: None,
        }
    }
}

fn default_true() -> bool {
    true
}

/// JWT validation: a token is accepted if one of the providers validates it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = inv::UNIQUE_PROVIDER_NAMES.to_rule())]
#[serde(rename_all = "camelCase")]
pub struct JwtAuthentication {
    /// Token issuers the gateway trusts.
    #[schemars(length(min = 1, max = 8))]
    pub providers: Vec<JwtProvider>,
}

/// One trusted token issuer.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = inv::JWT_ISSUER_HTTPS.to_rule())]
#[serde(rename_all = "camelCase")]
pub struct JwtProvider {
    /// Name of the provider, referenced by `authorization.rules[].providers`.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// The exact `iss` claim of accepted tokens; must be an https:// URL (APG007).
    #[schemars(length(min = 1, max = 2048))]
    pub issuer: String,
    /// Accepted `aud` values; a token must carry at least one. Empty accepts any audience (a warning:
    /// tokens minted for other APIs would be accepted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(max = 512)))]
    pub audiences: Vec<String>,
    /// Where the provider's signing keys come from.
    pub jwks: Jwks,
    /// Tolerated clock difference for `exp` and `nbf` (e.g. `30s`; default 60s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub clock_skew: Option<String>,
    /// Longest accepted token lifetime (`exp - iat`, e.g. `1h`); longer-lived tokens are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub max_lifetime: Option<String>,
    /// Claims copied into request headers for the upstream. Copies of these headers sent by
    /// the client are removed first, so the upstream can trust them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub forward_claims: Vec<ForwardClaim>,
}

/// The source of a provider's JSON Web Key Set: exactly one of uri, inline, secretRef.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(validation = inv::JWKS_URI_HTTPS.to_rule(), validation = inv::JWKS_ONE_SOURCE.to_rule())]
#[serde(rename_all = "camelCase")]
pub struct Jwks {
    /// An https:// URL serving the JWKS (APG007).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub uri: Option<String>,
    /// How long fetched keys are cached (e.g. `5m`; default 5m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub cache_duration: Option<String>,
    /// The JWKS document itself, as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 65536))]
    pub inline: Option<String>,
    /// A Secret key holding the JWKS document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyReference>,
}

/// A claim forwarded to the upstream in a header.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[x_kube(validation = inv::FORWARD_CLAIM_HEADER.to_rule())]
#[serde(rename_all = "camelCase")]
pub struct ForwardClaim {
    /// The claim name (top-level claim of the token payload).
    #[schemars(length(min = 1, max = 128))]
    pub claim: String,
    /// The request header that carries it to the upstream; not a reserved header (APG014).
    #[schemars(length(min = 1, max = 64), pattern(r"^[A-Za-z0-9-]+$"))]
    pub header: String,
}

/// API keys: the header carries a key; the Secret maps client IDs to keys.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyAuthentication {
    /// Secret whose data maps each client ID to its key.
    pub secret_ref: LocalObjectReference,
    /// Request header that carries the key (default `x-api-key`).
    #[serde(default = "default_api_key_header")]
    #[schemars(length(min = 1, max = 128), pattern(r"^[A-Za-z0-9-]+$"))]
    pub header: String,
}

fn default_api_key_header() -> String {
    "x-api-key".to_string()
}

/// Client certificate identities accepted by the gateway.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MtlsAuthentication {
    /// URI SANs (usually SPIFFE IDs such as `spiffe://cluster.local/ns/shop/sa/frontend`) of
    /// accepted client certificates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 2048)))]
    pub allowed_clients: Vec<String>,
}

/// Route-level authorization.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = inv::UNIQUE_RULE_NAMES.to_rule())]
#[serde(rename_all = "camelCase")]
pub struct Authorization {
    /// What happens to a request no rule matches: Deny (default) or Allow. Allow on Public or
    /// Partner exposure is rejected (APG009).
    #[serde(default)]
    pub default_action: DefaultAction,
    /// Ordered rules; the first rule whose match fits the request decides.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub rules: Vec<AuthorizationRule>,
}

/// The action for requests no rule matches.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DefaultAction {
    /// Deny requests no rule matches (default).
    #[default]
    Deny,
    /// Allow requests no rule matches (authenticated callers only).
    Allow,
}

/// One authorization rule: which requests it matches and who may make them.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = inv::OWNERSHIP_PARAM_IN_PATHS.to_rule(),
    validation = inv::RULE_PUBLIC_OR_ALLOW.to_rule()
)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationRule {
    /// Name of the rule; unique within the policy. Appears in access logs and denials.
    #[schemars(length(min = 1, max = 63), pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
    /// The requests this rule applies to.
    #[serde(rename = "match")]
    pub route: RouteMatch,
    /// Conditions an authenticated caller must meet; all listed conditions are required.
    /// Absent: any authenticated caller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow: Option<Allow>,
    /// Object-level authorization (against BOLA): the caller may only reach objects whose
    /// path parameter equals one of its own claims, e.g. `/users/{userId}/orders` only with
    /// `sub == userId`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ownership: Option<Ownership>,
    /// JWT providers accepted on this route (names from `authentication.jwt.providers`).
    /// Absent: any configured provider.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 4), inner(length(max = 63)))]
    pub providers: Vec<String>,
    /// The route is deliberately reachable without authentication. Always explicit.
    #[serde(default, skip_serializing_if = "is_false")]
    pub public: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Which requests a rule or rate limit applies to.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[x_kube(validation = inv::PATH_TEMPLATES.to_rule())]
#[serde(rename_all = "camelCase")]
pub struct RouteMatch {
    /// HTTP methods (upper case); empty matches every method.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 9), inner(length(max = 16), pattern(r"^[A-Z]+$")))]
    pub methods: Vec<String>,
    /// Paths: exact (`/orders`), prefix (`/orders/*`) or templates with one-segment
    /// parameters (`/users/{userId}/orders`). Empty matches every path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(max = 256)))]
    pub paths: Vec<String>,
}

/// Conditions on the authenticated caller. Every non-empty list must be satisfied.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Allow {
    /// OAuth scopes the token must all carry (in its space-delimited `scope` or `scp` claim).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(max = 256)))]
    pub scopes: Vec<String>,
    /// Claims the token must carry; for each, any listed value matches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub claims: Vec<ClaimMatch>,
    /// API-key client IDs (keys of the API key Secret) allowed on this route.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 253)))]
    pub api_key_clients: Vec<String>,
    /// Source address ranges (CIDR) the request must come from.
    #[serde(default, rename = "sourceCIDRs", skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 64)))]
    pub source_cidrs: Vec<String>,
}

/// A required claim value.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ClaimMatch {
    /// Claim name (top-level claim of the token payload).
    #[schemars(length(min = 1, max = 128))]
    pub name: String,
    /// Accepted values; any one matches.
    #[schemars(length(min = 1, max = 32), inner(length(max = 256)))]
    pub values: Vec<String>,
}

/// An object-level ownership check.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Ownership {
    /// The path parameter naming the object's owner, e.g. `userId` for `/users/{userId}/orders`.
    /// It must appear as `{userId}` in every path of the rule.
    #[schemars(length(min = 1, max = 32), pattern(r"^[A-Za-z_][A-Za-z0-9_]*$"))]
    pub path_param: String,
    /// The token claim that must equal the path parameter, e.g. `sub`.
    #[schemars(length(min = 1, max = 128))]
    pub claim: String,
}

/// Cross-origin resource sharing.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[x_kube(
    validation = inv::CORS_NO_WILDCARD.to_rule(),
    validation = inv::CORS_CREDENTIALS_ORIGINS.to_rule()
)]
#[serde(rename_all = "camelCase")]
pub struct Cors {
    /// Origins allowed to call the API from a browser: exact (`https://shop.example`) or a
    /// subdomain pattern (`https://*.shop.example`). A bare `*` is rejected (APG001).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(max = 256)))]
    pub allow_origins: Vec<String>,
    /// Methods allowed in cross-origin requests.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(max = 32)))]
    pub allow_methods: Vec<String>,
    /// Request headers allowed in cross-origin requests.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 128)))]
    pub allow_headers: Vec<String>,
    /// Response headers exposed to the browser.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 128)))]
    pub expose_headers: Vec<String>,
    /// Whether browsers may send cookies and credentials. With credentials, origins must be
    /// https:// (or loopback) and never `null` (APG002).
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_credentials: bool,
    /// How long browsers may cache a preflight answer (e.g. `10m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub max_age: Option<String>,
}

/// A rate limit.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Name of the limit; unique within the policy.
    #[schemars(length(min = 1, max = 63), pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
    /// The requests counted. Absent: every route.
    #[serde(rename = "match", default, skip_serializing_if = "Option::is_none")]
    pub route: Option<RouteMatch>,
    /// How many requests per period.
    pub limit: Limit,
    /// What a separate bucket is kept for. Absent: the client IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<RateLimitKey>,
    /// Where the count is kept. `Replica` (default): each gateway replica counts on its own, so
    /// with N replicas a client may get up to N times the limit. `Global`: every replica counts
    /// into one counter in Redis, exact across replicas; needs the operator's `--redis-url`
    /// (without it the policy is not programmed: condition reason
    /// `GlobalRateLimitWithoutRedis`). Redis unreachable: the limit fails open, counted.
    #[serde(default, skip_serializing_if = "RateLimitScope::is_replica")]
    pub scope: RateLimitScope,
}

/// Where a rate limit's count is kept.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RateLimitScope {
    /// Each gateway replica counts on its own (Envoy's local rate limit).
    #[default]
    Replica,
    /// One count across every gateway replica, in Redis (the sensor's rate limit service).
    Global,
}

impl RateLimitScope {
    fn is_replica(&self) -> bool {
        *self == RateLimitScope::Replica
    }
}

/// Requests per period.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[x_kube(validation = inv::RATE_LIMIT_POSITIVE.to_rule())]
pub struct Limit {
    /// Requests allowed per period; greater than 0 (APG014).
    pub requests: u32,
    /// The period: Second, Minute or Hour.
    pub per: RatePeriod,
}

/// A rate limit period.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RatePeriod {
    /// One second.
    Second,
    /// One minute.
    Minute,
    /// One hour.
    Hour,
}

impl RatePeriod {
    pub fn seconds(self) -> u64 {
        match self {
            RatePeriod::Second => 1,
            RatePeriod::Minute => 60,
            RatePeriod::Hour => 3600,
        }
    }
}

/// What a rate-limit bucket is kept for: exactly one of the fields.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[x_kube(validation = inv::RATE_LIMIT_ONE_KEY.to_rule())]
#[serde(rename_all = "camelCase")]
pub struct RateLimitKey {
    /// A bucket per value of this token claim (e.g. `sub`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub claim: Option<String>,
    /// A bucket per client IP address (`clientIP: {}`).
    #[serde(default, rename = "clientIP", skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<Empty>,
    /// A bucket per API-key client (`apiKey: {}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<Empty>,
    /// A bucket per value of this request header (e.g. `x-tenant`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub header: Option<String>,
}

/// An empty object used as a flag (`{}`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct Empty {}

/// Limits on requests.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RequestValidation {
    /// Largest request body in bytes; larger requests get 413. Unset on Public/Partner is a
    /// warning (APG013).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_body_bytes: Option<u64>,
    /// Accepted request `Content-Type`s for requests with a body; others get 415.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(max = 128)))]
    pub allowed_content_types: Vec<String>,
    /// Serve only the routes named in `authorization.rules` (default true); others get 404.
    #[serde(default = "default_true")]
    pub reject_undeclared_routes: bool,
    /// What to do with request headers containing underscores (they can smuggle past
    /// header-based checks): Reject (default), Drop or Allow.
    #[serde(default)]
    pub headers_with_underscores: UnderscoreHeaders,
}

impl Default for RequestValidation {
    fn default() -> Self {
        Self {
            max_body_bytes: None,
            allowed_content_types: Vec::new(),
            reject_undeclared_routes: true,
            headers_with_underscores: UnderscoreHeaders::Reject,
        }
    }
}

/// Handling of headers with underscores in their names.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum UnderscoreHeaders {
    /// The request is refused with 400 (default).
    #[default]
    Reject,
    /// The header is removed.
    Drop,
    /// The header is passed through.
    Allow,
}

/// East-west (in-cluster) mutual TLS.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct EastWest {
    /// Strict (default): the gateway reaches the API over mTLS with operator-issued
    /// certificates. Permissive: certificates are issued, plaintext is tolerated. Disabled: no mTLS.
    #[serde(default)]
    pub mtls: EastWestMtls,
    /// In-cluster workloads (by service account) allowed to call the API directly.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub allowed_callers: Vec<Caller>,
}

/// East-west mTLS mode.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum EastWestMtls {
    /// mTLS is required (default).
    #[default]
    Strict,
    /// mTLS is offered; plaintext is accepted.
    Permissive,
    /// No east-west mTLS.
    Disabled,
}

/// An in-cluster caller identified by its service account.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Caller {
    /// The caller's service account name.
    #[schemars(length(min = 1, max = 253))]
    pub service_account: String,
    /// The caller's namespace (default: the policy's namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub namespace: Option<String>,
}

/// Network isolation of the API's pods.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Network {
    /// Strict (default): NetworkPolicies admit ingress only from the gateway and
    /// `eastWest.allowedCallers`. None: no ingress restriction (warning for Public/Partner, APG012).
    #[serde(default)]
    pub isolation: Isolation,
    /// Deny egress to cloud metadata endpoints (169.254.169.254/32, fd00:ec2::254/128) as an
    /// SSRF guard (default true).
    #[serde(default = "default_true")]
    pub deny_metadata_egress: bool,
    /// When non-empty, egress is denied except DNS and these CIDRs.
    #[serde(
        default,
        rename = "egressAllowCIDRs",
        skip_serializing_if = "Vec::is_empty"
    )]
    #[schemars(length(max = 64), inner(length(max = 64)))]
    pub egress_allow_cidrs: Vec<String>,
}

impl Default for Network {
    fn default() -> Self {
        Self {
            isolation: Isolation::Strict,
            deny_metadata_egress: true,
            egress_allow_cidrs: Vec::new(),
        }
    }
}

/// Ingress isolation.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Isolation {
    /// Only the gateway and allowed callers reach the API's pods (default).
    #[default]
    Strict,
    /// No ingress restriction.
    None,
}

/// Gateway access logging.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Audit {
    /// Write a JSON access log line per request (default true).
    #[serde(default = "default_true")]
    pub access_log: bool,
    /// Token claims included in each log line (e.g. `sub`, `client_id`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(max = 128)))]
    pub include_claims: Vec<String>,
}

impl Default for Audit {
    fn default() -> Self {
        Self {
            access_log: true,
            include_claims: Vec::new(),
        }
    }
}

/// The OpenAPI contract of the API and how the gateway's sensor enforces it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct OpenApi {
    /// Where the OpenAPI 3.0.x or 3.1.x document (YAML or JSON, local `$ref`s only) comes from.
    pub source: OpenApiSource,
    /// Requests that break the contract: Enforce (default) refuses them with 400 (415 for the
    /// content type) and a problem+json body; Audit logs the would-be refusal and lets them
    /// through; Off does not check requests.
    #[serde(default)]
    pub requests: RequestContractMode,
    /// JSON responses: Redact removes `writeOnly` and undeclared properties before the client
    /// sees them; Audit (default) only logs and counts what Redact would remove; Off does not
    /// look at responses.
    #[serde(default)]
    pub responses: ResponseContractMode,
    /// Request properties an object schema does not declare (and that does not say
    /// `additionalProperties`): Reject (default; mass assignment) or Allow.
    #[serde(default)]
    pub unknown_properties: UnknownPropertiesMode,
    /// JSON responses larger than this many bytes pass unchecked (counted). Default 1048576.
    #[serde(default = "default_max_response_bytes")]
    #[schemars(range(min = 1, max = 67108864))]
    pub max_response_bytes: u64,
}

pub(crate) fn default_max_response_bytes() -> u64 {
    1_048_576
}

/// `spec.discovery`: what the sensor learns from the traffic it sees.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = inv::SENSITIVE_DATA_NEEDS_DISCOVERY.to_rule())]
pub struct Discovery {
    /// Learn endpoints from the gateway's access log stream (default true). Off the request
    /// path: no latency is added. false: the gateway streams nothing (and, without other
    /// runtime features, runs no sensor sidecar).
    #[serde(default = "default_discovery_enabled")]
    pub enabled: bool,
    /// Scan JSON response bodies for sensitive data (e-mail addresses, payment cards, IBANs,
    /// national IDs, phone numbers, JWTs, private keys, cloud access keys) and record, per
    /// endpoint, the classes and counts found, never the values. Off (default): no body is
    /// looked at. Sampled: one response in ten per endpoint is scanned. All: every one. Not Off:
    /// the gateway sends response bodies (up to spec.openapi.maxResponseBytes, default 1 MiB)
    /// to the sensor, which adds latency to responses; a sensor failure never blocks traffic
    /// for scanning alone. Needs enabled: true.
    #[serde(default)]
    pub sensitive_data: SensitiveDataMode,
}

impl Default for Discovery {
    fn default() -> Self {
        Discovery {
            enabled: true,
            sensitive_data: SensitiveDataMode::Off,
        }
    }
}

/// Which JSON response bodies the sensor scans for sensitive data.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SensitiveDataMode {
    /// Scan none (default): nothing is added to the response path.
    #[default]
    Off,
    /// Scan one response in ten of each endpoint (the 1st, 11th, 21st, ...).
    Sampled,
    /// Scan every JSON response.
    All,
}

fn default_discovery_enabled() -> bool {
    true
}

/// `spec.runtime`: abuse detection and response in the gateway's sensor.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = inv::UNIQUE_DETECTOR_NAMES.to_rule())]
pub struct Runtime {
    /// Detectors: each counts events (or distinct values of a path parameter) per key in a
    /// sliding window, and alerts or blocks the key when a threshold is crossed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub detectors: Vec<Detector>,
    /// A per-endpoint traffic baseline (requests per minute, learned): a sustained deviation
    /// raises an alert naming the endpoint. Alerts only, never blocks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<TrafficBaseline>,
}

/// One detector.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = inv::DISTINCT_PARAM_IN_PATHS.to_rule())]
#[x_kube(validation = inv::BLOCK_FOR_ONLY_WITH_BLOCK.to_rule())]
pub struct Detector {
    /// Name of the detector; unique within the policy. Names it in alerts, blocks and Events.
    #[schemars(length(min = 1, max = 63), pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
    /// The requests counted. Absent: every route.
    #[serde(rename = "match", default, skip_serializing_if = "Option::is_none")]
    pub route: Option<RouteMatch>,
    /// Which responses count. Absent: every response (including Envoy's own 401/403/429).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<DetectorWhen>,
    /// What a key is (as `rateLimits[].by`): exactly one of `clientIP: {}`, `claim`, `apiKey:
    /// {}`, `header`. Absent: the client IP. Claim, API-key and header values are shown hashed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<RateLimitKey>,
    /// When a key is detected.
    pub threshold: DetectorThreshold,
    /// Alert (default): report only. Block: also refuse the key's requests (403
    /// problem+json with `retry-after`) for `blockFor`.
    #[serde(default)]
    pub action: DetectorAction,
    /// How long a blocked key stays blocked (`Block` only; default 15m, at most 168h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DURATION_PATTERN))]
    pub block_for: Option<String>,
}

/// Which responses a detector counts.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DetectorWhen {
    /// Response status codes (e.g. 401, 403); empty: every response.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(range(min = 100, max = 599)))]
    pub statuses: Vec<u16>,
}

/// `count` events (or distinct values) within `window`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DetectorThreshold {
    /// Events (or distinct values, with `distinct`) that make a detection.
    #[schemars(range(min = 1, max = 1000000))]
    pub count: u32,
    /// The sliding window: 1s to 24h (e.g. 1m, 5m).
    #[schemars(pattern(DURATION_PATTERN))]
    pub window: String,
    /// Count distinct values of a path parameter instead of events (enumeration of object
    /// ids, BOLA): at most 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distinct: Option<DistinctValues>,
}

/// The values counted distinct.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DistinctValues {
    /// A `{param}` of every path of the detector's `match.paths`.
    #[schemars(length(min = 1, max = 64), pattern(r"^[A-Za-z_][A-Za-z0-9_]*$"))]
    pub path_param: String,
}

/// What a detection does.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DetectorAction {
    /// Report only (default).
    #[default]
    Alert,
    /// Report, and refuse the key's requests until `blockFor` ends.
    Block,
}

/// The per-endpoint traffic baseline.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TrafficBaseline {
    /// Learn and alert (default true when the baseline is given).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// How far from normal a sustained rate must be to alert: Low (fewest alerts), Medium
    /// (default), High (most alerts).
    #[serde(default)]
    pub sensitivity: BaselineSensitivity,
}

/// The baseline's sensitivity.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum BaselineSensitivity {
    /// Alert only on the largest deviations.
    Low,
    /// The default.
    #[default]
    Medium,
    /// Alert on smaller deviations.
    High,
}

/// Where the OpenAPI document comes from: exactly one of `configMapRef` and `inline`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = inv::OPENAPI_ONE_SOURCE.to_rule())]
pub struct OpenApiSource {
    /// A key of a ConfigMap in the policy's namespace holding the document. The ConfigMap is
    /// watched: editing it re-renders the gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_ref: Option<ConfigMapKeyReference>,
    /// The document itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1048576))]
    pub inline: Option<String>,
}

/// A key of a ConfigMap in the policy's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapKeyReference {
    /// The ConfigMap's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key holding the document.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// What the sensor does with a request that breaks the contract.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RequestContractMode {
    /// Refuse it (default).
    #[default]
    Enforce,
    /// Log the would-be refusal and let it through.
    Audit,
    /// Do not check requests.
    Off,
}

/// What the sensor does with a JSON response that carries more than the contract declares.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ResponseContractMode {
    /// Remove `writeOnly` and undeclared properties.
    Redact,
    /// Log and count what would be removed (default).
    #[default]
    Audit,
    /// Do not look at responses.
    Off,
}

/// Request properties that an object schema does not declare.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum UnknownPropertiesMode {
    /// Refuse them (default).
    #[default]
    Reject,
    /// Let them through.
    Allow,
}

/// Observed state of the policy, written by the controller.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ApiSecurityPolicyStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Accepted, Programmed, CertificatesReady, NetworkIsolated and Ready.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The generated gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewayStatus>,
    /// Certificates issued for this policy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<CertificateStatus>,
    /// What the gateway's sensors reported of the endpoints really called (written by the
    /// operator's discovery intake, not by the reconcile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery: Option<DiscoveryStatus>,
    /// What the gateway's detectors and traffic baseline reported (written by the operator's
    /// intake, not by the reconcile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<RuntimeStatus>,
}

/// `status.runtime`: the detections and anomalies the gateway replicas reported (each
/// announced once by an Event: `AbuseDetected`, `ClientBlocked`, `TrafficAnomaly`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeStatus {
    /// Blocks in force now: distinct detector and key across the gateway replicas, as of the
    /// last push.
    pub active_blocks: i64,
    /// Detections announced (one per detector and key while it lasts, however many replicas
    /// reported it).
    pub detections: i64,
    /// Traffic anomalies announced.
    #[serde(default)]
    pub anomalies: i64,
    /// When the latest announced detection fired (RFC 3339); absent before the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_detection_time: Option<String>,
    /// When a gateway replica last reported its detections (RFC 3339).
    pub last_report_time: String,
}

/// `status.discovery`: the endpoints the gateway replicas reported (see the PolicyReport
/// `apiguard-<policy>` for which).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DiscoveryStatus {
    /// Endpoints called (method + path template), declared or not.
    pub endpoints: i64,
    /// Of them, not declared by the policy's rules or OpenAPI document (shadow endpoints).
    pub undeclared: i64,
    /// Of them, with sensitive data seen in responses.
    pub sensitive: i64,
    /// Of them, declared deprecated and still called (zombie endpoints).
    #[serde(default)]
    pub zombie: i64,
    /// When a gateway replica last reported (RFC 3339).
    pub last_report_time: String,
}

/// The generated gateway.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct GatewayStatus {
    /// Name of the gateway Service clients (or the ingress) must use.
    pub service: String,
    /// Hash of the rendered gateway configuration; changes only when the configuration does.
    pub config_hash: String,
}

/// A certificate issued for the policy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CertificateStatus {
    /// The SPIFFE identity in the certificate's URI SAN.
    pub spiffe_id: String,
    /// The Secret holding the certificate.
    pub secret: String,
    /// Expiry time (RFC 3339).
    pub not_after: String,
}

impl ApiSecurityPolicySpec {
    pub fn tls(&self) -> TlsSpec {
        self.tls.clone().unwrap_or_default()
    }
    pub fn authentication(&self) -> Authentication {
        self.authentication.clone().unwrap_or_default()
    }
    pub fn request_validation(&self) -> RequestValidation {
        self.request_validation.clone().unwrap_or_default()
    }
    pub(crate) fn east_west(&self) -> EastWest {
        self.east_west.clone().unwrap_or_default()
    }
    pub fn network(&self) -> Network {
        self.network.clone().unwrap_or_default()
    }
    pub fn audit(&self) -> Audit {
        self.audit.clone().unwrap_or_default()
    }
    /// `spec.discovery` with its defaults (enabled, no inline scanning: `sensitiveData: Off`).
    pub fn discovery(&self) -> Discovery {
        self.discovery.clone().unwrap_or_default()
    }
    /// The indexes (in `spec.rateLimits`) of the `scope: Global` rate limits.
    pub fn global_rate_limits(&self) -> impl Iterator<Item = (usize, &RateLimit)> {
        self.rate_limits
            .iter()
            .enumerate()
            .filter(|(_, rl)| rl.scope == RateLimitScope::Global)
    }
    /// The authorization rules, in evaluation order.
    pub fn rules(&self) -> &[AuthorizationRule] {
        self.authorization
            .as_ref()
            .map(|a| a.rules.as_slice())
            .unwrap_or(&[])
    }
    pub(crate) fn default_action(&self) -> DefaultAction {
        self.authorization
            .as_ref()
            .map(|a| a.default_action)
            .unwrap_or_default()
    }
}
