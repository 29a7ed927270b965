//! The Redis keys:
//!
//! - `apiguard:{POLICY}:c:WINDOW:START:NAME`: a fixed-window counter (a string, the count);
//! - `apiguard:{POLICY}:b:NAME`: a block (a string, its end in Unix ms);
//! - `apiguard:{POLICY}:w:WINDOW_MS:BUCKET_MS:INDEX:NAME`: one bucket of a sliding window
//!   ([`Key::window_bucket`], [`super::SharedState::window_add_many`]): a string (the bucket's
//!   count) for a count, a set of 16-hex value hashes for distinct values. `WINDOW_MS` is the
//!   window and `BUCKET_MS` a bucket's length (window / buckets), both in milliseconds;
//!   `INDEX` is the bucket's number since the Unix epoch (`at_ms / BUCKET_MS`). A bucket lives
//!   the window plus a margin (`PEXPIRE`), so it dies by itself once no window covers it;
//! - `apiguard:{POLICY}:blocks`: the policy's published blocks ([`block_list`],
//!   [`super::SharedState::publish_block`]): a sorted set, the caller's record of each block
//!   scored by its end (Unix ms).
//!
//! `{POLICY}` (the braces are written) is a Redis Cluster hash tag: every key of one policy
//! hashes to one slot, so a request's counters ([`super::SharedState::hit_many`]) go to one
//! node in one pipeline. The cost: one policy's keys cannot spread over several nodes (one
//! policy's load is one node's; policies spread).
//!
//! `NAME` is what the caller counts or blocks, already hashed by the caller when it derives
//! from an API key, a token or a claim (the store never sees raw credentials). `WINDOW` is the
//! window's length in seconds and `START` the Unix second it starts at, so that windows of
//! one counter never share a key and limits with different windows on one name never collide.

use super::Error;
use std::fmt;

/// Upper bound of a policy's length (`namespace/name` of a Kubernetes object).
const MAX_POLICY: usize = 317;
/// Upper bound of a name's length.
const MAX_NAME: usize = 512;

/// What a counter or a block is about: a policy and a name within it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Key {
    policy: String,
    name: String,
}

impl Key {
    /// A key of policy `policy` (`namespace/name`), counting or blocking `name` (e.g.
    /// `rl:per-client:9f86d081884c7d65`: the limit and a hash of the client). Printable ASCII
    /// without spaces; no braces in either (they would move the Cluster hash tag).
    pub fn new(policy: &str, name: &str) -> Result<Key, Error> {
        check_policy(policy)?;
        if !valid(name, MAX_NAME) {
            return Err(Error::InvalidKey(
                "the name must be 1-512 printable ASCII characters, no spaces or braces".into(),
            ));
        }
        Ok(Key {
            policy: policy.to_owned(),
            name: name.to_owned(),
        })
    }

    /// The policy.
    pub fn policy(&self) -> &str {
        &self.policy
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The Redis key of this key's counter in the window of `window_secs` seconds that holds
    /// `now_unix_secs`, and that window's start.
    pub fn counter(&self, window_secs: u64, now_unix_secs: u64) -> (String, u64) {
        let window = window_secs.max(1);
        let start = now_unix_secs - now_unix_secs % window;
        (
            format!(
                "apiguard:{{{}}}:c:{window}:{start}:{}",
                self.policy, self.name
            ),
            start,
        )
    }

    /// The Redis key of this key's block.
    pub fn block(&self) -> String {
        format!("apiguard:{{{}}}:b:{}", self.policy, self.name)
    }

    /// The Redis key of bucket `index` (`at_ms / bucket_ms`) of this key's sliding window of
    /// `window_ms` milliseconds cut in buckets of `bucket_ms`.
    pub fn window_bucket(&self, window_ms: u64, bucket_ms: u64, index: u64) -> String {
        format!(
            "apiguard:{{{}}}:w:{window_ms}:{bucket_ms}:{index}:{}",
            self.policy, self.name
        )
    }
}

/// The Redis key of `policy`'s published blocks (a sorted set: record → end, Unix ms).
pub fn block_list(policy: &str) -> Result<String, Error> {
    check_policy(policy)?;
    Ok(format!("apiguard:{{{policy}}}:blocks"))
}

/// Printable ASCII, no spaces or braces, 1 to `max` bytes.
fn valid(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'{' && b != b'}')
}

