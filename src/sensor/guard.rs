//! Runtime detection in the sensor: the policy's detectors ([`crate::detect::Engine`]) and
//! traffic baseline ([`crate::detect::Baseline`]) fed by the gateway's access log (every
//! request, Envoy's own 401/403/429 included), the blocks they make checked at every
//! request's headers ([`BlockStage`]), and what `GET /detections` and the push show.
//!
//! The [`Guard`] outlives config reloads: a reload that keeps the `runtime` section keeps the
//! counts; one that changes it starts the counts over, and the blocks in force of detectors
//! that still block are carried over. A block check takes a read lock (the access log's batch,
//! every half second, takes the write lock briefly).

use super::access_log::Logged;
use super::contract_stage::PROBLEM_JSON;
use super::pipeline::{Action, Event, Exchange, Reply, Stage};
use super::runtime_settings::RuntimeSettings;
use crate::detect::{
    self, ActiveBlock, Anomaly, Baseline, Counted, Detection, Engine, EngineStats, Limits,
};
use crate::discovery::Declared;
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

/// The anomalies kept for `GET /detections` and the push.
const RECENT_ANOMALIES: usize = 50;
/// Idle keys and ended blocks dropped per detector per tick (besides the sweep every event
/// does).
const TICK_SWEEP: usize = 4096;
/// The problem type of a blocked request.
pub(crate) const BLOCKED_PROBLEM_TYPE: &str = "https://apiguard.dev/problems/client-blocked";

/// Unix milliseconds now.
pub(crate) fn now_ms() -> i64 {
    unix_ms(SystemTime::now())
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The detection state of the sensor, shared by the access log service (writes), the block
/// stage (reads), the tick timer, the admin route and the push.
#[derive(Default)]
pub(crate) struct Guard {
    state: RwLock<Option<State>>,
}

struct State {
    fingerprint: String,
    engine: Engine,
    baseline: Option<Baseline>,
    declared: Declared,
    anomalies: VecDeque<Anomaly>,
}

impl State {
    fn new(settings: &RuntimeSettings) -> State {
        State {
            fingerprint: settings.fingerprint.clone(),
            // Compiled once already (runtime_settings): cannot fail here.
            engine: Engine::new(&settings.detectors, Limits::default())
                .unwrap_or_else(|_| Engine::new(&[], Limits::default()).expect("no detectors")),
            baseline: settings
                .baseline
                .and_then(|config| Baseline::new(config).ok()),
            declared: settings.declared.clone(),
            anomalies: VecDeque::new(),
        }
    }
}

/// What `GET /detections` shows.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DetectionsView {
    /// `namespace/name`.
    pub(crate) policy: String,
    /// Keys refused now, with when their block ends.
    pub(crate) active_blocks: Vec<ActiveBlock>,
    /// The latest detections, oldest first.
    pub(crate) detections: Vec<Detection>,
    /// The latest traffic anomalies, oldest first.
    pub(crate) anomalies: Vec<Anomaly>,
    /// The state's size (bounded).
    pub(crate) state: Option<EngineStats>,
}

