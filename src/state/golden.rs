//! Golden snapshots: one file per format version, written by the churnd of a commit that
//! wrote that version (tests/fixtures/snapshots/README.md says which, and how), decoded
//! here by today's code field by field. The codec's own tests cut their older formats from
//! today's encoder, so they cannot notice a layout that drifted from what old churnds
//! actually wrote; these files can.
//!
//! All four runs were fed the same events, so what the files hold differs only where the
//! formats or the old churnds differ: no contacts before version 3 (the last win-back task
//! stands for them), no schedule fingerprint in version 1, no extras before version 4 (its
//! profile and feedback events were dead-lettered as unknown types, its coupon ignored).

use super::codec::{self, Decoded, FORMAT_VERSION};
use crate::classify::{LifecycleStage, RfmThresholds, Segment};
use crate::decide::{Contact, WinbackState};
use crate::engine::Customer;
use crate::event::EntryId;
use crate::features::{CustomerFeatures, Decayed, Feedback};
use crate::time::UnixSeconds;

const V1: &[u8] = include_bytes!("../../tests/fixtures/snapshots/v1.bin");
const V2: &[u8] = include_bytes!("../../tests/fixtures/snapshots/v2.bin");
const V3: &[u8] = include_bytes!("../../tests/fixtures/snapshots/v3.bin");
const V4: &[u8] = include_bytes!("../../tests/fixtures/snapshots/v4.bin");
const V5: &[u8] = include_bytes!("../../tests/fixtures/snapshots/v5.bin");
const V7: &[u8] = include_bytes!("../../tests/fixtures/snapshots/v7.bin");

const A: &str = "churn:events";
const B: &str = "churn:events:b";

/// 2020-01-01T00:00:00Z: the events' day 0.
const T0: UnixSeconds = 1_577_836_800;
const DAY: UnixSeconds = 86_400;

/// The start of the events' day `n`.
fn day(n: u32) -> UnixSeconds {
    T0 + n * DAY
}

/// The entry ID of the events' day `n` (every entry's ID is its event time).
fn entry(n: u32) -> EntryId {
    EntryId {
        ms: u64::from(day(n)) * 1_000,
        seq: 0,
    }
}

fn streams() -> Vec<String> {
    vec![A.into(), B.into()]
}

/// `bytes` decoded; first checks that the file is of the format version it stands for.
fn decode(bytes: &[u8], version: u32) -> Decoded {
    let written = u32::from_le_bytes(bytes[8..12].try_into().unwrap());
    assert_eq!(written, version, "the fixture's format version");
    codec::decode(bytes, &streams()).unwrap_or_else(|e| panic!("version {version}: {e}"))
}

/// Checks that `d`, encoded by today's encoder and decoded again, is the same state, record
/// for record: an old file must come back as it was, so that a restart after an upgrade
/// changes nothing.
fn assert_encodes_again(d: &Decoded) {
    let again = codec::decode(
        &codec::encode(&d.state, &streams(), d.created_ms),
        &streams(),
    )
    .expect("today's encoding decodes");
    assert_eq!(again.state.header, d.state.header);
    assert_eq!(again.created_ms, d.created_ms);
    let (old, new) = (&d.state.customers, &again.state.customers);
    assert_eq!(new.len(), old.len());
    for ((i, a), (j, b)) in old.iter().zip(new.iter()) {
        assert_eq!((old.id(i), a), (new.id(j), b));
        assert_eq!(old.extra(i), new.extra(j), "{}", old.id(i));
    }
}

/// The customers' IDs in the order of the table.
fn ids(d: &Decoded) -> Vec<&str> {
    let customers = &d.state.customers;
    customers.iter().map(|(i, _)| customers.id(i)).collect()
}

/// What every version holds of one customer.
struct Expected {
    id: &'static str,
    purchases: u32,
    first_purchase: UnixSeconds,
    last_purchase: UnixSeconds,
    last_event: UnixSeconds,
    /// Lifetime spend net of refunds.
    spend: f64,
    /// Refunds, complaints and visits, decayed to the last event.
    refunds: f64,
    complaints: f64,
    visits: f64,
    winback: WinbackState,
    stage: LifecycleStage,
    segment: Segment,
    bucket: u8,
}

