//! Webhook test support: AdmissionReview bodies, realistic objects, a test PKI (rcgen) and a
//! TLS HTTP client (tokio-rustls + hyper). Included by the `webhook_*` tests and the webhook
//! benchmark (through `support/mod.rs`).
#![allow(dead_code)]

use apiguard::admin::AdmissionMetrics;
use apiguard::rules::{AdmissionMode, EngineConfig, InMemoryView};
use apiguard::webhook::{Admission, Limits, router};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

pub const CORS_ANNOTATION: &str = "nginx.ingress.kubernetes.io/enable-cors";

/// An Ingress that is secure except for ingress-nginx CORS enabled without an origin (APG001).
pub fn cors_ingress(exempt: Option<&str>) -> Value {
    let mut annotations = json!({
        CORS_ANNOTATION: "true",
        "nginx.ingress.kubernetes.io/auth-url": "https://auth.shop.example/verify",
    });
    if let Some(reason) = exempt {
        annotations["apiguard.dev/exempt"] = Value::String(format!("APG001={reason}"));
    }
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": "web", "namespace": "shop", "annotations": annotations},
        "spec": {
            "ingressClassName": "nginx",
            "tls": [{"hosts": ["web.shop.example"], "secretName": "web-tls"}],
            "rules": [{
                "host": "web.shop.example",
                "http": {"paths": [{
                    "path": "/", "pathType": "Prefix",
                    "backend": {"service": {"name": "web", "port": {"number": 80}}}
                }]}
            }]
        }
    })
}

/// A plain ClusterIP Service: nothing to find.
pub fn clean_service() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
        "spec": {"type": "ClusterIP", "selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
    })
}

/// An HTTPRoute deliberately marked public.
pub fn http_route() -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {
            "name": "status", "namespace": "shop",
            "annotations": {"apiguard.dev/public": "public status page, no user data"}
        },
        "spec": {
            "parentRefs": [{"name": "public-gw", "namespace": "gateways", "sectionName": "https"}],
            "hostnames": ["status.shop.example"],
            "rules": [{
                "matches": [{"path": {"type": "PathPrefix", "value": "/status"}}],
                "backendRefs": [{"name": "status", "port": 8080}]
            }]
        }
    })
}

/// A Deployment with a realistic pod template (env vars are checked for CORS wildcards).
pub fn deployment() -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "orders", "namespace": "shop", "labels": {"app": "orders"}},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "orders"}},
            "template": {
                "metadata": {"labels": {"app": "orders", "version": "v2"}},
                "spec": {
                    "serviceAccountName": "orders",
                    "containers": [{
                        "name": "orders",
                        "image": "registry.example/shop/orders:2.4.1",
                        "ports": [{"name": "http", "containerPort": 8080}],
                        "env": [
                            {"name": "CORS_ALLOWED_ORIGINS", "value": "https://shop.example"},
                            {"name": "DATABASE_URL", "valueFrom": {"secretKeyRef": {"name": "orders-db", "key": "url"}}},
                            {"name": "LOG_LEVEL", "value": "info"}
                        ],
                        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
                        "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}}
                    }]
                }
            }
        }
    })
}

