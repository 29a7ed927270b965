//! The runtime part of a push ([`RuntimeReport`]): which detections and anomalies to announce
//! by an Event, and `status.runtime`. Pure: the time is passed in.
//!
//! **One Event per incident.** A detection's subject is its detector and key; an anomaly's,
//! its endpoint. An incident lasts: a `Block` until its `blockedUntil`, an `Alert` for its
//! window after it fired, an anomaly [`ANOMALY_LASTS_MS`] (the baseline's re-arm time: an
//! endpoint raises no second anomaly sooner). A detection or anomaly of a subject whose last
//! announced incident still lasted when it fired is that incident again — another gateway
//! replica's copy, or the same recent list pushed again — and is not announced.
//!
//! **Nothing stale.** What fired more than [`ANNOUNCE_HORIZON_MS`] ago and no longer lasts is
//! not announced when first seen (a sensor keeps its last 100 detections for long after); so
//! an announced incident needs remembering only until then, and memory stays bounded.
//!
//! **Restarts.** Each announcement carries what it announced ([`Announcement`], serialized in
//! the Event's annotation `apiguard.dev/announced`); a fresh intake is first
//! [seeded](RuntimeMemory::seed) with the policy's Events, so it does not announce again.

use crate::api::RuntimeStatus;
use crate::detect::{Action, ActiveBlock, Anomaly, Detection};
use crate::discovery::push::{
    MAX_PUSHED_ANOMALIES, MAX_PUSHED_BLOCKS, MAX_PUSHED_DETECTIONS, RuntimeReport,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// The Event reason of an `Alert` detection.
pub const ABUSE_EVENT_REASON: &str = "AbuseDetected";
/// The Event reason of a `Block` detection.
pub const BLOCK_EVENT_REASON: &str = "ClientBlocked";
/// The Event reason of a traffic anomaly.
pub const ANOMALY_EVENT_REASON: &str = "TrafficAnomaly";
/// How long after it fired a detection or anomaly seen for the first time is still announced
/// (when it does not last longer): pushes come every 30 s, a refused one is retried within ten
/// intervals (5 minutes).
pub const ANNOUNCE_HORIZON_MS: i64 = 15 * 60 * 1000;
/// How long an endpoint's anomaly lasts: the baseline's re-arm time (15 normal minutes in a
/// row before an endpoint can raise another), so another replica's anomaly of the endpoint
/// within it is the same surge.
pub const ANOMALY_LASTS_MS: i64 = 15 * 60 * 1000;
/// The most incidents remembered per policy (those forgotten soonest go first beyond it).
pub const MAX_REMEMBERED: usize = 10_000;
/// The longest detector name, key or endpoint a push may carry (bytes).
const MAX_TEXT: usize = 512;

/// What an announcement is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Subject {
    /// A detector's key, as the sensor shows it (the client IP, or `sha256:…`).
    Detection { detector: String, key: String },
    /// An endpoint's traffic (`GET /v1/orders`).
    Anomaly { endpoint: String },
}

/// One Event to publish, and what it announces (kept in the Event, so a restarted operator
/// knows).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Announcement {
    /// [`ABUSE_EVENT_REASON`], [`BLOCK_EVENT_REASON`] or [`ANOMALY_EVENT_REASON`].
    pub reason: String,
    /// Its subject.
    #[serde(flatten)]
    pub subject: Subject,
    /// When it fired, Unix ms.
    pub at: i64,
    /// Until when it lasts, Unix ms.
    pub until: i64,
    /// The Event's note (not kept in the annotation).
    #[serde(skip)]
    pub note: String,
}

