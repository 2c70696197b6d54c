use super::*;

const LIMITS: EventLimits = EventLimits {
    max_future_skew_ms: 86_400_000,
    min_ts_ms: 100_000_000_000,
    max_profile_value_bytes: 64,
};
const ENTRY_MS: u64 = 1_700_000_000_000;

fn parse<'a>(fields: &'a [(&'a str, &'a str)]) -> Result<Event<'a>, Rejection> {
    parse_event(
        fields.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())),
        ENTRY_MS,
        &LIMITS,
    )
}

fn reason(fields: &[(&str, &str)]) -> Reason {
    parse(fields).expect_err("entry should be rejected").reason
}

#[test]
fn a_purchase_parses_with_its_own_timestamp() {
    let ev = parse(&[
        ("customer_id", "c-1"),
        ("type", "purchase"),
        ("amount", "12.50"),
        ("ts", "852076800000"),
        ("channel", "web"),
    ])
    .unwrap();
    assert_eq!(ev.customer_id, "c-1");
    assert_eq!(ev.kind, EventKind::Purchase);
    assert_eq!(ev.amount, 12.5);
    assert_eq!(ev.time, 852_076_800);
}

#[test]
fn profiles_carry_their_other_fields_as_attributes() {
    let ev = parse(&[
        ("customer_id", "c-1"),
        ("type", "profile"),
        ("region", "eu"),
        ("birthday", "1990-02-29"),
        ("channel", ""),
    ])
    .unwrap();
    assert_eq!(ev.kind, EventKind::Profile);
    assert_eq!(
        ev.attributes,
        [
            ("region", "eu"),
            ("birthday", "1990-02-29"),
            ("channel", "")
        ]
    );
    assert_eq!(
        reason(&[("customer_id", "c"), ("type", "profile")]),
        Reason::EmptyProfile
    );
    for (key, value, expected) in [
        ("Region", "eu", Reason::InvalidProfileKey),
        ("age-band", "x", Reason::InvalidProfileKey),
        ("birthday", "02-30", Reason::InvalidProfileValue),
        ("birthday", "1990-13-01", Reason::InvalidProfileValue),
        ("region", &"x".repeat(65), Reason::InvalidProfileValue),
    ] {
        assert_eq!(
            reason(&[("customer_id", "c"), ("type", "profile"), (key, value)]),
            expected,
            "{key} = {value}"
        );
    }
    assert_eq!(birthday("02-29"), Some((2, 29)));
    assert_eq!(birthday("1990-12-01"), Some((12, 1)));
    assert_eq!(birthday("12/01"), None);
    assert_eq!(birthday("+1-15"), None);
    assert_eq!(birthday("1990-+1-15"), None);
}

#[test]
fn feedback_needs_a_score_from_1_to_5_and_purchases_note_coupons() {
    let ev = parse(&[("customer_id", "c"), ("type", "feedback"), ("score", "2")]).unwrap();
    assert_eq!((ev.kind, ev.score), (EventKind::Feedback, 2));
    assert_eq!(
        reason(&[("customer_id", "c"), ("type", "feedback")]),
        Reason::MissingScore
    );
    for bad in ["0", "6", "4.5", " 3", "good"] {
        assert_eq!(
            reason(&[("customer_id", "c"), ("type", "feedback"), ("score", bad)]),
            Reason::InvalidScore,
            "{bad}"
        );
    }
    let purchase = |coupon| {
        parse(&[
            ("customer_id", "c"),
            ("type", "purchase"),
            ("amount", "5"),
            ("coupon", coupon),
        ])
        .unwrap()
        .coupon
    };
    assert!(purchase("SPRING10"));
    assert!(!purchase(""));
}

#[test]
fn the_entry_id_time_is_the_default_timestamp() {
    let ev = parse(&[("customer_id", "c"), ("type", "visit")]).unwrap();
    assert_eq!(ev.time, 1_700_000_000);
    assert_eq!(ev.amount, 0.0);
}

