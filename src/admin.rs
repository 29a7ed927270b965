//! The admin server: liveness (`/healthz`), readiness (`/readyz`) and Prometheus metrics
//! (`/metrics`) on a plaintext port separate from the webhook's TLS port.
//!
//! [`Metrics`] is the one registry of the process: the webhook registers its admission metrics
//! into it, and other parts (the controller) register theirs the same way. [`Readiness`] is the
//! set of components that must be ready before `/readyz` answers 200.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::net::TcpListener;

/// The process-wide metrics registry, shared by every part of `apiguard run`.
///
/// Metrics are registered once at startup (the registry lock is taken only when registering
/// and when `/metrics` is scraped, never on the request path: metric handles are updated
/// through their own atomics).
#[derive(Default)]
pub struct Metrics {
    registry: Mutex<Registry>,
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// Register a metric under `name` (counters get the `_total` suffix when encoded).
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.registry
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .register(name, help, metric);
    }

    /// The OpenMetrics text exposition of every registered metric.
    pub fn encode(&self) -> String {
        let registry = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = String::new();
        // Writing into a String cannot fail; an error here would be an encoder bug.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}

/// Labels of `apiguard_admission_requests_total`. Every value comes from a fixed set.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// One of the checked kinds (`crate::rules::coverage::KINDS`), or `other`.
    pub kind: &'static str,
    /// `CREATE`, `UPDATE`, `DELETE`, `CONNECT`, or `unknown` for a review that did not parse.
    pub operation: &'static str,
    /// `allowed`, `denied` or `invalid` (the review could not be read).
    pub decision: &'static str,
}

/// Labels of `apiguard_admission_findings_total`. Every value comes from a fixed set.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FindingLabels {
    /// The rule ID, e.g. `APG001`.
    pub rule: &'static str,
    /// `deny` or `warn`.
    pub severity: &'static str,
    /// The admission mode the finding was judged under: `enforce`, `warn` or `audit`.
    pub mode: &'static str,
}

/// The webhook's metrics. Cloning is cheap: clones update the same series.
#[derive(Clone)]
pub struct AdmissionMetrics {
    pub requests: Family<RequestLabels, Counter>,
    pub findings: Family<FindingLabels, Counter>,
    pub duration: Histogram,
}

/// Upper bounds (seconds) of the admission duration histogram: the review itself is expected
/// to take tens of microseconds, so the buckets are fine at the low end.
pub(crate) const DURATION_BUCKETS: [f64; 14] = [
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.5, 1.0,
];

impl AdmissionMetrics {
    /// Create the admission metrics and register them in `metrics`.
    pub fn register(metrics: &Metrics) -> Self {
        let this = Self::unregistered();
        metrics.register(
            "apiguard_admission_requests",
            "Admission reviews answered, by kind, operation and decision",
            this.requests.clone(),
        );
        metrics.register(
            "apiguard_admission_findings",
            "Rule findings produced by admission reviews, by rule, severity and admission mode",
            this.findings.clone(),
        );
        metrics.register(
            "apiguard_admission_duration_seconds",
            "Time to answer one admission review (parse, evaluate, encode)",
            this.duration.clone(),
        );
        this
    }

    /// Metrics that are not exposed anywhere (for tests and tools that do not serve `/metrics`).
    pub fn unregistered() -> Self {
        Self {
            requests: Family::default(),
            findings: Family::default(),
            duration: Histogram::new(DURATION_BUCKETS),
        }
    }
}

/// The components whose readiness `/readyz` reports.
#[derive(Default)]
pub struct Readiness {
    components: Mutex<Vec<(&'static str, Arc<AtomicBool>)>>,
    /// Liveness checks behind `/healthz` (the controller's wedge detection).
    liveness: Mutex<Vec<LivenessCheck>>,
}

/// A liveness check: `Err(problem)` makes `/healthz` answer 503.
pub(crate) type LivenessCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Handle a component uses to declare itself ready (or not ready again).
#[derive(Clone)]
pub struct ReadyHandle(Arc<AtomicBool>);

impl ReadyHandle {
    pub(crate) fn set_ready(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    pub(crate) fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

impl Readiness {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a component, initially not ready.
    pub fn component(&self, name: &'static str) -> ReadyHandle {
        let flag = Arc::new(AtomicBool::new(false));
        self.components
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((name, flag.clone()));
        ReadyHandle(flag)
    }

    /// Add a liveness check for `/healthz`.
    pub fn liveness_check(&self, check: LivenessCheck) {
        self.liveness
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(check);
    }

    /// The problems the liveness checks report (empty: alive).
    pub(crate) fn liveness_problems(&self) -> Vec<String> {
        let checks = self
            .liveness
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        checks.iter().filter_map(|c| c().err()).collect()
    }

    /// Names of the components that are not ready yet (empty: the process is ready).
    pub(crate) fn not_ready(&self) -> Vec<&'static str> {
        self.components
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(_, flag)| !flag.load(Ordering::Acquire))
            .map(|(name, _)| *name)
            .collect()
    }
}

/// Shared state of the admin endpoints.
#[derive(Clone)]
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
}

