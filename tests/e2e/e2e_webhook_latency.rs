//! The latency apiguard's webhook adds to a real apiserver write: 1,000 server-side dry-run
//! creates of an (admitted) Ingress through the API, without the webhook registered and then
//! with it (installed by `tests/cluster.sh apiguard-install`, as in the journey), in the same
//! run; prints p50/p99 of each and the difference, and the apiserver's own
//! `apiserver_admission_webhook_admission_duration_seconds` for the webhook.
//!
//! Run with `cargo test --test e2e e2e_webhook_latency -- --nocapture` to see the figures. It
//! fails if a request is refused or if the apiserver did not call the webhook for every request
//! of the second phase (so the figures are of what they claim). The build is the test (debug)
//! profile: the figures are an upper bound for a release build.

use crate::support::cluster::{ControlPlane, control_plane};
use crate::support::playground::{StopOperator, cluster_sh};
use k8s_openapi::api::networking::v1::Ingress;
use kube::Api;
use kube::api::PostParams;
use std::time::{Duration, Instant};

const REQUESTS: usize = 1000;
const WEBHOOK: &str = "validate.apiguard.dev";

/// An Ingress every rule admits: TLS, external authentication, no CORS.
fn ingress() -> Ingress {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": "latency", "namespace": "bench", "annotations": {
            "nginx.ingress.kubernetes.io/auth-url": "https://auth.bench.example/verify"}},
        "spec": {
            "ingressClassName": "nginx",
            "tls": [{"hosts": ["api.bench.example"], "secretName": "api-tls"}],
            "rules": [{"host": "api.bench.example", "http": {"paths": [{
                "path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": "api", "port": {"number": 8080}}}}]}}]
        }
    }))
    .unwrap()
}

fn dry_run() -> PostParams {
    PostParams {
        dry_run: true,
        ..PostParams::default()
    }
}

/// Warms up connections and caches.
async fn warm_up(api: &Api<Ingress>, object: &Ingress) {
    for _ in 0..20 {
        api.create(&dry_run(), object)
            .await
            .expect("dry-run create");
    }
}

async fn measure(api: &Api<Ingress>, object: &Ingress) -> Vec<Duration> {
    let params = dry_run();
    let mut samples = Vec::with_capacity(REQUESTS);
    for i in 0..REQUESTS {
        let start = Instant::now();
        api.create(&params, object)
            .await
            .unwrap_or_else(|e| panic!("request {i} refused: {e}"));
        samples.push(start.elapsed());
    }
    samples.sort();
    samples
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `(sum, count)` of the apiserver's admission duration histogram for our webhook, summed
/// over its label sets.
fn webhook_histogram(cp: &ControlPlane) -> (f64, f64, Vec<(String, f64)>) {
    let metrics = cp.kubectl_ok(["get", "--raw", "/metrics"]);
    let (mut sum, mut count) = (0.0, 0.0);
    let mut buckets: Vec<(String, f64)> = Vec::new();
    for line in metrics.lines() {
        if !line.contains(&format!("name=\"{WEBHOOK}\"")) {
            continue;
        }
        let value: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        if line.starts_with("apiserver_admission_webhook_admission_duration_seconds_sum") {
            sum += value;
        } else if line.starts_with("apiserver_admission_webhook_admission_duration_seconds_count") {
            count += value;
        } else if line.starts_with("apiserver_admission_webhook_admission_duration_seconds_bucket")
        {
            let le = line
                .split("le=\"")
                .nth(1)
                .and_then(|s| s.split('"').next())
                .unwrap_or("?")
                .to_owned();
            match buckets.iter_mut().find(|(l, _)| *l == le) {
                Some((_, v)) => *v += value,
                None => buckets.push((le, value)),
            }
        }
    }
    (sum, count, buckets)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn measures_the_latency_the_webhook_adds_to_apiserver_writes() {
    let _group = crate::support::isolation::enter(module_path!());
    let cp = control_plane();
    cp.kubectl_ok(["create", "namespace", "bench"]);
    let client = cp.client().await;
    let api: Api<Ingress> = Api::namespaced(client, "bench");
    let object = ingress();

    warm_up(&api, &object).await;
    let without = measure(&api, &object).await;

    tokio::task::block_in_place(|| cluster_sh(cp, "apiguard-install", &[("RUST_LOG", "info")]));
    let _operator = StopOperator(cp);
    warm_up(&api, &object).await;
    let (sum0, count0, _) = tokio::task::block_in_place(|| webhook_histogram(cp));
    let with = measure(&api, &object).await;
    let (sum1, count1, buckets) = tokio::task::block_in_place(|| webhook_histogram(cp));
    let (sum, count) = (sum1 - sum0, count1 - count0);
    let calls = count;
    assert!(
        calls >= REQUESTS as f64,
        "the apiserver called {WEBHOOK} {calls} times for {REQUESTS} requests"
    );

    let (p50_0, p99_0) = (percentile(&without, 0.50), percentile(&without, 0.99));
    let (p50_1, p99_1) = (percentile(&with, 0.50), percentile(&with, 0.99));
    println!("dry-run Ingress create, {REQUESTS} sequential requests each (test profile):");
    println!(
        "  without webhook: p50 {:.2} ms  p99 {:.2} ms",
        ms(p50_0),
        ms(p99_0)
    );
    println!(
        "  with webhook:    p50 {:.2} ms  p99 {:.2} ms",
        ms(p50_1),
        ms(p99_1)
    );
    println!(
        "  added:           p50 {:+.2} ms  p99 {:+.2} ms",
        ms(p50_1) - ms(p50_0),
        ms(p99_1) - ms(p99_0)
    );
    println!(
        "  apiserver_admission_webhook_admission_duration_seconds{{name=\"{WEBHOOK}\"}}: \
         count {count}, mean {:.2} ms",
        sum / count * 1000.0
    );
    let cumulative: Vec<String> = buckets
        .iter()
        .map(|(le, v)| format!("le {le}: {v}"))
        .collect();
    println!(
        "  buckets (cumulative, incl. {count0} warm-up calls): {}",
        cumulative.join(", ")
    );
}
