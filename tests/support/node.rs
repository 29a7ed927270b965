//! The node tier's cluster: a control plane with a real node (`tests/cluster.sh run DIR
//! --with-node`: containerd, kubelet, kube-proxy, kube-scheduler, kube-router, CoreDNS), and
//! apiguard installed on it by its chart as a user does (`tests/cluster.sh apiguard-install-node`:
//! the operator image built from the Dockerfile's final stage, `helm install` without
//! `webhook.url`). Started once per test binary; stopped with it (the script watches this
//! process). The tests of the tier run one at a time ([`serial`]): they share the operator,
//! and some of them stop its pods.

use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use serde_json::Value;

use super::cluster::{ControlPlane, start_control_plane_with};
use super::tools::{root, tool, wait_until};

/// How long the control plane and the node may take to come up.
const START_TIMEOUT: Duration = Duration::from_secs(600);

/// The tier's lifetime of workload certificates (`identity.leafLifetime`): renewed 100 s after
/// issue, so the renewal test sees renewals happen, and every other test runs through them.
pub const LEAF_LIFETIME: &str = "5m";

/// The release namespace of the chart.
pub const RELEASE_NS: &str = "apiguard-system";

/// The running cluster of the tier.
pub struct NodeCluster {
    pub cp: ControlPlane,
    /// The node's address (the `kubernetes` Service's endpoint).
    pub node_ip: String,
    /// The local images of `tests/tools.sh node` (imported into the node's containerd).
    pub echo_image: String,
    pub toolbox_image: String,
    pub envoy_image: String,
}

static CLUSTER: OnceLock<Result<NodeCluster, String>> = OnceLock::new();
static SERIAL: Mutex<()> = Mutex::new(());

/// Held by each test of the tier for its whole run.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The tier's cluster with apiguard installed, started on first use. Panics with the logs when
/// it cannot start, and saying how to get the node components when they are missing.
pub fn node_cluster() -> &'static NodeCluster {
    match CLUSTER.get_or_init(start) {
        Ok(cluster) => cluster,
        Err(error) => panic!("the test node did not start: {error}"),
    }
}

