//! The runtime sensor behind Envoy: the `ext_proc` filter that sends each request (and, as the
//! contract's modes and the sensitive-data scan need, its body and the response) to the sensor
//! sidecar (only for a policy with `spec.openapi` or `spec.discovery.sensitiveData` other than
//! Off), the gRPC access log that streams every request's entry to it for
//! discovery (`spec.discovery.enabled`, the default), the sensor's cluster, and `sensor.yaml`.

use super::types::*;
use super::{Ctx, RenderError};
use crate::api::{
    OpenApi, PolicyMode, RequestContractMode, ResponseContractMode, Runtime, SensitiveDataMode,
};
use crate::render::CLIENT_ID_HEADER;
use crate::sensor::config::{
    ACCESS_LOG_NAME, DeclaredRoute, JWT_METADATA_NAMESPACE, REQUEST_ATTRIBUTES, SENSOR_CLUSTER,
    SensorConfig, SensorContract, SensorDiscovery, SensorReport,
};
use std::collections::BTreeMap;

pub(super) const EXT_PROC_FILTER: &str = "envoy.filters.http.ext_proc";
/// How long Envoy waits for the sensor's answer to one message before failing (closed in
/// Enforce with a contract; open in Audit, and always open for scanning alone).
const MESSAGE_TIMEOUT: &str = "0.200s";
const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// Whether the gateway has a sensor sidecar: for the contract, for discovery, for runtime
/// detection, or for the `scope: Global` rate limits (its rate limit service).
pub(super) fn sensor_needed(ctx: &Ctx<'_>) -> bool {
    ctx.spec.openapi.is_some()
        || ctx.spec.discovery().enabled
        || runtime(ctx).is_some()
        || ctx.spec.global_rate_limits().next().is_some()
}

/// `spec.runtime` when it asks for anything (a detector, or an enabled baseline).
pub(super) fn runtime<'a>(ctx: &Ctx<'a>) -> Option<&'a Runtime> {
    ctx.spec
        .runtime
        .as_ref()
        .filter(|r| !r.detectors.is_empty() || r.baseline.as_ref().is_some_and(|b| b.enabled))
}

/// Whether the sensor pushes to the operator: the discovery inventory, the runtime detections.
pub(super) fn sensor_reports(ctx: &Ctx<'_>) -> bool {
    ctx.spec.discovery().enabled || runtime(ctx).is_some()
}

/// `spec.runtime` checked as the sensor will compile it (an error names the field, from
/// `spec.runtime`), for the `runtime` section of `sensor.yaml`.
pub(super) fn runtime_section(ctx: &Ctx<'_>) -> Result<Option<Runtime>, RenderError> {
    let Some(runtime) = runtime(ctx) else {
        return Ok(None);
    };
    crate::detect::policy::detectors(runtime)
        .map_err(|e| ctx.invalid(format!("spec.{}", e.field), e.message))?;
    Ok(Some(runtime.clone()))
}

/// The gRPC access log to the sensor (discovery, runtime detection): every request's entry,
/// including those Envoy's own filters refuse, streamed off the request path. It carries the
/// client-id header the API-key filter sets, the headers detectors key by and the response's
/// content type beside the standard fields (method, path, status, route name, the client
/// address, the JWT filter's metadata, the client certificate).
pub(super) fn sensor_access_log(ctx: &Ctx<'_>) -> Option<AccessLog> {
    let mut request_headers = vec![CLIENT_ID_HEADER.to_string()];
    if let Some(runtime) = runtime(ctx) {
        request_headers.extend(crate::detect::policy::key_headers(runtime));
        request_headers.dedup();
    }
    sensor_reports(ctx).then(|| AccessLog {
        name: "envoy.access_loggers.http_grpc",
        typed_config: Any::HttpGrpcAccessLog(HttpGrpcAccessLog {
            common_config: CommonGrpcAccessLogConfig {
                log_name: ACCESS_LOG_NAME.into(),
                grpc_service: GrpcService {
                    envoy_grpc: EnvoyGrpc {
                        cluster_name: SENSOR_CLUSTER.into(),
                    },
                },
                transport_api_version: "V3",
                buffer_flush_interval: "0.5s".into(),
            },
            additional_request_headers_to_log: request_headers,
            additional_response_headers_to_log: vec!["content-type".into()],
        }),
    })
}

/// The local reply when the sensor fails in Enforce (unreachable, timed out, a gRPC error):
/// Envoy's `503` carries a problem+json body saying so, instead of an empty one. Matched by the
/// response code details Envoy gives ext_proc failures (`ext_proc_error_...`). None when the
/// policy has no contract, or in Audit (the request goes through).
pub(super) fn sensor_failure_reply(ctx: &Ctx<'_>) -> Option<serde_json::Value> {
    (ctx.spec.openapi.is_some() && ctx.spec.mode != PolicyMode::Audit).then(|| {
        serde_json::json!({
            "filter": {"extension_filter": {
                "name": "envoy.access_loggers.extension_filters.cel",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter",
                    "expression": "response.code_details.startsWith('ext_proc_error')",
                },
            }},
            "body_format_override": {
                "json_format": {
                    "type": "https://apiguard.dev/problems/sensor-unavailable",
                    "title": "The API contract could not be checked",
                    "status": 503,
                    "detail": "the gateway's sensor did not answer, so the request was refused",
                },
                "content_type": "application/problem+json",
            },
        })
    })
}

