//! The in-memory customer table: customer ID → dense index → record.
//!
//! Built for millions of customers in little memory: IDs live back to back in one byte arena
//! (no allocation per customer), the hash index stores only 4-byte indices (hashbrown's
//! `HashTable`, hashing the ID from the arena), and records sit in one `Vec`. A dense `u32`
//! index is also what timers and other side tables refer to. What only some customers have
//! (a profile, feedback) sits beside the records in a sparse column ([`CustomerStore::extra`]),
//! so that the others pay nothing for it.
//!
//! A snapshot copies the table out a slice at a time while it keeps changing ([`capture`]):
//! every change goes through [`CustomerStore::get_mut`] or the few wholesale operations,
//! which keep the capture's picture of the table as it was.

mod capture;

use std::collections::BTreeMap;

use hashbrown::HashTable;
use xxhash_rust::xxh3::xxh3_64_with_seed;

use capture::Capture;
pub use capture::{CaptureSize, Captured};

/// A capture in progress beside the columns it copies from.
type CaptureAndColumns<'a, T, X> = (&'a mut Capture<T, X>, capture::Columns<'a, T, X>);

/// Index of a customer in the store, stable for the store's lifetime.
pub(crate) type CustomerIdx = u32;

pub struct CustomerStore<T, X = ()> {
    index: HashTable<CustomerIdx>,
    /// Seed of the index hash, random per process so crafted IDs cannot force collisions.
    seed: u64,
    /// All IDs concatenated.
    id_bytes: Vec<u8>,
    /// Per customer: start of its ID in `id_bytes` (high 56 bits) and its length (low 8 bits).
    id_spans: Vec<u64>,
    records: Vec<T>,
    /// The sparse column: by index, for the customers that have one.
    extras: BTreeMap<CustomerIdx, X>,
    /// The snapshot being copied out, if any.
    capture: Option<Capture<T, X>>,
    /// Counts changes (every mutable access, a new customer, a wholesale change): an equal
    /// count means an unchanged table, so an unchanged state need not be snapshotted again.
    changes: u64,
}

/// A copy of the table as it is now (a capture in progress is not copied).
impl<T: Clone, X: Clone> Clone for CustomerStore<T, X> {
    fn clone(&self) -> Self {
        Self {
            index: self.index.clone(),
            seed: self.seed,
            id_bytes: self.id_bytes.clone(),
            id_spans: self.id_spans.clone(),
            records: self.records.clone(),
            extras: self.extras.clone(),
            capture: None,
            changes: self.changes,
        }
    }
}

/// The bytes of the ID a span points at.
fn id_slice(id_bytes: &[u8], span: u64) -> &[u8] {
    let (start, len) = ((span >> 8) as usize, (span & 0xff) as usize);
    &id_bytes[start..start + len]
}

/// The index hash of customer `idx`, for moving index entries when the table grows.
fn rehash(id_bytes: &[u8], id_spans: &[u64], seed: u64, idx: CustomerIdx) -> u64 {
    xxh3_64_with_seed(id_slice(id_bytes, id_spans[idx as usize]), seed)
}

impl<T: Default + Clone, X: Default + Clone> Default for CustomerStore<T, X> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Default + Clone, X: Default + Clone> CustomerStore<T, X> {
    pub fn new() -> Self {
        Self {
            index: HashTable::new(),
            seed: rand::random(),
            id_bytes: Vec::new(),
            id_spans: Vec::new(),
            records: Vec::new(),
            extras: BTreeMap::new(),
            capture: None,
            changes: 0,
        }
    }

