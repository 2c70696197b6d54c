//! Snapshots kept in Redis (`state.store = "redis"`): the same encoded snapshots as the
//! files of [`super::SnapshotDir`], in the Redis churnd reads from, so that replicas share no
//! file system.
//!
//! Keys, for consumer group `G` and partition `p` (with one partition, `p` = 0):
//! - `G:snapshots:{p}`: the index, a sorted set of snapshot names, all with score 0 so that
//!   they sort by name: the names of the files (`e<epoch>-<created_ms>` or `<created_ms>`,
//!   zero-padded), the newest last.
//! - `G:snapshot:{p}:<name>`: a snapshot, a list: its length in bytes
//!   ([`LENGTH_PREFIX`] then the number), then its bytes in pieces of [`CHUNK`] (the last
//!   shorter).
//! - `G:snapshot:{p}:<name>:tmp`: one being written (expires unless a piece comes within
//!   [`TEMP_TTL_MS`]: a writer that died leaves nothing behind for long).
//! - `G:snapshot:{p}:<name>:corrupt`: one that did not decode, set aside for
//!   [`CORRUPT_TTL_MS`].
//!
//! `{p}` is the Redis Cluster hash tag of the partition's streams and lease, so one
//! partition's keys share a slot and its commit is one script: the temporary key renamed
//! into place, added to the index and the oldest beyond `state.keep` deleted, atomically.
//! Under `partitions.ownership = leases` that script first checks that the writer still
//! holds the partition's lease (the fencing check of the effects, [`FENCE_LUA`]): a paused
//! old owner cannot publish a snapshot once its lease is gone.
//!
//! Every call is blocking (`block_on` on the runtime's handle): the snapshot writer and the
//! loaders run on threads of their own, never on the runtime's.

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::RedisResult;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use super::codec::{self, CodecError};
use super::{snapshot_name, Loaded, Location, Rejected, StateError};
use crate::connection::{Connector, RedisConn};
use crate::ownership::lease::FENCE_LUA;

/// Bytes per list element (the last of a snapshot's is shorter): large enough that a snapshot of ten million
/// customers (about 1.2 GB) is a few hundred elements, small enough that one push stays far
/// below Redis's limits on a request and does not hold the server up for long.
pub const CHUNK: usize = 4 << 20;
/// How long a snapshot being written lives without a new piece.
pub const TEMP_TTL_MS: u64 = 10 * 60 * 1000;
/// How long a snapshot that did not decode is kept for inspection.
pub const CORRUPT_TTL_MS: u64 = 7 * 24 * 60 * 60 * 1000;
/// The first element of a snapshot's list: this, then its length in bytes.
pub const LENGTH_PREFIX: &str = "churnd-snapshot-length ";
/// The response timeout of the snapshots' connection, at least: a piece is megabytes.
pub const MIN_RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

/// KEYS: temporary key, snapshot key, index[, lease]. ARGV: name, length element, pieces
/// pushed, keep, prefix of the snapshot keys[, lease token]. Returns 1 when committed, -1
/// when the lease is not the writer's, -2 when the temporary key does not hold the pieces
/// pushed (it expired).
static COMMIT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        r#"
if #KEYS == 4 and not ({FENCE_LUA_4}) then return -1 end
if redis.call('LLEN', KEYS[1]) ~= tonumber(ARGV[3]) then return -2 end
redis.call('LPUSH', KEYS[1], ARGV[2])
redis.call('RENAME', KEYS[1], KEYS[2])
redis.call('PERSIST', KEYS[2])
redis.call('ZADD', KEYS[3], 0, ARGV[1])
local excess = redis.call('ZCARD', KEYS[3]) - tonumber(ARGV[4])
if excess > 0 then
  for _, old in ipairs(redis.call('ZRANGE', KEYS[3], 0, excess - 1)) do
    redis.call('UNLINK', ARGV[5] .. old)
  end
  redis.call('ZREMRANGEBYRANK', KEYS[3], 0, excess - 1)
end
return 1
"#,
        FENCE_LUA_4 = fence_on_4th_key()
    ))
});

