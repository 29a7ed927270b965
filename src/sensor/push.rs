//! The inventory push: every `report.intervalSeconds` the sensor looks at its inventory and
//! its runtime detections and, when either changed since the last accepted push (or every
//! [`HEARTBEAT_INTERVALS`] intervals regardless), `POST`s them to the operator
//! ([`crate::discovery::push`]) over mTLS with the gateway's workload certificate. With
//! discovery off and detections on, the push carries an empty inventory marked
//! `discovery: false` and the runtime report.
//!
//! One TLS connection per push (one every 30 s by default): the certificate, key and roots are
//! read from their files at every push, so a certificate the kubelet swapped into the volume is
//! used from the next push on. The `report` section is read from the config in force at every
//! tick: a reload that adds, removes or changes it takes effect without a restart.
//!
//! Only the inventory (method, path templates, status classes, counts) and the detections
//! (detectors, keys as the engine shows them: the client IP, or a hash) are sent; the log lines
//! name the URL, the files, the status and the operator's message, never a value.

use super::config::{HEARTBEAT_INTERVALS, SensorReport};
use super::learn::SharedLearner;
use super::observe::{ResultLabels, SensorMetrics};
use super::reload::ConfigFile;
use crate::discovery::push::{PUSH_PATH, Push, PushAnswer, RuntimeReport};
use crate::discovery::{Declared, Inventory};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use sha2::{Digest, Sha256};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Connect, TLS handshake, request and answer of one push, together.
const PUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a config without a `report` section is looked at again (a reload may add one).
const IDLE_RECHECK: Duration = Duration::from_secs(1);
/// The largest answer read (a [`PushAnswer`] is a few hundred bytes).
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// How one push went, when the operator answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answered {
    /// `202`: taken.
    Accepted,
    /// Any other status, with the operator's message and `retry-after` (seconds), if any.
    Refused {
        status: u16,
        message: String,
        retry_after: Option<u64>,
    },
}

/// Why a push did not reach the operator; each names the file or the URL.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PushError {
    #[error("report.url {url:?}: {message}")]
    Url { url: String, message: String },
    #[error("{field} {}: cannot read: {error}", path.display())]
    Read {
        field: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{field} {}: {message}", path.display())]
    Pem {
        field: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("report.certFile {} and report.keyFile {}: {error}", cert.display(), key.display())]
    ClientCert {
        cert: PathBuf,
        key: PathBuf,
        error: rustls::Error,
    },
    #[error("{url}: cannot connect: {error}")]
    Connect { url: String, error: std::io::Error },
    #[error("{url}: TLS handshake failed: {error}")]
    Tls { url: String, error: std::io::Error },
    #[error("{url}: {error}")]
    Http { url: String, error: hyper::Error },
    #[error("{url}: no answer within {}s", PUSH_TIMEOUT.as_secs())]
    Timeout { url: String },
    #[error("cannot encode the push: {0}")]
    Encode(#[from] serde_json::Error),
}

/// The `report` section with its files resolved against `sensor.yaml`'s directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) url: String,
    pub(crate) interval: Duration,
    pub(crate) cert_file: PathBuf,
    pub(crate) key_file: PathBuf,
    pub(crate) ca_file: PathBuf,
}

impl Target {
    /// `report` of the config at `config_path`.
    pub(crate) fn new(report: &SensorReport, config_path: &Path) -> Self {
        let dir = config_path.parent().unwrap_or(Path::new("."));
        Target {
            url: report.url.clone(),
            interval: Duration::from_secs(report.interval_seconds.max(1)),
            cert_file: dir.join(&report.cert_file),
            key_file: dir.join(&report.key_file),
            ca_file: dir.join(&report.ca_file),
        }
    }
}

/// Where the push finds the sensor's runtime detections, asked at every tick: `None` when the
/// sensor runs no detectors and no baseline. Usually
/// [`RuntimeReport::of`]`(engine, baseline, now)` under the sensor's detection lock.
pub(crate) type RuntimeSource = Arc<dyn Fn() -> Option<RuntimeReport> + Send + Sync>;

/// What a push says, to tell whether anything changed: the inventory's change counter and a
/// digest of the runtime report ([`runtime_digest`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Version {
    pub(crate) inventory: u64,
    pub(crate) runtime: u64,
}

/// When to push: the version of the last accepted push, and the ticks since.
#[derive(Debug, Default)]
pub(crate) struct Schedule {
    accepted: Option<Version>,
    ticks_since_accepted: u32,
}

impl Schedule {
    /// One interval passed; whether to push at `version`.
    pub(crate) fn tick(&mut self, version: Version) -> bool {
        self.ticks_since_accepted = self.ticks_since_accepted.saturating_add(1);
        self.accepted != Some(version) || self.ticks_since_accepted >= HEARTBEAT_INTERVALS
    }

