//! Property tests for everything a peer can send us: wire frames, every message
//! type, manifests and tickets. Round trips with arbitrary values, arbitrary
//! bytes that must never panic, truncation, oversized length prefixes, and the
//! limits each message carries. The fuzz targets in `fuzz/` push the same
//! decoders much further; these keep the properties in the normal test suite.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::future::Future;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;

use quic_peer::proto::frame::{read_frame, FrameError};
use quic_peer::proto::manifest::{
    DirEntry, DirManifest, FileManifest, Manifest, MAX_CHUNK_SIZE, MAX_MANIFEST_SIZE, MAX_NAME_LEN,
    MIN_CHUNK_SIZE,
};
use quic_peer::proto::ticket::{Target, Ticket, MAX_HOLDERS};
use quic_peer::proto::wire::{
    self, Control, DhtRequest, ErrorCode, Join, LeaveReason, Message, NackReason, PeerRecord,
    Request, Response, Role, Welcome, WireError, LEN_PREFIX, MAX_ADDRS_PER_PEER, MAX_CONTROL_FRAME,
    MAX_PEERS_PER_MESSAGE, MAX_PROOF_LEN, MAX_RELAYS_PER_PEER, PROTOCOL_VERSION,
};
use quic_peer::proto::Hash;
use quic_peer::NodeId;

// ---------------------------------------------------------------------------
// Strategies

/// Addresses as the wire carries them: an IPv6 address's flow info and scope id
/// are not encoded (serde writes only ip and port), so they are left at zero.
fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::from((Ipv4Addr::from(ip), port))),
        (any::<[u8; 16]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::from((Ipv6Addr::from(ip), port))),
    ]
}

fn addrs(max: usize) -> impl Strategy<Value = Vec<SocketAddr>> {
    vec(socket_addr(), 0..=max)
}

fn hash() -> impl Strategy<Value = Hash> {
    any::<[u8; 32]>().prop_map(Hash::from_bytes)
}

fn node_id() -> impl Strategy<Value = NodeId> {
    any::<[u8; 32]>().prop_map(NodeId::from_bytes)
}

fn peer() -> impl Strategy<Value = PeerRecord> {
    (
        node_id(),
        addrs(MAX_ADDRS_PER_PEER),
        addrs(MAX_RELAYS_PER_PEER),
    )
        .prop_map(|(id, addrs, relays)| PeerRecord { id, addrs, relays })
}

/// Peer lists up to the limit, mostly short so cases stay quick.
fn peers() -> impl Strategy<Value = Vec<PeerRecord>> {
    prop_oneof![
        3 => vec(peer(), 0..4),
        1 => vec(peer(), 0..=MAX_PEERS_PER_MESSAGE),
    ]
}

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![Just(Role::Peer), Just(Role::Client)]
}

fn join() -> impl Strategy<Value = Join> {
    (
        role(),
        addrs(MAX_ADDRS_PER_PEER),
        addrs(MAX_RELAYS_PER_PEER),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(|(role, listen_addrs, relays, capabilities, session)| Join {
            version: PROTOCOL_VERSION,
            role,
            listen_addrs,
            capabilities,
            session,
            relays,
        })
}

fn dht_request() -> impl Strategy<Value = DhtRequest> {
    prop_oneof![
        Just(DhtRequest::Ping),
        node_id().prop_map(|target| DhtRequest::FindNode { target }),
        node_id().prop_map(|key| DhtRequest::GetProviders { key }),
        (node_id(), peer()).prop_map(|(key, provider)| DhtRequest::AddProvider { key, provider }),
    ]
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        join().prop_map(Request::Join),
        hash().prop_map(|hash| Request::GetChunk { hash }),
        (hash(), 0..=MAX_CHUNK_SIZE).prop_map(|(hash, len)| Request::PutChunk { hash, len }),
        hash().prop_map(|id| Request::GetManifest { id }),
        (hash(), 0..=MAX_MANIFEST_SIZE as u32)
            .prop_map(|(id, len)| Request::PutManifest { id, len }),
        hash().prop_map(|id| Request::Hold { id }),
        hash().prop_map(|id| Request::Has { id }),
        dht_request().prop_map(Request::Dht),
        (
            hash(),
            hash(),
            any::<u32>(),
            0..=MAX_PROOF_LEN,
            any::<[u8; 32]>()
        )
            .prop_map(|(id, piece, offset, len, nonce)| Request::Prove {
                id,
                piece,
                offset,
                len,
                nonce
            }),
        (any::<u16>(), any::<u64>()).prop_map(|(port, nonce)| Request::DialBack { port, nonce }),
        any::<u64>().prop_map(|nonce| Request::Probe { nonce }),
        Just(Request::Reserve),
        node_id().prop_map(|target| Request::Connect { target }),
        node_id().prop_map(|from| Request::Circuit { from }),
        addrs(MAX_ADDRS_PER_PEER).prop_map(|addrs| Request::Punch { addrs }),
    ]
}

