//! Runtime detection on real parts: `apiguard render --envoy-dir` of a policy with two `Block`
//! detectors, the real `apiguard sensor` and the real Envoy over HTTPS, held to attack replays.
//!
//! - Credential stuffing: 30 failed `POST /login` (the upstream answers 401) from one client IP
//!   make the sensor block that IP within 2 s: its next request gets `403` problem+json with
//!   `retry-after`, whatever it sends; another IP logging in correctly is served; after
//!   `blockFor` the IP is served again.
//! - Object enumeration (BOLA): one subject walking `/users/{1..}/orders` (the ownership rule
//!   answers 403) is blocked after 20 distinct ids, even on its own orders; another subject
//!   making as many requests to its own id is never blocked.
//! - The signals: `GET /detections` (the IP as given, the subject only as a hash),
//!   `apiguard_detections_total`, `apiguard_active_blocks`, `apiguard_blocked_requests_total`,
//!   and a JSON log line per detection without the subject's value.

use super::sensor_envoy::Sensor;
use crate::support::envoy::{Gateway, Issuer, Request, Response, unix_now};
use crate::support::tools::free_port;
use serde_json::{Value, json};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

const ISSUER: &str = "https://idp.test.example/";
/// The attacker's address and a legitimate client's (the whole 127/8 is loopback).
const ATTACKER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const CUSTOMER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

fn manifests(jwks: &str) -> String {
    format!(
        r#"apiVersion: apiguard.dev/v1alpha1
kind: ApiSecurityPolicy
metadata: {{name: shop, namespace: test}}
spec:
  target: {{service: shop, port: 8080}}
  exposure: Public
  hosts: [api.test.example]
  authentication:
    jwt:
      providers:
      - name: test
        issuer: {ISSUER}
        audiences: [shop-api]
        jwks: {{inline: '{jwks}'}}
  authorization:
    rules:
    - name: login
      match: {{methods: [POST], paths: ["/login"]}}
      public: true
    - name: orders
      match: {{methods: [GET], paths: ["/users/{{userId}}/orders"]}}
      ownership: {{pathParam: userId, claim: sub}}
  eastWest: {{mtls: Disabled}}
  discovery: {{enabled: false}}
  runtime:
    detectors:
    - name: login-stuffing
      match: {{methods: [POST], paths: ["/login"]}}
      when: {{statuses: [401]}}
      by: {{clientIP: {{}}}}
      threshold: {{count: 30, window: 1m}}
      action: Block
      blockFor: 6s
    - name: order-walk
      match: {{paths: ["/users/{{userId}}/orders"]}}
      when: {{statuses: [403]}}
      by: {{claim: sub}}
      threshold: {{count: 20, window: 5m, distinct: {{pathParam: userId}}}}
      action: Block
      blockFor: 1m
---
apiVersion: v1
kind: Service
metadata: {{name: shop, namespace: test}}
spec:
  selector: {{app: shop}}
  ports: [{{name: http, port: 8080, targetPort: 8080}}]
"#
    )
}

/// `POST /login` answers 200 for the password `right`, else 401; `GET /users/{id}/orders`
/// answers the user's (empty) orders.
async fn shop_upstream() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    use axum::http::StatusCode;
    use axum::routing::{get, post};
    let router = axum::Router::new()
        .route(
            "/login",
            post(|body: axum::body::Bytes| async move {
                let sent: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                if sent["password"] == "right" {
                    (StatusCode::OK, axum::Json(json!({"session": "s1"})))
                } else {
                    (
                        StatusCode::UNAUTHORIZED,
                        axum::Json(json!({"error": "bad credentials"})),
                    )
                }
            }),
        )
        .route(
            "/users/{id}/orders",
            get(
                |axum::extract::Path(id): axum::extract::Path<String>| async move {
                    axum::Json(json!({"user": id, "orders": []}))
                },
            ),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (addr, task)
}

fn login(password: &str, from: IpAddr) -> Request {
    Request::post("/login")
        .json(&json!({"user": "ann", "password": password}).to_string())
        .from(from)
}

/// Whether a 403 is the sensor's block (not the ownership rule's).
fn is_block(r: &Response) -> bool {
    r.status == 403
        && r.header("content-type") == Some("application/problem+json")
        && r.text().contains("client-blocked")
}

