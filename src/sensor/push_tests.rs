//! The inventory push against a real HTTPS server on loopback that verifies client
//! certificates (rustls `WebPkiClientVerifier`), with a CA and leaves from the crate's own
//! identity code.

use super::access_log::Logged;
use super::learn::Learner;
use super::observe::{ResultLabels, SensorMetrics};
use super::push::*;
use super::reload::ConfigFile;
use crate::admin::Metrics;
use crate::detect::{Action, ActiveBlock, Detection, KeyLabel};
use crate::discovery::push::{
    MAX_PUSHED_BLOCKS, MAX_PUSHED_DETECTIONS, PUSH_PATH, Push, PushAnswer, RuntimeReport,
};
use crate::identity::{CertificateAuthority, IssuedLeaf, LeafRequest, SpiffeId, issue_leaf};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};
use time::OffsetDateTime;
use tokio::sync::{mpsc, watch};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

const GATEWAY: &str = "spiffe://cluster.local/ns/shop/sa/orders-apiguard";

fn ca() -> CertificateAuthority {
    let now = OffsetDateTime::now_utc();
    CertificateAuthority::generate(now - time::Duration::hours(1), time::Duration::days(30))
        .unwrap()
}

fn leaf(ca: &CertificateAuthority, ns: &str, sa: &str, dns: &[&str]) -> IssuedLeaf {
    let mut request = LeafRequest::new(SpiffeId::new("cluster.local", ns, sa).unwrap());
    request.dns_names = dns.iter().map(|d| d.to_string()).collect();
    issue_leaf(ca, &request, OffsetDateTime::now_utc()).unwrap()
}

/// What the server saw of one request.
#[derive(Debug)]
struct Received {
    /// The client certificate's URI SAN.
    spiffe_id: Option<String>,
    path: String,
    body: Vec<u8>,
    at: Instant,
}

fn uri_san(der: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        GeneralName::URI(u) => Some(u.to_string()),
        _ => None,
    })
}

