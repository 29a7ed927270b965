//! `apiguard sensor`: the flags, the gRPC server (h2c, for Envoy on loopback: ext_proc and the
//! access log service), the admin server (with `GET /inventory` and `GET /detections`), the
//! config's reload loop, the inventory push to the operator, the detection ticker, and a
//! graceful stop on SIGTERM.

use super::access_log::logged;
use super::config::DEFAULT_SENSOR_ADDR;
use super::ext_proc::ExchangeStream;
use super::learn::{Learner, SharedLearner};
use super::observe::{PointLabels, ResultLabels, SensorMetrics};
use super::rate_limit::{RateLimitMetrics, RateLimits};
use super::reload::ConfigFile;
use crate::admin::{self, AdminState, Metrics, Readiness};
use crate::run::{LogFormat, init_logging};
use anyhow::Context;
use envoy_types::pb::envoy::service::accesslog::v3::access_log_service_server::{
    AccessLogService, AccessLogServiceServer,
};
use envoy_types::pb::envoy::service::accesslog::v3::stream_access_logs_message::LogEntries;
use envoy_types::pb::envoy::service::accesslog::v3::{
    StreamAccessLogsMessage, StreamAccessLogsResponse,
};
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::{
    ExternalProcessor, ExternalProcessorServer,
};
use envoy_types::pb::envoy::service::ext_proc::v3::{ProcessingRequest, ProcessingResponse};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer;
use futures::{Stream, StreamExt};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tonic::{Request, Response, Status, Streaming};

/// How often `sensor.yaml` is re-read.
const RELOAD_INTERVAL: Duration = Duration::from_secs(1);
/// How long open exchanges get to finish after SIGTERM.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Flags of `apiguard sensor`.
#[derive(clap::Args, Debug, Clone)]
pub struct SensorArgs {
    /// The sensor.yaml to serve (written by the renderer); re-read when its content changes.
    #[arg(long, env = "APIGUARD_SENSOR_CONFIG")]
    pub config: PathBuf,
    /// Where Envoy reaches the ext_proc gRPC server (plaintext HTTP/2: keep it on loopback).
    #[arg(long, env = "APIGUARD_SENSOR_LISTEN", default_value = DEFAULT_SENSOR_ADDR)]
    pub listen: SocketAddr,
    /// The admin server: /healthz, /readyz, /metrics.
    #[arg(
        long,
        env = "APIGUARD_SENSOR_ADMIN_ADDR",
        default_value = "0.0.0.0:9003"
    )]
    pub admin_addr: SocketAddr,
    /// Log line format.
    #[arg(long, env = "APIGUARD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// The shared state store for `scope: Global` rate limits (redis://, rediss://,
    /// redis+sentinel://, redis+cluster://); the password from APIGUARD_REDIS_PASSWORD.
    /// Unreachable: global limits fail open until it answers.
    #[arg(long, env = "APIGUARD_REDIS_URL")]
    pub redis_url: Option<String>,
    /// The CA certificates (PEM) a `rediss…` server's certificate is checked against, instead
    /// of the system's roots (a Redis with a private CA).
    #[arg(long, env = super::redis_link::REDIS_CA_FILE_ENV)]
    pub redis_ca_file: Option<std::path::PathBuf>,
    /// The client certificate (PEM) presented to a `rediss…` server that asks for one; with
    /// --redis-client-key-file.
    #[arg(long, env = super::redis_link::REDIS_CLIENT_CERT_ENV, requires = "redis_client_key_file")]
    pub redis_client_cert_file: Option<std::path::PathBuf>,
    /// The private key (PEM) of --redis-client-cert-file.
    #[arg(long, env = super::redis_link::REDIS_CLIENT_KEY_ENV, requires = "redis_client_cert_file")]
    pub redis_client_key_file: Option<std::path::PathBuf>,
    /// Threads answering Envoy (the async runtime's workers); default: the CPUs the process
    /// may use (its container's CPU limit, 1 in the gateway's sidecar by default). Fewer
    /// threads than CPUs means fewer wake-ups between threads per message: lower latency.
    #[arg(long, env = "APIGUARD_SENSOR_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub worker_threads: Option<u16>,
}

