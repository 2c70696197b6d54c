use std::collections::BTreeMap;

use redis::Value;

use super::*;
use crate::classify::Segment;
use crate::config::Settings;
use crate::decide::{Detail, Task, TaskKind};
use crate::features::FEATURE_NAMES;
use crate::metrics::Metrics;
use crate::source::batch::Entry;

pub(super) const DAY: u32 = 86_400;
pub(super) const T0: u32 = 852_076_800;

pub(super) fn settings(clock: ClockMode) -> EngineSettings {
    let mut s = Settings::default();
    s.clock.mode = clock;
    s.segments.mode = SegmentMode::Fixed;
    s.winback = crate::decide::WinbackSettings::unbudgeted();
    s.tasks.control_share = 0.0;
    EngineSettings::from(&s)
}

/// [`settings`] with win-back the only task kind.
pub(super) fn winback_only(clock: ClockMode) -> EngineSettings {
    let mut s = settings(clock);
    s.tasks.welcome.enabled = false;
    s.tasks.convert.enabled = false;
    s
}

/// A model whose score never moves (every coefficient 0), version "flat".
fn flat_model() -> Model {
    let mut flat = crate::model::tests::recency_only_model_file();
    flat.version = "flat".into();
    flat.features.iter_mut().for_each(|f| f.coefficient = 0.0);
    Model::from_file(&flat).unwrap()
}

pub(super) fn engine(clock: ClockMode) -> Engine {
    let model = Model::from_file(&crate::model::tests::recency_only_model_file()).unwrap();
    Engine::new(settings(clock), Arc::new(model), Metrics::new().engine)
}

pub(super) fn entry(seq: u64, fields: &[(&str, String)]) -> Entry {
    Entry {
        stream: 0,
        // Stream time well after every event time used, as when history is replayed.
        id: EntryId {
            ms: u64::from(T0 + 1000 * DAY) * 1000 + seq,
            seq,
        },
        values: Some(
            fields
                .iter()
                .flat_map(|(k, v)| {
                    [
                        Value::BulkString(k.as_bytes().to_vec()),
                        Value::BulkString(v.as_bytes().to_vec()),
                    ]
                })
                .collect(),
        ),
    }
}

pub(super) fn purchase(seq: u64, customer: &str, day: u32) -> Entry {
    entry(
        seq,
        &[
            ("customer_id", customer.into()),
            ("type", "purchase".into()),
            ("amount", "20".into()),
            ("ts", (u64::from(T0 + day * DAY) * 1000).to_string()),
        ],
    )
}

pub(super) fn batch(entries: Vec<Entry>) -> Batch {
    Batch::new(entries)
}

/// The state of an engine that has seen nothing.
pub(crate) fn empty_state() -> EngineState {
    engine(ClockMode::Event).snapshot()
}

fn profile(seq: u64, customer: &str, day: u32, attributes: &[(&str, &str)]) -> Entry {
    let mut fields = vec![
        ("customer_id", customer.to_string()),
        ("type", "profile".into()),
        ("ts", (u64::from(T0 + day * DAY) * 1000).to_string()),
    ];
    fields.extend(attributes.iter().map(|&(k, v)| (k, v.to_string())));
    entry(seq, &fields)
}

fn feedback(seq: u64, customer: &str, day: u32, score: u8) -> Entry {
    entry(
        seq,
        &[
            ("customer_id", customer.into()),
            ("type", "feedback".into()),
            ("score", score.to_string()),
            ("ts", (u64::from(T0 + day * DAY) * 1000).to_string()),
        ],
    )
}

pub(super) fn visit(seq: u64, customer: &str, day: u32) -> Entry {
    entry(
        seq,
        &[
            ("customer_id", customer.into()),
            ("type", "visit".into()),
            ("ts", (u64::from(T0 + day * DAY) * 1000).to_string()),
        ],
    )
}

#[test]
fn prospects_get_an_offer_at_the_third_visit_and_new_buyers_a_welcome_on_time() {
    let mut e = engine(ClockMode::Event);
    let fx = e.apply_batch(
        batch(vec![
            visit(1, "browser", 0),
            visit(2, "browser", 1),
            purchase(3, "buyer", 2),
            visit(4, "browser", 3),
            visit(5, "browser", 4),
        ]),
        0,
    );
    let kinds: Vec<_> = fx
        .tasks
        .iter()
        .map(|t| (t.kind(), t.customer_id.as_str(), t.as_of))
        .collect();
    assert_eq!(kinds, [(TaskKind::Convert, "browser", T0 + 3 * DAY)]);
    // The welcome falls due 14 days after the first purchase, under the event clock as
    // soon as event time passes it.
    let fx = e.apply_batch(batch(vec![visit(6, "someone", 17)]), 0);
    let welcome: Vec<_> = fx
        .tasks
        .iter()
        .map(|t| (t.kind(), t.customer_id.as_str(), t.as_of, &t.detail))
        .collect();
    assert_eq!(
        welcome,
        [(
            TaskKind::Welcome,
            "buyer",
            T0 + 16 * DAY,
            &Detail::Welcome {
                first_purchase: T0 + 2 * DAY
            }
        )]
    );
    let buyer = e.store.get(e.store.find("buyer").unwrap());
    assert_eq!(buyer.contact.last_day, crate::time::Day::of(T0 + 16 * DAY));
}

#[test]
fn a_win_back_waits_for_the_contact_cap_after_another_task() {
    // Welcome at day 14, and a cap of 30 days: the win-back due from day 30 (minimum
    // silence) waits for day 44.
    let mut s = settings(ClockMode::Event);
    s.tasks.contact_cap_days = 30;
    s.winback.control_share = 0.0;
    // Over the threshold well before the minimum silence of 30 days ends.
    s.winback.threshold = 0.3;
    s.winback.segment_thresholds.clear();
    let model = Model::from_file(&crate::model::tests::recency_only_model_file()).unwrap();
    let mut e = Engine::new(s, Arc::new(model), Metrics::new().engine);
    e.apply_batch(batch(vec![purchase(1, "once", 0)]), 0);
    let mut seen = Vec::new();
    for (seq, day) in (2..).zip(1..120) {
        let fx = e.apply_batch(batch(vec![visit(seq, "clock", day)]), 0);
        seen.extend(fx.tasks.iter().map(|t| (t.kind(), t.as_of)));
    }
    let once: Vec<_> = seen
        .iter()
        .filter(|(k, _)| *k != TaskKind::Convert)
        .collect();
    assert_eq!(once.len(), 2, "{seen:?}");
    assert_eq!(once[0], &(TaskKind::Welcome, T0 + 14 * DAY));
    assert_eq!(once[1].0, TaskKind::Winback);
    assert!(once[1].1 >= T0 + 44 * DAY, "{once:?}");
    assert!(once[1].1 <= T0 + 45 * DAY, "{once:?}");
}

