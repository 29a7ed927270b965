//! The runtime sensor (`apiguard sensor`): the gateway's sidecar that Envoy calls over gRPC
//! (ext_proc) to check requests and responses against the API's OpenAPI contract.
//!
//! `config` is the contract between the renderer and the sensor: the `sensor.yaml` file and
//! the request attributes Envoy sends. See `docs/sensor.md`.

pub mod config;