impl Announcement {
    /// 16 hex digits naming what is announced (reason, subject, time): the Event's name
    /// suffix, so two operator replicas announcing the same find one Event.
    pub fn id(&self) -> String {
        let mut hash = Sha256::new();
        hash.update(self.reason.as_bytes());
        match &self.subject {
            Subject::Detection { detector, key } => {
                hash.update(b"\0detection\0");
                hash.update(detector.as_bytes());
                hash.update(b"\0");
                hash.update(key.as_bytes());
            }
            Subject::Anomaly { endpoint } => {
                hash.update(b"\0anomaly\0");
                hash.update(endpoint.as_bytes());
            }
        }
        hash.update(b"\0");
        hash.update(self.at.to_be_bytes());
        hex::encode(&hash.finalize()[..8])
    }

    /// Whether it announces a detection (not an anomaly).
    pub fn is_detection(&self) -> bool {
        matches!(self.subject, Subject::Detection { .. })
    }

    /// The annotation text ([`crate::api::names::annotations::ANNOUNCED`]).
    pub fn annotation(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// An announcement read back from its Event's annotation.
    pub fn from_annotation(text: &str) -> Option<Announcement> {
        serde_json::from_str(text).ok()
    }
}

/// A runtime report that cannot be right: the field (`runtime.detections[3].key`) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ReportError {
    pub field: String,
    pub message: String,
}

/// Checks a pushed runtime report's bounds and fields.
pub fn check(report: &RuntimeReport) -> Result<(), ReportError> {
    let err = |field: String, message: String| Err(ReportError { field, message });
    let bound = |field: &str, len: usize, max: usize| {
        if len > max {
            err(
                field.to_owned(),
                format!("{len} entries, at most {max} are taken"),
            )
        } else {
            Ok(())
        }
    };
    bound(
        "runtime.detections",
        report.detections.len(),
        MAX_PUSHED_DETECTIONS,
    )?;
    bound(
        "runtime.anomalies",
        report.anomalies.len(),
        MAX_PUSHED_ANOMALIES,
    )?;
    bound(
        "runtime.activeBlocks",
        report.active_blocks.len(),
        MAX_PUSHED_BLOCKS,
    )?;
    let text = |field: String, value: &str| {
        if value.is_empty() {
            err(field, "empty".into())
        } else if value.len() > MAX_TEXT {
            err(field, format!("longer than {MAX_TEXT} bytes"))
        } else if value.chars().any(char::is_control) {
            err(field, "holds control characters".into())
        } else {
            Ok(())
        }
    };
    for (i, d) in report.detections.iter().enumerate() {
        let field = |f: &str| format!("runtime.detections[{i}].{f}");
        text(field("detector"), &d.detector)?;
        text(field("key"), &d.key)?;
        match (d.action, d.blocked_until_ms) {
            (Action::Block, None) => {
                return err(field("blockedUntil"), "missing for action Block".into());
            }
            (Action::Alert, Some(_)) => {
                return err(field("blockedUntil"), "set for action Alert".into());
            }
            _ => {}
        }
    }
    for (i, a) in report.anomalies.iter().enumerate() {
        let field = |f: &str| format!("runtime.anomalies[{i}].{f}");
        text(field("endpoint"), &a.endpoint)?;
        for (name, v) in [
            ("factor", a.factor),
            ("ratePerMinute", a.rate_per_minute),
            ("baselinePerMinute", a.baseline_per_minute),
        ] {
            if !v.is_finite() || v < 0.0 {
                return err(
                    field(name),
                    format!("{v} is not a finite, non-negative number"),
                );
            }
        }
    }
    for (i, b) in report.active_blocks.iter().enumerate() {
        let field = |f: &str| format!("runtime.activeBlocks[{i}].{f}");
        text(field("detector"), &b.detector)?;
        text(field("key"), &b.key)?;
    }
    Ok(())
}

/// The announced incident of a subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Lasting {
    at: i64,
    until: i64,
    /// When nothing of it can be announced any more (the latest copy's horizon).
    forget: i64,
}

/// When a detection or anomaly that fired `at` and lasts `until` is stale.
fn stale_at(at: i64, until: i64) -> i64 {
    until.max(at.saturating_add(ANNOUNCE_HORIZON_MS))
}

