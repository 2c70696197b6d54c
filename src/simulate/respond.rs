//! Reading churnd's tasks back, so that the simulated customers can answer them: the
//! simulation's half of a closed loop (churnd raises a task, marketing acts, the customer
//! buys or not, churnd sees it).
//!
//! Tasks of the control group are read and left unanswered: nobody acts on them. A task for
//! a customer of another simulation (another seed) or of no simulation is skipped, and so is
//! a cancel record (a task stream carries the cancels of its tasks, `record = cancel`): it is
//! no new task, and answering it would answer its task a second time.

use redis::Value;
use xxhash_rust::xxh3::xxh3_64;

use crate::connection::RedisConn;
use crate::event::EntryId;
use crate::source::batch::{parse_entries, parse_reply, Entry, ReplyError};

/// Entries read per stream and call.
const READ_COUNT: usize = 1_000;

/// A task as the simulated customer receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Received {
    /// The customer's number in the population.
    pub customer: u32,
    pub action: String,
    /// The task's ID, hashed: what tells the customer's tasks apart.
    pub task: u64,
    /// `false` for a task of the control group.
    pub acted_on: bool,
}

/// The task's fields, for customers whose IDs start with `prefix` (`sim<seed>-`).
pub(crate) fn received<'a>(
    fields: impl Iterator<Item = (&'a [u8], &'a [u8])> + Clone,
    prefix: &str,
) -> Option<Received> {
    let field = |name: &str| {
        fields
            .clone()
            .find(|(k, _)| *k == name.as_bytes())
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    };
    if field("record") == Some("cancel") {
        return None;
    }
    let customer = field("customer_id")?.strip_prefix(prefix)?.parse().ok()?;
    Some(Received {
        customer,
        action: field("action")?.to_owned(),
        task: xxh3_64(field("task_id")?.as_bytes()),
        acted_on: field("group") != Some("control"),
    })
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    #[error(transparent)]
    Reply(#[from] ReplyError),
}

/// Where each task stream has been read to.
#[derive(Debug)]
pub(crate) struct TaskReader {
    streams: Vec<String>,
    after: Vec<EntryId>,
}

impl TaskReader {
    /// Reads `streams` from their first entry, or, when `from_tail`, from after their current
    /// last entry (a resumed simulation: the earlier run answered what is there).
    pub async fn new(
        streams: Vec<String>,
        from_tail: bool,
        conn: &mut RedisConn,
    ) -> Result<Self, ReadError> {
        let mut after = vec![EntryId::default(); streams.len()];
        if from_tail {
            for (i, stream) in streams.iter().enumerate() {
                let reply: Value = redis::cmd("XREVRANGE")
                    .arg(stream)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1)
                    .query_async(conn)
                    .await?;
                if let Some(last) = parse_entries(reply, i as u16)?.first() {
                    after[i] = last.id;
                }
            }
        }
        Ok(Self { streams, after })
    }

    /// The tasks written since the last call (at most [`READ_COUNT`] per stream), every
    /// stream's in order; without waiting.
    pub async fn read(&mut self, conn: &mut RedisConn) -> Result<Vec<Entry>, ReadError> {
        if self.streams.is_empty() {
            return Ok(Vec::new());
        }
        let reply: Value = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(READ_COUNT)
            .arg("STREAMS")
            .arg(&self.streams)
            .arg(
                self.after
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>(),
            )
            .query_async(conn)
            .await?;
        let entries = parse_reply(reply, &self.streams)?;
        for entry in &entries {
            let after = &mut self.after[usize::from(entry.stream)];
            *after = (*after).max(entry.id);
        }
        Ok(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&'static str, &'static str)]) -> Vec<(&'static [u8], &'static [u8])> {
        pairs
            .iter()
            .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
            .collect()
    }

    fn receive(pairs: &[(&'static str, &'static str)], prefix: &str) -> Option<Received> {
        received(fields(pairs).into_iter(), prefix)
    }

    #[test]
    fn a_task_of_this_simulation_is_received_with_its_action_and_group() {
        let mut task = vec![
            ("task_id", "wb-1"),
            ("kind", "winback"),
            ("customer_id", "sim4-0000042"),
            ("action", "coupon"),
            ("group", "treatment"),
        ];
        let got = receive(&task, "sim4-").expect("one of ours");
        assert_eq!(got.customer, 42);
        assert_eq!(got.action, "coupon");
        assert!(got.acted_on);
        assert_eq!(got.task, xxh3_64(b"wb-1"));
        task[4].1 = "control";
        assert!(!receive(&task, "sim4-").unwrap().acted_on);
        // A task without a group is acted on.
        let care = [
            ("task_id", "w-9"),
            ("customer_id", "sim4-0000007"),
            ("action", "welcome_call"),
        ];
        assert!(receive(&care, "sim4-").unwrap().acted_on);
    }

    #[test]
    fn a_cancel_is_not_received_as_a_task() {
        let mut record = vec![
            ("schema_version", "1"),
            ("record", "task"),
            ("task_id", "wb-1"),
            ("kind", "winback"),
            ("customer_id", "sim4-0000042"),
            ("action", "coupon"),
            ("group", "treatment"),
        ];
        assert!(receive(&record, "sim4-").is_some());
        record[1].1 = "cancel";
        assert_eq!(receive(&record, "sim4-"), None);
    }

    #[test]
    fn tasks_of_other_customers_or_without_an_action_are_skipped() {
        let other = [
            ("task_id", "x"),
            ("customer_id", "sim5-0000042"),
            ("action", "coupon"),
        ];
        assert_eq!(receive(&other, "sim4-"), None);
        let crm = [
            ("task_id", "x"),
            ("customer_id", "c-1042"),
            ("action", "coupon"),
        ];
        assert_eq!(receive(&crm, "sim4-"), None);
        let no_action = [("task_id", "x"), ("customer_id", "sim4-0000001")];
        assert_eq!(receive(&no_action, "sim4-"), None);
    }
}
