//! The lift report: what each kind × action × segment of task adds over doing nothing,
//! read from the outcome records (one per task, treatment and control alike, written when
//! the task's conversion window closes or the customer converts).
//!
//! - [`OutcomeRecord::parse`] turns a stream entry's fields into a record, or a
//!   [`RecordError`] naming the field and value (callers count it and go on);
//! - [`Aggregates`] keeps, per kind × action × segment × group, counts, conversions and
//!   revenue sums: constant memory per cell, however many records ([`MAX_CELLS`] bounds the
//!   cells);
//! - [`report`] turns them into rows with the lift and its 95 % interval ([`stats`]) and
//!   renders them as text or JSON.
//!
//! All of this is pure. The reading of the outcome stream is in [`stream`]: pages of XRANGE
//! for `churnd report lift`, and the daemon's tail of the stream (`src/daemon/lift.rs`).

pub mod report;
pub mod stats;
pub mod stream;

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::classify::Segment;
use crate::decide::uplift::{Arm, ArmOutcomes, LearnSettings, UpliftBook};
use crate::decide::{Group, TaskKind};

pub use report::{Report, Row};

/// The outcome record schema this reader understands (`schema_version`).
pub const SCHEMA_VERSION: &str = "1";

/// Kind × action × segment cells kept at most: bounds memory and the gauges' label sets
/// (kinds and segments are closed sets; actions are configured names). Records of further
/// cells are skipped and counted (`too_many_cells`).
pub const MAX_CELLS: usize = 512;

/// Longest action name accepted, in bytes.
const MAX_ACTION_BYTES: usize = 64;

/// Whether the customer converted within the task's window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Converted,
    NotConverted,
}

/// One outcome record, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct OutcomeRecord {
    pub task_id: String,
    pub customer_id: String,
    pub kind: TaskKind,
    pub action: String,
    /// `None` for customers without a segment (prospects, who have not bought).
    pub segment: Option<Segment>,
    pub group: Group,
    pub outcome: Outcome,
    /// Revenue of the conversion (0 when not converted).
    pub revenue: f64,
    /// Days from the task to the conversion, when converted.
    pub days_to_convert: Option<f64>,
    pub raised_at_ms: u64,
    pub closed_at_ms: u64,
}

/// Why an entry of the outcome stream is not used, naming the field and value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RecordError {
    #[error("field {0} is missing")]
    Missing(&'static str),
    #[error("field {field} appears twice")]
    Duplicate { field: &'static str },
    #[error("schema_version {0:?} is not one this churnd reads (it reads \"1\"): a newer writer?")]
    UnknownSchema(String),
    #[error("record {0:?} is not an outcome record")]
    NotAnOutcome(String),
    #[error("field {field} is {value:?}: {expected}")]
    Invalid {
        field: &'static str,
        value: String,
        expected: &'static str,
    },
}

/// Why a record was skipped, the `reason` label of `churnd_lift_outcomes_skipped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SkipReason {
    /// A field missing, repeated or invalid.
    Malformed,
    /// A `schema_version` other than [`SCHEMA_VERSION`].
    UnknownSchema,
    /// Another `record` type in the stream.
    NotAnOutcome,
    /// Beyond [`MAX_CELLS`] kind × action × segment cells.
    TooManyCells,
}

impl SkipReason {
    pub const ALL: [Self; 4] = [
        Self::Malformed,
        Self::UnknownSchema,
        Self::NotAnOutcome,
        Self::TooManyCells,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::UnknownSchema => "unknown_schema",
            Self::NotAnOutcome => "not_an_outcome",
            Self::TooManyCells => "too_many_cells",
        }
    }
}

crate::metrics::labels::label_enum!(SkipReason);

impl RecordError {
    pub fn reason(&self) -> SkipReason {
        match self {
            Self::UnknownSchema(_) => SkipReason::UnknownSchema,
            Self::NotAnOutcome(_) => SkipReason::NotAnOutcome,
            _ => SkipReason::Malformed,
        }
    }
}

/// The fields of an outcome record, each at most once (the writer's test checks it writes
/// exactly these).
pub(crate) const FIELDS: [&str; 13] = [
    "schema_version",
    "record",
    "task_id",
    "customer_id",
    "kind",
    "action",
    "segment",
    "group",
    "outcome",
    "revenue",
    "days_to_convert",
    "raised_at",
    "closed_at",
];

