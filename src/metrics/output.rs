//! The output streams (tasks, control group, dead letters) as the monitor samples them.
//!
//! Every label here is open: the stream names come from the settings, the consumer groups
//! from Redis (at most `sink::backlog::MAX_GROUPS` per stream).

use prometheus::{IntCounterVec, IntGaugeVec};

use super::Registrar;

#[derive(Clone)]
pub struct OutputMetrics {
    pub length: IntGaugeVec,
    pub max_length: IntGaugeVec,
    pub removed: IntGaugeVec,
    pub group_unread: IntGaugeVec,
    pub group_trimmed_unread: IntCounterVec,
}

impl OutputMetrics {
    pub(super) fn register(r: &mut Registrar) -> Self {
        Self {
            length: r.gauge_vec(
                "churnd_output_stream_length",
                "Entries in each output stream (tasks, control group, dead letters): XINFO STREAM length, 0 while the stream does not exist.",
                &["stream"],
            ),
            max_length: r.gauge_vec(
                "churnd_output_stream_max_length",
                "The approximate cap of each output stream (XADD MAXLEN ~: winback.max_len, tasks.max_len, dead_letter.max_len); the oldest entries are trimmed beyond it.",
                &["stream"],
            ),
            removed: r.gauge_vec(
                "churnd_output_stream_removed_entries",
                "Entries trimmed (MAXLEN ~) or deleted (XDEL) from each output stream since it was created: XINFO STREAM entries-added minus length (Redis 7.0 or later).",
                &["stream"],
            ),
            group_unread: r.gauge_vec(
                "churnd_output_stream_group_unread",
                "Entries of an output stream not yet delivered to a consumer group of its consumers (XINFO GROUPS lag, at most the stream's length); absent while Redis cannot tell.",
                &["stream", "group"],
            ),
            group_trimmed_unread: r.counter_vec(
                "churnd_output_stream_group_trimmed_unread_total",
                "Entries removed from an output stream (trimmed by MAXLEN ~, or deleted) before a consumer group read them, counted while the group is seen behind the stream's first entry.",
                &["stream", "group"],
            ),
        }
    }
}
