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

/// KEYS: the members set. ARGV: member, time to live in ms (0: leave). Drops the expired
/// entries, adds or renews (or removes) the caller's, and returns Redis's time (ms) followed
/// by the live members, each with when its entry expires (ms, Redis's clock).
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
local live = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
table.insert(live, 1, tostring(now))
return live
"#,
    )
});

/// KEYS: the addresses hash. ARGV: member, its URL (empty: none, or leaving), then the live
/// members. Sets or removes the caller's URL and drops those of members no longer live.
/// Apart from [`HEARTBEAT`] because on a Redis Cluster the two keys sit in different slots;
/// an address outliving its member a moment is harmless (a request is passed on to a
/// partition's lease holder only).
static ADDRESSES: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
local live = {}
for i = 3, #ARGV do
  live[ARGV[i]] = true
end
for _, m in ipairs(redis.call('HKEYS', KEYS[1])) do
  if not live[m] and m ~= ARGV[1] then
    redis.call('HDEL', KEYS[1], m)
  end
end
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
return 1
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
        Ok(self.heartbeat_timed(conn, me).await?.names())
    }

    /// As [`Self::heartbeat`], with when each member's entry expires: what tells a survivor
    /// the earliest moment a dead member drops out.
    pub async fn heartbeat_timed<C: ConnectionLike>(
        &self,
        conn: &mut C,
        me: &MemberName,
    ) -> Result<Live, RedisError> {
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
        Ok(self.call(conn, me, 0).await?.names())
    }

    async fn call<C: ConnectionLike>(
        &self,
        conn: &mut C,
        me: &MemberName,
        ms: u64,
    ) -> Result<Live, RedisError> {
        let reply: Vec<String> = HEARTBEAT
            .key(&self.key)
            .arg(me.as_str())
            .arg(ms)
            .invoke_async(conn)
            .await?;
        let url = if ms == 0 {
            ""
        } else {
            self.url.as_deref().unwrap_or("")
        };
        let mut addresses = ADDRESSES.key(&self.addresses);
        addresses.arg(me.as_str()).arg(url);
        for name in reply.iter().skip(1).step_by(2) {
            addresses.arg(name);
        }
        let _: i64 = addresses.invoke_async(conn).await?;
        Ok(Live::parse(&reply))
    }
}

/// The live members as one heartbeat found them, on Redis's clock.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Live {
    /// Redis's time when the heartbeat ran (ms since the epoch).
    pub now_ms: u64,
    /// Each live member with when its entry expires (ms, Redis's clock).
    pub expiries: Vec<(MemberName, u64)>,
}

impl Live {
    /// The members' names.
    pub fn names(&self) -> BTreeSet<MemberName> {
        self.expiries.iter().map(|(m, _)| m.clone()).collect()
    }

    /// From the script's reply: the time, then name and score pairs. Names that are not
    /// valid member names (written by hand) are left out; a score that is not a number
    /// counts as expiring now (an extra round comes soon, not never).
    fn parse(reply: &[String]) -> Self {
        // Lua may print a number in exponent form: read it as a float.
        let ms = |s: &String| {
            s.parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .map(|v| v as u64)
        };
        let now_ms = reply.first().and_then(ms).unwrap_or(0);
        let expiries = reply
            .get(1..)
            .unwrap_or_default()
            .chunks(2)
            .filter_map(|pair| {
                let name = MemberName::new(pair.first()?).ok()?;
                let score = pair.get(1).and_then(ms).unwrap_or(now_ms);
                Some((name, score))
            })
            .collect();
        Self { now_ms, expiries }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_heartbeat_reply_reads_as_the_time_and_each_members_expiry() {
        let live = Live::parse(&strings(&[
            "1.76e+12",
            "churnd-0",
            "1760000010000",
            "bad name",
            "5",
            "churnd-1",
            "nan",
        ]));
        assert_eq!(live.now_ms, 1_760_000_000_000);
        let names: Vec<_> = live
            .expiries
            .iter()
            .map(|(m, e)| (m.as_str(), *e))
            .collect();
        assert_eq!(
            names,
            vec![
                ("churnd-0", 1_760_000_010_000),
                ("churnd-1", 1_760_000_000_000)
            ]
        );
        assert_eq!(live.names().len(), 2);
        assert_eq!(Live::parse(&[]), Live::default());
    }
}
