//! The disk side of a download: the `.part` file, the resume scan that finds
//! which of its chunks are already good, and the one thread that writes the
//! verified chunks to it.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use crate::download::shared::lock;
use crate::download::{io, DownloadError};
use crate::proto::manifest::FileManifest;
use crate::proto::sealed::Sealer;
use crate::proto::Hash;
use crate::store::direct::DirectWriter;

/// `fdatasync` after this many bytes are written through the page cache, so
/// the disk works while the network does and the final sync is short.
const SYNC_EVERY: u64 = 64 << 20;

/// Writes chunks to the output file from one thread, in file order.
///
/// Two things measured on this machine shape it. Concurrent `pwrite`s to one
/// file contend on its inode lock, and the kernel spins for it; and writing into
/// a hole of a sparse file cost ten times the CPU of appending (4.1 s against
/// 0.35 s of system time per GiB). So one thread writes, and chunks that arrive
/// ahead of the end of the file wait in a small reorder buffer until the gap
/// before them is filled; only when that buffer is full is a chunk written past
/// the end.
///
/// Where the file system allows it, the chunks go to the disk with direct
/// I/O ([`DirectWriter`]: why, in its module); the file's unaligned tail
/// goes through the page cache.
///
/// The buffers of written chunks are kept (a few) for the next fetches to
/// fill: a fresh megabyte costs its page faults and zeroing again.
pub(super) struct Writer {
    tx: mpsc::Sender<WriteJob>,
    spare: Spare,
}

/// Buffers of written chunks, for reuse.
type Spare = Arc<Mutex<Vec<Vec<u8>>>>;

/// Buffers kept for reuse, at most.
const SPARE_BUFFERS: usize = 8;

enum WriteJob {
    Write(u64, Vec<u8>),
    Finish(tokio::sync::oneshot::Sender<std::io::Result<()>>),
}

impl Writer {
    /// A writer for `file`, whose first `len` bytes are written, holding back
    /// at most `reorder_bytes` of chunks that arrive ahead of the end (at
    /// least one).
    /// `part` is the file's path, opened again for direct I/O if `durable`:
    /// else the writes go through the page cache and finishing does not
    /// sync (the caller syncs many files at once).
    pub(super) fn new(
        file: Arc<File>,
        part: &Path,
        len: u64,
        reorder_bytes: u64,
        durable: bool,
    ) -> Writer {
        let (tx, rx) = mpsc::channel::<WriteJob>(4);
        let spare = Spare::default();
        let thread = WriterThread {
            file,
            spare: spare.clone(),
            direct: if durable {
                DirectWriter::open(part)
            } else {
                DirectWriter::none()
            },
            durable,
            end: len,
            unsynced: 0,
            pending: BTreeMap::new(),
            held: 0,
            reorder_bytes,
            error: None,
        };
        std::thread::spawn(move || thread.run(rx));
        Writer { tx, spare }
    }

    async fn send(&self, job: WriteJob) -> std::io::Result<()> {
        self.tx
            .send(job)
            .await
            .map_err(|_| std::io::Error::other("writer thread ended"))
    }

    /// A buffer to fetch a chunk into: one already written, if any.
    pub(super) fn buffer(&self) -> Vec<u8> {
        lock(&self.spare).pop().unwrap_or_default()
    }

    /// Queues a verified chunk; write errors surface in [`Writer::finish`].
    pub(super) async fn write(&self, offset: u64, data: Vec<u8>) -> std::io::Result<()> {
        self.send(WriteJob::Write(offset, data)).await
    }

    /// Writes what is held back, syncs, and reports the first error.
    pub(super) async fn finish(&self) -> std::io::Result<()> {
        let (reply, done) = tokio::sync::oneshot::channel();
        self.send(WriteJob::Finish(reply)).await?;
        done.await
            .map_err(|_| std::io::Error::other("writer thread ended"))?
    }
}

