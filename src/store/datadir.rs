//! The node's data directory: where its identity (and later its store) lives.
//!
//! A directory is used by one running node at a time, enforced with an exclusive
//! lock on `node.lock`. Without `--data-dir`, a node takes the first free slot
//! `node-0`, `node-1`, … under the base directory (`$QUIC_PEER_HOME`, else
//! `$XDG_DATA_HOME/quic-peer`, else `~/.local/share/quic-peer`): the first node on
//! a machine always gets `node-0` and so keeps its id across restarts, and several
//! nodes on one machine never share an identity.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

/// Name of the lock file inside a data directory.
pub const LOCK_FILE: &str = "node.lock";

/// Slots tried for the default data directory.
const MAX_SLOTS: usize = 1024;

/// Why a data directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// No base directory could be worked out.
    #[error("no data directory: set --data-dir, QUIC_PEER_HOME or HOME")]
    NoHome,
    /// The directory could not be created or opened.
    #[error("data directory {path} is not usable: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Another node is running with this directory.
    #[error("data directory {0} is in use by another running node")]
    InUse(PathBuf),
}

/// A data directory held for the life of this value.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    _lock: File,
}

impl DataDir {
    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Takes `path`, creating it if needed; fails if another node holds it.
    pub fn lock(path: &Path) -> Result<DataDir, DataDirError> {
        match Self::try_lock(path)? {
            Some(d) => Ok(d),
            None => Err(DataDirError::InUse(path.to_path_buf())),
        }
    }

    fn try_lock(path: &Path) -> Result<Option<DataDir>, DataDirError> {
        let io = |source| DataDirError::Io {
            path: path.to_path_buf(),
            source,
        };
        fs::create_dir_all(path).map_err(io)?;
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path.join(LOCK_FILE))
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(DataDir {
                path: path.to_path_buf(),
                _lock: file,
            })),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(io(e)),
        }
    }

    /// The first free default slot under [`base_dir`].
    pub fn default_slot() -> Result<DataDir, DataDirError> {
        let base = base_dir().ok_or(DataDirError::NoHome)?;
        for slot in 0..MAX_SLOTS {
            if let Some(d) = Self::try_lock(&base.join(format!("node-{slot}")))? {
                return Ok(d);
            }
        }
        Err(DataDirError::InUse(base))
    }
}

/// The directory default data directories live under.
pub fn base_dir() -> Option<PathBuf> {
    let env = |k| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    env("QUIC_PEER_HOME")
        .or_else(|| env("XDG_DATA_HOME").map(|d| d.join("quic-peer")))
        .or_else(|| env("HOME").map(|h| h.join(".local/share/quic-peer")))
}

/// The default directory `quic-peer id` reads: slot 0.
pub fn default_path() -> Option<PathBuf> {
    base_dir().map(|b| b.join("node-0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_is_held_by_one_node() {
        let dir = tempfile::tempdir().unwrap();
        let a = DataDir::lock(dir.path()).unwrap();
        assert!(matches!(
            DataDir::lock(dir.path()),
            Err(DataDirError::InUse(_))
        ));
        drop(a);
        DataDir::lock(dir.path()).unwrap();
    }
}
