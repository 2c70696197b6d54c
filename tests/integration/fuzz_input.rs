//! Fuzzing the daemon end to end: 100,000 random field maps written to a real Redis and
//! consumed by the real daemon. Missing fields, wrong types, huge values, NaN and infinities,
//! negative and gigantic amounts, timestamps far in the past and future, invalid UTF-8: the
//! daemon must not panic, every bad entry must land in the dead-letter stream once, with the
//! reason the rules of docs/tasks.md give and its original fields, and no good entry may be lost.
//!
//! The expected outcome of every entry comes from a small oracle written here from docs/tasks.md
//! ("Input events", "Dead letters"), not from churnd's parser: the pure-parser property test
//! in `src/event.rs` checks the parser's details; this one checks that what it decides
//! survives the whole path (XADD, XREADGROUP, engine, sink's guarded writes, XACK, metrics).
//!
//! The entries come from a seeded generator (SplitMix64, written here so a seed reproduces
//! the same entries whatever the `rand` version). Timestamps are relative to the wall clock
//! at the start of the run, with margins of an hour around every limit, so that the outcome
//! does not depend on how long the writes take; the oracle still judges every entry against
//! the time of the stream ID Redis gave it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;

use crate::helpers::*;

/// Printed in every failure message: rerun with it to get the same entries.
const SEED: u64 = 0x00c4_a2d5_f022_7e57;
const ENTRIES: usize = 100_000;
/// Distinct customers of the good entries (about ten events each).
const CUSTOMERS: usize = 5_000;
/// XADDs per pipeline round trip.
const PIPELINE: usize = 1_000;
/// Share of entries that get one or more mutations (some mutations keep an entry valid, so
/// about half of all entries end up bad).
const MUTATED_SHARE: f64 = 0.55;
/// Share of entries that also get a 64 KiB name or value: a few hundred, enough to cover
/// every field without making the run slow.
const HUGE_SHARE: f64 = 0.003;
const HUGE: usize = 64 * 1024;
/// The daemon's `events.max_entry_bytes` here: above every huge field, so they are looked
/// into.
const MAX_ENTRY_BYTES: usize = 4 * HUGE;
/// Share of entries that also get a field taking them over [`MAX_ENTRY_BYTES`].
const OVERSIZED_SHARE: f64 = 0.001;
/// Labels [`Generator::mutate`], [`Generator::huge`] and `oversized` can give: each must be
/// produced.
const MUTATION_KINDS: usize = 35;
const HOUR_MS: u64 = 3_600_000;
/// The longest the daemon may take to consume everything (it takes a few seconds).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);

const EVENTS: &str = "churn:events";
const DLQ: &str = "churn:events:dlq";
const WINBACK: &str = "churn:winback";
const GROUP: &str = "churnd";

const KINDS: [&str; 4] = ["purchase", "refund", "visit", "complaint"];
/// The `dlq_reason` values an XADD can produce (`entry_deleted` needs an XDEL while pending;
/// `dead_letters.rs` covers it).
const REASONS: [&str; 9] = [
    "entry_too_large",
    "missing_customer_id",
    "invalid_customer_id",
    "missing_type",
    "unknown_type",
    "missing_amount",
    "invalid_amount",
    "invalid_timestamp",
    "duplicate_field",
];
/// What the sink appends to a dead-lettered entry's original fields, in order.
const DEAD_LETTER_FIELDS: [&str; 4] = [
    "dlq_reason",
    "dlq_detail",
    "dlq_source_stream",
    "dlq_source_id",
];

