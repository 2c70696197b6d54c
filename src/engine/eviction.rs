//! Keeping the table under `state.max_customers`: the least recently active go first.

use crate::time::{self, UnixSeconds};

use super::Engine;

/// Customers forgotten at once when the table is full, in percent: evicting in bulk keeps
/// the O(customers) cost of choosing them rare.
const EVICTION_PERCENT: usize = 1;

impl Engine {
    /// Makes room under `max_customers`: forgets the least recently active customers (those
    /// churned longest ago), [`EVICTION_PERCENT`] of the table at once, and those beyond the
    /// bound (who arrived while a snapshot was copied out).
    pub(super) fn evict(&mut self) {
        let n = self.store.len();
        let target =
            (n * EVICTION_PERCENT / 100).max(1) + n.saturating_sub(self.settings.max_customers);
        let mut last: Vec<UnixSeconds> = self
            .store
            .iter()
            .map(|(_, c)| c.features.last_event())
            .collect();
        let cutoff = *last.select_nth_unstable(target - 1).1;
        // Everyone before the cutoff goes, and as many at it as make up the target.
        let mut at_cutoff = target - last.iter().filter(|&&t| t < cutoff).count();
        let population = &mut self.population;
        let evicted = self.store.retain(|c| {
            let t = c.features.last_event();
            let go = t < cutoff || (t == cutoff && at_cutoff > 0);
            if t == cutoff && go {
                at_cutoff -= 1;
            }
            if go {
                population.count(c, -1);
            }
            !go
        });
        self.rebuild_timers();
        self.count_profiles();
        self.metrics.customers_evicted.inc_by(evicted as u64);
        tracing::info!(
            evicted,
            before = n,
            max_customers = self.settings.max_customers,
            last_active_before = %time::rfc3339(cutoff),
            "customer table full: forgot the least recently active"
        );
    }
}