/// The state of the writer thread.
struct WriterThread {
    file: Arc<File>,
    /// Where written chunks' buffers go.
    spare: Spare,
    /// The same file opened for direct I/O, where the file system allows it.
    direct: DirectWriter,
    /// Whether finishing syncs the file.
    durable: bool,
    /// The end of what is written.
    end: u64,
    /// Bytes written since the last sync.
    unsynced: u64,
    /// The reorder buffer: chunks ahead of `end`, by offset.
    pending: BTreeMap<u64, Vec<u8>>,
    /// Bytes in `pending`.
    held: u64,
    /// Most bytes held back (at least one chunk is, whatever its size).
    reorder_bytes: u64,
    /// The first write error, reported on finishing.
    error: Option<std::io::Error>,
}

impl WriterThread {
    /// Serves jobs until finished, or until every sender is gone.
    fn run(mut self, mut rx: mpsc::Receiver<WriteJob>) {
        while let Some(job) = rx.blocking_recv() {
            match job {
                WriteJob::Write(off, data) => self.accept(off, data),
                WriteJob::Finish(reply) => {
                    let _ = reply.send(self.finish());
                    return;
                }
            }
        }
        // The download ended early (failed or dropped): keep every verified
        // chunk that arrived, for the next attempt to resume from.
        self.write_all_held();
    }

    /// Writes a chunk at the end, or holds it back until the gap before it
    /// is filled (writing the earliest held past the gap if too much is
    /// held); then writes every held chunk the end has reached.
    fn accept(&mut self, off: u64, data: Vec<u8>) {
        if off <= self.end {
            self.write(off, data);
        } else {
            self.held += data.len() as u64;
            self.pending.insert(off, data);
            while self.held > self.reorder_bytes && self.pending.len() > 1 {
                self.write_first_held();
            }
        }
        while self
            .pending
            .first_key_value()
            .is_some_and(|(o, _)| *o <= self.end)
        {
            self.write_first_held();
        }
    }

    /// Writes the held chunk with the lowest offset.
    fn write_first_held(&mut self) {
        if let Some((o, d)) = self.pending.pop_first() {
            self.held -= d.len() as u64;
            self.write(o, d);
        }
    }

    /// Writes every held chunk, in file order.
    fn write_all_held(&mut self) {
        while let Some((o, d)) = self.pending.pop_first() {
            self.write(o, d);
        }
    }

    /// Writes what is held back, syncs, and reports the first error.
    fn finish(&mut self) -> std::io::Result<()> {
        self.write_all_held();
        match self.error.take() {
            Some(e) => Err(e),
            None if self.durable => self.file.sync_all(),
            None => Ok(()),
        }
    }

    /// Writes `data` at `off`, keeping the first error, and syncs every
    /// [`SYNC_EVERY`] bytes written through the page cache.
    fn write(&mut self, off: u64, data: Vec<u8>) {
        let direct = match self.direct.write_head(&data, off) {
            Ok(n) => n,
            Err(e) => {
                self.error.get_or_insert(e);
                data.len()
            }
        };
        let rest = &data[direct..];
        if !rest.is_empty() {
            if let Err(e) = self.file.write_all_at(rest, off + direct as u64) {
                self.error.get_or_insert(e);
            }
            self.unsynced += rest.len() as u64;
        }
        self.end = self.end.max(off + data.len() as u64);
        if self.unsynced >= SYNC_EVERY {
            // Keep the dirty pages few, so the final sync is short.
            self.unsynced = 0;
            let _ = self.file.sync_data();
        }
        // Kept within the reorder budget, with what is held back: the two
        // share it, whatever the chunk size.
        let mut spare = lock(&self.spare);
        let kept = (spare.len() as u64 + 1).saturating_mul(data.capacity() as u64);
        if spare.len() < SPARE_BUFFERS && kept.saturating_add(self.held) <= self.reorder_bytes {
            spare.push(data);
        }
    }
}

/// Threads that sync a batch of files one by one.
const SYNC_THREADS: usize = 16;

/// Most bytes of other programs' unwritten data a `syncfs` may wait for.
const SYNCFS_MAX_OTHER: u64 = 64 << 20;