impl Guard {
    /// The state for `settings`: unchanged while the section is, rebuilt when it changed
    /// (blocks in force carried over), dropped when it is gone.
    fn state_for<'s>(
        state: &'s mut Option<State>,
        settings: Option<&RuntimeSettings>,
        now_ms: i64,
    ) -> Option<&'s mut State> {
        let Some(settings) = settings else {
            *state = None;
            return None;
        };
        if state
            .as_ref()
            .is_none_or(|s| s.fingerprint != settings.fingerprint)
        {
            let mut fresh = State::new(settings);
            if let Some(old) = state.take() {
                let kept = old
                    .engine
                    .active_blocks(now_ms)
                    .iter()
                    .filter(|b| fresh.engine.adopt(b, now_ms))
                    .count();
                tracing::info!(
                    blocks_kept = kept,
                    "the runtime detectors changed; their counts start over"
                );
            }
            *state = Some(fresh);
        }
        state.as_mut()
    }

    /// Counts `requests` (a batch of the access log) into the detectors and the baseline of
    /// `settings`; the detections they made.
    pub(crate) fn observe(
        &self,
        settings: Option<&RuntimeSettings>,
        requests: &[Logged],
    ) -> Vec<Detection> {
        self.observe_counted(settings, requests, None)
    }

    /// [`Guard::observe`], and what each request was counted into (with its time), for the
    /// cluster-wide counts ([`super::sharing`]).
    pub(crate) fn observe_counted(
        &self,
        settings: Option<&RuntimeSettings>,
        requests: &[Logged],
        mut counted: Option<&mut Vec<(Counted, i64)>>,
    ) -> Vec<Detection> {
        let mut guard = self.state.write().unwrap_or_else(PoisonError::into_inner);
        let Some(state) = Self::state_for(&mut guard, settings, now_ms()) else {
            return Vec::new();
        };
        let mut found = Vec::new();
        let mut scratch = Vec::new();
        for r in requests {
            let at_ms = unix_ms(r.time);
            let event_detections = r.caller.with_keys(|keys| {
                let event = detect::Event {
                    at_ms,
                    method: &r.method,
                    path: &r.path,
                    status: r.status,
                    keys: *keys,
                };
                match counted.as_deref_mut() {
                    Some(out) => {
                        scratch.clear();
                        let found = state.engine.observe_counted(&event, &mut scratch);
                        out.extend(scratch.drain(..).map(|c| (c, at_ms)));
                        found
                    }
                    None => state.engine.observe(&event),
                }
            });
            found.extend(event_detections);
            if let Some(baseline) = state.baseline.as_mut() {
                let key =
                    crate::discovery::inventory::endpoint_key(&state.declared, &r.method, &r.path);
                let (method, template) = key.split_once(' ').unwrap_or((&r.method, &key));
                baseline.observe(method, template, at_ms);
            }
        }
        found
    }

    /// The cluster-wide totals of what was counted ([`Guard::observe_counted`]): the
    /// detections they make here (see [`Engine::cross`]).
    pub(crate) fn cross(&self, totals: &[(Counted, u64)], now_ms: i64) -> Vec<Detection> {
        let mut guard = self.state.write().unwrap_or_else(PoisonError::into_inner);
        let Some(state) = guard.as_mut() else {
            return Vec::new();
        };
        totals
            .iter()
            .filter_map(|(c, total)| state.engine.cross(c, *total, now_ms))
            .collect()
    }

    /// The name and window of the detector a [`Counted`] belongs to, under the state in force.
    pub(crate) fn counted_detector(&self, counted: &Counted) -> Option<(String, u64)> {
        let guard = self.state.read().unwrap_or_else(PoisonError::into_inner);
        let (name, window) = guard.as_ref()?.engine.counted_detector(counted)?;
        Some((name.to_owned(), window))
    }

    /// Closes the baseline's minutes and drops idle state; the anomalies raised.
    pub(crate) fn tick(&self, now_ms: i64) -> Vec<Anomaly> {
        let mut guard = self.state.write().unwrap_or_else(PoisonError::into_inner);
        let Some(state) = guard.as_mut() else {
            return Vec::new();
        };
        state.engine.sweep(now_ms, TICK_SWEEP);
        let Some(baseline) = state.baseline.as_mut() else {
            return Vec::new();
        };
        let raised = baseline.tick(now_ms);
        for a in &raised {
            if state.anomalies.len() >= RECENT_ANOMALIES {
                state.anomalies.pop_front();
            }
            state.anomalies.push_back(a.clone());
        }
        raised
    }

    /// The block in force for the request's keys, if any.
    pub(crate) fn blocked(
        &self,
        keys: &detect::RequestKeys<'_>,
        now_ms: i64,
    ) -> Option<ActiveBlock> {
        let guard = self.state.read().unwrap_or_else(PoisonError::into_inner);
        guard.as_ref()?.engine.blocked(keys, now_ms)
    }

    /// Adopts a block made elsewhere (another replica, through the shared state); false when
    /// no detector of this config blocks by that name and kind, or it already ended.
    pub(crate) fn adopt(&self, block: &ActiveBlock, now_ms: i64) -> bool {
        let mut guard = self.state.write().unwrap_or_else(PoisonError::into_inner);
        guard
            .as_mut()
            .is_some_and(|s| s.engine.adopt(block, now_ms))
    }

    /// Blocks in force now.
    pub(crate) fn active_blocks(&self, now_ms: i64) -> Vec<ActiveBlock> {
        let guard = self.state.read().unwrap_or_else(PoisonError::into_inner);
        guard
            .as_ref()
            .map(|s| s.engine.active_blocks(now_ms))
            .unwrap_or_default()
    }

    /// What `GET /detections` shows.
    pub(crate) fn view(&self, policy: &str, now_ms: i64) -> DetectionsView {
        let guard = self.state.read().unwrap_or_else(PoisonError::into_inner);
        let state = guard.as_ref();
        DetectionsView {
            policy: policy.to_owned(),
            active_blocks: state
                .map(|s| s.engine.active_blocks(now_ms))
                .unwrap_or_default(),
            detections: state
                .map(|s| s.engine.recent().cloned().collect())
                .unwrap_or_default(),
            anomalies: state
                .map(|s| s.anomalies.iter().cloned().collect())
                .unwrap_or_default(),
            state: state.map(|s| s.engine.stats()),
        }
    }
}

/// Shared by the services, the stage and the timers.
pub(crate) type SharedGuard = Arc<Guard>;

/// The pipeline's first stage when a detector blocks: a request whose key is blocked gets
/// `403` problem+json with `retry-after` (in Audit it goes on, recorded as audited).
pub(crate) struct BlockStage {
    pub(crate) guard: SharedGuard,
    pub(crate) audit: bool,
}

impl Stage for BlockStage {
    fn request_headers(&self, exchange: &mut Exchange, events: &mut Vec<Event>) -> Action {
        let now = now_ms();
        let Some(block) = exchange
            .request
            .with_keys(|keys| self.guard.blocked(keys, now))
        else {
            return Action::Continue;
        };
        events.push(Event::Blocked {
            detector: block.detector.clone(),
            audited: self.audit,
        });
        if self.audit {
            return Action::Continue;
        }
        Action::Respond(blocked_reply(&block, now))
    }

    fn wants_response_body(&self, _exchange: &Exchange) -> bool {
        false
    }
}

/// The `403` of a blocked key: the detector and when the block ends, never the key itself
/// (the client knows who it is; a proxy in between need not).
pub(crate) fn blocked_reply(block: &ActiveBlock, now_ms: i64) -> Reply {
    let retry_after = block.retry_after_seconds(now_ms);
    let body = serde_json::json!({
        "type": BLOCKED_PROBLEM_TYPE,
        "title": "Too many suspicious requests",
        "status": 403,
        "detail": format!(
            "requests from this client are refused for {retry_after} more seconds (detector {})",
            block.detector
        ),
        "detector": block.detector,
    });
    Reply {
        status: 403,
        content_type: PROBLEM_JSON,
        body: body.to_string().into_bytes(),
        details: "apiguard_client_blocked",
        headers: vec![("retry-after", retry_after.to_string())],
    }
}
