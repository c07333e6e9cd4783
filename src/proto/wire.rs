//! The quic-peer wire protocol, version 1. Sans-IO: encoding and decoding on byte
//! slices, no sockets, no clocks.
//!
//! # Connection
//!
//! QUIC with mutual TLS 1.3 (see [`crate::crypto::tls`]), ALPN [`ALPN`] (`quic-peer/1`).
//! An incompatible protocol is a different ALPN and fails the handshake; within
//! version 1, [`Join::version`] and [`Welcome::version`] carry the minor version
//! and a peer sending one we do not speak is closed with
//! [`ErrorCode::UnsupportedVersion`].
//!
//! # Frames
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of postcard.
//! Every frame has a hard cap chosen by the stream it travels on
//! ([`MAX_CONTROL_FRAME`] for control and request frames). A length over the cap
//! is rejected before any of the body is read. A body that does not decode, that
//! has bytes left over after the message, or whose lists are longer than the
//! limits below, is invalid.
//!
//! # Streams
//!
//! Every bidirectional stream starts with one [`Request`] frame from the side that
//! opened it, which says what the stream is for:
//!
//! - [`Request::Join`]: the control stream. The dialing side opens it right after
//!   the handshake and sends JOIN (listen addresses, version, role, capabilities,
//!   session). The accepting side answers [`Control::Welcome`] with a sample of its
//!   peers and the address it saw the dialer come from. From then on both sides send
//!   [`Control`] frames on it: peer-list gossip ([`Control::Peers`]), PING/PONG, and
//!   LEAVE on graceful shutdown. There is exactly one control stream per
//!   connection: a second JOIN is a protocol violation.
//!
//! - [`Request::GetChunk`] / [`Request::GetManifest`]: one stream per chunk or
//!   manifest. Answered by a [`Response`] frame, [`Response::Found`] with the
//!   length followed by exactly that many raw bytes, or [`Response::NotFound`].
//!   The receiver checks the BLAKE3 hash before it uses a byte.
//! - [`Request::PutChunk`] / [`Request::PutManifest`]: the header is followed by
//!   `len` raw bytes; answered by [`Response::Ack`] after the hash is checked and
//!   the data stored, or [`Response::Nack`] with a [`NackReason`]. A receiver
//!   that cannot take it (over its quota, or over what it lets the sender
//!   store: [`NackReason::OverAllowance`]) answers at once and stops the
//!   stream instead of reading the bytes. One that already has the data reads
//!   and checks the bytes all the same before it counts the data as wanted
//!   again: a header alone refreshes nothing.
//! - [`Request::Hold`]: after a file's manifests and chunks were put, asks the
//!   receiver to keep the file; Ack only if every piece is present, the
//!   receiver is among the nodes closest to the file by its own routing table
//!   (else [`NackReason::NotClose`]; a peer on loopback is exempt) and the
//!   file fits in what it lets the sender store
//!   ([`NackReason::OverAllowance`]).
//! - [`Request::Has`]: whether the receiver holds a file. A claim, not a
//!   proof: repair does not believe it.
//! - [`Request::Prove`]: proof of possession. The asker, which holds the file
//!   too, picks a piece of it (a chunk, or a manifest for a file without
//!   chunks), a byte range of at most [`MAX_PROOF_LEN`] in it and a random
//!   32-byte nonce; the receiver answers [`Response::Proof`] with the BLAKE3
//!   keyed hash (key = nonce) of those bytes, [`Response::NotFound`] if it
//!   does not hold the file or the piece, or [`Response::Nack`] with
//!   [`NackReason::TooLarge`] for a range outside the piece. A fresh nonce
//!   makes an old answer useless, so only a node that has the bytes can
//!   answer right.
//! - [`Request::Dht`]: one Kademlia RPC per stream (PING, FIND_NODE,
//!   GET_PROVIDERS, ADD_PROVIDER), answered by one [`Response`] frame.
//! - [`Request::DialBack`]: "can I be dialed?". A full node asks a peer to dial
//!   it back at a port, at the IP address the peer sees the asking
//!   connection come from (never another address: a dial-back cannot be
//!   aimed at a third party). The peer dials from a fresh UDP port, so the
//!   answer cannot come back through the asker's own NAT mapping, and
//!   opens a *probe connection*: its first stream carries [`Request::Probe`]
//!   with the asker's nonce instead of JOIN. The asker believes only the
//!   nonce arriving; the answer, [`Response::Dialed`] with the address
//!   dialed or [`Response::Nack`] with [`NackReason::Unreachable`], tells it
//!   where it was reached, or that it was not.
//! - [`Request::Reserve`], [`Request::Connect`], [`Request::Circuit`]: relays.
//!   A node nobody can dial reserves a slot at a reachable peer (RESERVE) and
//!   announces that relay. A peer that wants to reach it asks the relay for a
//!   circuit (CONNECT); the relay asks the node (CIRCUIT) on the node's
//!   connection, and once both said yes joins the two streams. Each then
//!   carries QUIC datagrams, each a 2-byte big-endian length and the bytes,
//!   of a connection between the two ends: its TLS is end to end, so the
//!   relay sees ciphertext and cannot pose as either. A relay bounds the
//!   reservations and circuits it keeps, and each circuit's bytes and time.
//! - [`Request::Punch`]: on a relayed connection, the two ends swap the
//!   addresses peers see them at and dial each other there at once (hole
//!   punching); a direct connection that comes up replaces the relayed one.
//!
//! Raw data is capped by [`MAX_CHUNK_SIZE`] (16 MiB) for chunks and
//! [`MAX_MANIFEST_SIZE`] (16 MiB) for manifests; a larger declared length is
//! rejected before any byte is read.
//!
//! Unidirectional streams are not used and not granted.
//!
//! # Errors
//!
//! Streams are reset or stopped, and connections closed, with an [`ErrorCode`].
//! Reasons sent to the peer are short and never carry internal details.
//!
//! A node over a connection limit refuses a new connection before its
//! handshake (QUIC's CONNECTION_REFUSED, which carries no reason) or, when
//! the dialer's address is validated and the node can afford it, completes
//! the handshake and closes at once with [`ErrorCode::ConnectionLimit`] and a
//! reason naming the limit: `connection limit: per-address N` or
//! `connection limit: total N` ([`LimitHit`]).
//!
//! # Compatibility
//!
//! Enum variants are only ever appended; the `wire_format_is_pinned` test fixes
//! the bytes of each message so that a change of the wire is a deliberate act.