/// Runs `apiguard sensor` until SIGTERM; a config that does not load is an error naming the
/// file (and the JSON pointer of a contract that does not compile).
pub fn run(args: SensorArgs) -> anyhow::Result<ExitCode> {
    init_logging(args.log_format);
    let config = Arc::new(ConfigFile::load(&args.config)?);
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = args.worker_threads {
        runtime.worker_threads(usize::from(threads));
    }
    let runtime = runtime
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(args, config))?;
    Ok(ExitCode::SUCCESS)
}

async fn serve(args: SensorArgs, config: Arc<ConfigFile>) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let readiness = Arc::new(Readiness::new());
    let ready = readiness.component("sensor");
    let sensor_metrics = SensorMetrics::register(&metrics);
    sensor_metrics
        .reloads
        .get_or_create(&ResultLabels { result: "loaded" })
        .inc();
    let listener = listen(&args, &config).await?;
    let store = super::redis_link::connect(&args).await?;
    // Runtime detection shares its counts and blocks through the same store.
    let sharing = store
        .clone()
        .map(|store| Arc::new(super::sharing::Sharing::new(store)));
    let rate_limits = RateLimitServiceServer::new(RateLimits::new(
        config.clone(),
        store,
        RateLimitMetrics::register(&metrics),
    ));
    let (stop, stopping) = watch::channel(false);
    let state = AdminState { metrics, readiness };
    let learner: SharedLearner = Arc::new(Learner::default());
    let routes = admin::router(state)
        .merge(inventory_route(config.clone(), learner.clone()))
        .merge(detections_route(config.clone()));
    let mut admin = tokio::spawn(admin::serve_router(
        args.admin_addr,
        routes,
        stopped(&stopping),
    ));
    let watcher = tokio::spawn(config.clone().watch(
        RELOAD_INTERVAL,
        sensor_metrics.clone(),
        stopped(&stopping),
    ));
    // Pushes the inventory and the runtime report while the config has a `report` section
    // (looked at every tick).
    let pusher = tokio::spawn(super::push::run(
        config.clone(),
        learner.clone(),
        sensor_metrics.clone(),
        super::push::reporter(),
        Some(runtime_report(config.clone())),
        stopped(&stopping),
    ));
    // Closes the baseline's minutes, drops idle detection state, keeps the gauge current.
    let ticker = tokio::spawn(tick(
        config.clone(),
        sensor_metrics.clone(),
        stopped(&stopping),
    ));
    let poller = sharing.clone().map(|sharing| {
        tokio::spawn(super::sharing::poll(
            sharing,
            config.clone(),
            sensor_metrics.clone(),
            stopped(&stopping),
        ))
    });
    let access_logs = AccessLogServiceServer::new(AccessLogs {
        config: config.clone(),
        learner: learner.clone(),
        metrics: sensor_metrics.clone(),
        sharing,
    });
    let service = ExternalProcessorServer::new(Processor {
        config,
        metrics: sensor_metrics,
        learner,
    });
    let mut grpc = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .add_service(access_logs)
            .add_service(rate_limits)
            .serve_with_incoming_shutdown(
                // No Nagle delay on the answers Envoy is waiting for (as gRPC servers do).
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                stopped(&stopping),
            ),
    );
    ready.set_ready(true);
    let result = tokio::select! {
        _ = termination_signal() => Ok(()),
        r = &mut admin => Err(match r {
            Ok(Err(e)) => anyhow::anyhow!("admin server on {} (--admin-addr): {e}", args.admin_addr),
            _ => anyhow::anyhow!("admin server stopped"),
        }),
        r = &mut grpc => Err(match r {
            Ok(Err(e)) => anyhow::anyhow!("gRPC server: {e}"),
            _ => anyhow::anyhow!("gRPC server stopped"),
        }),
    };
    ready.set_ready(false);
    let _ = stop.send(true);
    // Open exchanges finish (bounded); then the rest stops. A task that already ended (the
    // one that made select! return) is not awaited again.
    if !grpc.is_finished() {
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, &mut grpc).await;
    }
    if !admin.is_finished() {
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut admin).await;
    }
    let _ = watcher.await;
    let _ = pusher.await;
    let _ = ticker.await;
    if let Some(poller) = poller {
        let _ = poller.await;
    }
    result
}

/// The gRPC server's socket (`--listen`), announced with what the sensor serves and on how
/// many threads.
async fn listen(args: &SensorArgs, config: &ConfigFile) -> anyhow::Result<tokio::net::TcpListener> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {} (--listen)", args.listen))?;
    tracing::info!(
        addr = %listener.local_addr()?,
        worker_threads = tokio::runtime::Handle::current().metrics().num_workers(),
        config = %args.config.display(),
        policy = %config.current().policy,
        "sensor ext_proc server listening"
    );
    Ok(listener)
}