/// Syncs the data of every file of `paths`, `bytes` written in all and
/// none synced yet. Measured on this machine for 1,000 files of 4 KiB: an
/// fsync each took 0.19 s one after the other and 0.07 s from 16 threads
/// (the file system commits concurrent syncs together), one `syncfs`
/// 0.008 s. But `syncfs` waits for everything unwritten on the file system:
/// 0.78 s behind 1 GiB another program had just written. So: one `syncfs`
/// when the machine holds little unwritten data besides these files (by
/// /proc/meminfo), else an fsync each from [`SYNC_THREADS`] threads.
/// Blocking.
pub(super) fn sync_files(paths: &[PathBuf], bytes: u64) -> std::io::Result<()> {
    let Some(first) = paths.first() else {
        return Ok(());
    };
    let little_else =
        unwritten_bytes().is_some_and(|u| u.saturating_sub(bytes) <= SYNCFS_MAX_OTHER);
    if little_else && on_one_file_system(paths)? {
        return rustix::fs::syncfs(File::open(first)?).map_err(std::io::Error::from);
    }
    sync_each(paths)
}

/// Whether the directories of `paths` are all on one file system (a tree
/// may cross a mount point): one `syncfs` covers only its own.
fn on_one_file_system(paths: &[PathBuf]) -> std::io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let dirs: std::collections::BTreeSet<&Path> = paths.iter().filter_map(|p| p.parent()).collect();
    let mut devs = std::collections::BTreeSet::new();
    for d in dirs {
        let d = if d.as_os_str().is_empty() {
            Path::new(".")
        } else {
            d
        };
        devs.insert(std::fs::metadata(d)?.dev());
    }
    Ok(devs.len() <= 1)
}

/// An fsync of each of `paths`, from [`SYNC_THREADS`] threads. Blocking.
fn sync_each(paths: &[PathBuf]) -> std::io::Result<()> {
    let next = AtomicUsize::new(0);
    let sync_some = || -> std::io::Result<()> {
        while let Some(p) = paths.get(next.fetch_add(1, Ordering::Relaxed)) {
            File::open(p)?.sync_data()?;
        }
        Ok(())
    };
    std::thread::scope(|s| {
        let threads: Vec<_> = (0..SYNC_THREADS.min(paths.len()))
            .map(|_| s.spawn(sync_some))
            .collect();
        threads.into_iter().try_for_each(|t| {
            t.join()
                .unwrap_or_else(|_| Err(std::io::Error::other("a sync thread failed")))
        })
    })
}

/// Bytes of file data the machine holds dirty or being written back
/// (/proc/meminfo), if it says.
fn unwritten_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib = |name: &str| -> Option<u64> {
        let line = info.lines().find(|l| l.starts_with(name))?;
        line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    };
    Some((kib("Dirty:")? + kib("Writeback:")?) * 1024)
}

/// Syncs the directory of each of `paths` once: their entries (a rename, a
/// new file) become durable. Blocking.
pub(super) fn sync_dirs<'a>(paths: impl Iterator<Item = &'a Path>) -> std::io::Result<()> {
    let dirs: std::collections::BTreeSet<&Path> = paths
        .filter_map(|p| p.parent())
        .map(|d| {
            if d.as_os_str().is_empty() {
                Path::new(".")
            } else {
                d
            }
        })
        .collect();
    for d in dirs {
        File::open(d)?.sync_all()?;
    }
    Ok(())
}

/// Whether `path` is a file finished by an earlier attempt (a download
/// resumed): the manifest's length, every chunk verified (sealed again
/// first, with `sealer`). Blocking.
pub(super) fn is_finished(
    path: &Path,
    f: &FileManifest,
    sealer: Option<&Sealer>,
) -> std::io::Result<bool> {
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(false);
    };
    if !meta.is_file() || meta.len() != f.size {
        return Ok(false);
    }
    let file = File::open(path)?;
    Ok(scan(&file, f, f.size, sealer)?.iter().all(|g| *g))
}

/// Writes `to` as a copy of `from`, a file of this download already verified
/// (written, or kept), of `size` bytes: through `to.part`, synced, then
/// renamed, like a fetched file. Blocking.
pub(super) fn copy_file(from: &Path, to: &Path, size: u64) -> std::io::Result<()> {
    let part = super::part_path(to);
    let copied = std::fs::copy(from, &part)?;
    if copied != size {
        return Err(std::io::Error::other(format!(
            "{} changed while it was copied: {copied} bytes, not {size}",
            from.display()
        )));
    }
    File::open(&part)?.sync_all()?;
    std::fs::rename(&part, to)
}

