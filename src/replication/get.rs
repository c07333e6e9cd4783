//! Getting a file: find who holds it (the ticket's holders, and the
//! providers a GET_PROVIDERS lookup finds), each connected with its id
//! pinned and believed only once it answers HAS, and hand them to the
//! download engine; retry with backoff while an attempt that got the
//! manifest keeps falling short.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use super::Replication;
use crate::download::{
    download_scored, DownloadError, DownloadOptions, DownloadStats, Progress, Provider,
};
use crate::proto::ticket::Target;

/// Proven providers a get looks for at most.
const MAX_QUERIED: usize = 16;

impl Replication {
    /// The nodes that hold the target, each connected, pinned to its id,
    /// and proven by a HAS answer: the ticket's holders, and the providers
    /// a GET_PROVIDERS lookup hears of (no flooding: a lookup asks about
    /// log N nodes). A record nobody can reach, or whose node says no, is
    /// not believed ([`Dht::find_providers`](crate::dht::behaviour::Dht::find_providers)).
    pub async fn find_holders(&self, target: &Target) -> Vec<Provider> {
        let known = match target {
            Target::Ticket(t) => t.holders.clone(),
            Target::Id(_) => Vec::new(),
        };
        let found = self
            .dht
            .find_providers(target.id(), MAX_QUERIED, known)
            .await;
        found
            .proven
            .into_iter()
            .map(|p| Provider {
                id: p.record.id,
                conn: p.conn,
            })
            .collect()
    }

    /// Finds who holds the target and downloads it to `out`.
    ///
    /// An attempt that got the manifest but not every chunk (its providers
    /// left, or the path to them went dark) is not the end: providers are
    /// looked up and dialed again, with backoff, for up to `opts.retry_for`,
    /// and each new attempt resumes from the chunks already written. A file
    /// nobody is known to hold fails at once.
    pub async fn get(
        &self,
        target: &Target,
        out: &Path,
        opts: &DownloadOptions,
        progress: Arc<dyn Progress>,
    ) -> Result<DownloadStats, DownloadError> {
        let opts = &DownloadOptions {
            key: target.key().or(opts.key),
            ..opts.clone()
        };
        let started = Instant::now();
        let deadline = started + opts.retry_for;
        let mut backoff = Duration::from_millis(500);
        let mut attempts = 0;
        let mut seen_manifest = false;
        let mut finding = Duration::ZERO;
        loop {
            attempts += 1;
            let looking = Instant::now();
            let providers = self.find_holders(target).await;
            finding += looking.elapsed();
            debug!(file = %target.id().fmt_short(), providers = providers.len(), attempts, "providers found");
            let attempt = download_scored(
                providers,
                target.id(),
                out,
                opts,
                progress.clone(),
                &self.scores,
            );
            let err = match attempt.await {
                Ok(mut stats) => {
                    stats.attempts = attempts;
                    stats.elapsed = started.elapsed();
                    stats.finding = finding;
                    return Ok(stats);
                }
                Err(e) => e,
            };
            seen_manifest |= matches!(err, DownloadError::Incomplete { .. });
            let retryable = matches!(
                err,
                DownloadError::Incomplete { .. }
                    | DownloadError::NoProviders(_)
                    | DownloadError::Manifest { .. }
            );
            if !seen_manifest
                || !retryable
                || self.net.is_shutting_down()
                || Instant::now() + backoff > deadline
            {
                return Err(err);
            }
            warn!("{err}; looking for providers again in {backoff:?}");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}