/// The admin routes: `/healthz`, `/readyz`, `/metrics`.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn healthz(State(state): State<AdminState>) -> Response {
    let problems = state.readiness.liveness_problems();
    if problems.is_empty() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: {}\n", problems.join("; ")),
        )
            .into_response()
    }
}

async fn readyz(State(state): State<AdminState>) -> Response {
    let waiting = state.readiness.not_ready();
    if waiting.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: waiting for {}\n", waiting.join(", ")),
        )
            .into_response()
    }
}

async fn metrics(State(state): State<AdminState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

/// Serve the admin routes on `addr` (plaintext) until `shutdown` completes.
pub async fn serve(
    addr: SocketAddr,
    state: AdminState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_router(addr, router(state), shutdown).await
}

/// Serve `routes` (the admin routes plus a component's own, e.g. the sensor's `/inventory`) on
/// `addr` until `shutdown` completes.
pub async fn serve_router(
    addr: SocketAddr,
    routes: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "admin server listening (/healthz, /readyz, /metrics)");
    axum::serve(listener, routes)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Where metrics are registered: a bare registry, or the admin server's [`Metrics`]. The
/// metric sets of the controller, the webhook and the kube client register through it.
pub trait MetricSink {
    fn add(&mut self, name: &str, help: &str, metric: impl Metric);
}

impl MetricSink for &mut Registry {
    fn add(&mut self, name: &str, help: &str, metric: impl Metric) {
        self.register(name, help, metric);
    }
}

impl MetricSink for &Metrics {
    fn add(&mut self, name: &str, help: &str, metric: impl Metric) {
        self.register(name, help, metric);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn get_path(router: Router, path: &str) -> (StatusCode, String) {
        let resp = router
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn readyz_waits_for_every_component() {
        let state = AdminState {
            metrics: Arc::new(Metrics::new()),
            readiness: Arc::new(Readiness::new()),
        };
        let caches = state.readiness.component("webhook-caches");
        let other = state.readiness.component("controller");
        let (status, body) = get_path(router(state.clone()), "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("webhook-caches, controller"), "{body}");
        caches.set_ready(true);
        let (status, body) = get_path(router(state.clone()), "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            body.contains("controller") && !body.contains("webhook"),
            "{body}"
        );
        other.set_ready(true);
        assert_eq!(
            get_path(router(state.clone()), "/readyz").await.0,
            StatusCode::OK
        );
        assert_eq!(get_path(router(state), "/healthz").await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn metrics_expose_admission_series_with_bounded_labels() {
        let metrics = Arc::new(Metrics::new());
        let admission = AdmissionMetrics::register(&metrics);
        admission
            .requests
            .get_or_create(&RequestLabels {
                kind: "Ingress",
                operation: "CREATE",
                decision: "denied",
            })
            .inc();
        admission
            .findings
            .get_or_create(&FindingLabels {
                rule: "APG001",
                severity: "deny",
                mode: "enforce",
            })
            .inc();
        admission.duration.observe(0.0002);
        let state = AdminState {
            metrics,
            readiness: Arc::new(Readiness::new()),
        };
        let (status, body) = get_path(router(state), "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            body.contains(
                r#"apiguard_admission_requests_total{kind="Ingress",operation="CREATE",decision="denied"} 1"#
            ),
            "{body}"
        );
        assert!(
            body.contains(
                r#"apiguard_admission_findings_total{rule="APG001",severity="deny",mode="enforce"} 1"#
            ),
            "{body}"
        );
        assert!(
            body.contains(r#"apiguard_admission_duration_seconds_bucket{le="0.00025"} 1"#),
            "{body}"
        );
    }
}