/// The policy's contract and its resolved document, when it has one.
pub(super) fn contract<'a>(ctx: &Ctx<'a>) -> Result<Option<(&'a OpenApi, &'a str)>, RenderError> {
    let Some(openapi) = ctx.spec.openapi.as_ref() else {
        return Ok(None);
    };
    let document = ctx.input.openapi_document.ok_or_else(|| {
        ctx.invalid(
            "spec.openapi.source",
            "the policy has an OpenAPI contract but its document was not given",
        )
    })?;
    Ok(Some((openapi, document)))
}

/// Whether the sensor scans JSON response bodies for sensitive data
/// (`spec.discovery.sensitiveData` other than Off, with discovery enabled).
pub(super) fn scans_responses(ctx: &Ctx<'_>) -> bool {
    let discovery = ctx.spec.discovery();
    discovery.enabled && discovery.sensitive_data != SensitiveDataMode::Off
}

/// The second `buffer` filter, after `ext_proc`, when the sensor gets request bodies streamed
/// ([`streams_request_bodies`]): it gives the request back its `content-length`.
pub(super) const CONTENT_LENGTH_FILTER: &str = "apiguard.content-length";
/// Envoy's default per-connection buffer limit (1 MiB): the request body limit when the sensor
/// checks bodies and the policy sets no `maxBodyBytes` (what Envoy's buffering allowed anyway).
pub(super) const ENVOY_DEFAULT_BUFFER_LIMIT: u64 = 1024 * 1024;

/// Whether the contract checks request bodies (`spec.openapi.requests` other than Off).
pub(super) fn checks_request_bodies(ctx: &Ctx<'_>) -> bool {
    ctx.spec
        .openapi
        .as_ref()
        .is_some_and(|o| o.requests != RequestContractMode::Off)
}

/// Whether a request's body goes to the sensor right behind its headers, without waiting for
/// the headers' answer (`STREAMED` with `send_body_without_waiting_for_header_response`): one
/// round trip per request instead of two. The sensor holds its answer to the headers until the
/// body is complete, so nothing reaches the target before the body is checked. Not with the
/// sensitive-data scan: Envoy then ignores the processing-mode override the scan relies on.
pub(super) fn streams_request_bodies(ctx: &Ctx<'_>) -> bool {
    checks_request_bodies(ctx) && !scans_responses(ctx)
}

/// Which parts of the exchange the sensor needs: the request headers always (the decision and
/// the principal; the method and path a scanned response counts into), the request body when
/// the contract checks requests (never for scanning; `STREAMED` behind the headers, or
/// `BUFFERED` after their answer when responses are scanned, see [`streams_request_bodies`]),
/// the response when the contract redacts or audits responses, or when responses are scanned
/// for sensitive data. A response body is sent up to Envoy's buffer limit
/// (`BUFFERED_PARTIAL`): a larger one passes unchecked and unscanned instead of failing the
/// request.
pub(super) fn processing_mode(openapi: Option<&OpenApi>, scan: bool) -> ProcessingMode {
    let contract_responses = openapi.is_some_and(|o| o.responses != ResponseContractMode::Off);
    let responses = contract_responses || scan;
    let request_bodies = openapi.is_some_and(|o| o.requests != RequestContractMode::Off);
    ProcessingMode {
        request_header_mode: "SEND",
        response_header_mode: if responses { "SEND" } else { "SKIP" },
        request_body_mode: match (request_bodies, scan) {
            (false, _) => "NONE",
            (true, false) => "STREAMED",
            (true, true) => "BUFFERED",
        },
        response_body_mode: if responses {
            "BUFFERED_PARTIAL"
        } else {
            "NONE"
        },
        request_trailer_mode: "SKIP",
        response_trailer_mode: "SKIP",
    }
}

/// Whether the gateway calls the sensor inline (the `ext_proc` filter): for the contract, to
/// scan responses for sensitive data, or to refuse keys a `Block` detector blocks. Discovery
/// and alerting detectors alone stream the access log instead.
pub(super) fn ext_proc_needed(ctx: &Ctx<'_>) -> bool {
    ctx.spec.openapi.is_some()
        || scans_responses(ctx)
        || runtime(ctx).is_some_and(crate::detect::policy::any_block)
}

