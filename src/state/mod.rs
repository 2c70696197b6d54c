//! Durable customer state: snapshot files in `state.dir`, or keys in Redis
//! (`state.store = "redis"`, [`redis_store`]), behind one type, [`SnapshotStore`].
//!
//! A snapshot is written to a temporary name, fsynced, renamed into place and the directory
//! fsynced, so a crash leaves either the old set of snapshots or the new one, never a torn
//! file under a snapshot's name. The newest few are kept; on start the newest that decodes
//! is loaded, and one that does not (truncated, flipped bytes, another format) is reported,
//! renamed aside with a `.corrupt` suffix and the next older one is tried.

pub mod codec;
#[cfg(test)]
mod golden;
pub mod redis_store;

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use codec::{CodecError, Decoded, Encoder};
use redis_store::{RedisSnapshotWrite, RedisSnapshots};

use crate::engine::{Customer, Engine, Extras, StateHeader};
use crate::features::store::{CaptureSize, Captured};

const PREFIX: &str = "snapshot-";
const SUFFIX: &str = ".bin";
const TEMP_SUFFIX: &str = ".tmp";
const CORRUPT_SUFFIX: &str = ".corrupt";
/// Customers copied out of the engine per step of a snapshot: a step takes a fraction of a
/// millisecond (the pause of event processing it makes), and a snapshot of ten million
/// customers about six hundred of them.
pub const SLICE_CUSTOMERS: usize = 16_384;
/// Pieces of a snapshot reach the disk in writes of this size.
const WRITE_BUFFER: usize = 1 << 20;
/// Writeback of a snapshot is started every this many bytes, so that the disk takes it as
/// it comes rather than in one burst at the final fsync (a burst of a gigabyte stalls every
/// process on a VM whose disk the host serves, Redis and the engine included).
const WRITEBACK_EVERY: u64 = 8 << 20;

/// Starts writing the file's dirty pages to disk without waiting for them (Linux; a no-op
/// elsewhere: the final fsync writes everything either way).
fn start_writeback(file: &File) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: a valid open descriptor; offset 0 and length 0 mean the whole file, and
        // SYNC_FILE_RANGE_WRITE only starts writeback of pages not yet under it.
        let rc =
            unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = file;
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "state directory {dir}: {source}; check state.dir and that the volume is mounted writable"
    )]
    Dir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write snapshot {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("snapshot {location} not written: {source}")]
    Encode {
        location: Location,
        source: CodecError,
    },
    #[error("snapshot in Redis, key {key}: {error}; check redis.url and that Redis takes writes")]
    Redis { key: String, error: String },
}

/// Where a snapshot is (or a store's snapshots are): a file (a directory), or a Redis key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    File(PathBuf),
    Key(String),
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(path) => path.display().fmt(f),
            Self::Key(key) => write!(f, "Redis key {key}"),
        }
    }
}

/// A snapshot that could not be used, and why.
#[derive(Debug)]
pub struct Rejected {
    pub location: Location,
    pub error: String,
}

/// What [`SnapshotStore::load_newest`] found.
pub struct Loaded {
    pub location: Location,
    pub bytes: u64,
    pub snapshot: Decoded,
}

/// A snapshot's name, the same in either store: sorted by name, the newest is the last
/// (`e<epoch>-<created_ms>` under leases: after every earlier epoch's and every name
/// without one, whatever the clocks).
fn snapshot_name(epoch: Option<u64>, created_ms: u64) -> String {
    match epoch {
        Some(epoch) => format!("e{epoch:010}-{created_ms:020}"),
        None => format!("{created_ms:020}"),
    }
}

/// Where one partition's snapshots are kept: files in a directory, or keys in Redis.
#[derive(Debug, Clone)]
pub enum SnapshotStore {
    Dir(SnapshotDir),
    Redis(RedisSnapshots),
}

impl From<SnapshotDir> for SnapshotStore {
    fn from(dir: SnapshotDir) -> Self {
        Self::Dir(dir)
    }
}

