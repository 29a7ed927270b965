//! Webhook throughput and latency over real TLS with keep-alive.
//!
//! `cargo bench --bench webhook`: the webhook (rustls, TLS 1.3, HTTP/1.1 keep-alive) on
//! 127.0.0.1 with its own 2-worker runtime; a hyper + rustls client on another runtime keeps
//! N connections busy (one request at a time each) with realistic AdmissionReviews (Ingress,
//! HTTPRoute, Deployment, ApiSecurityPolicy), at N = 1, 16, 64. Prints reviews/s, client-side
//! p50/p99/p99.9 and server-side p50/p99/p99.9 (time inside the webhook's router, per request).
//! Client and server share the machine's cores, so throughput is a lower bound for the server.
//!
//! Without `--bench` (as `cargo test --all-targets` runs it): one short smoke round.

#[path = "../tests/support/mod.rs"]
mod support;

use apiguard::admin::AdmissionMetrics;
use apiguard::certs::ReloadingCert;
use apiguard::rules::{EngineConfig, InMemoryView};
use apiguard::webhook::server::serve_tls;
use apiguard::webhook::server::server_config;
use apiguard::webhook::{Admission, Limits, router};
use axum::extract::Request;
use axum::middleware::{self, Next};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::webhook::*;

struct Round {
    concurrency: usize,
    reviews: usize,
    elapsed: Duration,
    client: Vec<Duration>,
    server: Vec<Duration>,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

fn main() {
    let full_run = std::env::args().any(|a| a == "--bench");
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);

