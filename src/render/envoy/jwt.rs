//! The `jwt_authn` filter: providers, per-rule requirements and the per-route switch.

use super::types::*;
use super::{Ctx, route_authn};
use crate::api::JwtAuthentication as PolicyJwt;
use crate::api::JwtProvider as PolicyJwtProvider;
use crate::api::duration::parse_duration;
use crate::render::RenderError;
use std::collections::BTreeMap;

/// The `jwt_authn` filter: one provider per policy provider, one requirement per rule that
/// needs a JWT, and [`ANY_PROVIDER`].
pub(super) fn build_jwt(ctx: &Ctx<'_>, jwt: &PolicyJwt) -> Result<JwtAuthentication, RenderError> {
    let mut providers = BTreeMap::new();
    for (i, p) in jwt.providers.iter().enumerate() {
        let field = format!("spec.authentication.jwt.providers[{i}]");
        providers.insert(p.name.clone(), provider(ctx, &field, p)?);
    }
    let requirement_map = requirement_map(ctx, &providers)?;
    Ok(JwtAuthentication {
        providers,
        requirement_map,
    })
}

/// The policy duration `value` (at `{field}.{name}`) in seconds; `default` when unset.
fn seconds(
    ctx: &Ctx<'_>,
    field: &str,
    name: &str,
    value: &Option<String>,
    default: u64,
) -> Result<u64, RenderError> {
    match value {
        None => Ok(default),
        Some(v) => parse_duration(v)
            .map(|d| d.as_secs())
            .map_err(|e| ctx.invalid(format!("{field}.{name}"), e.to_string())),
    }
}

/// The Envoy provider of the policy provider `p` (at `field`).
fn provider(ctx: &Ctx<'_>, field: &str, p: &PolicyJwtProvider) -> Result<JwtProvider, RenderError> {
    let clock_skew_seconds = seconds(ctx, field, "clockSkew", &p.clock_skew, 60)?;
    let max_lifetime = match &p.max_lifetime {
        None => None,
        Some(_) => Some(format!(
            "{}s",
            seconds(ctx, field, "maxLifetime", &p.max_lifetime, 0)?
        )),
    };
    let (remote_jwks, local_jwks) = jwks_source(ctx, field, p)?;
    Ok(JwtProvider {
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
    })
}

/// Where the provider's keys come from: fetched from `jwks.uri` (remote), or the checked JWKS
/// document of `jwks.inline` or of the Secret `jwks.secretRef` (local).
fn jwks_source(
    ctx: &Ctx<'_>,
    field: &str,
    p: &PolicyJwtProvider,
) -> Result<(Option<RemoteJwks>, Option<DataSource>), RenderError> {
    if let Some(uri) = &p.jwks.uri {
        let cache = seconds(
            ctx,
            field,
            "jwks.cacheDuration",
            &p.jwks.cache_duration,
            300,
        )?;
        Ok((
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
        ))
    } else if let Some(inline) = &p.jwks.inline {
        check_jwks(inline).map_err(|m| ctx.invalid(format!("{field}.jwks.inline"), m))?;
        Ok((None, Some(DataSource::inline(inline.clone()))))
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
        Ok((None, Some(DataSource::inline(doc.clone()))))
    } else {
        Err(ctx.invalid(
            format!("{field}.jwks"),
            "one of uri, inline or secretRef is required",
        ))
    }
}

/// Rule name -> the providers a token must verify with (the rule's, else any), for every
/// non-public rule that needs a JWT; plus [`ANY_PROVIDER`]. A rule naming an unknown provider
/// is an error.
fn requirement_map(
    ctx: &Ctx<'_>,
    providers: &BTreeMap<String, JwtProvider>,
) -> Result<BTreeMap<String, JwtRequirement>, RenderError> {
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
    Ok(requirement_map)
}

/// Requirement used by the catch-all route when `defaultAction: Allow`.
pub(super) const ANY_PROVIDER: &str = "apiguard-any-provider";

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

pub(super) fn jwks_cluster_name(provider: &str) -> String {
    format!("jwks-{provider}")
}

pub(super) fn jwt_disabled() -> Any {
    Any::JwtPerRoute(JwtPerRoute {
        disabled: true,
        requirement_name: None,
    })
}

/// Requires a token satisfying the requirement `name` of the `requirement_map` on a route.
pub(super) fn jwt_required(name: &str) -> Any {
    Any::JwtPerRoute(JwtPerRoute {
        disabled: false,
        requirement_name: Some(name.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwks_checked() {
        assert!(check_jwks("{\"keys\":[{}]}").is_ok());
        assert!(check_jwks("{\"keys\":[]}").is_err());
        assert!(check_jwks("nope").is_err());
    }
}