#[test]
fn evictions_and_new_models_wait_for_the_snapshot_being_copied_out() {
    let model = Model::from_file(&crate::model::tests::recency_only_model_file()).unwrap();
    let mut s = settings(ClockMode::Event);
    s.max_customers = 100;
    let mut e = Engine::new(s, Arc::new(model), Metrics::new().engine);
    let entries = (0..100u32).map(|i| purchase(u64::from(i) + 1, &format!("c{i}"), i));
    e.apply_batch(batch(entries.collect()), 0);
    let (_, size) = e.begin_snapshot();
    assert_eq!(size.customers, 100);
    let mut largest = 0;
    let mut seq = 200;
    e.set_model(Arc::new(flat_model()));
    while let Some(slice) = e.snapshot_slice(10) {
        largest = largest.max(slice.len());
        // New customers beyond the bound, and batches in which the new model is pending.
        seq += 1;
        e.apply_batch(batch(vec![purchase(seq, &format!("new{seq}"), 200)]), 0);
    }
    assert_eq!(largest, 10, "no slice became the rest of the table");
    assert_eq!(
        e.customers(),
        110,
        "no eviction while the snapshot was copied out"
    );
    assert!(e.recheck_pending, "the re-check waits too");

    // Once it is out: the next batch re-checks everyone and the next newcomer evicts
    // back under the bound.
    e.apply_batch(batch(vec![purchase(seq + 1, "late", 201)]), 0);
    assert!(!e.recheck_pending);
    assert!(e.customers() <= 100, "{}", e.customers());
}

#[test]
fn a_full_table_forgets_the_least_recently_active() {
    let model = Model::from_file(&crate::model::tests::recency_only_model_file()).unwrap();
    let mut s = settings(ClockMode::Event);
    s.max_customers = 200;
    let metrics = Metrics::new().engine;
    let mut e = Engine::new(s, Arc::new(model), metrics.clone());
    // c0 is active last of all; c1..c199 in order of their last purchase.
    let mut entries: Vec<Entry> = (1..200u32)
        .map(|i| purchase(u64::from(i), &format!("c{i}"), i))
        .collect();
    entries.push(purchase(200, "c0", 300));
    e.apply_batch(batch(entries), 0);
    assert_eq!(e.customers(), 200);

    // A new customer: 1 % (2 customers) must go, the two least recently active.
    e.apply_batch(batch(vec![purchase(201, "newcomer", 301)]), 0);
    assert_eq!(e.customers(), 199);
    assert_eq!(metrics.customers_evicted.get(), 2);
    for gone in ["c1", "c2"] {
        assert!(e.customer(gone).is_none(), "{gone} kept");
    }
    for kept in ["c0", "c3", "c199", "newcomer"] {
        assert!(e.customer(kept).is_some(), "{kept} evicted");
    }
    let by_stage: i64 = e.summary().by_stage.values().sum();
    assert_eq!(by_stage, 199, "population counts follow evictions");
    // Timers were rebuilt: time passing re-scores the kept customers only.
    e.apply_batch(batch(vec![purchase(202, "newcomer", 700)]), 0);
    assert_eq!(e.customers(), 199);
}

#[test]
fn a_restored_engine_continues_exactly_as_one_that_never_stopped() {
    let streams = vec!["churn:events".to_string()];
    let entries = |range: std::ops::Range<u64>| -> Vec<Entry> {
        range
            .map(|i| {
                let customer = format!("c{}", i % 17);
                let day = (i * 3) as u32;
                if i % 5 == 0 {
                    entry(
                        i,
                        &[
                            ("customer_id", customer),
                            ("type", "visit".into()),
                            ("ts", (u64::from(T0 + day * DAY) * 1000).to_string()),
                        ],
                    )
                } else {
                    purchase(i, &customer, day)
                }
            })
            .collect()
    };
    let mut whole = engine(ClockMode::Event);
    let mut expected = Vec::new();
    for chunk in [0..60, 60..130, 130..200] {
        expected.extend(whole.apply_batch(batch(entries(chunk)), 0).tasks);
    }

    let mut first = engine(ClockMode::Event);
    let mut got = first.apply_batch(batch(entries(0..60)), 0).tasks;
    let bytes = crate::state::codec::encode(&first.snapshot(), &streams, 0);
    drop(first);
    let decoded = crate::state::codec::decode(&bytes, &streams).unwrap();
    let model = Model::from_file(&crate::model::tests::recency_only_model_file()).unwrap();
    let mut restored = Engine::restore(
        settings(ClockMode::Event),
        Arc::new(model),
        Metrics::new().engine,
        decoded.state,
    );
    // Entries up to the recorded position are acknowledged, not applied again.
    let fx = restored.apply_batch(batch(entries(50..60)), 0);
    assert_eq!(fx.acks.len(), 10);
    assert!(fx.tasks.is_empty());
    for chunk in [60..130, 130..200] {
        got.extend(restored.apply_batch(batch(entries(chunk)), 0).tasks);
    }

    assert!(!expected.is_empty(), "the history raises tasks");
    assert_eq!(got, expected);
    assert_eq!(
        serde_json::to_value(restored.summary()).unwrap(),
        serde_json::to_value(whole.summary()).unwrap()
    );
    for i in 0..17 {
        let id = format!("c{i}");
        assert_eq!(
            serde_json::to_value(restored.customer(&id)).unwrap(),
            serde_json::to_value(whole.customer(&id)).unwrap(),
            "{id}"
        );
    }
}

