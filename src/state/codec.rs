//! The snapshot file format: a compact, versioned, checksummed encoding of [`EngineState`].
//!
//! ```text
//! versions 4-7: magic "CHURNDSN" | version u32 | 0 u64 | body | body length u64 | "CHURNDND" | xxh3-64
//! versions 1-3:  magic "CHURNDSN" | version u32 | body length u64 | body | xxh3-64
//! ```
//!
//! The checksum covers everything before it. Version 4 gives the body's length after the
//! body, so that a snapshot can be written as its customers are copied out, before their
//! sizes are known; the end marker tells a truncated file from a damaged one. All integers
//! are little-endian. The body holds the creation time, the model version, the engine's clock
//! and thresholds, the last entry applied per input stream (by name, so the stream list may
//! change between runs), from version 5 the budgets' pacing, the open tasks (those whose
//! outcome is not known yet, each with its customer ID: see [`crate::outcomes`]) and the
//! partition count (u16; earlier: 1), from version 6 the care kinds' budgets' pacing and
//! each pacing's first candidate's time, from version 7 the outcomes per arm of the book
//! win-back decides with (see [`crate::decide::uplift`]), then every customer in store order: ID, features
//! (bit-exact), next
//! check, win-back state, last classification, contact bookkeeping and the sparse extras
//! (profile attributes, feedback, coupons). Store order is kept so a restored engine assigns
//! the same indices and makes the same decisions.

use crate::classify::{LifecycleStage, RfmThresholds, Segment};
use crate::decide::uplift::{Arm, ArmOutcomes};
use crate::decide::PacerState;
use crate::decide::{Contact, Group, TaskKind, WinbackState};
use crate::engine::{Customer, Customers, EngineState, Extras, StateHeader};
use crate::event::EntryId;
use crate::features::store::CaptureSize;
use crate::features::timers::Timer;
use crate::features::{CustomerFeatures, Decayed, Feedback};
use crate::metrics::PROBABILITY_BUCKETS;
use crate::outcomes::OpenTask;
use crate::partition::PartitionCount;
use crate::profiles::Interner;
use crate::time::Day;
use std::io::Read;
use std::sync::Arc;

use xxhash_rust::xxh3::Xxh3;

const MAGIC: &[u8; 8] = b"CHURNDSN";
/// Bumped on any change of the layout. Versions 1 (without the fingerprint of the scheduling
/// settings, read as "settings unknown"), 2 (without the customers' contact bookkeeping: the
/// last win-back task is taken as the last contact) and 3 (the body length in the header,
/// no profiles, feedback or coupons) and 4 (no budgets' pacing, no open tasks, no partition
/// count: read as one partition) and 5 (no care budgets, no time of a budget's first
/// candidate: read as unknown) and 6 (no book of measured lift: read as none, so decisions
/// until the next snapshot use the stand-in) are still read; other versions are refused,
/// not guessed at.
pub(crate) const FORMAT_VERSION: u32 = 7;
const HEADER_LEN: usize = 8 + 4 + 8;
const CHECKSUM_LEN: usize = 8;
const END_MAGIC: &[u8; 8] = b"CHURNDND";
/// Version 4's trailer: the body length, the end marker, then the checksum.
const TRAILER_LEN: usize = 8 + END_MAGIC.len() + CHECKSUM_LEN;
/// Which extras a version-4 customer has (the flag byte).
const HAS_PROFILE: u8 = 1;
const HAS_FEEDBACK: u8 = 2;
const HAS_COUPONS: u8 = 4;
/// "No classification" in the one-byte stage, segment and bucket fields.
const NONE: u8 = u8::MAX;
/// Fixed bytes per customer besides the ID: length byte, features, timer, win-back state,
/// stage, segment, bucket.
const CUSTOMER_FIXED_LEN: usize = 1 + CustomerFeatures::ENCODED_LEN + 4 + 4 + 1 + 1 + 3 + 3;
/// What versions 1 and 2 lack per customer: the contact bookkeeping.
const CONTACT_LEN: usize = 3;

