//! Garbage passes: deleting the chunks and manifests no held file uses.
//!
//! The rules (what is unused, the grace period) are in the store's module
//! documentation and on [`Store::collect_garbage`]. A pass holds the lock
//! that keeps [`Store::add_file`] out, so no file becomes held while it
//! decides, and goes in four steps:
//!
//! 1. it reads every manifest and held file once (a `Pass`);
//! 2. it marks the manifests to keep: everything below a held file, then the
//!    young unused manifests, the directories above them and everything
//!    below those (`kept_manifests`);
//! 3. it deletes the chunks no kept manifest names that are older than the
//!    grace period, each moved aside and its age checked again first
//!    (`collect_chunks`);
//! 4. it deletes the manifests it did not keep, unless stored again since
//!    (`collect_manifests`).

use std::collections::{HashMap, HashSet};
use std::fs;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use redb::{ReadableDatabase, ReadableTable};
use tracing::warn;

use super::{io_err, lock, Store, StoreError, FILES, MANIFESTS};
use crate::proto::manifest::Manifest;
use crate::proto::Hash;

/// What a garbage pass removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Unused chunks deleted.
    pub chunks: usize,
    /// Unused manifests deleted.
    pub manifests: usize,
    /// Bytes given back to the quota.
    pub bytes: u64,
    /// Unused pieces kept for now, being younger than the grace period.
    pub young: usize,
}

/// What a garbage pass sees, taken once when it begins.
struct Pass {
    /// The grace period.
    grace: Duration,
    /// When the pass began: the time it records an unused manifest as first
    /// seen at.
    now: Instant,
    /// When the pass began by the wall clock, which file ages are measured on.
    wall: SystemTime,
    /// Every stored manifest, `None` if it does not decode.
    manifests: HashMap<Hash, Option<Manifest>>,
}

impl Pass {
    /// How long before the pass the file was last written (zero if unknown).
    fn age_of(&self, meta: &fs::Metadata) -> Duration {
        meta.modified()
            .ok()
            .and_then(|m| self.wall.duration_since(m).ok())
            .unwrap_or_default()
    }

    /// Adds `roots` and every manifest below them to `keep`.
    fn keep_below(&self, roots: Vec<Hash>, keep: &mut HashSet<Hash>) {
        let mut stack = roots;
        while let Some(id) = stack.pop() {
            if !keep.insert(id) {
                continue;
            }
            if let Some(Some(Manifest::Dir(d))) = self.manifests.get(&id) {
                stack.extend(d.entries.iter().map(|e| e.id));
            }
        }
    }

    /// How many of `ids` are stored manifests.
    fn stored(&self, ids: &HashSet<Hash>) -> usize {
        ids.iter()
            .filter(|id| self.manifests.contains_key(*id))
            .count()
    }

    /// `ids` and every directory above them.
    fn with_parents(&self, ids: Vec<Hash>) -> HashSet<Hash> {
        let mut parents: HashMap<Hash, Vec<Hash>> = HashMap::new();
        for (id, m) in &self.manifests {
            if let Some(Manifest::Dir(d)) = m {
                for e in &d.entries {
                    parents.entry(e.id).or_default().push(*id);
                }
            }
        }
        let mut out = HashSet::new();
        let mut stack = ids;
        while let Some(id) = stack.pop() {
            if out.insert(id) {
                stack.extend(parents.get(&id).into_iter().flatten().copied());
            }
        }
        out
    }

    /// The chunks the file manifests among `keep` name.
    fn chunks_of(&self, keep: &HashSet<Hash>) -> HashSet<Hash> {
        keep.iter()
            .filter_map(|id| match self.manifests.get(id) {
                Some(Some(m)) => m.chunked().map(|f| f.chunks.iter().copied()),
                _ => None,
            })
            .flatten()
            .collect()
    }
}

impl Store {
    /// Deletes the chunks and manifests no held file uses (complete or not)
    /// and no copy still arriving needs (see the module documentation).
    ///
    /// Manifests not reachable from a held file are *unused*. An unused
    /// manifest is *young* if a pass first found it unused less than `grace`
    /// ago (or just now), or if it is a file's and one of its chunks is younger
    /// than `grace`. Young manifests, the directories above them and
    /// everything below those are kept with their chunks: a tree whose chunks
    /// are still arriving stays whole. Everything else that is unused and
    /// older than `grace` goes.
    pub fn collect_garbage(&self, grace: Duration) -> Result<GcReport, StoreError> {
        let _gc = lock(&self.inner.gc);
        let mut report = GcReport::default();
        let now = Instant::now();
        let wall = SystemTime::now();
        let pass = Pass {
            grace,
            now,
            wall,
            manifests: self.stored_manifests()?,
        };
        let keep = self.kept_manifests(&pass, &mut report)?;
        self.collect_chunks(&pass, &pass.chunks_of(&keep), &mut report)?;
        self.collect_manifests(&pass, &keep, &mut report)?;
        Ok(report)
    }

