//! The HTTPS accept loop: TLS handshakes (rustls), HTTP/1.1 and HTTP/2 (hyper), graceful
//! shutdown that stops accepting and lets in-flight requests finish. The certificate comes
//! from a resolver of `crate::certs`. With client authentication
//! ([`server_config_with_client_auth`]), a presented client certificate is verified during the
//! handshake and its SPIFFE ID reaches every request of the connection as a [`PeerIdentity`]
//! extension.

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rustls::ServerConfig;
use rustls::server::ResolvesServerCert;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::certs::{SwappableClientRoots, TlsError, provider, spiffe_id_of};

/// Time a client gets to complete the TLS handshake, and to send request headers.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The webhook's TLS configuration: TLS 1.3 and 1.2 only (ring), HTTP/2 and HTTP/1.1 by
/// ALPN, the certificate from `resolver`.
pub fn server_config(resolver: Arc<dyn ResolvesServerCert>) -> Result<ServerConfig, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// [`server_config`] that also asks for a client certificate: optional (the apiserver sends
/// none), verified against `client_roots` when presented.
pub fn server_config_with_client_auth(
    resolver: Arc<dyn ResolvesServerCert>,
    client_roots: Arc<SwappableClientRoots>,
) -> Result<ServerConfig, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(client_roots)
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Who is at the other end of a connection, as its verified client certificate says: an
/// extension of every request (none presented: both fields empty).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerIdentity {
    /// A client certificate was presented (and verified: an unverified one fails the
    /// handshake).
    pub certificate: bool,
    /// Its SPIFFE ID, when it has exactly one `spiffe://` URI SAN.
    pub spiffe_id: Option<String>,
}

impl PeerIdentity {
    fn of(certificates: Option<&[rustls::pki_types::CertificateDer<'_>]>) -> Self {
        match certificates.and_then(|c| c.first()) {
            Some(leaf) => PeerIdentity {
                certificate: true,
                spiffe_id: spiffe_id_of(leaf),
            },
            None => PeerIdentity::default(),
        }
    }
}

/// Serve `app` over TLS on `listener` until `shutdown` completes, then stop accepting, ask
/// every open connection to close after its in-flight requests, and wait for them for at
/// most `drain`.
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    app: Router,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) {
    let acceptor = TlsAcceptor::from(tls);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = connections.join_next() => {}
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        // Usually EMFILE/ECONNABORTED: transient; back off instead of spinning.
                        tracing::warn!(error = %e, "accepting a webhook connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                connections.spawn(serve_connection(
                    tcp,
                    peer,
                    acceptor.clone(),
                    app.clone(),
                    stop_rx.clone(),
                ));
            }
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let open = connections.len();
    if open > 0 {
        tracing::info!(open, "webhook draining open connections");
    }
    let drained = tokio::time::timeout(drain, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            remaining = connections.len(),
            "webhook drain timeout; closing remaining connections"
        );
        connections.shutdown().await;
    }
}

async fn serve_connection(
    tcp: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    acceptor: TlsAcceptor,
    app: Router,
    mut stop: watch::Receiver<bool>,
) {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "webhook TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "webhook TLS handshake timed out");
            return;
        }
    };
    let peer_identity = PeerIdentity::of(tls.get_ref().1.peer_certificates());
    let app = app.map_request(move |mut request: hyper::Request<hyper::body::Incoming>| {
        request.extensions_mut().insert(peer_identity.clone());
        request
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HANDSHAKE_TIMEOUT);
    let conn = builder.serve_connection(TokioIo::new(tls), TowerToHyperService::new(app));
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(e) = res {
                tracing::debug!(%peer, error = %e, "webhook connection ended with an error");
            }
        }
        _ = async { let _ = stop.wait_for(|stopped| *stopped).await; } => {
            conn.as_mut().graceful_shutdown();
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "webhook connection ended with an error while draining");
            }
        }
    }
}