/// Fixed bytes per customer in a snapshot of `version`: the contact bookkeeping from 3 on,
/// the extras' flag byte from 4 on.
fn customer_fixed_len(version: u32) -> usize {
    match version {
        ..=2 => CUSTOMER_FIXED_LEN - CONTACT_LEN,
        3 => CUSTOMER_FIXED_LEN,
        _ => CUSTOMER_FIXED_LEN + 1,
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("not a churnd snapshot (bad magic bytes)")]
    Magic,
    #[error(
        "snapshot format version {0} is not supported (this churnd reads versions 1 to {FORMAT_VERSION})"
    )]
    Version(u32),
    #[error("truncated: {expected} bytes expected, {actual} present")]
    Truncated { expected: u64, actual: u64 },
    /// A version-4 file's end marker is not where it belongs: the file was cut short, or
    /// its last bytes were damaged (the two cannot be told apart without the marker).
    #[error(
        "truncated or corrupt: {actual} bytes present, and they do not end as a snapshot ends"
    )]
    NoEnd { actual: u64 },
    #[error("checksum mismatch: the file is corrupt")]
    Checksum,
    #[error("malformed body: {0}")]
    Malformed(String),
    #[error("the customers encoded differ from the count the snapshot announced")]
    Incomplete,
    #[error("cannot read: {0}")]
    Read(String),
}

/// A decoded snapshot.
pub struct Decoded {
    pub state: EngineState,
    /// When the snapshot was taken (wall clock, ms since the Unix epoch).
    pub created_ms: u64,
    /// Streams the snapshot has a position for but the configuration no longer reads.
    pub dropped_streams: Vec<String>,
}

/// Encodes `state` at once; `streams` names the positions of `state.header.applied`.
pub fn encode(state: &EngineState, streams: &[String], created_ms: u64) -> Vec<u8> {
    let customers = &state.customers;
    let size = CaptureSize {
        customers: customers.len() as u64,
        id_bytes: customers
            .iter()
            .map(|(i, _)| customers.id(i).len() as u64)
            .sum(),
    };
    let mut out = Vec::with_capacity(
        HEADER_LEN + 256 + customers.len() * (CUSTOMER_FIXED_LEN + 25) + TRAILER_LEN,
    );
    let mut encoder = Encoder::start(&state.header, size, streams, created_ms, &mut out);
    encoder.customers(
        customers
            .iter()
            .map(|(i, c)| (customers.id(i), c, customers.extra(i))),
        &mut out,
    );
    encoder
        .finish(&mut out)
        .expect("the size was counted from the same customers");
    out
}

/// Encodes a snapshot piece by piece, for a state copied out a slice at a time: the header
/// first, then the customers in store order in as many pieces as they come, then the body's
/// length and the checksum. Each call appends to the buffer it is given, so the bytes can go
/// to disk as they are made.
pub(crate) struct Encoder {
    hasher: Xxh3,
    body_len: u64,
    customers_left: u64,
}

impl Encoder {
    /// Appends everything before the customers to `out`; `size` counts the customers that
    /// will follow, `streams` names the positions of `header.applied`.
    pub fn start(
        header: &StateHeader,
        size: CaptureSize,
        streams: &[String],
        created_ms: u64,
        out: &mut Vec<u8>,
    ) -> Self {
        let from = out.len();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        // Version 4 gives the body's length in the trailer.
        out.extend_from_slice(&0u64.to_le_bytes());
        let body = out.len();
        out.extend_from_slice(&created_ms.to_le_bytes());
        put_str(out, &header.model_version);
        out.extend_from_slice(&header.watermark.to_le_bytes());
        out.extend_from_slice(&header.next_threshold_refresh.to_le_bytes());
        out.extend_from_slice(&header.scorings.to_le_bytes());
        out.extend_from_slice(&header.schedule_settings.to_le_bytes());
        for t in [
            header.thresholds.recency_days,
            header.thresholds.frequency,
            header.thresholds.monetary,
        ] {
            out.extend_from_slice(&t.to_bits().to_le_bytes());
        }
        // Every stream with a known position, 0-0 included (reading started at the stream's
        // beginning); before this churnd, streams at 0-0 were left out.
        let positions: Vec<(&String, EntryId)> = streams
            .iter()
            .zip(&header.applied)
            .filter_map(|(name, id)| Some((name, (*id)?)))
            .collect();
        out.extend_from_slice(&(positions.len() as u32).to_le_bytes());
        for (name, id) in positions {
            put_str(out, name);
            out.extend_from_slice(&id.ms.to_le_bytes());
            out.extend_from_slice(&id.seq.to_le_bytes());
        }
        put_budgets(out, &header.budgets);
        put_open_tasks(out, &header.open_tasks);
        out.extend_from_slice(&header.partitions.get().to_le_bytes());
        put_budgets(out, &header.care_budgets);
        put_first_candidates(out, &header.budgets, &header.care_budgets);
        put_uplift(out, &header.uplift);
        out.extend_from_slice(&size.customers.to_le_bytes());
        out.extend_from_slice(&size.id_bytes.to_le_bytes());
        let mut hasher = Xxh3::new();
        hasher.update(&out[from..]);
        Self {
            hasher,
            body_len: (out.len() - body) as u64,
            customers_left: size.customers,
        }
    }

