//! Downloading a sealed file or tree ([`crate::proto::sealed`]) with its key.
//!
//! 1. The metadata is opened with the key and checked against the body
//!    before anything is written: a wrong key fails here
//!    ([`DownloadError::Sealed`]), and so do names that are not plain names,
//!    a tree past the limits, or sizes that do not fit the chunks.
//! 2. The paths are checked as for a plain tree (nothing overwritten unless
//!    forced; the disk must have room).
//! 3. The stream is fetched like one file (every provider, resumable, each
//!    chunk checked against its hash, then opened: its tag checked) into
//!    `OUT.part`: for a single file that is the file, cut to its size (the
//!    padding goes) and renamed; for a tree it is `OUT.qp-tree` (plaintext,
//!    like any `.part`), whose ranges then become the tree's files (each
//!    written as `NAME.part`; all synced together, then renamed) before it
//!    is deleted. A
//!    finished `OUT.qp-tree` left by an attempt cut off while unpacking is
//!    unpacked again without fetching anything.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::download::file::{commit, download_file, Commit, Sealing};
use crate::download::plan::{check_dir, check_file, check_space};
use crate::download::shared::{lock, Shared};
use crate::download::writer::is_finished;
use crate::download::{io, part_path, DownloadError, DownloadOptions, Progress, Provider};
use crate::proto::manifest::{FileManifest, SealedManifest};
use crate::proto::sealed::{EntryKind, FileKey, Meta, Sealer};
use crate::proto::Hash;

/// Downloads the sealed file `id` (its manifest `m`) to `out`, opened with
/// `key`.
#[allow(clippy::too_many_arguments)]
pub(super) async fn download_sealed(
    providers: &[Provider],
    shared: &Arc<Shared>,
    id: Hash,
    m: &SealedManifest,
    key: &FileKey,
    out: &Path,
    opts: &DownloadOptions,
    progress: &Arc<dyn Progress>,
) -> Result<(), DownloadError> {
    let sealer = Arc::new(Sealer::new(key));
    let meta = sealer
        .open_meta(&m.commitment, &m.meta, &m.body)
        .map_err(|reason| DownloadError::Sealed { id, reason })?;
    // The plaintext stream, as the download engine sees a file: offsets and
    // lengths of the plaintext, hashes of the sealed chunks.
    let stream = FileManifest {
        name: meta.entries[0].name.clone(),
        size: meta.stream_len,
        chunk_size: meta.chunk_size,
        chunks: m.body.chunks.clone(),
    };
    // The name sealed inside, which only a key holder sees.
    let name = match meta.entries.first() {
        Some(e) if !e.name.is_empty() => e.name.clone(),
        _ => out
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default(),
    };
    progress.begin(&name, meta.stream_len);
    let job = Job {
        providers,
        shared,
        opts,
        progress,
        sealer,
        stream: &stream,
    };
    let (files, bytes) = match meta.entries[0].kind {
        EntryKind::File(_) => (1, single_file(&job, meta.content_len(), out).await?),
        EntryKind::Dir => tree(&job, &meta, out).await?,
    };
    let mut s = lock(&shared.stats);
    s.files += files;
    s.bytes += bytes;
    Ok(())
}

/// What both kinds of sealed download need.
struct Job<'a> {
    providers: &'a [Provider],
    shared: &'a Arc<Shared>,
    opts: &'a DownloadOptions,
    progress: &'a Arc<dyn Progress>,
    sealer: Arc<Sealer>,
    /// The plaintext stream, as a file.
    stream: &'a FileManifest,
}

impl Job<'_> {
    /// Fetches the stream to `path`, cut to `keep` bytes.
    async fn fetch(&self, path: &Path, keep: u64) -> Result<(), DownloadError> {
        let sealing = Sealing {
            sealer: self.sealer.clone(),
            keep,
        };
        let j = self;
        download_file(
            j.providers,
            j.shared,
            j.stream,
            path,
            j.opts,
            j.progress,
            Some(&sealing),
            Commit::Now,
        )
        .await
    }
}

/// A single file: the stream is the file, cut to its `size`. Returns its
/// size.
async fn single_file(job: &Job<'_>, size: u64, out: &Path) -> Result<u64, DownloadError> {
    if kept(out, job.stream, &job.sealer, size).await? {
        job.progress.advance(job.stream.size);
        let mut s = lock(&job.shared.stats);
        s.chunks_resumed += job.stream.chunks.len();
        s.resumed_bytes += size;
        return Ok(size);
    }
    check_file(out, job.opts.force)?;
    check_space(out, size)?;
    job.fetch(out, size).await?;
    Ok(size)
}

