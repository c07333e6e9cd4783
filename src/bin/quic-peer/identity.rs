//! `quic-peer id` and `quic-peer keygen`: a node's identity and a private
//! network's key, made or read without starting a node.

use std::path::Path;

use anyhow::{Context, Result};
use quic_peer::crypto::netkey::NetworkKey;
use quic_peer::store::datadir;
use quic_peer::Identity;

use crate::args::NodeArgs;
use crate::display::say;

/// Prints the id of the node whose data directory is `--data-dir` (or the
/// default one), making its identity if it has none yet.
pub fn print_id(args: &NodeArgs) -> Result<()> {
    let dir = match &args.data_dir {
        Some(d) => d.clone(),
        None => datadir::default_path().context("no data directory: set --data-dir")?,
    };
    let identity = Identity::load_or_create(&dir)?;
    println!("{}", identity.node_id());
    Ok(())
}

/// Writes a new network key to `file` and says how to use it.
pub fn keygen(file: &Path, force: bool) -> Result<()> {
    let key = NetworkKey::write_new(file, force)?;
    say!(
        "[KEYGEN] wrote a new network key to {} (network {})",
        file.display(),
        key.fingerprint()
    );
    say!(
        "give it to every member over a safe channel and start them with --network-key {}",
        file.display()
    );
    Ok(())
}
