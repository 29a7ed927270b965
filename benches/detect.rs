//! Detection engine throughput: one core, 5 detectors (count by client IP, count by JWT
//! subject, distinct `userId` by subject (BOLA), failed logins by client IP, count by
//! `x-tenant` header), 100,000 distinct client IPs and 100,000 subjects, 3,000,000 generated
//! events over 10 simulated minutes (a realistic mix: reads of user profiles and orders,
//! logins, 2xx–5xx, a few credential stuffers and enumerators). Prints events/s (target: at
//! least 200,000/s), the request-time `blocked` check in ns/op, and the state's size at the
//! end and after the windows have passed (it shrinks).
//!
//! `cargo bench --bench detect`. Without `--bench` (as `cargo test --all-targets` runs it) it
//! does a quick smoke run of 20,000 events.

use apiguard::detect::{
    Action, DetectorConfig, Engine, Event, KeyKind, Limits, RequestKeys, Threshold,
};
use std::hint::black_box;
use std::time::Instant;

#[path = "support/rng.rs"]
mod rng;
use rng::Rng;

const KEYS: usize = 100_000;
const TENANTS: usize = 500;
const T0: i64 = 1_800_000_000_000;
const MIN: u64 = 60_000;

fn detectors() -> Vec<DetectorConfig> {
    let d = |name: &str, by: KeyKind, threshold: Threshold, action: Action| DetectorConfig {
        name: name.into(),
        methods: vec![],
        paths: vec![],
        statuses: vec![],
        by,
        threshold,
        action,
        block_for_ms: (action == Action::Block).then_some(15 * MIN),
    };
    let count = |count, window_ms| Threshold::Count { count, window_ms };
    vec![
        d("ip-rate", KeyKind::ClientIp, count(600, MIN), Action::Block),
        d(
            "user-rate",
            KeyKind::Claim("sub".into()),
            count(300, MIN),
            Action::Alert,
        ),
        DetectorConfig {
            paths: vec!["/v1/users/{userId}/orders".into()],
            statuses: vec![403, 404],
            ..d(
                "bola",
                KeyKind::Claim("sub".into()),
                Threshold::Distinct {
                    path_param: "userId".into(),
                    count: 50,
                    window_ms: 5 * MIN,
                },
                Action::Block,
            )
        },
        DetectorConfig {
            methods: vec!["POST".into()],
            paths: vec!["/login".into()],
            statuses: vec![401, 403],
            ..d(
                "login-stuffing",
                KeyKind::ClientIp,
                count(20, MIN),
                Action::Block,
            )
        },
        d(
            "tenant-rate",
            KeyKind::Header("x-tenant".into()),
            count(20_000, MIN),
            Action::Alert,
        ),
    ]
}

/// One generated exchange, by index into the key tables.
struct Ev {
    at: i64,
    post: bool,
    path: String,
    status: u16,
    ip: u32,
    sub: Option<u32>,
    tenant: u16,
}

/// `n` events over `minutes` simulated minutes. 1 % from 20 stuffing IPs (failed logins),
/// 1 % from 20 enumerating subjects (403s on others' orders).
fn events(n: usize, minutes: i64) -> Vec<Ev> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let span = minutes * 60_000;
    (0..n)
        .map(|i| {
            let at = T0 + (i as i64 * span) / n as i64;
            let ip = rng.below(KEYS as u64) as u32;
            let sub = rng.below(KEYS as u64) as u32;
            let tenant = rng.below(TENANTS as u64) as u16;
            let status = [200, 200, 200, 200, 201, 204, 304, 401, 403, 404, 429, 500]
                [rng.below(12) as usize];
            match rng.below(100) {
                0 => Ev {
                    at,
                    post: true,
                    path: "/login".into(),
                    status: 401,
                    ip: rng.below(20) as u32,
                    sub: None,
                    tenant,
                },
                1 => {
                    let s = rng.below(20) as u32;
                    Ev {
                        at,
                        post: false,
                        path: format!("/v1/users/{}/orders", rng.below(10_000_000)),
                        status: 403,
                        ip,
                        sub: Some(s),
                        tenant,
                    }
                }
                2..=9 => Ev {
                    at,
                    post: true,
                    path: "/login".into(),
                    status: [200, 200, 200, 401][rng.below(4) as usize],
                    ip,
                    sub: None,
                    tenant,
                },
                10..=29 => Ev {
                    at,
                    post: false,
                    path: format!("/v1/users/{sub}/orders?page={}", rng.below(5)),
                    status,
                    ip,
                    sub: Some(sub),
                    tenant,
                },
                30..=39 => Ev {
                    at,
                    post: rng.below(3) == 0,
                    path: format!("/v1/orders/{}", rng.below(1_000_000)),
                    status,
                    ip,
                    sub: Some(sub),
                    tenant,
                },
                _ => Ev {
                    at,
                    post: false,
                    path: format!("/v1/users/{sub}"),
                    status,
                    ip,
                    sub: Some(sub),
                    tenant,
                },
            }
        })
        .collect()
}