/// A tree: the stream to `OUT.qp-tree`, then unpacked into its files.
/// Returns the files written and their bytes.
async fn tree(job: &Job<'_>, meta: &Meta, out: &Path) -> Result<(usize, u64), DownloadError> {
    let paths = tree_paths(meta, out);
    let whole = with_suffix(out, ".qp-tree");
    // A stream an earlier attempt finished (cut off while unpacking) is
    // unpacked as it is, over the files that attempt wrote.
    let finished = {
        let (w, stream, sealer) = (whole.clone(), job.stream.clone(), job.sealer.clone());
        tokio::task::spawn_blocking(move || is_finished(&w, &stream, Some(&sealer)))
            .await
            .map_err(|e| io(out)(std::io::Error::other(e)))?
            .map_err(io(&whole))?
    };
    for (i, path) in paths.iter().enumerate() {
        match meta.entries[i].kind {
            EntryKind::Dir => check_dir(path)?,
            EntryKind::File(_) => check_file(path, job.opts.force || finished)?,
        }
    }
    if finished {
        job.progress.advance(meta.stream_len);
    } else {
        check_file(&whole, job.opts.force)?;
        check_space(out, meta.stream_len.saturating_mul(2))?;
        job.fetch(&whole, meta.stream_len).await?;
    }
    let (meta2, whole2) = (meta.clone(), whole.clone());
    let written = tokio::task::spawn_blocking(move || unpack(&meta2, &paths, &whole2))
        .await
        .map_err(|e| DownloadError::Io {
            path: whole.clone(),
            source: std::io::Error::other(e),
        })??;
    std::fs::remove_file(&whole).map_err(io(&whole))?;
    Ok((written, meta.content_len()))
}

/// Whether the single file at `out` is the download, finished before: the
/// same bytes, each chunk sealing to its hash (only checked when there is no
/// padding to cut). Reads and seals the file off the async threads.
async fn kept(
    out: &Path,
    stream: &FileManifest,
    sealer: &Arc<Sealer>,
    keep: u64,
) -> Result<bool, DownloadError> {
    if keep != stream.size {
        return Ok(false);
    }
    let (path, stream, sealer) = (out.to_path_buf(), stream.clone(), sealer.clone());
    tokio::task::spawn_blocking(move || is_finished(&path, &stream, Some(&sealer)))
        .await
        .map_err(|e| io(out)(std::io::Error::other(e)))?
        .map_err(io(out))
}

/// Where each entry goes: the root at `out`, the others below it.
fn tree_paths(meta: &Meta, out: &Path) -> Vec<PathBuf> {
    (0..meta.entries.len())
        .map(|i| {
            let mut p = out.to_path_buf();
            for name in meta.path(i) {
                p.push(name);
            }
            p
        })
        .collect()
}

/// `path` with `suffix` appended to its name.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

/// Writes the tree's directories and files from the finished stream
/// `whole`: each file from its range, as `NAME.part`; then all of them
/// committed together ([`commit`]: synced, renamed, their directories
/// synced).
/// Returns the files written. Blocking.
///
/// Not a sync each as it is written: unpacking 100,000 files of 1 KiB took
/// 23 s that way, nearly all of it in the syncs.
fn unpack(meta: &Meta, paths: &[PathBuf], whole: &Path) -> Result<usize, DownloadError> {
    for (i, e) in meta.entries.iter().enumerate() {
        if e.kind == EntryKind::Dir {
            std::fs::create_dir_all(&paths[i]).map_err(io(&paths[i]))?;
        }
    }
    let stream = File::open(whole).map_err(io(whole))?;
    let files = meta.files();
    let mut written = Vec::with_capacity(files.len());
    for f in &files {
        let path = &paths[f.entry];
        let part = part_path(path);
        let mut to = File::create(&part).map_err(io(&part))?;
        copy_range(&stream, f.offset, f.size, &mut to).map_err(io(&part))?;
        written.push(path.clone());
    }
    commit(whole, &written, meta.content_len())?;
    Ok(files.len())
}

/// Copies `len` bytes of `from` at `offset` to the end of `to`.
fn copy_range(from: &File, offset: u64, len: u64, to: &mut File) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let mut from = from.try_clone()?;
    from.seek(SeekFrom::Start(offset))?;
    let copied = std::io::copy(&mut from.take(len), to)?;
    if copied != len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the stream is shorter than its files",
        ));
    }
    Ok(())
}
