//! Benchmarks of a snapshot's life cycle with 1,000,000 customers, step by step:
//!
//! - `snapshot/pause_slice`: `Engine::snapshot_slice`, one step of a snapshot in progress as
//!   the engine's task takes it between batches (`state::SLICE_CUSTOMERS` customers copied
//!   out): the only time event processing stops for a snapshot.
//! - `snapshot/capture_whole`: every step of one snapshot, `Engine::begin_snapshot` to the
//!   last slice: the CPU a snapshot costs the engine's task, spread over its steps.
//! - `snapshot/encode`: `state::codec::encode` of the whole state at once (the daemon's
//!   writer encodes the same bytes slice by slice, on its own thread).
//! - `snapshot/write_fsync`: `SnapshotDir::write` of the encoded bytes (temporary file,
//!   fsync, rename, directory fsync, pruning to the newest three) into a temporary directory.
//! - `snapshot/decode`: `state::codec::decode` of the bytes, as on start (checksum, every
//!   field checked, the customer index rebuilt).
//! - `snapshot/restore`: `Engine::restore` from a decoded state (timers re-queued,
//!   population counts rebuilt).
//! - `snapshot/write_snapshot`: `state::write_snapshot`, the whole life of a snapshot on one
//!   thread: capture, encoding slice by slice and writing with fsync.
//!
//! The engine is built outside the timing, through `Engine::apply_batch` as in the daemon:
//! 1,000,000 customers with IDs of 12 to 24 bytes, each with one to four events (2.5 on
//! average; the first a purchase, then 70 % purchases, 20 % visits, 5 % refunds, 5 %
//! complaints) spread over the year before the benchmark's "now", so every customer is
//! scored, classified and has a timer. Setup prints the snapshot's size once.
//!
//! Run with `cargo bench --bench snapshot`; results are described in `benches/README.md`.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, SamplingMode};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redis::Value;

use churnd::config::{ClockMode, Settings};
use churnd::engine::{Engine, EngineSettings};
use churnd::event::EntryId;
use churnd::metrics::Metrics;
use churnd::model::Model;
use churnd::source::batch::{Batch, Entry};
use churnd::state::{self, codec, SnapshotDir, SLICE_CUSTOMERS};

const CUSTOMERS: usize = 1_000_000;
/// Customers whose history goes into one batch.
const CUSTOMERS_PER_BATCH: usize = 1_000;
/// Stream time at the start of the benchmarks: 2026-11-01T00:00:00Z.
const START_MS: u64 = 1_793_491_200_000;
const YEAR_MS: u64 = 365 * 86_400_000;
/// Snapshots kept by the write benchmark, as in the shipped configuration.
const KEEP: usize = 3;

/// The `i`th customer ID: `cust-` and a zero-padded number, 12 to 24 bytes (as in the other
/// benchmarks).
fn customer_id(i: usize) -> String {
    let width = 7 + (i.wrapping_mul(0x9E37_79B9) >> 7) % 13;
    format!("cust-{i:0width$}")
}

fn streams() -> Vec<String> {
    vec!["churn:events".to_string()]
}

fn model() -> Arc<Model> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/cdnow.json");
    Arc::new(Model::load(&path).expect("models/cdnow.json loads"))
}

fn settings() -> EngineSettings {
    let mut settings = Settings::default();
    settings.clock.mode = ClockMode::Event;
    EngineSettings::from(&settings)
}

/// Hands out stream entries with increasing IDs (the engine skips an ID it has applied).
struct Entries {
    seq: u64,
}

impl Entries {
    fn next(&mut self, fields: &[(&str, &str)]) -> Entry {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        self.seq += 1;
        Entry {
            stream: 0,
            id: EntryId {
                ms: START_MS,
                seq: self.seq,
            },
            values: Some(
                fields
                    .iter()
                    .flat_map(|(k, v)| [bulk(k), bulk(v)])
                    .collect(),
            ),
        }
    }
}

/// One customer's history: one to four events in time order over the year before
/// `START_MS`, the first a purchase.
fn history(id: &str, rng: &mut StdRng, entries: &mut Entries, out: &mut Vec<Entry>) {
    let n = rng.random_range(1..=4);
    let mut times: Vec<u64> = (0..n)
        .map(|_| START_MS - rng.random_range(1..YEAR_MS))
        .collect();
    times.sort_unstable();
    for (k, ts) in times.into_iter().enumerate() {
        let kind = match (k, rng.random_range(0..20)) {
            (0, _) | (_, 0..=13) => "purchase",
            (_, 14..=17) => "visit",
            (_, 18) => "refund",
            _ => "complaint",
        };
        let ts = ts.to_string();
        let amount = format!("{:.2}", rng.random_range(5.0..200.0));
        let mut fields = vec![("customer_id", id), ("type", kind), ("ts", ts.as_str())];
        if matches!(kind, "purchase" | "refund") {
            fields.push(("amount", &amount));
        }
        out.push(entries.next(&fields));
    }
}