#[test]
fn each_kind_of_bad_input_has_its_reason() {
    assert_eq!(reason(&[("type", "visit")]), Reason::MissingCustomerId);
    assert_eq!(
        reason(&[("customer_id", ""), ("type", "visit")]),
        Reason::InvalidCustomerId
    );
    let long = "x".repeat(129);
    assert_eq!(
        reason(&[("customer_id", &long), ("type", "visit")]),
        Reason::InvalidCustomerId
    );
    assert_eq!(reason(&[("customer_id", "c")]), Reason::MissingType);
    assert_eq!(
        reason(&[("customer_id", "c"), ("type", "PURCHASE")]),
        Reason::UnknownType
    );
    assert_eq!(
        reason(&[("customer_id", "c"), ("type", "refund")]),
        Reason::MissingAmount
    );
    for bad in [
        "abc", "NaN", "inf", "-1", "1e10", "", " 5", "5 ", "+5", "1e3", ".5", "5.", "-0", "0x10",
        "1_000", "5.0.0", "\u{a0}5",
    ] {
        assert_eq!(
            reason(&[("customer_id", "c"), ("type", "purchase"), ("amount", bad)]),
            Reason::InvalidAmount,
            "amount {bad:?}"
        );
    }
    for bad in [
        "-5",
        "1.5",
        "soon",
        "99999999999999999999999",
        "1800000000000",
        // Seconds instead of milliseconds, and zero: both would date the event to 1970.
        "1700000000",
        "0",
    ] {
        assert_eq!(
            reason(&[("customer_id", "c"), ("type", "visit"), ("ts", bad)]),
            Reason::InvalidTimestamp,
            "ts {bad:?}"
        );
    }
    assert_eq!(
        reason(&[
            ("customer_id", "a"),
            ("customer_id", "b"),
            ("type", "visit")
        ]),
        Reason::DuplicateField
    );
}

#[test]
fn customer_ids_must_be_utf8() {
    let fields: [(&[u8], &[u8]); 2] = [(b"customer_id", b"\xff\xfe"), (b"type", b"visit")];
    let err = parse_event(fields, ENTRY_MS, &LIMITS).unwrap_err();
    assert_eq!(err.reason, Reason::InvalidCustomerId);
}

#[test]
fn customer_ids_with_control_characters_are_rejected_with_the_character_named() {
    for (id, named) in [
        ("c-1\nforged: yes", "U+000A"),
        ("c\0", "U+0000"),
        ("\tc", "U+0009"),
        ("c\u{7f}", "U+007F"),
        ("c\u{85}", "U+0085"),
    ] {
        let err = parse(&[("customer_id", id), ("type", "visit")]).unwrap_err();
        assert_eq!(err.reason, Reason::InvalidCustomerId, "{id:?}");
        assert!(err.detail.contains(named), "{id:?}: {}", err.detail);
        assert!(
            !err.detail.contains('\n'),
            "the detail escapes it: {}",
            err.detail
        );
    }
    // Other characters, invisible ones included, are the producer's business.
    for id in ["客户 1", "c\u{200b}1", "🙂", "c/1?x=%20&\"y\""] {
        assert_eq!(
            parse(&[("customer_id", id), ("type", "visit")])
                .unwrap()
                .customer_id,
            id
        );
    }
}

#[test]
fn a_timestamp_within_the_allowed_skew_is_accepted() {
    let ts = (ENTRY_MS + 3_600_000).to_string();
    let fields = [("customer_id", "c"), ("type", "visit"), ("ts", ts.as_str())];
    assert_eq!(parse(&fields).unwrap().time, 1_700_003_600);
}

#[test]
fn details_are_cut_short() {
    let huge = "9".repeat(10_000);
    let err = parse(&[
        ("customer_id", "c"),
        ("type", "purchase"),
        ("amount", &huge),
    ])
    .unwrap_err();
    assert!(err.detail.len() < 200, "{}", err.detail);
}

#[test]
fn entry_ids_parse_and_print() {
    let id = EntryId::parse(b"1700000000000-7").unwrap();
    assert_eq!(
        id,
        EntryId {
            ms: 1_700_000_000_000,
            seq: 7
        }
    );
    assert_eq!(id.to_string(), "1700000000000-7");
    assert_eq!(EntryId::parse(b"17"), None);
}