/// A complete Public ApiSecurityPolicy (docs/api.md).
pub fn policy() -> Value {
    json!({
        "apiVersion": "apiguard.dev/v1alpha1",
        "kind": "ApiSecurityPolicy",
        "metadata": {"name": "payments", "namespace": "shop"},
        "spec": {
            "target": {"service": "payments", "port": 8080},
            "exposure": "Public",
            "hosts": ["payments.shop.example"],
            "mode": "Enforce",
            "tls": {"minVersion": "TLSv1_3"},
            "authentication": {
                "required": true,
                "jwt": {"providers": [{
                    "name": "corp",
                    "issuer": "https://idp.example.com/",
                    "audiences": ["payments-api"],
                    "jwks": {"uri": "https://idp.example.com/.well-known/jwks.json", "cacheDuration": "5m"},
                    "clockSkew": "30s",
                    "maxLifetime": "1h",
                    "forwardClaims": [{"claim": "sub", "header": "x-user-id"}]
                }]}
            },
            "authorization": {
                "defaultAction": "Deny",
                "rules": [
                    {
                        "name": "read-own-orders",
                        "match": {"methods": ["GET"], "paths": ["/users/{userId}/orders"]},
                        "allow": {"scopes": ["orders:read"], "claims": [{"name": "role", "values": ["customer", "support"]}]},
                        "ownership": {"pathParam": "userId", "claim": "sub"}
                    },
                    {"name": "pay", "match": {"methods": ["POST"], "paths": ["/payments"]}, "allow": {"scopes": ["payments:write"]}},
                    {"name": "health", "match": {"methods": ["GET"], "paths": ["/healthz"]}, "public": true}
                ]
            },
            "cors": {
                "allowOrigins": ["https://shop.example", "https://*.shop.example"],
                "allowMethods": ["GET", "POST"],
                "allowHeaders": ["authorization", "content-type"],
                "allowCredentials": true,
                "maxAge": "10m"
            },
            "rateLimits": [{"name": "payments", "match": {"methods": ["POST"], "paths": ["/payments"]}, "limit": {"requests": 5, "per": "Minute"}, "by": {"claim": "sub"}}],
            "requestValidation": {"maxBodyBytes": 1048576, "allowedContentTypes": ["application/json"], "rejectUndeclaredRoutes": true},
            "eastWest": {"mtls": "Strict", "allowedCallers": [{"serviceAccount": "checkout", "namespace": "shop"}]},
            "network": {"isolation": "Strict", "denyMetadataEgress": true},
            "audit": {"accessLog": true, "includeClaims": ["sub", "client_id"]}
        }
    })
}

fn plural(kind: &str) -> String {
    match kind {
        "Ingress" => "ingresses".to_owned(),
        "ApiSecurityPolicy" => "apisecuritypolicies".to_owned(),
        k => format!("{}s", k.to_ascii_lowercase()),
    }
}

/// An `admission.k8s.io/v1` AdmissionReview for `object` (for DELETE the object is the
/// `oldObject`, as the apiserver sends it).
pub fn review(operation: &str, object: &Value, uid: &str, dry_run: bool) -> Value {
    let api_version = object["apiVersion"].as_str().unwrap_or("v1");
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let kind = object["kind"].as_str().unwrap_or("");
    let delete = operation == "DELETE";
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": group, "version": version, "kind": kind},
            "resource": {"group": group, "version": version, "resource": plural(kind)},
            "name": object["metadata"]["name"],
            "namespace": object["metadata"]["namespace"],
            "operation": operation,
            "userInfo": {"username": "alice@example.com", "groups": ["system:authenticated"]},
            "object": if delete { Value::Null } else { object.clone() },
            "oldObject": if delete || operation == "UPDATE" { object.clone() } else { Value::Null },
            "dryRun": dry_run,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": if delete { "DeleteOptions" } else { "CreateOptions" }}
        }
    })
}

/// An Admission over an empty in-memory cluster view.
pub fn admission(mode: AdmissionMode, metrics: AdmissionMetrics) -> Arc<Admission> {
    let config = EngineConfig {
        mode,
        ..EngineConfig::default()
    };
    Arc::new(Admission::new(
        Arc::new(InMemoryView::new()),
        config,
        metrics,
    ))
}

/// The webhook router over an empty view, default limits.
pub fn app(mode: AdmissionMode) -> axum::Router {
    router(
        admission(mode, AdmissionMetrics::unregistered()),
        Limits::default(),
    )
}

/// A CA and leaf certificates for `localhost` / 127.0.0.1.
pub struct TestPki {
    pub ca: rcgen::Certificate,
    pub ca_key: rcgen::KeyPair,
    pub ca_params: rcgen::CertificateParams,
}

impl TestPki {
    pub fn new() -> Self {
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "apiguard test CA");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca = ca_params.clone().self_signed(&ca_key).expect("CA cert");
        Self {
            ca,
            ca_key,
            ca_params,
        }
    }

    /// A serving certificate (PEM cert, PEM key) with the given serial number.
    pub fn leaf(&self, serial: u64) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("leaf key");
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("leaf params");
        params.subject_alt_names.push(rcgen::SanType::IpAddress(
            std::net::Ipv4Addr::LOCALHOST.into(),
        ));
        params.serial_number = Some(rcgen::SerialNumber::from(serial));
        let issuer = rcgen::Issuer::from_params(&self.ca_params, &self.ca_key);
        let cert = params.signed_by(&key, &issuer).expect("leaf cert");
        (cert.pem(), key.serialize_pem())
    }

    /// A rustls client configuration that trusts only this CA.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.ca.der().clone())
            .expect("CA into root store");
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

