//! The discovery push: what a gateway's sensor sends the operator, and what the operator
//! answers. Both sides use these types, so the wire format has one home.
//!
//! The sensor `POST`s a [`Push`] as JSON to [`PUSH_PATH`] on the operator's HTTPS endpoint,
//! presenting the gateway's workload certificate (its SPIFFE ID is the policy's gateway
//! identity); the operator answers `202 Accepted` with a [`PushAnswer`], or an error status
//! with one (`400` a body it cannot read, `401` no client certificate, `403` another identity,
//! `404` no such policy, `413` too large, `429` too often, with `retry-after`).
//!
//! A push may carry the sensor's runtime detections ([`RuntimeReport`], `runtime`): an
//! operator that does not know the field ignores it, and a push without it is read as
//! before.

use super::inventory::Report;
use crate::detect::{ActiveBlock, Anomaly, Baseline, Detection, Engine};
use serde::{Deserialize, Serialize};

/// The operator's path for pushes.
pub const PUSH_PATH: &str = "/v1/discovery";
/// The largest push body the operator reads (a full inventory of 1,000 endpoints is well
/// under 1 MiB).
pub const MAX_PUSH_BYTES: usize = 4 * 1024 * 1024;

/// The most detections a push carries (the engine keeps its last 100).
pub const MAX_PUSHED_DETECTIONS: usize = 100;
/// The most anomalies a push carries.
pub const MAX_PUSHED_ANOMALIES: usize = 100;
/// The most active blocks a push carries (those ending last are kept).
pub const MAX_PUSHED_BLOCKS: usize = 1000;

/// One sensor's inventory (and runtime detections), as pushed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// Whether the sensor learns the inventory; `false` (discovery off in the sensor, a push
    /// for `runtime` only): `inventory` is empty and the operator does not take it.
    #[serde(default = "learning", skip_serializing_if = "is_learning")]
    pub discovery: bool,
    /// The sensor's runtime detections, when it runs detectors or a baseline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<RuntimeReport>,
}

fn learning() -> bool {
    true
}

fn is_learning(discovery: &bool) -> bool {
    *discovery
}

/// What a sensor's detection engine and baseline hold now: recent detections and anomalies
/// (oldest first, newest last) and the blocks in force. Keys are as the engine shows them (the
/// client IP as given, `sha256:`… for claims, API-key client ids and headers).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeReport {
    /// Recent detections, newest last; at most [`MAX_PUSHED_DETECTIONS`].
    #[serde(default)]
    pub detections: Vec<Detection>,
    /// Recent traffic anomalies, newest last; at most [`MAX_PUSHED_ANOMALIES`].
    #[serde(default)]
    pub anomalies: Vec<Anomaly>,
    /// Blocks in force; at most [`MAX_PUSHED_BLOCKS`].
    #[serde(default)]
    pub active_blocks: Vec<ActiveBlock>,
}

impl RuntimeReport {
    /// What a sensor's `engine` (its detectors) and `baseline` hold at `now_ms`, bounded;
    /// `None` when it runs neither.
    pub fn of(engine: Option<&Engine>, baseline: Option<&Baseline>, now_ms: i64) -> Option<Self> {
        if engine.is_none() && baseline.is_none() {
            return None;
        }
        let report = RuntimeReport {
            detections: engine
                .map(|e| e.recent().cloned().collect())
                .unwrap_or_default(),
            anomalies: baseline
                .map(|b| b.recent().cloned().collect())
                .unwrap_or_default(),
            active_blocks: engine.map(|e| e.active_blocks(now_ms)).unwrap_or_default(),
        };
        Some(report.bounded())
    }

    /// The report cut to the push's bounds: the newest detections and anomalies, and the
    /// blocks that end last.
    pub fn bounded(mut self) -> Self {
        fn keep_last<T>(v: &mut Vec<T>, n: usize) {
            if v.len() > n {
                v.drain(..v.len() - n);
            }
        }
        keep_last(&mut self.detections, MAX_PUSHED_DETECTIONS);
        keep_last(&mut self.anomalies, MAX_PUSHED_ANOMALIES);
        if self.active_blocks.len() > MAX_PUSHED_BLOCKS {
            self.active_blocks
                .sort_by_key(|b| std::cmp::Reverse(b.blocked_until_ms));
            self.active_blocks.truncate(MAX_PUSHED_BLOCKS);
        }
        self
    }

    /// Whether there is nothing to tell.
    pub fn is_empty(&self) -> bool {
        self.detections.is_empty() && self.anomalies.is_empty() && self.active_blocks.is_empty()
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::{
        Action, BaselineConfig, DetectorConfig, Event, KeyKind, Limits, RequestKeys, Threshold,
    };

    #[test]
    fn the_report_of_an_engine_holds_its_recent_detections_and_blocks_in_force() {
        assert_eq!(RuntimeReport::of(None, None, 0), None);
        let config = DetectorConfig {
            name: "login-stuffing".into(),
            methods: vec!["POST".into()],
            paths: vec!["/login".into()],
            statuses: vec![401],
            by: KeyKind::ClientIp,
            threshold: Threshold::Count {
                count: 3,
                window_ms: 60_000,
            },
            action: Action::Block,
            block_for_ms: Some(60_000),
        };
        let mut engine = Engine::new(&[config], Limits::default()).unwrap();
        let t0 = 1_800_000_000_000;
        for i in 0..3 {
            engine.observe(&Event {
                at_ms: t0 + i,
                method: "POST",
                path: "/login",
                status: 401,
                keys: RequestKeys {
                    client_ip: Some("203.0.113.7"),
                    ..RequestKeys::default()
                },
            });
        }
        let baseline = Baseline::new(BaselineConfig::default()).unwrap();
        let report = RuntimeReport::of(Some(&engine), Some(&baseline), t0 + 10).unwrap();
        assert_eq!(report.detections.len(), 1);
        assert_eq!(report.detections[0].key, "203.0.113.7");
        assert_eq!(report.active_blocks.len(), 1);
        assert!(report.anomalies.is_empty());
        // The block ended: no longer in force, the detection still recent.
        let later = RuntimeReport::of(Some(&engine), None, t0 + 2 + 60_000).unwrap();
        assert_eq!((later.detections.len(), later.active_blocks.len()), (1, 0));
        // A baseline alone reports (no anomaly yet).
        assert_eq!(
            RuntimeReport::of(None, Some(&baseline), t0),
            Some(RuntimeReport::default())
        );
    }
}
