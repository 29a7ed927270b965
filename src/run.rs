//! `apiguard run`: the long-running process (controller + webhook + admin server).
//!
//! Flags are also read from `APIGUARD_*` environment variables (the Helm chart sets those).
//! The Kubernetes connection is the usual one: in-cluster, or `KUBECONFIG`.

use crate::admin::{self, AdminState, AdmissionMetrics, Metrics, Readiness, ReadyHandle};
use crate::api::duration::parse_duration;
use crate::certs::serving::{self, ServingMetrics};
use crate::certs::serving_secret::{self, ServingConfig};
use crate::certs::{ReloadingCert, SwappableCert};
use crate::rules::{AdmissionMode, DEFAULT_EXEMPT_NAMESPACES, EngineConfig};
use crate::webhook::cluster::ReflectorView;
use crate::webhook::server::server_config;
use crate::webhook::{self, Admission, Limits};
use anyhow::Context;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (for log collectors).
    Json,
}

/// Flags of `apiguard run`.
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Do not run the controller (reconciling ApiSecurityPolicies).
    #[arg(long, env = "APIGUARD_NO_CONTROLLER")]
    pub no_controller: bool,
    /// Do not run the admission webhook.
    #[arg(long, env = "APIGUARD_NO_WEBHOOK")]
    pub no_webhook: bool,
    /// Address of the webhook's HTTPS listener (`POST /validate`).
    #[arg(long, env = "APIGUARD_WEBHOOK_ADDR", default_value = "0.0.0.0:8443")]
    pub webhook_addr: SocketAddr,
    /// PEM certificate chain the webhook serves (re-read when the file changes).
    #[arg(long, env = "APIGUARD_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of the webhook certificate (re-read when the file changes).
    #[arg(long, env = "APIGUARD_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Without --tls-cert/--tls-key, the operator manages the webhook serving certificate:
    /// issued from its CA into this Secret of the operator namespace (tls.crt, tls.key,
    /// ca.crt), shared by every replica and renewed at two thirds of its lifetime.
    #[arg(long, env = "APIGUARD_WEBHOOK_SECRET", default_value = serving_secret::DEFAULT_SERVING_SECRET)]
    pub webhook_secret: String,
    /// DNS name of the webhook endpoint, a SAN of the managed serving certificate (repeatable;
    /// comma-separated in the environment), e.g. apiguard.apiguard-system.svc.
    #[arg(
        long = "webhook-dns-name",
        env = "APIGUARD_WEBHOOK_DNS_NAMES",
        value_delimiter = ','
    )]
    pub webhook_dns_names: Vec<String>,
    /// IP address of the webhook endpoint, a SAN of the managed serving certificate
    /// (repeatable; comma-separated in the environment), e.g. 127.0.0.1.
    #[arg(
        long = "webhook-ip-address",
        env = "APIGUARD_WEBHOOK_IP_ADDRESSES",
        value_delimiter = ','
    )]
    pub webhook_ip_addresses: Vec<std::net::IpAddr>,
    /// ValidatingWebhookConfiguration whose webhooks' caBundle the operator keeps equal to its
    /// CA (server-side apply, field manager apiguard-webhook-ca); managed certificate only.
    #[arg(long, env = "APIGUARD_WEBHOOK_CONFIG")]
    pub webhook_config: Option<String>,
    /// Lifetime of a managed serving certificate (renewed at two thirds).
    #[arg(long, env = "APIGUARD_WEBHOOK_CERT_LIFETIME", default_value = "2160h", value_parser = parse_duration)]
    pub webhook_cert_lifetime: Duration,
    /// Address of the plaintext admin listener: /healthz, /readyz, /metrics.
    #[arg(long, env = "APIGUARD_ADMIN_ADDR", default_value = "0.0.0.0:8080")]
    pub admin_addr: SocketAddr,
    /// The operator's own namespace [default: $POD_NAMESPACE, else apiguard-system].
    #[arg(long, env = "APIGUARD_OPERATOR_NAMESPACE")]
    pub operator_namespace: Option<String>,
    /// SPIFFE trust domain of the certificates apiguard issues.
    #[arg(long, env = "APIGUARD_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
    /// Admission mode: Enforce denies deny-level findings, Warn admits with warnings, Audit
    /// admits silently and only records.
    #[arg(long, env = "APIGUARD_MODE", value_enum, default_value_t = AdmissionMode::Enforce)]
    pub mode: AdmissionMode,
    /// Namespaces whose objects are not checked (comma-separated; the operator namespace is
    /// always added).
    #[arg(
        long,
        env = "APIGUARD_EXEMPT_NAMESPACES",
        value_delimiter = ',',
        default_values = DEFAULT_EXEMPT_NAMESPACES
    )]
    pub exempt_namespaces: Vec<String>,
    /// Log format.
    #[arg(long, env = "APIGUARD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Largest admission request body in bytes; larger ones get HTTP 413.
    #[arg(long, env = "APIGUARD_WEBHOOK_MAX_BODY_BYTES", default_value_t = webhook::DEFAULT_MAX_BODY_BYTES)]
    pub webhook_max_body_bytes: usize,
    /// Deadline of one admission request (e.g. 5s, 500ms).
    #[arg(long, env = "APIGUARD_WEBHOOK_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub webhook_timeout: Duration,
    /// How often the certificate files are checked for a new certificate.
    #[arg(long, env = "APIGUARD_CERT_RELOAD_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub cert_reload_interval: Duration,
    /// Envoy image of the generated gateway Deployments.
    #[arg(
        long,
        env = "APIGUARD_ENVOY_IMAGE",
        default_value = "envoyproxy/envoy:v1.40.0"
    )]
    pub envoy_image: String,
    /// Replicas of each generated gateway Deployment.
    #[arg(long, env = "APIGUARD_GATEWAY_REPLICAS", default_value_t = 2)]
    pub gateway_replicas: i32,
    /// Image of the sensor sidecar of gateways whose policy has spec.openapi: the operator's
    /// own image (the chart sets it) [default: ghcr.io/apiguard/apiguard:VERSION, this build's version].
    #[arg(long, env = "APIGUARD_SENSOR_IMAGE")]
    pub sensor_image: Option<String>,
    /// Resources of the sensor sidecar, as JSON ({"requests":{...},"limits":{...}}).
    #[arg(
        long,
        env = "APIGUARD_SENSOR_RESOURCES",
        default_value = crate::render::DEFAULT_SENSOR_RESOURCES,
        value_parser = crate::render::parse_resources
    )]
    pub sensor_resources: k8s_openapi::api::core::v1::ResourceRequirements,
    /// Name of the operator CA Secret in the operator namespace (created when absent).
    #[arg(long, env = "APIGUARD_CA_SECRET", default_value = crate::identity::secrets::DEFAULT_CA_SECRET)]
    pub ca_secret: String,
    /// Policies reconciled at once (0: unbounded).
    #[arg(long, env = "APIGUARD_CONTROLLER_CONCURRENCY", default_value_t = crate::controller::Config::DEFAULT_CONCURRENCY)]
    pub controller_concurrency: u16,
    /// How long the controller gathers events about one policy before reconciling it.
    #[arg(long, env = "APIGUARD_CONTROLLER_DEBOUNCE", default_value = "100ms", value_parser = parse_duration)]
    pub controller_debounce: Duration,
    /// CA rotation: how long the new root is trusted alongside the old one before the new CA
    /// issues (every workload must have loaded the two-root bundle by then).
    #[arg(long, env = "APIGUARD_CA_ROTATION_PROPAGATION", default_value = "10m", value_parser = parse_duration)]
    pub ca_rotation_propagation: Duration,
    /// Lifetime of the workload certificates the controller issues (gateway and target
    /// identities), renewed at two thirds; also how long a CA rotation keeps the old root.
    #[arg(long, env = "APIGUARD_LEAF_LIFETIME", default_value = "24h", value_parser = parse_duration)]
    pub leaf_lifetime: Duration,
    /// Do not run the background audit (the leader reviewing every existing object of the
    /// checked kinds into PolicyReports `apiguard-audit`).
    #[arg(long, env = "APIGUARD_NO_AUDIT")]
    pub no_audit: bool,
    /// How often the background audit reviews every existing object (changes are audited as
    /// they happen, after 2 s of quiet).
    #[arg(long, env = "APIGUARD_AUDIT_INTERVAL", default_value = "10m", value_parser = parse_duration)]
    pub audit_interval: Duration,
    /// Where gateway sensors push their discovery inventory (the webhook's HTTPS endpoint,
    /// path /v1/discovery) [default: https://<first --webhook-dns-name>/v1/discovery with the
    /// managed serving certificate; none with --tls-cert or --no-webhook: sensors keep their
    /// inventory to themselves (GET /inventory)].
    #[arg(long, env = "APIGUARD_DISCOVERY_URL")]
    pub discovery_url: Option<String>,
    /// How often each gateway sensor pushes its inventory when it changed (it pushes at least
    /// every ten intervals).
    #[arg(long, env = "APIGUARD_DISCOVERY_REPORT_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub discovery_report_interval: Duration,
    /// On SIGTERM/SIGINT, how long open connections get to finish in-flight requests.
    #[arg(long, env = "APIGUARD_SHUTDOWN_DRAIN", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_drain: Duration,
    /// The Redis every gateway's sensor shares state through (`scope: Global` rate limits):
    /// redis://, rediss://, redis+sentinel:// or redis+cluster://. Without it a policy with a
    /// Global limit is not programmed.
    #[arg(long, env = "APIGUARD_REDIS_URL")]
    pub redis_url: Option<String>,
    /// A file holding the Redis password (a mounted Secret); or the environment variable
    /// APIGUARD_REDIS_PASSWORD. Passed to the sensors through each gateway's Secret.
    #[arg(long, env = "APIGUARD_REDIS_PASSWORD_FILE")]
    pub redis_password_file: Option<PathBuf>,
    /// The CA certificates (PEM file, a mounted Secret) of a `rediss…` Redis with a private
    /// CA: checked at start and handed to every gateway's sensor (in its ConfigMap).
    #[arg(long, env = crate::sensor::REDIS_CA_FILE_ENV)]
    pub redis_ca_file: Option<PathBuf>,
    /// The client certificate (PEM file, a mounted Secret) every gateway's sensor presents to a
    /// `rediss…` Redis that asks for one (`tls-auth-clients yes`); with
    /// --redis-client-key-file. Checked at start, handed on through each gateway's Secret.
    #[arg(long, env = crate::sensor::REDIS_CLIENT_CERT_ENV, requires = "redis_client_key_file")]
    pub redis_client_cert_file: Option<PathBuf>,
    /// The private key (PEM file) of --redis-client-cert-file.
    #[arg(long, env = crate::sensor::REDIS_CLIENT_KEY_ENV, requires = "redis_client_cert_file")]
    pub redis_client_key_file: Option<PathBuf>,
}