/// An HTTPS server on 127.0.0.1 with a `localhost` certificate from `server_ca`, requiring a
/// client certificate from `client_ca`. Answers each request with the next of `answers`
/// (status, retry-after), then 202.
async fn operator(
    server_ca: &CertificateAuthority,
    client_ca: &CertificateAuthority,
    answers: Vec<(u16, Option<u64>)>,
) -> (SocketAddr, mpsc::UnboundedReceiver<Received>) {
    let served = leaf(server_ca, "apiguard-system", "apiguard", &["localhost"]);
    let chain = CertificateDer::pem_slice_iter(served.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(served.key_pem.as_bytes()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(client_ca.roots_pem().as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        crate::certs::provider(),
    )
    .build()
    .unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(crate::certs::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let answers = Arc::new(answers);
    let count = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, tx, answers, count) =
                (acceptor.clone(), tx.clone(), answers.clone(), count.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let spiffe_id = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| uri_san(c));
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let (tx, answers, count, spiffe_id) = (
                            tx.clone(),
                            answers.clone(),
                            count.clone(),
                            spiffe_id.clone(),
                        );
                        async move {
                            let path = req.uri().path().to_string();
                            let body = req.into_body().collect().await?.to_bytes().to_vec();
                            let _ = tx.send(Received {
                                spiffe_id,
                                path,
                                body,
                                at: Instant::now(),
                            });
                            let n = count.fetch_add(1, Ordering::SeqCst);
                            let (status, retry_after) =
                                answers.get(n).copied().unwrap_or((202, None));
                            let answer = PushAnswer {
                                accepted: status == 202,
                                message: format!("answer {n}"),
                            };
                            let mut response = hyper::Response::builder().status(status);
                            if let Some(s) = retry_after {
                                response = response.header("retry-after", s.to_string());
                            }
                            Ok::<_, hyper::Error>(
                                response
                                    .body(Full::new(Bytes::from(
                                        serde_json::to_vec(&answer).unwrap(),
                                    )))
                                    .unwrap(),
                            )
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (addr, rx)
}

const HEADER: &str = "apiVersion: apiguard.dev/v1alpha1\nkind: SensorConfig\npolicy: {namespace: shop, name: orders}\ndiscovery:\n  declared:\n  - rule: read\n    methods: [GET]\n    paths: ['/users/{id}']\n";

fn report_section(addr: SocketAddr, cert_file: &str) -> String {
    format!(
        "report:\n  url: https://localhost:{}{PUSH_PATH}\n  intervalSeconds: 1\n  certFile: {cert_file}\n  keyFile: identity.key\n  caFile: identity-ca.crt\n",
        addr.port()
    )
}

/// A sensor directory: the gateway's identity files from `ca` (roots: `trusted`), and
/// `sensor.yaml` with `report`.
fn sensor_dir(
    ca: &CertificateAuthority,
    trusted: &CertificateAuthority,
    report: &str,
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let gateway = leaf(ca, "shop", "orders-apiguard", &[]);
    std::fs::write(dir.path().join("identity.crt"), &gateway.cert_pem).unwrap();
    std::fs::write(dir.path().join("identity.key"), &gateway.key_pem).unwrap();
    std::fs::write(dir.path().join("identity-ca.crt"), trusted.roots_pem()).unwrap();
    std::fs::write(dir.path().join("sensor.yaml"), format!("{HEADER}{report}")).unwrap();
    dir
}

fn logged(path: &str, status: u16) -> Logged {
    Logged {
        method: "GET".into(),
        path: path.into(),
        status,
        route: String::new(),
        authenticated: true,
        content_type: Some("application/json".into()),
        time: SystemTime::now(),
        caller: Default::default(),
    }
}

struct Sensor {
    config: Arc<ConfigFile>,
    learner: Arc<Learner>,
    metrics: SensorMetrics,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Sensor {
    fn start(dir: &Path) -> Self {
        Self::start_with(dir, None)
    }

    fn start_with(dir: &Path, runtime: Option<RuntimeSource>) -> Self {
        let config = Arc::new(ConfigFile::load(dir.join("sensor.yaml")).unwrap());
        let learner = Arc::new(Learner::default());
        let metrics = SensorMetrics::register(&Metrics::new());
        let (stop, mut stopping) = watch::channel(false);
        let task = tokio::spawn(run(
            config.clone(),
            learner.clone(),
            metrics.clone(),
            "orders-apiguard-7d9f-x2".into(),
            runtime,
            async move {
                let _ = stopping.wait_for(|s| *s).await;
            },
        ));
        Sensor {
            config,
            learner,
            metrics,
            stop,
            task,
        }
    }

    fn observe(&self, requests: &[Logged]) {
        let pipeline = self.config.current();
        self.learner.observe(pipeline.discovery.as_ref(), requests);
    }

    fn pushes(&self, result: &'static str) -> u64 {
        self.metrics
            .pushes
            .get_or_create(&ResultLabels { result })
            .get()
    }

    /// Stops the push loop; it must end promptly.
    async fn stop(self) {
        self.stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(2), self.task)
            .await
            .expect("the push loop stops on shutdown")
            .unwrap();
    }
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Received>, within: Duration) -> Received {
    tokio::time::timeout(within, rx.recv())
        .await
        .expect("a push in time")
        .expect("the server runs")
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(8);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_inventory_arrives_with_the_gateway_identity_when_it_changed() {
    let ca = ca();
    let (addr, mut rx) = operator(&ca, &ca, vec![]).await;
    let dir = sensor_dir(&ca, &ca, "");
    let sensor = Sensor::start(dir.path());
    sensor.observe(&[logged("/users/42", 200), logged("/admin/export", 404)]);

    // No `report` section: nothing is pushed.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert!(rx.try_recv().is_err(), "pushed without a report section");

    // A reload that adds it takes effect.
    std::fs::write(
        dir.path().join("sensor.yaml"),
        format!("{HEADER}{}", report_section(addr, "identity.crt")),
    )
    .unwrap();
    assert!(sensor.config.reload_if_changed().unwrap());
    let first = next(&mut rx, Duration::from_secs(5)).await;
    assert_eq!(first.spiffe_id.as_deref(), Some(GATEWAY));
    assert_eq!(first.path, PUSH_PATH);
    let push: Push = serde_json::from_slice(&first.body).unwrap();
    assert_eq!(
        (push.namespace.as_str(), push.name.as_str()),
        ("shop", "orders")
    );
    assert_eq!(push.reporter, "orders-apiguard-7d9f-x2");
    let fingerprint = sensor
        .config
        .current()
        .discovery
        .as_ref()
        .unwrap()
        .fingerprint
        .clone();
    assert_eq!(push.declarations, declarations_hash(&fingerprint));
    assert_eq!(push.declarations.len(), 64);
    assert_eq!(push.inventory, sensor.learner.report("shop/orders"));
    assert_eq!(push.inventory.observed, 2);
    assert_eq!(push.inventory.shadow, ["GET /admin/export"]);
    until("the accepted push counted", || {
        sensor.pushes("accepted") == 1
    })
    .await;

    // Unchanged: no push at the next ticks (the heartbeat is 10 intervals away).
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert!(
        rx.try_recv().is_err(),
        "an unchanged inventory was pushed again"
    );

    // Changed: pushed at the next tick.
    sensor.observe(&[logged("/users/43", 200)]);
    let second = next(&mut rx, Duration::from_secs(3)).await;
    let push: Push = serde_json::from_slice(&second.body).unwrap();
    assert_eq!(push.inventory.observed, 3);
    assert_eq!(sensor.pushes("error") + sensor.pushes("refused"), 0);
    sensor.stop().await;
}

#[tokio::test]
async fn a_429_delays_the_next_push_by_its_retry_after() {
    let ca = ca();
    let (addr, mut rx) = operator(&ca, &ca, vec![(429, Some(3))]).await;
    let dir = sensor_dir(&ca, &ca, &report_section(addr, "identity.crt"));
    let sensor = Sensor::start(dir.path());
    sensor.observe(&[logged("/users/42", 200)]);
    let refused = next(&mut rx, Duration::from_secs(5)).await;
    // Refused, so the same inventory is tried again, but only after retry-after (3 s), not
    // at the next 1 s tick.
    let retried = next(&mut rx, Duration::from_secs(6)).await;
    let gap = retried.at - refused.at;
    assert!(gap >= Duration::from_millis(2800), "retried after {gap:?}");
    assert!(gap < Duration::from_millis(4800), "retried after {gap:?}");
    assert_eq!(refused.body, retried.body);
    until("the pushes counted", || {
        sensor.pushes("refused") == 1 && sensor.pushes("accepted") == 1
    })
    .await;
    sensor.stop().await;
}

#[tokio::test]
async fn a_server_certificate_from_another_ca_is_refused_before_anything_is_sent() {
    let ours = ca();
    let theirs = ca();
    // The server requires our client certificates but presents one from another CA.
    let (addr, mut rx) = operator(&theirs, &ours, vec![]).await;
    let dir = sensor_dir(&ours, &ours, &report_section(addr, "identity.crt"));
    let sensor = Sensor::start(dir.path());
    sensor.observe(&[logged("/users/42", 200)]);
    until("a failed push counted", || sensor.pushes("error") >= 1).await;
    assert_eq!(sensor.pushes("accepted"), 0);

    let target = Target::new(
        sensor.config.report().as_deref().unwrap(),
        &dir.path().join("sensor.yaml"),
    );
    let push = Push {
        namespace: "shop".into(),
        name: "orders".into(),
        reporter: "r".into(),
        declarations: declarations_hash(""),
        inventory: sensor.learner.report("shop/orders"),
        discovery: true,
        runtime: None,
    };
    let err = push_once(&target, &push).await.unwrap_err();
    assert!(matches!(err, PushError::Tls { .. }), "{err}");
    assert!(err.to_string().contains(&target.url), "{err}");
    sensor.stop().await;
    assert!(rx.try_recv().is_err(), "a body reached an untrusted server");
}

#[tokio::test]
async fn a_missing_certificate_file_is_an_error_naming_it() {
    let ca = ca();
    let (addr, mut rx) = operator(&ca, &ca, vec![]).await;
    let dir = sensor_dir(&ca, &ca, &report_section(addr, "renewed/identity.crt"));
    let config = ConfigFile::load(dir.path().join("sensor.yaml")).unwrap();
    let target = Target::new(&config.report().unwrap(), config.path());
    assert_eq!(target.cert_file, dir.path().join("renewed/identity.crt"));
    let push = Push {
        namespace: "shop".into(),
        name: "orders".into(),
        reporter: "r".into(),
        declarations: declarations_hash(""),
        inventory: Learner::default().report("shop/orders"),
        discovery: true,
        runtime: None,
    };
    let err = push_once(&target, &push).await.unwrap_err().to_string();
    assert!(
        err.starts_with(&format!(
            "report.certFile {}: cannot read",
            dir.path().join("renewed/identity.crt").display()
        )),
        "{err}"
    );
    // With the file in place (as the kubelet writes a renewal), the next push goes through.
    std::fs::create_dir(dir.path().join("renewed")).unwrap();
    std::fs::copy(
        dir.path().join("identity.crt"),
        dir.path().join("renewed/identity.crt"),
    )
    .unwrap();
    assert_eq!(push_once(&target, &push).await.unwrap(), Answered::Accepted);
    let received = next(&mut rx, Duration::from_secs(1)).await;
    assert_eq!(received.spiffe_id.as_deref(), Some(GATEWAY));
}

fn version(inventory: u64, runtime: u64) -> Version {
    Version { inventory, runtime }
}

#[test]
fn an_unchanged_inventory_is_pushed_again_only_as_a_heartbeat() {
    let mut s = Schedule::default();
    assert!(s.tick(version(0, 0)), "the first tick pushes");
    s.accepted(version(0, 0));
    for i in 1..HEARTBEAT {
        assert!(
            !s.tick(version(0, 0)),
            "tick {i}: unchanged, no heartbeat yet"
        );
    }
    assert!(s.tick(version(0, 0)), "the heartbeat");
    s.accepted(version(0, 0));
    assert!(s.tick(version(1, 0)), "a change pushes at once");
    // Not accepted: tried again at the next tick.
    assert!(s.tick(version(1, 0)));
    s.accepted(version(1, 0));
    assert!(!s.tick(version(1, 0)));
    assert!(
        s.tick(version(1, 7)),
        "a changed runtime report pushes at once"
    );
    s.accepted(version(1, 7));
    assert!(!s.tick(version(1, 7)));
    s.reset();
    assert!(
        s.tick(version(1, 7)),
        "a new target gets the inventory at once"
    );
}

#[test]
fn the_runtime_digest_changes_with_the_report_and_is_zero_without_one() {
    assert_eq!(runtime_digest(None), 0);
    let empty = RuntimeReport::default();
    let one = RuntimeReport {
        detections: vec![detection("203.0.113.7", 1_000)],
        ..RuntimeReport::default()
    };
    assert_ne!(runtime_digest(Some(&empty)), 0);
    assert_ne!(runtime_digest(Some(&empty)), runtime_digest(Some(&one)));
    assert_eq!(
        runtime_digest(Some(&one)),
        runtime_digest(Some(&one.clone()))
    );
}

#[test]
fn a_runtime_report_is_bounded_to_the_newest_and_the_blocks_ending_last() {
    let report = RuntimeReport {
        detections: (0..150).map(|i| detection("203.0.113.7", i)).collect(),
        anomalies: Vec::new(),
        active_blocks: (0..1200)
            .map(|i| block(&format!("198.51.100.{}", i % 250), i))
            .collect(),
    }
    .bounded();
    assert_eq!(report.detections.len(), MAX_PUSHED_DETECTIONS);
    assert_eq!(report.detections[0].at_ms, 50, "the oldest are dropped");
    assert_eq!(report.detections.last().unwrap().at_ms, 149);
    assert_eq!(report.active_blocks.len(), MAX_PUSHED_BLOCKS);
    assert!(
        report
            .active_blocks
            .iter()
            .all(|b| b.blocked_until_ms >= 200)
    );
}

fn detection(key: &str, at_ms: i64) -> Detection {
    Detection {
        detector: "login-stuffing".into(),
        key: key.into(),
        key_kind: KeyLabel::ClientIp,
        key_name: None,
        action: Action::Block,
        count: 20,
        distinct: None,
        window_seconds: 60,
        at_ms,
        blocked_until_ms: Some(at_ms + 900_000),
    }
}

fn block(key: &str, until_ms: i64) -> ActiveBlock {
    ActiveBlock {
        detector: "login-stuffing".into(),
        key: key.into(),
        key_kind: KeyLabel::ClientIp,
        key_name: None,
        count: 20,
        since_ms: 0,
        blocked_until_ms: until_ms,
    }
}

/// `sensor.yaml` without a `discovery` section (discovery off).
const HEADER_NO_DISCOVERY: &str = "apiVersion: apiguard.dev/v1alpha1\nkind: SensorConfig\npolicy: {namespace: shop, name: orders}\n";

#[tokio::test]
async fn detections_are_pushed_when_they_change_even_with_discovery_off() {
    let ca = ca();
    let (addr, mut rx) = operator(&ca, &ca, vec![]).await;
    let dir = sensor_dir(&ca, &ca, "");
    std::fs::write(
        dir.path().join("sensor.yaml"),
        format!(
            "{HEADER_NO_DISCOVERY}{}",
            report_section(addr, "identity.crt")
        ),
    )
    .unwrap();
    let current: Arc<std::sync::Mutex<Option<RuntimeReport>>> = Arc::default();
    let source: RuntimeSource = {
        let current = current.clone();
        Arc::new(move || current.lock().unwrap().clone())
    };
    let sensor = Sensor::start_with(dir.path(), Some(source));

    // Discovery off and no runtime report: nothing to push.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert!(rx.try_recv().is_err(), "pushed with nothing to say");

    // A detection: pushed with an empty inventory marked discovery: false.
    *current.lock().unwrap() = Some(RuntimeReport {
        detections: vec![detection("203.0.113.7", 1_000)],
        anomalies: Vec::new(),
        active_blocks: vec![block("203.0.113.7", 901_000)],
    });
    let first = next(&mut rx, Duration::from_secs(3)).await;
    assert_eq!(first.spiffe_id.as_deref(), Some(GATEWAY));
    let push: Push = serde_json::from_slice(&first.body).unwrap();
    assert!(!push.discovery);
    assert!(push.inventory.endpoints.is_empty());
    assert_eq!(push.inventory.policy.as_deref(), Some("shop/orders"));
    let runtime = push.runtime.expect("the runtime report");
    assert_eq!(runtime.detections.len(), 1);
    assert_eq!(runtime.detections[0].key, "203.0.113.7");
    assert_eq!(runtime.active_blocks.len(), 1);
    let raw: serde_json::Value = serde_json::from_slice(&first.body).unwrap();
    assert_eq!(raw["discovery"], false);
    assert_eq!(
        raw["runtime"]["detections"][0]["at"],
        "1970-01-01T00:00:01Z"
    );
    until("the accepted push counted", || {
        sensor.pushes("accepted") == 1
    })
    .await;

    // Unchanged: not pushed again before the heartbeat.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert!(
        rx.try_recv().is_err(),
        "an unchanged report was pushed again"
    );

    // A second detection: pushed at the next tick.
    current
        .lock()
        .unwrap()
        .as_mut()
        .unwrap()
        .detections
        .push(detection("198.51.100.9", 2_000));
    let second = next(&mut rx, Duration::from_secs(3)).await;
    let push: Push = serde_json::from_slice(&second.body).unwrap();
    assert_eq!(push.runtime.unwrap().detections.len(), 2);
    sensor.stop().await;
}

#[tokio::test]
async fn with_discovery_on_the_runtime_report_rides_with_the_inventory() {
    let ca = ca();
    let (addr, mut rx) = operator(&ca, &ca, vec![]).await;
    let dir = sensor_dir(&ca, &ca, &report_section(addr, "identity.crt"));
    let current: Arc<std::sync::Mutex<Option<RuntimeReport>>> = Arc::default();
    let source: RuntimeSource = {
        let current = current.clone();
        Arc::new(move || current.lock().unwrap().clone())
    };
    let sensor = Sensor::start_with(dir.path(), Some(source));
    sensor.observe(&[logged("/users/42", 200)]);
    let first = next(&mut rx, Duration::from_secs(5)).await;
    let push: Push = serde_json::from_slice(&first.body).unwrap();
    assert!(push.discovery);
    assert_eq!(push.inventory.observed, 1);
    assert_eq!(push.runtime, None);
    let raw: serde_json::Value = serde_json::from_slice(&first.body).unwrap();
    assert!(
        raw.get("runtime").is_none() && raw.get("discovery").is_none(),
        "{raw}"
    );
    until("the accepted push counted", || {
        sensor.pushes("accepted") == 1
    })
    .await;

    // Only the runtime report changes: pushed, with the same inventory.
    *current.lock().unwrap() = Some(RuntimeReport {
        detections: vec![detection("203.0.113.7", 1_000)],
        ..RuntimeReport::default()
    });
    let second = next(&mut rx, Duration::from_secs(3)).await;
    let push: Push = serde_json::from_slice(&second.body).unwrap();
    assert_eq!(push.inventory.observed, 1);
    assert_eq!(push.runtime.unwrap().detections.len(), 1);
    sensor.stop().await;
}

const HEARTBEAT: u32 = crate::sensor::config::HEARTBEAT_INTERVALS;

#[test]
fn retry_after_is_bounded_by_the_interval_and_ten_intervals() {
    let interval = Duration::from_secs(30);
    let refused = |status, retry_after| Answered::Refused {
        status,
        message: String::new(),
        retry_after,
    };
    assert_eq!(
        wait_after(&refused(429, Some(90)), interval),
        Duration::from_secs(90)
    );
    assert_eq!(
        wait_after(&refused(429, Some(86_400)), interval),
        interval * HEARTBEAT
    );
    assert_eq!(wait_after(&refused(429, Some(0)), interval), interval);
    assert_eq!(wait_after(&refused(429, None), interval), interval);
    assert_eq!(wait_after(&refused(503, Some(90)), interval), interval);
    assert_eq!(wait_after(&Answered::Accepted, interval), interval);
}

#[test]
fn files_are_relative_to_the_config() {
    let report = crate::sensor::config::SensorReport {
        url: "https://op.example/v1/discovery".into(),
        interval_seconds: 5,
        cert_file: "identity.crt".into(),
        key_file: "/var/run/secrets/identity.key".into(),
        ca_file: "ca/roots.pem".into(),
    };
    let t = Target::new(&report, Path::new("/etc/apiguard/sensor/sensor.yaml"));
    assert_eq!(t.cert_file, Path::new("/etc/apiguard/sensor/identity.crt"));
    assert_eq!(t.key_file, Path::new("/var/run/secrets/identity.key"));
    assert_eq!(t.ca_file, Path::new("/etc/apiguard/sensor/ca/roots.pem"));
    assert_eq!(t.interval, Duration::from_secs(5));
}

#[test]
fn the_reporter_is_never_empty() {
    assert!(!reporter().is_empty());
}