/// The lease check of the effects ([`FENCE_LUA`]), on the commit's fourth key and sixth
/// argument.
fn fence_on_4th_key() -> String {
    FENCE_LUA
        .replace("KEYS[1]", "KEYS[4]")
        .replace("ARGV[1]", "ARGV[6]")
}

/// KEYS: index, snapshot key, where to set it aside. ARGV: name, how long to keep it.
static SET_ASIDE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
redis.call('ZREM', KEYS[1], ARGV[1])
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('RENAME', KEYS[2], KEYS[3])
  redis.call('PEXPIRE', KEYS[3], ARGV[2])
end
return 1
"#,
    )
});

/// The connection every partition's snapshots share, and where they are kept.
#[derive(Clone)]
pub struct RedisStore {
    shared: Arc<Shared>,
}

struct Shared {
    connector: tokio::sync::Mutex<Connector>,
    /// The connection made last, while it works.
    conn: Mutex<Option<RedisConn>>,
    runtime: Handle,
    /// Ends the waits for Redis of a load (the daemon's shutdown).
    stop: CancellationToken,
    /// The consumer group: the keys' prefix.
    group: String,
    keep: usize,
    /// Bytes per list element ([`CHUNK`]).
    piece: usize,
    /// Redis's persistence was looked at (once, at the first connection).
    persistence_checked: AtomicBool,
}

impl RedisStore {
    /// Snapshots of consumer group `group` through `connector`'s connections, the newest
    /// `keep` of each partition kept. Must be called within the runtime; its calls must be
    /// made outside it (on a thread of their own or in `spawn_blocking`). A load waits for
    /// Redis until `stop`; a write tries once.
    pub fn new(connector: Connector, group: &str, keep: usize, stop: CancellationToken) -> Self {
        Self {
            shared: Arc::new(Shared {
                connector: tokio::sync::Mutex::new(connector),
                conn: Mutex::new(None),
                runtime: Handle::current(),
                stop,
                group: group.to_owned(),
                keep: keep.max(1),
                piece: CHUNK,
                persistence_checked: AtomicBool::new(false),
            }),
        }
    }

    /// The same store, pushing snapshots in pieces of `bytes` (at least 1): tests that a
    /// snapshot of many pieces reads back whole without writing megabytes. Before any clone.
    pub fn with_piece_size(mut self, bytes: usize) -> Self {
        Arc::get_mut(&mut self.shared)
            .expect("the piece size is set before the store is shared")
            .piece = bytes.max(1);
        self
    }

    /// Partition `partition`'s snapshots.
    pub fn partition(&self, partition: u16) -> RedisSnapshots {
        RedisSnapshots {
            store: self.clone(),
            partition,
            epoch: None,
            fence: None,
        }
    }

    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.shared.runtime.block_on(f)
    }

    /// The connection kept, or a new one: `wait` retries until one is made (or `stop`),
    /// otherwise one attempt.
    async fn conn(&self, wait: bool) -> Result<RedisConn, String> {
        if let Some(conn) = self.lock_conn().clone() {
            return Ok(conn);
        }
        let mut connector = self.shared.connector.lock().await;
        let conn = if wait {
            connector
                .connect(&self.shared.stop)
                .await
                .ok_or_else(|| "shutdown requested while waiting for Redis".to_string())?
        } else {
            let conn = connector.connect_once().await?;
            connector.succeeded();
            conn
        };
        drop(connector);
        *self.lock_conn() = Some(conn.clone());
        if !self
            .shared
            .persistence_checked
            .swap(true, Ordering::Relaxed)
        {
            check_persistence(&mut conn.clone()).await;
        }
        Ok(conn)
    }

    fn lock_conn(&self) -> std::sync::MutexGuard<'_, Option<RedisConn>> {
        self.shared.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `op` on a connection; a failure is counted, logged, and described (the
    /// connection dropped when it is unusable).
    async fn call<T>(
        &self,
        wait: bool,
        op: impl AsyncFnOnce(&mut RedisConn) -> RedisResult<T>,
    ) -> Result<T, String> {
        let mut conn = self.conn(wait).await?;
        match op(&mut conn).await {
            Ok(value) => Ok(value),
            Err(e) => {
                let connector = self.shared.connector.lock().await;
                if connector.failed(&e) {
                    *self.lock_conn() = None;
                }
                Err(connector.describe(&e))
            }
        }
    }
}

