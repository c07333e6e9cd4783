//! A DHT liar: a full node on real sockets, with an id ground to sit closer
//! to one key than every honest node, that lies in every DHT answer.
//!
//! It is the library's own network core (handshake, JOIN / WELCOME, gossip,
//! keep-alives), so honest nodes take it into their routing tables like any
//! peer, with a lying DHT service registered on it:
//!
//! - GET_PROVIDERS: [`Lies::providers`] invented providers (random ids at
//!   TEST-NET-1 addresses, 192.0.2.x, and at closed loopback ports) and
//!   invented closer contacts;
//! - FIND_NODE: [`Lies::contacts`] invented contacts whose ids sit closer to
//!   the target than any real node, at the same dead addresses;
//! - both list the real nodes of [`Lies::misdirect`] first, at a dead
//!   address: a third party's word on where a node is;
//! - ADD_PROVIDER and PING: acknowledged, nothing kept.
//!
//! It stores nothing: HAS is answered NOT_FOUND and copies are refused.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{bail, Result};
use quic_peer::crypto::identity::Identity;
use quic_peer::dht::distance;
use quic_peer::net::router::{RequestStream, ServeFuture};
use quic_peer::net::{Network, PeerAddr, Service};
use quic_peer::proto::frame::write_frame;
use quic_peer::proto::wire::{
    DhtRequest, PeerRecord, Request, RequestKind, Response, MAX_CONTROL_FRAME,
};
use quic_peer::transfer::{ChunkBudget, Transfers};
use quic_peer::{NodeConfig, NodeId};
use rand::Rng;

/// What the liar says.
#[derive(Clone, Debug)]
pub struct Lies {
    /// Invented providers in each GET_PROVIDERS answer.
    pub providers: usize,
    /// Invented contacts in each answer, closer to the target than any real node.
    pub contacts: usize,
    /// Real nodes listed first in each answer, at a dead address.
    pub misdirect: Vec<NodeId>,
}

impl Default for Lies {
    fn default() -> Self {
        Lies {
            providers: 64,
            contacts: 20,
            misdirect: Vec::new(),
        }
    }
}

/// How often the liar was asked.
#[derive(Default, Debug)]
pub struct Asked {
    /// GET_PROVIDERS answered.
    pub get_providers: AtomicU64,
    /// FIND_NODE answered.
    pub find_node: AtomicU64,
}

/// A running DHT liar.
pub struct DhtLiar {
    /// Its ground id.
    pub id: NodeId,
    /// Its network core.
    pub net: Network,
    /// What it was asked.
    pub asked: Arc<Asked>,
}

impl DhtLiar {
    /// Grinds an identity closer to `key` than every id in `beat`, and
    /// starts a full node with it that joins through `bootstrap` and lies.
    pub async fn start(
        key: NodeId,
        beat: &[NodeId],
        bootstrap: &[PeerAddr],
        lies: Lies,
    ) -> Result<DhtLiar> {
        let identity = grind(key, beat)?;
        let config = NodeConfig {
            bootstrap: bootstrap.to_vec(),
            ..NodeConfig::local_test()
        };
        let net = Network::bind(config, identity)?;
        let asked = Arc::new(Asked::default());
        let service = LyingDht {
            lies,
            dead: dead_addrs()?,
            asked: asked.clone(),
        };
        net.serve(&[RequestKind::Dht], Arc::new(service));
        net.serve(
            &Transfers::KINDS,
            Arc::new(Transfers::new(
                None,
                None,
                ChunkBudget::new(0),
                quic_peer::transfer::Allowances::new(Default::default()),
                net.observe().clone(),
            )),
        );
        net.start();
        Ok(DhtLiar {
            id: net.id(),
            net,
            asked,
        })
    }

    /// GET_PROVIDERS requests it answered.
    pub fn get_providers_answered(&self) -> u64 {
        self.asked.get_providers.load(Ordering::SeqCst)
    }