/// Write `cert`/`key` the way the kubelet projects a Secret volume: `tls.crt` and `tls.key`
/// are symlinks through `..data`, itself a symlink to a timestamped directory that is
/// replaced atomically (rename of a new `..data` link) on update.
pub fn write_secret_volume(dir: &Path, generation: u32, cert: &str, key: &str) {
    let data = dir.join(format!("..gen_{generation}"));
    std::fs::create_dir_all(&data).expect("data dir");
    std::fs::write(data.join("tls.crt"), cert).expect("write cert");
    std::fs::write(data.join("tls.key"), key).expect("write key");
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(format!("..gen_{generation}"), &tmp).expect("symlink");
    std::fs::rename(&tmp, dir.join("..data")).expect("swap ..data");
    for file in ["tls.crt", "tls.key"] {
        let link = dir.join(file);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{file}"), &link).expect("file symlink");
        }
    }
}

pub type ClientBody = BoxBody<Bytes, Infallible>;

pub fn full(body: impl Into<Bytes>) -> ClientBody {
    Full::new(body.into()).boxed()
}

/// An HTTP/1.1 keep-alive connection over TLS to the webhook.
pub struct TlsClient {
    pub sender: http1::SendRequest<ClientBody>,
    /// DER of the certificate the server presented on this connection.
    pub server_cert: Vec<u8>,
}

impl TlsClient {
    pub async fn connect(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> Self {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .expect("TCP connect");
        tcp.set_nodelay(true).expect("nodelay");
        let connector = tokio_rustls::TlsConnector::from(config);
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("server name");
        let tls = connector.connect(name, tcp).await.expect("TLS handshake");
        let server_cert = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .expect("server certificate")
            .to_vec();
        let (sender, conn) = http1::handshake(TokioIo::new(tls))
            .await
            .expect("HTTP/1.1 handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Self {
            sender,
            server_cert,
        }
    }

    /// POST `body` to `/validate`; the status and the JSON answer.
    pub async fn validate(&mut self, body: ClientBody) -> (u16, Value) {
        self.sender.ready().await.expect("connection ready");
        let resp = self
            .sender
            .send_request(validate_request(body))
            .await
            .expect("response");
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        (status, serde_json::from_slice(&bytes).expect("JSON answer"))
    }
}

pub fn validate_request(body: ClientBody) -> hyper::Request<ClientBody> {
    hyper::Request::post("/validate")
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(body)
        .expect("request")
}

/// The serial number of a DER certificate, as a big-endian byte string without leading zeros.
pub fn serial_of(der: &[u8]) -> Vec<u8> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).expect("parse certificate");
    let raw = cert.raw_serial();
    let start = raw.iter().position(|b| *b != 0).unwrap_or(raw.len());
    raw[start..].to_vec()
}

/// A mocked apiserver for the webhook's reflectors: discovery (`/apis`), list and watch of
/// ApiSecurityPolicies (one policy, `shop/payments`), Services (`shop/payments`) and, when
/// `with_envoy_gateway`, Envoy Gateway SecurityPolicies (`shop/jwt`). Watches stay open with
/// no events. The Service list is answered only once `services_gate` is notified.
#[derive(Clone)]
pub struct MockApiserver {
    pub with_envoy_gateway: bool,
    /// Paths requested that the mock does not know (tests assert it stays empty).
    pub unknown: Arc<std::sync::Mutex<Vec<String>>>,
    pub services_gate: Arc<tokio::sync::Notify>,
}

pub fn mock_security_policy() -> Value {
    json!({
        "apiVersion": "gateway.envoyproxy.io/v1alpha1",
        "kind": "SecurityPolicy",
        "metadata": {"name": "jwt", "namespace": "shop", "resourceVersion": "5"},
        "spec": {"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "status"}],
                 "jwt": {"providers": [{"name": "corp", "remoteJWKS": {"uri": "https://idp.example.com/jwks"}}]}}
    })
}

