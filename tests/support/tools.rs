//! Where the integration tests find the real components built by `tests/tools.sh`.

use std::path::{Path, PathBuf};

/// The tools `tests/tools.sh` builds: test name, `target/tools/` directory, binary.
/// The versions mirror tests/tools.sh (tests/cluster_smoke.rs checks they agree).
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

/// `target/tools/` of this checkout.
pub fn tools_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools")
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