// Property test: random field maps, near-valid and arbitrary, against an oracle written
// from the documented input format (docs/tasks.md, "Input events") and this module's docs.

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;

type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// The last second a `u32` can hold, in milliseconds (spelt out, not `time::MAX_MILLIS`).
const ORACLE_MAX_MS: u64 = 4_294_967_295_000;
const KINDS: [&str; 6] = [
    "purchase",
    "refund",
    "visit",
    "complaint",
    "feedback",
    "profile",
];
const KNOWN: [&str; 6] = ["customer_id", "type", "amount", "ts", "score", "coupon"];

/// An accepted entry as the oracle sees it.
#[derive(Debug, PartialEq)]
struct Expected {
    customer_id: String,
    kind: EventKind,
    amount: f64,
    time: UnixSeconds,
    score: u8,
    coupon: bool,
    attributes: Vec<(String, String)>,
}

/// The documented rules, in the parser's order of checks: a repeated known field, then
/// `customer_id`, `type`, `amount`, `ts`, then the kind's own: `score` for feedback, the
/// attributes (every other field) for a profile. Unknown fields are ignored otherwise.
fn oracle(fields: &Fields, entry_ms: u64, limits: &EventLimits) -> Result<Expected, Reason> {
    let values = |name: &str| -> Vec<&[u8]> {
        fields
            .iter()
            .filter(|(n, _)| n.as_slice() == name.as_bytes())
            .map(|(_, v)| v.as_slice())
            .collect()
    };
    let [cid, ty, amount, ts, score, coupon] = KNOWN.map(values);
    if [&cid, &ty, &amount, &ts, &score, &coupon]
        .iter()
        .any(|v| v.len() > 1)
    {
        return Err(Reason::DuplicateField);
    }
    let customer_id = match cid.first() {
        None => return Err(Reason::MissingCustomerId),
        Some(b) if b.is_empty() || b.len() > 128 => return Err(Reason::InvalidCustomerId),
        Some(b) => String::from_utf8(b.to_vec()).map_err(|_| Reason::InvalidCustomerId)?,
    };
    // No control characters: C0 (U+0000 to U+001F), DEL and C1 (U+007F to U+009F).
    if customer_id
        .chars()
        .any(|c| matches!(u32::from(c), 0..=0x1f | 0x7f..=0x9f))
    {
        return Err(Reason::InvalidCustomerId);
    }
    let kind = match ty.first().copied() {
        None => return Err(Reason::MissingType),
        Some(b"purchase") => EventKind::Purchase,
        Some(b"refund") => EventKind::Refund,
        Some(b"visit") => EventKind::Visit,
        Some(b"complaint") => EventKind::Complaint,
        Some(b"feedback") => EventKind::Feedback,
        Some(b"profile") => EventKind::Profile,
        Some(_) => return Err(Reason::UnknownType),
    };
    let amount = match amount.first() {
        // The parser checks an amount on every kind, not only where it is required.
        Some(b) => oracle_amount(b).ok_or(Reason::InvalidAmount)?,
        None if matches!(kind, EventKind::Purchase | EventKind::Refund) => {
            return Err(Reason::MissingAmount)
        }
        None => 0.0,
    };
    let ms = match ts.first() {
        Some(b) => oracle_ts(b, entry_ms, limits).ok_or(Reason::InvalidTimestamp)?,
        // The entry ID's time, unchecked (see the report on `entry_ms` limits).
        None => entry_ms,
    };
    let score = match (kind, score.first()) {
        (EventKind::Feedback, None) => return Err(Reason::MissingScore),
        (EventKind::Feedback, Some(&[d])) if (b'1'..=b'5').contains(d) => d - b'0',
        (EventKind::Feedback, Some(_)) => return Err(Reason::InvalidScore),
        _ => 0,
    };
    let attributes = if kind == EventKind::Profile {
        oracle_attributes(fields, limits)?
    } else {
        Vec::new()
    };
    Ok(Expected {
        customer_id,
        kind,
        amount,
        time: u32::try_from(ms / 1000).expect("generated entry times fit"),
        score,
        coupon: kind == EventKind::Purchase && coupon.first().is_some_and(|c| !c.is_empty()),
        attributes,
    })
}

