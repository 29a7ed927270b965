//! The end-to-end tier: the user's journeys through `tests/cluster.sh` (CRDs, `helm install`,
//! a local `apiguard run` as the chart's Deployment would run it) on one real control plane,
//! one module at a time (`support::isolation`).

#[path = "../support/mod.rs"]
mod support;

mod e2e_journey;
mod e2e_serving_cert;
mod e2e_webhook_latency;
