//! Micro-benchmarks of churnd's per-event hot path, one operation at a time, then the whole
//! engine per event.
//!
//! - `parse_event/*`: a stream entry's fields (bulk strings, as a Redis reply delivers them)
//!   to a validated event; a good purchase, and an entry rejected for its amount.
//! - `features/*`: one purchase applied to an existing customer's rolling state; the model's
//!   feature vector at `now`.
//! - `model/*`: the shipped model (`models/cdnow.json`) scoring one vector, alone and with
//!   its top three reasons; `model/score_without_derived`, the same model without the input
//!   it derives from BG/NBD at each scoring (as a format 2 file), for that input's cost.
//! - `classify/*`: lifecycle stage, RFM segment, risk band.
//! - `decide/*`: the playbook's decision for a customer who gets no task (the common case),
//!   and the control-group hash; `decide/value_estimates`, the five value fields of a repeat
//!   buyer, worked out for every win-back candidate decided (held back or not) and when the
//!   API asks; `decide/playbook_held_back`, a win-back candidate the budget holds back, as
//!   most are once budgets bind.
//! - `engine/apply_batch`: `Engine::apply_batch` on batches of 1,000 entries for customers
//!   drawn uniformly from 1,000,000 already known (each bought once in the past year);
//!   60 % purchases, 30 % visits, 5 % refunds, 5 % complaints; event-time clock, stream time
//!   advancing 1 ms per entry. Reported per event; batches are built outside the timing.
//!   `engine/apply_batch_without_derived`: the same under the format 2 model, for what the
//!   derived input costs the whole hot path.
//! - `store/*`: `CustomerStore::find_or_insert` with 1,000,000 customers: an existing ID in
//!   random order, and a new ID (amortised growth while the store holds 1M to 2M).
//!
//! Run with `cargo bench --bench hot_path` (add `-- <filter>` for a subset). Results are
//! described in `benches/README.md`.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use redis::Value;

use churnd::classify::{RiskBands, StageBounds};
use churnd::config::{ClockMode, SegmentSettings, Settings};
use churnd::decide::{
    default_rules, Assessment, Budgets, Contact, Playbook, Scored, Targeting, TasksSettings,
    WinbackSettings, WinbackState,
};
use churnd::engine::{Engine, EngineSettings};
use churnd::event::{parse_event, EntryId, Event, EventKind, EventLimits};
use churnd::features::store::CustomerStore;
use churnd::features::CustomerFeatures;
use churnd::metrics::Metrics;
use churnd::model::derived::DERIVED_NAMES;
use churnd::model::{Model, ModelFile, MODEL_FORMAT_V2};
use churnd::source::batch::{Batch, Entry};

const CUSTOMERS: usize = 1_000_000;
const BATCH: usize = 1_000;
/// Stream time at the start of the benchmarks: 2026-11-01T00:00:00Z.
const START_MS: u64 = 1_793_491_200_000;
const NOW: u32 = (START_MS / 1000) as u32;
const DAY: u32 = 86_400;
const LIMITS: EventLimits = EventLimits {
    max_future_skew_ms: 86_400_000,
    min_ts_ms: 100_000_000_000,
    max_profile_value_bytes: 64,
};

/// The `i`th customer ID: `cust-` and a zero-padded number, 12 to 24 bytes.
fn customer_id(i: usize) -> String {
    let width = 7 + (i.wrapping_mul(0x9E37_79B9) >> 7) % 13;
    format!("cust-{i:0width$}")
}

fn customer_ids(n: usize) -> Vec<String> {
    (0..n).map(customer_id).collect()
}

/// A stream entry as the source hands it over: names and values as bulk strings.
fn entry(ms: u64, fields: &[(&str, &str)]) -> Entry {
    let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
    Entry {
        stream: 0,
        id: EntryId { ms, seq: 0 },
        values: Some(
            fields
                .iter()
                .flat_map(|(k, v)| [bulk(k), bulk(v)])
                .collect(),
        ),
    }
}

fn purchase(customer_id: &str, time: u32, amount: f64) -> Event<'_> {
    Event::new(customer_id, EventKind::Purchase, amount, time)
}

/// A repeat buyer: three purchases and a visit over the last 200 days.
fn existing_customer() -> CustomerFeatures {
    let mut f = CustomerFeatures::default();
    for (days_ago, amount) in [(200, 40.0), (120, 25.5), (40, 60.0)] {
        f.apply(&purchase("c", NOW - days_ago * DAY, amount));
    }
    f.apply(&Event {
        kind: EventKind::Visit,
        amount: 0.0,
        ..purchase("c", NOW - 10 * DAY, 0.0)
    });
    f
}

