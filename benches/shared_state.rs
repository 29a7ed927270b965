//! The shared state store (src/shared_state) against a real redis-server on loopback (started
//! by the bench: Debian's, `tests/tools.sh redis`, or `$APIGUARD_REDIS_SERVER`): the round-trip
//! latency of one fixed-window `hit` and of one `blocked` check (p50/p99/p99.9, µs), then
//! throughput with many requests in flight on one client (the multiplexed connection
//! pipelines them), with two clients (two replicas), and with `hit_many` (8 counters a call);
//! then `window_add_many` of a batch of 16 sliding-window hits (60 s in 20 buckets: 12 counts,
//! 4 of 8 distinct values each), as the sensor sends per access-log batch.
//! Target: `hit` p99 < 1 ms on loopback.
//!
//! `nice cargo bench --bench shared_state`. Without `--bench` (as `cargo test --all-targets`
//! runs it) it does a quick smoke run.

use apiguard::shared_state::{Key, RedisConfig, SharedState, WindowAdd, WindowHit};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A redis-server on 127.0.0.1, killed on drop (benches cannot use tests/support: a small
/// copy of tests/support/redis.rs).
struct Server {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        let bin = std::env::var_os("APIGUARD_REDIS_SERVER")
            .filter(|p| !p.is_empty())
            .map_or_else(|| PathBuf::from("/usr/bin/redis-server"), PathBuf::from);
        assert!(
            bin.is_file(),
            "redis-server not found at {}: run `tests/tools.sh redis`",
            bin.display()
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir = tempfile::tempdir().expect("a temporary directory");
        let child = Command::new(bin)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ping(port) {
            assert!(Instant::now() < deadline, "redis-server not ready in 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        Server {
            port,
            child,
            _dir: dir,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 16];
    s.write_all(b"PING\r\n").is_ok()
        && s.read(&mut buf)
            .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

fn report(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "shared_state: {what}: p50 {:.0} µs, p99 {:.0} µs, p99.9 {:.0} µs, max {:.0} µs ({} round trips)",
        percentile(&samples, 0.5),
        percentile(&samples, 0.99),
        percentile(&samples, 0.999),
        percentile(&samples, 1.0),
        samples.len()
    );
}

/// `tasks` tasks on each of `clients`, `per_task` hits each: hits per second.
async fn throughput(clients: &[SharedState], tasks: usize, per_task: usize) -> f64 {
    let start = Instant::now();
    let mut handles = Vec::new();
    for (c, client) in clients.iter().enumerate() {
        for t in 0..tasks {
            let client = client.clone();
            let key = Key::new("bench/api", &format!("rl:client:{c}:{}", t % 16)).unwrap();
            handles.push(tokio::spawn(async move {
                for _ in 0..per_task {
                    client.hit(&key, 60, 1).await.expect("hit");
                }
            }));
        }
    }
    for h in handles {
        h.await.expect("task");
    }
    (clients.len() * tasks * per_task) as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let (rounds, per_task) = if bench { (20_000, 2_000) } else { (200, 20) };
    let server = Server::start();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        // A generous bound: the bench measures, it does not fail fast.
        let config = RedisConfig::parse(&format!("redis://127.0.0.1:{}", server.port))
            .unwrap()
            .with_op_timeout(Duration::from_secs(5));
        let a = SharedState::connect(&config).await.expect("connect");
        let b = SharedState::connect(&config).await.expect("connect");
        let key = Key::new("bench/api", "rl:per-client:9f86d081884c7d65").unwrap();

        // Warm up the connection and the server.
        for _ in 0..rounds / 10 {
            a.hit(&key, 60, 1).await.expect("hit");
        }
        let mut samples = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let t = Instant::now();
            std::hint::black_box(a.hit(&key, 60, 1).await.expect("hit"));
            samples.push(t.elapsed());
        }
        report(
            "hit (INCRBY + EXPIRE in MULTI/EXEC), one at a time",
            samples,
        );

        let mut samples = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let t = Instant::now();
            std::hint::black_box(a.blocked(&key).await.expect("blocked"));
            samples.push(t.elapsed());
        }
        report("blocked (GET), one at a time", samples);

        let keys: Vec<Key> = (0..8)
            .map(|i| Key::new("bench/api", &format!("rl:limit{i}:9f86d081")).unwrap())
            .collect();
        let hits: Vec<(&Key, u64, u64)> = keys.iter().map(|k| (k, 60, 1)).collect();
        let mut samples = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let t = Instant::now();
            std::hint::black_box(a.hit_many(&hits).await.expect("hit_many"));
            samples.push(t.elapsed());
        }
        let per_s = rounds as f64 * 8.0 / samples.iter().sum::<Duration>().as_secs_f64();
        report("hit_many (8 counters), one at a time", samples);
        println!("shared_state: hit_many (8 counters), one at a time: {per_s:.0} counters/s");

        let window_keys: Vec<Key> = (0..16)
            .map(|i| Key::new("bench/api", &format!("det:d{}:9f86d081{i:02}", i % 4)).unwrap())
            .collect();
        let values: Vec<Vec<u64>> = (0..16u64)
            .map(|i| (0..8).map(|v| i * 1_000 + v).collect())
            .collect();
        let mut samples = Vec::with_capacity(rounds);
        for round in 0..rounds {
            // 10 ms apart: the batches move through the window's buckets.
            let at_ms = 1_800_000_000_000 + round as u64 * 10;
            let hits: Vec<WindowHit<'_>> = window_keys
                .iter()
                .zip(&values)
                .enumerate()
                .map(|(i, (key, values))| WindowHit {
                    key,
                    window_ms: 60_000,
                    buckets: 20,
                    at_ms,
                    add: if i % 4 == 3 {
                        WindowAdd::Distinct(values)
                    } else {
                        WindowAdd::Count(3)
                    },
                })
                .collect();
            let t = Instant::now();
            std::hint::black_box(a.window_add_many(&hits).await.expect("window_add_many"));
            samples.push(t.elapsed());
        }
        let per_s = rounds as f64 * 16.0 / samples.iter().sum::<Duration>().as_secs_f64();
        report(
            "window_add_many (16 hits: 12 counts, 4 x 8 distinct; 60 s / 20 buckets), one at a time",
            samples,
        );
        println!("shared_state: window_add_many of 16, one call at a time: {per_s:.0} hits/s");

        for tasks in [1, 16, 64] {
            let per_s = throughput(std::slice::from_ref(&a), tasks, per_task).await;
            println!("shared_state: one client, {tasks} in flight: {per_s:.0} hits/s");
        }
        let per_s = throughput(&[a.clone(), b.clone()], 32, per_task).await;
        println!("shared_state: two clients (replicas), 32 in flight each: {per_s:.0} hits/s");
        let stats = a.stats();
        assert_eq!(
            stats.timeouts + stats.unavailable + stats.errors,
            0,
            "{stats:?}"
        );
    });
    drop(server);
}
