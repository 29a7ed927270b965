//! The HTTP connection manager: the HTTP filter chain, header handling and the access log.

use super::access_log::access_log_format;
use super::decision;
use super::ext_proc::{
    CONTENT_LENGTH_FILTER, ENVOY_DEFAULT_BUFFER_LIMIT, checks_request_bodies, ext_proc_filter,
    ext_proc_needed, skip_direct_responses, streams_request_bodies,
};
use super::jwt::build_jwt;
use super::ratelimit::{GLOBAL_RATELIMIT_FILTER, global_rate_limit_filter};
use super::routes::build_routes;
use super::types::*;
use super::{
    API_KEY_FILTER, API_KEY_TYPE_URL, API_KEYS_FILE, BUFFER_FILTER, CORS_FILTER, Ctx, JWT_FILTER,
    RATELIMIT_FILTER, RBAC_FILTER,
};
use crate::api::{ClientCertificate, RateLimitScope, UnderscoreHeaders};
use crate::render::{CLIENT_ID_HEADER, RenderError};

/// The HTTP filter chain, in the order of the module docs.
fn http_filters(ctx: &Ctx<'_>) -> Result<Vec<HttpFilter>, RenderError> {
    let spec = ctx.spec;
    let mut filters = vec![strip_trusted_headers(ctx)];
    if spec.cors.is_some() {
        filters.push(filter(CORS_FILTER, Any::Cors(Empty {})));
    }
    if let Some(jwt) = ctx.jwt() {
        filters.push(filter(
            JWT_FILTER,
            Any::JwtAuthentication(build_jwt(ctx, jwt)?),
        ));
    }
    if ctx.api_keys().is_some() {
        filters.push(api_key_filter(ctx));
    }
    filters.push(filter(RBAC_FILTER, Any::Rbac(Rbac::default())));
    filters.extend(decision::filters(ctx));
    if spec
        .rate_limits
        .iter()
        .any(|rl| rl.scope == RateLimitScope::Replica)
    {
        filters.push(local_ratelimit_filter());
    }
    if spec.global_rate_limits().next().is_some() {
        filters.push(filter(
            GLOBAL_RATELIMIT_FILTER,
            Any::GlobalRateLimit(global_rate_limit_filter()),
        ));
    }
    let body_limit = request_body_limit(ctx);
    if let Some(max) = body_limit {
        filters.push(buffer_filter(ctx, BUFFER_FILTER, max)?);
    }
    // Last before the router: the sensor sees the principal (after authentication and
    // authorization), and requests the gateway refuses anyway (401, 403, 429, 413) never
    // reach it. Present for the contract or the sensitive-data scan.
    filters.extend(ext_proc_filter(ctx)?);
    if let Some(max) = body_limit.filter(|_| streams_request_bodies(ctx)) {
        // Envoy drops `content-length` from a request whose body it streams to the sensor;
        // buffering it again after the sensor's answer puts the header back, so the target
        // gets the request as the client sent it (not re-framed as chunked).
        filters.push(buffer_filter(ctx, CONTENT_LENGTH_FILTER, max)?);
    }
    filters.push(filter("envoy.filters.http.router", Any::Router(Empty {})));
    Ok(filters)
}

/// An enabled filter with its config.
fn filter(name: &str, config: Any) -> HttpFilter {
    HttpFilter {
        name: name.to_string(),
        typed_config: Some(config),
        config_discovery: None,
        disabled: false,
    }
}

/// `header_mutation`: removes the client-sent copies of the headers only the gateway may set
/// (forwarded claims, the API-key client id).
fn strip_trusted_headers(ctx: &Ctx<'_>) -> HttpFilter {
    let mut trusted: Vec<String> = vec![CLIENT_ID_HEADER.to_string()];
    if let Some(jwt) = ctx.jwt() {
        for p in &jwt.providers {
            for fc in &p.forward_claims {
                trusted.push(fc.header.to_ascii_lowercase());
            }
        }
    }
    trusted.sort();
    trusted.dedup();
    filter(
        "envoy.filters.http.header_mutation",
        Any::HeaderMutation(HeaderMutation {
            mutations: Mutations {
                request_mutations: trusted
                    .iter()
                    .map(|h| HeaderMutationRule { remove: h.clone() })
                    .collect(),
            },
        }),
    )
}

