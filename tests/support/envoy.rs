//! Real-Envoy test support: a gateway rendered by `apiguard render --envoy-dir` and served by
//! the real Envoy binary on 127.0.0.1 (free ports, bounded waits, killed on drop), an echo
//! upstream (plain or mTLS) that answers with the request it got as JSON, a minimal HTTP/1.1
//! client over TLS, and an ES256 token issuer.

use super::tools::tool;
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, SigningKey};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};

/// Host name the test gateways serve (in the policy's `hosts` and the server certificate).
pub const HOST: &str = "api.test.example";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

// ---------------------------------------------------------------- upstream

/// The echo upstream: every request is answered 200 with `{method, path, headers, body_len}`.
pub struct Upstream {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn echo(req: axum::extract::Request) -> axum::Json<Value> {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 16 * 1024 * 1024)
        .await
        .unwrap_or_default();
    let mut headers = BTreeMap::<String, Vec<String>>::new();
    for (k, v) in &parts.headers {
        headers
            .entry(k.as_str().to_string())
            .or_default()
            .push(v.to_str().unwrap_or("").to_string());
    }
    axum::Json(json!({
        "method": parts.method.as_str(),
        "path": parts.uri.to_string(),
        "headers": headers,
        "body_len": body.len(),
    }))
}

fn echo_router() -> axum::Router {
    axum::Router::new().fallback(echo)
}

/// A plaintext echo upstream on 127.0.0.1.
pub async fn echo_upstream() -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("upstream addr");
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, echo_router()).await;
    });
    Upstream { addr, task }
}

/// An echo upstream that requires a client certificate chaining to `client_ca_pem`.
pub async fn echo_upstream_mtls(cert_pem: &str, key_pem: &str, client_ca_pem: &str) -> Upstream {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(client_ca_pem.as_bytes()) {
        roots.add(c.expect("client CA PEM")).expect("add client CA");
    }
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .expect("client verifier");
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("server cert PEM");
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("server key PEM");
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("upstream addr");
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper_util::service::TowerToHyperService::new(echo_router());
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                .await;
            });
        }
    });
    Upstream { addr, task }
}

// ---------------------------------------------------------------- gateway

