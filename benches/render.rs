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
use apiguard::sensor::config::SENSOR_CONFIG_FILE;
use k8s_openapi::api::core::v1::Service;
use rustls::pki_types::ServerName;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::envoy::{
    Gateway, HOST, Issuer, Request, TlsClient, echo_upstream, raw_request, unix_now,
};
use support::tools::free_port;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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
        workload: None,
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

/// The full policy of the gateway tests; the benchmark's operation is
/// `PUT /users/{userId}/orders` (scope, ownership, a JSON body), and `openapi` is inserted
/// under `spec` when given (config (c)).
/// Discovery in the benchmark policy: off ((b)) or on (the default, (d)). (A gateway scanning
/// responses for sensitive data answers chunked, which this load client does not read yet.)
#[derive(Clone, Copy, PartialEq)]
enum Discovery {
    Off,
    On,
}

fn full_policy(jwks: &str, openapi: Option<&str>, discovery: Discovery) -> String {
    let openapi = openapi
        .map(|doc| {
            format!(
                "  openapi:\n    source: {{inline: {}}}\n    requests: Enforce\n    responses: \"Off\"\n",
                serde_json::to_string(doc).expect("a JSON string")
            )
        })
        .unwrap_or_default();
    // Discovery is on by default; (b) measures the chain without it, (d) with it.
    let discovery = match discovery {
        Discovery::Off => "  discovery: {enabled: false}\n",
        Discovery::On => "",
    };
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
    - name: write-own-orders
      match: {{methods: [PUT], paths: ["/users/{{userId}}/orders"]}}
      allow: {{scopes: ["orders:write"]}}
      ownership: {{pathParam: userId, claim: sub}}
    - name: login
      match: {{methods: [POST], paths: ["/login"]}}
      public: true
    - name: reports
      match: {{methods: [GET], paths: ["/reports"]}}
      allow: {{apiKeyClients: [acme]}}
  cors: {{allowOrigins: ["https://shop.example"], allowMethods: [GET, POST, PUT]}}
  rateLimits:
  - name: per-user
    limit: {{requests: 100000000, per: Second}}
    by: {{claim: sub}}
  requestValidation: {{maxBodyBytes: 65536, allowedContentTypes: [application/json]}}
{openapi}{discovery}  eastWest: {{mtls: Disabled}}
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

/// The contract of config (c): the benchmark's operation with a JSON body schema.
const OPENAPI: &str = r#"openapi: 3.1.0
info: {title: orders, version: "1"}
paths:
  /users/{userId}/orders:
    put:
      parameters: [{name: userId, in: path, required: true, schema: {type: string}}]
      requestBody:
        required: true
        content:
          application/json:
            schema:
              type: object
              required: [orders]
              properties:
                orders:
                  type: array
                  maxItems: 100
                  items:
                    type: object
                    required: [sku, quantity]
                    properties:
                      sku: {type: string, pattern: "^SKU-[0-9]{6}$"}
                      quantity: {type: integer, minimum: 1, maximum: 1000}
                      note: {type: string, maxLength: 64}
      responses:
        "200": {description: ok}
"#;

/// A valid body of about 2 KiB for [`OPENAPI`].
fn body_2k() -> String {
    let mut orders = Vec::new();
    let mut i = 0;
    loop {
        orders.push(json!({
            "sku": format!("SKU-{:06}", 100000 + i),
            "quantity": 1 + i % 7,
            "note": "gift wrap, leave at the door",
        }));
        let body = json!({ "orders": orders }).to_string();
        if body.len() >= 2000 {
            return body;
        }
        i += 1;
    }
}

/// Rewrites the gateway's listener with `edit` (on the connection manager's config) and waits
/// until Envoy has taken the new listener.
async fn edit_listener(gateway: &Gateway, edit: impl FnOnce(&mut Value)) {
    let path = gateway.envoy_dir().join("lds.json");
    let text = std::fs::read_to_string(&path).expect("lds");
    let copy = gateway.envoy_dir().join("lds.rendered.json");
    if !copy.exists() {
        std::fs::write(&copy, &text).expect("keep the rendered lds");
    }
    let mut lds: Value = serde_json::from_str(&text).expect("lds json");
    edit(&mut lds["resources"][0]["filter_chains"][0]["filters"][0]["typed_config"]);
    let before = gateway.counter("listener_manager.lds.update_success").await;
    apiguard::cli::render::write_atomic(
        &path,
        serde_json::to_string_pretty(&lds).expect("json").as_bytes(),
        0o644,
    )
    .expect("write lds");
    gateway.wait_listener_update(before).await;
}

/// The sensor gets the request body the way it did before 2026-12-03: `BUFFERED`, sent after
/// the answer to the headers (two round trips), no second buffer filter.
fn two_round_trips(hcm: &mut Value) {
    let filters = hcm["http_filters"].as_array_mut().expect("filters");
    filters.retain(|f| f["name"] != "apiguard.content-length");
    let ext_proc = filters
        .iter_mut()
        .find(|f| f["name"] == "envoy.filters.http.ext_proc")
        .expect("ext_proc");
    let config = ext_proc["typed_config"].as_object_mut().expect("config");
    config.remove("send_body_without_waiting_for_header_response");
    config["processing_mode"]["request_body_mode"] = json!("BUFFERED");
}

/// The chain without the sensor: (b) on the gateway of (c).
fn without_sensor(hcm: &mut Value) {
    let filters = hcm["http_filters"].as_array_mut().expect("filters");
    filters.retain(|f| {
        f["name"] != "envoy.filters.http.ext_proc" && f["name"] != "apiguard.content-length"
    });
}

/// The sensor as the gateway's sidecar runs it: its CPU limit (1 by default) gives it one
/// worker thread; this machine has two CPUs and no limit, so it is said explicitly.
const AS_DEPLOYED: [(&str, &str); 1] = [("APIGUARD_SENSOR_WORKER_THREADS", "1")];

/// The sensor's cost, side by side, interleaved: (b) and (c) on the same gateway (the chain
/// without and with `ext_proc`), (c) with the body sent after the headers' answer (two round
/// trips, as before 2026-12-03), and both again with the sensor on two worker threads, each
/// for a few seconds at the fixed rate, in turn, several rounds; the medians per config. The
/// machine's speed drifts within a run (a VM on a shared host), so configs measured minutes
/// apart are not comparable; configs measured seconds apart, in turn, are.
async fn sensor_side_by_side(
    bench: &Bench,
    gateway: &Gateway,
    manifests: &str,
    upstream: std::net::SocketAddr,
    request: &[u8],
) {
    let env = [("APIGUARD_SENSOR_WORKER_THREADS", "2")];
    let (two_workers, _sensor) = Sensor::beside_with(manifests, upstream, &env).await;
    bench.warm(&two_workers, request, 2.0).await;
    type Mode = fn(&mut Value);
    let cells: [(&str, &Gateway, Mode); 5] = [
        ("(b) same gateway, no ext_proc", gateway, without_sensor),
        ("(c) one round trip (rendered)", gateway, as_rendered),
        ("(c2) two round trips", gateway, two_round_trips),
        ("(c3) one round trip, 2 workers", &two_workers, as_rendered),
        (
            "(c4) two round trips, 2 workers",
            &two_workers,
            two_round_trips,
        ),
    ];
    const ROUNDS: usize = 4;
    const SECS: f64 = 3.0;
    let mut figures: Vec<Vec<Figures>> = cells.iter().map(|_| Vec::new()).collect();
    for _ in 0..ROUNDS {
        for (i, (_, g, mode)) in cells.iter().enumerate() {
            set_chain(g, *mode).await;
            bench.warm(g, request, 0.5).await;
            figures[i].push(bench.fixed(g, request, SECS).await);
        }
    }
    let median = |values: &mut Vec<f64>| {
        values.sort_by(f64::total_cmp);
        (values[(values.len() - 1) / 2] + values[values.len() / 2]) / 2.0
    };
    println!(
        "  side by side at {} req/s, {ROUNDS} rounds of {SECS} s each in turn (median p50 / median p99; every p50):",
        bench.rate
    );
    let mut p50s = Vec::new();
    for (i, (name, _, _)) in cells.iter().enumerate() {
        let mut p50: Vec<f64> = figures[i].iter().map(|f| f.p50_ms).collect();
        let every = p50
            .iter()
            .map(|v| format!("{v:.3}"))
            .collect::<Vec<_>>()
            .join(" ");
        let mut p99: Vec<f64> = figures[i].iter().map(|f| f.p99_ms).collect();
        let errors: usize = figures[i].iter().map(|f| f.errors).sum();
        let (p50, p99) = (median(&mut p50), median(&mut p99));
        println!("    {name:<34} {p50:.3} / {p99:.3} ms  ({every}; {errors} non-200)");
        p50s.push((p50, p99));
    }
    let (b50, b99) = p50s[0];
    for (i, (name, _, _)) in cells.iter().enumerate().skip(1) {
        println!(
            "    sensor cost {name:<34} p50 {:+.3} ms, p99 {:+.3} ms against (b) (targets < 0.3 / < 1.5 ms)",
            p50s[i].0 - b50,
            p50s[i].1 - b99
        );
    }
    println!(
        "  where the time goes inside Envoy (its access log, medians at {} req/s):",
        bench.rate
    );
    for (name, g, mode) in &cells[..3] {
        let t = envoy_timings(bench, g, request, *mode).await;
        println!(
            "    {name:<34} last request byte -> first upstream byte {:>4.0} µs; ext_proc's gRPC calls: headers {:>4.0} µs, body {:>4.0} µs",
            t[0], t[1], t[2]
        );
    }
}

/// Medians, over a few seconds at the fixed rate, of what Envoy's access log says about each
/// request under `mode`: the time from the request's last byte to the first byte sent upstream
/// (the filter chain, the sensor included), and the ext_proc filter's own latency of its
/// headers and body calls (from sending the message to applying the answer), in µs.
async fn envoy_timings(
    bench: &Bench,
    g: &Gateway,
    request: &[u8],
    mode: fn(&mut Value),
) -> [f64; 3] {
    const FIELDS: [(&str, &str); 3] = [
        ("t_chain_us", "%COMMON_DURATION(DS_RX_END:US_TX_BEG:us)%"),
        (
            "t_ext_proc_headers_us",
            "%FILTER_STATE(envoy.filters.http.ext_proc:FIELD:request_header_latency_us)%",
        ),
        (
            "t_ext_proc_body_us",
            "%FILTER_STATE(envoy.filters.http.ext_proc:FIELD:request_body_total_latency_us)%",
        ),
    ];
    let mut log = PathBuf::new();
    edit_listener(g, |hcm: &mut Value| {
        *hcm = rendered_hcm(g);
        mode(hcm);
        // The rendered chain under `mode`, its access log with the timings.
        let file = &mut hcm["access_log"][0]["typed_config"];
        log = PathBuf::from(file["path"].as_str().expect("access log path"));
        for (key, format) in FIELDS {
            file["log_format"]["json_format"][key] = json!(format);
        }
    })
    .await;
    bench.warm(g, request, 0.5).await;
    let from = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    bench.fixed(g, request, 3.0).await;
    // Envoy flushes its access log every second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let text = std::fs::read(&log).expect("access log");
    let lines = String::from_utf8_lossy(&text[from as usize..]).into_owned();
    let mut columns: [Vec<f64>; 3] = Default::default();
    for line in lines
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
    {
        for (i, (key, _)) in FIELDS.iter().enumerate() {
            let value = match &line[key] {
                Value::Number(n) => n.as_f64(),
                Value::String(s) => s.parse().ok(),
                _ => None,
            };
            columns[i].extend(value);
        }
    }
    columns.map(|mut c| {
        if c.is_empty() {
            return f64::NAN;
        }
        c.sort_by(f64::total_cmp);
        c[c.len() / 2]
    })
}

/// The rendered chain, unchanged (a mode for [`set_chain`]).
fn as_rendered(_: &mut Value) {}

/// The listener becomes the rendered chain under `mode`.
async fn set_chain(gateway: &Gateway, mode: fn(&mut Value)) {
    edit_listener(gateway, |hcm: &mut Value| {
        *hcm = rendered_hcm(gateway);
        mode(hcm);
    })
    .await;
}

/// The connection manager's config as rendered (`edit_listener` keeps the untouched copy).
fn rendered_hcm(gateway: &Gateway) -> Value {
    let rendered = std::fs::read_to_string(gateway.envoy_dir().join("lds.rendered.json"))
        .expect("rendered lds");
    let lds: Value = serde_json::from_str(&rendered).expect("lds json");
    lds["resources"][0]["filter_chains"][0]["filters"][0]["typed_config"].clone()
}

/// The listener's filter chain becomes the router alone with one catch-all route.
fn pass_through(hcm: &mut Value) {
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
}

/// Removes the HTTP filters named in `names` (and the access log for `"access_log"`).
fn without(names: &[&str]) -> impl FnOnce(&mut Value) + use<> {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    move |hcm: &mut Value| {
        if names.iter().any(|n| n == "access_log") {
            hcm.as_object_mut().expect("hcm").remove("access_log");
        }
        let filters = hcm["http_filters"].as_array_mut().expect("filters");
        filters.retain(|f| !names.iter().any(|n| f["name"] == n.as_str()));
    }
}

/// One request/response exchange on a keep-alive connection; returns the status.
async fn exchange<S: AsyncReadExt + AsyncWriteExt + Unpin>(
    s: &mut S,
    request: &[u8],
    buf: &mut Vec<u8>,
) -> u16 {
    let mut chunk = [0u8; 8192];
    s.write_all(request).await.expect("write");
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
    status
}

async fn connect(port: u16, tls: &TlsClient) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    tls.connector()
        .connect(ServerName::try_from(HOST).expect("name"), tcp)
        .await
        .expect("TLS")
}