    /// Appends the next customers, in store order, with their extras.
    pub fn customers<'a>(
        &mut self,
        customers: impl IntoIterator<Item = (&'a str, &'a Customer, Option<&'a Extras>)>,
        out: &mut Vec<u8>,
    ) {
        let from = out.len();
        for (id, c, extras) in customers {
            self.customers_left = self.customers_left.wrapping_sub(1);
            out.push(id.len() as u8);
            out.extend_from_slice(id.as_bytes());
            out.extend_from_slice(&c.features.to_bytes());
            out.extend_from_slice(&c.timer.due().unwrap_or(0).to_le_bytes());
            out.extend_from_slice(&c.winback.last_task_at.to_le_bytes());
            out.push(c.winback.episode_tasks);
            out.push(u8::from(c.winback.awaiting_recovery));
            out.push(c.stage.map_or(NONE, |s| s.index() as u8));
            out.push(c.segment.map_or(NONE, |s| s.index() as u8));
            out.push(c.bucket.unwrap_or(NONE));
            out.extend_from_slice(&c.contact.last_day.number().to_le_bytes());
            out.push(c.contact.prospect_visits);
            put_extras(out, extras);
        }
        self.body_len += (out.len() - from) as u64;
        self.hasher.update(&out[from..]);
    }

    /// Appends the body's length and the checksum. Fails if the customers given differ in
    /// number from the size announced at the start (the file would not decode).
    pub fn finish(mut self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        if self.customers_left != 0 {
            return Err(CodecError::Incomplete);
        }
        let from = out.len();
        out.extend_from_slice(&self.body_len.to_le_bytes());
        out.extend_from_slice(END_MAGIC);
        self.hasher.update(&out[from..]);
        out.extend_from_slice(&self.hasher.digest().to_le_bytes());
        Ok(())
    }
}

/// Version 5's pacing of the budgeted actions (the header's last field): per action its
/// name, day, counts, expected candidates and the histogram's non-zero buckets.
fn put_budgets(out: &mut Vec<u8>, budgets: &[(String, PacerState)]) {
    out.extend_from_slice(&(budgets.len() as u32).to_le_bytes());
    for (action, s) in budgets {
        put_str(out, action);
        for n in [s.day, s.admitted, s.seen] {
            out.extend_from_slice(&n.to_le_bytes());
        }
        out.extend_from_slice(&s.expected.to_bits().to_le_bytes());
        out.extend_from_slice(&s.days.to_le_bytes());
        let used: Vec<(usize, f64)> = s
            .weights
            .iter()
            .copied()
            .enumerate()
            .filter(|&(_, w)| w != 0.0)
            .collect();
        out.extend_from_slice(&(used.len() as u32).to_le_bytes());
        for (bucket, w) in used {
            out.extend_from_slice(&(bucket as u32).to_le_bytes());
            out.extend_from_slice(&w.to_bits().to_le_bytes());
        }
    }
}

/// Version 6: when each budget's first candidate came, win-back's then the care kinds', in
/// the order of their pacing states.
fn put_first_candidates(
    out: &mut Vec<u8>,
    winback: &[(String, PacerState)],
    care: &[(String, PacerState)],
) {
    for (_, s) in winback.iter().chain(care) {
        out.extend_from_slice(&s.first_at.to_le_bytes());
    }
}

fn read_budgets<R: Read>(r: &mut Reader<R>) -> Result<Vec<(String, PacerState)>, CodecError> {
    let count = r.u32()?;
    // Each takes at least its fixed bytes: a count beyond that must not drive an allocation.
    if u64::from(count) * 30 > r.remaining() {
        return Err(malformed(format!("{count} budgets do not fit")));
    }
    let mut budgets = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let action = r.str()?.to_string();
        let mut s = PacerState {
            day: r.u32()?,
            admitted: r.u32()?,
            seen: r.u32()?,
            expected: f64::from_bits(r.u64()?),
            days: r.u32()?,
            ..PacerState::default()
        };
        for _ in 0..r.u32()? {
            let bucket = r.u32()? as usize;
            let w = f64::from_bits(r.u64()?);
            *s.weights.get_mut(bucket).ok_or_else(|| {
                malformed(format!("budget {action:?}: no priority bucket {bucket}"))
            })? = w;
        }
        budgets.push((action, s));
    }
    Ok(budgets)
}

