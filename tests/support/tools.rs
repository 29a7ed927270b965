//! Locating the real test components built or installed by `tests/tools.sh`.

use std::path::PathBuf;

/// Default location of each tool under `target/tools/`, and the environment variable that
/// overrides it (`target/tools/env.sh` exports them).
const TOOLS: &[(&str, &str, &str)] = &[
    (
        "kube-apiserver",
        "APIGUARD_KUBE_APISERVER",
        "kubernetes-v1.35.4/kube-apiserver",
    ),
    (
        "kube-controller-manager",
        "APIGUARD_KUBE_CONTROLLER_MANAGER",
        "kubernetes-v1.35.4/kube-controller-manager",
    ),
    ("etcd", "APIGUARD_ETCD", "etcd-v3.6.8/etcd"),
    ("helm", "APIGUARD_HELM", "helm-v3.22.0/helm"),
    (
        "envoy",
        "APIGUARD_ENVOY",
        "envoy-1.40.0/py/envoy/_bin/envoy",
    ),
];

/// The path of a real test component. Panics with the command that provides it when missing:
/// tests that need a real component never skip silently.
pub fn tool(name: &str) -> PathBuf {
    let (_, var, default) = TOOLS
        .iter()
        .find(|(n, _, _)| *n == name)
        .unwrap_or_else(|| panic!("unknown test tool {name:?}"));
    let path = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("target/tools")
            .join(default)
    });
    assert!(
        path.is_file(),
        "{name} not found at {} (set {var} or run `tests/tools.sh` to build/install it; `tests/run` does this for you)",
        path.display()
    );
    path
}