use std::net::SocketAddr;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::proto::manifest::{MAX_CHUNK_SIZE, MAX_MANIFEST_SIZE};
use crate::proto::Hash;
use crate::proto::NodeId;

/// ALPN protocol id of version 1.
pub const ALPN: &[u8] = b"quic-peer/1";

/// The minor protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 2;

/// Size of the length prefix in front of every frame.
pub const LEN_PREFIX: usize = 4;

/// Cap on a control or request frame's body.
pub const MAX_CONTROL_FRAME: usize = 64 * 1024;

/// Most peers in one gossip sample or WELCOME.
pub const MAX_PEERS_PER_MESSAGE: usize = 64;

/// Most addresses listed for one peer.
pub const MAX_ADDRS_PER_PEER: usize = 8;

/// Most relays one peer is said to be reachable through.
pub const MAX_RELAYS_PER_PEER: usize = 4;

/// Longest byte range a [`Request::Prove`] may ask to be hashed.
pub const MAX_PROOF_LEN: u32 = 64 * 1024;

/// Capability bits announced in JOIN and WELCOME. None are defined in 1.0; unknown
/// bits are ignored.
pub type Capabilities = u64;

/// Application error codes, used to close connections and reset or stop streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum ErrorCode {
    /// Normal close, nothing wrong.
    Ok = 0,
    /// The node is shutting down (sent with or after LEAVE).
    Shutdown = 1,
    /// A frame did not decode, or a message broke the protocol's rules.
    ProtocolViolation = 2,
    /// A frame's declared length exceeds the cap for its stream.
    FrameTooLarge = 3,
    /// The peer speaks a protocol version this node does not.
    UnsupportedVersion = 4,
    /// A second connection between the same two nodes; the other one is kept.
    DuplicateConnection = 5,
    /// The node has reached a connection limit; the close reason says which
    /// ([`LimitHit`]).
    ConnectionLimit = 6,
    /// The peer took too long to send what the protocol requires.
    Timeout = 7,
    /// A well-formed message that is not allowed at this point.
    UnexpectedMessage = 8,
    /// The node dialed itself.
    SelfDial = 9,
    /// The peer is not allowed to connect or to make this request.
    NotAllowed = 10,
    /// Something went wrong inside this node; details are in its log.
    Internal = 11,
    /// The peer opened request streams faster than this node allows
    /// (`max_requests_per_sec`); the stream is refused, the connection kept.
    RateLimited = 12,
}

impl ErrorCode {
    /// Every code, for lookups.
    pub const ALL: [ErrorCode; 13] = [
        ErrorCode::Ok,
        ErrorCode::Shutdown,
        ErrorCode::ProtocolViolation,
        ErrorCode::FrameTooLarge,
        ErrorCode::UnsupportedVersion,
        ErrorCode::DuplicateConnection,
        ErrorCode::ConnectionLimit,
        ErrorCode::Timeout,
        ErrorCode::UnexpectedMessage,
        ErrorCode::SelfDial,
        ErrorCode::NotAllowed,
        ErrorCode::Internal,
        ErrorCode::RateLimited,
    ];

    /// The QUIC application error code.
    pub fn code(self) -> u32 {
        self as u32
    }

    /// The code as quinn wants it.
    pub fn var_int(self) -> quinn::VarInt {
        quinn::VarInt::from_u32(self as u32)
    }

    /// The code with this number, if there is one.
    pub fn from_code(code: u64) -> Option<Self> {
        Self::ALL.into_iter().find(|c| u64::from(c.code()) == code)
    }

    /// The short reason phrase sent with a connection close.
    pub fn reason(self) -> &'static [u8] {
        match self {
            ErrorCode::Ok => b"ok",
            ErrorCode::Shutdown => b"shutdown",
            ErrorCode::ProtocolViolation => b"protocol violation",
            ErrorCode::FrameTooLarge => b"frame too large",
            ErrorCode::UnsupportedVersion => b"unsupported version",
            ErrorCode::DuplicateConnection => b"duplicate connection",
            ErrorCode::ConnectionLimit => b"connection limit",
            ErrorCode::Timeout => b"timeout",
            ErrorCode::UnexpectedMessage => b"unexpected message",
            ErrorCode::SelfDial => b"self dial",
            ErrorCode::NotAllowed => b"not allowed",
            ErrorCode::Internal => b"internal error",
            ErrorCode::RateLimited => b"rate limited",
        }
    }
}

/// Which connection limit a node hit when it refused a connection: the
/// reason of its [`ErrorCode::ConnectionLimit`] close, `connection limit:
/// per-address N` or `connection limit: total N`, so that the refused side
/// can say which limit, and which setting governs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitHit {
    /// The node's connections in all (`--max-connections`).
    Total {
        /// The limit.
        max: u32,
    },
    /// Connections from the dialer's address, an IPv6 address by its /64
    /// (`--max-connections-per-ip`).
    PerAddress {
        /// The limit.
        max: u32,
    },
}

impl LimitHit {
    /// What every such reason starts with (also [`ErrorCode::reason`]).
    const PREFIX: &'static str = "connection limit: ";

    /// The close reason that carries this limit.
    pub fn encode(self) -> Vec<u8> {
        let (kind, max) = match self {
            LimitHit::Total { max } => ("total", max),
            LimitHit::PerAddress { max } => ("per-address", max),
        };
        format!("{}{kind} {max}", Self::PREFIX).into_bytes()
    }

    /// The limit a close reason names, if it names one.
    pub fn decode(reason: &[u8]) -> Option<LimitHit> {
        let text = std::str::from_utf8(reason).ok()?;
        let (kind, max) = text.strip_prefix(Self::PREFIX)?.split_once(' ')?;
        let max = max.parse().ok()?;
        match kind {
            "total" => Some(LimitHit::Total { max }),
            "per-address" => Some(LimitHit::PerAddress { max }),
            _ => None,
        }
    }
}