fn check_policy(policy: &str) -> Result<(), Error> {
    if valid(policy, MAX_POLICY) {
        Ok(())
    } else {
        Err(Error::InvalidKey(
            "the policy must be 1-317 printable ASCII characters, no spaces or braces".into(),
        ))
    }
}

/// Shows the policy only: names are hashes, not worth a log line.
impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("policy", &self.policy)
            .field("name_len", &self.name.len())
            .finish()
    }
}

/// The Redis Cluster hash slot of a key (CRC16/XMODEM of its hash tag, mod 16384), as Redis
/// computes it: for tests and docs.
pub fn hash_slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tagged = bytes.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &bytes[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16_xmodem(tagged.unwrap_or(bytes)) % 16384
}

fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_keys_carry_the_window_and_its_start() {
        let key = Key::new("shop/api", "rl:per-client:9f86d081").unwrap();
        assert_eq!(
            key.counter(60, 1_700_000_039),
            (
                "apiguard:{shop/api}:c:60:1699999980:rl:per-client:9f86d081".to_owned(),
                1_699_999_980
            )
        );
        // The next second of the same window: the same key; the next window: another.
        assert_eq!(
            key.counter(60, 1_700_000_039).0,
            key.counter(60, 1_700_000_000).0
        );
        assert_ne!(
            key.counter(60, 1_700_000_040).0,
            key.counter(60, 1_700_000_039).0
        );
        // Another window length on the same name: another key.
        assert_ne!(
            key.counter(1, 1_699_999_980).0,
            key.counter(60, 1_699_999_980).0
        );
        assert_eq!(key.block(), "apiguard:{shop/api}:b:rl:per-client:9f86d081");
    }

    #[test]
    fn a_policys_keys_share_one_cluster_slot() {
        let a = Key::new("shop/api", "a").unwrap();
        let b = Key::new("shop/api", "bbbbbbbb").unwrap();
        let slot = hash_slot(&a.block());
        assert_eq!(slot, hash_slot(&a.counter(1, 5).0));
        assert_eq!(slot, hash_slot(&b.counter(3600, 5).0));
        assert_eq!(slot, hash_slot(&b.window_bucket(60_000, 3_000, 7)));
        assert_eq!(slot, hash_slot(&block_list("shop/api").unwrap()));
        assert_eq!(slot, hash_slot("shop/api"));
        // The reference values of the Cluster specification.
        assert_eq!(crc16_xmodem(b"123456789"), 0x31C3);
        assert_eq!(hash_slot("foo"), 12182);
        assert_eq!(hash_slot("{user1000}.following"), hash_slot("user1000"));
    }

    #[test]
    fn rejects_keys_that_would_break_the_hash_tag_or_leak_whitespace() {
        for (policy, name) in [
            ("", "n"),
            ("p", ""),
            ("p{x}", "n"),
            ("p", "a}b"),
            ("p", "has space"),
            ("p", "new\nline"),
            ("p", "é"),
        ] {
            assert!(Key::new(policy, name).is_err(), "{policy:?} {name:?}");
        }
        assert!(Key::new("p", &"x".repeat(513)).is_err());
        assert!(Key::new("p", &"x".repeat(512)).is_ok());
    }

    #[test]
    fn window_buckets_and_the_block_list_have_their_own_keys() {
        let key = Key::new("shop/api", "det:stuffing:9f86d081").unwrap();
        assert_eq!(
            key.window_bucket(60_000, 3_000, 566_666_679),
            "apiguard:{shop/api}:w:60000:3000:566666679:det:stuffing:9f86d081"
        );
        // Another window or bucket length on the same name and index: another key.
        assert_ne!(
            key.window_bucket(60_000, 3_000, 1),
            key.window_bucket(30_000, 3_000, 1)
        );
        assert_ne!(
            key.window_bucket(60_000, 3_000, 1),
            key.window_bucket(60_000, 1_000, 1)
        );
        assert_eq!(
            block_list("shop/api").unwrap(),
            "apiguard:{shop/api}:blocks"
        );
        // No name can make a bucket or a block key collide with the block list.
        assert_ne!(key.block(), block_list("shop/api").unwrap());
        for policy in ["", "a{b", "has space", &"p".repeat(318)] {
            assert!(
                matches!(block_list(policy), Err(Error::InvalidKey(_))),
                "{policy:?}"
            );
        }
    }

    #[test]
    fn debug_does_not_print_the_name() {
        let key = Key::new("shop/api", "secret-hash").unwrap();
        assert!(!format!("{key:?}").contains("secret-hash"));
    }
}
