//! The ownership task of a replica under `partitions.ownership = leases`: runs the
//! [`Coordinator`]'s rounds (heartbeat, renew, take) every third of the lease time, and
//! sooner when a member or a lease wanted is about to expire
//! ([`crate::ownership::coordinator::Changes::next_round`]), on a connection of its own;
//! publishes what this replica holds and must hand over, and releases partitions when the
//! daemon asks, once their final snapshots are written.
//!
//! The daemon acts on what is published ([`super::replica`]): it runs engines for the
//! partitions held and not to be handed over, and starts again with another set when that
//! changes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::connection::{Connector, RedisConn};
use crate::health::Health;
use crate::metrics::OwnershipMetrics;
use crate::ownership::coordinator::Coordinator;
use crate::ownership::Epoch;

/// What this replica holds, as of its last round.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Held {
    /// Partitions whose lease this replica holds, with the epoch and the token its writes
    /// carry.
    pub leases: BTreeMap<u16, (Epoch, String)>,
    /// Of those, the ones assigned to another member now: to be handed over.
    pub hand_over: BTreeSet<u16>,
    /// Leases lost since the start (expired or taken): a change the daemon must act on
    /// even when the same partitions are held again.
    pub lost: u64,
}

impl Held {
    /// The partitions to run engines for: held, and not to be handed over, with their
    /// epochs and tokens.
    pub fn to_run(&self) -> BTreeMap<u16, (Epoch, String)> {
        self.leases
            .iter()
            .filter(|(p, _)| !self.hand_over.contains(p))
            .map(|(&p, v)| (p, v.clone()))
            .collect()
    }
}

/// Requests from the daemon.
pub(super) enum Request {
    /// Give up these partitions' leases (their final snapshots are written).
    Release(Vec<u16>, oneshot::Sender<()>),
    /// Give up every lease and leave the member list (shutdown, final snapshots written).
    Leave(oneshot::Sender<()>),
}

/// The handle the daemon keeps on the task.
pub(super) struct Owners {
    pub held: watch::Receiver<Held>,
    requests: mpsc::Sender<Request>,
}

impl Owners {
    /// Releases `partitions` and waits until it is done (or the task is gone).
    pub async fn release(&self, partitions: Vec<u16>) {
        if partitions.is_empty() {
            return;
        }
        let (tx, rx) = oneshot::channel();
        if self
            .requests
            .send(Request::Release(partitions, tx))
            .await
            .is_ok()
        {
            let _ = rx.await;
        }
    }

    /// Leaves the group: every lease released, this member off the list.
    pub async fn leave(&self) {
        let (tx, rx) = oneshot::channel();
        if self.requests.send(Request::Leave(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// Starts the task; it runs until it has left the group (or `abort`).
/// Rounds come `every`; a round that succeeds keeps the replica among the live ones for
/// `lease` in `health` (`/readyz`).
pub(super) fn spawn(
    coordinator: Coordinator,
    connector: Connector,
    (every, lease): (Duration, Duration),
    (metrics, health): (OwnershipMetrics, Arc<Health>),
    abort: CancellationToken,
) -> (Owners, tokio::task::JoinHandle<()>) {
    let (held_tx, held) = watch::channel(Held::default());
    let (requests, rx) = mpsc::channel(4);
    let task = tokio::spawn(run(
        coordinator,
        connector,
        (every, lease),
        (metrics, health),
        (held_tx, rx),
        abort,
    ));
    (Owners { held, requests }, task)
}

async fn run(
    mut coordinator: Coordinator,
    mut connector: Connector,
    (every, lease): (Duration, Duration),
    (metrics, health): (OwnershipMetrics, Arc<Health>),
    (held_tx, mut requests): (watch::Sender<Held>, mpsc::Receiver<Request>),
    abort: CancellationToken,
) {
    let mut conn: Option<RedisConn> = None;
    // The first round at once; then as the last one said (`every` after a failed one).
    let next = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(next);
    let mut lost = 0u64;
    let mut hand_over = BTreeSet::new();
    loop {
        let request = tokio::select! {
            () = &mut next => None,
            r = requests.recv() => match r {
                Some(r) => Some(r),
                None => return,
            },
            () = abort.cancelled() => return,
        };
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match connector.connect(&abort).await {
                Some(c) => conn.insert(c),
                None => return,
            },
        };
        match request {
            None => match coordinator.round(c).await {
                Ok(changes) => {
                    next.as_mut()
                        .reset(tokio::time::Instant::now() + changes.next_round);
                    connector.succeeded();
                    if changes.members.contains(coordinator.me()) {
                        health.member_until(Instant::now() + lease);
                    }
                    metrics.members.set(changes.members.len() as i64);
                    if !changes.lost.is_empty() {
                        metrics.lease_losses.inc_by(changes.lost.len() as u64);
                        lost += changes.lost.len() as u64;
                        tracing::warn!(partitions = ?changes.lost, "partition leases lost (expired or taken over): stopping them at once");
                    }
                    metrics
                        .fence_conflicts
                        .inc_by(changes.conflicts.len() as u64);
                    if !changes.gained.is_empty() {
                        tracing::info!(partitions = ?changes.gained.iter().map(|(p, _)| p).collect::<Vec<_>>(), "partition leases taken");
                    }
                    hand_over = changes.hand_over.into_iter().collect();
                }
                Err(e) => {
                    next.as_mut().reset(tokio::time::Instant::now() + every);
                    tracing::warn!(error = %e, "ownership round failed; retrying at the next one");
                    if connector.failed(&e) {
                        conn = None;
                    }
                }
            },
            Some(Request::Release(partitions, done)) => {
                for p in partitions {
                    if let Err(e) = coordinator.release(c, p).await {
                        // Not released: it expires after the lease time instead.
                        tracing::warn!(partition = p, error = %e, "cannot release a partition's lease; the next owner takes it when it expires");
                        if connector.failed(&e) {
                            conn = None;
                            break;
                        }
                    } else {
                        tracing::info!(partition = p, "partition handed over");
                    }
                    hand_over.remove(&p);
                }
                let _ = done.send(());
            }
            Some(Request::Leave(done)) => {
                if let Err(e) = coordinator.leave(c).await {
                    tracing::warn!(error = %e, "cannot leave the replicas' list; the others take over when the leases expire");
                }
                held_tx.send_replace(Held::default());
                let _ = done.send(());
                return;
            }
        }
        let leases = coordinator
            .held()
            .keys()
            .filter_map(|&p| {
                let token = coordinator.token(p)?;
                Some((p, (coordinator.held()[&p], token)))
            })
            .collect();
        let now = Held {
            leases,
            hand_over: hand_over.clone(),
            lost,
        };
        held_tx.send_if_modified(|held| {
            let changed = *held != now;
            *held = now;
            changed
        });
    }
}