/// What one push's runtime report changed.
#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeTaken {
    /// The Events to publish, oldest first.
    pub announce: Vec<Announcement>,
    /// Distinct blocks (detector and key) in force across the live replicas.
    pub active_blocks: usize,
}

/// A policy's runtime memory in one operator replica: the incidents announced, and each
/// gateway replica's blocks in force.
#[derive(Debug, Default)]
pub struct RuntimeMemory {
    lasting: HashMap<Subject, Lasting>,
    /// By reporter: when it last pushed (Unix ms) and its blocks in force.
    blocks: BTreeMap<String, (i64, Vec<ActiveBlock>)>,
    seeded: bool,
}

impl RuntimeMemory {
    /// Whether the policy's existing Events were read into it yet.
    pub fn seeded(&self) -> bool {
        self.seeded
    }

    /// Remembers what earlier announcements (read back from the policy's Events) announced.
    pub fn seed(&mut self, announced: impl IntoIterator<Item = Announcement>, now_ms: i64) {
        for a in announced {
            self.remember(a.subject, a.at, a.until, now_ms);
        }
        self.seeded = true;
    }

    fn remember(&mut self, subject: Subject, at: i64, until: i64, now_ms: i64) {
        let forget = stale_at(at, until);
        if forget <= now_ms {
            return;
        }
        let entry = self
            .lasting
            .entry(subject)
            .or_insert(Lasting { at, until, forget });
        if at >= entry.until {
            *entry = Lasting { at, until, forget };
        } else {
            entry.forget = entry.forget.max(forget);
        }
    }

    /// Takes `report` (`None`: the replica reports no detections) from `reporter` at `now_ms`;
    /// replicas silent for `reporter_ttl_ms` no longer count, at most `max_reporters` are kept.
    pub fn take(
        &mut self,
        reporter: &str,
        report: Option<&RuntimeReport>,
        now_ms: i64,
        reporter_ttl_ms: i64,
        max_reporters: usize,
    ) -> RuntimeTaken {
        self.lasting.retain(|_, l| l.forget > now_ms);
        let mut announce = Vec::new();
        if let Some(report) = report {
            let mut candidates: Vec<Announcement> = report
                .detections
                .iter()
                .map(detection_announcement)
                .chain(report.anomalies.iter().map(anomaly_announcement))
                .collect();
            candidates.sort_by_key(|a| a.at);
            for a in candidates {
                // A copy is remembered too: it keeps its incident known until the copy
                // itself is stale.
                let new = self.is_new(&a, now_ms);
                self.remember(a.subject.clone(), a.at, a.until, now_ms);
                if new {
                    announce.push(a);
                }
            }
            self.bound();
        }
        self.blocks
            .retain(|_, (at, _)| now_ms - *at <= reporter_ttl_ms);
        match report {
            Some(r) => {
                if !self.blocks.contains_key(reporter)
                    && self.blocks.len() >= max_reporters
                    && let Some(oldest) = self
                        .blocks
                        .iter()
                        .min_by_key(|(_, (at, _))| *at)
                        .map(|(k, _)| k.clone())
                {
                    self.blocks.remove(&oldest);
                }
                self.blocks
                    .insert(reporter.to_owned(), (now_ms, r.active_blocks.clone()));
            }
            None => {
                self.blocks.remove(reporter);
            }
        }
        let active: BTreeSet<(&str, &str)> = self
            .blocks
            .values()
            .flat_map(|(_, b)| b.iter())
            .filter(|b| b.blocked_until_ms > now_ms)
            .map(|b| (b.detector.as_str(), b.key.as_str()))
            .collect();
        RuntimeTaken {
            announce,
            active_blocks: active.len(),
        }
    }

    /// Whether `a` is a new incident: not stale, and its subject's last incident did not last
    /// until it fired.
    fn is_new(&self, a: &Announcement, now_ms: i64) -> bool {
        if stale_at(a.at, a.until) <= now_ms {
            return false;
        }
        match self.lasting.get(&a.subject) {
            None => true,
            Some(l) => a.at >= l.until && a.at != l.at,
        }
    }

