//! What can go wrong in the network core, with the address or peer it
//! concerns.

use std::net::SocketAddr;

use quinn::ConnectionError;

use crate::crypto::tls;
use crate::proto::frame::FrameError;
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
    /// The handshake failed: unreachable, refused, or a certificate the
    /// verifier rejected (this is where a pinned-id mismatch shows).
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
    #[error("connection limit of {0} reached")]
    Limit(usize),
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
    /// The connection was replaced (a simultaneous dial) and then lost.
    #[error("the connection to {0} was replaced and then lost")]
    Replaced(NodeId),
    /// The node is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
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