type Fields = Vec<(Vec<u8>, Vec<u8>)>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_field_maps_never_crash_the_daemon_and_every_bad_entry_is_dead_lettered() {
    let started = Instant::now();
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(&redis, dir.path());
    settings.events.max_entry_bytes = MAX_ENTRY_BYTES;
    // Acknowledged per entry: the wait counts acknowledgements.
    settings.source.acknowledge = churnd::config::Acknowledge::PerEntry;
    let limits = Limits {
        max_future_skew_ms: settings.events.max_future_skew.as_millis() as u64,
        min_ts_ms: settings.events.min_ts_ms,
        max_entry_bytes: settings.events.max_entry_bytes,
        max_copy_bytes: settings.dead_letter.max_copy_bytes,
    };
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let ctx = format!("seed {SEED:#x}, now_ms {now_ms}");

    let customers = customer_pool();
    let mut generator = Generator {
        rng: Rng(SEED),
        customers: &customers,
        now_ms,
        limits,
    };
    let entries: Vec<(Fields, Vec<&str>)> = (0..ENTRIES).map(|_| generator.entry()).collect();
    let generated = started.elapsed();

    // The daemon runs while the entries arrive, as in production.
    let app = App::spawn(settings).await;
    let mut c = connection(&redis).await;
    let ids = send(&mut c, &entries).await;
    let sent = started.elapsed();

    // What the documented rules say of each entry, judged against its actual stream time.
    let verdicts: Vec<Result<Applied, &str>> = entries
        .iter()
        .zip(&ids)
        .map(|((fields, _), id)| oracle(fields, entry_ms(id), limits))
        .collect();
    let bad = verdicts.iter().filter(|v| v.is_err()).count();
    let good = ENTRIES - bad;
    assert_generator_covers_everything(&entries, &verdicts, &ctx);

    wait_processed(&mut c, &app, &ctx).await;
    let drained = started.elapsed();
    assert!(
        !app.handle.is_finished(),
        "the daemon task ended while it should be running ({ctx})"
    );

    // Dead letters: one per bad entry, none for a good one, each with its reason and fields.
    let dead = read_all(&mut c, DLQ).await;
    check_dead_letters(
        &dead,
        &entries,
        &ids,
        &verdicts,
        limits.max_copy_bytes,
        &ctx,
    );
    assert_eq!(dead.len(), bad, "dead letters vs bad entries ({ctx})");
    assert_eq!(
        xlen(&mut c, EVENTS).await,
        ENTRIES,
        "the input stream ({ctx})"
    );

    // Counters agree with the oracle, per type, outcome and reason.
    wait_for(
        "every entry to be counted as acknowledged",
        Duration::from_secs(10),
        || {
            let app = &app;
            async move {
                app.metric("churnd_entries_acknowledged_total").await == Some(ENTRIES as f64)
            }
        },
    )
    .await;
    let text = app.metrics().await;
    let metric = |series: String| parse_metric(&text, &series).unwrap_or(0.0) as u64;
    let mut expected_events: BTreeMap<String, u64> = BTreeMap::new();
    let mut expected_reasons: BTreeMap<String, u64> = BTreeMap::new();
    for ((fields, _), verdict) in entries.iter().zip(&verdicts) {
        let (series, reason) = match verdict {
            Ok(ev) => (events_series(ev.kind, "applied"), None),
            Err(reason) => (
                events_series(type_label(fields), "dead_lettered"),
                Some(reason),
            ),
        };
        *expected_events.entry(series).or_default() += 1;
        if let Some(reason) = reason {
            *expected_reasons.entry(reason.to_string()).or_default() += 1;
        }
    }
    let mut observed_events = BTreeMap::new();
    for kind in KINDS.iter().chain(["unknown"].iter()) {
        for outcome in ["applied", "dead_lettered", "already_applied"] {
            let series = events_series(kind, outcome);
            let n = metric(series.clone());
            if n > 0 || expected_events.contains_key(&series) {
                observed_events.insert(series, n);
            }
        }
    }
    assert_eq!(
        observed_events, expected_events,
        "churnd_events_total ({ctx})"
    );
    let observed_reasons: BTreeMap<String, u64> = REASONS
        .iter()
        .chain(["entry_deleted"].iter())
        .map(|r| {
            let n = metric(format!(
                "churnd_events_dead_lettered_total{{reason=\"{r}\"}}"
            ));
            (r.to_string(), n)
        })
        .filter(|(r, n)| *n > 0 || expected_reasons.contains_key(r))
        .collect();
    assert_eq!(
        observed_reasons, expected_reasons,
        "churnd_events_dead_lettered_total ({ctx})"
    );

    // Every good entry reached its customer, and bad ones created nobody.
    let expected_customers = customer_facts(&verdicts);
    assert_eq!(
        metric("churnd_customers_tracked".into()),
        expected_customers.len() as u64,
        "customers tracked ({ctx})"
    );
    check_customers(&app, &expected_customers, &ctx).await;
    for (_, task) in read_all(&mut c, WINBACK).await {
        let customer = task
            .iter()
            .find(|(n, _)| n == b"customer_id")
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        assert!(
            expected_customers.contains_key(&customer),
            "a win-back task for {customer:?}, who has no good entry ({ctx})"
        );
    }

    assert_eq!(app.get("/healthz").await.status(), 200);
    assert!(!app.handle.is_finished(), "the daemon task ended ({ctx})");
    app.stop().await;
    eprintln!(
        "fuzz_input: {ENTRIES} entries ({good} good, {bad} bad, {} customers): generated in \
         {generated:.1?}, sent by {sent:.1?}, drained by {drained:.1?}, checked by {:.1?} ({ctx})",
        expected_customers.len(),
        started.elapsed()
    );
}

/// The bounds on `ts` the daemon runs with.
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_future_skew_ms: u64,
    min_ts_ms: u64,
    max_entry_bytes: usize,
    max_copy_bytes: usize,
}

/// An entry the oracle accepts, as it should reach its customer.
#[derive(Debug, Clone, PartialEq)]
struct Applied {
    customer_id: String,
    kind: &'static str,
    /// Event time in whole seconds.
    secs: u64,
}