/// Resolves once `stop` is sent (or its sender is gone).
fn stopped(rx: &watch::Receiver<bool>) -> impl Future<Output = ()> + Send + 'static {
    let mut rx = rx.clone();
    async move {
        let _ = rx.wait_for(|stop| *stop).await;
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn termination_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received; shutting down"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received; shutting down"),
        },
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the sensor");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// The ExternalProcessor service: each stream gets the config in force when it opens.
struct Processor {
    config: Arc<ConfigFile>,
    metrics: SensorMetrics,
    /// Where the sensitive-data stage's findings go (the discovery inventory).
    learner: SharedLearner,
}

type Answers = Pin<Box<dyn Stream<Item = Result<ProcessingResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ExternalProcessor for Processor {
    type ProcessStream = Answers;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Answers>, Status> {
        let mut exchange = ExtProcCall {
            inbound: request.into_inner(),
            stream: ExchangeStream::new(self.config.current()),
            metrics: self.metrics.clone(),
            learner: self.learner.clone(),
        };
        // The response's headers go out with the first answer (one write, Envoy woken once),
        // not ahead of it: the first answers are ready before the response is returned.
        let first = exchange.next_answers().await;
        let rest = futures::stream::unfold(exchange, |mut exchange| async move {
            let answers = exchange.next_answers().await?;
            Some((answers, exchange))
        });
        let answers = futures::stream::iter(first)
            .chain(rest)
            .flat_map(|answers| futures::stream::iter(answers.into_iter().map(Ok)));
        Ok(Response::new(Box::pin(answers)))
    }
}

/// One ext_proc gRPC stream being served: Envoy's messages in, the exchange's state, and where
/// its metrics and sensitive-data findings go.
struct ExtProcCall {
    inbound: Streaming<ProcessingRequest>,
    stream: ExchangeStream,
    metrics: SensorMetrics,
    learner: SharedLearner,
}

impl ExtProcCall {
    /// Reads Envoy's messages until one gets answers (those of earlier messages it released
    /// first); None once the stream ends.
    async fn next_answers(&mut self) -> Option<Vec<ProcessingResponse>> {
        loop {
            let message = match self.inbound.message().await {
                Ok(Some(message)) => message,
                Ok(None) => return None,
                Err(status) => {
                    self.metrics.stream_errors.inc();
                    tracing::debug!(error = %status, "ext_proc stream ended with an error");
                    return None;
                }
            };
            let started = Instant::now();
            let handled = self.stream.handle(message);
            if let Some(point) = handled.point {
                self.metrics
                    .processing
                    .get_or_create(&PointLabels {
                        point: point.label(),
                    })
                    .observe(started.elapsed().as_secs_f64());
            }
            self.metrics.record(self.stream.policy(), &handled.events);
            let found = handled.events.iter().filter_map(|e| e.sensitive());
            self.learner.add_sensitive(self.stream.discovery(), found);
            let answers: Vec<_> = handled.answers().collect();
            if !answers.is_empty() {
                return Some(answers);
            }
        }
    }
}

/// `GET /inventory`: the endpoints learned so far (JSON, docs/discovery.md).
fn inventory_route(config: Arc<ConfigFile>, learner: SharedLearner) -> axum::Router {
    axum::Router::new().route(
        "/inventory",
        axum::routing::get(move || {
            let report = learner.report(&config.current().policy);
            async move { axum::Json(report) }
        }),
    )
}

/// `GET /detections`: the blocks in force, the latest detections and anomalies (JSON,
/// docs/detection.md).
fn detections_route(config: Arc<ConfigFile>) -> axum::Router {
    axum::Router::new().route(
        "/detections",
        axum::routing::get(move || {
            let view = config
                .guard()
                .view(&config.current().policy, super::guard::now_ms());
            async move { axum::Json(view) }
        }),
    )
}

/// What the push reports of runtime detection under the config in force (None without a
/// `runtime` section): the recent detections and anomalies, the blocks in force.
fn runtime_report(config: Arc<ConfigFile>) -> super::push::RuntimeSource {
    Arc::new(move || {
        config.current().runtime.as_ref()?;
        let view = config
            .guard()
            .view(&config.current().policy, super::guard::now_ms());
        Some(
            crate::discovery::push::RuntimeReport {
                detections: view.detections,
                anomalies: view.anomalies,
                active_blocks: view.active_blocks,
            }
            .bounded(),
        )
    })
}

