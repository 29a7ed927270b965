//! The whole gateway on real parts: `apiguard render --envoy-dir DIR --sensor-addr ADDR` of a
//! policy with a contract (`spec.openapi`), JWT authentication and rules; the real
//! `apiguard sensor --config DIR/sensor.yaml` on ADDR; the real Envoy on the rendered
//! bootstrap, over HTTPS, in front of a users upstream that leaks a `writeOnly` password and an
//! undeclared `passwordHash`. One Envoy + sensor pair per mode; each promise is its own case,
//! and every failing case is reported.

use super::sensor_envoy::Sensor;
use crate::support::envoy::{Gateway, Issuer, Request, Response, unix_now};
use crate::support::tools::free_port;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const ISSUER: &str = "https://idp.test.example/";
const AUDIENCE: &str = "users-api";

/// The users API. `{id}` is an int64; `User.name` carries a `maxLength` so that the reload
/// case can make it `readOnly` by one replacement.
const DOCUMENT: &str = r#"openapi: 3.1.0
info: {title: Users, version: "1"}
paths:
  /users:
    post:
      requestBody:
        required: true
        content:
          application/json:
            schema: {$ref: '#/components/schemas/NewUser'}
      responses:
        '201':
          description: created
          content:
            application/json:
              schema: {$ref: '#/components/schemas/User'}
  /users/{id}:
    parameters:
      - {name: id, in: path, required: true, schema: {type: integer, format: int64}}
    get:
      responses:
        '200':
          description: the user
          content:
            application/json:
              schema: {$ref: '#/components/schemas/User'}
    patch:
      requestBody:
        required: true
        content:
          application/json:
            schema: {$ref: '#/components/schemas/User'}
      responses:
        '200':
          description: the updated user
          content:
            application/json:
              schema: {$ref: '#/components/schemas/User'}
components:
  schemas:
    User:
      type: object
      properties:
        id: {type: integer, format: int64, readOnly: true}
        name: {type: string, maxLength: 64}
        email: {type: string}
        age: {type: integer}
        role: {type: string, readOnly: true}
        password: {type: string, writeOnly: true}
    NewUser:
      type: object
      required: [name, email]
      properties:
        name: {type: string}
        email: {type: string}
        password: {type: string, writeOnly: true}
"#;

/// [`DOCUMENT`] with `User.name` made `readOnly`.
fn name_read_only() -> String {
    let changed = DOCUMENT.replace(
        "name: {type: string, maxLength: 64}",
        "name: {type: string, maxLength: 64, readOnly: true}",
    );
    assert_ne!(changed, DOCUMENT);
    changed
}

