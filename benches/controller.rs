//! The operator at scale against the real control plane (`tests/tools.sh` components):
//! N policies, each with its Service, created at once; time until all are Ready, API writes
//! (server-side applies) per policy, peak RSS of the operator process; then steady-state RSS
//! and CPU with nothing changing.
//!
//! `cargo bench --bench controller` runs 1,000 policies (`-- --policies N` to change).
//! Under `cargo test --all-targets` (no `--bench` argument) it runs as a smoke test with 20.
//! The operator is the built binary (`apiguard run --no-webhook`), gateway replicas 0 so the
//! figures are the operator's, not kube-controller-manager's pod churn.

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use apiguard::api::ApiSecurityPolicy;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use kube::Client;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use support::cluster::control_plane;
use support::controller::install_policy_crd;

const OP_NS: &str = "apiguard-bench";
const NS: &str = "bench";

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// (VmRSS, VmHWM) in KiB.
fn rss(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// utime + stime of the process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields after the command: state is [0]; utime is field 14 overall -> [11], stime [12].
    let get = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    get(11) + get(12)
}

/// Sum of `apiserver_request_total` for `verb`.
async fn requests(client: &Client, verb: &str) -> f64 {
    let req = axum::http::Request::get("/metrics")
        .body(Vec::new())
        .unwrap();
    let text = client.request_text(req).await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
        .filter(|l| l.contains(&format!("verb=\"{verb}\"")))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// The operator's own `apiguard_kube_requests_total`, summed by verb.
async fn operator_requests(admin: std::net::SocketAddr) -> std::collections::BTreeMap<String, f64> {
    let mut by_verb = std::collections::BTreeMap::new();
    let Ok(mut stream) = tokio::net::TcpStream::connect(admin).await else {
        return by_verb;
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .await;
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text).await;
    for line in text
        .lines()
        .filter(|l| l.starts_with("apiguard_kube_requests_total{"))
    {
        let verb = line
            .split("verb=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("?")
            .to_string();
        let value: f64 = line
            .rsplit_once(' ')
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0.0);
        *by_verb.entry(verb).or_insert(0.0) += value;
    }
    by_verb
}

async fn ready_count(client: &Client) -> usize {
    let api = Api::<ApiSecurityPolicy>::namespaced(client.clone(), NS);
    let Ok(list) = api.list(&ListParams::default()).await else {
        return 0;
    };
    list.items
        .iter()
        .filter(|p| {
            p.status.as_ref().is_some_and(|s| {
                s.observed_generation == p.metadata.generation
                    && s.conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
            })
        })
        .count()
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let smoke = !args.iter().any(|a| a == "--bench");
    let n: usize = args
        .iter()
        .position(|a| a == "--policies")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(if smoke { 20 } else { 1000 });
    let steady = if smoke {
        Duration::from_secs(3)
    } else {
        Duration::from_secs(30)
    };
    if smoke {
        println!("(smoke run without --bench: {n} policies; figures are not meaningful)");
    }

    let cp = control_plane();
    install_policy_crd();
    let client = cp.client().await;
    support::cluster::ensure_namespace(&client, OP_NS).await;
    support::cluster::ensure_namespace(&client, NS).await;

    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let process = Process(
        Command::new(env!("CARGO_BIN_EXE_apiguard"))
            .args([
                "run",
                "--no-webhook",
                "--admin-addr",
                &admin.to_string(),
                "--operator-namespace",
                OP_NS,
                "--gateway-replicas",
                "0",
            ])
            .env("KUBECONFIG", &cp.kubeconfig)
            .env("POD_NAME", "bench")
            .env(
                "RUST_LOG",
                std::env::var("APIGUARD_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting apiguard run"),
    );
    let pid = process.0.id();
    // Let it take the Lease and sync its (empty) caches.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (idle_rss, _) = rss(pid);

    let applies_before = requests(&client, "APPLY").await;
    let operator_before = operator_requests(admin).await;
    let start = Instant::now();
    let services = Api::<Service>::namespaced(client.clone(), NS);
    let policies = Api::<ApiSecurityPolicy>::namespaced(client.clone(), NS);
    futures::stream::iter(0..n)
        .map(|i| {
            let services = services.clone();
            let policies = policies.clone();
            async move {
                let name = format!("api-{i}");
                let svc: Service = serde_json::from_value(json!({
                    "apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
                    "spec": {"selector": {"app": name}, "ports": [{"port": 8080}]}}))
                .unwrap();
                services
                    .create(&PostParams::default(), &svc)
                    .await
                    .unwrap_or_else(|e| panic!("creating Service {name}: {e}"));
                let p: ApiSecurityPolicy = serde_json::from_value(json!({
                    "apiVersion": "apiguard.dev/v1alpha1", "kind": "ApiSecurityPolicy",
                    "metadata": {"name": name},
                    "spec": {"target": {"service": name, "port": 8080}, "exposure": "Internal",
                        "authentication": {"jwt": {"providers": [{"name": "corp",
                            "issuer": "https://idp.example/", "audiences": ["api"],
                            "jwks": {"uri": "https://idp.example/jwks.json"}}]}},
                        "authorization": {"rules": [{"name": "read",
                            "match": {"methods": ["GET"], "paths": ["/items/{id}"]},
                            "allow": {"scopes": ["items:read"]}}]}}}))
                .unwrap();
                policies
                    .create(&PostParams::default(), &p)
                    .await
                    .unwrap_or_else(|e| panic!("creating policy {name}: {e}"));
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    let created = start.elapsed();

    let deadline = Duration::from_secs(if smoke { 120 } else { 600 });
    let mut peak = 0;
    let ready_after = loop {
        let ready = ready_count(&client).await;
        peak = peak.max(rss(pid).1);
        if ready == n {
            break start.elapsed();
        }
        assert!(
            start.elapsed() < deadline,
            "only {ready}/{n} policies Ready after {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // Writes settle a moment after the last Ready (events, trailing status).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let applies = requests(&client, "APPLY").await - applies_before;
    let operator_after = operator_requests(admin).await;
    let per_verb: Vec<(String, f64)> = operator_after
        .iter()
        .map(|(verb, v)| {
            let before = operator_before.get(verb).copied().unwrap_or(0.0);
            (verb.clone(), (v - before) / n as f64)
        })
        .filter(|(_, v)| *v > 0.0)
        .collect();
    let writes: f64 = per_verb
        .iter()
        .filter(|(verb, _)| !matches!(verb.as_str(), "GET" | "WATCH"))
        .map(|(_, v)| v)
        .sum();
    let total: f64 = per_verb.iter().map(|(_, v)| v).sum();

    // "Nothing changing": also wait for kube-controller-manager to have processed every gateway
    // Deployment (its status writes are watch events the operator receives and drops).
    let deployments = Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(client.clone(), NS);
    let settle_deadline = Instant::now() + Duration::from_secs(180);
    let settled_after = loop {
        let settled = deployments
            .list(&ListParams::default())
            .await
            .map(|l| {
                l.items.len() == n
                    && l.items.iter().all(|d| {
                        d.status.as_ref().and_then(|s| s.observed_generation)
                            == d.metadata.generation
                    })
            })
            .unwrap_or(false);
        if settled || Instant::now() > settle_deadline {
            break settled.then(|| start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    peak = peak.max(rss(pid).1);

    let ticks_before = cpu_ticks(pid);
    let applies_steady_before = requests(&client, "APPLY").await;
    tokio::time::sleep(steady).await;
    let cpu = (cpu_ticks(pid) - ticks_before) as f64 / 100.0 / steady.as_secs_f64();
    let steady_applies = requests(&client, "APPLY").await - applies_steady_before;
    let (steady_rss, hwm) = rss(pid);
    peak = peak.max(hwm);

    println!("controller at scale: {n} policies, each with its Service (gateway replicas 0)");
    println!(
        "  created in                      {:>8.1} s",
        created.as_secs_f64()
    );
    println!(
        "  all Ready after                 {:>8.1} s",
        ready_after.as_secs_f64()
    );
    println!(
        "  server-side applies per policy  {:>8.1}   ({applies} in total, incl. status)",
        applies / n as f64
    );
    println!(
        "  operator API requests per policy {:>7.1}   (writes {writes:.1}: {})",
        total,
        per_verb
            .iter()
            .map(|(verb, v)| format!("{verb} {v:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "  operator RSS idle / peak        {:>5} / {:>5} MiB",
        idle_rss / 1024,
        peak / 1024
    );
    match settled_after {
        Some(t) => println!(
            "  gateway Deployments observed by kube-controller-manager after {:.1} s",
            t.as_secs_f64()
        ),
        None => println!("  (kube-controller-manager had not observed every Deployment in 180 s)"),
    }
    println!(
        "  steady state over {:>3} s: RSS {:>5} MiB, CPU {:>5.1} %, applies {steady_applies}",
        steady.as_secs(),
        steady_rss / 1024,
        cpu * 100.0
    );
    assert_eq!(steady_applies, 0.0, "the operator kept writing at rest");
    // Counts, not timings: each generated object is written once, plus the status, the
    // reconcile's Event and the namespace's trust bundle; redundant writes (the shared bundle
    // rewritten per policy, status churn re-applied) would break this at any scale.
    assert!(
        writes <= 10.0,
        "{writes:.1} operator writes per policy ({per_verb:?}); expected at most 10"
    );
    drop(process);
}
