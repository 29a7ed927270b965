//! The per-route `local_ratelimit` config of the policy's rate limits.

use super::paths::{method_matcher, path_regex, paths_may_overlap};
use super::types::*;
use super::{Ctx, JWT_FILTER};
use crate::api::{AuthorizationRule, RateLimit as PolicyRateLimit};
use crate::render::{CLIENT_ID_HEADER, RenderError};

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
pub(super) fn rate_limit_config(
    ctx: &Ctx<'_>,
    rule: &AuthorizationRule,
    path: &str,
) -> Result<Option<LocalRateLimit>, RenderError> {
    let mut descriptors = Vec::new();
    let mut rate_limits = Vec::new();
    for (j, rl) in ctx.spec.rate_limits.iter().enumerate() {
        if let Some((descriptor, rate_limit)) = descriptor(ctx, j, rl, rule, path)? {
            descriptors.push(descriptor);
            rate_limits.push(rate_limit);
        }
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

/// The descriptor (and the actions that fill it) of the policy rate limit `j` on a route of
/// `rule` at `path`; `None` when the limit cannot apply to the route.
fn descriptor(
    ctx: &Ctx<'_>,
    j: usize,
    rl: &PolicyRateLimit,
    rule: &AuthorizationRule,
    path: &str,
) -> Result<Option<(LocalRateLimitDescriptor, RateLimit)>, RenderError> {
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
            return Ok(None);
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
            return Ok(None);
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
    let key_entry = client_key(ctx, &field, rl, &mut actions)?;
    entries.push(DescriptorEntry {
        key: key_entry.into(),
        value: String::new(),
    });
    let period = rl.limit.per.seconds();
    Ok(Some((
        LocalRateLimitDescriptor {
            entries,
            token_bucket: TokenBucket {
                max_tokens: rl.limit.requests,
                tokens_per_fill: rl.limit.requests,
                fill_interval: format!("{period}s"),
            },
        },
        RateLimit { actions },
    )))
}

/// The action that keys the limit per client (`by`); returns the descriptor entry's key.
fn client_key(
    ctx: &Ctx<'_>,
    field: &str,
    rl: &PolicyRateLimit,
    actions: &mut Vec<RateLimitAction>,
) -> Result<&'static str, RenderError> {
    let by = rl.by.clone().unwrap_or_default();
    let key = if let Some(claim) = &by.claim {
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
    Ok(key)
}