impl From<&SnapshotDir> for SnapshotStore {
    fn from(dir: &SnapshotDir) -> Self {
        Self::Dir(dir.clone())
    }
}

impl From<&SnapshotStore> for SnapshotStore {
    fn from(store: &SnapshotStore) -> Self {
        store.clone()
    }
}

impl SnapshotStore {
    /// The directory, or the Redis key that lists the snapshots.
    pub fn location(&self) -> Location {
        match self {
            Self::Dir(dir) => Location::File(dir.dir().to_owned()),
            Self::Redis(redis) => Location::Key(redis.index_key()),
        }
    }

    /// The same store, the snapshots written from now on named with ownership epoch `epoch`
    /// and, in Redis, committed only while `lease` holds `token` (see
    /// [`RedisSnapshots::owned`]).
    pub fn owned(self, epoch: u64, lease: String, token: String) -> Self {
        match self {
            Self::Dir(dir) => Self::Dir(dir.with_epoch(epoch)),
            Self::Redis(redis) => Self::Redis(redis.owned(epoch, lease, token)),
        }
    }

    /// Starts a snapshot, to be written piece by piece; it takes its place among the
    /// snapshots only at [`SnapshotOut::commit`].
    pub fn create(&self, created_ms: u64) -> Result<SnapshotOut, StateError> {
        match self {
            Self::Dir(dir) => dir.create(created_ms).map(SnapshotOut::File),
            Self::Redis(redis) => Ok(SnapshotOut::Redis(redis.create(created_ms))),
        }
    }

    /// Writes a snapshot atomically, then prunes older ones.
    pub fn write(&self, bytes: &[u8], created_ms: u64) -> Result<Location, StateError> {
        let mut out = self.create(created_ms)?;
        out.write(bytes)?;
        out.commit()
    }

    /// The newest snapshot that decodes, and the newer ones that did not (set aside).
    pub fn load_newest(
        &self,
        streams: &[String],
    ) -> Result<(Option<Loaded>, Vec<Rejected>), StateError> {
        match self {
            Self::Dir(dir) => dir.load_newest(streams),
            Self::Redis(redis) => redis.load_newest(streams),
        }
    }
}

/// A snapshot being written, to a file or to Redis.
pub enum SnapshotOut {
    File(SnapshotFile),
    Redis(RedisSnapshotWrite),
}