#[test]
fn a_snapshot_copied_out_between_batches_is_the_state_when_it_began() {
    use crate::state::codec::{self, Encoder};
    let streams = vec!["s".to_string()];
    let mut e = engine(ClockMode::Event);
    let mut seq = 0;
    let mut next_batch = |first: u32, customers: u32, day: u32| {
        let entries = (first..first + customers)
            .map(|i| {
                seq += 1;
                let customer = format!("c{i}");
                match (i + day) % 5 {
                    0 => visit(seq, &customer, day),
                    // Extras change too: profiles set and removed, feedback.
                    1 => profile(
                        seq,
                        &customer,
                        day,
                        &[("region", ["eu", "us"][i as usize % 2])],
                    ),
                    2 if day % 2 == 0 => profile(seq, &customer, day, &[("region", "")]),
                    3 => feedback(seq, &customer, day, 1 + (i % 5) as u8),
                    _ => purchase(seq, &customer, day),
                }
            })
            .collect();
        batch(entries)
    };
    for day in 0..5 {
        e.apply_batch(next_batch(day * 40, 60, day), 0);
    }
    assert!(e.store.extras_len() > 20, "customers with extras");
    let before = codec::encode(&e.snapshot(), &streams, 7);

    let (header, size) = e.begin_snapshot();
    let mut bytes = Vec::new();
    let mut encoder = Encoder::start(&header, size, &streams, 7, &mut bytes);
    for round in 0u32.. {
        // Old customers buy again, new ones arrive, event time moves on (silence checks
        // fire), and once the model changes (every timer at once).
        e.apply_batch(next_batch(round * 17 % 300, 25, 10 + round * 20), 0);
        if round == 20 {
            e.set_model(Arc::new(flat_model()));
        }
        let Some(slice) = e.snapshot_slice(7) else {
            break;
        };
        encoder.customers(slice.iter(), &mut bytes);
    }
    encoder.finish(&mut bytes).unwrap();
    assert!(
        e.customers() > size.customers as usize,
        "customers came meanwhile"
    );
    assert_eq!(bytes, before);
}

/// Three purchases of 50 within ten days: important value under the fixed thresholds.
fn valuable(e: &mut Engine, seq: u64, customer: &str, day: u32) {
    let purchase_of_50 = |seq: u64, day: u32| {
        entry(
            seq,
            &[
                ("customer_id", customer.into()),
                ("type", "purchase".into()),
                ("amount", "50".into()),
                ("ts", (u64::from(T0 + day * DAY) * 1000).to_string()),
            ],
        )
    };
    let entries = (0..3).map(|k| purchase_of_50(seq + k, day + 5 * k as u32));
    e.apply_batch(batch(entries.collect()), 0);
    assert_eq!(
        e.customer(customer).unwrap().segment,
        Some(Segment::ImportantValue)
    );
}

#[test]
fn profiles_are_stored_shared_counted_by_region_and_shown() {
    let mut s = settings(ClockMode::Event);
    s.profiles.regions = vec!["eu".into()];
    s.profiles.max_free_keys = 1;
    let model = Model::from_file(&crate::model::tests::recency_only_model_file()).unwrap();
    let mut e = Engine::new(s, Arc::new(model), Metrics::new().engine);
    let fx = e.apply_batch(
        batch(vec![
            profile(1, "ann", 0, &[("region", "eu"), ("age_band", "25-34")]),
            profile(2, "bob", 0, &[("age_band", "25-34"), ("region", "eu")]),
            profile(3, "cy", 0, &[("region", "mars"), ("loyalty", "gold")]),
            purchase(4, "dee", 0),
            profile(5, "bob", 1, &[("region", "")]),
            // A second free-form key is beyond the bound: rejected, nothing changes.
            profile(6, "eve", 2, &[("region", "eu"), ("nickname", "e")]),
        ]),
        0,
    );
    let reasons: Vec<_> = fx.dead_letters.iter().map(|d| d.reason).collect();
    assert_eq!(reasons, [Reason::UnknownProfileKey]);
    assert!(
        e.customer("eve").is_none(),
        "a rejected profile creates nobody"
    );
    assert_eq!(e.now(), T0 + DAY, "nor moves the clock");
    let by_region = e.summary().by_region;
    assert_eq!(
        by_region,
        BTreeMap::from([("eu".into(), 1), ("other".into(), 1), ("none".into(), 2)])
    );
    let ann = e.customer("ann").unwrap();
    assert_eq!(ann.lifecycle_stage, LifecycleStage::Potential);
    assert_eq!(
        ann.profile,
        BTreeMap::from([
            ("age_band".into(), "25-34".into()),
            ("region".into(), "eu".into())
        ])
    );
    assert_eq!(
        e.profiles.interned(),
        3,
        "ann's profile is shared, bob's first too"
    );
    assert_eq!(e.customer("bob").unwrap().profile.len(), 1);
    // A restore keeps profiles, free keys and counts.
    let bytes = crate::state::codec::encode(&e.snapshot(), &["s".into()], 0);
    let state = crate::state::codec::decode(&bytes, &["s".into()])
        .unwrap()
        .state;
    let mut s = settings(ClockMode::Event);
    s.profiles.regions = vec!["eu".into()];
    s.profiles.max_free_keys = 1;
    let model = Model::from_file(&crate::model::tests::recency_only_model_file()).unwrap();
    let mut restored = Engine::restore(s, Arc::new(model), Metrics::new().engine, state);
    assert_eq!(restored.summary().by_region, by_region);
    let fx = restored.apply_batch(batch(vec![profile(7, "eve", 2, &[("nickname", "e")])]), 0);
    assert_eq!(
        fx.dead_letters.len(),
        1,
        "the free key learnt before is remembered"
    );
}

