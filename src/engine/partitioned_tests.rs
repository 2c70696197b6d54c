//! One engine per partition: what becomes of a customer does not depend on which other
//! partitions are read with theirs, nor in what interleaving (issue 21, item 6).

use super::tests::{DAY, T0};
use super::*;
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::partition::PartitionCount;
use crate::source::batch::Entry;

const PARTITIONS: u16 = 4;
const CUSTOMERS: usize = 48;

fn settings(count: u16) -> EngineSettings {
    let mut s = Settings::default();
    s.clock.mode = ClockMode::Event;
    s.segments.mode = SegmentMode::Fixed;
    s.tasks.control_share = 0.0;
    s.partitions.count = PartitionCount::new(count).unwrap();
    EngineSettings::from(&s)
}

fn model() -> Arc<Model> {
    Arc::new(Model::from_file(&crate::model::tests::recency_only_model_file()).unwrap())
}

/// A deterministic stream of pseudo-random numbers (a 64-bit LCG).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

/// An event of `customer` at `day` (+ `secs`), as entry `seq` of the customer's partition
/// stream; `stream` is filled in by the reader.
fn event(customer: &str, kind: &str, day: u32, secs: u32) -> (u16, Vec<(&'static str, String)>) {
    let mut fields = vec![
        ("customer_id", customer.to_string()),
        ("type", kind.to_string()),
        ("ts", (u64::from(T0 + day * DAY + secs) * 1000).to_string()),
    ];
    if kind == "purchase" {
        fields.push(("amount", "20".into()));
    }
    let count = PartitionCount::new(PARTITIONS).unwrap();
    (count.of(customer), fields)
}

/// Each partition's stream: its customers' purchases and visits, mostly in time order (a
/// few late ones), numbered as Redis would.
fn streams() -> Vec<Vec<Entry>> {
    let mut rng = Lcg(7);
    let mut events = Vec::new();
    for i in 0..CUSTOMERS {
        let id = format!("customer-{i}");
        let first = rng.below(60) as u32;
        events.push(event(&id, "purchase", first, i as u32));
        for _ in 0..rng.below(4) {
            let kind = if rng.below(3) == 0 {
                "purchase"
            } else {
                "visit"
            };
            let day = first + 1 + rng.below(200) as u32;
            events.push(event(&id, kind, day, i as u32));
        }
    }
    // In time order, but for one event in eight, read up to 3 days late.
    events.sort_by_key(|(_, f)| {
        let ts: u64 = f[2].1.parse().unwrap();
        ts + if ts % 8 == 0 {
            3 * u64::from(DAY) * 1000
        } else {
            0
        }
    });
    let mut streams: Vec<Vec<Entry>> = (0..PARTITIONS).map(|_| Vec::new()).collect();
    for (p, fields) in events {
        let stream = &mut streams[usize::from(p)];
        let mut entry = super::tests::entry(0, &fields);
        entry.id = EntryId {
            ms: 1_700_000_000_000 + stream.len() as u64,
            seq: 0,
        };
        stream.push(entry);
    }
    streams
}

fn copy(e: &Entry) -> Entry {
    Entry {
        stream: e.stream,
        id: e.id,
        values: e.values.clone(),
    }
}

/// Everything the engines wrote, in a comparable form: tasks, cancels and outcomes, each
/// sorted (the order across partitions is the interleaving's).
#[derive(Debug, Default, PartialEq)]
struct Written {
    tasks: Vec<String>,
    cancels: Vec<String>,
    outcomes: Vec<String>,
    dead_letters: usize,
}

impl Written {
    fn add(&mut self, fx: Effects) {
        self.tasks.extend(fx.tasks.iter().map(|t| format!("{t:?}")));
        self.cancels
            .extend(fx.cancels.iter().map(|c| format!("{c:?}")));
        self.outcomes
            .extend(fx.outcomes.iter().map(|o| format!("{o:?}")));
        self.dead_letters += fx.dead_letters.len();
    }

    fn sorted(mut self) -> Self {
        self.tasks.sort();
        self.cancels.sort();
        self.outcomes.sort();
        self
    }
}

/// The partitioned engine fed `order` (partition, entry) in batches of `batch` entries.
fn read_together(order: Vec<(u16, Entry)>, batch: usize) -> (Partitioned, Written) {
    let mut engines = Partitioned::new(settings(PARTITIONS), model(), Metrics::new().engine);
    let mut written = Written::default();
    let mut entries: Vec<Entry> = order
        .into_iter()
        .map(|(p, mut e)| {
            // One input stream: partition p's is stream p.
            e.stream = p;
            e
        })
        .collect();
    while !entries.is_empty() {
        let rest = entries.split_off(batch.min(entries.len()));
        written.add(engines.apply_batch(Batch::new(entries), 0));
        entries = rest;
    }
    (engines, written.sorted())
}

/// What one customer's state is, as the API shows it.
fn view(customer: Option<CustomerView>) -> serde_json::Value {
    serde_json::to_value(customer).unwrap()
}

/// One engine per partition, each reading its own stream alone in batches of 5, as a
/// replica owning only that partition would.
fn read_alone(streams: &[Vec<Entry>], settings: &EngineSettings) -> (Vec<Engine>, Written) {
    let mut alone = Vec::new();
    let mut written = Written::default();
    for (p, stream) in streams.iter().enumerate() {
        let s = partition_settings(settings, p as u16);
        let mut engine = Engine::new(s, model(), Metrics::new().engine);
        for chunk in stream.chunks(5) {
            written.add(engine.apply_batch(Batch::new(chunk.iter().map(copy).collect()), 0));
        }
        alone.push(engine);
    }
    (alone, written.sorted())
}

/// The streams merged entry by entry, each entry with its partition.
fn merged(streams: &[Vec<Entry>]) -> Vec<(u16, Entry)> {
    let longest = streams.iter().map(Vec::len).max().unwrap();
    (0..longest)
        .flat_map(|i| {
            streams
                .iter()
                .enumerate()
                .filter_map(move |(p, s)| Some((p as u16, copy(s.get(i)?))))
        })
        .collect()
}

#[test]
fn each_partition_ends_the_same_whatever_is_read_with_it_under_the_event_clock() {
    let streams = streams();
    // (b) One engine per partition, each reading its own stream alone.
    let (alone, written_alone) = read_alone(&streams, &settings(PARTITIONS));
    assert_eq!(written_alone.dead_letters, 0);
    assert!(
        written_alone.tasks.len() >= 10,
        "tasks raised: {}",
        written_alone.tasks.len()
    );
    let clocks: Vec<u32> = alone.iter().map(Engine::now).collect();
    assert!(
        clocks.iter().any(|&c| c != clocks[0]),
        "the partitions' clocks differ: {clocks:?}"
    );

    // (a) One process reading every partition, in two interleavings: the streams merged
    // entry by entry; and one stream after the other, last partition first.
    let one_by_one: Vec<(u16, Entry)> = streams
        .iter()
        .enumerate()
        .rev()
        .flat_map(|(p, s)| s.iter().map(move |e| (p as u16, copy(e))))
        .collect();
    for (order, batch) in [(merged(&streams), 7), (one_by_one, 13)] {
        let (together, written) = read_together(order, batch);
        assert_eq!(written, written_alone);
        assert_eq!(together.customers(), CUSTOMERS);
        for (p, (engine, single)) in together.parts().iter().zip(&alone).enumerate() {
            let (a, b) = (engine.snapshot().header, single.snapshot().header);
            assert_eq!(a.watermark, b.watermark, "partition {p}'s clock");
            assert_eq!(a.open_tasks, b.open_tasks, "partition {p}'s open tasks");
            assert_eq!(a.applied, b.applied, "partition {p}'s position");
        }
        for i in 0..CUSTOMERS {
            let id = format!("customer-{i}");
            let p = usize::from(PartitionCount::new(PARTITIONS).unwrap().of(&id));
            let expected = view(alone[p].customer(&id));
            assert!(!expected.is_null(), "{id}");
            assert_eq!(view(together.customer(&id)), expected, "{id}");
        }
    }
}

#[test]
fn one_clock_for_every_partition_raises_other_tasks() {
    let streams = streams();
    // Without budgets, so that only the clock differs.
    let mut unbudgeted = settings(PARTITIONS);
    unbudgeted.winback.budgets.clear();
    unbudgeted.tasks.budgets.clear();
    let (_, alone) = read_alone(&streams, &unbudgeted);
    // What came before one engine per partition: one engine, one clock, every stream.
    let mut one = Engine::new(unbudgeted, model(), Metrics::new().engine);
    let mut written = Written::default();
    for chunk in merged(&streams).chunks(7) {
        let entries = chunk
            .iter()
            .map(|(p, e)| Entry {
                stream: *p,
                ..copy(e)
            })
            .collect();
        written.add(one.apply_batch(Batch::new(entries), 0));
    }
    assert_ne!(written.sorted().tasks, alone.tasks);
}

#[test]
fn an_entry_in_the_wrong_partition_is_dead_lettered_under_its_own_stream_number() {
    let mut s = settings(PARTITIONS);
    s.partitions.bases.push("shop:events".into());
    let mut engines = Partitioned::new(s, model(), Metrics::new().engine);
    let (right, fields) = event("customer-1", "purchase", 1, 0);
    let wrong = (right + 1) % PARTITIONS;
    // Two input streams: the second base's partition streams are numbered 4 to 7.
    let mut entry = super::tests::entry(1, &fields);
    entry.stream = PARTITIONS + wrong;
    let id = entry.id;
    let fx = engines.apply_batch(Batch::new(vec![entry]), 0);
    assert_eq!(fx.dead_letters.len(), 1);
    assert_eq!(fx.dead_letters[0].stream, PARTITIONS + wrong);
    assert_eq!(fx.acks, [(PARTITIONS + wrong, id)]);
    assert_eq!(engines.customers(), 0);
    let mut positions = vec![None; 2 * usize::from(PARTITIONS)];
    positions[usize::from(PARTITIONS + wrong)] = Some(id);
    assert_eq!(engines.positions(), positions);
}

#[test]
fn shares_of_the_customer_cap_and_budgets_add_up() {
    let mut s = settings(PARTITIONS);
    s.max_customers = 10;
    s.winback.budgets.insert(
        "coupon".into(),
        crate::decide::ActionBudget::new(100.0, 10.0),
    );
    let shares: Vec<EngineSettings> = (0..PARTITIONS).map(|p| partition_settings(&s, p)).collect();
    assert_eq!(
        shares.iter().map(|s| s.max_customers).collect::<Vec<_>>(),
        [3, 3, 2, 2]
    );
    let tasks = shares
        .iter()
        .map(|s| s.winback.budgets["coupon"].tasks_per_day())
        .sum::<u32>();
    assert_eq!(tasks, 10);
    let metrics = Metrics::new();
    let engines = Partitioned::new(s, model(), metrics.engine.clone());
    assert_eq!(engines.parts().len(), 4);
    assert_eq!(
        metrics.engine.customers_max.get(),
        10,
        "the cap exported is the whole"
    );
}

#[test]
fn partitions_added_beside_running_engines_end_as_if_read_alone() {
    let streams = streams();
    let (alone, written_alone) = read_alone(&streams, &settings(PARTITIONS));
    let feed = |engines: &mut Partitioned, written: &mut Written, p: u16, entries: &[Entry]| {
        // One input stream: the stream of the `i`th partition owned is stream `i`.
        let i = engines.owned().binary_search(&p).unwrap() as u16;
        for chunk in entries.chunks(5) {
            let batch = chunk
                .iter()
                .map(|e| Entry {
                    stream: i,
                    ..copy(e)
                })
                .collect();
            written.add(engines.apply_batch(Batch::new(batch), 0));
        }
    };
    // A replica owning partitions 1 and 3 reads half of their streams...
    let mut engines = Partitioned::restore_owned(
        settings(PARTITIONS),
        model(),
        Metrics::new().engine,
        &[1, 3],
        Vec::new(),
    );
    let mut written = Written::default();
    let half = |p: usize| streams[p].len() / 2;
    for p in [1, 3] {
        feed(&mut engines, &mut written, p as u16, &streams[p][..half(p)]);
    }
    let before: Vec<_> = engines.positions();
    // ...then takes over 2 and 0, with their engines beside the running ones.
    engines.add_owned(&settings(PARTITIONS), model(), vec![(2, None), (0, None)]);
    assert_eq!(engines.owned(), &[0, 1, 2, 3]);
    let after = engines.positions();
    assert_eq!((after[1], after[3]), (before[0], before[1]), "renumbered");
    assert_eq!((after[0], after[2]), (None, None));
    for p in [1, 3] {
        feed(&mut engines, &mut written, p as u16, &streams[p][half(p)..]);
    }
    for p in [0, 2] {
        feed(&mut engines, &mut written, p as u16, &streams[p]);
    }
    assert_eq!(written.sorted(), written_alone);
    assert_eq!(engines.customers(), CUSTOMERS);
    for (p, (engine, single)) in engines.parts().iter().zip(&alone).enumerate() {
        let (a, b) = (engine.snapshot().header, single.snapshot().header);
        assert_eq!(a.watermark, b.watermark, "partition {p}'s clock");
        assert_eq!(a.applied, b.applied, "partition {p}'s position");
    }
    for i in 0..CUSTOMERS {
        let id = format!("customer-{i}");
        let p = usize::from(PartitionCount::new(PARTITIONS).unwrap().of(&id));
        assert_eq!(
            view(engines.customer(&id)),
            view(alone[p].customer(&id)),
            "{id}"
        );
    }
}
