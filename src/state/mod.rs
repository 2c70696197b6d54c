//! Durable customer state: snapshot files in `state.dir`.
//!
//! A snapshot is written to a temporary name, fsynced, renamed into place and the directory
//! fsynced, so a crash leaves either the old set of snapshots or the new one, never a torn
//! file under a snapshot's name. The newest few are kept; on start the newest that decodes
//! is loaded, and one that does not (truncated, flipped bytes, another format) is reported,
//! renamed aside with a `.corrupt` suffix and the next older one is tried.

pub mod codec;

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use codec::{CodecError, Decoded};

const PREFIX: &str = "snapshot-";
const SUFFIX: &str = ".bin";
const TEMP_SUFFIX: &str = ".tmp";
const CORRUPT_SUFFIX: &str = ".corrupt";

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
}

/// A snapshot that could not be used, and why.
#[derive(Debug)]
pub struct Rejected {
    pub path: PathBuf,
    pub error: String,
}

/// What [`SnapshotDir::load_newest`] found.
pub struct Loaded {
    pub path: PathBuf,
    pub bytes: u64,
    pub snapshot: Decoded,
}

pub struct SnapshotDir {
    dir: PathBuf,
    keep: usize,
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
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes a snapshot atomically and durably, then prunes older ones. Names sort by
    /// `created_ms`, so the newest is the last.
    pub fn write(&self, bytes: &[u8], created_ms: u64) -> Result<PathBuf, StateError> {
        let name = format!("{PREFIX}{created_ms:020}{SUFFIX}");
        let path = self.dir.join(&name);
        let temp = self.dir.join(format!(".{name}{TEMP_SUFFIX}"));
        let write_err = |source| StateError::Write {
            path: path.clone(),
            source,
        };
        let result = (|| {
            let mut file = File::create(&temp)?;
            file.write_all(bytes)?;
            file.sync_all()?;
            drop(file);
            fs::rename(&temp, &path)?;
            File::open(&self.dir)?.sync_all()
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&temp);
            return Err(write_err(e));
        }
        self.prune();
        Ok(path)
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
            let decoded = fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|bytes| {
                    let len = bytes.len() as u64;
                    codec::decode(&bytes, streams)
                        .map(|d| (d, len))
                        .map_err(|e: CodecError| e.to_string())
                });
            match decoded {
                Ok((snapshot, bytes)) => {
                    return Ok((
                        Some(Loaded {
                            path,
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
                    rejected.push(Rejected { path, error });
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
            state.watermark = created as u32;
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
        assert_eq!(loaded.snapshot.state.watermark, 2);
        assert_eq!(rejected.len(), 1);
        assert!(rejected[0].error.contains("truncated"), "{rejected:?}");
        assert_eq!(snapshots.snapshots().len(), 1);
        assert!(newest.with_extension("bin.corrupt").exists());
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