/// `2^(-days / half_life)`: what one event weighs `days` later.
fn weight(days: f64, half_life: f64) -> f64 {
    (-days / half_life).exp2()
}

/// The customers, in store order (first seen: stream `A`'s entries come first in a read).
fn expected() -> [Expected; 5] {
    let task = |at| WinbackState {
        last_task_at: at,
        episode_tasks: 1,
        awaiting_recovery: true,
    };
    [
        // purchase 120.50 (day 0), visit (2), purchase 80.25 with a coupon (40), refund
        // 20.00 (45), complaint (46). Win-back tasks on days 30 and 83.
        Expected {
            id: "alice",
            purchases: 2,
            first_purchase: day(0),
            last_purchase: day(40),
            last_event: day(46),
            spend: 180.75,
            refunds: weight(1.0, 90.0),
            complaints: 1.0,
            visits: weight(44.0, 30.0),
            winback: task(day(83)),
            stage: LifecycleStage::Lost,
            segment: Segment::GeneralWinback,
            bucket: 9,
        },
        // purchase 35.00 (1), visits (3, 50), purchase 15.75 (60). Tasks on days 31, 107.
        Expected {
            id: "bob",
            purchases: 2,
            first_purchase: day(1),
            last_purchase: day(60),
            last_event: day(60),
            spend: 50.75,
            refunds: 0.0,
            complaints: 0.0,
            visits: weight(57.0, 30.0) + weight(10.0, 30.0),
            winback: task(day(107)),
            stage: LifecycleStage::Lost,
            segment: Segment::GeneralWinback,
            bucket: 9,
        },
        // purchase 9.99 (5), then silence. Task on day 35.
        Expected {
            id: "carol",
            purchases: 1,
            first_purchase: day(5),
            last_purchase: day(5),
            last_event: day(5),
            spend: f64::from(9.99f32),
            refunds: 0.0,
            complaints: 0.0,
            visits: 0.0,
            winback: task(day(35)),
            stage: LifecycleStage::Churned,
            segment: Segment::GeneralWinback,
            bucket: 9,
        },
        // purchase 50.00 (400): the event clock's last step.
        Expected {
            id: "dave",
            purchases: 1,
            first_purchase: day(400),
            last_purchase: day(400),
            last_event: day(400),
            spend: 50.0,
            refunds: 0.0,
            complaints: 0.0,
            visits: 0.0,
            winback: WinbackState::default(),
            stage: LifecycleStage::New,
            segment: Segment::GeneralDevelopment,
            bucket: 6,
        },
        // Stream B: purchase 200.00 (10), profile (11), complaint (12), feedback 2 (13).
        // Task on day 400.
        Expected {
            id: "erin",
            purchases: 1,
            first_purchase: day(10),
            last_purchase: day(10),
            last_event: day(12),
            spend: 200.0,
            refunds: 0.0,
            complaints: 1.0,
            visits: 0.0,
            winback: task(day(400)),
            stage: LifecycleStage::Churned,
            segment: Segment::GeneralWinback,
            bucket: 9,
        },
    ]
}

/// The decayed visits (not read by anything but the model's vector): the last word of the
/// features' exact encoding.
fn visits(f: &CustomerFeatures) -> f64 {
    let bytes = f.to_bytes();
    f64::from(f32::from_le_bytes(bytes[52..56].try_into().unwrap()))
}

fn close(what: &str, actual: f64, expected: f64) {
    assert!(
        (actual - expected).abs() < 1e-5,
        "{what}: {actual}, expected {expected}"
    );
}