fn model() -> Model {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/cdnow.json");
    Model::load(&path).expect("models/cdnow.json loads")
}

/// The shipped model as a format 2 file: its derived input dropped, everything else kept.
fn model_without_derived() -> Model {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/cdnow.json");
    let text = std::fs::read_to_string(&path).expect("models/cdnow.json reads");
    let mut file: ModelFile = serde_json::from_str(&text).expect("models/cdnow.json parses");
    file.format = MODEL_FORMAT_V2.into();
    file.features
        .retain(|f| !DERIVED_NAMES.contains(&f.name.as_str()));
    Model::from_file(&file).expect("the format 2 model is valid")
}

fn parsing(c: &mut Criterion) {
    let ts = START_MS.to_string();
    let good = entry(
        START_MS,
        &[
            ("customer_id", "cust-00012345"),
            ("type", "purchase"),
            ("amount", "34.90"),
            ("ts", &ts),
        ],
    );
    let bad = entry(
        START_MS,
        &[
            ("customer_id", "cust-00012345"),
            ("type", "purchase"),
            ("amount", "34,90"),
        ],
    );
    assert!(parse_event(good.fields(), good.id.ms, &LIMITS).is_ok());
    assert!(parse_event(bad.fields(), bad.id.ms, &LIMITS).is_err());
    for (name, e) in [("purchase", &good), ("rejected", &bad)] {
        c.bench_function(&format!("parse_event/{name}"), |b| {
            b.iter(|| parse_event(black_box(e).fields(), e.id.ms, &LIMITS))
        });
    }
}

fn scoring(c: &mut Criterion) {
    let features = existing_customer();
    let event = purchase("c", NOW, 34.9);
    c.bench_function("features/apply_purchase", |b| {
        b.iter(|| {
            let mut f = black_box(features);
            f.apply(black_box(&event));
            f
        })
    });
    c.bench_function("features/vector", |b| {
        b.iter(|| black_box(&features).vector(black_box(NOW)))
    });

    let model = model();
    let x = features.vector(NOW).expect("a buyer has a vector");
    c.bench_function("model/score", |b| b.iter(|| model.score(black_box(&x))));
    c.bench_function("model/score_reasons3", |b| {
        b.iter(|| model.score(black_box(&x)).reasons(3))
    });
    // The same coefficients without the derived input (a format 2 file): what
    // `bgnbd_churn_logit`, worked out at every scoring, costs.
    let plain = model_without_derived();
    c.bench_function("model/score_without_derived", |b| {
        b.iter(|| plain.score(black_box(&x)))
    });

    let stages = StageBounds::default();
    let purchases = features.first_purchase().zip(features.last_purchase());
    let thresholds = SegmentSettings::default().fixed();
    let rfm = features.rfm(NOW).expect("a buyer has RFM");
    let bands = RiskBands::default();
    let p = model.score(&x).probability;
    c.bench_function("classify/stage", |b| {
        b.iter(|| stages.stage(black_box(purchases), black_box(NOW)))
    });
    c.bench_function("classify/segment", |b| {
        b.iter(|| thresholds.segment(black_box(&rfm)))
    });
    c.bench_function("classify/risk", |b| b.iter(|| bands.risk(black_box(p))));

    // The customer bought yesterday: no task whatever the probability (silence too short),
    // and no care occasion due.
    let just_after = features.last_purchase().expect("a buyer") + DAY;
    let playbook = Playbook::new(
        &WinbackSettings::default(),
        &TasksSettings::default(),
        &default_rules(),
    );
    let version: Arc<str> = model.version().into();
    let score = model.score(&x);
    let scored = Scored {
        probability: p,
        risk: bands.risk(p),
        segment: thresholds.segment(&rfm),
        monetary_365d: rfm.monetary_365d,
        score: &score,
    };
    let lifecycle_stage = stages.stage(purchases, just_after);
    let assessment = |id: &'static str| Assessment {
        customer_id: id,
        now: just_after,
        stage: lifecycle_stage,
        features: &features,
        scored: Some(scored),
        profile: None,
        feedback: None,
        coupons: None,
        // The serving model's value part: read only when a task is raised.
        value: model.value(),
    };
    let (mut winback, mut contact) = (WinbackState::default(), Contact::default());
    let id = "cust-00012345";
    let mut tasks = Vec::new();
    let mut budgets = Budgets::new(&WinbackSettings::default().budgets);
    let mut targeting = Targeting::default();
    playbook.decide(
        &assessment(id),
        (&mut winback, &mut contact),
        None,
        &version,
        (&mut budgets, &mut targeting, &mut tasks),
    );
    assert!(tasks.is_empty(), "{tasks:?}");
    c.bench_function("decide/playbook_no_task", |b| {
        b.iter(|| {
            playbook.decide(
                &assessment(black_box(id)),
                (&mut winback, &mut contact),
                None,
                &version,
                (&mut budgets, &mut targeting, &mut tasks),
            )
        })
    });
    c.bench_function("decide/group", |b| b.iter(|| playbook.group(black_box(id))));
    // What a raised task (or the API) adds: the value estimates of a repeat buyer.
    c.bench_function("decide/value_estimates", |b| {
        b.iter(|| black_box(assessment(black_box(id))).value_estimates())
    });
    held_back(c, &model, &playbook, &features);
}