/// A profile's attributes: every field but the known ones, in order; at least one.
/// Names: 1 to 32 of a-z, 0-9, _ with a letter first; values: UTF-8 within the limit,
/// `birthday` a real month-day (29 February too) as MM-DD or YYYY-MM-DD, or empty.
fn oracle_attributes(
    fields: &Fields,
    limits: &EventLimits,
) -> Result<Vec<(String, String)>, Reason> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (name, value) in fields {
        if KNOWN.iter().any(|k| k.as_bytes() == name.as_slice()) {
            continue;
        }
        let name_ok = (1..=32).contains(&name.len())
            && name[0].is_ascii_lowercase()
            && name
                .iter()
                .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_'));
        if !name_ok {
            return Err(Reason::InvalidProfileKey);
        }
        let key = String::from_utf8(name.clone()).expect("ASCII");
        if out.iter().any(|(k, _)| *k == key) {
            return Err(Reason::DuplicateField);
        }
        if value.len() > limits.max_profile_value_bytes {
            return Err(Reason::InvalidProfileValue);
        }
        let value = String::from_utf8(value.clone()).map_err(|_| Reason::InvalidProfileValue)?;
        if key == "birthday" && !value.is_empty() && !oracle_birthday(&value) {
            return Err(Reason::InvalidProfileValue);
        }
        out.push((key, value));
    }
    if out.is_empty() {
        return Err(Reason::EmptyProfile);
    }
    Ok(out)
}

fn oracle_birthday(value: &str) -> bool {
    let b = value.as_bytes();
    let month_day = match b.len() {
        5 => b,
        10 if b[..4].iter().all(u8::is_ascii_digit) && b[4] == b'-' => &b[5..],
        _ => return false,
    };
    let digits = |s: &[u8]| -> Option<u32> {
        (s.len() == 2 && s.iter().all(u8::is_ascii_digit))
            .then(|| u32::from(s[0] - b'0') * 10 + u32::from(s[1] - b'0'))
    };
    let (Some(month), Some(day)) = (digits(&month_day[..2]), digits(&month_day[3..])) else {
        return false;
    };
    let last = match month {
        2 => 29,
        4 | 6 | 9 | 11 => 30,
        1..=12 => 31,
        _ => return false,
    };
    month_day[2] == b'-' && (1..=last).contains(&day)
}

/// A plain decimal, as docs/tasks.md ("Input events") documents it: one or more ASCII digits,
/// optionally a point and one or more digits; nothing around them (no sign, exponent,
/// whitespace). Then value <= 1e9.
fn oracle_amount(b: &[u8]) -> Option<f64> {
    let s = std::str::from_utf8(b).ok()?;
    let digits = |d: &str| !d.is_empty() && d.bytes().all(|c| c.is_ascii_digit());
    let plain = match s.split_once('.') {
        Some((int, frac)) => digits(int) && digits(frac),
        None => digits(s),
    };
    if !plain {
        return None;
    }
    // The grammar decides the syntax; the standard library only rounds the value.
    let value: f64 = s.parse().expect("every decimal of the grammar parses");
    (value <= 1e9).then_some(value)
}

/// Whole milliseconds, ASCII digits only (at most 20 of them: the parser's cap, which
/// also refuses long zero-padded values), within [min_ts_ms, entry + skew] and <= 2106.
fn oracle_ts(b: &[u8], entry_ms: u64, limits: &EventLimits) -> Option<u64> {
    if b.is_empty() || b.len() > 20 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let ms = b.iter().fold(0u128, |n, d| n * 10 + u128::from(d - b'0'));
    let latest = u128::from(entry_ms) + u128::from(limits.max_future_skew_ms);
    let ok = ms >= u128::from(limits.min_ts_ms) && ms <= latest && ms <= u128::from(ORACLE_MAX_MS);
    ok.then_some(ms as u64)
}

fn bytes(max: usize) -> BoxedStrategy<Vec<u8>> {
    vec(any::<u8>(), 0..=max).boxed()
}

