//! Driving `tests/cluster.sh` (the playground path: CRDs, `helm install` with `webhook.url`,
//! a local `apiguard run` with the chart Deployment's environment) from the end-to-end tests.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::cluster::ControlPlane;
use super::tools::{root, tool};

/// The local operator's log file under the control plane's state directory.
pub fn operator_log_path(cp: &ControlPlane) -> PathBuf {
    cp.dir.join("apiguard/apiguard.log")
}

/// The last 40 lines of a log file (empty when absent).
pub fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// `tests/cluster.sh SUBCOMMAND DIR` against `cp`, with this build of apiguard and the helm
/// of tests/tools.sh (plus `env`); the operator it starts stops when this process does.
/// Panics with its output and the operator's log when it fails.
pub fn cluster_sh(cp: &ControlPlane, subcommand: &str, env: &[(&str, &str)]) {
    let out = Command::new("bash")
        .arg(root().join("tests/cluster.sh"))
        .arg(subcommand)
        .arg(&cp.dir)
        .env("APIGUARD_BIN", env!("CARGO_BIN_EXE_apiguard"))
        .env("APIGUARD_HELM", tool("helm"))
        .env("APIGUARD_CLUSTER_WATCH_PID", std::process::id().to_string())
        .env("KUBECONFIG", &cp.kubeconfig)
        .envs(env.iter().copied())
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run tests/cluster.sh: {e}"));
    assert!(
        out.status.success(),
        "tests/cluster.sh {subcommand} failed ({}):\n{}\n{}\noperator log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        log_tail(&operator_log_path(cp))
    );
}

/// Stops the local operator when the test ends, passed or failed.
pub struct StopOperator(pub &'static ControlPlane);

impl Drop for StopOperator {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(root().join("tests/cluster.sh"))
            .arg("apiguard-stop")
            .arg(&self.0.dir)
            .output();
    }
}