/// The open tasks: their count, then each with its customer ID.
fn put_open_tasks(out: &mut Vec<u8>, tasks: &[(String, OpenTask)]) {
    out.extend_from_slice(&(tasks.len() as u32).to_le_bytes());
    for (customer, t) in tasks {
        put_str(out, customer);
        put_str(out, &t.task_id);
        let kind = TaskKind::ALL.iter().position(|k| *k == t.kind);
        out.push(kind.unwrap_or_default() as u8);
        out.push(match t.group {
            Group::Treatment => 0,
            Group::Control => 1,
        });
        out.push(t.segment.map_or(NONE, |s| s.index() as u8));
        put_str(out, &t.action);
        out.extend_from_slice(&t.raised_at.to_le_bytes());
        out.extend_from_slice(&t.closes_at.to_le_bytes());
        out.push(u8::from(t.cancelled));
    }
}

fn read_open_tasks<R: Read>(r: &mut Reader<R>) -> Result<Vec<(String, OpenTask)>, CodecError> {
    let count = r.u32()?;
    // Each takes at least 19 bytes: a count beyond that must not drive an allocation.
    if u64::from(count).saturating_mul(19) > r.remaining() {
        return Err(malformed(format!("{count} open tasks do not fit")));
    }
    let mut tasks = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let customer = r.str()?.to_string();
        let task_id: Box<str> = r.str()?.into();
        let what = |field: &str, v: u8| malformed(format!("open task {task_id:?}: {field} {v}"));
        let kind = r.u8()?;
        let kind = *TaskKind::ALL
            .get(usize::from(kind))
            .ok_or_else(|| what("kind", kind))?;
        let group = match r.u8()? {
            0 => Group::Treatment,
            1 => Group::Control,
            other => return Err(what("group", other)),
        };
        let segment =
            optional(r.u8()?, |i| Segment::ALL.get(i).copied()).map_err(|v| what("segment", v))?;
        let action: Arc<str> = r.str()?.into();
        let raised_at = r.u32()?;
        let closes_at = r.u32()?;
        let cancelled = match r.u8()? {
            0 => false,
            1 => true,
            other => return Err(what("cancelled", other)),
        };
        if customer.is_empty() || task_id.is_empty() {
            return Err(malformed(format!("open task {task_id:?} of {customer:?}")));
        }
        tasks.push((
            customer,
            OpenTask {
                task_id,
                kind,
                group,
                segment,
                action,
                raised_at,
                closes_at,
                cancelled,
            },
        ));
    }
    Ok(tasks)
}

/// Version 7's book: per arm its kind, segment and action, then the four counts.
fn put_uplift(out: &mut Vec<u8>, arms: &[(Arm, ArmOutcomes)]) {
    out.extend_from_slice(&(arms.len() as u32).to_le_bytes());
    for (arm, o) in arms {
        let kind = TaskKind::ALL.iter().position(|k| *k == arm.kind);
        out.push(kind.unwrap_or_default() as u8);
        out.push(arm.segment.index() as u8);
        put_str(out, &arm.action);
        for n in [
            o.treated,
            o.treated_converted,
            o.control,
            o.control_converted,
        ] {
            out.extend_from_slice(&n.to_le_bytes());
        }
    }
}

fn read_uplift<R: Read>(r: &mut Reader<R>) -> Result<Vec<(Arm, ArmOutcomes)>, CodecError> {
    let count = r.u32()?;
    // Each takes at least 35 bytes: a count beyond that must not drive an allocation.
    if u64::from(count).saturating_mul(35) > r.remaining() {
        return Err(malformed(format!("{count} arms do not fit")));
    }
    let mut arms = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let (kind, segment) = (r.u8()?, r.u8()?);
        let what = |field: &str, v: u8| malformed(format!("arm: {field} {v}"));
        let kind = *TaskKind::ALL
            .get(usize::from(kind))
            .ok_or_else(|| what("kind", kind))?;
        let segment = *Segment::ALL
            .get(usize::from(segment))
            .ok_or_else(|| what("segment", segment))?;
        let action: Arc<str> = r.str()?.into();
        let o = ArmOutcomes {
            treated: r.u64()?,
            treated_converted: r.u64()?,
            control: r.u64()?,
            control_converted: r.u64()?,
        };
        if o.treated_converted > o.treated || o.control_converted > o.control {
            return Err(malformed(format!(
                "arm {action}/{}: more conversions than tasks",
                segment.as_str()
            )));
        }
        arms.push((
            Arm {
                kind,
                action,
                segment,
            },
            o,
        ));
    }
    Ok(arms)
}

