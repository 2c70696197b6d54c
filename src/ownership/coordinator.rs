//! One replica's side of ownership, round by round: heartbeat, plan, then renew what it
//! holds, take what it was assigned and report what it must hand over. The caller (the
//! daemon) acts on the report: it restores and starts reading a gained partition, stops at
//! once on a lost one, and for one to hand over writes the final snapshot, then calls
//! [`Coordinator::release`].
//!
//! Rounds should come every third of the lease time or more often, so that two missed
//! rounds still leave the lease held; [`Changes::next_round`] says when the next one is
//! due (sooner when a member or a lease wanted is about to expire: [`super::schedule`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::RedisError;

use super::lease::{Acquired, Holder, Leases};
use super::membership::Membership;
use super::{plan, schedule, Epoch, MemberName};
use crate::partition::PartitionCount;

/// What changed in a round.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Partitions now held, with their epochs: restore and start reading them.
    pub gained: Vec<(u16, Epoch)>,
    /// Partitions whose lease was lost (expired or taken over): stop at once and write
    /// nothing more for them; another member owns them.
    pub lost: Vec<u16>,
    /// Partitions held but assigned to another member: hand them over (final snapshot,
    /// then [`Coordinator::release`]).
    pub hand_over: Vec<u16>,
    /// The live members this round was planned with.
    pub members: BTreeSet<MemberName>,
    /// When the next round is due, from the end of this one.
    pub next_round: Duration,
}

/// One replica's partitions and leases.
#[derive(Debug)]
pub struct Coordinator {
    me: MemberName,
    count: PartitionCount,
    members: Membership,
    leases: Leases,
    held: BTreeMap<u16, Epoch>,
    /// This process's run, taken in the first round.
    run: Option<Holder>,
    /// The most time between rounds: a third of the lease.
    every: Duration,
}

impl Coordinator {
    pub fn new(me: MemberName, count: PartitionCount, members: Membership, leases: Leases) -> Self {
        Self {
            me,
            count,
            members,
            held: BTreeMap::new(),
            run: None,
            every: leases.time() / 3,
            leases,
        }
    }

    pub fn me(&self) -> &MemberName {
        &self.me
    }

    /// The fencing token of `partition` if held (`<member>#<run>:<epoch>`).
    pub fn token(&self, partition: u16) -> Option<String> {
        let epoch = self.held.get(&partition)?;
        Some(self.run.as_ref()?.token(*epoch))
    }

    /// The partitions held, with their epochs, as of the last round.
    pub fn held(&self) -> &BTreeMap<u16, Epoch> {
        &self.held
    }

    /// One round. On an error the round stops where it was; what it learned until then is
    /// kept, and the next round carries on.
    pub async fn round<C: ConnectionLike>(&mut self, conn: &mut C) -> Result<Changes, RedisError> {
        let run = match &self.run {
            Some(run) => run.clone(),
            None => {
                let run = self.leases.new_run(conn, &self.me).await?;
                self.run = Some(run.clone());
                run
            }
        };
        let live = self.members.heartbeat_timed(conn, &self.me).await?;
        let members = live.names();
        let mut changes = Changes::default();
        for (&p, &epoch) in &self.held.clone() {
            if !self.leases.renew(conn, &run, p, epoch).await? {
                self.held.remove(&p);
                changes.lost.push(p);
            }
        }
        let plan = plan(&self.me, &members, self.count, &self.held);
        let mut busy = Vec::new();
        for p in plan.acquire {
            match self.leases.acquire(conn, &run, p).await? {
                Acquired::Held(epoch) => {
                    self.held.insert(p, epoch);
                    changes.gained.push((p, epoch));
                }
                Acquired::Busy(_, ttl_ms) => busy.push(ttl_ms),
            }
        }
        changes.next_round = schedule::next_round(self.every, &self.me, &live, &busy);
        changes.hand_over = plan.release;
        changes.members = members;
        Ok(changes)
    }

    /// Gives up `partition` (after its final snapshot): the next owner takes it at once.
    pub async fn release<C: ConnectionLike>(
        &mut self,
        conn: &mut C,
        partition: u16,
    ) -> Result<(), RedisError> {
        if let (Some(epoch), Some(run)) = (self.held.remove(&partition), &self.run) {
            self.leases.release(conn, run, partition, epoch).await?;
        }
        Ok(())
    }

    /// Leaves the group: releases every partition still held and removes this member from
    /// the list, so the others take over without waiting for expiries.
    pub async fn leave<C: ConnectionLike>(&mut self, conn: &mut C) -> Result<(), RedisError> {
        for p in self.held.keys().copied().collect::<Vec<_>>() {
            self.release(conn, p).await?;
        }
        self.members.leave(conn, &self.me).await?;
        Ok(())
    }
}