/// Looks at Redis's persistence and warns when it keeps nothing on disk: snapshots kept
/// there would not survive its restart. On a cluster every primary is asked (each node has
/// its own settings, and a snapshot lives on the node of its partition's slot). Servers
/// that refuse `CONFIG` (managed services) get a reminder instead.
async fn check_persistence(conn: &mut RedisConn) {
    let get = async |conn: &mut RedisConn, name: &str| -> RedisResult<Vec<(String, String)>> {
        let mut cmd = redis::cmd("CONFIG");
        cmd.arg("GET").arg(name);
        let replies = conn.on_every_primary(&cmd).await?;
        replies
            .into_iter()
            .map(|(node, reply)| {
                let map: std::collections::HashMap<String, String> =
                    redis::from_redis_value(reply)?;
                Ok((node, map.get(name).cloned().unwrap_or_default()))
            })
            .collect()
    };
    let settings = match (get(conn, "appendonly").await, get(conn, "save").await) {
        (Ok(appendonly), Ok(save)) => appendonly
            .into_iter()
            .map(|(node, aof)| {
                let rdb = save
                    .iter()
                    .find(|(n, _)| *n == node)
                    .map(|(_, s)| s.clone());
                (node, aof, rdb.unwrap_or_default())
            })
            .collect::<Vec<_>>(),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(
                error = %crate::connection::describe(&e),
                "cannot read Redis's persistence settings (CONFIG GET refused, as managed services do): \
                 snapshots kept in Redis are only as durable as its persistence; make sure it has \
                 AOF or RDB snapshots on"
            );
            return;
        }
    };
    for (node, appendonly, save) in settings {
        match persistence_warning(&appendonly, &save) {
            Some(warning) => tracing::warn!(node, appendonly, save, "{warning}"),
            None => tracing::info!(
                node,
                appendonly,
                save,
                "snapshots kept in Redis, which persists them to disk"
            ),
        }
    }
}

/// The warning for Redis persistence settings `appendonly` and `save` (as `CONFIG GET`
/// gives them), when they keep nothing on disk.
pub fn persistence_warning(appendonly: &str, save: &str) -> Option<&'static str> {
    let aof = appendonly.trim().eq_ignore_ascii_case("yes");
    let rdb = !save.trim().is_empty();
    (!aof && !rdb).then_some(
        "Redis keeps nothing on disk (appendonly no, save \"\"): the snapshots kept in it \
         (state.store = redis) are lost with the customers they hold when Redis restarts. \
         Turn on AOF (appendonly yes) or RDB snapshots (save), or use state.store = dir",
    )
}

/// Who writes a partition's snapshots under `partitions.ownership = leases`.
#[derive(Clone, Debug)]
struct Fence {
    /// The partition's lease key (its hash tag is the partition's).
    lease: String,
    /// What the lease holds while it is the writer's.
    token: String,
}

/// One partition's snapshots in Redis.
#[derive(Clone)]
pub struct RedisSnapshots {
    store: RedisStore,
    partition: u16,
    /// The ownership epoch named in the snapshots written (see [`super::SnapshotDir`]).
    epoch: Option<u64>,
    fence: Option<Fence>,
}

impl std::fmt::Debug for RedisSnapshots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSnapshots")
            .field("index", &self.index_key())
            .field("epoch", &self.epoch)
            .field("fence", &self.fence)
            .finish()
    }
}

/// Why a load could not finish: Redis did not answer (the load is retried), as opposed to
/// a snapshot that does not decode (set aside).
struct Unreachable(String);