/// The extras' flag byte and what it announces.
fn put_extras(out: &mut Vec<u8>, extras: Option<&Extras>) {
    let Some(x) = extras else {
        out.push(0);
        return;
    };
    let (feedback, coupons) = (x.feedback(), x.coupons());
    let mut flags = 0;
    if x.profile.is_some() {
        flags |= HAS_PROFILE;
    }
    if feedback.is_some() {
        flags |= HAS_FEEDBACK;
    }
    if coupons.is_some() {
        flags |= HAS_COUPONS;
    }
    out.push(flags);
    if let Some(profile) = &x.profile {
        out.push(profile.len() as u8);
        for (key, value) in profile.iter() {
            out.push(key.len() as u8);
            out.extend_from_slice(key.as_bytes());
            put_str(out, value);
        }
    }
    if let Some(f) = feedback {
        out.push(f.last_score);
        out.extend_from_slice(&f.last_at.to_le_bytes());
        put_decayed(out, f.low_scores);
    }
    if let Some(c) = coupons {
        put_decayed(out, c);
    }
}

fn put_decayed(out: &mut Vec<u8>, d: Decayed) {
    let (value, at) = d.to_parts();
    out.extend_from_slice(&value.to_bits().to_le_bytes());
    out.extend_from_slice(&at.to_le_bytes());
}

/// Decodes a snapshot held in memory; see [`decode_from`].
pub fn decode(bytes: &[u8], streams: &[String]) -> Result<Decoded, CodecError> {
    decode_from(bytes, bytes.len() as u64, streams)
}

/// Decodes a snapshot of `len` bytes read from `input` (a file), checking every byte;
/// positions are mapped onto `streams` by name. The input is read through a buffer of a
/// megabyte, never held whole: loading ten million customers takes their table, not also
/// the 900 MB of the file. A damaged file is reported as such (checksum mismatch) even when
/// the damage first shows as a malformed field.
pub fn decode_from(input: impl Read, len: u64, streams: &[String]) -> Result<Decoded, CodecError> {
    let mut r = Reader::new(input, len);
    let version = r.header()?;
    match decode_body(&mut r, version, streams) {
        Ok(decoded) => {
            r.verify()?;
            Ok(decoded)
        }
        Err(e @ CodecError::Read(_)) => Err(e),
        Err(e) => {
            r.verify()?;
            Err(e)
        }
    }
}

fn decode_body<R: Read>(
    r: &mut Reader<R>,
    version: u32,
    streams: &[String],
) -> Result<Decoded, CodecError> {
    let created_ms = r.u64()?;
    let model_version = r.str()?.to_string();
    let watermark = r.u32()?;
    let next_threshold_refresh = r.u32()?;
    let scorings = r.u64()?;
    let schedule_settings = if version >= 2 { r.u64()? } else { 0 };
    let thresholds = RfmThresholds {
        recency_days: f64::from_bits(r.u64()?),
        frequency: f64::from_bits(r.u64()?),
        monetary: f64::from_bits(r.u64()?),
    };
    let mut applied = vec![None; streams.len()];
    let mut dropped_streams = Vec::new();
    for _ in 0..r.u32()? {
        let name = r.str()?.to_string();
        let id = EntryId {
            ms: r.u64()?,
            seq: r.u64()?,
        };
        match streams.iter().position(|s| *s == name) {
            Some(i) => applied[i] = Some(id),
            None => dropped_streams.push(name),
        }
    }
    let budgets = if version >= 5 {
        read_budgets(r)?
    } else {
        Vec::new()
    };
    let open_tasks = if version >= 5 {
        read_open_tasks(r)?
    } else {
        Vec::new()
    };
    let partitions = if version >= 5 {
        let n = u16::from_le_bytes(r.array()?);
        PartitionCount::new(n).ok_or_else(|| malformed(format!("{n} partitions")))?
    } else {
        PartitionCount::ONE
    };
    let mut care_budgets = if version >= 6 {
        read_budgets(r)?
    } else {
        Vec::new()
    };
    let mut budgets = budgets;
    if version >= 6 {
        for (_, s) in budgets.iter_mut().chain(care_budgets.iter_mut()) {
            s.first_at = r.u32()?;
        }
    }
    let uplift = if version >= 7 {
        read_uplift(r)?
    } else {
        Vec::new()
    };
    let count = r.u64()?;
    let id_bytes = r.u64()?;
    // Every customer takes at least its fixed bytes: a count beyond that is a lie that must
    // not drive an allocation.
    let fixed_len = customer_fixed_len(version);
    if count.saturating_mul(fixed_len as u64) > r.remaining() || id_bytes > r.remaining() {
        return Err(malformed(format!(
            "{count} customers do not fit in {} bytes",
            r.remaining()
        )));
    }
    let mut customers = Customers::new();
    let mut profiles = Interner::default();
    customers.reserve(count as usize, id_bytes as usize);
    let mut id = String::with_capacity(usize::from(u8::MAX));
    let mut attributes = Attributes::default();
    for n in 0..count {
        let len = usize::from(r.u8()?);
        id.clear();
        id.push_str(
            std::str::from_utf8(r.take(len)?)
                .map_err(|_| malformed(format!("customer {n}: the ID is not UTF-8")))?,
        );
        if id.is_empty() {
            return Err(malformed(format!("customer {n}: empty ID")));
        }
        let (idx, new) = customers.find_or_insert(&id);
        if !new {
            return Err(malformed(format!("customer {id:?} appears twice")));
        }
        *customers.get_mut(idx) = read_customer(r, &id, version)?;
        if version >= 4 {
            if let Some(extras) = read_extras(r, &id, &mut profiles, &mut attributes)? {
                *customers.extra_mut(idx) = extras;
            }
        }
        debug_assert_eq!(u64::from(idx), n);
    }
    if r.remaining() != 0 {
        return Err(malformed(format!(
            "{} bytes after the last customer",
            r.remaining()
        )));
    }
    Ok(Decoded {
        state: EngineState {
            customers,
            header: StateHeader {
                watermark,
                thresholds,
                next_threshold_refresh,
                scorings,
                schedule_settings,
                applied,
                model_version,
                budgets,
                care_budgets,
                partitions,
                open_tasks,
                uplift,
            },
            profiles,
        },
        created_ms,
        dropped_streams,
    })
}