/// Where the webhook's serving certificate comes from.
#[derive(Debug, Clone)]
pub(crate) enum ServingSource {
    /// PEM files (cert-manager or any other issuer mounts them), re-read on change.
    Files(PathBuf, PathBuf),
    /// Issued and kept current by apiguard itself, in a Secret.
    Managed(ServingConfig),
}

/// Default operator namespace when neither the flag nor `POD_NAMESPACE` says otherwise.
pub(crate) const DEFAULT_OPERATOR_NAMESPACE: &str = "apiguard-system";

impl RunArgs {
    /// The operator namespace: the flag, else `$POD_NAMESPACE`, else `apiguard-system`.
    pub fn operator_namespace(&self) -> String {
        self.operator_namespace
            .clone()
            .filter(|ns| !ns.is_empty())
            .or_else(|| {
                std::env::var("POD_NAMESPACE")
                    .ok()
                    .filter(|ns| !ns.is_empty())
            })
            .unwrap_or_else(|| DEFAULT_OPERATOR_NAMESPACE.to_owned())
    }

    /// Where the webhook's serving certificate comes from (`None`: no webhook); a usage error
    /// says what to pass.
    pub(crate) fn serving_source(&self) -> Result<Option<ServingSource>, String> {
        if self.no_webhook {
            return Ok(None);
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                return Ok(Some(ServingSource::Files(cert.clone(), key.clone())));
            }
            (Some(_), None) | (None, Some(_)) => {
                return Err(
                    "--tls-cert and --tls-key (APIGUARD_TLS_CERT / APIGUARD_TLS_KEY) go together: pass both, or neither to let apiguard manage the certificate".into(),
                );
            }
            (None, None) => {}
        }
        let names = crate::identity::serving::ServingNames {
            dns_names: self
                .webhook_dns_names
                .iter()
                .map(|n| n.trim().to_owned())
                .filter(|n| !n.is_empty())
                .collect(),
            ip_addresses: self.webhook_ip_addresses.clone(),
        };
        if names.is_empty() {
            return Err(format!(
                "the webhook needs its serving certificate: pass --tls-cert FILE and --tls-key FILE \
                 (or APIGUARD_TLS_CERT / APIGUARD_TLS_KEY), or let apiguard issue and manage it in \
                 Secret {}/{} by naming the webhook's endpoint with --webhook-dns-name NAME and/or \
                 --webhook-ip-address IP (APIGUARD_WEBHOOK_DNS_NAMES / APIGUARD_WEBHOOK_IP_ADDRESSES), \
                 or run without it (--no-webhook)",
                self.operator_namespace(),
                self.webhook_secret
            ));
        }
        if let Some(bad) = names
            .dns_names
            .iter()
            .find(|n| !crate::identity::issue::valid_dns_name(n))
        {
            return Err(format!(
                "--webhook-dns-name '{bad}' (APIGUARD_WEBHOOK_DNS_NAMES) is not a lowercase DNS-1123 subdomain"
            ));
        }
        let lifetime = time::Duration::try_from(self.webhook_cert_lifetime)
            .ok()
            .filter(|l| *l >= time::Duration::HOUR)
            .ok_or_else(|| {
                "--webhook-cert-lifetime (APIGUARD_WEBHOOK_CERT_LIFETIME) must be at least 1h"
                    .to_owned()
            })?;
        Ok(Some(ServingSource::Managed(ServingConfig {
            namespace: self.operator_namespace(),
            secret: self.webhook_secret.clone(),
            ca_secret: self.ca_secret.clone(),
            names,
            lifetime,
            webhook_config: self.webhook_config.clone().filter(|n| !n.is_empty()),
            resync: serving_secret::DEFAULT_RESYNC,
        })))
    }

    /// Where sensors push (`--discovery-url`): the flag, else the first webhook DNS name when the
    /// operator manages the serving certificate (issued by the CA the sensors trust), else
    /// none. An error names the flag.
    /// `--redis-url` and the password, checked (the URL parses; the password file reads), for
    /// the gateways' sensors; None without a URL.
    pub(crate) fn shared_state_checked(
        &self,
    ) -> Result<Option<crate::render::SharedStateOptions>, String> {
        use crate::shared_state::{Password, RedisConfig};
        let Some(url) = self.redis_url.as_deref().filter(|u| !u.is_empty()) else {
            if self.redis_ca_file.is_some() || self.redis_client_cert_file.is_some() {
                return Err(
                    "--redis-ca-file or --redis-client-cert-file is set without --redis-url".into(),
                );
            }
            return Ok(None);
        };
        let config = RedisConfig::parse(url)
            .map_err(|e| format!("--redis-url (APIGUARD_REDIS_URL): {e}"))?;
        let ca_pem = match &self.redis_ca_file {
            Some(path) => config
                .clone()
                .with_ca_file(path)
                .map_err(|e| {
                    format!(
                        "--redis-ca-file ({}): {e}",
                        crate::sensor::REDIS_CA_FILE_ENV
                    )
                })?
                .ca_pem
                .map(|pem| String::from_utf8_lossy(&pem).into_owned()),
            None => None,
        };
        // The URL goes into every gateway's pod spec: a password in it would be written there.
        if config.password().is_some() {
            return Err(
                "--redis-url (APIGUARD_REDIS_URL) must not carry a password (it is passed \
                        to every gateway's sensor in its pod spec): give it with \
                        --redis-password-file or APIGUARD_REDIS_PASSWORD"
                    .into(),
            );
        }
        let password = match &self.redis_password_file {
            Some(path) => Some(Password::from_file(path).map_err(|e| {
                format!("--redis-password-file (APIGUARD_REDIS_PASSWORD_FILE): {e}")
            })?),
            None if std::env::var_os(crate::sensor::REDIS_PASSWORD_ENV).is_some() => Some(
                Password::from_env(crate::sensor::REDIS_PASSWORD_ENV).map_err(|e| e.to_string())?,
            ),
            None => None,
        };
        let client_identity = match (&self.redis_client_cert_file, &self.redis_client_key_file) {
            (Some(cert), Some(key)) => {
                config
                    .clone()
                    .with_client_cert_files(cert, key)
                    .map_err(|e| {
                        format!("--redis-client-cert-file / --redis-client-key-file: {e}")
                    })?
                    .client_identity
            }
            _ => None,
        };
        Ok(Some(crate::render::SharedStateOptions {
            url: url.to_owned(),
            password: password.map(|p| p.expose().to_owned()),
            ca_pem,
            client_identity,
        }))
    }

    pub(crate) fn discovery_url_checked(&self) -> Result<Option<String>, String> {
        use crate::discovery::push::PUSH_PATH;
        if let Some(url) = self.discovery_url.as_deref().filter(|u| !u.is_empty()) {
            let rest = url.strip_prefix("https://").ok_or_else(|| {
                format!("--discovery-url (APIGUARD_DISCOVERY_URL) '{url}' must be an https:// URL")
            })?;
            if rest.split(['/', ':']).next().unwrap_or("").is_empty() {
                return Err(format!(
                    "--discovery-url (APIGUARD_DISCOVERY_URL) '{url}' has no host"
                ));
            }
            return Ok(Some(url.to_owned()));
        }
        let managed = !self.no_webhook && self.tls_cert.is_none() && self.tls_key.is_none();
        Ok(managed
            .then(|| {
                self.webhook_dns_names
                    .iter()
                    .map(|n| n.trim())
                    .find(|n| !n.is_empty())
                    .map(|n| format!("https://{n}{PUSH_PATH}"))
            })
            .flatten())
    }

    /// `--leaf-lifetime` as a certificate lifetime: 5 minutes to 1 year. Certificates are
    /// backdated 5 minutes against clock skew and renewed at two thirds of notBefore..notAfter,
    /// so 5m renews 100 s after issue: short lifetimes are for tests and demonstrations of
    /// renewal; production keeps hours.
    pub(crate) fn leaf_lifetime_checked(&self) -> Option<time::Duration> {
        time::Duration::try_from(self.leaf_lifetime)
            .ok()
            .filter(|l| *l >= time::Duration::minutes(5) && *l <= time::Duration::days(365))
    }

    /// The rule engine settings these flags select.
    pub(crate) fn engine_config(&self) -> EngineConfig {
        let mut exempt: std::collections::BTreeSet<String> = self
            .exempt_namespaces
            .iter()
            .map(|ns| ns.trim())
            .filter(|ns| !ns.is_empty())
            .map(str::to_owned)
            .collect();
        exempt.insert(self.operator_namespace());
        EngineConfig {
            mode: self.mode,
            exempt_namespaces: exempt,
        }
    }
}

