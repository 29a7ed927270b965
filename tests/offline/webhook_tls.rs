//! The webhook over real TLS on 127.0.0.1: a client that trusts only the test CA posts
//! AdmissionReviews; the serving certificate is rotated on disk the way the kubelet updates a
//! Secret volume; shutdown drains in-flight requests.

use crate::support::webhook::*;
use apiguard::certs::ReloadingCert;
use apiguard::rules::AdmissionMode;
use apiguard::webhook::server::serve_tls;
use apiguard::webhook::server::server_config;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Bytes, Frame};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_stream_shim::ReceiverStream;

/// Minimal `Stream` over an mpsc receiver (tokio-stream is not a dependency).
mod tokio_stream_shim {
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tokio::sync::mpsc;

    pub struct ReceiverStream<T>(pub mpsc::Receiver<T>);

    impl<T> futures::Stream for ReceiverStream<T> {
        type Item = T;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
            self.0.poll_recv(cx)
        }
    }
}

struct Server {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    done: tokio::task::JoinHandle<()>,
    reloading: Arc<ReloadingCert>,
}

async fn start(dir: &std::path::Path, drain: Duration) -> Server {
    let reloading = Arc::new(
        ReloadingCert::load(dir.join("tls.crt"), dir.join("tls.key")).expect("load certificate"),
    );
    let tls = Arc::new(server_config(reloading.clone()).expect("TLS config"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stop_rx) = watch::channel(false);
    {
        let mut rx = stop_rx.clone();
        tokio::spawn(
            reloading
                .clone()
                .watch(Duration::from_millis(50), async move {
                    let _ = rx.wait_for(|s| *s).await;
                }),
        );
    }
    let mut rx = stop_rx;
    let done = tokio::spawn(serve_tls(
        listener,
        tls,
        app(AdmissionMode::Enforce),
        async move {
            let _ = rx.wait_for(|s| *s).await;
        },
        drain,
    ));
    Server {
        addr,
        stop,
        done,
        reloading,
    }
}

fn ingress_review(uid: &str) -> String {
    review("CREATE", &cors_ingress(None), uid, false).to_string()
}

/// A request body the test feeds piece by piece: the request stays in flight until `finish`.
fn slow_body() -> (mpsc::Sender<Result<Frame<Bytes>, Infallible>>, ClientBody) {
    let (tx, rx) = mpsc::channel(4);
    (tx, StreamBody::new(ReceiverStream(rx)).boxed())
}

#[tokio::test]
async fn tls_client_gets_a_denial_naming_apg001() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    let (cert, key) = pki.leaf(1);
    write_secret_volume(dir.path(), 1, &cert, &key);
    let server = start(dir.path(), Duration::from_secs(5)).await;

    let mut client = TlsClient::connect(server.addr, pki.client_config()).await;
    let (status, answer) = client.validate(full(ingress_review("tls-1"))).await;
    assert_eq!(status, 200, "{answer}");
    let response = &answer["response"];
    assert_eq!(response["uid"], "tls-1");
    assert_eq!(response["allowed"], false, "{answer}");
    assert_eq!(response["status"]["code"], 403);
    assert!(
        response["status"]["message"]
            .as_str()
            .unwrap()
            .contains("APG001"),
        "{answer}"
    );

    // The same Ingress with a reasoned exemption, on the same keep-alive connection.
    let exempt = review(
        "CREATE",
        &cors_ingress(Some("fonts only, no credentials")),
        "tls-2",
        false,
    );
    let (status, answer) = client.validate(full(exempt.to_string())).await;
    assert_eq!(status, 200);
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
    assert!(
        answer["response"]["warnings"][0]
            .as_str()
            .unwrap()
            .contains("APG001"),
        "{answer}"
    );

    let _ = server.stop.send(true);
    tokio::time::timeout(Duration::from_secs(10), server.done)
        .await
        .expect("server stops")
        .unwrap();
}

#[tokio::test]
async fn client_that_does_not_trust_the_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    let (cert, key) = pki.leaf(1);
    write_secret_volume(dir.path(), 1, &cert, &key);
    let server = start(dir.path(), Duration::from_secs(5)).await;
    let other = TestPki::new();
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(other.client_config());
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    assert!(connector.connect(name, tcp).await.is_err());
    let _ = server.stop.send(true);
}