/// The `ext_proc` filter: to the sensor's cluster; None when nothing needs it inline
/// ([`ext_proc_needed`]).
///
/// Failure mode (the sensor unreachable, too slow, or answering a gRPC error): with a contract,
/// closed in Enforce (503 problem+json, [`sensor_failure_reply`]) and open in Audit. Without a
/// contract the sensor only scans responses or enforces blocks: the filter always fails open,
/// in Enforce too, so a sensor failure never refuses traffic (a block is lost while the sensor
/// is down, not every request).
pub(super) fn ext_proc_filter(ctx: &Ctx<'_>) -> Result<Option<HttpFilter>, RenderError> {
    if !ext_proc_needed(ctx) {
        return Ok(None);
    }
    let openapi = contract(ctx)?.map(|(openapi, _)| openapi);
    let metadata_options = ctx.jwt().map(|_| ExtProcMetadataOptions {
        forwarding_namespaces: MetadataNamespaces {
            untyped: vec![JWT_METADATA_NAMESPACE.to_string()],
        },
    });
    Ok(Some(HttpFilter {
        name: EXT_PROC_FILTER.into(),
        typed_config: Some(Any::ExternalProcessor(Box::new(ExternalProcessor {
            grpc_service: GrpcService {
                envoy_grpc: EnvoyGrpc {
                    cluster_name: SENSOR_CLUSTER.into(),
                },
            },
            failure_mode_allow: openapi.is_none() || ctx.spec.mode == PolicyMode::Audit,
            status_on_error: HttpStatus { code: 503 },
            processing_mode: processing_mode(openapi, scans_responses(ctx)),
            message_timeout: MESSAGE_TIMEOUT.into(),
            request_attributes: REQUEST_ATTRIBUTES.iter().map(|a| a.to_string()).collect(),
            metadata_options,
            // The sensor answers the response headers with "no body" when it will not scan
            // (not JSON, or not in the sample) and the contract does not need it either.
            allow_mode_override: scans_responses(ctx),
            send_body_without_waiting_for_header_response: streams_request_bodies(ctx),
        }))),
        config_discovery: None,
        disabled: false,
    }))
}

/// The sensor's cluster: plaintext HTTP/2 (gRPC) to the sidecar's address.
pub(super) fn sensor_cluster(ctx: &Ctx<'_>) -> Result<Cluster, RenderError> {
    let addr = &ctx.opts().sensor_address;
    let (host, port) = addr
        .rsplit_once(':')
        .and_then(|(h, p)| {
            let h = h.trim_start_matches('[').trim_end_matches(']');
            Some((h.to_string(), p.parse::<u16>().ok()?))
        })
        .filter(|(h, _)| !h.is_empty())
        .ok_or_else(|| {
            ctx.invalid(
                "options.sensorAddress",
                format!("{addr:?} is not host:port"),
            )
        })?;
    let mut cluster = super::clusters::cluster(SENSOR_CLUSTER, &host, port, None);
    cluster.connect_timeout = "1s".into();
    cluster.typed_extension_protocol_options = BTreeMap::from([(
        HTTP_PROTOCOL_OPTIONS.to_string(),
        Any::UpstreamHttpProtocolOptions(UpstreamHttpProtocolOptions {
            explicit_http_config: ExplicitHttpConfig {
                http2_protocol_options: Empty {},
            },
        }),
    )]);
    Ok(cluster)
}

/// Routes that answer without reaching the target (CORS preflight denials, undeclared routes,
/// content-type guards) do not call the sensor.
pub(super) fn skip_direct_responses(routes: &mut RouteConfiguration) {
    for vh in &mut routes.virtual_hosts {
        for r in vh.routes.iter_mut().filter(|r| r.direct_response.is_some()) {
            r.typed_per_filter_config.insert(
                EXT_PROC_FILTER.to_string(),
                Any::ExtProcPerRoute(ExtProcPerRoute { disabled: true }),
            );
        }
    }
}

/// `sensor.yaml`: the policy, its mode, the contract with the resolved document, what
/// discovery needs (the routes the rules declare), where the inventory is pushed, and the
/// runtime detectors.
pub(super) fn sensor_config(
    ctx: &Ctx<'_>,
    contract: Option<(&OpenApi, &str)>,
    report: Option<SensorReport>,
    runtime: Option<Runtime>,
) -> String {
    let meta = &ctx.input.policy.metadata;
    let mut config = SensorConfig::new(
        meta.namespace.as_deref().unwrap_or("default"),
        meta.name.as_deref().unwrap_or_default(),
        ctx.spec.mode,
    );
    let discovery = ctx.spec.discovery();
    config.discovery = discovery.enabled.then(|| SensorDiscovery {
        declared: ctx
            .spec
            .rules()
            .iter()
            .map(|r| DeclaredRoute {
                rule: r.name.clone(),
                methods: r.route.methods.clone(),
                paths: r.route.paths.clone(),
            })
            .collect(),
        sensitive_data: discovery.sensitive_data,
    });
    config.report = report;
    config.runtime = runtime;
    config.global_rate_limits = super::ratelimit::sensor_global_limits(ctx);
    let Some((openapi, document)) = contract else {
        return config.to_yaml();
    };
    config.openapi = Some(SensorContract {
        document: document.to_string(),
        requests: openapi.requests,
        responses: openapi.responses,
        unknown_properties: openapi.unknown_properties,
        max_response_bytes: openapi.max_response_bytes,
        // As the gateway's own catch-all route: `defaultAction: Allow` serves what is undeclared.
        reject_undeclared: ctx.spec.request_validation().reject_undeclared_routes
            && ctx.spec.default_action() != crate::api::DefaultAction::Allow,
    });
    config.to_yaml()
}