#[test]
fn a_very_low_score_from_a_valuable_customer_is_answered_at_once_with_tags_and_profile() {
    let mut e = engine(ClockMode::Event);
    valuable(&mut e, 1, "vip", 0);
    valuable(&mut e, 10, "other", 0);
    e.apply_batch(
        batch(vec![
            profile(20, "vip", 11, &[("region", "eu")]),
            // Only a purchase: general segment.
            purchase(21, "plain", 11),
        ]),
        0,
    );
    let fx = e.apply_batch(
        batch(vec![
            feedback(22, "vip", 12, 1),
            feedback(23, "other", 12, 3),
            feedback(24, "plain", 12, 1),
        ]),
        0,
    );
    let recovery: Vec<_> = fx
        .tasks
        .iter()
        .filter(|t| t.kind() == TaskKind::ServiceRecovery)
        .collect();
    assert_eq!(recovery.len(), 1, "{:?}", fx.tasks);
    let task = recovery[0];
    assert_eq!(task.customer_id, "vip");
    assert_eq!(
        task.detail,
        Detail::ServiceRecovery {
            score: 1,
            feedback_at: T0 + 12 * DAY
        }
    );
    assert_eq!(task.tags, [Arc::<str>::from("vip")]);
    assert_eq!(task.profile.as_ref().unwrap().get("region"), Some("eu"));
    let fields = task.fields();
    assert!(fields
        .iter()
        .any(|(k, v)| k == "profile_region" && v == "eu"));
    assert!(fields.iter().any(|(k, v)| k == "tags" && v == "vip"));
    // Another low score soon after: answered again (its own ID), whatever the cap.
    let fx = e.apply_batch(batch(vec![feedback(25, "vip", 13, 1)]), 0);
    let again: Vec<_> = fx
        .tasks
        .iter()
        .filter(|t| t.kind() == TaskKind::ServiceRecovery)
        .collect();
    assert_eq!(again.len(), 1);
    assert_ne!(again[0].task_id, task.task_id);
    let view = e.customer("vip").unwrap();
    assert_eq!(view.dissatisfaction.last_feedback_score, Some(1));
    assert!(view.dissatisfaction.low_feedback_90d > 1.9);
    assert_eq!(view.tags, ["vip"]);
}

#[test]
fn a_birthday_is_greeted_days_before_once_a_year() {
    let mut s = winback_only(ClockMode::Event);
    s.winback.enabled = false;
    s.tasks.birthday.enabled = true;
    let model = Model::from_file(&crate::model::tests::recency_only_model_file()).unwrap();
    let mut e = Engine::new(s, Arc::new(model), Metrics::new().engine);
    // 1997-01-01 plus 40 days: 10 February; the birthday is on 15 March.
    e.apply_batch(
        batch(vec![profile(1, "bday", 40, &[("birthday", "1980-03-15")])]),
        0,
    );
    let mut seen = Vec::new();
    for (seq, day) in (2..).zip(41..500) {
        let fx = e.apply_batch(batch(vec![visit(seq, "clock", day)]), 0);
        seen.extend(
            fx.tasks
                .into_iter()
                .filter(|t| t.kind() == TaskKind::Birthday),
        );
    }
    let days: Vec<_> = seen.iter().map(|t| (t.as_of - T0) / DAY).collect();
    // 12 March 1997 (day 70) and 12 March 1998 (day 435).
    assert_eq!(days, [70, 435]);
    assert_eq!(
        seen[0].detail,
        Detail::Birthday {
            date: T0 + 73 * DAY
        }
    );
}

#[test]
fn coupon_purchases_make_a_bargain_hunter() {
    let mut e = engine(ClockMode::Event);
    let coupon = |seq: u64, day: u32| {
        entry(
            seq,
            &[
                ("customer_id", "saver".into()),
                ("type", "purchase".into()),
                ("amount", "10".into()),
                ("coupon", "SPRING10".into()),
                ("ts", (u64::from(T0 + day * DAY) * 1000).to_string()),
            ],
        )
    };
    e.apply_batch(batch(vec![coupon(1, 0)]), 0);
    assert!(e.customer("saver").unwrap().tags.is_empty());
    e.apply_batch(batch(vec![coupon(2, 1), coupon(3, 2)]), 0);
    let view = e.customer("saver").unwrap();
    assert!(view.coupons_90d > 2.9, "{}", view.coupons_90d);
    assert_eq!(view.tags, ["bargain_hunter"]);
}

#[test]
fn bad_entries_are_dead_lettered_and_everything_is_acknowledged() {
    let mut e = engine(ClockMode::Event);
    let fx = e.apply_batch(
        batch(vec![
            purchase(1, "a", 0),
            entry(2, &[("customer_id", "b".into()), ("type", "gift".into())]),
            Entry {
                values: None,
                ..entry(3, &[])
            },
        ]),
        0,
    );
    assert_eq!(fx.acks.len(), 3);
    let reasons: Vec<Reason> = fx.dead_letters.iter().map(|d| d.reason).collect();
    assert_eq!(reasons, vec![Reason::UnknownType, Reason::EntryDeleted]);
    assert_eq!(
        fx.dead_letters[0].values.len(),
        4,
        "original fields are kept"
    );
    assert_eq!(e.summary().customers, 1);
}

#[test]
fn entries_redelivered_after_a_rewind_are_acknowledged_not_applied_again() {
    let mut e = engine(ClockMode::Event);
    e.apply_batch(batch(vec![purchase(1, "a", 0), purchase(2, "a", 5)]), 0);
    let before = e.customer("a").unwrap().features["log_purchases"];
    // Redis restored from an older snapshot hands out entry 2 again, then a new one.
    let fx = e.apply_batch(batch(vec![purchase(2, "a", 5), purchase(3, "b", 6)]), 0);
    assert_eq!(fx.acks.len(), 2, "every entry is acknowledged");
    assert!(fx.dead_letters.is_empty());
    assert_eq!(e.customer("a").unwrap().features["log_purchases"], before);
    assert!(
        e.customer("b").is_some(),
        "entries past the last applied one are applied"
    );
    // Stream positions are per stream: the same ID on another stream is new.
    let other = Entry {
        stream: 1,
        ..purchase(2, "c", 6)
    };
    e.apply_batch(batch(vec![other]), 0);
    assert!(e.customer("c").is_some());
}

#[test]
fn a_deleted_entry_is_dead_lettered_without_moving_the_position() {
    let mut e = engine(ClockMode::Event);
    let start = purchase(1, "before", 0).id;
    e.start_at(0, start);
    let deleted = Entry {
        values: None,
        ..purchase(9, "gone", 0)
    };
    let fx = e.apply_batch(batch(vec![deleted]), 0);
    assert_eq!(fx.dead_letters.len(), 1);
    assert_eq!(fx.dead_letters[0].reason, Reason::EntryDeleted);
    assert_eq!(e.positions(), &[Some(start)]);
    // Entries before it, replayed after it, are still applied.
    e.apply_batch(batch(vec![purchase(2, "a", 0)]), 0);
    assert!(e.customer("a").is_some());
    // One at or below the position was seen before: only acknowledged.
    let again = Entry {
        values: None,
        ..purchase(1, "gone", 0)
    };
    let fx = e.apply_batch(batch(vec![again]), 0);
    assert!(fx.dead_letters.is_empty());
    assert_eq!(fx.acks.len(), 1);
}

