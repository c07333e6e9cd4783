//! Accepting: a permit before the handshake (total, per address with
//! loopback exempt, a QUIC Retry under a handshake flood), the handshake,
//! then JOIN / WELCOME on the first stream the peer opens.
//!
//! A connection over a limit is refused, and told which limit when that is
//! affordable (see `Network::refuse`).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::Instant;

use quinn::{Connection, Incoming, RecvStream, SendStream};
use tracing::{debug, info, info_span, warn, Instrument};

use super::connection::{close, ConnMeta};
use super::limits::{
    exempt_from_per_ip, held_back, ip_key, ConnPermit, Counted, IpSlot, LogKey,
    RETRY_ABOVE_HANDSHAKES,
};
use super::{lock, Network};
use crate::crypto::tls;
use crate::proto::frame::{read_frame, write_frame};
use crate::proto::wire::{
    Control, ErrorCode, Join, LimitHit, NackReason, Request, Response, Welcome, MAX_CONTROL_FRAME,
    PROTOCOL_VERSION,
};
use crate::proto::NodeId;

/// Peers per WELCOME.
pub(super) const GOSSIP_SAMPLE: usize = 32;
/// How long a probe connection is kept for its prober to read the answer.
const PROBE_LINGER: std::time::Duration = std::time::Duration::from_secs(2);

