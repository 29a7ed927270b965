//! The node tier: apiguard as pods on a real node (`tests/cluster.sh up --with-node
//! --with-apiguard`, the playground): the chart's operator, the generated gateways and their
//! sensor sidecar, the NetworkPolicies enforced by kube-router, certificate renewal reaching a
//! running gateway, and the operator's failover. One cluster for the binary
//! (`support::node::node_cluster`), one test at a time (`support::node::serial`).

#[path = "../support/mod.rs"]
mod support;

mod node_failover;
mod node_journey;
mod node_network;
mod node_renewal;
mod workload;
