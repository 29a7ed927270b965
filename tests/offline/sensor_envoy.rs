//! `apiguard sensor` (the built binary) behind a real Envoy: a hand-written bootstrap with the
//! ext_proc filter (bodies BUFFERED, failure_mode_allow false, 200 ms message timeout, the
//! request attributes the renderer asks for) in front of a users upstream that leaks a
//! `passwordHash`. Checks refusals, redaction, the reload and Envoy's answer when the sensor
//! is gone.

use crate::support::envoy::{Request, Response, raw_request};
use crate::support::tools::{free_port, tool};
use apiguard::sensor::config::REQUEST_ATTRIBUTES;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) const USERS_OPENAPI: &str = include_str!("../../src/sensor/testdata/users.yaml");

/// The sensor.yaml of the users API with `requests` and `responses` modes.
pub(crate) fn sensor_yaml(requests: &str, responses: &str) -> String {
    let document = serde_json::to_string(USERS_OPENAPI).expect("a string");
    format!(
        "apiVersion: apiguard.dev/v1alpha1\nkind: SensorConfig\npolicy: {{namespace: shop, name: users}}\nopenapi:\n  document: {document}\n  requests: {requests}\n  responses: {responses}\n"
    )
}

/// A running `apiguard sensor`, killed on drop.
pub(crate) struct Sensor {
    pub(crate) child: Child,
    pub(crate) admin: SocketAddr,
    pub(crate) log: PathBuf,
}

impl Drop for Sensor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sensor {
    /// Starts the binary on `listen` with `config`, waiting (bounded) for `/readyz`.
    pub(crate) async fn start(config: &Path, listen: SocketAddr, dir: &Path) -> Sensor {
        Self::start_with_env(config, listen, dir, &[]).await
    }

