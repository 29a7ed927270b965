//! `apiguard sensor` as a process: a config that does not compile stops it at start with an
//! error naming the file and the JSON pointer; SIGTERM stops it cleanly.

use super::sensor_envoy::{Sensor, sensor_yaml};
use crate::support::tools::free_port;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn a_contract_that_does_not_compile_stops_the_sensor_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("sensor.yaml");
    let broken = sensor_yaml("Enforce", "Redact").replace("/users/{id}", "users-without-slash");
    std::fs::write(&config, broken).expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_apiguard"))
        .arg("sensor")
        .arg("--config")
        .arg(&config)
        .args(["--listen", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])
        .output()
        .expect("run apiguard sensor");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&config.display().to_string()), "{stderr}");
    assert!(stderr.contains("/paths/users-without-slash"), "{stderr}");
}

#[test]
fn worker_threads_out_of_range_is_refused_naming_the_flag() {
    for bad in ["0", "1025", "many"] {
        let out = Command::new(env!("CARGO_BIN_EXE_apiguard"))
            .args(["sensor", "--config", "/nonexistent/sensor.yaml"])
            .args(["--worker-threads", bad])
            .output()
            .expect("run apiguard sensor");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {stderr}");
        assert!(stderr.contains("--worker-threads"), "{bad}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn worker_threads_sets_the_threads_answering_envoy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("sensor.yaml");
    std::fs::write(&config, sensor_yaml("Enforce", "Redact")).expect("write config");
    for threads in ["1", "3"] {
        let listen: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let env = [("APIGUARD_SENSOR_WORKER_THREADS", threads)];
        let sensor = Sensor::start_with_env(&config, listen, dir.path(), &env).await;
        let log = sensor.log_text();
        let started = log
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|l| l["message"] == "sensor ext_proc server listening")
            .unwrap_or_else(|| panic!("no start line: {log}"));
        assert_eq!(
            started["worker_threads"].to_string(),
            threads,
            "APIGUARD_SENSOR_WORKER_THREADS={threads}: {started}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_the_sensor_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("sensor.yaml");
    std::fs::write(&config, sensor_yaml("Enforce", "Redact")).expect("write config");
    let listen: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let mut sensor = Sensor::start(&config, listen, dir.path()).await;
    let (_, metrics) = sensor.admin_get("/metrics").await.expect("metrics");
    assert!(
        metrics.contains(r#"apiguard_sensor_config_reloads_total{result="loaded"} 1"#),
        "{metrics}"
    );
    let status = Command::new("kill")
        .args(["-TERM", &sensor.child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let exit = loop {
        if let Some(exit) = sensor.child.try_wait().expect("try_wait") {
            break exit;
        }
        assert!(Instant::now() < deadline, "still running 15s after SIGTERM");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(exit.success(), "{exit}\n{}", sensor.log_text());
}
