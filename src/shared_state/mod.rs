//! The cluster-wide state store: what every replica of a gateway must agree on, in Redis.
//!
//! - fixed-window counters ([`SharedState::hit`], [`SharedState::hit_many`]): exact across
//!   replicas, one round trip (`INCRBY` + `EXPIRE` pipelined; in a `MULTI`/`EXEC` on a
//!   standalone or Sentinel master, so a counter never lives without its expiry);
//! - blocks ([`SharedState::block`], [`SharedState::blocked`]): a key blocked by one replica
//!   is blocked on all until its expiry (`SET ... PX`; the check is one `GET`);
//! - sliding-window counters ([`SharedState::window_add_many`], see [`window`]): what each
//!   replica counted per key (events, or distinct values) added to buckets, the window's total
//!   over every replica read back, a whole batch in one round trip;
//! - a block list per policy ([`SharedState::publish_block`],
//!   [`SharedState::published_blocks`]): blocks made by one replica, polled by all.
//!
//! Keys are built by [`Key`] (`apiguard:{POLICY}:...`, a Cluster hash tag per policy; see
//! [`keys`]); `--redis-url` by [`RedisConfig`] (see [`config`]).
//!
//! Failure semantics: every operation is bounded by [`RedisConfig::op_timeout`] (50 ms by
//! default) and returns [`Error::Timeout`] or [`Error::Unavailable`] instead of waiting; the
//! connection comes back by itself when Redis does (the redis crate's `ConnectionManager`, the
//! Cluster client's own reconnection, a new master asked of the Sentinels). What to do without
//! Redis is the caller's choice (docs/redis.md). [`SharedState::stats`] counts outcomes for the
//! caller's metrics.
//!
//! Used by the sensor for `scope: Global` rate limits (`sensor::rate_limit`), connected by
//! `sensor::redis_link`.

pub mod config;
pub mod keys;
pub mod window;

pub use config::{ClientIdentity, HostPort, Password, RedisConfig, Topology};
pub use keys::Key;
pub use window::{WindowAdd, WindowHit};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    Client, ConnectionAddr, ErrorKind, FromRedisValue, IntoConnectionInfo, Pipeline, RedisError,
    ServerErrorKind, TlsCertificates, TlsMode, Value,
};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long a counter outlives its window: replicas whose clocks lag a little still count
/// into it, and it is gone soon after.
pub const EXPIRY_MARGIN_SECS: u64 = 5;
/// Longest window a counter takes (one day).
pub const MAX_WINDOW_SECS: u64 = 86_400;
/// Most counters in one [`SharedState::hit_many`] or [`SharedState::window_add_many`] call.
pub const MAX_BATCH: usize = 64;
/// Most blocks a policy's block list holds: past it, the soonest-ending are dropped.
pub const MAX_PUBLISHED_BLOCKS: usize = 100_000;
/// Longest record of a published block, bytes.
pub const MAX_BLOCK_RECORD: usize = 4_096;

/// Adds distinct values to the current bucket and answers the window's distinct count.
/// KEYS: the window's buckets, the current one first; ARGV\[1\]: the bucket's expiry (ms);
/// ARGV\[2..\]: the values (16-hex). The union is counted in the script, so the values of the
/// window do not travel back.
const DISTINCT_SCRIPT: &str = r"
if #ARGV > 1 then
  redis.call('SADD', KEYS[1], unpack(ARGV, 2))
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
if #KEYS == 1 then
  return redis.call('SCARD', KEYS[1])
end
return #redis.call('SUNION', unpack(KEYS))
";

/// Adds a record to a block list unless it is there with a later end, drops the soonest-ending
/// records past the cap, and keeps the list alive at least until this end plus the margin.
/// KEYS\[1\]: the list; ARGV: end (ms), record, cap, the list's expiry from now (ms).
/// (`ZADD GT` would need Redis 6.2, `PEXPIRE GT` 7.0: the script works on older ones.)
const PUBLISH_SCRIPT: &str = r"
local current = redis.call('ZSCORE', KEYS[1], ARGV[2])
if not current or tonumber(current) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
end
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(tonumber(ARGV[3]) + 1))
local expiry = tonumber(ARGV[4])
if redis.call('PTTL', KEYS[1]) < expiry then
  redis.call('PEXPIRE', KEYS[1], expiry)
