//! Fence records: how the output streams refuse the writes of a partition's previous owner,
//! on a Redis Cluster too.
//!
//! A replica writes the effects of its partitions into output streams every partition
//! shares (`churn:winback`, `churn:events:dlq`, …). On a single Redis the effects script
//! checks the partitions' leases themselves; on a cluster a lease (`G:lease:{p}`) sits in
//! its partition's slot and each output stream in a slot of its own, out of the script's
//! reach. So each output stream keeps beside it, in its slot, a hash
//! `{<stream>}:fence:<G>`: per partition, the token of its newest owner
//! (`<member>#<run>:<epoch>`). An owner raises its token there, in every output stream,
//! before it reads the partition and again every ownership round; the effects script writes
//! only while every partition of the call still shows the writer's token.
//!
//! The new owner's raise is what shuts the old one out. After it nothing the old owner sends
//! goes in; before it the new owner has read nothing, so a write of the old one then is one
//! it could have made just before its lease ended, which the new owner's replay makes again
//! and the guards keep once.
//!
//! A raise never lowers an epoch: a token below the recorded one (an owner paused between
//! taking the lease and raising, overtaken meanwhile) is refused, and so is another holder's
//! token at the same epoch, which happens only when a partition's epoch counter went back (a
//! Redis that lost writes: a failover before they were replicated, a restore from an older
//! backup). The replica then gives the lease up and takes it again above the recorded epoch
//! ([`super::coordinator`]).

use std::collections::BTreeMap;
use std::sync::LazyLock;

use redis::aio::ConnectionLike;
use redis::RedisError;

use super::lease::Holder;
use super::Epoch;
use crate::sink::guards::beside;

/// KEYS[1]: a fence record. ARGV: triples of partition, token, epoch. Records each token
/// unless the record holds another token at the same or a later epoch; returns those
/// partitions, each followed by the token recorded.
static RAISE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
local refused = {}
for i = 1, #ARGV, 3 do
  local p, token, epoch = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local current = redis.call('HGET', KEYS[1], p)
  if current ~= token then
    local recorded = current and tonumber(string.match(current, ':(%d+)$'))
    if recorded and recorded >= epoch then
      table.insert(refused, p)
      table.insert(refused, current)
    else
      redis.call('HSET', KEYS[1], p, token)
    end
  end
end
return refused
"#,
    )
});

/// The fence records of one consumer group's output streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fences {
    keys: Vec<String>,
}

impl Fences {
    /// The records of `group` beside each of `streams`.
    pub fn new<'a>(group: &str, streams: impl IntoIterator<Item = &'a str>) -> Self {
        let mut keys: Vec<String> = streams.into_iter().map(|s| key(group, s)).collect();
        keys.sort_unstable();
        keys.dedup();
        Self { keys }
    }

    pub fn keys(&self) -> &[String] {
        &self.keys
    }

    /// Records `holder`'s token for each of `partitions` (at its epoch) in every record.
    /// Returns the partitions refused somewhere, each with the highest epoch recorded for it
    /// by another holder: above it, the lease must be taken again.
    pub async fn raise<C: ConnectionLike>(
        &self,
        conn: &mut C,
        holder: &Holder,
        partitions: &BTreeMap<u16, Epoch>,
    ) -> Result<BTreeMap<u16, Epoch>, RedisError> {
        let mut refused: BTreeMap<u16, Epoch> = BTreeMap::new();
        if partitions.is_empty() {
            return Ok(refused);
        }
        for key in &self.keys {
            let mut call = RAISE.key(key);
            for (&p, &epoch) in partitions {
                call.arg(p).arg(holder.token(epoch)).arg(epoch.0);
            }
            let reply: Vec<String> = call.invoke_async(conn).await?;
            for (p, token) in refusals(&reply) {
                let e = refused.entry(p).or_insert(token);
                *e = (*e).max(token);
            }
        }
        Ok(refused)
    }
}

/// The fence record of `group`'s partitions beside `stream`, in its Redis Cluster slot.
pub fn key(group: &str, stream: &str) -> String {
    beside(stream, &format!("fence:{group}"))
}

/// The epoch of a token, `<member>#<run>:<epoch>`.
pub fn epoch_of(token: &str) -> Option<Epoch> {
    let (_, epoch) = token.rsplit_once(':')?;
    epoch.parse().ok().map(Epoch)
}

/// [`RAISE`]'s reply: partition and recorded token pairs, as partitions and epochs (a pair
/// that does not read as one is skipped: the script only returns what it parsed).
fn refusals(reply: &[String]) -> impl Iterator<Item = (u16, Epoch)> + '_ {
    reply
        .chunks(2)
        .filter_map(|pair| Some((pair.first()?.parse().ok()?, epoch_of(pair.get(1)?)?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_sits_in_its_streams_slot() {
        assert_eq!(
            key("churnd", "churn:winback"),
            "{churn:winback}:fence:churnd"
        );
        assert_eq!(key("g", "crm:{tasks}"), "crm:{tasks}:fence:g");
        let fences = Fences::new("g", ["b", "a", "b"]);
        assert_eq!(fences.keys(), ["{a}:fence:g", "{b}:fence:g"]);
    }

    #[test]
    fn a_refusal_reads_as_the_partition_and_the_epoch_recorded() {
        let reply: Vec<String> = ["3", "churnd-1#2:17", "x", "a#1:2", "4", "no-epoch"]
            .map(String::from)
            .into();
        assert_eq!(refusals(&reply).collect::<Vec<_>>(), [(3, Epoch(17))]);
        assert_eq!(epoch_of("churnd-0#4:9"), Some(Epoch(9)));
        assert_eq!(epoch_of("junk"), None);
    }
}