/// `decide/playbook_held_back`: a win-back candidate the budget holds back, as most are in a
/// base larger than the budgets are sized for (the engine bench's million customers against
/// the shipped budgets for 20,000): each of their events decides them again, value at stake
/// and budget bar included. The budgets saw a day of 50,000 candidates before, priorities
/// spread evenly on a log scale from 1 to 10,000.
fn held_back(c: &mut Criterion, model: &Model, playbook: &Playbook, features: &CustomerFeatures) {
    let settings = WinbackSettings::default();
    let mut budgets = Budgets::new(&settings.budgets);
    let mut rng = StdRng::seed_from_u64(3);
    let silent = features.last_purchase().expect("a buyer") + 200 * DAY;
    let yesterday = silent - DAY;
    for i in 0..50_000 {
        let slot = i % settings.budgets.len();
        let priority = 10f64.powf(rng.random_range(0.0..4.0));
        budgets.admit(slot, priority, yesterday + i as u32 % DAY);
    }
    budgets.settle(false, false);
    let x = features.vector(silent).expect("a buyer has inputs");
    let score = model.score(&x);
    let rfm = features.rfm(silent).expect("a buyer has RFM");
    let scored = Scored {
        probability: score.probability,
        risk: RiskBands::default().risk(score.probability),
        segment: SegmentSettings::default().fixed().segment(&rfm),
        monetary_365d: rfm.monetary_365d,
        score: &score,
    };
    let purchases = features.first_purchase().zip(features.last_purchase());
    let a = Assessment {
        customer_id: "cust-00012345",
        now: silent,
        stage: StageBounds::default().stage(purchases, silent),
        features,
        scored: Some(scored),
        profile: None,
        feedback: None,
        coupons: None,
        value: model.value(),
    };
    let version: Arc<str> = model.version().into();
    let mut targeting = Targeting::default();
    let mut tasks = Vec::new();
    let mut decide = |budgets: &mut Budgets| {
        let (mut winback, mut contact) = (WinbackState::default(), Contact::default());
        let next = playbook.decide(
            black_box(&a),
            (&mut winback, &mut contact),
            None,
            &version,
            (budgets, &mut targeting, &mut tasks),
        );
        budgets.settle(false, false);
        (next, tasks.len())
    };
    assert_eq!(decide(&mut budgets), (Some(silent + DAY), 0), "held back");
    c.bench_function("decide/playbook_held_back", |b| {
        b.iter(|| decide(&mut budgets))
    });
}

/// Generates the input stream: purchase-heavy events of customers drawn uniformly from `ids`.
struct Stream<'a> {
    ids: &'a [String],
    rng: StdRng,
    ms: u64,
}

impl Stream<'_> {
    fn next_entry(&mut self) -> Entry {
        let ids = self.ids;
        let id = &ids[self.rng.random_range(0..ids.len())];
        let kind = match self.rng.random_range(0..100) {
            0..60 => "purchase",
            60..90 => "visit",
            90..95 => "refund",
            _ => "complaint",
        };
        // Producers' clocks lag the stream's by up to 5 s.
        let ts = (self.ms - self.rng.random_range(0..5_000)).to_string();
        let amount = format!("{:.2}", self.rng.random_range(5.0..200.0));
        let mut fields = vec![("customer_id", id.as_str()), ("type", kind), ("ts", &ts)];
        if matches!(kind, "purchase" | "refund") {
            fields.push(("amount", &amount));
        }
        let e = entry(self.ms, &fields);
        self.ms += 1;
        e
    }

    fn batch(&mut self) -> Batch {
        Batch::new((0..BATCH).map(|_| self.next_entry()).collect())
    }
}

