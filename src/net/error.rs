//! What can go wrong in the network core, with the address or peer it
//! concerns.

use std::net::SocketAddr;

use quinn::{ConnectionError, TransportErrorCode};

use crate::crypto::tls;
use crate::proto::frame::FrameError;
use crate::proto::wire::{ErrorCode, LimitHit};
use crate::proto::{NodeId, PeerAddr};

/// Why the endpoint could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The listening address is taken.
    #[error("cannot listen on {addr}: the address is already in use")]
    AddrInUse {
        /// The address.
        addr: SocketAddr,
    },
    /// Binding the socket failed for another reason.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// TLS configuration failed.
    #[error(transparent)]
    Tls(#[from] tls::TlsConfigError),
    /// Settings that QUIC cannot use.
    #[error("invalid setting: {0}")]
    Config(&'static str),
}

/// A failed handshake's reason, without the wrapping rustls puts around our
/// verifiers' own messages (`invalid peer certificate: Other(OtherError(Msg("…")))`).
fn handshake_reason(e: &ConnectionError) -> String {
    let text = e.to_string();
    if let Some((_, inner)) = text.split_once("Msg(\"") {
        if let Some((msg, _)) = inner.rsplit_once("\")") {
            return format!("the handshake failed: {msg}");
        }
    }
    text
}

/// Why a dial failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The host name did not resolve.
    #[error("cannot resolve {addr}: {source}")]
    Resolve {
        /// The address as given.
        addr: PeerAddr,
        /// What the resolver said.
        source: std::io::Error,
    },
    /// quinn refused to start the dial.
    #[error("cannot dial {addr}: {source}")]
    Dial {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: quinn::ConnectError,
    },
    /// The handshake failed: unreachable, or a certificate the verifier
    /// rejected (this is where a pinned-id mismatch shows).
    #[error("connection to {addr} failed: {}", handshake_reason(source))]
    Handshake {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: ConnectionError,
    },
    /// Nothing answered in time.
    #[error("connection to {addr} timed out")]
    Timeout {
        /// The address.
        addr: SocketAddr,
    },
    /// The peer proved another id than the pinned one.
    #[error(transparent)]
    PinMismatch(#[from] tls::PinMismatch),
    /// The address is this node's own.
    #[error("{addr} is this node itself")]
    SelfDial {
        /// The address.
        addr: SocketAddr,
    },
    /// The JOIN/WELCOME exchange failed.
    #[error("peer at {addr} broke the join protocol: {reason}")]
    Join {
        /// The address.
        addr: SocketAddr,
        /// What went wrong.
        reason: JoinError,
    },
    /// This node is at its connection limit.
    #[error("this node is at its limit of {0} connections (--max-connections)")]
    Limit(usize),
    /// The peer refused this node at one of its connection limits.
    #[error("{addr} refused this node: {limit}")]
    AtLimit {
        /// The address.
        addr: SocketAddr,
        /// Which limit, if the peer said.
        limit: PeerLimit,
    },
    /// The peer refused this node inside the handshake: another private
    /// network, or not on its allow list.
    #[error("{addr} refused this node: {refusal}")]
    Refused {
        /// The address.
        addr: SocketAddr,
        /// Why, as the peer said.
        refusal: tls::Refusal,
    },
    /// The id is not on this node's allow list, so it is not dialed.
    #[error("{0} is not on this node's allow list")]
    NotAllowed(NodeId),
    /// The peer is known by id only: no address to dial it at.
    #[error("no address known for {0}")]
    NoAddress(NodeId),
    /// A relay gave no circuit to the peer.
    #[error("no circuit to {target} through the relay at {relay}: {reason}")]
    Relay {
        /// The relay's address.
        relay: SocketAddr,
        /// The peer.
        target: NodeId,
        /// What went wrong.
        reason: String,
    },
    /// The connection was replaced (a simultaneous dial) and then lost.
    #[error("the connection to {0} was replaced and then lost")]
    Replaced(NodeId),
    /// The node is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
}

/// Which of a peer's connection limits refused this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerLimit {
    /// The peer said which: an [`ErrorCode::ConnectionLimit`] close carrying
    /// a [`LimitHit`].
    Said(LimitHit),
    /// A bare refusal, QUIC's CONNECTION_REFUSED (a peer past its budget of
    /// explained refusals, or one not accepting connections), or a
    /// [`ErrorCode::ConnectionLimit`] close without a reason we read.
    Unsaid,
}