#[inline]
fn read_customer<R: Read>(
    r: &mut Reader<R>,
    id: &str,
    version: u32,
) -> Result<Customer, CodecError> {
    let features_bytes: [u8; CustomerFeatures::ENCODED_LEN] = r.array()?;
    let due = r.u32()?;
    let last_task_at = r.u32()?;
    let episode_tasks = r.u8()?;
    let awaiting_recovery = match r.u8()? {
        0 => false,
        1 => true,
        other => return Err(malformed(format!("{id:?}: awaiting_recovery {other}"))),
    };
    let stage = optional(r.u8()?, |i| LifecycleStage::ALL.get(i).copied())
        .map_err(|v| malformed(format!("{id:?}: stage {v}")))?;
    let segment = optional(r.u8()?, |i| Segment::ALL.get(i).copied())
        .map_err(|v| malformed(format!("{id:?}: segment {v}")))?;
    let bucket = optional(r.u8()?, |i| {
        (i < PROBABILITY_BUCKETS.len()).then_some(i as u8)
    })
    .map_err(|v| malformed(format!("{id:?}: probability bucket {v}")))?;
    let contact = if version >= 3 {
        Contact {
            last_day: Day::from_number(u16::from_le_bytes([r.u8()?, r.u8()?])),
            prospect_visits: r.u8()?,
        }
    } else {
        // Before contacts were kept, the last win-back task was the last contact.
        Contact {
            last_day: Day::of(last_task_at),
            prospect_visits: 0,
        }
    };
    Ok(Customer {
        features: CustomerFeatures::from_bytes(&features_bytes),
        timer: Timer::unqueued((due != 0).then_some(due)),
        winback: WinbackState {
            last_task_at,
            episode_tasks,
            awaiting_recovery,
        },
        contact,
        stage,
        segment,
        bucket,
    })
}

/// A profile's attributes as read, back to back in one buffer that serves customer after
/// customer: no allocation per attribute on the load path.
#[derive(Default)]
struct Attributes {
    text: String,
    /// Per attribute, where its value starts and where it ends in `text` (its key ends
    /// where its value starts, and starts where the previous value ends).
    spans: Vec<(usize, usize)>,
}

impl Attributes {
    fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        let mut key_start = 0;
        self.spans.iter().map(move |&(value_start, end)| {
            let pair = (
                &self.text[key_start..value_start],
                &self.text[value_start..end],
            );
            key_start = end;
            pair
        })
    }
}

/// A version-4 customer's extras, `None` when they have none.
fn read_extras<R: Read>(
    r: &mut Reader<R>,
    id: &str,
    profiles: &mut Interner,
    attributes: &mut Attributes,
) -> Result<Option<Extras>, CodecError> {
    let flags = r.u8()?;
    if flags == 0 {
        return Ok(None);
    }
    if flags & !(HAS_PROFILE | HAS_FEEDBACK | HAS_COUPONS) != 0 {
        return Err(malformed(format!("{id:?}: extras flags {flags:#x}")));
    }
    let mut extras = Extras::default();
    if flags & HAS_PROFILE != 0 {
        attributes.text.clear();
        attributes.spans.clear();
        for _ in 0..r.u8()? {
            let len = usize::from(r.u8()?);
            let key_start = attributes.text.len();
            attributes.text.push_str(
                std::str::from_utf8(r.take(len)?)
                    .map_err(|_| malformed(format!("{id:?}: a profile key is not UTF-8")))?,
            );
            let value_start = attributes.text.len();
            attributes.text.push_str(r.str()?);
            let key = &attributes.text[key_start..value_start];
            if key.is_empty()
                || value_start == attributes.text.len()
                || attributes.pairs().any(|(k, _)| k == key)
            {
                return Err(malformed(format!("{id:?}: profile attribute {key:?}")));
            }
            attributes.spans.push((value_start, attributes.text.len()));
        }
        if attributes.spans.is_empty() {
            return Err(malformed(format!("{id:?}: an empty profile")));
        }
        extras.profile = Some(profiles.profile(attributes.pairs()));
    }
    if flags & HAS_FEEDBACK != 0 {
        let last_score = r.u8()?;
        if !(1..=5).contains(&last_score) {
            return Err(malformed(format!("{id:?}: feedback score {last_score}")));
        }
        extras.signals_mut().feedback = Some(Feedback {
            last_score,
            last_at: r.u32()?,
            low_scores: read_decayed(r)?,
        });
    }
    if flags & HAS_COUPONS != 0 {
        extras.signals_mut().coupons = Some(read_decayed(r)?);
    }
    Ok(Some(extras))
}