/// A rendered gateway served by a real Envoy.
pub struct Gateway {
    pub dir: tempfile::TempDir,
    pub ca_dir: PathBuf,
    pub port: u16,
    pub admin_port: u16,
    pub upstream: SocketAddr,
    /// More `apiguard render` arguments, given at every (re-)render (`--sensor-addr ADDR`).
    pub render_args: Vec<String>,
    child: Child,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The files `apiguard render --envoy-dir` wrote to `dir` (without `ca.crt` and dotfiles), as
/// the renderer returned them.
pub fn read_rendered_dir(dir: &Path) -> apiguard::render::RenderedGateway {
    let mut files = BTreeMap::new();
    for e in std::fs::read_dir(dir).expect("envoy dir") {
        let e = e.expect("entry");
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || name == "ca.crt" {
            continue;
        }
        let contents = std::fs::read_to_string(e.path()).expect("read file");
        let secret = name.ends_with(".key");
        files.insert(name, apiguard::render::RenderedFile { contents, secret });
    }
    apiguard::render::RenderedGateway::new(files)
}

/// `envoy --mode validate` of `bootstrap`: whether Envoy accepts it, and what it printed.
pub fn envoy_validate(bootstrap: &Path) -> (bool, String) {
    let out = Command::new(tool("envoy"))
        .args(["--mode", "validate", "--disable-hot-restart", "-c"])
        .arg(bootstrap)
        .output()
        .expect("run envoy --mode validate");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Runs `apiguard render` (the real binary) with `args`; panics with its stderr on failure.
pub fn apiguard_render(args: &[&str]) -> String {
    // `APIGUARD_RENDER_BIN`: render with another apiguard build (benches/render.rs compares
    // the filter chain of an earlier build with this one's).
    let bin = std::env::var_os("APIGUARD_RENDER_BIN")
        .filter(|b| !b.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_apiguard")));
    let out = Command::new(bin)
        .arg("render")
        .args(args)
        .output()
        .expect("run apiguard render");
    assert!(
        out.status.success(),
        "apiguard render {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

impl Gateway {
    /// Renders `manifests` (policy + Service + Secrets) into a fresh directory and starts Envoy.
    pub async fn start(manifests: &str, upstream: SocketAddr) -> Gateway {
        Self::start_with_ca(manifests, upstream, None).await
    }

    /// Like [`Gateway::start`], issuing certificates from the CA in `ca_dir` (`ca.crt`, `ca.key`).
    pub async fn start_with_ca(
        manifests: &str,
        upstream: SocketAddr,
        ca_dir: Option<PathBuf>,
    ) -> Gateway {
        Self::start_with_args(manifests, upstream, ca_dir, Vec::new()).await
    }

    /// Like [`Gateway::start_with_ca`], giving `render_args` to `apiguard render` (now and at
    /// every [`Gateway::render`]).
    pub async fn start_with_args(
        manifests: &str,
        upstream: SocketAddr,
        ca_dir: Option<PathBuf>,
        render_args: Vec<String>,
    ) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_dir = ca_dir.unwrap_or_else(|| dir.path().join("ca"));
        let port = super::tools::free_port();
        let admin_port = super::tools::free_port();
        render_into(
            dir.path(),
            &ca_dir,
            port,
            admin_port,
            upstream,
            manifests,
            &render_args,
        );
        let log = std::fs::File::create(dir.path().join("envoy.log")).expect("envoy log");
        let child = Command::new(tool("envoy"))
            .arg("-c")
            .arg(dir.path().join("envoy").join("bootstrap.yaml"))
            .args([
                "--disable-hot-restart",
                "--concurrency",
                "1",
                "--log-level",
                "info",
            ])
            .args(["--base-id", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start envoy");
        let mut g = Gateway {
            dir,
            ca_dir,
            port,
            admin_port,
            upstream,
            render_args,
            child,
        };
        g.wait_ready().await;
        g
    }

    pub fn envoy_dir(&self) -> PathBuf {
        self.dir.path().join("envoy")
    }

    pub fn access_log_path(&self) -> PathBuf {
        self.dir.path().join("access.log")
    }

    /// (Re-)renders `manifests` into the watched directory.
    pub fn render(&self, manifests: &str) {
        render_into(
            self.dir.path(),
            &self.ca_dir,
            self.port,
            self.admin_port,
            self.upstream,
            manifests,
            &self.render_args,
        );
    }

    /// Envoy's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether Envoy is still running (it has not exited).
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn envoy_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("envoy.log")).unwrap_or_default()
    }

    /// Admin GET; None when the admin port does not answer.
    pub async fn admin_get(&self, path: &str) -> Option<(u16, String)> {
        let addr: SocketAddr = ([127, 0, 0, 1], self.admin_port).into();
        let r = raw_request(addr, None, None, &Request::get(path).host("localhost")).await;
        r.ok().map(|r| (r.status, r.text()))
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("envoy exited with {status}:\n{}", self.envoy_log());
            }
            if let Some((200, body)) = self.admin_get("/ready").await
                && body.trim() == "LIVE"
                && self.listener_up().await
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "envoy not ready within 30s:\n{}",
                self.envoy_log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn listener_up(&self) -> bool {
        tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_ok()
    }

    /// Total of a counter from the admin `/stats`, 0 if absent.
    pub async fn counter(&self, name: &str) -> u64 {
        let Some((_, body)) = self.admin_get(&format!("/stats?filter=^{name}$")).await else {
            return 0;
        };
        body.lines()
            .filter_map(|l| l.split_once(": "))
            .filter(|(k, _)| *k == name)
            .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
            .sum()
    }

    /// Waits (bounded) until a listener update counter grows past `before`.
    pub async fn wait_listener_update(&self, before: u64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.counter("listener_manager.lds.update_success").await <= before {
            assert!(
                Instant::now() < deadline,
                "envoy did not reload the listener within 20s:\n{}",
                self.envoy_log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The new listener drains the old one; give it a moment to take new connections.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.envoy_dir().join("ca.crt")).expect("ca.crt")
    }

    /// Sends `req` over TLS to the gateway.
    pub async fn send(&self, req: &Request) -> Response {
        self.try_send(req, None)
            .await
            .unwrap_or_else(|e| panic!("request {} {} failed: {e}", req.method, req.path))
    }

    /// Sends `req` presenting `client` (cert PEM, key PEM) when given; Err on transport failure.
    pub async fn try_send(
        &self,
        req: &Request,
        client: Option<(&str, &str)>,
    ) -> Result<Response, String> {
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        let tls = TlsClient::new(&self.ca_pem(), client);
        raw_request(addr, Some(&tls), req.source, req).await
    }

    /// The access log as JSON lines, waiting (bounded) until `pred` holds for some line.
    pub async fn access_log_until(&self, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let lines: Vec<Value> = std::fs::read_to_string(self.access_log_path())
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            if lines.iter().any(&pred) || Instant::now() >= deadline {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// `apiguard render --envoy-dir <home>/envoy` of `manifests` (written to `<home>/policy.yaml`),
/// access log at `<home>/access.log`.
fn render_into(
    home: &Path,
    ca_dir: &Path,
    port: u16,
    admin_port: u16,
    upstream: SocketAddr,
    manifests: &str,
    extra: &[String],
) {
    let file = home.join("policy.yaml");
    std::fs::write(&file, manifests).expect("write manifests");
    let listen = format!("127.0.0.1:{port}");
    let admin = format!("127.0.0.1:{admin_port}");
    let upstream = upstream.to_string();
    let access = home.join("access.log");
    let envoy_dir = home.join("envoy");
    let mut args = vec![
        "-f",
        file.to_str().expect("utf-8 path"),
        "--envoy-dir",
        envoy_dir.to_str().expect("utf-8 path"),
        "--listen",
        &listen,
        "--admin",
        &admin,
        "--upstream",
        &upstream,
        "--ca-dir",
        ca_dir.to_str().expect("utf-8 path"),
        "--access-log",
        access.to_str().expect("utf-8 path"),
    ];
    args.extend(extra.iter().map(String::as_str));
    apiguard_render(&args);
}

// ---------------------------------------------------------------- HTTP client

/// A request for the minimal client.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Local source address (e.g. 127.0.0.2 to act as another client IP).
    pub source: Option<IpAddr>,
}

impl Request {
    pub fn new(method: &str, path: &str) -> Self {
        Self {
            method: method.to_string(),
            path: path.to_string(),
            headers: vec![("host".into(), HOST.into())],
            body: Vec::new(),
            source: None,
        }
    }
    pub fn get(path: &str) -> Self {
        Self::new("GET", path)
    }
    pub fn post(path: &str) -> Self {
        Self::new("POST", path)
    }
    pub fn host(mut self, host: &str) -> Self {
        self.headers.retain(|(k, _)| k != "host");
        self.headers.insert(0, ("host".into(), host.into()));
        self
    }
    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.to_string(), v.to_string()));
        self
    }
    pub fn bearer(self, token: &str) -> Self {
        self.header("authorization", &format!("Bearer {token}"))
    }
    pub fn json(mut self, body: &str) -> Self {
        self.body = body.as_bytes().to_vec();
        self.header("content-type", "application/json")
    }
    pub fn body(mut self, body: Vec<u8>) -> Self {
        self.body = body;
        self
    }
    pub fn from(mut self, ip: IpAddr) -> Self {
        self.source = Some(ip);
        self
    }
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response is not JSON ({e}): {}", self.text()))
    }
    /// Values the echo upstream saw for request header `name`.
    pub fn upstream_header(&self, name: &str) -> Vec<String> {
        self.json()["headers"][name]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }
}

pub struct TlsClient {
    connector: tokio_rustls::TlsConnector,
}

impl TlsClient {
    /// Trusts `ca_pem`; presents `client` (cert PEM, key PEM) when given.
    pub fn new(ca_pem: &str, client: Option<(&str, &str)>) -> Self {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(c.expect("CA PEM")).expect("add CA");
        }
        let b = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots);
        let config = match client {
            Some((cert, key)) => b
                .with_client_auth_cert(
                    CertificateDer::pem_slice_iter(cert.as_bytes())
                        .collect::<Result<_, _>>()
                        .expect("client cert"),
                    PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("client key"),
                )
                .expect("client auth"),
            None => b.with_no_client_auth(),
        };
        Self {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        }
    }

    pub fn connector(&self) -> &tokio_rustls::TlsConnector {
        &self.connector
    }
}

/// One HTTP/1.1 request with `Connection: close`, bounded by a 10 s timeout.
pub async fn raw_request(
    addr: SocketAddr,
    tls: Option<&TlsClient>,
    source: Option<IpAddr>,
    req: &Request,
) -> Result<Response, String> {
    tokio::time::timeout(Duration::from_secs(10), async {
        let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
        if let Some(ip) = source {
            socket
                .bind(SocketAddr::new(ip, 0))
                .map_err(|e| format!("bind {ip}: {e}"))?;
        }
        let tcp = socket.connect(addr).await.map_err(|e| e.to_string())?;
        let mut head = format!("{} {} HTTP/1.1\r\n", req.method, req.path);
        for (k, v) in &req.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if !req.body.is_empty() || req.method == "POST" || req.method == "PUT" {
            head.push_str(&format!("content-length: {}\r\n", req.body.len()));
        }
        head.push_str("connection: close\r\n\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&req.body);
        let mut raw = Vec::new();
        match tls {
            Some(t) => {
                let name = ServerName::try_from(HOST).map_err(|e| e.to_string())?;
                let mut s = t
                    .connector
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS: {e}"))?;
                s.write_all(&bytes).await.map_err(|e| e.to_string())?;
                read_all(&mut s, &mut raw).await?;
            }
            None => {
                let mut s = tcp;
                s.write_all(&bytes).await.map_err(|e| e.to_string())?;
                read_all(&mut s, &mut raw).await?;
            }
        }
        parse_response(&raw)
    })
    .await
    .map_err(|_| "timed out after 10s".to_string())?
}

async fn read_all<S: AsyncReadExt + Unpin>(s: &mut S, out: &mut Vec<u8>) -> Result<(), String> {
    let mut buf = [0u8; 16384];
    loop {
        match s.read(&mut buf).await {
            Ok(0) => return Ok(()),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            // A peer that closes without close_notify after a complete response is fine.
            Err(e) if !out.is_empty() => {
                let _ = e;
                return Ok(());
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

fn parse_response(raw: &[u8]) -> Result<Response, String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no response head in {:?}", String::from_utf8_lossy(raw)))?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        body = dechunk(&body)?;
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let nl = b.windows(2).position(|w| w == b"\r\n").ok_or("bad chunk")?;
        let size_str = String::from_utf8_lossy(&b[..nl]);
        let size = usize::from_str_radix(size_str.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("bad chunk size {size_str:?}"))?;
        b = &b[nl + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size + 2 {
            return Err("truncated chunk".into());
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

// ---------------------------------------------------------------- tokens

pub fn b64url(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk.len();
        let v = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..=n {
            out.push(A[((v >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// DER `SEQUENCE { INTEGER r, INTEGER s }` -> the 64-byte `r || s` JWS form.
fn der_to_jws(der: &[u8]) -> Vec<u8> {
    fn int(b: &[u8]) -> (&[u8], &[u8]) {
        assert_eq!(b[0], 0x02, "DER INTEGER expected");
        let len = b[1] as usize;
        (&b[2..2 + len], &b[2 + len..])
    }
    assert_eq!(der[0], 0x30, "DER SEQUENCE expected");
    let body = if der[1] & 0x80 != 0 {
        &der[3..]
    } else {
        &der[2..]
    };
    let (r, rest) = int(body);
    let (s, _) = int(rest);
    let mut out = Vec::with_capacity(64);
    for x in [r, s] {
        let x = &x[x.len().saturating_sub(32)..];
        out.extend(std::iter::repeat_n(0u8, 32 - x.len()));
        out.extend_from_slice(x);
    }
    out
}

/// An ES256 token issuer with its JWKS.
pub struct Issuer {
    key: KeyPair,
    pub kid: String,
}

impl Issuer {
    pub fn new(kid: &str) -> Self {
        Self {
            key: KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("P-256 key"),
            kid: kid.to_string(),
        }
    }
    /// `{"keys":[...]}` with this issuer's public key.
    pub fn jwks(&self) -> String {
        let raw = self.key.public_key_raw();
        assert_eq!(raw.len(), 65, "uncompressed P-256 point");
        json!({"keys": [{
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": self.kid,
            "x": b64url(&raw[1..33]), "y": b64url(&raw[33..65]),
        }]})
        .to_string()
    }
    /// A compact JWS of `claims`.
    pub fn token(&self, claims: &Value) -> String {
        let header = json!({"alg": "ES256", "typ": "JWT", "kid": self.kid});
        let input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let der = self.key.sign(input.as_bytes()).expect("sign");
        format!("{input}.{}", b64url(&der_to_jws(&der)))
    }
}

/// Seconds since the Unix epoch (token times).
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// Reads a file, panicking with its path.
pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
