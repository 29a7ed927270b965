//! The listener (LDS): address, downstream TLS and client-certificate validation.

use super::bootstrap::socket;
use super::hcm::build_hcm;
use super::types::*;
use super::{CLIENT_CA_FILE, Ctx, LISTENER_NAME, SERVER_CERT_FILE, SERVER_KEY_FILE};
use crate::api::{ClientCertificate, TlsVersion};
use crate::render::RenderError;

fn tls_version(v: TlsVersion) -> &'static str {
    match v {
        TlsVersion::Tls10 => "TLSv1_0",
        TlsVersion::Tls11 => "TLSv1_1",
        TlsVersion::Tls12 => "TLSv1_2",
        TlsVersion::Tls13 => "TLSv1_3",
    }
}

pub(super) fn build_listener(ctx: &Ctx<'_>) -> Result<Listener, RenderError> {
    let o = ctx.opts();
    let tls = ctx.spec.tls();
    let transport_socket = if tls.is_disabled() {
        None
    } else {
        if tls.min_version < TlsVersion::Tls12 {
            return Err(ctx.invalid(
                "spec.tls.minVersion",
                "TLS versions below TLSv1_2 are insecure (APG006)",
            ));
        }
        let mode = ctx.client_cert_mode();
        let validation_context =
            (mode != ClientCertificate::None).then(|| CertificateValidationContext {
                trusted_ca: DataSource::file(ctx.config_path(CLIENT_CA_FILE)),
                match_typed_subject_alt_names: ctx
                    .allowed_clients()
                    .iter()
                    .map(|c| SubjectAltNameMatcher {
                        san_type: "URI",
                        matcher: StringMatcher::exact(c),
                    })
                    .collect(),
            });
        Some(TransportSocket {
            name: "envoy.transport_sockets.tls",
            typed_config: Any::DownstreamTlsContext(Box::new(DownstreamTlsContext {
                common_tls_context: CommonTlsContext {
                    tls_params: TlsParameters {
                        tls_minimum_protocol_version: tls_version(tls.min_version),
                        tls_maximum_protocol_version: "TLSv1_3",
                    },
                    tls_certificates: vec![TlsCertificate {
                        certificate_chain: DataSource::file(ctx.config_path(SERVER_CERT_FILE)),
                        private_key: DataSource::file(ctx.secret_path(SERVER_KEY_FILE)),
                    }],
                    validation_context,
                    alpn_protocols: vec!["h2", "http/1.1"],
                },
                require_client_certificate: mode == ClientCertificate::Required,
            })),
        })
    };
    let hcm = build_hcm(ctx)?;
    Ok(Listener {
        metadata: None,
        name: LISTENER_NAME.into(),
        address: socket(&o.listen_address, o.listen_port),
        filter_chains: vec![FilterChain {
            filters: vec![NetworkFilter {
                name: "envoy.filters.network.http_connection_manager",
                typed_config: Any::HttpConnectionManager(Box::new(hcm)),
            }],
            transport_socket,
        }],
    })
}
