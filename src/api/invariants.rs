//! Invariants of an `ApiSecurityPolicy` that need no cluster state.
//!
//! Each invariant is defined once here: its rule ID, its CEL expression (placed in the CRD as
//! `x-kubernetes-validations` on the schema node named by `scope`, so the apiserver enforces it
//! even when the webhook is down) and its message (what kubectl shows). The Rust check of the
//! same invariant lives in [`super::validate`] and reports the same message, so `apiguard lint`,
//! the webhook and the apiserver agree. A test evaluates both sides over the same fixtures.

use crate::catalog::RuleId;
use kube::core::Rule;

/// One invariant: its catalog rule, where it sits in the schema, its CEL rule and message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invariant {
    pub rule: RuleId,
    /// The schema node the CEL rule is attached to, as a field path (`spec.cors`).
    pub scope: &'static str,
    /// The CEL expression; `self` is the node at `scope`.
    pub cel: &'static str,
    /// The message, starting with the rule ID, naming the field and the fix.
    pub message: &'static str,
}

impl Invariant {
    /// The CRD validation rule for this invariant.
    pub(crate) fn to_rule(self) -> Rule {
        Rule::new(self.cel).message(self.message)
    }
}

/// The grammar of a route path: `/`, `/*`, or `/`-separated segments that are literals or
/// `{param}` templates, optionally ending in `/*` (prefix match). Used by the CEL rule and the
/// Rust check alike.
pub(crate) const PATH_TEMPLATE_PATTERN: &str =
    r"^(/|/\*|(/([A-Za-z0-9._~!$&'()+,;=:@%-]+|\{[A-Za-z_][A-Za-z0-9_]*\}))+(/\*)?)$";

/// Headers a forwarded claim must never overwrite: they carry routing, framing or identity
/// that the gateway or the upstream trusts.
pub(crate) const RESERVED_HEADERS: &[&str] = &[
    "authorization",
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "cookie",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-client-cert",
    "x-real-ip",
    "x-request-id",
    "x-api-key",
];

pub const CORS_NO_WILDCARD: Invariant = Invariant {
    rule: RuleId::Apg001,
    scope: "spec.cors",
    cel: "!has(self.allowOrigins) || self.allowOrigins.all(o, o != '*' && o != '.*' && o != 'https://*' && o != 'http://*')",
    message: "APG001: spec.cors.allowOrigins must not contain \"*\" (or a match-all origin); list the exact origins, e.g. https://app.example.com, or a subdomain pattern https://*.example.com",
};

pub const CORS_CREDENTIALS_ORIGINS: Invariant = Invariant {
    rule: RuleId::Apg002,
    scope: "spec.cors",
    cel: "!has(self.allowCredentials) || !self.allowCredentials || !has(self.allowOrigins) || self.allowOrigins.all(o, o != 'null' && (!o.startsWith('http://') || o.startsWith('http://localhost') || o.startsWith('http://127.0.0.1') || o.startsWith('http://[::1]')))",
    message: "APG002: spec.cors.allowCredentials is true, so spec.cors.allowOrigins must not contain \"null\" or non-loopback http:// origins; use https:// origins or set allowCredentials: false",
};

pub const HOSTS_ONLY_WHEN_EXPOSED: Invariant = Invariant {
    rule: RuleId::Apg010,
    scope: "spec",
    cel: "!has(self.hosts) || size(self.hosts) == 0 || self.exposure == 'Public' || self.exposure == 'Partner'",
    message: "APG010: spec.hosts must be empty unless spec.exposure is Public or Partner; remove the hosts or change the exposure",
};

pub const UNAUTHENTICATED_ONLY_PUBLIC_RULES: Invariant = Invariant {
    rule: RuleId::Apg003,
    scope: "spec",
    cel: "!has(self.authentication) || !has(self.authentication.required) || self.authentication.required || (has(self.authorization) && has(self.authorization.rules) && size(self.authorization.rules) > 0 && self.authorization.rules.all(r, has(r.public) && r.public))",
    message: "APG003: spec.authentication.required may be false only when every spec.authorization.rules[] entry has public: true; mark the unauthenticated routes public: true or configure jwt, apiKeys or mtls",
};

