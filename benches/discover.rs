//! Discovery throughput: `apiguard discover`'s learning over 1,000,000 generated gateway
//! access-log lines (a realistic mix: 40 endpoint shapes under 10 declared paths, integer,
//! UUID and hex ids drawn from a large space, 2xx–5xx statuses, half authenticated), parsed
//! and observed on one thread; then a scan (every line a new random path) to show the memory
//! stays flat at the 1,000-endpoint bound; and the sensitive-data classifier over a 4 KiB JSON
//! response. Target: >= 500,000 lines/s (release).
//!
//! `cargo bench --bench discover`. Without `--bench` (as `cargo test --all-targets` runs it)
//! it does a quick smoke run of 10,000 lines.

use apiguard::discovery::access_log::parse_line;
use apiguard::discovery::{Declared, Inventory, SensitiveClass, classify};
use std::fmt::Write;
use std::hint::black_box;
use std::time::Instant;

#[path = "support/rng.rs"]
mod rng;
use rng::Rng;

fn declared() -> Declared {
    let mut d = Declared::none();
    d.add_openapi(
        "paths:\n  /v1/users/{userId}:\n    get: {}\n    put: {}\n  /v1/users/{userId}/orders:\n    get: {}\n    post: {}\n  /v1/orders/{orderId}:\n    get: {}\n  /v1/products:\n    get: {}\n  /v1/products/{sku}:\n    get: {}\n  /v0/users/{userId}:\n    get: {deprecated: true}\n",
    )
    .expect("the document");
    d.add(&["GET".into()], "/healthz", false).unwrap();
    d.add(&[], "/static/*", false).unwrap();
    d
}

/// One path of the mix: mostly declared, some undeclared shapes with ids.
fn path(rng: &mut Rng, out: &mut String) {
    let id = rng.below(10_000_000);
    match rng.below(20) {
        0..=5 => write!(out, "/v1/users/{id}"),
        6..=8 => write!(out, "/v1/users/{id}/orders?page={}", rng.below(9)),
        9 | 10 => write!(
            out,
            "/v1/orders/{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            rng.next() as u32,
            rng.below(1 << 16),
            rng.below(1 << 12),
            rng.below(1 << 12),
            rng.next() & 0xffff_ffff_ffff
        ),
        11 => write!(out, "/v1/products"),
        12 => write!(out, "/v1/products/sku{id}x"),
        13 => write!(out, "/healthz"),
        14 => write!(out, "/static/js/app.{:016x}.js", rng.next()),
        15 => write!(out, "/v0/users/{id}"),
        16 => write!(out, "/v1/admin/export/{:020x}", u128::from(rng.next())),
        17 => write!(
            out,
            "/internal/debug/{}",
            ["vars", "pprof", "config", "env"][id as usize % 4]
        ),
        _ => write!(out, "/v2/tenants/{}/items/{id}", rng.below(500)),
    }
    .unwrap();
}

/// `n` access-log lines, newline-separated, in one buffer (as a file would be read).
fn lines(n: usize, scan: bool) -> String {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut out = String::with_capacity(n * 330);
    let mut p = String::new();
    for i in 0..n {
        p.clear();
        if scan {
            // Letters only, so the heuristic keeps the segment: every path a new endpoint.
            write!(p, "/scan/{}", to_letters(rng.next())).unwrap();
        } else {
            path(&mut rng, &mut p);
        }
        let method = ["GET", "GET", "GET", "POST", "PUT", "DELETE"][rng.below(6) as usize];
        let status =
            [200, 200, 200, 201, 204, 304, 401, 403, 404, 429, 500, 503][rng.below(12) as usize];
        let subject = if rng.below(2) == 0 {
            "null".to_string()
        } else {
            format!("\"user-{}\"", rng.below(100_000))
        };
        let ms = i as u64 % 1000;
        let s = (i / 1000) % 60;
        writeln!(
            out,
            r#"{{"authority":"api.shop.example","client":"10.1.{}.{}","client_cert":null,"client_id":null,"decision":"allow","duration_ms":{},"method":"{method}","path":"{p}","reason":"via_upstream","request_id":"{:016x}","response_content_type":"application/json","response_flags":"-","rule":"get-user","status":{status},"subject":{subject},"time":"2026-12-03T07:{:02}:{s:02}.{ms:03}Z"}}"#,
            rng.below(256),
            rng.below(256),
            rng.below(200),
            rng.next(),
            (i / 60_000) % 60,
        )
        .unwrap();
    }
    out
}

