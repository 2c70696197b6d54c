//! Live members: one sorted set per consumer group, `G:members`, each member scored by the
//! time its entry expires on Redis's clock (ms). A member renews its entry every round; one
//! that stops (dead, partitioned away, paused) drops out of everyone's list once its entry
//! expires, and the first heartbeat after that removes it from the set.

use std::collections::BTreeSet;
use std::sync::LazyLock;
use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::RedisError;

use super::MemberName;

/// KEYS: the members set. ARGV: member, time to live in ms (0: leave). Drops the expired
/// entries, adds or renews (or removes) the caller's, and returns the live members.
static HEARTBEAT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if ARGV[2] == '0' then
  redis.call('ZREM', KEYS[1], ARGV[1])
else
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
end
return redis.call('ZRANGE', KEYS[1], 0, -1)
"#,
    )
});

/// The member list of one consumer group.
#[derive(Debug, Clone)]
pub struct Membership {
    key: String,
    ttl: Duration,
}

impl Membership {
    /// Members of `group`, each listed for `ttl` after its last heartbeat.
    pub fn new(group: &str, ttl: Duration) -> Self {
        Self {
            key: format!("{group}:members"),
            ttl,
        }
    }

    /// The key of the set.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Renews `me`'s entry and returns the live members (`me` among them). Names in the set
    /// that are not valid member names (written by hand) are left out.
    pub async fn heartbeat<C: ConnectionLike>(
        &self,
        conn: &mut C,
        me: &MemberName,
    ) -> Result<BTreeSet<MemberName>, RedisError> {
        let ms = u64::try_from(self.ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        self.call(conn, me, ms).await
    }

    /// Removes `me` from the list at once (a graceful shutdown), returning the others.
    pub async fn leave<C: ConnectionLike>(
        &self,
        conn: &mut C,
        me: &MemberName,
    ) -> Result<BTreeSet<MemberName>, RedisError> {
        self.call(conn, me, 0).await
    }

    async fn call<C: ConnectionLike>(
        &self,
        conn: &mut C,
        me: &MemberName,
        ms: u64,
    ) -> Result<BTreeSet<MemberName>, RedisError> {
        let names: Vec<String> = HEARTBEAT
            .key(&self.key)
            .arg(me.as_str())
            .arg(ms)
            .invoke_async(conn)
            .await?;
        Ok(names
            .iter()
            .filter_map(|n| MemberName::new(n).ok())
            .collect())
    }
}
