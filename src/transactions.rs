//! Transactions CSV files, the batch input of `train`, `demo` (and later batch scoring).
//!
//! Columns are found by header name: `customer_id`, `date` (YYYY-MM-DD or RFC 3339) and
//! `amount` are required, `type` (an event type of the stream; default `purchase`) and
//! `quantity` are optional, anything else is ignored. Bad rows are collected with their line
//! number and reason and skipped, so a few bad rows in a large file are reported, not fatal.

use std::path::{Path, PathBuf};

use crate::event::{Event, EventKind, MAX_AMOUNT, MAX_CUSTOMER_ID_BYTES};
use crate::time::{self, UnixSeconds};

/// One row, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Transaction {
    pub customer_id: Box<str>,
    pub kind: EventKind,
    pub amount: f64,
    pub time: UnixSeconds,
}

impl Transaction {
    pub(crate) fn as_event(&self) -> Event<'_> {
        Event::new(&self.customer_id, self.kind, self.amount, self.time)
    }
}

/// A row that was skipped, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRow {
    /// 1-based line number in the file (the header is line 1).
    pub line: u64,
    pub reason: String,
}

/// The valid rows of a file in time order, and the rows that were skipped.
#[derive(Debug, Default)]
pub struct Transactions {
    pub rows: Vec<Transaction>,
    pub bad_rows: Vec<BadRow>,
}

#[derive(Debug, thiserror::Error)]
pub enum TransactionsError {
    #[error("cannot read transactions file {path}: {source}")]
    Read { path: PathBuf, source: csv::Error },
    #[error("transactions file {path} has no {column:?} column (header: {header}); expected customer_id,date,amount with optional type and quantity")]
    MissingColumn {
        path: PathBuf,
        column: &'static str,
        header: String,
    },
}

struct Columns {
    customer_id: usize,
    date: usize,
    amount: usize,
    kind: Option<usize>,
}

impl Transactions {
    /// Drops every row at or after `t`: the data as it was known just before `t`, for
    /// out-of-time experiments.
    pub fn truncate_at(&mut self, t: UnixSeconds) {
        let keep = self.rows.partition_point(|r| r.time < t);
        self.rows.truncate(keep);
    }

    pub fn read(path: &Path) -> Result<Self, TransactionsError> {
        let read_err = |source| TransactionsError::Read {
            path: path.to_owned(),
            source,
        };
        let mut reader = csv::ReaderBuilder::new()
            .flexible(true)
            .trim(csv::Trim::All)
            .from_path(path)
            .map_err(read_err)?;
        let header = reader.headers().map_err(read_err)?.clone();
        let find =
            |column: &'static str| header.iter().position(|h| h.eq_ignore_ascii_case(column));
        let require = |column: &'static str| {
            find(column).ok_or_else(|| TransactionsError::MissingColumn {
                path: path.to_owned(),
                column,
                header: header.iter().collect::<Vec<_>>().join(","),
            })
        };
        let columns = Columns {
            customer_id: require("customer_id")?,
            date: require("date")?,
            amount: require("amount")?,
            kind: find("type"),
        };

        let mut out = Transactions::default();
        let mut record = csv::StringRecord::new();
        loop {
            match reader.read_record(&mut record) {
                Ok(false) => break,
                Ok(true) => {
                    let line = record.position().map_or(0, |p| p.line());
                    match parse_row(&record, &columns) {
                        Ok(t) => out.rows.push(t),
                        Err(reason) => out.bad_rows.push(BadRow { line, reason }),
                    }
                }
                // A malformed record (e.g. invalid UTF-8) is a bad row; I/O failure is fatal.
                Err(e) if e.is_io_error() => return Err(read_err(e)),
                Err(e) => out.bad_rows.push(BadRow {
                    line: e.position().map_or(0, |p| p.line()),
                    reason: e.to_string(),
                }),
            }
        }
        out.rows.sort_by_key(|t| t.time);
        Ok(out)
    }
}