    // Realistic bodies, with the cluster state that makes the rules do real lookups.
    let objects = [
        ("Ingress", cors_ingress(None)),
        ("HTTPRoute", http_route()),
        ("Deployment", deployment()),
        ("ApiSecurityPolicy", policy()),
    ];
    let bodies: Vec<(String, Vec<u8>)> = objects
        .iter()
        .enumerate()
        .map(|(i, (kind, object))| {
            let review = review("CREATE", object, &format!("bench-{i}"), false);
            (kind.to_string(), serde_json::to_vec(&review).unwrap())
        })
        .collect();
    let cluster: Vec<Value> = vec![
        policy(),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "payments", "namespace": "shop"},
               "spec": {"selector": {"app": "payments"}, "ports": [{"port": 8080}]}}),
        clean_service(),
    ];
    let view = Arc::new(InMemoryView::from_objects(cluster.iter()));
    let admission = Arc::new(Admission::new(
        view,
        EngineConfig::default(),
        AdmissionMetrics::unregistered(),
    ));

    // Server-side time of every request (router entry to response), collected per round.
    let server_times: Arc<Mutex<Vec<Duration>>> = Arc::new(Mutex::new(Vec::with_capacity(1 << 20)));
    let timing = server_times.clone();
    let app = router(admission, Limits::default()).layer(middleware::from_fn(
        move |req: Request, next: Next| {
            let timing = timing.clone();
            async move {
                let start = Instant::now();
                let resp = next.run(req).await;
                timing.lock().unwrap().push(start.elapsed());
                resp
            }
        },
    ));

    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    let (cert, key) = pki.leaf(1);
    write_secret_volume(dir.path(), 1, &cert, &key);
    let reloading = Arc::new(
        ReloadingCert::load(dir.path().join("tls.crt"), dir.path().join("tls.key")).unwrap(),
    );
    let tls = Arc::new(server_config(reloading).unwrap());

    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = server_rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let server = server_rt.spawn(serve_tls(
        listener,
        tls,
        app,
        async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        },
        Duration::from_secs(5),
    ));

    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client_config = pki.client_config();

    // The expected decision per body (checked on every answer below).
    let expected: Vec<bool> = client_rt.block_on(async {
        let mut c = TlsClient::connect(addr, client_config.clone()).await;
        let mut out = Vec::new();
        for (_, body) in &bodies {
            let (status, answer) = c.validate(full(body.clone())).await;
            assert_eq!(status, 200, "{answer}");
            out.push(answer["response"]["allowed"].as_bool().unwrap());
        }
        out
    });
    assert!(!expected[0], "the CORS Ingress must be denied");

    let levels: &[usize] = if full_run { &[1, 16, 64] } else { &[1] };
    let measure = if full_run {
        Duration::from_secs(4)
    } else {
        Duration::from_millis(200)
    };
    let warmup = if full_run {
        Duration::from_millis(500)
    } else {
        Duration::ZERO
    };
    let bodies = Arc::new(bodies);
    let expected = Arc::new(expected);
    let mut rounds = Vec::new();
    for &concurrency in levels {
        let (client, reviews, elapsed, server) = client_rt.block_on(async {
            let mut conns = Vec::new();
            for _ in 0..concurrency {
                conns.push(TlsClient::connect(addr, client_config.clone()).await);
            }
            let start_at = Instant::now() + warmup;
            let end_at = start_at + measure;
            let mut tasks = Vec::new();
            for (n, mut conn) in conns.into_iter().enumerate() {
                let bodies = bodies.clone();
                let expected = expected.clone();
                tasks.push(tokio::spawn(async move {
                    let mut latencies = Vec::new();
                    let mut i = n;
                    loop {
                        let now = Instant::now();
                        if now >= end_at {
                            break;
                        }
                        let which = i % bodies.len();
                        i += 1;
                        let sent = Instant::now();
                        let (status, answer) = conn.validate(full(bodies[which].1.clone())).await;
                        let took = sent.elapsed();
                        assert_eq!(status, 200);
                        assert_eq!(
                            answer["response"]["allowed"].as_bool(),
                            Some(expected[which])
                        );
                        if sent >= start_at {
                            latencies.push(took);
                        }
                    }
                    latencies
                }));
            }
            tokio::time::sleep_until((start_at).into()).await;
            server_times.lock().unwrap().clear();
            let mut all = Vec::new();
            for t in tasks {
                all.extend(t.await.unwrap());
            }
            let server: Vec<Duration> = std::mem::take(&mut *server_times.lock().unwrap());
            let n = all.len();
            (all, n, measure, server)
        });
        rounds.push(Round {
            concurrency,
            reviews,
            elapsed,
            client,
            server,
        });
    }
    let _ = stop_tx.send(true);
    server_rt.block_on(server).unwrap();

    let sizes: Vec<String> = bodies
        .iter()
        .map(|(kind, body)| format!("{kind} {:.1} KiB", body.len() as f64 / 1024.0))
        .collect();
    println!(
        "webhook benchmark{}: TLS 1.3 (rustls, ring), HTTP/1.1 keep-alive, {} CPUs; server runtime 2 workers, client runtime 2 workers on the same machine",
        if full_run {
            ""
        } else {
            " (smoke run; use `cargo bench --bench webhook`)"
        },
        cpus
    );
    println!("bodies (round-robin): {}", sizes.join(", "));
    println!(
        "{:>11} {:>11} {:>9} {:>9} {:>9} {:>10} {:>10} {:>11}",
        "concurrency",
        "reviews/s",
        "p50",
        "p99",
        "p99.9",
        "server p50",
        "server p99",
        "server p99.9"
    );
    let mut worst_server_p99 = Duration::ZERO;
    let mut best_rate = 0.0f64;
    for mut r in rounds {
        r.client.sort();
        r.server.sort();
        let rate = r.reviews as f64 / r.elapsed.as_secs_f64();
        best_rate = best_rate.max(rate);
        let sp99 = percentile(&r.server, 99.0);
        worst_server_p99 = worst_server_p99.max(sp99);
        println!(
            "{:>11} {:>11.0} {:>9} {:>9} {:>9} {:>10} {:>10} {:>11}",
            r.concurrency,
            rate,
            us(percentile(&r.client, 50.0)),
            us(percentile(&r.client, 99.0)),
            us(percentile(&r.client, 99.9)),
            us(percentile(&r.server, 50.0)),
            us(sp99),
            us(percentile(&r.server, 99.9)),
        );
    }
    if full_run {
        println!(
            "targets: server-side p99 < 1 ms: {} (worst {}); >= 10,000 reviews/s: {} (best {:.0}/s)",
            if worst_server_p99 < Duration::from_millis(1) {
                "met"
            } else {
                "NOT met"
            },
            us(worst_server_p99),
            if best_rate >= 10_000.0 {
                "met"
            } else {
                "NOT met"
            },
            best_rate
        );
    }
}
