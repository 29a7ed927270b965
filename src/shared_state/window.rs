//! Sliding windows shared by replicas: what one hit of [`super::SharedState::window_add_many`]
//! adds, its bounds, and which bucket keys it touches (pure; the Redis side is in the module).
//!
//! A window of `window_ms` is cut into `buckets` buckets of `window_ms / buckets` ms. A hit at
//! `at_ms` goes into bucket `at_ms / bucket_ms`, and its total is over that bucket and the
//! `buckets - 1` before it, as the local engine counts (`src/detect/window.rs`): every hit of
//! the last `(buckets - 1) * bucket_ms`, some older ones of the current bucket's start, never
//! one older than the window.

use super::{EXPIRY_MARGIN_SECS, Error, Key, MAX_WINDOW_SECS};

/// Most buckets in a window.
pub const MAX_BUCKETS: u32 = 60;
/// Shortest window (one second).
pub const MIN_WINDOW_MS: u64 = 1_000;
/// Longest window (one day).
pub const MAX_WINDOW_MS: u64 = MAX_WINDOW_SECS * 1_000;
/// Most distinct values one hit adds.
pub const MAX_DISTINCT_PER_HIT: usize = 1_000;

/// One key's hits of one batch, in one sliding window.
#[derive(Debug, Clone, Copy)]
pub struct WindowHit<'a> {
    /// What is counted.
    pub key: &'a Key,
    /// The window's length, ms (1 s to one day).
    pub window_ms: u64,
    /// How many buckets it is cut into (1 to 60).
    pub buckets: u32,
    /// When the hits happened (Unix ms, the caller's clock): the bucket they go into, and the
    /// end of the window the total is over.
    pub at_ms: u64,
    /// What to add.
    pub add: WindowAdd<'a>,
}

/// What a hit adds to its bucket. Adding nothing (`Count(0)`, `Distinct(&[])`) only reads the
/// window's total.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowAdd<'a> {
    /// Events; the total is their sum over the window.
    Count(u64),
    /// Value hashes (at most [`MAX_DISTINCT_PER_HIT`]); the total is how many distinct ones
    /// the window holds.
    Distinct(&'a [u64]),
}

impl WindowHit<'_> {
    /// The length of a bucket, ms (at least 1).
    pub fn bucket_ms(&self) -> u64 {
        (self.window_ms / u64::from(self.buckets.max(1))).max(1)
    }

    /// The index of the bucket holding `at_ms`.
    pub fn bucket_index(&self) -> u64 {
        self.at_ms / self.bucket_ms()
    }

    /// The Redis keys of the buckets of the window ending at `at_ms`: the current bucket first,
    /// then the older ones (fewer near the epoch).
    pub fn bucket_keys(&self) -> Vec<String> {
        let (bucket_ms, index) = (self.bucket_ms(), self.bucket_index());
        let oldest = index.saturating_sub(u64::from(self.buckets.max(1)) - 1);
        (oldest..=index)
            .rev()
            .map(|i| self.key.window_bucket(self.window_ms, bucket_ms, i))
            .collect()
    }

    /// How long a bucket lives after a hit (ms): the window and a margin, so that it dies by
    /// itself once no window covers it (replicas whose clocks lag a little still find it).
    pub fn expiry_ms(&self) -> u64 {
        self.window_ms + EXPIRY_MARGIN_SECS * 1_000
    }

    /// Refuses a hit outside the bounds, naming the bound.
    pub fn check(&self) -> Result<(), Error> {
        if !(MIN_WINDOW_MS..=MAX_WINDOW_MS).contains(&self.window_ms) {
            return Err(Error::InvalidKey(format!(
                "the window must be {MIN_WINDOW_MS}-{MAX_WINDOW_MS} ms"
            )));
        }
        if !(1..=MAX_BUCKETS).contains(&self.buckets) {
            return Err(Error::InvalidKey(format!(
                "a window must have 1-{MAX_BUCKETS} buckets"
            )));
        }
        if let WindowAdd::Distinct(values) = self.add
            && values.len() > MAX_DISTINCT_PER_HIT
        {
            return Err(Error::InvalidKey(format!(
                "at most {MAX_DISTINCT_PER_HIT} distinct values in one hit"
            )));
        }
        Ok(())
    }
}