#[test]
fn an_entry_over_the_size_limit_is_dead_lettered_with_a_cut_copy() {
    let mut settings = settings(ClockMode::Event);
    settings.max_entry_bytes = 1_000;
    settings.max_copy_bytes = 300;
    let model = Model::from_file(&crate::model::tests::recency_only_model_file()).unwrap();
    let mut e = Engine::new(settings, Arc::new(model), Metrics::new().engine);
    let mut big = purchase(1, "big", 0);
    let values = big.values.as_mut().unwrap();
    values.push(Value::BulkString(b"note".to_vec()));
    values.push(Value::BulkString("é".repeat(600).into_bytes()));
    let size = big.bytes();
    let fx = e.apply_batch(batch(vec![big, purchase(2, "small", 0)]), 0);
    assert!(e.customer("big").is_none());
    assert!(e.customer("small").is_some(), "the batch goes on");
    let dl = &fx.dead_letters[0];
    assert_eq!(dl.reason, Reason::EntryTooLarge);
    assert!(
        dl.detail.contains(&format!("holds {size} bytes"))
            && dl.detail.contains("events.max_entry_bytes (1000)")
            && dl.detail.contains("300 of"),
        "{}",
        dl.detail
    );
    let copied: usize = dl
        .values
        .iter()
        .map(|v| match v {
            Value::BulkString(b) => b.len(),
            _ => 0,
        })
        .sum();
    assert!(copied <= 300, "{copied}");
    let Value::BulkString(note) = dl.values.last().unwrap() else {
        panic!("{:?}", dl.values)
    };
    assert!(
        std::str::from_utf8(note).is_ok(),
        "text is cut at a character boundary"
    );
    assert_eq!(dl.values.len() % 2, 0, "names and values in pairs");
}

#[test]
fn a_copy_within_the_limit_is_whole() {
    let values = vec![
        Value::BulkString(b"customer_id".to_vec()),
        Value::BulkString(b"c".to_vec()),
    ];
    assert_eq!(cut_copy(values.clone(), 12), Ok(values.clone()));
    assert_eq!(
        cut_copy(values.clone(), 11),
        Err(vec![]),
        "a name that does not fit ends the copy"
    );
}

#[test]
fn a_start_position_counts_as_applied_and_is_kept_once_set() {
    let mut e = engine(ClockMode::Event);
    assert!(e.positions().is_empty());
    let at_start = Entry {
        stream: 1,
        ..purchase(5, "old", 0)
    };
    e.start_at(1, at_start.id);
    assert_eq!(e.positions(), &[None, Some(at_start.id)]);
    e.start_at(1, purchase(9, "x", 0).id);
    assert_eq!(
        e.positions()[1],
        Some(at_start.id),
        "a known position is never replaced"
    );
    e.apply_batch(batch(vec![at_start]), 0);
    assert!(
        e.customer("old").is_none(),
        "entries up to the start are not applied"
    );
}

#[test]
fn a_silent_customer_gets_a_task_as_event_time_moves_on() {
    let mut e = engine(ClockMode::Event);
    // The test model's probability passes 0.7 once ln(1 + recency) >= 3 + 0.5 * (1 + ln(7/3)),
    // i.e. after about 50 days of silence.
    let fx = e.apply_batch(
        batch(vec![purchase(1, "quiet", 0), purchase(2, "busy", 0)]),
        0,
    );
    assert!(fx.tasks.is_empty());
    let mut tasks = Vec::new();
    for (i, day) in (10..=200).step_by(10).enumerate() {
        let fx = e.apply_batch(batch(vec![purchase(10 + i as u64, "busy", day)]), 0);
        tasks.extend(
            fx.tasks
                .into_iter()
                .filter(|t| t.kind() == TaskKind::Winback),
        );
    }
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    let task = &tasks[0];
    assert_eq!(task.customer_id, "quiet");
    let winback = task.winback().expect("a win-back task");
    assert!(winback.churn_probability >= 0.7);
    // The crossing is noticed within one rescore interval (a day).
    let threshold_logit = (0.7f64 / 0.3).ln();
    let crossing = T0 + (((3.0 + 0.5 * (1.0 + threshold_logit)).exp() - 1.0) * 86_400.0) as u32;
    assert!(
        (crossing..=crossing + DAY).contains(&task.as_of),
        "task at {}, crossing at {crossing}",
        task.as_of
    );
    assert_eq!(winback.episode_start, T0);
    assert_eq!(e.customer("quiet").unwrap().winback_tasks_in_episode, 1);
}

#[test]
fn silent_customers_are_rescored_only_near_a_change() {
    let mut e = engine(ClockMode::Event);
    e.apply_batch(batch(vec![purchase(1, "quiet", 0)]), 0);
    // A year of event time passes, one day at a time, through another customer.
    for day in 1..=365 {
        e.apply_batch(batch(vec![purchase(1 + u64::from(day), "busy", day)]), 0);
    }
    let rescores = e.metrics.rescores.get();
    // A fixed daily interval would re-score the quiet customer on each of those 365 days
    // (the busy one is scored by its purchases). 33 when written, with the test model's
    // steep recency coefficient crossing many probability tenths.
    assert!(rescores < 60, "{rescores} silence checks in a year");
    assert_eq!(
        e.customer("quiet").unwrap().lifecycle_stage,
        LifecycleStage::Churned
    );
    assert_eq!(e.summary().by_stage["churned"], 1);
}