pub const AUTHENTICATION_METHOD: Invariant = Invariant {
    rule: RuleId::Apg003,
    scope: "spec",
    cel: "(has(self.authentication) && (has(self.authentication.jwt) || has(self.authentication.apiKeys) || has(self.authentication.mtls) || (has(self.authentication.required) && !self.authentication.required))) || (has(self.authorization) && has(self.authorization.rules) && size(self.authorization.rules) > 0 && self.authorization.rules.all(r, has(r.public) && r.public))",
    message: "APG003: spec.authentication needs at least one of jwt, apiKeys or mtls unless every spec.authorization.rules[] entry is public: true; configure an authentication method",
};

pub const DEFAULT_DENY_WHEN_EXPOSED: Invariant = Invariant {
    rule: RuleId::Apg009,
    scope: "spec",
    cel: "(self.exposure != 'Public' && self.exposure != 'Partner') || !has(self.authorization) || !has(self.authorization.defaultAction) || self.authorization.defaultAction != 'Allow'",
    message: "APG009: spec.authorization.defaultAction must be Deny for Public or Partner exposure; list the allowed routes in spec.authorization.rules instead",
};

pub const TLS_WHEN_EXPOSED: Invariant = Invariant {
    rule: RuleId::Apg005,
    scope: "spec",
    cel: "(self.exposure != 'Public' && self.exposure != 'Partner') || !has(self.tls) || !has(self.tls.mode) || self.tls.mode != 'Disabled'",
    message: "APG005: spec.tls.mode must not be Disabled for Public or Partner exposure; remove spec.tls.mode to terminate TLS at the gateway",
};

pub const TLS_MIN_VERSION: Invariant = Invariant {
    rule: RuleId::Apg006,
    scope: "spec.tls",
    cel: "!has(self.minVersion) || self.minVersion == 'TLSv1_2' || self.minVersion == 'TLSv1_3'",
    message: "APG006: spec.tls.minVersion must be TLSv1_2 or TLSv1_3 (TLS 1.0 and 1.1 are broken); set spec.tls.minVersion to TLSv1_2 or TLSv1_3",
};

pub const JWT_ISSUER_HTTPS: Invariant = Invariant {
    rule: RuleId::Apg007,
    scope: "spec.authentication.jwt.providers[]",
    cel: "self.issuer.startsWith('https://')",
    message: "APG007: spec.authentication.jwt.providers[].issuer must be an https:// URL (tokens from a plaintext issuer can be forged in transit); use the provider's https:// issuer URL",
};

pub const JWKS_URI_HTTPS: Invariant = Invariant {
    rule: RuleId::Apg007,
    scope: "spec.authentication.jwt.providers[].jwks",
    cel: "!has(self.uri) || self.uri.startsWith('https://')",
    message: "APG007: spec.authentication.jwt.providers[].jwks.uri must be an https:// URL (keys fetched over plaintext can be replaced by an attacker); serve the JWKS over https://, or use jwks.inline or jwks.secretRef",
};

pub const JWKS_ONE_SOURCE: Invariant = Invariant {
    rule: RuleId::Apg014,
    scope: "spec.authentication.jwt.providers[].jwks",
    cel: "(has(self.uri) ? 1 : 0) + (has(self.inline) ? 1 : 0) + (has(self.secretRef) ? 1 : 0) == 1",
    message: "APG014: spec.authentication.jwt.providers[].jwks must set exactly one of uri, inline or secretRef; keep one of them and remove the others",
};

pub const UNIQUE_PROVIDER_NAMES: Invariant = Invariant {
    rule: RuleId::Apg014,
    scope: "spec.authentication.jwt",
    cel: "self.providers.all(p, self.providers.exists_one(q, q.name == p.name))",
    message: "APG014: spec.authentication.jwt.providers[].name must be unique; rename the duplicate provider",
};