/// How a value hash is stored in a bucket's set: 16 lower-case hex digits.
pub fn distinct_member(value: u64) -> String {
    format!("{value:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(key: &Key, window_ms: u64, buckets: u32, at_ms: u64) -> WindowHit<'_> {
        WindowHit {
            key,
            window_ms,
            buckets,
            at_ms,
            add: WindowAdd::Count(1),
        }
    }

    #[test]
    fn a_hit_covers_its_bucket_and_the_ones_before_it() {
        let key = Key::new("shop/api", "det:enum:1").unwrap();
        // 60 s in 20 buckets of 3 s; 1_700_000_001_500 is in bucket 566_666_667.
        let h = hit(&key, 60_000, 20, 1_700_000_001_500);
        assert_eq!(h.bucket_ms(), 3_000);
        assert_eq!(h.bucket_index(), 566_666_667);
        let keys = h.bucket_keys();
        assert_eq!(keys.len(), 20);
        assert_eq!(
            keys[0],
            "apiguard:{shop/api}:w:60000:3000:566666667:det:enum:1"
        );
        assert_eq!(
            keys[19],
            "apiguard:{shop/api}:w:60000:3000:566666648:det:enum:1"
        );
        // The next bucket's window drops the oldest one and adds the new one.
        let next = hit(&key, 60_000, 20, 1_700_000_004_000).bucket_keys();
        assert_eq!(next[0], key.window_bucket(60_000, 3_000, 566_666_668));
        assert_eq!(&next[1..], &keys[..19]);
        // One bucket: the window is one fixed window.
        assert_eq!(hit(&key, 1_000, 1, 2_500).bucket_keys().len(), 1);
        // Near the epoch: only the buckets that exist.
        assert_eq!(hit(&key, 60_000, 20, 4_000).bucket_keys().len(), 2);
        // A bucket outlives its window by the margin.
        assert_eq!(h.expiry_ms(), 65_000);
        // Uneven cuts round the bucket down; never below 1 ms.
        assert_eq!(hit(&key, 1_000, 60, 0).bucket_ms(), 16);
    }

    #[test]
    fn bounds_are_named() {
        let key = Key::new("shop/api", "det:enum:1").unwrap();
        let values = vec![7u64; MAX_DISTINCT_PER_HIT + 1];
        for (h, bound) in [
            (hit(&key, 999, 20, 0), "window"),
            (hit(&key, MAX_WINDOW_MS + 1, 20, 0), "window"),
            (hit(&key, 60_000, 0, 0), "buckets"),
            (hit(&key, 60_000, 61, 0), "buckets"),
            (
                WindowHit {
                    add: WindowAdd::Distinct(&values),
                    ..hit(&key, 60_000, 20, 0)
                },
                "distinct values",
            ),
        ] {
            match h.check() {
                Err(Error::InvalidKey(message)) => assert!(message.contains(bound), "{message}"),
                other => panic!("{h:?}: {other:?}"),
            }
        }
        for h in [
            hit(&key, MIN_WINDOW_MS, 1, 0),
            hit(&key, MAX_WINDOW_MS, MAX_BUCKETS, u64::MAX),
            WindowHit {
                add: WindowAdd::Distinct(&values[..MAX_DISTINCT_PER_HIT]),
                ..hit(&key, 60_000, 20, 0)
            },
        ] {
            assert_eq!(h.check(), Ok(()), "{h:?}");
        }
    }

    #[test]
    fn values_are_stored_as_sixteen_hex_digits() {
        assert_eq!(distinct_member(0), "0000000000000000");
        assert_eq!(distinct_member(0x9f86_d081), "000000009f86d081");
        assert_eq!(distinct_member(u64::MAX), "ffffffffffffffff");
    }
}
