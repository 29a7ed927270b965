//! The cluster tier: the operator, webhook, chart and certificates against one real control
//! plane (etcd, kube-apiserver, kube-controller-manager from `tests/tools.sh`), started once for
//! this binary. Each module is a group (`support::isolation`): its tests run together, never
//! alongside another module's, since operators and webhooks act cluster-wide.

#[path = "../support/mod.rs"]
mod support;

mod audit_cluster;
mod ca_rotation_cluster;
mod chart_apiserver;
mod cluster_smoke;
mod controller_binary;
mod controller_cluster;
mod controller_crash;
mod controller_envoy;
mod controller_leader;
mod controller_openapi;
mod discovery_cluster;
mod identity_cluster;
mod image;
mod policy_invariants_apiserver;
mod runtime_cluster;
mod webhook_cluster;