fn parse_row(record: &csv::StringRecord, columns: &Columns) -> Result<Transaction, String> {
    let field = |i: usize| record.get(i).unwrap_or("");
    let customer_id = field(columns.customer_id);
    if customer_id.is_empty() || customer_id.len() > MAX_CUSTOMER_ID_BYTES {
        return Err(format!(
            "customer_id must be 1 to {MAX_CUSTOMER_ID_BYTES} bytes, got {}",
            customer_id.len()
        ));
    }
    let date = field(columns.date);
    let time = time::parse_date_or_datetime(date)
        .ok_or_else(|| format!("date {date:?} is not YYYY-MM-DD or RFC 3339 after 1970"))?;
    let kind = match columns.kind.map(field) {
        None | Some("") => EventKind::Purchase,
        Some(k) => k.parse()?,
    };
    if matches!(kind, EventKind::Feedback | EventKind::Profile) {
        // Training and batch scoring see activity only; these change no feature.
        return Err(format!(
            "type {} is not activity: this file takes purchase, refund, visit and complaint",
            kind.as_str()
        ));
    }
    let amount_text = field(columns.amount);
    let amount = if amount_text.is_empty() {
        if kind.requires_amount() {
            return Err(format!(
                "amount is missing (required for {})",
                kind.as_str()
            ));
        }
        0.0
    } else {
        let amount: f64 = amount_text
            .parse()
            .map_err(|_| format!("amount {amount_text:?} is not a decimal number"))?;
        if !(amount.is_finite() && (0.0..=MAX_AMOUNT).contains(&amount)) {
            return Err(format!(
                "amount {amount_text:?} must be between 0 and {MAX_AMOUNT}"
            ));
        }
        amount
    };
    Ok(Transaction {
        customer_id: customer_id.into(),
        kind,
        amount,
        time,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn read(text: &str) -> Result<Transactions, TransactionsError> {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        Transactions::read(file.path())
    }

    #[test]
    fn reads_cdnow_style_rows_in_time_order() {
        let t = read(
            "customer_id,date,quantity,amount\n\
             00002,1997-01-12,1,12.00\n\
             00001,1997-01-01,1,11.77\n",
        )
        .unwrap();
        assert_eq!(t.rows.len(), 2);
        assert_eq!(&*t.rows[0].customer_id, "00001");
        assert_eq!(t.rows[0].kind, EventKind::Purchase);
        assert_eq!(t.rows[0].amount, 11.77);
        assert!(t.bad_rows.is_empty());
    }

    #[test]
    fn bad_rows_are_reported_with_line_and_reason_and_skipped() {
        let t = read(
            "customer_id,date,amount,type\n\
             a,1997-01-01,10,purchase\n\
             b,1997-13-01,10,purchase\n\
             c,1997-01-02,-3,purchase\n\
             d,1997-01-02,,visit\n\
             e,1997-01-02,5,gift\n",
        )
        .unwrap();
        assert_eq!(t.rows.len(), 2);
        let lines: Vec<u64> = t.bad_rows.iter().map(|b| b.line).collect();
        assert_eq!(lines, vec![3, 4, 6]);
        assert!(t.bad_rows[0].reason.contains("1997-13-01"));
        assert!(t.bad_rows[2].reason.contains("gift"));
    }

    #[test]
    fn truncating_keeps_only_the_earlier_rows() {
        let mut t = read(
            "customer_id,date,amount\n\
             a,1997-01-01,1\n\
             b,1997-02-01,1\n\
             c,1997-03-01,1\n",
        )
        .unwrap();
        t.truncate_at(time::parse_date_or_datetime("1997-02-01").unwrap());
        let ids: Vec<&str> = t.rows.iter().map(|r| &*r.customer_id).collect();
        assert_eq!(ids, ["a"]);
    }

    #[test]
    fn a_missing_column_is_named() {
        let err = read("customer_id,when,amount\n").unwrap_err();
        assert!(err.to_string().contains("\"date\""), "{err}");
    }

    #[test]
    fn an_unreadable_file_is_named() {
        let err = Transactions::read(Path::new("/nonexistent/t.csv")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/t.csv"), "{err}");
    }
}
