//! What a batch or a tick asks the sink to write: tasks, their cancels and outcomes, dead
//! letters, acknowledgements.

use crate::decide::Task;
use crate::event::{EntryId, Reason};
use crate::outcomes::{Cancel, OutcomeRecord};
use crate::source::batch::StreamIdx;

/// What the daemon must write to Redis for a batch or a tick.
#[derive(Debug, Default)]
pub struct Effects {
    /// Tasks of every kind.
    pub tasks: Vec<Task>,
    /// Cancels of open tasks, each to its task's stream (after the tasks: a task raised and
    /// cancelled in one batch reaches its stream first).
    pub cancels: Vec<Cancel>,
    /// Outcomes of tasks, to the outcome stream.
    pub outcomes: Vec<OutcomeRecord>,
    pub dead_letters: Vec<DeadLetter>,
    /// Entries to acknowledge once the tasks and dead letters are written.
    pub acks: Vec<(StreamIdx, EntryId)>,
}

impl Effects {
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
            && self.cancels.is_empty()
            && self.outcomes.is_empty()
            && self.dead_letters.is_empty()
            && self.acks.is_empty()
    }
}

/// A rejected entry with its original fields.
#[derive(Debug)]
pub struct DeadLetter {
    pub stream: StreamIdx,
    pub id: EntryId,
    pub values: Vec<redis::Value>,
    pub reason: Reason,
    pub detail: String,
}

/// A rejected entry's fields, as its dead letter copies them: whole if names and values take
/// at most `max_bytes` (`Ok`), otherwise (`Err`) the fields that fit, the one that does not
/// fit with its value cut (at a character boundary when it is text), and none after it.
/// The entry's memory is let go at once, before the dead letter waits for the sink.
pub(super) fn cut_copy(
    mut values: Vec<redis::Value>,
    max_bytes: usize,
) -> Result<Vec<redis::Value>, Vec<redis::Value>> {
    let len = |v: &redis::Value| match v {
        redis::Value::BulkString(b) => b.len(),
        redis::Value::SimpleString(s) => s.len(),
        _ => 0,
    };
    let total: usize = values.iter().map(len).sum();
    if total <= max_bytes {
        return Ok(values);
    }
    let mut room = max_bytes;
    let mut kept = 0;
    for pair in values.chunks_exact_mut(2) {
        let name = len(&pair[0]);
        if name >= room {
            break;
        }
        room -= name;
        kept += 2;
        if len(&pair[1]) > room {
            if let redis::Value::BulkString(b) = &mut pair[1] {
                let mut end = room;
                if std::str::from_utf8(b).is_ok() {
                    while std::str::from_utf8(&b[..end]).is_err() {
                        end -= 1;
                    }
                }
                b.truncate(end);
                b.shrink_to_fit();
            }
            break;
        }
        room -= len(&pair[1]);
    }
    values.truncate(kept);
    values.shrink_to_fit();
    Err(values)
}
