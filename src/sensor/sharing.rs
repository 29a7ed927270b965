//! Runtime detection across gateway replicas, through the shared state (Redis, `--redis-url`):
//!
//! - **counts**: what each access-log batch counted per detector and key is added to the
//!   cluster-wide sliding window ([`SharedState::window_add_many`], one round trip per batch);
//!   a total that reaches the threshold is a detection here too ([`Guard::cross`]), so 30
//!   failures spread over two replicas are 30;
//! - **blocks**: every block this replica makes is published ([`SharedState::publish_block`]);
//!   every replica polls the published blocks every [`POLL_INTERVAL`] and enforces them
//!   ([`Guard::adopt`]): a block holds on every replica within about a second. A block that
//!   could not be published (Redis down) is not lost: at the first poll that reaches Redis
//!   again, every block in force here is published ([`Sharing::republish`]).
//!
//! Redis unreachable: the local counts and blocks go on (each replica alone), every failed
//! operation is counted (`apiguard_shared_detection_errors_total{operation}`) and logged at
//! most once per [`LOG_EVERY`]; when Redis is back, sharing resumes by itself.

use super::guard::{Guard, now_ms};
use super::observe::SensorMetrics;
use crate::detect::{ActiveBlock, Counted, Detection};
use crate::shared_state::{Key, MAX_BATCH, SharedState, WindowAdd, WindowHit};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How often the published blocks are polled.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// The buckets of a shared sliding window (as the local engine's).
const BUCKETS: u32 = crate::detect::config::BUCKETS as u32;
/// At most one warning per operation this often while Redis fails.
const LOG_EVERY: Duration = Duration::from_secs(30);

/// The shared state and the rate limit of its warnings.
pub(crate) struct Sharing {
    pub(crate) store: SharedState,
    last_warning: Mutex<BTreeMap<&'static str, Instant>>,
    /// A block could not be published: the blocks in force are published again when Redis
    /// answers.
    unpublished: AtomicBool,
}

/// One key of one detector, with what a batch added to it.
struct Pending {
    counted: Counted,
    name: String,
    window_ms: u64,
    at_ms: i64,
    events: u64,
    values: Vec<u64>,
}

impl Sharing {
    pub(crate) fn new(store: SharedState) -> Sharing {
        Sharing {
            store,
            last_warning: Mutex::new(BTreeMap::new()),
            unpublished: AtomicBool::new(false),
        }
    }

    /// Counts a failed operation; warns at most once per [`LOG_EVERY`].
    fn failed(
        &self,
        metrics: &SensorMetrics,
        operation: &'static str,
        error: &dyn std::fmt::Display,
    ) {
        metrics.shared_error(operation);
        let mut last = self
            .last_warning
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let due = last.get(operation).is_none_or(|t| t.elapsed() >= LOG_EVERY);
        if due {
            last.insert(operation, Instant::now());
            tracing::warn!(
                operation,
                error = %error,
                "shared state unavailable: detection goes on per replica until it is back"
            );
        }
    }

    /// Adds `counted` (this batch's counts) to the cluster-wide windows of `policy`; the
    /// detections the totals make here.
    pub(crate) async fn add_counts(
        &self,
        policy: &str,
        guard: &Guard,
        counted: Vec<(Counted, i64)>,
        metrics: &SensorMetrics,
    ) -> Vec<Detection> {
        let pending = group(guard, counted);
        let mut found = Vec::new();
        for chunk in pending.chunks(MAX_BATCH) {
            let keys: Vec<Key> = match chunk
                .iter()
                .map(|p| Key::new(policy, &window_name(&p.name, p.counted.key)))
                .collect::<Result<_, _>>()
            {
                Ok(keys) => keys,
                Err(e) => {
                    self.failed(metrics, "count", &e);
                    return found;
                }
            };
            let hits: Vec<WindowHit<'_>> = chunk
                .iter()
                .zip(&keys)
                .map(|(p, key)| WindowHit {
                    key,
                    window_ms: p.window_ms,
                    buckets: BUCKETS,
                    at_ms: u64::try_from(p.at_ms).unwrap_or(0),
                    add: if p.counted.value.is_some() {
                        WindowAdd::Distinct(&p.values)
                    } else {
                        WindowAdd::Count(p.events)
                    },
                })
                .collect();
            match self.store.window_add_many(&hits).await {
                Ok(totals) => {
                    let totals: Vec<(Counted, u64)> = chunk
                        .iter()
                        .zip(totals)
                        .map(|(p, t)| (p.counted.clone(), t))
                        .collect();
                    found.extend(guard.cross(&totals, now_ms()));
                }
                Err(e) => self.failed(metrics, "count", &e),
            }
        }
        found
    }