/// Opens (or creates) the `.part` file of a file of `size` bytes, and says
/// how many bytes are already in it.
pub(super) fn open_part(part: &Path, size: u64) -> Result<(File, u64), DownloadError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(part)
        .map_err(io(part))?;
    let mut existing = file.metadata().map_err(io(part))?.len();
    if existing > size {
        // Not this file's .part (or a different version): start over.
        file.set_len(0).map_err(io(part))?;
        existing = 0;
    }
    // No set_len(size) up front: filling holes in a sparse file is far slower
    // than appending (see Writer).
    Ok((file, existing))
}

/// Which chunks of the `.part` file `part` (`existing` bytes long) are good.
/// With `sealer`, the `.part` holds plaintext and each chunk is sealed again
/// to be checked against its hash.
pub(super) async fn scan_part(
    part: &Path,
    file: &Arc<File>,
    f: &FileManifest,
    existing: u64,
    sealer: Option<Arc<Sealer>>,
) -> Result<Vec<bool>, DownloadError> {
    if existing == 0 {
        return Ok(vec![false; f.chunks.len()]);
    }
    let (file2, f2) = (file.clone(), f.clone());
    blocking(part, move || scan(&file2, &f2, existing, sealer.as_deref())).await
}

/// Runs `work` (reading and hashing) off the async threads; errors name `path`.
async fn blocking<T: Send + 'static>(
    path: &Path,
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, DownloadError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| DownloadError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other(e),
        })?
        .map_err(io(path))
}

/// Hashes each chunk of `file` (up to `len` bytes present) and says which match.
fn scan(
    file: &File,
    f: &FileManifest,
    len: u64,
    sealer: Option<&Sealer>,
) -> std::io::Result<Vec<bool>> {
    let n = f.chunks.len();
    let mut ok = vec![false; n];
    // Two threads: hashing is the cost, and it parallelizes per chunk.
    let threads = 2.min(n.max(1));
    let results: Vec<std::io::Result<Vec<(usize, bool)>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| s.spawn(move || scan_every(file, f, len, sealer, t, threads)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("scan panicked")))
            })
            .collect()
    });
    for r in results {
        for (i, good) in r? {
            ok[i] = good;
        }
    }
    Ok(ok)
}