/// What a node does in the network, said in JOIN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// A full node: stores, serves, routes, is gossiped.
    Peer,
    /// A short-lived `put`/`get` process: queries and transfers, but is never
    /// added to peer lists or routing tables.
    Client,
}

/// The first frame on every bidirectional stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Opens the control stream.
    Join(Join),
    /// Asks for a chunk: answered by [`Response::Found`] and the raw bytes, or
    /// [`Response::NotFound`].
    GetChunk {
        /// The chunk's BLAKE3 hash.
        hash: Hash,
    },
    /// Offers a chunk: `len` raw bytes follow this frame. Answered by
    /// [`Response::Ack`] once the hash is checked and the chunk stored, or
    /// [`Response::Nack`]. The receiver may answer before reading the bytes
    /// (already stored, over quota) and stop the stream.
    PutChunk {
        /// The chunk's BLAKE3 hash.
        hash: Hash,
        /// Its length, at most [`MAX_CHUNK_SIZE`].
        len: u32,
    },
    /// Asks for a manifest; answered like [`Request::GetChunk`].
    GetManifest {
        /// The file id (hash of the manifest).
        id: Hash,
    },
    /// Offers a manifest of `len` bytes, which follow; answered like
    /// [`Request::PutChunk`].
    PutManifest {
        /// The file id (hash of the manifest).
        id: Hash,
        /// Its length, at most [`MAX_MANIFEST_SIZE`].
        len: u32,
    },
    /// Asks the receiver to hold the file or tree `id` whose manifests and chunks
    /// it was just sent: [`Response::Ack`] if all are present, else
    /// [`Response::Nack`] with [`NackReason::Incomplete`], or with
    /// [`NackReason::TooLarge`] for a tree past the limits of
    /// [`crate::proto::tree`].
    Hold {
        /// The file id.
        id: Hash,
    },
    /// Asks whether the receiver holds the file or tree `id`:
    /// [`Response::Found`] (length 0, nothing follows) or [`Response::NotFound`].
    Has {
        /// The file id.
        id: Hash,
    },
    /// A DHT request, answered by one [`Response`].
    Dht(DhtRequest),
    /// Asks for a proof that the receiver holds the file `id`: the BLAKE3
    /// keyed hash, with `nonce` as the key, of bytes `offset..offset + len`
    /// of `piece` (a chunk of the file, or one of its manifests). Answered
    /// by [`Response::Proof`], [`Response::NotFound`], or
    /// [`Response::Nack`] with [`NackReason::TooLarge`] when the range is not
    /// inside the piece. `len` is at most [`MAX_PROOF_LEN`].
    Prove {
        /// The file id.
        id: Hash,
        /// A chunk or manifest of the file.
        piece: Hash,
        /// Where the range starts in the piece.
        offset: u32,
        /// How many bytes it covers.
        len: u32,
        /// The key of the keyed hash: random, chosen by the asker.
        nonce: [u8; 32],
    },
    /// Asks the receiver to dial the sender back at `port` of the IP address
    /// this connection comes from, and to show `nonce` there
    /// ([`Request::Probe`]): answered by [`Response::Dialed`], or
    /// [`Response::Nack`] with [`NackReason::Unreachable`] (or
    /// [`NackReason::NotAccepted`] when the receiver does not dial back now).
    DialBack {
        /// The UDP port to dial.
        port: u16,
        /// Shown on the probe connection.
        nonce: u64,
    },
    /// The first and only request of a probe connection (the dial-back of a
    /// [`Request::DialBack`]), in place of JOIN: answered by
    /// [`Response::Ack`], then the connection closes.
    Probe {
        /// The nonce of the DIAL_BACK.
        nonce: u64,
    },
    /// Asks a reachable node to relay for the sender (which cannot be
    /// dialed) while this connection lasts: [`Response::Ack`], or
    /// [`Response::Nack`] with [`NackReason::NotAccepted`].
    Reserve,
    /// Asks a relay for a circuit to `target`, which holds a reservation
    /// there: [`Response::Ack`], then the stream carries the sender's QUIC
    /// datagrams to `target` and back, each a 2-byte big-endian length and
    /// the datagram; or [`Response::Nack`] with [`NackReason::Unreachable`]
    /// when `target` has no reservation, [`NackReason::NotAccepted`] when
    /// the relay is full or relays for nobody.
    Connect {
        /// The node to reach.
        target: NodeId,
    },
    /// From a relay to a node with a reservation: `from` asks for a
    /// circuit. [`Response::Ack`] if the node takes it; then the stream
    /// carries datagrams as for [`Request::Connect`].
    Circuit {
        /// The node at the other end, proven by its connection to the relay.
        from: NodeId,
    },
    /// On a relayed connection: let us both dial each other's public
    /// addresses now (hole punching). `addrs` are where peers see the
    /// sender; answered by [`Response::Addrs`] with the receiver's, or
    /// [`Response::Nack`] with [`NackReason::NotAccepted`].
    Punch {
        /// Where peers see the sender.
        addrs: Vec<SocketAddr>,
    },
}

/// What a request asks for, without its arguments: the key a service
/// registers under with the node's stream router.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestKind {
    /// [`Request::Join`].
    Join,
    /// [`Request::GetChunk`].
    GetChunk,
    /// [`Request::PutChunk`].
    PutChunk,
    /// [`Request::GetManifest`].
    GetManifest,
    /// [`Request::PutManifest`].
    PutManifest,
    /// [`Request::Hold`].
    Hold,
    /// [`Request::Has`].
    Has,
    /// [`Request::Dht`].
    Dht,
    /// [`Request::Prove`].
    Prove,
    /// [`Request::DialBack`].
    DialBack,
    /// [`Request::Probe`].
    Probe,
    /// [`Request::Reserve`].
    Reserve,
    /// [`Request::Connect`].
    Connect,
    /// [`Request::Circuit`].
    Circuit,
    /// [`Request::Punch`].
    Punch,
}

