//! When to look at a customer again without an event: a min-heap of due times.
//!
//! Churn is the absence of events, so a silent customer must be re-scored as time passes,
//! without scanning everyone on each tick. Each customer carries a [`Timer`] (when it is due,
//! and the due time of its one live heap entry); the heap holds `(due, customer)` pairs.
//! Moving a due time later costs nothing (the entry is pushed on when it surfaces), moving it
//! earlier pushes a new entry and leaves the old one stale. So the heap stays about one entry
//! per customer, and a sweep costs O(log n) per customer that is actually due.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::store::CustomerIdx;
use crate::time::UnixSeconds;

/// Per-customer timer bookkeeping, 8 bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timer {
    /// When the customer should next be looked at; 0 = not scheduled.
    due: UnixSeconds,
    /// Due time of the customer's live heap entry; 0 = none.
    queued: UnixSeconds,
}

impl Timer {
    /// A timer due at `due` that sits in no queue (restored from a snapshot): schedule it.
    pub(crate) fn unqueued(due: Option<UnixSeconds>) -> Self {
        Self {
            due: due.map_or(0, |t| t.max(1)),
            queued: 0,
        }
    }

    pub fn due(&self) -> Option<UnixSeconds> {
        (self.due != 0).then_some(self.due)
    }
}

/// Gives the queue access to the timers it orders.
pub(crate) trait TimerSlots {
    fn timer_mut(&mut self, idx: CustomerIdx) -> &mut Timer;
}

#[derive(Default)]
pub(crate) struct TimerQueue {
    heap: BinaryHeap<Reverse<(UnixSeconds, CustomerIdx)>>,
}

impl TimerQueue {
    /// Sets the customer's next due time (`None` cancels).
    pub(crate) fn schedule(
        &mut self,
        idx: CustomerIdx,
        timer: &mut Timer,
        due: Option<UnixSeconds>,
    ) {
        // 0 means "not scheduled", so a due time of 0 is taken as 1.
        timer.due = due.map_or(0, |t| t.max(1));
        if timer.due != 0 && (timer.queued == 0 || timer.due < timer.queued) {
            self.heap.push(Reverse((timer.due, idx)));
            timer.queued = timer.due;
        }
    }

    /// The next customer due at or before `now`, with the time it was due, clearing its timer.
    pub(crate) fn pop_due(
        &mut self,
        now: UnixSeconds,
        slots: &mut impl TimerSlots,
    ) -> Option<(CustomerIdx, UnixSeconds)> {
        while let Some(&Reverse((at, idx))) = self.heap.peek() {
            if at > now {
                return None;
            }
            self.heap.pop();
            let timer = slots.timer_mut(idx);
            if timer.queued != at {
                continue; // superseded by an earlier entry
            }
            timer.queued = 0;
            if timer.due == 0 {
                continue; // cancelled
            }
            if timer.due > now {
                // Moved later since this entry was queued: queue it at its real due time.
                self.heap.push(Reverse((timer.due, idx)));
                timer.queued = timer.due;
                continue;
            }
            let due = timer.due;
            timer.due = 0;
            return Some((idx, due));
        }
        None
    }

    /// Heap entries, live and stale.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// The heap's entries, in bytes (superseded ones included: they stay until popped).
    pub fn heap_bytes(&self) -> usize {
        self.heap.len() * std::mem::size_of::<Reverse<(UnixSeconds, CustomerIdx)>>()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Slots(Vec<Timer>);
    impl TimerSlots for Slots {
        fn timer_mut(&mut self, idx: CustomerIdx) -> &mut Timer {
            &mut self.0[idx as usize]
        }
    }

    fn drain(q: &mut TimerQueue, now: u32, slots: &mut Slots) -> Vec<(u32, u32)> {
        std::iter::from_fn(|| q.pop_due(now, slots)).collect()
    }

    #[test]
    fn fires_in_due_order_only_when_due() {
        let mut slots = Slots(vec![Timer::default(); 3]);
        let mut q = TimerQueue::default();
        q.schedule(0, &mut slots.0[0], Some(30));
        q.schedule(1, &mut slots.0[1], Some(10));
        q.schedule(2, &mut slots.0[2], Some(20));
        assert_eq!(drain(&mut q, 5, &mut slots), vec![]);
        assert_eq!(drain(&mut q, 25, &mut slots), vec![(1, 10), (2, 20)]);
        assert_eq!(drain(&mut q, 100, &mut slots), vec![(0, 30)]);
        assert!(q.is_empty());
    }

    #[test]
    fn moving_later_keeps_one_entry_and_fires_once() {
        let mut slots = Slots(vec![Timer::default()]);
        let mut q = TimerQueue::default();
        for due in [10, 20, 30, 40] {
            q.schedule(0, &mut slots.0[0], Some(due));
        }
        assert_eq!(q.len(), 1);
        assert_eq!(drain(&mut q, 35, &mut slots), vec![]);
        assert_eq!(drain(&mut q, 40, &mut slots), vec![(0, 40)]);
        assert_eq!(drain(&mut q, 1000, &mut slots), vec![]);
    }

    #[test]
    fn moving_earlier_fires_at_the_earlier_time_once() {
        let mut slots = Slots(vec![Timer::default()]);
        let mut q = TimerQueue::default();
        q.schedule(0, &mut slots.0[0], Some(50));
        q.schedule(0, &mut slots.0[0], Some(20));
        assert_eq!(drain(&mut q, 30, &mut slots), vec![(0, 20)]);
        assert_eq!(drain(&mut q, 100, &mut slots), vec![]);
    }

    #[test]
    fn cancelled_timers_do_not_fire() {
        let mut slots = Slots(vec![Timer::default()]);
        let mut q = TimerQueue::default();
        q.schedule(0, &mut slots.0[0], Some(50));
        q.schedule(0, &mut slots.0[0], None);
        assert_eq!(drain(&mut q, 100, &mut slots), vec![]);
        assert_eq!(slots.0[0].due(), None);
    }

    #[test]
    fn rescheduling_after_firing_works() {
        let mut slots = Slots(vec![Timer::default()]);
        let mut q = TimerQueue::default();
        q.schedule(0, &mut slots.0[0], Some(10));
        assert_eq!(drain(&mut q, 10, &mut slots), vec![(0, 10)]);
        q.schedule(0, &mut slots.0[0], Some(15));
        assert_eq!(drain(&mut q, 20, &mut slots), vec![(0, 15)]);
    }
}
