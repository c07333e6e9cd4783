//! `quic-peer put` and `quic-peer get`: a short-lived client node that joins
//! the network, makes one transfer, prints its report and leaves.
//!
//! Arguments are checked before the node starts, so a mistake costs no
//! network round and gets one clear line.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use quic_peer::download::DownloadOptions;
use quic_peer::proto::manifest::{ChunkSize, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE};
use quic_peer::proto::sealed::FileKey;
use quic_peer::proto::ticket::Target;
use quic_peer::proto::wire::Role;
use quic_peer::replication::{PutOptions, Sealing, Shortfall};
use quic_peer::store::datadir::DataDir;
use quic_peer::{Identity, Node, NodeConfig};

use crate::args::NodeArgs;
use crate::display::{print_get, print_put, say, TransferProgress};

/// How `put` stores a file: its flags.
pub struct PutHow {
    /// Copies on other nodes.
    pub replicas: usize,
    /// Plaintext bytes per chunk (by the file's size when not given).
    pub chunk_size: Option<u64>,
    /// `--public`.
    pub public: bool,
    /// `--convergent`.
    pub convergent: bool,
    /// `--pad`.
    pub pad: bool,
}

/// `target` with `key` (`get ID --key KEY`): a ticket with no holders.
pub fn with_key(target: Target, key: Option<FileKey>) -> Result<Target> {
    target
        .with_key(key)
        .map_err(|_| anyhow::anyhow!("--key differs from the key in the ticket"))
}

/// Stores the file or directory at `path` with `replicas` copies on other
/// nodes, and prints its id and ticket.
///
/// Fewer copies because the network has fewer nodes is success, said in the
/// report. Fewer because nodes that could hold them refused or failed is an
/// error, after the report (the copies placed stay, and the id and ticket
/// work): the file is less safe than asked, and a script must hear it.
pub async fn put(args: &NodeArgs, path: &Path, how: &PutHow) -> Result<()> {
    anyhow::ensure!(how.replicas >= 1, "--replicas must be at least 1");
    let chunk_size = match how.chunk_size {
        Some(size) => ChunkSize::Fixed(checked_chunk_size(size)?),
        None => ChunkSize::Auto,
    };
    std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    let sealing = match (how.public, how.convergent) {
        (true, _) => Sealing::Public,
        (false, true) => {
            let Some(dir) = &args.data_dir else {
                anyhow::bail!(
                    "--convergent needs --data-dir DIR: the convergence secret is kept there"
                );
            };
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let secret =
                quic_peer::crypto::identity::convergence_secret(dir).with_context(|| {
                    format!("cannot read the convergence secret in {}", dir.display())
                })?;
            Sealing::Convergent(secret)
        }
        (false, false) => Sealing::Random,
    };
    let opts = PutOptions {
        replicas: how.replicas,
        chunk_size,
        sealing,
        pad: how.pad,
    };
    let (node, _dir) = start(args, true).await?;
    let node_id = node.id();
    let progress = TransferProgress::new("put");
    let result = node.put(path, &opts, progress.clone()).await;
    progress.finish();
    node.shutdown().await;
    let report = result?;
    print_put(&report, node_id);
    if let Some(Shortfall::Failed { failed, .. }) = report.shortfall() {
        anyhow::bail!(
            "put stored only {} of {} copies: {failed} {} refused or failed (see the \
             [WARN] lines); the id and ticket above work, and running put again places \
             the missing copies",
            report.remote_copies,
            report.wanted,
            if failed == 1 { "node" } else { "nodes" },
        );
    }
    Ok(())
}

/// Fetches `target` into `out`, verified, and prints what it got; files in
/// the way are replaced only if `force`.
pub async fn get(
    args: &NodeArgs,
    target: &Target,
    out: &Path,
    retry_for: Duration,
    max_in_flight: u64,
    force: bool,
) -> Result<()> {
    check_writable(out)?;
    // A ticket names holders to ask; an id alone finds them through the network.
    let need_bootstrap = matches!(target, Target::Id(_));
    let (node, _dir) = start(args, need_bootstrap).await?;
    say!("[GET] looking for the holders of {}", target.id());
    let progress = TransferProgress::new("get");
    let opts = DownloadOptions {
        retry_for,
        max_in_flight_bytes: max_in_flight,
        force,
        ..DownloadOptions::default()
    };
    let result = node.get(target, out, &opts, progress.clone()).await;
    progress.finish();
    node.shutdown().await;
    let stats = result?;
    print_get(out, &stats);
    Ok(())
}

/// `--chunk-size` as the manifest takes it, within its bounds.
fn checked_chunk_size(chunk_size: u64) -> Result<u32> {
    u32::try_from(chunk_size)
        .ok()
        .filter(|c| (MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(c))
        .with_context(|| {
            format!("--chunk-size must be between {MIN_CHUNK_SIZE} and {MAX_CHUNK_SIZE} bytes")
        })
}

/// Fails unless a file can be created beside `out`, before any download.
fn check_writable(out: &Path) -> Result<()> {
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    anyhow::ensure!(
        dir.is_dir(),
        "cannot write {}: {} is not a directory",
        out.display(),
        dir.display()
    );
    let probe = dir.join(format!(".quic-peer-probe-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .with_context(|| format!("cannot write {}: directory is not writable", out.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Starts a short-lived client node and joins through the bootstrap nodes.
///
/// Its identity is a throwaway one, or with `--data-dir` that directory's
/// (locked while the returned guard lives, so it is not a running node's),
/// which lets nodes with an allow list admit it.
async fn start(args: &NodeArgs, need_bootstrap: bool) -> Result<(Node, Option<DataDir>)> {
    let config = NodeConfig {
        role: Role::Client,
        data_dir: None,
        ..args.config()?
    };
    let has_bootstrap = !config.bootstrap.is_empty();
    if need_bootstrap && !has_bootstrap {
        anyhow::bail!("--bootstrap ADDR is required to reach the network");
    }
    let (node, dir) = match &args.data_dir {
        Some(dir) => {
            let dir = DataDir::lock(dir)?;
            let identity = Identity::load_or_create(dir.path())?;
            (
                Node::start_with_identity(config, identity).await?,
                Some(dir),
            )
        }
        None => (Node::start(config).await?, None),
    };
    if has_bootstrap {
        if let Err(last) = node.net().bootstrap_once().await {
            if need_bootstrap {
                node.shutdown().await;
                anyhow::bail!(
                    "cannot reach the network: no bootstrap node could be joined ({last})"
                );
            }
        }
    }
    Ok((node, dir))
}
