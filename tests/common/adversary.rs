//! A raw peer for attack tests: a bare quinn endpoint with a valid identity
//! that speaks just enough of the protocol (JOIN / WELCOME) to open request
//! streams, and then does what an attacker would. Also measures a target
//! process's memory.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use quic_peer::proto::wire::{
    self, Control, Join, Request, Response, Role, MAX_CONTROL_FRAME, PROTOCOL_VERSION,
};
use quic_peer::Identity;

/// (VmRSS, VmHWM) of process `pid`, in KiB.
pub fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// 127.a.b.c: Linux routes all of 127.0.0.0/8 to loopback, so each test
/// peer can have an address of its own.
pub fn ip(a: u8, b: u8, c: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, a, b, c))
}

/// A client endpoint bound to `ip` (any 127.x.y.z works on Linux loopback).
pub fn endpoint(ip: IpAddr) -> quinn::Endpoint {
    quinn::Endpoint::client(SocketAddr::new(ip, 0)).expect("client endpoint")
}

/// A client config with a fresh, valid identity.
pub fn valid_client() -> quinn::ClientConfig {
    let identity = Identity::generate().unwrap();
    let (client, _) = quic_peer::crypto::tls::quic_configs(&identity).unwrap();
    quinn::ClientConfig::new(client)
}

/// Sends `request` on a stream of its own and reads the one answer.
pub async fn ask(conn: &quinn::Connection, request: &Request) -> Option<Response> {
    let (mut send, mut recv) = conn.open_bi().await.ok()?;
    quic_peer::proto::frame::write_frame(&mut send, request, MAX_CONTROL_FRAME)
        .await
        .ok()?;
    let _ = send.finish();
    quic_peer::proto::frame::read_frame::<Response, _>(&mut recv, MAX_CONTROL_FRAME)
        .await
        .ok()
        .flatten()
}

/// A raw connection that has done JOIN/WELCOME; the control stream is kept
/// with it so that it stays open.
pub struct Joined {
    /// The connection.
    pub conn: quinn::Connection,
    _control: (quinn::SendStream, quinn::RecvStream),
}

pub async fn join(ep: &quinn::Endpoint, target: SocketAddr, role: Role) -> Result<Joined, String> {
    let conn = ep
        .connect_with(
            valid_client(),
            target,
            quic_peer::crypto::tls::UNPINNED_SERVER_NAME,
        )
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    let join = Request::Join(Join {
        version: PROTOCOL_VERSION,
        role,
        listen_addrs: vec![],
        capabilities: 0,
        session: rand::random(),
        relays: Vec::new(),
    });
    send.write_all(&wire::encode(&join, MAX_CONTROL_FRAME).unwrap())
        .await
        .map_err(|e| e.to_string())?;
    match quic_peer::proto::frame::read_frame::<Control, _>(&mut recv, MAX_CONTROL_FRAME).await {
        Ok(Some(Control::Welcome(_))) => Ok(Joined {
            conn,
            _control: (send, recv),
        }),
        other => Err(format!("no WELCOME: {other:?}")),
    }
}