end
return 0
";

/// What an operation of the store can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Redis cannot be reached (refused, reset, no master, cluster down, reconnecting).
    #[error("Redis unavailable: {0}")]
    Unavailable(String),
    /// No answer within the operation's bound.
    #[error("no answer from Redis within {0:?}")]
    Timeout(Duration),
    /// Redis answered with an error (a bug, or a key of another type).
    #[error("Redis error: {0}")]
    Server(String),
    /// The configuration (`--redis-url`, password) is wrong.
    #[error("{0}")]
    Config(String),
    /// A key, window or count the store does not take.
    #[error("invalid key: {0}")]
    InvalidKey(String),
}

/// Outcomes of the store's operations since it was created, for the caller's metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Operations answered.
    pub ok: u64,
    /// Operations that got no answer within the bound.
    pub timeouts: u64,
    /// Operations refused for want of a connection.
    pub unavailable: u64,
    /// Operations Redis answered with an error.
    pub errors: u64,
}

#[derive(Default)]
struct Counters {
    ok: AtomicU64,
    timeouts: AtomicU64,
    unavailable: AtomicU64,
    errors: AtomicU64,
}

/// A handle on the shared state; cheap to clone (one connection, multiplexed, shared by the
/// clones).
#[derive(Clone)]
pub struct SharedState {
    inner: Arc<Inner>,
}

struct Inner {
    /// Set once connected (at once by [`SharedState::connect`], later by
    /// [`SharedState::connect_in_background`]); until then operations are `Unavailable`.
    backend: OnceLock<Backend>,
    op_timeout: Duration,
    /// `MULTI`/`EXEC` around a batch (not in a Cluster, where the client routes by slot).
    atomic: bool,
    counters: Counters,
    /// What the store is connected to, password hidden (for Debug).
    shown: String,
}

enum Backend {
    Direct(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(Sentinel),
}

/// The master named by the Sentinels, asked again when the connection to it fails or it
/// answers READONLY (demoted by a failover). The asking runs in the background, bounded by
/// the connect timeout; operations meanwhile fail as unavailable.
struct Sentinel {
    client: Arc<tokio::sync::Mutex<SentinelClient>>,
    current: Arc<Mutex<Option<ConnectionManager>>>,
    resolving: Arc<AtomicBool>,
    manager: ConnectionManagerConfig,
    connect_timeout: Duration,
}

impl SharedState {
    /// Connects to Redis as `config` says, within `config.connect_timeout`. Fails when Redis
    /// cannot be reached then; afterwards, the store reconnects by itself.
    pub async fn connect(config: &RedisConfig) -> Result<SharedState, Error> {
        let bound = config.connect_timeout;
        let backend = match tokio::time::timeout(bound, backend(config)).await {
            Ok(backend) => backend?,
            Err(_) => return Err(Error::Timeout(bound)),
        };
        tracing::info!(redis = %config, "connected to the shared state store");
        let state = SharedState::unconnected(config);
        let _ = state.inner.backend.set(backend);
        Ok(state)
    }

    /// A store that connects in the background, trying again (every 0.5 s, backing off to
    /// 5 s) until Redis answers: a Redis that is down when the caller starts does not stop it.
    /// Until connected every operation fails as [`Error::Unavailable`]; afterwards the store
    /// reconnects by itself as with [`SharedState::connect`]. A configuration the client
    /// refuses is logged once and not tried again. Needs a Tokio runtime.
    pub fn connect_in_background(config: RedisConfig) -> SharedState {
        let state = SharedState::unconnected(&config);
        tokio::spawn(keep_connecting(Arc::downgrade(&state.inner), config));
        state
    }

    /// Whether the store has connected once (it may be reconnecting now).
    pub fn connected(&self) -> bool {
        self.inner.backend.get().is_some()
    }

    fn unconnected(config: &RedisConfig) -> SharedState {
        SharedState {
            inner: Arc::new(Inner {
                atomic: !matches!(config.topology, Topology::Cluster(_)),
                backend: OnceLock::new(),
                op_timeout: config.op_timeout,
                counters: Counters::default(),
                shown: config.to_string(),
            }),
        }
    }

