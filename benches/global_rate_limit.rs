//! `scope: Global` rate limits: one `ShouldRateLimit` gRPC call (what Envoy's `ratelimit`
//! filter sends) to the real `apiguard sensor --redis-url` (the built binary), counted in a real
//! redis-server on loopback: p50/p99/p99.9 of one call with one in flight, then calls per second
//! with 32 in flight. Side by side in the same run, same Redis, same load: envoyproxy/ratelimit
//! (`service_cmd`, built with Go: `tests/tools.sh ratelimit`, or `$APIGUARD_RATELIMIT`).
//!
//! `nice cargo bench --bench global_rate_limit`. Without `--bench` (as `cargo test
//! --all-targets` runs it) it does a quick smoke run of the sensor alone.

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// A child process killed on drop.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready() {
        assert!(Instant::now() < deadline, "{what} not ready in 20 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A redis-server on 127.0.0.1 (as benches/shared_state.rs).
fn redis(dir: &Path) -> (Process, u16) {
    let bin = std::env::var_os("APIGUARD_REDIS_SERVER")
        .filter(|p| !p.is_empty())
        .map_or_else(|| PathBuf::from("/usr/bin/redis-server"), PathBuf::from);
    assert!(
        bin.is_file(),
        "redis-server not found at {}: run `tests/tools.sh redis`",
        bin.display()
    );
    let port = free_port();
    let child = Command::new(bin)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server");
    let process = Process(child);
    wait_for("redis-server", || {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
            return false;
        };
        let mut buf = [0u8; 16];
        s.write_all(b"PING\r\n").is_ok()
            && s.read(&mut buf)
                .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
    });
    (process, port)
}

/// The real sensor with one global limit, high enough never to refuse.
fn sensor(dir: &Path, redis_port: u16) -> (Process, u16) {
    let config = dir.join("sensor.yaml");
    std::fs::write(
        &config,
        "apiVersion: apiguard.dev/v1alpha1\nkind: SensorConfig\npolicy: {namespace: bench, name: api}\n\
         globalRateLimits:\n- {name: bench, requests: 4000000000, unitSeconds: 60}\n",
    )
    .expect("write sensor.yaml");
    let (port, admin) = (free_port(), free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_apiguard"))
        .arg("sensor")
        .arg("--config")
        .arg(&config)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin-addr", &format!("127.0.0.1:{admin}")])
        .args(["--redis-url", &format!("redis://127.0.0.1:{redis_port}")])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start apiguard sensor");
    let process = Process(child);
    wait_for("apiguard sensor", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    (process, port)
}

/// envoyproxy/ratelimit's `service_cmd`: `$APIGUARD_RATELIMIT`, else target/tools'.
fn ratelimit_binary() -> PathBuf {
    let path = std::env::var_os("APIGUARD_RATELIMIT")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join(format!(
                "target/tools/ratelimit-{RATELIMIT_VERSION}/service_cmd"
            ))
        });
    assert!(
        path.is_file(),
        "envoyproxy/ratelimit not found at {}: run `tests/tools.sh ratelimit` (Go, from the module \
         proxy), or set APIGUARD_RATELIMIT",
        path.display()
    );
    path
}

/// The version `tests/tools.sh ratelimit` installs.
const RATELIMIT_VERSION: &str = "v1.4.1-0.20260122083618-3fb702589d36";