impl OutcomeRecord {
    /// The record from a stream entry's fields (name, value). Fields this reader does not
    /// know are ignored, so a writer may add some within one schema version.
    pub fn parse<'a>(
        fields: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    ) -> Result<Self, RecordError> {
        let mut values: [Option<&[u8]>; FIELDS.len()] = [None; FIELDS.len()];
        for (name, value) in fields {
            if let Some(i) = FIELDS.iter().position(|f| f.as_bytes() == name) {
                if values[i].replace(value).is_some() {
                    return Err(RecordError::Duplicate { field: FIELDS[i] });
                }
            }
        }
        let get = |field: &'static str| -> Result<&str, RecordError> {
            let i = FIELDS
                .iter()
                .position(|f| *f == field)
                .expect("a known field");
            let bytes = values[i].ok_or(RecordError::Missing(field))?;
            std::str::from_utf8(bytes).map_err(|_| RecordError::Invalid {
                field,
                value: String::from_utf8_lossy(bytes).into_owned(),
                expected: "must be UTF-8 text",
            })
        };
        // The version first: a newer schema may have renamed anything else.
        let version = get("schema_version")?;
        if version != SCHEMA_VERSION {
            return Err(RecordError::UnknownSchema(version.into()));
        }
        let record = get("record")?;
        if record != "outcome" {
            return Err(RecordError::NotAnOutcome(record.into()));
        }
        let invalid =
            |field: &'static str, value: &str, expected: &'static str| RecordError::Invalid {
                field,
                value: value.into(),
                expected,
            };
        let text = |field: &'static str| -> Result<String, RecordError> {
            let value = get(field)?;
            if value.is_empty() {
                return Err(invalid(field, value, "must not be empty"));
            }
            Ok(value.into())
        };
        let kind_text = get("kind")?;
        let kind = TaskKind::ALL
            .into_iter()
            .find(|k| k.as_str() == kind_text)
            .ok_or_else(|| {
                invalid(
                    "kind",
                    kind_text,
                    "must be winback, convert, welcome, birthday, anniversary, revisit or service_recovery",
                )
            })?;
        let action = get("action")?;
        if action.is_empty()
            || action.len() > MAX_ACTION_BYTES
            || !action.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(invalid(
                "action",
                action,
                "must be 1 to 64 bytes of visible ASCII (a configured action name)",
            ));
        }
        let segment_text = get("segment")?;
        let segment = match segment_text {
            "" | "none" => None,
            s => Some(
                Segment::ALL
                    .into_iter()
                    .find(|seg| seg.as_str() == s)
                    .ok_or_else(|| {
                        invalid(
                            "segment",
                            s,
                            "must be an RFM segment such as general_winback, or empty",
                        )
                    })?,
            ),
        };
        let group = match get("group")? {
            "treatment" => Group::Treatment,
            "control" => Group::Control,
            other => return Err(invalid("group", other, "must be treatment or control")),
        };
        let outcome = match get("outcome")? {
            "converted" => Outcome::Converted,
            "not_converted" => Outcome::NotConverted,
            other => {
                return Err(invalid(
                    "outcome",
                    other,
                    "must be converted or not_converted",
                ))
            }
        };
        let revenue_text = get("revenue")?;
        let revenue = parse_decimal(revenue_text)
            .filter(|r| *r >= 0.0)
            .ok_or_else(|| {
                invalid(
                    "revenue",
                    revenue_text,
                    "must be a plain decimal number, 0 or more",
                )
            })?;
        let days_text = get("days_to_convert")?;
        let days_to_convert = match (outcome, days_text) {
            (Outcome::NotConverted, "") => None,
            (Outcome::NotConverted, d) => {
                return Err(invalid(
                    "days_to_convert",
                    d,
                    "must be empty when the outcome is not_converted",
                ))
            }
            (Outcome::Converted, d) => Some(
                parse_decimal(d)
                    .filter(|days| *days >= 0.0)
                    .ok_or_else(|| {
                        invalid(
                            "days_to_convert",
                            d,
                            "must be a decimal number of days, 0 or more, when converted",
                        )
                    })?,
            ),
        };
        if outcome == Outcome::NotConverted && revenue != 0.0 {
            return Err(invalid(
                "revenue",
                revenue_text,
                "must be 0 when the outcome is not_converted",
            ));
        }
        let millis = |field: &'static str| -> Result<u64, RecordError> {
            let value = get(field)?;
            value
                .parse::<u64>()
                .ok()
                .filter(|_| value.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| invalid(field, value, "must be milliseconds since the Unix epoch"))
        };
        let raised_at_ms = millis("raised_at")?;
        let closed_at_ms = millis("closed_at")?;
        if closed_at_ms < raised_at_ms {
            return Err(invalid(
                "closed_at",
                get("closed_at")?,
                "must not be before raised_at",
            ));
        }
        Ok(Self {
            task_id: text("task_id")?,
            customer_id: text("customer_id")?,
            kind,
            action: action.into(),
            segment,
            group,
            outcome,
            revenue,
            days_to_convert,
            raised_at_ms,
            closed_at_ms,
        })
    }
}