fn strs(values: &'static [&'static str]) -> BoxedStrategy<Vec<u8>> {
    select(values).prop_map(|s| s.as_bytes().to_vec()).boxed()
}

/// Bytes that are usually not UTF-8: random bytes around a broken sequence.
fn invalid_utf8() -> BoxedStrategy<Vec<u8>> {
    const BROKEN: &[&[u8]] = &[
        b"\xff",
        b"\x80",
        b"\xc0\x80",
        b"\xed\xa0\x80",
        b"\xf4\x90\x80\x80",
        b"\xe2\x82",
        b"\xf0\x9f\x98",
    ];
    (bytes(6), select(BROKEN), bytes(6))
        .prop_map(|(a, broken, c)| [a.as_slice(), broken, c.as_slice()].concat())
        .boxed()
}

/// A 64 KiB value of one byte.
fn huge() -> BoxedStrategy<Vec<u8>> {
    select(&b"x9 \xff"[..])
        .prop_map(|b| vec![b; 65_536])
        .boxed()
}

fn customer_id_value() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        30 => "[a-z0-9-]{1,16}".prop_map(String::into_bytes),
        2 => (0usize..300).prop_map(|n| vec![b'c'; n]),
        2 => (126usize..=130).prop_map(|n| vec![b'c'; n]),
        // Multi-byte characters around the 128-byte limit, whole or cut mid-character.
        2 => (60usize..68).prop_map(|n| "é".repeat(n).into_bytes()),
        2 => (1usize..=135).prop_map(|n| "€".repeat(45).as_bytes()[..n].to_vec()),
        2 => any::<String>().prop_map(String::into_bytes),
        2 => invalid_utf8(),
        // Control characters (C0, DEL, C1) and invisible ones that are not controls.
        2 => ("[a-z0-9-]{0,8}", select(&["\n", "\r", "\0", "\t", "\u{1b}", "\u{7f}", "\u{85}", "\u{9f}", "\u{a0}", "\u{200b}", "\u{feff}"][..]), "[a-z0-9-]{0,8}")
            .prop_map(|(a, c, b)| format!("{a}{c}{b}").into_bytes()),
        1 => bytes(300),
        1 => huge(),
    ]
    .boxed()
}

fn type_value() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        45 => strs(&KINDS),
        2 => strs(&[
            "", "PURCHASE", "Visit", "purchase ", " refund", "gift", "visit\0",
            "complaints", "purchas", "ｖisit",
        ]),
        1 => bytes(12),
        1 => invalid_utf8(),
        1 => huge(),
    ]
    .boxed()
}

fn amount_value() -> BoxedStrategy<Vec<u8>> {
    const AMOUNTS: &[&str] = &[
        "0",
        "0.0",
        "-0",
        "+0",
        "12.5",
        "12.50",
        "+12.5",
        ".5",
        "5.",
        "0012",
        "1e3",
        "1E3",
        "1e+3",
        "1e-3",
        "1e-400",
        "1e9",
        "1000000000",
        "1000000000.0000000001",
        "1000000000.01",
        "1e10",
        "1e400",
        "-1e400",
        "-1",
        "-0.01",
        "inf",
        "-inf",
        "+inf",
        "infinity",
        "Infinity",
        "NaN",
        "nan",
        "-NaN",
        "0x10",
        "",
        " ",
        " 12.5",
        "12.5 ",
        "\t7\n",
        "\u{a0}7",
        "7\u{3000}",
        "\u{200b}7",
        "12,50",
        "1 000",
        "1_000",
        "١٢",
        "e5",
        ".",
        "-",
        "+",
        "1e",
        "1e+",
        "--1",
        "+-1",
        "1.2.3",
        "12.5abc",
        ".e1",
        "1.e1",
    ];
    prop_oneof![
        6 => strs(AMOUNTS),
        8 => (0u64..2_000_000_000).prop_map(|n| format!("{}.{:02}", n / 100, n % 100).into_bytes()),
        2 => any::<f64>().prop_map(|x| x.to_string().into_bytes()),
        1 => any::<f64>().prop_map(|x| format!("{x:e}").into_bytes()),
        1 => (1e9 - 1.0..1e9 + 1.0).prop_map(|x: f64| x.to_string().into_bytes()),
        1 => any::<i64>().prop_map(|x| x.to_string().into_bytes()),
        1 => (1usize..400).prop_map(|n| vec![b'9'; n]),
        1 => vec(b'0'..=b'9', 1..40),
        1 => bytes(16),
        1 => invalid_utf8(),
        1 => huge(),
    ]
    .boxed()
}

