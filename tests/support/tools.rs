//! Where the integration tests find the real components built by `tests/tools.sh`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The tools `tests/tools.sh` builds: test name, `target/tools/` directory, binary.
/// The versions mirror tests/tools.sh (tests/cluster/cluster_smoke.rs checks they agree).
pub const TOOLS: &[(&str, &str, &str)] = &[
    ("kube-apiserver", "kubernetes-v1.35.4", "kube-apiserver"),
    (
        "kube-controller-manager",
        "kubernetes-v1.35.4",
        "kube-controller-manager",
    ),
    ("etcd", "etcd-v3.6.16", "etcd"),
    ("helm", "helm-v3.22.0", "helm"),
    ("envoy", "envoy-1.40.0", "envoy"),
];

/// The environment variable that overrides a tool's path: `APIGUARD_KUBE_APISERVER` for
/// `kube-apiserver`.
pub fn env_var(name: &str) -> String {
    format!("APIGUARD_{}", name.to_ascii_uppercase().replace('-', "_"))
}

/// The repository root: the tests' working directory for tools, charts and fixtures.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `target/tools/` of this checkout.
pub fn tools_dir() -> PathBuf {
    root().join("target/tools")
}

/// The executable of tool `name` (`kube-apiserver`, `kube-controller-manager`, `etcd`, `helm`,
/// `envoy`): `$APIGUARD_<NAME>` if set, else its default place under `target/tools/`.
///
/// Panics, saying how to build it, when it is not there: a test that needs a real component
/// must not pass without it.
pub fn tool(name: &str) -> PathBuf {
    let var = env_var(name);
    let path = match std::env::var_os(&var) {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => {
            let Some((_, dir, binary)) = TOOLS.iter().find(|(tool, _, _)| *tool == name) else {
                panic!(
                    "unknown tool {name:?}; tests/tools.sh builds {:?}",
                    tool_names()
                );
            };
            tools_dir().join(dir).join(binary)
        }
    };
    if !is_executable(&path) {
        panic!(
            "{name} not found at {} (from {}): run tests/tools.sh (or `source target/tools/env.sh`)",
            path.display(),
            if std::env::var_os(&var).is_some() {
                var
            } else {
                "its default path".to_owned()
            },
        );
    }
    path
}

fn tool_names() -> Vec<&'static str> {
    TOOLS.iter().map(|(name, _, _)| *name).collect()
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// helm from `tests/tools.sh`, run in the repository root (so `charts/apiguard` resolves).
pub fn helm_command() -> Command {
    let mut command = Command::new(tool("helm"));
    command.current_dir(root());
    command
}

/// Runs helm without a cluster (`template`, `lint`) and returns its output.
pub fn helm(args: &[&str]) -> Output {
    helm_command()
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run helm: {e}"))
}

/// Runs openssl in `dir` and returns its output.
pub fn openssl(args: &[&str], dir: &Path) -> Output {
    Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl must be installed (apt-get install openssl)")
}

/// Runs openssl in `dir`; panics with its stderr when it fails.
pub fn openssl_ok(args: &[&str], dir: &Path) {
    let out = openssl(args, dir);
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Calls `attempt` every 250 ms until `done` holds of its answer or `timeout` passes, and
/// returns the last answer (the caller asserts on it, with its own message).
pub fn poll_until<T>(
    timeout: Duration,
    mut attempt: impl FnMut() -> T,
    done: impl Fn(&T) -> bool,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let answer = attempt();
        if done(&answer) || Instant::now() > deadline {
            return answer;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Blocking [`super::cluster::eventually`]: the first `Some` of `attempt` within `timeout`;
/// panics naming `what` otherwise.
pub fn wait_until<T>(timeout: Duration, what: &str, attempt: impl FnMut() -> Option<T>) -> T {
    poll_until(timeout, attempt, Option::is_some)
        .unwrap_or_else(|| panic!("{what}: not within {timeout:?}"))
}