/// A plain decimal (`12`, `12.5`, `-0.25`): digits with at most one point, no exponent, no
/// `inf` or `NaN`.
fn parse_decimal(text: &str) -> Option<f64> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    let plain = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && digits.bytes().filter(|b| *b == b'.').count() <= 1
        && digits.bytes().any(|b| b.is_ascii_digit());
    plain.then(|| text.parse().ok()).flatten()
}

/// A kind × action × segment cell.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CellKey {
    pub kind: TaskKind,
    pub action: Arc<str>,
    pub segment: Option<Segment>,
}

impl CellKey {
    fn order(&self) -> (usize, &str, usize) {
        (
            self.kind as usize,
            &self.action,
            self.segment.map_or(Segment::ALL.len(), Segment::index),
        )
    }

    /// The segment as shown and labelled: its name, or `none`.
    pub fn segment_name(&self) -> &'static str {
        self.segment.map_or("none", Segment::as_str)
    }
}

impl Ord for CellKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.order().cmp(&other.order())
    }
}

impl PartialOrd for CellKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// One group's outcomes in a cell: counts and sums, constant size.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GroupTotals {
    /// Outcome records: tasks whose window closed (or that converted).
    pub tasks: u64,
    pub conversions: u64,
    pub revenue: f64,
    /// Σ revenue², for the variance of revenue per task.
    pub revenue_squares: f64,
    /// Σ days to convert over the conversions.
    pub days_to_convert: f64,
}

impl GroupTotals {
    fn add(&mut self, r: &OutcomeRecord) {
        self.tasks += 1;
        if r.outcome == Outcome::Converted {
            self.conversions += 1;
        }
        self.revenue += r.revenue;
        self.revenue_squares += r.revenue * r.revenue;
        self.days_to_convert += r.days_to_convert.unwrap_or(0.0);
    }

    fn merge(&mut self, other: &Self) {
        self.tasks += other.tasks;
        self.conversions += other.conversions;
        self.revenue += other.revenue;
        self.revenue_squares += other.revenue_squares;
        self.days_to_convert += other.days_to_convert;
    }

    /// Revenue per task as a sample (every task, 0 for those that did not convert).
    pub fn revenue_sample(&self) -> stats::Sample {
        let n = self.tasks as f64;
        let mean = if self.tasks > 0 {
            self.revenue / n
        } else {
            0.0
        };
        let variance = if self.tasks > 1 {
            ((self.revenue_squares - self.revenue * mean) / (n - 1.0)).max(0.0)
        } else {
            0.0
        };
        stats::Sample {
            n: self.tasks,
            mean,
            variance,
        }
    }
}

/// Treatment and control of one cell.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CellTotals {
    pub treatment: GroupTotals,
    pub control: GroupTotals,
}

impl CellTotals {
    fn group_mut(&mut self, group: Group) -> &mut GroupTotals {
        match group {
            Group::Treatment => &mut self.treatment,
            Group::Control => &mut self.control,
        }
    }

    fn merge(&mut self, other: &Self) {
        self.treatment.merge(&other.treatment);
        self.control.merge(&other.control);
    }
}

/// Which records count: those whose `closed_at` is in [since, until).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    pub since_ms: Option<u64>,
    pub until_ms: Option<u64>,
}

impl Window {
    fn contains(&self, closed_at_ms: u64) -> bool {
        self.since_ms.is_none_or(|s| closed_at_ms >= s)
            && self.until_ms.is_none_or(|u| closed_at_ms < u)
    }
}

/// The aggregates of every outcome record read: what the report and the gauges are made
/// from, in memory bounded by [`MAX_CELLS`].
#[derive(Debug, Clone, Default)]
pub struct Aggregates {
    window: Window,
    cells: BTreeMap<CellKey, CellTotals>,
    /// Entries read from the stream, whatever became of them.
    pub read: u64,
    /// Records counted in a cell.
    pub used: u64,
    /// Records outside the window.
    pub outside_window: u64,
    /// Records skipped, by reason.
    pub skipped: BTreeMap<SkipReason, u64>,
}