/// The documented rules for an input entry (docs/tasks.md). They list the reasons but not
/// which one wins when an entry breaks several rules; this takes them in the order of the
/// table, after a repeated known field (which makes the entry ambiguous before anything
/// else): `customer_id`, `type`, `amount`, `ts`. Unknown fields are ignored.
fn oracle(fields: &Fields, entry_ms: u64, limits: Limits) -> Result<Applied, &'static str> {
    let values = |name: &str| -> Vec<&[u8]> {
        fields
            .iter()
            .filter(|(n, _)| n.as_slice() == name.as_bytes())
            .map(|(_, v)| v.as_slice())
            .collect()
    };
    // Entries over the size limit are not looked into.
    if bytes(fields) > limits.max_entry_bytes {
        return Err("entry_too_large");
    }
    let [customer_id, kind, amount, ts] = ["customer_id", "type", "amount", "ts"].map(values);
    if [&customer_id, &kind, &amount, &ts]
        .iter()
        .any(|v| v.len() > 1)
    {
        return Err("duplicate_field");
    }
    // 1–128 bytes of UTF-8 without control characters (U+0000–U+001F, U+007F–U+009F).
    let customer_id = match customer_id.first() {
        None => return Err("missing_customer_id"),
        Some(b) if b.is_empty() || b.len() > 128 => return Err("invalid_customer_id"),
        Some(b) => String::from_utf8(b.to_vec()).map_err(|_| "invalid_customer_id")?,
    };
    if customer_id
        .chars()
        .any(|c| matches!(u32::from(c), 0..=0x1f | 0x7f..=0x9f))
    {
        return Err("invalid_customer_id");
    }
    let kind = match kind.first() {
        None => return Err("missing_type"),
        Some(b) => KINDS
            .into_iter()
            .find(|k| k.as_bytes() == *b)
            .ok_or("unknown_type")?,
    };
    // A plain decimal, 0 ≤ amount ≤ 1e9; required for purchases and refunds. An amount sent with
    // another type is still checked (docs/tasks.md does not say it is ignored).
    match amount.first() {
        Some(b) => {
            decimal(b)
                .filter(|a| (0.0..=1e9).contains(a))
                .ok_or("invalid_amount")?;
        }
        None if matches!(kind, "purchase" | "refund") => return Err("missing_amount"),
        None => {}
    }
    // Integer milliseconds, not before min_ts_ms, at most max_future_skew_ms after the entry
    // ID's time; the entry ID's time when absent.
    let ms = match ts.first() {
        Some(b) => {
            let latest = u128::from(entry_ms) + u128::from(limits.max_future_skew_ms);
            let ms = millis(b)
                .filter(|ms| *ms >= u128::from(limits.min_ts_ms) && *ms <= latest)
                .ok_or("invalid_timestamp")?;
            u64::try_from(ms).expect("bounded by the entry time")
        }
        None => entry_ms,
    };
    Ok(Applied {
        customer_id,
        kind,
        secs: ms / 1000,
    })
}

/// A plain decimal: ASCII digits, optionally a point and more digits, nothing else (no sign,
/// exponent or whitespace: so `+5`, `1e3`, ` 5`, `.5`, `NaN`, `inf`, `0x10` are not amounts).
/// The grammar decides the syntax; the standard library only rounds the value (so 400
/// nines are infinite and out of range).
fn decimal(b: &[u8]) -> Option<f64> {
    let s = std::str::from_utf8(b).ok()?;
    let digits = |d: &str| !d.is_empty() && d.bytes().all(|c| c.is_ascii_digit());
    let plain = match s.split_once('.') {
        Some((int, frac)) => digits(int) && digits(frac),
        None => digits(s),
    };
    plain.then(|| s.parse().ok()).flatten()
}

/// Whole milliseconds: ASCII digits only. At most 20 of them (enough for any `u64`; the
/// parser's cap, documented in `src/event.rs` though not in docs/tasks.md), so a zero-padded
/// value longer than that is refused.
fn millis(b: &[u8]) -> Option<u128> {
    if b.is_empty() || b.len() > 20 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(b.iter().fold(0u128, |n, d| n * 10 + u128::from(d - b'0')))
}

/// The `type` label an entry is counted under: its (first) `type` field when that names a
/// known type, else `unknown`.
fn type_label(fields: &Fields) -> &'static str {
    fields
        .iter()
        .find(|(n, _)| n == b"type")
        .and_then(|(_, v)| KINDS.into_iter().find(|k| k.as_bytes() == v.as_slice()))
        .unwrap_or("unknown")
}

fn events_series(kind: &str, outcome: &str) -> String {
    format!("churnd_events_total{{outcome=\"{outcome}\",type=\"{kind}\"}}")
}

/// SplitMix64: tiny, fast, and the same sequence for a seed forever.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (the modulo bias is irrelevant here).
    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in `lo..=hi`.
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64) / ((1u64 << 53) as f64) < p
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }

    /// Up to `max_len` arbitrary bytes.
    fn bytes(&mut self, max_len: u64) -> Vec<u8> {
        let len = self.below(max_len + 1);
        (0..len).map(|_| self.next_u64() as u8).collect()
    }

    /// Bytes around a broken UTF-8 sequence: never valid UTF-8.
    fn invalid_utf8(&mut self) -> Vec<u8> {
        const BROKEN: &[&[u8]] = &[
            b"\xff",
            b"\x80",
            b"\xc0\x80",
            b"\xed\xa0\x80",
            b"\xf4\x90\x80\x80",
            b"\xe2\x82",
            b"\xf0\x9f\x98",
        ];
        let ascii = |rng: &mut Self| -> Vec<u8> {
            let len = rng.below(6);
            (0..len).map(|_| rng.between(0x20, 0x7e) as u8).collect()
        };
        let broken = self.pick(BROKEN);
        [ascii(self), broken.to_vec(), ascii(self)].concat()
    }
}

/// The customers of the good entries: mostly plain IDs, and some of every shape docs/tasks.md
/// allows (one byte, exactly 128 bytes, multi-byte characters, spaces, slashes, quotes,
/// control characters, IDs differing only in case).
fn customer_pool() -> Vec<String> {
    let ids: Vec<String> = (0..CUSTOMERS)
        .map(|i| match (i, i % 20) {
            (0..26, _) => char::from(b'a' + i as u8).to_string(),
            (_, 0) => format!("客户-{i}"),
            (_, 1) => format!("🙂 {i}"),
            (_, 2) => format!("c/{i}?x=%20&\"y\""),
            (_, 3) => format!("{i:05}-")
                .chars()
                .chain(std::iter::repeat('x'))
                .take(128)
                .collect(),
            (_, 4) => {
                let mut s = format!("{i:05}");
                while s.len() + 2 <= 128 {
                    s.push('é');
                }
                while s.len() < 128 {
                    s.push('x');
                }
                s
            }
            (_, 5) => format!("C-{i:05}"),
            // Invisible, but no control character: accepted.
            (_, 6) => format!("c\u{200b}{i}\u{a0}"),
            _ => format!("c-{i:05}"),
        })
        .collect();
    assert!(ids.iter().all(|id| (1..=128).contains(&id.len())));
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), CUSTOMERS);
    ids
}

