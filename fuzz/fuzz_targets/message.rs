//! Every message type's body decoder (`wire::decode_body`) on arbitrary bytes.
//!
//! Input: `[selector, body...]`; the selector picks Request, Response or Control
//! (which between them carry Join, Welcome, PeerRecord, DhtRequest, NackReason,
//! LeaveReason and Role). Decoding must never panic; a body that decodes must
//! give the same answer framed, re-encode within the body's own length (so within
//! the cap), decode back to the same value, and its encoding must be a fixed point.

#![no_main]

use std::fmt::Debug;

use libfuzzer_sys::fuzz_target;
use quic_peer::proto::wire::{
    self, Control, Message, Request, Response, LEN_PREFIX, MAX_ADDRS_PER_PEER, MAX_CONTROL_FRAME,
    MAX_PEERS_PER_MESSAGE, PROTOCOL_VERSION,
};

fn check<M: Message + PartialEq + Debug>(body: &[u8]) -> Option<M> {
    let decoded = wire::decode_body::<M>(body);
    if body.len() <= MAX_CONTROL_FRAME {
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(body);
        match (&decoded, wire::decode::<M>(&frame, MAX_CONTROL_FRAME)) {
            (Ok(m), Ok(Some((f, used)))) => {
                assert_eq!(*m, f);
                assert_eq!(used, frame.len());
            }
            (Err(e), Err(f)) => assert_eq!(*e, f),
            (d, f) => panic!("decode_body gave {d:?}, decode gave {f:?}"),
        }
    }
    let msg = decoded.ok()?;
    msg.validate().expect("a decoded message is valid");
    let frame = wire::encode(&msg, body.len()).expect("re-encodes within the body's length");
    let again = wire::decode_body::<M>(&frame[LEN_PREFIX..]).expect("re-encoded body decodes");
    assert_eq!(again, msg);
    assert_eq!(
        wire::encode(&again, MAX_CONTROL_FRAME).expect("encodes"),
        frame
    );
    Some(msg)
}

fn peers_ok(peers: &[wire::PeerRecord]) -> bool {
    peers.len() <= MAX_PEERS_PER_MESSAGE
        && peers.iter().all(|p| p.addrs.len() <= MAX_ADDRS_PER_PEER)
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    match selector % 3 {
        0 => match check::<Request>(body) {
            Some(Request::Join(j)) => {
                assert_eq!(j.version, PROTOCOL_VERSION);
                assert!(j.listen_addrs.len() <= MAX_ADDRS_PER_PEER);
            }
            Some(Request::Dht(wire::DhtRequest::AddProvider { provider, .. })) => {
                assert!(peers_ok(std::slice::from_ref(&provider)));
            }
            _ => {}
        },
        1 => match check::<Response>(body) {
            Some(Response::Nodes(n)) => assert!(peers_ok(&n)),
            Some(Response::Providers { providers, closer }) => {
                assert!(peers_ok(&providers) && peers_ok(&closer));
            }
            Some(Response::Nack(reason)) => assert!(!reason.to_string().is_empty()),
            _ => {}
        },
        _ => match check::<Control>(body) {
            Some(Control::Welcome(w)) => {
                assert_eq!(w.version, PROTOCOL_VERSION);
                assert!(w.listen_addrs.len() <= MAX_ADDRS_PER_PEER && peers_ok(&w.peers));
            }
            Some(Control::Peers(p)) => assert!(peers_ok(&p)),
            _ => {}
        },
    }
});