fn start() -> Result<NodeCluster, String> {
    // The control plane's own tools fail clearly when missing; the node's are checked by
    // tests/node.sh ("run tests/tools.sh node").
    tool("kube-apiserver");
    let (cp, _) = start_control_plane_with(std::process::id(), &["--with-node"], START_TIMEOUT)?;
    let env = std::fs::read_to_string(cp.dir.join("cluster.env")).map_err(|e| e.to_string())?;
    let field = |key: &str| {
        env.lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_owned)
            .ok_or_else(|| format!("cluster.env has no {key}: is the node up?"))
    };
    let cluster = NodeCluster {
        node_ip: field("NODE_IP")?,
        echo_image: field("APIGUARD_ECHO_IMAGE")?,
        toolbox_image: field("APIGUARD_TOOLBOX_IMAGE")?,
        envoy_image: field("APIGUARD_ENVOY_IMAGE")?,
        cp,
    };
    let out = Command::new("bash")
        .arg(root().join("tests/cluster.sh"))
        .args(["apiguard-install-node"])
        .arg(&cluster.cp.dir)
        .args(["--set", &format!("identity.leafLifetime={LEAF_LIFETIME}")])
        // Sensors push their inventories every 5 s (the journey waits for the report).
        .args(["--set", "discovery.reportInterval=5s"])
        .env("APIGUARD_BIN", env!("CARGO_BIN_EXE_apiguard"))
        .env("APIGUARD_HELM", tool("helm"))
        .env("APIGUARD_READY_TIMEOUT", "240")
        .env("KUBECONFIG", &cluster.cp.kubeconfig)
        .current_dir(root())
        .output()
        .map_err(|e| format!("cannot run tests/cluster.sh: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "tests/cluster.sh apiguard-install-node failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(cluster)
}

impl NodeCluster {
    /// `kubectl get KIND NAME -n NS -o json`, or None when it does not exist.
    pub fn get(&self, namespace: &str, kind: &str, name: &str) -> Option<Value> {
        let out = self
            .cp
            .kubectl(["-n", namespace, "get", kind, name, "-o", "json"]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).expect("kubectl -o json"))
    }

    /// The pods of `namespace` matching `selector`, as JSON objects.
    pub fn pods(&self, namespace: &str, selector: &str) -> Vec<Value> {
        let list = self
            .cp
            .kubectl_ok(["-n", namespace, "get", "pods", "-l", selector, "-o", "json"]);
        let list: Value = serde_json::from_str(&list).expect("kubectl -o json");
        list["items"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until `count` pods match `selector`, all Running and Ready; returns them.
    pub fn ready_pods(&self, namespace: &str, selector: &str, count: usize) -> Vec<Value> {
        wait_until(
            Duration::from_secs(180),
            &format!("{count} Ready pods {selector} in {namespace}"),
            || {
                let pods: Vec<Value> = self
                    .pods(namespace, selector)
                    .into_iter()
                    .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
                    .collect();
                (pods.len() == count && pods.iter().all(is_ready)).then_some(pods)
            },
        )
    }

    /// `kubectl exec -n NS POD -- ARGS...`: (success, stdout + stderr).
    pub fn exec(&self, namespace: &str, pod: &str, args: &[&str]) -> (bool, String) {
        let mut all = vec!["-n", namespace, "exec", pod, "--"];
        all.extend_from_slice(args);
        let out = self.cp.kubectl(all);
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// A pod of the echo image, running `apiguard-echo ARGS` (`serve` by default), in
    /// `namespace` with `labels`; waits until it runs and returns its IP.
    pub fn run_echo_pod(
        &self,
        namespace: &str,
        name: &str,
        labels: Value,
        args: &[&str],
    ) -> String {
        let args: Vec<&str> = if args.is_empty() {
            vec!["serve"]
        } else {
            args.to_vec()
        };
        let pod = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {
                "automountServiceAccountToken": false,
                "terminationGracePeriodSeconds": 1,
                "containers": [{
                    "name": "echo", "image": self.echo_image, "imagePullPolicy": "Never",
                    "args": args,
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "securityContext": {"runAsNonRoot": true, "allowPrivilegeEscalation": false,
                        "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}},
                }],
            },
        });
        self.cp
            .kubectl_ok_with_stdin(["apply", "-f", "-"], &pod.to_string());
        self.pod_ip(namespace, name)
    }

    /// The IP of a pod once it is Ready.
    pub fn pod_ip(&self, namespace: &str, name: &str) -> String {
        wait_until(
            Duration::from_secs(120),
            &format!("pod {namespace}/{name} Ready"),
            || {
                let pod = self.get(namespace, "pod", name)?;
                let ip = pod["status"]["podIP"].as_str()?.to_owned();
                is_ready(&pod).then_some(ip)
            },
        )
    }

    /// Waits until kube-proxy routes `cluster_ip` to endpoints (its nat rule exists). Before
    /// that, a connection to the address is refused or, worse, follows the default route off the
    /// node: tests connect to a Service only after this.
    pub fn wait_service_routed(&self, cluster_ip: &str) {
        let rule = format!("-A KUBE-SERVICES -d {cluster_ip}/32");
        wait_until(
            Duration::from_secs(60),
            &format!("kube-proxy's rule for {cluster_ip}"),
            || {
                let out = Command::new("iptables-save")
                    .args(["-t", "nat"])
                    .output()
                    .ok()?;
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .any(|l| l.starts_with(&rule))
                    .then_some(())
            },
        );
    }

    /// Creates a namespace for one test (deleted by the caller's guard).
    pub fn namespace(&self, prefix: &str) -> TestNamespace<'_> {
        let name = super::cluster::unique_name(prefix);
        self.cp.kubectl_ok(["create", "namespace", &name]);
        TestNamespace {
            cluster: self,
            name,
        }
    }
}

/// A namespace deleted (without waiting) when the test ends.
pub struct TestNamespace<'a> {
    cluster: &'a NodeCluster,
    pub name: String,
}

impl Drop for TestNamespace<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            super::cluster::dump_namespace(&self.cluster.cp, &self.name);
        }
        let _ = self
            .cluster
            .cp
            .kubectl(["delete", "namespace", &self.name, "--wait=false"]);
    }
}

/// A pod whose phase is Running and whose Ready condition is True.
pub fn is_ready(pod: &Value) -> bool {
    pod["status"]["phase"] == "Running"
        && pod["status"]["conditions"].as_array().is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}