fn remove(fields: &mut Fields, name: &str) {
    fields.retain(|(n, _)| n.as_slice() != name.as_bytes());
}

/// Replaces every field called `name` with one holding `value`.
fn set(fields: &mut Fields, name: &str, value: impl Into<Vec<u8>>) {
    remove(fields, name);
    fields.push((name.as_bytes().to_vec(), value.into()));
}

/// Writes random entries: a valid event, then (for about half) one to three mutations, each
/// of which usually breaks one rule. Each mutation is labelled so the test can show that
/// every kind was produced.
struct Generator<'a> {
    rng: Rng,
    customers: &'a [String],
    now_ms: u64,
    limits: Limits,
}

impl Generator<'_> {
    fn entry(&mut self) -> (Fields, Vec<&'static str>) {
        let mut fields = self.valid();
        let mut labels = Vec::new();
        if self.rng.chance(MUTATED_SHARE) {
            let n = match self.rng.below(20) {
                0 => 3,
                1 | 2 => 2,
                _ => 1,
            };
            for _ in 0..n {
                labels.push(self.mutate(&mut fields));
            }
        }
        if self.rng.chance(HUGE_SHARE) {
            labels.push(self.huge(&mut fields));
        }
        if self.rng.chance(OVERSIZED_SHARE) {
            fields.push((b"blob".to_vec(), vec![b'x'; MAX_ENTRY_BYTES]));
            labels.push("oversized");
        }
        if fields.is_empty() {
            // XADD needs at least one field.
            fields.push((b"channel".to_vec(), b"web".to_vec()));
        }
        for i in (1..fields.len()).rev() {
            let j = self.rng.below(i as u64 + 1) as usize;
            fields.swap(i, j);
        }
        (fields, labels)
    }

    /// A good event of a pool customer, mostly with its own `ts` in the last 60 days (up to
    /// an hour short of the allowed skew into the future), sometimes with ignored fields.
    fn valid(&mut self) -> Fields {
        let customer = &self.customers[self.rng.below(self.customers.len() as u64) as usize];
        let kind = match self.rng.below(100) {
            0..40 => "purchase",
            40..70 => "visit",
            70..85 => "refund",
            _ => "complaint",
        };
        let mut fields = vec![
            (b"customer_id".to_vec(), customer.as_bytes().to_vec()),
            (b"type".to_vec(), kind.as_bytes().to_vec()),
        ];
        if matches!(kind, "purchase" | "refund") || self.rng.chance(0.1) {
            fields.push((b"amount".to_vec(), self.valid_amount()));
        }
        if self.rng.chance(0.85) {
            fields.push((b"ts".to_vec(), self.valid_ts().to_string().into_bytes()));
        }
        for _ in 0..self.rng.below(3) {
            fields.push(self.ignored_field());
        }
        fields
    }

    fn valid_amount(&mut self) -> Vec<u8> {
        let cents = self.rng.below(50_000);
        format!("{}.{:02}", cents / 100, cents % 100).into_bytes()
    }

    fn valid_ts(&mut self) -> u64 {
        let earliest = self.now_ms - 60 * DAY_MS;
        let latest = self.now_ms + self.limits.max_future_skew_ms.saturating_sub(HOUR_MS);
        self.rng.between(earliest, latest)
    }

    /// A field the parser ignores: near misses of the known names, names of the fields the
    /// dead-letter stream adds, arbitrary bytes.
    fn ignored_field(&mut self) -> (Vec<u8>, Vec<u8>) {
        const NAMES: &[&str] = &[
            "channel",
            "Customer_id",
            "customer_id ",
            "customerid",
            "TYPE",
            "type\0",
            "amount\0",
            "ts ",
            "",
            "dlq_reason",
            "dlq_source_id",
        ];
        let name = match self.rng.below(4) {
            0 | 1 => self.rng.pick(NAMES).as_bytes().to_vec(),
            2 => self.rng.bytes(12),
            _ => self.rng.invalid_utf8(),
        };
        let value = match self.rng.below(5) {
            0 => self.rng.invalid_utf8(),
            _ => self.rng.bytes(32),
        };
        (name, value)
    }

    fn mutate(&mut self, fields: &mut Fields) -> &'static str {
        let rng = &mut self.rng;
        match rng.below(30) {
            0 => {
                remove(fields, "customer_id");
                "customer_id: missing"
            }
            1 => {
                set(fields, "customer_id", "");
                "customer_id: empty"
            }
            2 => {
                let len = rng.between(129, 300) as usize;
                set(fields, "customer_id", vec![b'c'; len]);
                "customer_id: over 128 bytes"
            }
            3 => {
                // 129 or 130 bytes of two-byte characters: 65 characters, too many bytes.
                let mut id = "é".repeat(64);
                id.push(if rng.chance(0.5) { 'é' } else { 'x' });
                set(fields, "customer_id", id);
                "customer_id: over 128 bytes in multi-byte characters"
            }
            4 => {
                // At most 127 bytes of three-byte characters, cut mid-character.
                let euros = "€".repeat(45);
                let mut len = rng.between(1, 127) as usize;
                if len % 3 == 0 {
                    len -= 1;
                }
                set(fields, "customer_id", &euros.as_bytes()[..len]);
                "customer_id: cut mid-character"
            }
            5 if rng.chance(0.5) => {
                let id = rng.invalid_utf8();
                set(fields, "customer_id", id);
                "customer_id: invalid UTF-8"
            }
            5 => {
                const CONTROLS: &[&str] =
                    &["\n", "\r\n", "\0", "\t", "\u{1b}[31m", "\u{7f}", "\u{85}"];
                let customer = &self.customers[rng.below(self.customers.len() as u64) as usize];
                let control = rng.pick(CONTROLS);
                let id = match rng.below(3) {
                    0 => format!("{control}{customer}"),
                    1 => format!("{customer}{control}"),
                    _ => format!("c{control}forged"),
                };
                set(fields, "customer_id", id);
                "customer_id: a control character"
            }
            6 => {
                remove(fields, "type");
                "type: missing"
            }
            7 => {
                const UNKNOWN: &[&str] = &[
                    "",
                    "PURCHASE",
                    "Visit",
                    "purchase ",
                    " refund",
                    "gift",
                    "visit\0",
                    "complaints",
                    "purchas",
                    "ｖisit",
                    "0",
                    "null",
                ];
                let kind = match rng.below(4) {
                    0 => rng.bytes(12),
                    1 => rng.invalid_utf8(),
                    _ => rng.pick(UNKNOWN).as_bytes().to_vec(),
                };
                set(fields, "type", kind);
                "type: unknown"
            }
            8 => {
                set(fields, "type", rng.pick(&["purchase", "refund"]));
                remove(fields, "amount");
                "amount: missing on a purchase or refund"
            }
            9 => {
                let amount = match rng.below(3) {
                    0 => rng.pick(&["-1", "-0.01", "-1e9", "-5.", "-.5"]).to_string(),
                    1 => format!("-{}", rng.between(1, i64::MAX as u64)),
                    _ => format!("-{}.{:02}", rng.below(10_000), rng.below(100)),
                };
                set(fields, "amount", amount);
                "amount: negative"
            }
            10 => {
                set(
                    fields,
                    "amount",
                    rng.pick(&["NaN", "nan", "-NaN", "+nan", "NAN"]),
                );
                "amount: NaN"
            }
            11 => {
                let amount = match rng.below(3) {
                    0 => rng
                        .pick(&["inf", "+inf", "infinity", "Infinity", "INF"])
                        .to_string(),
                    1 => rng.pick(&["-inf", "-infinity", "-Infinity"]).to_string(),
                    _ => rng.pick(&["1e400", "-1e400", "1E999"]).to_string(),
                };
                set(fields, "amount", amount);
                "amount: infinite"
            }
            12 => {
                let amount = match rng.below(4) {
                    0 => rng
                        .pick(&[
                            "1e10",
                            "1000000000.01",
                            "1000000001",
                            "1.0000001e9",
                            "18446744073709551616",
                        ])
                        .to_string(),
                    1 => rng.between(1_000_000_001, u64::MAX).to_string(),
                    2 => f64::MAX.to_string(),
                    _ => "9".repeat(rng.between(11, 400) as usize),
                };
                set(fields, "amount", amount);
                "amount: over 1e9"
            }
            13 => {
                const GARBAGE: &[&str] = &[
                    "abc",
                    "12,50",
                    "1 000",
                    "1_000",
                    "0x10",
                    "",
                    " ",
                    ".",
                    "-",
                    "+",
                    "e5",
                    "1e",
                    "1e+",
                    "--1",
                    "+-1",
                    "1.2.3",
                    "12.5abc",
                    "١٢",
                    ".e1",
                    "$5",
                    "5€",
                    "\u{200b}7",
                    // Numbers to a float parser, not plain decimals.
                    "+12.5",
                    "+0",
                    "-0",
                    "1e9",
                    "1E3",
                    "1e+3",
                    "1e-3",
                    "1e-400",
                    ".5",
                    "5.",
                    " 12.5",
                    "12.5 ",
                    "\t7\n",
                ];
                let amount = match rng.below(3) {
                    0 => rng.bytes(16),
                    _ => rng.pick(GARBAGE).as_bytes().to_vec(),
                };
                set(fields, "amount", amount);
                "amount: not a number"
            }
            14 => {
                let amount = rng.invalid_utf8();
                set(fields, "amount", amount);
                "amount: invalid UTF-8"
            }
            15 => {
                const EDGES: &[&str] = &[
                    "0",
                    "0.0",
                    "00",
                    "0.000000001",
                    "1000000000",
                    "1000000000.0",
                    "1000000000.0000000001",
                    "999999999.99",
                    "0012",
                    "0012.50",
                ];
                set(fields, "amount", rng.pick(EDGES));
                "amount: valid edge"
            }
            16 => {
                // Valid or not, an amount on a type that needs none.
                set(fields, "type", rng.pick(&["visit", "complaint"]));
                let amount = match rng.below(3) {
                    0 => "-3".to_string(),
                    1 => "NaN".to_string(),
                    _ => "7.25".to_string(),
                };
                set(fields, "amount", amount);
                "amount: on a visit or complaint"
            }
            17 => {
                set(fields, "ts", rng.pick(&["0", "1", "999"]));
                "ts: zero"
            }
            18 => {
                // Seconds where milliseconds belong: 1970 in milliseconds.
                let secs = self.now_ms / 1000 - rng.below(400 * 86_400);
                set(fields, "ts", secs.to_string());
                "ts: seconds"
            }
            19 => {
                let before = self
                    .limits
                    .min_ts_ms
                    .saturating_sub(rng.between(1, 10_000_000_000));
                set(fields, "ts", before.to_string());
                "ts: before min_ts_ms"
            }
            20 => {
                let ts = match rng.below(4) {
                    0 => u64::MAX.to_string(),
                    1 => (u64::from(u32::MAX) * 1000 + 1).to_string(),
                    _ => {
                        let ahead = rng.between(HOUR_MS, 100 * 365 * DAY_MS);
                        (self.now_ms + self.limits.max_future_skew_ms + ahead).to_string()
                    }
                };
                set(fields, "ts", ts);
                "ts: beyond the allowed skew"
            }
            21 => {
                const NOT_MS: &[&str] = &[
                    "",
                    "-5",
                    "-1700000000000",
                    "+1700000000000",
                    "1.5",
                    "1700000000000.0",
                    "soon",
                    "yesterday",
                    " 1700000000000",
                    "1700000000000 ",
                    "1e12",
                    "18446744073709551616",
                    "123456789012345678901234567890",
                    "2025-11-22T08:00:00Z",
                    "0x18c6a7b2000",
                ];
                let ts = match rng.below(3) {
                    0 => rng.bytes(24),
                    _ => rng.pick(NOT_MS).as_bytes().to_vec(),
                };
                set(fields, "ts", ts);
                "ts: not a number"
            }
            22 => {
                let ts = rng.invalid_utf8();
                set(fields, "ts", ts);
                "ts: invalid UTF-8"
            }
            23 => {
                let ts = match rng.below(3) {
                    0 => self.limits.min_ts_ms.to_string(),
                    // 1997-01-01: old, but valid; it does not move the clock back.
                    1 => T0_MS.to_string(),
                    _ => {
                        let ts = self.valid_ts().to_string();
                        format!("{}{ts}", "0".repeat(20 - ts.len()))
                    }
                };
                set(fields, "ts", ts);
                "ts: valid edge"
            }
            24 => {
                let ts = self.valid_ts().to_string();
                let zeros = self.rng.between(21 - ts.len() as u64, 30) as usize;
                set(fields, "ts", format!("{}{ts}", "0".repeat(zeros)));
                "ts: over 20 digits, zero-padded"
            }
            25..=28 => {
                let name = rng.pick(&["customer_id", "type", "amount", "ts"]);
                let value: Vec<u8> = match name {
                    "customer_id" => {
                        let i = rng.below(self.customers.len() as u64) as usize;
                        self.customers[i].as_bytes().to_vec()
                    }
                    "type" => rng.pick(&KINDS).as_bytes().to_vec(),
                    "amount" => b"10.00".to_vec(),
                    _ => self.now_ms.to_string().into_bytes(),
                };
                // The same value again or another one; twice when the field was absent.
                let copies = if fields.iter().any(|(n, _)| n == name.as_bytes()) {
                    1
                } else {
                    2
                };
                for _ in 0..copies {
                    fields.push((name.as_bytes().to_vec(), value.clone()));
                }
                "duplicated known field"
            }
            _ => {
                for _ in 0..self.rng.between(1, 4) {
                    let field = self.ignored_field();
                    fields.push(field);
                }
                "ignored fields"
            }
        }
    }

    /// A 64 KiB name or value in one of the fields.
    fn huge(&mut self, fields: &mut Fields) -> &'static str {
        let byte = self.rng.pick(b"x9 \xff");
        match self.rng.below(6) {
            0 => {
                set(fields, "customer_id", vec![byte; HUGE]);
                "huge customer_id"
            }
            1 => {
                set(fields, "type", vec![byte; HUGE]);
                "huge type"
            }
            2 => {
                set(fields, "amount", vec![byte; HUGE]);
                "huge amount"
            }
            3 => {
                set(fields, "ts", vec![b'9'; HUGE]);
                "huge ts"
            }
            4 => {
                fields.push((b"note".to_vec(), vec![byte; HUGE]));
                "huge ignored value"
            }
            _ => {
                fields.push((vec![byte; HUGE], b"v".to_vec()));
                "huge ignored name"
            }
        }
    }
}

