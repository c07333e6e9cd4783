//! HOLD: a peer asks this node to keep a file whose pieces it just put.
//!
//! The node agrees only when every piece is stored and the tree keeps the
//! limits of [`crate::proto::tree`], it is among the nodes closest to the
//! file by its own routing table (where the network keeps copies; a friend
//! on loopback may ask for any file), and the file fits in the peer's
//! allowance ([`super::allowance`]). Pieces of a HOLD refused stay unheld
//! and a garbage pass collects them.

use tracing::{debug, warn};

use super::{blocking, Ctx};
use crate::proto::manifest::Manifest;
use crate::proto::wire::{NackReason, Response};
use crate::proto::Hash;
use crate::store::{FileRecord, Store, StoreError};
use crate::transfer::allowance::Trust;

/// Answers a HOLD of `id`, and says whether the file is held anew (a
/// repeated HOLD of a held file costs one lookup in the store).
pub(super) async fn hold(ctx: &Ctx, id: Hash) -> (Response, bool) {
    let Some(store) = ctx.store.clone() else {
        return (Response::Nack(NackReason::NotAccepted), false);
    };
    let (record, charge) = match blocking(store.clone(), move |s| what_to_hold(&s, &id)).await {
        Ok(Ok(found)) => found,
        Ok(Err(answer)) => return (answer, false),
        Err(e) => {
            warn!("store: {e}");
            return (Response::Nack(NackReason::Internal), false);
        }
    };
    let close = ctx.on_hold.as_ref().is_none_or(|l| l.close_to(&id));
    if !close && ctx.uploader.trust != Trust::Friend {
        debug!(file = %id.fmt_short(), "HOLD refused: not among the closest nodes");
        return (Response::Nack(NackReason::NotClose), false);
    }
    let source = ctx.uploader.source;
    let s = store.clone();
    let add = move || s.add_file_for(&id, &record, Some((&source, charge)));
    match ctx
        .allowances
        .agree(&store, &ctx.uploader, charge, add)
        .await
    {
        Err(e) => {
            debug!(file = %id.fmt_short(), "HOLD refused: {e}");
            (Response::Nack(NackReason::OverAllowance), false)
        }
        Ok(Ok(added)) if added.complete => (Response::Ack, true),
        Ok(Ok(_)) => (Response::Nack(NackReason::Incomplete), false),
        Ok(Err(e)) => {
            warn!("store: {e}");
            (Response::Nack(NackReason::Internal), false)
        }
    }
}

/// The record and the charge (content plus manifest bytes) of a file a
/// HOLD may make held, or the answer when there is nothing to decide: ACK
/// if it is held already, NACK `Incomplete` while a piece is missing,
/// `TooLarge` for a tree past the limits (which no getter would accept).
fn what_to_hold(
    store: &Store,
    id: &Hash,
) -> Result<Result<(FileRecord, u64), Response>, StoreError> {
    if store.holds(id)? {
        return Ok(Err(Response::Ack));
    }
    let tree = match store.checked_tree(id) {
        Ok(Some(tree)) => tree,
        Ok(None) => return Ok(Err(Response::Nack(NackReason::Incomplete))),
        Err(e @ StoreError::Tree { .. }) => {
            debug!("HOLD refused: {e}");
            return Ok(Err(Response::Nack(NackReason::TooLarge)));
        }
        Err(e) => return Err(e),
    };
    if !store.missing_chunks(id)?.is_some_and(|m| m.is_empty()) {
        return Ok(Err(Response::Nack(NackReason::Incomplete)));
    }
    let Some((_, root)) = tree.manifests.first() else {
        return Ok(Err(Response::Nack(NackReason::Incomplete)));
    };
    let manifest_bytes: u64 = tree
        .manifests
        .iter()
        .map(|(_, m)| m.encode().len() as u64)
        .sum();
    let record = FileRecord {
        name: root.name().to_string(),
        size: tree.stats.size,
        is_dir: matches!(root, Manifest::Dir(_)),
    };
    Ok(Ok((record, tree.stats.size.saturating_add(manifest_bytes))))
}