struct Names {
    ips: Vec<String>,
    subs: Vec<String>,
    tenants: Vec<String>,
}

fn names() -> Names {
    Names {
        ips: (0..KEYS)
            .map(|i| format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255))
            .collect(),
        subs: (0..KEYS)
            .map(|i| format!("user-{i:06}@example.com"))
            .collect(),
        tenants: (0..TENANTS).map(|i| format!("tenant-{i}")).collect(),
    }
}

/// Observes every event; events per second and detections.
fn run(engine: &mut Engine, evs: &[Ev], names: &Names) -> (f64, usize) {
    let start = Instant::now();
    let mut detections = 0;
    for e in evs {
        let claims_buf;
        let claims: &[(&str, &str)] = match e.sub {
            Some(s) => {
                claims_buf = [("sub", names.subs[s as usize].as_str())];
                &claims_buf
            }
            None => &[],
        };
        let headers = [("x-tenant", names.tenants[e.tenant as usize].as_str())];
        let event = Event {
            at_ms: e.at,
            method: if e.post { "POST" } else { "GET" },
            path: &e.path,
            status: e.status,
            keys: RequestKeys {
                client_ip: Some(&names.ips[e.ip as usize]),
                api_key_client: None,
                claims,
                headers: &headers,
            },
        };
        detections += engine.observe(black_box(&event)).len();
    }
    (evs.len() as f64 / start.elapsed().as_secs_f64(), detections)
}

/// The request-time check on `n` requests (random clients, some blocked); ns per check and
/// how many were blocked.
fn blocked(engine: &Engine, names: &Names, now: i64, n: usize) -> (f64, usize) {
    let mut rng = Rng(42);
    let picks: Vec<(usize, usize, usize)> = (0..n)
        .map(|_| {
            let ip = if rng.below(10) == 0 {
                rng.below(20)
            } else {
                rng.below(KEYS as u64)
            };
            (
                ip as usize,
                rng.below(KEYS as u64) as usize,
                rng.below(TENANTS as u64) as usize,
            )
        })
        .collect();
    let start = Instant::now();
    let mut hits = 0;
    for &(ip, sub, tenant) in &picks {
        let claims = [("sub", names.subs[sub].as_str())];
        let headers = [("x-tenant", names.tenants[tenant].as_str())];
        let keys = RequestKeys {
            client_ip: Some(&names.ips[ip]),
            api_key_client: None,
            claims: &claims,
            headers: &headers,
        };
        hits += usize::from(engine.blocked(black_box(&keys), now).is_some());
    }
    (start.elapsed().as_nanos() as f64 / n as f64, hits)
}

fn state(engine: &Engine) -> String {
    let s = engine.stats();
    let per: Vec<String> = s
        .detectors
        .iter()
        .map(|d| {
            format!(
                "{} {} keys/{} blocks/{} values/{} overflow",
                d.name, d.keys, d.blocks, d.distinct_values, d.overflow
            )
        })
        .collect();
    format!(
        "{:.1} MiB est. ({})",
        s.bytes as f64 / f64::from(1 << 20),
        per.join(", ")
    )
}

/// The process's resident memory now (`VmRSS`), MiB.
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let (n, minutes) = if bench { (3_000_000, 10) } else { (20_000, 2) };
    let names = names();
    let evs = events(n, minutes);
    let mut engine = Engine::new(&detectors(), Limits::default()).expect("valid detectors");
    let rss_before = rss_mib();
    let (rate, detections) = run(&mut engine, &evs, &names);
    let end = evs.last().map_or(T0, |e| e.at);
    let blocks = engine.active_blocks(end).len();
    println!(
        "detect: {rate:.0} events/s ({n} events over {minutes} min, 5 detectors; {detections} detections, {blocks} blocks in force)"
    );
    println!(
        "detect: state at the end: {}; RSS +{:.1} MiB",
        state(&engine),
        rss_mib() - rss_before
    );
    let checks = if bench { 2_000_000 } else { 10_000 };
    let (ns, hits) = blocked(&engine, &names, end, checks);
    println!("detect: blocked() {ns:.0} ns/op ({checks} checks, {hits} blocked)");
    // Time passes beyond every window: a trickle of events and a timer's sweeps shrink it.
    let later = end + 6 * 60_000;
    let sweep = Instant::now();
    let mut removed = 0;
    for _ in 0..1_000 {
        removed += engine.sweep(later, 1_000);
    }
    println!(
        "detect: after 6 more minutes and sweeps ({removed} removed in {:.1} ms): {}",
        sweep.elapsed().as_secs_f64() * 1e3,
        state(&engine)
    );
}