/// An engine under the event-time clock and `model` that knows every customer in `ids`: each
/// bought once in the year before `START_MS`.
fn engine_with(ids: &[String], rng: &mut StdRng, model: Model) -> Engine {
    let mut settings = Settings::default();
    settings.clock.mode = ClockMode::Event;
    let mut engine = Engine::new(
        EngineSettings::from(&settings),
        Arc::new(model),
        Metrics::new().engine,
    );
    // One event at the start first, so the history below does not move the watermark.
    let start = entry(START_MS, &[("customer_id", "x"), ("type", "visit")]);
    engine.apply_batch(Batch::new(vec![start]), START_MS);
    let mut seq = 0;
    for chunk in ids.chunks(BATCH) {
        let entries = chunk
            .iter()
            .map(|id| {
                let ts = (START_MS - rng.random_range(1..365 * 86_400_000)).to_string();
                let amount = format!("{:.2}", rng.random_range(5.0..200.0));
                let mut e = entry(
                    START_MS,
                    &[
                        ("customer_id", id),
                        ("type", "purchase"),
                        ("amount", &amount),
                        ("ts", &ts),
                    ],
                );
                // Distinct IDs: the engine skips an entry at or below the last one applied.
                seq += 1;
                e.id.seq = seq;
                e
            })
            .collect();
        engine.apply_batch(Batch::new(entries), START_MS);
    }
    engine
}

fn engine(c: &mut Criterion) {
    let ids = customer_ids(CUSTOMERS);
    let mut group = c.benchmark_group("engine");
    group.throughput(Throughput::Elements(BATCH as u64));
    // The same customers and the same stream under the shipped model and under it without
    // its derived input: what `bgnbd_churn_logit` costs per event, scoring included.
    for (name, model) in [
        ("apply_batch", model()),
        ("apply_batch_without_derived", model_without_derived()),
    ] {
        let mut rng = StdRng::seed_from_u64(1);
        let mut engine = engine_with(&ids, &mut rng, model);
        let mut stream = Stream {
            ids: &ids,
            rng,
            ms: START_MS + 1,
        };
        let fx = engine.apply_batch(stream.batch(), START_MS);
        assert!(fx.dead_letters.is_empty(), "every generated entry is valid");
        assert_eq!(
            engine.summary().customers,
            CUSTOMERS + 1,
            "no new customers"
        );
        group.bench_function(name, |b| {
            b.iter_batched(
                || stream.batch(),
                |batch| {
                    let wall_ms = batch.entries.last().map_or(START_MS, |e| e.id.ms);
                    engine.apply_batch(batch, wall_ms)
                },
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

fn filled_store(ids: &[String]) -> CustomerStore<CustomerFeatures> {
    let mut store = CustomerStore::new();
    for id in ids {
        store.find_or_insert(id);
    }
    store
}

fn store(c: &mut Criterion) {
    let ids = customer_ids(CUSTOMERS);
    let mut store = filled_store(&ids);
    // Existing IDs in random order; the keys are copied in that order so that, as in the
    // engine (where they come from the batch just read), reading a key is no cache miss.
    let mut order: Vec<usize> = (0..CUSTOMERS).collect();
    order.shuffle(&mut StdRng::seed_from_u64(2));
    let keys: Vec<String> = order.into_iter().map(|i| ids[i].clone()).collect();
    let mut existing = keys.iter().cycle();
    c.bench_function("store/find_or_insert_existing", |b| {
        b.iter(|| store.find_or_insert(black_box(existing.next().unwrap())))
    });

    // New IDs, made outside the timing in chunks; the store is rebuilt when it reaches 2M.
    let mut next = CUSTOMERS;
    c.bench_function("store/find_or_insert_new", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            let mut left = iters as usize;
            while left > 0 {
                if store.len() >= 2 * CUSTOMERS {
                    store = filled_store(&ids);
                    next = CUSTOMERS;
                }
                let n = left.min(10_000).min(2 * CUSTOMERS - store.len());
                let new: Vec<String> = (next..next + n).map(customer_id).collect();
                next += n;
                left -= n;
                let started = Instant::now();
                for id in &new {
                    black_box(store.find_or_insert(black_box(id)));
                }
                timed += started.elapsed();
            }
            timed
        })
    });
}

criterion_group!(benches, parsing, scoring, engine, store);
criterion_main!(benches);