/// A configured limit as the wire carries it.
fn as_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl Network {
    pub(super) async fn accept_loop(self) {
        loop {
            let incoming = tokio::select! {
                _ = self.inner.stopping.cancelled() => return,
                i = self.inner.endpoint.accept() => match i {
                    Some(i) => i,
                    None => return,
                },
            };
            let Some((incoming, permit)) = self.admit(incoming) else {
                continue;
            };
            let span = info_span!("conn", remote = %incoming.remote_address());
            let n = self.clone();
            self.inner
                .tasks
                .spawn(async move { n.handle_incoming(incoming, permit).await }.instrument(span));
        }
    }

    /// A connection's place under the limits, taken before its handshake is
    /// processed; `None` once the connection is refused or asked to retry.
    fn admit(&self, incoming: Incoming) -> Option<(Incoming, ConnPermit)> {
        let remote = incoming.remote_address();
        // Under a handshake flood, an address must first show it receives
        // what is sent to it (QUIC Retry); spoofed sources go no further.
        if !incoming.remote_address_validated()
            && incoming.may_retry()
            && self.inner.handshaking.load(Ordering::Relaxed) >= RETRY_ABOVE_HANDSHAKES
        {
            if let Err(e) = incoming.retry() {
                e.into_incoming().ignore();
            }
            return None;
        }
        let ip = match self.ip_slot(remote.ip()) {
            Ok(slot) => slot,
            Err(max) => {
                if let Some(held) = self.gate(LogKey::PerIp(ip_key(remote.ip()))) {
                    warn!(
                        %remote,
                        "address at its limit of {max} connections \
                         (--max-connections-per-ip): refusing{}",
                        held_back(held)
                    );
                }
                self.refuse(incoming, LimitHit::PerAddress { max: as_u32(max) });
                return None;
            }
        };
        let Ok(permit) = self.inner.permits.clone().try_acquire_owned() else {
            let max = self.inner.config.max_connections;
            if let Some(held) = self.gate(LogKey::Total) {
                warn!(
                    %remote,
                    "at the limit of {max} connections in all (--max-connections): refusing{}",
                    held_back(held)
                );
            }
            self.refuse(incoming, LimitHit::Total { max: as_u32(max) });
            return None;
        };
        let permit = ConnPermit {
            _total: permit,
            _ip: ip,
        };
        Some((incoming, permit))
    }

    /// A slot under the per-address limit for `ip`: `Ok(None)` for a
    /// loopback address (exempt unless `limit_loopback`), `Err(limit)` when
    /// the address has none left.
    fn ip_slot(&self, ip: IpAddr) -> Result<Option<IpSlot>, usize> {
        let cfg = &self.inner.config;
        if exempt_from_per_ip(ip, cfg.limit_loopback) {
            return Ok(None);
        }
        let max = cfg.max_connections_per_ip;
        IpSlot::take(&self.inner.per_ip, ip_key(ip), max)
            .map(Some)
            .ok_or(max)
    }

    /// Refuses a connection over `hit`, telling the dialer which limit when
    /// that is affordable.
    ///
    /// QUIC's own refusal (CONNECTION_REFUSED, one packet, no handshake)
    /// carries no reason, and an application close can carry one only once
    /// the handshake is done. So an address not yet validated is first asked
    /// to echo a Retry token (stateless, one packet: a spoofed source never
    /// comes back, and a slot freed meanwhile admits the retry). A validated
    /// one, while the node-wide budget of explained refusals lasts, gets the
    /// handshake and then at once a [`ErrorCode::ConnectionLimit`] close
    /// naming the limit. Past the budget, or under a handshake flood, the
    /// refusal is bare; the dialer still reports a connection limit.
    fn refuse(&self, incoming: Incoming, hit: LimitHit) {
        if !incoming.remote_address_validated() && incoming.may_retry() {
            if let Err(e) = incoming.retry() {
                e.into_incoming().refuse();
            }
            return;
        }
        let affordable = self.inner.handshaking.load(Ordering::Relaxed) < RETRY_ABOVE_HANDSHAKES
            && lock(&self.inner.explained).take(Instant::now());
        if !affordable {
            incoming.refuse();
            return;
        }
        let span = info_span!("refused", remote = %incoming.remote_address());
        let n = self.clone();
        self.inner
            .tasks
            .spawn(async move { n.explain_refusal(incoming, hit).await }.instrument(span));
    }

    /// Completes the handshake of a refused connection only to close it with
    /// the limit it hit; bounded by the handshake timeout and shutdown.
    async fn explain_refusal(self, incoming: Incoming, hit: LimitHit) {
        let _handshake = Counted::new(&self.inner.handshaking);
        let Ok(connecting) = incoming.accept() else {
            return;
        };
        let handshake = tokio::time::timeout(self.inner.config.handshake_timeout, connecting);
        let done = tokio::select! {
            _ = self.inner.cancel.cancelled() => return,
            done = handshake => done,
        };
        let conn = match done {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                debug!("handshake of a refused connection failed: {e}");
                return;
            }
            Err(_) => {
                debug!("handshake of a refused connection timed out");
                return;
            }
        };
        conn.close(ErrorCode::ConnectionLimit.var_int(), &hit.encode());
    }

    pub(super) async fn handle_incoming(self, incoming: Incoming, permit: ConnPermit) {
        let remote = incoming.remote_address();
        let Some(conn) = self.handshake_in(incoming).await else {
            return;
        };
        let Some(id) = tls::peer_node_id(&conn) else {
            close(&conn, ErrorCode::Internal, &"no peer certificate");
            return;
        };
        if id == self.id() {
            close(&conn, ErrorCode::SelfDial, &"dialed by itself");
            return;
        }
        let span = info_span!("peer", peer = %id.fmt_short());
        let timeout = self.inner.config.handshake_timeout;
        let welcomed = self.welcome(&conn, id, remote).instrument(span.clone());
        let Ok(welcomed) = tokio::time::timeout(timeout, welcomed).await else {
            self.close_hostile(&conn, ErrorCode::Timeout, &"no JOIN in time");
            return;
        };
        let Some((send, recv, join)) = welcomed else {
            return;
        };
        // Only what the peer announced: the address it came from may be a
        // NAT's mapping that nobody else can dial.
        let meta = ConnMeta {
            id,
            role: join.role,
            outbound: false,
            session: join.session,
            addrs: join.listen_addrs.clone(),
            relays: join.relays.clone(),
        };
        self.run_connection(conn, meta, send, recv, permit, span);
    }

    /// The QUIC and TLS handshake of an incoming connection, bounded; a
    /// failure is logged once per address per window.
    async fn handshake_in(&self, incoming: Incoming) -> Option<Connection> {
        let remote = incoming.remote_address();
        let failed = LogKey::Handshake(ip_key(remote.ip()));
        let _handshake = Counted::new(&self.inner.handshaking);
        let connecting = match incoming.accept() {
            Ok(connecting) => connecting,
            Err(e) => {
                if let Some(held) = self.gate(failed) {
                    info!(%remote, "incoming connection failed: {e}{}", held_back(held));
                }
                return None;
            }
        };
        match tokio::time::timeout(self.inner.config.handshake_timeout, connecting).await {
            Ok(Ok(conn)) => Some(conn),
            Ok(Err(e)) => {
                if let Some(held) = self.gate(failed) {
                    let held = held_back(held);
                    match tls::Refusal::of(&e) {
                        Some(refusal) => {
                            info!(%remote, "refused by the dialing peer: {refusal}{held}")
                        }
                        None => info!(%remote, "incoming handshake failed: {e}{held}"),
                    }
                }
                None
            }
            Err(_) => {
                if let Some(held) = self.gate(failed) {
                    info!(%remote, "incoming handshake timed out{}", held_back(held));
                }
                None
            }
        }
    }

    /// Reads JOIN on the first stream the peer opens and answers WELCOME; or
    /// answers a dial-back's probe ([`super::reach`]) and lets the
    /// connection go.
    async fn welcome(
        &self,
        conn: &Connection,
        id: NodeId,
        remote: SocketAddr,
    ) -> Option<(SendStream, RecvStream, Join)> {
        let (mut send, mut recv) = conn.accept_bi().await.ok()?;
        let join = match read_frame::<Request, _>(&mut recv, MAX_CONTROL_FRAME).await {
            Ok(Some(Request::Join(join))) => join,
            Ok(Some(Request::Probe { nonce })) => {
                let asked = self.probe_arrived(id, nonce, conn.local_ip());
                debug!(asked, "dial-back probe from {}", id.fmt_short());
                let answer = if asked {
                    Response::Ack
                } else {
                    Response::Nack(NackReason::NotAccepted)
                };
                if write_frame(&mut send, &answer, MAX_CONTROL_FRAME)
                    .await
                    .is_ok()
                {
                    let _ = send.finish();
                    // The prober closes once it has the answer.
                    let _ = tokio::time::timeout(PROBE_LINGER, conn.closed()).await;
                }
                return None;
            }
            Ok(Some(_)) => {
                self.close_hostile(
                    conn,
                    ErrorCode::ProtocolViolation,
                    &"first stream is not JOIN",
                );
                return None;
            }
            Ok(None) => {
                self.close_hostile(conn, ErrorCode::ProtocolViolation, &"empty first stream");
                return None;
            }
            Err(e) => {
                self.close_hostile(conn, e.code(), &format!("bad JOIN: {e}"));
                return None;
            }
        };
        let peers = lock(&self.inner.peers).sample(GOSSIP_SAMPLE, id);
        let welcome = Control::Welcome(Welcome {
            version: PROTOCOL_VERSION,
            observed_addr: remote,
            listen_addrs: self.listen_addrs(),
            relays: self.relays(),
            capabilities: 0,
            session: self.inner.session,
            peers,
        });
        if let Err(e) = write_frame(&mut send, &welcome, MAX_CONTROL_FRAME).await {
            debug!("could not send WELCOME: {e}");
            return None;
        }
        Some((send, recv, join))
    }

    /// [`close`] for what a hostile peer can cause at will (garbage where a
    /// request or JOIN should be): logged once per address per window, and
    /// not again for a connection already closed.
    pub(super) fn close_hostile(
        &self,
        conn: &Connection,
        code: ErrorCode,
        why: &dyn std::fmt::Display,
    ) {
        if conn.close_reason().is_some() {
            return;
        }
        match self.gate(LogKey::Hostile(ip_key(conn.remote_address().ip()))) {
            Some(held) => close(conn, code, &format_args!("{why}{}", held_back(held))),
            None => conn.close(code.var_int(), code.reason()),
        }
    }
}