/// How requests are sent: closed loop (each connection sends the next request as soon as the
/// previous answer is in) or open loop at a fixed total rate spread over the connections.
#[derive(Clone, Copy)]
enum Load {
    Closed,
    Rate(f64),
}

/// One keep-alive connection sending `request` until `deadline`; returns latencies and the
/// number of non-200 answers. At a fixed rate, a request is sent at its scheduled time (or as
/// soon as the previous answer is in, if that is later) and its latency counts from the
/// scheduled time, so a slow answer delays nothing unseen.
async fn load_connection(
    port: u16,
    tls: Arc<TlsClient>,
    request: Arc<Vec<u8>>,
    load: Load,
    offset: Duration,
    deadline: Instant,
) -> (Vec<Duration>, usize) {
    let mut s = connect(port, &tls).await;
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut buf = Vec::with_capacity(8192);
    let start = tokio::time::Instant::now() + offset;
    let mut next = start;
    loop {
        let t = match load {
            Load::Closed => Instant::now(),
            Load::Rate(per_connection) => {
                tokio::time::sleep_until(next).await;
                let scheduled = next.into_std();
                next += Duration::from_secs_f64(1.0 / per_connection);
                scheduled
            }
        };
        if t >= deadline {
            break;
        }
        let status = exchange(&mut s, &request, &mut buf).await;
        latencies.push(t.elapsed());
        if status != 200 {
            errors += 1;
        }
    }
    (latencies, errors)
}