fn ts_value(entry_ms: u64, limits: EventLimits) -> BoxedStrategy<Vec<u8>> {
    let latest = entry_ms.saturating_add(limits.max_future_skew_ms);
    let edges = vec![
        0,
        1,
        1_700_000_000, // seconds, not milliseconds
        limits.min_ts_ms.saturating_sub(1),
        limits.min_ts_ms,
        limits.min_ts_ms.saturating_add(1),
        entry_ms,
        latest.saturating_sub(1),
        latest,
        latest.saturating_add(1),
        ORACLE_MAX_MS - 1,
        ORACLE_MAX_MS,
        ORACLE_MAX_MS + 1,
        u64::MAX,
    ];
    let lo = limits.min_ts_ms;
    let hi = latest.min(ORACLE_MAX_MS).max(lo);
    prop_oneof![
        4 => select(edges).prop_map(|n| n.to_string().into_bytes()),
        12 => (lo..=hi).prop_map(|n| n.to_string().into_bytes()),
        1 => (lo..=hi, 1usize..10).prop_map(|(n, z)| format!("{}{n}", "0".repeat(z)).into_bytes()),
        1 => any::<u64>().prop_map(|n| n.to_string().into_bytes()),
        2 => strs(&[
            "", "-5", "-1700000000000", "+1700000000000", "1.5", "1700000000000.0", "soon",
            " 1700000000000", "1700000000000 ", "1e12", "99999999999999999999",
            "18446744073709551615", "18446744073709551616", "000000000000000000001",
            "123456789012345678901234567890",
        ]),
        1 => vec(b'0'..=b'9', 1..=25),
        1 => bytes(24),
        1 => invalid_utf8(),
        1 => huge(),
    ]
    .boxed()
}

/// A field beyond the known ones: ignored, or a profile's attribute. Near-misses of the
/// known names, attribute names good and bad, or anything.
fn extra_field() -> BoxedStrategy<(Vec<u8>, Vec<u8>)> {
    let name = prop_oneof![
        2 => strs(&[
            "Customer_id", "customer_id ", "customerid", "TYPE", "type\0", "amount\u{0}",
            "ts ", "", "channel", "dlq_reason", "Region", "age-band", "1st", "_x",
            "abcdefghijklmnopqrstuvwxyz_0123456",
        ]),
        4 => strs(&["region", "age_band", "birthday", "gender", "loyalty_tier", "a",
            "abcdefghijklmnopqrstuvwxyz_01234"]),
        1 => bytes(12),
        1 => invalid_utf8(),
    ];
    let value = prop_oneof![
        8 => bytes(32),
        4 => strs(&["eu", "", "02-29", "02-30", "13-01", "1990-12-01", "1990/12/01",
            "12-1", "00-10", "2-29", " 02-28", "ünïcödé", "+1-15", "1990-+1-15", "+2-+9"]),
        1 => invalid_utf8(),
        1 => huge(),
    ];
    (name, value).boxed()
}

fn score_value() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        8 => strs(&["1", "2", "3", "4", "5"]),
        2 => strs(&["0", "6", "3.0", " 3", "3 ", "", "five", "١"]),
        1 => bytes(4),
    ]
    .boxed()
}

fn coupon_value() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![3 => strs(&["SPRING10", "", "x"]), 1 => bytes(8)].boxed()
}

/// The field `name` absent, once or twice, weighted as given in that order.
fn field_times(
    name: &'static str,
    value: BoxedStrategy<Vec<u8>>,
    [absent, once, twice]: [u32; 3],
) -> BoxedStrategy<Fields> {
    prop_oneof![absent => Just(0usize), once => Just(1), twice => Just(2)]
        .prop_flat_map(move |n| vec(value.clone(), n..=n))
        .prop_map(move |values| {
            values
                .into_iter()
                .map(|v| (name.as_bytes().to_vec(), v))
                .collect()
        })
        .boxed()
}