/// Checks what every version holds: header, customers in order with their features,
/// win-back state and classification, and their next checks (`due`, by customer).
fn check_common(d: &Decoded, version: u32, scorings: u64, due: [u32; 5]) {
    let what = |field: &str| format!("version {version}: {field}");
    let h = &d.state.header;
    assert_eq!(h.model_version, "cdnow-h90-3d1e41d4", "{}", what("model"));
    assert_eq!(h.watermark, day(400), "{}", what("event clock"));
    assert_eq!(h.applied, vec![Some(entry(400)), Some(entry(13))]);
    assert_eq!(
        h.thresholds,
        RfmThresholds {
            recency_days: 90.0,
            frequency: 1.5,
            monetary: 100.0,
        },
        "{}",
        what("the fixed segment thresholds")
    );
    assert_eq!(h.next_threshold_refresh, 0, "{}", what("fixed segments"));
    assert_eq!(h.scorings, scorings, "{}", what("scorings"));
    assert!(d.dropped_streams.is_empty());

    let customers = &d.state.customers;
    let ids: Vec<&str> = customers.iter().map(|(i, _)| customers.id(i)).collect();
    assert_eq!(
        ids,
        ["alice", "bob", "carol", "dave", "erin"],
        "{}",
        what("ids")
    );
    for ((i, c), (x, due)) in customers.iter().zip(expected().iter().zip(due)) {
        let what = |field: &str| format!("version {version}, {}: {field}", x.id);
        assert_eq!(customers.find(x.id), Some(i));
        let f = &c.features;
        assert_eq!(f.purchases(), x.purchases, "{}", what("purchases"));
        assert_eq!(f.first_purchase(), Some(x.first_purchase));
        assert_eq!(f.last_purchase(), Some(x.last_purchase));
        assert_eq!(f.last_event(), x.last_event, "{}", what("last event"));
        let rfm = f.rfm(x.last_event).unwrap();
        assert_eq!(rfm.total_spend, x.spend, "{}", what("spend"));
        let (refunds, complaints) = f.dissatisfaction(x.last_event);
        close(&what("refunds"), refunds, x.refunds);
        close(&what("complaints"), complaints, x.complaints);
        close(&what("visits"), visits(f), x.visits);
        assert_eq!(c.winback, x.winback, "{}", what("win-back"));
        assert_eq!(
            (c.stage, c.segment, c.bucket),
            (Some(x.stage), Some(x.segment), Some(x.bucket)),
            "{}",
            what("classification")
        );
        assert_eq!(c.timer.due(), Some(due), "{}", what("next check"));
    }
}

/// Contacts of versions 1 and 2 (none kept): the day of the last win-back task.
fn contacts_from_win_back(d: &Decoded) {
    for (_, c) in d.state.customers.iter() {
        assert_eq!(
            c.contact,
            Contact {
                last_day: crate::time::Day::of(c.winback.last_task_at),
                prospect_visits: 0,
            }
        );
    }
}

/// Contacts of versions 3 and 4: the day of the last task of any kind: the anniversaries of
/// alice's, bob's and carol's first purchases (days 363, 364, 368), erin's win-back (400).
fn contacts_kept(d: &Decoded) {
    let days: Vec<u16> = d
        .state
        .customers
        .iter()
        .map(|(_, c): (_, &Customer)| c.contact.last_day.number())
        .collect();
    let epoch_day = |n: u32| (day(n) / DAY) as u16;
    assert_eq!(
        days,
        [
            epoch_day(363),
            epoch_day(364),
            epoch_day(368),
            0,
            epoch_day(400)
        ]
    );
}

/// Next checks of versions 1 and 2, by customer in store order.
const DUE_V1_V2: [u32; 5] = [
    T0 + 405 * DAY,
    T0 + 410 * DAY + DAY / 2,
    T0 + 430 * DAY,
    T0 + 405 * DAY,
    T0 + 430 * DAY,
];
/// From version 3 on, bob's next check is another (the churnds schedule checks
/// differently).
const DUE_V3_V4: [u32; 5] = [
    T0 + 405 * DAY,
    T0 + 424 * DAY,
    T0 + 430 * DAY,
    T0 + 405 * DAY,
    T0 + 430 * DAY,
];

#[test]
fn version_1_written_by_churnd_8aa0bb6_decodes_field_by_field() {
    let d = decode(V1, 1);
    assert_eq!(d.created_ms, 1_796_530_726_484);
    check_common(&d, 1, 90, DUE_V1_V2);
    assert_eq!(d.state.header.schedule_settings, 0, "unknown in version 1");
    contacts_from_win_back(&d);
    assert_eq!(d.state.customers.extras_len(), 0);
}