/// The scheduler skips checks, never tasks: against checking every customer every day
/// (the behaviour it replaced), on random histories scored by the shipped model, the
/// same customers get the same tasks, each at most a day apart.
#[test]
fn sparse_checks_raise_the_same_tasks_as_daily_checks() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut entries = Vec::new();
    for c in 0..400 {
        let mut day = rng.random_range(0..200);
        for _ in 0..rng.random_range(1..6) {
            entries.push((day, format!("c{c}"), rng.random_range(5..200)));
            day += rng.random_range(1..120);
        }
    }
    // A heartbeat moves event time on through two years.
    entries.extend((0..730).map(|day| (day, "heartbeat".to_string(), 10)));
    entries.sort();
    let model = Arc::new(
        Model::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/cdnow.json"))
            .unwrap(),
    );
    let run = |max_interval: u32| {
        let mut s = settings(ClockMode::Event);
        s.max_rescore_interval_secs = max_interval;
        let mut e = Engine::new(s, model.clone(), Metrics::new().engine);
        let mut tasks = BTreeMap::new();
        for (seq, (day, customer, amount)) in entries.iter().enumerate() {
            let fx = e.apply_batch(
                batch(vec![entry(
                    seq as u64 + 1,
                    &[
                        ("customer_id", customer.clone()),
                        ("type", "purchase".into()),
                        ("amount", amount.to_string()),
                        ("ts", (u64::from(T0 + day * DAY) * 1000).to_string()),
                    ],
                )]),
                0,
            );
            for t in fx.tasks {
                if let Some(w) = t.winback() {
                    tasks.insert((t.customer_id.clone(), w.attempt, w.episode_start), t.as_of);
                }
            }
        }
        (tasks, e.metrics.rescores.get())
    };
    let (daily, daily_checks) = run(DAY);
    let (sparse, sparse_checks) = run(settings(ClockMode::Event).max_rescore_interval_secs);
    assert!(
        daily.len() > 50,
        "the histories raise tasks: {}",
        daily.len()
    );
    // A task one run raised and the other did not is only allowed where the crossing
    // came less than a day before the customer bought again: one run noticed it in
    // time, the other (as allowed) up to a day late, after the purchase ended the
    // episode.
    let bought_within_a_day = |customer: &str, at: u32| {
        entries
            .iter()
            .any(|(day, c, _)| c == customer && (at..=at + DAY).contains(&(T0 + day * DAY)))
    };
    for (one, other) in [(&daily, &sparse), (&sparse, &daily)] {
        for (key, at) in one.iter().filter(|(k, _)| !other.contains_key(*k)) {
            assert!(bought_within_a_day(&key.0, *at), "{key:?} at {at}");
        }
    }
    assert!(daily.keys().filter(|k| !sparse.contains_key(*k)).count() < 5);
    for (key, at) in daily.iter().filter(|(k, _)| sparse.contains_key(*k)) {
        assert!(
            sparse[key].abs_diff(*at) <= DAY,
            "{key:?}: {} vs {at}",
            sparse[key]
        );
    }
    assert!(
        sparse_checks * 5 < daily_checks,
        "{sparse_checks} checks against {daily_checks} daily"
    );
}

#[test]
fn a_restore_under_other_settings_rechecks_everyone_once_the_clock_is_known() {
    // A model that never moves, and no welcome: the only checks are the exact moments
    // (day 30).
    let model = Arc::new(flat_model());
    let mut e = Engine::new(
        winback_only(ClockMode::Wall),
        model.clone(),
        Metrics::new().engine,
    );
    e.apply_batch(batch(vec![purchase(1, "quiet", 0)]), u64::from(T0) * 1000);
    let due = |e: &Engine| e.store.get(e.store.find("quiet").unwrap()).timer.due();
    assert_eq!(due(&e), Some(T0 + 30 * DAY));

    // Same settings and model: the schedule is kept as it was.
    let same = Engine::restore(
        winback_only(ClockMode::Wall),
        model.clone(),
        Metrics::new().engine,
        e.snapshot(),
    );
    assert_eq!(due(&same), due(&e));

    // A lower task threshold: re-checked within a day of the first tick, not at the
    // epoch (the wall clock is unknown until then).
    let mut lower = winback_only(ClockMode::Wall);
    lower.winback.threshold = 0.2;
    let mut restored = Engine::restore(lower, model, Metrics::new().engine, e.snapshot());
    assert_eq!(
        due(&restored),
        due(&e),
        "nothing moves before the clock is known"
    );
    let now = T0 + 2 * DAY;
    restored.tick(u64::from(now) * 1000);
    let next = due(&restored).unwrap();
    assert!((now..=now + DAY).contains(&next), "{next} vs {now}");
}

#[test]
fn population_segments_keep_customers_between_task_thresholds_on_daily_checks() {
    // The test model puts a one-time buyer at p ≈ 0.65 after 45 days: above the 0.6 of
    // the important segments, below the 0.7 of theirs (general_development).
    let next_check = |mode: SegmentMode| {
        let mut s = settings(ClockMode::Event);
        s.segments.mode = mode;
        let model = Model::from_file(&crate::model::tests::recency_only_model_file()).unwrap();
        let mut e = Engine::new(s, Arc::new(model), Metrics::new().engine);
        e.apply_batch(batch(vec![purchase(1, "quiet", 0)]), 0);
        let visit = entry(
            3,
            &[
                ("customer_id", "quiet".into()),
                ("type", "visit".into()),
                ("ts", (u64::from(T0 + 45 * DAY) * 1000).to_string()),
            ],
        );
        e.apply_batch(batch(vec![purchase(2, "busy", 45), visit]), 0);
        let view = e.customer("quiet").unwrap();
        assert!((0.6..0.7).contains(&view.churn_probability.unwrap()));
        let due = e
            .store
            .get(e.store.find("quiet").unwrap())
            .timer
            .due()
            .unwrap();
        due - (T0 + 45 * DAY)
    };
    // A refresh of population thresholds could move them into an important segment at
    // any day: checked daily. Under fixed thresholds the segment flips at known moments.
    assert!(next_check(SegmentMode::Population) <= DAY);
    assert!(next_check(SegmentMode::Fixed) > DAY);
}