fn nack_reason() -> impl Strategy<Value = NackReason> {
    prop_oneof![
        Just(NackReason::BadHash),
        Just(NackReason::OverQuota),
        Just(NackReason::TooLarge),
        Just(NackReason::NotAccepted),
        Just(NackReason::Incomplete),
        Just(NackReason::BadManifest),
        Just(NackReason::Internal),
        Just(NackReason::OverAllowance),
        Just(NackReason::NotClose),
        Just(NackReason::Unreachable),
    ]
}

fn response() -> impl Strategy<Value = Response> {
    prop_oneof![
        any::<u64>().prop_map(|len| Response::Found { len }),
        Just(Response::NotFound),
        Just(Response::Ack),
        nack_reason().prop_map(Response::Nack),
        peers().prop_map(Response::Nodes),
        (peers(), peers())
            .prop_map(|(providers, closer)| Response::Providers { providers, closer }),
        any::<[u8; 32]>().prop_map(Response::Proof),
        socket_addr().prop_map(Response::Dialed),
        addrs(MAX_ADDRS_PER_PEER).prop_map(Response::Addrs),
    ]
}

fn welcome() -> impl Strategy<Value = Welcome> {
    (
        socket_addr(),
        (addrs(MAX_ADDRS_PER_PEER), addrs(MAX_RELAYS_PER_PEER)),
        any::<u64>(),
        any::<u64>(),
        peers(),
    )
        .prop_map(
            |(observed_addr, (listen_addrs, relays), capabilities, session, peers)| Welcome {
                version: PROTOCOL_VERSION,
                observed_addr,
                listen_addrs,
                relays,
                capabilities,
                session,
                peers,
            },
        )
}

fn control() -> impl Strategy<Value = Control> {
    prop_oneof![
        welcome().prop_map(Control::Welcome),
        peers().prop_map(Control::Peers),
        any::<u64>().prop_map(Control::Ping),
        any::<u64>().prop_map(Control::Pong),
        Just(Control::Leave(LeaveReason::Shutdown)),
        (addrs(MAX_ADDRS_PER_PEER), addrs(MAX_RELAYS_PER_PEER))
            .prop_map(|(addrs, relays)| Control::Addrs { addrs, relays }),
    ]
}

/// One message of any type, as the frame of its type.
#[derive(Debug, Clone)]
enum AnyMsg {
    Request(Request),
    Response(Response),
    Control(Control),
}

fn any_msg() -> impl Strategy<Value = AnyMsg> {
    prop_oneof![
        request().prop_map(AnyMsg::Request),
        response().prop_map(AnyMsg::Response),
        control().prop_map(AnyMsg::Control),
    ]
}

impl AnyMsg {
    fn frame(&self) -> Vec<u8> {
        match self {
            AnyMsg::Request(m) => wire::encode(m, MAX_CONTROL_FRAME),
            AnyMsg::Response(m) => wire::encode(m, MAX_CONTROL_FRAME),
            AnyMsg::Control(m) => wire::encode(m, MAX_CONTROL_FRAME),
        }
        .expect("a valid message encodes")
    }
}

/// A plain file or directory name: no separators, no control characters, not
/// `.` or `..`, at most [`MAX_NAME_LEN`] bytes (60 chars of up to 4 bytes
/// each, or exactly the limit).
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => "[^/\\\\\\p{Cc}]{1,60}".prop_filter("not . or ..", |s| s != "." && s != ".."),
        1 => Just("n".repeat(MAX_NAME_LEN)),
    ]
}

fn file_manifest() -> impl Strategy<Value = FileManifest> {
    (name(), MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE, 0usize..40)
        .prop_flat_map(|(name, chunk_size, n)| {
            let last = if n == 0 { 0..=0 } else { 1..=chunk_size };
            (Just(name), Just(chunk_size), last, vec(hash(), n))
        })
        .prop_map(|(name, chunk_size, last, chunks)| {
            let size = match chunks.len() {
                0 => 0,
                n => (n as u64 - 1) * u64::from(chunk_size) + u64::from(last),
            };
            FileManifest {
                name,
                size,
                chunk_size,
                chunks,
            }
        })
}