    /// Publishes the blocks among `detections` for the other replicas.
    pub(crate) async fn publish(
        &self,
        policy: &str,
        detections: &[Detection],
        metrics: &SensorMetrics,
    ) {
        for record in detections.iter().filter_map(Detection::active_block) {
            if let Err(e) = self.publish_one(policy, &record).await {
                self.unpublished.store(true, Ordering::Relaxed);
                self.failed(metrics, "publish", &e);
            }
        }
    }

    /// After a publication failed: publishes every block in force here (this replica's and
    /// the adopted ones, which Redis already holds unchanged), so that the replicas which
    /// missed a block made while Redis was down enforce it for the rest of its time. How many
    /// were published; nothing to do after no failure.
    pub(crate) async fn republish(
        &self,
        policy: &str,
        guard: &Guard,
        metrics: &SensorMetrics,
    ) -> usize {
        if !self.unpublished.swap(false, Ordering::Relaxed) {
            return 0;
        }
        let blocks = guard.active_blocks(now_ms());
        for record in &blocks {
            if let Err(e) = self.publish_one(policy, record).await {
                self.unpublished.store(true, Ordering::Relaxed);
                self.failed(metrics, "publish", &e);
                return 0;
            }
        }
        blocks.len()
    }

    async fn publish_one(
        &self,
        policy: &str,
        record: &ActiveBlock,
    ) -> Result<(), crate::shared_state::Error> {
        let json = serde_json::to_string(record)
            .map_err(|e| crate::shared_state::Error::Server(e.to_string()))?;
        let until = u64::try_from(record.blocked_until_ms).unwrap_or(0);
        self.store.publish_block(policy, &json, until).await
    }

    /// Enforces the blocks other replicas published; how many were new here.
    pub(crate) async fn adopt_published(
        &self,
        policy: &str,
        guard: &Guard,
        metrics: &SensorMetrics,
    ) -> usize {
        let now = now_ms();
        let records = match self
            .store
            .published_blocks(policy, u64::try_from(now).unwrap_or(0))
            .await
        {
            Ok(records) => records,
            Err(e) => {
                self.failed(metrics, "poll", &e);
                return 0;
            }
        };
        let known = guard.active_blocks(now);
        let mut adopted = 0;
        for (json, _) in records {
            let Ok(block) = serde_json::from_str::<ActiveBlock>(&json) else {
                continue;
            };
            let held = known.iter().any(|b| {
                b.detector == block.detector
                    && b.key == block.key
                    && b.blocked_until_ms >= block.blocked_until_ms
            });
            if !held && guard.adopt(&block, now) {
                adopted += 1;
                tracing::info!(
                    detector = block.detector,
                    key = block.key,
                    "runtime: enforcing a block another gateway replica made"
                );
            }
        }
        adopted
    }
}

/// The shared window's name of a detector's key: the detector and the key's 64 bits (a client
/// IP's or a hash; never a raw claim, API key or header value).
fn window_name(detector: &str, key: u64) -> String {
    format!("d:{detector}:{key:016x}")
}

/// This batch's counts per detector and key: events summed, distinct values gathered, the
/// latest time (the window the total is read for).
fn group(guard: &Guard, counted: Vec<(Counted, i64)>) -> Vec<Pending> {
    let mut by_key: BTreeMap<(usize, u64), Pending> = BTreeMap::new();
    for (c, at_ms) in counted {
        let entry = match by_key.entry((c.detector, c.key)) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(v) => {
                let Some((name, window_ms)) = guard.counted_detector(&c) else {
                    continue;
                };
                v.insert(Pending {
                    counted: c.clone(),
                    name,
                    window_ms,
                    at_ms,
                    events: 0,
                    values: Vec::new(),
                })
            }
        };
        entry.at_ms = entry.at_ms.max(at_ms);
        entry.events += 1;
        if let Some(v) = c.value
            && !entry.values.contains(&v)
        {
            entry.values.push(v);
        }
    }
    by_key.into_values().collect()
}

/// Polls the published blocks until `stop`.
pub(crate) async fn poll(
    sharing: std::sync::Arc<Sharing>,
    config: std::sync::Arc<super::reload::ConfigFile>,
    metrics: SensorMetrics,
    stop: impl Future<Output = ()>,
) {
    let mut interval = tokio::time::interval(POLL_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = interval.tick() => {}
        }
        let pipeline = config.current();
        if !pipeline.runtime.as_ref().is_some_and(|r| r.any_block) {
            continue;
        }
        let guard = config.guard();
        let republished = sharing.republish(&pipeline.policy, guard, &metrics).await;
        if republished > 0 {
            tracing::info!(
                blocks = republished,
                "runtime: published the blocks in force after the shared state came back"
            );
        }
        if sharing
            .adopt_published(&pipeline.policy, guard, &metrics)
            .await
            > 0
        {
            metrics.set_active_blocks(&pipeline.policy, guard.active_blocks(now_ms()).len());
        }
    }
}