fn read_decayed<R: Read>(r: &mut Reader<R>) -> Result<Decayed, CodecError> {
    let value = f32::from_bits(r.u32()?);
    Ok(Decayed::from_parts(value, r.u32()?))
}

/// A one-byte optional index: [`NONE`] or a valid index; the byte itself when invalid.
fn optional<T>(byte: u8, from_index: impl Fn(usize) -> Option<T>) -> Result<Option<T>, u8> {
    if byte == NONE {
        return Ok(None);
    }
    from_index(usize::from(byte)).map(Some).ok_or(byte)
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let bytes = &s.as_bytes()[..s.len().min(usize::from(u16::MAX))];
    out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn truncated(expected: u64, actual: u64) -> CodecError {
    CodecError::Truncated { expected, actual }
}

fn malformed(what: String) -> CodecError {
    CodecError::Malformed(what)
}

/// Reads a snapshot front to back through a bounded buffer, hashing every byte before the
/// checksum as it arrives; running out of bytes is an error, never a panic.
struct Reader<R> {
    input: R,
    /// `buffer[start..end]` is read but not yet taken.
    buffer: Box<[u8]>,
    start: usize,
    end: usize,
    /// Bytes of the body not yet read from the input.
    unread: u64,
    hasher: Xxh3,
    len: u64,
    /// The format version, once the header is read.
    version: u32,
}

/// Bytes read from the input at a time; more than any one field (at most 64 KiB).
const READ_BUFFER: usize = 1 << 20;

impl<R: Read> Reader<R> {
    fn new(input: R, len: u64) -> Self {
        Self {
            input,
            buffer: vec![0; READ_BUFFER].into_boxed_slice(),
            start: 0,
            end: 0,
            unread: 0,
            hasher: Xxh3::new(),
            len,
            version: 0,
        }
    }

    /// Reads and checks magic, version and length; returns the version.
    fn header(&mut self) -> Result<u32, CodecError> {
        if self.len < HEADER_LEN as u64 {
            return Err(truncated(HEADER_LEN as u64, self.len));
        }
        self.unread = HEADER_LEN as u64;
        if self.take(8)? != MAGIC {
            return Err(CodecError::Magic);
        }
        let version = self.u32()?;
        if !(1..=FORMAT_VERSION).contains(&version) {
            return Err(CodecError::Version(version));
        }
        let body_len = self.u64()?;
        self.unread = if version >= 4 {
            // The body is whatever lies between header and trailer; the trailer says how
            // long it should be (checked in `verify`).
            self.len
                .checked_sub((HEADER_LEN + TRAILER_LEN) as u64)
                .ok_or_else(|| truncated((HEADER_LEN + TRAILER_LEN) as u64, self.len))?
        } else {
            let expected = (HEADER_LEN as u64)
                .saturating_add(body_len)
                .saturating_add(CHECKSUM_LEN as u64);
            if self.len != expected {
                return Err(truncated(expected, self.len));
            }
            body_len
        };
        self.version = version;
        Ok(version)
    }

    /// Body bytes not yet taken.
    fn remaining(&self) -> u64 {
        (self.end - self.start) as u64 + self.unread
    }

    #[inline]
    fn take(&mut self, n: usize) -> Result<&[u8], CodecError> {
        if self.end - self.start < n {
            self.fill(n)?;
        }
        let taken = &self.buffer[self.start..self.start + n];
        self.start += n;
        Ok(taken)
    }

    /// Reads until at least `n` bytes are buffered, keeping those not yet taken. Once per
    /// megabyte: kept out of line so that [`Self::take`] inlines.
    #[cold]
    #[inline(never)]
    fn fill(&mut self, n: usize) -> Result<(), CodecError> {
        let kept = self.end - self.start;
        if (n - kept) as u64 > self.unread {
            return Err(malformed(format!(
                "{n} bytes needed, {} left",
                self.remaining()
            )));
        }
        self.buffer.copy_within(self.start..self.end, 0);
        let end = (kept as u64 + self.unread).min(self.buffer.len() as u64) as usize;
        read_fully(&mut self.input, &mut self.buffer[kept..end])?;
        self.hasher.update(&self.buffer[kept..end]);
        self.unread -= (end - kept) as u64;
        (self.start, self.end) = (0, end);
        Ok(())
    }

    /// Reads whatever of the body is left, then the checksum, and compares.
    fn verify(&mut self) -> Result<(), CodecError> {
        // What the buffer holds was hashed as it was read: it can take the rest.
        (self.start, self.end) = (0, 0);
        while self.unread > 0 {
            let n = self.buffer.len().min(self.unread as usize);
            read_fully(&mut self.input, &mut self.buffer[..n])?;
            self.hasher.update(&self.buffer[..n]);
            self.unread -= n as u64;
        }
        if self.version >= 4 {
            let mut trailer = [0; 8 + END_MAGIC.len()];
            read_fully(&mut self.input, &mut trailer)?;
            self.hasher.update(&trailer);
            let (body_len, end) = trailer.split_at(8);
            let body_len = u64::from_le_bytes(body_len.try_into().unwrap_or_default());
            let actual = self.len - (HEADER_LEN + TRAILER_LEN) as u64;
            if end != END_MAGIC {
                return Err(CodecError::NoEnd { actual: self.len });
            }
            if body_len != actual {
                let expected = body_len.saturating_add((HEADER_LEN + TRAILER_LEN) as u64);
                return Err(truncated(expected, self.len));
            }
        }
        let mut checksum = [0; CHECKSUM_LEN];
        read_fully(&mut self.input, &mut checksum)?;
        if self.hasher.digest().to_le_bytes() != checksum {
            return Err(CodecError::Checksum);
        }
        Ok(())
    }

    #[inline]
    fn array<const N: usize>(&mut self) -> Result<[u8; N], CodecError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    #[inline]
    fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }

    #[inline]
    fn u32(&mut self) -> Result<u32, CodecError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    #[inline]
    fn u64(&mut self) -> Result<u64, CodecError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn str(&mut self) -> Result<&str, CodecError> {
        let len = u16::from_le_bytes(self.array()?);
        std::str::from_utf8(self.take(usize::from(len))?)
            .map_err(|_| malformed("a name is not UTF-8".into()))
    }
}