    /// Like [`Sensor::start`], with environment variables (`RUST_LOG`); its stdout and stderr
    /// both go to the log.
    pub(crate) async fn start_with_env(
        config: &Path,
        listen: SocketAddr,
        dir: &Path,
        env: &[(&str, &str)],
    ) -> Sensor {
        let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let log = dir.join("sensor.log");
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_apiguard"))
            .arg("sensor")
            .arg("--config")
            .arg(config)
            .args(["--listen", &listen.to_string()])
            .args(["--admin-addr", &admin.to_string()])
            .args(["--log-format", "json"])
            .envs(env.iter().copied())
            .stdout(Stdio::from(file.try_clone().expect("log file")))
            .stderr(Stdio::from(file))
            .spawn()
            .expect("start apiguard sensor");
        let mut sensor = Sensor { child, admin, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = sensor.child.try_wait() {
                panic!(
                    "apiguard sensor exited with {status}:\n{}",
                    sensor.log_text()
                );
            }
            if matches!(sensor.admin_get("/readyz").await, Some((200, _))) {
                return sensor;
            }
            assert!(
                Instant::now() < deadline,
                "apiguard sensor not ready within 20s:\n{}",
                sensor.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub(crate) async fn admin_get(&self, path: &str) -> Option<(u16, String)> {
        let r = raw_request(
            self.admin,
            None,
            None,
            &Request::get(path).host("localhost"),
        )
        .await;
        r.ok().map(|r| (r.status, r.text()))
    }
}

/// The users upstream: `GET`/`PATCH /users/{id}` answer a user with a `passwordHash` the
/// contract does not declare (and the name the PATCH sent, to show its body arrived).
async fn users_upstream() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    async fn user(
        axum::extract::Path(id): axum::extract::Path<String>,
        body: axum::body::Bytes,
    ) -> axum::Json<Value> {
        let sent: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let name = sent["name"].as_str().unwrap_or("Ann").to_string();
        axum::Json(json!({
            "id": id, "name": name, "role": "member", "passwordHash": "$2b$10$leaked",
        }))
    }
    let router = axum::Router::new().route("/users/{id}", axum::routing::get(user).patch(user));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("upstream addr");
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (addr, task)
}

/// The bootstrap: listener → ext_proc (to the sensor) → router (to the upstream).
fn bootstrap(port: u16, admin: u16, sensor: SocketAddr, upstream: SocketAddr) -> String {
    let attributes = serde_json::to_string(REQUEST_ATTRIBUTES).expect("json");
    let cluster = |name: &str, addr: SocketAddr, h2: bool| {
        let protocol = if h2 {
            "\n    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        explicit_http_config: {http2_protocol_options: {}}"
        } else {
            ""
        };
        format!(
            "  - name: {name}\n    type: STATIC\n    connect_timeout: 0.25s{protocol}\n    load_assignment:\n      cluster_name: {name}\n      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: {}, port_value: {}}}}}}}}}]}}]\n",
            addr.ip(),
            addr.port()
        )
    };
    format!(
        r#"admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
static_resources:
  listeners:
  - name: main
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          route_config:
            name: local
            virtual_hosts:
            - name: users
              domains: ["*"]
              routes:
              - name: users
                match: {{prefix: "/"}}
                route: {{cluster: upstream}}
          http_filters:
          - name: envoy.filters.http.ext_proc
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor
              grpc_service:
                envoy_grpc: {{cluster_name: apiguard_sensor}}
              failure_mode_allow: false
              status_on_error: {{code: 503}}
              message_timeout: 0.2s
              processing_mode:
                request_header_mode: SEND
                response_header_mode: SEND
                request_body_mode: BUFFERED
                response_body_mode: BUFFERED
                request_trailer_mode: SKIP
                response_trailer_mode: SKIP
              request_attributes: {attributes}
              metadata_options:
                forwarding_namespaces: {{untyped: [envoy.filters.http.jwt_authn]}}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
{sensor_cluster}{upstream_cluster}"#,
        sensor_cluster = cluster("apiguard_sensor", sensor, true),
        upstream_cluster = cluster("upstream", upstream, false),
    )
}

/// A real Envoy with `bootstrap`, killed on drop.
struct Envoy {
    child: Child,
    port: u16,
    admin: u16,
    log: PathBuf,
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Envoy {
    async fn start(dir: &Path, sensor: SocketAddr, upstream: SocketAddr) -> Envoy {
        let (port, admin) = (free_port(), free_port());
        let config = dir.join("bootstrap.yaml");
        std::fs::write(&config, bootstrap(port, admin, sensor, upstream)).expect("bootstrap");
        let log = dir.join("envoy.log");
        let child = Command::new(tool("envoy"))
            .arg("-c")
            .arg(&config)
            .args(["--disable-hot-restart", "--concurrency", "1"])
            .args(["--log-level", "info", "--base-id", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log).expect("log")))
            .spawn()
            .expect("start envoy");
        let mut envoy = Envoy {
            child,
            port,
            admin,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = envoy.child.try_wait() {
                panic!("envoy exited with {status}:\n{}", envoy.log_text());
            }
            let addr: SocketAddr = ([127, 0, 0, 1], envoy.admin).into();
            let ready = raw_request(addr, None, None, &Request::get("/ready").host("x")).await;
            if ready.is_ok_and(|r| r.status == 200)
                && tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
            {
                return envoy;
            }
            assert!(
                Instant::now() < deadline,
                "envoy not ready in 30s:\n{}",
                envoy.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn send(&self, request: &Request) -> Response {
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        raw_request(addr, None, None, request)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "{} {}: {e}\n{}",
                    request.method,
                    request.path,
                    self.log_text()
                )
            })
    }
}

fn patch(body: &str) -> Request {
    Request::new("PATCH", "/users/7").host("api").json(body)
}

#[tokio::test(flavor = "multi_thread")]
async fn envoy_and_the_sensor_enforce_the_contract_and_reload_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("sensor.yaml");
    std::fs::write(&config, sensor_yaml("Enforce", "Redact")).expect("write config");
    let listen: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let mut sensor = Sensor::start(&config, listen, dir.path()).await;
    let (upstream, _task) = users_upstream().await;
    let envoy = Envoy::start(dir.path(), listen, upstream).await;
    let context =
        |r: &Response| format!("{} {}\nsensor:\n{}", r.status, r.text(), sensor.log_text());

    // A valid PATCH reaches the upstream; the answer loses what the contract does not declare.
    let ok = envoy.send(&patch(r#"{"name":"Bea"}"#)).await;
    assert_eq!(ok.status, 200, "{}", context(&ok));
    assert_eq!(
        ok.json(),
        json!({"id": "7", "name": "Bea", "role": "member"})
    );

    // Mass assignment: 400 problem+json naming the location, not the value.
    let refused = envoy.send(&patch(r#"{"role":"admin"}"#)).await;
    assert_eq!(refused.status, 400, "{}", context(&refused));
    assert_eq!(
        refused.header("content-type"),
        Some("application/problem+json")
    );
    assert_eq!(
        refused.json()["errors"],
        json!([{"location": "body/role", "reason": "readOnly"}])
    );
    assert!(!refused.text().contains("admin"), "{}", refused.text());

    let wrong_type = Request::new("PATCH", "/users/7")
        .host("api")
        .header("content-type", "text/plain")
        .body(b"name=Bea".to_vec());
    let r = envoy.send(&wrong_type).await;
    assert_eq!(r.status, 415, "{}", context(&r));

    // A GET (headers only) is checked and its response redacted.
    let r = envoy.send(&Request::get("/users/9").host("api")).await;
    assert_eq!(r.status, 200, "{}", context(&r));
    assert_eq!(
        r.json(),
        json!({"id": "9", "name": "Ann", "role": "member"})
    );

    // The decision log line: policy, operation and locations, never the value.
    let logged = sensor.log_text();
    let refusal = logged
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| {
            l["message"] == "contract: request refused" && l["locations"] == "body/role:readOnly"
        })
        .unwrap_or_else(|| panic!("no refusal log line:\n{logged}"));
    assert_eq!(refusal["policy"], "shop/users");
    assert_eq!(refusal["operation"], "PATCH /users/{id}");
    assert!(!refusal.to_string().contains("admin"), "{refusal}");

    let (_, metrics) = sensor.admin_get("/metrics").await.expect("metrics");
    for series in [
        r#"apiguard_sensor_requests_total{policy="shop/users",decision="refused"} 2"#,
        r#"apiguard_sensor_responses_total{policy="shop/users",action="redacted"} 2"#,
    ] {
        assert!(metrics.contains(series), "{series} not in:\n{metrics}");
    }

    // Reload: requests in Audit; the bad request passes without a restart.
    std::fs::write(&config, sensor_yaml("Audit", "Redact")).expect("rewrite config");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = envoy.send(&patch(r#"{"role":"admin"}"#)).await;
        if r.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still refused after 15s: {}",
            context(&r)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        sensor.log_text().contains("would be refused"),
        "{}",
        sensor.log_text()
    );

    // The sensor gone: Envoy fails closed with its own 503.
    sensor.child.kill().expect("kill sensor");
    let _ = sensor.child.wait();
    let r = envoy.send(&patch(r#"{"name":"Bea"}"#)).await;
    assert_eq!(
        r.status,
        503,
        "{} {}\n{}",
        r.status,
        r.text(),
        envoy.log_text()
    );
}
