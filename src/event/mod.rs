//! Stream entry → validated [`Event`], or a [`Rejection`] that says why not.
//!
//! Parsing borrows from the entry's field bytes: the hot path allocates nothing for a good
//! event. A rejection carries a bounded [`Reason`] (a metric label) and a detail for people.

use std::fmt;
use std::str::FromStr;

use crate::time::{self, UnixSeconds};

/// Largest accepted `amount`: beyond any real order, small enough to keep sums exact in `f32`
/// to the cent for realistic customers.
pub(crate) const MAX_AMOUNT: f64 = 1e9;

/// Longest accepted `customer_id`, in bytes. It is UTF-8 without control characters
/// (Unicode category Cc: tab, newline, NUL, DEL and the C1 controls).
pub(crate) const MAX_CUSTOMER_ID_BYTES: usize = 128;

/// Longest accepted profile attribute name, in bytes.
pub(crate) const MAX_PROFILE_KEY_BYTES: usize = 32;

/// The fields with a meaning of their own; on a `profile` event every other field is an
/// attribute.
pub(crate) const EVENT_FIELDS: [&str; 6] =
    ["customer_id", "type", "amount", "ts", "score", "coupon"];

/// What a customer did, or what is known of them. Adding a kind: a variant here, its name
/// in `ALL`/`as_str`, its fields in [`parse_event`] and its effect in the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    Purchase,
    Refund,
    Visit,
    Complaint,
    /// A satisfaction score (`score`, 1 to 5), e.g. from a survey.
    Feedback,
    /// Customer attributes (region, birthday, …): not activity, it moves no feature.
    Profile,
}