#[test]
fn version_2_written_by_churnd_c22b595_decodes_field_by_field() {
    let d = decode(V2, 2);
    assert_eq!(d.created_ms, 1_796_530_728_544);
    check_common(&d, 2, 90, DUE_V1_V2);
    assert_eq!(d.state.header.schedule_settings, 0xb1e2_3c68_e23f_6ad1);
    contacts_from_win_back(&d);
    assert_eq!(d.state.customers.extras_len(), 0);
}

#[test]
fn version_3_written_by_churnd_49ba754_decodes_field_by_field() {
    let d = decode(V3, 3);
    assert_eq!(d.created_ms, 1_796_530_730_729);
    check_common(&d, 3, 96, DUE_V3_V4);
    assert_eq!(d.state.header.schedule_settings, 0x1cdf_4ff1_148c_485a);
    contacts_kept(&d);
    assert_eq!(d.state.customers.extras_len(), 0);
}

#[test]
fn version_4_written_by_churnd_678f646_decodes_field_by_field() {
    let d = decode(V4, 4);
    assert_eq!(d.created_ms, 1_796_530_732_953);
    check_common(&d, 4, 98, DUE_V3_V4);
    assert_eq!(d.state.header.schedule_settings, 0x38ba_4c8a_5004_6c13);
    contacts_kept(&d);

    let customers = &d.state.customers;
    let extra = |id| customers.extra(customers.find(id).unwrap());
    assert_eq!(customers.extras_len(), 2, "alice's coupon, erin's profile");
    let alice = extra("alice").expect("alice's extras");
    assert_eq!(alice.profile, None);
    assert_eq!(alice.feedback(), None);
    assert_eq!(alice.coupons(), Some(Decayed::from_parts(1.0, day(40))));

    let erin = extra("erin").expect("erin's extras");
    let profile = erin.profile.as_ref().expect("erin's profile");
    assert_eq!(
        profile.iter().collect::<Vec<_>>(),
        [("birthday", "1985-06-15"), ("region", "eu")]
    );
    assert_eq!(profile.birthday(), Some((6, 15)));
    assert_eq!(
        erin.feedback(),
        Some(Feedback {
            last_score: 2,
            last_at: day(13),
            low_scores: Decayed::from_parts(1.0, day(13)),
        })
    );
    assert_eq!(erin.coupons(), None);
    for id in ["bob", "carol", "dave"] {
        assert_eq!(extra(id), None, "{id}");
    }
}

#[test]
fn features_are_bit_identical_in_every_version() {
    let v4 = decode(V4, 4);
    for (bytes, version) in [(V1, 1), (V2, 2), (V3, 3)] {
        let old = decode(bytes, version);
        for ((i, a), (_, b)) in old.state.customers.iter().zip(v4.state.customers.iter()) {
            let id = old.state.customers.id(i);
            assert_eq!(a.features, b.features, "version {version}, {id}");
        }
    }
}

#[test]
fn positions_are_mapped_by_stream_name_in_every_version() {
    for (bytes, version) in [(V1, 1), (V2, 2), (V3, 3), (V4, 4)] {
        let renamed = vec![B.to_string(), "new".into()];
        let d = codec::decode(bytes, &renamed).unwrap();
        assert_eq!(d.state.header.applied, vec![Some(entry(13)), None]);
        assert_eq!(d.dropped_streams, vec![A.to_string()], "version {version}");
    }
}

/// Version 4 knew no budgets and no partitions: its state reads as one partition without
/// pacing, and today's encoder writes it again as the same state.
#[test]
fn the_version_4_file_is_one_partition_and_encodes_again() {
    assert_eq!(FORMAT_VERSION, 8);
    let d = decode(V4, 4);
    assert_eq!(
        d.state.header.partitions,
        crate::partition::PartitionCount::ONE
    );
    assert!(d.state.header.budgets.is_empty());
    assert!(d.state.header.open_tasks.is_empty());
    assert_encodes_again(&d);
}

