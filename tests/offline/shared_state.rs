//! The shared state store (src/shared_state) against a real redis-server (`tests/tools.sh
//! redis`): two clients stand for two replicas of a gateway.

use crate::support::redis::{RedisServer, Tls};
use apiguard::identity::{
    CertificateAuthority, DEFAULT_CA_LIFETIME, LeafRequest, SpiffeId, issue_leaf,
};
use apiguard::shared_state::{Error, Key, Password, RedisConfig, SharedState};
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
    let now = OffsetDateTime::now_utc();
    let ca = CertificateAuthority::generate(now, DEFAULT_CA_LIFETIME).unwrap();
    let mut request =
        LeafRequest::new(SpiffeId::new("cluster.local", "apiguard", "redis").unwrap());
    request.dns_names = vec!["localhost".into()];
    let leaf = issue_leaf(&ca, &request, now).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tls = Tls {
        cert: dir.path().join("tls.crt"),
        key: dir.path().join("tls.key"),
        ca: dir.path().join("ca.crt"),
    };
    std::fs::write(&tls.cert, &leaf.cert_pem).unwrap();
    std::fs::write(&tls.key, &leaf.key_pem).unwrap();
    std::fs::write(&tls.ca, ca.cert_pem()).unwrap();
    let server = RedisServer::start_tls(&tls);

    let cfg = RedisConfig::parse(&server.url())
        .unwrap()
        .with_ca_pem(ca.cert_pem())
        .with_op_timeout(SLOW_OK)
        .with_connect_timeout(Duration::from_secs(2));
    assert!(cfg.tls);
    let store = client(&cfg).await;
    let key = Key::new("shop/api", "rl:tls").unwrap();
    assert_eq!(store.hit(&key, 60, 2).await.unwrap(), 2);

    // Another CA: the handshake fails, bounded.
    let other = CertificateAuthority::generate(now, DEFAULT_CA_LIFETIME).unwrap();
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
