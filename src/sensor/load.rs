//! From the text of `sensor.yaml` to a [`Pipeline`]: the config parsed, the contract compiled
//! once, the stages built in order (the blocks of runtime detectors, the contract, then the
//! sensitive-data scan).
//!
//! Pure: the caller reads the file.

use super::config::{SensorConfig, SensorReport};
use super::contract_stage::{ContractStage, RequestMode};
use super::guard::{BlockStage, SharedGuard};
use super::pipeline::{Pipeline, Stage};
use super::rate_limit::GlobalLimits;
use super::runtime_settings::runtime_settings;
use super::scan_stage::ScanStage;
use crate::api::PolicyMode;
use crate::api::policy::default_max_response_bytes;
use crate::contract::{Contract, ContractError, ContractOptions};

/// Request bodies larger than this are not buffered by the sensor (Envoy's own buffer limit,
/// 1 MiB by default, is smaller; this only bounds what a misconfigured Envoy can make us hold).
pub(crate) const MAX_REQUEST_BYTES: usize = 8 * 1024 * 1024;

/// A `sensor.yaml` that cannot be served.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LoadError {
    #[error(transparent)]
    Config(#[from] super::config::SensorConfigError),
    /// `error` names the JSON pointer in the document.
    #[error("{file}: the OpenAPI document does not compile: {error}")]
    Contract { file: String, error: ContractError },
    /// The declared endpoints discovery needs do not parse; `message` names the field.
    #[error("{file}: {message}")]
    Discovery { file: String, message: String },
    /// The runtime detectors cannot run; `message` names the field.
    #[error("{file}: {message}")]
    Runtime { file: String, message: String },
}

/// Parses and compiles `text`, read from `file` (named in errors). The sensor itself uses
/// [`compile_with_report`]; the tests build pipelines with this.
#[cfg(test)]
pub(crate) fn compile(file: &str, text: &str) -> Result<Pipeline, LoadError> {
    compile_config(
        file,
        &SensorConfig::from_yaml(file, text)?,
        &SharedGuard::default(),
    )
}

/// [`compile`], and the config's `report` section (the inventory push, not part of the
/// pipeline).
pub(crate) fn compile_with_report(
    file: &str,
    text: &str,
    guard: &SharedGuard,
) -> Result<(Pipeline, Option<SensorReport>), LoadError> {
    let config = SensorConfig::from_yaml(file, text)?;
    Ok((compile_config(file, &config, guard)?, config.report))
}

fn compile_config(
    file: &str,
    config: &SensorConfig,
    guard: &SharedGuard,
) -> Result<Pipeline, LoadError> {
    let mut stages: Vec<Box<dyn Stage>> = Vec::new();
    let runtime = runtime_settings(config).map_err(|message| LoadError::Runtime {
        file: file.to_string(),
        message,
    })?;
    if runtime.as_ref().is_some_and(|r| r.any_block) {
        stages.push(Box::new(BlockStage {
            guard: guard.clone(),
            audit: config.mode == PolicyMode::Audit,
        }));
    }
    let mut max_response_bytes = 0;
    if let Some(openapi) = &config.openapi {
        let options = ContractOptions {
            unknown_properties: openapi.unknown_properties.into(),
        };
        let contract = Contract::compile(&openapi.document, &options).map_err(|error| {
            LoadError::Contract {
                file: file.to_string(),
                error,
            }
        })?;
        max_response_bytes = usize::try_from(openapi.max_response_bytes).unwrap_or(usize::MAX);
        stages.push(Box::new(ContractStage {
            contract,
            requests: RequestMode::new(openapi.requests, config.mode == PolicyMode::Audit),
            responses: openapi.responses,
            max_response_bytes,
            reject_undeclared: openapi.reject_undeclared,
        }));
    }
    let discovery =
        super::learn::discovery_config(config).map_err(|message| LoadError::Discovery {
            file: file.to_string(),
            message,
        })?;
    // After the contract stage: it scans what the client receives (see scan_stage), within
    // the contract's bound (the body is buffered once for both); without a contract, within
    // the contract's default bound.
    if let Some(d) = &discovery {
        let bound = if config.openapi.is_some() {
            max_response_bytes
        } else {
            usize::try_from(default_max_response_bytes()).unwrap_or(usize::MAX)
        };
        if let Some(scan) = ScanStage::new(d.sensitive_data, d.declared.clone(), bound) {
            max_response_bytes = bound;
            stages.push(Box::new(scan));
        }
    }
    let policy = format!("{}/{}", config.policy.namespace, config.policy.name);
    Ok(Pipeline {
        global_rate_limits: GlobalLimits {
            policy: policy.clone(),
            audit: config.mode == PolicyMode::Audit,
            limits: config.global_rate_limits.clone(),
        },
        policy,
        discovery,
        runtime,
        stages,
        max_request_bytes: MAX_REQUEST_BYTES,
        max_response_bytes,
    })
}