/// Install the global tracing subscriber (`RUST_LOG` filters, default `info`).
pub(crate) fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a terminal: escape codes would litter collected logs.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    // A subscriber already installed (tests) is fine: keep it.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Run `apiguard run` to completion; the exit code for the CLI.
pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    if args.no_webhook && args.no_controller {
        eprintln!(
            "error: nothing to run: --no-webhook and --no-controller together leave only the admin server"
        );
        return Ok(ExitCode::from(2));
    }
    let tls = match args.serving_source() {
        Ok(tls) => tls,
        Err(message) => {
            eprintln!("error: {message}");
            return Ok(ExitCode::from(2));
        }
    };
    if args.audit_interval < Duration::from_secs(10) {
        eprintln!("error: --audit-interval (APIGUARD_AUDIT_INTERVAL) must be at least 10s");
        return Ok(ExitCode::from(2));
    }
    if let Err(message) = args.discovery_url_checked() {
        eprintln!("error: {message}");
        return Ok(ExitCode::from(2));
    }
    if let Err(message) = args.shared_state_checked() {
        eprintln!("error: {message}");
        return Ok(ExitCode::from(2));
    }
    if args.discovery_report_interval < Duration::from_secs(1) {
        eprintln!(
            "error: --discovery-report-interval (APIGUARD_DISCOVERY_REPORT_INTERVAL) must be at least 1s"
        );
        return Ok(ExitCode::from(2));
    }
    if args.leaf_lifetime_checked().is_none() {
        eprintln!("error: --leaf-lifetime (APIGUARD_LEAF_LIFETIME) must be between 5m and 8760h");
        return Ok(ExitCode::from(2));
    }
    init_logging(args.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(args, tls))?;
    Ok(ExitCode::SUCCESS)
}

