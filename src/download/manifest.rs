//! Getting a download's manifests: the one named by its id and, for a
//! directory, every one below it, each from the first provider (best first)
//! that answers with bytes that hash to the id asked for.

use std::path::{Path, PathBuf};

use crate::download::shared::Shared;
use crate::download::{io, DownloadError, DownloadOptions, Provider};
use crate::proto::manifest::{FileManifest, Manifest};
use crate::proto::Hash;
use crate::transfer::{fetch_manifest, FetchError};

/// The files of the tree `id`, each with the path it is written to under
/// `out` (`out` itself for a single file). Directories are created on the
/// way down.
pub(super) async fn files_of(
    providers: &[Provider],
    shared: &Shared,
    id: Hash,
    out: &Path,
    opts: &DownloadOptions,
) -> Result<Vec<(PathBuf, FileManifest)>, DownloadError> {
    let root = get_manifest(providers, shared, id, opts).await?;
    let mut files = Vec::new();
    let mut stack = vec![(out.to_path_buf(), root)];
    while let Some((path, m)) = stack.pop() {
        match m {
            Manifest::File(f) => files.push((path, f)),
            Manifest::Dir(d) => {
                std::fs::create_dir_all(&path).map_err(io(&path))?;
                for e in d.entries {
                    let child = get_manifest(providers, shared, e.id, opts).await?;
                    stack.push((path.join(&e.name), child));
                }
            }
        }
    }
    Ok(files)
}

/// The manifest `id` from the first provider still asked that gives it.
async fn get_manifest(
    providers: &[Provider],
    shared: &Shared,
    id: Hash,
    opts: &DownloadOptions,
) -> Result<Manifest, DownloadError> {
    let mut last = String::from("no provider");
    for p in providers {
        if shared.gave_up_on(&p.id) {
            continue;
        }
        match fetch_manifest(&p.conn, id, opts.chunk_timeout).await {
            Ok((_, m)) => {
                shared.scores.served(p.id);
                return Ok(m);
            }
            Err(e) => {
                shared.score_failure(&p.id, &e, &"the manifest");
                if matches!(e, FetchError::NotFound) {
                    // It does not have the file after all: no chunk either.
                    shared.rule_out(p.id);
                }
                last = format!("{}: {e}", p.id.fmt_short());
            }
        }
    }
    Err(DownloadError::Manifest { id, last })
}
