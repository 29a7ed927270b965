//! The per-route `rbac` filter config and the principals of authorization rules.

use super::paths::regex_escape;
use super::types::*;
use super::{Ctx, JWT_FILTER, RouteAuthn};
use crate::api::AuthorizationRule;
use crate::render::{CLIENT_ID_HEADER, RenderError};
use std::collections::BTreeMap;

pub(super) fn rbac_route(ctx: &Ctx<'_>, policies: BTreeMap<String, RbacPolicy>) -> Any {
    super::decision::rbac_per_route(ctx, policies, super::decision::AUDIT_SHADOW_PREFIX)
}

/// One `ALLOW` policy named `name`: any permission, for callers matching all of `principals`
/// (each one a policy principal: any of them).
pub(super) fn allow_policy(name: &str, principals: Vec<Principal>) -> BTreeMap<String, RbacPolicy> {
    let mut policies = BTreeMap::new();
    policies.insert(
        name.to_string(),
        RbacPolicy {
            permissions: vec![Permission { any: true }],
            principals,
            condition: None,
            cel_config: None,
        },
    );
    policies
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

pub(super) fn jwt_authenticated() -> Principal {
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

pub(super) fn rule_principal(
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

pub(super) fn rbac_route_enforced(policies: BTreeMap<String, RbacPolicy>) -> Any {
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