impl RequestKind {
    /// A short name, for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            RequestKind::Join => "join",
            RequestKind::GetChunk => "get_chunk",
            RequestKind::PutChunk => "put_chunk",
            RequestKind::GetManifest => "get_manifest",
            RequestKind::PutManifest => "put_manifest",
            RequestKind::Hold => "hold",
            RequestKind::Has => "has",
            RequestKind::Dht => "dht",
            RequestKind::Prove => "prove",
            RequestKind::DialBack => "dial_back",
            RequestKind::Probe => "probe",
            RequestKind::Reserve => "reserve",
            RequestKind::Connect => "connect",
            RequestKind::Circuit => "circuit",
            RequestKind::Punch => "punch",
        }
    }
}

impl Request {
    /// What this request asks for.
    pub fn kind(&self) -> RequestKind {
        match self {
            Request::Join(_) => RequestKind::Join,
            Request::GetChunk { .. } => RequestKind::GetChunk,
            Request::PutChunk { .. } => RequestKind::PutChunk,
            Request::GetManifest { .. } => RequestKind::GetManifest,
            Request::PutManifest { .. } => RequestKind::PutManifest,
            Request::Hold { .. } => RequestKind::Hold,
            Request::Has { .. } => RequestKind::Has,
            Request::Dht(_) => RequestKind::Dht,
            Request::Prove { .. } => RequestKind::Prove,
            Request::DialBack { .. } => RequestKind::DialBack,
            Request::Probe { .. } => RequestKind::Probe,
            Request::Reserve => RequestKind::Reserve,
            Request::Connect { .. } => RequestKind::Connect,
            Request::Circuit { .. } => RequestKind::Circuit,
            Request::Punch { .. } => RequestKind::Punch,
        }
    }
}

/// Kademlia RPCs, one short stream each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DhtRequest {
    /// Liveness: answered by [`Response::Ack`].
    Ping,
    /// The receiver's closest contacts to `target`: [`Response::Nodes`].
    FindNode {
        /// A key.
        target: NodeId,
    },
    /// Providers of `key` the receiver knows, and its closest contacts:
    /// [`Response::Providers`].
    GetProviders {
        /// A file id as a key.
        key: NodeId,
    },
    /// "I hold `key`": accepted ([`Response::Ack`]) only when `provider.id` is
    /// the id the connection's handshake proved, else [`NackReason::NotAccepted`].
    AddProvider {
        /// A file id as a key.
        key: NodeId,
        /// The provider: must be the sender.
        provider: PeerRecord,
    },
}

/// The answer on a transfer stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Here it is: `len` raw bytes follow.
    Found {
        /// Bytes that follow.
        len: u64,
    },
    /// Not stored here.
    NotFound,
    /// Stored (or already held).
    Ack,
    /// Refused.
    Nack(NackReason),
    /// Contacts closest to a key.
    Nodes(Vec<PeerRecord>),
    /// Providers of a key, and contacts closer to it.
    Providers {
        /// Nodes that announced they hold the key.
        providers: Vec<PeerRecord>,
        /// The answering node's closest contacts to the key.
        closer: Vec<PeerRecord>,
    },
    /// The answer to [`Request::Prove`]: the keyed hash of the range.
    Proof([u8; 32]),
    /// The answer to [`Request::DialBack`]: the probe reached the asker at
    /// this address.
    Dialed(SocketAddr),
    /// The answer to [`Request::Punch`]: where peers see the receiver.
    Addrs(Vec<SocketAddr>),
}

/// Why a PUT or HOLD was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NackReason {
    /// The bytes do not hash to the offered name.
    BadHash,
    /// The receiver's storage quota would be exceeded.
    OverQuota,
    /// Larger than the protocol allows: a chunk or manifest over its cap, or
    /// (for a HOLD) a tree past the limits of [`crate::proto::tree`].
    TooLarge,
    /// The receiver does not store data (a client) or not for this peer.
    NotAccepted,
    /// A HOLD for a file whose manifests or chunks were not all received.
    Incomplete,
    /// The manifest is not valid.
    BadManifest,
    /// The receiver failed to store it; details are in its log.
    Internal,
    /// The sender (by its id or its address prefix) has used what the
    /// receiver lets it store (see [`crate::transfer::allowance`]).
    OverAllowance,
    /// A HOLD for a file the receiver is not among the nodes closest to by
    /// its own routing table: it did not agree to keep it.
    NotClose,
    /// A dial-back found nobody at the address, or not the asker.
    Unreachable,
}

impl std::fmt::Display for NackReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NackReason::BadHash => "bad hash",
            NackReason::OverQuota => "over quota",
            NackReason::TooLarge => "too large",
            NackReason::NotAccepted => "not accepted",
            NackReason::Incomplete => "incomplete",
            NackReason::BadManifest => "bad manifest",
            NackReason::Internal => "internal error",
            NackReason::OverAllowance => "over the allowance this node gives the sender",
            NackReason::NotClose => "not among the nodes closest to the file",
            NackReason::Unreachable => "could not reach you there",
        })
    }
}

/// JOIN: the dialer introduces itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Join {
    /// The minor protocol version the dialer speaks.
    pub version: u16,
    /// Full node or client.
    pub role: Role,
    /// Addresses the dialer accepts connections on (may be empty: it cannot
    /// be dialed, or does not know yet where).
    pub listen_addrs: Vec<SocketAddr>,
    /// Relays it holds a reservation at ([`Request::Connect`] reaches it
    /// through them).
    pub relays: Vec<SocketAddr>,
    /// Capability bits.
    pub capabilities: Capabilities,
    /// Random per process start: a new session from a known id means the peer
    /// restarted, and its new connection replaces the old one.
    pub session: u64,
}

/// A peer as told in WELCOME and gossip.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRecord {
    /// The peer's id, proven by its handshake with the sender.
    pub id: NodeId,
    /// Where it can be dialed.
    pub addrs: Vec<SocketAddr>,
    /// Relays it can be reached through ([`Request::Connect`]).
    pub relays: Vec<SocketAddr>,
}

/// WELCOME: the accepting side's answer to JOIN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The minor protocol version the acceptor speaks.
    pub version: u16,
    /// The address the JOIN came from, as the acceptor saw it.
    pub observed_addr: SocketAddr,
    /// Addresses the acceptor accepts connections on.
    pub listen_addrs: Vec<SocketAddr>,
    /// Relays it holds a reservation at.
    pub relays: Vec<SocketAddr>,
    /// Capability bits.
    pub capabilities: Capabilities,
    /// The acceptor's session (see [`Join::session`]).
    pub session: u64,
    /// A sample of the acceptor's peers.
    pub peers: Vec<PeerRecord>,
}