/// Each known field absent, once (most often) or twice, plus others, in any order.
fn near_valid_fields(entry_ms: u64, limits: EventLimits) -> BoxedStrategy<Fields> {
    let field = |name, value| field_times(name, value, [1, 24, 1]);
    // Fields of some event types only: absent most often.
    let field_maybe = |name, value| field_times(name, value, [6, 6, 1]);
    (
        field("customer_id", customer_id_value()),
        field("type", type_value()),
        field("amount", amount_value()),
        field("ts", ts_value(entry_ms, limits)),
        field_maybe("score", score_value()),
        field_maybe("coupon", coupon_value()),
        vec(extra_field(), 0..4),
    )
        .prop_map(|(a, b, c, d, e, f, g)| [a, b, c, d, e, f, g].concat())
        .prop_shuffle()
        .boxed()
}

/// Arbitrary names (sometimes a known one) and values.
fn arbitrary_fields() -> BoxedStrategy<Fields> {
    let name = prop_oneof![
        1 => strs(&["customer_id", "type", "amount", "ts"]),
        3 => bytes(12),
    ];
    vec((name, bytes(24)), 0..8).boxed()
}

/// An entry's fields, its ID's time and the configured limits.
fn case() -> impl Strategy<Value = (Fields, u64, EventLimits)> {
    let entry_ms = prop_oneof![
        2 => Just(ENTRY_MS),
        2 => 100_000_000_000u64..=ORACLE_MAX_MS,
        1 => ORACLE_MAX_MS - 2 * 86_400_000..=ORACLE_MAX_MS,
        1 => 0u64..100_000_000_000,
    ];
    let limits = (
        select(&[0, 1, 86_400_000, u64::MAX][..]),
        select(&[0, 1, 100_000_000_000, ENTRY_MS][..]),
    )
        .prop_map(|(max_future_skew_ms, min_ts_ms)| EventLimits {
            max_future_skew_ms,
            min_ts_ms,
            max_profile_value_bytes: 64,
        });
    (entry_ms, limits).prop_flat_map(|(ms, limits)| {
        let fields = prop_oneof![
            1 => arbitrary_fields(),
            5 => near_valid_fields(ms, limits),
        ];
        (fields, Just(ms), Just(limits))
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 20_000,
        // Failures are reported, not saved next to the source.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_parser_agrees_with_the_documented_rules((fields, entry_ms, limits) in case()) {
        let parsed = parse_event(
            fields.iter().map(|(k, v)| (k.as_slice(), v.as_slice())),
            entry_ms,
            &limits,
        );
        let expected = oracle(&fields, entry_ms, &limits);
        match (parsed, expected) {
            (Ok(ev), Ok(exp)) => {
                prop_assert_eq!(ev.customer_id, exp.customer_id.as_str());
                prop_assert_eq!(ev.kind, exp.kind);
                prop_assert_eq!(ev.amount, exp.amount);
                prop_assert_eq!(ev.time, exp.time);
                prop_assert_eq!(ev.score, exp.score);
                prop_assert_eq!(ev.coupon, exp.coupon);
                let attributes: Vec<(String, String)> = ev
                    .attributes
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                prop_assert_eq!(attributes, exp.attributes);
                let kind = event_kind(fields.iter().map(|(k, v)| (k.as_slice(), v.as_slice())));
                prop_assert_eq!(kind, Some(ev.kind));
            }
            (Err(rejection), Err(reason)) => {
                prop_assert_eq!(rejection.reason, reason, "{}", rejection);
                prop_assert!(!rejection.detail.is_empty());
                prop_assert!(rejection.detail.len() < 512, "{} bytes", rejection.detail.len());
            }
            (parsed, expected) => prop_assert!(
                false,
                "parser {:?}, oracle {:?}",
                parsed.map(|e| format!("{e:?}")).map_err(|r| r.to_string()),
                expected
            ),
        }
    }
}