fn to_letters(mut v: u64) -> String {
    let mut s = String::new();
    for _ in 0..10 {
        s.push(char::from(b'a' + (v % 26) as u8));
        v /= 26;
    }
    s
}

/// Parses and observes every line; lines per second.
fn learn(log: &str, inventory: &mut Inventory) -> f64 {
    let start = Instant::now();
    for line in log.lines() {
        let parsed = parse_line(black_box(line)).expect("a generated line parses");
        inventory.observe(&parsed.observation());
    }
    log.lines().count() as f64 / start.elapsed().as_secs_f64()
}

/// The process's resident memory now (`VmRSS`) or at its peak (`VmHWM`), in MiB.
fn rss_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

fn response_body() -> Vec<u8> {
    let mut body = String::from("[");
    let mut i = 0;
    while body.len() < 4096 {
        write!(
            body,
            r#"{{"id":{i},"name":"customer {i}","email":"c{i}@example.com","created":"2026-12-0{}T10:00:00Z","tier":"gold","balance":{}.5}},"#,
            1 + i % 9,
            i * 37
        )
        .unwrap();
        i += 1;
    }
    body.pop();
    body.push(']');
    body.into_bytes()
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let n = if bench { 1_000_000 } else { 10_000 };

    let log = lines(n, false);
    let mib = log.len() as f64 / (1 << 20) as f64;
    let rss_before = rss_mib("VmRSS:");
    let mut inventory = Inventory::new(Some("shop/api".into()), declared());
    let rate = learn(&log, &mut inventory);
    let report = inventory.report();
    println!(
        "discover: {rate:.0} lines/s ({n} lines, {mib:.0} MiB; {} endpoints, {} shadow, {} zombie, overflow {})",
        report.endpoints.len(),
        report.shadow.len(),
        report.zombie.len(),
        report.overflow
    );
    println!(
        "discover: RSS {:.1} MiB after learning, {rss_before:.1} MiB before (the log in memory)",
        rss_mib("VmRSS:"),
    );
    drop(log);

    let scan = lines(n, true);
    let rss_before = rss_mib("VmRSS:");
    let mut inventory = Inventory::new(Some("shop/api".into()), declared());
    let rate = learn(&scan, &mut inventory);
    let report = inventory.report();
    println!(
        "discover: scan {rate:.0} lines/s ({} endpoints, overflow {} requests), RSS {:.1} MiB after learning, {rss_before:.1} MiB before; peak {:.0} MiB",
        report.endpoints.len(),
        report.overflow,
        rss_mib("VmRSS:"),
        rss_mib("VmHWM:"),
    );
    assert!(report.endpoints.len() <= apiguard::discovery::MAX_ENDPOINTS);

    let body = response_body();
    let rounds = if bench { 20_000 } else { 10 };
    let start = Instant::now();
    let mut emails = 0;
    for _ in 0..rounds {
        emails = classify(black_box(&body)).count(SensitiveClass::Email);
    }
    let per_s = f64::from(rounds) / start.elapsed().as_secs_f64();
    println!(
        "discover: classify {per_s:.0} bodies/s ({:.1} KiB JSON, {emails} emails, {:.0} MiB/s)",
        body.len() as f64 / 1024.0,
        per_s * body.len() as f64 / f64::from(1 << 20)
    );
}
