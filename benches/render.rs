//! Render time per policy, and the cost of the generated filter chain through a real Envoy.
//!
//! `cargo bench --bench render`: renders every example 2000 times (mean and p99 per render),
//! then serves the full test policy (JWT, scopes, ownership, CORS, rate limit, body limit,
//! API keys) and a pass-through config (same listener, TLS and upstream; router only) with
//! the real Envoy, and drives each with the same keep-alive load loop for a fixed time.
//! Without `--bench` (as `cargo test --all-targets` runs it) it does one quick smoke iteration.

#[path = "../tests/support/mod.rs"]
mod support;

use apiguard::api::ApiSecurityPolicy;
use apiguard::manifest::load_paths;
use apiguard::render::{
    GatewayIdentity, RenderInput, RenderOptions, UpstreamIdentity, render_gateway,
};
use k8s_openapi::api::core::v1::Service;
use rustls::pki_types::ServerName;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::envoy::{Gateway, HOST, Issuer, Request, TlsClient, echo_upstream, unix_now};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Example {
    name: String,
    policy: ApiSecurityPolicy,
    service: Service,
    api_keys: BTreeMap<String, String>,
}

fn examples() -> Vec<Example> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("examples dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for f in files {
        let docs = load_paths(std::slice::from_ref(&f)).expect("load example");
        let get = |kind: &str| {
            docs.iter()
                .find(|m| m.kind() == kind)
                .map(|m| m.object.clone())
        };
        let (Some(p), Some(s)) = (get("ApiSecurityPolicy"), get("Service")) else {
            continue;
        };
        let mut api_keys = BTreeMap::new();
        if let Some(secret) = get("Secret") {
            for (k, v) in secret["stringData"]
                .as_object()
                .cloned()
                .unwrap_or_default()
            {
                api_keys.insert(k, v.as_str().unwrap_or("").to_string());
            }
        }
        out.push(Example {
            name: f
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
            policy: serde_json::from_value(p).expect("policy"),
            service: serde_json::from_value(s).expect("service"),
            api_keys,
        });
    }
    out
}

fn bench_render(iterations: usize) {
    let identity = GatewayIdentity {
        server_cert_pem: "CERT".into(),
        server_key_pem: "KEY".into(),
        client_ca_pem: Some("CA".into()),
        upstream: Some(UpstreamIdentity {
            cert_pem: "CERT".into(),
            key_pem: "KEY".into(),
            trust_bundle_pem: "CA".into(),
            target_spiffe_id: "spiffe://cluster.local/ns/x/sa/y".into(),
        }),
    };
    let options = RenderOptions::default();
    let jwks = BTreeMap::new();
    println!("render time per policy ({iterations} iterations each):");
    for ex in examples() {
        let input = RenderInput {
            policy: &ex.policy,
            target_service: &ex.service,
            identity: &identity,
            api_keys: &ex.api_keys,
            jwks_from_secret: &jwks,
            openapi_document: None,
            options: &options,
        };
        let size: usize = render_gateway(&input)
            .expect("render")
            .files
            .values()
            .map(|f| f.contents.len())
            .sum();
        let mut times = Vec::with_capacity(iterations);
        for _ in 0..iterations {
            let t = Instant::now();
            let g = render_gateway(&input).expect("render");
            times.push(t.elapsed());
            std::hint::black_box(g);
        }
        times.sort();
        let mean = times.iter().sum::<Duration>() / iterations as u32;
        let p99 = times[(iterations * 99 / 100).min(iterations - 1)];
        println!(
            "  {:<34} {:>8.1} µs mean  {:>8.1} µs p99  ({} bytes of config)",
            ex.name,
            mean.as_secs_f64() * 1e6,
            p99.as_secs_f64() * 1e6,
            size
        );
    }
}

/// The full policy of the gateway tests.
fn full_policy(jwks: &str) -> String {
    format!(
        r#"
apiVersion: apiguard.dev/v1alpha1
kind: ApiSecurityPolicy
metadata: {{name: shop, namespace: test}}
spec:
  target: {{service: shop, port: 8080}}
  exposure: Public
  hosts: [{HOST}]
  authentication:
    jwt:
      providers:
      - name: test
        issuer: https://idp.test.example/
        audiences: [shop-api]
        jwks: {{inline: '{jwks}'}}
        forwardClaims: [{{claim: sub, header: x-user-id}}]
    apiKeys: {{secretRef: {{name: shop-keys}}}}
  authorization:
    rules:
    - name: read-own-orders
      match: {{methods: [GET], paths: ["/users/{{userId}}/orders"]}}
      allow: {{scopes: ["orders:read"]}}
      ownership: {{pathParam: userId, claim: sub}}
    - name: login
      match: {{methods: [POST], paths: ["/login"]}}
      public: true
    - name: reports
      match: {{methods: [GET], paths: ["/reports"]}}
      allow: {{apiKeyClients: [acme]}}
  cors: {{allowOrigins: ["https://shop.example"], allowMethods: [GET, POST]}}
  rateLimits:
  - name: per-user
    limit: {{requests: 100000000, per: Second}}
    by: {{claim: sub}}
  requestValidation: {{maxBodyBytes: 65536, allowedContentTypes: [application/json]}}
  eastWest: {{mtls: Disabled}}
  audit: {{accessLog: true}}
---
apiVersion: v1
kind: Service
metadata: {{name: shop, namespace: test}}
spec:
  selector: {{app: shop}}
  ports: [{{name: http, port: 8080}}]
---
apiVersion: v1
kind: Secret
metadata: {{name: shop-keys, namespace: test}}
stringData: {{acme: acme-key-0123456789abcdef}}
"#
    )
}