/// Why a node leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaveReason {
    /// The operator stopped the node.
    Shutdown,
}

/// Frames on the control stream after the JOIN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Control {
    /// The answer to JOIN; sent once, first, by the accepting side.
    Welcome(Welcome),
    /// A bounded sample of the sender's peers.
    Peers(Vec<PeerRecord>),
    /// Liveness probe carrying a nonce.
    Ping(u64),
    /// Answer to [`Control::Ping`] with the same nonce.
    Pong(u64),
    /// The sender is leaving the network; the connection closes next.
    Leave(LeaveReason),
    /// The addresses the sender can be dialed at, or the relays it can be
    /// reached through, changed (a dial-back proved or disproved them, a
    /// reservation was made or lost): these replace the ones it announced.
    /// Both empty: nobody can reach it, and it is not to be gossiped or made
    /// a DHT contact.
    Addrs {
        /// Where it can be dialed.
        addrs: Vec<SocketAddr>,
        /// Relays it can be reached through.
        relays: Vec<SocketAddr>,
    },
}

/// Why bytes from the network were rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// The length prefix exceeds the cap.
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    FrameTooLarge {
        /// Declared length.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// The body is not a valid message.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The body decoded but bytes were left over.
    #[error("malformed frame: {0} trailing bytes")]
    TrailingBytes(usize),
    /// A list in the message is longer than allowed.
    #[error("{what} has {len} entries, more than the {max} allowed")]
    TooMany {
        /// Which list.
        what: &'static str,
        /// How many were sent.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The peer speaks another minor version.
    #[error("unsupported protocol version {0} (this node speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion(u16),
    /// A valid message at the wrong time.
    #[error("unexpected message: {0}")]
    Unexpected(&'static str),
}

impl WireError {
    /// The error code a connection or stream is closed with for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            WireError::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            WireError::Malformed(_) | WireError::TrailingBytes(_) | WireError::TooMany { .. } => {
                ErrorCode::ProtocolViolation
            }
            WireError::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
            WireError::Unexpected(_) => ErrorCode::UnexpectedMessage,
        }
    }
}

/// A message that can be framed: it knows its limits.
pub trait Message: Serialize + DeserializeOwned {
    /// Checks list lengths and versions after decoding (and before encoding).
    fn validate(&self) -> Result<(), WireError>;
}

fn check_len(what: &'static str, len: usize, max: usize) -> Result<(), WireError> {
    if len > max {
        Err(WireError::TooMany { what, len, max })
    } else {
        Ok(())
    }
}

fn check_addrs(addrs: &[SocketAddr], relays: &[SocketAddr]) -> Result<(), WireError> {
    check_len("address list", addrs.len(), MAX_ADDRS_PER_PEER)?;
    check_len("relay list", relays.len(), MAX_RELAYS_PER_PEER)
}

fn check_peers(peers: &[PeerRecord]) -> Result<(), WireError> {
    check_len("peer list", peers.len(), MAX_PEERS_PER_MESSAGE)?;
    for p in peers {
        check_addrs(&p.addrs, &p.relays)?;
    }
    Ok(())
}

impl Message for Request {
    fn validate(&self) -> Result<(), WireError> {
        match self {
            Request::Join(j) => {
                if j.version != PROTOCOL_VERSION {
                    return Err(WireError::UnsupportedVersion(j.version));
                }
                check_addrs(&j.listen_addrs, &j.relays)
            }
            Request::PutChunk { len, .. } if *len > MAX_CHUNK_SIZE => {
                Err(WireError::FrameTooLarge {
                    len: *len as usize,
                    max: MAX_CHUNK_SIZE as usize,
                })
            }
            Request::PutManifest { len, .. } if *len as usize > MAX_MANIFEST_SIZE => {
                Err(WireError::FrameTooLarge {
                    len: *len as usize,
                    max: MAX_MANIFEST_SIZE,
                })
            }
            Request::Dht(DhtRequest::AddProvider { provider, .. }) => {
                check_peers(std::slice::from_ref(provider))
            }
            Request::Punch { addrs } => check_len("address list", addrs.len(), MAX_ADDRS_PER_PEER),
            Request::Prove { len, .. } if *len > MAX_PROOF_LEN => Err(WireError::FrameTooLarge {
                len: *len as usize,
                max: MAX_PROOF_LEN as usize,
            }),
            Request::GetChunk { .. }
            | Request::PutChunk { .. }
            | Request::GetManifest { .. }
            | Request::PutManifest { .. }
            | Request::Hold { .. }
            | Request::Has { .. }
            | Request::Prove { .. }
            | Request::DialBack { .. }
            | Request::Probe { .. }
            | Request::Reserve
            | Request::Connect { .. }
            | Request::Circuit { .. }
            | Request::Dht(_) => Ok(()),
        }
    }
}

impl Message for Response {
    fn validate(&self) -> Result<(), WireError> {
        match self {
            Response::Nodes(nodes) => check_peers(nodes),
            Response::Addrs(addrs) => check_len("address list", addrs.len(), MAX_ADDRS_PER_PEER),
            Response::Providers { providers, closer } => {
                check_peers(providers)?;
                check_peers(closer)
            }
            _ => Ok(()),
        }
    }
}

impl Message for Control {
    fn validate(&self) -> Result<(), WireError> {
        match self {
            Control::Welcome(w) => {
                if w.version != PROTOCOL_VERSION {
                    return Err(WireError::UnsupportedVersion(w.version));
                }
                check_addrs(&w.listen_addrs, &w.relays)?;
                check_peers(&w.peers)
            }
            Control::Peers(p) => check_peers(p),
            Control::Addrs { addrs, relays } => check_addrs(addrs, relays),
            Control::Ping(_) | Control::Pong(_) | Control::Leave(_) => Ok(()),
        }
    }
}

