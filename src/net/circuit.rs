//! A relayed circuit as a UDP socket for quinn: the two ends of a circuit
//! run an ordinary QUIC connection (their own TLS, end to end) whose
//! datagrams travel as frames on a stream through the relay, each a 2-byte
//! big-endian length and the datagram ([`crate::proto::wire::Request::Connect`]).
//!
//! The socket knows one peer, at a made-up address in `100::/64` (IPv6's
//! discard prefix, RFC 6666), so nothing mistakes it for a place to dial:
//! [`is_circuit_addr`]. Like a real socket it drops datagrams when its
//! queues are full; QUIC's loss recovery and congestion control handle that
//! as they handle a busy link.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, RecvStream, SendStream, UdpPoller};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Largest datagram a circuit carries (QUIC's own limit on this node is
/// lower: [`super::endpoint::MAX_UDP_PAYLOAD`]).
const MAX_DATAGRAM: usize = 16 * 1024;
/// Datagrams queued each way before more are dropped.
const QUEUE: usize = 512;
/// Bytes gathered into one stream write.
const BATCH: usize = 64 * 1024;

/// Whether `addr` is the made-up address of a circuit's peer.
pub fn is_circuit_addr(addr: &SocketAddr) -> bool {
    match addr.ip() {
        IpAddr::V6(ip) => ip.segments()[..4] == [0x100, 0, 0, 0],
        IpAddr::V4(_) => false,
    }
}

/// A fresh made-up address for a circuit's peer.
fn circuit_addr() -> SocketAddr {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let ip = Ipv6Addr::new(
        0x100,
        0,
        0,
        0,
        (n >> 48) as u16,
        (n >> 32) as u16,
        (n >> 16) as u16,
        n as u16,
    );
    SocketAddr::new(IpAddr::V6(ip), 1)
}

/// The quinn side of a circuit: what quinn sends goes to a writer task, what
/// a reader task receives comes back to quinn.
pub struct CircuitSocket {
    local: SocketAddr,
    peer: SocketAddr,
    out: mpsc::Sender<Bytes>,
    inbound: Mutex<mpsc::Receiver<Bytes>>,
}

impl fmt::Debug for CircuitSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitSocket")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl CircuitSocket {
    /// A socket over the circuit's stream. `ended` is cancelled when either
    /// direction of the stream stops (then nothing more gets through).
    /// Returns the socket and the address its peer is known by.
    pub fn new(
        send: SendStream,
        recv: RecvStream,
        ended: CancellationToken,
    ) -> (Arc<CircuitSocket>, SocketAddr) {
        let (out_tx, out_rx) = mpsc::channel(QUEUE);
        let (in_tx, in_rx) = mpsc::channel(QUEUE);
        let peer = circuit_addr();
        let socket = Arc::new(CircuitSocket {
            local: circuit_addr(),
            peer,
            out: out_tx,
            inbound: Mutex::new(in_rx),
        });
        let e = ended.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = e.cancelled() => {}
                _ = write_frames(send, out_rx) => {}
            }
            e.cancel();
        });
        tokio::spawn(async move {
            tokio::select! {
                _ = ended.cancelled() => {}
                _ = read_frames(recv, in_tx) => {}
            }
            ended.cancel();
        });
        (socket, peer)
    }
}

/// Writes queued datagrams as frames, several per write when they queue up.
async fn write_frames(mut send: SendStream, mut out: mpsc::Receiver<Bytes>) {
    let mut buf = BytesMut::with_capacity(BATCH + MAX_DATAGRAM + 2);
    while let Some(first) = out.recv().await {
        let mut next = Some(first);
        while let Some(d) = next.take() {
            // At most MAX_DATAGRAM by the check in try_send.
            buf.put_u16(d.len() as u16);
            buf.put_slice(&d);
            if buf.len() < BATCH {
                next = out.try_recv().ok();
            }
        }
        if send.write_all(&buf).await.is_err() {
            return;
        }
        buf.clear();
    }
    let _ = send.finish();
}

/// Reads frames and hands their datagrams to quinn; a frame of length 0 or
/// over [`MAX_DATAGRAM`] ends the circuit.
async fn read_frames(mut recv: RecvStream, inbound: mpsc::Sender<Bytes>) {
    let mut len = [0u8; 2];
    loop {
        if recv.read_exact(&mut len).await.is_err() {
            return;
        }
        let n = usize::from(u16::from_be_bytes(len));
        if n == 0 || n > MAX_DATAGRAM {
            let _ = recv.stop(crate::proto::wire::ErrorCode::ProtocolViolation.var_int());
            return;
        }
        let mut d = vec![0u8; n];
        if recv.read_exact(&mut d).await.is_err() {
            return;
        }
        match inbound.try_send(Bytes::from(d)) {
            Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => return,
        }
    }
}

/// Always writable: a full queue drops, as a socket's full buffer would.
#[derive(Debug)]
struct Writable;

impl UdpPoller for Writable {
    fn poll_writable(self: Pin<&mut Self>, _cx: &mut Context) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncUdpSocket for CircuitSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(Writable)
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        let step = transmit.segment_size.unwrap_or(transmit.contents.len());
        for d in transmit.contents.chunks(step.max(1)) {
            if d.len() > MAX_DATAGRAM {
                continue;
            }
            // Full: dropped; closed: the circuit is gone, and so will the
            // connection be.
            let _ = self.out.try_send(Bytes::copy_from_slice(d));
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let (Some(buf), Some(m)) = (bufs.first_mut(), meta.first_mut()) else {
            return Poll::Ready(Ok(0));
        };
        let mut inbound = self.inbound.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            match inbound.poll_recv(cx) {
                Poll::Ready(Some(d)) => {
                    if d.len() > buf.len() {
                        continue;
                    }
                    buf[..d.len()].copy_from_slice(&d);
                    *m = RecvMeta {
                        addr: self.peer,
                        len: d.len(),
                        stride: d.len(),
                        ..RecvMeta::default()
                    };
                    return Poll::Ready(Ok(1));
                }
                // The circuit ended: its owner closes the endpoint.
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    fn may_fragment(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn circuit_addresses_are_in_the_discard_prefix_and_never_dialable() {
        let a = circuit_addr();
        let b = circuit_addr();
        assert_ne!(a, b);
        assert!(is_circuit_addr(&a) && is_circuit_addr(&b));
        assert!(!crate::net::membership::dialable(&a));
        assert!(!is_circuit_addr(&"[2001:db8::1]:5".parse().unwrap()));
        assert!(!is_circuit_addr(&"10.0.0.1:5".parse().unwrap()));
    }
}