/// `api_key_auth`, its config (the keys) from the watched secret file (ECDS); disabled here and
/// enabled per route on the routes that take API keys.
fn api_key_filter(ctx: &Ctx<'_>) -> HttpFilter {
    HttpFilter {
        name: API_KEY_FILTER.into(),
        typed_config: None,
        config_discovery: Some(ExtensionConfigSource {
            config_source: ConfigSource {
                path_config_source: PathConfigSource {
                    path: ctx.secret_path(API_KEYS_FILE),
                    watched_directory: WatchedDirectory {
                        path: ctx.opts().secret_dir.trim_end_matches('/').to_string(),
                    },
                },
                resource_api_version: "V3",
            },
            type_urls: vec![API_KEY_TYPE_URL],
        }),
        // Enabled per route on the routes that take API keys.
        disabled: true,
    }
}

/// `local_ratelimit` without limits of its own (the routes configure it).
fn local_ratelimit_filter() -> HttpFilter {
    filter(
        RATELIMIT_FILTER,
        Any::LocalRateLimit(LocalRateLimit {
            stat_prefix: "apiguard_ratelimit".into(),
            token_bucket: None,
            filter_enabled: None,
            filter_enforced: None,
            descriptors: Vec::new(),
            rate_limits: Vec::new(),
            max_dynamic_descriptors: None,
            always_consume_default_token_bucket: None,
        }),
    )
}

/// The request body limit: `spec.requestValidation.maxBodyBytes`, or Envoy's default buffer
/// limit when the sensor checks request bodies (the body is buffered whole before it goes to
/// the sensor, so the sensor gets it in one message, with its `content-length`).
fn request_body_limit(ctx: &Ctx<'_>) -> Option<u64> {
    ctx.spec
        .request_validation()
        .max_body_bytes
        .or_else(|| checks_request_bodies(ctx).then_some(ENVOY_DEFAULT_BUFFER_LIMIT))
}

/// `buffer` (named `name`): requests with a body over `max` bytes get 413; a body without a
/// `content-length` gets one once buffered.
fn buffer_filter(ctx: &Ctx<'_>, name: &str, max: u64) -> Result<HttpFilter, RenderError> {
    let max = u32::try_from(max).map_err(|_| {
        ctx.invalid(
            "spec.requestValidation.maxBodyBytes",
            "must be at most 4294967295",
        )
    })?;
    Ok(filter(
        name,
        Any::Buffer(Buffer {
            max_request_bytes: u64::from(max),
        }),
    ))
}

pub(super) fn build_hcm(ctx: &Ctx<'_>) -> Result<HttpConnectionManager, RenderError> {
    let spec = ctx.spec;
    let validation = spec.request_validation();
    let filters = http_filters(ctx)?;
    let mut routes = build_routes(ctx)?;
    if ext_proc_needed(ctx) {
        skip_direct_responses(&mut routes);
    }
    let mut access_log = if spec.audit().access_log {
        vec![AccessLog {
            name: "envoy.access_loggers.file",
            typed_config: Any::FileAccessLog(FileAccessLog {
                path: ctx.opts().access_log_path.clone(),
                log_format: SubstitutionFormatString {
                    json_format: access_log_format(&spec.audit(), ctx.audit),
                },
            }),
        }]
    } else {
        Vec::new()
    };
    access_log.extend(super::ext_proc::sensor_access_log(ctx));
    let underscores = match validation.headers_with_underscores {
        UnderscoreHeaders::Reject => "REJECT_REQUEST",
        UnderscoreHeaders::Drop => "DROP_HEADER",
        UnderscoreHeaders::Allow => "ALLOW",
    };
    let client_certs =
        ctx.client_cert_mode() != ClientCertificate::None && !ctx.spec.tls().is_disabled();
    Ok(HttpConnectionManager {
        stat_prefix: "apiguard".into(),
        codec_type: "AUTO",
        use_remote_address: true,
        normalize_path: true,
        merge_slashes: true,
        path_with_escaped_slashes_action: "REJECT_REQUEST",
        common_http_protocol_options: HttpProtocolOptions {
            headers_with_underscores_action: underscores,
        },
        strip_any_host_port: true,
        route_config: routes,
        http_filters: filters,
        access_log,
        local_reply_config: decision::local_reply_config(ctx),
        // The target learns the verified client identity; client-sent XFCC is replaced.
        forward_client_cert_details: client_certs.then_some("SANITIZE_SET"),
        set_current_client_cert_details: client_certs.then_some(ClientCertDetails { uri: true }),
        server_header_transformation: "PASS_THROUGH",
    })
}
