//! The cancel and outcome records: their wire format (documented for consumers in
//! docs/tasks.md; field names and order are a contract) and the IDs their guards use.

use std::borrow::Cow;
use std::sync::Arc;

use crate::classify::Segment;
use crate::decide::{Group, TaskKind};
use crate::time::{UnixSeconds, DAY};

/// `schema_version` of every record churnd writes for marketing automation: tasks, cancels
/// and outcomes. Bumped only when a field changes meaning or goes away.
pub const SCHEMA_VERSION: &str = "1";

/// Why an open task is cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelReason {
    /// The customer bought: the action has no purpose left.
    Purchase,
}

impl CancelReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Purchase => "purchase",
        }
    }
}

/// "Cancel the action of this task": written to the stream the task went to, right after
/// the event that ends its purpose.
#[derive(Debug, Clone, PartialEq)]
pub struct Cancel {
    pub task_id: String,
    pub customer_id: String,
    pub kind: TaskKind,
    pub action: Arc<str>,
    pub group: Group,
    pub reason: CancelReason,
    /// Time of the event that ends the task's purpose.
    pub cancelled_at: UnixSeconds,
}

impl Cancel {
    /// The ID of its guard: the task's, marked, so that it differs from the task's own in the
    /// same stream.
    pub fn guard_id(&self) -> String {
        format!("cancel:{}", self.task_id)
    }

    pub fn fields(&self) -> Vec<(Cow<'static, str>, String)> {
        [
            ("schema_version", SCHEMA_VERSION.to_string()),
            ("record", "cancel".into()),
            ("task_id", self.task_id.clone()),
            ("kind", self.kind.as_str().into()),
            ("customer_id", self.customer_id.clone()),
            ("action", self.action.to_string()),
            ("group", self.group.as_str().into()),
            ("reason", self.reason.as_str().into()),
            ("cancelled_at", millis(self.cancelled_at)),
        ]
        .into_iter()
        .map(|(k, v)| (Cow::Borrowed(k), v))
        .collect()
    }
}

/// A conversion: the first purchase at or after the task was raised, within its window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Converted {
    /// The purchase's `amount`, as churnd read it.
    pub revenue: f64,
    pub at: UnixSeconds,
}

/// What became of one task: written once, to the outcome stream.
#[derive(Debug, Clone, PartialEq)]
pub struct OutcomeRecord {
    pub task_id: String,
    pub customer_id: String,
    pub kind: TaskKind,
    pub action: Arc<str>,
    pub segment: Option<Segment>,
    pub group: Group,
    pub raised_at: UnixSeconds,
    /// `None`: the window closed at `closed_at` without a purchase.
    pub converted: Option<Converted>,
    pub closed_at: UnixSeconds,
}

impl OutcomeRecord {
    /// The ID of its guard: one outcome per task in the outcome stream.
    pub fn guard_id(&self) -> &str {
        &self.task_id
    }

    /// The `outcome` field: `converted` or `not_converted`.
    pub fn result(&self) -> &'static str {
        if self.converted.is_some() {
            "converted"
        } else {
            "not_converted"
        }
    }

    pub fn fields(&self) -> Vec<(Cow<'static, str>, String)> {
        let outcome = self.result();
        let (revenue, days) = match self.converted {
            Some(c) => (
                decimal(c.revenue),
                format!(
                    "{:.3}",
                    f64::from(c.at.saturating_sub(self.raised_at)) / f64::from(DAY)
                ),
            ),
            None => ("0".to_string(), String::new()),
        };
        [
            ("schema_version", SCHEMA_VERSION.to_string()),
            ("record", "outcome".into()),
            ("task_id", self.task_id.clone()),
            ("customer_id", self.customer_id.clone()),
            ("kind", self.kind.as_str().into()),
            ("action", self.action.to_string()),
            ("segment", self.segment.map_or("", Segment::as_str).into()),
            ("group", self.group.as_str().into()),
            ("outcome", outcome.into()),
            ("revenue", revenue),
            ("days_to_convert", days),
            ("raised_at", millis(self.raised_at)),
            ("closed_at", millis(self.closed_at)),
        ]
        .into_iter()
        .map(|(k, v)| (Cow::Borrowed(k), v))
        .collect()
    }
}

