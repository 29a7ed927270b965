//! The compiled `runtime` section of one `sensor.yaml` (the policy's `spec.runtime`): the
//! detectors' configs, the baseline's, and the endpoints the baseline counts into. Part of the
//! [`super::pipeline::Pipeline`]; the state it runs in is [`super::guard`]'s.

use super::config::SensorConfig;
use crate::detect::{self, BaselineConfig, DetectorConfig};
use crate::discovery::Declared;

/// The compiled `runtime` section of one `sensor.yaml`.
#[derive(Debug)]
pub(crate) struct RuntimeSettings {
    /// The section as JSON: the state is kept while it stays the same.
    pub(crate) fingerprint: String,
    pub(crate) detectors: Vec<DetectorConfig>,
    pub(crate) baseline: Option<BaselineConfig>,
    /// The endpoints the baseline counts into (declared templates, else inferred ones).
    pub(crate) declared: Declared,
    /// Whether any detector blocks (else requests are never checked).
    pub(crate) any_block: bool,
}

/// The `runtime` section of `config`, compiled; None without one. An error names the field
/// (`runtime.detectors[0].threshold.window`).
pub(crate) fn runtime_settings(config: &SensorConfig) -> Result<Option<RuntimeSettings>, String> {
    let Some(runtime) = &config.runtime else {
        return Ok(None);
    };
    let detectors =
        detect::policy::detectors(runtime).map_err(|e| format!("{} {}", e.field, e.message))?;
    let mut declared = Declared::none();
    if let Some(openapi) = &config.openapi {
        // A document that does not declare paths leaves the templates to the heuristic.
        let _ = declared.add_openapi(&openapi.document);
    }
    for route in config.discovery.iter().flat_map(|d| &d.declared) {
        let _ = declared.add_route(&route.methods, &route.paths);
    }
    Ok(Some(RuntimeSettings {
        fingerprint: serde_json::to_string(runtime).unwrap_or_default(),
        any_block: detect::policy::any_block(runtime),
        baseline: detect::policy::baseline(runtime),
        detectors,
        declared,
    }))
}
