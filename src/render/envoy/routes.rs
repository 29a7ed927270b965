//! The route configuration: CORS preflight, rule routes, content-type guards and the
//! undeclared-route branch.

use super::api_key::api_key_per_route;
use super::cors::cors_policy;
use super::decision::{OWNERSHIP_FILTER, ownership_route};
use super::jwt::{ANY_PROVIDER, jwt_disabled, jwt_required};
use super::paths::{method_matcher, param_segment, path_match, regex_escape};
use super::ratelimit::{GLOBAL_RATELIMIT_FILTER, global_rate_limit_config, rate_limit_config};
use super::rbac::{
    allow_policy, jwt_authenticated, rbac_route, rbac_route_enforced, rule_principal,
};
use super::types::*;
use super::{
    API_KEY_FILTER, CORS_FILTER, Ctx, JWT_FILTER, RATELIMIT_FILTER, RBAC_FILTER, RouteAuthn,
    TARGET_CLUSTER, route_authn,
};
use crate::api::{AuthorizationRule, DefaultAction};
use crate::render::{CLIENT_ID_HEADER, RenderError};
use std::collections::BTreeMap;

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

pub(super) fn build_routes(ctx: &Ctx<'_>) -> Result<RouteConfiguration, RenderError> {
    let spec = ctx.spec;
    let mut routes = Vec::new();
    if spec.cors.is_some() {
        routes.push(cors_preflight(ctx));
    }
    for (i, rule) in spec.rules().iter().enumerate() {
        rule_routes(ctx, i, rule, &mut routes)?;
    }
    routes.push(undeclared_route(ctx));

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

/// A preflight must reach a route that carries the CorsPolicy whatever the method
/// restrictions of the real routes are; the cors filter answers it for allowed origins.
/// Other origins fall through to a deny-all RBAC (no CORS headers).
fn cors_preflight(ctx: &Ctx<'_>) -> Route {
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
    r
}

/// The routes of one rule, per path: its content-type guards, then the route to the target.
fn rule_routes(
    ctx: &Ctx<'_>,
    i: usize,
    rule: &AuthorizationRule,
    routes: &mut Vec<Route>,
) -> Result<(), RenderError> {
    let content_types = &ctx.spec.request_validation().allowed_content_types;
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
            routes.extend(content_type_guards(&rule.name, &m, content_types));
        }
        routes.push(rule_route(ctx, i, rule, authn, path, m)?);
    }
    Ok(())
}

/// 415 for a request to `m` whose content type is not allowed, or that has a body and no
/// content type.
fn content_type_guards(name: &str, m: &RouteMatch, content_types: &[String]) -> [Route; 2] {
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
    let mut untyped = m.clone();
    untyped
        .headers
        .push(HeaderMatcher::present("content-type", false));
    untyped.headers.push(HeaderMatcher::string(
        "content-length",
        StringMatcher::regex("^0*[1-9][0-9]*$"),
    ));
    [
        direct(name, wrong, 415, "unsupported media type\n"),
        direct(name, untyped, 415, "unsupported media type\n"),
    ]
}

/// The route of one rule path to the target: authentication, RBAC, ownership and rate limits.
fn rule_route(
    ctx: &Ctx<'_>,
    i: usize,
    rule: &AuthorizationRule,
    authn: RouteAuthn,
    path: &str,
    m: RouteMatch,
) -> Result<Route, RenderError> {
    let mut route = route_to_target(&rule.name, m);
    let mut pf: Vec<(&str, Any)> = Vec::new();
    if rule.public {
        if ctx.jwt().is_some() {
            pf.push((JWT_FILTER, jwt_disabled()));
        }
    } else {
        if ctx.jwt().is_some() {
            pf.push((
                JWT_FILTER,
                if authn.jwt {
                    jwt_required(&rule.name)
                } else {
                    jwt_disabled()
                },
            ));
        }
        if authn.api_key {
            pf.push((API_KEY_FILTER, api_key_per_route()));
        }
        let principal = rule_principal(ctx, i, rule, authn)?;
        pf.push((
            RBAC_FILTER,
            rbac_route(ctx, allow_policy(&rule.name, vec![principal])),
        ));
        if let Some(own) = &rule.ownership {
            let seg = param_segment(path, &own.path_param).ok_or_else(|| {
                ctx.invalid(
                    format!("spec.authorization.rules[{i}].ownership.pathParam"),
                    format!("{{{}}} does not appear in path {path:?}", own.path_param),
                )
            })?;
            pf.push((
                OWNERSHIP_FILTER,
                ownership_route(ctx, &rule.name, seg, &own.claim),
            ));
        }
    }
    if let Some(rl) = rate_limit_config(ctx, rule, path)? {
        pf.push((RATELIMIT_FILTER, Any::LocalRateLimit(rl)));
    }
    if let Some(rl) = global_rate_limit_config(ctx, rule, path)? {
        pf.push((GLOBAL_RATELIMIT_FILTER, Any::RateLimitPerRoute(rl)));
    }
    route.typed_per_filter_config = per_filter(pf);
    Ok(route)
}

const UNDECLARED: &str = "undeclared-route";

/// The catch-all route of everything no rule declares.
fn undeclared_route(ctx: &Ctx<'_>) -> Route {
    let catch_all = RouteMatch {
        prefix: Some("/".into()),
        ..Default::default()
    };
    if ctx.spec.default_action() == DefaultAction::Allow {
        undeclared_allowed(ctx, catch_all)
    } else if ctx.audit || !ctx.spec.request_validation().reject_undeclared_routes {
        // Audit: let it through and record the would-be denial; Enforce: 403 from RBAC.
        let mut r = route_to_target(UNDECLARED, catch_all);
        let mut pf = vec![(RBAC_FILTER, rbac_route(ctx, BTreeMap::new()))];
        if ctx.jwt().is_some() {
            pf.push((JWT_FILTER, jwt_disabled()));
        }
        r.typed_per_filter_config = per_filter(pf);
        r
    } else {
        direct(UNDECLARED, catch_all, 404, "not found\n")
    }
}

/// `defaultAction: Allow`: any credential the policy accepts (any JWT provider, else any API
/// key), required only when `authentication.required`.
fn undeclared_allowed(ctx: &Ctx<'_>, catch_all: RouteMatch) -> Route {
    let mut r = route_to_target(UNDECLARED, catch_all);
    let mut pf = Vec::new();
    let mut principals = Vec::new();
    if ctx.jwt().is_some() {
        pf.push((JWT_FILTER, jwt_required(ANY_PROVIDER)));
        principals.push(jwt_authenticated());
    } else if ctx.api_keys().is_some() {
        pf.push((API_KEY_FILTER, api_key_per_route()));
        principals.push(Principal::Header(HeaderMatcher::present(
            CLIENT_ID_HEADER,
            true,
        )));
    }
    let required = ctx.spec.authentication().required;
    if required && !principals.is_empty() {
        pf.push((
            RBAC_FILTER,
            rbac_route(ctx, allow_policy(UNDECLARED, principals)),
        ));
    }
    r.typed_per_filter_config = per_filter(pf);
    r
}