/// Milliseconds since the epoch, as event `ts` is given.
fn millis(t: UnixSeconds) -> String {
    (u64::from(t) * 1000).to_string()
}

/// A plain decimal: no exponent, no trailing zeros beyond what the amount holds (f64's
/// `Display` is the shortest text that reads back as the same number).
fn decimal(amount: f64) -> String {
    if amount.is_finite() {
        amount.to_string()
    } else {
        "0".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u32 = 852_076_800;

    fn record(converted: Option<Converted>) -> OutcomeRecord {
        OutcomeRecord {
            task_id: "ab".repeat(16),
            customer_id: "c1".into(),
            kind: TaskKind::Winback,
            action: "discount_10".into(),
            segment: Some(Segment::ImportantValue),
            group: Group::Control,
            raised_at: T0,
            converted,
            closed_at: converted.map_or(T0 + 30 * DAY, |c| c.at),
        }
    }

    fn field<'a>(fields: &'a [(Cow<'static, str>, String)], name: &str) -> &'a str {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no field {name}"))
    }

    #[test]
    fn an_outcome_has_exactly_the_agreed_fields_in_order() {
        let converted = record(Some(Converted {
            revenue: 49.9,
            at: T0 + DAY + DAY / 2,
        }))
        .fields();
        let names: Vec<&str> = converted.iter().map(|(k, _)| k.as_ref()).collect();
        // What the lift report reads: writer and reader agree on the schema.
        assert_eq!(names, crate::lift::FIELDS);
        assert_eq!(field(&converted, "schema_version"), "1");
        assert_eq!(field(&converted, "record"), "outcome");
        assert_eq!(field(&converted, "segment"), "important_value");
        assert_eq!(field(&converted, "group"), "control");
        assert_eq!(field(&converted, "outcome"), "converted");
        assert_eq!(field(&converted, "revenue"), "49.9");
        assert_eq!(field(&converted, "days_to_convert"), "1.500");
        assert_eq!(field(&converted, "raised_at"), "852076800000");
        assert_eq!(
            field(&converted, "closed_at"),
            ((u64::from(T0) + 129_600) * 1000).to_string()
        );

        let lapsed = record(None).fields();
        assert_eq!(field(&lapsed, "outcome"), "not_converted");
        assert_eq!(field(&lapsed, "revenue"), "0");
        assert_eq!(field(&lapsed, "days_to_convert"), "");
        assert_eq!(
            field(&lapsed, "closed_at"),
            ((u64::from(T0) + 30 * 86_400) * 1000).to_string()
        );
    }

    #[test]
    fn revenue_is_a_plain_decimal() {
        assert_eq!(decimal(100.0), "100");
        assert_eq!(decimal(1e21), "1000000000000000000000");
        assert_eq!(decimal(0.1 + 0.2), "0.30000000000000004");
        assert_eq!(decimal(f64::NAN), "0");
    }

    #[test]
    fn a_cancel_names_its_task_and_has_a_guard_of_its_own() {
        let cancel = Cancel {
            task_id: "ab".repeat(16),
            customer_id: "c1".into(),
            kind: TaskKind::Revisit,
            action: "call".into(),
            group: Group::Treatment,
            reason: CancelReason::Purchase,
            cancelled_at: T0,
        };
        assert_ne!(cancel.guard_id(), cancel.task_id);
        let fields = cancel.fields();
        assert_eq!(field(&fields, "record"), "cancel");
        assert_eq!(field(&fields, "task_id"), cancel.task_id);
        assert_eq!(field(&fields, "cancelled_at"), "852076800000");
    }
}