impl EventKind {
    pub const ALL: [EventKind; 6] = [
        Self::Purchase,
        Self::Refund,
        Self::Visit,
        Self::Complaint,
        Self::Feedback,
        Self::Profile,
    ];

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
            Self::Feedback => "feedback",
            Self::Profile => "profile",
        }
    }

    fn from_bytes(b: &[u8]) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str().as_bytes() == b)
    }

    /// Purchases and refunds move money; their amount is required.
    pub(crate) fn requires_amount(self) -> bool {
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
    /// The largest ID below this one (0-0 stays 0-0): a group set to it delivers this entry
    /// next.
    pub fn before(self) -> Self {
        match (self.ms, self.seq) {
            (0, 0) => self,
            (ms, 0) => Self {
                ms: ms - 1,
                seq: u64::MAX,
            },
            (ms, seq) => Self { ms, seq: seq - 1 },
        }
    }

    pub fn parse(b: &[u8]) -> Option<Self> {
        let s = std::str::from_utf8(b).ok()?;
        let (ms, seq) = s.split_once('-')?;
        Some(Self {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

/// A validated event, borrowing the customer ID (and a profile's attributes) from the entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Event<'a> {
    pub customer_id: &'a str,
    pub kind: EventKind,
    /// Money moved; 0 for kinds without an amount.
    pub amount: f64,
    /// Event time.
    pub time: UnixSeconds,
    /// `feedback`: the satisfaction score, 1 (worst) to 5; 0 for other kinds.
    pub score: u8,
    /// `purchase`: paid with a coupon (a non-empty `coupon` field).
    pub coupon: bool,
    /// `profile`: the attributes to set, in entry order; an empty value removes one.
    pub attributes: Vec<(&'a str, &'a str)>,
}

impl<'a> Event<'a> {
    /// An event without a score, coupon or attributes.
    pub fn new(customer_id: &'a str, kind: EventKind, amount: f64, time: UnixSeconds) -> Self {
        Self {
            customer_id,
            kind,
            amount,
            time,
            score: 0,
            coupon: false,
            attributes: Vec::new(),
        }
    }
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
    MissingScore,
    InvalidScore,
    /// A `profile` event without attributes.
    EmptyProfile,
    InvalidProfileKey,
    InvalidProfileValue,
    /// A profile key neither known nor among the free-form keys the bound allows.
    UnknownProfileKey,
    /// Larger than `events.max_entry_bytes`: not processed.
    EntryTooLarge,
    /// Read from a partition stream its customer does not belong in (see
    /// [`crate::partition`]): never applied, so no replica applies another's customers.
    WrongPartition,
}

impl Reason {
    pub const ALL: [Reason; 17] = [
        Self::MissingCustomerId,
        Self::InvalidCustomerId,
        Self::MissingType,
        Self::UnknownType,
        Self::MissingAmount,
        Self::InvalidAmount,
        Self::InvalidTimestamp,
        Self::DuplicateField,
        Self::EntryDeleted,
        Self::MissingScore,
        Self::InvalidScore,
        Self::EmptyProfile,
        Self::InvalidProfileKey,
        Self::InvalidProfileValue,
        Self::UnknownProfileKey,
        Self::EntryTooLarge,
        Self::WrongPartition,
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
            Self::MissingScore => "missing_score",
            Self::InvalidScore => "invalid_score",
            Self::EmptyProfile => "empty_profile",
            Self::InvalidProfileKey => "invalid_profile_key",
            Self::InvalidProfileValue => "invalid_profile_value",
            Self::UnknownProfileKey => "unknown_profile_key",
            Self::EntryTooLarge => "entry_too_large",
            Self::WrongPartition => "wrong_partition",
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
    /// Longest profile attribute value, in bytes (`profiles.max_value_bytes`).
    pub max_profile_value_bytes: usize,
}

/// The event type named by an entry's `type` field, if it names a known one (for metrics
/// of entries that are not applied).
pub(crate) fn event_kind<'a>(
    fields: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
) -> Option<EventKind> {
    fields
        .into_iter()
        .find(|(name, _)| *name == b"type")
        .and_then(|(_, value)| EventKind::from_bytes(value))
}

/// Validates one entry's fields. `entry_ms` is the time part of its stream ID, the default
/// event time. Unknown fields are ignored so producers can add attributes ahead of churnd,
/// except on a `profile` event, whose fields other than `customer_id`, `type`, `amount`,
/// `ts`, `score` and `coupon` are its attributes.
///
/// The fields are walked a second time for a `profile` event only, so that other events
/// pay nothing for the fields they do not use.
pub fn parse_event<'a, F>(
    fields: F,
    entry_ms: u64,
    limits: &EventLimits,
) -> Result<Event<'a>, Rejection>
where
    F: IntoIterator<Item = (&'a [u8], &'a [u8])>,
    F::IntoIter: Clone,
{
    let fields = fields.into_iter();
    let mut customer_id = None;
    let mut kind = None;
    let mut amount = None;
    let mut ts = None;
    let mut score = None;
    let mut coupon = None;
    for (name, value) in fields.clone() {
        // The names of `EVENT_FIELDS`.
        let slot = match name {
            b"customer_id" => &mut customer_id,
            b"type" => &mut kind,
            b"amount" => &mut amount,
            b"ts" => &mut ts,
            b"score" => &mut score,
            b"coupon" => &mut coupon,
            _ => continue,
        };
        if slot.replace(value).is_some() {
            return Err(duplicate(name));
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
    let mut event = Event::new(customer_id, kind, amount, time::from_millis(ts_ms));
    match kind {
        EventKind::Feedback => event.score = parse_score(score)?,
        EventKind::Purchase => event.coupon = coupon.is_some_and(|c| !c.is_empty()),
        EventKind::Profile => {
            let others: Vec<_> = fields
                .filter(|(name, _)| !EVENT_FIELDS.iter().any(|f| f.as_bytes() == *name))
                .collect();
            event.attributes = parse_attributes(&others, limits)?;
        }
        EventKind::Refund | EventKind::Visit | EventKind::Complaint => {}
    }
    Ok(event)
}

fn duplicate(name: &[u8]) -> Rejection {
    Rejection::new(
        Reason::DuplicateField,
        format!("field {:?} appears more than once", lossy(name)),
    )
}

/// A feedback score: one digit, 1 to 5.
fn parse_score(value: Option<&[u8]>) -> Result<u8, Rejection> {
    match value {
        None => Err(Rejection::new(
            Reason::MissingScore,
            "field \"score\" is required for type feedback",
        )),
        Some(&[digit @ b'1'..=b'5']) => Ok(digit - b'0'),
        Some(b) => Err(Rejection::new(
            Reason::InvalidScore,
            format!("score {:?} is not a whole number from 1 to 5", lossy(b)),
        )),
    }
}

/// A profile's attributes: names of 1 to [`MAX_PROFILE_KEY_BYTES`] lowercase letters,
/// digits and underscores (a letter first), values of UTF-8 up to the configured length
/// (empty: remove the attribute); `birthday` is `MM-DD` or `YYYY-MM-DD`.
fn parse_attributes<'a>(
    fields: &[(&'a [u8], &'a [u8])],
    limits: &EventLimits,
) -> Result<Vec<(&'a str, &'a str)>, Rejection> {
    if fields.is_empty() {
        return Err(Rejection::new(
            Reason::EmptyProfile,
            "a profile event carries no attribute (fields other than customer_id, type, ts, amount, score and coupon)",
        ));
    }
    let mut attributes: Vec<(&str, &str)> = Vec::with_capacity(fields.len());
    for &(name, value) in fields {
        let key = profile_key(name).ok_or_else(|| {
            Rejection::new(
                Reason::InvalidProfileKey,
                format!(
                    "profile attribute {:?}: names are 1 to {MAX_PROFILE_KEY_BYTES} bytes of a-z, 0-9 and _, starting with a letter",
                    lossy(name)
                ),
            )
        })?;
        if attributes.iter().any(|(k, _)| *k == key) {
            return Err(duplicate(name));
        }
        let invalid = |why: String| {
            Rejection::new(
                Reason::InvalidProfileValue,
                format!("profile attribute {key} = {:?} {why}", lossy(value)),
            )
        };
        if value.len() > limits.max_profile_value_bytes {
            return Err(invalid(format!(
                "is longer than {} bytes (profiles.max_value_bytes)",
                limits.max_profile_value_bytes
            )));
        }
        let value = std::str::from_utf8(value).map_err(|_| invalid("is not valid UTF-8".into()))?;
        if key == "birthday" && !value.is_empty() && birthday(value).is_none() {
            return Err(invalid("is not a date: MM-DD or YYYY-MM-DD".into()));
        }
        attributes.push((key, value));
    }
    Ok(attributes)
}

/// `name` as a profile attribute name, if it is one.
pub(crate) fn profile_key(name: &[u8]) -> Option<&str> {
    let valid = !name.is_empty()
        && name.len() <= MAX_PROFILE_KEY_BYTES
        && name[0].is_ascii_lowercase()
        && name
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_');
    valid.then(|| std::str::from_utf8(name).ok()).flatten()
}

/// Month and day of a `birthday` attribute (`MM-DD` or `YYYY-MM-DD`): a date that exists in
/// some year, 29 February included.
pub fn birthday(value: &str) -> Option<(u8, u8)> {
    let month_day = match value.len() {
        5 => value,
        10 if value.as_bytes()[4] == b'-' && value[..4].bytes().all(|b| b.is_ascii_digit()) => {
            &value[5..]
        }
        _ => return None,
    };
    let (month, day) = month_day.split_once('-')?;
    let two_digits = |s: &str| s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit());
    if !two_digits(month) || !two_digits(day) {
        return None;
    }
    let (month, day): (u8, u8) = (month.parse().ok()?, day.parse().ok()?);
    let days_in_month = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    (1..=12)
        .contains(&month)
        .then(|| days_in_month[usize::from(month - 1)])
        .filter(|&last| (1..=last).contains(&day))
        .map(|_| (month, day))
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
    let id = std::str::from_utf8(bytes).map_err(|_| {
        Rejection::new(
            Reason::InvalidCustomerId,
            format!("customer_id {:?} is not valid UTF-8", lossy(bytes)),
        )
    })?;
    // The ID is copied onto tasks, into logs and into the API's answers, where a newline or
    // a NUL can forge lines, cut strings or break a consumer's parser.
    if let Some(c) = id.chars().find(|c| c.is_control()) {
        return Err(Rejection::new(
            Reason::InvalidCustomerId,
            format!(
                "customer_id {:?} contains the control character U+{:04X}; IDs may not contain control characters (U+0000 to U+001F, U+007F to U+009F)",
                lossy(bytes),
                u32::from(c)
            ),
        ));
    }
    Ok(id)
}

/// Whether `b` is a plain decimal: ASCII digits, optionally a point and more digits.
fn is_plain_decimal(b: &[u8]) -> bool {
    let (int, frac) = match b.iter().position(|&c| c == b'.') {
        Some(point) => (&b[..point], Some(&b[point + 1..])),
        None => (b, None),
    };
    let digits = |d: &[u8]| !d.is_empty() && d.iter().all(u8::is_ascii_digit);
    digits(int) && frac.is_none_or(digits)
}

/// An amount: a plain decimal (`12.50`, `7`, `0.5`), 0 to [`MAX_AMOUNT`]. Nothing else that
/// a float parser would take: no sign, exponent, surrounding spaces, `.5` or `5.`, NaN or
/// infinity. Producers write amounts as money is written; anything else is more likely a
/// bug upstream (a field shifted, a padded column) than an amount.
fn parse_amount(bytes: &[u8]) -> Result<f64, Rejection> {
    let invalid = |why: &str| {
        Rejection::new(
            Reason::InvalidAmount,
            format!("amount {:?} {why}", lossy(bytes)),
        )
    };
    let text = std::str::from_utf8(bytes).map_err(|_| invalid("is not valid UTF-8"))?;
    if !is_plain_decimal(bytes) {
        if bytes.first() == Some(&b'-') && is_plain_decimal(&bytes[1..]) {
            return Err(invalid("is negative (send refunds as type refund)"));
        }
        return Err(invalid(
            "is not a plain decimal such as 12.50 (digits, optionally a point and more digits; no sign, exponent or spaces)",
        ));
    }
    // Every plain decimal parses; one with too many digits is infinite, beyond the maximum.
    let value: f64 = text.parse().map_err(|_| invalid("is not a decimal"))?;
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
mod tests;