fn mock_list(api_version: &str, kind: &str, items: Vec<Value>) -> Value {
    json!({"apiVersion": api_version, "kind": format!("{kind}List"), "metadata": {"resourceVersion": "100"}, "items": items})
}

fn mock_json(status: u16, body: &Value) -> axum::response::Response {
    axum::response::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(axum::body::Body::from(body.to_string()))
        .expect("response")
}

impl MockApiserver {
    pub fn new(with_envoy_gateway: bool) -> Self {
        Self {
            with_envoy_gateway,
            unknown: Arc::default(),
            services_gate: Arc::default(),
        }
    }

    /// Let the Service list through (for tests that do not test sync gating).
    pub fn open(self) -> Self {
        self.services_gate.notify_one();
        self
    }

    pub fn router(&self) -> axum::Router {
        let mock = self.clone();
        axum::Router::new().fallback(move |req: axum::extract::Request| {
            let mock = mock.clone();
            async move { mock.answer(req).await }
        })
    }

    async fn answer(&self, req: axum::extract::Request) -> axum::response::Response {
        let path = req.uri().path().to_owned();
        if req.uri().query().unwrap_or("").contains("watch=true") {
            // An open watch with no events: the body never ends.
            let pending = futures::stream::pending::<Result<Bytes, Infallible>>();
            return axum::response::Response::builder()
                .status(200)
                .header("content-type", "application/json")
                .body(axum::body::Body::from_stream(pending))
                .expect("response");
        }
        let eg = self.with_envoy_gateway;
        match path.as_str() {
            "/apis" => {
                let groups = if eg {
                    vec![json!({"name": "gateway.envoyproxy.io",
                                "versions": [{"groupVersion": "gateway.envoyproxy.io/v1alpha1", "version": "v1alpha1"}],
                                "preferredVersion": {"groupVersion": "gateway.envoyproxy.io/v1alpha1", "version": "v1alpha1"}})]
                } else {
                    vec![]
                };
                mock_json(
                    200,
                    &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
                )
            }
            "/apis/gateway.envoyproxy.io/v1alpha1" if eg => mock_json(
                200,
                &json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "gateway.envoyproxy.io/v1alpha1",
                        "resources": [{"name": "securitypolicies", "singularName": "securitypolicy", "namespaced": true,
                                       "kind": "SecurityPolicy", "verbs": ["get", "list", "watch"]}]}),
            ),
            "/apis/gateway.envoyproxy.io/v1alpha1/securitypolicies" if eg => mock_json(
                200,
                &mock_list(
                    "gateway.envoyproxy.io/v1alpha1",
                    "SecurityPolicy",
                    vec![mock_security_policy()],
                ),
            ),
            "/apis/apiguard.dev/v1alpha1/apisecuritypolicies" => {
                let mut policy = policy();
                policy["metadata"]["resourceVersion"] = json!("7");
                mock_json(
                    200,
                    &mock_list("apiguard.dev/v1alpha1", "ApiSecurityPolicy", vec![policy]),
                )
            }
            "/api/v1/services" => {
                self.services_gate.notified().await;
                // Let later lists (re-lists after a watch ends) through too.
                self.services_gate.notify_one();
                mock_json(
                    200,
                    &mock_list(
                        "v1",
                        "Service",
                        vec![json!({"apiVersion": "v1", "kind": "Service",
                                    "metadata": {"name": "payments", "namespace": "shop", "resourceVersion": "9"},
                                    "spec": {"selector": {"app": "payments"}, "ports": [{"port": 8080}]}})],
                    ),
                )
            }
            other => {
                self.unknown.lock().expect("lock").push(other.to_owned());
                mock_json(
                    404,
                    &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
                            "message": format!("mock apiserver: no {other}")}),
                )
            }
        }
    }
}

/// A loopback address nothing listens on right now.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], super::tools::free_port()))
}

/// Plain HTTP GET (the admin server); `None` when the connection fails.
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use http_body_util::BodyExt;
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .ok()?;
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header("host", "localhost")
        .body(full(""))
        .unwrap();
    let resp = sender.send_request(req).await.ok()?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}