/// An engine under the event-time clock that knows `CUSTOMERS` customers with the history
/// above, fed through `Engine::apply_batch`.
fn engine() -> Engine {
    let mut engine = Engine::new(settings(), model(), Metrics::new().engine);
    let mut entries = Entries { seq: 0 };
    // One event at the start first, so the history below does not move the watermark.
    let start = entries.next(&[("customer_id", "x"), ("type", "visit")]);
    engine.apply_batch(Batch::new(vec![start]), START_MS);
    let mut rng = StdRng::seed_from_u64(4);
    let mut events = 0;
    for first in (0..CUSTOMERS).step_by(CUSTOMERS_PER_BATCH) {
        let mut batch = Vec::with_capacity(4 * CUSTOMERS_PER_BATCH);
        for i in first..(first + CUSTOMERS_PER_BATCH).min(CUSTOMERS) {
            history(&customer_id(i), &mut rng, &mut entries, &mut batch);
        }
        events += batch.len();
        let fx = engine.apply_batch(Batch::new(batch), START_MS);
        assert!(fx.dead_letters.is_empty(), "every generated entry is valid");
    }
    assert_eq!(engine.customers(), CUSTOMERS + 1, "every customer is known");
    eprintln!("snapshot bench: {CUSTOMERS} customers built from {events} events");
    engine
}

fn snapshot(c: &mut Criterion) {
    let mut engine = engine();
    let streams = streams();
    let state = engine.snapshot();
    let bytes = codec::encode(&state, &streams, START_MS);
    let customers = state.customers.len();
    eprintln!(
        "snapshot bench: snapshot of {customers} customers: {} bytes, {:.1} bytes per customer; \
         the store holds {} bytes (IDs, spans, records, index)",
        bytes.len(),
        bytes.len() as f64 / customers as f64,
        state.customers.heap_bytes(),
    );
    let decoded = codec::decode(&bytes, &streams).expect("the snapshot decodes");
    assert_eq!(decoded.state.customers.len(), customers);

    let mut group = c.benchmark_group("snapshot");
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(5));

    // A slice is dropped on the writer's thread, so dropping is left out of the pause.
    group.bench_function("pause_slice", |b| {
        b.iter_with_large_drop(|| match engine.snapshot_slice(SLICE_CUSTOMERS) {
            Some(slice) => slice,
            None => {
                engine.begin_snapshot();
                engine
                    .snapshot_slice(SLICE_CUSTOMERS)
                    .expect("a new capture has customers")
            }
        })
    });
    engine.abort_snapshot();
    group.bench_function("capture_whole", |b| {
        b.iter(|| {
            black_box(engine.begin_snapshot());
            let mut customers = 0;
            while let Some(slice) = engine.snapshot_slice(SLICE_CUSTOMERS) {
                customers += slice.len();
            }
            customers
        })
    });
    group.bench_function("encode", |b| {
        b.iter_with_large_drop(|| codec::encode(black_box(&state), &streams, START_MS))
    });

    let dir = tempfile::tempdir().expect("a temporary directory");
    let snapshots = SnapshotDir::open(dir.path(), KEEP).expect("the directory opens");
    let mut created_ms = START_MS;
    group.bench_function("write_fsync", |b| {
        b.iter(|| {
            created_ms += 1;
            snapshots
                .write(black_box(&bytes), created_ms)
                .expect("the snapshot is written")
        })
    });

    group.bench_function("decode", |b| {
        b.iter_with_large_drop(|| {
            codec::decode(black_box(&bytes), &streams).expect("the snapshot decodes")
        })
    });
    let model = model();
    group.bench_function("restore", |b| {
        b.iter_batched(
            || (settings(), Metrics::new().engine, decoded.state.clone()),
            |(settings, metrics, state)| Engine::restore(settings, model.clone(), metrics, state),
            BatchSize::PerIteration,
        )
    });
    group.bench_function("write_snapshot", |b| {
        b.iter(|| {
            created_ms += 1;
            state::write_snapshot(&mut engine, &snapshots, &streams, created_ms)
                .expect("the snapshot is written")
        })
    });
    group.finish();
}

criterion_group!(benches, snapshot);
criterion_main!(benches);
