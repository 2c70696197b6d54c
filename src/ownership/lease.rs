//! Partition leases in Redis: a key per partition, held by one member at a time, with an
//! expiry that only its holder renews, and an epoch counter that grows with each new holder.
//!
//! Keys, for consumer group `G` and partition `p`: `G:lease:{p}` holds
//! `<member>#<run>:<epoch>` and `G:epoch:{p}` the partition's last epoch. The run tells the
//! processes that bore one member's name apart (`G:runs:<member>` counts them): a replica
//! that restarts takes its earlier run's leases over at once, with new epochs, rather than
//! waiting for them to expire. The `{p}` is the hash tag of the
//! partition's input stream (`churn:events:{p}`), so on a Redis Cluster the lease, the epoch
//! and the stream share a slot and a script can check the lease in the same atomic step as
//! a write to the partition's keys ([`FENCE_LUA`]).
//!
//! Expiry runs on Redis's clock, never on the replicas': a replica whose clock is off
//! neither keeps a lease too long nor loses it early. A holder renews well within the
//! lease time (a third of it); a holder paused longer loses the lease, and once another
//! member took it, its renewal says so and the epoch it holds is stale.

use std::sync::LazyLock;
use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::RedisError;

use super::{Epoch, MemberName};

/// Who takes leases: a member in one of its runs (one process's life).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub member: MemberName,
    pub run: u64,
}

impl Holder {
    /// What a lease holds for this holder at `epoch`: the fencing token writes are checked
    /// against.
    pub fn token(&self, epoch: Epoch) -> String {
        format!("{}#{}:{epoch}", self.member, self.run)
    }
}

/// A condition for Lua scripts that write on behalf of a partition's owner: true when
/// `KEYS[1]` (the lease) is still held by `ARGV[1]`, the writer's [`Holder::token`].
pub const FENCE_LUA: &str = "redis.call('GET', KEYS[1]) == ARGV[1]";

/// KEYS: lease, epoch counter. ARGV: member, lease time in ms, the caller's run, a floor
/// (the next epoch is above it: the counter may have gone back, see
/// [`super::fence`]). Takes a free lease with the next epoch, renews one the caller's run holds, and takes over one
/// held by an earlier run of the same member (a restarted replica: its name is its own)
/// with the next epoch. Never takes one from a later run: a paused old process that wakes
/// up does not steal back what its successor holds. Returns {1, epoch, 0} when the caller
/// holds the lease, {0, "<holder>#<run>:<epoch>", its time to live in ms (PTTL)} when
/// another member or run does.
static ACQUIRE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
local current = redis.call('GET', KEYS[1])
if current then
  local holder, run, epoch = string.match(current, '^(.*)#(%d+):(%d+)$')
  if holder ~= ARGV[1] or tonumber(run) > tonumber(ARGV[3]) then
    return {0, current, redis.call('PTTL', KEYS[1])}
  end
  if run == ARGV[3] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return {1, epoch, 0}
  end
end
local epoch = redis.call('INCR', KEYS[2])
local floor = tonumber(ARGV[4] or '0') or 0
if epoch <= floor then
  epoch = floor + 1
  redis.call('SET', KEYS[2], epoch)
end
redis.call('SET', KEYS[1], ARGV[1] .. '#' .. ARGV[3] .. ':' .. epoch, 'PX', ARGV[2])
return {1, tostring(epoch), 0}
"#,
    )
});

/// KEYS: lease. ARGV: the token (`<member>#<run>:<epoch>`), lease time in ms. Renews the lease if the caller
/// still holds it; 1 if so, 0 if not.
static RENEW: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        "if {FENCE_LUA} then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end return 0"
    ))
});

/// KEYS: lease. ARGV: the token. Deletes the lease if the caller holds it.
static RELEASE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        "if {FENCE_LUA} then redis.call('DEL', KEYS[1]) return 1 end return 0"
    ))
});

/// The outcome of trying to take a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    /// The caller holds the lease with this epoch.
    Held(Epoch),
    /// Another member or run holds it (`<member>#<run>:<epoch>`), for this long at most
    /// unless renewed (Redis's `PTTL`: ms; negative when it has no expiry).
    Busy(String, i64),
}

