//! The source: entries claimed and in flight, and the input consumer group's backlog.

use prometheus::{IntCounter, IntGauge, IntGaugeVec};

use super::Registrar;

#[derive(Clone)]
pub struct SourceMetrics {
    pub entries_claimed: IntCounter,
    pub inflight_bytes: IntGauge,
    /// By input stream: open, the streams are `source.streams`.
    pub consumer_lag: IntGaugeVec,
    /// By input stream, as `consumer_lag`.
    pub consumer_pending: IntGaugeVec,
    /// By input stream, as `consumer_lag`: entries after the newest durable snapshot's
    /// position (the `<group>:committed` group's lag), with state kept in snapshots.
    pub committed_lag: IntGaugeVec,
}

impl SourceMetrics {
    pub(super) fn register(r: &mut Registrar) -> Self {
        Self {
            entries_claimed: r.counter(
                "churnd_entries_claimed_total",
                "Entries taken over from other consumers of the group after source.claim_idle_ms (a replica that is gone).",
            ),
            inflight_bytes: r.gauge(
                "churnd_source_inflight_bytes",
                "Bytes of entries read and not yet applied (bounded by source.max_inflight_bytes)",
            ),
            consumer_lag: r.gauge_vec(
                "churnd_consumer_group_lag",
                "Entries in the stream not yet delivered to the consumer group (XINFO GROUPS lag).",
                &["stream"],
            ),
            consumer_pending: r.gauge_vec(
                "churnd_consumer_group_pending",
                "Entries delivered to the consumer group but not acknowledged (XINFO GROUPS pending).",
                &["stream"],
            ),
            committed_lag: r.gauge_vec(
                "churnd_consumer_group_committed_lag",
                "Entries in the stream after the newest durable snapshot's position: what a restart would replay (XINFO GROUPS lag of <group>:committed).",
                &["stream"],
            ),
        }
    }

    /// Removes `stream`'s series: its partition is not held here (another replica
    /// reports it).
    pub fn forget_stream(&self, stream: &str) {
        for gauge in [
            &self.consumer_lag,
            &self.consumer_pending,
            &self.committed_lag,
        ] {
            let _ = gauge.remove_label_values(&[stream]);
        }
    }
}