impl Aggregates {
    pub fn new(window: Window) -> Self {
        Self {
            window,
            ..Self::default()
        }
    }

    /// Counts one stream entry: its record in its cell, or why it was not used (returned,
    /// so the caller can log it or bump a counter).
    pub fn add_entry<'a>(
        &mut self,
        fields: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    ) -> Result<(), RecordError> {
        self.read += 1;
        match OutcomeRecord::parse(fields) {
            Ok(record) => {
                if self.add(&record) {
                    Ok(())
                } else {
                    *self.skipped.entry(SkipReason::TooManyCells).or_default() += 1;
                    Err(RecordError::Invalid {
                        field: "action",
                        value: record.action,
                        expected: "a new kind × action × segment beyond the report's 512 cells",
                    })
                }
            }
            Err(e) => {
                *self.skipped.entry(e.reason()).or_default() += 1;
                Err(e)
            }
        }
    }

    /// The outcomes per arm (kind × action × segment) for learning where actions work
    /// (`winback.policy = learned`). Cells without a segment (prospects) are no arm: their
    /// lift cannot steer a decision by segment.
    pub fn uplift_book(&self, settings: LearnSettings) -> UpliftBook {
        let mut book = UpliftBook::new(settings);
        for (key, totals) in &self.cells {
            let Some(segment) = key.segment else { continue };
            let arm = Arm {
                kind: key.kind,
                action: key.action.clone(),
                segment,
            };
            book.set(
                arm,
                ArmOutcomes {
                    treated: totals.treatment.tasks,
                    treated_converted: totals.treatment.conversions,
                    control: totals.control.tasks,
                    control_converted: totals.control.conversions,
                },
            );
        }
        book
    }

    /// Counts a valid record; `false` when it would open a cell beyond [`MAX_CELLS`].
    fn add(&mut self, r: &OutcomeRecord) -> bool {
        if !self.window.contains(r.closed_at_ms) {
            self.outside_window += 1;
            return true;
        }
        let key = CellKey {
            kind: r.kind,
            action: r.action.as_str().into(),
            segment: r.segment,
        };
        if self.cells.len() >= MAX_CELLS && !self.cells.contains_key(&key) {
            return false;
        }
        self.cells.entry(key).or_default().group_mut(r.group).add(r);
        self.used += 1;
        true
    }

    pub fn window(&self) -> Window {
        self.window
    }

    /// Every cell, by kind, action and segment.
    pub fn cells(&self) -> impl Iterator<Item = (&CellKey, &CellTotals)> {
        self.cells.iter()
    }

    /// Per kind, every action and segment together.
    pub fn kinds(&self) -> BTreeMap<usize, (TaskKind, CellTotals)> {
        let mut kinds: BTreeMap<usize, (TaskKind, CellTotals)> = BTreeMap::new();
        for (key, totals) in &self.cells {
            kinds
                .entry(key.kind as usize)
                .or_insert((key.kind, CellTotals::default()))
                .1
                .merge(totals);
        }
        kinds
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An outcome record's fields as the writer puts them.
    pub(crate) fn record(
        kind: &str,
        action: &str,
        segment: &str,
        group: &str,
        revenue: Option<f64>,
    ) -> Vec<(String, String)> {
        let converted = revenue.is_some();
        [
            ("schema_version", "1".to_string()),
            ("record", "outcome".into()),
            ("task_id", "0123456789abcdef0123456789abcdef".into()),
            ("customer_id", "c-1".into()),
            ("kind", kind.into()),
            ("action", action.into()),
            ("segment", segment.into()),
            ("group", group.into()),
            (
                "outcome",
                if converted {
                    "converted"
                } else {
                    "not_converted"
                }
                .into(),
            ),
            ("revenue", revenue.map_or("0".into(), |r| r.to_string())),
            (
                "days_to_convert",
                if converted {
                    "3.5".into()
                } else {
                    String::new()
                },
            ),
            ("raised_at", "1700000000000".into()),
            ("closed_at", "1702592000000".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    pub(crate) fn as_bytes(fields: &[(String, String)]) -> Vec<(&[u8], &[u8])> {
        fields
            .iter()
            .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
            .collect()
    }

    fn with(fields: &[(String, String)], name: &str, value: &str) -> Vec<(String, String)> {
        fields
            .iter()
            .map(|(k, v)| (k.clone(), if k == name { value.into() } else { v.clone() }))
            .collect()
    }

    fn parse(fields: &[(String, String)]) -> Result<OutcomeRecord, RecordError> {
        OutcomeRecord::parse(as_bytes(fields))
    }

    #[test]
    fn a_well_formed_record_parses() {
        let r = parse(&record(
            "winback",
            "coupon",
            "general_winback",
            "control",
            Some(42.5),
        ))
        .unwrap();
        assert_eq!(r.kind, TaskKind::Winback);
        assert_eq!(r.action, "coupon");
        assert_eq!(r.segment, Some(Segment::GeneralWinback));
        assert_eq!(r.group, Group::Control);
        assert_eq!(r.outcome, Outcome::Converted);
        assert_eq!((r.revenue, r.days_to_convert), (42.5, Some(3.5)));
        assert_eq!(
            (r.raised_at_ms, r.closed_at_ms),
            (1_700_000_000_000, 1_702_592_000_000)
        );
        // Prospects have no segment.
        let r = parse(&record(
            "convert",
            "first_purchase_offer",
            "",
            "treatment",
            None,
        ))
        .unwrap();
        assert_eq!((r.segment, r.revenue, r.days_to_convert), (None, 0.0, None));
        // Fields this reader does not know are ignored.
        let mut extra = record("welcome", "welcome_follow_up", "none", "treatment", None);
        extra.push(("channel".into(), "email".into()));
        assert!(parse(&extra).is_ok());
    }

    #[test]
    fn bad_records_name_the_field_and_value() {
        let good = record(
            "winback",
            "coupon",
            "general_winback",
            "treatment",
            Some(10.0),
        );
        let lost = record("winback", "coupon", "general_winback", "treatment", None);
        let cases: Vec<(Vec<(String, String)>, &str)> = vec![
            (
                with(&good, "schema_version", "2"),
                "schema_version \"2\" is not one this churnd reads",
            ),
            (
                with(&good, "record", "cancel"),
                "record \"cancel\" is not an outcome record",
            ),
            (
                with(&good, "kind", "winbak"),
                "field kind is \"winbak\": must be winback,",
            ),
            (
                with(&good, "segment", "vip"),
                "field segment is \"vip\": must be an RFM segment",
            ),
            (
                with(&good, "group", "holdout"),
                "field group is \"holdout\": must be treatment or control",
            ),
            (
                with(&good, "outcome", "yes"),
                "field outcome is \"yes\": must be converted or not_converted",
            ),
            (
                with(&good, "revenue", "1e3"),
                "field revenue is \"1e3\": must be a plain decimal",
            ),
            (with(&good, "revenue", "NaN"), "field revenue is \"NaN\""),
            (with(&good, "revenue", "-5"), "field revenue is \"-5\""),
            (
                with(&lost, "revenue", "5"),
                "field revenue is \"5\": must be 0 when the outcome is not_converted",
            ),
            (
                with(&good, "days_to_convert", ""),
                "field days_to_convert is \"\": must be a decimal number of days",
            ),
            (
                with(&lost, "days_to_convert", "2"),
                "field days_to_convert is \"2\": must be empty",
            ),
            (
                with(&good, "raised_at", "2023-11-14"),
                "field raised_at is \"2023-11-14\": must be milliseconds",
            ),
            (with(&good, "closed_at", "+5"), "field closed_at is \"+5\""),
            (
                with(&good, "closed_at", "1600000000000"),
                "field closed_at is \"1600000000000\": must not be before raised_at",
            ),
            (
                with(&good, "action", ""),
                "field action is \"\": must be 1 to 64 bytes",
            ),
            (
                with(&good, "action", "two words"),
                "field action is \"two words\"",
            ),
            (
                with(&good, "task_id", ""),
                "field task_id is \"\": must not be empty",
            ),
        ];
        for (fields, message) in cases {
            let e = parse(&fields).expect_err(message);
            assert!(
                e.to_string().contains(message),
                "{e} does not say {message}"
            );
        }
        let missing: Vec<_> = good
            .iter()
            .filter(|(k, _)| k != "closed_at")
            .cloned()
            .collect();
        assert_eq!(parse(&missing), Err(RecordError::Missing("closed_at")));
        let mut twice = good.clone();
        twice.push(("group".into(), "control".into()));
        assert_eq!(
            parse(&twice),
            Err(RecordError::Duplicate { field: "group" })
        );
        let binary = vec![(b"schema_version".as_slice(), [0xff_u8, 0xfe].as_slice())];
        assert!(matches!(
            OutcomeRecord::parse(binary),
            Err(RecordError::Invalid {
                field: "schema_version",
                ..
            })
        ));
    }

    #[test]
    fn aggregates_count_per_cell_and_group_and_skip_what_is_bad() {
        let mut a = Aggregates::new(Window::default());
        for (group, revenue) in [
            ("treatment", Some(10.0)),
            ("treatment", Some(30.0)),
            ("treatment", None),
            ("control", None),
            ("control", Some(20.0)),
        ] {
            a.add_entry(as_bytes(&record(
                "winback",
                "coupon",
                "general_winback",
                group,
                revenue,
            )))
            .unwrap();
        }
        a.add_entry(as_bytes(&record("winback", "coupon", "", "control", None)))
            .unwrap();
        let bad = with(
            &record("winback", "coupon", "", "control", None),
            "schema_version",
            "9",
        );
        assert!(a.add_entry(as_bytes(&bad)).is_err());
        let bad = with(
            &record("winback", "coupon", "", "control", None),
            "kind",
            "x",
        );
        assert!(a.add_entry(as_bytes(&bad)).is_err());
        assert_eq!((a.read, a.used), (8, 6));
        assert_eq!(a.skipped[&SkipReason::UnknownSchema], 1);
        assert_eq!(a.skipped[&SkipReason::Malformed], 1);
        let cells: Vec<_> = a.cells().collect();
        assert_eq!(cells.len(), 2);
        let (key, totals) = cells[0];
        assert_eq!(key.segment, Some(Segment::GeneralWinback));
        assert_eq!(
            (totals.treatment.tasks, totals.treatment.conversions),
            (3, 2)
        );
        assert_eq!(totals.treatment.revenue, 40.0);
        assert_eq!(totals.treatment.revenue_squares, 1000.0);
        assert_eq!(totals.treatment.days_to_convert, 7.0);
        assert_eq!((totals.control.tasks, totals.control.conversions), (2, 1));
        let sample = totals.treatment.revenue_sample();
        // 10, 30, 0: mean 40/3, variance (1000 − 1600/3) / 2 = 233.33.
        assert!((sample.mean - 40.0 / 3.0).abs() < 1e-12);
        assert!((sample.variance - 700.0 / 3.0).abs() < 1e-9);
        assert_eq!(cells[1].0.segment_name(), "none");
        let kinds = a.kinds();
        assert_eq!(kinds.len(), 1);
        assert_eq!(kinds[&0].1.control.tasks, 3);
        // The arms learning reads: the cell with a segment, not the prospects' one.
        let book = a.uplift_book(LearnSettings::default());
        let arm = Arm {
            kind: TaskKind::Winback,
            action: "coupon".into(),
            segment: Segment::GeneralWinback,
        };
        assert_eq!(
            book.outcomes(&arm),
            ArmOutcomes {
                treated: 3,
                treated_converted: 2,
                control: 2,
                control_converted: 1
            }
        );
        assert_eq!(book.arms(), 1);
    }

    #[test]
    fn the_window_selects_by_closed_at() {
        let mut a = Aggregates::new(Window {
            since_ms: Some(1_702_592_000_000),
            until_ms: Some(1_702_592_000_001),
        });
        let r = record("winback", "coupon", "", "control", None);
        a.add_entry(as_bytes(&r)).unwrap();
        a.add_entry(as_bytes(&with(&r, "closed_at", "1702592000001")))
            .unwrap();
        a.add_entry(as_bytes(&with(&r, "closed_at", "1702591999999")))
            .unwrap();
        assert_eq!((a.read, a.used, a.outside_window), (3, 1, 2));
    }

    #[test]
    fn cells_are_bounded() {
        let mut a = Aggregates::new(Window::default());
        for i in 0..MAX_CELLS {
            let r = record("winback", &format!("action_{i}"), "", "control", None);
            a.add_entry(as_bytes(&r)).unwrap();
        }
        let r = record("winback", "one_more", "", "control", None);
        assert!(a.add_entry(as_bytes(&r)).is_err());
        // An existing cell still counts.
        let r = record("winback", "action_0", "", "treatment", None);
        a.add_entry(as_bytes(&r)).unwrap();
        assert_eq!(a.cells().count(), MAX_CELLS);
        assert_eq!(a.skipped[&SkipReason::TooManyCells], 1);
    }
}
