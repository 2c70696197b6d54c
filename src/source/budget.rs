//! Bytes in flight. XREADGROUP counts entries, not bytes, so a backlog of oversized entries
//! (a producer attaching a 400 KB blob to every event) would fill memory a batch at a time:
//! 1,000 entries per read, four batches queued. Two bounds keep it to
//! `source.max_inflight_bytes`:
//!
//! - [`ReadSize`]: each read asks for as many entries as fit a share of the budget at the
//!   size entries had in the reads before, starting small and doubling while they stay
//!   small. Entries of usual size read `batch_size` at a time after a few reads; large ones
//!   come a few at a time. A read can still pass the share when entries suddenly grow.
//! - [`InFlight`]: a batch holds its bytes from the budget until it is applied; reading
//!   waits for room. A batch larger than the whole budget takes all of it.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use prometheus::IntGauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Entries the first read asks for, before sizes are known.
const FIRST_COUNT: usize = 64;
/// The budget is counted in units of this many bytes (a semaphore's permits are `u32`).
const UNIT: u64 = 1 << 10;

/// How many entries the next read asks for.
#[derive(Debug, Clone)]
pub(crate) struct ReadSize {
    count: usize,
    max_count: usize,
    /// Bytes one read should bring at most.
    share: u64,
}

impl ReadSize {
    /// Reads of at most `max_count` entries, each bringing about `share` bytes at most.
    pub fn new(max_count: usize, share: u64) -> Self {
        let max_count = max_count.max(1);
        Self {
            count: FIRST_COUNT.min(max_count),
            max_count,
            share: share.max(1),
        }
    }

    /// A share of `max_inflight_bytes` for each of the `queue_batches` queued batches, the
    /// one being applied and the one being read.
    pub(crate) fn for_budget(
        max_count: usize,
        max_inflight_bytes: u64,
        queue_batches: usize,
    ) -> Self {
        Self::new(max_count, max_inflight_bytes / (queue_batches as u64 + 2))
    }

    pub fn count(&self) -> usize {
        self.count
    }

    /// Adjusts to a read that brought `entries` entries of `bytes` bytes in all: the next
    /// asks for what fits the share at that size, at most twice as many as this one.
    pub(crate) fn observe(&mut self, entries: usize, bytes: u64) {
        if entries == 0 {
            return;
        }
        let per_entry = bytes.div_ceil(entries as u64).max(1);
        let fits = usize::try_from(self.share / per_entry).unwrap_or(usize::MAX);
        self.count = fits
            .min(self.count.saturating_mul(2))
            .clamp(1, self.max_count);
    }
}

/// In-flight bytes that make a spike: once they are all applied, freed memory is given
/// back to the system.
const SPIKE: i64 = 4 << 20;

/// The budget of bytes read and not yet applied.
#[derive(Clone)]
pub(crate) struct InFlight {
    room: Arc<Semaphore>,
    units: u32,
    /// `churnd_source_inflight_bytes`.
    gauge: IntGauge,
    /// The most bytes in flight since memory was last given back.
    peak: Arc<AtomicI64>,
}

impl InFlight {
    pub fn new(max_bytes: u64, gauge: IntGauge) -> Self {
        let units = u32::try_from((max_bytes / UNIT).max(1)).unwrap_or(u32::MAX);
        Self {
            room: Arc::new(Semaphore::new(units as usize)),
            units,
            gauge,
            peak: Arc::new(AtomicI64::new(0)),
        }
    }

    /// Waits until `bytes` fit (all of the budget for a batch larger than it) and holds
    /// them until the returned hold is dropped.
    pub async fn hold(&self, bytes: u64) -> Held {
        let units = u32::try_from(bytes.div_ceil(UNIT))
            .unwrap_or(u32::MAX)
            .clamp(1, self.units);
        let permit = self
            .room
            .clone()
            .acquire_many_owned(units)
            .await
            .expect("the budget's semaphore is never closed");
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        self.gauge.add(bytes);
        self.peak.fetch_max(self.gauge.get(), Ordering::Relaxed);
        Held {
            _permit: permit,
            bytes,
            gauge: self.gauge.clone(),
            peak: self.peak.clone(),
        }
    }
}

/// A batch's bytes, held from the budget until it is dropped (once applied).
#[derive(Debug)]
pub struct Held {
    _permit: OwnedSemaphorePermit,
    bytes: i64,
    gauge: IntGauge,
    peak: Arc<AtomicI64>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.gauge.sub(self.bytes);
        // The last bytes of a spike applied: what it took lies freed in the allocator's
        // arenas (values below the mmap threshold); give it back.
        if self.gauge.get() == 0 && self.peak.load(Ordering::Relaxed) >= SPIKE {
            self.peak.store(0, Ordering::Relaxed);
            release_free_memory();
        }
    }
}

/// Gives memory the allocator holds free back to the system (glibc; elsewhere nothing).
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of the allocator's arenas to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_entries_reach_the_full_batch_in_a_few_reads() {
        let mut size = ReadSize::new(1_000, 8 << 20);
        assert_eq!(size.count(), 64);
        let mut counts = Vec::new();
        for _ in 0..6 {
            let n = size.count();
            size.observe(n, n as u64 * 120);
            counts.push(size.count());
        }
        assert_eq!(counts, [128, 256, 512, 1_000, 1_000, 1_000]);
    }

    #[test]
    fn large_entries_are_read_a_few_at_a_time() {
        let mut size = ReadSize::new(1_000, 8 << 20);
        size.observe(64, 64 * 400_000);
        assert_eq!(size.count(), 20, "8 MiB / 400 kB");
        // Entries far larger than the share: one at a time, never none.
        size.observe(20, 20 * (100 << 20));
        assert_eq!(size.count(), 1);
        // Back to small ones: growing again, doubling.
        size.observe(1, 100);
        assert_eq!(size.count(), 2);
    }

    #[test]
    fn an_empty_read_changes_nothing() {
        let mut size = ReadSize::new(1_000, 1 << 20);
        size.observe(0, 0);
        assert_eq!(size.count(), 64);
        assert_eq!(
            ReadSize::new(10, 1 << 20).count(),
            10,
            "capped by batch_size"
        );
    }

    #[test]
    fn the_share_leaves_room_for_the_queue() {
        let size = ReadSize::for_budget(1_000, 60 << 20, 4);
        assert_eq!(size.share, 10 << 20);
    }

    #[tokio::test]
    async fn holds_wait_for_room_and_count_their_bytes() {
        let gauge = IntGauge::new("test_inflight_bytes", "test").unwrap();
        let budget = InFlight::new(10 * UNIT, gauge.clone());
        let first = budget.hold(6 * UNIT).await;
        assert_eq!(gauge.get(), 6 * UNIT as i64);
        // Larger than the whole budget: takes all of it, once the first is released.
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.hold(50 * UNIT).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(first);
        let all = waiting.await.unwrap();
        assert_eq!(gauge.get(), 50 * UNIT as i64);
        drop(all);
        assert_eq!(gauge.get(), 0);
    }
}
