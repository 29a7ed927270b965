//! Contract validation throughput: a typical 2 KiB JSON body (`POST /orders`, nested items)
//! checked in-process against the compiled operation of `src/contract/testdata/users-3.0.yaml`,
//! on one thread; valid and invalid (an unknown property and a wrong type deep in the items),
//! and the response redaction of the same body. Target: >= 50,000 bodies/s.
//!
//! `cargo bench --bench contract`. Without `--bench` (as `cargo test --all-targets` runs it) it
//! does a quick smoke run.

use apiguard::contract::{Contract, ContractOptions, Request, RequestCheck};
use serde_json::{Value, json};
use std::hint::black_box;
use std::time::{Duration, Instant};

const DOCUMENT: &str = include_str!("../src/contract/testdata/users-3.0.yaml");

/// An order of about 2 KiB: 36 items.
fn order(items: usize) -> Value {
    let items: Vec<Value> = (0..items)
        .map(|i| json!({"sku": format!("ABC-{:04}", 1000 + i), "quantity": 1 + i % 9, "price": 9.99 + i as f64}))
        .collect();
    json!({"customer": 42, "note": "leave at the door, ring twice please", "items": items})
}

fn request(body: &[u8]) -> Request<'_> {
    Request {
        method: "POST",
        path: "/orders",
        content_type: Some("application/json"),
        body: Some(body),
        ..Request::default()
    }
}

/// Checks `body` for `duration` (or `min` times at least) and returns bodies per second.
fn throughput(contract: &Contract, body: &[u8], valid: bool, duration: Duration, min: u64) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    while n < min || start.elapsed() < duration {
        let check = contract.check_request(black_box(&request(body)));
        assert_eq!(
            matches!(check, RequestCheck::Allowed { .. }),
            valid,
            "{check:?}"
        );
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn redact_throughput(contract: &Contract, body: &[u8], duration: Duration, min: u64) -> f64 {
    let RequestCheck::Allowed { operation } = contract.check_request(&request(body)) else {
        panic!("the valid body is allowed");
    };
    let start = Instant::now();
    let mut n = 0u64;
    while n < min || start.elapsed() < duration {
        let check = contract.redact_response(
            operation,
            201,
            Some("application/json"),
            black_box(body),
            1 << 20,
        );
        assert!(check.body.is_none());
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let (duration, min) = if bench {
        (Duration::from_secs(3), 1000)
    } else {
        (Duration::ZERO, 3)
    };
    let start = Instant::now();
    let contract = Contract::compile(DOCUMENT, &ContractOptions::default()).expect("compiles");
    let compile = start.elapsed();
    let valid = order(36);
    let mut invalid = valid.clone();
    invalid["items"][30]["price"] = json!("free");
    invalid["items"][31]["discount"] = json!(10);
    let valid = serde_json::to_vec(&valid).unwrap();
    let invalid = serde_json::to_vec(&invalid).unwrap();
    let kib = valid.len() as f64 / 1024.0;
    println!(
        "contract: compile {:.1} ms (users-3.0.yaml, 5 operations)",
        compile.as_secs_f64() * 1e3
    );
    let ok = throughput(&contract, &valid, true, duration, min);
    println!("contract: {ok:.0} bodies/s ({kib:.1} KiB, valid)");
    let bad = throughput(&contract, &invalid, false, duration, min);
    println!("contract: {bad:.0} bodies/s ({kib:.1} KiB, invalid: 2 violations)");
    let redact = redact_throughput(&contract, &valid, duration, min);
    println!("contract: {redact:.0} responses/s ({kib:.1} KiB, redacted, nothing removed)");
}
