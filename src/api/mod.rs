//! The `apiguard.dev/v1alpha1` API: the `ApiSecurityPolicy` custom resource, its invariants
//! and their Rust validation, and the CRD generation.

pub mod duration;
pub mod invariants;
pub mod names;
pub mod policy;
pub mod shape;
pub mod validate;

pub use names::gateway_name;
pub use policy::*;

use kube::CustomResourceExt;

/// Every CRD apiguard owns, as multi-document YAML (the source of `crds/` and the chart's CRDs).
pub(crate) fn crds_yaml() -> Result<String, serde_saphyr::ser::Error> {
    let crds = [ApiSecurityPolicy::crd()];
    let mut out = String::new();
    for crd in &crds {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(crd)?);
    }
    Ok(out)
}
