//! The runtime sensor (`apiguard sensor`): the gateway's sidecar that Envoy calls over gRPC
//! (ext_proc) to check requests and responses against the API's OpenAPI contract and to scan
//! JSON responses for sensitive data, and to which it streams its access log (discovery).
//!
//! `config` is the contract between the renderer and the sensor: the `sensor.yaml` file and
//! the request attributes Envoy sends. The rest is split like the crate, a pure core and thin
//! edges:
//!
//! - core: `context` (the exchange's request, principal and response), `pipeline` (stages
//!   returning actions and events), `contract_stage` (the OpenAPI checks and redaction),
//!   `scan_stage` (sensitive data in JSON response bodies, classes only),
//!   `load` (`sensor.yaml` text → pipeline), `ext_proc` (Envoy's messages ↔ the pipeline,
//!   synchronous), `access_log` (an access log entry → the logged request and its caller),
//!   `runtime_settings` (the compiled `runtime` section), `guard` (runtime detection: the
//!   detectors and baseline fed by the access log, the block stage);
//! - edges: `server` (flags, the gRPC and admin servers, shutdown), `reload` (polling the file,
//!   swapping the pipeline), `observe` (metrics and decision log lines), `push` (the
//!   inventory pushed to the operator over mTLS), `rate_limit` (Envoy's rate limit service for
//!   `scope: Global` limits: a pure decision core and the tonic service, counting in Redis),
//!   `redis_link` (`--redis-url` → the shared state handle, connected in the background),
//!   `sharing` (runtime detection's counts and blocks shared across replicas through it).
//!
//! See `docs/sensor.md`.

pub mod access_log;
pub mod config;
mod context;
mod contract_stage;
mod ext_proc;
mod guard;
mod learn;
mod load;
pub mod observe;
mod pipeline;
mod push;
#[cfg(test)]
mod push_tests;
pub mod rate_limit;
mod redis_link;
mod reload;
mod runtime_settings;
mod scan_stage;
mod server;
mod sharing;
#[cfg(test)]
mod tests;

pub use redis_link::{
    REDIS_CA_FILE_ENV, REDIS_CLIENT_CERT_ENV, REDIS_CLIENT_KEY_ENV, REDIS_PASSWORD_ENV,
};
pub use server::{SensorArgs, run};