#[test]
fn a_new_model_brings_every_silent_customer_s_check_forward() {
    let mut s = settings(ClockMode::Event);
    s.max_rescore_interval_secs = 400 * DAY;
    // A model that never moves: after day 30 (the stage and win-back waiting time
    // boundaries), the customer is not looked at again before day 90.
    let mut e = Engine::new(s, Arc::new(flat_model()), Metrics::new().engine);
    e.apply_batch(batch(vec![purchase(1, "quiet", 0)]), 0);
    e.apply_batch(batch(vec![purchase(2, "busy", 35)]), 0);
    let recency = Model::from_file(&crate::model::tests::recency_only_model_file()).unwrap();
    e.set_model(Arc::new(recency));
    let mut tasks = Vec::new();
    for day in 36..=120 {
        let fx = e.apply_batch(batch(vec![purchase(u64::from(day), "busy", day)]), 0);
        tasks.extend(fx.tasks);
    }
    // The new model crosses 0.7 after about 50 days of silence (see the test above).
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    assert!(tasks[0].as_of <= T0 + 52 * DAY, "{}", tasks[0].as_of);
}

#[test]
fn the_same_history_in_other_batches_gives_the_same_tasks() {
    let history: Vec<(String, u32)> = (0..60)
        .map(|i| (format!("c{}", i % 12), (i * 7) as u32))
        .collect();
    let run = |batch_size: usize| {
        let mut e = engine(ClockMode::Event);
        let mut tasks = Vec::new();
        let entries: Vec<Entry> = history
            .iter()
            .enumerate()
            .map(|(i, (c, d))| purchase(i as u64, c, *d))
            .collect();
        let mut it = entries.into_iter().peekable();
        while it.peek().is_some() {
            let chunk: Vec<Entry> = it.by_ref().take(batch_size).collect();
            tasks.extend(e.apply_batch(batch(chunk), 0).tasks);
        }
        tasks.sort_by(|a, b| a.task_id.cmp(&b.task_id));
        tasks
    };
    let one = run(1);
    assert!(!one.is_empty());
    assert_eq!(one, run(7));
    assert_eq!(one, run(1000));
}

#[test]
fn a_purchase_after_a_task_counts_a_recovery() {
    let mut e = engine(ClockMode::Event);
    e.apply_batch(batch(vec![purchase(1, "c", 0)]), 0);
    let fx = e.apply_batch(batch(vec![purchase(2, "other", 150)]), 0);
    let winbacks: Vec<_> = fx.tasks.iter().filter(|t| t.winback().is_some()).collect();
    assert_eq!(winbacks.len(), 1);
    let group = winbacks[0].group;
    e.apply_batch(batch(vec![purchase(3, "c", 151)]), 0);
    let recovered = e.metrics.recoveries.get(group).get();
    assert_eq!(recovered, 1);
    assert_eq!(e.customer("c").unwrap().winback_tasks_in_episode, 0);
}

#[test]
fn population_counts_follow_customers_between_stages() {
    let mut e = engine(ClockMode::Event);
    e.apply_batch(batch(vec![purchase(1, "a", 0), purchase(2, "b", 0)]), 0);
    assert_eq!(e.summary().by_stage["new"], 2);
    e.apply_batch(batch(vec![purchase(3, "b", 100)]), 0);
    let s = e.summary();
    assert_eq!(s.by_stage["silent"], 1, "{s:?}");
    assert_eq!(s.by_stage["active"], 1, "{s:?}");
    assert_eq!(s.by_stage.values().sum::<i64>(), 2);
    assert_eq!(s.by_segment.values().sum::<i64>(), 2);
}

#[test]
fn the_wall_clock_scores_silence_on_ticks() {
    let mut e = engine(ClockMode::Wall);
    let wall = |day: u32| u64::from(T0 + day * DAY) * 1000;
    e.apply_batch(batch(vec![purchase(1, "a", 0)]), wall(0));
    assert!(e.tick(wall(40)).tasks.is_empty());
    assert_eq!(e.tick(wall(120)).tasks.len(), 1);
    assert!(e.tick(wall(200)).tasks.is_empty());
}

#[test]
fn the_state_version_moves_with_every_change_a_snapshot_records_and_only_then() {
    let mut e = engine(ClockMode::Wall);
    let wall = |day: u32| u64::from(T0 + day * DAY) * 1000;
    let mut last = e.state_version();
    let mut moved = |e: &Engine, what: &str, expected: bool| {
        let now = e.state_version();
        assert_eq!(now != last, expected, "{what}: {last:?} -> {now:?}");
        last = now;
    };
    e.apply_batch(batch(vec![purchase(1, "a", 0)]), wall(0));
    moved(&e, "a purchase", true);
    e.tick(wall(1));
    moved(&e, "a tick with nobody due", false);
    e.apply_batch(batch(vec![]), wall(1));
    moved(&e, "an empty batch", false);
    e.apply_batch(batch(vec![purchase(1, "a", 0)]), wall(1));
    moved(&e, "an entry applied before", false);
    let bad = entry(2, &[("customer_id", "b".into()), ("type", "gift".into())]);
    e.apply_batch(batch(vec![bad]), wall(1));
    moved(&e, "a dead-lettered entry (its position)", true);
    e.tick(wall(120));
    moved(&e, "a tick that re-scores a silent customer", true);
    e.set_model(Arc::new(flat_model()));
    moved(&e, "a new model", true);
    e.tick(wall(121));
    moved(&e, "the re-check of everyone after a new model", true);
    e.begin_snapshot();
    while e.snapshot_slice(10).is_some() {}
    moved(&e, "a snapshot", false);
}

#[test]
fn the_customer_view_explains_the_score() {
    let mut e = engine(ClockMode::Event);
    e.apply_batch(batch(vec![purchase(1, "a", 0), purchase(2, "b", 120)]), 0);
    let view = e.customer("a").unwrap();
    assert_eq!(view.lifecycle_stage, LifecycleStage::Silent);
    assert!(view.churn_probability.unwrap() > 0.5);
    assert_eq!(view.reasons, vec!["log_recency_days:high".to_string()]);
    assert_eq!(view.features.len(), FEATURE_NAMES.len());
    assert!(e.customer("nobody").is_none());
}

/// Win-back with one action for every segment and a budget of 2 tasks a day.
fn budgeted(clock: ClockMode) -> EngineSettings {
    let mut s = winback_only(clock);
    s.winback.actions = crate::classify::Segment::ALL
        .into_iter()
        .map(|segment| (segment, "coupon".to_string()))
        .collect();
    s.winback.budgets = std::collections::BTreeMap::from([(
        "coupon".to_string(),
        crate::decide::ActionBudget::new(2.0, 1.0),
    )]);
    s
}

