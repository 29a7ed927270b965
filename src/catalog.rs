//! The admission rule catalog (docs/rules.md): one entry per rule ID.
//!
//! Everything that names a rule — CEL messages in the CRD, findings from the rule engine, the
//! README and docs/rules.md tables, SARIF rule descriptors — takes the ID, name and severity
//! from here.

use serde::{Deserialize, Serialize};
use std::fmt;

/// How a finding of a rule is treated in `Enforce` mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The object is refused (in `Enforce` mode).
    Deny,
    /// The object is admitted with a warning.
    Warn,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Deny => "deny",
            Severity::Warn => "warn",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

macro_rules! catalog {
    ($( $variant:ident => $id:literal, $name:literal, $sev:ident, $summary:literal; )*) => {
        /// A rule of the catalog, named by its stable ID.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum RuleId { $( $variant, )* }

        impl RuleId {
            /// Every rule, in ID order.
            pub const ALL: &'static [RuleId] = &[ $( RuleId::$variant, )* ];

            /// The stable ID, e.g. `APG001`.
            pub fn id(self) -> &'static str { match self { $( RuleId::$variant => $id, )* } }
            /// The short kebab-case name, e.g. `cors-wildcard-origin`.
            pub fn name(self) -> &'static str { match self { $( RuleId::$variant => $name, )* } }
            /// The severity of the rule's findings.
            pub fn severity(self) -> Severity { match self { $( RuleId::$variant => Severity::$sev, )* } }
            /// One sentence: what the rule catches.
            pub fn summary(self) -> &'static str { match self { $( RuleId::$variant => $summary, )* } }
        }
    };
}

catalog! {
    Apg001 => "APG001", "cors-wildcard-origin", Deny,
        "CORS that allows any origin: a policy `allowOrigins: [\"*\"]` or match-all regex, ingress-nginx `enable-cors` without a specific `cors-allow-origin`, an Envoy Gateway SecurityPolicy, Istio corsPolicy or Gateway API HTTPRoute `CORS` filter allowing `*`, or a container env var such as `CORS_ALLOWED_ORIGINS=*`";
    Apg002 => "APG002", "cors-credentials-broad-origin", Deny,
        "CORS credentials allowed together with a wildcard, `null` or non-loopback `http://` origin";
    Apg003 => "APG003", "unauthenticated-route", Deny,
        "An Ingress, HTTPRoute or GRPCRoute rule whose backend has no authentication in front of it (ingress-nginx auth annotations, an Envoy Gateway SecurityPolicy that applies to that rule, required client certificates), or a Public/Partner policy with `authentication.required: false` whose rules are not all `public: true`";
    Apg004 => "APG004", "gateway-bypass", Deny,
        "An Ingress/HTTPRoute/GRPCRoute backend (Service or ServiceImport) or a LoadBalancer/NodePort Service that reaches a policy's target directly instead of its gateway Service";
    Apg005 => "APG005", "plaintext-listener", Deny,
        "An Ingress host without TLS (`spec.tls` or GKE managed/pre-shared certificates), ingress-nginx `ssl-redirect: \"false\"`, a GKE Ingress that also serves port 80 without a redirect, a Gateway listener with `protocol: HTTP`, an Istio Gateway HTTP/HTTP2/GRPC server without `tls.httpsRedirect: true`, or a Public/Partner policy without TLS";
    Apg006 => "APG006", "weak-tls", Deny,
        "Minimum TLS version below 1.2 (policy, ClientTrafficPolicy, Istio Gateway `tls.minProtocolVersion`, the ingress-nginx controller ConfigMap's `ssl-protocols` or the `proxy-ssl-protocols` annotation)";
    Apg007 => "APG007", "insecure-jwt-provider", Deny,
        "A JWT issuer or JWKS URI that is not `https://` in a policy, Istio RequestAuthentication or Envoy Gateway SecurityPolicy (outside the policy a non-URL issuer is allowed), or an Envoy Gateway OIDC issuer, authorization or token endpoint that is not `https://` (a policy provider without audiences is a warning)";
    Apg008 => "APG008", "sensitive-flow-without-rate-limit", Warn,
        "A Public/Partner policy with a login, token, signup, password, checkout, payment or transfer route and no rate limit covering it";
    Apg009 => "APG009", "default-allow", Deny,
        "`authorization.defaultAction: Allow` on Public/Partner exposure";
    Apg010 => "APG010", "exposure-mismatch", Deny,
        "An Internal/Private policy with `hosts`, or an Ingress/HTTPRoute/LoadBalancer reaching the gateway of an Internal/Private API";
    Apg011 => "APG011", "dangerous-ingress-snippet", Deny,
        "ingress-nginx `configuration-snippet`, `server-snippet`, `auth-snippet`, `stream-snippet` or `modsecurity-snippet` annotations";
    Apg012 => "APG012", "missing-network-isolation", Warn,
        "`network.isolation: None` on Public/Partner exposure";
    Apg013 => "APG013", "unbounded-request-body", Warn,
        "A Public/Partner policy without `requestValidation.maxBodyBytes`, or above 10 MiB";
    Apg014 => "APG014", "invalid-policy", Deny,
        "Semantic errors the schema cannot express: duplicate names, bad path templates, `ownership.pathParam` not in the path, a rate limit of 0, unknown provider references, a claim forwarded into a reserved header; in every reviewed kind, a field the rules read that has the wrong type";
}

impl fmt::Display for RuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

impl std::str::FromStr for RuleId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RuleId::ALL
            .iter()
            .copied()
            .find(|r| r.id().eq_ignore_ascii_case(s.trim()) || r.name() == s.trim())
            .ok_or_else(|| format!("unknown rule {s:?}: expected one of APG001..APG014"))
    }
}

/// The catalog as a Markdown table, the source of the README's rule table (a test keeps the
/// README in step with this function).
pub fn markdown_table() -> String {
    let mut out = String::from("| ID | name | severity | what it catches |\n|---|---|---|---|\n");
    for rule in RuleId::ALL {
        out.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            rule.id(),
            rule.name(),
            rule.severity(),
            rule.summary()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_sequential_and_parse_back() {
        for (i, rule) in RuleId::ALL.iter().enumerate() {
            assert_eq!(rule.id(), format!("APG{:03}", i + 1));
            assert_eq!(rule.id().parse::<RuleId>(), Ok(*rule));
            assert_eq!(rule.name().parse::<RuleId>(), Ok(*rule));
        }
        assert!("APG999".parse::<RuleId>().is_err());
    }
}