impl PeerLimit {
    /// The limit a connection's end names, if it ended at a peer's limit.
    pub fn of(err: &ConnectionError) -> Option<PeerLimit> {
        match err {
            ConnectionError::ApplicationClosed(c)
                if c.error_code == ErrorCode::ConnectionLimit.var_int() =>
            {
                Some(LimitHit::decode(&c.reason).map_or(PeerLimit::Unsaid, PeerLimit::Said))
            }
            ConnectionError::ConnectionClosed(c)
                if c.error_code == TransportErrorCode::CONNECTION_REFUSED =>
            {
                Some(PeerLimit::Unsaid)
            }
            _ => None,
        }
    }
}

impl std::fmt::Display for PeerLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let conns = |max: u32| match max {
            1 => "1 connection".to_string(),
            n => format!("{n} connections"),
        };
        match self {
            PeerLimit::Said(LimitHit::PerAddress { max }) => write!(
                f,
                "it is at its limit of {} from one address \
                 (--max-connections-per-ip on that node)",
                conns(*max)
            ),
            PeerLimit::Said(LimitHit::Total { max }) => write!(
                f,
                "it is at its limit of {} in all (--max-connections on that node)",
                conns(*max)
            ),
            PeerLimit::Unsaid => write!(
                f,
                "it is at a connection limit (--max-connections in all, or \
                 --max-connections-per-ip from one address, on that node) \
                 or not accepting connections"
            ),
        }
    }
}

/// What went wrong in a JOIN / WELCOME exchange.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The handshake ended without a peer certificate.
    #[error("no peer certificate")]
    NoCertificate,
    /// The control stream could not be opened.
    #[error("cannot open the control stream: {0}")]
    Open(#[from] ConnectionError),
    /// JOIN could not be sent, or WELCOME did not decode.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// Another message came where WELCOME should be.
    #[error("expected WELCOME")]
    NotWelcome,
    /// The peer closed the control stream before WELCOME.
    #[error("control stream closed before WELCOME")]
    Closed,
}

#[cfg(test)]
mod tests {
    use super::*;
    use quinn::{ApplicationClose, ConnectionClose, VarInt};

    fn app_closed(code: ErrorCode, reason: &[u8]) -> ConnectionError {
        ConnectionError::ApplicationClosed(ApplicationClose {
            error_code: code.var_int(),
            reason: reason.to_vec().into(),
        })
    }

    #[test]
    fn a_refusal_at_a_limit_names_it_and_its_flag() {
        let addr: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let text = |err: &ConnectionError| {
            let limit = PeerLimit::of(err).expect("a limit");
            ConnectError::AtLimit { addr, limit }.to_string()
        };
        let per = app_closed(
            ErrorCode::ConnectionLimit,
            &LimitHit::PerAddress { max: 1 }.encode(),
        );
        assert_eq!(
            text(&per),
            "127.0.0.1:5000 refused this node: it is at its limit of 1 connection \
             from one address (--max-connections-per-ip on that node)"
        );
        let total = app_closed(
            ErrorCode::ConnectionLimit,
            &LimitHit::Total { max: 256 }.encode(),
        );
        assert!(text(&total).contains("limit of 256 connections in all (--max-connections"));
        // QUIC's bare refusal, and a limit close without a reason we read,
        // name both limits.
        let bare = ConnectionError::ConnectionClosed(ConnectionClose {
            error_code: TransportErrorCode::CONNECTION_REFUSED,
            frame_type: None,
            reason: Default::default(),
        });
        let unsaid = app_closed(ErrorCode::ConnectionLimit, b"connection limit");
        for err in [bare, unsaid] {
            assert_eq!(PeerLimit::of(&err), Some(PeerLimit::Unsaid));
            let t = text(&err);
            assert!(t.contains("--max-connections ") && t.contains("--max-connections-per-ip"));
        }
        // Other ends are not refusals at a limit.
        assert_eq!(PeerLimit::of(&app_closed(ErrorCode::Shutdown, b"")), None);
        assert_eq!(PeerLimit::of(&ConnectionError::TimedOut), None);
        let other = ConnectionError::ApplicationClosed(ApplicationClose {
            error_code: VarInt::from_u32(999),
            reason: Default::default(),
        });
        assert_eq!(PeerLimit::of(&other), None);
    }
}