    /// Room for `customers` more customers with `id_bytes` bytes of IDs in all.
    pub fn reserve(&mut self, customers: usize, id_bytes: usize) {
        self.id_bytes.reserve(id_bytes);
        self.id_spans.reserve(customers);
        self.records.reserve(customers);
        let (seed, ids, spans) = (self.seed, &self.id_bytes, &self.id_spans);
        self.index
            .reserve(customers, |&i| rehash(ids, spans, seed, i));
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    fn hash(&self, id: &str) -> u64 {
        xxh3_64_with_seed(id.as_bytes(), self.seed)
    }

    /// The customer's ID. Panics only on an index this store never handed out.
    pub fn id(&self, idx: CustomerIdx) -> &str {
        // IDs enter only as `&str` (see `insert`), so every span holds valid UTF-8.
        std::str::from_utf8(id_slice(&self.id_bytes, self.id_spans[idx as usize]))
            .unwrap_or_default()
    }

    /// Whether `idx` holds `id`: the bytes compared as they are (no UTF-8 check of the
    /// stored ID on the lookup path).
    fn holds(&self, idx: CustomerIdx, id: &str) -> bool {
        id_slice(&self.id_bytes, self.id_spans[idx as usize]) == id.as_bytes()
    }

    pub fn find(&self, id: &str) -> Option<CustomerIdx> {
        let hash = self.hash(id);
        self.index.find(hash, |&idx| self.holds(idx, id)).copied()
    }

    /// The customer's index, adding a default record for a new ID. The flag says whether the
    /// customer is new. IDs are at most 255 bytes (the event parser allows 128).
    pub fn find_or_insert(&mut self, id: &str) -> (CustomerIdx, bool) {
        debug_assert!(id.len() <= 255, "customer IDs are validated to 128 bytes");
        let hash = self.hash(id);
        if let Some(&idx) = self.index.find(hash, |&idx| self.holds(idx, id)) {
            return (idx, false);
        }
        let idx = CustomerIdx::try_from(self.records.len())
            .expect("more than 4 billion customers in one store");
        let span = ((self.id_bytes.len() as u64) << 8) | id.len().min(255) as u64;
        self.id_bytes.extend_from_slice(id.as_bytes());
        self.id_spans.push(span);
        self.records.push(T::default());
        self.changes += 1;
        let (seed, ids, spans) = (self.seed, &self.id_bytes, &self.id_spans);
        self.index
            .insert_unique(hash, idx, |&i| rehash(ids, spans, seed, i));
        (idx, true)
    }

    pub fn get(&self, idx: CustomerIdx) -> &T {
        &self.records[idx as usize]
    }

    /// The customer's record, to change. A capture in progress keeps the record as it was.
    pub(crate) fn get_mut(&mut self, idx: CustomerIdx) -> &mut T {
        self.preserve(idx);
        &mut self.records[idx as usize]
    }

    /// The customer's entry in the sparse column, if they have one.
    pub fn extra(&self, idx: CustomerIdx) -> Option<&X> {
        self.extras.get(&idx)
    }

    /// The customer's entry in the sparse column, to change, made (the default) if they had
    /// none. A capture in progress keeps the entry as it was.
    pub(crate) fn extra_mut(&mut self, idx: CustomerIdx) -> &mut X {
        self.preserve(idx);
        self.extras.entry(idx).or_default()
    }

    /// Drops the customer's entry in the sparse column.
    pub(crate) fn remove_extra(&mut self, idx: CustomerIdx) {
        if self.extras.contains_key(&idx) {
            self.preserve(idx);
            self.extras.remove(&idx);
        }
    }

    /// Every entry of the sparse column with its customer's index.
    pub(crate) fn extras(&self) -> impl Iterator<Item = (CustomerIdx, &X)> {
        self.extras.iter().map(|(&idx, x)| (idx, x))
    }

    /// Customers with an entry in the sparse column.
    pub fn extras_len(&self) -> usize {
        self.extras.len()
    }

    /// How many changes the table has seen: equal counts, equal contents (the count may
    /// also move when a mutable access changed nothing, never the other way round).
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// Before customer `idx` changes: counts the change, and a capture in progress keeps
    /// what it still needs.
    fn preserve(&mut self, idx: CustomerIdx) {
        self.changes += 1;
        if let Some((capture, columns)) = self.capture_and_columns() {
            if capture.preserve(idx, &columns) {
                capture.copy_rest(&columns);
            }
        }
    }

    /// The capture in progress and the columns it copies from.
    fn capture_and_columns(&mut self) -> Option<CaptureAndColumns<'_, T, X>> {
        let capture = self.capture.as_mut()?;
        let columns = capture::Columns {
            id_bytes: &self.id_bytes,
            id_spans: &self.id_spans,
            records: &self.records,
            extras: &self.extras,
        };
        Some((capture, columns))
    }

