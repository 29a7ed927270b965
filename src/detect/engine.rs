//! The detection engine: per detector, per key, a sliding window of matching events (or of
//! distinct path-parameter values); a key over the threshold makes one [`Detection`] while it
//! lasts, and with `action: Block` a block until `now + blockFor`.

use crate::detect::config::{
    Action, Compiled, ConfigError, DetectorConfig, KeyLabel, Limits, compile_all,
};
use crate::detect::keys::{RequestKeys, key_of, shown};
use crate::detect::time::{format_ms, rfc3339, rfc3339_opt};
use crate::detect::window::{Buckets, Distinct, in_window};
use crate::discovery::template::segments;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};

/// How many entries a sweep forced by a full key table looks at before giving up.
const FULL_SWEEP: usize = 16;

/// One exchange as the engine sees it (Envoy's own refusals included). Borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event<'a> {
    /// When the request started, Unix milliseconds.
    pub at_ms: i64,
    /// `POST`, as sent.
    pub method: &'a str,
    /// The request path as sent; the query string is ignored.
    pub path: &'a str,
    /// The response status (0: none).
    pub status: u16,
    /// Who sent it.
    pub keys: RequestKeys<'a>,
}

/// A key crossed a detector's threshold. The key is the client IP as given or a hash, never a
/// raw claim, API-key client id or header value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Detection {
    /// The detector's name.
    pub detector: String,
    /// The key as shown: `203.0.113.7`, or `sha256:` and 16 hex digits.
    pub key: String,
    /// What the key is.
    pub key_kind: KeyLabel,
    /// The claim or header name (`by: {claim: sub}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_name: Option<String>,
    /// What the detector does.
    pub action: Action,
    /// Events (or distinct values) in the window when it fired.
    pub count: u32,
    /// The path parameter whose distinct values were counted, for a distinct threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distinct: Option<String>,
    /// The window, seconds.
    pub window_seconds: u64,
    /// When it fired (the event's time), RFC 3339 in JSON.
    #[serde(rename = "at", with = "rfc3339")]
    pub at_ms: i64,
    /// For `Block`: when the block ends.
    #[serde(
        rename = "blockedUntil",
        default,
        skip_serializing_if = "Option::is_none",
        with = "rfc3339_opt"
    )]
    pub blocked_until_ms: Option<i64>,
}

impl fmt::Display for Detection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = serde_json::to_value(self.key_kind).unwrap_or_default();
        let kind = kind.as_str().unwrap_or("key");
        write!(f, "{}: {kind}", self.detector)?;
        if let Some(n) = &self.key_name {
            write!(f, " {n}")?;
        }
        write!(f, " {}: {}", self.key, self.count)?;
        match &self.distinct {
            Some(p) => write!(f, " distinct {p}")?,
            None => write!(f, " events")?,
        }
        write!(
            f,
            " within {}s at {}",
            self.window_seconds,
            format_ms(self.at_ms)
        )?;
        match self.blocked_until_ms {
            Some(until) => write!(f, "; blocked until {}", format_ms(until)),
            None => write!(f, "; alert"),
        }
    }
}

/// What one event was counted into by one detector ([`Engine::observe_counted`]): the key
/// and, for a distinct threshold, the value's hash. For sharing counts across replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counted {
    /// The detector's position in the engine.
    pub detector: usize,
    /// The key (an IPv4 address's bits, or a hash).
    pub key: u64,
    /// The key as shown (the IP as given, or `sha256:` and 16 hex digits).
    pub shown: String,
    /// The distinct value's hash, for a distinct threshold.
    pub value: Option<u64>,
}

/// A key a detector blocks now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActiveBlock {
    /// The detector's name.
    pub detector: String,
    /// The key as shown (as in the [`Detection`]).
    pub key: String,
    /// What the key is.
    pub key_kind: KeyLabel,
    /// The claim or header name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_name: Option<String>,
    /// The count that made the block.
    pub count: u32,
    /// When the block started.
    #[serde(rename = "since", with = "rfc3339")]
    pub since_ms: i64,
    /// When it ends.
    #[serde(rename = "blockedUntil", with = "rfc3339")]
    pub blocked_until_ms: i64,
}

impl Detection {
    /// The block this detection made (None unless it blocks, until `blocked_until_ms`).
    pub fn active_block(&self) -> Option<ActiveBlock> {
        Some(ActiveBlock {
            detector: self.detector.clone(),
            key: self.key.clone(),
            key_kind: self.key_kind,
            key_name: self.key_name.clone(),
            count: self.count,
            since_ms: self.at_ms,
            blocked_until_ms: self
                .blocked_until_ms
                .filter(|_| self.action == Action::Block)?,
        })
    }
}

impl ActiveBlock {
    /// The `retry-after` seconds at `now_ms`: the rest of the block, rounded up, at least 1.
    pub fn retry_after_seconds(&self, now_ms: i64) -> u64 {
        let rest = self.blocked_until_ms.saturating_sub(now_ms).max(1);
        u64::try_from(rest).unwrap_or(1).div_ceil(1000)
    }
}

/// How big the engine's state is (it is bounded; see [`Limits`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EngineStats {
    /// Per detector, in order.
    pub detectors: Vec<DetectorStats>,
    /// An estimate of the bytes held (tables at their capacity, distinct sets, queues).
    pub bytes: usize,
}

/// One detector's state size and counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DetectorStats {
    /// The detector's name.
    pub name: String,
    /// Keys tracked.
    pub keys: usize,
    /// Blocks held (some may have ended and not been swept yet).
    pub blocks: usize,
    /// Distinct values held, over all keys.
    pub distinct_values: usize,
    /// Events of new keys not tracked because the table was full.
    pub overflow: u64,
    /// Detections made.
    pub detections: u64,
}

#[derive(Debug, Clone)]
enum Window {
    Count(Buckets),
    Distinct(Distinct),
}

#[derive(Debug, Clone)]
struct KeyState {
    /// The newest bucket seen.
    head: i64,
    window: Window,
    /// An `Alert` detection was made and the count has not fallen under the threshold since.
    alerted: bool,
    /// The alert came from the cluster-wide total ([`Engine::cross`]): only a total under the
    /// threshold re-arms it, not this replica's smaller count.
    shared: bool,
}

