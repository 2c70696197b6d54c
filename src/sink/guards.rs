//! Guard keys: the names under which the sink remembers each written effect's ID, and the
//! move of guards written under the names used before.
//!
//! A guard is `{<stream>}:dedup:<id>`. The braces are a Redis Cluster hash tag: the guard
//! hashes to the slot of its stream (`churn:winback`), so one script call, which writes a
//! stream's entries and their guards, names keys of one slot only. A stream whose name
//! already holds braces keeps `<stream>:dedup:<id>`: a hash tag in the name co-locates the
//! guards by itself, and wrapping a name that contains `}` would change the tag.
//!
//! Before the hash tag, guards were `<stream>:dedup:<id>`, with the same value (the entry ID)
//! and expiry (up to `winback.dedup_ttl_days`, 400 days). So that none of them stops counting,
//! every start of the sink looks for guards under the old names (one `SCAN` of the keyspace,
//! beside the writes) and renames each to its new name, which keeps its expiry. Until that
//! pass has ended, every write checks both names. A pass per start, rather than once, also
//! covers guards written by an older churnd after a newer one ran (a rollback).
//!
//! Old names are only looked for on a single Redis: churnd before the hash tag did not run on
//! a cluster, and a cluster node refuses both the check (a script reading a key of another
//! slot) and the move (a rename across slots). On a node with `cluster_enabled:1` the sink
//! neither checks nor moves old names.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use crate::connection::RedisConn;
use redis::RedisError;
use tokio::sync::watch;

/// The longest wait before a failed pass starts again.
const MAX_RETRY: Duration = Duration::from_secs(300);

/// Keys this many at a time per `SCAN` step: a step costs Redis well under a millisecond.
const SCAN_COUNT: usize = 1_000;

/// Keys that may be guards under an old name: `:dedup:` inside, and not starting with `{`
/// (every new name does, except those of streams with braces, which are not moved).
const OLD_NAME_PATTERN: &str = "[^{]*:dedup:*";

/// KEYS: n guards under their old names, then the same n under their new names. Renames
/// each that still exists (keeping its expiry), or drops it when the new name is taken
/// already. Returns how many were renamed.
static MOVE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
local n = #KEYS / 2
local moved = 0
for i = 1, n do
  local old, new = KEYS[i], KEYS[n + i]
  if redis.call('EXISTS', old) == 1 then
    if redis.call('EXISTS', new) == 1 then
      redis.call('DEL', old)
    else
      redis.call('RENAME', old, new)
      moved = moved + 1
    end
  end
end
return moved
"#,
    )
});

/// A key in `stream`'s Redis Cluster slot: `{stream}:<rest>`, or `stream:<rest>` when the
/// name holds braces (its own hash tag co-locates the key already).
pub(crate) fn beside(stream: &str, rest: &str) -> String {
    if stream.contains(['{', '}']) {
        format!("{stream}:{rest}")
    } else {
        format!("{{{stream}}}:{rest}")
    }
}

/// The prefix of the guard keys of `stream`'s entries: `{stream}:dedup:`, or `stream:dedup:`
/// when the name holds braces.
pub(crate) fn guard_prefix(stream: &str) -> String {
    beside(stream, "dedup:")
}

/// The prefix `stream`'s guards had before the hash tag, when it differs from the current one.
pub(crate) fn old_guard_prefix(stream: &str) -> Option<String> {
    let old = format!("{stream}:dedup:");
    (old != guard_prefix(stream)).then_some(old)
}

/// Whether writes must still check the old guard names, shared by the sink and the pass that
/// moves them.
#[derive(Clone)]
pub(crate) struct OldNames(Arc<AtomicBool>);

impl OldNames {
    /// Checked until a pass over the keyspace has moved every old name.
    pub fn pending() -> Self {
        Self(Arc::new(AtomicBool::new(true)))
    }