/// The leases of one consumer group's partitions.
#[derive(Debug, Clone)]
pub struct Leases {
    group: String,
    time: Duration,
}

impl Leases {
    /// Leases of `group`'s partitions, each valid for `time` after its last renewal.
    pub fn new(group: &str, time: Duration) -> Self {
        Self {
            group: group.to_owned(),
            time,
        }
    }

    /// How long a lease lasts without renewal.
    pub fn time(&self) -> Duration {
        self.time
    }

    /// The key of `partition`'s lease.
    pub fn key(&self, partition: u16) -> String {
        format!("{}:lease:{{{partition}}}", self.group)
    }

    fn epoch_key(&self, partition: u16) -> String {
        format!("{}:epoch:{{{partition}}}", self.group)
    }

    fn millis(&self) -> u64 {
        u64::try_from(self.time.as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// A new run of `member`: the next number of `G:runs:<member>`.
    pub async fn new_run<C: ConnectionLike>(
        &self,
        conn: &mut C,
        member: &MemberName,
    ) -> Result<Holder, RedisError> {
        let run: u64 = redis::cmd("INCR")
            .arg(format!("{}:runs:{member}", self.group))
            .query_async(conn)
            .await?;
        Ok(Holder {
            member: member.clone(),
            run,
        })
    }

    /// Takes `partition`'s lease for `me`, or renews it if `me` holds it already.
    pub async fn acquire<C: ConnectionLike>(
        &self,
        conn: &mut C,
        me: &Holder,
        partition: u16,
    ) -> Result<Acquired, RedisError> {
        self.acquire_above(conn, me, partition, Epoch(0)).await
    }

    /// As [`Self::acquire`], a lease taken anew getting an epoch above `floor` (one seen
    /// recorded elsewhere when the partition's counter went back).
    pub async fn acquire_above<C: ConnectionLike>(
        &self,
        conn: &mut C,
        me: &Holder,
        partition: u16,
        floor: Epoch,
    ) -> Result<Acquired, RedisError> {
        let (ok, value, ttl): (u8, String, i64) = ACQUIRE
            .key(self.key(partition))
            .key(self.epoch_key(partition))
            .arg(me.member.as_str())
            .arg(self.millis())
            .arg(me.run)
            .arg(floor.0)
            .invoke_async(conn)
            .await?;
        if ok == 1 {
            let epoch = value.parse().map_err(|_| {
                RedisError::from((
                    redis::ErrorKind::UnexpectedReturnType,
                    "lease epoch is not a number",
                    value.clone(),
                ))
            })?;
            Ok(Acquired::Held(Epoch(epoch)))
        } else {
            Ok(Acquired::Busy(value, ttl))
        }
    }

    /// Renews `me`'s lease of `partition` at `epoch`: `false` when it is no longer held
    /// (expired, or taken by another member since).
    pub async fn renew<C: ConnectionLike>(
        &self,
        conn: &mut C,
        me: &Holder,
        partition: u16,
        epoch: Epoch,
    ) -> Result<bool, RedisError> {
        let n: u8 = RENEW
            .key(self.key(partition))
            .arg(me.token(epoch))
            .arg(self.millis())
            .invoke_async(conn)
            .await?;
        Ok(n == 1)
    }

    /// Gives up `me`'s lease of `partition` at `epoch` so the next owner can take it at
    /// once; `false` when it was no longer held.
    pub async fn release<C: ConnectionLike>(
        &self,
        conn: &mut C,
        me: &Holder,
        partition: u16,
        epoch: Epoch,
    ) -> Result<bool, RedisError> {
        let n: u8 = RELEASE
            .key(self.key(partition))
            .arg(me.token(epoch))
            .invoke_async(conn)
            .await?;
        Ok(n == 1)
    }

    /// Who holds `partition`'s lease now, as `<member>#<run>:<epoch>`.
    pub async fn holder<C: ConnectionLike>(
        &self,
        conn: &mut C,
        partition: u16,
    ) -> Result<Option<String>, RedisError> {
        redis::cmd("GET")
            .arg(self.key(partition))
            .query_async(conn)
            .await
    }
}