    /// Counts `n` hits of `key` in the current fixed window of `window_secs` seconds and
    /// returns the window's count after them (every replica's hits included).
    pub async fn hit(&self, key: &Key, window_secs: u64, n: u64) -> Result<u64, Error> {
        self.hit_at(key, window_secs, n, now_unix_ms() / 1000).await
    }

    /// [`SharedState::hit`] at a given Unix second (the window is the one holding it).
    pub async fn hit_at(
        &self,
        key: &Key,
        window_secs: u64,
        n: u64,
        now_unix_secs: u64,
    ) -> Result<u64, Error> {
        let counts = self
            .hit_many_at(&[(key, window_secs, n)], now_unix_secs)
            .await?;
        counts
            .first()
            .copied()
            .ok_or_else(|| Error::Server("no count in the answer".into()))
    }

    /// Several counters in one round trip (a request that matches several limits): the
    /// counts after the hits, in order. In a Cluster, keys of one policy share a slot; keys of
    /// several policies are split by the client over their nodes.
    pub async fn hit_many(&self, hits: &[(&Key, u64, u64)]) -> Result<Vec<u64>, Error> {
        self.hit_many_at(hits, now_unix_ms() / 1000).await
    }

    /// [`SharedState::hit_many`] at a given Unix second.
    pub async fn hit_many_at(
        &self,
        hits: &[(&Key, u64, u64)],
        now_unix_secs: u64,
    ) -> Result<Vec<u64>, Error> {
        if hits.is_empty() {
            return Ok(Vec::new());
        }
        if hits.len() > MAX_BATCH {
            return Err(Error::InvalidKey(format!(
                "at most {MAX_BATCH} counters in one call"
            )));
        }
        let mut pipe = redis::pipe();
        if self.inner.atomic {
            pipe.atomic();
        }
        for &(key, window_secs, n) in hits {
            if window_secs == 0 || window_secs > MAX_WINDOW_SECS {
                return Err(Error::InvalidKey(format!(
                    "the window must be 1-{MAX_WINDOW_SECS} seconds"
                )));
            }
            let (redis_key, _) = key.counter(window_secs, now_unix_secs);
            pipe.cmd("INCRBY").arg(&redis_key).arg(n);
            pipe.cmd("EXPIRE")
                .arg(&redis_key)
                .arg(window_secs + EXPIRY_MARGIN_SECS)
                .ignore();
        }
        let counts: Vec<u64> = self.query(&pipe).await?;
        if counts.len() != hits.len() {
            return Err(self.count(Error::Server(format!(
                "{} counts for {} counters",
                counts.len(),
                hits.len()
            ))));
        }
        Ok(counts)
    }

