//! The per-route rate limit config of the policy's rate limits: `local_ratelimit` for
//! `scope: Replica` (each replica counts alone), the `ratelimit` filter calling the sensor's
//! rate limit service for `scope: Global` (one count in Redis across replicas). Both key a
//! client the same way (`by`) and match the same requests; the global descriptors follow the
//! contract in `sensor::config` ([`GLOBAL_LIMIT_ENTRY`], [`CLIENT_ENTRY`]).

use super::paths::{method_matcher, path_regex, paths_may_overlap};
use super::types::*;
use super::{Ctx, JWT_FILTER};
use crate::api::{AuthorizationRule, RateLimit as PolicyRateLimit, RateLimitScope};
use crate::render::{CLIENT_ID_HEADER, RenderError};
use crate::sensor::config::GLOBAL_LIMIT_ENTRY;
use crate::sensor::config::{
    CLIENT_ENTRY, GlobalRateLimit, RATE_LIMIT_DOMAIN, REMOTE_ADDRESS_ENTRY, SENSOR_CLUSTER,
};

/// The `ratelimit` filter's name (global limits); `local_ratelimit`'s is `RATELIMIT_FILTER`.
pub(super) const GLOBAL_RATELIMIT_FILTER: &str = "envoy.filters.http.ratelimit";
/// How long Envoy waits for the sensor's rate limit answer before letting the request through.
const GLOBAL_RATELIMIT_TIMEOUT: &str = "0.100s";
/// The descriptor entry naming a local limit.
const LOCAL_LIMIT_ENTRY: &str = "limit";

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
    let local = ctx.spec.rate_limits.iter().enumerate();
    for (j, rl) in local.filter(|(_, rl)| rl.scope == RateLimitScope::Replica) {
        if let Some((actions, entries)) = actions(ctx, j, rl, rule, path, LOCAL_LIMIT_ENTRY)? {
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

/// The `ratelimit` filter's per-route config: one descriptor per `scope: Global` limit that
/// can apply to the route (`(apiguard_limit, NAME)`, the match entries, the client's value),
/// sent to the sensor. None when no global limit applies.
pub(super) fn global_rate_limit_config(
    ctx: &Ctx<'_>,
    rule: &AuthorizationRule,
    path: &str,
) -> Result<Option<RateLimitPerRoute>, RenderError> {
    let mut rate_limits = Vec::new();
    for (j, rl) in ctx.spec.global_rate_limits() {
        if let Some((actions, _)) = actions(ctx, j, rl, rule, path, GLOBAL_LIMIT_ENTRY)? {
            rate_limits.push(RateLimit { actions });
        }
    }
    Ok((!rate_limits.is_empty()).then_some(RateLimitPerRoute { rate_limits }))
}

/// The `ratelimit` filter (present when the policy has a `scope: Global` limit; the routes
/// say which descriptors to send): to the sensor's cluster, failing open (a sensor or Redis
/// failure never refuses traffic: the sensor counts its own failures).
pub(super) fn global_rate_limit_filter() -> GlobalRateLimitFilter {
    GlobalRateLimitFilter {
        domain: RATE_LIMIT_DOMAIN.into(),
        failure_mode_deny: false,
        timeout: GLOBAL_RATELIMIT_TIMEOUT.into(),
        rate_limit_service: RateLimitServiceConfig {
            grpc_service: GrpcService {
                envoy_grpc: EnvoyGrpc {
                    cluster_name: SENSOR_CLUSTER.into(),
                },
            },
            transport_api_version: "V3",
        },
        stat_prefix: "apiguard_global".into(),
    }
}

/// The `globalRateLimits` section of `sensor.yaml`: the numbers of every `scope: Global` limit.
pub(super) fn sensor_global_limits(ctx: &Ctx<'_>) -> Vec<GlobalRateLimit> {
    ctx.spec
        .global_rate_limits()
        .map(|(_, rl)| GlobalRateLimit {
            name: rl.name.clone(),
            requests: rl.limit.requests,
            unit_seconds: rl.limit.per.seconds(),
        })
        .collect()
}

/// The actions that build one descriptor, and its entries.
type Descriptor = (Vec<RateLimitAction>, Vec<DescriptorEntry>);

/// The actions that build the descriptor of the policy rate limit `j` on a route of `rule` at
/// `path`, its first entry keyed `limit_entry`, and the descriptor's entries (values of the
/// client's entry empty: filled per request); `None` when the limit cannot apply to the route.
fn actions(
    ctx: &Ctx<'_>,
    j: usize,
    rl: &PolicyRateLimit,
    rule: &AuthorizationRule,
    path: &str,
    limit_entry: &str,
) -> Result<Option<Descriptor>, RenderError> {
    let field = format!("spec.rateLimits[{j}]");
    if rl.limit.requests == 0 {
        return Err(ctx.invalid(format!("{field}.limit.requests"), "must be greater than 0"));
    }
    let m = rl.route.clone().unwrap_or_default();
    let mut actions = vec![RateLimitAction::GenericKey {
        descriptor_key: limit_entry.into(),
        descriptor_value: rl.name.clone(),
    }];
    let mut entries = vec![DescriptorEntry {
        key: limit_entry.into(),
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
    Ok(Some((actions, entries)))
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
            descriptor_key: CLIENT_ENTRY.into(),
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
        CLIENT_ENTRY
    } else if by.api_key.is_some() {
        actions.push(RateLimitAction::RequestHeaders {
            header_name: CLIENT_ID_HEADER.into(),
            descriptor_key: CLIENT_ENTRY.into(),
        });
        CLIENT_ENTRY
    } else if let Some(h) = &by.header {
        actions.push(RateLimitAction::RequestHeaders {
            header_name: h.to_ascii_lowercase(),
            descriptor_key: CLIENT_ENTRY.into(),
        });
        CLIENT_ENTRY
    } else {
        actions.push(RateLimitAction::RemoteAddress(Empty {}));
        REMOTE_ADDRESS_ENTRY
    };
    Ok(key)
}
