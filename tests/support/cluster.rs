//! A real Kubernetes control plane for the integration tests: etcd, kube-apiserver and
//! kube-controller-manager on loopback, started once per test binary by `tests/cluster.sh run`
//! (the same script people use through `tests/cluster.sh up`, so the flags have one definition).
//!
//! Teardown does not depend on Rust: statics are never dropped, so the script watches this
//! process and stops the components (and removes the temp dir unless `APIGUARD_KEEP_CLUSTER=1`)
//! within a second of it exiting, whether the tests passed, failed or the process was killed.
//!
//! Each test gets its own namespace through [`with_temp_ns`].

use std::ffi::OsStr;
use std::future::Future;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::FutureExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

use super::tools::tool;

/// How long the control plane may take to come up (cold caches on a busy 2-core machine).
const START_TIMEOUT: Duration = Duration::from_secs(240);

/// A running control plane.
#[derive(Debug)]
pub struct ControlPlane {
    /// Its state directory (etcd data, certificates, logs under `logs/`).
    pub dir: PathBuf,
    /// Kubeconfig of the `admin` user (group `system:masters`).
    pub kubeconfig: PathBuf,
    /// `https://127.0.0.1:<port>`.
    pub server: String,
    /// Bearer token of the `admin` user.
    pub token: String,
    /// CA certificate (PEM) of the apiserver's serving certificate.
    pub ca: PathBuf,
}

static CONTROL_PLANE: OnceLock<Result<ControlPlane, String>> = OnceLock::new();

/// The control plane of this test binary, started on first use.
///
/// Panics (with the components' logs) when it cannot be started, and when the tools are
/// missing, saying to run `tests/tools.sh`.
pub fn control_plane() -> &'static ControlPlane {
    match CONTROL_PLANE.get_or_init(|| start_control_plane(std::process::id()).map(|(cp, _)| cp)) {
        Ok(control_plane) => control_plane,
        Err(error) => panic!("the test control plane did not start: {error}"),
    }
}

/// Starts a control plane of its own (most tests want the shared [`control_plane`]) that stops
/// and removes its state once process `watch_pid` is gone. Returns it with the supervising
/// `tests/cluster.sh run` process.
pub fn start_control_plane(watch_pid: u32) -> Result<(ControlPlane, Child), String> {
    start_control_plane_with(watch_pid, &[], START_TIMEOUT)
}

/// Why the control plane did not start: `what`, the log's `error:` lines first (a report that
/// shows only the first lines of a failure still says why), then the whole log.
fn startup_failure(what: &str, log_path: &Path) -> String {
    let log = std::fs::read_to_string(log_path).unwrap_or_default();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("error:")).collect();
    let why = match errors.is_empty() {
        true => "no error line in its log".to_owned(),
        false => errors.join(" / "),
    };
    format!("{what}: {why}\n--- {} ---\n{log}", log_path.display())
}