/// `GET /detections` until `pred` holds; fails after `within` with the sensor's log.
async fn detections_until(
    sensor: &Sensor,
    within: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (status, body) = sensor.admin_get("/detections").await.unwrap_or_default();
        if status == 200 {
            let view: Value = serde_json::from_str(&body).unwrap();
            if pred(&view) {
                return view;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the detections did not come within {within:?} (last answer {status}: {body})\nsensor log:\n{}",
            sensor.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn blocks_of<'a>(view: &'a Value, detector: &str) -> Vec<&'a Value> {
    view["activeBlocks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["detector"] == detector)
        .collect()
}

#[tokio::test]
async fn credential_stuffing_and_object_enumeration_are_blocked_at_the_gateway() {
    let issuer = Issuer::new("test-key");
    let (upstream, _task) = shop_upstream().await;
    let sensor_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let gateway = Gateway::start_with_args(
        &manifests(&issuer.jwks()),
        upstream,
        None,
        vec!["--sensor-addr".into(), sensor_addr.to_string()],
    )
    .await;
    let lds = std::fs::read_to_string(gateway.envoy_dir().join("lds.json")).unwrap();
    assert!(
        lds.contains("envoy.filters.http.ext_proc") && lds.contains("http_grpc"),
        "a Block detector needs the inline check and the access log: {lds}"
    );
    let sensor = Sensor::start(
        &gateway.envoy_dir().join("sensor.yaml"),
        sensor_addr,
        gateway.dir.path(),
    )
    .await;

    // --- credential stuffing: 30 failures from one IP.
    let customer = gateway.send(&login("right", CUSTOMER)).await;
    assert_eq!(customer.status, 200, "{}", customer.text());
    for i in 0..30 {
        let r = gateway.send(&login(&format!("guess-{i}"), ATTACKER)).await;
        assert_eq!(
            r.status,
            401,
            "failure {i} reached the upstream: {}",
            r.text()
        );
    }
    let crossed = Instant::now();
    let view = detections_until(&sensor, Duration::from_secs(2), |v| {
        !blocks_of(v, "login-stuffing").is_empty()
    })
    .await;
    let block = blocks_of(&view, "login-stuffing")[0].clone();
    assert_eq!(block["key"], ATTACKER.to_string(), "{view:#}");
    assert_eq!(block["keyKind"], "clientIP");
    assert_eq!(block["count"], 30);
    // Within 2 s of the threshold the gateway refuses the IP, even with the right password.
    let refused = first_block(
        &gateway,
        &login("right", ATTACKER),
        crossed + Duration::from_secs(2),
    )
    .await;
    assert!(
        is_block(&refused),
        "not blocked within 2 s of the 30th failure: {} {}",
        refused.status,
        refused.text()
    );
    let retry_after: u64 = refused
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no retry-after: {:?}", refused.header("retry-after")));
    assert!((1..=6).contains(&retry_after), "retry-after {retry_after}");
    let problem = refused.json();
    assert_eq!(problem["status"], 403);
    assert_eq!(problem["detector"], "login-stuffing");
    // Another client is unaffected.
    let other = gateway.send(&login("right", CUSTOMER)).await;
    assert_eq!(other.status, 200, "{}", other.text());
    // After blockFor the IP is served again.
    tokio::time::sleep(Duration::from_secs(retry_after + 1)).await;
    let again = gateway.send(&login("right", ATTACKER)).await;
    assert_eq!(
        again.status,
        200,
        "still refused after blockFor: {}",
        again.text()
    );

    // --- object enumeration: mallory walks other users' orders (ownership 403s).
    let now = unix_now();
    let token = |sub: &str| {
        issuer.token(&json!({
            "iss": ISSUER, "aud": "shop-api", "sub": sub, "iat": now, "exp": now + 600,
        }))
    };
    let (mallory, ann) = (token("mallory"), token("ann"));
    // Ann reads her own orders as often as mallory walks: never blocked.
    for _ in 0..25 {
        let r = gateway
            .send(&Request::get("/users/ann/orders").bearer(&ann))
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    for id in 1..=20 {
        let r = gateway
            .send(&Request::get(&format!("/users/{id}/orders")).bearer(&mallory))
            .await;
        assert_eq!(r.status, 403, "the ownership rule refuses id {id}");
        assert!(!is_block(&r), "blocked before the 20th distinct id ({id})");
    }
    let crossed = Instant::now();
    let view = detections_until(&sensor, Duration::from_secs(2), |v| {
        !blocks_of(v, "order-walk").is_empty()
    })
    .await;
    let walk = blocks_of(&view, "order-walk")[0].clone();
    // printf %s mallory | sha256sum: a claim is never shown as given.
    assert_eq!(
        walk["key"],
        apiguard::detect::shown_hash(apiguard::detect::hash_value("mallory"))
    );
    assert_eq!(
        (walk["keyKind"].clone(), walk["keyName"].clone()),
        (json!("claim"), json!("sub"))
    );
    let own = first_block(
        &gateway,
        &Request::get("/users/mallory/orders").bearer(&mallory),
        crossed + Duration::from_secs(2),
    )
    .await;
    assert!(
        is_block(&own),
        "mallory is not blocked on her own orders: {} {}",
        own.status,
        own.text()
    );
    let r = gateway
        .send(&Request::get("/users/ann/orders").bearer(&ann))
        .await;
    assert_eq!(r.status, 200, "ann is unaffected: {}", r.text());

    // --- the signals.
    let detections = view["detections"].as_array().unwrap();
    assert_eq!(
        detections
            .iter()
            .map(|d| d["detector"].as_str().unwrap())
            .collect::<Vec<_>>(),
        vec!["login-stuffing", "order-walk"],
        "one detection each: {view:#}"
    );
    let (_, metrics) = sensor.admin_get("/metrics").await.expect("/metrics");
    for series in [
        r#"apiguard_detections_total{policy="test/shop",detector="login-stuffing",action="block"} 1"#,
        r#"apiguard_detections_total{policy="test/shop",detector="order-walk",action="block"} 1"#,
        r#"apiguard_active_blocks{policy="test/shop"} 1"#,
    ] {
        assert!(metrics.contains(series), "no {series} in:\n{metrics}");
    }
    assert!(
        metrics.contains(r#"apiguard_blocked_requests_total{policy="test/shop",detector="login-stuffing",decision="refused"}"#),
        "{metrics}"
    );
    let log = sensor.log_text();
    let lines: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["detector"].is_string() && l["count"].is_number())
        .collect();
    assert_eq!(lines.len(), 2, "one JSON line per detection:\n{log}");
    assert_eq!(lines[0]["key"], ATTACKER.to_string());
    assert!(
        !log.contains("mallory"),
        "the subject's value is logged:\n{log}"
    );
}

/// One gateway and its sensor, sharing detection through `redis_url`.
async fn replica(manifests: &str, upstream: SocketAddr, redis_url: &str) -> (Gateway, Sensor) {
    let sensor_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let gateway = Gateway::start_with_args(
        manifests,
        upstream,
        None,
        vec!["--sensor-addr".into(), sensor_addr.to_string()],
    )
    .await;
    let sensor = Sensor::start_with_env(
        &gateway.envoy_dir().join("sensor.yaml"),
        sensor_addr,
        gateway.dir.path(),
        &[("APIGUARD_REDIS_URL", redis_url)],
    )
    .await;
    (gateway, sensor)
}

/// Sends `request` to `gateway` until the sensor's block answers or `deadline` passes; the
/// last answer.
async fn first_block(gateway: &Gateway, request: &Request, deadline: Instant) -> Response {
    loop {
        let r = gateway.send(request).await;
        if is_block(&r) || Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether the sensor's block answers `request` on `gateway` within `within`.
async fn blocked_within(gateway: &Gateway, request: &Request, within: Duration) -> bool {
    is_block(&first_block(gateway, request, Instant::now() + within).await)
}

fn metric(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn two_gateway_replicas_share_counts_and_blocks_through_redis() {
    let mut redis = crate::support::redis::RedisServer::start();
    let issuer = Issuer::new("test-key");
    let manifests = manifests(&issuer.jwks());
    let (upstream, _task) = shop_upstream().await;
    let (a, sensor_a) = replica(&manifests, upstream, &redis.url()).await;
    let (b, sensor_b) = replica(&manifests, upstream, &redis.url()).await;

    // 30 failures from one IP, spread over both replicas: neither sees 30 alone.
    for i in 0..15 {
        for g in [&a, &b] {
            let r = g.send(&login(&format!("guess-{i}"), ATTACKER)).await;
            assert_eq!(r.status, 401, "{}", r.text());
        }
    }
    let crossed = Instant::now();
    for (name, g) in [("a", &a), ("b", &b)] {
        let left = Duration::from_secs(2).saturating_sub(crossed.elapsed());
        assert!(
            blocked_within(g, &login("right", ATTACKER), left).await,
            "replica {name} does not refuse the IP within 2 s of the 30th failure\nsensor a:\n{}\nsensor b:\n{}",
            sensor_a.log_text(),
            sensor_b.log_text()
        );
    }
    for g in [&a, &b] {
        let r = g.send(&login("right", CUSTOMER)).await;
        assert_eq!(r.status, 200, "another client is served: {}", r.text());
    }
    // After blockFor (6 s) both replicas serve the IP again: the block one of them adopted
    // ends with the one it was made from.
    tokio::time::sleep(Duration::from_secs(7)).await;
    for (name, g) in [("a", &a), ("b", &b)] {
        let r = g.send(&login("right", ATTACKER)).await;
        assert_eq!(
            r.status,
            200,
            "replica {name} still refuses after blockFor: {}",
            r.text()
        );
    }

    // Enumeration spread over both: 10 other users' ids on each, 20 distinct in all.
    let now = unix_now();
    let mallory = issuer.token(&json!({
        "iss": ISSUER, "aud": "shop-api", "sub": "mallory", "iat": now, "exp": now + 600,
    }));
    for id in 1..=20 {
        let g = if id % 2 == 0 { &a } else { &b };
        let r = g
            .send(&Request::get(&format!("/users/{id}/orders")).bearer(&mallory))
            .await;
        assert_eq!(r.status, 403, "{}", r.text());
    }
    let own = Request::get("/users/mallory/orders").bearer(&mallory);
    for g in [&a, &b] {
        assert!(
            blocked_within(g, &own, Duration::from_secs(2)).await,
            "the walk over both replicas is not blocked\n{}",
            sensor_a.log_text()
        );
    }

    // Redis down: each replica goes on alone, and says so.
    redis.stop();
    let second: IpAddr = Ipv4Addr::new(127, 0, 0, 3).into();
    for i in 0..30 {
        let r = a.send(&login(&format!("guess-{i}"), second)).await;
        assert_eq!(r.status, 401, "{}", r.text());
    }
    assert!(
        blocked_within(&a, &login("right", second), Duration::from_secs(2)).await,
        "a local block without Redis\n{}",
        sensor_a.log_text()
    );
    let (_, metrics) = sensor_a.admin_get("/metrics").await.unwrap();
    assert!(
        metric(
            &metrics,
            r#"apiguard_shared_detection_errors_total{operation="count"}"#
        ) > 0,
        "the failed shared counts are counted:\n{metrics}"
    );
    let r = b.send(&login("right", second)).await;
    assert_eq!(r.status, 200, "without Redis, b knows nothing of a's block");
    // A walk on a alone while Redis is down: a blocks trudy for a minute, b cannot know yet.
    let trudy = issuer.token(&json!({
        "iss": ISSUER, "aud": "shop-api", "sub": "trudy", "iat": now, "exp": now + 600,
    }));
    for id in 1..=20 {
        let r = a
            .send(&Request::get(&format!("/users/{id}/orders")).bearer(&trudy))
            .await;
        assert_eq!(r.status, 403, "{}", r.text());
    }
    let trudy_own = Request::get("/users/trudy/orders").bearer(&trudy);
    assert!(
        blocked_within(&a, &trudy_own, Duration::from_secs(2)).await,
        "a blocks the walk without Redis\n{}",
        sensor_a.log_text()
    );
    let r = b.send(&trudy_own).await;
    assert_eq!(r.status, 200, "without Redis, b serves trudy: {}", r.text());

    // Redis back: sharing resumes by itself. Once the sensors' polls stop failing, 15 + 15
    // failures of a third IP block it on both replicas (alone, neither reaches 30).
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    let poll_errors = r#"apiguard_shared_detection_errors_total{operation="poll"}"#;
    loop {
        let before = [
            metric(
                &sensor_a.admin_get("/metrics").await.unwrap().1,
                poll_errors,
            ),
            metric(
                &sensor_b.admin_get("/metrics").await.unwrap().1,
                poll_errors,
            ),
        ];
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = [
            metric(
                &sensor_a.admin_get("/metrics").await.unwrap().1,
                poll_errors,
            ),
            metric(
                &sensor_b.admin_get("/metrics").await.unwrap().1,
                poll_errors,
            ),
        ];
        if before == after {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the sensors did not reconnect within 30 s of Redis' restart\n{}",
            sensor_b.log_text()
        );
    }
    // The block a made while Redis was down reaches b once Redis is back.
    assert!(
        blocked_within(&b, &trudy_own, Duration::from_secs(3)).await,
        "b does not enforce the block a made while Redis was down\nsensor a:\n{}\nsensor b:\n{}",
        sensor_a.log_text(),
        sensor_b.log_text()
    );
    let third: IpAddr = Ipv4Addr::new(127, 0, 0, 4).into();
    for i in 0..15 {
        for g in [&a, &b] {
            let r = g.send(&login(&format!("guess-{i}"), third)).await;
            assert_eq!(r.status, 401, "{}", r.text());
        }
    }
    for (name, g) in [("a", &a), ("b", &b)] {
        assert!(
            blocked_within(g, &login("right", third), Duration::from_secs(2)).await,
            "replica {name}: sharing did not resume after Redis' restart\nsensor a:\n{}\nsensor b:\n{}",
            sensor_a.log_text(),
            sensor_b.log_text()
        );
    }
}
