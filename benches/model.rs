//! Benchmarks of the model life cycle's batch commands, on the code `churnd train` and
//! `churnd score` run (without the CSV reading and writing):
//!
//! - `batch/score_1m`: `batch::score` of 1,000,000 customers as of a date (features from 2.5
//!   million synthetic events, scoring with the shipped model and its top three reasons,
//!   population segment thresholds, stage and risk), the work behind `churnd score`.
//! - `train/cdnow`: `train::train` on the bundled CDNOW file (49,086 purchases of 23,570
//!   customers): six cutoffs, the held-out validation with its BG/NBD baseline, and the final
//!   fit, the work behind the documented `churnd train` command.
//!
//! Run with `cargo bench --bench model`; results are described in `benches/README.md`.

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use churnd::batch::{self, Classification};
use churnd::config::Settings;
use churnd::event::EventKind;
use churnd::model::train::{self, TrainOptions};
use churnd::model::Model;
use churnd::transactions::{Transaction, Transactions};

const CUSTOMERS: usize = 1_000_000;
const EVENTS: usize = 2_500_000;
/// 2026-01-01T00:00:00Z: the synthetic events span the year that follows.
const START: u32 = 1_767_225_600;
const DAY: u32 = 86_400;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// 2.5 events per customer over a year (at least one each) in time order: 70 % purchases, 20 % visits, 5 %
/// refunds, 5 % complaints; IDs of 12 to 24 bytes.
fn synthetic_transactions() -> Transactions {
    let mut rng = StdRng::seed_from_u64(3);
    let ids: Vec<Box<str>> = (0..CUSTOMERS)
        .map(|i| {
            let width = 7 + (i.wrapping_mul(0x9E37_79B9) >> 7) % 13;
            format!("cust-{i:0width$}").into()
        })
        .collect();
    let mut rows: Vec<Transaction> = (0..EVENTS)
        .map(|i| {
            let (kind, amount) = match rng.random_range(0..20) {
                0..=13 => (EventKind::Purchase, rng.random_range(5.0..200.0)),
                14..=17 => (EventKind::Visit, 0.0),
                18 => (EventKind::Refund, rng.random_range(5.0..50.0)),
                _ => (EventKind::Complaint, 0.0),
            };
            Transaction {
                customer_id: ids[if i < CUSTOMERS {
                    i
                } else {
                    rng.random_range(0..CUSTOMERS)
                }]
                .clone(),
                kind,
                amount,
                time: START + rng.random_range(0..365 * DAY),
            }
        })
        .collect();
    rows.sort_by_key(|t| t.time);
    Transactions {
        rows,
        bad_rows: Vec::new(),
    }
}

fn batch_scoring(c: &mut Criterion) {
    let transactions = synthetic_transactions();
    let model = Model::load(&root().join("models/cdnow.json")).expect("models/cdnow.json loads");
    let classification = Classification::from(&Settings::default());
    let as_of = START + 366 * DAY;

    let mut group = c.benchmark_group("batch");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(CUSTOMERS as u64));
    group.bench_function("score_1m", |b| {
        b.iter(|| {
            let scores = batch::score(&transactions, as_of, &model, &classification);
            assert_eq!(scores.len(), CUSTOMERS, "every customer is scored");
            black_box(scores)
        })
    });
    group.finish();
}

fn training(c: &mut Criterion) {
    let file = root().join("data/cdnow/transactions_1997-01_to_1997-09.csv");
    let transactions = Transactions::read(&file).expect("the CDNOW file reads");
    let options = TrainOptions {
        source: "transactions_1997-01_to_1997-09.csv".into(),
        name: "bench".into(),
        ..TrainOptions::default()
    };

    let mut group = c.benchmark_group("train");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(60));
    group.bench_function("cdnow", |b| {
        b.iter(|| black_box(train::train(&transactions, &options).expect("training succeeds")))
    });
    group.finish();
}

criterion_group!(benches, batch_scoring, training);
criterion_main!(benches);