impl RedisSnapshots {
    /// The same partition, the snapshots written from now on named with ownership epoch
    /// `epoch` and committed only while `lease` (a key with the partition's hash tag) holds
    /// `token`.
    pub fn owned(mut self, epoch: u64, lease: String, token: String) -> Self {
        self.epoch = Some(epoch);
        self.fence = Some(Fence { lease, token });
        self
    }

    /// The index key: where this partition's snapshots are listed.
    pub fn index_key(&self) -> String {
        format!(
            "{}:snapshots:{{{}}}",
            self.store.shared.group, self.partition
        )
    }

    /// The prefix of this partition's snapshot keys (then the snapshot's name).
    fn key_prefix(&self) -> String {
        format!(
            "{}:snapshot:{{{}}}:",
            self.store.shared.group, self.partition
        )
    }

    /// The key of snapshot `name`.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.key_prefix())
    }

    /// The names of the snapshots, oldest first.
    pub fn names(&self) -> Result<Vec<String>, StateError> {
        let index = self.index_key();
        self.store
            .block_on(self.store.call(false, async |c| {
                redis::cmd("ZRANGE")
                    .arg(&index)
                    .arg(0)
                    .arg(-1)
                    .query_async(c)
                    .await
            }))
            .map_err(|error| StateError::Redis { key: index, error })
    }

    /// Starts a snapshot under a temporary key, to be written piece by piece; it takes its
    /// place among the snapshots only at [`RedisSnapshotWrite::commit`].
    pub fn create(&self, created_ms: u64) -> RedisSnapshotWrite {
        let name = snapshot_name(self.epoch, created_ms);
        let key = self.key(&name);
        RedisSnapshotWrite {
            snapshots: self.clone(),
            temp: format!("{key}:tmp"),
            key,
            name,
            pending: Vec::new(),
            pieces: 0,
            written: 0,
            done: false,
        }
    }

    /// Writes a snapshot whole.
    pub fn write(&self, bytes: &[u8], created_ms: u64) -> Result<Location, StateError> {
        let mut snapshot = self.create(created_ms);
        snapshot.write(bytes)?;
        snapshot.commit()
    }

    /// The newest snapshot that decodes, and the newer ones that did not (set aside). Waits
    /// for Redis while it does not answer (until the store's `stop`).
    pub fn load_newest(
        &self,
        streams: &[String],
    ) -> Result<(Option<Loaded>, Vec<Rejected>), StateError> {
        let mut rejected = Vec::new();
        loop {
            match self.try_load(streams, &mut rejected) {
                Ok(loaded) => return Ok((loaded, rejected)),
                Err(Unreachable(error)) => {
                    let store = &self.store;
                    let waited = store.block_on(async {
                        store
                            .shared
                            .connector
                            .lock()
                            .await
                            .pause(&store.shared.stop)
                            .await
                    });
                    if !waited {
                        return Err(StateError::Redis {
                            key: self.index_key(),
                            error,
                        });
                    }
                    tracing::warn!(index = %self.index_key(), error, "cannot read the snapshots from Redis; retrying");
                }
            }
        }
    }

    fn try_load(
        &self,
        streams: &[String],
        rejected: &mut Vec<Rejected>,
    ) -> Result<Option<Loaded>, Unreachable> {
        let index = self.index_key();
        let names: Vec<String> = self
            .store
            .block_on(self.store.call(true, async |c| {
                redis::cmd("ZRANGE")
                    .arg(&index)
                    .arg(0)
                    .arg(-1)
                    .query_async(c)
                    .await
            }))
            .map_err(Unreachable)?;
        for name in names.into_iter().rev() {
            let key = self.key(&name);
            let mut reader = Pieces::open(&self.store, &key)?;
            let decoded = match reader.length {
                Err(ref error) => Err(error.clone()),
                Ok(len) => {
                    let result = codec::decode_from(&mut reader, len, streams);
                    if let Some(error) = reader.unreachable.take() {
                        return Err(Unreachable(error));
                    }
                    result
                        .map(|d| (d, len))
                        .map_err(|e: CodecError| e.to_string())
                }
            };
            match decoded {
                Ok((snapshot, bytes)) => {
                    return Ok(Some(Loaded {
                        location: Location::Key(key),
                        bytes,
                        snapshot,
                    }))
                }
                Err(error) => {
                    self.set_aside(&name, &key)?;
                    rejected.push(Rejected {
                        location: Location::Key(key),
                        error,
                    });
                }
            }
        }
        Ok(None)
    }

    /// Takes snapshot `name` out of the index and renames it `<key>:corrupt`.
    fn set_aside(&self, name: &str, key: &str) -> Result<(), Unreachable> {
        let index = self.index_key();
        let aside = format!("{key}:corrupt");
        self.store
            .block_on(self.store.call(true, async |c| {
                SET_ASIDE
                    .key(&index)
                    .key(key)
                    .key(&aside)
                    .arg(name)
                    .arg(CORRUPT_TTL_MS)
                    .invoke_async::<i64>(c)
                    .await
            }))
            .map(drop)
            .map_err(Unreachable)
    }
}

