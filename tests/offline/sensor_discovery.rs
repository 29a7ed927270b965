//! Discovery on real parts: `apiguard render --envoy-dir` of a policy without a contract
//! (discovery is on by default: the gateway streams its access log to the sensor, no ext_proc
//! filter), the real `apiguard sensor` and the real Envoy, over HTTPS. A scripted traffic mix
//! (declared routes, a refused call, an undeclared `/v1/admin/export`, ids and UUIDs in paths)
//! gives the expected inventory at the sensor's `GET /inventory`: templates, declared flags,
//! status classes (Envoy's own 401 and 404 included), authenticated counts, shadow endpoints,
//! and none of the values.
//!
//! With `sensitiveData: All`, the gateway also sends JSON response bodies to the sensor
//! (ext_proc, response only): the inventory gains the classes of sensitive data each endpoint
//! answered (an e-mail and a Luhn-valid card; not a Luhn-invalid number, nor a text/plain
//! body), counted in `apiguard_sensitive_responses_total`, and no value appears in the
//! inventory, the sensor's output or its metrics.

use super::sensor_envoy::Sensor;
use crate::support::envoy::{Gateway, Issuer, Request, echo_upstream, unix_now};
use crate::support::tools::free_port as port;
use crate::support::tools::free_port;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const ISSUER: &str = "https://idp.test.example/";
const UUID: &str = "9f0c5e3a-1c2b-4d5e-8f90-123456789abc";

fn manifests(jwks: &str) -> String {
    format!(
        r#"apiVersion: apiguard.dev/v1alpha1
kind: ApiSecurityPolicy
metadata: {{name: users, namespace: test}}
spec:
  target: {{service: users, port: 8080}}
  exposure: Public
  hosts: [api.test.example]
  authentication:
    jwt:
      providers:
      - name: test
        issuer: {ISSUER}
        audiences: [users-api]
        jwks: {{inline: '{jwks}'}}
  authorization:
    rules:
    - name: health
      match: {{methods: [GET], paths: ["/health"]}}
      public: true
    - name: read-user
      match: {{methods: [GET], paths: ["/users/{{id}}"]}}
      allow: {{scopes: ["users:read"]}}
  eastWest: {{mtls: Disabled}}
---
apiVersion: v1
kind: Service
metadata: {{name: users, namespace: test}}
spec:
  selector: {{app: users}}
  ports: [{{name: http, port: 8080, targetPort: 8080}}]
"#
    )
}

fn endpoint<'a>(inventory: &'a Value, method: &str, path: &str) -> &'a Value {
    inventory["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["method"] == method && e["path"] == path)
        .unwrap_or_else(|| panic!("no {method} {path} in the inventory: {inventory:#}"))
}