fn dir_manifest() -> impl Strategy<Value = DirManifest> {
    (name(), btree_map(name(), hash(), 0..20)).prop_map(|(name, entries)| DirManifest {
        name,
        // A BTreeMap's order is the byte order the decoder checks.
        entries: entries
            .into_iter()
            .map(|(name, id)| DirEntry { name, id })
            .collect(),
    })
}

fn manifest() -> impl Strategy<Value = Manifest> {
    prop_oneof![
        file_manifest().prop_map(Manifest::File),
        dir_manifest().prop_map(Manifest::Dir),
        (vec(any::<u8>(), 0..64), file_manifest()).prop_map(|(meta, body)| {
            Manifest::Sealed(quic_peer::proto::manifest::SealedManifest {
                version: quic_peer::proto::sealed::VERSION,
                commitment: [3; 32],
                meta,
                body,
            })
        }),
    ]
}

fn ticket(holders: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = Ticket> {
    (hash(), vec(peer(), holders), any::<Option<[u8; 32]>>()).prop_map(|(id, holders, key)| {
        Ticket {
            id,
            holders,
            key: key.map(quic_peer::proto::sealed::FileKey::from_bytes),
        }
    })
}

// ---------------------------------------------------------------------------
// Helpers

/// Runs a future whose reader is an in-memory slice (it never waits).
fn now<F: Future>(f: F) -> F::Output {
    match pin!(f).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("an in-memory read never blocks"),
    }
}

fn frame_of(body: &[u8]) -> Vec<u8> {
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(body);
    frame
}

/// The full round trip of one valid message.
fn round_trip<M: Message + PartialEq + Debug>(msg: &M) -> Result<(), TestCaseError> {
    let frame = wire::encode(msg, MAX_CONTROL_FRAME).expect("every valid message fits the cap");
    let body_len = frame.len() - LEN_PREFIX;
    prop_assert_eq!(&frame[..LEN_PREFIX], &(body_len as u32).to_be_bytes()[..]);
    // Sans-IO, framed and bare.
    prop_assert_eq!(
        wire::decode::<M>(&frame, MAX_CONTROL_FRAME),
        Ok(Some((clone_via_wire(msg), frame.len())))
    );
    prop_assert_eq!(&wire::decode_body::<M>(&frame[LEN_PREFIX..]).unwrap(), msg);
    // Back to back with another frame: only the first is taken.
    let mut two = frame.clone();
    two.extend_from_slice(&frame);
    let (first, used) = wire::decode::<M>(&two, MAX_CONTROL_FRAME).unwrap().unwrap();
    prop_assert_eq!(&first, msg);
    prop_assert_eq!(used, frame.len());
    // Through read_frame, as a node reads it: the message, then a clean end.
    let mut reader = &two[..];
    for _ in 0..2 {
        let got = now(read_frame::<M, _>(&mut reader, MAX_CONTROL_FRAME)).unwrap();
        prop_assert_eq!(got.as_ref(), Some(msg));
    }
    prop_assert!(now(read_frame::<M, _>(&mut reader, MAX_CONTROL_FRAME))
        .unwrap()
        .is_none());
    // The cap is exact: the body fits at its own length and not one byte less.
    prop_assert_eq!(&wire::encode(msg, body_len).unwrap(), &frame);
    if body_len > 0 {
        prop_assert_eq!(
            wire::encode(msg, body_len - 1),
            Err(WireError::FrameTooLarge {
                len: body_len,
                max: body_len - 1
            })
        );
    }
    Ok(())
}

/// Messages are `Clone`; this keeps `round_trip` generic over `Message` alone.
fn clone_via_wire<M: Message>(msg: &M) -> M {
    let frame = wire::encode(msg, MAX_CONTROL_FRAME).unwrap();
    wire::decode_body(&frame[LEN_PREFIX..]).unwrap()
}

