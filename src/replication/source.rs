//! Where the chunks of a file being pushed are read from: the node's store,
//! or (a client without one) the original files, each read verified again.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::proto::sealed::Sealer;
use crate::proto::Hash;
use crate::store::chunker::ChunkLocation;
use crate::store::sealer::SealedLocation;
use crate::store::{Store, StoreError};

/// Where pushed chunks are read from.
#[derive(Clone)]
pub enum ChunkSource {
    /// The node's store.
    Store(Store),
    /// The original files (a client without a store); each read is verified
    /// again, so a file changed since chunking is caught.
    Files(Arc<HashMap<Hash, ChunkLocation>>),
    /// The original files of a sealed tree (a client without a store):
    /// each chunk is read from its ranges of them and sealed again, and the
    /// result checked against its hash.
    Sealed(Arc<(Sealer, HashMap<Hash, SealedLocation>)>),
}

/// Why reading a chunk to push failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The chunk is not where it was.
    #[error("chunk {0} is missing from the source")]
    Missing(Hash),
    /// The file changed since it was chunked.
    #[error("{0} changed while it was being uploaded")]
    Changed(PathBuf),
    /// The store could not read it.
    #[error("chunk {hash}: {source}")]
    Store {
        /// The chunk.
        hash: Hash,
        /// What the store said.
        source: StoreError,
    },
    /// Reading failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
}

impl ChunkSource {
    pub(super) fn read(&self, hash: &Hash) -> Result<Vec<u8>, SourceError> {
        match self {
            ChunkSource::Store(s) => s
                .read_chunk(hash)
                .map_err(|source| SourceError::Store {
                    hash: *hash,
                    source,
                })?
                .ok_or(SourceError::Missing(*hash)),
            ChunkSource::Sealed(sealed) => {
                let (sealer, map) = &**sealed;
                let loc = map.get(hash).ok_or(SourceError::Missing(*hash))?;
                let path = || {
                    loc.segments
                        .first()
                        .map(|s| s.path.clone())
                        .unwrap_or_default()
                };
                let mut data = loc.read().map_err(|source| SourceError::Io {
                    path: path(),
                    source,
                })?;
                sealer.seal_chunk(loc.index, &mut data);
                if Hash::of(&data) != *hash {
                    return Err(SourceError::Changed(path()));
                }
                Ok(data)
            }
            ChunkSource::Files(map) => {
                use std::io::{Read, Seek, SeekFrom};
                let loc = map.get(hash).ok_or(SourceError::Missing(*hash))?;
                let io = |source| SourceError::Io {
                    path: loc.path.clone(),
                    source,
                };
                let mut f = std::fs::File::open(&loc.path).map_err(io)?;
                f.seek(SeekFrom::Start(loc.offset)).map_err(io)?;
                // Read into the spare capacity, not over zeros; a file cut
                // shorter fails the hash.
                let mut buf = Vec::with_capacity(loc.len);
                f.take(loc.len as u64).read_to_end(&mut buf).map_err(io)?;
                if Hash::of(&buf) != *hash {
                    return Err(SourceError::Changed(loc.path.clone()));
                }
                Ok(buf)
            }
        }
    }
}
