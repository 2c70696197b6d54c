//! Stream entry → validated [`Event`], or a [`Rejection`] that says why not.
//!
//! Parsing borrows from the entry's field bytes: the hot path allocates nothing for a good
//! event. A rejection carries a bounded [`Reason`] (a metric label) and a detail for people.

use std::fmt;
use std::str::FromStr;

use crate::time::{self, UnixSeconds};

/// Largest accepted `amount`: beyond any real order, small enough to keep sums exact in `f32`
/// to the cent for realistic customers.
pub const MAX_AMOUNT: f64 = 1e9;

/// Longest accepted `customer_id`, in bytes.
pub const MAX_CUSTOMER_ID_BYTES: usize = 128;

/// What a customer did. Adding a kind: a variant here, its name in `ALL`/`as_str`, and its
/// effect in `features::CustomerFeatures::apply`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    Purchase,
    Refund,
    Visit,
    Complaint,
}

impl EventKind {
    pub const ALL: [EventKind; 4] = [Self::Purchase, Self::Refund, Self::Visit, Self::Complaint];

    /// Position in `ALL` (declaration order), for arrays indexed by kind.
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Purchase => "purchase",
            Self::Refund => "refund",
            Self::Visit => "visit",
            Self::Complaint => "complaint",
        }
    }

    fn from_bytes(b: &[u8]) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str().as_bytes() == b)
    }

    /// Purchases and refunds move money; their amount is required.
    pub fn requires_amount(self) -> bool {
        matches!(self, Self::Purchase | Self::Refund)
    }
}

impl FromStr for EventKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_bytes(s.as_bytes()).ok_or_else(|| {
            format!(
                "unknown event type {s:?}; expected one of {}",
                Self::ALL.map(Self::as_str).join(", ")
            )
        })
    }
}

/// A Redis stream entry ID, `<milliseconds>-<sequence>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EntryId {
    pub ms: u64,
    pub seq: u64,
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl EntryId {
    pub fn parse(b: &[u8]) -> Option<Self> {
        let s = std::str::from_utf8(b).ok()?;
        let (ms, seq) = s.split_once('-')?;
        Some(Self {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

/// A validated activity event, borrowing the customer ID from the entry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Event<'a> {
    pub customer_id: &'a str,
    pub kind: EventKind,
    /// Money moved; 0 for kinds without an amount.
    pub amount: f64,
    /// Event time.
    pub time: UnixSeconds,
}

/// Why an entry was rejected: a small fixed set, used as a metric label and in the
/// dead-letter entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    MissingCustomerId,
    InvalidCustomerId,
    MissingType,
    UnknownType,
    MissingAmount,
    InvalidAmount,
    InvalidTimestamp,
    DuplicateField,
    /// The entry was deleted from the stream while pending: only its ID is left.
    EntryDeleted,
}

impl Reason {
    pub const ALL: [Reason; 9] = [
        Self::MissingCustomerId,
        Self::InvalidCustomerId,
        Self::MissingType,
        Self::UnknownType,
        Self::MissingAmount,
        Self::InvalidAmount,
        Self::InvalidTimestamp,
        Self::DuplicateField,
        Self::EntryDeleted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::MissingCustomerId => "missing_customer_id",
            Self::InvalidCustomerId => "invalid_customer_id",
            Self::MissingType => "missing_type",
            Self::UnknownType => "unknown_type",
            Self::MissingAmount => "missing_amount",
            Self::InvalidAmount => "invalid_amount",
            Self::InvalidTimestamp => "invalid_timestamp",
            Self::DuplicateField => "duplicate_field",
            Self::EntryDeleted => "entry_deleted",
        }
    }
}

/// A rejected entry: the reason code and a message that names the offending value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: Reason,
    pub detail: String,
}

impl Rejection {
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason.as_str(), self.detail)
    }
}

/// Bounds that depend on configuration.
#[derive(Debug, Clone, Copy)]
pub struct EventLimits {
    /// How far `ts` may lie ahead of the entry ID's time (the Redis server's clock at XADD).
    pub max_future_skew_ms: u64,
    /// The earliest `ts` accepted: catches producers that send seconds (or 0) instead of
    /// milliseconds, which would otherwise date an event to 1970.
    pub min_ts_ms: u64,
}

/// The event type named by an entry's `type` field, if it names a known one (for metrics
/// of entries that are not applied).
pub fn event_kind<'a>(fields: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> Option<EventKind> {
    fields
        .into_iter()
        .find(|(name, _)| *name == b"type")
        .and_then(|(_, value)| EventKind::from_bytes(value))
}