    /// Blocks `key` on every replica until `until_unix_ms` (Unix milliseconds), replacing a
    /// block already there. A time in the past sets nothing.
    pub async fn block(&self, key: &Key, until_unix_ms: u64) -> Result<(), Error> {
        let ttl_ms = until_unix_ms.saturating_sub(now_unix_ms());
        if ttl_ms == 0 {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(key.block())
            .arg(until_unix_ms)
            .arg("PX")
            .arg(ttl_ms)
            .ignore();
        self.query::<()>(&pipe).await
    }

    /// Lifts a block of `key`.
    pub async fn unblock(&self, key: &Key) -> Result<(), Error> {
        let mut pipe = redis::pipe();
        pipe.cmd("DEL").arg(key.block()).ignore();
        self.query::<()>(&pipe).await
    }

    /// Whether `key` is blocked: until when (Unix milliseconds), or `None`.
    pub async fn blocked(&self, key: &Key) -> Result<Option<u64>, Error> {
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(key.block());
        let (until,): (Option<u64>,) = self.query(&pipe).await?;
        Ok(until.filter(|until| *until > now_unix_ms()))
    }

    /// Adds each hit to its sliding window (see [`window`]) and returns, in order, each
    /// window's total at the hit's `at_ms`, every replica's hits included: the sum of the
    /// counts, or the number of distinct values (a value in several buckets, or added by
    /// several replicas, counts once). One round trip for the whole batch: a `MULTI`/`EXEC` on
    /// a standalone or Sentinel master; in a Cluster, one pipeline per policy (a policy's keys
    /// share a slot), sent together.
    ///
    /// Refused before any round trip ([`Error::InvalidKey`], naming the bound): more than
    /// [`MAX_BATCH`] hits, a window outside 1 s to one day, buckets outside 1 to 60, more than
    /// 1,000 distinct values in one hit. One operation in [`SharedState::stats`] per call.
    pub async fn window_add_many(&self, hits: &[WindowHit<'_>]) -> Result<Vec<u64>, Error> {
        if hits.is_empty() {
            return Ok(Vec::new());
        }
        if hits.len() > MAX_BATCH {
            return Err(Error::InvalidKey(format!(
                "at most {MAX_BATCH} hits in one call"
            )));
        }
        for hit in hits {
            hit.check()?;
        }
        // The hits of each pipeline, by index: all of them, or those of one policy.
        let groups: Vec<Vec<usize>> = if self.inner.atomic {
            vec![(0..hits.len()).collect()]
        } else {
            let mut by_policy: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
            for (i, hit) in hits.iter().enumerate() {
                by_policy.entry(hit.key.policy()).or_default().push(i);
            }
            by_policy.into_values().collect()
        };
        let pipes: Vec<Pipeline> = groups
            .iter()
            .map(|group| self.window_pipeline(group.iter().map(|&i| &hits[i])))
            .collect();
        let answers = self
            .bounded(futures::future::try_join_all(
                pipes.iter().map(|pipe| self.run::<Vec<Value>>(pipe)),
            ))
            .await?;
        let mut totals = vec![0; hits.len()];
        for (group, answer) in groups.iter().zip(answers) {
            if answer.len() != group.len() {
                return Err(self.count(Error::Server(format!(
                    "{} answers for {} hits",
                    answer.len(),
                    group.len()
                ))));
            }
            for (&i, value) in group.iter().zip(answer) {
                totals[i] = window_total(&hits[i].add, value).map_err(|e| self.count(e))?;
            }
        }
        Ok(totals)
    }

    /// The commands of some hits: per hit, the writes (answers ignored) and one read whose
    /// answer is the total (`MGET` of the buckets for a count, the script for distinct values).
    fn window_pipeline<'h, 'a: 'h>(
        &self,
        hits: impl Iterator<Item = &'h WindowHit<'a>>,
    ) -> Pipeline {
        let mut pipe = redis::pipe();
        if self.inner.atomic {
            pipe.atomic();
        }
        for hit in hits {
            let keys = hit.bucket_keys();
            match hit.add {
                WindowAdd::Count(n) => {
                    if n > 0 {
                        pipe.cmd("INCRBY").arg(&keys[0]).arg(n).ignore();
                        pipe.cmd("PEXPIRE")
                            .arg(&keys[0])
                            .arg(hit.expiry_ms())
                            .ignore();
                    }
                    pipe.cmd("MGET").arg(&keys);
                }
                WindowAdd::Distinct(values) => {
                    let cmd = pipe
                        .cmd("EVAL")
                        .arg(DISTINCT_SCRIPT)
                        .arg(keys.len())
                        .arg(&keys)
                        .arg(hit.expiry_ms());
                    for &value in values {
                        cmd.arg(window::distinct_member(value));
                    }
                }
            }
        }
        pipe
    }

    /// Publishes a block to every replica of the policy: `record` (the caller's, opaque: e.g.
    /// its JSON of the block) until `until_ms` (Unix ms). A record already there keeps the
    /// later end. The list keeps at most [`MAX_PUBLISHED_BLOCKS`], dropping the soonest-ending,
    /// and lives at least until the latest end plus a margin.
    pub async fn publish_block(
        &self,
        policy: &str,
        record: &str,
        until_ms: u64,
    ) -> Result<(), Error> {
        let list = keys::block_list(policy)?;
        if record.is_empty() || record.len() > MAX_BLOCK_RECORD {
            return Err(Error::InvalidKey(format!(
                "a block record must be 1-{MAX_BLOCK_RECORD} bytes"
            )));
        }
        let expiry_ms = until_ms.saturating_sub(now_unix_ms()) + EXPIRY_MARGIN_SECS * 1_000;
        let mut pipe = redis::pipe();
        pipe.cmd("EVAL")
            .arg(PUBLISH_SCRIPT)
            .arg(1)
            .arg(&list)
            .arg(until_ms)
            .arg(record)
            .arg(MAX_PUBLISHED_BLOCKS)
            .arg(expiry_ms)
            .ignore();
        self.query::<()>(&pipe).await
    }

    /// The policy's blocks that end after `now_ms` (Unix ms): `(record, until_ms)`, soonest
    /// ending first. The ended ones are removed in the same round trip.
    pub async fn published_blocks(
        &self,
        policy: &str,
        now_ms: u64,
    ) -> Result<Vec<(String, u64)>, Error> {
        let list = keys::block_list(policy)?;
        let mut pipe = redis::pipe();
        if self.inner.atomic {
            pipe.atomic();
        }
        pipe.cmd("ZREMRANGEBYSCORE")
            .arg(&list)
            .arg("-inf")
            .arg(now_ms)
            .ignore();
        pipe.cmd("ZRANGEBYSCORE")
            .arg(&list)
            .arg(format!("({now_ms}"))
            .arg("+inf")
            .arg("WITHSCORES");
        let (blocks,): (Vec<(String, f64)>,) = self.query(&pipe).await?;
        // Scores are doubles: exact for Unix milliseconds (below 2^53).
        Ok(blocks
            .into_iter()
            .map(|(record, until)| (record, until as u64))
            .collect())
    }

    /// Outcomes so far.
    pub fn stats(&self) -> Stats {
        let c = &self.inner.counters;
        Stats {
            ok: c.ok.load(Ordering::Relaxed),
            timeouts: c.timeouts.load(Ordering::Relaxed),
            unavailable: c.unavailable.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
        }
    }

    /// The bound of one operation.
    pub fn op_timeout(&self) -> Duration {
        self.inner.op_timeout
    }

    /// Runs a pipeline within the operation bound, and counts the outcome.
    async fn query<T: FromRedisValue>(&self, pipe: &Pipeline) -> Result<T, Error> {
        self.bounded(self.run(pipe)).await
    }

    /// Runs an operation (one or several pipelines sent together) within the operation bound,
    /// and counts its outcome once.
    async fn bounded<T>(
        &self,
        operation: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        let bound = self.inner.op_timeout;
        let result = match tokio::time::timeout(bound, operation).await {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout(bound)),
        };
        match result {
            Ok(value) => {
                self.inner.counters.ok.fetch_add(1, Ordering::Relaxed);
                Ok(value)
            }
            Err(e) => Err(self.count(e)),
        }
    }

