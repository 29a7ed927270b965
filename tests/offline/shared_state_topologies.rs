//! The shared state store against a real Redis Sentinel and a real Redis Cluster (Debian's
//! redis-server in both modes, `redis-cli --cluster create`): the `redis+sentinel://` and
//! `redis+cluster://` code paths, which the single-server tests do not reach.

use crate::support::redis::{RedisServer, create_cluster};
use apiguard::shared_state::{Key, RedisConfig, SharedState, WindowAdd, WindowHit};
use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A day: the windows of these tests do not roll over while they run.
const DAY: u64 = 86_400;

fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_millis(),
    )
    .expect("ms fit u64")
}

/// Generous bounds: the failover and the cluster's redirections on a loaded 2-core machine.
fn config(url: &str) -> RedisConfig {
    RedisConfig::parse(url)
        .unwrap_or_else(|e| panic!("{url}: {e}"))
        .with_op_timeout(Duration::from_millis(500))
        .with_connect_timeout(Duration::from_secs(2))
}

/// Waits, bounded, until `server`'s `INFO replication` contains `line`.
fn wait_for_replication(server: &RedisServer, line: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let info = server.cli(&["info", "replication"]);
        if info.lines().any(|l| l.trim() == line) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no `{line}` within {within:?} on port {}:\n{info}",
            server.port
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Through a Sentinel the store finds the master; when the master dies and the Sentinel promotes
/// the replica, the store follows (it asks the Sentinel again) and the count goes on from what
/// was replicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_moves_the_store_to_the_promoted_replica() {
    let mut master = RedisServer::start();
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &master.port.to_string()]);
    wait_for_replication(&replica, "master_link_status:up", Duration::from_secs(10));
    let sentinel = RedisServer::start_sentinel("shop", master.port);
    let store = SharedState::connect(&config(&format!(
        "redis+sentinel://127.0.0.1:{}/shop",
        sentinel.port
    )))
    .await
    .expect("connect through the Sentinel");
    let key = Key::new("shop/api", "rl:sentinel").expect("key");
    let second = now_ms() / 1000;
    assert_eq!(store.hit_at(&key, DAY, 5, second).await.expect("hit"), 5);
    // The write is on the replica before the master dies (WAIT: one replica acknowledged).
    assert_eq!(master.cli(&["wait", "1", "5000"]).trim(), "1");

    master.stop();
    let deadline = Instant::now() + Duration::from_secs(40);
    let count = loop {
        match store.hit_at(&key, DAY, 1, second).await {
            Ok(count) => break count,
            Err(e) => assert!(
                Instant::now() < deadline,
                "no answer within 40 s of the master's death: {e}\nsentinel:\n{}",
                sentinel.cli(&["sentinel", "master", "shop"])
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(count, 6, "the count goes on on the promoted replica");
    wait_for_replication(&replica, "role:master", Duration::from_secs(1));
}

/// Through a Cluster of three masters: every operation works for policies whose keys live on
/// different nodes (each policy's keys share one slot: `{POLICY}`), a batch mixing policies
/// returns its totals in order, and the policies spread over all three nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_spreads_policies_over_its_nodes_and_every_operation_works() {
    let nodes: Vec<RedisServer> = (0..3).map(|_| RedisServer::start_cluster_node()).collect();
    create_cluster(&nodes);
    // Two seeds: the client finds the third node itself.
    let store = SharedState::connect(&config(&format!(
        "redis+cluster://127.0.0.1:{},127.0.0.1:{}",
        nodes[0].port, nodes[1].port
    )))
    .await
    .expect("connect to the cluster");

    let second = now_ms() / 1000;
    let policies: Vec<String> = (0..24).map(|i| format!("team-{i}/api")).collect();
    for (i, policy) in policies.iter().enumerate() {
        let key = Key::new(policy, "rl:per-client").expect("key");
        let n = u64::try_from(i).expect("small") + 1;
        assert_eq!(store.hit_at(&key, DAY, n, second).await.expect("hit"), n);
        let until = now_ms() + 60_000;
        store
            .publish_block(policy, &format!("block-{i}"), until)
            .await
            .expect("publish");
        let blocks = store
            .published_blocks(policy, now_ms())
            .await
            .expect("poll");
        assert_eq!(blocks, vec![(format!("block-{i}"), until)], "{policy}");
    }

    // One batch over four policies (four slots, likely three nodes): totals in order.
    let keys: Vec<Key> = policies[..4]
        .iter()
        .map(|p| Key::new(p, "d:stuffing").expect("key"))
        .collect();
    let at_ms = now_ms();
    let hits: Vec<WindowHit<'_>> = keys
        .iter()
        .enumerate()
        .map(|(i, key)| WindowHit {
            key,
            window_ms: 60_000,
            buckets: 20,
            at_ms,
            add: WindowAdd::Count(u64::try_from(i).expect("small") + 1),
        })
        .collect();
    assert_eq!(
        store.window_add_many(&hits).await.expect("batch"),
        vec![1, 2, 3, 4]
    );
    assert_eq!(
        store.window_add_many(&hits).await.expect("batch again"),
        vec![2, 4, 6, 8]
    );

    // Where the keys went: every node holds some policies' keys.
    let holding: BTreeSet<u16> = nodes
        .iter()
        .filter(|n| n.cli(&["dbsize"]).trim().parse::<u64>().unwrap_or(0) > 0)
        .map(|n| n.port)
        .collect();
    assert_eq!(holding.len(), 3, "24 policies over 3 nodes: {holding:?}");
}
