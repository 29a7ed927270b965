//! The sliding window of one key: [`BUCKETS`] buckets of `window / BUCKETS` milliseconds.
//!
//! At time `t` in bucket `i = t / bucket_ms`, the window holds buckets `i - BUCKETS + 1 ..= i`:
//! every event of the last `(BUCKETS - 1) * bucket_ms` milliseconds (95 % of the window), some
//! of those older, and never one older than the window. So a detection never fires early,
//! and always fires when the events fall within 95 % of the window.

use crate::detect::config::BUCKETS;

const SPAN: i64 = BUCKETS as i64;

/// Events per bucket (a count threshold).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Buckets {
    counts: [u32; BUCKETS],
    total: u32,
}

impl Buckets {
    pub(crate) fn new() -> Buckets {
        Buckets {
            counts: [0; BUCKETS],
            total: 0,
        }
    }

    /// Drops the buckets that leave the window as the head moves from `from` to `to`.
    pub(crate) fn advance(&mut self, from: i64, to: i64) {
        let gap = to.saturating_sub(from);
        if gap <= 0 {
            return;
        }
        if gap >= SPAN {
            *self = Buckets::new();
            return;
        }
        for b in from.saturating_add(1)..=to {
            let slot = &mut self.counts[b.rem_euclid(SPAN) as usize];
            self.total = self.total.saturating_sub(*slot);
            *slot = 0;
        }
    }

    /// Counts one event in `bucket` (the caller has advanced the head; `bucket` is in the
    /// window).
    pub(crate) fn add(&mut self, bucket: i64) {
        let slot = &mut self.counts[bucket.rem_euclid(SPAN) as usize];
        *slot = slot.saturating_add(1);
        self.total = self.total.saturating_add(1);
    }

    /// Events in the window.
    pub(crate) fn total(&self) -> u32 {
        self.total
    }
}

/// The distinct values of a path parameter seen in the window: `(value hash, last bucket)`,
/// at most `cap` of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Distinct {
    values: Vec<(u64, i64)>,
}

impl Distinct {
    /// Drops the values last seen before the window of `head`.
    pub(crate) fn advance(&mut self, head: i64) {
        let oldest = head.saturating_sub(SPAN - 1);
        self.values.retain(|(_, b)| *b >= oldest);
    }

    /// Counts `value` in `bucket` (in the window). At `cap` values, a new value replaces the
    /// one seen longest ago.
    pub(crate) fn add(&mut self, value: u64, bucket: i64, cap: usize) {
        if let Some(v) = self.values.iter_mut().find(|(h, _)| *h == value) {
            v.1 = v.1.max(bucket);
            return;
        }
        if self.values.len() >= cap.max(1)
            && let Some(oldest) = self
                .values
                .iter()
                .enumerate()
                .min_by_key(|(_, (_, b))| *b)
                .map(|(k, _)| k)
        {
            self.values.swap_remove(oldest);
        }
        self.values.push((value, bucket));
    }

    /// Distinct values in the window.
    pub(crate) fn total(&self) -> u32 {
        u32::try_from(self.values.len()).unwrap_or(u32::MAX)
    }

    /// Bytes held on the heap.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.values.capacity() * std::mem::size_of::<(u64, i64)>()
    }
}

/// Whether `bucket` is still in the window whose newest bucket is `head`.
pub(crate) fn in_window(bucket: i64, head: i64) -> bool {
    bucket > head.saturating_sub(SPAN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_slide() {
        let mut b = Buckets::new();
        b.add(0);
        b.advance(0, 5);
        b.add(5);
        b.add(5);
        assert_eq!(b.total(), 3);
        b.advance(5, SPAN - 1);
        assert_eq!(b.total(), 3, "bucket 0 is still in the window");
        b.advance(SPAN - 1, SPAN);
        assert_eq!(b.total(), 2, "bucket 0 left");
        b.advance(SPAN, 5 + SPAN);
        assert_eq!(b.total(), 0);
        b.add(5 + SPAN);
        b.advance(5 + SPAN, 1000);
        assert_eq!(b.total(), 0);
    }

    #[test]
    fn distinct_values_are_bounded_and_slide() {
        let mut d = Distinct::default();
        for v in 0..10 {
            d.add(v, v as i64, 4);
        }
        assert_eq!(d.total(), 4);
        d.add(9, 9, 4);
        assert_eq!(d.total(), 4, "a value seen again is not counted twice");
        d.advance(9 + SPAN - 1);
        assert_eq!(d.total(), 1, "only 9 is still in the window");
        assert!(in_window(0, SPAN - 1));
        assert!(!in_window(0, SPAN));
    }
}