    /// Every record with its index, to change; a capture in progress copies what it still
    /// needs first (the rare wholesale changes: a new model, a restore).
    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (CustomerIdx, &mut T)> {
        self.settle_capture();
        self.records
            .iter_mut()
            .enumerate()
            .map(|(i, r)| (i as CustomerIdx, r))
    }

    /// Starts a capture of every customer in the table now, replacing any capture in
    /// progress. The table keeps changing; [`Self::capture_next`] hands out the customers as
    /// they are at this moment.
    pub(crate) fn begin_capture(&mut self) -> CaptureSize {
        let customers = CustomerIdx::try_from(self.records.len())
            .expect("customer indices are u32 (see find_or_insert)");
        self.capture = Some(Capture::new(customers));
        CaptureSize {
            customers: u64::from(customers),
            id_bytes: self.id_bytes.len() as u64,
        }
    }

    /// The next `max` customers of the capture in progress, as they were when it began;
    /// `None` once they were all handed out, which ends the capture.
    pub(crate) fn capture_next(&mut self, max: usize) -> Option<Captured<T, X>> {
        let (capture, columns) = self.capture_and_columns()?;
        let slice = capture.copy_out(Some(max), &columns);
        if slice.is_none() {
            self.capture = None;
        }
        slice
    }

    /// Whether a capture is in progress (begun and not yet handed out to its end).
    pub(crate) fn is_capturing(&self) -> bool {
        self.capture.is_some()
    }

    /// Drops the capture in progress, if any.
    pub(crate) fn abort_capture(&mut self) {
        self.capture = None;
    }

    /// Before a wholesale change: counts the change, and a capture in progress copies
    /// everything it has not handed out yet, and no longer follows the table.
    fn settle_capture(&mut self) {
        self.changes += 1;
        if let Some((capture, columns)) = self.capture_and_columns() {
            capture.copy_rest(&columns);
        }
    }

