//! One file of a download, from start to end: resumed from its `.part` (or
//! started), fetched by the workers of every provider, then checked, synced
//! and given its final name. (Whether it needs fetching at all is the plan's
//! call: the `plan` module's.)

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::download::queue::Queue;
use crate::download::shared::{lock, Shared};
use crate::download::worker::{worker, Job};
use crate::download::writer::{open_part, scan_part, sync_dirs, sync_files, Writer};
use crate::download::{io, part_path, DownloadError, DownloadOptions, Progress, Provider};
use crate::proto::manifest::FileManifest;
use crate::proto::sealed::Sealer;

/// How the chunks of a sealed stream are opened, and how much of the stream
/// to keep (the padding goes).
pub(super) struct Sealing {
    /// Opens (and, to check a resumed `.part`, seals) the chunks.
    pub(super) sealer: Arc<Sealer>,
    /// Bytes of the stream kept in the finished file.
    pub(super) keep: u64,
}

/// When a fetched file is made durable and given its final name.
#[derive(Clone, Copy)]
pub(super) enum Commit<'a> {
    /// Synced and renamed as soon as it is complete (written with direct
    /// I/O where the disk takes it).
    Now,
    /// Left complete but unsynced as `NAME.part`, its final path added to
    /// the list with its size: the caller syncs many such files at once and
    /// renames them
    /// ([`commit`]). For the small files of a tree, where a sync each cost
    /// more than fetching them.
    Later(&'a Mutex<Vec<(PathBuf, u64)>>),
}

/// Makes the files `paths` (each complete as `NAME.part`, unsynced, `bytes`
/// in all) durable together ([`sync_files`]), renames them, and syncs their
/// directories. Blocking.
pub(super) fn commit(out: &Path, paths: &[PathBuf], bytes: u64) -> Result<(), DownloadError> {
    let parts: Vec<PathBuf> = paths.iter().map(|p| part_path(p)).collect();
    sync_files(&parts, bytes).map_err(io(out))?;
    for path in paths {
        std::fs::rename(part_path(path), path).map_err(io(path))?;
    }
    sync_dirs(paths.iter().map(PathBuf::as_path)).map_err(io(out))
}

/// Downloads the file `f` to `path` from `providers`. With `sealing`, `f`
/// describes the plaintext stream (its chunk hashes are of the sealed
/// chunks): each chunk is fetched sealed, checked against its hash, opened,
/// and written in plaintext.
#[allow(clippy::too_many_arguments)]
pub(super) async fn download_file(
    providers: &[Provider],
    shared: &Arc<Shared>,
    f: &FileManifest,
    path: &Path,
    opts: &DownloadOptions,
    progress: &Arc<dyn Progress>,
    sealing: Option<&Sealing>,
    commit: Commit<'_>,
) -> Result<(), DownloadError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let part = part_path(path);
    let (file, existing) = open_part(&part, f.size)?;
    let file = Arc::new(file);
    let sealer = sealing.map(|s| s.sealer.clone());
    let have = scan_part(&part, &file, f, existing, sealer.clone()).await?;
    note_resumed(shared, f, &have, &part, progress);
    let job = Job {
        shared: shared.clone(),
        queue: Arc::new(Mutex::new(Queue::new(f.chunks.len(), &have))),
        permits: Arc::new(Semaphore::new(requests_at_once(opts, f))),
        writer: Arc::new(Writer::new(
            file.clone(),
            &part,
            existing,
            opts.max_in_flight_bytes,
            matches!(commit, Commit::Now),
        )),
        manifest: Arc::new(f.clone()),
        sealer,
        timeout: opts.chunk_timeout,
        progress: progress.clone(),
        all_in: CancellationToken::new(),
    };
    run_workers(providers, &job, opts.per_peer).await;
    finish(&job, path, &part, &file, sealing.map(|s| s.keep)).await?;
    match commit {
        Commit::Now => std::fs::rename(&part, path).map_err(io(path)),
        Commit::Later(list) => {
            lock(list).push((path.to_path_buf(), f.size));
            Ok(())
        }
    }
}

