//! Chunks this store hashed recently, so that serving them again soon does
//! not hash them again.
//!
//! A chunk is noted when its bytes were found to hash to its name: when it
//! was stored, and when a read verified it. Read again within [`FRESH`],
//! from the same file (device, inode, size and modification time as when it
//! was noted), it is served without hashing. Measured on a 1 GiB get from
//! one holder, BLAKE3 on the holder was 8 % of its samples.
//!
//! What this gives up: media corruption that strikes a chunk inside that
//! window is served until the window ends. The reader verifies every chunk
//! anyway (it never stores or writes a bad one), so the cost is a peer that
//! scores this node down, a proof of possession that fails (the file is
//! judged not held here, as it would be once the chunk is found bad), and a
//! repair up to ten minutes later: not a bad byte accepted. A file
//! replaced or rewritten on disk changes its inode or modification time and
//! is hashed.
//! The table holds at most [`MAX_ENTRIES`] chunks.

use std::collections::HashMap;
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::proto::Hash;

/// How long a verification stands.
pub(super) const FRESH: Duration = Duration::from_secs(10 * 60);

/// Most chunks remembered (about 3 MiB of table; 32 GiB of 1 MiB chunks).
pub(super) const MAX_ENTRIES: usize = 1 << 15;

/// The file a verification was of, and when.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Seen {
    at: Instant,
    file: FileKey,
}

/// What tells one chunk file from another, or from itself rewritten.
#[derive(Clone, Copy, PartialEq, Eq)]
struct FileKey {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
}

impl FileKey {
    fn of(meta: &Metadata) -> FileKey {
        FileKey {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
        }
    }
}

/// Recent verifications, by chunk.
#[derive(Default)]
pub(super) struct Verified {
    seen: Mutex<HashMap<Hash, Seen>>,
}

impl Verified {
    /// Notes that the chunk file `meta` describes hashed to `hash` now.
    pub(super) fn note(&self, hash: Hash, meta: &Metadata) {
        let now = Instant::now();
        let mut seen = super::lock(&self.seen);
        if seen.len() >= MAX_ENTRIES && !seen.contains_key(&hash) {
            seen.retain(|_, s| now.duration_since(s.at) < FRESH);
            if seen.len() >= MAX_ENTRIES {
                // Still full of fresh entries: start over rather than scan
                // for the oldest on every note.
                seen.clear();
            }
        }
        seen.insert(
            hash,
            Seen {
                at: now,
                file: FileKey::of(meta),
            },
        );
    }

    /// Whether the chunk file `meta` describes was verified less than
    /// [`FRESH`] ago.
    pub(super) fn is_fresh(&self, hash: &Hash, meta: &Metadata) -> bool {
        let seen = super::lock(&self.seen);
        seen.get(hash)
            .is_some_and(|s| s.at.elapsed() < FRESH && s.file == FileKey::of(meta))
    }

    /// Forgets a chunk (found bad, or deleted).
    pub(super) fn forget(&self, hash: &Hash) {
        super::lock(&self.seen).remove(hash);
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        super::lock(&self.seen).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_note_holds_for_the_same_file_only_and_the_table_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c");
        std::fs::write(&path, b"chunk").unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        let v = Verified::default();
        let h = Hash::of(b"chunk");
        assert!(!v.is_fresh(&h, &meta));
        v.note(h, &meta);
        assert!(v.is_fresh(&h, &meta));
        assert!(!v.is_fresh(&Hash::of(b"other"), &meta));
        // Rewritten in place (another size): hashed again.
        std::fs::write(&path, b"chunk, changed").unwrap();
        assert!(!v.is_fresh(&h, &std::fs::metadata(&path).unwrap()));
        v.forget(&h);
        assert!(!v.is_fresh(&h, &meta));
        for i in 0..MAX_ENTRIES as u32 + 10 {
            v.note(Hash::of(&i.to_le_bytes()), &meta);
            assert!(v.len() <= MAX_ENTRIES);
        }
    }
}