/// Starts the controller (leader-elected) in the background; its metrics, readiness and
/// liveness go to the admin server.
fn start_controller(
    args: &RunArgs,
    client: kube::Client,
    metrics: &Metrics,
    readiness: &Readiness,
    stop_rx: &watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    use crate::controller;
    let controller_metrics = controller::ControllerMetrics::register(metrics);
    let health = Arc::new(controller::Health::default());
    let ready = readiness.component("controller");
    {
        let health = health.clone();
        readiness.liveness_check(Arc::new(move || health.live(std::time::Instant::now())));
    }
    {
        let health = health.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            loop {
                ready.set_ready(health.ready());
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = stop.wait_for(|s| *s) => break,
                }
            }
        });
    }
    let namespace = args.operator_namespace();
    let identity = pod_identity();
    let options = crate::render::RenderOptions {
        envoy_image: args.envoy_image.clone(),
        replicas: args.gateway_replicas,
        sensor_image: args
            .sensor_image
            .clone()
            .filter(|i| !i.is_empty())
            .unwrap_or_else(|| crate::render::DEFAULT_SENSOR_IMAGE.to_string()),
        sensor_resources: args.sensor_resources.clone(),
        discovery_report: args.discovery_url_checked().ok().flatten().map(|url| {
            crate::render::DiscoveryReportOptions {
                url,
                interval_seconds: args.discovery_report_interval.as_secs().max(1),
            }
        }),
        // Checked before the runtime started.
        shared_state: args.shared_state_checked().ok().flatten(),
        ..Default::default()
    };
    let opts = controller::Options {
        config: controller::Config {
            operator_namespace: namespace.clone(),
            trust_domain: args.trust_domain.clone(),
            ca_secret: args.ca_secret.clone(),
            leaf_lifetime: args
                .leaf_lifetime_checked()
                .unwrap_or(crate::identity::DEFAULT_LEAF_LIFETIME),
            concurrency: args.controller_concurrency,
            debounce: args.controller_debounce,
            ca_rotation_propagation: args.ca_rotation_propagation,
        },
        leader: controller::leader::LeaderConfig::new(&namespace, &identity),
        renderer: Arc::new(controller::EnvoyRenderer { options }),
        metrics: controller_metrics,
        health: health.clone(),
        audit: (!args.no_audit).then(|| crate::audit::Audit {
            config: crate::audit::AuditConfig {
                engine: args.engine_config(),
                interval: args.audit_interval,
                debounce: crate::audit::AuditConfig::DEFAULT_DEBOUNCE,
            },
            metrics: crate::audit::AuditMetrics::register(metrics),
        }),
    };
    let shutdown = controller::shutdown_on(stopped(stop_rx));
    tokio::spawn(async move {
        if let Err(e) = controller::run(client, opts, shutdown).await {
            tracing::error!(error = %e, "controller stopped");
            health.set_stopped();
        }
    })
}