/// Encodes `msg` as one frame (length prefix included).
///
/// Fails if the message breaks its own limits or its body exceeds `max`, so a
/// node never sends what a peer must reject.
pub fn encode<M: Message>(msg: &M, max: usize) -> Result<Vec<u8>, WireError> {
    msg.validate()?;
    let mut out = vec![0u8; LEN_PREFIX];
    out = postcard::to_extend(msg, out).map_err(|e| WireError::Malformed(e.to_string()))?;
    let len = out.len() - LEN_PREFIX;
    if len > max {
        return Err(WireError::FrameTooLarge { len, max });
    }
    let prefix = u32::try_from(len).map_err(|_| WireError::FrameTooLarge { len, max })?;
    out[..LEN_PREFIX].copy_from_slice(&prefix.to_be_bytes());
    Ok(out)
}

/// Reads a length prefix, rejecting lengths over `max`.
pub fn decode_len(prefix: [u8; LEN_PREFIX], max: usize) -> Result<usize, WireError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > max {
        return Err(WireError::FrameTooLarge { len, max });
    }
    Ok(len)
}

/// Decodes a frame body (without its prefix) and validates it.
pub fn decode_body<M: Message>(body: &[u8]) -> Result<M, WireError> {
    let (msg, rest): (M, &[u8]) =
        postcard::take_from_bytes(body).map_err(|e| WireError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(WireError::TrailingBytes(rest.len()));
    }
    msg.validate()?;
    Ok(msg)
}

