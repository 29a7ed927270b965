//! The discovery push: what a gateway's sensor sends the operator, and what the operator
//! answers. Both sides use these types, so the wire format has one home.
//!
//! The sensor `POST`s a [`Push`] as JSON to [`PUSH_PATH`] on the operator's HTTPS endpoint,
//! presenting the gateway's workload certificate (its SPIFFE ID is the policy's gateway
//! identity); the operator answers `202 Accepted` with a [`PushAnswer`], or an error status
//! with one (`400` a body it cannot read, `401` no client certificate, `403` another identity,
//! `404` no such policy, `413` too large, `429` too often, with `retry-after`).

use super::inventory::Report;
use serde::{Deserialize, Serialize};

/// The operator's path for pushes.
pub const PUSH_PATH: &str = "/v1/discovery";
/// The largest push body the operator reads (a full inventory of 1,000 endpoints is well
/// under 1 MiB).
pub const MAX_PUSH_BYTES: usize = 4 * 1024 * 1024;

/// One sensor's inventory, as pushed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Push {
    /// The policy's namespace.
    pub namespace: String,
    /// The policy's name.
    pub name: String,
    /// The gateway pod that learned it (`POD_NAME`; the host name outside a pod): each
    /// replica keeps its own inventory.
    pub reporter: String,
    /// SHA-256 (hex) of the declarations the inventory was learned under: the operator drops
    /// what it kept from other declarations when this changes.
    pub declarations: String,
    /// The inventory.
    pub inventory: Report,
}

/// The operator's answer to a push.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PushAnswer {
    /// Whether the push was taken.
    pub accepted: bool,
    /// Why not, or what was done; never echoes values from the push.
    pub message: String,
}
