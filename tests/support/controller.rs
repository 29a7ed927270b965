//! Running the controller in-process (with the real Envoy renderer) against the test control
//! plane, for the controller's integration tests and benchmark.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use apiguard::controller::leader::LeaderConfig;
use apiguard::controller::{self, Config, ControllerMetrics, EnvoyRenderer, Health, Options};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};

use super::cluster::control_plane;

/// The operator namespace of the in-process operators.
pub const OPERATOR_NS: &str = "apiguard-system";

/// Installs the ApiSecurityPolicy CRD from `crds/` (with its CEL rules) and waits until it
/// is established.
pub fn install_policy_crd() {
    control_plane().install_crds();
}

/// The PolicyReport CRDs as the chart ships them, established.
pub fn install_report_crds() {
    let cp = control_plane();
    cp.kubectl_ok([
        "apply",
        "--server-side",
        // A chart release of another module may have installed them (kept on uninstall).
        "--force-conflicts",
        "-f",
        "charts/apiguard/files/policyreport-crds.yaml",
    ]);
    cp.kubectl_ok([
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/policyreports.wgpolicyk8s.io",
        "crd/clusterpolicyreports.wgpolicyk8s.io",
    ]);
}

/// A child process (an `apiguard run` binary) killed and reaped when dropped.
pub struct Process(pub std::process::Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An operator (controller with leader election) running on its own thread and runtime, so
/// it outlives any single test's runtime. Stopped (gracefully, releasing the Lease) on drop.
pub struct Operator {
    pub identity: String,
    pub metrics: Arc<ControllerMetrics>,
    pub health: Arc<Health>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<Result<(), String>>>,
}

impl Operator {
    /// Starts an operator with `identity` competing for Lease `lease`.
    pub fn start(identity: &str, lease: &str) -> Operator {
        Self::start_with(identity, lease, |_| {})
    }

    /// [`Operator::start`] with the controller configuration adjusted by `configure` (e.g. a
    /// short leaf lifetime and CA rotation propagation).
    pub fn start_with(
        identity: &str,
        lease: &str,
        configure: impl FnOnce(&mut Config),
    ) -> Operator {
        Self::start_with_options(identity, lease, |o| configure(&mut o.config))
    }

    /// [`Operator::start`] with all its options adjusted by `configure` (e.g. the background
    /// audit on).
    pub fn start_with_options(
        identity: &str,
        lease: &str,
        configure: impl FnOnce(&mut Options),
    ) -> Operator {
        let cp = control_plane();
        install_policy_crd();
        let metrics = Arc::new(ControllerMetrics::default());
        let health = Arc::new(Health::default());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let mut leader = LeaderConfig::new(OPERATOR_NS, identity);
        leader.lease_name = lease.to_string();
        leader.duration_secs = 6;
        leader.grace_secs = 2;
        let mut opts = Options {
            config: Config {
                operator_namespace: OPERATOR_NS.into(),
                trust_domain: "cluster.local".into(),
                ca_secret: "apiguard-ca".into(),
                leaf_lifetime: time::Duration::hours(24),
                concurrency: apiguard::controller::Config::DEFAULT_CONCURRENCY,
                debounce: apiguard::controller::Config::DEFAULT_DEBOUNCE,
                ca_rotation_propagation:
                    apiguard::controller::Config::DEFAULT_CA_ROTATION_PROPAGATION,
            },
            leader,
            renderer: Arc::new(EnvoyRenderer::default()),
            metrics: metrics.clone(),
            health: health.clone(),
            audit: None,
        };
        configure(&mut opts);
        let thread = std::thread::Builder::new()
            .name(format!("operator-{identity}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                rt.block_on(async move {
                    let client = cp.client().await;
                    let namespaces: Api<Namespace> = Api::all(client.clone());
                    let ns = Namespace {
                        metadata: ObjectMeta {
                            name: Some(OPERATOR_NS.into()),
                            ..Default::default()
                        },
                        ..Default::default()
                    };
                    match namespaces.create(&PostParams::default(), &ns).await {
                        Ok(_) => {}
                        Err(kube::Error::Api(s)) if s.code == 409 => {}
                        Err(e) => return Err(format!("creating {OPERATOR_NS}: {e}")),
                    }
                    let shutdown = controller::shutdown_on(async move {
                        let _ = rx.await;
                    });
                    controller::run(client, opts, shutdown)
                        .await
                        .map_err(|e| e.to_string())
                })
            })
            .expect("spawning the operator thread");
        Operator {
            identity: identity.to_string(),
            metrics,
            health,
            stop: Some(tx),
            thread: Some(thread),
        }
    }

    /// Stops the operator and waits for it (bounded by the graceful shutdown of reconciles).
    pub fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while !t.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if t.is_finished() {
                match t.join() {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => eprintln!("operator {} ended with: {e}", self.identity),
                    Err(_) => eprintln!("operator {} panicked", self.identity),
                }
            } else {
                eprintln!("operator {} did not stop within 30s", self.identity);
            }
        }
    }

    /// Reconciles completed by this operator (any result).
    pub fn reconciles(&self) -> u64 {
        [
            "success",
            "apply_failed",
            "read_failed",
            "status_failed",
            "prune_failed",
            "ca_unavailable",
            "invalid_object",
        ]
        .iter()
        .map(|r| {
            self.metrics
                .reconcile_total
                .get_or_create(&apiguard::controller::metrics::ResultLabel { result: r })
                .get()
        })
        .sum()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.stop();
    }
}