/// A snapshot's list read a piece at a time, as a reader for [`codec::decode_from`]: a
/// snapshot of ten million customers is never held whole (as a file is read through a
/// buffer), only its decoded table and one piece.
struct Pieces<'a> {
    store: &'a RedisStore,
    key: &'a str,
    /// The snapshot's length, or why it has none (missing, not a snapshot's list).
    length: Result<u64, String>,
    /// Elements in the list (the length's, then the pieces).
    elements: i64,
    next: i64,
    piece: Vec<u8>,
    at: usize,
    /// Redis stopped answering while the snapshot was read: the read failed, not the
    /// snapshot.
    unreachable: Option<String>,
}

impl<'a> Pieces<'a> {
    fn open(store: &'a RedisStore, key: &'a str) -> Result<Self, Unreachable> {
        let (first, elements): (Option<String>, i64) = store
            .block_on(store.call(true, async |c| {
                redis::pipe()
                    .cmd("LINDEX")
                    .arg(key)
                    .arg(0)
                    .cmd("LLEN")
                    .arg(key)
                    .query_async(c)
                    .await
            }))
            .map_err(Unreachable)?;
        let length = match first {
            None => Err("the snapshot's key is missing or empty".to_string()),
            Some(first) => first
                .strip_prefix(LENGTH_PREFIX)
                .and_then(|n| n.parse::<u64>().ok())
                .ok_or_else(|| {
                    format!("not a snapshot's list: its first element does not start with {LENGTH_PREFIX:?}")
                }),
        };
        Ok(Self {
            store,
            key,
            length,
            elements,
            next: 1,
            piece: Vec::new(),
            at: 0,
            unreachable: None,
        })
    }
}