/// Every reason, and every mutation, occurs often enough to mean something; and the split is
/// about half and half.
fn assert_generator_covers_everything(
    entries: &[(Fields, Vec<&str>)],
    verdicts: &[Result<Applied, &str>],
    ctx: &str,
) {
    let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
    for verdict in verdicts {
        if let Err(reason) = verdict {
            *reasons.entry(reason).or_default() += 1;
        }
    }
    for reason in REASONS {
        let n = reasons.get(reason).copied().unwrap_or(0);
        // Oversized entries are costly to send and need no variety.
        let least = if reason == "entry_too_large" { 50 } else { 500 };
        assert!(n >= least, "only {n} entries with reason {reason} ({ctx})");
    }
    let bad: usize = reasons.values().sum();
    assert!(
        (0.4..=0.6).contains(&(bad as f64 / entries.len() as f64)),
        "{bad} bad of {} ({ctx})",
        entries.len()
    );
    let mut mutations: BTreeMap<&str, usize> = BTreeMap::new();
    for label in entries.iter().flat_map(|(_, labels)| labels) {
        *mutations.entry(label).or_default() += 1;
    }
    assert_eq!(
        mutations.len(),
        MUTATION_KINDS,
        "mutations produced: {mutations:?} ({ctx})"
    );
    for (label, n) in &mutations {
        assert!(*n >= 20, "only {n} entries with mutation {label} ({ctx})");
    }
    let huge = mutations
        .iter()
        .filter(|(label, _)| label.starts_with("huge"))
        .map(|(_, n)| n)
        .sum::<usize>();
    assert!(
        (100..=600).contains(&huge),
        "{huge} entries with 64 KiB values ({ctx})"
    );
}