    pub(crate) fn pending_check(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    /// No more checks: the old names are moved, or cannot exist (a cluster).
    pub fn settled(&self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Whether churnd talks to a Redis Cluster: `redis.mode = "cluster"`, or a server that says
/// it is a cluster node (one that does not answer `INFO`, as some ACLs have it, is taken for
/// a single Redis).
pub(crate) async fn is_cluster(conn: &mut RedisConn) -> bool {
    if conn.is_cluster() {
        return true;
    }
    let info: Result<String, RedisError> =
        redis::cmd("INFO").arg("cluster").query_async(conn).await;
    info.is_ok_and(|info| info.lines().any(|l| l.trim() == "cluster_enabled:1"))
}

/// Renames the guards of `streams` found under their old names, on the sink's current
/// connection (`conns`), then clears `old_names`. Runs until done or until the sink drops
/// `conns`; a failed step starts the pass again from the beginning of the keyspace (a
/// `SCAN` cursor does not survive a restart of Redis, and renamed keys are not found twice).
pub(crate) async fn move_old_names(
    streams: Vec<String>,
    old_names: OldNames,
    mut conns: watch::Receiver<Option<RedisConn>>,
) {
    // (old prefix, new prefix), longest old prefix first: `a:b:dedup:` before `a:dedup:`
    // cannot be confused anyway, but a stream named like another's guards could.
    let mut prefixes: Vec<(String, String)> = streams
        .iter()
        .filter_map(|s| old_guard_prefix(s).map(|old| (old, guard_prefix(s))))
        .collect();
    prefixes.sort_unstable_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.cmp(b)));
    prefixes.dedup();
    if prefixes.is_empty() {
        old_names.settled();
        return;
    }
    let started = Instant::now();
    let mut moved = 0u64;
    let mut backoff = Duration::from_secs(1);
    loop {
        let Some(mut conn) = current(&mut conns).await else {
            return;
        };
        if !old_names.pending_check() {
            // The sink found a cluster.
            return;
        }
        match pass(&mut conn, &prefixes, &mut moved).await {
            Ok(()) => break,
            Err(e) => {
                // Writes go on meanwhile, checking both names (correct, a little dearer); a
                // server that refuses SCAN or RENAME to this user keeps it so.
                tracing::warn!(error = %e, retry_in = ?backoff, "moving guard keys to their hash-tagged names failed; writes check the old names too until it succeeds");
                // A new connection, or the same one after the backoff.
                let _ = tokio::time::timeout(backoff, conns.changed()).await;
                backoff = (backoff * 2).min(MAX_RETRY);
            }
        }
    }
    old_names.settled();
    if moved > 0 {
        tracing::info!(
            moved,
            seconds = started.elapsed().as_secs_f64(),
            "guard keys written under their old names now have hash-tagged names"
        );
    } else {
        tracing::debug!(
            seconds = started.elapsed().as_secs_f64(),
            "no guard keys under old names"
        );
    }
}

/// The sink's connection once it has one; `None` when the sink is gone.
async fn current(conns: &mut watch::Receiver<Option<RedisConn>>) -> Option<RedisConn> {
    loop {
        if let Some(c) = conns.borrow_and_update().clone() {
            return Some(c);
        }
        conns.changed().await.ok()?;
    }
}

/// One `SCAN` of the whole keyspace, renaming what it finds.
async fn pass(
    conn: &mut RedisConn,
    prefixes: &[(String, String)],
    moved: &mut u64,
) -> Result<(), RedisError> {
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(OLD_NAME_PATTERN)
            .arg("COUNT")
            .arg(SCAN_COUNT)
            .query_async(conn)
            .await?;
        let renames: Vec<(Vec<u8>, Vec<u8>)> = keys
            .into_iter()
            .filter_map(|key| {
                let (old, new) = prefixes
                    .iter()
                    .find(|(old, _)| key.starts_with(old.as_bytes()))?;
                let mut renamed = new.as_bytes().to_vec();
                renamed.extend_from_slice(&key[old.len()..]);
                Some((key, renamed))
            })
            .collect();
        if !renames.is_empty() {
            let mut invocation = MOVE.prepare_invoke();
            for (old, _) in &renames {
                invocation.key(old.as_slice());
            }
            for (_, new) in &renames {
                invocation.key(new.as_slice());
            }
            let n: u64 = invocation.invoke_async(conn).await?;
            *moved += n;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_are_hash_tagged_on_their_stream_unless_its_name_has_braces() {
        assert_eq!(guard_prefix("churn:winback"), "{churn:winback}:dedup:");
        assert_eq!(
            old_guard_prefix("churn:winback").as_deref(),
            Some("churn:winback:dedup:")
        );
        // A name with its own hash tag keeps the old form, which shares that tag.
        assert_eq!(guard_prefix("{shop}:winback"), "{shop}:winback:dedup:");
        assert_eq!(old_guard_prefix("{shop}:winback"), None);
        assert_eq!(guard_prefix("odd}name"), "odd}name:dedup:");
    }

    #[test]
    fn the_scan_pattern_excludes_new_names() {
        let new = guard_prefix("crm:tasks");
        assert!(new.starts_with('{'));
        assert!(!OLD_NAME_PATTERN.starts_with('{'));
    }
}