    fn bound(&mut self) {
        if self.lasting.len() <= MAX_REMEMBERED {
            return;
        }
        let mut by_forget: Vec<(i64, Subject)> = self
            .lasting
            .iter()
            .map(|(s, l)| (l.forget, s.clone()))
            .collect();
        by_forget.sort();
        let excess = self.lasting.len() - MAX_REMEMBERED;
        for (_, s) in by_forget.into_iter().take(excess) {
            self.lasting.remove(&s);
        }
    }
}

/// The announcement of a detection: `ClientBlocked` for a `Block`, `AbuseDetected` for an
/// `Alert`; the note shows the key as the sensor gave it.
pub fn detection_announcement(d: &Detection) -> Announcement {
    let window_ms = i64::try_from(d.window_seconds)
        .unwrap_or(i64::MAX)
        .saturating_mul(1000);
    let reason = match d.action {
        Action::Block => BLOCK_EVENT_REASON,
        Action::Alert => ABUSE_EVENT_REASON,
    };
    // A block lasts until it ends ([`check`] refuses a Block without its end); an alert, its
    // window.
    let until = d
        .blocked_until_ms
        .unwrap_or_else(|| d.at_ms.saturating_add(window_ms));
    Announcement {
        reason: reason.into(),
        subject: Subject::Detection {
            detector: d.detector.clone(),
            key: d.key.clone(),
        },
        at: d.at_ms,
        until,
        note: d.to_string(),
    }
}

/// The announcement of an anomaly, naming the endpoint and the factor.
pub fn anomaly_announcement(a: &Anomaly) -> Announcement {
    Announcement {
        reason: ANOMALY_EVENT_REASON.into(),
        subject: Subject::Anomaly {
            endpoint: a.endpoint.clone(),
        },
        at: a.at_ms,
        until: a.at_ms.saturating_add(ANOMALY_LASTS_MS),
        note: format!(
            "{}: traffic {:.1} times its baseline ({:.1} requests a minute against {:.1}) for {} minutes, until {}",
            a.endpoint,
            a.factor,
            a.rate_per_minute,
            a.baseline_per_minute,
            a.minutes,
            rfc3339_ms(a.at_ms)
        ),
    }
}

/// `2027-01-15T08:00:19Z` (milliseconds only when there are some).
pub fn rfc3339_ms(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| "-".into())
}

fn parse_ms(text: &str) -> Option<i64> {
    text.parse::<jiff::Timestamp>()
        .ok()
        .map(|t| t.as_millisecond())
}

/// `status.runtime` after a push: `previous`'s counts plus the announcements published
/// (`published`: those whose Event was created now, not found from an earlier run), the
/// blocks in force, reported at `now_ms`.
pub fn runtime_status(
    previous: Option<&RuntimeStatus>,
    published: &[Announcement],
    active_blocks: usize,
    now_ms: i64,
) -> RuntimeStatus {
    let count = |detection: bool| {
        i64::try_from(
            published
                .iter()
                .filter(|a| a.is_detection() == detection)
                .count(),
        )
        .unwrap_or(i64::MAX)
    };
    let previous_last = previous
        .and_then(|p| p.last_detection_time.as_deref())
        .and_then(parse_ms);
    let last = published
        .iter()
        .filter(|a| a.is_detection())
        .map(|a| a.at)
        .chain(previous_last)
        .max();
    RuntimeStatus {
        active_blocks: i64::try_from(active_blocks).unwrap_or(i64::MAX),
        detections: previous
            .map_or(0, |p| p.detections)
            .saturating_add(count(true)),
        anomalies: previous
            .map_or(0, |p| p.anomalies)
            .saturating_add(count(false)),
        last_detection_time: last.map(rfc3339_ms),
        last_report_time: rfc3339_ms(now_ms),
    }
}

#[cfg(test)]
#[path = "runtime_tests.rs"]
mod tests;