/// This replica's name: `$POD_NAME`, else `$HOSTNAME`, else `apiguard-<pid>`.
fn pod_identity() -> String {
    std::env::var("POD_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|n| !n.is_empty()))
        .unwrap_or_else(|| format!("apiguard-{}", std::process::id()))
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
async fn termination_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received; shutting down"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received; shutting down"),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops apiguard");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn stopped(rx: &watch::Receiver<bool>) -> impl Future<Output = ()> + Send + 'static {
    let mut rx = rx.clone();
    async move {
        let _ = rx.wait_for(|stop| *stop).await;
    }
}

/// Answer 503 until the cluster caches have synced: an answer from an empty cache would be
/// wrong (for example, every backend would look unprotected).
async fn require_synced(ready: ReadyHandle, request: Request, next: Next) -> Response {
    if ready.is_ready() {
        next.run(request).await
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({
                "error": "apiguard webhook is starting: cluster caches have not synced yet"
            })),
        )
            .into_response()
    }
}

async fn serve(args: RunArgs, tls: Option<ServingSource>) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        termination_signal().await;
        let _ = stop_tx.send(true);
    });

    let metrics = Arc::new(Metrics::new());
    let readiness = Arc::new(Readiness::new());
    // Registered before the admin server answers, so /readyz never says ready too early.
    let certificate_ready = matches!(tls, Some(ServingSource::Managed(_)))
        .then(|| readiness.component("webhook-certificate"));

    let admin_listener = tokio::net::TcpListener::bind(args.admin_addr)
        .await
        .with_context(|| format!("binding the admin listener on {}", args.admin_addr))?;
    let admin_addr = admin_listener.local_addr()?;
    let admin_state = AdminState {
        metrics: metrics.clone(),
        readiness: readiness.clone(),
    };
    let admin_task = tokio::spawn(
        axum::serve(admin_listener, admin::router(admin_state))
            .with_graceful_shutdown(stopped(&stop_rx))
            .into_future(),
    );
    tracing::info!(addr = %admin_addr, "admin server listening (/healthz, /readyz, /metrics)");

    // A bad certificate file is a usage error: report it before touching the cluster.
    let files_cert = match &tls {
        Some(ServingSource::Files(cert, key)) => Some(Arc::new(
            ReloadingCert::load(cert, key).context("loading the webhook serving certificate")?,
        )),
        _ => None,
    };
    // kube's error text already carries its causes; `context` would repeat them.
    let requests = crate::kube_client::register(&*metrics);
    let client = crate::kube_client::counted_client(requests)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "connecting to Kubernetes (in-cluster service account, or KUBECONFIG): {e}"
            )
        })?;
    let controller_task = (!args.no_controller)
        .then(|| start_controller(&args, client.clone(), &metrics, &readiness, &stop_rx));
    // Client certificates (discovery pushes) are verified against the operator CA's roots,
    // which the managed serving Secret carries; with certificate files the CA is not known.
    let client_roots = matches!(tls, Some(ServingSource::Managed(_)))
        .then(|| Arc::new(crate::certs::SwappableClientRoots::new()));
    // One resolver serves the webhook; the files or the serving Secret feed it.
    let resolver: Option<Arc<SwappableCert>> = match tls {
        Some(ServingSource::Files(..)) => files_cert.map(|reloading| {
            let resolver = reloading.resolver();
            tokio::spawn(reloading.watch(args.cert_reload_interval, stopped(&stop_rx)));
            resolver
        }),
        Some(ServingSource::Managed(config)) => {
            let managed = Arc::new(SwappableCert::new());
            tracing::info!(
                secret = %format!("{}/{}", config.namespace, config.secret),
                names = %config.names,
                webhook_configuration = config.webhook_config.as_deref().unwrap_or("(not managed)"),
                "managing the webhook serving certificate"
            );
            tokio::spawn(serving::run(
                client.clone(),
                config,
                managed.clone(),
                client_roots.clone(),
                certificate_ready.expect("registered for the managed certificate"),
                ServingMetrics::register(&metrics),
                stopped(&stop_rx),
            ));
            Some(managed)
        }
        None => None,
    };
    match resolver {
        Some(resolver) => {
            let webhook = Webhook {
                resolver,
                client_roots,
            };
            serve_webhook(&args, webhook, client, &metrics, &readiness, &stop_rx).await?
        }
        None => stopped(&stop_rx).await,
    }
    if let Some(task) = controller_task {
        // Graceful: running reconciles finish and the Lease is released.
        if tokio::time::timeout(args.shutdown_drain, task)
            .await
            .is_err()
        {
            tracing::warn!("controller did not stop within the drain time");
        }
    }
    match admin_task.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "admin server stopped with an error"),
        Err(e) => tracing::warn!(error = %e, "admin server task failed"),
    }
    tracing::info!("apiguard stopped");
    Ok(())
}

