//! Finding the providers of a file, and believing only those that prove it.
//!
//! A provider record is a claim: a node closest to a key can invent any
//! number of them, at addresses where nobody answers. So
//! [`Dht::find_providers`] treats every record as a candidate:
//!
//! - It runs a GET_PROVIDERS lookup on [`PATHS`] disjoint paths, so a liar
//!   poisons only its own path.
//! - Each candidate is checked as soon as it is heard of: dialed with its id
//!   pinned, then asked HAS, within the handshake timeout; only one that
//!   answers yes is believed. Checks run in parallel, at most
//!   [`CHECKS_IN_FLIGHT`] at once, so invented providers cost about one
//!   handshake timeout in all, and only when no honest provider answers.
//! - An answer counts for at most [`MAX_PROVIDERS_PER_KEY`] candidates (an
//!   honest node never sends more), and a search for at most
//!   [`MAX_CANDIDATES`].
//! - Unchecked records never end the lookup. The search ends when `want`
//!   providers proved themselves; when the lookup is over and every check
//!   has ended; once a provider proved itself, a path converged and every
//!   check has ended; or, once a provider proved itself and a path converged (a
//!   liar's path may not: its inventions time out), after a settling time as
//!   long as that first proof took (at least [`MIN_SETTLE`], at most the RPC
//!   timeout), in which the honest providers heard of at about the same
//!   time prove themselves too.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use quinn::Connection;
use tokio::task::{JoinError, JoinSet};
use tracing::debug;

use super::behaviour::{Dht, LookupOutcome};
use super::providers::MAX_PROVIDERS_PER_KEY;
use super::{key_of, PATHS};
use crate::net::membership::dialable;
use crate::net::{ConnectError, Network};
use crate::proto::wire::{DhtRequest, PeerRecord, MAX_ADDRS_PER_PEER};
use crate::proto::Hash;
use crate::transfer::FetchError;

/// Candidates checked in parallel at most.
pub const CHECKS_IN_FLIGHT: usize = 64;
/// Candidates one search takes at most.
pub const MAX_CANDIDATES: usize = 256;
/// Shortest wait, after the first proof, for other providers to prove
/// themselves.
pub const MIN_SETTLE: Duration = Duration::from_millis(50);

/// A provider that proved it holds the file: it answered HAS with yes over
/// a connection pinned to its id.
#[derive(Clone, Debug)]
pub struct Proven {
    /// Its record.
    pub record: PeerRecord,
    /// The connection it answered on.
    pub conn: Connection,
}

/// What a provider search found.
#[derive(Debug, Default)]
pub struct FoundProviders {
    /// The providers that proved themselves, in the order they did.
    pub proven: Vec<Proven>,
    /// Candidates heard of (distinct ids, this node's excluded).
    pub heard: usize,
    /// Candidates checked that did not prove themselves: unreachable in
    /// time, or they said they do not hold the file.
    pub refuted: usize,
    /// The lookup; its `providers` are the proven ones.
    pub lookup: LookupOutcome,
}

impl Dht {
    /// The providers of `file`, each proven by a HAS answer: the `known`
    /// candidates (a ticket's holders), then those a GET_PROVIDERS lookup
    /// hears of. Ends once `want` are proven, or as the module doc says.
    pub async fn find_providers(
        &self,
        file: Hash,
        want: usize,
        known: Vec<PeerRecord>,
    ) -> FoundProviders {
        let start = Instant::now();
        let key = key_of(&file);
        let cfg = self.net().config();
        let mut run = self.start_lookup(key, DhtRequest::GetProviders { key }, PATHS);
        let mut checks = Checks::new(self.net().clone(), file, cfg.handshake_timeout);
        checks.hear(known);
        let mut lookup_over = false;
        loop {
            if !lookup_over {
                lookup_over = !self.send_due(&mut run);
            }
            let converged = run.lookup.converged();
            if checks.over(want, lookup_over, converged, cfg.rpc_timeout) {
                break;
            }
            let wait = checks.until_settled().unwrap_or(cfg.rpc_timeout / 3);
            tokio::select! {
                answer = run.next_answer(), if !lookup_over => {
                    if let Some((c, result)) = answer {
                        let records = self.on_answer(&mut run, c, result);
                        checks.hear(records);
                    }
                }
                done = checks.tasks.join_next(), if !checks.tasks.is_empty() => {
                    if let Some(done) = done {
                        checks.done(done);
                    }
                }
                _ = tokio::time::sleep(wait) => {}
            }
        }
        let records = checks.proven.iter().map(|p| p.record.clone()).collect();
        let found = FoundProviders {
            lookup: run.outcome(start, records),
            heard: checks.heard.len(),
            refuted: checks.refuted,
            proven: checks.proven,
        };
        debug!(file = %file.fmt_short(), proven = found.proven.len(), heard = found.heard,
            refuted = found.refuted, elapsed = ?found.lookup.elapsed, "providers found");
        found
    }

    /// The providers of `file` found by [`find_providers`](Self::find_providers)
    /// with no candidates of its own: the lookup, its `providers` proven.
    pub async fn lookup_providers(&self, file: Hash, want: usize) -> LookupOutcome {
        self.find_providers(file, want, Vec::new()).await.lookup
    }
}