impl SnapshotOut {
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), StateError> {
        match self {
            Self::File(file) => file.write(bytes),
            Self::Redis(redis) => redis.write(bytes),
        }
    }

    fn bytes_written(&self) -> u64 {
        match self {
            Self::File(file) => file.bytes_written(),
            Self::Redis(redis) => redis.bytes_written(),
        }
    }

    fn location(&self) -> Location {
        match self {
            Self::File(file) => Location::File(file.path.clone()),
            Self::Redis(redis) => redis.location(),
        }
    }

    /// Makes the snapshot durable under its name (as durable as the store), then prunes
    /// older ones.
    pub fn commit(self) -> Result<Location, StateError> {
        match self {
            Self::File(file) => file.commit().map(Location::File),
            Self::Redis(redis) => redis.commit(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SnapshotDir {
    dir: PathBuf,
    keep: usize,
    /// The ownership epoch of the partition whose snapshots these are, under
    /// `partitions.ownership = leases`: written into the names, before the time, so that
    /// the snapshots of a later owner sort after an earlier owner's whatever the two
    /// machines' clocks say (and after the names without an epoch).
    epoch: Option<u64>,
}

/// A snapshot being written. Dropped before [`Self::commit`], it removes its temporary file
/// and the previous snapshots stay as they were.
pub struct SnapshotFile {
    dir: SnapshotDir,
    path: PathBuf,
    temp: PathBuf,
    /// `None` once committed.
    file: Option<BufWriter<File>>,
    written: u64,
    /// Bytes handed to the kernel with writeback started.
    flushed: u64,
    /// The kernel refused to start writeback early (said once).
    hint_refused: bool,
}

impl SnapshotFile {
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), StateError> {
        let Some(file) = &mut self.file else {
            return Ok(());
        };
        let mut result = file.write_all(bytes);
        self.written += bytes.len() as u64;
        if result.is_ok() && self.written - self.flushed >= WRITEBACK_EVERY {
            result = file.flush();
            // Only a hint: where it is refused (some sandboxes and FUSE file systems), the
            // final fsync writes everything all the same.
            if let Err(e) = start_writeback(file.get_ref()) {
                if !self.hint_refused {
                    tracing::debug!(error = %e, "cannot start writeback early; the final fsync will write the snapshot");
                    self.hint_refused = true;
                }
            }
            self.flushed = self.written;
        }
        result.map_err(|e| self.error(e))
    }

    /// Bytes written so far.
    pub(crate) fn bytes_written(&self) -> u64 {
        self.written
    }

    /// Makes the snapshot durable under its name (flush, fsync, rename, fsync of the
    /// directory), then prunes older ones.
    pub(crate) fn commit(mut self) -> Result<PathBuf, StateError> {
        let Some(file) = self.file.take() else {
            return Ok(self.path.clone());
        };
        // The rename puts the snapshot in place; the directory's fsync makes that durable. If
        // only the latter fails the snapshot counts as failed (a crash may lose it), though
        // the file stays: should it survive, it is a good snapshot.
        let result = (|| {
            let file = file.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            drop(file);
            fs::rename(&self.temp, &self.path)?;
            File::open(&self.dir.dir)?.sync_all()
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&self.temp);
            return Err(self.error(e));
        }
        self.dir.prune();
        Ok(self.path.clone())
    }

    fn error(&self, source: std::io::Error) -> StateError {
        StateError::Write {
            path: self.path.clone(),
            source,
        }
    }
}

/// A snapshot written piece by piece as its customers are copied out of the engine.
pub(crate) struct SnapshotWriter {
    file: SnapshotOut,
    encoder: Encoder,
    buffer: Vec<u8>,
}

impl SnapshotWriter {
    /// Creates the file and writes everything before the customers.
    pub fn start(
        store: &SnapshotStore,
        header: &StateHeader,
        size: CaptureSize,
        streams: &[String],
        created_ms: u64,
    ) -> Result<Self, StateError> {
        let mut buffer = Vec::new();
        let encoder = Encoder::start(header, size, streams, created_ms, &mut buffer);
        let mut file = store.create(created_ms)?;
        file.write(&buffer)?;
        Ok(Self {
            file,
            encoder,
            buffer,
        })
    }

    /// Encodes and writes the next customers, [`SLICE_CUSTOMERS`] at a time: a slice that is
    /// the rest of a table (copied at once, see `features::store::capture`) never becomes one
    /// buffer.
    pub fn append(&mut self, slice: &Captured<Customer, Extras>) -> Result<(), StateError> {
        let mut customers = slice.iter();
        loop {
            self.buffer.clear();
            self.encoder
                .customers(customers.by_ref().take(SLICE_CUSTOMERS), &mut self.buffer);
            if self.buffer.is_empty() {
                return Ok(());
            }
            self.file.write(&self.buffer)?;
        }
    }

    /// Writes the checksum and makes the snapshot durable; returns where it is and its size.
    pub(crate) fn commit(mut self) -> Result<(Location, u64), StateError> {
        self.buffer.clear();
        if let Err(source) = self.encoder.finish(&mut self.buffer) {
            return Err(StateError::Encode {
                location: self.file.location(),
                source,
            });
        }
        self.file.write(&self.buffer)?;
        let bytes = self.file.bytes_written();
        Ok((self.file.commit()?, bytes))
    }
}

/// Snapshots the engine at once, through the same capture, encoder and file the daemon
/// uses a slice at a time between batches (benchmarks and tests, which have no batches to
/// interleave), to a [`SnapshotDir`] or any [`SnapshotStore`]. Returns where it is and its
/// size.
pub fn write_snapshot(
    engine: &mut Engine,
    store: impl Into<SnapshotStore>,
    streams: &[String],
    created_ms: u64,
) -> Result<(Location, u64), StateError> {
    let store = store.into();
    let (header, size) = engine.begin_snapshot();
    let mut writer = SnapshotWriter::start(&store, &header, size, streams, created_ms)?;
    while let Some(slice) = engine.snapshot_slice(SLICE_CUSTOMERS) {
        writer.append(&slice)?;
    }
    writer.commit()
}

impl Drop for SnapshotFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.temp);
        }
    }
}