#[tokio::test]
async fn rotated_certificate_is_served_to_new_connections_without_dropping_open_ones() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    let (cert1, key1) = pki.leaf(0x1001);
    write_secret_volume(dir.path(), 1, &cert1, &key1);
    let server = start(dir.path(), Duration::from_secs(5)).await;

    let mut before = TlsClient::connect(server.addr, pki.client_config()).await;
    assert_eq!(serial_of(&before.server_cert), vec![0x10, 0x01]);
    let (status, _) = before.validate(full(ingress_review("r-1"))).await;
    assert_eq!(status, 200);

    // A request in flight across the rotation: headers and half of the body now, the rest
    // after the new certificate is in force.
    let mut in_flight = TlsClient::connect(server.addr, pki.client_config()).await;
    let body = ingress_review("r-inflight");
    let (half1, half2) = body.split_at(body.len() / 2);
    let (tx, slow) = slow_body();
    in_flight.sender.ready().await.unwrap();
    let pending = tokio::spawn(in_flight.sender.send_request(validate_request(slow)));
    tx.send(Ok(Frame::data(Bytes::from(half1.to_owned()))))
        .await
        .unwrap();

    // Rotate: new key and certificate, swapped in by the ..data symlink like the kubelet does.
    let (cert2, key2) = pki.leaf(0x2002);
    write_secret_volume(dir.path(), 2, &cert2, &key2);

    let mut rotated = None;
    for _ in 0..100 {
        let probe = TlsClient::connect(server.addr, pki.client_config()).await;
        if serial_of(&probe.server_cert) == vec![0x20, 0x02] {
            rotated = Some(probe);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut after = rotated.expect("new connections get the rotated certificate within 5 s");
    assert_eq!(
        serial_of(&server.reloading.current().cert[0]),
        vec![0x20, 0x02]
    );
    let (status, answer) = after.validate(full(ingress_review("r-2"))).await;
    assert_eq!(
        (status, &answer["response"]["allowed"]),
        (200, &false.into())
    );

    // The in-flight request completes on its old connection.
    tx.send(Ok(Frame::data(Bytes::from(half2.to_owned()))))
        .await
        .unwrap();
    drop(tx);
    let resp = tokio::time::timeout(Duration::from_secs(5), pending)
        .await
        .expect("in-flight request answered")
        .unwrap()
        .expect("in-flight request not dropped");
    assert_eq!(resp.status(), 200);
    let answer: serde_json::Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(answer["response"]["uid"], "r-inflight");

    // The keep-alive connection opened before the rotation still works, with its old certificate.
    assert_eq!(serial_of(&before.server_cert), vec![0x10, 0x01]);
    let (status, answer) = before.validate(full(ingress_review("r-3"))).await;
    assert_eq!(status, 200);
    assert_eq!(answer["response"]["uid"], "r-3");

    let _ = server.stop.send(true);
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests_and_stops_accepting() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    let (cert, key) = pki.leaf(7);
    write_secret_volume(dir.path(), 1, &cert, &key);
    let server = start(dir.path(), Duration::from_secs(5)).await;

    let mut client = TlsClient::connect(server.addr, pki.client_config()).await;
    let body = ingress_review("drain-1");
    let (half1, half2) = body.split_at(10);
    let (tx, slow) = slow_body();
    client.sender.ready().await.unwrap();
    let pending = tokio::spawn(client.sender.send_request(validate_request(slow)));
    tx.send(Ok(Frame::data(Bytes::from(half1.to_owned()))))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let _ = server.stop.send(true);
    // New connections are refused once the listener is closed.
    let mut refused = false;
    for _ in 0..50 {
        if tokio::net::TcpStream::connect(server.addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "listener still accepting after shutdown");

    tx.send(Ok(Frame::data(Bytes::from(half2.to_owned()))))
        .await
        .unwrap();
    drop(tx);
    let resp = tokio::time::timeout(Duration::from_secs(5), pending)
        .await
        .expect("in-flight request answered during drain")
        .unwrap()
        .expect("in-flight request not dropped");
    assert_eq!(resp.status(), 200);
    let answer: serde_json::Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(answer["response"]["allowed"], false);
    tokio::time::timeout(Duration::from_secs(10), server.done)
        .await
        .expect("server finishes draining")
        .unwrap();
}

#[tokio::test]
async fn http2_clients_are_served_with_concurrent_streams() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    let (cert, key) = pki.leaf(3);
    write_secret_volume(dir.path(), 1, &cert, &key);
    let server = start(dir.path(), Duration::from_secs(5)).await;

    let mut config = (*pki.client_config()).clone();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let mut pending = Vec::new();
    for i in 0..8 {
        let mut sender = sender.clone();
        let body = full(ingress_review(&format!("h2-{i}")));
        pending.push(tokio::spawn(async move {
            let req = hyper::Request::post("https://localhost/validate")
                .header("content-type", "application/json")
                .body(body)
                .unwrap();
            let resp = sender.send_request(req).await.unwrap();
            assert_eq!(resp.status(), 200);
            let answer: serde_json::Value =
                serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes())
                    .unwrap();
            assert_eq!(answer["response"]["uid"], format!("h2-{i}"));
            assert_eq!(answer["response"]["allowed"], false);
        }));
    }
    for p in pending {
        tokio::time::timeout(Duration::from_secs(5), p)
            .await
            .expect("answered")
            .unwrap();
    }
    let _ = server.stop.send(true);
    tokio::time::timeout(Duration::from_secs(10), server.done)
        .await
        .expect("server stops with an idle HTTP/2 connection open")
        .unwrap();
}