/// [`start_control_plane`] with more arguments for `tests/cluster.sh run DIR` (`--with-node`)
/// and another start timeout.
pub fn start_control_plane_with(
    watch_pid: u32,
    run_args: &[&str],
    timeout: Duration,
) -> Result<(ControlPlane, Child), String> {
    let tools = [
        ("APIGUARD_ETCD", tool("etcd")),
        ("APIGUARD_KUBE_APISERVER", tool("kube-apiserver")),
        (
            "APIGUARD_KUBE_CONTROLLER_MANAGER",
            tool("kube-controller-manager"),
        ),
    ];
    let dir = tempfile::Builder::new()
        .prefix("apiguard-cluster-")
        .tempdir()
        .map_err(|e| format!("cannot create a temp dir: {e}"))?
        .keep();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cluster.sh");
    let log_path = dir.join("supervisor.log");
    let log = std::fs::File::create(&log_path)
        .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
    let log_err = log
        .try_clone()
        .map_err(|e| format!("cannot dup the log file: {e}"))?;
    let mut supervisor = Command::new("bash");
    supervisor
        .arg(&script)
        .arg("run")
        .arg(&dir)
        .args(run_args)
        .envs(tools.iter().map(|(var, path)| (*var, path.as_os_str())))
        .env("APIGUARD_CLUSTER_WATCH_PID", watch_pid.to_string())
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        // Its own process group: a ^C to the test run reaches the tests, and the script then
        // sees this process gone and stops the components in order.
        .process_group(0);
    let mut child = supervisor
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;

    let ready = dir.join("cluster.env");
    let deadline = Instant::now() + timeout;
    while !ready.exists() {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(startup_failure(
                &format!("{} exited ({status})", script.display()),
                &log_path,
            ));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err(startup_failure(
                &format!("not ready within {timeout:?}"),
                &log_path,
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let env = std::fs::read_to_string(&ready)
        .map_err(|e| format!("cannot read {}: {e}", ready.display()))?;
    let field = |key: &str| {
        env.lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_owned)
            .ok_or_else(|| format!("{} has no {key}", ready.display()))
    };
    let control_plane = ControlPlane {
        kubeconfig: PathBuf::from(field("KUBECONFIG")?),
        server: field("SERVER")?,
        token: field("TOKEN")?,
        ca: PathBuf::from(field("CA")?),
        dir,
    };
    if std::env::var_os("APIGUARD_KEEP_CLUSTER").is_some_and(|v| v == "1") {
        eprintln!(
            "control plane state kept in {} (APIGUARD_KEEP_CLUSTER=1)",
            control_plane.dir.display()
        );
    }
    Ok((control_plane, child))
}

impl ControlPlane {
    /// Runs kubectl against this control plane (`KUBECONFIG` set) and returns its output.
    /// It blocks the calling thread: a test that serves something kubectl's request reaches
    /// (a webhook) uses [`Self::kubectl_async`].
    pub fn kubectl<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.kubectl_with_stdin(args, "")
    }

    /// Runs kubectl with `stdin` as its standard input (for `apply -f -`).
    pub fn kubectl_with_stdin<I, S>(&self, args: I, stdin: &str) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = Command::new("kubectl");
        command
            // Bounded: a hung apiserver fails the test instead of hanging it.
            .arg("--request-timeout=60s")
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run kubectl (is it installed?): {e}"));
        if let Some(mut input) = child.stdin.take() {
            input
                .write_all(stdin.as_bytes())
                .unwrap_or_else(|e| panic!("cannot write kubectl's stdin: {e}"));
        }
        child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("kubectl did not finish: {e}"))
    }

    /// Runs kubectl and returns its stdout; panics with its stderr when it fails.
    pub fn kubectl_ok<I, S>(&self, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let output = self.kubectl(&args);
        assert!(
            output.status.success(),
            "kubectl {args:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// [`Self::kubectl_with_stdin`] on tokio's blocking pool, so the test's runtime keeps
    /// serving (a webhook the apiserver calls while kubectl waits) even on a current-thread
    /// runtime.
    pub async fn kubectl_async(&'static self, args: &[&str], stdin: &str) -> Output {
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let stdin = stdin.to_owned();
        tokio::task::spawn_blocking(move || self.kubectl_with_stdin(&args, &stdin))
            .await
            .unwrap_or_else(|e| panic!("kubectl task failed: {e}"))
    }

    /// Runs kubectl with `stdin` and returns its stdout; panics with its stderr when it fails.
    pub fn kubectl_ok_with_stdin<I, S>(&self, args: I, stdin: &str) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let output = self.kubectl_with_stdin(&args, stdin);
        assert!(
            output.status.success(),
            "kubectl {args:?} failed ({}): {}\nstdin:\n{stdin}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Runs helm against this control plane and returns its output.
    pub fn helm(&self, args: &[&str]) -> Output {
        super::tools::helm_command()
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run helm: {e}"))
    }

    /// Runs helm against this control plane and returns its stdout; panics with its stderr
    /// when it fails.
    pub fn helm_ok(&self, args: &[&str]) -> String {
        let out = self.helm(args);
        assert!(
            out.status.success(),
            "helm {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The decoded `caBundle` of the first webhook of ValidatingWebhookConfiguration `name`
    /// (`None` when it has none).
    pub fn webhook_ca_bundle(&self, name: &str) -> Option<Vec<u8>> {
        let vwc: serde_json::Value = serde_json::from_str(&self.kubectl_ok([
            "get",
            "validatingwebhookconfiguration",
            name,
            "-o",
            "json",
        ]))
        .unwrap_or_else(|e| panic!("ValidatingWebhookConfiguration {name} is not JSON: {e}"));
        let b64 = vwc["webhooks"][0]["clientConfig"]["caBundle"]
            .as_str()
            .filter(|b64| !b64.is_empty())?;
        let bytes: k8s_openapi::ByteString = serde_json::from_value(b64.into())
            .unwrap_or_else(|e| panic!("caBundle of {name} is not base64 ({e}): {b64}"));
        Some(bytes.0)
    }

    /// Applies `crds/` (once per test binary) and waits until every CRD in it is established,
    /// so the tests can create ApiSecurityPolicies.
    pub fn install_crds(&self) {
        static INSTALLED: OnceLock<()> = OnceLock::new();
        INSTALLED.get_or_init(|| {
            let applied = self.kubectl_ok(["apply", "--server-side", "-f", "crds/", "-o", "name"]);
            let crds: Vec<&str> = applied.lines().filter(|l| !l.trim().is_empty()).collect();
            assert!(!crds.is_empty(), "crds/ holds no CustomResourceDefinition");
            let mut args = vec!["wait", "--for=condition=Established", "--timeout=60s"];
            args.extend(crds);
            self.kubectl_ok(args);
        });
    }

    /// A client for this control plane, as `admin`. Create it inside the test's own runtime
    /// (each `#[tokio::test]` has one).
    pub async fn client(&self) -> Client {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", self.kubeconfig.display()));
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .unwrap_or_else(|e| panic!("bad kubeconfig {}: {e}", self.kubeconfig.display()));
        Client::try_from(config).unwrap_or_else(|e| panic!("cannot build a client: {e}"))
    }

    /// The last lines of a component's log (`etcd`, `kube-apiserver`,
    /// `kube-controller-manager`), for failure messages.
    pub fn log_tail(&self, component: &str, lines: usize) -> String {
        let text = std::fs::read_to_string(self.dir.join("logs").join(format!("{component}.log")))
            .unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// A client for the shared control plane (started on first use).
pub async fn client() -> Client {
    control_plane().client().await
}

/// A name no other test of this binary uses: `<prefix>-<n>-<time>`.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{n}-{:05x}", nanos & 0xfffff)
}

/// Runs `test` in a fresh namespace (linkerd's `with_temp_ns`): creates it, runs the test with a
/// client and the namespace's name, dumps the namespace's objects when the test fails, and
/// deletes the namespace either way (the namespace controller removes what is in it).
pub async fn with_temp_ns<F, Fut>(test: F)
where
    F: FnOnce(Client, String) -> Fut,
    Fut: Future<Output = ()>,
{
    let control_plane = control_plane();
    let client = control_plane.client().await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let name = unique_name("apiguard-test");
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some([("apiguard.dev/test".to_owned(), "true".to_owned())].into()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    namespaces
        .create(&PostParams::default(), &namespace)
        .await
        .unwrap_or_else(|e| panic!("cannot create namespace {name}: {e}"));

    let outcome = AssertUnwindSafe(test(client, name.clone()))
        .catch_unwind()
        .await;
    if outcome.is_err() {
        dump_namespace(control_plane, &name);
    }
    if let Err(error) = namespaces.delete(&name, &DeleteParams::background()).await {
        eprintln!("cannot delete namespace {name}: {error}");
    }
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Prints what a failed test left in its namespace.
pub fn dump_namespace(control_plane: &ControlPlane, namespace: &str) {
    // `asp` only exists once the CRDs are applied; without it kubectl refuses the whole list.
    for kinds in [
        "all,cm,secret,networkpolicy,asp",
        "all,cm,secret,networkpolicy",
    ] {
        let output = control_plane.kubectl(["get", kinds, "-n", namespace, "-o", "yaml"]);
        if output.status.success() {
            eprintln!(
                "--- objects in namespace {namespace} ({kinds}):\n{}",
                String::from_utf8_lossy(&output.stdout)
            );
            break;
        }
    }
    let events = control_plane.kubectl(["get", "events", "-n", namespace]);
    eprintln!(
        "--- events in namespace {namespace}:\n{}{}",
        String::from_utf8_lossy(&events.stdout),
        String::from_utf8_lossy(&events.stderr)
    );
}

/// Polls `check` every 200 ms until it returns `Some`, for at most `timeout`; panics naming
/// `what` when time runs out.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Creates namespace `name` if it does not exist yet (an existing one is fine).
pub async fn ensure_namespace(client: &Client, name: &str) {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    match Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("creating namespace {name}: {e}"),
    }
}

/// Creates Service `ns/name` (port `http` 8080, selecting `app: name`), the target of a policy.
pub async fn create_service(client: &Client, ns: &str, name: &str) {
    let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 8080}]},
    }))
    .unwrap();
    Api::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &svc)
        .await
        .unwrap_or_else(|e| panic!("creating Service {ns}/{name}: {e}"));
}
