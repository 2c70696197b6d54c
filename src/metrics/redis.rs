//! Redis connections, per role.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec};

use super::Registrar;

/// What a connection is for, the `role` label of `churnd_redis_connected` and
/// `churnd_redis_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisRole {
    /// Reads the input streams.
    Source,
    /// Writes tasks, dead letters and acknowledgements.
    Sink,
    /// Polls the consumer groups and output streams.
    Monitor,
    /// `churnd simulate`'s writer of generated events.
    Simulate,
    /// `churnd check-config --connect`'s one connection.
    Check,
    /// Tails the outcome stream for the lift report (`src/daemon/lift.rs`), and
    /// `churnd report lift`'s reads.
    Lift,
    /// Moves each input stream's committed group to the durable snapshots' positions
    /// (`src/source/commit.rs`).
    Commit,
    /// Heartbeats and partition leases (`partitions.ownership = leases`).
    Ownership,
    /// Writes and reads snapshots kept in Redis (`state.store = redis`).
    Snapshots,
}

impl RedisRole {
    pub const ALL: [Self; 9] = [
        Self::Source,
        Self::Sink,
        Self::Monitor,
        Self::Simulate,
        Self::Check,
        Self::Lift,
        Self::Commit,
        Self::Ownership,
        Self::Snapshots,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Source => "source",
            Self::Sink => "sink",
            Self::Monitor => "monitor",
            Self::Simulate => "simulate",
            Self::Check => "check",
            Self::Lift => "lift",
            Self::Commit => "commit",
            Self::Ownership => "ownership",
            Self::Snapshots => "snapshots",
        }
    }
}

super::labels::label_enum!(RedisRole);

#[derive(Clone)]
pub struct RedisMetrics {
    connected: IntGaugeVec,
    errors: IntCounterVec,
}

/// The series of one role, resolved when its connector is made: a role's series exist only
/// once something connects in that role.
#[derive(Clone)]
pub struct RoleMetrics {
    pub connected: IntGauge,
    pub errors: IntCounter,
}

impl RedisMetrics {
    pub(super) fn register(r: &mut Registrar) -> Self {
        Self {
            connected: r.gauge_vec(
                "churnd_redis_connected",
                "Whether the connection for each role (source, sink, monitor) is up.",
                &["role"],
            ),
            errors: r.counter_vec(
                "churnd_redis_errors_total",
                "Failed Redis operations, by role.",
                &["role"],
            ),
        }
    }

    /// The series of `role`, created now: dashboards see zero, not a gap.
    pub fn role(&self, role: RedisRole) -> RoleMetrics {
        RoleMetrics {
            connected: self.connected.with_label_values(&[role.as_str()]),
            errors: self.errors.with_label_values(&[role.as_str()]),
        }
    }
}