/// Fills `buffer` from `input`; the file ending first (it shrank since its length was
/// read) or failing is a read error.
fn read_fully(input: &mut impl Read, buffer: &mut [u8]) -> Result<(), CodecError> {
    input
        .read_exact(buffer)
        .map_err(|e| CodecError::Read(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, EventKind};
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

    /// Where the partition count of `state`'s encoding is: before what versions 6 and 7
    /// added, and the customers' count and ID bytes, which end what [`Encoder::start`]
    /// writes.
    fn partitions_at(state: &EngineState) -> usize {
        let mut head = Vec::new();
        let size = CaptureSize {
            customers: 0,
            id_bytes: 0,
        };
        let _ = Encoder::start(&state.header, size, &streams(), 0, &mut head);
        head.len() - 16 - v7_added_len(state) - v6_added_len(state) - 2
    }

    /// `bytes` with `len` bytes of the body removed at `at`, as version `version`.
    fn cut(mut out: Vec<u8>, at: usize, len: usize, version: u32) -> Vec<u8> {
        out.drain(at..at + len);
        out[8..12].copy_from_slice(&version.to_le_bytes());
        let trailer = out.len() - TRAILER_LEN;
        let body_len =
            u64::from_le_bytes(out[trailer..trailer + 8].try_into().unwrap()) - len as u64;
        out[trailer..trailer + 8].copy_from_slice(&body_len.to_le_bytes());
        let end = out.len() - CHECKSUM_LEN;
        let sum = xxh3_64(&out[..end]);
        out[end..].copy_from_slice(&sum.to_le_bytes());
        out
    }

    /// `state` in the layout of version 6: version 7 without the book that follows what
    /// version 6 added.
    fn v6(state: &EngineState) -> Vec<u8> {
        let out = encode(state, &streams(), 0);
        let at = partitions_at(state) + 2 + v6_added_len(state);
        cut(out, at, v7_added_len(state), 6)
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
        pacing.weights[17] = 2.25;
        pacing.weights[200] = 0.125;
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
}