/// Decodes arbitrary bytes as a body of `M`: never panics; on success the message
/// is valid, re-encodes no larger (so within any cap the bytes were within) and
/// decodes back to itself; on failure the code is one a decoder may give.
fn arbitrary_body<M: Message + PartialEq + Debug>(body: &[u8]) -> Result<(), TestCaseError> {
    let decoded = wire::decode_body::<M>(body);
    // The framed form gives the same answer.
    let framed = wire::decode::<M>(&frame_of(body), MAX_CONTROL_FRAME);
    match (&decoded, framed) {
        (Ok(m), Ok(Some((f, _)))) => prop_assert_eq!(m, &f),
        (Err(e), Err(f)) => prop_assert_eq!(e, &f),
        (d, f) => prop_assert!(false, "decode_body {:?}, decode {:?}", d, f),
    }
    match decoded {
        Ok(msg) => {
            prop_assert!(msg.validate().is_ok());
            let frame = wire::encode(&msg, body.len()).expect("re-encodes within its length");
            prop_assert_eq!(wire::decode_body::<M>(&frame[LEN_PREFIX..]), Ok(msg));
        }
        Err(e) => prop_assert!(matches!(
            e.code(),
            ErrorCode::ProtocolViolation | ErrorCode::FrameTooLarge | ErrorCode::UnsupportedVersion
        )),
    }
    Ok(())
}

/// `body` with a few bytes overwritten, inserted or removed: hostile bytes that
/// are close to valid, which reach deeper than uniform noise.
fn mutated(body: Vec<u8>, edits: Vec<(Index, u8, u8)>) -> Vec<u8> {
    let mut b = body;
    for (at, kind, byte) in edits {
        if b.is_empty() {
            b.push(byte);
            continue;
        }
        let i = at.index(b.len());
        match kind % 3 {
            0 => b[i] = byte,
            1 => b.insert(i, byte),
            _ => {
                b.remove(i);
            }
        }
    }
    b
}

fn decode_any(which: u8, bytes: &[u8], max: usize) -> Result<bool, WireError> {
    Ok(match which % 3 {
        0 => wire::decode::<Request>(bytes, max)?.is_some(),
        1 => wire::decode::<Response>(bytes, max)?.is_some(),
        _ => wire::decode::<Control>(bytes, max)?.is_some(),
    })
}

fn read_any(which: u8, mut bytes: &[u8], max: usize) -> (Result<bool, FrameError>, usize) {
    let r = match which % 3 {
        0 => now(read_frame::<Request, _>(&mut bytes, max)).map(|m| m.is_some()),
        1 => now(read_frame::<Response, _>(&mut bytes, max)).map(|m| m.is_some()),
        _ => now(read_frame::<Control, _>(&mut bytes, max)).map(|m| m.is_some()),
    };
    (r, bytes.len())
}