/// How often the detection state is ticked (the baseline closes minutes; a block's end shows
/// in the gauge within this).
const TICK_INTERVAL: Duration = Duration::from_secs(1);

/// Ticks the detection state until `stop`: anomalies are counted and logged, the active-block
/// gauge set.
async fn tick(config: Arc<ConfigFile>, metrics: SensorMetrics, stop: impl Future<Output = ()>) {
    let mut interval = tokio::time::interval(TICK_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = interval.tick() => {}
        }
        let now = super::guard::now_ms();
        let policy = config.current().policy.clone();
        let guard = config.guard();
        let anomalies = guard.tick(now);
        metrics.record_anomalies(&policy, &anomalies);
        metrics.set_active_blocks(&policy, guard.active_blocks(now).len());
    }
}

/// The access log service: Envoy streams every request's entry; each batch is counted into
/// the inventory and the runtime detectors under the config in force. Never answers until the stream ends (as the
/// protocol has it).
struct AccessLogs {
    config: Arc<ConfigFile>,
    learner: SharedLearner,
    metrics: SensorMetrics,
    /// The shared state (`--redis-url`): detection counts and blocks across replicas.
    sharing: Option<Arc<super::sharing::Sharing>>,
}

impl AccessLogs {
    /// Counts a batch into the runtime detectors (and, with the shared state, into the
    /// cluster-wide counts); records and publishes the detections.
    async fn detect(
        &self,
        pipeline: &super::pipeline::Pipeline,
        requests: &[super::access_log::Logged],
    ) {
        let guard = self.config.guard();
        let Some(runtime) = pipeline.runtime.as_ref() else {
            // Drops the state of a runtime section that is gone.
            guard.observe(None, requests);
            return;
        };
        let policy = &pipeline.policy;
        let mut detections = match &self.sharing {
            None => guard.observe(Some(runtime), requests),
            Some(sharing) => {
                let mut counted = Vec::new();
                let mut found = guard.observe_counted(Some(runtime), requests, Some(&mut counted));
                let shared = sharing
                    .add_counts(policy, guard, counted, &self.metrics)
                    .await;
                found.extend(shared);
                found
            }
        };
        if detections.is_empty() {
            return;
        }
        detections.sort_by_key(|d| d.at_ms);
        self.metrics.record_detections(policy, &detections);
        if let Some(sharing) = &self.sharing {
            sharing.publish(policy, &detections, &self.metrics).await;
        }
        let blocks = guard.active_blocks(super::guard::now_ms()).len();
        self.metrics.set_active_blocks(policy, blocks);
    }
}

#[tonic::async_trait]
impl AccessLogService for AccessLogs {
    async fn stream_access_logs(
        &self,
        request: Request<Streaming<StreamAccessLogsMessage>>,
    ) -> Result<Response<StreamAccessLogsResponse>, Status> {
        let mut inbound = request.into_inner();
        loop {
            match inbound.message().await {
                Ok(Some(message)) => {
                    let Some(LogEntries::HttpLogs(batch)) = message.log_entries else {
                        continue;
                    };
                    let requests: Vec<_> = batch.log_entry.iter().filter_map(logged).collect();
                    let pipeline = self.config.current();
                    if let Some((declared, undeclared)) =
                        self.learner.observe(pipeline.discovery.as_ref(), &requests)
                    {
                        self.metrics
                            .set_endpoints(&pipeline.policy, declared, undeclared);
                    }
                    self.detect(&pipeline, &requests).await;
                }
                Ok(None) => return Ok(Response::new(StreamAccessLogsResponse {})),
                Err(status) => {
                    tracing::debug!(error = %status, "access log stream ended with an error");
                    return Err(status);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sensor::config::SENSOR_ADMIN_PORT;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: SensorArgs,
    }

    #[test]
    fn defaults_match_the_gateway_pod() {
        let cli = Cli::try_parse_from(["sensor", "--config", "x.yaml"]).unwrap();
        assert_eq!(cli.args.listen.to_string(), DEFAULT_SENSOR_ADDR);
        assert_eq!(cli.args.admin_addr.port(), SENSOR_ADMIN_PORT);
    }
}