pub const FORWARD_CLAIM_HEADER: Invariant = Invariant {
    rule: RuleId::Apg014,
    scope: "spec.authentication.jwt.providers[].forwardClaims[]",
    cel: "!(self.header.lowerAscii() in ['authorization', 'host', 'content-length', 'content-type', 'transfer-encoding', 'connection', 'cookie', 'x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host', 'x-forwarded-client-cert', 'x-real-ip', 'x-request-id', 'x-api-key']) && !self.header.lowerAscii().startsWith('x-envoy-') && !self.header.startsWith(':')",
    message: "APG014: spec.authentication.jwt.providers[].forwardClaims[].header must not be a reserved header (authorization, host, cookie, x-forwarded-*, x-envoy-*, pseudo-headers, ...); pick an application header such as x-user-id",
};

pub const UNIQUE_RULE_NAMES: Invariant = Invariant {
    rule: RuleId::Apg014,
    scope: "spec.authorization",
    cel: "!has(self.rules) || self.rules.all(r, self.rules.exists_one(s, s.name == r.name))",
    message: "APG014: spec.authorization.rules[].name must be unique; rename the duplicate rule",
};

pub const PATH_TEMPLATES: Invariant = Invariant {
    rule: RuleId::Apg014,
    scope: "spec.authorization.rules[].match, spec.rateLimits[].match",
    cel: "!has(self.paths) || self.paths.all(p, p.matches('^(/|/\\\\*|(/([A-Za-z0-9._~!$&\\'()+,;=:@%-]+|\\\\{[A-Za-z_][A-Za-z0-9_]*\\\\}))+(/\\\\*)?)$'))",
    message: "APG014: match.paths[] (spec.authorization.rules[] and spec.rateLimits[]) must be an exact path, a prefix or a template with {param} segments; write it as /orders, /orders/* or /users/{userId}/orders",
};

pub const OWNERSHIP_PARAM_IN_PATHS: Invariant = Invariant {
    rule: RuleId::Apg014,
    scope: "spec.authorization.rules[]",
    cel: "!has(self.ownership) || (has(self.match.paths) && size(self.match.paths) > 0 && self.match.paths.all(p, p.contains('{' + self.ownership.pathParam + '}')))",
    message: "APG014: spec.authorization.rules[].ownership.pathParam must appear as {param} in every path of the rule's match.paths; add the template segment or fix the parameter name",
};

pub const RULE_PUBLIC_OR_ALLOW: Invariant = Invariant {
    rule: RuleId::Apg014,
    scope: "spec.authorization.rules[]",
    cel: "!has(self.public) || !self.public || (!has(self.allow) && !has(self.ownership))",
    message: "APG014: spec.authorization.rules[] must not set allow or ownership when public is true (a public route has no identity to check); split it into two rules",
};

pub const UNIQUE_RATE_LIMIT_NAMES: Invariant = Invariant {
    rule: RuleId::Apg014,
    scope: "spec",
    cel: "!has(self.rateLimits) || self.rateLimits.all(r, self.rateLimits.exists_one(s, s.name == r.name))",
    message: "APG014: spec.rateLimits[].name must be unique; rename the duplicate rate limit",
};

pub const RATE_LIMIT_POSITIVE: Invariant = Invariant {
    rule: RuleId::Apg014,
    scope: "spec.rateLimits[].limit",
    cel: "self.requests > 0",
    message: "APG014: spec.rateLimits[].limit.requests must be greater than 0; set limit.requests to at least 1 (to block a route, leave it out of spec.authorization.rules)",
};

pub const RATE_LIMIT_ONE_KEY: Invariant = Invariant {
    rule: RuleId::Apg014,
    scope: "spec.rateLimits[].by",
    cel: "(has(self.claim) ? 1 : 0) + (has(self.clientIP) ? 1 : 0) + (has(self.apiKey) ? 1 : 0) + (has(self.header) ? 1 : 0) == 1",
    message: "APG014: spec.rateLimits[].by must set exactly one of claim, clientIP, apiKey or header; keep one key and remove the others",
};

pub const PROVIDER_REFERENCES: Invariant = Invariant {
    rule: RuleId::Apg014,
    scope: "spec",
    cel: "!has(self.authorization) || !has(self.authorization.rules) || self.authorization.rules.all(r, !has(r.providers) || r.providers.all(p, has(self.authentication) && has(self.authentication.jwt) && self.authentication.jwt.providers.exists(q, q.name == p)))",
    message: "APG014: spec.authorization.rules[].providers[] must name a provider in spec.authentication.jwt.providers; fix the name or add the provider",
};