/// Version 5 kept win-back's budgets' pacing but no care budgets and not when a budget's
/// first candidate came: they read as none and unknown, and today's encoder writes the
/// state again as the same.
#[test]
fn version_5_written_by_churnd_47e4d6e_decodes_with_its_budgets() {
    let d = decode(V5, 5);
    assert_eq!(d.created_ms, 1_796_554_866_530);
    let h = &d.state.header;
    // The model shipped at that commit (retrained since the older files).
    assert_eq!(h.model_version, "cdnow-h90-6011f252");
    assert_eq!(h.watermark, day(400));
    assert_eq!(h.applied, vec![Some(entry(400)), Some(entry(13))]);
    assert_eq!(h.partitions, crate::partition::PartitionCount::ONE);
    let actions: Vec<&str> = h.budgets.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(
        actions,
        ["coupon", "email_reminder", "loyalty_offer", "personal_call"]
    );
    assert!(
        h.care_budgets.is_empty(),
        "no care budgets before version 6"
    );
    assert!(h.budgets.iter().all(|(_, s)| s.first_at == 0), "unknown");
    // The shipped config's budgets paced the win-back tasks (all general_winback: coupon).
    let coupon = &h.budgets[0].1;
    assert_eq!(coupon.day, day(400) / DAY, "erin's task, on day 400");
    assert!(coupon.admitted >= 1 && coupon.picture.total() > 0.0);
    assert_eq!(ids(&d), ["alice", "bob", "carol", "dave", "erin"]);
    assert_encodes_again(&d);
}

/// Version 7, written under a pooled budget (`[winback.budget] spend_per_day = 202`), kept
/// the pool's pacing among win-back's budgets as a pseudo-action named "(pooled budget)",
/// its spend seen today (an f64) split into `admitted` (high half of the bits) and `seen`
/// (low half): it reads into the pool's own record, and today's encoder writes it so.
#[test]
fn version_7_written_by_churnd_8a5014b_decodes_with_its_pooled_budget() {
    let d = decode(V7, 7);
    assert_eq!(d.created_ms, 1_796_636_658_082);
    let h = &d.state.header;
    assert_eq!(h.model_version, "cdnow-h90-6011f252");
    assert_eq!(h.watermark, day(400));
    assert_eq!(h.applied, vec![Some(entry(400)), Some(entry(13))]);
    assert_eq!(h.partitions, crate::partition::PartitionCount::ONE);
    assert_eq!(h.scorings, 96);
    assert_eq!(h.uplift.len(), 7, "the book of the outcomes the run wrote");
    assert_eq!(h.open_tasks.len(), 1, "erin's win-back task");
    let actions: Vec<&str> = h.budgets.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(
        actions,
        ["coupon", "email_reminder", "loyalty_offer", "personal_call"],
        "the pseudo-action is taken out"
    );
    let pool = h.pool.as_ref().expect("the pooled budget's pacing");
    assert_eq!(
        pool.seen, 5.0,
        "from the bits 0x4014_0000 (admitted), 0 (seen)"
    );
    assert_eq!((pool.day, pool.days), (day(400) / DAY, 87));
    assert_eq!(
        pool.expected.to_bits(),
        3.386_296_488_533_523_4e-5f64.to_bits()
    );
    assert_eq!(pool.first_at, day(30), "alice's first win-back task");
    assert_eq!(
        pool.picture.weights()[21],
        5.0,
        "erin's coupon on the last day"
    );
    assert_eq!(
        pool.picture.weights().iter().filter(|&&w| w != 0.0).count(),
        6
    );
    // Win-back tasks went to alice (days 30, 70), bob (31, 90), carol (35), erin (400).
    let coupon = &h.budgets[0].1;
    assert_eq!((coupon.day, coupon.admitted), (day(400) / DAY, 1));
    assert_eq!(ids(&d), ["alice", "bob", "carol", "dave", "erin"]);

    // Restored under the pool it was written with: as the pacing of format 7 restored.
    let winback = crate::decide::WinbackSettings::default();
    let pooled = crate::decide::PooledBudget {
        spend_per_day: Some(202.0),
    };
    let mut budgets = crate::decide::Budgets::new(&winback.budgets).with_pool(pooled);
    budgets.restore(h.budgets.clone(), h.care_budgets.clone());
    budgets.restore_pool(h.pool.clone());
    assert_eq!(budgets.pool_state().as_ref(), Some(pool));
    let report = budgets.pool_report(day(400) + 3_600).unwrap();
    assert_eq!(
        (report.spend_per_day, report.spent_today),
        (202.0, 5.0),
        "erin's coupon"
    );

    assert_encodes_again(&d);
}