impl SnapshotDir {
    /// Opens (creating it if needed) the directory; keeps the newest `keep` snapshots.
    pub fn open(dir: &Path, keep: usize) -> Result<Self, StateError> {
        fs::create_dir_all(dir).map_err(|source| StateError::Dir {
            dir: dir.to_owned(),
            source,
        })?;
        Ok(Self {
            dir: dir.to_owned(),
            keep: keep.max(1),
            epoch: None,
        })
    }

    /// The same directory, the snapshots written from now on named with ownership epoch
    /// `epoch` (`snapshot-e<epoch>-<created_ms>.bin`): they sort after every snapshot of an
    /// earlier epoch, and after those named without one.
    pub fn with_epoch(mut self, epoch: u64) -> Self {
        self.epoch = Some(epoch);
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes a snapshot atomically and durably, then prunes older ones.
    pub fn write(&self, bytes: &[u8], created_ms: u64) -> Result<PathBuf, StateError> {
        let mut file = self.create(created_ms)?;
        file.write(bytes)?;
        file.commit()
    }

    /// Starts a snapshot file under a temporary name, to be written piece by piece; it takes
    /// its place among the snapshots only at [`SnapshotFile::commit`]. Names sort by
    /// `created_ms`, so the newest is the last.
    pub fn create(&self, created_ms: u64) -> Result<SnapshotFile, StateError> {
        let name = format!("{PREFIX}{}{SUFFIX}", snapshot_name(self.epoch, created_ms));
        let path = self.dir.join(&name);
        let temp = self.dir.join(format!(".{name}{TEMP_SUFFIX}"));
        match File::create(&temp) {
            Ok(file) => Ok(SnapshotFile {
                dir: self.clone(),
                path,
                temp,
                file: Some(BufWriter::with_capacity(WRITE_BUFFER, file)),
                written: 0,
                flushed: 0,
                hint_refused: false,
            }),
            Err(source) => Err(StateError::Write { path, source }),
        }
    }

    /// Whether the directory holds a snapshot (good or not).
    pub fn has_snapshots(&self) -> bool {
        !self.snapshots().is_empty()
    }

    /// Snapshot files, oldest first.
    fn snapshots(&self) -> Vec<PathBuf> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(PREFIX) && n.ends_with(SUFFIX))
            })
            .collect();
        paths.sort();
        paths
    }

    /// Removes all but the newest `keep` snapshots, and temporary files a crash left.
    fn prune(&self) {
        let snapshots = self.snapshots();
        let excess = snapshots.len().saturating_sub(self.keep);
        for old in &snapshots[..excess] {
            if let Err(e) = fs::remove_file(old) {
                tracing::warn!(path = %old.display(), error = %e, "cannot remove an old snapshot");
            }
        }
        if let Ok(entries) = fs::read_dir(&self.dir) {
            for e in entries.filter_map(Result::ok) {
                let name = e.file_name();
                let name = name.to_string_lossy();
                if name.starts_with('.') && name.ends_with(TEMP_SUFFIX) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }

    /// The newest snapshot that decodes, and the newer ones that did not (renamed aside).
    /// `Ok((None, _))` when there is none: a first start.
    pub fn load_newest(
        &self,
        streams: &[String],
    ) -> Result<(Option<Loaded>, Vec<Rejected>), StateError> {
        // Listing must work: an unreadable directory is not "no snapshot".
        fs::read_dir(&self.dir).map_err(|source| StateError::Dir {
            dir: self.dir.clone(),
            source,
        })?;
        let mut rejected = Vec::new();
        for path in self.snapshots().into_iter().rev() {
            let decoded = File::open(&path)
                .and_then(|file| Ok((file.metadata()?.len(), file)))
                .map_err(|e| e.to_string())
                .and_then(|(len, file)| {
                    codec::decode_from(file, len, streams)
                        .map(|d| (d, len))
                        .map_err(|e: CodecError| e.to_string())
                });
            match decoded {
                Ok((snapshot, bytes)) => {
                    return Ok((
                        Some(Loaded {
                            location: Location::File(path),
                            bytes,
                            snapshot,
                        }),
                        rejected,
                    ))
                }
                Err(error) => {
                    let aside = path.with_extension(format!("bin{CORRUPT_SUFFIX}"));
                    if let Err(e) = fs::rename(&path, &aside) {
                        tracing::warn!(path = %path.display(), error = %e, "cannot rename a corrupt snapshot aside");
                    }
                    rejected.push(Rejected {
                        location: Location::File(path),
                        error,
                    });
                }
            }
        }
        Ok((None, rejected))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_atomically_keeps_the_newest_and_skips_corrupt_ones() {
        let dir = tempfile::tempdir().unwrap();
        let snapshots = SnapshotDir::open(&dir.path().join("state"), 2).unwrap();
        let streams = vec!["s".to_string()];
        let (none, rejected) = snapshots.load_newest(&streams).unwrap();
        assert!(none.is_none() && rejected.is_empty());

        let mut state = crate::engine::tests::empty_state();
        for created in [1u64, 2, 3] {
            state.header.watermark = created as u32;
            snapshots
                .write(&codec::encode(&state, &streams, created), created)
                .unwrap();
        }
        assert_eq!(
            snapshots.snapshots().len(),
            2,
            "only the newest two are kept"
        );
        let (loaded, _) = snapshots.load_newest(&streams).unwrap();
        assert_eq!(loaded.unwrap().snapshot.created_ms, 3);

        // Truncate the newest: the one before is used and the bad one is set aside.
        let newest = snapshots.snapshots().pop().unwrap();
        let bytes = fs::read(&newest).unwrap();
        fs::write(&newest, &bytes[..bytes.len() / 2]).unwrap();
        let (loaded, rejected) = snapshots.load_newest(&streams).unwrap();
        let loaded = loaded.unwrap();
        assert_eq!(loaded.snapshot.created_ms, 2);
        assert_eq!(loaded.snapshot.state.header.watermark, 2);
        assert_eq!(rejected.len(), 1);
        assert!(rejected[0].error.contains("truncated"), "{rejected:?}");
        assert_eq!(snapshots.snapshots().len(), 1);
        assert!(newest.with_extension("bin.corrupt").exists());
    }

    #[test]
    fn a_later_epoch_s_snapshots_sort_after_an_earlier_s_whatever_their_clocks() {
        let dir = tempfile::tempdir().unwrap();
        let plain = SnapshotDir::open(dir.path(), 10).unwrap();
        let first = plain.write(b"unstamped", 9_000).unwrap();
        let early = plain.clone().with_epoch(2).write(b"e2", 5_000).unwrap();
        // A later owner whose clock is behind the earlier one's.
        let late = plain.clone().with_epoch(10).write(b"e10", 1_000).unwrap();
        assert_eq!(plain.snapshots(), vec![first, early, late]);
    }

    #[test]
    fn an_unusable_directory_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        fs::write(&file, b"x").unwrap();
        let err = SnapshotDir::open(&file.join("state"), 3).err().unwrap();
        assert!(err.to_string().contains("a-file"), "{err}");
    }
}