/// Counts the chunks `have` found intact in `part`: as progress, in the
/// stats, in the log.
fn note_resumed(
    shared: &Shared,
    f: &FileManifest,
    have: &[bool],
    part: &Path,
    progress: &Arc<dyn Progress>,
) {
    let resumed = have.iter().filter(|h| **h).count();
    let resumed_bytes: u64 = (0..f.chunks.len())
        .filter(|&i| have[i])
        .map(|i| f.chunk_range(i).1 as u64)
        .sum();
    progress.advance(resumed_bytes);
    if resumed > 0 {
        debug!(
            resumed,
            total = f.chunks.len(),
            "resuming from {}",
            part.display()
        );
    }
    let mut s = lock(&shared.stats);
    s.chunks_resumed += resumed;
    s.resumed_bytes += resumed_bytes;
}

/// Requests at once: `max_in_flight`, fewer if the chunks are large.
fn requests_at_once(opts: &DownloadOptions, f: &FileManifest) -> usize {
    let by_bytes = (opts.max_in_flight_bytes / u64::from(f.chunk_size.max(1))).max(1);
    opts.max_in_flight.max(1).min(by_bytes as usize)
}

/// Runs `per_peer` workers for each provider until all have stopped.
async fn run_workers(providers: &[Provider], job: &Job, per_peer: usize) {
    let mut workers = JoinSet::new();
    for p in providers {
        for _ in 0..per_peer.max(1) {
            workers.spawn(worker(p.clone(), job.clone()));
        }
    }
    while workers.join_next().await.is_some() {
        if lock(&job.queue).remaining() == 0 {
            // Every chunk is in: requests still waiting on a slow or silent
            // peer (the losers of the end game) are dropped, not waited for.
            // Workers handing a chunk to the writer are not interrupted: that
            // write must land before the writer is finished.
            job.all_in.cancel();
        }
    }
}

/// Once the workers stopped: an error naming what is missing if a chunk is,
/// else the file checked and cut to `keep` bytes if given (a sealed
/// stream's padding); the caller gives it its name.
async fn finish(
    job: &Job,
    path: &Path,
    part: &Path,
    file: &File,
    keep: Option<u64>,
) -> Result<(), DownloadError> {
    let remaining = lock(&job.queue).remaining();
    let unopenable = lock(&job.shared.unopenable).clone();
    if let Some((chunk, reason)) = unopenable {
        if let Err(e) = job.writer.finish().await {
            debug!("flushing the partial download: {e}");
        }
        return Err(DownloadError::Unopenable {
            path: path.to_path_buf(),
            chunk,
            reason,
        });
    }
    if remaining > 0 {
        // Keep every verified chunk that arrived, written out before a retry
        // scans the .part file.
        if let Err(e) = job.writer.finish().await {
            debug!("flushing the partial download: {e}");
        }
        return Err(DownloadError::Incomplete {
            path: path.to_path_buf(),
            missing: remaining,
            total: job.manifest.chunks.len(),
            last: lock(&job.shared.last_error).clone(),
        });
    }

    // Every chunk was verified in memory before it was written (or, resumed,
    // when the .part was scanned): write what is held back and sync, then check
    // that the tally covers the manifest and the length matches, and give the
    // file its final name.
    job.writer.finish().await.map_err(io(part))?;
    let len = file.metadata().map_err(io(part))?.len();
    let verified = lock(&job.queue).remaining() == 0 && len == job.manifest.size;
    if !verified {
        return Err(DownloadError::Verify(path.to_path_buf()));
    }
    if let Some(keep) = keep.filter(|k| *k < len) {
        file.set_len(keep).map_err(io(part))?;
        file.sync_all().map_err(io(part))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_names_every_part_file_and_leaves_none() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        let paths = vec![dir.path().join("a"), sub.join("b")];
        for (i, p) in paths.iter().enumerate() {
            std::fs::write(part_path(p), [i as u8; 10]).unwrap();
        }
        commit(dir.path(), &paths, 20).unwrap();
        for (i, p) in paths.iter().enumerate() {
            assert_eq!(std::fs::read(p).unwrap(), [i as u8; 10]);
            assert!(!part_path(p).exists());
        }
        commit(dir.path(), &[], 0).unwrap();
        // A part file gone (deleted meanwhile) is an error.
        assert!(commit(dir.path(), &[dir.path().join("c")], 0).is_err());
    }
}