/// A connection that waits as long as a pipeline of 1,000 XADDs (some of 64 KiB) may take
/// on a busy machine; the client's default response timeout is 500 ms.
async fn connection(redis: &RedisServer) -> MultiplexedConnection {
    let config = AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(30)));
    redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("a connection to the test redis")
}

/// XADDs every entry, binary-safe, [`PIPELINE`] per round trip; returns the entry IDs.
async fn send(c: &mut MultiplexedConnection, entries: &[(Fields, Vec<&str>)]) -> Vec<String> {
    let mut ids = Vec::with_capacity(entries.len());
    for chunk in entries.chunks(PIPELINE) {
        let mut pipe = redis::pipe();
        for (fields, _) in chunk {
            pipe.cmd("XADD").arg(EVENTS).arg("*");
            for (name, value) in fields {
                pipe.arg(name.as_slice()).arg(value.as_slice());
            }
        }
        let written: Vec<String> = pipe.query_async(c).await.expect("XADD pipeline");
        ids.extend(written);
    }
    assert_eq!(ids.len(), entries.len());
    ids
}

/// The time part of a stream entry ID.
fn entry_ms(id: &str) -> u64 {
    id.split_once('-')
        .and_then(|(ms, _)| ms.parse().ok())
        .unwrap_or_else(|| panic!("entry ID {id:?}"))
}