#[derive(Debug, Clone)]
struct Block {
    until_ms: i64,
    since_ms: i64,
    key: String,
    count: u32,
}

#[derive(Debug, Clone)]
struct Detector {
    c: Compiled,
    keys: HashMap<u64, KeyState>,
    /// Every tracked key once, with its head bucket when queued: the sweep's order.
    queue: VecDeque<(u64, i64)>,
    blocks: HashMap<u64, Block>,
    /// `(until, key)` per block made, in the order made (so by end time).
    block_queue: VecDeque<(i64, u64)>,
    overflow: u64,
    detections: u64,
}

/// What one event adds to a detector's key.
struct Hit<'e, 'a> {
    key: u64,
    value: Option<u64>,
    event: &'e Event<'a>,
}

impl Detector {
    fn new(c: Compiled) -> Detector {
        Detector {
            c,
            keys: HashMap::new(),
            queue: VecDeque::new(),
            blocks: HashMap::new(),
            block_queue: VecDeque::new(),
            overflow: 0,
            detections: 0,
        }
    }

    fn bucket(&self, at_ms: i64) -> i64 {
        at_ms.div_euclid(i64::try_from(self.c.bucket_ms).unwrap_or(i64::MAX))
    }

    fn blocked_at(&self, key: u64, now_ms: i64) -> Option<&Block> {
        self.blocks.get(&key).filter(|b| b.until_ms > now_ms)
    }

    /// Counts the hit; the detection it makes, if any.
    fn observe(&mut self, hit: &Hit<'_, '_>, limits: &Limits) -> Option<Detection> {
        let at = hit.event.at_ms;
        let bucket = self.bucket(at);
        if !self.keys.contains_key(&hit.key) && self.keys.len() >= limits.max_keys {
            self.sweep(at, FULL_SWEEP);
            if self.keys.len() >= limits.max_keys {
                self.overflow = self.overflow.saturating_add(1);
                return None;
            }
        }
        let distinct = self.c.distinct.is_some();
        let queue = &mut self.queue;
        let state = self.keys.entry(hit.key).or_insert_with(|| {
            queue.push_back((hit.key, bucket));
            KeyState {
                head: bucket,
                window: if distinct {
                    Window::Distinct(Distinct::default())
                } else {
                    Window::Count(Buckets::new())
                },
                alerted: false,
                shared: false,
            }
        });
        if !in_window(bucket, state.head) {
            return None; // older than the key's window: out of order, too late
        }
        let count = count_in(state, bucket, hit.value, self.c.count);
        if count < self.c.count {
            if !state.shared {
                state.alerted = false;
            }
            return None;
        }
        match self.c.action {
            Action::Alert if state.alerted => return None,
            Action::Alert => state.alerted = true,
            Action::Block if self.blocked_at(hit.key, at).is_some() => return None,
            Action::Block => {}
        }
        Some(self.detect(hit, count, limits))
    }

    fn detect(&mut self, hit: &Hit<'_, '_>, count: u32, limits: &Limits) -> Detection {
        let key = shown(&self.c.by, &hit.event.keys, hit.key);
        self.detect_key(hit.key, key, count, hit.event.at_ms, limits)
    }

    /// The detection of `key` (shown as `shown`) at `at` with `count`; the block it makes.
    fn detect_key(
        &mut self,
        k: u64,
        key: String,
        count: u32,
        at: i64,
        limits: &Limits,
    ) -> Detection {
        let until = (self.c.action == Action::Block).then(|| {
            let until = at.saturating_add(i64::try_from(self.c.block_for_ms).unwrap_or(0));
            self.block(k, key.clone(), at, until, count, limits);
            until
        });
        self.detections = self.detections.saturating_add(1);
        Detection {
            detector: self.c.name.clone(),
            key,
            key_kind: self.c.by.label(),
            key_name: self.c.by.name().map(str::to_string),
            action: self.c.action,
            count,
            distinct: self.c.distinct.clone(),
            window_seconds: self.c.window_ms / 1000,
            at_ms: at,
            blocked_until_ms: until,
        }
    }

    fn block(&mut self, key: u64, shown: String, at: i64, until: i64, count: u32, l: &Limits) {
        let block = Block {
            until_ms: until,
            since_ms: at,
            key: shown,
            count,
        };
        self.blocks.insert(key, block);
        self.block_queue.push_back((until, key));
        // Over the cap: the block that ends first goes.
        while self.blocks.len() > l.max_keys {
            let Some((u, k)) = self.block_queue.pop_front() else {
                break;
            };
            if self.blocks.get(&k).is_some_and(|b| b.until_ms == u) {
                self.blocks.remove(&k);
            }
        }
    }

    /// Drops up to `budget` keys idle for longer than the window, and ended blocks; how many.
    fn sweep(&mut self, now_ms: i64, budget: usize) -> usize {
        let now = self.bucket(now_ms);
        let mut removed = 0;
        for _ in 0..budget {
            let Some((key, queued)) = self.queue.pop_front() else {
                break;
            };
            if in_window(queued, now) {
                // The front is recent: the queue is roughly in time order, stop here.
                self.queue.push_front((key, queued));
                break;
            }
            match self.keys.get(&key).map(|s| s.head) {
                Some(head) if in_window(head, now) => self.queue.push_back((key, head)),
                Some(_) => {
                    self.keys.remove(&key);
                    removed += 1;
                }
                None => {}
            }
        }
        for _ in 0..budget {
            match self.block_queue.front() {
                Some(&(until, key)) if until <= now_ms => {
                    self.block_queue.pop_front();
                    if self.blocks.get(&key).is_some_and(|b| b.until_ms == until) {
                        self.blocks.remove(&key);
                        removed += 1;
                    }
                }
                _ => break,
            }
        }
        removed
    }