    /// Keeps only the customers `keep` accepts, in their order, compacting in place (no
    /// second copy of the table). Indices change: whatever refers to them must be rebuilt.
    /// Returns how many were removed. O(customers).
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) -> usize {
        self.settle_capture();
        let before = self.records.len();
        let (mut write, mut byte_write) = (0usize, 0usize);
        let mut extras = std::mem::take(&mut self.extras);
        for read in 0..before {
            if !keep(&self.records[read]) {
                extras.remove(&(read as CustomerIdx));
                continue;
            }
            if let Some(extra) = extras.remove(&(read as CustomerIdx)) {
                self.extras.insert(write as CustomerIdx, extra);
            }
            let span = self.id_spans[read];
            let (start, len) = ((span >> 8) as usize, (span & 0xff) as usize);
            self.id_bytes.copy_within(start..start + len, byte_write);
            self.id_spans[write] = ((byte_write as u64) << 8) | len as u64;
            self.records.swap(write, read);
            write += 1;
            byte_write += len;
        }
        self.records.truncate(write);
        self.id_spans.truncate(write);
        self.id_bytes.truncate(byte_write);
        self.index.clear();
        let (seed, ids, spans) = (self.seed, &self.id_bytes, &self.id_spans);
        for idx in 0..write as CustomerIdx {
            let hash = rehash(ids, spans, seed, idx);
            self.index
                .insert_unique(hash, idx, |&i| rehash(ids, spans, seed, i));
        }
        before - write
    }

    /// Every customer with its index, in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (CustomerIdx, &T)> {
        self.records
            .iter()
            .enumerate()
            .map(|(i, r)| (i as CustomerIdx, r))
    }

    /// An estimate of the memory the table really occupies, for the memory gauge: the
    /// records, IDs and ID spans in use (lengths, not capacities: the room a `Vec` reserved
    /// for growth is untouched and takes no resident memory until customers arrive), the
    /// hash index's whole allocation (its control bytes are all written, and its slots are
    /// spread over every page), and the sparse column's keys and values (not the B-tree's
    /// node overhead, nor the shared profiles and boxed signals they point to). Counting
    /// capacities made the gauge exceed the whole process's resident memory.
    pub fn heap_bytes(&self) -> usize {
        self.id_bytes.len()
            + self.id_spans.len() * std::mem::size_of::<u64>()
            + self.records.len() * std::mem::size_of::<T>()
            + self.index.allocation_size()
            + self.extras.len() * (std::mem::size_of::<CustomerIdx>() + std::mem::size_of::<X>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_map_to_stable_indices() {
        let mut store: CustomerStore<u32> = CustomerStore::new();
        let (a, new_a) = store.find_or_insert("alice");
        let (b, new_b) = store.find_or_insert("bob");
        let (a2, new_a2) = store.find_or_insert("alice");
        assert!(new_a && new_b && !new_a2);
        assert_eq!(a, a2);
        assert_ne!(a, b);
        assert_eq!(store.id(b), "bob");
        assert_eq!(store.find("bob"), Some(b));
        assert_eq!(store.find("carol"), None);
        *store.get_mut(a) += 5;
        assert_eq!(*store.get(a), 5);
        assert_eq!(store.len(), 2);
    }

    #[test]
    fn every_change_is_counted_and_reads_are_not() {
        let mut store: CustomerStore<u32, u8> = CustomerStore::new();
        let mut last = store.changes();
        let mut changed = |store: &CustomerStore<u32, u8>, what: &str| {
            assert!(store.changes() > last, "{what} is not counted");
            last = store.changes();
        };
        let (a, _) = store.find_or_insert("a");
        changed(&store, "a new customer");
        *store.get_mut(a) = 1;
        changed(&store, "get_mut");
        *store.extra_mut(a) = 2;
        changed(&store, "extra_mut");
        store.remove_extra(a);
        changed(&store, "remove_extra");
        store.iter_mut().for_each(|(_, r)| *r += 1);
        changed(&store, "iter_mut");
        store.retain(|_| true);
        changed(&store, "retain");
        // Reads, lookups of known customers and a snapshot's capture change nothing.
        store.find_or_insert("a");
        store.find("a");
        store.get(a);
        store.extra(a);
        store.begin_capture();
        while store.capture_next(10).is_some() {}
        assert_eq!(store.changes(), last);
    }

    #[test]
    fn the_memory_estimate_counts_what_is_in_use_not_room_for_growth() {
        let mut store: CustomerStore<[u64; 5], u64> = CustomerStore::new();
        for i in 0..1_000 {
            store.find_or_insert(&format!("c-{i:05}"));
        }
        *store.extra_mut(7) = 1;
        let in_use = 1_000 * (40 + 8 + 7) + (4 + 8);
        assert_eq!(store.heap_bytes(), in_use + store.index.allocation_size());
        // Room for a million more: the records and IDs take nothing until they arrive.
        store.reserve(1_000_000, 10_000_000);
        assert_eq!(store.heap_bytes(), in_use + store.index.allocation_size());
    }

    #[test]
    fn retain_compacts_and_keeps_lookups_right() {
        let mut store: CustomerStore<u32> = CustomerStore::new();
        for i in 0..1_000u32 {
            let (idx, _) = store.find_or_insert(&format!("c-{i}{}", "x".repeat(i as usize % 7)));
            *store.get_mut(idx) = i;
        }
        let removed = store.retain(|&v| v % 3 != 0);
        assert_eq!(removed, 334);
        assert_eq!(store.len(), 666);
        for i in 0..1_000u32 {
            let id = format!("c-{i}{}", "x".repeat(i as usize % 7));
            match store.find(&id) {
                Some(idx) => {
                    assert_ne!(i % 3, 0);
                    assert_eq!(*store.get(idx), i);
                    assert_eq!(store.id(idx), id);
                }
                None => assert_eq!(i % 3, 0, "{id} lost"),
            }
        }
        let (_, new) = store.find_or_insert("after");
        assert!(new);
        assert_eq!(store.len(), 667);
    }

    #[test]
    fn survives_growth_with_many_ids() {
        let mut store: CustomerStore<u8> = CustomerStore::new();
        for i in 0..50_000 {
            store.find_or_insert(&format!("customer-{i:08}"));
        }
        for i in (0..50_000).step_by(997) {
            let id = format!("customer-{i:08}");
            let idx = store.find(&id).unwrap();
            assert_eq!(store.id(idx), id);
        }
        assert_eq!(store.len(), 50_000);
        let unicode = "клиент-№1";
        let (idx, _) = store.find_or_insert(unicode);
        assert_eq!(store.id(idx), unicode);
    }

    /// Every customer of a finished capture, as (ID, record).
    fn drain(store: &mut CustomerStore<u32>, max: usize) -> Vec<(String, u32)> {
        std::iter::from_fn(|| store.capture_next(max))
            .flat_map(|slice| {
                slice
                    .iter()
                    .map(|(id, &r, _)| (id.to_string(), r))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn contents(store: &CustomerStore<u32>) -> Vec<(String, u32)> {
        store
            .iter()
            .map(|(idx, &r)| (store.id(idx).to_string(), r))
            .collect()
    }

    #[test]
    fn a_capture_shows_the_table_as_it_was_while_it_changes() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut store: CustomerStore<u32> = CustomerStore::new();
        for i in 0..5_000u32 {
            let (idx, _) = store.find_or_insert(&format!("c-{i}{}", "y".repeat(i as usize % 11)));
            *store.get_mut(idx) = i;
        }
        for round in 0..20 {
            let before = contents(&store);
            let size = store.begin_capture();
            assert_eq!(size.customers, before.len() as u64);
            assert_eq!(
                size.id_bytes,
                before.iter().map(|(id, _)| id.len() as u64).sum::<u64>()
            );
            let mut seen = Vec::new();
            loop {
                // Changes and new customers between slices, as batches come between them.
                for _ in 0..rng.random_range(0..400) {
                    let n = store.len() as u32;
                    if rng.random_bool(0.1) {
                        store.find_or_insert(&format!("new-{round}-{}", rng.random::<u32>()));
                    } else {
                        *store.get_mut(rng.random_range(0..n)) += 1;
                    }
                }
                let Some(slice) = store.capture_next(rng.random_range(1..700)) else {
                    break;
                };
                seen.extend(slice.iter().map(|(id, &r, _)| (id.to_string(), r)));
            }
            assert!(!store.is_capturing());
            assert_eq!(seen, before, "round {round}");
        }
    }

    #[test]
    fn wholesale_changes_during_a_capture_leave_it_intact() {
        let mut store: CustomerStore<u32> = CustomerStore::new();
        for i in 0..10_000u32 {
            let (idx, _) = store.find_or_insert(&format!("customer-{i}"));
            *store.get_mut(idx) = i;
        }
        let before = contents(&store);

        store.begin_capture();
        let mut seen: Vec<(String, u32)> = store
            .capture_next(1_000)
            .unwrap()
            .iter()
            .map(|(id, &r, _)| (id.to_string(), r))
            .collect();
        assert_eq!(store.retain(|&r| r % 2 == 0), 5_000);
        for (_, r) in store.iter_mut() {
            *r += 1;
        }
        seen.extend(drain(&mut store, 1_000));
        assert_eq!(seen, before, "compaction after the first slice");

        // So many changes that saving them would cost more than copying the rest.
        let before = contents(&store);
        store.begin_capture();
        for idx in 0..store.len() as CustomerIdx {
            *store.get_mut(idx) = 0;
        }
        assert_eq!(drain(&mut store, 100), before, "every record changed");

        // An empty table and an aborted capture.
        let mut empty: CustomerStore<u32> = CustomerStore::new();
        assert_eq!(empty.begin_capture().customers, 0);
        assert!(empty.capture_next(10).is_none());
        assert!(!empty.is_capturing());
        store.begin_capture();
        store.abort_capture();
        assert!(store.capture_next(10).is_none());
    }
}