/// Waits until the group has been delivered and has acknowledged everything, failing early
/// if the daemon task ends (a panic or an error) meanwhile.
async fn wait_processed(c: &mut MultiplexedConnection, app: &App, ctx: &str) {
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    loop {
        let state = group_state(c, EVENTS, GROUP).await;
        if state == Some((Some(0), 0)) {
            return;
        }
        assert!(
            !app.handle.is_finished(),
            "the daemon task ended with entries left (lag, pending) = {state:?} ({ctx})"
        );
        assert!(
            Instant::now() < deadline,
            "not drained after {DRAIN_TIMEOUT:?}: (lag, pending) = {state:?} ({ctx})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

type RawEntry = (String, Fields);

/// Every entry of a stream, binary-safe, oldest first, a page at a time (the dead letters
/// hold megabytes of 64 KiB values).
async fn read_all(c: &mut MultiplexedConnection, stream: &str) -> Vec<RawEntry> {
    let mut all: Vec<RawEntry> = Vec::new();
    loop {
        let start = all
            .last()
            .map_or_else(|| "-".to_string(), |(id, _)| format!("({id}"));
        let page: Vec<RawEntry> = redis::cmd("XRANGE")
            .arg(stream)
            .arg(start)
            .arg("+")
            .arg("COUNT")
            .arg(2_000)
            .query_async(c)
            .await
            .expect("XRANGE");
        if page.is_empty() {
            return all;
        }
        all.extend(page);
    }
}

/// Field names and values shown short, for failure messages.
fn show(fields: &[(Vec<u8>, Vec<u8>)]) -> String {
    let short = |b: &[u8]| {
        let s = String::from_utf8_lossy(&b[..b.len().min(40)]).into_owned();
        if b.len() > 40 {
            format!("{s}…({} bytes)", b.len())
        } else {
            s
        }
    };
    let pairs: Vec<String> = fields
        .iter()
        .map(|(n, v)| format!("{:?}={:?}", short(n), short(v)))
        .collect();
    pairs.join(" ")
}

/// Bytes of an entry's field names and values.
fn bytes(fields: &Fields) -> usize {
    fields.iter().map(|(n, v)| n.len() + v.len()).sum()
}

/// The documented rule (docs/tasks.md) for what a dead letter copies: every field when names and values take
/// at most `max` bytes; otherwise the fields that fit, in order, then the next one's name
/// with its value cut to the room left (at a character boundary if it is UTF-8), if its
/// name leaves room.
fn copied(fields: &Fields, max: usize) -> Fields {
    if bytes(fields) <= max {
        return fields.clone();
    }
    let mut room = max;
    let mut copy = Vec::new();
    for (name, value) in fields {
        if name.len() >= room {
            break;
        }
        room -= name.len();
        if value.len() > room {
            let mut end = room;
            if std::str::from_utf8(value).is_ok() {
                while std::str::from_utf8(&value[..end]).is_err() {
                    end -= 1;
                }
            }
            copy.push((name.clone(), value[..end].to_vec()));
            break;
        }
        room -= value.len();
        copy.push((name.clone(), value.clone()));
    }
    copy
}

/// Each dead letter comes from a bad entry, carries the oracle's reason, the entry's fields
/// unchanged and in order (cut to `max_copy_bytes`), a bounded detail, and its source; each
/// bad entry has exactly one.
fn check_dead_letters(
    dead: &[RawEntry],
    entries: &[(Fields, Vec<&str>)],
    ids: &[String],
    verdicts: &[Result<Applied, &str>],
    max_copy_bytes: usize,
    ctx: &str,
) {
    let index: HashMap<&str, usize> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect();
    let mut seen = vec![false; entries.len()];
    let mut problems = Vec::new();
    for (dead_id, fields) in dead {
        let Some(split) = fields.len().checked_sub(DEAD_LETTER_FIELDS.len()) else {
            problems.push(format!("dead letter {dead_id} has {} fields", fields.len()));
            continue;
        };
        let (original, added) = fields.split_at(split);
        let names: Vec<&[u8]> = added.iter().map(|(n, _)| n.as_slice()).collect();
        let expected_names: Vec<&[u8]> = DEAD_LETTER_FIELDS.iter().map(|n| n.as_bytes()).collect();
        if names != expected_names {
            problems.push(format!("dead letter {dead_id} ends with {}", show(added)));
            continue;
        }
        let text = |i: usize| String::from_utf8_lossy(&added[i].1).into_owned();
        let (reason, detail, stream, source_id) = (text(0), text(1), text(2), text(3));
        let Some(&i) = index.get(source_id.as_str()) else {
            problems.push(format!(
                "dead letter {dead_id} names an unknown source {source_id:?}"
            ));
            continue;
        };
        let (input, labels) = &entries[i];
        let what = format!(
            "entry #{i} {source_id} [{}] {{{}}}",
            labels.join(", "),
            show(input)
        );
        if std::mem::replace(&mut seen[i], true) {
            problems.push(format!("dead-lettered twice: {what}"));
        }
        match &verdicts[i] {
            Ok(applied) => problems.push(format!(
                "a good entry was dead-lettered ({reason}: {detail}); expected {applied:?}: {what}"
            )),
            Err(expected) if reason != *expected => problems.push(format!(
                "reason {reason:?} ({detail}), expected {expected:?}: {what}"
            )),
            Err(_) => {}
        }
        if original != copied(input, max_copy_bytes).as_slice() {
            problems.push(format!("fields changed to {{{}}}: {what}", show(original)));
        }
        if stream != EVENTS {
            problems.push(format!("dlq_source_stream {stream:?}: {what}"));
        }
        if detail.is_empty() || detail.len() > 512 {
            problems.push(format!("dlq_detail of {} bytes: {what}", detail.len()));
        }
    }
    for (i, verdict) in verdicts.iter().enumerate() {
        if let (Err(reason), false) = (verdict, seen[i]) {
            problems.push(format!(
                "not dead-lettered (expected {reason}): entry #{i} {} [{}] {{{}}}",
                ids[i],
                entries[i].1.join(", "),
                show(&entries[i].0)
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{} dead-letter problems ({ctx}), the first ones:\n{}",
        problems.len(),
        problems[..problems.len().min(20)].join("\n")
    );
}

/// What the good entries say of each customer.
#[derive(Debug, Default)]
struct Facts {
    purchases: u64,
    first_purchase: Option<u64>,
    last_purchase: Option<u64>,
    last_event: u64,
}

fn customer_facts(verdicts: &[Result<Applied, &str>]) -> HashMap<String, Facts> {
    let mut facts: HashMap<String, Facts> = HashMap::new();
    for ev in verdicts.iter().flatten() {
        let f = facts.entry(ev.customer_id.clone()).or_default();
        f.last_event = f.last_event.max(ev.secs);
        if ev.kind == "purchase" {
            f.purchases += 1;
            f.first_purchase = Some(f.first_purchase.map_or(ev.secs, |t| t.min(ev.secs)));
            f.last_purchase = Some(f.last_purchase.map_or(ev.secs, |t| t.max(ev.secs)));
        }
    }
    facts
}

/// A customer ID as one URL path segment: every byte but unreserved ASCII percent-encoded.
fn path_segment(id: &str) -> String {
    id.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Asks the API for every customer the good entries name: each is known, with the purchase
/// count, first and last purchase and last event time those entries give.
async fn check_customers(app: &App, expected: &HashMap<String, Facts>, ctx: &str) {
    let client = reqwest::Client::new();
    let rfc3339 = |secs: u64| churnd::time::rfc3339(u32::try_from(secs).expect("before 2106"));
    let mut problems = Vec::new();
    for (id, facts) in expected {
        let url = app.url(&format!("/v1/customers/{}", path_segment(id)));
        let response = client
            .get(&url)
            .send()
            .await
            .expect("the daemon answers HTTP");
        if response.status() != 200 {
            problems.push(format!("GET {url} for {id:?}: {}", response.status()));
            continue;
        }
        let view: serde_json::Value = response.json().await.unwrap();
        let observed = (
            view["customer_id"].as_str().map(str::to_string),
            view["rfm"]["purchases"].as_u64().unwrap_or(0),
            view["first_purchase"].as_str().map(str::to_string),
            view["last_purchase"].as_str().map(str::to_string),
            view["last_event"].as_str().map(str::to_string),
        );
        let wanted = (
            Some(id.clone()),
            facts.purchases,
            facts.first_purchase.map(rfc3339),
            facts.last_purchase.map(rfc3339),
            Some(rfc3339(facts.last_event)),
        );
        if observed != wanted {
            problems.push(format!(
                "customer {id:?}: {observed:?}, expected {wanted:?}"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{} of {} customers wrong ({ctx}), the first ones:\n{}",
        problems.len(),
        expected.len(),
        problems[..problems.len().min(20)].join("\n")
    );
}
