//! Leaf certificates issued per second on one thread (target: at least 5,000/s).
//!
//! `cargo bench --bench identity` prints the figures; `-- --quick` runs a short pass.
//! Under `cargo test --all-targets` (no `--bench` argument) it runs as a brief smoke test.

use std::hint::black_box;
use std::time::{Duration as StdDuration, Instant};

use apiguard::identity::issue::issue_leaf_with_key;
use apiguard::identity::{CertificateAuthority, LeafRequest, SpiffeId, issue_leaf};
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256};
use time::{Duration, OffsetDateTime};

fn rate(label: &str, min_time: StdDuration, mut f: impl FnMut(u64)) -> f64 {
    // Warm up, then run for at least `min_time`.
    for i in 0..200 {
        f(i);
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < min_time {
        for _ in 0..100 {
            f(n);
            n += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let per_sec = n as f64 / secs;
    println!(
        "{label:<48} {n:>8} in {secs:>6.2}s  {per_sec:>10.0}/s  {:>8.1} µs each",
        secs * 1e6 / n as f64
    );
    per_sec
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let smoke = !args.iter().any(|a| a == "--bench");
    let quick = args.iter().any(|a| a == "--quick");
    let min_time = if smoke {
        StdDuration::from_millis(100)
    } else if quick {
        StdDuration::from_secs(1)
    } else {
        StdDuration::from_secs(5)
    };
    if smoke {
        println!("(smoke run without --bench: figures are not meaningful)");
    }
    let now = OffsetDateTime::now_utc();
    let ca = CertificateAuthority::generate(now, Duration::days(3650)).expect("CA");
    let request = |i: u64| {
        let mut r = LeafRequest::new(
            SpiffeId::new("cluster.local", "bench", &format!("sa-{i}")).expect("id"),
        );
        r.dns_names = vec![format!("sa-{i}.bench.svc")];
        r
    };
    println!("identity issuance, one thread");
    let keygen = rate("P-256 key generation", min_time, |_| {
        black_box(KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key"));
    });
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
    let key_pem = key.serialize_pem();
    let sign_only = rate("leaf signing (key given)", min_time, |i| {
        let key = KeyPair::from_pem(&key_pem).expect("key");
        black_box(issue_leaf_with_key(&ca, &request(i), key, now).expect("leaf"));
    });
    let full = rate("leaf issuance (fresh key + sign + PEM)", min_time, |i| {
        black_box(issue_leaf(&ca, &request(i), now).expect("leaf"));
    });
    println!(
        "summary: {full:.0} leaves/s issued (target >= 5000/s: {}); key generation {keygen:.0}/s, signing with a given key {sign_only:.0}/s",
        if full >= 5000.0 { "met" } else { "NOT met" }
    );
}