pub const OPENAPI_ONE_SOURCE: Invariant = Invariant {
    rule: RuleId::Apg014,
    scope: "spec.openapi.source",
    cel: "(has(self.configMapRef) ? 1 : 0) + (has(self.inline) && size(self.inline) > 0 ? 1 : 0) == 1",
    message: "APG014: spec.openapi.source must set exactly one of configMapRef or a non-empty inline document; keep one of them (a ConfigMap key, or the document inline)",
};

pub const SENSITIVE_DATA_NEEDS_DISCOVERY: Invariant = Invariant {
    rule: RuleId::Apg014,
    scope: "spec.discovery",
    cel: "!has(self.sensitiveData) || self.sensitiveData == 'Off' || !has(self.enabled) || self.enabled",
    message: "APG014: spec.discovery.sensitiveData must be Off when spec.discovery.enabled is false (the classes found are kept in the discovery inventory); set enabled: true, or sensitiveData: Off",
};

pub const UNIQUE_DETECTOR_NAMES: Invariant = Invariant {
    rule: RuleId::Apg014,
    scope: "spec.runtime",
    cel: "!has(self.detectors) || self.detectors.all(d, self.detectors.exists_one(e, e.name == d.name))",
    message: "APG014: spec.runtime.detectors[].name must be unique within the policy (it names the detector in alerts, blocks and Events); rename one of them",
};

pub const DISTINCT_PARAM_IN_PATHS: Invariant = Invariant {
    rule: RuleId::Apg014,
    scope: "spec.runtime.detectors[]",
    cel: "!has(self.threshold.distinct) || (has(self.match) && has(self.match.paths) && size(self.match.paths) > 0 && self.match.paths.all(p, p.contains('{' + self.threshold.distinct.pathParam + '}')))",
    message: "APG014: spec.runtime.detectors[].threshold.distinct.pathParam must appear as {param} in every path of the detector's match.paths; add the template segment (e.g. /users/{userId}/orders) or fix the parameter name",
};

pub const BLOCK_FOR_ONLY_WITH_BLOCK: Invariant = Invariant {
    rule: RuleId::Apg014,
    scope: "spec.runtime.detectors[]",
    cel: "!has(self.blockFor) || (has(self.action) && self.action == 'Block')",
    message: "APG014: spec.runtime.detectors[].blockFor is set but the action is not Block (an alert blocks nothing); set action: Block, or remove blockFor",
};

/// Every invariant, in the order the Rust validation reports them.
pub const ALL: &[Invariant] = &[
    CORS_NO_WILDCARD,
    CORS_CREDENTIALS_ORIGINS,
    HOSTS_ONLY_WHEN_EXPOSED,
    UNAUTHENTICATED_ONLY_PUBLIC_RULES,
    AUTHENTICATION_METHOD,
    DEFAULT_DENY_WHEN_EXPOSED,
    TLS_WHEN_EXPOSED,
    TLS_MIN_VERSION,
    JWT_ISSUER_HTTPS,
    JWKS_URI_HTTPS,
    JWKS_ONE_SOURCE,
    UNIQUE_PROVIDER_NAMES,
    FORWARD_CLAIM_HEADER,
    UNIQUE_RULE_NAMES,
    PATH_TEMPLATES,
    OWNERSHIP_PARAM_IN_PATHS,
    RULE_PUBLIC_OR_ALLOW,
    UNIQUE_RATE_LIMIT_NAMES,
    RATE_LIMIT_POSITIVE,
    RATE_LIMIT_ONE_KEY,
    PROVIDER_REFERENCES,
    OPENAPI_ONE_SOURCE,
    SENSITIVE_DATA_NEEDS_DISCOVERY,
    UNIQUE_DETECTOR_NAMES,
    DISTINCT_PARAM_IN_PATHS,
    BLOCK_FOR_ONLY_WITH_BLOCK,
];
