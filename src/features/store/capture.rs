//! A point-in-time copy of the customer table, taken a slice at a time while the table keeps
//! changing: copy-on-write at the level of one record.
//!
//! A snapshot must show every customer as they were at one moment (the stream positions it
//! records), but copying ten million records at once stops event processing for most of a
//! second and doubles the memory the table takes. A capture instead remembers which customers
//! it still has to copy; the first change to one of those saves its record as it was, and the
//! table is copied out in slices between batches. What a capture costs beyond the slices in
//! flight is the records of customers changed before their slice was copied.

use std::collections::BTreeMap;

use super::{id_slice, CustomerIdx};

/// Beyond this many saved records, or half the customers still to copy if that is more, the
/// rest is copied at once: past that point saving costs more memory than copying.
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
pub struct Captured<T> {
    ids: Vec<u8>,
    lens: Vec<u8>,
    records: Vec<T>,
}

impl<T> Captured<T> {
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Each customer's ID and record.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &T)> {
        let mut start = 0;
        self.lens
            .iter()
            .zip(&self.records)
            .map(move |(&len, record)| {
                let bytes = &self.ids[start..start + usize::from(len)];
                start += usize::from(len);
                // IDs enter the store only as `&str`, so every span holds valid UTF-8.
                (std::str::from_utf8(bytes).unwrap_or_default(), record)
            })
    }
}

/// The bookkeeping of a capture in progress.
pub(super) struct Capture<T> {
    /// The next customer to copy out.
    next: CustomerIdx,
    /// Customers in the table when the capture began; those added since are not part of it.
    end: CustomerIdx,
    /// Records as they were when the capture began, of customers changed since and not yet
    /// copied out.
    saved: BTreeMap<CustomerIdx, T>,
    /// Everything not yet handed out, when it had to be copied at once.
    rest: Option<Captured<T>>,
}

impl<T: Clone> Capture<T> {
    pub(super) fn new(customers: CustomerIdx) -> Self {
        Self {
            next: 0,
            end: customers,
            saved: BTreeMap::new(),
            rest: None,
        }
    }

    /// Called before customer `idx` changes: saves its record if the capture still needs it
    /// as it was. `true` when so many are saved that the rest should be copied at once.
    pub(super) fn preserve(&mut self, idx: CustomerIdx, records: &[T]) -> bool {
        if !(self.next..self.end).contains(&idx) {
            return false;
        }
        self.saved
            .entry(idx)
            .or_insert_with(|| records[idx as usize].clone());
        let remaining = (self.end - self.next) as usize;
        self.saved.len() > MIN_SAVED_LIMIT.max(remaining / 2)
    }

    /// Copies out up to `max` customers (all that remain if `max` is `None`), as they were
    /// when the capture began. `None` once every customer was handed out.
    pub(super) fn copy_out(
        &mut self,
        max: Option<usize>,
        id_bytes: &[u8],
        id_spans: &[u64],
        records: &[T],
    ) -> Option<Captured<T>> {
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
        let mut copied = records[from..to].to_vec();
        let later = self.saved.split_off(&(to as CustomerIdx));
        for (idx, record) in std::mem::replace(&mut self.saved, later) {
            copied[idx as usize - from] = record;
        }
        // IDs lie back to back in store order, so the slice's IDs are one run of bytes.
        let first = (id_spans[from] >> 8) as usize;
        let last = id_spans[to - 1];
        let after = (last >> 8) as usize + (last & 0xff) as usize;
        debug_assert_eq!(id_slice(id_bytes, last).len(), after - (last >> 8) as usize);
        self.next = to as CustomerIdx;
        Some(Captured {
            ids: id_bytes[first..after].to_vec(),
            lens: id_spans[from..to]
                .iter()
                .map(|s| (s & 0xff) as u8)
                .collect(),
            records: copied,
        })
    }

    /// Copies everything not yet handed out now, so that the table may change wholesale
    /// (compaction, every timer at once) without the capture following it.
    pub(super) fn copy_rest(&mut self, id_bytes: &[u8], id_spans: &[u64], records: &[T]) {
        if self.rest.is_none() {
            self.rest = self.copy_out(None, id_bytes, id_spans, records);
        }
    }
}
