//! Live members: one sorted set per consumer group, `G:members`, each member scored by the
//! time its entry expires on Redis's clock (ms). A member renews its entry every round; one
//! that stops (dead, partitioned away, paused) drops out of everyone's list once its entry
//! expires, and the first heartbeat after that removes it from the set.
//!
//! Beside it, the hash `G:addresses` holds the URL where each live member serves its HTTP
//! API (`partitions.advertise_url`), written with every heartbeat and dropped with the
//! member's entry, so that any replica can pass a request on to a partition's owner.

use std::collections::BTreeSet;
use std::sync::LazyLock;
use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::RedisError;

use super::MemberName;

/// KEYS: the members set, the addresses hash. ARGV: member, time to live in ms (0: leave),
/// the member's URL (empty: none). Drops the expired entries and their addresses, adds or
/// renews (or removes) the caller's, and returns the live members.
static HEARTBEAT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for _, m in ipairs(expired) do
  redis.call('ZREM', KEYS[1], m)
  redis.call('HDEL', KEYS[2], m)
end
if ARGV[2] == '0' then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
else
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
  if ARGV[3] ~= '' then
    redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
  end
end
return redis.call('ZRANGE', KEYS[1], 0, -1)
"#,
    )
});

/// The member list of one consumer group.
#[derive(Debug, Clone)]
pub struct Membership {
    key: String,
    /// `G:addresses`: member → the URL of its HTTP API.
    addresses: String,
    ttl: Duration,
    /// The URL this member publishes with its heartbeats; `None`: none.
    url: Option<String>,
}

impl Membership {
    /// Members of `group`, each listed for `ttl` after its last heartbeat.
    pub fn new(group: &str, ttl: Duration) -> Self {
        Self {
            key: format!("{group}:members"),
            addresses: Self::addresses_key(group),
            ttl,
            url: None,
        }
    }

    /// The same list, this member publishing `url` as where its HTTP API is reached.
    pub fn advertising(self, url: impl Into<String>) -> Self {
        Self {
            url: Some(url.into()),
            ..self
        }
    }

    /// The key of the hash of the members' URLs of `group`.
    pub fn addresses_key(group: &str) -> String {
        format!("{group}:addresses")
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
            .key(&self.addresses)
            .arg(me.as_str())
            .arg(ms)
            .arg(self.url.as_deref().unwrap_or(""))
            .invoke_async(conn)
            .await?;
        Ok(names
            .iter()
            .filter_map(|n| MemberName::new(n).ok())
            .collect())
    }
}
