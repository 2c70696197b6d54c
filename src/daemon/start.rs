//! Before the first read: every input stream gets a position in a snapshot on disk.
//!
//! Entries are acknowledged once their effects are written, and a crash is recovered by
//! replaying each stream from the newest snapshot's position. A stream without one (a new
//! deployment, a stream added to `source.streams`, a snapshot of an older churnd) gets its
//! start resolved ([`crate::source::start`]) and written in a snapshot before any of it is
//! read, so that no entry is ever acknowledged that a recovery could not replay. With one
//! engine per partition, each partition given a start writes its own snapshot.

use std::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::config::SourceSettings;
use crate::connection::Connector;
use crate::engine::Partitioned;
use crate::health::Health;
use crate::metrics::{SnapshotMetrics, SnapshotOutcome, SnapshotWritten};
use crate::source::start;
use crate::state::{self, SnapshotStore};
use crate::time::wall_millis;

/// Gives every stream of `settings` a position in `engine` and, if any had none, writes a
/// snapshot holding them (of each partition that had one without: `dirs` holds each
/// partition's directory and streams). Retries until both succeed (Redis unreachable, the
/// state volume failing: nothing may be read before); `None` if shutdown came first.
pub(crate) async fn make_positions_durable(
    mut engine: Partitioned,
    settings: &SourceSettings,
    dirs: &[(SnapshotStore, Vec<String>)],
    mut connector: Connector,
    (metrics, health): (&SnapshotMetrics, &Health),
    shutdown: &CancellationToken,
) -> Option<Partitioned> {
    let known = engine.positions();
    let missing = (0..settings.streams.len()).any(|i| known.get(i).copied().flatten().is_none());
    if !missing {
        return Some(engine);
    }
    let mut conn = None;
    let starts = loop {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => conn.insert(connector.connect(shutdown).await?),
        };
        match start::resolve(c, settings, &known).await {
            Ok(starts) => break starts,
            Err(e) => {
                if connector.failed(&e) {
                    conn = None;
                }
                if !connector.pause(shutdown).await {
                    return None;
                }
            }
        }
    };
    connector.succeeded();
    // The partitions to write a snapshot of: those given a start, in order.
    let mut partitions: Vec<usize> = Vec::new();
    for (stream, position) in starts {
        let partition = usize::from(stream) % dirs.len();
        if !partitions.contains(&partition) {
            partitions.push(partition);
        }
        engine.start_at(stream, position);
    }
    partitions.sort_unstable();
    while let Some(&partition) = partitions.first() {
        let (started, created_ms) = (Instant::now(), wall_millis());
        let (dir, streams) = dirs[partition].clone();
        let written = tokio::task::spawn_blocking(move || {
            let part = &mut engine.parts_mut()[partition];
            let result = state::write_snapshot(part, dir, &streams, created_ms);
            let customers = part.customers() as u64;
            (engine, result.map(|written| (written, customers)))
        })
        .await;
        let (returned, result) = match written {
            Ok(done) => done,
            // The writing thread panicked: the engine went with it.
            Err(e) => {
                tracing::error!(error = %e, "writing the first snapshot panicked");
                return None;
            }
        };
        engine = returned;
        match result {
            Ok(((location, bytes), customers)) => {
                SnapshotWritten {
                    path: &location,
                    customers,
                    bytes,
                    elapsed: started.elapsed(),
                    created_ms,
                    notable: Some(
                        "snapshot with a position for every input stream written before reading them",
                    ),
                }
                .emit(metrics);
                health.snapshot_written();
                partitions.remove(0);
            }
            Err(e) => {
                metrics.outcomes.get(SnapshotOutcome::Failed).inc();
                health.snapshot_failed(&e.to_string());
                tracing::error!(
                    error = %e,
                    "cannot write the snapshot that must hold every input stream's position before it is read; reading waits, retrying"
                );
                if !connector.pause(shutdown).await {
                    return None;
                }
            }
        }
    }
    Some(engine)
}