/// The sensor's inventory once it has observed `sent` requests (the access log reaches it within
/// its flush interval, 0.5 s); fails after 20 s with the sensor's log.
async fn inventory_after(sensor: &Sensor, sent: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = sensor.admin_get("/inventory").await.unwrap_or_default();
        if status == 200 {
            let inventory: Value = serde_json::from_str(&body).unwrap();
            if inventory["observed"] == sent {
                return inventory;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the sensor did not see the {sent} requests (last answer {status}: {body})\nsensor log:\n{}",
            sensor.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn the_sensor_learns_the_endpoints_the_gateway_serves_from_its_access_log() {
    let issuer = Issuer::new("test-key");
    let upstream = echo_upstream().await;
    let sensor_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let gateway = Gateway::start_with_args(
        &manifests(&issuer.jwks()),
        upstream.addr,
        None,
        vec!["--sensor-addr".into(), sensor_addr.to_string()],
    )
    .await;
    let config = gateway.envoy_dir().join("sensor.yaml");
    let lds = std::fs::read_to_string(gateway.envoy_dir().join("lds.json")).unwrap();
    assert!(
        !lds.contains("ext_proc"),
        "no inline filter without a contract"
    );
    let sensor = Sensor::start(&config, sensor_addr, gateway.dir.path()).await;

    let now = unix_now();
    let token = issuer.token(&json!({
        "iss": ISSUER, "aud": "users-api", "sub": "ann", "scope": "users:read",
        "iat": now, "exp": now + 600,
    }));
    let traffic: Vec<(Request, u16)> = vec![
        (Request::get("/health"), 200),
        (Request::get("/health"), 200),
        (Request::get("/users/123").bearer(&token), 200),
        (
            Request::get(&format!("/users/{UUID}?expand=1")).bearer(&token),
            200,
        ),
        (Request::get("/users/7"), 401),
        (Request::get("/v1/admin/export"), 404),
        (Request::get("/v1/admin/export"), 404),
        (Request::get("/v1/admin/export").bearer(&token), 404),
        (
            Request::get("/orders/12345/items/abcdef0123456789abcd"),
            404,
        ),
    ];
    for (request, expected) in &traffic {
        let r = gateway.send(request).await;
        assert_eq!(
            r.status,
            *expected,
            "{} {}: {}",
            request.method,
            request.path,
            r.text()
        );
    }

    let inventory = inventory_after(&sensor, traffic.len() as u64).await;
    assert_eq!(inventory["policy"], "test/users");

    let users = endpoint(&inventory, "GET", "/users/{id}");
    assert_eq!(users["declared"], true);
    assert_eq!(users["requests"], 3, "{users}");
    assert_eq!(users["statuses"], json!({"2xx": 2, "4xx": 1}), "{users}");
    assert_eq!(users["authenticated"], 2, "{users}");
    let health = endpoint(&inventory, "GET", "/health");
    assert_eq!(
        (health["declared"].clone(), health["requests"].clone()),
        (json!(true), json!(2))
    );
    let export = endpoint(&inventory, "GET", "/v1/admin/export");
    assert_eq!(export["declared"], false);
    assert_eq!(export["statuses"], json!({"4xx": 3}), "{export}");
    // The catch-all route does not verify tokens: a bearer token there is no identity.
    assert_eq!(export["authenticated"], 0, "{export}");
    let items = endpoint(&inventory, "GET", "/orders/{param}/items/{param2}");
    assert_eq!(items["declared"], false);
    let shadow = inventory["shadow"].as_array().unwrap();
    assert!(
        shadow.contains(&json!("GET /v1/admin/export")),
        "{shadow:?}"
    );
    assert!(
        shadow.contains(&json!("GET /orders/{param}/items/{param2}")),
        "{shadow:?}"
    );
    assert!(!shadow.contains(&json!("GET /users/{id}")), "{shadow:?}");

    // The inventory's size in the sensor's metrics.
    let (_, metrics) = sensor.admin_get("/metrics").await.expect("/metrics");
    for series in [
        r#"apiguard_endpoints{policy="test/users",declared="true"} 2"#,
        r#"apiguard_endpoints{policy="test/users",declared="false"} 2"#,
    ] {
        assert!(metrics.contains(series), "no {series} in:\n{metrics}");
    }

    // Classes and counts only: no id, token or query value is kept.
    let text = inventory.to_string();
    for value in [
        UUID,
        "12345",
        "abcdef0123456789abcd",
        "expand",
        token.as_str(),
        "ann",
    ] {
        assert!(
            !text.contains(value),
            "{value:?} is in the inventory: {text}"
        );
    }
}

const EMAIL: &str = "ann.example@example.org";
const CARD: &str = "4111 1111 1111 1111";
const NOT_A_CARD: &str = "4111 1111 1111 1112";

/// Public routes only (no authentication needed) and `sensitiveData: All`.
const SCANNED: &str = r#"apiVersion: apiguard.dev/v1alpha1
kind: ApiSecurityPolicy
metadata: {name: shop, namespace: test}
spec:
  target: {service: shop, port: 8080}
  exposure: Public
  hosts: [api.test.example]
  authorization:
    rules:
    - name: profiles
      match: {methods: [GET], paths: ["/profiles/{id}"]}
      public: true
    - name: tickets
      match: {methods: [GET], paths: ["/tickets/{id}"]}
      public: true
    - name: notes
      match: {methods: [GET], paths: ["/notes"]}
      public: true
  eastWest: {mtls: Disabled}
  discovery: {enabled: true, sensitiveData: All}
---
apiVersion: v1
kind: Service
metadata: {name: shop, namespace: test}
spec:
  selector: {app: shop}
  ports: [{name: http, port: 8080, targetPort: 8080}]
"#;

/// `/profiles/{id}`: JSON with an e-mail and a card; `/tickets/{id}`: JSON with a number that
/// fails the Luhn check; `/notes`: the same e-mail, as text/plain.
async fn shop_upstream() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    use axum::routing::get;
    let router = axum::Router::new()
        .route(
            "/profiles/{id}",
            get(
                |axum::extract::Path(id): axum::extract::Path<String>| async move {
                    axum::Json(json!({"id": id, "email": EMAIL, "card": CARD}))
                },
            ),
        )
        .route(
            "/tickets/{id}",
            get(|| async { axum::Json(json!({"reference": NOT_A_CARD})) }),
        )
        .route("/notes", get(|| async { format!("write to {EMAIL}") }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (addr, task)
}

#[tokio::test]
async fn with_sensitive_data_the_sensor_learns_the_classes_each_endpoint_answers_never_the_values()
{
    let (upstream, _task) = shop_upstream().await;
    let sensor_addr: SocketAddr = ([127, 0, 0, 1], port()).into();
    let gateway = Gateway::start_with_args(
        SCANNED,
        upstream,
        None,
        vec!["--sensor-addr".into(), sensor_addr.to_string()],
    )
    .await;
    let lds: Value = serde_json::from_str(
        &std::fs::read_to_string(gateway.envoy_dir().join("lds.json")).unwrap(),
    )
    .unwrap();
    let text = lds.to_string();
    assert!(text.contains("envoy.filters.http.ext_proc"), "{text}");
    assert!(text.contains(r#""failure_mode_allow":true"#), "fails open");
    assert!(
        text.contains(r#""request_body_mode":"NONE""#),
        "no request body"
    );
    assert!(text.contains(r#""response_body_mode":"BUFFERED_PARTIAL""#));
    let config = gateway.envoy_dir().join("sensor.yaml");
    // Debug: the scan's own log lines are written too, and checked for values.
    let sensor = Sensor::start_with_env(
        &config,
        sensor_addr,
        gateway.dir.path(),
        &[("RUST_LOG", "debug")],
    )
    .await;

    let traffic = [
        ("/profiles/1", 3),
        ("/profiles/2", 0),
        ("/tickets/9", 1),
        ("/notes", 1),
    ];
    let mut sent = 0;
    for (path, _) in &traffic {
        for _ in 0..2 {
            let r = gateway.send(&Request::get(path)).await;
            assert_eq!(r.status, 200, "{path}: {}", r.text());
            sent += 1;
            // The client gets the upstream's body unchanged.
            if path.starts_with("/profiles") {
                assert_eq!(r.json()["email"], EMAIL);
                assert_eq!(r.json()["card"], CARD);
            }
        }
    }

    let inventory = inventory_after(&sensor, sent as u64).await;
    let profiles = endpoint(&inventory, "GET", "/profiles/{id}");
    assert_eq!(
        profiles["requests"], 4,
        "a scan counts no request: {profiles}"
    );
    assert_eq!(
        profiles["sensitive"],
        json!(["email", "payment_card"]),
        "{profiles}"
    );
    assert_eq!(
        profiles["sensitiveCounts"],
        json!({"email": 4, "payment_card": 4}),
        "{profiles}"
    );
    let tickets = endpoint(&inventory, "GET", "/tickets/{id}");
    assert_eq!(tickets["requests"], 2);
    assert_eq!(tickets["sensitive"], json!([]), "bad Luhn: {tickets}");
    let notes = endpoint(&inventory, "GET", "/notes");
    assert_eq!(notes["requests"], 2);
    assert_eq!(
        notes["sensitive"],
        json!([]),
        "text/plain is not scanned: {notes}"
    );

    let (_, metrics) = sensor.admin_get("/metrics").await.expect("/metrics");
    for series in [
        r#"apiguard_sensitive_responses_total{policy="test/shop",class="email"} 4"#,
        r#"apiguard_sensitive_responses_total{policy="test/shop",class="payment_card"} 4"#,
    ] {
        assert!(metrics.contains(series), "no {series} in:\n{metrics}");
    }
    assert_eq!(
        metrics
            .matches("apiguard_sensitive_responses_total{")
            .count(),
        2,
        "{metrics}"
    );

    let log = sensor.log_text();
    assert!(
        log.contains("response scanned for sensitive data"),
        "the scans are logged (debug):\n{log}"
    );
    let card_digits = CARD.replace(' ', "");
    for (what, text) in [
        ("the inventory", inventory.to_string()),
        ("the sensor's output", log),
        ("the metrics", metrics),
    ] {
        for value in [EMAIL, "ann.example", CARD, card_digits.as_str(), NOT_A_CARD] {
            assert!(!text.contains(value), "{value:?} is in {what}:\n{text}");
        }
    }

    // Scanning is observation: with the sensor gone, the gateway still answers (fails open,
    // although the policy is in Enforce).
    drop(sensor);
    let r = gateway.send(&Request::get("/profiles/3")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["id"], "3");
}

#[tokio::test]
async fn sampled_scans_one_response_in_ten_per_endpoint_and_envoy_sends_only_those_bodies() {
    let (upstream, _task) = shop_upstream().await;
    let sensor_addr: SocketAddr = ([127, 0, 0, 1], port()).into();
    let gateway = Gateway::start_with_args(
        &SCANNED.replace("sensitiveData: All", "sensitiveData: Sampled"),
        upstream,
        None,
        vec!["--sensor-addr".into(), sensor_addr.to_string()],
    )
    .await;
    let lds = std::fs::read_to_string(gateway.envoy_dir().join("lds.json")).unwrap();
    assert!(lds.contains(r#""allow_mode_override":true"#), "{lds}");
    let config = gateway.envoy_dir().join("sensor.yaml");
    let sensor = Sensor::start(&config, sensor_addr, gateway.dir.path()).await;

    let mut sent = 0;
    for i in 1..=12 {
        let r = gateway.send(&Request::get(&format!("/profiles/{i}"))).await;
        assert_eq!(r.status, 200, "{}", r.text());
        // Scanned or not, the client gets the whole body.
        assert_eq!(r.json()["email"], EMAIL);
        assert_eq!(r.json()["id"], i.to_string());
        sent += 1;
    }
    for _ in 0..3 {
        let r = gateway.send(&Request::get("/notes")).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), format!("write to {EMAIL}"));
        sent += 1;
    }

    let inventory = inventory_after(&sensor, sent as u64).await;
    let profiles = endpoint(&inventory, "GET", "/profiles/{id}");
    assert_eq!(profiles["requests"], 12);
    assert_eq!(
        profiles["sensitiveCounts"],
        json!({"email": 2, "payment_card": 2}),
        "the 1st and the 11th: {profiles}"
    );
    assert_eq!(
        endpoint(&inventory, "GET", "/notes")["sensitive"],
        json!([])
    );

    // Envoy sent the sensor only the two bodies it scanned: for the other 13 responses (10
    // JSON ones out of the sample, 3 text/plain) the sensor's answer to the headers said "no
    // body", and Envoy honoured it.
    let (_, metrics) = sensor.admin_get("/metrics").await.expect("/metrics");
    let count = |point: &str| -> u64 {
        let prefix = format!("apiguard_sensor_processing_seconds_count{{point=\"{point}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .map_or(0, |n| n.trim().parse().unwrap())
    };
    assert_eq!(count("response_headers"), 15, "{metrics}");
    assert_eq!(count("response_body"), 2, "{metrics}");
    assert!(
        metrics
            .contains(r#"apiguard_sensitive_responses_total{policy="test/shop",class="email"} 2"#),
        "{metrics}"
    );
}
