//! The offline tier: everything that needs no control plane — the rules and their fixtures,
//! rendering (checked by a real Envoy), the CLI, the webhook's handler and TLS server, the
//! controller against a mocked apiserver, the chart rendered by helm, certificates checked by
//! openssl and rustls, and the docs' drift tests. One test binary: the crate is linked once.

#[path = "../support/mod.rs"]
mod support;

mod architecture;
mod chart_render;
mod controller_mock;
mod crd;
mod discover_cli;
mod docs;
mod envoy_gateway;
mod envoy_mtls;
mod envoy_openapi;
mod envoy_render_cli;
mod envoy_validate;
mod examples;
mod global_rate_limit;
mod identity_mtls;
mod identity_openssl;
mod identity_rotation;
mod lint_cli;
mod policy_from_openapi;
mod policy_invariants;
mod readme;
mod rules_fixtures;
mod rules_props;
mod sensor_baseline;
mod sensor_cli;
mod sensor_discovery;
mod sensor_envoy;
mod sensor_gateway;
mod sensor_runtime;
mod shared_state;
mod shared_state_topologies;
mod webhook_props;
mod webhook_router;
mod webhook_run;
mod webhook_tls;
mod webhook_view;
