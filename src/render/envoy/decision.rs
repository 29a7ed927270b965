//! Object-level ownership and the request's decision, with native filters only.
//!
//! Ownership (path parameter == verified claim) is a second `rbac` filter, `OWNERSHIP_FILTER`,
//! configured per route on the routes of rules with `ownership`: one policy whose CEL condition
//! compares the path segment (`request.url_path.split('/')[n]`, string functions enabled for
//! that expression only) with the claim of the verified JWT payload. Enforce denies (403,
//! `forbidden`), Audit records it in shadow rules.
//!
//! The decision of the access log: two `set_metadata` filters around the ownership filter set
//! `apiguard.decision` to `deny:ownership` (`DECISION_PENDING_FILTER`, only when a rule has
//! ownership) and then to `allow` (`DECISION_FILTER`); a request that stops in between was
//! denied by the ownership check. The access log's `decision` is a CEL formatter over that
//! metadata (requests answered before it: `deny` from status 400 up, else `allow`) and, in
//! Audit, over the shadow results of both `rbac` filters.

use super::types::*;
use super::{Ctx, JWT_FILTER};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// The ownership `rbac` filter; its per-route config sits under this name.
pub(crate) const OWNERSHIP_FILTER: &str = "apiguard.ownership";
/// `set_metadata` before [`OWNERSHIP_FILTER`]: `decision: deny:ownership`.
pub(crate) const DECISION_PENDING_FILTER: &str = "apiguard.decision-pending";
/// `set_metadata` after [`OWNERSHIP_FILTER`] (where the Lua decision filter was): `decision:
/// allow`.
pub(crate) const DECISION_FILTER: &str = "apiguard.decision";
/// The dynamic metadata namespace of the decision.
pub(crate) const DECISION_NAMESPACE: &str = "apiguard";
/// Stat prefix (and metadata key prefix) of the ownership filter's shadow rules in Audit.
const OWNERSHIP_SHADOW_PREFIX: &str = "apiguard_ownership_";
/// Stat prefix (and metadata key prefix) of the authorization `rbac` filter's shadow rules.
pub(crate) const AUDIT_SHADOW_PREFIX: &str = "apiguard_audit_";
/// Where both `rbac` filters put their results (one namespace for every instance).
const RBAC_METADATA: &str = "envoy.filters.http.rbac";

/// Whether any (non-public) rule has an ownership check.
pub(super) fn has_ownership(ctx: &Ctx<'_>) -> bool {
    ctx.spec
        .rules()
        .iter()
        .any(|r| !r.public && r.ownership.is_some())
}

/// A `set_metadata` filter setting `apiguard.decision` to `decision`.
fn set_decision(name: &str, decision: &str) -> HttpFilter {
    HttpFilter {
        name: name.to_string(),
        typed_config: Some(Any::SetMetadata(SetMetadata {
            metadata: vec![SetMetadataEntry {
                metadata_namespace: DECISION_NAMESPACE.to_string(),
                value: json!({ "decision": decision }),
                allow_overwrite: true,
            }],
        })),
        config_discovery: None,
        disabled: false,
    }
}

/// The filters after the authorization `rbac` filter: the ownership check and the decision.
pub(super) fn filters(ctx: &Ctx<'_>) -> Vec<HttpFilter> {
    let mut filters = Vec::new();
    if has_ownership(ctx) {
        filters.push(set_decision(DECISION_PENDING_FILTER, "deny:ownership"));
        filters.push(HttpFilter {
            name: OWNERSHIP_FILTER.to_string(),
            typed_config: Some(Any::Rbac(Rbac::default())),
            config_discovery: None,
            disabled: false,
        });
    }
    filters.push(set_decision(DECISION_FILTER, "allow"));
    filters
}

fn ident(name: &str) -> Value {
    json!({ "ident_expr": { "name": name } })
}

fn select(operand: Value, field: &str) -> Value {
    json!({ "select_expr": { "operand": operand, "field": field } })
}

fn string(s: &str) -> Value {
    json!({ "const_expr": { "string_value": s } })
}

fn call(function: &str, args: Vec<Value>) -> Value {
    json!({ "call_expr": { "function": function, "args": args } })
}

fn index(container: Value, key: Value) -> Value {
    call("_[_]", vec![container, key])
}