    /// The push of `version` was accepted.
    pub(crate) fn accepted(&mut self, version: Version) {
        self.accepted = Some(version);
        self.ticks_since_accepted = 0;
    }

    /// The target changed: the next tick pushes.
    pub(crate) fn reset(&mut self) {
        *self = Schedule::default();
    }
}

/// How long to wait after an answer before the next tick: `retry-after` of a `429`, between
/// one and [`HEARTBEAT_INTERVALS`] intervals; else one interval.
pub(crate) fn wait_after(answer: &Answered, interval: Duration) -> Duration {
    match answer {
        Answered::Refused {
            status: 429,
            retry_after: Some(seconds),
            ..
        } => Duration::from_secs(*seconds).clamp(interval, interval * HEARTBEAT_INTERVALS),
        _ => interval,
    }
}

/// Who is pushing: `$POD_NAME`, else the host name, else `sensor-<pid>`.
pub(crate) fn reporter() -> String {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    env("POD_NAME")
        .or_else(|| env("HOSTNAME"))
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| format!("sensor-{}", std::process::id()))
}

/// A digest of `report` (0: none), for [`Version::runtime`].
pub(crate) fn runtime_digest(report: Option<&RuntimeReport>) -> u64 {
    let Some(report) = report else {
        return 0;
    };
    let bytes = serde_json::to_vec(report).unwrap_or_default();
    let digest = Sha256::digest(&bytes);
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first).max(1)
}

/// Pushes the inventory and what `runtime` reports as the config in force says, until
/// `shutdown`.
pub(crate) async fn run(
    config: Arc<ConfigFile>,
    learner: SharedLearner,
    metrics: SensorMetrics,
    reporter: String,
    runtime: Option<RuntimeSource>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut schedule = Schedule::default();
    let mut last_target: Option<Target> = None;
    let mut wait = IDLE_RECHECK;
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let Some(report) = config.report() else {
            if last_target.take().is_some() {
                tracing::info!("report section removed from sensor.yaml; inventory pushes stop");
            }
            wait = IDLE_RECHECK;
            continue;
        };
        let target = Target::new(&report, config.path());
        if last_target.as_ref() != Some(&target) {
            tracing::info!(url = %target.url, interval_seconds = target.interval.as_secs(), "pushing the discovery inventory to the operator");
            schedule.reset();
            last_target = Some(target.clone());
        }
        wait = target.interval;
        let pipeline = config.current();
        let detections = runtime
            .as_ref()
            .and_then(|source| source())
            .map(RuntimeReport::bounded);
        let (namespace, name) = pipeline
            .policy
            .split_once('/')
            .unwrap_or(("", pipeline.policy.as_str()));
        let (inventory, generation, declarations, learning) = match pipeline.discovery.as_ref() {
            Some(discovery) => {
                let snapshot = learner.snapshot(&pipeline.policy);
                let fingerprint = snapshot
                    .fingerprint
                    .as_deref()
                    .unwrap_or(&discovery.fingerprint);
                (
                    snapshot.report,
                    snapshot.generation,
                    declarations_hash(fingerprint),
                    true,
                )
            }
            None if detections.is_some() => (
                Inventory::new(Some(pipeline.policy.clone()), Declared::none()).report(),
                0,
                declarations_hash(""),
                false,
            ),
            None => {
                tracing::debug!("discovery and detections are off in sensor.yaml; nothing to push");
                continue;
            }
        };
        let version = Version {
            inventory: generation,
            runtime: runtime_digest(detections.as_ref()),
        };
        if !schedule.tick(version) {
            continue;
        }
        let push = Push {
            namespace: namespace.to_string(),
            name: name.to_string(),
            reporter: reporter.clone(),
            declarations,
            inventory,
            discovery: learning,
            runtime: detections,
        };
        let result = tokio::select! {
            _ = &mut shutdown => return,
            r = push_once(&target, &push) => r,
        };
        let label = match &result {
            Ok(Answered::Accepted) => {
                schedule.accepted(version);
                tracing::debug!(url = %target.url, endpoints = push.inventory.endpoints.len(), "inventory pushed");
                "accepted"
            }
            Ok(
                answer @ Answered::Refused {
                    status, message, ..
                },
            ) => {
                wait = wait_after(answer, target.interval);
                tracing::warn!(url = %target.url, status, message = %message, retry_in_seconds = wait.as_secs(), "the operator refused the inventory push");
                "refused"
            }
            Err(e) => {
                tracing::warn!(error = %e, "inventory push failed; retrying at the next interval");
                "error"
            }
        };
        metrics
            .pushes
            .get_or_create(&ResultLabels { result: label })
            .inc();
    }
}

/// SHA-256 (hex) of the declarations' fingerprint.
pub(crate) fn declarations_hash(fingerprint: &str) -> String {
    hex::encode(Sha256::digest(fingerprint.as_bytes()))
}

