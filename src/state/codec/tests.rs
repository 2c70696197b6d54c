use super::*;
use crate::decide::uplift::{Arm, ArmOutcomes};
use crate::decide::{Group, PacerState, PoolState, TaskKind};
use crate::event::{Event, EventKind};
use crate::outcomes::OpenTask;
use std::sync::Arc;
use xxhash_rust::xxh3::xxh3_64;

fn streams() -> Vec<String> {
    vec!["churn:events".into(), "other".into()]
}

/// `customers` customers without extras.
fn plain(customers: usize) -> (Customers, Interner) {
    let mut store = Customers::new();
    for i in 0..customers {
        let id = format!("customer-{i}");
        let (idx, _) = store.find_or_insert(&id);
        let c = store.get_mut(idx);
        c.features.apply(&Event::new(
            &id,
            EventKind::Purchase,
            10.0 + i as f64,
            1_000_000 + i as u32,
        ));
        c.timer = Timer::unqueued(Some(2_000_000 + i as u32));
        c.winback = WinbackState {
            last_task_at: i as u32,
            episode_tasks: (i % 3) as u8,
            awaiting_recovery: i % 2 == 0,
        };
        c.stage = LifecycleStage::ALL.get(i % 7).copied();
        c.segment = (i % 4 != 0).then(|| Segment::ALL[i % 8]);
        c.bucket = Some((i % 10) as u8);
        c.contact = Contact {
            last_day: Day::from_number(10_000 + i as u16),
            prospect_visits: (i % 5) as u8,
        };
    }
    (store, Interner::default())
}

/// `customers` customers, every third with extras.
fn state(customers: usize) -> EngineState {
    let (mut store, mut profiles) = plain(customers);
    for i in (0..customers).step_by(3) {
        let extras = store.extra_mut(i as u32);
        let region = ["eu", "us"][i % 2];
        extras.profile = Some(profiles.profile([("region", region), ("tier", "gold")]));
        if i % 2 == 0 {
            let mut feedback = Feedback::default();
            feedback.apply(1 + (i % 5) as u8, 1_200_000 + i as u32);
            extras.signals_mut().feedback = Some(feedback);
        }
        let mut coupons = Decayed::default();
        coupons.add(1_100_000 + i as u32);
        extras.signals_mut().coupons = Some(coupons);
    }
    with_header(store, profiles)
}

fn with_header(customers: Customers, profiles: Interner) -> EngineState {
    EngineState {
        customers,
        profiles,
        header: StateHeader {
            watermark: 1_500_000,
            thresholds: RfmThresholds {
                recency_days: 90.0,
                frequency: 1.5,
                monetary: 100.25,
            },
            next_threshold_refresh: 1_600_000,
            scorings: 42,
            schedule_settings: 0xfeed,
            applied: vec![Some(EntryId { ms: 5, seq: 1 }), None],
            model_version: "m-1".into(),
            budgets: Vec::new(),
            care_budgets: Vec::new(),
            pool: None,
            partitions: PartitionCount::ONE,
            open_tasks: Vec::new(),
            uplift: Vec::new(),
        },
    }
}

fn same(a: &EngineState, b: &EngineState) {
    assert_eq!(a.customers.len(), b.customers.len());
    for (idx, c) in a.customers.iter() {
        assert_eq!(a.customers.id(idx), b.customers.id(idx));
        let d = b.customers.get(idx);
        assert_eq!(c.features, d.features);
        assert_eq!(c.timer.due(), d.timer.due());
        assert_eq!(
            (c.winback, c.stage, c.segment, c.bucket, c.contact),
            (d.winback, d.stage, d.segment, d.bucket, d.contact)
        );
        assert_eq!(a.customers.extra(idx), b.customers.extra(idx), "{idx}");
    }
    assert_eq!(a.customers.extras_len(), b.customers.extras_len());
    assert_eq!(a.header, b.header);
}

