//! The snapshot file format: a compact, versioned, checksummed encoding of [`EngineState`].
//!
//! ```text
//! versions 4-8: magic "CHURNDSN" | version u32 | 0 u64 | body | body length u64 | "CHURNDND" | xxh3-64
//! versions 1-3:  magic "CHURNDSN" | version u32 | body length u64 | body | xxh3-64
//! ```
//!
//! The checksum covers everything before it. Version 4 gives the body's length after the
//! body, so that a snapshot can be written as its customers are copied out, before their
//! sizes are known; the end marker tells a truncated file from a damaged one. All integers
//! are little-endian. The body holds the creation time, the model version, the engine's
//! clock and thresholds, the last entry applied per input stream (by name, so the stream
//! list may change between runs), from version 5 the budgets' pacing, the open tasks (those
//! whose outcome is not known yet, each with its customer ID: see [`crate::outcomes`]) and
//! the partition count (u16; earlier: 1), from version 6 the care kinds' budgets' pacing
//! and each pacing's first candidate's time, from version 7 the outcomes per arm of the
//! book win-back decides with (see [`crate::decide::uplift`]), from version 8 the pooled
//! budget's pacing in a record of its own (version 7 kept it among win-back's budgets as a
//! pseudo-action, and is read so: `sections::pool_of_format_7`), then every customer in
//! store order: ID, features (bit-exact), next check, win-back state, last classification,
//! contact bookkeeping and the sparse extras (profile attributes, feedback, coupons). Store
//! order is kept so a restored engine assigns the same indices and makes the same
//! decisions.

use crate::classify::{LifecycleStage, RfmThresholds, Segment};
use crate::decide::{Contact, WinbackState};
use crate::engine::{Customer, Customers, EngineState, Extras, StateHeader};
use crate::event::EntryId;
use crate::features::store::CaptureSize;
use crate::features::timers::Timer;
use crate::features::{CustomerFeatures, Decayed, Feedback};
use crate::metrics::PROBABILITY_BUCKETS;
use crate::partition::PartitionCount;
use crate::profiles::Interner;
use crate::time::Day;
use std::io::Read;

use xxhash_rust::xxh3::Xxh3;

mod reader;
mod sections;

use reader::{malformed, put_str, Reader};
use sections::{
    pool_of_format_7, put_budgets, put_first_candidates, put_open_tasks, put_pool, put_uplift,
    read_budgets, read_open_tasks, read_pool, read_uplift,
};

const MAGIC: &[u8; 8] = b"CHURNDSN";
/// Bumped on any change of the layout. Versions 1 (without the fingerprint of the scheduling
/// settings, read as "settings unknown"), 2 (without the customers' contact bookkeeping: the
/// last win-back task is taken as the last contact) and 3 (the body length in the header,
/// no profiles, feedback or coupons) and 4 (no budgets' pacing, no open tasks, no partition
/// count: read as one partition) and 5 (no care budgets, no time of a budget's first
/// candidate: read as unknown) and 6 (no book of measured lift: read as none, so decisions
/// until the next snapshot use the stand-in) and 7 (the pooled budget's pacing among
/// win-back's budgets under a pseudo-action's name: taken out into its own record) are still
/// read; other versions are refused, not guessed at.
pub(crate) const FORMAT_VERSION: u32 = 8;
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
        put_pool(out, header.pool.as_ref());
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
    let pool = if version >= 8 {
        read_pool(r)?
    } else {
        pool_of_format_7(&mut budgets)
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
                pool,
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

#[cfg(test)]
mod tests;