/// Decodes one frame from the front of `buf`.
///
/// `Ok(None)` means more bytes are needed; `Ok(Some((msg, used)))` gives the
/// message and how many bytes of `buf` it took.
pub fn decode<M: Message>(buf: &[u8], max: usize) -> Result<Option<(M, usize)>, WireError> {
    let Some(prefix) = buf.get(..LEN_PREFIX) else {
        return Ok(None);
    };
    let mut p = [0u8; LEN_PREFIX];
    p.copy_from_slice(prefix);
    let len = decode_len(p, max)?;
    let Some(body) = buf.get(LEN_PREFIX..LEN_PREFIX + len) else {
        return Ok(None);
    };
    Ok(Some((decode_body(body)?, LEN_PREFIX + len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn join() -> Request {
        Request::Join(join_msg())
    }

    fn join_msg() -> Join {
        Join {
            version: PROTOCOL_VERSION,
            role: Role::Peer,
            listen_addrs: vec![addr("127.0.0.1:5000"), addr("[::1]:5000")],
            capabilities: 0,
            session: 0x0102_0304_0506_0708,
            relays: Vec::new(),
        }
    }

    fn peer(n: u8) -> PeerRecord {
        PeerRecord {
            id: NodeId::from_bytes([n; 32]),
            addrs: vec![addr("10.0.0.1:1")],
            relays: Vec::new(),
        }
    }

    fn controls() -> Vec<Control> {
        vec![
            Control::Welcome(Welcome {
                version: PROTOCOL_VERSION,
                observed_addr: addr("192.0.2.1:4000"),
                listen_addrs: vec![addr("192.0.2.2:5000")],
                capabilities: 3,
                session: 9,
                peers: vec![peer(1), peer(2)],
                relays: Vec::new(),
            }),
            Control::Peers(vec![peer(3)]),
            Control::Peers(vec![]),
            Control::Ping(42),
            Control::Pong(42),
            Control::Leave(LeaveReason::Shutdown),
            Control::Addrs {
                addrs: vec![addr("192.0.2.2:5000")],
                relays: vec![addr("192.0.2.9:5000")],
            },
            Control::Addrs {
                addrs: vec![],
                relays: vec![],
            },
        ]
    }

    #[test]
    fn every_message_round_trips() {
        let frame = encode(&join(), MAX_CONTROL_FRAME).unwrap();
        let (back, used) = decode::<Request>(&frame, MAX_CONTROL_FRAME)
            .unwrap()
            .unwrap();
        assert_eq!((back, used), (join(), frame.len()));
        for msg in controls() {
            let frame = encode(&msg, MAX_CONTROL_FRAME).unwrap();
            let (back, used) = decode::<Control>(&frame, MAX_CONTROL_FRAME)
                .unwrap()
                .unwrap();
            assert_eq!(back, msg);
            assert_eq!(used, frame.len());
        }
    }

    #[test]
    fn transfer_messages_round_trip() {
        let h = Hash::of(b"x");
        let reqs = vec![
            Request::GetChunk { hash: h },
            Request::PutChunk { hash: h, len: 5 },
            Request::GetManifest { id: h },
            Request::PutManifest { id: h, len: 9 },
            Request::Hold { id: h },
            Request::Has { id: h },
            Request::Dht(DhtRequest::Ping),
            Request::Dht(DhtRequest::FindNode {
                target: NodeId::from_bytes([1; 32]),
            }),
            Request::Dht(DhtRequest::GetProviders {
                key: NodeId::from_bytes([2; 32]),
            }),
            Request::Dht(DhtRequest::AddProvider {
                key: NodeId::from_bytes([2; 32]),
                provider: peer(4),
            }),
            Request::Prove {
                id: h,
                piece: Hash::of(b"y"),
                offset: 7,
                len: MAX_PROOF_LEN,
                nonce: [9; 32],
            },
            Request::DialBack {
                port: 5000,
                nonce: 7,
            },
            Request::Probe { nonce: 7 },
        ];
        for r in reqs {
            let f = encode(&r, MAX_CONTROL_FRAME).unwrap();
            assert_eq!(
                decode::<Request>(&f, MAX_CONTROL_FRAME).unwrap().unwrap().0,
                r
            );
        }
        let mut resps = vec![
            Response::Found { len: 1 << 40 },
            Response::NotFound,
            Response::Ack,
            Response::Proof([5; 32]),
            Response::Dialed(addr("192.0.2.1:5000")),
        ];
        for reason in [
            NackReason::BadHash,
            NackReason::OverQuota,
            NackReason::TooLarge,
            NackReason::NotAccepted,
            NackReason::Incomplete,
            NackReason::BadManifest,
            NackReason::Internal,
            NackReason::OverAllowance,
            NackReason::NotClose,
            NackReason::Unreachable,
        ] {
            resps.push(Response::Nack(reason));
        }
        for r in resps {
            let f = encode(&r, MAX_CONTROL_FRAME).unwrap();
            assert_eq!(
                decode::<Response>(&f, MAX_CONTROL_FRAME)
                    .unwrap()
                    .unwrap()
                    .0,
                r
            );
        }
    }

    #[test]
    fn oversized_dht_answers_are_rejected() {
        let many: Vec<PeerRecord> = (0..MAX_PEERS_PER_MESSAGE as u8 + 1).map(peer).collect();
        let body = postcard::to_allocvec(&Response::Nodes(many.clone())).unwrap();
        assert!(decode_body::<Response>(&body).is_err());
        let body = postcard::to_allocvec(&Response::Providers {
            providers: many,
            closer: vec![],
        })
        .unwrap();
        assert!(decode_body::<Response>(&body).is_err());
    }

    #[test]
    fn oversized_puts_are_rejected() {
        let h = Hash::of(b"x");
        let body = postcard::to_allocvec(&Request::PutChunk {
            hash: h,
            len: MAX_CHUNK_SIZE + 1,
        })
        .unwrap();
        assert_eq!(
            decode_body::<Request>(&body).unwrap_err().code(),
            ErrorCode::FrameTooLarge
        );
        let body = postcard::to_allocvec(&Request::PutManifest {
            id: h,
            len: MAX_MANIFEST_SIZE as u32 + 1,
        })
        .unwrap();
        assert_eq!(
            decode_body::<Request>(&body).unwrap_err().code(),
            ErrorCode::FrameTooLarge
        );
    }

    #[test]
    fn partial_frames_need_more_bytes() {
        let frame = encode(&Control::Ping(7), MAX_CONTROL_FRAME).unwrap();
        for cut in 0..frame.len() {
            assert_eq!(
                decode::<Control>(&frame[..cut], MAX_CONTROL_FRAME),
                Ok(None),
                "cut at {cut}"
            );
        }
        // Two frames back to back: the first is taken, the rest left.
        let mut two = frame.clone();
        two.extend_from_slice(&encode(&Control::Pong(8), MAX_CONTROL_FRAME).unwrap());
        let (m, used) = decode::<Control>(&two, MAX_CONTROL_FRAME).unwrap().unwrap();
        assert_eq!((m, used), (Control::Ping(7), frame.len()));
    }

    #[test]
    fn oversized_length_is_rejected_before_the_body() {
        let mut buf = (MAX_CONTROL_FRAME as u32 + 1).to_be_bytes().to_vec();
        buf.push(0);
        let err = decode::<Control>(&buf, MAX_CONTROL_FRAME).unwrap_err();
        assert_eq!(err.code(), ErrorCode::FrameTooLarge);
        assert_eq!(
            decode::<Control>(&u32::MAX.to_be_bytes(), MAX_CONTROL_FRAME)
                .unwrap_err()
                .code(),
            ErrorCode::FrameTooLarge
        );
    }

    #[test]
    fn encode_refuses_what_the_peer_would_reject() {
        let big = Control::Peers((0..MAX_PEERS_PER_MESSAGE as u8 + 1).map(peer).collect());
        assert!(matches!(
            encode(&big, MAX_CONTROL_FRAME),
            Err(WireError::TooMany { .. })
        ));
        assert!(matches!(
            encode(&Control::Ping(1), 1),
            Err(WireError::FrameTooLarge { .. })
        ));
    }

    #[test]
    fn malformed_bodies_are_rejected() {
        // Unknown enum tag.
        let body = [200u8];
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        let err = decode::<Control>(&frame, MAX_CONTROL_FRAME).unwrap_err();
        assert_eq!(err.code(), ErrorCode::ProtocolViolation);
        // Truncated body inside a complete frame.
        let good = encode(&join(), MAX_CONTROL_FRAME).unwrap();
        let body = &good[LEN_PREFIX..good.len() - 3];
        assert_eq!(
            decode_body::<Request>(body).unwrap_err().code(),
            ErrorCode::ProtocolViolation
        );
        // Trailing bytes.
        let mut body = good[LEN_PREFIX..].to_vec();
        body.push(0);
        assert_eq!(
            decode_body::<Request>(&body),
            Err(WireError::TrailingBytes(1))
        );
        // An empty body.
        assert!(decode_body::<Control>(&[]).is_err());
    }

    #[test]
    fn lists_over_the_limit_are_rejected() {
        // Build the oversized message by hand, as a hostile peer would.
        let peers: Vec<PeerRecord> = (0..MAX_PEERS_PER_MESSAGE as u8 + 1).map(peer).collect();
        let body = postcard::to_allocvec(&Control::Peers(peers)).unwrap();
        assert!(matches!(
            decode_body::<Control>(&body),
            Err(WireError::TooMany {
                what: "peer list",
                ..
            })
        ));
        let mut p = peer(1);
        p.addrs = vec![addr("10.0.0.1:1"); MAX_ADDRS_PER_PEER + 1];
        let body = postcard::to_allocvec(&Control::Peers(vec![p])).unwrap();
        assert!(matches!(
            decode_body::<Control>(&body),
            Err(WireError::TooMany {
                what: "address list",
                ..
            })
        ));
        // A list length claiming billions of entries in a tiny body.
        let body = [1u8, 0xff, 0xff, 0xff, 0xff, 0x0f];
        assert!(decode_body::<Control>(&body).is_err());
    }

    #[test]
    fn wrong_version_is_rejected() {
        let mut j = join_msg();
        j.version = PROTOCOL_VERSION + 1;
        let body = postcard::to_allocvec(&Request::Join(j)).unwrap();
        let err = decode_body::<Request>(&body).unwrap_err();
        assert_eq!(err, WireError::UnsupportedVersion(PROTOCOL_VERSION + 1));
        assert_eq!(err.code(), ErrorCode::UnsupportedVersion);
    }

    #[test]
    fn error_codes_are_stable_and_distinct() {
        for (i, c) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(c.code() as usize, i);
            assert_eq!(ErrorCode::from_code(i as u64), Some(*c));
        }
        assert_eq!(ErrorCode::from_code(999), None);
        // Codes are part of the wire: pinned by number.
        assert_eq!(ErrorCode::ConnectionLimit.code(), 6);
        assert_eq!(ErrorCode::RateLimited.code(), 12);
        assert_eq!(ErrorCode::RateLimited.reason(), b"rate limited");
    }

    #[test]
    fn limit_reasons_are_pinned_and_checked() {
        let per = LimitHit::PerAddress { max: 8 };
        assert_eq!(per.encode(), b"connection limit: per-address 8");
        assert_eq!(
            LimitHit::Total { max: 256 }.encode(),
            b"connection limit: total 256"
        );
        for hit in [per, LimitHit::Total { max: u32::MAX }] {
            assert_eq!(LimitHit::decode(&hit.encode()), Some(hit));
        }
        // The bare code's reason, garbage, other kinds and numbers: none.
        for bad in [
            ErrorCode::ConnectionLimit.reason(),
            b"connection limit: per-address",
            b"connection limit: per-address -1",
            b"connection limit: per-address 99999999999",
            b"connection limit: streams 8",
            b"\xff\xfe",
            b"",
        ] {
            assert_eq!(LimitHit::decode(bad), None, "{bad:?}");
        }
    }

    /// Pins the encoding: if this fails, the wire changed.
    #[test]
    fn wire_format_is_pinned() {
        let frame = encode(&Control::Ping(300), MAX_CONTROL_FRAME).unwrap();
        assert_eq!(frame, [0, 0, 0, 3, 2, 0xac, 0x02]);
        let frame = encode(&Control::Leave(LeaveReason::Shutdown), MAX_CONTROL_FRAME).unwrap();
        assert_eq!(frame, [0, 0, 0, 2, 4, 0]);
        let mut j = join_msg();
        j.listen_addrs = vec![addr("127.0.0.1:5000")];
        let frame = encode(&Request::Join(j), MAX_CONTROL_FRAME).unwrap();
        let get = encode(
            &Request::GetChunk {
                hash: Hash::from_bytes([0xab; 32]),
            },
            MAX_CONTROL_FRAME,
        )
        .unwrap();
        assert_eq!(get[..6], [0, 0, 0, 33, 1, 0xab]);
        assert_eq!(
            encode(&Response::Found { len: 1 << 20 }, MAX_CONTROL_FRAME).unwrap(),
            [0, 0, 0, 4, 0, 0x80, 0x80, 0x40]
        );
        assert_eq!(
            encode(&Response::Nack(NackReason::OverQuota), MAX_CONTROL_FRAME).unwrap(),
            [0, 0, 0, 2, 3, 1]
        );
        let expected: Vec<u8> = [
            &[0, 0, 0, 22][..],
            &[0],    // Request::Join
            &[2],    // version 2
            &[0],    // Role::Peer
            &[1, 0], // one address, V4
            &[127, 0, 0, 1, 0x88, 0x27],
            &[0],                                                    // no relays
            &[0],                                                    // capabilities
            &[0x88, 0x8e, 0x98, 0xa8, 0xc0, 0xe0, 0x80, 0x81, 0x01], // session varint
        ]
        .concat();
        assert_eq!(frame, expected);
    }

    /// Pins the reachability and relay messages, appended after the rest.
    #[test]
    fn nat_messages_are_pinned() {
        let f = |m: &Request| encode(m, MAX_CONTROL_FRAME).unwrap();
        let dial_back = Request::DialBack {
            port: 5000,
            nonce: 1,
        };
        assert_eq!(f(&dial_back), [0, 0, 0, 4, 9, 0x88, 0x27, 1]);
        assert_eq!(f(&Request::Probe { nonce: 2 }), [0, 0, 0, 2, 10, 2]);
        assert_eq!(f(&Request::Reserve), [0, 0, 0, 1, 11]);
        let connect = f(&Request::Connect {
            target: NodeId::from_bytes([7; 32]),
        });
        assert_eq!(connect[..6], [0, 0, 0, 33, 12, 7]);
        let circuit = f(&Request::Circuit {
            from: NodeId::from_bytes([7; 32]),
        });
        assert_eq!(circuit[..6], [0, 0, 0, 33, 13, 7]);
        let dialed = encode(&Response::Dialed(addr("10.0.0.1:5000")), MAX_CONTROL_FRAME).unwrap();
        assert_eq!(dialed, [0, 0, 0, 8, 7, 0, 10, 0, 0, 1, 0x88, 0x27]);
        let addrs = Control::Addrs {
            addrs: vec![],
            relays: vec![addr("10.0.0.1:5000")],
        };
        let frame = encode(&addrs, MAX_CONTROL_FRAME).unwrap();
        assert_eq!(frame, [0, 0, 0, 10, 5, 0, 1, 0, 10, 0, 0, 1, 0x88, 0x27]);
    }

    /// Pins the proof-of-possession messages, appended after the rest.
    #[test]
    fn proof_messages_are_pinned() {
        let frame = encode(
            &Request::Prove {
                id: Hash::from_bytes([0x11; 32]),
                piece: Hash::from_bytes([0x22; 32]),
                offset: 300,
                len: 4096,
                nonce: [0x33; 32],
            },
            MAX_CONTROL_FRAME,
        )
        .unwrap();
        let expected: Vec<u8> = [
            &[0, 0, 0, 101][..],
            &[8],          // Request::Prove, after Dht
            &[0x11; 32],   // id
            &[0x22; 32],   // piece
            &[0xac, 0x02], // offset 300
            &[0x80, 0x20], // len 4096
            &[0x33; 32],   // nonce
        ]
        .concat();
        assert_eq!(frame, expected);
        let frame = encode(&Response::Proof([0x44; 32]), MAX_CONTROL_FRAME).unwrap();
        let expected: Vec<u8> = [&[0, 0, 0, 33][..], &[6], &[0x44; 32]].concat();
        assert_eq!(frame, expected);
    }

    #[test]
    fn oversized_proof_ranges_are_rejected() {
        let body = postcard::to_allocvec(&Request::Prove {
            id: Hash::of(b"x"),
            piece: Hash::of(b"y"),
            offset: 0,
            len: MAX_PROOF_LEN + 1,
            nonce: [0; 32],
        })
        .unwrap();
        assert_eq!(
            decode_body::<Request>(&body).unwrap_err().code(),
            ErrorCode::FrameTooLarge
        );
    }
}
