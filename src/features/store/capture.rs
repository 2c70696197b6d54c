//! A point-in-time copy of the customer table, taken a slice at a time while the table keeps
//! changing: copy-on-write at the level of one customer.
//!
//! A snapshot must show every customer as they were at one moment (the stream positions it
//! records), but copying ten million records at once stops event processing for most of a
//! second and doubles the memory the table takes. A capture instead remembers which customers
//! it still has to copy; the first change to one of those saves their record and sparse entry
//! as they were, and the table is copied out in slices between batches. What a capture costs
//! beyond the slices in flight is the saved customers: those changed before their slice was
//! copied.

use std::collections::BTreeMap;

use super::CustomerIdx;

/// Beyond this many saved customers, or half the customers still to copy if that is more,
/// the rest is copied at once: past that point saving costs more memory than copying.
const MIN_SAVED_LIMIT: usize = 4_096;

/// How many customers a capture holds, known when it begins: the encoder sizes the snapshot
/// from it before the first slice arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaptureSize {
    pub customers: u64,
    pub id_bytes: u64,
}

/// Customers copied out of a capture, in store order.
#[derive(Debug, Clone, PartialEq)]
pub struct Captured<T, X = ()> {
    ids: Vec<u8>,
    lens: Vec<u8>,
    records: Vec<T>,
    /// Sparse entries, by position in the slice, ascending.
    extras: Vec<(u32, X)>,
}

impl<T, X> Captured<T, X> {
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Each customer's ID, record and sparse entry.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &T, Option<&X>)> {
        let mut start = 0;
        let mut extras = self.extras.iter().peekable();
        self.lens
            .iter()
            .zip(&self.records)
            .enumerate()
            .map(move |(at, (&len, record))| {
                let bytes = &self.ids[start..start + usize::from(len)];
                start += usize::from(len);
                let extra = extras
                    .next_if(|(position, _)| *position as usize == at)
                    .map(|(_, x)| x);
                // IDs enter the store only as `&str`, so every span holds valid UTF-8.
                (
                    std::str::from_utf8(bytes).unwrap_or_default(),
                    record,
                    extra,
                )
            })
    }
}

/// The store's columns, as a capture reads them.
pub(super) struct Columns<'a, T, X> {
    pub id_bytes: &'a [u8],
    pub id_spans: &'a [u64],
    pub records: &'a [T],
    pub extras: &'a BTreeMap<CustomerIdx, X>,
}

/// The bookkeeping of a capture in progress.
pub(super) struct Capture<T, X> {
    /// The next customer to copy out.
    next: CustomerIdx,
    /// Customers in the table when the capture began; those added since are not part of it.
    end: CustomerIdx,
    /// Record and sparse entry as they were when the capture began, of customers changed
    /// since and not yet copied out.
    saved: BTreeMap<CustomerIdx, (T, Option<X>)>,
    /// Everything not yet handed out, when it had to be copied at once.
    rest: Option<Captured<T, X>>,
}

impl<T: Clone, X: Clone> Capture<T, X> {
    pub(super) fn new(customers: CustomerIdx) -> Self {
        Self {
            next: 0,
            end: customers,
            saved: BTreeMap::new(),
            rest: None,
        }
    }

    /// Called before customer `idx` changes: saves them if the capture still needs them as
    /// they were. `true` when so many are saved that the rest should be copied at once.
    pub(super) fn preserve(&mut self, idx: CustomerIdx, columns: &Columns<'_, T, X>) -> bool {
        if !(self.next..self.end).contains(&idx) {
            return false;
        }
        self.saved.entry(idx).or_insert_with(|| {
            (
                columns.records[idx as usize].clone(),
                columns.extras.get(&idx).cloned(),
            )
        });
        let remaining = (self.end - self.next) as usize;
        self.saved.len() > MIN_SAVED_LIMIT.max(remaining / 2)
    }

    /// Copies out up to `max` customers (all that remain if `max` is `None`), as they were
    /// when the capture began. `None` once every customer was handed out.
    pub(super) fn copy_out(
        &mut self,
        max: Option<usize>,
        columns: &Columns<'_, T, X>,
    ) -> Option<Captured<T, X>> {
        if let Some(rest) = self.rest.take() {
            return Some(rest);
        }
        if self.next == self.end {
            return None;
        }
        let from = self.next as usize;
        let to = max.map_or(self.end as usize, |max| {
            (from + max.max(1)).min(self.end as usize)
        });
        let range = from as CustomerIdx..to as CustomerIdx;
        let mut records = columns.records[from..to].to_vec();
        let mut extras: BTreeMap<u32, X> = columns
            .extras
            .range(range)
            .map(|(&idx, x)| (idx - from as CustomerIdx, x.clone()))
            .collect();
        let later = self.saved.split_off(&(to as CustomerIdx));
        for (idx, (record, extra)) in std::mem::replace(&mut self.saved, later) {
            let at = idx - from as CustomerIdx;
            records[at as usize] = record;
            match extra {
                Some(x) => extras.insert(at, x),
                None => extras.remove(&at),
            };
        }
        // IDs lie back to back in store order, so the slice's IDs are one run of bytes.
        let first = (columns.id_spans[from] >> 8) as usize;
        let last = columns.id_spans[to - 1];
        let after = (last >> 8) as usize + (last & 0xff) as usize;
        self.next = to as CustomerIdx;
        Some(Captured {
            ids: columns.id_bytes[first..after].to_vec(),
            lens: columns.id_spans[from..to]
                .iter()
                .map(|s| (s & 0xff) as u8)
                .collect(),
            records,
            extras: extras.into_iter().collect(),
        })
    }

    /// Copies everything not yet handed out now, so that the table may change wholesale
    /// (compaction, every timer at once) without the capture following it.
    pub(super) fn copy_rest(&mut self, columns: &Columns<'_, T, X>) {
        if self.rest.is_none() {
            self.rest = self.copy_out(None, columns);
        }
    }
}