/// envoyproxy/ratelimit on the same Redis, with the same limit (domain `apiguard`, descriptor
/// `apiguard_limit=bench` then a `client` per value).
fn envoyproxy_ratelimit(dir: &Path, redis_port: u16) -> (Process, u16) {
    let config = dir.join("runtime/ratelimit/config");
    std::fs::create_dir_all(&config).expect("runtime dir");
    std::fs::write(
        config.join("bench.yaml"),
        "domain: apiguard\ndescriptors:\n- key: apiguard_limit\n  value: bench\n  descriptors:\n  - key: client\n    rate_limit: {unit: minute, requests_per_unit: 4000000000}\n",
    )
    .expect("write the ratelimit config");
    let (grpc, http, debug) = (free_port(), free_port(), free_port());
    let child = Command::new(ratelimit_binary())
        .env("USE_STATSD", "false")
        .env("LOG_LEVEL", "warn")
        .env("REDIS_SOCKET_TYPE", "tcp")
        .env("REDIS_URL", format!("127.0.0.1:{redis_port}"))
        .env("RUNTIME_ROOT", dir.join("runtime"))
        .env("RUNTIME_SUBDIRECTORY", "ratelimit")
        .env("RUNTIME_WATCH_ROOT", "false")
        .env("GRPC_HOST", "127.0.0.1")
        .env("GRPC_PORT", grpc.to_string())
        .env("HOST", "127.0.0.1")
        .env("PORT", http.to_string())
        .env("DEBUG_HOST", "127.0.0.1")
        .env("DEBUG_PORT", debug.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(dir.join("ratelimit.log")).expect("log"),
        ))
        .spawn()
        .expect("start envoyproxy/ratelimit");
    let process = Process(child);
    wait_for("envoyproxy/ratelimit", || {
        TcpStream::connect(("127.0.0.1", grpc)).is_ok()
    });
    (process, grpc)
}

fn request(client: usize) -> RateLimitRequest {
    let entry = |k: &str, v: String| Entry {
        key: k.into(),
        value: v,
    };
    RateLimitRequest {
        domain: "apiguard".into(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![
                entry("apiguard_limit", "bench".into()),
                entry("client", format!("client-{}", client % 1000)),
            ],
            ..Default::default()
        }],
        hits_addend: 1,
    }
}

async fn connect(port: u16) -> RateLimitServiceClient<Channel> {
    RateLimitServiceClient::connect(format!("http://127.0.0.1:{port}"))
        .await
        .expect("connect")
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

/// `rounds` calls one after the other: their latencies.
async fn latency(port: u16, rounds: usize) -> Vec<Duration> {
    let mut client = connect(port).await;
    for i in 0..rounds / 10 {
        client.should_rate_limit(request(i)).await.expect("warm up");
    }
    let mut samples = Vec::with_capacity(rounds);
    for i in 0..rounds {
        let start = Instant::now();
        let answer = client.should_rate_limit(request(i)).await.expect("call");
        samples.push(start.elapsed());
        assert_eq!(
            answer.get_ref().overall_code,
            1,
            "OK (never over the limit)"
        );
    }
    samples.sort();
    samples
}

/// `tasks` concurrent callers on one channel, `per_task` calls each: calls per second.
async fn throughput(port: u16, tasks: usize, per_task: usize) -> f64 {
    let client = connect(port).await;
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let mut client = client.clone();
            tokio::spawn(async move {
                for i in 0..per_task {
                    client
                        .should_rate_limit(request(t * per_task + i))
                        .await
                        .expect("call");
                }
            })
        })
        .collect();
    for h in handles {
        h.await.expect("task");
    }
    (tasks * per_task) as f64 / start.elapsed().as_secs_f64()
}

async fn measure(name: &str, port: u16, rounds: usize, per_task: usize) {
    let samples = latency(port, rounds).await;
    println!(
        "global_rate_limit: {name}: one ShouldRateLimit call p50 {:.0} µs, p99 {:.0} µs, p99.9 {:.0} µs ({} calls)",
        percentile(&samples, 0.5),
        percentile(&samples, 0.99),
        percentile(&samples, 0.999),
        samples.len()
    );
    let rate = throughput(port, 32, per_task).await;
    println!("global_rate_limit: {name}: 32 in flight: {rate:.0} calls/s");
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let (rounds, per_task) = if bench { (10_000, 500) } else { (100, 5) };
    let dir = tempfile::tempdir().expect("tempdir");
    let (_redis, redis_port) = redis(dir.path());
    let (_sensor, sensor_port) = sensor(dir.path(), redis_port);
    // The comparison needs the real envoyproxy/ratelimit: the bench fails without it; the smoke
    // run (`cargo test --all-targets`) measures the sensor alone.
    let other = bench.then(|| envoyproxy_ratelimit(dir.path(), redis_port));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        measure("apiguard sensor", sensor_port, rounds, per_task).await;
        if let Some((_, port)) = &other {
            measure("envoyproxy/ratelimit", *port, rounds, per_task).await;
        }
    });
}