/// Validates one entry's fields. `entry_ms` is the time part of its stream ID, the default
/// event time. Unknown fields are ignored so producers can add attributes ahead of churnd.
pub fn parse_event<'a>(
    fields: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    entry_ms: u64,
    limits: &EventLimits,
) -> Result<Event<'a>, Rejection> {
    let mut customer_id = None;
    let mut kind = None;
    let mut amount = None;
    let mut ts = None;
    for (name, value) in fields {
        let slot = match name {
            b"customer_id" => &mut customer_id,
            b"type" => &mut kind,
            b"amount" => &mut amount,
            b"ts" => &mut ts,
            _ => continue,
        };
        if slot.replace(value).is_some() {
            return Err(Rejection::new(
                Reason::DuplicateField,
                format!("field {:?} appears more than once", lossy(name)),
            ));
        }
    }

    let customer_id = parse_customer_id(customer_id)?;
    let kind = match kind {
        None => {
            return Err(Rejection::new(
                Reason::MissingType,
                "field \"type\" is missing",
            ))
        }
        Some(b) => EventKind::from_bytes(b).ok_or_else(|| {
            Rejection::new(
                Reason::UnknownType,
                format!(
                    "type {:?} is not one of {}",
                    lossy(b),
                    EventKind::ALL.map(EventKind::as_str).join(", ")
                ),
            )
        })?,
    };
    let amount = match amount {
        Some(b) => parse_amount(b)?,
        None if kind.requires_amount() => {
            return Err(Rejection::new(
                Reason::MissingAmount,
                format!("field \"amount\" is required for type {}", kind.as_str()),
            ))
        }
        None => 0.0,
    };
    let ts_ms = match ts {
        Some(b) => parse_timestamp(b, entry_ms, limits)?,
        None => entry_ms,
    };
    Ok(Event {
        customer_id,
        kind,
        amount,
        time: time::from_millis(ts_ms),
    })
}

fn parse_customer_id(value: Option<&[u8]>) -> Result<&str, Rejection> {
    let Some(bytes) = value else {
        return Err(Rejection::new(
            Reason::MissingCustomerId,
            "field \"customer_id\" is missing",
        ));
    };
    if bytes.is_empty() || bytes.len() > MAX_CUSTOMER_ID_BYTES {
        return Err(Rejection::new(
            Reason::InvalidCustomerId,
            format!(
                "customer_id must be 1 to {MAX_CUSTOMER_ID_BYTES} bytes, got {}",
                bytes.len()
            ),
        ));
    }
    std::str::from_utf8(bytes).map_err(|_| {
        Rejection::new(
            Reason::InvalidCustomerId,
            format!("customer_id {:?} is not valid UTF-8", lossy(bytes)),
        )
    })
}

fn parse_amount(bytes: &[u8]) -> Result<f64, Rejection> {
    let invalid = |why: &str| {
        Rejection::new(
            Reason::InvalidAmount,
            format!("amount {:?} {why}", lossy(bytes)),
        )
    };
    let text = std::str::from_utf8(bytes).map_err(|_| invalid("is not valid UTF-8"))?;
    let value: f64 = text
        .trim()
        .parse()
        .map_err(|_| invalid("is not a decimal number"))?;
    if !value.is_finite() {
        return Err(invalid("is not finite"));
    }
    if value < 0.0 {
        return Err(invalid("is negative (send refunds as type refund)"));
    }
    if value > MAX_AMOUNT {
        return Err(invalid(&format!("exceeds the maximum of {MAX_AMOUNT}")));
    }
    Ok(value)
}

fn parse_timestamp(bytes: &[u8], entry_ms: u64, limits: &EventLimits) -> Result<u64, Rejection> {
    let invalid = |why: String| {
        Rejection::new(
            Reason::InvalidTimestamp,
            format!("ts {:?} {why}", lossy(bytes)),
        )
    };
    if bytes.is_empty() || bytes.len() > 20 || !bytes.iter().all(u8::is_ascii_digit) {
        return Err(invalid(
            "is not a whole number of milliseconds since the Unix epoch".into(),
        ));
    }
    let ms: u64 = std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid("is out of range".into()))?;
    let latest = entry_ms.saturating_add(limits.max_future_skew_ms);
    if ms > latest {
        return Err(invalid(format!(
            "lies more than {} ms ahead of the entry's stream time {entry_ms}",
            limits.max_future_skew_ms
        )));
    }
    if ms < limits.min_ts_ms {
        return Err(invalid(format!(
            "lies before {} (events.min_ts_ms); ts is in milliseconds, not seconds",
            limits.min_ts_ms
        )));
    }
    if ms > time::MAX_MILLIS {
        return Err(invalid("is beyond the year 2106".into()));
    }
    Ok(ms)
}

/// Field bytes for messages, cut short so a huge value cannot flood logs or the dead-letter
/// stream's detail.
fn lossy(b: &[u8]) -> String {
    const SHOWN: usize = 64;
    let mut s = String::from_utf8_lossy(&b[..b.len().min(SHOWN)]).into_owned();
    if b.len() > SHOWN {
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: EventLimits = EventLimits {
        max_future_skew_ms: 86_400_000,
        min_ts_ms: 100_000_000_000,
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
        for bad in ["abc", "NaN", "inf", "-1", "1e10", ""] {
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
}
