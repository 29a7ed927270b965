//! The shared state store (src/shared_state) against a real redis-server (`tests/tools.sh
//! redis`): two clients stand for two replicas of a gateway.

use crate::support::redis::RedisServer;
use apiguard::identity::{CertificateAuthority, DEFAULT_CA_LIFETIME};
use apiguard::shared_state::{
    Error, Key, MAX_BATCH, MAX_PUBLISHED_BLOCKS, Password, RedisConfig, SharedState, WindowAdd,
    WindowHit,
};
use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use time::OffsetDateTime;

/// Generous for the correctness tests (a loaded 2-core machine); the failure test uses the
/// default 50 ms.
const SLOW_OK: Duration = Duration::from_millis(500);

fn config(server: &RedisServer) -> RedisConfig {
    RedisConfig::parse(&server.url())
        .expect("the server's URL")
        .with_op_timeout(SLOW_OK)
}

async fn client(config: &RedisConfig) -> SharedState {
    SharedState::connect(config)
        .await
        .unwrap_or_else(|e| panic!("connect to {config}: {e}"))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// A raw connection, to look at what the store wrote.
async fn raw(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_a_fixed_window_counter_exactly() {
    let server = RedisServer::start();
    let cfg = config(&server);
    let (a, b) = (client(&cfg).await, client(&cfg).await);
    let key = Key::new("shop/api", "rl:per-client:9f86d081884c7d65").unwrap();
    // Mid-window, so the test does not straddle two windows.
    let now = now_secs() / 60 * 60 + 30;

    for i in 1..=10 {
        assert_eq!(a.hit_at(&key, 60, 1, now).await.unwrap(), i);
    }
    for i in 11..=15 {
        assert_eq!(b.hit_at(&key, 60, 1, now).await.unwrap(), i);
    }
    assert_eq!(
        a.hit_at(&key, 60, 0, now + 29).await.unwrap(),
        15,
        "same window"
    );
    assert_eq!(
        b.hit_at(&key, 60, 5, now).await.unwrap(),
        20,
        "n hits at once"
    );
    // The next window starts at zero; the previous one is untouched.
    assert_eq!(a.hit_at(&key, 60, 1, now + 30).await.unwrap(), 1);
    assert_eq!(b.hit_at(&key, 60, 0, now).await.unwrap(), 20);

    // The key expires: window + margin, set on every hit.
    let (redis_key, start) = key.counter(60, now);
    assert_eq!(start, now - 30);
    let ttl: i64 = redis::cmd("TTL")
        .arg(&redis_key)
        .query_async(&mut raw(&server).await)
        .await
        .unwrap();
    assert!((55..=65).contains(&ttl), "TTL {ttl}");
    let (short, _) = key.counter(1, now);
    a.hit_at(&key, 1, 1, now).await.unwrap();
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&short)
        .query_async(&mut raw(&server).await)
        .await
        .unwrap();
    assert!((1..=6_000).contains(&pttl), "PTTL {pttl}");

    // Concurrent hits from both replicas: every count handed out once, the total exact.
    let hot = Key::new("shop/api", "rl:global:hot").unwrap();
    let mut tasks = Vec::new();
    for replica in [a.clone(), b.clone()] {
        for _ in 0..4 {
            let (replica, hot) = (replica.clone(), hot.clone());
            tasks.push(tokio::spawn(async move {
                let mut seen = Vec::new();
                for _ in 0..50 {
                    seen.push(replica.hit_at(&hot, 60, 1, now).await.unwrap());
                }
                seen
            }));
        }
    }
    let mut counts = BTreeSet::new();
    for task in tasks {
        for count in task.await.unwrap() {
            assert!(counts.insert(count), "count {count} handed out twice");
        }
    }
    assert_eq!(counts, (1..=400).collect::<BTreeSet<u64>>());

    // Several counters in one round trip, in order.
    let other = Key::new("shop/api", "rl:per-route:get-user").unwrap();
    let counts = a
        .hit_many_at(&[(&key, 60, 1), (&other, 10, 3), (&hot, 60, 1)], now)
        .await
        .unwrap();
    assert_eq!(counts, vec![21, 3, 401]);
    assert!(a.hit_many_at(&[], now).await.unwrap().is_empty());
    assert!(matches!(
        a.hit_at(&key, 0, 1, now).await,
        Err(Error::InvalidKey(_))
    ));
    // Counted for the caller's metrics: every answered operation of A (10 + 3 + 200 + 1; the
    // empty batch and the refused window never reach Redis).
    let stats = a.stats();
    assert_eq!(
        (stats.ok, stats.timeouts, stats.unavailable, stats.errors),
        (214, 0, 0, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_set_by_one_replica_holds_on_all_until_it_expires() {
    let server = RedisServer::start();
    let cfg = config(&server);
    let (a, b) = (client(&cfg).await, client(&cfg).await);
    let key = Key::new("shop/api", "block:client:5e884898da280471").unwrap();

    assert_eq!(b.blocked(&key).await.unwrap(), None);
    let until = now_ms() + 1_500;
    a.block(&key, until).await.unwrap();
    assert_eq!(b.blocked(&key).await.unwrap(), Some(until));
    assert_eq!(a.blocked(&key).await.unwrap(), Some(until));
    let pttl: i64 = redis::cmd("PTTL")
        .arg(key.block())
        .query_async(&mut raw(&server).await)
        .await
        .unwrap();
    assert!((1..=1_500).contains(&pttl), "PTTL {pttl}");

    // Over once its time has passed, on every replica, and gone from Redis.
    tokio::time::sleep(Duration::from_millis(until.saturating_sub(now_ms()) + 100)).await;
    assert_eq!(b.blocked(&key).await.unwrap(), None);
    let exists: i64 = redis::cmd("EXISTS")
        .arg(key.block())
        .query_async(&mut raw(&server).await)
        .await
        .unwrap();
    assert_eq!(exists, 0);

    // A time in the past blocks nothing; unblock lifts a block at once.
    a.block(&key, now_ms() - 1).await.unwrap();
    assert_eq!(b.blocked(&key).await.unwrap(), None);
    a.block(&key, now_ms() + 60_000).await.unwrap();
    assert!(b.blocked(&key).await.unwrap().is_some());
    b.unblock(&key).await.unwrap();
    assert_eq!(a.blocked(&key).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_operations_fail_fast_and_recover_when_it_returns() {
    let mut server = RedisServer::start();
    // The request path's default bound (50 ms).
    let cfg = RedisConfig::parse(&server.url())
        .unwrap()
        .with_connect_timeout(Duration::from_millis(500));
    assert_eq!(cfg.op_timeout, Duration::from_millis(50));
    let store = client(&cfg).await;
    let key = Key::new("shop/api", "rl:down").unwrap();
    assert_eq!(store.hit(&key, 60, 1).await.unwrap(), 1);

    server.stop();
    for round in 0..20 {
        let started = Instant::now();
        let hit = store.hit(&key, 60, 1).await;
        let blocked = store.blocked(&key).await;
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(1),
            "round {round}: two operations took {took:?}"
        );
        for result in [hit.map(|_| ()), blocked.map(|_| ())] {
            assert!(
                matches!(result, Err(Error::Unavailable(_) | Error::Timeout(_))),
                "round {round}: {result:?}"
            );
        }
    }
    let stats = store.stats();
    assert_eq!(stats.unavailable + stats.timeouts, 40, "{stats:?}");

    // Back on the same port (empty: nothing is persisted): the same client works again.
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    let count = loop {
        match store.hit(&key, 60, 1).await {
            Ok(count) => break count,
            Err(e) => assert!(Instant::now() < deadline, "not back within 15 s: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(count, 1, "a new server, a new counter");
    assert_eq!(store.hit(&key, 60, 1).await.unwrap(), 2);
}

fn count(key: &Key, at_ms: u64, n: u64) -> WindowHit<'_> {
    WindowHit {
        key,
        window_ms: 60_000,
        buckets: 20,
        at_ms,
        add: WindowAdd::Count(n),
    }
}

fn distinct<'a>(key: &'a Key, at_ms: u64, values: &'a [u64]) -> WindowHit<'a> {
    WindowHit {
        add: WindowAdd::Distinct(values),
        ..count(key, at_ms, 0)
    }
}

/// One hit through `window_add_many`: its total.
async fn add(store: &SharedState, hit: WindowHit<'_>) -> u64 {
    let totals = store.window_add_many(&[hit]).await.unwrap();
    assert_eq!(totals.len(), 1);
    totals[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_a_sliding_window_that_slides() {
    let server = RedisServer::start();
    let cfg = config(&server);
    let (a, b) = (client(&cfg).await, client(&cfg).await);
    let key = Key::new("shop/api", "det:stuffing:9f86d081884c7d65").unwrap();
    // 60 s in 20 buckets of 3 s; t0 is the start of a bucket.
    let t0 = now_ms() / 3_000 * 3_000;

    assert_eq!(add(&a, count(&key, t0, 3)).await, 3);
    assert_eq!(add(&b, count(&key, t0 + 1_000, 4)).await, 7, "B sees A's");
    assert_eq!(add(&a, count(&key, t0 + 10_000, 1)).await, 8, "A sees B's");
    // Reading (adding nothing) at the end of the window: still all of them.
    assert_eq!(add(&b, count(&key, t0 + 59_999, 0)).await, 8);
    // One bucket later the first bucket (7 hits) has left the window; the rest stays.
    assert_eq!(add(&b, count(&key, t0 + 60_000, 0)).await, 1);
    assert_eq!(add(&a, count(&key, t0 + 60_000, 2)).await, 3);
    // Past every bucket: nothing.
    assert_eq!(add(&a, count(&key, t0 + 200_000, 0)).await, 0);
    // Hits in the past of the window count where they belong: the first window is unchanged
    // by the later hits (they are in buckets after it).
    assert_eq!(add(&a, count(&key, t0 + 2_999, 0)).await, 7);

    // The current bucket carries the window's expiry (60 s + 5 s margin), set on every add.
    let bucket = key.window_bucket(60_000, 3_000, (t0 + 60_000) / 3_000);
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&bucket)
        .query_async(&mut raw(&server).await)
        .await
        .unwrap();
    assert!((55_000..=65_000).contains(&pttl), "PTTL {pttl}");
    // A read creates nothing.
    let empty = key.window_bucket(60_000, 3_000, (t0 + 200_000) / 3_000);
    let exists: i64 = redis::cmd("EXISTS")
        .arg(&empty)
        .query_async(&mut raw(&server).await)
        .await
        .unwrap();
    assert_eq!(exists, 0);

    // Concurrent adds from both replicas: the last total seen is the exact sum.
    let hot = Key::new("shop/api", "det:hot").unwrap();
    let mut tasks = Vec::new();
    for replica in [a.clone(), b.clone()] {
        for task in 0..4u64 {
            let (replica, hot) = (replica.clone(), hot.clone());
            tasks.push(tokio::spawn(async move {
                let mut last = 0;
                for i in 0..25u64 {
                    // Spread over the window's buckets.
                    let total = add(&replica, count(&hot, t0 + (task * 25 + i) * 500, 1)).await;
                    assert!(total > last, "{total} after {last}");
                    last = total;
                }
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(add(&a, count(&hot, t0 + 59_000, 0)).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_values_are_counted_once_across_buckets_and_replicas() {
    let server = RedisServer::start();
    let cfg = config(&server);
    let (a, b) = (client(&cfg).await, client(&cfg).await);
    let key = Key::new("shop/api", "det:enum:5e884898da280471").unwrap();
    let t0 = now_ms() / 3_000 * 3_000;

    assert_eq!(add(&a, distinct(&key, t0, &[1, 2, 3])).await, 3);
    // B adds 3 again (same bucket) and 4: the union is 1-4.
    assert_eq!(add(&b, distinct(&key, t0 + 500, &[3, 4])).await, 4);
    // A value already in an older bucket, in a new bucket: still once.
    assert_eq!(add(&a, distinct(&key, t0 + 30_000, &[1, 2, 5])).await, 5);
    assert_eq!(add(&b, distinct(&key, t0 + 30_000, &[5, 5, 5])).await, 5);
    assert_eq!(add(&b, distinct(&key, t0 + 59_999, &[])).await, 5);
    // The first bucket leaves the window: 3 and 4 were only there.
    assert_eq!(add(&a, distinct(&key, t0 + 60_000, &[])).await, 3);
    // Stored as 16-hex members of the bucket's set.
    let members: BTreeSet<String> = redis::cmd("SMEMBERS")
        .arg(key.window_bucket(60_000, 3_000, (t0 + 30_000) / 3_000))
        .query_async(&mut raw(&server).await)
        .await
        .unwrap();
    assert_eq!(
        members,
        ["0000000000000001", "0000000000000002", "0000000000000005"]
            .map(str::to_owned)
            .into()
    );

    // Many values from both replicas over several buckets: the union's size, exactly.
    let wide = Key::new("shop/api", "det:enum:wide").unwrap();
    let from_a: Vec<u64> = (0..1_000).collect();
    let from_b: Vec<u64> = (500..1_500).collect();
    assert_eq!(add(&a, distinct(&wide, t0, &from_a)).await, 1_000);
    assert_eq!(add(&b, distinct(&wide, t0 + 3_000, &from_b)).await, 1_500);
    assert_eq!(add(&a, distinct(&wide, t0 + 6_000, &from_a)).await, 1_500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_mixed_hits_is_one_call_with_totals_in_order() {
    let server = RedisServer::start();
    let cfg = config(&server);
    let (a, b) = (client(&cfg).await, client(&cfg).await);
    let t0 = now_ms() / 3_000 * 3_000;
    let stuffing = Key::new("shop/api", "det:stuffing:c1").unwrap();
    let enumeration = Key::new("shop/api", "det:enum:c1").unwrap();
    let other_policy = Key::new("billing/api", "det:stuffing:c1").unwrap();
    let hourly = Key::new("shop/api", "det:hourly:c1").unwrap();
    b.window_add_many(&[count(&stuffing, t0, 10), distinct(&enumeration, t0, &[9])])
        .await
        .unwrap();

    let hits = [
        count(&stuffing, t0 + 1, 2),
        distinct(&enumeration, t0 + 1, &[9, 10, 11]),
        count(&other_policy, t0 + 1, 1),
        WindowHit {
            window_ms: 3_600_000,
            buckets: 60,
            ..count(&hourly, t0 + 1, 7)
        },
        // The same key twice in one batch: the second sees the first.
        count(&stuffing, t0 + 2, 1),
        distinct(&enumeration, t0 + 2, &[12]),
    ];
    let before = a.stats().ok;
    assert_eq!(
        a.window_add_many(&hits).await.unwrap(),
        vec![12, 3, 1, 7, 13, 4]
    );
    assert_eq!(a.stats().ok, before + 1, "one operation");
    // The same key with another window or bucket count is another counter.
    let coarse = WindowHit {
        buckets: 1,
        ..count(&stuffing, t0 + 2, 0)
    };
    assert_eq!(a.window_add_many(&[coarse]).await.unwrap(), vec![0]);
    assert!(a.window_add_many(&[]).await.unwrap().is_empty());

    // Bounds, refused before any round trip and naming the bound.
    let many = vec![count(&stuffing, t0, 1); MAX_BATCH + 1];
    let values: Vec<u64> = (0..1_001).collect();
    let refused = [
        (many.as_slice(), "hits in one call"),
        (
            &[WindowHit {
                window_ms: 999,
                ..count(&stuffing, t0, 1)
            }][..],
            "window",
        ),
        (
            &[WindowHit {
                window_ms: 86_400_001,
                ..count(&stuffing, t0, 1)
            }][..],
            "window",
        ),
        (
            &[WindowHit {
                buckets: 0,
                ..count(&stuffing, t0, 1)
            }][..],
            "buckets",
        ),
        (
            &[WindowHit {
                buckets: 61,
                ..count(&stuffing, t0, 1)
            }][..],
            "buckets",
        ),
        (
            &[distinct(&enumeration, t0, &values)][..],
            "distinct values",
        ),
    ];
    let stats = a.stats();
    for (hits, bound) in refused {
        match a.window_add_many(hits).await {
            Err(Error::InvalidKey(message)) => assert!(message.contains(bound), "{message}"),
            other => panic!("{bound}: {other:?}"),
        }
    }
    assert_eq!(a.stats(), stats, "nothing sent");
    // Nothing of a refused batch was added.
    assert_eq!(
        add(&b, count(&stuffing, t0 + 2, 0)).await,
        13,
        "a refused batch adds nothing"
    );
    assert_eq!(add(&a, count(&stuffing, t0, 0)).await, 13);
    assert_eq!(
        a.window_add_many(&many[..MAX_BATCH]).await.unwrap(),
        (14..14 + MAX_BATCH as u64).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_published_by_one_replica_are_polled_by_all() {
    let server = RedisServer::start();
    let cfg = config(&server);
    let (a, b) = (client(&cfg).await, client(&cfg).await);
    let now = now_ms();
    let stuffing = r#"{"detector":"stuffing","key":"client 9f86d081","until":1}"#;
    let enumeration = r#"{"detector":"enum","key":"client 5e884898","until":2}"#;

    assert!(
        b.published_blocks("shop/api", now)
            .await
            .unwrap()
            .is_empty()
    );
    a.publish_block("shop/api", stuffing, now + 60_000)
        .await
        .unwrap();
    b.publish_block("shop/api", enumeration, now + 30_000)
        .await
        .unwrap();
    let expected = vec![
        (enumeration.to_owned(), now + 30_000),
        (stuffing.to_owned(), now + 60_000),
    ];
    assert_eq!(b.published_blocks("shop/api", now).await.unwrap(), expected);
    assert_eq!(a.published_blocks("shop/api", now).await.unwrap(), expected);
    // Another policy's list is another list.
    assert!(
        a.published_blocks("billing/api", now)
            .await
            .unwrap()
            .is_empty()
    );

    // A later end wins, from either replica; an earlier one changes nothing.
    b.publish_block("shop/api", stuffing, now + 90_000)
        .await
        .unwrap();
    a.publish_block("shop/api", stuffing, now + 10_000)
        .await
        .unwrap();
    assert_eq!(
        a.published_blocks("shop/api", now).await.unwrap(),
        vec![
            (enumeration.to_owned(), now + 30_000),
            (stuffing.to_owned(), now + 90_000),
        ]
    );

    // Once an end has passed, the block is no longer listed, and it is gone from Redis.
    assert_eq!(
        b.published_blocks("shop/api", now + 30_000).await.unwrap(),
        vec![(stuffing.to_owned(), now + 90_000)]
    );
    let list = "apiguard:{shop/api}:blocks";
    let mut conn = raw(&server).await;
    let size: u64 = redis::cmd("ZCARD")
        .arg(list)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(size, 1);
    // The list lives until its latest end plus the margin (5 s).
    let pttl: i64 = redis::cmd("PTTL")
        .arg(list)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!((80_000..=95_000).contains(&pttl), "PTTL {pttl}");

    // Bounded: past MAX_PUBLISHED_BLOCKS, the soonest-ending are dropped.
    let mut fill = redis::cmd("ZADD");
    fill.arg(list);
    for i in 0..MAX_PUBLISHED_BLOCKS as u64 {
        fill.arg(now + 100_000 + i).arg(format!("filler-{i}"));
    }
    let () = fill.query_async(&mut conn).await.unwrap();
    a.publish_block("shop/api", "late", now + 1_000_000)
        .await
        .unwrap();
    // (100,000 records in one answer: a bound for a big read.)
    let patient = client(&cfg.clone().with_op_timeout(Duration::from_secs(10))).await;
    let blocks = patient.published_blocks("shop/api", now).await.unwrap();
    assert_eq!(blocks.len(), MAX_PUBLISHED_BLOCKS);
    // The stuffing block (soonest) and filler-0 went; the newest is there.
    assert_eq!(blocks[0], ("filler-1".to_owned(), now + 100_001));
    assert_eq!(
        blocks.last().unwrap(),
        &("late".to_owned(), now + 1_000_000)
    );

    // Bounds, before any round trip.
    for (policy, record, bound) in [
        ("shop api", "r", "policy"),
        ("shop/{api}", "r", "policy"),
        ("shop/api", "", "record"),
        ("shop/api", &"x".repeat(4_097), "record"),
    ] {
        match a.publish_block(policy, record, now + 1).await {
            Err(Error::InvalidKey(message)) => assert!(message.contains(bound), "{message}"),
            other => panic!("{bound}: {other:?}"),
        }
    }
    assert!(matches!(
        a.published_blocks("", now).await,
        Err(Error::InvalidKey(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_windows_and_block_lists_fail_fast_and_recover() {
    let mut server = RedisServer::start();
    // The request path's default bound (50 ms).
    let cfg = RedisConfig::parse(&server.url())
        .unwrap()
        .with_connect_timeout(Duration::from_millis(500));
    let store = client(&cfg).await;
    let key = Key::new("shop/api", "det:down").unwrap();
    let t0 = now_ms() / 3_000 * 3_000;
    let set_key = Key::new("shop/api", "det:down:set").unwrap();
    let batch = [count(&key, t0, 1), distinct(&set_key, t0, &[1])];
    assert_eq!(store.window_add_many(&batch).await.unwrap(), vec![1, 1]);

    server.stop();
    for round in 0..20 {
        let started = Instant::now();
        let added = store.window_add_many(&batch).await;
        let published = store.publish_block("shop/api", "r", t0 + 60_000).await;
        let polled = store.published_blocks("shop/api", t0).await;
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(1),
            "round {round}: three operations took {took:?}"
        );
        for result in [added.map(|_| ()), published, polled.map(|_| ())] {
            assert!(
                matches!(result, Err(Error::Unavailable(_) | Error::Timeout(_))),
                "round {round}: {result:?}"
            );
        }
    }
    let stats = store.stats();
    assert_eq!(stats.unavailable + stats.timeouts, 60, "{stats:?}");

    server.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    let totals = loop {
        match store.window_add_many(&batch).await {
            Ok(totals) => break totals,
            Err(e) => assert!(Instant::now() < deadline, "not back within 15 s: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(totals, vec![1, 1], "a new server, new windows");
    store
        .publish_block("shop/api", "r", t0 + 60_000)
        .await
        .unwrap();
    assert_eq!(
        store.published_blocks("shop/api", t0).await.unwrap(),
        vec![("r".to_owned(), t0 + 60_000)]
    );
}

#[tokio::test]
async fn connect_is_bounded_when_nothing_listens() {
    let port = crate::support::tools::free_port();
    let cfg = RedisConfig::parse(&format!("redis://127.0.0.1:{port}"))
        .unwrap()
        .with_connect_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let result = SharedState::connect(&cfg).await;
    assert!(
        matches!(result, Err(Error::Unavailable(_) | Error::Timeout(_))),
        "{result:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_password_is_used_and_never_shown() {
    let server = RedisServer::start_with(&["--requirepass", "s3cret-from-a-Secret"]);
    let key = Key::new("shop/api", "rl:auth").unwrap();

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("password");
    std::fs::write(&file, "s3cret-from-a-Secret\n").unwrap();
    let cfg = config(&server).with_password(Password::from_file(&file).unwrap());
    let store = client(&cfg).await;
    assert_eq!(store.hit(&key, 60, 1).await.unwrap(), 1);
    for shown in [format!("{cfg:?}"), cfg.to_string(), format!("{store:?}")] {
        assert!(!shown.contains("s3cret"), "{shown}");
    }
    let in_url = RedisConfig::parse(&format!(
        "redis://:s3cret-from-a-Secret@127.0.0.1:{}",
        server.port
    ))
    .unwrap()
    .with_op_timeout(SLOW_OK);
    assert!(!format!("{in_url:?}").contains("s3cret"));
    assert_eq!(client(&in_url).await.hit(&key, 60, 1).await.unwrap(), 2);

    // Without the password: no counting (refused at connect or at the first command).
    let without = config(&server);
    match SharedState::connect(&without).await {
        Err(e) => assert!(!e.to_string().contains("s3cret"), "{e}"),
        Ok(store) => assert!(store.hit(&key, 60, 1).await.is_err()),
    }
}

/// Debian's redis-server is built with TLS: a `rediss://` URL, a server certificate for
/// `localhost` issued by apiguard's own CA code, the CA given to the client.
#[tokio::test]
async fn rediss_connects_with_a_given_ca() {
    let (server, ca_pem) = RedisServer::start_tls_private_ca();

    let cfg = RedisConfig::parse(&server.url())
        .unwrap()
        .with_ca_pem(ca_pem)
        .with_op_timeout(SLOW_OK)
        .with_connect_timeout(Duration::from_secs(2));
    assert!(cfg.tls);
    let store = client(&cfg).await;
    let key = Key::new("shop/api", "rl:tls").unwrap();
    assert_eq!(store.hit(&key, 60, 2).await.unwrap(), 2);

    // Another CA: the handshake fails, bounded.
    let other =
        CertificateAuthority::generate(OffsetDateTime::now_utc(), DEFAULT_CA_LIFETIME).unwrap();
    let wrong = cfg.clone().with_ca_pem(other.cert_pem());
    assert!(SharedState::connect(&wrong).await.is_err());
    // Plain text to the TLS port: refused, bounded.
    let plain = RedisConfig::parse(&format!("redis://127.0.0.1:{}", server.port))
        .unwrap()
        .with_connect_timeout(Duration::from_millis(500));
    let started = Instant::now();
    match SharedState::connect(&plain).await {
        Err(_) => {}
        Ok(store) => assert!(store.hit(&key, 60, 1).await.is_err()),
    }
    assert!(started.elapsed() < Duration::from_secs(3));
}