    /// Gives memory back when a table is under a quarter full (and not small).
    fn shrink(&mut self) {
        if self.keys.capacity() > 1024 && self.keys.len() < self.keys.capacity() / 4 {
            self.keys.shrink_to(self.keys.len() * 2);
        }
        if self.queue.capacity() > 1024 && self.queue.len() < self.queue.capacity() / 4 {
            self.queue.shrink_to(self.queue.len() * 2);
        }
        if self.blocks.capacity() > 1024 && self.blocks.len() < self.blocks.capacity() / 4 {
            self.blocks.shrink_to(self.blocks.len() * 2);
            self.block_queue.shrink_to(self.blocks.len() * 2);
        }
    }

    fn active(&self, b: &Block) -> ActiveBlock {
        ActiveBlock {
            detector: self.c.name.clone(),
            key: b.key.clone(),
            key_kind: self.c.by.label(),
            key_name: self.c.by.name().map(str::to_string),
            count: b.count,
            since_ms: b.since_ms,
            blocked_until_ms: b.until_ms,
        }
    }

    fn stats(&self) -> (DetectorStats, usize) {
        let mut distinct_values = 0;
        let mut heap = 0;
        for s in self.keys.values() {
            if let Window::Distinct(d) = &s.window {
                distinct_values += d.total() as usize;
                heap += d.heap_bytes();
            }
        }
        let bytes = heap
            + self.keys.capacity() * (size_of::<(u64, KeyState)>() + 1)
            + self.queue.capacity() * size_of::<(u64, i64)>()
            + self.blocks.capacity() * (size_of::<(u64, Block)>() + 1)
            + self
                .blocks
                .values()
                .map(|b| b.key.capacity())
                .sum::<usize>()
            + self.block_queue.capacity() * size_of::<(i64, u64)>();
        let stats = DetectorStats {
            name: self.c.name.clone(),
            keys: self.keys.len(),
            blocks: self.blocks.len(),
            distinct_values,
            overflow: self.overflow,
            detections: self.detections,
        };
        (stats, bytes)
    }
}

/// Moves the key's window to `bucket` and counts the event (or the value) in it; the count.
fn count_in(state: &mut KeyState, bucket: i64, value: Option<u64>, cap: u32) -> u32 {
    let head = state.head.max(bucket);
    match &mut state.window {
        Window::Count(b) => {
            b.advance(state.head, head);
            b.add(bucket);
            state.head = head;
            b.total()
        }
        Window::Distinct(d) => {
            d.advance(head);
            if let Some(v) = value {
                d.add(v, bucket, cap as usize);
            }
            state.head = head;
            d.total()
        }
    }
}