    /// Every stored manifest, decoded (`None` if it does not decode).
    fn stored_manifests(&self) -> Result<HashMap<Hash, Option<Manifest>>, StoreError> {
        let tx = self.inner.db.begin_read()?;
        let table = tx.open_table(MANIFESTS)?;
        let mut out = HashMap::new();
        for row in table.iter()? {
            let (k, v) = row?;
            out.insert(
                Hash::from_bytes(*k.value()),
                Manifest::decode(v.value()).ok(),
            );
        }
        Ok(out)
    }

    /// The ids of the held files, complete or not.
    fn held_ids(&self) -> Result<Vec<Hash>, StoreError> {
        let tx = self.inner.db.begin_read()?;
        let table = tx.open_table(FILES)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            out.push(Hash::from_bytes(*row?.0.value()));
        }
        Ok(out)
    }

    /// The manifests the pass keeps: everything below a held file, then the
    /// young unused manifests, the directories above them and everything
    /// below those. The unused ones kept count as young in `report`.
    fn kept_manifests(
        &self,
        pass: &Pass,
        report: &mut GcReport,
    ) -> Result<HashSet<Hash>, StoreError> {
        let mut keep = HashSet::new();
        pass.keep_below(self.held_ids()?, &mut keep);
        let young = self.young_manifests(pass, &keep);
        let in_use = pass.stored(&keep);
        pass.keep_below(pass.with_parents(young).into_iter().collect(), &mut keep);
        report.young += pass.stored(&keep) - in_use;
        Ok(keep)
    }

    /// The unused manifests (those not in `used`) that are young: first found
    /// unused less than the grace period ago (or just now), or a file's with a
    /// chunk younger than that (a copy may still be arriving). Records when
    /// each unused manifest was first found so, and forgets the others.
    fn young_manifests(&self, pass: &Pass, used: &HashSet<Hash>) -> Vec<Hash> {
        let mut seen = lock(&self.inner.unused_manifests);
        seen.retain(|id, _| pass.manifests.contains_key(id) && !used.contains(id));
        let mut young = Vec::new();
        for (id, m) in &pass.manifests {
            if used.contains(id) {
                continue;
            }
            let first = *seen.entry(*id).or_insert(pass.now);
            let fresh = first == pass.now || pass.now.saturating_duration_since(first) < pass.grace;
            if fresh || self.has_young_chunk(pass, m.as_ref()) {
                young.push(*id);
            }
        }
        young
    }

    /// Whether `m` is a file's manifest with a stored chunk younger than the
    /// grace period.
    fn has_young_chunk(&self, pass: &Pass, m: Option<&Manifest>) -> bool {
        match m.and_then(Manifest::chunked) {
            Some(f) => f.chunks.iter().any(|h| {
                fs::metadata(self.chunk_path(h)).is_ok_and(|meta| pass.age_of(&meta) < pass.grace)
            }),
            None => false,
        }
    }

    /// Deletes the chunks not in `keep` that are older than the grace period.
    fn collect_chunks(
        &self,
        pass: &Pass,
        keep: &HashSet<Hash>,
        report: &mut GcReport,
    ) -> Result<(), StoreError> {
        let dirs =
            fs::read_dir(&self.inner.chunks).map_err(io_err("cannot list", &self.inner.chunks))?;
        for dir in dirs.flatten() {
            let Ok(files) = fs::read_dir(dir.path()) else {
                continue;
            };
            for f in files.flatten() {
                let Some(hash) = f.file_name().to_str().and_then(|n| n.parse::<Hash>().ok()) else {
                    continue;
                };
                if !keep.contains(&hash) {
                    self.collect_chunk(pass, &hash, &f, report);
                }
            }
        }
        Ok(())
    }

    /// Deletes the unused chunk `hash` (the file `f`) if it is older than the
    /// grace period. It is moved aside and its age checked again before it is
    /// deleted, so one stored again meanwhile ([`Store::touch_chunk`]) is put
    /// back.
    fn collect_chunk(&self, pass: &Pass, hash: &Hash, f: &fs::DirEntry, report: &mut GcReport) {
        let Ok(meta) = f.metadata() else { return };
        if pass.age_of(&meta) < pass.grace {
            report.young += 1;
            return;
        }
        let n = self.inner.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let aside = self
            .inner
            .tmp
            .join(format!("{}gc-{n}", self.inner.tmp_prefix));
        if fs::rename(f.path(), &aside).is_err() {
            return;
        }
        let again = fs::metadata(&aside)
            .map(|m| pass.age_of(&m))
            .unwrap_or_default();
        if again < pass.grace {
            // Wanted again just now: put back (unless a new copy was
            // stored under the name meanwhile, which is the same bytes).
            let _ = fs::hard_link(&aside, f.path());
            let _ = fs::remove_file(&aside);
            report.young += 1;
            return;
        }
        match fs::remove_file(&aside) {
            Ok(()) => {
                self.release(meta.len());
                report.chunks += 1;
                report.bytes += meta.len();
            }
            Err(e) => warn!("cannot remove unused chunk {hash}: {e}"),
        }
    }

    /// Deletes the manifests not in `keep`, unless stored again since the
    /// pass began ([`Store::touch_manifest`] forgets them, under the lock this
    /// holds while it deletes).
    fn collect_manifests(
        &self,
        pass: &Pass,
        keep: &HashSet<Hash>,
        report: &mut GcReport,
    ) -> Result<(), StoreError> {
        let mut seen = lock(&self.inner.unused_manifests);
        let doomed: Vec<Hash> = pass
            .manifests
            .keys()
            .filter(|id| !keep.contains(*id) && seen.contains_key(*id))
            .copied()
            .collect();
        if doomed.is_empty() {
            return Ok(());
        }
        let freed = self.delete_manifests(&doomed)?;
        for id in &doomed {
            seen.remove(id);
        }
        self.release(freed);
        report.manifests += doomed.len();
        report.bytes += freed;
        Ok(())
    }

    /// Deletes `ids` from the manifest table in one transaction; returns the
    /// bytes freed.
    fn delete_manifests(&self, ids: &[Hash]) -> Result<u64, StoreError> {
        let tx = self.inner.db.begin_write()?;
        let mut freed = 0u64;
        {
            let mut table = tx.open_table(MANIFESTS)?;
            for id in ids {
                if let Some(v) = table.remove(id.as_bytes())? {
                    freed += v.value().len() as u64;
                }
            }
        }
        tx.commit()?;
        Ok(freed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::held_file;
    use crate::store::Stored;

    /// Sets a chunk's file time `ago` in the past.
    fn age(store: &Store, h: &Hash, ago: std::time::Duration) {
        let f = fs::File::options()
            .write(true)
            .open(store.chunk_path(h))
            .unwrap();
        f.set_modified(std::time::SystemTime::now() - ago).unwrap();
    }

    fn file_manifest(name: &str, chunks: &[&[u8]]) -> Manifest {
        Manifest::File(crate::proto::manifest::FileManifest {
            name: name.into(),
            size: chunks.iter().map(|c| c.len() as u64).sum(),
            chunk_size: 1024,
            chunks: chunks.iter().map(|c| Hash::of(c)).collect(),
        })
    }

    #[test]
    fn unused_chunks_go_after_the_grace_period_and_held_files_never() {
        use std::time::Duration;
        let hour = Duration::from_secs(3600);
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let (id, held_paths) = held_file(&store, dir.path());
        let held_used = store.used();
        // Chunks no manifest names (a copy cut off before its manifest).
        let (a, b) = (vec![0xaa; 1024], vec![0xbb; 100]);
        let (ha, hb) = (Hash::of(&a), Hash::of(&b));
        store.put_chunk(&ha, &a).unwrap();
        store.put_chunk(&hb, &b).unwrap();

        let r = store.collect_garbage(hour).unwrap();
        assert_eq!(
            (r.chunks, r.manifests, r.bytes, r.young),
            (0, 0, 0, 2),
            "{r:?}"
        );
        // Old now, but b was stored again since (a copy arriving uses it).
        for h in [&ha, &hb] {
            age(&store, h, 2 * hour);
        }
        for p in &held_paths {
            let f = fs::File::options().write(true).open(p).unwrap();
            f.set_modified(std::time::SystemTime::now() - 2 * hour)
                .unwrap();
        }
        assert_eq!(store.put_chunk(&hb, &b).unwrap(), Stored::AlreadyHad);
        let r = store.collect_garbage(hour).unwrap();
        assert_eq!(
            (r.chunks, r.bytes, r.young),
            (1, a.len() as u64, 1),
            "{r:?}"
        );
        assert!(!store.has_chunk(&ha) && store.has_chunk(&hb));
        let r = store.collect_garbage(Duration::ZERO).unwrap();
        assert_eq!(r.chunks, 1, "{r:?}");
        assert_eq!(store.used(), held_used);

        // The held file, old as it is, is whole, also after a reopen.
        assert!(store.holds(&id).unwrap());
        assert!(held_paths.iter().all(|p| p.is_file()));
        drop(store);
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(store.used(), held_used);
        let r = store.collect_garbage(Duration::ZERO).unwrap();
        assert_eq!((r.chunks, r.manifests), (0, 0));
        assert!(store.holds(&id).unwrap());
    }

    /// A tree still arriving (its manifests first, then its chunks, then the
    /// HOLD) keeps every piece while any of its chunks is younger than the
    /// grace period, however long ago its manifests came; once it stalls for
    /// longer, all of it goes.
    #[test]
    fn a_copy_still_arriving_is_kept_whole_and_a_stalled_one_goes() {
        use std::time::Duration;
        let grace = Duration::from_millis(300);
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let (c1, c2) = (vec![1u8; 1024], vec![2u8; 1024]);
        // dir/{waiting (no chunk yet), arriving (c1 old, c2 new)}
        let waiting = file_manifest("waiting", &[&[3u8; 500]]);
        let arriving = file_manifest("arriving", &[&c1, &c2]);
        let (w, _) = store.put_manifest(&waiting.encode()).unwrap();
        let (f, _) = store.put_manifest(&arriving.encode()).unwrap();
        let tree = Manifest::Dir(crate::proto::manifest::DirManifest {
            name: "dir".into(),
            entries: vec![
                crate::proto::manifest::DirEntry {
                    name: "arriving".into(),
                    id: f,
                },
                crate::proto::manifest::DirEntry {
                    name: "waiting".into(),
                    id: w,
                },
            ],
        });
        let (d, _) = store.put_manifest(&tree.encode()).unwrap();
        store.put_chunk(&Hash::of(&c1), &c1).unwrap();
        age(&store, &Hash::of(&c1), 2 * grace);
        let r = store.collect_garbage(grace).unwrap();
        assert_eq!((r.chunks, r.manifests), (0, 0), "first seen: {r:?}");

        std::thread::sleep(grace + Duration::from_millis(50));
        // The manifests are old news now, but a chunk has just arrived.
        store.put_chunk(&Hash::of(&c2), &c2).unwrap();
        let r = store.collect_garbage(grace).unwrap();
        assert_eq!((r.chunks, r.manifests, r.young), (0, 0, 3), "{r:?}");
        for id in [d, f, w] {
            assert!(store.manifest_bytes(&id).unwrap().is_some());
        }
        assert!(
            store.has_chunk(&Hash::of(&c1)),
            "an old chunk of a live copy stays"
        );

        // Then nothing more arrives.
        std::thread::sleep(grace + Duration::from_millis(50));
        let r = store.collect_garbage(grace).unwrap();
        assert_eq!((r.chunks, r.manifests), (2, 3), "{r:?}");
        assert_eq!(store.used(), 0);
    }

    #[test]
    fn a_manifest_goes_at_the_second_pass_and_storing_it_again_starts_over() {
        use std::time::Duration;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let m = file_manifest("orphan", &[&[9u8; 10]]);
        let (mid, _) = store.put_manifest(&m.encode()).unwrap();
        let r = store.collect_garbage(Duration::ZERO).unwrap();
        assert_eq!((r.manifests, r.young), (0, 1), "{r:?}");
        // Stored again (a copy arriving): the count starts over.
        assert!(store.touch_manifest(&mid).unwrap());
        let r = store.collect_garbage(Duration::ZERO).unwrap();
        assert_eq!((r.manifests, r.young), (0, 1), "{r:?}");
        std::thread::sleep(Duration::from_millis(2));
        let r = store.collect_garbage(Duration::ZERO).unwrap();
        assert_eq!(r.manifests, 1, "{r:?}");
        assert!(store.manifest_bytes(&mid).unwrap().is_none());
        assert_eq!(store.used(), 0);
    }
}