impl Read for Pieces<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.at == self.piece.len() {
            if self.next >= self.elements {
                return Ok(0);
            }
            let (key, index) = (self.key, self.next);
            let piece: Option<Vec<u8>> = self
                .store
                .block_on(self.store.call(true, async |c| {
                    redis::cmd("LINDEX")
                        .arg(key)
                        .arg(index)
                        .query_async(c)
                        .await
                }))
                .map_err(|e| {
                    self.unreachable = Some(e.clone());
                    std::io::Error::other(e)
                })?;
            // Gone while being read (pruned by a writer): as truncated.
            let Some(piece) = piece else {
                return Ok(0);
            };
            self.piece = piece;
            self.at = 0;
            self.next += 1;
        }
        let n = buf.len().min(self.piece.len() - self.at);
        buf[..n].copy_from_slice(&self.piece[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// A snapshot being written to Redis. Dropped before [`Self::commit`], its temporary key is
/// deleted (or expires) and the previous snapshots stay as they were.
pub struct RedisSnapshotWrite {
    snapshots: RedisSnapshots,
    name: String,
    key: String,
    temp: String,
    /// Bytes not pushed yet (less than a piece between writes).
    pending: Vec<u8>,
    pieces: u64,
    written: u64,
    /// Committed, or failed for good.
    done: bool,
}

impl RedisSnapshotWrite {
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), StateError> {
        self.pending.extend_from_slice(bytes);
        self.written += bytes.len() as u64;
        let size = self.snapshots.store.shared.piece;
        while self.pending.len() >= size {
            let rest = self.pending.split_off(size);
            let piece = std::mem::replace(&mut self.pending, rest);
            self.push(&piece)?;
        }
        Ok(())
    }

    /// Bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    /// Where it goes.
    pub fn location(&self) -> Location {
        Location::Key(self.key.clone())
    }

    /// Appends `piece` to the temporary key, renewing its expiry.
    fn push(&mut self, piece: &[u8]) -> Result<(), StateError> {
        let store = &self.snapshots.store;
        let temp = &self.temp;
        store
            .block_on(store.call(false, async |c| {
                redis::pipe()
                    .cmd("RPUSH")
                    .arg(temp)
                    .arg(piece)
                    .ignore()
                    .cmd("PEXPIRE")
                    .arg(temp)
                    .arg(TEMP_TTL_MS)
                    .ignore()
                    .query_async::<()>(c)
                    .await
            }))
            .map_err(|error| self.error(error))?;
        self.pieces += 1;
        Ok(())
    }

    /// Pushes what is left, then in one step: renames the snapshot into place, lists it and
    /// deletes the oldest beyond `state.keep` (refused if the partition's lease is no longer
    /// the writer's).
    pub fn commit(mut self) -> Result<Location, StateError> {
        if !self.pending.is_empty() {
            let last = std::mem::take(&mut self.pending);
            self.push(&last)?;
        }
        let snapshots = &self.snapshots;
        let store = &snapshots.store;
        let (index, prefix) = (snapshots.index_key(), snapshots.key_prefix());
        let length = format!("{LENGTH_PREFIX}{}", self.written);
        let (temp, key, name, pieces) = (&self.temp, &self.key, &self.name, self.pieces);
        let fence = snapshots.fence.clone();
        let keep = store.shared.keep;
        let outcome = store
            .block_on(store.call(false, async |c| {
                let mut call = COMMIT.key(temp);
                call.key(key).key(&index);
                if let Some(fence) = &fence {
                    call.key(&fence.lease);
                }
                call.arg(name)
                    .arg(&length)
                    .arg(pieces)
                    .arg(keep)
                    .arg(&prefix);
                if let Some(fence) = &fence {
                    call.arg(&fence.token);
                }
                call.invoke_async::<i64>(c).await
            }))
            .map_err(|error| self.error(error))?;
        match outcome {
            1 => {
                self.done = true;
                Ok(Location::Key(self.key.clone()))
            }
            -1 => Err(self.error(
                "refused: the partition's lease is no longer this replica's (its new owner \
                 writes its snapshots)"
                    .into(),
            )),
            _ => Err(self.error(format!(
                "the pieces written are gone from {} (it expired: more than {} s between \
                 two pieces)",
                self.temp,
                TEMP_TTL_MS / 1000
            ))),
        }
    }

    fn error(&self, error: String) -> StateError {
        StateError::Redis {
            key: self.key.clone(),
            error,
        }
    }
}

impl Drop for RedisSnapshotWrite {
    fn drop(&mut self) {
        if self.done || self.pieces == 0 {
            return;
        }
        // Without waiting (this may be the runtime's thread): it expires otherwise.
        let store = &self.snapshots.store;
        if let Some(mut conn) = store.lock_conn().clone() {
            let temp = std::mem::take(&mut self.temp);
            store.shared.runtime.spawn(async move {
                let _ = conn
                    .req_packed_command(redis::cmd("UNLINK").arg(&temp))
                    .await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redis_that_keeps_nothing_on_disk_is_warned_about() {
        assert!(persistence_warning("no", "").is_some());
        assert!(persistence_warning("no", " ").is_some());
        assert!(persistence_warning("yes", "").is_none());
        assert!(persistence_warning("no", "3600 1 300 100").is_none());
    }

    #[test]
    fn the_commit_checks_the_lease_on_its_own_keys() {
        assert_eq!(fence_on_4th_key(), "redis.call('GET', KEYS[4]) == ARGV[6]");
    }
}
