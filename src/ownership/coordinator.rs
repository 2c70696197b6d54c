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

use super::fence::Fences;
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
    /// Partitions whose fences record another holder at this replica's epoch or later:
    /// their leases were given up, to be taken again above that epoch.
    pub conflicts: Vec<u16>,
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
    /// The output streams' fence records, raised for every partition held each round.
    fences: Option<Fences>,
    /// Per partition, an epoch seen recorded by another holder at or above the one this
    /// replica took: its lease is taken again above it.
    floors: BTreeMap<u16, Epoch>,
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
            fences: None,
            floors: BTreeMap::new(),
        }
    }

    /// The same, raising this replica's token in `fences` for each partition it holds
    /// before it reports it gained, and again every round ([`super::fence`]).
    pub fn fencing(self, fences: Fences) -> Self {
        Self {
            fences: Some(fences),
            ..self
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
        let mut taken = BTreeMap::new();
        for p in plan.acquire {
            let floor = self.floors.get(&p).copied().unwrap_or(Epoch(0));
            match self.leases.acquire_above(conn, &run, p, floor).await? {
                Acquired::Held(epoch) => {
                    taken.insert(p, epoch);
                }
                Acquired::Busy(_, ttl_ms) => busy.push(ttl_ms),
            }
        }
        // A partition taken counts as held only once its fences are raised: until then
        // its previous owner's writes still go in, so nothing of it may be read.
        let refused = self.raise_fences(conn, &run, &taken).await?;
        for (p, epoch) in taken {
            if !refused.contains(&p) {
                self.floors.remove(&p);
                self.held.insert(p, epoch);
                changes.gained.push((p, epoch));
            }
        }
        for &p in &refused {
            if self.held.remove(&p).is_some() {
                changes.lost.push(p);
            }
        }
        changes.conflicts = refused;
        changes.next_round = schedule::next_round(self.every, &self.me, &live, &busy);
        // (Not those just given up for a conflict.)
        changes.hand_over = plan
            .release
            .into_iter()
            .filter(|p| self.held.contains_key(p))
            .collect();
        changes.members = members;
        Ok(changes)
    }

    /// Raises the fences of the partitions held and `taken`; gives up the leases of those
    /// refused (another holder recorded at the same or a later epoch) and returns them.
    async fn raise_fences<C: ConnectionLike>(
        &mut self,
        conn: &mut C,
        run: &Holder,
        taken: &BTreeMap<u16, Epoch>,
    ) -> Result<Vec<u16>, RedisError> {
        let Some(fences) = &self.fences else {
            return Ok(Vec::new());
        };
        let mut all = self.held.clone();
        all.extend(taken);
        let refused = fences.raise(conn, run, &all).await?;
        for (&p, &recorded) in &refused {
            let epoch = all[&p];
            tracing::warn!(
                partition = p,
                %epoch,
                %recorded,
                "a partition's fence records another owner at this epoch or later: giving its lease up to take it again above (Redis lost writes, or this replica was overtaken)"
            );
            self.floors.insert(p, recorded);
            self.leases.release(conn, run, p, epoch).await?;
        }
        Ok(refused.into_keys().collect())
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
