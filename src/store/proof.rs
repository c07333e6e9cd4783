//! Proof of possession: the keyed hash of a byte range of a held file, and
//! dropping a held file.
//!
//! A node that holds a file answers a challenge (a piece of the file, a
//! range in it and a nonce, see [`Request::Prove`]) with the BLAKE3 keyed
//! hash of those bytes under the nonce. The asker holds the file too, so it
//! computes the same answer from its own copy ([`Store::prove`] on both
//! sides) and compares. A chunk is read whole and verified on the way, so a
//! corrupt chunk is dropped (and fetched again by repair) rather than
//! proving wrong forever.
//!
//! [`Request::Prove`]: crate::proto::wire::Request::Prove

use super::{lock, Store, StoreError, FILES};
use crate::proto::wire::MAX_PROOF_LEN;
use crate::proto::Hash;

/// Bytes read from a chunk at a time while proving.
const PROOF_PIECE: usize = 64 * 1024;

/// What a node holding (or not) a file answers to a challenge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Possession {
    /// The keyed hash of the range.
    Proof([u8; 32]),
    /// The file is not held, or the piece is not stored.
    NotHeld,
    /// The range is not inside the piece (or longer than [`MAX_PROOF_LEN`]).
    OutOfRange,
}

impl Store {
    /// Answers a challenge: the BLAKE3 keyed hash (key `nonce`) of bytes
    /// `offset..offset + len` of `piece` (a chunk, or a manifest when no
    /// chunk has that hash), if this store holds the file `id`.
    pub fn prove(
        &self,
        id: &Hash,
        piece: &Hash,
        offset: u32,
        len: u32,
        nonce: &[u8; 32],
    ) -> Result<Possession, StoreError> {
        if len > MAX_PROOF_LEN {
            return Ok(Possession::OutOfRange);
        }
        if !self.holds(id)? {
            return Ok(Possession::NotHeld);
        }
        let (start, end) = (u64::from(offset), u64::from(offset) + u64::from(len));
        let bytes = match self.chunk_range(piece, start, end)? {
            Some(bytes) => bytes,
            None => match self.manifest_bytes(piece)? {
                Some(m) => m.get(start as usize..end as usize).map(<[u8]>::to_vec),
                None => return Ok(Possession::NotHeld),
            },
        };
        Ok(match bytes {
            Some(b) => Possession::Proof(*blake3::keyed_hash(nonce, &b).as_bytes()),
            None => Possession::OutOfRange,
        })
    }

    /// Bytes `start..end` of a stored chunk, reading it whole to verify it
    /// (unless verified in the last minutes):
    /// `None` if the chunk is not stored (or failed verification, and is
    /// gone now), `Some(None)` if the range is not inside it.
    fn chunk_range(
        &self,
        hash: &Hash,
        start: u64,
        end: u64,
    ) -> Result<Option<Option<Vec<u8>>>, StoreError> {
        let Some(mut reader) = self.open_chunk(hash)? else {
            return Ok(None);
        };
        if end > reader.len() {
            return Ok(Some(None));
        }
        let mut out = Vec::with_capacity((end - start) as usize);
        let mut at = 0u64;
        while reader.left() > 0 {
            let piece = reader.read_piece(PROOF_PIECE)?;
            let (lo, hi) = (at, at + piece.len() as u64);
            if hi > start && lo < end {
                let from = (start.max(lo) - lo) as usize;
                let to = (end.min(hi) - lo) as usize;
                out.extend_from_slice(&piece[from..to]);
            }
            at = hi;
        }
        Ok(reader.verify().then_some(Some(out)))
    }

    /// The length of a piece a challenge can name: a stored chunk, or a
    /// manifest.
    pub fn piece_len(&self, piece: &Hash) -> Result<Option<u64>, StoreError> {
        match std::fs::metadata(self.chunk_path(piece)) {
            Ok(m) if m.is_file() => return Ok(Some(m.len())),
            _ => {}
        }
        Ok(self.manifest_bytes(piece)?.map(|m| m.len() as u64))
    }