/// The candidates of one search and their checks.
struct Checks {
    net: Network,
    file: Hash,
    /// Time allowed for one check (dial and HAS).
    budget: Duration,
    start: Instant,
    heard: HashSet<crate::proto::NodeId>,
    queue: VecDeque<PeerRecord>,
    tasks: JoinSet<(PeerRecord, Result<Connection, CheckError>)>,
    proven: Vec<Proven>,
    refuted: usize,
    /// How long the first proof took.
    first_proof: Option<Duration>,
    settle_at: Option<Instant>,
}

impl Checks {
    fn new(net: Network, file: Hash, budget: Duration) -> Self {
        Checks {
            net,
            file,
            budget,
            start: Instant::now(),
            heard: HashSet::new(),
            queue: VecDeque::new(),
            tasks: JoinSet::new(),
            proven: Vec::new(),
            refuted: 0,
            first_proof: None,
            settle_at: None,
        }
    }

    /// Takes the candidates of one answer (or the caller's) and starts
    /// checking them.
    fn hear(&mut self, records: Vec<PeerRecord>) {
        let me = self.net.id();
        for r in records.into_iter().take(MAX_PROVIDERS_PER_KEY) {
            if self.heard.len() >= MAX_CANDIDATES {
                break;
            }
            if r.id == me || !self.heard.insert(r.id) {
                continue;
            }
            let addrs = r
                .addrs
                .into_iter()
                .filter(dialable)
                .take(MAX_ADDRS_PER_PEER)
                .collect();
            let relays = crate::net::membership::relay_list(&r.relays);
            self.queue.push_back(PeerRecord {
                id: r.id,
                addrs,
                relays,
            });
        }
        self.start_due();
    }

    fn start_due(&mut self) {
        while self.tasks.len() < CHECKS_IN_FLIGHT {
            let Some(r) = self.queue.pop_front() else {
                return;
            };
            let (net, file, budget) = (self.net.clone(), self.file, self.budget);
            self.tasks.spawn(async move {
                let conn = check(&net, &r, file, budget).await;
                (r, conn)
            });
        }
    }

    /// A check ended.
    fn done(&mut self, result: Result<(PeerRecord, Result<Connection, CheckError>), JoinError>) {
        match result {
            Ok((record, Ok(conn))) => {
                self.first_proof.get_or_insert(self.start.elapsed());
                self.proven.push(Proven { record, conn });
            }
            Ok((record, Err(e))) => {
                debug!(peer = %record.id.fmt_short(), "provider record not believed: {e}");
                self.refuted += 1;
            }
            Err(_) => self.refuted += 1,
        }
        self.start_due();
    }

    /// Whether the search is over (see the module doc), given whether the
    /// lookup is and how many of its paths converged.
    fn over(
        &mut self,
        want: usize,
        lookup_over: bool,
        converged: usize,
        max_settle: Duration,
    ) -> bool {
        let idle = self.queue.is_empty() && self.tasks.is_empty();
        if self.proven.len() >= want || (lookup_over && idle) {
            return true;
        }
        let Some(first) = self.first_proof else {
            return false;
        };
        if !lookup_over && converged == 0 {
            return false;
        }
        // A path converged and every candidate heard of was checked: nothing
        // is left to settle (a lookup still waiting on a contact that died
        // finds no provider the converged path did not).
        if idle {
            return true;
        }
        let settle = first.clamp(MIN_SETTLE, max_settle.max(MIN_SETTLE));
        let at = *self.settle_at.get_or_insert(Instant::now() + settle);
        Instant::now() >= at
    }

    /// Time left to settle, once settling began.
    fn until_settled(&self) -> Option<Duration> {
        self.settle_at
            .map(|at| at.saturating_duration_since(Instant::now()))
    }
}

/// Why a candidate was not believed.
#[derive(Debug, thiserror::Error)]
enum CheckError {
    /// It could not be reached at the addresses the record gave.
    #[error("unreachable: {0}")]
    Unreachable(#[from] ConnectError),
    /// It said it does not hold the file.
    #[error("says it does not hold the file")]
    Denied,
    /// Its answer to HAS did not come, or was not one.
    #[error("no answer to HAS: {0}")]
    Has(#[from] FetchError),
    /// The check ran out of time.
    #[error("no proof in time")]
    Timeout,
}

/// Dials `r` pinned to its id (or uses the connection up) and asks HAS,
/// within `budget`: the connection if it said yes.
async fn check(
    net: &Network,
    r: &PeerRecord,
    file: Hash,
    budget: Duration,
) -> Result<Connection, CheckError> {
    let attempt = async {
        let conn = net.connection_to(r.id, &r.addrs, &r.relays).await?;
        if crate::transfer::has(&conn, file, budget).await? {
            Ok(conn)
        } else {
            Err(CheckError::Denied)
        }
    };
    tokio::time::timeout(budget, attempt)
        .await
        .unwrap_or(Err(CheckError::Timeout))
}
