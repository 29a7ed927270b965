//! The traffic baseline on the real sensor: the real `apiguard sensor` binary, fed over its
//! real gRPC access log service (as Envoy streams it) with a synthetic load whose entries
//! carry their own times: 45 minutes of steady traffic on two endpoints, then a 10x spike on
//! one of them for 5 minutes. Exactly one `TrafficAnomaly` names the spiking endpoint (as its
//! template, `GET /users/{id}`) and its factor; the endpoint that stayed steady raises none
//! (the false-positive check), and neither does the steady phase of the other.

use super::sensor_envoy::Sensor;
use crate::support::tools::free_port;
use apiguard::api::{BaselineSensitivity, PolicyMode, Runtime, TrafficBaseline};
use apiguard::sensor::config::SensorConfig;
use envoy_types::pb::envoy::config::core::v3::RequestMethod;
use envoy_types::pb::envoy::data::accesslog::v3::{
    AccessLogCommon, HttpAccessLogEntry, HttpRequestProperties, HttpResponseProperties,
};
use envoy_types::pb::envoy::service::accesslog::v3::StreamAccessLogsMessage;
use envoy_types::pb::envoy::service::accesslog::v3::access_log_service_client::AccessLogServiceClient;
use envoy_types::pb::envoy::service::accesslog::v3::stream_access_logs_message::{
    HttpAccessLogEntries, Identifier, LogEntries,
};
use envoy_types::pb::google::protobuf::{Timestamp, UInt32Value};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn entry(path: &str, at_ms: i64) -> HttpAccessLogEntry {
    HttpAccessLogEntry {
        common_properties: Some(AccessLogCommon {
            start_time: Some(Timestamp {
                seconds: at_ms / 1000,
                nanos: i32::try_from((at_ms % 1000) * 1_000_000).unwrap(),
            }),
            ..Default::default()
        }),
        request: Some(HttpRequestProperties {
            request_method: RequestMethod::Get as i32,
            path: path.into(),
            ..Default::default()
        }),
        response: Some(HttpResponseProperties {
            response_code: Some(UInt32Value { value: 200 }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A deterministic wobble of ±5 around `rate` per minute (no two minutes alike).
fn steady(rate: i64, minute: i64) -> i64 {
    rate + ((minute * 7919) % 11) - 5
}

#[tokio::test]
async fn a_sustained_spike_on_one_endpoint_raises_one_anomaly_and_steady_traffic_none() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = SensorConfig::new("test", "shop", PolicyMode::Enforce);
    config.runtime = Some(Runtime {
        detectors: vec![],
        baseline: Some(TrafficBaseline {
            enabled: true,
            sensitivity: BaselineSensitivity::Medium,
        }),
    });
    let path = dir.path().join("sensor.yaml");
    std::fs::write(&path, config.to_yaml()).unwrap();
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let sensor = Sensor::start(&path, addr, dir.path()).await;

    // Minutes -52 .. -2 before now: 45 steady minutes, then 5 spiking ones on /users/{id}.
    let now_ms = i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    let start_minute = now_ms / 60_000 - 52;
    let mut batches = Vec::new();
    for m in 0..50 {
        let minute = start_minute + m;
        let users = if m < 45 { steady(30, m) } else { 300 };
        let mut entries = Vec::new();
        for i in 0..users {
            let path = format!("/users/{}", 1000 + i % 97);
            entries.push(entry(&path, minute * 60_000 + i * 59_000 / users));
        }
        let health = steady(40, m + 3);
        for i in 0..health {
            entries.push(entry("/health", minute * 60_000 + i * 59_000 / health));
        }
        entries.sort_by_key(|e| {
            let t = e.common_properties.as_ref().unwrap().start_time.unwrap();
            (t.seconds, t.nanos)
        });
        batches.push(StreamAccessLogsMessage {
            identifier: (m == 0).then(|| Identifier {
                node: None,
                log_name: "apiguard-sensor".into(),
            }),
            log_entries: Some(LogEntries::HttpLogs(HttpAccessLogEntries {
                log_entry: entries,
            })),
        });
    }
    let mut client = AccessLogServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect to the sensor's access log service");
    client
        .stream_access_logs(futures::stream::iter(batches))
        .await
        .expect("stream the access log");

    // The ticker (every second) closes the minutes; the anomaly shows within a few ticks.
    let deadline = Instant::now() + Duration::from_secs(15);
    let view = loop {
        let (status, body) = sensor.admin_get("/detections").await.unwrap_or_default();
        if status == 200 {
            let view: Value = serde_json::from_str(&body).unwrap();
            if !view["anomalies"].as_array().unwrap().is_empty() {
                break view;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no anomaly within 15 s (last {status}: {body})\n{}",
            sensor.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // One more tick: nothing else is raised.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let (_, body) = sensor.admin_get("/detections").await.unwrap();
    let view_after: Value = serde_json::from_str(&body).unwrap();
    let anomalies = view_after["anomalies"].as_array().unwrap();
    assert_eq!(anomalies.len(), 1, "exactly one anomaly: {view_after:#}");
    let a = &anomalies[0];
    // Undeclared here (no rules): the discovery heuristic names the id `{param}`.
    assert_eq!(a["endpoint"], "GET /users/{param}", "{view:#}");
    let factor = a["factor"].as_f64().unwrap();
    assert!(
        (8.0..=12.0).contains(&factor),
        "the spike is about 10x its baseline: {factor}"
    );
    let (_, metrics) = sensor.admin_get("/metrics").await.unwrap();
    assert!(
        metrics.contains(r#"apiguard_traffic_anomalies_total{policy="test/shop"} 1"#),
        "{metrics}"
    );
    let log = sensor.log_text();
    assert!(
        log.contains("traffic anomaly: GET /users/{param}"),
        "the anomaly's log line:\n{log}"
    );
    assert!(!log.contains("traffic anomaly: GET /health"), "{log}");
}