fn check_manifest(m: &Manifest) -> Result<(), TestCaseError> {
    let bytes = m.encode();
    prop_assert!(bytes.len() <= MAX_MANIFEST_SIZE);
    prop_assert_eq!(&Manifest::decode(&bytes).unwrap(), m);
    let id = m.id();
    prop_assert_eq!(id, Hash::of(&bytes));
    prop_assert_eq!(id.to_string().parse::<Hash>().unwrap(), id);
    prop_assert_eq!(id.to_string().to_uppercase().parse::<Hash>().unwrap(), id);
    if let Manifest::File(f) = m {
        let mut end = 0u64;
        for i in 0..f.chunks.len() {
            let (offset, len) = f.chunk_range(i);
            prop_assert_eq!(offset, end);
            prop_assert!(len > 0 && len <= f.chunk_size as usize);
            end += len as u64;
        }
        prop_assert_eq!(end, f.size);
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Properties

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn requests_round_trip(msg in request()) {
        round_trip(&msg)?;
    }

    #[test]
    fn responses_round_trip(msg in response()) {
        round_trip(&msg)?;
    }

    #[test]
    fn controls_round_trip(msg in control()) {
        round_trip(&msg)?;
    }

    /// A valid frame cut anywhere short of its end is never a message: the
    /// sans-IO decoder wants more bytes, `read_frame` at end of stream fails
    /// (`ProtocolViolation`), and a complete frame around the cut body is
    /// malformed.
    #[test]
    fn truncated_frames_are_errors(msg in any_msg(), cuts in vec(any::<Index>(), 8)) {
        let frame = msg.frame();
        let which = match msg {
            AnyMsg::Request(_) => 0,
            AnyMsg::Response(_) => 1,
            AnyMsg::Control(_) => 2,
        };
        let mut cuts: BTreeSet<usize> = cuts.iter().map(|c| c.index(frame.len())).collect();
        cuts.extend([0, 1, LEN_PREFIX - 1, LEN_PREFIX, frame.len() - 1]);
        for cut in cuts {
            let part = &frame[..cut];
            prop_assert_eq!(decode_any(which, part, MAX_CONTROL_FRAME), Ok(false), "cut {}", cut);
            let (read, _) = read_any(which, part, MAX_CONTROL_FRAME);
            match read {
                Ok(false) => prop_assert_eq!(cut, 0),
                Err(FrameError::Io(e)) => {
                    prop_assert!(cut > 0);
                    prop_assert_eq!(e.kind(), ErrorKind::UnexpectedEof);
                    prop_assert_eq!(FrameError::Io(e).code(), ErrorCode::ProtocolViolation);
                }
                other => prop_assert!(false, "cut {}: read_frame gave {:?}", cut, other),
            }
            if cut >= LEN_PREFIX {
                let short = frame_of(&frame[LEN_PREFIX..cut]);
                let err = decode_any(which, &short, MAX_CONTROL_FRAME).unwrap_err();
                prop_assert_eq!(err.code(), ErrorCode::ProtocolViolation, "cut {}: {}", cut, err);
            }
        }
    }

    /// A length prefix over the cap is refused with `FrameTooLarge` on the
    /// prefix alone: by the sans-IO decoder, and by `read_frame` without
    /// reading a byte of what follows.
    #[test]
    fn oversized_length_prefixes_are_refused(
        which in 0u8..3,
        max in prop_oneof![Just(MAX_CONTROL_FRAME), 0..=MAX_CONTROL_FRAME],
        excess in prop_oneof![Just(1u64), 1u64..=u64::from(u32::MAX)],
        tail in vec(any::<u8>(), 0..64),
    ) {
        let len = (max as u64 + excess).min(u64::from(u32::MAX)) as usize;
        prop_assume!(len > max);
        let mut bytes = (len as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(&tail);
        let err = decode_any(which, &bytes, max).unwrap_err();
        prop_assert_eq!(&err, &WireError::FrameTooLarge { len, max });
        prop_assert_eq!(err.code(), ErrorCode::FrameTooLarge);
        let (read, left) = read_any(which, &bytes, max);
        match read {
            Err(e) => prop_assert_eq!(e.code(), ErrorCode::FrameTooLarge),
            Ok(m) => prop_assert!(false, "read_frame accepted it: {:?}", m),
        }
        prop_assert_eq!(left, tail.len(), "read_frame read past the prefix");
    }

    /// Uniform noise as a body of each message type.
    #[test]
    fn arbitrary_bytes_never_panic(body in vec(any::<u8>(), 0..256)) {
        arbitrary_body::<Request>(&body)?;
        arbitrary_body::<Response>(&body)?;
        arbitrary_body::<Control>(&body)?;
    }

    /// Arbitrary bytes as a stream with an arbitrary cap: the decoders agree and
    /// never panic.
    #[test]
    fn arbitrary_streams_never_panic(
        which in 0u8..3,
        max in prop_oneof![Just(MAX_CONTROL_FRAME), 0usize..64],
        bytes in vec(any::<u8>(), 0..128),
    ) {
        let sans_io = decode_any(which, &bytes, max);
        let (read, _) = read_any(which, &bytes, max);
        match (sans_io, read) {
            (Ok(true), Ok(true)) => {}
            (Ok(false), Ok(false)) => prop_assert!(bytes.is_empty()),
            (Ok(false), Err(FrameError::Io(_))) => prop_assert!(!bytes.is_empty()),
            (Err(e), Err(FrameError::Wire(w))) => prop_assert_eq!(e, w),
            (s, r) => prop_assert!(false, "decode {:?}, read_frame {:?}", s, r),
        }
    }

    /// Valid bodies with a few bytes changed, inserted or removed.
    #[test]
    fn mutated_bodies_never_panic(
        msg in any_msg(),
        edits in vec((any::<Index>(), any::<u8>(), any::<u8>()), 1..4),
    ) {
        let frame = msg.frame();
        let body = mutated(frame[LEN_PREFIX..].to_vec(), edits);
        match msg {
            AnyMsg::Request(_) => arbitrary_body::<Request>(&body)?,
            AnyMsg::Response(_) => arbitrary_body::<Response>(&body)?,
            AnyMsg::Control(_) => arbitrary_body::<Control>(&body)?,
        }
    }

    /// Messages that break their own limits: `encode` refuses to send them, and
    /// the same body built by hand (as a hostile peer would) is refused on
    /// decode, with the same error and code.
    #[test]
    fn over_limit_messages_are_refused_both_ways(
        extra_peers in 1usize..8,
        extra_addrs in 1usize..8,
        version in any::<u16>().prop_filter("not ours", |v| *v != PROTOCOL_VERSION),
        chunk_len in MAX_CHUNK_SIZE + 1..=u32::MAX,
        manifest_len in MAX_MANIFEST_SIZE as u32 + 1..=u32::MAX,
        j in join(),
        p in peer(),
    ) {
        let a: SocketAddr = "192.0.2.1:1".parse().unwrap();
        let mut fat = p.clone();
        fat.addrs = vec![a; MAX_ADDRS_PER_PEER + extra_addrs];
        let too_many = vec![p.clone(); MAX_PEERS_PER_MESSAGE + extra_peers];
        let h = Hash::of(b"x");
        let mut old = j.clone();
        old.version = version;
        let mut chatty = j;
        chatty.listen_addrs = vec![a; MAX_ADDRS_PER_PEER + extra_addrs];

        fn refused<M: Message + Debug>(msg: M, code: ErrorCode) -> Result<(), TestCaseError> {
            let err = wire::encode(&msg, MAX_CONTROL_FRAME).unwrap_err();
            prop_assert_eq!(err.code(), code, "{:?}: {}", msg, err);
            let body = postcard::to_allocvec(&msg).unwrap();
            prop_assert_eq!(wire::decode_body::<M>(&body).unwrap_err(), err);
            Ok(())
        }
        refused(Control::Peers(too_many.clone()), ErrorCode::ProtocolViolation)?;
        refused(Control::Peers(vec![fat.clone()]), ErrorCode::ProtocolViolation)?;
        refused(Response::Nodes(too_many.clone()), ErrorCode::ProtocolViolation)?;
        refused(
            Response::Providers { providers: vec![], closer: too_many },
            ErrorCode::ProtocolViolation,
        )?;
        refused(
            Response::Providers { providers: vec![fat.clone()], closer: vec![] },
            ErrorCode::ProtocolViolation,
        )?;
        refused(
            Request::Dht(DhtRequest::AddProvider { key: p.id, provider: fat }),
            ErrorCode::ProtocolViolation,
        )?;
        refused(Request::Join(old), ErrorCode::UnsupportedVersion)?;
        refused(Request::Join(chatty), ErrorCode::ProtocolViolation)?;
        refused(Request::PutChunk { hash: h, len: chunk_len }, ErrorCode::FrameTooLarge)?;
        refused(Request::PutManifest { id: h, len: manifest_len }, ErrorCode::FrameTooLarge)?;
    }

    #[test]
    fn manifests_round_trip(m in manifest()) {
        check_manifest(&m)?;
    }

    /// Manifests that are well-formed postcard but not valid: wrong chunk count,
    /// chunk size out of range, bad names, unsorted or repeated entries.
    #[test]
    fn inconsistent_manifests_are_refused(
        f in file_manifest(),
        d in dir_manifest().prop_filter("two entries", |d| d.entries.len() >= 2),
        bad_name in prop_oneof![
            Just(String::new()),
            Just(".".to_string()),
            Just("..".to_string()),
            "[a-z]{0,8}[/\\\\\u{0}][a-z]{0,8}",
            "[a-z]{0,8}\\p{Cc}[a-z]{0,8}",
            Just("n".repeat(MAX_NAME_LEN + 1)),
        ],
        bad_chunk_size in prop_oneof![0..MIN_CHUNK_SIZE, MAX_CHUNK_SIZE + 1..=u32::MAX],
        extra in hash(),
    ) {
        let refused = |m: Manifest| Manifest::decode(&m.encode()).is_err();
        let mut more = f.clone();
        more.chunks.push(extra);
        prop_assert!(refused(Manifest::File(more)));
        if !f.chunks.is_empty() {
            let mut fewer = f.clone();
            fewer.chunks.pop();
            prop_assert!(refused(Manifest::File(fewer)));
        }
        let mut named = f.clone();
        named.name = bad_name.clone();
        prop_assert!(refused(Manifest::File(named)));
        let mut sized = f;
        sized.chunk_size = bad_chunk_size;
        prop_assert!(refused(Manifest::File(sized)));
        let mut dir = d.clone();
        dir.name = bad_name.clone();
        prop_assert!(refused(Manifest::Dir(dir)));
        let mut entry = d.clone();
        entry.entries[0].name = bad_name;
        prop_assert!(refused(Manifest::Dir(entry)));
        let mut unsorted = d.clone();
        unsorted.entries.swap(0, 1);
        prop_assert!(refused(Manifest::Dir(unsorted)));
        let mut repeated = d;
        repeated.entries[1].name = repeated.entries[0].name.clone();
        prop_assert!(refused(Manifest::Dir(repeated)));
    }

    /// Arbitrary and near-valid manifest bytes: never a panic; whatever decodes
    /// is consistent, round-trips, and is the canonical encoding of its value,
    /// so the bytes' hash is the id.
    #[test]
    fn arbitrary_manifest_bytes_never_panic(
        m in manifest(),
        edits in vec((any::<Index>(), any::<u8>(), any::<u8>()), 0..4),
        noise in vec(any::<u8>(), 0..256),
    ) {
        for bytes in [mutated(m.encode(), edits), noise] {
            if let Ok(back) = Manifest::decode(&bytes) {
                check_manifest(&back)?;
                prop_assert_eq!(back.encode(), bytes);
            }
        }
    }

    /// The same manifest in a longer encoding (an over-long varint, which
    /// postcard reads) is refused: its bytes would hash to a second id.
    #[test]
    fn overlong_manifest_encodings_are_refused(m in manifest(), at in any::<Index>()) {
        let bytes = m.encode();
        // Every manifest starts with a varint (the variant), then the name's
        // length: stretch one of them by a byte.
        let i = if at.index(2) == 0 { 0 } else { 1 };
        let mut long = bytes[..i].to_vec();
        long.extend_from_slice(&[bytes[i] | 0x80, 0x00]);
        long.extend_from_slice(&bytes[i + 1..]);
        let err = Manifest::decode(&long).unwrap_err();
        prop_assert_eq!(err.code(), ErrorCode::ProtocolViolation);
    }

    #[test]
    fn tickets_round_trip(t in ticket(0..=MAX_HOLDERS)) {
        let s = t.to_string();
        let prefix = if t.key.is_some() { "qpt2" } else { "qpt1" };
        prop_assert!(s.starts_with(prefix));
        prop_assert_eq!(&s.parse::<Ticket>().unwrap(), &t);
        let upper = format!("{prefix}{}", s[prefix.len()..].to_ascii_uppercase());
        prop_assert_eq!(&upper.parse::<Ticket>().unwrap(), &t);
        let padded = format!("  {s}\n");
        prop_assert_eq!(padded.parse::<Target>().unwrap(), Target::Ticket(t.clone()));
        prop_assert_eq!(t.id.to_string().parse::<Target>().unwrap(), Target::Id(t.id));
        // A cut of the text is refused.
        for cut in (prefix.len()..s.len()).step_by(7).chain([s.len() - 1]) {
            prop_assert!(s[..cut].parse::<Ticket>().is_err(), "cut {}", cut);
        }
    }

    /// A ticket with more holders than fit prints the first [`MAX_HOLDERS`].
    #[test]
    fn long_tickets_are_cut_to_the_limit(t in ticket(MAX_HOLDERS + 1..=MAX_HOLDERS + 4)) {
        let back = t.to_string().parse::<Ticket>().unwrap();
        prop_assert_eq!(back.id, t.id);
        prop_assert_eq!(&back.holders[..], &t.holders[..MAX_HOLDERS]);
    }

    /// Arbitrary text, and arbitrary bytes behind a valid prefix and text
    /// encoding: never a panic; whatever parses is within the limits and prints
    /// back to itself.
    #[test]
    fn arbitrary_ticket_text_never_panics(
        text in prop_oneof![any::<String>(), "qpt1[0-9a-vA-V]{0,160}", "[0-9a-v]{52}"],
        raw in vec(any::<u8>(), 0..160),
    ) {
        let wrapped = format!("qpt1{}", data_encoding::BASE32_DNSSEC.encode(&raw));
        for s in [text, wrapped] {
            if let Ok(t) = s.parse::<Ticket>() {
                prop_assert!(t.holders.len() <= MAX_HOLDERS);
                prop_assert!(t.holders.iter().all(|h| h.addrs.len() <= MAX_ADDRS_PER_PEER));
                prop_assert_eq!(&t.to_string().parse::<Ticket>().unwrap(), &t);
            }
            if let Ok(Target::Id(h)) = s.parse::<Target>() {
                prop_assert_eq!(h.to_string().parse::<Hash>().unwrap(), h);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The strategies cover every variant. Each `match` is exhaustive, so a variant
// appended to the wire fails to compile here until a strategy produces it.

fn request_variant(r: &Request) -> usize {
    match r {
        Request::Join(_) => 0,
        Request::GetChunk { .. } => 1,
        Request::PutChunk { .. } => 2,
        Request::GetManifest { .. } => 3,
        Request::PutManifest { .. } => 4,
        Request::Hold { .. } => 5,
        Request::Has { .. } => 6,
        Request::Dht(DhtRequest::Ping) => 7,
        Request::Dht(DhtRequest::FindNode { .. }) => 8,
        Request::Dht(DhtRequest::GetProviders { .. }) => 9,
        Request::Dht(DhtRequest::AddProvider { .. }) => 10,
        Request::Prove { .. } => 11,
        Request::DialBack { .. } => 12,
        Request::Probe { .. } => 13,
        Request::Reserve => 14,
        Request::Connect { .. } => 15,
        Request::Circuit { .. } => 16,
        Request::Punch { .. } => 17,
    }
}

fn response_variant(r: &Response) -> usize {
    match r {
        Response::Found { .. } => 0,
        Response::NotFound => 1,
        Response::Ack => 2,
        Response::Nack(NackReason::BadHash) => 3,
        Response::Nack(NackReason::OverQuota) => 4,
        Response::Nack(NackReason::TooLarge) => 5,
        Response::Nack(NackReason::NotAccepted) => 6,
        Response::Nack(NackReason::Incomplete) => 7,
        Response::Nack(NackReason::BadManifest) => 8,
        Response::Nack(NackReason::Internal) => 9,
        Response::Nodes(_) => 10,
        Response::Providers { .. } => 11,
        Response::Proof(_) => 12,
        Response::Nack(NackReason::OverAllowance) => 13,
        Response::Nack(NackReason::NotClose) => 14,
        Response::Nack(NackReason::Unreachable) => 15,
        Response::Dialed(_) => 16,
        Response::Addrs(_) => 17,
    }
}

fn control_variant(c: &Control) -> usize {
    match c {
        Control::Welcome(w) => match w.peers.is_empty() {
            true => 0,
            false => 1,
        },
        Control::Peers(_) => 2,
        Control::Ping(_) => 3,
        Control::Pong(_) => 4,
        Control::Leave(LeaveReason::Shutdown) => 5,
        Control::Addrs { .. } => 6,
    }
}

fn manifest_variant(m: &Manifest) -> usize {
    match m {
        Manifest::File(f) => usize::from(!f.chunks.is_empty()),
        Manifest::Dir(d) => 2 + usize::from(!d.entries.is_empty()),
        Manifest::Sealed(_) => 4,
    }
}

fn variants_seen<T: Debug>(s: impl Strategy<Value = T>, variant: fn(&T) -> usize) -> usize {
    let mut runner = TestRunner::deterministic();
    let mut seen = BTreeMap::new();
    for _ in 0..2000 {
        let v = s.new_tree(&mut runner).unwrap().current();
        *seen.entry(variant(&v)).or_insert(0) += 1;
    }
    seen.len()
}

#[test]
fn strategies_cover_every_variant() {
    assert_eq!(variants_seen(request(), request_variant), 18);
    assert_eq!(variants_seen(response(), response_variant), 18);
    assert_eq!(variants_seen(control(), control_variant), 7);
    assert_eq!(variants_seen(manifest(), manifest_variant), 5);
    // Role is inside Join.
    let roles = variants_seen(join(), |j| match j.role {
        Role::Peer => 0,
        Role::Client => 1,
    });
    assert_eq!(roles, 2);
}

/// Found by the `manifest` fuzz target: a directory named `&[` whose entry
/// count is written `0x80 0x00` (zero, over-long) decoded to the same manifest
/// as the canonical `0x00`, under another id.
#[test]
fn fuzz_found_overlong_entry_count_is_refused() {
    let canonical = [1, 2, b'&', b'[', 0];
    assert!(Manifest::decode(&canonical).is_ok());
    assert!(Manifest::decode(&[1, 2, b'&', b'[', 0x80, 0]).is_err());
}

/// IPv6 flow info and scope id do not cross the wire: a link-local address
/// arrives without its interface. Pinned so that changing it is deliberate.
#[test]
fn ipv6_scope_is_not_carried() {
    let scoped: SocketAddr = "[fe80::1%7]:5000".parse().unwrap();
    let msg = Control::Peers(vec![PeerRecord {
        id: NodeId::from_bytes([1; 32]),
        addrs: vec![scoped],
        relays: Vec::new(),
    }]);
    let frame = wire::encode(&msg, MAX_CONTROL_FRAME).unwrap();
    let Control::Peers(back) = wire::decode_body::<Control>(&frame[LEN_PREFIX..]).unwrap() else {
        panic!("not a peer list")
    };
    let unscoped: SocketAddr = "[fe80::1]:5000".parse().unwrap();
    assert_eq!(back[0].addrs, vec![unscoped]);
}