/// Where the policy's contract comes from.
enum Source<'a> {
    Inline(&'a str),
    /// ConfigMap `users-openapi` (given with `-f` beside the policy) holding the document.
    ConfigMap(&'a str),
}

/// The policy (JWT, one rule per operation, and a `DELETE` rule the document does not
/// declare), its Service and, for [`Source::ConfigMap`], the ConfigMap.
fn manifests(jwks: &str, mode: &str, source: Source<'_>) -> String {
    let indent = |doc: &str| doc.trim_end().replace('\n', "\n        ");
    let (source, config_map) = match source {
        Source::Inline(doc) => (format!("inline: |\n        {}", indent(doc)), String::new()),
        Source::ConfigMap(doc) => (
            "configMapRef: {name: users-openapi, key: openapi.yaml}".to_string(),
            format!(
                "---\n{}\n",
                json!({
                    "apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "users-openapi", "namespace": "test"},
                    "data": {"openapi.yaml": doc},
                })
            ),
        ),
    };
    format!(
        r#"apiVersion: apiguard.dev/v1alpha1
kind: ApiSecurityPolicy
metadata: {{name: users, namespace: test}}
spec:
  target: {{service: users, port: 8080}}
  exposure: Public
  hosts: [api.test.example]
  mode: {mode}
  authentication:
    jwt:
      providers:
      - name: test
        issuer: {ISSUER}
        audiences: [{AUDIENCE}]
        jwks: {{inline: '{jwks}'}}
  authorization:
    rules:
    - name: read-user
      match: {{methods: [GET], paths: ["/users/{{id}}"]}}
      allow: {{scopes: ["users:read"]}}
    - name: write-user
      match: {{methods: [PATCH, DELETE], paths: ["/users/{{id}}"]}}
      allow: {{scopes: ["users:write"]}}
    - name: create-user
      match: {{methods: [POST], paths: ["/users"]}}
      allow: {{scopes: ["users:write"]}}
  requestValidation:
    maxBodyBytes: 65536
  eastWest: {{mtls: Disabled}}
  openapi:
    source:
      {source}
    requests: Enforce
    responses: Redact
---
apiVersion: v1
kind: Service
metadata: {{name: users, namespace: test}}
spec:
  selector: {{app: users}}
  ports: [{{name: http, port: 8080, targetPort: 8080}}]
{config_map}"#
    )
}

/// The users upstream: `GET`/`PATCH /users/{id}` and `POST /users` answer a user carrying its
/// `writeOnly` password and an undeclared `passwordHash`; `DELETE /users/{id}` and anything else
/// answer `{"reached": "upstream"}` (an undeclared operation that got through).
async fn users_upstream() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    fn user(id: i64, sent: &Value) -> Value {
        json!({
            "id": id,
            "name": sent["name"].as_str().unwrap_or("Ann"),
            "email": "ann@example.test",
            "role": "member",
            "password": "pw-leak-5150",
            "passwordHash": "$2b$10$leak",
        })
    }
    /// Also says how the body it got was framed (`x-upstream-framing`), and its length.
    async fn one(
        axum::extract::Path(id): axum::extract::Path<String>,
        headers: axum::http::HeaderMap,
        body: axum::body::Bytes,
    ) -> ([(&'static str, String); 1], axum::Json<Value>) {
        let sent: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let framing = match (
            headers.get("content-length").and_then(|v| v.to_str().ok()),
            headers
                .get("transfer-encoding")
                .and_then(|v| v.to_str().ok()),
        ) {
            (Some(length), None) => format!("content-length {length}, {} bytes", body.len()),
            (length, chunked) => {
                format!("content-length {length:?}, transfer-encoding {chunked:?}")
            }
        };
        (
            [("x-upstream-framing", framing)],
            axum::Json(user(id.parse().unwrap_or(0), &sent)),
        )
    }
    async fn create(body: axum::body::Bytes) -> (axum::http::StatusCode, axum::Json<Value>) {
        let sent: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        (axum::http::StatusCode::CREATED, axum::Json(user(1, &sent)))
    }
    async fn other() -> axum::Json<Value> {
        axum::Json(json!({"reached": "upstream"}))
    }
    let router = axum::Router::new()
        .route(
            "/users/{id}",
            axum::routing::get(one).patch(one).delete(other),
        )
        .route("/users", axum::routing::post(create))
        .fallback(other);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("upstream addr");
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (addr, task)
}

/// The rendered gateway, its sensor and the upstream, for one policy mode.
struct Stack {
    gateway: Gateway,
    sensor: Sensor,
    issuer: Issuer,
    upstream_task: tokio::task::JoinHandle<()>,
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.upstream_task.abort();
    }
}

impl Stack {
    async fn start(source: impl Fn(&str) -> String) -> Stack {
        let issuer = Issuer::new("test-key");
        let (upstream, task) = users_upstream().await;
        let sensor_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let gateway = Gateway::start_with_args(
            &source(&issuer.jwks()),
            upstream,
            None,
            vec!["--sensor-addr".into(), sensor_addr.to_string()],
        )
        .await;
        let config = gateway.envoy_dir().join("sensor.yaml");
        let sensor = Sensor::start(&config, sensor_addr, gateway.dir.path()).await;
        Stack {
            gateway,
            sensor,
            issuer,
            upstream_task: task,
        }
    }

    fn token(&self) -> String {
        let now = unix_now();
        self.issuer.token(&json!({
            "iss": ISSUER, "aud": AUDIENCE, "sub": "ann",
            "scope": "users:read users:write", "iat": now, "exp": now + 600,
        }))
    }

    async fn send(&self, request: Request) -> Response {
        self.gateway.send(&request.bearer(&self.token())).await
    }

    async fn patch(&self, body: &str) -> Response {
        self.send(Request::new("PATCH", "/users/7").json(body))
            .await
    }

    /// The status, body and the sensor's log, for assertion messages.
    fn context(&self, r: &Response) -> String {
        format!(
            "{} {}\nsensor log:\n{}",
            r.status,
            r.text(),
            self.sensor.log_text()
        )
    }

    /// The sensor's JSON log lines.
    fn log_lines(&self) -> Vec<Value> {
        self.sensor
            .log_text()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

/// Failed cases, reported together at the end.
#[derive(Default)]
struct Cases(Vec<String>);

impl Cases {
    fn check(&mut self, case: &str, ok: bool, detail: impl FnOnce() -> String) {
        if !ok {
            self.0.push(format!("[{case}] {}", detail()));
        }
    }

    /// A refusal: `status`, problem+json, an error at `location` with `reason` (any reason
    /// when `None`), and none of `sent` in the body.
    fn refusal(
        &mut self,
        case: &str,
        r: &Response,
        status: u16,
        location: &str,
        reason: Option<&str>,
        sent: &str,
    ) {
        let problem: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        let errors = problem["errors"].as_array().cloned().unwrap_or_default();
        let ok = r.status == status
            && r.header("content-type") == Some("application/problem+json")
            && problem["status"] == status
            && errors.iter().any(|e| {
                e["location"] == location && reason.is_none_or(|reason| e["reason"] == reason)
            })
            && !r.text().contains(sent);
        self.check(case, ok, || {
            format!(
                "want {status} problem+json at {location} ({reason:?}) without {sent:?}; got {} {:?} {}",
                r.status,
                r.header("content-type"),
                r.text()
            )
        });
    }

    fn finish(self, stack: &Stack) {
        assert!(
            self.0.is_empty(),
            "{} case(s) failed:\n{}\n\nsensor log:\n{}",
            self.0.len(),
            self.0.join("\n"),
            stack.sensor.log_text()
        );
    }
}

/// Sends requests until `done` holds of the answer, for at most 15 s; the last answer.
async fn eventually(
    stack: &Stack,
    request: impl Fn() -> Request,
    done: impl Fn(&Response) -> bool,
) -> Response {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = stack.send(request()).await;
        if done(&r) || Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn enforce_the_rendered_gateway_and_sensor_enforce_the_contract_and_reload_it() {
    let mut stack =
        Stack::start(|jwks| manifests(jwks, "Enforce", Source::ConfigMap(DOCUMENT))).await;
    let mut cases = Cases::default();

    // A valid body reaches the upstream; the answer loses the writeOnly and the undeclared
    // properties (responses: Redact).
    let r = stack.patch(r#"{"name":"Bea"}"#).await;
    cases.check("valid body 200", r.status == 200, || stack.context(&r));
    // The body went to the sensor streamed right behind its headers (one round trip); the
    // upstream still gets it as sent, with its content-length, not re-framed as chunked.
    cases.check(
        "the upstream gets the body with its content-length",
        r.header("x-upstream-framing") == Some("content-length 14, 14 bytes"),
        || {
            format!(
                "{:?}; {}",
                r.header("x-upstream-framing"),
                stack.context(&r)
            )
        },
    );
    let redacted = json!({"id": 7, "name": "Bea", "email": "ann@example.test", "role": "member"});
    cases.check(
        "response redacted",
        serde_json::from_slice::<Value>(&r.body).ok() == Some(redacted.clone()),
        || format!("want {redacted}; {}", stack.context(&r)),
    );
    let r = stack.send(Request::get("/users/9")).await;
    cases.check(
        "GET response redacted",
        r.status == 200
            && !r.text().contains("password")
            && !r.text().contains("passwordHash")
            && r.text().contains("\"name\""),
        || stack.context(&r),
    );

    let r = stack.patch(r#"{"nickname":"zed-4411"}"#).await;
    cases.refusal(
        "unknown property",
        &r,
        400,
        "body/nickname",
        Some("unknownProperty"),
        "zed-4411",
    );
    let r = stack.patch(r#"{"role":"admin-7731"}"#).await;
    cases.refusal(
        "readOnly",
        &r,
        400,
        "body/role",
        Some("readOnly"),
        "admin-7731",
    );
    let r = stack.patch(r#"{"age":"forty-2277"}"#).await;
    cases.refusal(
        "wrong type",
        &r,
        400,
        "body/age",
        Some("type"),
        "forty-2277",
    );
    let r = stack
        .send(Request::post("/users").json(r#"{"name":"Cyd-8812"}"#))
        .await;
    cases.refusal(
        "missing required",
        &r,
        400,
        "body/email",
        Some("required"),
        "Cyd-8812",
    );
    let r = stack
        .send(
            Request::new("PATCH", "/users/7")
                .header("content-type", "text/plain")
                .body(b"name=plain-6620".to_vec()),
        )
        .await;
    cases.refusal(
        "wrong content type",
        &r,
        415,
        "header/content-type",
        None,
        "plain-6620",
    );
    let r = stack.send(Request::get("/users/abc-9931")).await;
    cases.refusal(
        "path parameter format",
        &r,
        400,
        "path/id",
        None,
        "abc-9931",
    );

    // DELETE /users/{id}: the rules allow it, the document does not declare it.
    let r = stack.send(Request::new("DELETE", "/users/4455")).await;
    cases.refusal(
        "undeclared operation",
        &r,
        404,
        "operation",
        Some("undeclared"),
        "4455",
    );
    let problem: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    cases.check(
        "undeclared operation problem type",
        problem["type"] == "https://apiguard.dev/problems/undeclared-operation"
            && problem["title"] == "Operation not declared by the API contract",
        || stack.context(&r),
    );

    // The refusals are logged with locations, never values.
    let lines = stack.log_lines();
    let refused = lines.iter().find(|l| {
        l["message"] == "contract: request refused" && l["locations"] == "body/role:readOnly"
    });
    cases.check(
        "refusal logged",
        refused.is_some_and(|l| !l.to_string().contains("admin-7731")),
        || "no refusal line for body/role, or it holds the value".into(),
    );
    let (_, metrics) = stack.sensor.admin_get("/metrics").await.unwrap_or_default();
    for series in [
        r#"apiguard_sensor_requests_total{policy="test/users",decision="undeclared_refused"} 1"#,
        r#"apiguard_sensor_requests_total{policy="test/users",decision="refused"} 6"#,
    ] {
        cases.check("metrics", metrics.contains(series), || {
            format!("{series} not in:\n{metrics}")
        });
    }

    // The contract changed (the ConfigMap given with -f edited, re-rendered into the same
    // directory): enforced without restarting Envoy or the sensor.
    let (envoy_pid, sensor_pid) = (stack.gateway.pid(), stack.sensor.child.id());
    stack.gateway.render(&manifests(
        &stack.issuer.jwks(),
        "Enforce",
        Source::ConfigMap(&name_read_only()),
    ));
    let r = eventually(
        &stack,
        || Request::new("PATCH", "/users/7").json(r#"{"name":"Bea-3303"}"#),
        |r| r.status == 400,
    )
    .await;
    cases.refusal(
        "changed contract enforced",
        &r,
        400,
        "body/name",
        Some("readOnly"),
        "Bea-3303",
    );
    let sensor_running = matches!(stack.sensor.child.try_wait(), Ok(None));
    cases.check(
        "same Envoy and sensor",
        stack.gateway.pid() == envoy_pid
            && stack.gateway.running()
            && stack.sensor.child.id() == sensor_pid
            && sensor_running,
        || "Envoy or the sensor restarted or exited".into(),
    );

    // The sensor gone: Envoy fails closed.
    stack.sensor.child.kill().expect("kill the sensor");
    let _ = stack.sensor.child.wait();
    let r = stack.send(Request::get("/users/9")).await;
    cases.check("sensor killed: 503", r.status == 503, || {
        format!("{} {}", r.status, r.text())
    });
    cases.check(
        "sensor killed: the 503 is problem+json",
        r.header("content-type") == Some("application/problem+json")
            && serde_json::from_slice::<Value>(&r.body).is_ok_and(|p| {
                p["status"] == 503
                    && p["type"]
                        .as_str()
                        .is_some_and(|t| t.ends_with("/sensor-unavailable"))
            }),
        || format!("{:?} {}", r.header("content-type"), r.text()),
    );

    cases.finish(&stack);
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_the_rendered_gateway_lets_bad_requests_through_and_the_sensor_logs_them() {
    let mut stack = Stack::start(|jwks| manifests(jwks, "Audit", Source::Inline(DOCUMENT))).await;
    let mut cases = Cases::default();

    let r = stack.patch(r#"{"role":"admin-7731"}"#).await;
    cases.check("readOnly let through", r.status == 200, || {
        stack.context(&r)
    });
    let logged = stack.log_lines().into_iter().find(|l| {
        l["message"] == "contract: request would be refused (audit); let through"
            && l["locations"] == "body/role:readOnly"
    });
    cases.check(
        "would-be refusal logged with the location",
        logged.as_ref().is_some_and(|l| {
            l["policy"] == "test/users"
                && l["operation"] == "PATCH /users/{id}"
                && !l.to_string().contains("admin-7731")
        }),
        || format!("{logged:?}"),
    );
    cases.check(
        "the value is nowhere in the sensor log",
        !stack.sensor.log_text().contains("admin-7731"),
        || "admin-7731 logged".into(),
    );

    let r = stack.send(Request::new("DELETE", "/users/4455")).await;
    cases.check(
        "undeclared operation let through",
        r.status == 200 && r.text().contains("upstream"),
        || stack.context(&r),
    );
    cases.check(
        "undeclared operation logged",
        stack.log_lines().iter().any(|l| {
            l["message"] == "contract: request would be refused (audit); let through"
                && l["decision"] == "undeclared_audited"
                && l["locations"] == "operation:undeclared"
        }),
        || "no undeclared_audited line".into(),
    );

    // Responses are still redacted in Audit (responses: Redact is not a refusal).
    let r = stack.send(Request::get("/users/9")).await;
    cases.check(
        "response redacted in audit",
        r.status == 200 && !r.text().contains("password"),
        || stack.context(&r),
    );

    // The sensor gone: Envoy fails open.
    stack.sensor.child.kill().expect("kill the sensor");
    let _ = stack.sensor.child.wait();
    let r = stack.send(Request::get("/users/9")).await;
    cases.check("sensor killed: 200", r.status == 200, || {
        format!("{} {}", r.status, r.text())
    });

    cases.finish(&stack);
}