/// One scanning thread's share: chunks `first`, `first + step`, and so on,
/// each with whether it matches (a chunk past `len` does not).
fn scan_every(
    file: &File,
    f: &FileManifest,
    len: u64,
    sealer: Option<&Sealer>,
    first: usize,
    step: usize,
) -> std::io::Result<Vec<(usize, bool)>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; f.chunk_size as usize];
    for i in (first..f.chunks.len()).step_by(step) {
        let (off, l) = f.chunk_range(i);
        if off + l as u64 > len {
            out.push((i, false));
            continue;
        }
        file.read_exact_at(&mut buf[..l], off)?;
        let hash = match sealer {
            None => Hash::of(&buf[..l]),
            Some(sealer) => {
                let mut sealed = buf[..l].to_vec();
                sealer.seal_chunk(i as u64, &mut sealed);
                Hash::of(&sealed)
            }
        };
        out.push((i, hash == f.chunks[i]));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::manifest::FileManifest;

    fn manifest(data: &[u8], chunk_size: u32) -> FileManifest {
        FileManifest {
            name: "f".into(),
            size: data.len() as u64,
            chunk_size,
            chunks: data.chunks(chunk_size as usize).map(Hash::of).collect(),
        }
    }

    #[test]
    fn chunks_ahead_of_the_end_wait_until_the_buffer_is_full() {
        let file = Arc::new(tempfile::tempfile().unwrap());
        let mut w = WriterThread {
            file: file.clone(),
            spare: Spare::default(),
            direct: DirectWriter::none(),
            durable: true,
            end: 0,
            unsynced: 0,
            pending: BTreeMap::new(),
            held: 0,
            reorder_bytes: 4,
            error: None,
        };
        w.accept(8, vec![3; 4]);
        assert_eq!((w.end, w.held), (0, 4), "held back: the buffer is not over");
        w.accept(16, vec![5; 4]);
        assert_eq!(
            (w.end, w.held),
            (12, 4),
            "over: the earliest held is written"
        );
        w.accept(0, vec![1; 4]);
        w.accept(4, vec![2; 4]);
        assert_eq!((w.end, w.held), (12, 4), "16 waits for the gap before it");
        w.accept(12, vec![4; 4]);
        assert_eq!((w.end, w.held), (20, 0), "the gap filled: 16 follows");
        w.finish().unwrap();
        let mut out = vec![0; 20];
        file.read_exact_at(&mut out, 0).unwrap();
        assert_eq!(out, [[1; 4], [2; 4], [3; 4], [4; 4], [5; 4]].concat());
    }

    #[test]
    fn direct_writes_land_whole_with_unaligned_tails_and_out_of_order_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let part = dir.path().join("f.part");
        let data: Vec<u8> = (0..(3 * 65536 + 1000) as u32)
            .map(|i| (i % 251) as u8)
            .collect();
        for chunk in [65536, 65536 + 100] {
            let _ = std::fs::remove_file(&part);
            let (file, existing) = open_part(&part, data.len() as u64).unwrap();
            assert_eq!(existing, 0);
            let file = Arc::new(file);
            let mut w = WriterThread {
                file: file.clone(),
                spare: Spare::default(),
                direct: DirectWriter::open(&part),
                durable: true,
                end: 0,
                unsynced: 0,
                pending: BTreeMap::new(),
                held: 0,
                reorder_bytes: chunk as u64,
                error: None,
            };
            let opened = w.direct.is_direct();
            let pieces: Vec<_> = data.chunks(chunk).enumerate().collect();
            for &(i, piece) in pieces.iter().rev() {
                w.accept((i * chunk) as u64, piece.to_vec());
            }
            w.finish().unwrap();
            // Where the file system takes direct I/O, no write fell back.
            assert_eq!(w.direct.is_direct(), opened);
            assert_eq!(std::fs::read(&part).unwrap(), data, "chunks of {chunk}");
        }
    }

    #[test]
    fn files_are_synced_each_or_together_and_a_missing_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<PathBuf> = (0..40).map(|i| dir.path().join(format!("f{i}"))).collect();
        for p in &paths {
            std::fs::write(p, b"data").unwrap();
        }
        sync_each(&paths).unwrap();
        sync_files(&paths, 160).unwrap();
        sync_files(&[], 0).unwrap();
        let mut gone = paths.clone();
        gone.push(dir.path().join("missing"));
        assert!(sync_each(&gone).is_err());
        assert!(unwritten_bytes().is_some(), "/proc/meminfo is read");
    }

    #[test]
    fn a_copy_arrives_whole_under_its_name_and_a_short_one_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let (from, to) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&from, b"twelve bytes").unwrap();
        copy_file(&from, &to, 12).unwrap();
        assert_eq!(std::fs::read(&to).unwrap(), b"twelve bytes");
        assert!(!super::super::part_path(&to).exists());
        let other = dir.path().join("c");
        assert!(copy_file(&from, &other, 13).is_err());
        assert!(!other.exists());
        let f = manifest(b"twelve bytes", 1024);
        assert!(is_finished(&to, &f, None).unwrap());
        assert!(!is_finished(&other, &f, None).unwrap());
    }

    #[test]
    fn scan_keeps_only_whole_chunks_that_hash_right() {
        let data: Vec<u8> = (0..10u8).collect();
        let f = manifest(&data, 4);
        let file = tempfile::tempfile().unwrap();
        let mut part = data.clone();
        part[5] ^= 1;
        file.write_all_at(&part[..9], 0).unwrap();
        assert_eq!(scan(&file, &f, 9, None).unwrap(), [true, false, false]);
        file.write_all_at(&data, 0).unwrap();
        assert_eq!(scan(&file, &f, 10, None).unwrap(), [true, true, true]);
    }
}