/// `request.url_path.split('/')[segment] == metadata.filter_metadata[jwt_authn].payload[claim]`
/// (as a CEL syntax tree): the `segment`-th (1-based) segment of the path without its query
/// equals the claim of the verified token. A missing or non-string claim, or no token, makes
/// the comparison false or an error: either way the policy does not match.
fn ownership_condition(segment: usize, claim: &str) -> Value {
    let split = json!({ "call_expr": {
        "target": select(ident("request"), "url_path"),
        "function": "split",
        "args": [string("/")],
    }});
    let part = index(split, json!({ "const_expr": { "int64_value": segment } }));
    let payload = index(
        index(
            select(ident("metadata"), "filter_metadata"),
            string(JWT_FILTER),
        ),
        string("payload"),
    );
    call("_==_", vec![part, index(payload, string(claim))])
}

/// The ownership filter's config on a route whose owner is path segment `segment` (1-based),
/// compared with `claim`.
pub(super) fn ownership_route(ctx: &Ctx<'_>, rule: &str, segment: usize, claim: &str) -> Any {
    let mut policies = BTreeMap::new();
    policies.insert(
        format!("{rule}-ownership"),
        RbacPolicy {
            permissions: vec![Permission { any: true }],
            principals: vec![Principal::Any(true)],
            condition: Some(ownership_condition(segment, claim)),
            cel_config: Some(CelConfig {
                enable_string_functions: true,
            }),
        },
    );
    rbac_per_route(ctx, policies, OWNERSHIP_SHADOW_PREFIX)
}

/// A route's config of an `rbac` filter allowing `policies`: enforced, or in Audit mode as
/// shadow rules whose results land under `shadow_prefix` (where the access log's decision
/// reads them).
pub(super) fn rbac_per_route(
    ctx: &Ctx<'_>,
    policies: BTreeMap<String, RbacPolicy>,
    shadow_prefix: &str,
) -> Any {
    let rules = RbacRules {
        action: "ALLOW",
        policies,
    };
    Any::RbacPerRoute(RbacPerRoute {
        rbac: if ctx.audit {
            Rbac {
                rules: None,
                shadow_rules: Some(rules),
                shadow_rules_stat_prefix: Some(shadow_prefix.into()),
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

/// The access log's `decision` (a `%CEL(...)%` command). Requests that never reached
/// [`DECISION_FILTER`] (or the pending one) were answered earlier (401, 403, 404, 413, 415,
/// 429, CORS preflight): `deny` from status 400 up, else `allow`. Enforce: the recorded
/// decision. Audit: `audit-deny:` and the reasons the shadow rules recorded (ownership, then
/// authorization), else `allow`.
pub(crate) fn decision_format(audit: bool) -> String {
    let early = "(response.code >= 400 ? 'deny' : 'allow')";
    let recorded = format!("has(metadata.filter_metadata.{DECISION_NAMESPACE})");
    let expr = if audit {
        let denied = |prefix: &str| {
            let key = format!("{prefix}shadow_engine_result");
            format!(
                "('{RBAC_METADATA}' in metadata.filter_metadata && '{key}' in metadata.filter_metadata['{RBAC_METADATA}'] && metadata.filter_metadata['{RBAC_METADATA}']['{key}'] == 'denied')"
            )
        };
        let (own, authz) = (denied(OWNERSHIP_SHADOW_PREFIX), denied(AUDIT_SHADOW_PREFIX));
        format!(
            "!{recorded} ? {early} : ({own} ? ({authz} ? 'audit-deny:ownership,authorization' : 'audit-deny:ownership') : ({authz} ? 'audit-deny:authorization' : 'allow'))"
        )
    } else {
        format!("{recorded} ? metadata.filter_metadata.{DECISION_NAMESPACE}.decision : {early}")
    };
    format!("%CEL({expr})%")
}

/// Envoy's own replies the gateway rewrites, in Enforce: the ownership filter's 403 says
/// `forbidden` (as the gateway's other refusals of an authenticated caller), not RBAC's text;
/// the sensor's failure is a problem+json 503 ([`super::ext_proc::sensor_failure_reply`]).
pub(super) fn local_reply_config(ctx: &Ctx<'_>) -> Option<Value> {
    let ownership = (!ctx.audit && has_ownership(ctx)).then(|| {
        json!({
            "filter": {"metadata_filter": {"matcher": {
                "filter": DECISION_NAMESPACE,
                "path": [{"key": "decision"}],
                "value": {"string_match": {"exact": "deny:ownership"}},
            }}},
            "body": {"inline_string": "forbidden\n"},
        })
    });
    let mappers: Vec<Value> = ownership
        .into_iter()
        .chain(super::ext_proc::sensor_failure_reply(ctx))
        .collect();
    (!mappers.is_empty()).then(|| json!({ "mappers": mappers }))
}