/// `n` buyers of different spend (10, 20, …), all on day 0.
fn same_day_buyers(n: u32) -> Vec<Entry> {
    (0..n)
        .map(|i| {
            entry(
                u64::from(i),
                &[
                    ("customer_id", format!("c{i}")),
                    ("type", "purchase".into()),
                    ("amount", (10 * (i + 1)).to_string()),
                    ("ts", (u64::from(T0) * 1000).to_string()),
                ],
            )
        })
        .collect()
}

/// The tasks of a batch that only moves the event clock to `day`.
fn day_tick(engine: &mut Engine, seq: u64, day: u32) -> Vec<Task> {
    engine
        .apply_batch(batch(vec![visit(seq, "clock", day)]), 0)
        .tasks
}

#[test]
fn a_restart_keeps_the_budgets_pacing() {
    let model =
        || Arc::new(Model::from_file(&crate::model::tests::recency_only_model_file()).unwrap());
    let streams = vec!["churn:events".to_string()];
    // Five buyers of different spend on day 0 cross the threshold together about 50 days
    // later: at most two get a task that day (the action's first: paced on the rate seen,
    // so the burst may get fewer), the others on later days.
    let buyers = || same_day_buyers(5);
    let mut whole = Engine::new(budgeted(ClockMode::Event), model(), Metrics::new().engine);
    whole.apply_batch(batch(buyers()), 0);
    // The crossing (49.6 days) is noticed within a day.
    let day_one = day_tick(&mut whole, 10, 51);
    let per_day = |tasks: &[Task]| {
        let mut days = BTreeMap::new();
        for t in tasks {
            *days.entry(t.as_of / DAY).or_insert(0) += 1;
        }
        days
    };
    assert!(
        (1..5).contains(&day_one.len()) && per_day(&day_one).values().all(|&n| n <= 2),
        "the day's budget: {day_one:?}"
    );
    let later = day_tick(&mut whole, 11, 70);
    assert!(
        (1..=4).contains(&later.len()) && day_one.len() + later.len() <= 5,
        "the others on later days: {later:?}"
    );

    let first_metrics = Metrics::new();
    let mut first = Engine::new(
        budgeted(ClockMode::Event),
        model(),
        first_metrics.engine.clone(),
    );
    first.apply_batch(batch(buyers()), 0);
    assert_eq!(day_tick(&mut first, 10, 51), day_one);
    let bytes = crate::state::codec::encode(&first.snapshot(), &streams, 0);
    let decoded = crate::state::codec::decode(&bytes, &streams).unwrap().state;
    let metrics = Metrics::new();
    let mut restored = Engine::restore(
        budgeted(ClockMode::Event),
        model(),
        metrics.engine.clone(),
        decoded,
    );
    // The budget gauges show what the engine that never stopped shows, before any batch.
    let budget_lines = |m: &Metrics| -> Vec<String> {
        m.render()
            .lines()
            .filter(|l| l.starts_with("churnd_winback_budget_"))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(budget_lines(&metrics), budget_lines(&first_metrics));
    assert!(
        budget_lines(&metrics)
            .iter()
            .any(|l| l.starts_with("churnd_winback_budget_priority_bar")),
        "{:?}",
        budget_lines(&metrics)
    );
    let pacing = first.state_header().budgets;
    assert_eq!(pacing.len(), 1);
    assert!(pacing[0].1.seen > 0);
    assert_eq!(restored.state_header().budgets, pacing);
    assert_eq!(
        day_tick(&mut restored, 11, 60),
        later,
        "a restart changes nothing"
    );
}

/// As [`a_restart_keeps_the_budgets_pacing`], under a pooled budget of 2 a day (the coupon
/// costs 1): the snapshot keeps the pool's day spend and its picture, and the restored
/// engine decides the later days as the one that never stopped.
#[test]
fn a_restart_keeps_the_pooled_budgets_pacing() {
    let settings = || {
        let mut s = budgeted(ClockMode::Event);
        s.winback.candidates.clear();
        s.winback.budget = crate::decide::PooledBudget {
            spend_per_day: Some(2.0),
        };
        s
    };
    let model =
        || Arc::new(Model::from_file(&crate::model::tests::recency_only_model_file()).unwrap());
    let streams = vec!["churn:events".to_string()];
    let buyers = || same_day_buyers(6);
    let mut whole = Engine::new(settings(), model(), Metrics::new().engine);
    assert!(whole.budgets.is_pooled());
    whole.apply_batch(batch(buyers()), 0);
    let day_one = day_tick(&mut whole, 10, 51);
    assert!(
        (1..=2).contains(&day_one.len()),
        "the day's spend: {day_one:?}"
    );
    let later = day_tick(&mut whole, 11, 60);
    assert!(!later.is_empty(), "the others on later days");

    let mut first = Engine::new(settings(), model(), Metrics::new().engine);
    first.apply_batch(batch(buyers()), 0);
    assert_eq!(day_tick(&mut first, 10, 51), day_one);
    // The day of the last task: its spend is the pool's day spend.
    let last = day_one.iter().map(|t| t.as_of).max().unwrap();
    let that_day = day_one.iter().filter(|t| t.as_of / DAY == last / DAY);
    let report = first.budgets.pool_report(last).unwrap();
    assert_eq!(report.spent_today, that_day.count() as f64);
    let now = first.now();
    let report_now = first.budgets.pool_report(now);
    let header = first.state_header();
    let pool = header.pool.clone().expect("the pool's pacing");
    assert!(pool.seen > 0.0 && pool.picture.total() > 0.0);
    assert_eq!(header.budgets.len(), 1, "the coupon alone");
    let bytes = crate::state::codec::encode(&first.snapshot(), &streams, 0);
    let decoded = crate::state::codec::decode(&bytes, &streams).unwrap().state;
    assert_eq!(decoded.header.pool.as_ref(), Some(&pool));
    let mut restored = Engine::restore(settings(), model(), Metrics::new().engine, decoded);
    assert_eq!(restored.state_header().pool, Some(pool));
    assert_eq!(restored.budgets.pool_report(last), Some(report));
    assert_eq!(restored.budgets.pool_report(now), report_now);
    assert_eq!(
        day_tick(&mut restored, 11, 60),
        later,
        "a restart changes nothing"
    );
}