    fn count(&self, error: Error) -> Error {
        let c = &self.inner.counters;
        match error {
            Error::Timeout(_) => &c.timeouts,
            Error::Unavailable(_) => &c.unavailable,
            _ => &c.errors,
        }
        .fetch_add(1, Ordering::Relaxed);
        // Errors name no key (keys are hashes, but they stay out of the logs anyway).
        tracing::debug!(error = %error, "shared state operation failed");
        error
    }

    async fn run<T: FromRedisValue>(&self, pipe: &Pipeline) -> Result<T, Error> {
        let classify = |e| classify(e, self.inner.op_timeout);
        let Some(backend) = self.inner.backend.get() else {
            return Err(Error::Unavailable("not connected yet".into()));
        };
        match backend {
            Backend::Direct(manager) => {
                let mut conn = manager.clone();
                pipe.query_async(&mut conn).await.map_err(classify)
            }
            Backend::Cluster(conn) => {
                let mut conn = conn.clone();
                pipe.query_async(&mut conn).await.map_err(classify)
            }
            Backend::Sentinel(sentinel) => {
                let mut conn = sentinel.connection()?;
                let result = pipe.query_async(&mut conn).await;
                if let Err(e) = &result
                    && (e.is_unrecoverable_error()
                        || e.is_io_error()
                        || e.kind() == ErrorKind::Server(ServerErrorKind::ReadOnly))
                {
                    sentinel.forget();
                }
                result.map_err(classify)
            }
        }
    }
}

impl std::fmt::Debug for SharedState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedState")
            .field("redis", &self.inner.shown)
            .field("op_timeout", &self.inner.op_timeout)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Sentinel {
    /// The current master's connection, or Unavailable (asking the Sentinels in the
    /// background).
    fn connection(&self) -> Result<ConnectionManager, Error> {
        if let Some(manager) = lock(&self.current).clone() {
            return Ok(manager);
        }
        if !self.resolving.swap(true, Ordering::AcqRel) {
            let (client, current, resolving) = (
                self.client.clone(),
                self.current.clone(),
                self.resolving.clone(),
            );
            let (manager, bound) = (self.manager.clone(), self.connect_timeout);
            tokio::spawn(async move {
                let found = tokio::time::timeout(bound, resolve(&client, manager, bound)).await;
                match found {
                    Ok(Ok(conn)) => *lock(&current) = Some(conn),
                    Ok(Err(e)) => tracing::warn!(error = %e, "Sentinel: no master"),
                    Err(_) => tracing::warn!("Sentinel: no master within {bound:?}"),
                }
                resolving.store(false, Ordering::Release);
            });
        }
        Err(Error::Unavailable(
            "asking the Sentinels for the master".into(),
        ))
    }

    fn forget(&self) {
        lock(&self.current).take();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn resolve(
    client: &tokio::sync::Mutex<SentinelClient>,
    manager: ConnectionManagerConfig,
    bound: Duration,
) -> Result<ConnectionManager, Error> {
    let classify = |e| classify(e, bound);
    let master = client
        .lock()
        .await
        .async_get_client()
        .await
        .map_err(classify)?;
    ConnectionManager::new_with_config(master, manager)
        .await
        .map_err(classify)
}

/// Connects `store` as `config` says, trying again until it does, the configuration is
/// refused, or the store is dropped.
async fn keep_connecting(store: Weak<Inner>, config: RedisConfig) {
    let mut delay = Duration::from_millis(500);
    let mut warned = false;
    loop {
        let attempt = match tokio::time::timeout(config.connect_timeout, backend(&config)).await {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout(config.connect_timeout)),
        };
        let Some(inner) = store.upgrade() else {
            return;
        };
        match attempt {
            Ok(backend) => {
                let _ = inner.backend.set(backend);
                tracing::info!(redis = %config, "connected to the shared state store");
                return;
            }
            Err(e @ Error::Config(_)) => {
                tracing::error!(redis = %config, error = %e, "cannot use the shared state store");
                return;
            }
            Err(e) if !warned => {
                warned = true;
                tracing::warn!(redis = %config, error = %e, "shared state store unreachable; trying again in the background");
            }
            Err(e) => tracing::debug!(error = %e, "shared state store still unreachable"),
        }
        drop(inner);
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// The client side of `config`.
async fn backend(config: &RedisConfig) -> Result<Backend, Error> {
    let redis_err = |e: RedisError| Error::Config(format!("Redis client: {e}"));
    let classify = |e| classify(e, config.connect_timeout);
    let manager = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(config.connect_timeout))
        .set_response_timeout(Some(config.op_timeout))
        .set_number_of_retries(4)
        .set_max_delay(Duration::from_secs(1));
    let certs = || TlsCertificates {
        client_tls: config
            .client_identity
            .as_ref()
            .map(|id| redis::ClientTlsConfig {
                client_cert: id.cert_pem.clone(),
                client_key: id.key_pem.clone(),
            }),
        root_cert: config.ca_pem.clone(),
    };
    // Neither a CA nor a client certificate: the plain client's TLS (the system's roots).
    let own_tls = config.ca_pem.is_some() || config.client_identity.is_some();
    match &config.topology {
        Topology::Standalone(host) => {
            let info = address(config, host)
                .into_connection_info()
                .map_err(redis_err)?;
            let mut settings = info.redis_settings().clone().set_db(config.db);
            if let Some(user) = &config.username {
                settings = settings.set_username(user);
            }
            if let Some(password) = config.password() {
                settings = settings.set_password(password.expose());
            }
            let info = info.set_redis_settings(settings);
            let client = match own_tls && config.tls {
                true => Client::build_with_tls(info, certs()),
                false => Client::open(info),
            }
            .map_err(redis_err)?;
            let manager = ConnectionManager::new_with_config(client, manager)
                .await
                .map_err(classify)?;
            Ok(Backend::Direct(manager))
        }
        Topology::Cluster(nodes) => {
            let mut builder = redis::cluster::ClusterClient::builder(
                nodes
                    .iter()
                    .map(|node| address(config, node))
                    .collect::<Vec<_>>(),
            )
            .connection_timeout(config.connect_timeout)
            .response_timeout(config.op_timeout);
            if let Some(user) = &config.username {
                builder = builder.username(user);
            }
            if let Some(password) = config.password() {
                builder = builder.password(password.expose());
            }
            if config.tls {
                builder = builder.tls(TlsMode::Secure);
                if own_tls {
                    builder = builder.certs(certs());
                }
            }
            let client = builder.build().map_err(redis_err)?;
            let conn = client.get_async_connection().await.map_err(classify)?;
            Ok(Backend::Cluster(conn))
        }
        Topology::Sentinel { sentinels, master } => {
            let addrs = sentinels
                .iter()
                .map(|s| {
                    address(config, s)
                        .into_connection_info()
                        .map(|info| info.addr().clone())
                        .map_err(redis_err)
                })
                .collect::<Result<Vec<ConnectionAddr>, _>>()?;
            let mut builder = SentinelClientBuilder::new(addrs, master, SentinelServerType::Master)
                .map_err(redis_err)?
                .set_client_to_redis_db(config.db);
            if let Some(user) = &config.username {
                builder = builder.set_client_to_redis_username(user);
            }
            if let Some(password) = config.password() {
                builder = builder.set_client_to_redis_password(password.expose());
            }
            if config.tls {
                builder = builder
                    .set_client_to_redis_tls_mode(TlsMode::Secure)
                    .set_client_to_sentinel_tls_mode(TlsMode::Secure);
                if own_tls {
                    builder = builder
                        .set_client_to_redis_certificates(certs())
                        .set_client_to_sentinel_certificates(certs());
                }
            }
            let client = tokio::sync::Mutex::new(builder.build().map_err(redis_err)?);
            let first = resolve(&client, manager.clone(), config.connect_timeout).await?;
            Ok(Backend::Sentinel(Sentinel {
                client: Arc::new(client),
                current: Arc::new(Mutex::new(Some(first))),
                resolving: Arc::new(AtomicBool::new(false)),
                manager,
                connect_timeout: config.connect_timeout,
            }))
        }
    }
}

/// `redis[s]://HOST:PORT` of one host (the credentials are set apart, never in a string).
fn address(config: &RedisConfig, host: &HostPort) -> String {
    format!("redis{}://{host}", if config.tls { "s" } else { "" })
}

/// Sorts a client error into the caller's cases.
fn classify(e: RedisError, bound: Duration) -> Error {
    if e.is_timeout() {
        return Error::Timeout(bound);
    }
    let unavailable = e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_unrecoverable_error()
        || e.is_cluster_error()
        || matches!(
            e.kind(),
            ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::ClusterDown
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::ReadOnly
            ) | ErrorKind::ClusterConnectionNotFound
                | ErrorKind::MasterNameNotFoundBySentinel
                | ErrorKind::AuthenticationFailed
        );
    if unavailable {
        Error::Unavailable(e.to_string())
    } else {
        Error::Server(e.to_string())
    }
}

/// A window's total from the answer of its read: the buckets' counts (`MGET`, missing ones
/// are zero) or the distinct count.
fn window_total(add: &WindowAdd<'_>, answer: Value) -> Result<u64, Error> {
    let bad = |e: redis::ParsingError| Error::Server(format!("a window's total: {e}"));
    match add {
        WindowAdd::Count(_) => {
            let counts: Vec<Option<u64>> = redis::from_redis_value(answer).map_err(bad)?;
            Ok(counts.into_iter().flatten().fold(0u64, u64::saturating_add))
        }
        WindowAdd::Distinct(_) => redis::from_redis_value(answer).map_err(bad),
    }
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
