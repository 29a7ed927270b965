//! `scope: Global` rate limits on real parts: one real redis-server, two gateways ("replicas")
//! each made of a real Envoy on `apiguard render`'s files and its own real `apiguard sensor
//! --redis-url` (the built binary), in front of one echo upstream.
//!
//! - a Global limit of 10 per minute holds across both gateways: the 11th request, whichever
//!   gateway it reaches, gets 429;
//! - a Replica limit (3 per minute) still counts per gateway;
//! - Redis killed: requests keep flowing (fail open), counted as `redis_error` in the sensor's
//!   `/metrics`;
//! - Redis restarted on the same port: limiting resumes (bounded wait);
//! - a `rediss://` Redis with a private CA: the sensor given the CA file limits, one without
//!   it cannot connect and fails open; the same with a Redis that asks clients for a
//!   certificate: the sensor given one limits, one without fails open.

use super::sensor_envoy::Sensor;
use crate::support::envoy::{Gateway, Request, echo_upstream};
use crate::support::redis::RedisServer;
use crate::support::tools::free_port;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const POLICY: &str = r#"apiVersion: apiguard.dev/v1alpha1
kind: ApiSecurityPolicy
metadata: {name: shop, namespace: test}
spec:
  target: {service: shop, port: 8080}
  exposure: Public
  hosts: [api.test.example]
  authorization:
    rules:
    - name: checkout
      match: {methods: [POST], paths: ["/checkout"]}
      public: true
    - name: items
      match: {methods: [GET], paths: ["/items"]}
      public: true
  rateLimits:
  - name: checkout
    scope: Global
    match: {methods: [POST], paths: ["/checkout"]}
    limit: {requests: 10, per: Minute}
    by: {header: x-tenant}
  - name: items
    match: {paths: ["/items"]}
    limit: {requests: 3, per: Minute}
    by: {header: x-tenant}
  eastWest: {mtls: Disabled}
---
apiVersion: v1
kind: Service
metadata: {name: shop, namespace: test}
spec:
  selector: {app: shop}
  ports: [{name: http, port: 8080, targetPort: 8080}]
"#;

/// One gateway replica: Envoy and its sensor.
struct Replica {
    gateway: Gateway,
    sensor: Sensor,
}

impl Replica {
    async fn start(upstream: SocketAddr, redis_url: &str) -> Replica {
        Replica::start_with_env(upstream, &[("APIGUARD_REDIS_URL", redis_url)]).await
    }

    /// A replica whose sensor has `env` (the operator's variables).
    async fn start_with_env(upstream: SocketAddr, env: &[(&str, &str)]) -> Replica {
        let sensor_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let gateway = Gateway::start_with_args(
            POLICY,
            upstream,
            None,
            vec!["--sensor-addr".into(), sensor_addr.to_string()],
        )
        .await;
        let config = gateway.envoy_dir().join("sensor.yaml");
        let sensor = Sensor::start_with_env(&config, sensor_addr, gateway.dir.path(), env).await;
        Replica { gateway, sensor }
    }

    async fn checkout(&self, tenant: &str) -> u16 {
        let request = Request::post("/checkout")
            .header("x-tenant", tenant)
            .json("{}");
        self.gateway.send(&request).await.status
    }

    async fn items(&self, tenant: &str) -> u16 {
        let request = Request::get("/items").header("x-tenant", tenant);
        self.gateway.send(&request).await.status
    }