fn value_hash(value: &str) -> u64 {
    let mut h = DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

/// The runtime detectors of one gateway. Pure: time comes with the events.
#[derive(Debug, Clone)]
pub struct Engine {
    detectors: Vec<Detector>,
    limits: Limits,
    recent: VecDeque<Detection>,
    /// Whether any detector matches paths (else the path is never split).
    any_paths: bool,
}

impl Engine {
    /// An engine running `configs`; `Err` names the first field that is wrong.
    pub fn new(configs: &[DetectorConfig], limits: Limits) -> Result<Engine, ConfigError> {
        let compiled = compile_all(configs)?;
        Ok(Engine {
            any_paths: compiled.iter().any(Compiled::has_paths),
            detectors: compiled.into_iter().map(Detector::new).collect(),
            limits,
            recent: VecDeque::new(),
        })
    }

    /// Counts one exchange in every detector it matches; the detections it makes (usually
    /// none; at most one per detector). Also sweeps a little idle state.
    pub fn observe(&mut self, event: &Event<'_>) -> Vec<Detection> {
        self.observe_into(event, None)
    }

    /// [`Engine::observe`], and what the event was counted into (per detector: the key and
    /// the distinct value), for adding it to the cluster-wide counts ([`Engine::cross`]).
    pub fn observe_counted(
        &mut self,
        event: &Event<'_>,
        counted: &mut Vec<Counted>,
    ) -> Vec<Detection> {
        self.observe_into(event, Some(counted))
    }

    /// A cluster-wide total of what `counted` was counted into (every replica's events, from
    /// the shared state): a detection when it reaches the detector's threshold and the key is
    /// not already alerted or blocked here (the same rule as a local count). `at_ms` is when
    /// the total was read.
    pub fn cross(&mut self, counted: &Counted, total: u64, at_ms: i64) -> Option<Detection> {
        let limits = self.limits;
        let d = self.detectors.get_mut(counted.detector)?;
        let total = u32::try_from(total).unwrap_or(u32::MAX);
        if total < d.c.count {
            if let Some(state) = d.keys.get_mut(&counted.key).filter(|s| s.shared) {
                state.alerted = false;
                state.shared = false;
            }
            return None;
        }
        match d.c.action {
            Action::Alert => {
                let state = d.keys.get_mut(&counted.key)?;
                if state.alerted {
                    return None;
                }
                state.alerted = true;
                state.shared = true;
            }
            Action::Block if d.blocked_at(counted.key, at_ms).is_some() => return None,
            Action::Block => {}
        }
        let detection = d.detect_key(counted.key, counted.shown.clone(), total, at_ms, &limits);
        self.remember(&detection);
        Some(detection)
    }

    /// The detector's name, window and threshold of a [`Counted`] (for the shared keys).
    pub fn counted_detector(&self, counted: &Counted) -> Option<(&str, u64)> {
        let d = self.detectors.get(counted.detector)?;
        Some((&d.c.name, d.c.window_ms))
    }

    fn remember(&mut self, d: &Detection) {
        if self.limits.recent > 0 {
            if self.recent.len() >= self.limits.recent {
                self.recent.pop_front();
            }
            self.recent.push_back(d.clone());
        }
    }

    fn observe_into(
        &mut self,
        event: &Event<'_>,
        mut counted: Option<&mut Vec<Counted>>,
    ) -> Vec<Detection> {
        let segs: Vec<&str> = if self.any_paths {
            segments(event.path).collect()
        } else {
            Vec::new()
        };
        let mut out = Vec::new();
        for (i, d) in self.detectors.iter_mut().enumerate() {
            d.sweep(event.at_ms, self.limits.sweep_per_event);
            if !d.c.matches_head(event.method, event.status) {
                continue;
            }
            let Some(param) = d.c.fit(&segs) else {
                continue;
            };
            if d.c.distinct.is_some() && param.is_none() {
                continue;
            }
            let Some(key) = key_of(&d.c.by, &event.keys) else {
                continue;
            };
            let hit = Hit {
                key,
                value: param.map(value_hash),
                event,
            };
            if let Some(counted) = counted.as_deref_mut() {
                counted.push(Counted {
                    detector: i,
                    key,
                    shown: shown(&d.c.by, &event.keys, key),
                    value: hit.value,
                });
            }
            if let Some(detection) = d.observe(&hit, &self.limits) {
                out.push(detection);
            }
        }
        for d in &out {
            self.remember(d);
        }
        out
    }

    /// Whether a `Block` detector blocks one of the request's keys at `now_ms`: the block that
    /// ends last. One hash lookup per `Block` detector holding blocks (a key is only hashed
    /// for a detector that has some).
    pub fn blocked(&self, keys: &RequestKeys<'_>, now_ms: i64) -> Option<ActiveBlock> {
        let mut found: Option<(&Detector, &Block)> = None;
        for d in &self.detectors {
            if d.blocks.is_empty() {
                continue;
            }
            let Some(key) = key_of(&d.c.by, keys) else {
                continue;
            };
            if let Some(b) = d.blocked_at(key, now_ms)
                && found.is_none_or(|(_, f)| b.until_ms > f.until_ms)
            {
                found = Some((d, b));
            }
        }
        found.map(|(d, b)| d.active(b))
    }

    /// Takes over a block made elsewhere (another gateway replica, or this engine before its
    /// detectors changed): held by the detector of that name if it blocks by the same kind of
    /// key. False when there is none, or the block has ended. A longer block already held is
    /// kept.
    pub fn adopt(&mut self, block: &ActiveBlock, now_ms: i64) -> bool {
        if block.blocked_until_ms <= now_ms {
            return false;
        }
        let Some(d) = self.detectors.iter_mut().find(|d| {
            d.c.name == block.detector
                && d.c.action == Action::Block
                && d.c.by.label() == block.key_kind
                && d.c.by.name() == block.key_name.as_deref()
        }) else {
            return false;
        };
        let Some(key) = super::keys::key_of_shown(&d.c.by, &block.key) else {
            return false;
        };
        if d.blocked_at(key, now_ms)
            .is_some_and(|b| b.until_ms >= block.blocked_until_ms)
        {
            return true;
        }
        d.block(
            key,
            block.key.clone(),
            block.since_ms,
            block.blocked_until_ms,
            block.count,
            &self.limits,
        );
        true
    }

    /// Every block in force at `now_ms`, by detector then key.
    pub fn active_blocks(&self, now_ms: i64) -> Vec<ActiveBlock> {
        let mut out: Vec<ActiveBlock> = self
            .detectors
            .iter()
            .flat_map(|d| {
                d.blocks
                    .values()
                    .filter(move |b| b.until_ms > now_ms)
                    .map(move |b| d.active(b))
            })
            .collect();
        out.sort_by(|a, b| (&a.detector, &a.key).cmp(&(&b.detector, &b.key)));
        out
    }

    /// The latest detections, oldest first (at most [`Limits::recent`]).
    pub fn recent(&self) -> impl ExactSizeIterator<Item = &Detection> + DoubleEndedIterator {
        self.recent.iter()
    }

    /// Drops idle keys and ended blocks, up to `budget` queue entries per detector; how many
    /// were dropped. For a timer, when events are few (each event also sweeps a little).
    /// Tables left mostly empty are shrunk here (never on an event: no rehashing inline).
    pub fn sweep(&mut self, now_ms: i64, budget: usize) -> usize {
        self.detectors
            .iter_mut()
            .map(|d| {
                let removed = d.sweep(now_ms, budget);
                d.shrink();
                removed
            })
            .sum()
    }

    /// The state's size, per detector.
    pub fn stats(&self) -> EngineStats {
        let mut bytes = self.recent.capacity() * size_of::<Detection>();
        let detectors = self
            .detectors
            .iter()
            .map(|d| {
                let (s, b) = d.stats();
                bytes += b;
                s
            })
            .collect();
        EngineStats { detectors, bytes }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::config::{KeyKind, MAX_BLOCK_FOR_MS, Threshold};
    use proptest::prelude::*;

    /// 2027-01-15T08:00:00Z, a whole minute (so a bucket starts there).
    const T0: i64 = 1_800_000_000_000;
    const MIN: i64 = 60_000;

    fn login_stuffing() -> DetectorConfig {
        DetectorConfig {
            name: "login-stuffing".into(),
            methods: vec!["POST".into()],
            paths: vec!["/login".into()],
            statuses: vec![401, 403],
            by: KeyKind::ClientIp,
            threshold: Threshold::Count {
                count: 20,
                window_ms: 60_000,
            },
            action: Action::Block,
            block_for_ms: Some(15 * MIN as u64),
        }
    }

    fn bola() -> DetectorConfig {
        DetectorConfig {
            name: "bola".into(),
            methods: vec![],
            paths: vec!["/users/{userId}/orders".into()],
            statuses: vec![403],
            by: KeyKind::Claim("sub".into()),
            threshold: Threshold::Distinct {
                path_param: "userId".into(),
                count: 50,
                window_ms: 5 * 60_000,
            },
            action: Action::Block,
            block_for_ms: None,
        }
    }

    fn alert(count: u32) -> DetectorConfig {
        DetectorConfig {
            name: "noisy".into(),
            methods: vec![],
            paths: vec![],
            statuses: vec![],
            by: KeyKind::ClientIp,
            threshold: Threshold::Count {
                count,
                window_ms: 60_000,
            },
            action: Action::Alert,
            block_for_ms: None,
        }
    }

    fn engine(configs: &[DetectorConfig]) -> Engine {
        Engine::new(configs, Limits::default()).unwrap()
    }

    #[test]
    fn counts_shared_by_two_replicas_cross_once_on_each() {
        // Two replicas see 12 failures each from one IP: neither reaches 20 alone, the
        // cluster-wide total (as the shared state sums it) does.
        let (mut a, mut b) = (engine(&[login_stuffing()]), engine(&[login_stuffing()]));
        let mut total = 0;
        let mut last = Vec::new();
        for i in 0..12 {
            for replica in [&mut a, &mut b] {
                let mut counted = Vec::new();
                let found = replica.observe_counted(
                    &ev(T0 + i * 100, "POST", "/login", 401, ip("10.0.0.9")),
                    &mut counted,
                );
                assert!(found.is_empty());
                assert_eq!(counted.len(), 1);
                assert_eq!(counted[0].shown, "10.0.0.9");
                assert_eq!(counted[0].value, None);
                total += 1;
                last = counted;
            }
        }
        let at = T0 + 2_000;
        let d = a.cross(&last[0], total, at).expect("the total crossed");
        assert_eq!((d.count, d.key.as_str()), (24, "10.0.0.9"));
        assert_eq!(d.blocked_until_ms, Some(at + 15 * MIN));
        assert!(a.blocked(&ip("10.0.0.9"), at + 1).is_some());
        assert_eq!(a.recent().len(), 1);
        // Once blocked, neither a higher total nor a local crossing detects again.
        assert_eq!(a.cross(&last[0], total + 5, at + 10), None);
        assert_eq!(a.cross(&last[0], 19, at + 10), None);
        let d = b
            .cross(&last[0], total, at)
            .expect("the other replica crosses too");
        assert_eq!(d.detector, "login-stuffing");
        assert_eq!(
            a.counted_detector(&last[0]),
            Some(("login-stuffing", 60_000))
        );
    }

    #[test]
    fn an_alert_crossed_through_the_total_is_not_repeated_by_the_local_count() {
        let mut e = engine(&[alert(5)]);
        let mut counted = Vec::new();
        for i in 0..3 {
            e.observe_counted(&ev(T0 + i, "GET", "/a", 200, ip("10.0.0.1")), &mut counted);
        }
        assert!(e.cross(&counted[2], 5, T0 + 10).is_some());
        assert!(e.cross(&counted[2], 6, T0 + 11).is_none());
        let mut more = Vec::new();
        for i in 3..6 {
            let found = e.observe_counted(&ev(T0 + i, "GET", "/a", 200, ip("10.0.0.1")), &mut more);
            assert!(found.is_empty(), "the local count repeats the alert at {i}");
        }
        // A total under the threshold re-arms it.
        assert!(e.cross(&counted[2], 2, T0 + 70_000).is_none());
        assert!(e.cross(&counted[2], 5, T0 + 70_001).is_some());
    }

    fn ip(ip: &str) -> RequestKeys<'_> {
        RequestKeys {
            client_ip: Some(ip),
            ..RequestKeys::default()
        }
    }

    fn ev<'a>(
        at_ms: i64,
        method: &'a str,
        path: &'a str,
        status: u16,
        keys: RequestKeys<'a>,
    ) -> Event<'a> {
        Event {
            at_ms,
            method,
            path,
            status,
            keys,
        }
    }

    /// Observes `n` events, `every` ms apart from `from`; every detection.
    fn run(
        e: &mut Engine,
        n: i64,
        from: i64,
        every: i64,
        f: impl Fn(i64) -> (u16, String),
        keys: RequestKeys<'_>,
    ) -> Vec<(i64, Detection)> {
        let mut out = Vec::new();
        for i in 0..n {
            let (status, path) = f(i);
            let at = from + i * every;
            let method = if path == "/login" { "POST" } else { "GET" };
            for d in e.observe(&ev(at, method, &path, status, keys)) {
                out.push((i, d));
            }
        }
        out
    }

    #[test]
    fn credential_stuffing_is_blocked_once_at_the_threshold() {
        let mut e = engine(&[login_stuffing()]);
        let attacker = ip("203.0.113.7");
        let fired = run(&mut e, 30, T0, 1_000, |_| (401, "/login".into()), attacker);
        assert_eq!(
            fired.len(),
            1,
            "one detection, not one per event: {fired:?}"
        );
        let (i, d) = &fired[0];
        assert_eq!(*i, 19, "at the 20th failure");
        let at = T0 + 19_000;
        let until = at + 15 * MIN;
        assert_eq!(
            serde_json::to_string(d).unwrap(),
            r#"{"detector":"login-stuffing","key":"203.0.113.7","keyKind":"clientIP","action":"Block","count":20,"windowSeconds":60,"at":"2027-01-15T08:00:19Z","blockedUntil":"2027-01-15T08:15:19Z"}"#
        );
        let back: Detection = serde_json::from_str(&serde_json::to_string(d).unwrap()).unwrap();
        assert_eq!(&back, d);
        assert_eq!(d.blocked_until_ms, Some(until));
        assert_eq!(e.recent().len(), 1);

        let b = e
            .blocked(&attacker, T0 + 40_000)
            .expect("the attacker is blocked");
        assert_eq!(
            (b.detector.as_str(), b.key.as_str()),
            ("login-stuffing", "203.0.113.7")
        );
        assert_eq!((b.since_ms, b.blocked_until_ms, b.count), (at, until, 20));
        assert_eq!(b.retry_after_seconds(until - 1_500), 2);
        assert_eq!(
            e.blocked(&ip("198.51.100.1"), T0 + 40_000),
            None,
            "another client is served"
        );
        assert!(e.blocked(&attacker, until - 1).is_some());
        assert_eq!(
            e.blocked(&attacker, until),
            None,
            "served again after blockFor"
        );
        assert_eq!(e.active_blocks(T0 + 40_000), vec![b]);
        assert_eq!(e.active_blocks(until), vec![]);

        // A few failures after the block: under the threshold, no new block.
        let fired = run(
            &mut e,
            5,
            until,
            1_000,
            |_| (401, "/login".into()),
            attacker,
        );
        assert!(fired.is_empty());
        // Still at it: blocked again, once.
        let fired = run(
            &mut e,
            30,
            until + 10_000,
            500,
            |_| (401, "/login".into()),
            attacker,
        );
        assert_eq!(fired.len(), 1);
    }

    #[test]
    fn events_spread_over_more_than_the_window_do_not_fire() {
        // 40 failures, one every 3.2 s: 20 of them span 60.8 s, never within 60 s.
        let mut e = engine(&[login_stuffing()]);
        let fired = run(
            &mut e,
            40,
            T0,
            3_200,
            |_| (401, "/login".into()),
            ip("203.0.113.7"),
        );
        assert_eq!(fired, vec![]);
        // 19 at the window's start, the 20th at its edge: 59.999 s fires, 60 s does not.
        for (last, fires) in [(59_999, true), (60_000, false), (57_000, true)] {
            let mut e = engine(&[login_stuffing()]);
            let k = ip("203.0.113.7");
            assert!(run(&mut e, 19, T0, 0, |_| (401, "/login".into()), k).is_empty());
            let d = e.observe(&ev(T0 + last, "POST", "/login", 401, k));
            assert_eq!(d.len() == 1, fires, "20th at +{last} ms");
        }
        // The approximation: 19 failures late in a bucket and the 20th 58.5 s later are not
        // seen together (the window holds 57 to 60 s of events).
        let mut e = engine(&[login_stuffing()]);
        let k = ip("203.0.113.7");
        assert!(run(&mut e, 19, T0 + 2_000, 0, |_| (401, "/login".into()), k).is_empty());
        assert!(
            e.observe(&ev(T0 + 60_500, "POST", "/login", 401, k))
                .is_empty()
        );
    }

    #[test]
    fn bola_enumeration_is_blocked_at_50_distinct_ids() {
        let claims = [("sub", "alice@example.com")];
        let alice = RequestKeys {
            claims: &claims,
            ..RequestKeys::default()
        };
        let mut e = engine(&[bola()]);
        let fired = run(
            &mut e,
            60,
            T0,
            100,
            |i| (403, format!("/users/{}/orders", i + 1)),
            alice,
        );
        assert_eq!(fired.len(), 1);
        let (i, d) = &fired[0];
        assert_eq!(*i, 49);
        assert_eq!(d.count, 50);
        assert_eq!(d.distinct.as_deref(), Some("userId"));
        assert_eq!(d.key, shown_hash_of("alice@example.com"));
        assert_eq!(
            (d.key_kind, d.key_name.as_deref()),
            (KeyLabel::Claim, Some("sub"))
        );
        assert_eq!(d.blocked_until_ms, Some(T0 + 4_900 + 15 * MIN));
        assert!(e.blocked(&alice, T0 + 10_000).is_some());
        let bob_claims = [("sub", "bob")];
        let bob = RequestKeys {
            claims: &bob_claims,
            ..RequestKeys::default()
        };
        assert_eq!(e.blocked(&bob, T0 + 10_000), None);
        assert_eq!(
            e.stats().detectors[0].distinct_values,
            50,
            "bounded by the count"
        );

        // The same subject asking for its own orders 60 times: one value.
        let mut e = engine(&[bola()]);
        let fired = run(
            &mut e,
            60,
            T0,
            100,
            |_| (403, "/users/7/orders".into()),
            alice,
        );
        assert_eq!(fired, vec![]);
        // Other statuses and paths are not counted.
        let fired = run(
            &mut e,
            60,
            T0,
            100,
            |i| (200, format!("/users/{i}/orders")),
            alice,
        );
        assert_eq!(fired, vec![]);
        let fired = run(&mut e, 60, T0, 100, |i| (403, format!("/users/{i}")), alice);
        assert_eq!(fired, vec![]);
    }

    fn shown_hash_of(v: &str) -> String {
        crate::detect::keys::shown_hash(crate::detect::keys::hash_value(v))
    }

    #[test]
    fn route_and_status_filters() {
        let k = ip("203.0.113.7");
        let cases: [(&str, &str, u16, bool); 7] = [
            ("POST", "/login", 401, true),
            ("post", "/login?next=/", 403, true),
            ("POST", "/login/", 401, true),
            ("POST", "/login", 200, false),
            ("POST", "/login", 429, false),
            ("GET", "/login", 401, false),
            ("POST", "/login/x", 401, false),
        ];
        for (method, path, status, counted) in cases {
            let mut e = engine(&[login_stuffing()]);
            let mut fired = 0;
            for i in 0..20 {
                fired += e.observe(&ev(T0 + i, method, path, status, k)).len();
            }
            assert_eq!(fired == 1, counted, "{method} {path} {status}");
        }
        // Envoy's own refusals (429 from its rate limit) are events like any other.
        let mut c = alert(3);
        c.statuses = vec![429];
        let mut e = engine(&[c]);
        let fired = run(&mut e, 3, T0, 10, |_| (429, "/anything".into()), k);
        assert_eq!(fired.len(), 1);
        // A prefix path.
        let mut c = alert(3);
        c.paths = vec!["/admin/*".into()];
        let mut e = engine(&[c]);
        assert_eq!(
            run(&mut e, 3, T0, 10, |_| (200, "/admin".into()), k).len(),
            0
        );
        assert_eq!(
            run(&mut e, 3, T0, 10, |i| (200, format!("/admin/{i}")), k).len(),
            1
        );
        // No client IP: not counted.
        let mut e = engine(&[alert(1)]);
        assert!(
            e.observe(&ev(T0, "GET", "/", 200, RequestKeys::default()))
                .is_empty()
        );
    }

    #[test]
    fn raw_claims_api_keys_and_headers_never_leave_the_engine() {
        let by = [
            KeyKind::Claim("sub".into()),
            KeyKind::ApiKey,
            KeyKind::Header("x-tenant".into()),
        ];
        let configs: Vec<DetectorConfig> = by
            .iter()
            .enumerate()
            .map(|(i, by)| DetectorConfig {
                name: format!("d{i}"),
                by: by.clone(),
                action: Action::Block,
                block_for_ms: Some(60_000),
                ..alert(2)
            })
            .collect();
        let mut e = engine(&configs);
        let claims = [("sub", "SECRET-SUBJECT")];
        let headers = [("X-Tenant", "SECRET-TENANT")];
        let keys = RequestKeys {
            client_ip: Some("10.0.0.1"),
            api_key_client: Some("SECRET-CLIENT"),
            claims: &claims,
            headers: &headers,
        };
        let fired: Vec<Detection> = run(&mut e, 2, T0, 1, |_| (200, "/".into()), keys)
            .into_iter()
            .map(|(_, d)| d)
            .collect();
        assert_eq!(fired.len(), 3);
        let blocks = e.active_blocks(T0 + 10);
        assert_eq!(blocks.len(), 3);
        let text = format!(
            "{fired:?}{}{}{blocks:?}{}{e:?}{:?}",
            fired.iter().map(|d| d.to_string()).collect::<String>(),
            serde_json::to_string(&fired).unwrap(),
            serde_json::to_string(&blocks).unwrap(),
            e.stats()
        );
        assert!(!text.contains("SECRET"), "{text}");
        for (d, raw) in fired
            .iter()
            .zip(["SECRET-SUBJECT", "SECRET-CLIENT", "SECRET-TENANT"])
        {
            assert_eq!(d.key, shown_hash_of(raw));
            assert!(d.key.starts_with("sha256:") && d.key.len() == 23);
        }
        // The request-time check hashes the same way.
        let b = e.blocked(&keys, T0 + 10).unwrap();
        assert!(b.key.starts_with("sha256:"));
        let only_header = RequestKeys {
            headers: &headers,
            ..RequestKeys::default()
        };
        assert_eq!(e.blocked(&only_header, T0 + 10).unwrap().detector, "d2");
    }

    #[test]
    fn alerts_are_deduplicated_until_the_count_falls_back() {
        let mut e = engine(&[alert(5)]);
        let k = ip("192.0.2.1");
        let fired = run(&mut e, 20, T0, 500, |_| (200, "/".into()), k);
        assert_eq!(fired.len(), 1, "one alert while it lasts");
        assert_eq!(fired[0].1.blocked_until_ms, None);
        assert!(
            !serde_json::to_string(&fired[0].1)
                .unwrap()
                .contains("blockedUntil")
        );
        assert_eq!(e.blocked(&k, T0 + 1_000), None, "alerts never block");
        // Two minutes later the window is empty: a new burst is a new alert.
        let fired = run(&mut e, 20, T0 + 3 * MIN, 500, |_| (200, "/".into()), k);
        assert_eq!(fired.len(), 1);
        assert_eq!(e.recent().len(), 2);
    }

    #[test]
    fn keys_are_capped_and_idle_keys_swept() {
        let limits = Limits {
            max_keys: 100,
            ..Limits::default()
        };
        let mut e = Engine::new(&[alert(1_000)], limits).unwrap();
        let ips: Vec<String> = (0..1_000)
            .map(|i| format!("10.0.{}.{}", i / 256, i % 256))
            .collect();
        for (i, a) in ips.iter().enumerate() {
            e.observe(&ev(T0 + i as i64, "GET", "/", 200, ip(a)));
        }
        let s = &e.stats().detectors[0];
        assert_eq!((s.keys, s.overflow), (100, 900));
        // Two windows later, a trickle of one key's events sweeps the idle keys away.
        for i in 0..60 {
            e.observe(&ev(T0 + 2 * MIN + i, "GET", "/", 200, ip("192.0.2.1")));
        }
        assert_eq!(
            e.stats().detectors[0].keys,
            1,
            "only the active key is left"
        );
        // A full table frees room for a new key once its keys are idle.
        let mut e = Engine::new(&[alert(1_000)], limits).unwrap();
        for (i, a) in ips.iter().take(100).enumerate() {
            e.observe(&ev(T0 + i as i64, "GET", "/", 200, ip(a)));
        }
        e.observe(&ev(T0 + 2 * MIN, "GET", "/", 200, ip("192.0.2.1")));
        assert_eq!(e.stats().detectors[0].overflow, 0);
        // And a timer's sweep empties an idle engine.
        let before = e.stats().bytes;
        assert!(e.sweep(T0 + 10 * MIN, 1_000) > 0);
        assert_eq!(e.stats().detectors[0].keys, 0);
        assert!(e.stats().bytes <= before);
        // Big tables left empty give their memory back.
        let mut e = Engine::new(&[alert(1_000)], Limits::default()).unwrap();
        for i in 0..5_000u32 {
            let a = std::net::Ipv4Addr::from(i).to_string();
            e.observe(&ev(T0, "GET", "/", 200, ip(&a)));
        }
        let full = e.stats().bytes;
        e.sweep(T0 + 10 * MIN, 10_000);
        assert!(e.stats().bytes * 10 < full, "{} of {full}", e.stats().bytes);
    }

    #[test]
    fn blocks_are_capped_and_expire() {
        let limits = Limits {
            max_keys: 3,
            recent: 4,
            sweep_per_event: 2,
        };
        let mut c = alert(1);
        c.threshold = Threshold::Count {
            count: 1,
            window_ms: 1_000,
        };
        c.action = Action::Block;
        c.block_for_ms = Some(MIN as u64);
        let mut e = Engine::new(&[c], limits).unwrap();
        // Keys idle after a second make room in the key table; blocks outlive them.
        for i in 0..5 {
            let a = format!("10.0.0.{i}");
            e.observe(&ev(T0 + i * 2_000, "GET", "/", 200, ip(&a)));
        }
        assert_eq!(e.stats().detectors[0].overflow, 0);
        let blocks = e.active_blocks(T0 + 10_000);
        let keys: Vec<&str> = blocks.iter().map(|b| b.key.as_str()).collect();
        assert_eq!(
            keys,
            ["10.0.0.2", "10.0.0.3", "10.0.0.4"],
            "the first to end went"
        );
        assert_eq!(e.recent().len(), 4, "the ring is bounded");
        e.sweep(T0 + 2 * MIN, 100);
        assert_eq!(e.stats().detectors[0].blocks, 0);
    }

    #[test]
    fn configs_are_validated() {
        let mut c = bola();
        c.threshold = Threshold::Distinct {
            path_param: "orderId".into(),
            count: 50,
            window_ms: 60_000,
        };
        let e = Engine::new(&[login_stuffing(), alert(3), c], Limits::default()).unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"runtime.detectors[2].threshold.distinct.pathParam "orderId" is not a parameter of any of match.paths"#
        );
        let mut c = login_stuffing();
        c.paths = vec!["/ok".into(), "login".into()];
        let e = Engine::new(&[c], Limits::default()).unwrap_err();
        assert_eq!(e.field, "runtime.detectors[0].match.paths[1]");
        let e = Engine::new(&[alert(3), alert(4)], Limits::default()).unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"runtime.detectors[1].name "noisy" is used twice"#
        );
        let mut c = alert(3);
        c.block_for_ms = Some(1_000);
        assert_eq!(
            Engine::new(&[c], Limits::default()).unwrap_err().field,
            "runtime.detectors[0].blockFor"
        );
        let mut c = alert(0);
        assert_eq!(
            Engine::new(&[c.clone()], Limits::default())
                .unwrap_err()
                .field,
            "runtime.detectors[0].threshold.count"
        );
        c.threshold = Threshold::Count {
            count: 1,
            window_ms: 999,
        };
        assert_eq!(
            Engine::new(&[c.clone()], Limits::default())
                .unwrap_err()
                .field,
            "runtime.detectors[0].threshold.window"
        );
        c.threshold = Threshold::Count {
            count: 1,
            window_ms: 1_000,
        };
        c.statuses = vec![600];
        assert_eq!(
            Engine::new(&[c.clone()], Limits::default())
                .unwrap_err()
                .field,
            "runtime.detectors[0].when.statuses[0]"
        );
        c.statuses = vec![];
        c.by = KeyKind::Header("x tenant".into());
        assert_eq!(
            Engine::new(&[c.clone()], Limits::default())
                .unwrap_err()
                .field,
            "runtime.detectors[0].by.header"
        );
        c.by = KeyKind::ClientIp;
        c.methods = vec!["GET /".into()];
        assert_eq!(
            Engine::new(&[c], Limits::default()).unwrap_err().field,
            "runtime.detectors[0].match.methods[0]"
        );
        let mut c = bola();
        c.paths = vec![];
        assert!(
            Engine::new(&[c], Limits::default()).is_err(),
            "distinct needs a path with the parameter"
        );
    }

    proptest! {
        /// A count threshold never fires before `count` events fall within one window, and
        /// always fires once they fall within 95 % of it.
        #[test]
        fn count_threshold_fires_when_count_events_fall_within_the_window(
            count in 1u32..12,
            gaps in proptest::collection::vec(0i64..9_000, 1..80),
            offset in 0i64..60_000,
        ) {
            let mut e = engine(&[alert(count)]);
            let k = ip("192.0.2.9");
            let mut times = Vec::new();
            let mut t = T0 + offset;
            let mut fired_at = None;
            for g in &gaps {
                t += g;
                times.push(t);
                if !e.observe(&ev(t, "GET", "/", 200, k)).is_empty() {
                    fired_at = Some(times.len() - 1);
                    break;
                }
            }
            let n = count as usize;
            let first = |span: i64| (n - 1..times.len()).find(|&i| times[i] - times[i + 1 - n] <= span);
            // Strictly within the window: at most window - 1 ms apart.
            match (fired_at, first(59_999), first(57_000)) {
                (Some(i), Some(loose), tight) => {
                    prop_assert!(i >= loose, "fired at {i}, before {count} events within 60 s");
                    prop_assert!(tight.is_none_or(|t| i <= t));
                }
                (Some(i), None, _) => prop_assert!(false, "fired at {i} without {count} events in a window"),
                (None, _, tight) => prop_assert!(tight.is_none(), "{count} events within 57 s did not fire"),
            }
        }

        /// Never more than one detection per key while it is blocked; every block ends when
        /// it says.
        #[test]
        fn one_detection_per_key_while_blocked(
            events in proptest::collection::vec((0i64..2_000, 0u8..4, prop_oneof![Just(401u16), Just(200u16)]), 1..400),
        ) {
            let mut c = login_stuffing();
            c.threshold = Threshold::Count { count: 5, window_ms: 10_000 };
            c.block_for_ms = Some(20_000);
            let mut e = engine(&[c]);
            let mut t = T0;
            let mut until: HashMap<String, i64> = HashMap::new();
            for (gap, who, status) in events {
                t += gap;
                let a = format!("198.51.100.{who}");
                for d in e.observe(&ev(t, "POST", "/login", status, ip(&a))) {
                    let prev = until.get(&d.key).copied().unwrap_or(i64::MIN);
                    prop_assert!(t >= prev, "a second detection while blocked");
                    prop_assert_eq!(d.blocked_until_ms, Some(t + 20_000));
                    until.insert(d.key.clone(), t + 20_000);
                }
                let b = e.blocked(&ip(&a), t);
                prop_assert_eq!(b.is_some(), until.get(&a).is_some_and(|u| *u > t));
            }
        }

        /// Any times (extremes included, in any order), statuses and paths: no panic, the
        /// bounds hold.
        #[test]
        fn any_events_are_safe(
            events in proptest::collection::vec((any::<i64>(), 0u8..5, any::<u16>(), "[/a-z0-9{}*?]{0,20}"), 0..200),
        ) {
            let limits = Limits { max_keys: 3, recent: 2, sweep_per_event: 1 };
            let mut c = bola();
            c.threshold = Threshold::Distinct { path_param: "userId".into(), count: 2, window_ms: 1_000 };
            c.statuses = vec![];
            let mut count = alert(1);
            count.action = Action::Block;
            count.block_for_ms = Some(MAX_BLOCK_FOR_MS);
            let mut e = Engine::new(&[c, count], limits).unwrap();
            for (at, who, status, path) in events {
                let a = format!("10.0.0.{who}");
                let claims = [("sub", a.as_str())];
                let keys = RequestKeys { client_ip: Some(&a), claims: &claims, ..RequestKeys::default() };
                for d in e.observe(&ev(at, "GET", &path, status, keys)) {
                    prop_assert!(serde_json::to_string(&d).is_ok());
                    prop_assert!(!d.to_string().is_empty());
                }
                let _ = e.blocked(&keys, at);
                for b in e.active_blocks(at) {
                    let _ = b.retry_after_seconds(at);
                }
                for d in e.stats().detectors {
                    prop_assert!(d.keys <= 3 && d.blocks <= 3 && d.distinct_values <= 6);
                }
                prop_assert!(e.recent().len() <= 2);
            }
            e.sweep(i64::MAX, 10);
        }
    }
}