/// One push of `push` to `target`: a new TLS connection (files read now), bounded by
/// [`PUSH_TIMEOUT`].
pub(crate) async fn push_once(target: &Target, push: &Push) -> Result<Answered, PushError> {
    let body = serde_json::to_vec(push)?;
    match tokio::time::timeout(PUSH_TIMEOUT, exchange(target, body)).await {
        Ok(result) => result,
        Err(_) => Err(PushError::Timeout {
            url: target.url.clone(),
        }),
    }
}

/// The URL's host (brackets of an IPv6 address removed), port (443 by default) and path.
fn split_url(url: &str) -> Result<(String, u16, String), PushError> {
    let bad = |message: String| PushError::Url {
        url: url.to_string(),
        message,
    };
    super::config::check_report_url(url).map_err(bad)?;
    let uri: hyper::Uri = url.parse().map_err(|e| bad(format!("{e}")))?;
    let host = uri
        .host()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| PUSH_PATH.to_string());
    Ok((host, uri.port_u16().unwrap_or(443), path))
}

fn read(field: &'static str, path: &Path) -> Result<Vec<u8>, PushError> {
    std::fs::read(path).map_err(|error| PushError::Read {
        field,
        path: path.to_owned(),
        error,
    })
}

/// The client's TLS configuration from the files: roots of `caFile`, the client certificate
/// of `certFile` and `keyFile`; TLS 1.3 and 1.2, ALPN `http/1.1`.
fn client_config(target: &Target) -> Result<rustls::ClientConfig, PushError> {
    let pem_error = |field, path: &Path, message: String| PushError::Pem {
        field,
        path: path.to_owned(),
        message,
    };
    let ca = read("report.caFile", &target.ca_file)?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&ca) {
        let cert = cert.map_err(|e| pem_error("report.caFile", &target.ca_file, e.to_string()))?;
        roots
            .add(cert)
            .map_err(|e| pem_error("report.caFile", &target.ca_file, e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(pem_error(
            "report.caFile",
            &target.ca_file,
            "no PEM certificate (-----BEGIN CERTIFICATE-----) found".into(),
        ));
    }
    let cert = read("report.certFile", &target.cert_file)?;
    let chain = CertificateDer::pem_slice_iter(&cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error("report.certFile", &target.cert_file, e.to_string()))?;
    if chain.is_empty() {
        return Err(pem_error(
            "report.certFile",
            &target.cert_file,
            "no PEM certificate (-----BEGIN CERTIFICATE-----) found".into(),
        ));
    }
    let key = read("report.keyFile", &target.key_file)?;
    let key = PrivateKeyDer::from_pem_slice(&key).map_err(|e| {
        pem_error(
            "report.keyFile",
            &target.key_file,
            format!("no usable PEM private key: {e}"),
        )
    })?;
    let client_cert = |error| PushError::ClientCert {
        cert: target.cert_file.clone(),
        key: target.key_file.clone(),
        error,
    };
    let mut config = rustls::ClientConfig::builder_with_provider(crate::certs::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(client_cert)?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(client_cert)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Connect, handshake, `POST`, read the answer.
async fn exchange(target: &Target, body: Vec<u8>) -> Result<Answered, PushError> {
    let url = &target.url;
    let (host, port, path) = split_url(url)?;
    let tls = client_config(target)?;
    let server_name = ServerName::try_from(host.clone()).map_err(|e| PushError::Url {
        url: url.clone(),
        message: format!("{host:?} is not a DNS name or IP address: {e}"),
    })?;
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|error| PushError::Connect {
            url: url.clone(),
            error,
        })?;
    let _ = tcp.set_nodelay(true);
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(server_name, tcp)
        .await
        .map_err(|error| PushError::Tls {
            url: url.clone(),
            error,
        })?;
    let http = |error| PushError::Http {
        url: url.clone(),
        error,
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http)?;
    let connection = tokio::spawn(async move {
        let _ = connection.await;
    });
    let authority = match port {
        443 => host_for_header(&host),
        p => format!("{}:{p}", host_for_header(&host)),
    };
    let request = hyper::Request::post(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::CONTENT_LENGTH, body.len())
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| PushError::Url {
            url: url.clone(),
            message: e.to_string(),
        })?;
    let response = sender.send_request(request).await.map_err(http)?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(hyper::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let answer = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
        .collect()
        .await
        .ok()
        .and_then(|b| serde_json::from_slice::<PushAnswer>(&b.to_bytes()).ok());
    drop(sender);
    connection.abort();
    if status == 202 {
        return Ok(Answered::Accepted);
    }
    Ok(Answered::Refused {
        status,
        message: answer.map(|a| a.message).unwrap_or_default(),
        retry_after,
    })
}

/// `host` as the `Host` header writes it (an IPv6 address in brackets).
fn host_for_header(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}