/// What the webhook's TLS endpoint serves with.
struct Webhook {
    resolver: Arc<dyn rustls::server::ResolvesServerCert>,
    /// Roots of client certificates: with them, the endpoint also takes discovery pushes.
    client_roots: Option<Arc<crate::certs::SwappableClientRoots>>,
}

async fn serve_webhook(
    args: &RunArgs,
    webhook: Webhook,
    client: kube::Client,
    metrics: &Metrics,
    readiness: &Readiness,
    stop_rx: &watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let admission_metrics = AdmissionMetrics::register(metrics);
    let caches_ready = readiness.component("webhook-caches");

    let tls = Arc::new(match &webhook.client_roots {
        Some(roots) => {
            crate::webhook::server::server_config_with_client_auth(webhook.resolver, roots.clone())?
        }
        None => server_config(webhook.resolver)?,
    });

    let listener = tokio::net::TcpListener::bind(args.webhook_addr)
        .await
        .with_context(|| format!("binding the webhook listener on {}", args.webhook_addr))?;
    let webhook_addr = listener.local_addr()?;
    let client_for_intake = client.clone();
    // Discovery can hang on an unreachable apiserver: a signal must still stop the process.
    let view = tokio::select! {
        view = ReflectorView::start(client, stop_rx.clone()) => view?,
        _ = stopped(stop_rx) => {
            tracing::info!("stopped before the webhook started");
            return Ok(());
        }
    };
    {
        let view = view.clone();
        let caches_ready = caches_ready.clone();
        tokio::spawn(async move {
            match view.synced().await {
                Ok(()) => {
                    caches_ready.set_ready(true);
                    tracing::info!("webhook caches synced; ready");
                }
                Err(e) => tracing::error!(error = %e, "webhook caches stopped before syncing"),
            }
        });
    }

    let config = args.engine_config();
    tracing::info!(
        mode = %config.mode,
        exempt_namespaces = ?config.exempt_namespaces,
        addr = %webhook_addr,
        "admission webhook listening (POST /validate)"
    );
    let admission = Arc::new(Admission::new(Arc::new(view), config, admission_metrics));
    let limits = Limits {
        max_body_bytes: args.webhook_max_body_bytes,
        request_timeout: args.webhook_timeout,
    };
    let mut app =
        webhook::router(admission, limits).layer(middleware::from_fn(move |req, next| {
            require_synced(caches_ready.clone(), req, next)
        }));
    if webhook.client_roots.is_some() {
        let intake = crate::intake::handler::IntakeService::new(
            client_for_intake,
            args.trust_domain.clone(),
            pod_identity(),
            crate::intake::IntakeLimits::default(),
            crate::intake::handler::IntakeMetrics::register(metrics),
        );
        app = app.merge(crate::intake::handler::router(Arc::new(intake)));
        tracing::info!(
            path = crate::discovery::push::PUSH_PATH,
            "discovery intake listening (gateway sensors' inventory pushes, mTLS)"
        );
    }
    webhook::server::serve_tls(listener, tls, app, stopped(stop_rx), args.shutdown_drain).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    #[test]
    fn defaults_match_the_design() {
        let args = Cli::try_parse_from(["apiguard"]).unwrap().run;
        assert_eq!(args.webhook_addr.to_string(), "0.0.0.0:8443");
        assert_eq!(args.admin_addr.to_string(), "0.0.0.0:8080");
        assert_eq!(args.trust_domain, "cluster.local");
        assert_eq!(args.mode, AdmissionMode::Enforce);
        assert_eq!(
            args.exempt_namespaces,
            ["kube-system", "kube-public", "kube-node-lease"]
        );
        assert_eq!(
            args.leaf_lifetime_checked(),
            Some(crate::identity::DEFAULT_LEAF_LIFETIME)
        );
        assert_eq!(args.audit_interval, Duration::from_secs(600));
        assert!(!args.no_audit);
    }

    #[test]
    fn leaf_lifetime_is_bounded() {
        let lifetime = |v: &str| {
            Cli::try_parse_from(["apiguard", "--leaf-lifetime", v])
                .unwrap()
                .run
                .leaf_lifetime_checked()
        };
        assert_eq!(lifetime("2h"), Some(time::Duration::hours(2)));
        assert_eq!(lifetime("5m"), Some(time::Duration::minutes(5)));
        assert_eq!(lifetime("4m59s"), None);
        assert_eq!(lifetime("9000h"), None);
    }

    #[test]
    fn exempt_namespaces_always_include_the_operator_namespace() {
        let args = Cli::try_parse_from([
            "apiguard",
            "--exempt-namespaces",
            "kube-system, tools",
            "--operator-namespace",
            "guard",
            "--mode",
            "Warn",
        ])
        .unwrap()
        .run;
        let config = args.engine_config();
        assert_eq!(config.mode, AdmissionMode::Warn);
        assert_eq!(
            config.exempt_namespaces.into_iter().collect::<Vec<_>>(),
            ["guard", "kube-system", "tools"]
        );
    }

    #[test]
    fn the_serving_certificate_is_managed_unless_files_are_given() {
        let parse = |args: &[&str]| {
            let mut all = vec!["apiguard", "--operator-namespace", "guard"];
            all.extend_from_slice(args);
            Cli::try_parse_from(all).unwrap().run.serving_source()
        };
        let err = parse(&[]).unwrap_err();
        for needle in [
            "--tls-cert",
            "--webhook-dns-name",
            "--no-webhook",
            "guard/apiguard-webhook-tls",
        ] {
            assert!(err.contains(needle), "{err}");
        }
        assert!(matches!(parse(&["--no-webhook"]), Ok(None)));
        let err = parse(&["--tls-cert", "a.crt"]).unwrap_err();
        assert!(err.contains("go together"), "{err}");
        assert!(matches!(
            parse(&["--tls-cert", "a.crt", "--tls-key", "a.key"]),
            Ok(Some(ServingSource::Files(..)))
        ));
        let Ok(Some(ServingSource::Managed(config))) = parse(&[
            "--webhook-dns-name",
            "apiguard.guard.svc",
            "--webhook-dns-name",
            "localhost",
            "--webhook-ip-address",
            "127.0.0.1",
            "--webhook-config",
            "apiguard",
            "--webhook-secret",
            "tls",
        ]) else {
            panic!("managed")
        };
        assert_eq!(config.namespace, "guard");
        assert_eq!(config.secret, "tls");
        assert_eq!(config.ca_secret, "apiguard-ca");
        assert_eq!(config.names.dns_names, ["apiguard.guard.svc", "localhost"]);
        assert_eq!(config.names.ip_addresses[0].to_string(), "127.0.0.1");
        assert_eq!(config.webhook_config.as_deref(), Some("apiguard"));
        assert_eq!(config.lifetime, time::Duration::days(90));
        let err = parse(&["--webhook-dns-name", "Bad_Name"]).unwrap_err();
        assert!(err.contains("'Bad_Name'"), "{err}");
        let err = parse(&[
            "--webhook-dns-name",
            "a.b",
            "--webhook-cert-lifetime",
            "30m",
        ])
        .unwrap_err();
        assert!(err.contains("at least 1h"), "{err}");
        assert!(Cli::try_parse_from(["apiguard", "--webhook-ip-address", "localhost"]).is_err());
    }

    #[test]
    fn sensors_push_to_the_first_webhook_name_unless_told_otherwise() {
        let url = |args: &[&str]| {
            let mut all = vec!["apiguard"];
            all.extend_from_slice(args);
            Cli::try_parse_from(all)
                .unwrap()
                .run
                .discovery_url_checked()
        };
        assert_eq!(
            url(&["--webhook-dns-name", "apiguard.guard.svc,localhost"]),
            Ok(Some("https://apiguard.guard.svc/v1/discovery".into()))
        );
        assert_eq!(
            url(&[
                "--webhook-dns-name",
                "apiguard.guard.svc",
                "--discovery-url",
                "https://127.0.0.1:9443/v1/discovery"
            ]),
            Ok(Some("https://127.0.0.1:9443/v1/discovery".into()))
        );
        // Certificate files or no webhook: the sensors cannot trust the endpoint; no push.
        assert_eq!(
            url(&[
                "--tls-cert",
                "a",
                "--tls-key",
                "b",
                "--webhook-dns-name",
                "x.svc"
            ]),
            Ok(None)
        );
        assert_eq!(
            url(&["--no-webhook", "--webhook-dns-name", "x.svc"]),
            Ok(None)
        );
        let err = url(&["--discovery-url", "http://x/v1/discovery"]).unwrap_err();
        assert!(
            err.contains("--discovery-url") && err.contains("https://"),
            "{err}"
        );
        let err = url(&["--discovery-url", "https:///v1/discovery"]).unwrap_err();
        assert!(err.contains("no host"), "{err}");
    }

    #[test]
    fn bad_values_are_usage_errors() {
        assert!(Cli::try_parse_from(["apiguard", "--mode", "Block"]).is_err());
        // --redis-url: checked, named in errors, never carrying a password.
        let redis = |url: &str| {
            Cli::try_parse_from(["apiguard", "--redis-url", url])
                .unwrap()
                .run
                .shared_state_checked()
        };
        let ok = redis("redis+sentinel://s1,s2/mymaster").unwrap().unwrap();
        assert_eq!(ok.url, "redis+sentinel://s1,s2/mymaster");
        assert_eq!(ok.password, None);
        let bad = redis("http://redis:6379").unwrap_err();
        assert!(
            bad.starts_with("--redis-url (APIGUARD_REDIS_URL): "),
            "{bad}"
        );
        let with_password = redis("redis://:hunter2@redis:6379").unwrap_err();
        assert!(
            with_password.contains("must not carry a password"),
            "{with_password}"
        );
        assert!(!with_password.contains("hunter2"), "{with_password}");
        assert_eq!(redis("").unwrap(), None);
        // --redis-ca-file: read and checked at start, handed on as PEM; errors name the flag.
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.crt");
        let now = time::OffsetDateTime::now_utc();
        let ca =
            crate::identity::CertificateAuthority::generate(now, time::Duration::days(1)).unwrap();
        std::fs::write(&ca_file, ca.cert_pem()).unwrap();
        let with_ca = |url: &str| {
            let mut args = vec!["apiguard", "--redis-ca-file", ca_file.to_str().unwrap()];
            if !url.is_empty() {
                args.extend(["--redis-url", url]);
            }
            Cli::try_parse_from(args)
                .unwrap()
                .run
                .shared_state_checked()
        };
        let ok = with_ca("rediss://redis:6380").unwrap().unwrap();
        assert_eq!(ok.ca_pem.as_deref(), Some(ca.cert_pem().as_str()));
        let plain = with_ca("redis://redis:6379").unwrap_err();
        assert!(
            plain.starts_with("--redis-ca-file (APIGUARD_REDIS_CA_FILE): ")
                && plain.contains("plain text"),
            "{plain}"
        );
        let alone = with_ca("").unwrap_err();
        assert!(alone.contains("without --redis-url"), "{alone}");
        // --redis-client-cert-file with its key: checked, handed on; one without the other is
        // refused by the parser.
        let leaf = crate::identity::issue_leaf(
            &ca,
            &crate::identity::LeafRequest::new(
                crate::identity::SpiffeId::new("cluster.local", "apiguard", "sensor").unwrap(),
            ),
            now,
        )
        .unwrap();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::write(&cert, &leaf.cert_pem).unwrap();
        std::fs::write(&key, &leaf.key_pem).unwrap();
        let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
        let pair = Cli::try_parse_from([
            "apiguard",
            "--redis-url",
            "rediss://redis:6380",
            "--redis-client-cert-file",
            cert,
            "--redis-client-key-file",
            key,
        ])
        .unwrap()
        .run
        .shared_state_checked()
        .unwrap()
        .unwrap();
        let shown = format!("{pair:?}");
        assert!(!shown.contains("PRIVATE KEY"), "{shown}");
        let id = pair.client_identity.expect("the client identity");
        assert_eq!(id.key_pem, leaf.key_pem.as_bytes());
        assert!(
            Cli::try_parse_from(["apiguard", "--redis-client-cert-file", cert]).is_err(),
            "a certificate without its key"
        );
        let swapped = Cli::try_parse_from([
            "apiguard",
            "--redis-url",
            "rediss://redis:6380",
            "--redis-client-cert-file",
            key,
            "--redis-client-key-file",
            key,
        ])
        .unwrap()
        .run
        .shared_state_checked()
        .unwrap_err();
        assert!(
            swapped.starts_with("--redis-client-cert-file / --redis-client-key-file: ")
                && !swapped.contains("PRIVATE KEY-----\n"),
            "{swapped}"
        );
        assert!(Cli::try_parse_from(["apiguard", "--webhook-timeout", "5 seconds"]).is_err());
        assert!(Cli::try_parse_from(["apiguard", "--webhook-addr", "localhost"]).is_err());
    }
}