/// Replaces the listener's filter chain with the router alone and one catch-all route.
fn make_pass_through(gateway: &Gateway) {
    let path = gateway.envoy_dir().join("lds.json");
    let mut lds: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("lds")).expect("lds json");
    let hcm = &mut lds["resources"][0]["filter_chains"][0]["filters"][0]["typed_config"];
    hcm["http_filters"] = json!([{
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
    }]);
    hcm["route_config"]["virtual_hosts"][0]["routes"] = json!([{
        "name": "pass-through",
        "match": {"prefix": "/"},
        "route": {"cluster": "target", "timeout": "30s"}
    }]);
    hcm["route_config"]["virtual_hosts"][0]
        .as_object_mut()
        .expect("vhost")
        .remove("typed_per_filter_config");
    hcm.as_object_mut().expect("hcm").remove("access_log");
    apiguard::cli::render::write_atomic(
        &path,
        serde_json::to_string_pretty(&lds).expect("json").as_bytes(),
        0o644,
    )
    .expect("write lds");
}

/// One keep-alive connection sending `request` until `deadline`; returns latencies.
async fn load_connection(
    port: u16,
    tls: Arc<TlsClient>,
    request: Arc<Vec<u8>>,
    deadline: Instant,
) -> (Vec<Duration>, usize) {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    let mut s = tls
        .connector()
        .connect(ServerName::try_from(HOST).expect("name"), tcp)
        .await
        .expect("TLS");
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut buf = Vec::with_capacity(8192);
    let mut chunk = [0u8; 8192];
    while Instant::now() < deadline {
        let t = Instant::now();
        s.write_all(&request).await.expect("write");
        buf.clear();
        // Read the head, then content-length bytes of body.
        let (status, body_start, len) = loop {
            let n = s.read(&mut chunk).await.expect("read");
            assert!(n > 0, "connection closed by the gateway");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let status: u16 = head[9..12].parse().expect("status");
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .expect("content-length");
                break (status, end + 4, len);
            }
        };
        while buf.len() < body_start + len {
            let n = s.read(&mut chunk).await.expect("read body");
            assert!(n > 0, "connection closed mid-body");
            buf.extend_from_slice(&chunk[..n]);
        }
        latencies.push(t.elapsed());
        if status != 200 {
            errors += 1;
        }
    }
    (latencies, errors)
}

async fn drive(port: u16, ca_pem: &str, request: Vec<u8>, connections: usize, secs: u64) -> String {
    let tls = Arc::new(TlsClient::new(ca_pem, None));
    let request = Arc::new(request);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let start = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            tokio::spawn(load_connection(
                port,
                tls.clone(),
                request.clone(),
                deadline,
            ))
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.expect("load task");
        all.extend(l);
        errors += e;
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort();
    let p = |q: usize| all[(all.len() * q / 100).min(all.len() - 1)].as_secs_f64() * 1e3;
    format!(
        "{:>9.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  ({} requests, {} non-200)",
        all.len() as f64 / elapsed,
        p(50),
        p(99),
        all.len(),
        errors
    )
}

async fn bench_envoy(connections: usize, secs: u64) {
    let issuer = Issuer::new("bench");
    let upstream = echo_upstream().await;
    let gateway = Gateway::start(&full_policy(&issuer.jwks()), upstream.addr).await;
    let now = unix_now();
    let token = issuer.token(&json!({
        "iss": "https://idp.test.example/", "aud": "shop-api", "sub": "alice",
        "scope": "orders:read", "iat": now, "exp": now + 3600
    }));
    let check = gateway
        .send(&Request::get("/users/alice/orders").bearer(&token))
        .await;
    assert_eq!(
        check.status, 200,
        "full policy admits the benchmark request"
    );
    let request = format!(
        "GET /users/alice/orders HTTP/1.1\r\nhost: {HOST}\r\nauthorization: Bearer {token}\r\n\r\n"
    )
    .into_bytes();
    let ca = gateway.ca_pem();
    println!(
        "Envoy 1.40 (--concurrency 1), TLS 1.3, HTTP/1.1 keep-alive, {connections} connections, {secs} s each, same echo upstream:"
    );
    let full = drive(gateway.port, &ca, request.clone(), connections, secs).await;
    println!("  full policy   {full}");
    let before = gateway.counter("listener_manager.lds.update_success").await;
    make_pass_through(&gateway);
    gateway.wait_listener_update(before).await;
    let pass = drive(gateway.port, &ca, request, connections, secs).await;
    println!("  pass-through  {pass}");
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    if !bench {
        // `cargo test --all-targets`: smoke only.
        bench_render(3);
        return;
    }
    bench_render(2000);
    if std::env::args().any(|a| a == "render-only") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(bench_envoy(16, 5));
}
