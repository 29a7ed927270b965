//! The clusters (CDS): the target Service (optionally east-west mTLS) and remote JWKS hosts.

use super::bootstrap::socket;
use super::jwt::jwks_cluster_name;
use super::types::*;
use super::{Ctx, TARGET_CLUSTER, UPSTREAM_CA_FILE, UPSTREAM_CERT_FILE, UPSTREAM_KEY_FILE};
use crate::api::{ApiSecurityPolicy, EastWestMtls};
use crate::render::{RenderError, hash_files, policy_ref};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::json;
use std::collections::BTreeMap;

/// `host:port` of the target Service's port in the cluster.
pub fn target_address(
    policy: &ApiSecurityPolicy,
    service: &Service,
    cluster_domain: &str,
) -> Result<(String, u16), RenderError> {
    let spec = &policy.spec;
    let invalid = |m: String| RenderError::Invalid {
        policy: policy_ref(policy),
        field: "spec.target".into(),
        message: m,
    };
    let svc_name = service.metadata.name.as_deref().unwrap_or("");
    if svc_name != spec.target.service {
        return Err(invalid(format!(
            "the given Service is {svc_name:?}, the policy targets {:?}",
            spec.target.service
        )));
    }
    let ports = service
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .map(|p| p.as_slice())
        .unwrap_or(&[]);
    let port = match &spec.target.port {
        IntOrString::Int(n) => ports.iter().find(|p| p.port == *n),
        IntOrString::String(name) => ports.iter().find(|p| p.name.as_deref() == Some(name)),
    }
    .ok_or_else(|| {
        invalid(format!(
            "Service {svc_name} has no port {}",
            match &spec.target.port {
                IntOrString::Int(n) => n.to_string(),
                IntOrString::String(s) => format!("named {s:?}"),
            }
        ))
    })?;
    let port = u16::try_from(port.port)
        .map_err(|_| invalid(format!("Service port {} out of range", port.port)))?;
    let ns = policy
        .metadata
        .namespace
        .as_deref()
        .or(service.metadata.namespace.as_deref())
        .unwrap_or("default");
    Ok((format!("{svc_name}.{ns}.svc.{cluster_domain}"), port))
}

pub(super) fn cluster(name: &str, host: &str, port: u16, tls: Option<TransportSocket>) -> Cluster {
    let is_ip = host.parse::<std::net::IpAddr>().is_ok();
    Cluster {
        name: name.to_string(),
        discovery_type: if is_ip { "STATIC" } else { "STRICT_DNS" },
        connect_timeout: "5s".into(),
        lb_policy: "ROUND_ROBIN",
        load_assignment: ClusterLoadAssignment {
            cluster_name: name.to_string(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    endpoint: Endpoint {
                        address: socket(host, port),
                    },
                }],
            }],
        },
        transport_socket: tls,
        dns_lookup_family: (!is_ip).then_some("V4_PREFERRED"),
        metadata: None,
        typed_extension_protocol_options: BTreeMap::new(),
    }
}

/// The metadata that ties a listener or cluster to the certificates it reads from files.
/// Envoy reads `filename` data sources when it builds the resource, and a renewal rewrites
/// the files under the same names: without this, an otherwise identical resource is "unchanged"
/// and the old certificate stays in use until it expires. With it, a renewal changes the
/// resource and Envoy replaces it (new connections get the new certificate; the old listener
/// drains).
pub(super) fn certificates_metadata<'a>(
    files: impl Iterator<Item = (&'a str, &'a str)>,
) -> Metadata {
    Metadata {
        filter_metadata: BTreeMap::from([(
            "apiguard.dev".to_string(),
            json!({ "certificates": hash_files(files) }),
        )]),
    }
}

fn split_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((host.to_string(), port.parse().ok()?))
}

pub(super) fn build_clusters(ctx: &Ctx<'_>) -> Result<Vec<Cluster>, RenderError> {
    let (svc_host, svc_port) = target_address(
        ctx.input.policy,
        ctx.input.target_service,
        &ctx.opts().cluster_domain,
    )?;
    let (host, port) = match &ctx.opts().upstream_override {
        Some(o) => split_host_port(o)
            .ok_or_else(|| ctx.invalid("options.upstream", format!("{o:?} is not host:port")))?,
        None => (svc_host.clone(), svc_port),
    };
    let upstream_tls = if ctx.spec.east_west().mtls == EastWestMtls::Disabled {
        None
    } else {
        let up =
            ctx.input.identity.upstream.as_ref().ok_or_else(|| {
                ctx.invalid("spec.eastWest.mtls", "no upstream identity was given")
            })?;
        Some(TransportSocket {
            name: "envoy.transport_sockets.tls",
            typed_config: Any::UpstreamTlsContext(Box::new(UpstreamTlsContext {
                common_tls_context: CommonTlsContext {
                    tls_params: TlsParameters {
                        tls_minimum_protocol_version: "TLSv1_2",
                        tls_maximum_protocol_version: "TLSv1_3",
                    },
                    tls_certificates: vec![TlsCertificate {
                        certificate_chain: DataSource::file(ctx.config_path(UPSTREAM_CERT_FILE)),
                        private_key: DataSource::file(ctx.secret_path(UPSTREAM_KEY_FILE)),
                    }],
                    validation_context: Some(CertificateValidationContext {
                        trusted_ca: DataSource::file(ctx.config_path(UPSTREAM_CA_FILE)),
                        match_typed_subject_alt_names: vec![SubjectAltNameMatcher {
                            san_type: "URI",
                            matcher: StringMatcher::exact(&up.target_spiffe_id),
                        }],
                    }),
                    alpn_protocols: Vec::new(),
                },
                sni: svc_host.clone(),
            })),
        })
    };
    let mut clusters = vec![cluster(TARGET_CLUSTER, &host, port, upstream_tls)];
    if let Some(jwt) = ctx.jwt() {
        for (i, p) in jwt.providers.iter().enumerate() {
            let Some(uri) = &p.jwks.uri else { continue };
            let field = format!("spec.authentication.jwt.providers[{i}].jwks.uri");
            let rest = uri
                .strip_prefix("https://")
                .ok_or_else(|| ctx.invalid(&field, "must be an https:// URL (APG007)"))?;
            let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
            let (host, port) = match split_host_port(authority) {
                Some(hp) => hp,
                None => (authority.to_string(), 443),
            };
            if host.is_empty() {
                return Err(ctx.invalid(&field, "has no host"));
            }
            let tls = TransportSocket {
                name: "envoy.transport_sockets.tls",
                typed_config: Any::UpstreamTlsContext(Box::new(UpstreamTlsContext {
                    common_tls_context: CommonTlsContext {
                        tls_params: TlsParameters {
                            tls_minimum_protocol_version: "TLSv1_2",
                            tls_maximum_protocol_version: "TLSv1_3",
                        },
                        tls_certificates: Vec::new(),
                        validation_context: Some(CertificateValidationContext {
                            trusted_ca: DataSource::file(ctx.opts().system_ca_file.clone()),
                            match_typed_subject_alt_names: vec![SubjectAltNameMatcher {
                                san_type: "DNS",
                                matcher: StringMatcher::exact(&host),
                            }],
                        }),
                        alpn_protocols: Vec::new(),
                    },
                    sni: host.clone(),
                })),
            };
            clusters.push(cluster(&jwks_cluster_name(&p.name), &host, port, Some(tls)));
        }
    }
    Ok(clusters)
}