/// The figures of one load run.
struct Figures {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    requests: usize,
    errors: usize,
}

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:>7.0} req/s  p50 {:>6.3} ms  p99 {:>6.3} ms  ({} requests, {} non-200)",
            self.rps, self.p50_ms, self.p99_ms, self.requests, self.errors
        )
    }
}

async fn drive(
    port: u16,
    ca_pem: &str,
    request: &[u8],
    connections: usize,
    load: Load,
    secs: f64,
) -> Figures {
    let tls = Arc::new(TlsClient::new(ca_pem, None));
    let request = Arc::new(request.to_vec());
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let (per_connection, spacing) = match load {
        Load::Closed => (Load::Closed, Duration::ZERO),
        Load::Rate(total) => (
            Load::Rate(total / connections as f64),
            Duration::from_secs_f64(1.0 / total),
        ),
    };
    let tasks: Vec<_> = (0..connections)
        .map(|i| {
            tokio::spawn(load_connection(
                port,
                tls.clone(),
                request.clone(),
                per_connection,
                // At a fixed rate, connection i sends its requests `i / rate` after connection 0.
                spacing * (i as u32 + 1),
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
    Figures {
        rps: all.len() as f64 / elapsed,
        p50_ms: p(50),
        p99_ms: p(99),
        requests: all.len(),
        errors,
    }
}

/// A running `apiguard sensor` (the built binary) and its admin address, killed on drop.
struct Sensor(Child, std::net::SocketAddr);

impl Drop for Sensor {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Sensor {
    async fn start(
        config: &std::path::Path,
        listen: &str,
        log: &std::path::Path,
        env: &[(&str, &str)],
    ) -> Sensor {
        let admin = format!("127.0.0.1:{}", free_port());
        let child = Command::new(env!("CARGO_BIN_EXE_apiguard"))
            .envs(env.iter().copied())
            .arg("sensor")
            .arg("--config")
            .arg(config)
            .args(["--listen", listen, "--admin-addr", &admin])
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(log).expect("log file")))
            .spawn()
            .expect("start apiguard sensor");
        let admin: std::net::SocketAddr = admin.parse().expect("addr");
        let sensor = Sensor(child, admin);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = raw_request(admin, None, None, &Request::get("/readyz").host("x")).await;
            if matches!(ready, Ok(ref r) if r.status == 200) {
                return sensor;
            }
            assert!(
                Instant::now() < deadline,
                "apiguard sensor not ready within 20s: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A gateway rendered from `manifests` for a sensor on a free port, and that sensor,
    /// started with `env`.
    async fn beside_with(
        manifests: &str,
        upstream: std::net::SocketAddr,
        env: &[(&str, &str)],
    ) -> (Gateway, Sensor) {
        let sensor_addr = format!("127.0.0.1:{}", free_port());
        let gateway = Gateway::start_with_args(
            manifests,
            upstream,
            None,
            vec!["--sensor-addr".to_string(), sensor_addr.clone()],
        )
        .await;
        let sensor = Sensor::start(
            &gateway.envoy_dir().join(SENSOR_CONFIG_FILE),
            &sensor_addr,
            &gateway.dir.path().join("sensor.log"),
            env,
        )
        .await;
        (gateway, sensor)
    }

    /// The mean time the sensor spent on one ext_proc message, per point of the exchange
    /// (`apiguard_sensor_processing_seconds` sum / count), in milliseconds.
    async fn processing_means(&self) -> Vec<(String, f64)> {
        let metrics = raw_request(self.1, None, None, &Request::get("/metrics").host("x"))
            .await
            .map(|r| r.text())
            .unwrap_or_default();
        let series = |suffix: &str| -> Vec<(String, f64)> {
            let prefix = format!("apiguard_sensor_processing_seconds_{suffix}{{point=\"");
            metrics
                .lines()
                .filter_map(|l| {
                    let rest = l.strip_prefix(&prefix)?;
                    let (point, value) = rest.split_once("\"} ")?;
                    Some((point.to_string(), value.trim().parse().ok()?))
                })
                .collect()
        };
        let counts = series("count");
        series("sum")
            .into_iter()
            .filter_map(|(point, sum)| {
                let count = counts.iter().find(|(p, _)| *p == point)?.1;
                (count > 0.0).then(|| (point, sum / count * 1000.0))
            })
            .collect()
    }

    /// `GET /inventory` (after the access log's flush interval).
    async fn inventory(&self) -> String {
        tokio::time::sleep(Duration::from_secs(1)).await;
        raw_request(self.1, None, None, &Request::get("/inventory").host("x"))
            .await
            .map(|r| r.text())
            .unwrap_or_default()
    }
}

/// The load figures of one config: closed loop, then the fixed rate.
struct Run {
    closed: Figures,
    fixed: Figures,
}

struct Bench {
    connections: usize,
    secs: f64,
    rate: f64,
    rate_secs: f64,
}

impl Bench {
    /// Load that is not counted: a fresh Envoy, or one that just took a new listener (its
    /// connections were drained), is slower for its first seconds.
    async fn warm(&self, gateway: &Gateway, request: &[u8], secs: f64) {
        self.load(gateway, request, Load::Closed, secs).await;
    }

    async fn closed(&self, gateway: &Gateway, request: &[u8]) -> Figures {
        self.load(gateway, request, Load::Closed, self.secs).await
    }

    /// `secs` at the fixed rate.
    async fn fixed(&self, gateway: &Gateway, request: &[u8], secs: f64) -> Figures {
        self.load(gateway, request, Load::Rate(self.rate), secs)
            .await
    }

    async fn load(&self, gateway: &Gateway, request: &[u8], load: Load, secs: f64) -> Figures {
        let ca = gateway.ca_pem();
        drive(gateway.port, &ca, request, self.connections, load, secs).await
    }

    async fn run(&self, gateway: &Gateway, request: &[u8]) -> Run {
        let closed = self.closed(gateway, request).await;
        let fixed = self.fixed(gateway, request, self.rate_secs).await;
        Run { closed, fixed }
    }
}

fn print_run(name: &str, run: &Run) {
    println!("  {name:<44} closed loop {}", run.closed);
    println!("  {:<44} at fixed rate {}", "", run.fixed);
}

async fn bench_envoy(bench: Bench, sensor_only: bool) {
    let issuer = Issuer::new("bench");
    let upstream = echo_upstream().await;
    let now = unix_now();
    let token = issuer.token(&json!({
        "iss": "https://idp.test.example/", "aud": "shop-api", "sub": "alice",
        "scope": "orders:write", "iat": now, "exp": now + 3600
    }));
    let body = body_2k();
    let path = "/users/alice/orders";
    let request = format!(
        "PUT {path} HTTP/1.1\r\nhost: {HOST}\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes();
    let put = |body: &str| {
        Request::new("PUT", path)
            .bearer(&token)
            .header("content-type", "application/json")
            .body(body.as_bytes().to_vec())
    };
    println!(
        "Envoy 1.40 (--concurrency 1), TLS 1.3, HTTP/1.1 keep-alive, {} connections, same echo upstream, \
         PUT {path} with a {} B JSON body and a valid ES256 token; closed loop {} s, then {} req/s open loop for {} s:",
        bench.connections,
        body.len(),
        bench.secs,
        bench.rate,
        bench.rate_secs
    );

    // (b) today's full policy, then (a) the same listener with the router alone.
    let gateway = Gateway::start(
        &full_policy(&issuer.jwks(), None, Discovery::Off),
        upstream.addr,
    )
    .await;
    let check = gateway.send(&put(&body)).await;
    assert_eq!(
        check.status, 200,
        "full policy admits the benchmark request"
    );
    let other = Request::new("PUT", "/users/bob/orders")
        .bearer(&token)
        .header("content-type", "application/json")
        .body(body.clone().into_bytes());
    assert_eq!(gateway.send(&other).await.status, 403, "ownership enforced");
    bench.warm(&gateway, &request, 2.0).await;
    let full = bench.run(&gateway, &request).await;
    print_run("(b) full policy", &full);

    let mut pass_through_run = None;
    if !sensor_only {
        // What each costly filter costs: (b) without it, closed loop.
        println!("  per-filter cost, closed loop, (b) without the filter:");
        let variants: &[(&str, &[&str])] = &[
            ("access log", &["access_log"]),
            // Until 2026-12: the two Lua filters.
            ("apiguard.outcome (Lua)", &["apiguard.outcome"]),
            ("apiguard.authz (Lua)", &["apiguard.authz"]),
            ("both Lua filters", &["apiguard.outcome", "apiguard.authz"]),
            (
                "both Lua filters + access log",
                &["apiguard.outcome", "apiguard.authz", "access_log"],
            ),
            // Their native replacement.
            (
                "apiguard.ownership (rbac + CEL) + pending",
                &["apiguard.ownership", "apiguard.decision-pending"],
            ),
            ("apiguard.decision (set_metadata)", &["apiguard.decision"]),
            (
                "authn + authz (jwt_authn, rbac, ownership)",
                &[
                    "envoy.filters.http.jwt_authn",
                    "envoy.filters.http.rbac",
                    "apiguard.authz",
                    "apiguard.ownership",
                    "apiguard.decision-pending",
                ],
            ),
            ("rbac", &["envoy.filters.http.rbac"]),
            ("local_ratelimit", &["envoy.filters.http.local_ratelimit"]),
            ("buffer", &["envoy.filters.http.buffer"]),
            (
                "cors + header_mutation",
                &[
                    "envoy.filters.http.cors",
                    "envoy.filters.http.header_mutation",
                ],
            ),
        ];
        let lds = std::fs::read_to_string(gateway.envoy_dir().join("lds.json")).expect("lds");
        for (name, filters) in variants {
            // A variant for filters of another chain (the Lua filters before 2026-12, or their
            // replacement) does not apply.
            let in_chain = |f: &&str| lds.contains(&format!("\"{f}\""));
            if *filters != ["access_log"]
                && !filters.iter().any(|f| *f != "access_log" && in_chain(f))
            {
                println!("    {name:<40} (not in the rendered chain)");
                continue;
            }
            edit_listener(&gateway, without(filters)).await;
            bench.warm(&gateway, &request, 1.0).await;
            let f = bench.closed(&gateway, &request).await;
            let saved_us = (1.0 / full.closed.rps - 1.0 / f.rps) * 1e6;
            println!(
                "    without {name:<32} {f}  => costs {saved_us:>5.1} µs/request ({:+.0}% req/s without it)",
                (f.rps / full.closed.rps - 1.0) * 100.0
            );
            // Back to the full chain.
            let before = gateway.counter("listener_manager.lds.update_success").await;
            gateway.render(&full_policy(&issuer.jwks(), None, Discovery::Off));
            gateway.wait_listener_update(before).await;
            bench.warm(&gateway, &request, 1.0).await;
        }

        let again = bench.closed(&gateway, &request).await;
        println!("    {:<40} {again}", "(b) again, after the variants");

        // The access log's decision as a CEL formatter, against the plain metadata lookup it
        // replaced (the same line otherwise).
        if lds.contains("%CEL(") {
            edit_listener(&gateway, |hcm: &mut Value| {
                hcm["access_log"][0]["typed_config"]["log_format"]["json_format"]["decision"] =
                    json!("%DYNAMIC_METADATA(apiguard:decision)%");
            })
            .await;
            bench.warm(&gateway, &request, 1.0).await;
            let f = bench.closed(&gateway, &request).await;
            println!(
                "    {:<40} {f}  => the CEL decision costs {:>5.1} µs/request",
                "access log decision without CEL",
                (1.0 / full.closed.rps - 1.0 / f.rps) * 1e6
            );
        }

        edit_listener(&gateway, pass_through).await;
        bench.warm(&gateway, &request, 1.0).await;
        let pass = bench.run(&gateway, &request).await;
        print_run("(a) pass-through (router only)", &pass);
        pass_through_run = Some(pass);

        // (b)/(a) again, alternating: the machine's speed drifts within a run, so a ratio of two
        // measurements minutes apart is noisy; these pairs are seconds apart.
        let mut ratios = Vec::new();
        for _ in 0..3 {
            set_chain(&gateway, as_rendered).await;
            bench.warm(&gateway, &request, 1.0).await;
            let b = bench.closed(&gateway, &request).await;
            edit_listener(&gateway, pass_through).await;
            bench.warm(&gateway, &request, 1.0).await;
            let a = bench.closed(&gateway, &request).await;
            println!(
                "    (b) {b}\n    (a) {a}  => (b)/(a) {:.0}%",
                b.rps / a.rps * 100.0
            );
            ratios.push(b.rps / a.rps);
        }
        ratios.sort_by(f64::total_cmp);
        println!(
            "  (b)/(a) alternating, closed loop: {} (median {:.0}%; target >= 70%)",
            ratios
                .iter()
                .map(|r| format!("{:.0}%", r * 100.0))
                .collect::<Vec<_>>()
                .join(", "),
            ratios[1] * 100.0
        );
    }
    drop(gateway);

    // (c) the full policy with the contract: the sensor validates the body (discovery off as
    // in (b), so (c) - (b) is the sensor's inline work alone); (e) the same with discovery on,
    // the default, against (d).
    let contract_run = |discovery: Discovery| {
        let manifests = full_policy(&issuer.jwks(), Some(OPENAPI), discovery);
        let (put, body, request, upstream, bench) = (&put, &body, &request, upstream.addr, &bench);
        async move {
            let (gateway, validating) =
                Sensor::beside_with(&manifests, upstream, &AS_DEPLOYED).await;
            let check = gateway.send(&put(body)).await;
            assert_eq!(check.status, 200, "the sensor admits the benchmark body");
            let invalid = body.replacen("SKU-", "sku-", 1);
            assert_eq!(
                gateway.send(&put(&invalid)).await.status,
                400,
                "the sensor refuses a body that breaks the contract"
            );
            bench.warm(&gateway, request, 2.0).await;
            let run = bench.run(&gateway, request).await;
            let means = validating.processing_means().await;
            if discovery == Discovery::Off {
                print_run("(c) full policy + sensor (body validated)", &run);
                sensor_side_by_side(bench, &gateway, &manifests, upstream, request).await;
            }
            (run, means)
        }
    };
    let (sensor, in_sensor) = contract_run(Discovery::Off).await;
    let Some(pass) = pass_through_run else {
        return;
    };

    // (d) the full policy with discovery (the default): the access log streams to the
    // sensor, nothing inline.
    let discovery = {
        let manifests = full_policy(&issuer.jwks(), None, Discovery::On);
        let (gateway, sensor) = Sensor::beside_with(&manifests, upstream.addr, &AS_DEPLOYED).await;
        assert_eq!(gateway.send(&put(&body)).await.status, 200);
        bench.warm(&gateway, &request, 2.0).await;
        let run = bench.run(&gateway, &request).await;
        print_run("(d) full policy + discovery (default)", &run);
        let inventory = sensor.inventory().await;
        assert!(
            inventory.contains("/users/{userId}/orders"),
            "the sensor learned nothing: {inventory}"
        );
        run
    };
    let (both, _) = contract_run(Discovery::On).await;
    print_run("(e) full policy + sensor + discovery (default)", &both);

    println!(
        "  (b)/(a) closed-loop throughput: {:.0}% ({:.0} vs {:.0} req/s)",
        full.closed.rps / pass.closed.rps * 100.0,
        full.closed.rps,
        pass.closed.rps
    );
    println!(
        "  discovery cost at {} req/s, (d) - (b): p50 {:+.3} ms, p99 {:+.3} ms; closed loop {:.0}% of (b)",
        bench.rate,
        discovery.fixed.p50_ms - full.fixed.p50_ms,
        discovery.fixed.p99_ms - full.fixed.p99_ms,
        discovery.closed.rps / full.closed.rps * 100.0
    );
    println!(
        "  sensor cost at {} req/s, (c) - (b): p50 {:+.3} ms, p99 {:+.3} ms (targets < 0.3 / < 1.5 ms); closed loop {:.0}% of (b)",
        bench.rate,
        sensor.fixed.p50_ms - full.fixed.p50_ms,
        sensor.fixed.p99_ms - full.fixed.p99_ms,
        sensor.closed.rps / full.closed.rps * 100.0
    );
    println!(
        "  sensor cost with discovery on (the default), (e) - (d): p50 {:+.3} ms, p99 {:+.3} ms; closed loop {:.0}% of (d)",
        both.fixed.p50_ms - discovery.fixed.p50_ms,
        both.fixed.p99_ms - discovery.fixed.p99_ms,
        both.closed.rps / discovery.closed.rps * 100.0
    );
    let sensor_ms: f64 = in_sensor.iter().map(|(_, mean_ms)| mean_ms).sum();
    let points: Vec<String> = in_sensor
        .iter()
        .map(|(point, mean_ms)| format!("{point} {:.0} µs", mean_ms * 1000.0))
        .collect();
    println!(
        "  of (c) - (b), inside the sensor (mean per message, its own histogram): {} = {:.3} ms; the rest is the gRPC round trip, Envoy's buffering and scheduling",
        points.join(", "),
        sensor_ms
    );
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
    // `-- sensor`: (b) and the sensor's side by side only.
    let sensor_only = std::env::args().any(|a| a == "sensor");
    rt.block_on(bench_envoy(
        Bench {
            connections: 16,
            secs: 5.0,
            rate: 500.0,
            rate_secs: 10.0,
        },
        sensor_only,
    ));
}