/// `state` in the layout of version 1, 2 or 3: the body's length in the header, no
/// extras and no open tasks (the state must have none), versions 1 and 2 without the
/// contacts, version 1 without the schedule settings.
fn legacy(state: &EngineState, version: u32) -> Vec<u8> {
    assert_eq!(state.customers.extras_len(), 0);
    let v4 = v4(state);
    let customers: usize = state
        .customers
        .iter()
        .map(|(i, _)| CUSTOMER_FIXED_LEN + 1 + state.customers.id(i).len())
        .sum();
    let body_end = v4.len() - TRAILER_LEN;
    let customers_at = body_end - customers;
    let mut out = v4[..customers_at].to_vec();
    let mut at = customers_at;
    for (i, _) in state.customers.iter() {
        let len = CUSTOMER_FIXED_LEN + state.customers.id(i).len();
        let kept = if version <= 2 { len - CONTACT_LEN } else { len };
        out.extend_from_slice(&v4[at..at + kept]);
        at += len + 1;
    }
    if version == 1 {
        // created_ms, model_version, watermark, next_threshold_refresh, scorings precede it.
        let settings_at = HEADER_LEN + 8 + 2 + state.header.model_version.len() + 4 + 4 + 8;
        out.drain(settings_at..settings_at + 8);
    }
    out[8..12].copy_from_slice(&version.to_le_bytes());
    let body_len = (out.len() - HEADER_LEN) as u64;
    out[12..20].copy_from_slice(&body_len.to_le_bytes());
    let sum = xxh3_64(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    out
}

/// The bytes version 6 added after the partition count: the care budgets' pacing and
/// every budget's first candidate's time.
fn v6_added_len(state: &EngineState) -> usize {
    let mut care = Vec::new();
    put_budgets(&mut care, &state.header.care_budgets);
    care.len() + 4 * (state.header.budgets.len() + state.header.care_budgets.len())
}

/// The bytes version 7 added after what version 6 did: the book.
fn v7_added_len(state: &EngineState) -> usize {
    let mut book = Vec::new();
    put_uplift(&mut book, &state.header.uplift);
    book.len()
}

/// The bytes version 8 added after what version 7 did: the pooled budget.
fn v8_added_len(state: &EngineState) -> usize {
    let mut pool = Vec::new();
    put_pool(&mut pool, state.header.pool.as_ref());
    pool.len()
}

/// Where the partition count of `state`'s encoding is: before what versions 6 to 8
/// added, and the customers' count and ID bytes, which end what [`Encoder::start`]
/// writes.
fn partitions_at(state: &EngineState) -> usize {
    let mut head = Vec::new();
    let size = CaptureSize {
        customers: 0,
        id_bytes: 0,
    };
    let _ = Encoder::start(&state.header, size, &streams(), 0, &mut head);
    head.len() - 16 - v8_added_len(state) - v7_added_len(state) - v6_added_len(state) - 2
}

/// `bytes` with `len` bytes of the body removed at `at`, as version `version`.
fn cut(mut out: Vec<u8>, at: usize, len: usize, version: u32) -> Vec<u8> {
    out.drain(at..at + len);
    out[8..12].copy_from_slice(&version.to_le_bytes());
    let trailer = out.len() - TRAILER_LEN;
    let body_len = u64::from_le_bytes(out[trailer..trailer + 8].try_into().unwrap()) - len as u64;
    out[trailer..trailer + 8].copy_from_slice(&body_len.to_le_bytes());
    let end = out.len() - CHECKSUM_LEN;
    let sum = xxh3_64(&out[..end]);
    out[end..].copy_from_slice(&sum.to_le_bytes());
    out
}

/// `state` in the layout of version 7: version 8 without the pooled budget's record that
/// follows the book (the state must have no pool: see [`as_format_7`]).
fn v7(state: &EngineState) -> Vec<u8> {
    assert!(state.header.pool.is_none());
    let out = encode(state, &streams(), 0);
    let at = partitions_at(state) + 2 + v6_added_len(state) + v7_added_len(state);
    cut(out, at, v8_added_len(state), 7)
}

/// `state` in the layout of version 6: version 7 without the book that follows what
/// version 6 added.
fn v6(state: &EngineState) -> Vec<u8> {
    let at = partitions_at(state) + 2 + v6_added_len(state);
    cut(v7(state), at, v7_added_len(state), 6)
}

/// `state` as version 7 kept it: the pooled budget's pacing, if any, last among
/// win-back's budgets as a pseudo-action (what churnd up to 8a5014b did).
fn as_format_7(state: &EngineState) -> EngineState {
    let mut s = state.clone();
    if let Some(pool) = s.header.pool.take() {
        let bits = pool.seen.to_bits();
        let pseudo = PacerState {
            day: pool.day,
            admitted: (bits >> 32) as u32,
            seen: bits as u32,
            expected: pool.expected,
            days: pool.days,
            picture: pool.picture,
            first_at: pool.first_at,
        };
        s.header
            .budgets
            .push((sections::FORMAT_7_POOL_NAME.into(), pseudo));
    }
    s
}

/// A pooled budget's pacing mid-day, its spend not a whole number.
fn pool() -> PoolState {
    let mut pool = PoolState {
        day: 10_000,
        seen: 12.345_678_9,
        expected: 310.25,
        days: 12,
        first_at: 864_000_007,
        ..PoolState::default()
    };
    pool.picture.add_to(3, 0.2);
    pool.picture.add_to(95, 41.5);
    pool
}

/// The pool's record round trips bit for bit, and is one byte without a pool.
#[test]
fn the_pooled_budget_round_trips_in_a_record_of_its_own() {
    let mut s = state(4);
    s.header.budgets = vec![("coupon".into(), PacerState::default())];
    s.header.uplift = book();
    let without = encode(&s, &streams(), 0);
    assert_eq!(v8_added_len(&s), 1, "no pool: its presence byte");
    s.header.pool = Some(pool());
    let with = encode(&s, &streams(), 0);
    let d = decode(&with, &streams()).unwrap();
    same(&s, &d.state);
    let restored = d.state.header.pool.unwrap();
    assert_eq!(restored.seen.to_bits(), pool().seen.to_bits());
    // day, seen, expected, days, first_at, then two buckets of 12 bytes.
    let record = 1 + 4 + 8 + 8 + 4 + 4 + 4 + 2 * 12;
    assert_eq!(with.len() - without.len(), record - 1);
    assert_eq!(v8_added_len(&s), record);
    let mut bad = with.clone();
    let at = partitions_at(&s) + 2 + v6_added_len(&s) + v7_added_len(&s);
    assert_eq!(bad[at], 1);
    bad[at] = 2;
    let end = bad.len() - CHECKSUM_LEN;
    let sum = xxh3_64(&bad[..end]);
    bad[end..].copy_from_slice(&sum.to_le_bytes());
    assert_eq!(
        decode(&bad, &streams()).err(),
        Some(CodecError::Malformed(
            "pooled budget: presence byte 2".into()
        ))
    );
}

/// Version 7 kept the pool as a pseudo-action among win-back's budgets: it reads into the
/// pool's record, exactly, and the actions' budgets are left without it; a version-7
/// snapshot without a pool reads as none.
#[test]
fn reads_version_7_s_pooled_budget_from_its_pseudo_action() {
    let mut s = state(5);
    let coupon = PacerState {
        day: 10_000,
        admitted: 2,
        seen: 9,
        first_at: 864_000_123,
        ..PacerState::default()
    };
    s.header.budgets = vec![("coupon".into(), coupon)];
    s.header.uplift = book();
    s.header.pool = Some(pool());
    let old = as_format_7(&s);
    assert_eq!(old.header.budgets.len(), 2);
    let d = decode(&v7(&old), &streams()).unwrap();
    same(&s, &d.state);
    assert_eq!(
        d.state.header.pool.unwrap().seen.to_bits(),
        pool().seen.to_bits()
    );
    // A spend whose bits are no amount reads as 0, as the restore of format 7 took it.
    let mut nan = as_format_7(&s);
    let pseudo = &mut nan.header.budgets[1].1;
    (pseudo.admitted, pseudo.seen) = (0x7ff8_0000, 0);
    let d = decode(&v7(&nan), &streams()).unwrap();
    assert_eq!(d.state.header.pool.map(|p| p.seen), Some(0.0));
    s.header.pool = None;
    let d = decode(&v7(&s), &streams()).unwrap();
    same(&s, &d.state);
}

/// `state` in the layout of version 5: version 6 without the care budgets and the
/// budgets' first candidates' times that follow the partition count.
fn v5(state: &EngineState) -> Vec<u8> {
    cut(v6(state), partitions_at(state) + 2, v6_added_len(state), 5)
}

fn book() -> Vec<(Arm, ArmOutcomes)> {
    let arm = |action: &str, segment| Arm {
        kind: TaskKind::Winback,
        action: action.into(),
        segment,
    };
    vec![
        (
            arm("coupon", Segment::GeneralWinback),
            ArmOutcomes {
                treated: 1_000,
                treated_converted: 300,
                control: 100,
                control_converted: 10,
            },
        ),
        (
            arm("personal_call", Segment::ImportantValue),
            ArmOutcomes {
                treated: 7,
                treated_converted: 0,
                control: 0,
                control_converted: 0,
            },
        ),
    ]
}

#[test]
fn the_book_round_trips_and_version_6_reads_as_none() {
    let mut s = state(5);
    s.header.uplift = book();
    s.header.budgets = vec![("coupon".into(), PacerState::default())];
    let d = decode(&encode(&s, &streams(), 0), &streams()).unwrap();
    same(&s, &d.state);
    let d = decode(&v6(&s), &streams()).unwrap();
    let mut expected = s.clone();
    expected.header.uplift.clear();
    same(&expected, &d.state);
}

#[test]
fn an_arm_with_more_conversions_than_tasks_is_malformed() {
    let mut s = state(1);
    s.header.uplift = book();
    s.header.uplift[1].1.treated_converted = 8;
    let bytes = encode(&s, &streams(), 0);
    assert!(matches!(
        decode(&bytes, &streams()),
        Err(CodecError::Malformed(m)) if m.contains("more conversions than tasks")
    ));
}

/// `state` in the layout of version 4: version 5 without the budgets and the open tasks
/// (the state must have none: two counts of 4 bytes) and the partition count (2 bytes)
/// that follow the stream positions.
fn v4(state: &EngineState) -> Vec<u8> {
    assert!(state.header.budgets.is_empty() && state.header.open_tasks.is_empty());
    cut(v5(state), partitions_at(state) - 8, 10, 4)
}

/// Version 5 knew no care budgets and not when a budget's first candidate came: read
/// as none and unknown (0).
#[test]
fn reads_version_5_without_care_budgets() {
    let mut s = state(5);
    let pacing = PacerState {
        day: 10_000,
        admitted: 2,
        seen: 9,
        first_at: 864_000_123,
        ..PacerState::default()
    };
    s.header.budgets = vec![("coupon".into(), pacing.clone())];
    s.header.care_budgets = vec![("welcome_follow_up".into(), pacing)];
    let d = decode(&v5(&s), &streams()).unwrap();
    let mut expected = s.clone();
    expected.header.care_budgets.clear();
    expected.header.budgets[0].1.first_at = 0;
    same(&expected, &d.state);
}

#[test]
fn reads_version_4_as_one_partition_without_budgets() {
    let mut s = state(20);
    s.header.partitions = PartitionCount::new(16).unwrap();
    let d = decode(&v4(&s), &streams()).unwrap();
    let mut expected = s.clone();
    expected.header.partitions = PartitionCount::ONE;
    same(&expected, &d.state);
}

#[test]
fn a_partition_count_out_of_range_is_malformed() {
    let mut s = state(1);
    s.header.partitions = PartitionCount::new(16).unwrap();
    let mut bytes = encode(&s, &streams(), 0);
    let at = partitions_at(&s);
    assert_eq!(bytes[at..at + 2], 16u16.to_le_bytes());
    bytes[at..at + 2].copy_from_slice(&0u16.to_le_bytes());
    let end = bytes.len() - CHECKSUM_LEN;
    let sum = xxh3_64(&bytes[..end]);
    bytes[end..].copy_from_slice(&sum.to_le_bytes());
    assert_eq!(
        decode(&bytes, &streams()).err(),
        Some(CodecError::Malformed("0 partitions".into()))
    );
}

#[test]
fn budgets_round_trip() {
    let mut s = state(3);
    let mut pacing = PacerState {
        day: 10_000,
        admitted: 3,
        seen: 70,
        expected: 65.5,
        days: 9,
        ..PacerState::default()
    };
    pacing.picture.add_to(17, 2.25);
    pacing.picture.add_to(200, 0.125);
    pacing.first_at = 864_000_001;
    s.header.budgets = vec![
        ("coupon".into(), pacing.clone()),
        ("personal_call".into(), PacerState::default()),
    ];
    pacing.first_at = 864_000_002;
    s.header.care_budgets = vec![("account_manager_call".into(), pacing)];
    let bytes = encode(&s, &streams(), 1);
    same(&s, &decode(&bytes, &streams()).unwrap().state);
}

fn open_task(id: &str, kind: TaskKind, segment: Option<Segment>) -> OpenTask {
    OpenTask {
        task_id: id.into(),
        kind,
        group: Group::Control,
        segment,
        action: "discount_10".into(),
        raised_at: 1_000_000,
        closes_at: 1_000_000 + 30 * 86_400,
        cancelled: kind == TaskKind::Revisit,
    }
}

#[test]
fn round_trips_every_field() {
    let mut s = state(50);
    s.header.partitions = PartitionCount::new(16).unwrap();
    s.header.open_tasks = vec![
        (
            "customer-3".into(),
            open_task("t1", TaskKind::Winback, Some(Segment::GeneralWinback)),
        ),
        ("gone".into(), open_task("t2", TaskKind::Convert, None)),
        (
            "gone".into(),
            open_task("t3", TaskKind::Revisit, Some(Segment::ImportantValue)),
        ),
    ];
    let bytes = encode(&s, &streams(), 1234);
    let d = decode(&bytes, &streams()).unwrap();
    let profiled = d.state.customers.extra(0).unwrap().profile.clone().unwrap();
    let shared = d.state.customers.extra(6).unwrap().profile.clone().unwrap();
    assert!(
        Arc::ptr_eq(&profiled, &shared),
        "equal profiles are shared after a load"
    );
    same(&s, &d.state);
    assert_eq!(d.created_ms, 1234);
    assert!(d.dropped_streams.is_empty());
    assert_eq!(
        d.state.customers.find("customer-7"),
        s.customers.find("customer-7")
    );
}

#[test]
fn pieces_encode_as_the_whole_and_a_short_count_is_refused() {
    let s = state(50);
    let mut store = s.customers.clone();
    let size = store.begin_capture();
    let mut bytes = Vec::new();
    let mut encoder = Encoder::start(&s.header, size, &streams(), 9, &mut bytes);
    while let Some(slice) = store.capture_next(8) {
        encoder.customers(slice.iter(), &mut bytes);
    }
    encoder.finish(&mut bytes).unwrap();
    assert_eq!(bytes, encode(&s, &streams(), 9));

    let mut short = Vec::new();
    let encoder = Encoder::start(&s.header, size, &streams(), 9, &mut short);
    assert_eq!(encoder.finish(&mut short), Err(CodecError::Incomplete));
}

/// `state` as read from a format without contacts: the last win-back task stands for
/// the last contact.
fn contacts_from_last_win_back(state: &EngineState) -> EngineState {
    let mut expected = state.clone();
    for (i, c) in state.customers.iter() {
        expected.customers.get_mut(i).contact = Contact {
            last_day: Day::of(c.winback.last_task_at),
            prospect_visits: 0,
        };
    }
    expected
}

#[test]
fn reads_version_2_with_the_last_win_back_as_the_last_contact() {
    let (store, profiles) = plain(4);
    let s = with_header(store, profiles);
    let d = decode(&legacy(&s, 2), &streams()).unwrap();
    same(&contacts_from_last_win_back(&s), &d.state);
}

#[test]
fn reads_version_1_without_schedule_settings() {
    let (store, profiles) = plain(3);
    let s = with_header(store, profiles);
    let d = decode(&legacy(&s, 1), &streams()).unwrap();
    let mut expected = contacts_from_last_win_back(&s);
    expected.header.schedule_settings = 0;
    same(&expected, &d.state);
}

#[test]
fn reads_version_3_without_extras() {
    let (store, profiles) = plain(5);
    let s = with_header(store, profiles);
    let d = decode(&legacy(&s, 3), &streams()).unwrap();
    same(&s, &d.state);
}

#[test]
fn maps_positions_by_stream_name() {
    let s = state(1);
    let bytes = encode(&s, &streams(), 0);
    let d = decode(&bytes, &["new".into(), "churn:events".into()]).unwrap();
    assert_eq!(
        d.state.header.applied,
        vec![None, Some(EntryId { ms: 5, seq: 1 })]
    );
    let d = decode(&bytes, &["new".into()]).unwrap();
    assert_eq!(d.dropped_streams, vec!["churn:events".to_string()]);
}

#[test]
fn a_position_at_the_beginning_is_kept_apart_from_no_position() {
    let mut s = state(1);
    s.header.applied = vec![None, Some(EntryId::default())];
    let d = decode(&encode(&s, &streams(), 0), &streams()).unwrap();
    assert_eq!(d.state.header.applied, vec![None, Some(EntryId::default())]);
}

#[test]
fn detects_truncation_at_every_length() {
    let bytes = encode(&state(3), &streams(), 0);
    for len in 0..bytes.len() {
        let err = decode(&bytes[..len], &streams()).err();
        assert!(
            matches!(
                err,
                Some(CodecError::Truncated { .. } | CodecError::NoEnd { .. })
            ),
            "{len}: {err:?}"
        );
    }
}

#[test]
fn detects_every_flipped_byte() {
    let bytes = encode(&state(3), &streams(), 0);
    for i in 0..bytes.len() {
        let mut bad = bytes.clone();
        bad[i] ^= 0x40;
        assert!(
            decode(&bad, &streams()).is_err(),
            "flip at {i} went unnoticed"
        );
    }
}

#[test]
fn refuses_other_formats() {
    let mut bytes = encode(&state(1), &streams(), 0);
    bytes[8] = 9;
    assert_eq!(
        decode(&bytes, &streams()).err(),
        Some(CodecError::Version(9))
    );
    assert_eq!(
        decode(b"not a snapshot at all", &streams()).err(),
        Some(CodecError::Magic)
    );
}

#[test]
fn a_profile_with_a_key_twice_is_malformed() {
    let (mut store, mut profiles) = plain(1);
    store.extra_mut(0).profile = Some(profiles.profile([("region", "eu"), ("season", "x")]));
    let mut bytes = encode(&with_header(store, profiles), &streams(), 0);
    let at = bytes
        .windows(6)
        .position(|w| w == b"season")
        .expect("the second key");
    bytes[at..at + 6].copy_from_slice(b"region");
    let end = bytes.len() - CHECKSUM_LEN;
    let sum = xxh3_64(&bytes[..end]);
    bytes[end..].copy_from_slice(&sum.to_le_bytes());
    match decode(&bytes, &streams()) {
        Err(CodecError::Malformed(why)) => {
            assert!(why.contains("profile attribute \"region\""), "{why}")
        }
        other => panic!("{:?}", other.err()),
    }
}

#[test]
fn a_checksummed_but_inconsistent_body_is_malformed_not_a_panic() {
    let (store, profiles) = plain(2);
    let mut bytes = encode(&with_header(store, profiles), &streams(), 0);
    // Claim a million customers, then fix the checksum: decoding must refuse it.
    let count_at = bytes.len() - TRAILER_LEN - 2 * (CUSTOMER_FIXED_LEN + 1 + 10) - 16;
    bytes[count_at..count_at + 8].copy_from_slice(&1_000_000u64.to_le_bytes());
    let end = bytes.len() - CHECKSUM_LEN;
    let sum = xxh3_64(&bytes[..end]);
    bytes[end..].copy_from_slice(&sum.to_le_bytes());
    assert!(matches!(
        decode(&bytes, &streams()),
        Err(CodecError::Malformed(_))
    ));
}
