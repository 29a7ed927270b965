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
            }
        });
        if !in_window(bucket, state.head) {
            return None; // older than the key's window: out of order, too late
        }
        let count = count_in(state, bucket, hit.value, self.c.count);
        if count < self.c.count {
            state.alerted = false;
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
        let at = hit.event.at_ms;
        let key = shown(&self.c.by, &hit.event.keys, hit.key);
        let until = (self.c.action == Action::Block).then(|| {
            let until = at.saturating_add(i64::try_from(self.c.block_for_ms).unwrap_or(0));
            self.block(hit.key, key.clone(), at, until, count, limits);
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
        let segs: Vec<&str> = if self.any_paths {
            segments(event.path).collect()
        } else {
            Vec::new()
        };
        let mut out = Vec::new();
        for d in &mut self.detectors {
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
            if let Some(detection) = d.observe(&hit, &self.limits) {
                out.push(detection);
            }
        }
        for d in &out {
            if self.limits.recent > 0 {
                if self.recent.len() >= self.limits.recent {
                    self.recent.pop_front();
                }
                self.recent.push_back(d.clone());
            }
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
    pub fn sweep(&mut self, now_ms: i64, budget: usize) -> usize {
        self.detectors
            .iter_mut()
            .map(|d| d.sweep(now_ms, budget))
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