    /// The sum of `apiguard_global_rate_limit_decisions_total` series with `result`.
    async fn decisions(&self, result: &str) -> u64 {
        let (_, text) = self
            .sensor
            .admin_get("/metrics")
            .await
            .expect("the sensor's /metrics answers");
        let label = format!("result=\"{result}\"");
        text.lines()
            .filter(|l| l.starts_with("apiguard_global_rate_limit_decisions_total{"))
            .filter(|l| l.contains(&label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .map(|v| v as u64)
            .sum()
    }

    fn logs(&self) -> String {
        format!(
            "sensor log:\n{}\nenvoy dir: {}",
            self.sensor.log_text(),
            self.gateway.envoy_dir().display()
        )
    }
}

/// Waits (at most 25 s) until at least 35 s of the current minute remain, so that a burst
/// of requests falls in one fixed window of one minute.
async fn wait_for_a_fresh_minute() {
    let second = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
        % 60;
    if second > 25 {
        tokio::time::sleep(Duration::from_secs(60 - second)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_limits_hold_across_replicas_and_fail_open_without_redis() {
    let mut redis = RedisServer::start();
    let upstream = echo_upstream().await;
    let a = Replica::start(upstream.addr, &redis.url()).await;
    let b = Replica::start(upstream.addr, &redis.url()).await;
    let replicas = [&a, &b];

    // 10 per minute across both: 10 requests alternating between the replicas pass, the 11th
    // is refused on each.
    wait_for_a_fresh_minute().await;
    for i in 0..10 {
        let status = replicas[i % 2].checkout("tenant-1").await;
        assert_eq!(status, 200, "request {} of 10: {}", i + 1, a.logs());
    }
    assert_eq!(a.checkout("tenant-1").await, 429, "{}", a.logs());
    assert_eq!(b.checkout("tenant-1").await, 429, "{}", b.logs());
    // Another client has its own count.
    assert_eq!(b.checkout("tenant-2").await, 200, "{}", b.logs());
    assert!(a.decisions("over_limit").await >= 1, "{}", a.logs());
    assert!(b.decisions("over_limit").await >= 1, "{}", b.logs());

    // The Replica limit (3 per minute) counts per gateway: 3 on each, the 4th refused on each.
    for replica in replicas {
        for i in 0..3 {
            let status = replica.items("tenant-1").await;
            assert_eq!(status, 200, "items {} of 3: {}", i + 1, replica.logs());
        }
        assert_eq!(replica.items("tenant-1").await, 429, "{}", replica.logs());
    }

    // Redis gone: every request passes (fail open), counted.
    redis.stop();
    for i in 0..15 {
        let status = replicas[i % 2].checkout("tenant-3").await;
        assert_eq!(status, 200, "request {} without Redis: {}", i + 1, a.logs());
    }
    // Even the client over its limit before: its count is in the Redis that is gone.
    assert_eq!(a.checkout("tenant-1").await, 200, "{}", a.logs());
    let failed = a.decisions("redis_error").await + b.decisions("redis_error").await;
    assert!(failed >= 16, "fail-open decisions counted: {failed}");
    assert!(a.decisions("redis_error").await >= 1, "{}", a.logs());
    assert!(b.decisions("redis_error").await >= 1, "{}", b.logs());

    // Redis back (empty, same port): limiting resumes once the sensors have reconnected.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut sent = 0;
    let refused = loop {
        let status = replicas[sent % 2].checkout("tenant-4").await;
        sent += 1;
        if status == 429 {
            break true;
        }
        assert_eq!(status, 200, "request {sent} after the restart");
        if Instant::now() >= deadline || sent >= 200 {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        refused,
        "no 429 within 30 s / {sent} requests after Redis came back:\n{}\n{}",
        a.logs(),
        b.logs()
    );
}

/// A `rediss://` Redis whose certificate comes from a private CA: the sensor given the CA
/// (`APIGUARD_REDIS_CA_FILE`, as the operator sets it from `--redis-ca-file`) counts in it and
/// refuses the 11th request; a sensor without it cannot connect (the system's roots do not know
/// the CA) and fails open, counted as `redis_error`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_with_a_private_ca_is_trusted_through_the_ca_file() {
    let (redis, _) = RedisServer::start_tls_private_ca();
    let url = redis.url();
    let ca_file = redis.ca_file();
    let upstream = echo_upstream().await;
    let trusting = Replica::start_with_env(
        upstream.addr,
        &[
            ("APIGUARD_REDIS_URL", url.as_str()),
            (
                "APIGUARD_REDIS_CA_FILE",
                ca_file.to_str().expect("UTF-8 path"),
            ),
        ],
    )
    .await;
    let untrusting = Replica::start(upstream.addr, &url).await;

    // The sensor connects in the background: requests pass until it has, then the 10 per
    // minute hold.
    wait_for_a_fresh_minute().await;
    let refused_at = first_refusal(&trusting, "tenant-tls").await;
    assert!(
        refused_at.is_some_and(|n| n >= 11),
        "no 429 after 10 through a Redis with a private CA (refused at {refused_at:?}):\n{}",
        trusting.logs()
    );
    assert!(trusting.decisions("over_limit").await >= 1);

    // Without the CA the TLS handshake fails: every request passes, counted as an error.
    fails_open(&untrusting, "tenant-tls", "without the CA").await;
    assert_eq!(untrusting.decisions("over_limit").await, 0);
}

/// Sends checkouts of `tenant` to `replica` until one is refused (bounded): how many were sent,
/// or None when none was refused within 20 s / 100 requests. The sensor connects to Redis in
/// the background: requests pass until it has.
async fn first_refusal(replica: &Replica, tenant: &str) -> Option<usize> {
    let deadline = Instant::now() + Duration::from_secs(20);
    for sent in 1..=100 {
        let status = replica.checkout(tenant).await;
        if status == 429 {
            return Some(sent);
        }
        assert_eq!(status, 200, "request {sent}: {}", replica.logs());
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// 12 checkouts of `tenant` through `replica`, whose sensor cannot use Redis (`why`): all pass,
/// each counted as a `redis_error` decision.
async fn fails_open(replica: &Replica, tenant: &str, why: &str) {
    for i in 0..12 {
        let status = replica.checkout(tenant).await;
        assert_eq!(status, 200, "request {} {why}: {}", i + 1, replica.logs());
    }
    assert!(
        replica.decisions("redis_error").await >= 12,
        "{}",
        replica.logs()
    );
}

/// A `rediss://` Redis that asks clients for a certificate from its CA (`tls-auth-clients
/// yes`): the sensor given one (`APIGUARD_REDIS_CLIENT_CERT_FILE` / `_KEY_FILE`, as the operator
/// sets them) and the CA counts in it; a sensor with the CA alone is refused by the server and
/// fails open, counted as `redis_error`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_asking_for_client_certificates_gets_the_sensors() {
    let (redis, _) = RedisServer::start_mtls_private_ca();
    let url = redis.url();
    let ca_file = redis.ca_file();
    let ca = ca_file.to_str().expect("UTF-8 path");
    let (cert, key) = redis.client_cert_files();
    let upstream = echo_upstream().await;
    let with_cert = Replica::start_with_env(
        upstream.addr,
        &[
            ("APIGUARD_REDIS_URL", url.as_str()),
            ("APIGUARD_REDIS_CA_FILE", ca),
            (
                "APIGUARD_REDIS_CLIENT_CERT_FILE",
                cert.to_str().expect("UTF-8 path"),
            ),
            (
                "APIGUARD_REDIS_CLIENT_KEY_FILE",
                key.to_str().expect("UTF-8 path"),
            ),
        ],
    )
    .await;
    let without = Replica::start_with_env(
        upstream.addr,
        &[
            ("APIGUARD_REDIS_URL", url.as_str()),
            ("APIGUARD_REDIS_CA_FILE", ca),
        ],
    )
    .await;

    wait_for_a_fresh_minute().await;
    let refused_at = first_refusal(&with_cert, "tenant-mtls").await;
    assert!(
        refused_at.is_some_and(|n| n >= 11),
        "the sensor with a client certificate does not limit (refused at {refused_at:?}):\n{}",
        with_cert.logs()
    );
    fails_open(&without, "tenant-mtls", "without a certificate").await;
}