    /// FIND_NODE requests it answered.
    pub fn find_node_answered(&self) -> u64 {
        self.asked.find_node.load(Ordering::SeqCst)
    }

    /// Leaves and closes its endpoint.
    pub async fn shutdown(&self) {
        self.net.shutdown().await;
    }
}

/// An identity whose id is closer to `key` than every id in `beat`.
pub fn grind(key: NodeId, beat: &[NodeId]) -> Result<Identity> {
    let best = beat.iter().map(|b| distance(b, &key)).min();
    for _ in 0..1_000_000 {
        let identity = Identity::generate()?;
        if best.is_none_or(|b| distance(&identity.node_id(), &key) < b) {
            return Ok(identity);
        }
    }
    bail!("no identity closer to the key than {} nodes", beat.len())
}

/// Addresses where nobody answers: TEST-NET-1 (RFC 5737) and loopback
/// ports that were bound and closed again.
fn dead_addrs() -> Result<Vec<SocketAddr>> {
    let mut out: Vec<SocketAddr> = (1..=8)
        .map(|i| SocketAddr::from(([192, 0, 2, i], 4433)))
        .collect();
    for _ in 0..8 {
        let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
        out.push(s.local_addr()?);
    }
    Ok(out)
}

struct LyingDht {
    lies: Lies,
    dead: Vec<SocketAddr>,
    asked: Arc<Asked>,
}

impl LyingDht {
    fn dead_addr(&self, i: usize) -> SocketAddr {
        self.dead[i % self.dead.len()]
    }

    /// The misdirected real nodes, then `n` invented ids next to `target`.
    fn contacts(&self, target: &NodeId, n: usize) -> Vec<PeerRecord> {
        let mut rng = rand::rng();
        let mut out: Vec<PeerRecord> = self
            .lies
            .misdirect
            .iter()
            .enumerate()
            .map(|(i, id)| PeerRecord {
                id: *id,
                addrs: vec![self.dead_addr(i)],
                relays: Vec::new(),
            })
            .collect();
        for i in 0..n {
            // Same first half as the target: closer than any real node.
            let mut id = *target.as_bytes();
            rng.fill(&mut id[16..]);
            out.push(PeerRecord {
                id: NodeId::from_bytes(id),
                addrs: vec![self.dead_addr(i)],
                relays: Vec::new(),
            });
        }
        out.truncate(quic_peer::proto::wire::MAX_PEERS_PER_MESSAGE);
        out
    }

    /// `n` invented providers with random ids at dead addresses.
    fn providers(&self, n: usize) -> Vec<PeerRecord> {
        let mut rng = rand::rng();
        (0..n)
            .map(|i| PeerRecord {
                id: NodeId::from_bytes(rng.random()),
                addrs: vec![self.dead_addr(i)],
                relays: Vec::new(),
            })
            .collect()
    }

    fn answer(&self, request: DhtRequest) -> Response {
        match request {
            DhtRequest::FindNode { target } => {
                self.asked.find_node.fetch_add(1, Ordering::SeqCst);
                Response::Nodes(self.contacts(&target, self.lies.contacts))
            }
            DhtRequest::GetProviders { key } => {
                self.asked.get_providers.fetch_add(1, Ordering::SeqCst);
                Response::Providers {
                    providers: self.providers(self.lies.providers),
                    closer: self.contacts(&key, self.lies.contacts),
                }
            }
            DhtRequest::AddProvider { .. } | DhtRequest::Ping => Response::Ack,
        }
    }
}

impl Service for LyingDht {
    fn serve(&self, stream: RequestStream) -> ServeFuture {
        let RequestStream {
            request: Request::Dht(request),
            mut send,
            ..
        } = stream
        else {
            return Box::pin(async {});
        };
        let resp = self.answer(request);
        Box::pin(async move {
            if write_frame(&mut send, &resp, MAX_CONTROL_FRAME)
                .await
                .is_ok()
            {
                let _ = send.finish();
            }
        })
    }
}
