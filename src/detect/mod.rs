//! Runtime abuse detection (docs/detection.md): the pure core. No I/O, no clock (times come
//! with the events, as Unix milliseconds), deterministic, bounded memory.
//!
//! - [`config`]: a detector as the policy declares it (`spec.runtime.detectors[]`), validated
//!   with errors naming the field, and the engine's [`Limits`].
//! - [`keys`]: a request's identity attributes ([`RequestKeys`]) and the keys detectors count
//!   by; claim values, API-key client ids and header values only ever as a short SHA-256.
//! - `window`: the bucketed sliding window of one key (events, or distinct values).
//! - [`engine`]: the [`Engine`]: [`Event`]s in, [`Detection`]s out, blocks in force
//!   ([`Engine::blocked`], checked inline on every request).
//! - [`baseline`]: per-endpoint traffic baselines and their [`Anomaly`] alerts.
//! - [`policy`]: `spec.runtime` (the policy's types) to the configs above.

pub mod baseline;
pub mod config;
pub mod engine;
pub mod keys;
pub mod policy;
mod time;
pub(crate) use time::format_ms;
mod window;

pub use baseline::{Anomaly, Baseline, BaselineConfig, Sensitivity};
pub use config::{Action, ConfigError, DetectorConfig, KeyKind, KeyLabel, Limits, Threshold};
pub use engine::{ActiveBlock, Counted, Detection, DetectorStats, Engine, EngineStats, Event};
pub use keys::{RequestKeys, hash_value, shown_hash};
