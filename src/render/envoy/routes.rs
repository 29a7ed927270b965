//! The route configuration: CORS preflight, rule routes, content-type guards and the
//! undeclared-route branch.

use super::api_key::api_key_forwarding;
use super::cors::cors_policy;
use super::jwt::{ANY_PROVIDER, jwt_disabled};
use super::lua;
use super::paths::{method_matcher, param_segment, path_match, regex_escape};
use super::ratelimit::rate_limit_config;
use super::rbac::{jwt_authenticated, rbac_route, rbac_route_enforced, rule_principal};
use super::types::*;
use super::{
    API_KEY_FILTER, CORS_FILTER, Ctx, JWT_FILTER, RATELIMIT_FILTER, RBAC_FILTER, TARGET_CLUSTER,
    route_authn,
};
use crate::api::DefaultAction;
use crate::render::{CLIENT_ID_HEADER, RenderError};
use serde_json::json;
use std::collections::BTreeMap;

pub(super) fn per_filter(entries: Vec<(&str, Any)>) -> BTreeMap<String, Any> {
    entries
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

pub(super) fn route_to_target(name: &str, m: RouteMatch) -> Route {
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

pub(super) fn direct(name: &str, m: RouteMatch, status: u16, body: &str) -> Route {
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
    let validation = spec.request_validation();
    let mut routes = Vec::new();

    if spec.cors.is_some() {
        // A preflight must reach a route that carries the CorsPolicy whatever the method
        // restrictions of the real routes are; the cors filter answers it for allowed origins.
        // Other origins fall through to a deny-all RBAC (no CORS headers).
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
        routes.push(r);
    }

    let content_types = &validation.allowed_content_types;
    for (i, rule) in spec.rules().iter().enumerate() {
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
                routes.push(direct(&rule.name, wrong, 415, "unsupported media type\n"));
                let mut untyped = m.clone();
                untyped
                    .headers
                    .push(HeaderMatcher::present("content-type", false));
                untyped.headers.push(HeaderMatcher::string(
                    "content-length",
                    StringMatcher::regex("^0*[1-9][0-9]*$"),
                ));
                routes.push(direct(&rule.name, untyped, 415, "unsupported media type\n"));
            }
            let mut route = route_to_target(&rule.name, m);
            let mut pf: Vec<(&str, Any)> = Vec::new();
            let mut meta = serde_json::Map::new();
            meta.insert("rule".into(), json!(rule.name));
            meta.insert("audit".into(), json!(ctx.audit));
            if rule.public {
                if ctx.jwt().is_some() {
                    pf.push((JWT_FILTER, jwt_disabled()));
                }
            } else {
                if ctx.jwt().is_some() {
                    pf.push((
                        JWT_FILTER,
                        if authn.jwt {
                            Any::JwtPerRoute(JwtPerRoute {
                                disabled: false,
                                requirement_name: Some(rule.name.clone()),
                            })
                        } else {
                            jwt_disabled()
                        },
                    ));
                }
                if authn.api_key {
                    pf.push((
                        API_KEY_FILTER,
                        Any::FilterConfig(Box::new(FilterConfig {
                            config: Some(Any::ApiKeyAuthPerRoute(ApiKeyAuthPerRoute {
                                allowed_clients: Vec::new(),
                                forwarding: api_key_forwarding(),
                            })),
                            disabled: false,
                        })),
                    ));
                }
                let mut policies = BTreeMap::new();
                policies.insert(
                    rule.name.clone(),
                    RbacPolicy {
                        permissions: vec![Permission { any: true }],
                        principals: vec![rule_principal(ctx, i, rule, authn)?],
                    },
                );
                pf.push((RBAC_FILTER, rbac_route(ctx, policies)));
                if let Some(own) = &rule.ownership {
                    let seg = param_segment(path, &own.path_param).ok_or_else(|| {
                        ctx.invalid(
                            format!("spec.authorization.rules[{i}].ownership.pathParam"),
                            format!("{{{}}} does not appear in path {path:?}", own.path_param),
                        )
                    })?;
                    meta.insert("owner_segment".into(), json!(seg));
                    meta.insert("owner_claim".into(), json!(own.claim));
                }
            }
            if let Some(rl) = rate_limit_config(ctx, rule, path)? {
                pf.push((RATELIMIT_FILTER, Any::LocalRateLimit(rl)));
            }
            route.typed_per_filter_config = per_filter(pf);
            let mut filter_metadata = BTreeMap::new();
            filter_metadata.insert(
                lua::AUTHZ_FILTER.to_string(),
                serde_json::Value::Object(meta),
            );
            route.metadata = Some(Metadata { filter_metadata });
            routes.push(route);
        }
    }

    // Everything no rule declares.
    let catch_all = RouteMatch {
        prefix: Some("/".into()),
        ..Default::default()
    };
    let undeclared = "undeclared-route";
    let default_allow = spec.default_action() == DefaultAction::Allow;
    if default_allow {
        let mut r = route_to_target(undeclared, catch_all);
        let mut pf = Vec::new();
        let mut principals = Vec::new();
        if ctx.jwt().is_some() {
            pf.push((
                JWT_FILTER,
                Any::JwtPerRoute(JwtPerRoute {
                    disabled: false,
                    requirement_name: Some(ANY_PROVIDER.into()),
                }),
            ));
            principals.push(jwt_authenticated());
        } else if ctx.api_keys().is_some() {
            pf.push((
                API_KEY_FILTER,
                Any::FilterConfig(Box::new(FilterConfig {
                    config: Some(Any::ApiKeyAuthPerRoute(ApiKeyAuthPerRoute {
                        allowed_clients: Vec::new(),
                        forwarding: api_key_forwarding(),
                    })),
                    disabled: false,
                })),
            ));
            principals.push(Principal::Header(HeaderMatcher::present(
                CLIENT_ID_HEADER,
                true,
            )));
        }
        let required = spec.authentication().required;
        if required && !principals.is_empty() {
            let mut policies = BTreeMap::new();
            policies.insert(
                undeclared.to_string(),
                RbacPolicy {
                    permissions: vec![Permission { any: true }],
                    principals,
                },
            );
            pf.push((RBAC_FILTER, rbac_route(ctx, policies)));
        }
        r.typed_per_filter_config = per_filter(pf);
        routes.push(r);
    } else if ctx.audit || !validation.reject_undeclared_routes {
        // Audit: let it through and record the would-be denial; Enforce: 403 from RBAC.
        let mut r = route_to_target(undeclared, catch_all);
        let mut pf = vec![(RBAC_FILTER, rbac_route(ctx, BTreeMap::new()))];
        if ctx.jwt().is_some() {
            pf.push((JWT_FILTER, jwt_disabled()));
        }
        r.typed_per_filter_config = per_filter(pf);
        let mut meta = serde_json::Map::new();
        meta.insert("rule".into(), json!(undeclared));
        meta.insert("audit".into(), json!(ctx.audit));
        let mut filter_metadata = BTreeMap::new();
        filter_metadata.insert(
            lua::AUTHZ_FILTER.to_string(),
            serde_json::Value::Object(meta),
        );
        r.metadata = Some(Metadata { filter_metadata });
        routes.push(r);
    } else {
        routes.push(direct(undeclared, catch_all, 404, "not found\n"));
    }

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