    /// Stops holding the file or tree `id`: it is no longer listed, served
    /// as held or announced, and a garbage pass collects the pieces no other
    /// held file uses once they are older than the grace period. Returns
    /// whether it was held.
    pub fn release_file(&self, id: &Hash) -> Result<bool, StoreError> {
        let _gc = lock(&self.inner.gc);
        let tx = self.inner.db.begin_write()?;
        let was = tx.open_table(FILES)?.remove(id.as_bytes())?.is_some();
        self.forget_source(&tx, id)?;
        tx.commit()?;
        self.uncount_source(id);
        lock(&self.inner.incomplete).remove(id);
        Ok(was)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::manifest::Manifest;
    use crate::store::tests::held_file;

    fn nonce(n: u8) -> [u8; 32] {
        [n; 32]
    }

    #[test]
    fn a_holder_proves_the_range_it_is_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let (id, paths) = held_file(&store, dir.path());
        let Some(Manifest::File(f)) = store.manifest(&id).unwrap() else {
            panic!("a file manifest");
        };
        let data = std::fs::read(&paths[1]).unwrap();
        let want = *blake3::keyed_hash(&nonce(1), &data[100..600]).as_bytes();
        let got = store.prove(&id, &f.chunks[1], 100, 500, &nonce(1)).unwrap();
        assert_eq!(got, Possession::Proof(want));
        // Another nonce, another answer: an old one cannot be replayed.
        let other = store.prove(&id, &f.chunks[1], 100, 500, &nonce(2)).unwrap();
        assert_ne!(other, got);
        // The whole chunk, and an empty range at its end.
        let len = data.len() as u32;
        let whole = *blake3::keyed_hash(&nonce(1), &data).as_bytes();
        assert_eq!(
            store.prove(&id, &f.chunks[1], 0, len, &nonce(1)).unwrap(),
            Possession::Proof(whole)
        );
        assert!(matches!(
            store.prove(&id, &f.chunks[1], len, 0, &nonce(1)).unwrap(),
            Possession::Proof(_)
        ));
        // A manifest is a piece too (files without chunks).
        let m = store.manifest_bytes(&id).unwrap().unwrap();
        let want = *blake3::keyed_hash(&nonce(3), &m[..4]).as_bytes();
        assert_eq!(
            store.prove(&id, &id, 0, 4, &nonce(3)).unwrap(),
            Possession::Proof(want)
        );
    }

    #[test]
    fn wrong_data_proves_wrong_and_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let (id, paths) = held_file(&store, dir.path());
        let Some(Manifest::File(f)) = store.manifest(&id).unwrap() else {
            panic!("a file manifest");
        };
        let mut data = std::fs::read(&paths[0]).unwrap();
        let right = *blake3::keyed_hash(&nonce(1), &data[..64]).as_bytes();
        data[10] ^= 0xff;
        std::fs::write(&paths[0], &data).unwrap();
        let got = store.prove(&id, &f.chunks[0], 0, 64, &nonce(1)).unwrap();
        assert_ne!(got, Possession::Proof(right));
        assert_eq!(got, Possession::NotHeld, "a corrupt chunk proves nothing");
        assert!(!paths[0].exists(), "and is deleted");
        assert!(!store.holds(&id).unwrap(), "its file is incomplete");
        assert_eq!(
            store.prove(&id, &f.chunks[1], 0, 64, &nonce(1)).unwrap(),
            Possession::NotHeld
        );
    }

    #[test]
    fn out_of_range_and_unheld_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let (id, paths) = held_file(&store, dir.path());
        let Some(Manifest::File(f)) = store.manifest(&id).unwrap() else {
            panic!("a file manifest");
        };
        let len = std::fs::metadata(&paths[2]).unwrap().len() as u32;
        let c = f.chunks[2];
        assert_eq!(
            store.prove(&id, &c, len, 1, &nonce(1)).unwrap(),
            Possession::OutOfRange
        );
        assert_eq!(
            store.prove(&id, &c, u32::MAX, 2, &nonce(1)).unwrap(),
            Possession::OutOfRange
        );
        assert_eq!(
            store
                .prove(&id, &c, 0, MAX_PROOF_LEN + 1, &nonce(1))
                .unwrap(),
            Possession::OutOfRange
        );
        let m = store.manifest_bytes(&id).unwrap().unwrap().len() as u32;
        assert_eq!(
            store.prove(&id, &id, m, 1, &nonce(1)).unwrap(),
            Possession::OutOfRange
        );
        assert_eq!(
            store
                .prove(&Hash::of(b"other"), &c, 0, 1, &nonce(1))
                .unwrap(),
            Possession::NotHeld
        );
        assert_eq!(
            store
                .prove(&id, &Hash::of(b"no piece"), 0, 1, &nonce(1))
                .unwrap(),
            Possession::NotHeld
        );
        // Released: not held, not proven, listed no more.
        assert!(store.release_file(&id).unwrap());
        assert!(!store.release_file(&id).unwrap());
        assert_eq!(
            store.prove(&id, &c, 0, 1, &nonce(1)).unwrap(),
            Possession::NotHeld
        );
        assert!(store.files().unwrap().is_empty());
    }

    #[test]
    fn a_released_file_is_collected() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let (id, paths) = held_file(&store, dir.path());
        assert!(
            store
                .collect_garbage(std::time::Duration::ZERO)
                .unwrap()
                .chunks
                == 0
        );
        store.release_file(&id).unwrap();
        // Manifests go on the second pass at least the grace apart.
        store.collect_garbage(std::time::Duration::ZERO).unwrap();
        store.collect_garbage(std::time::Duration::ZERO).unwrap();
        assert!(paths.iter().all(|p| !p.exists()));
        assert!(store.manifest(&id).unwrap().is_none());
        assert_eq!(store.used(), 0);
    }
}
