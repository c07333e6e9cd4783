//! A directory-bomb peer: a bare QUIC endpoint with its own key that serves
//! manifests and chunks it was handed, valid or not, and counts what it was
//! asked for.
//!
//! It answers JOIN with WELCOME (and PING with PONG) like a node, so the real
//! binary and a [`quic_peer::Node`] can dial it from a ticket; GET_MANIFEST
//! and GET_CHUNK from [`Pieces`]; anything else NOT_FOUND. The builders make
//! the trees of the attack: a directory whose entries all name one file
//! manifest ([`Pieces::wide`]), directories of such directories
//! ([`Pieces::nested`]), a chain deeper than any real tree
//! ([`Pieces::chain`]), and names no file system should be handed
//! ([`Pieces::raw_dir`] encodes without checking).
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use quic_peer::proto::frame::{read_frame, write_frame};
use quic_peer::proto::manifest::{DirEntry, DirManifest, FileManifest, Manifest, MIN_CHUNK_SIZE};
use quic_peer::proto::ticket::Ticket;
use quic_peer::proto::wire::{
    Control, PeerRecord, Request, Response, Welcome, MAX_CONTROL_FRAME, PROTOCOL_VERSION,
};
use quic_peer::proto::Hash;
use quic_peer::{Identity, NodeId};

/// The manifests and chunks a bomb serves, by hash.
#[derive(Default, Clone)]
pub struct Pieces {
    manifests: HashMap<Hash, Vec<u8>>,
    chunks: HashMap<Hash, Vec<u8>>,
}

impl Pieces {
    /// Adds a manifest, encoded as it is (not validated); returns its id.
    pub fn manifest(&mut self, m: &Manifest) -> Hash {
        let bytes = m.encode();
        let id = Hash::of(&bytes);
        self.manifests.insert(id, bytes);
        id
    }

    /// Adds a chunk; returns its hash.
    pub fn chunk(&mut self, data: &[u8]) -> Hash {
        let h = Hash::of(data);
        self.chunks.insert(h, data.to_vec());
        h
    }

    /// A file of `data`, cut into chunks of `chunk_size`.
    pub fn file(&mut self, name: &str, data: &[u8], chunk_size: u32) -> Hash {
        let chunks = data
            .chunks(chunk_size as usize)
            .map(|c| self.chunk(c))
            .collect();
        self.manifest(&Manifest::File(FileManifest {
            name: name.into(),
            size: data.len() as u64,
            chunk_size,
            chunks,
        }))
    }

    /// A file manifest of `chunks` chunks of the smallest size, every one the
    /// same kilobyte of zeros: a manifest near the 16 MiB cap for a file of
    /// half a gigabyte, made of one chunk.
    pub fn big_file(&mut self, name: &str, chunks: usize) -> Hash {
        let zeros = self.chunk(&vec![0u8; MIN_CHUNK_SIZE as usize]);
        self.manifest(&Manifest::File(FileManifest {
            name: name.into(),
            size: chunks as u64 * u64::from(MIN_CHUNK_SIZE),
            chunk_size: MIN_CHUNK_SIZE,
            chunks: vec![zeros; chunks],
        }))
    }

    /// A directory `name` of `width` entries `e000000`, `e000001`, ... that
    /// all name `child`.
    pub fn wide(&mut self, name: &str, width: usize, child: Hash) -> Hash {
        let entries = (0..width)
            .map(|i| (format!("e{i:06}"), child))
            .collect::<Vec<_>>();
        self.raw_dir(name, &entries)
    }

    /// `levels` levels of [`Pieces::wide`] directories over `leaf`.
    pub fn nested(&mut self, levels: usize, width: usize, leaf: Hash) -> Hash {
        (0..levels).fold(leaf, |below, level| {
            self.wide(&format!("level{level}"), width, below)
        })
    }

    /// `depth` directories each holding only the next, over `leaf`.
    pub fn chain(&mut self, depth: usize, leaf: Hash) -> Hash {
        (0..depth).fold(leaf, |below, _| self.raw_dir("d", &[("d".into(), below)]))
    }

    /// A directory with these entries, in this order, names unchecked.
    pub fn raw_dir(&mut self, name: &str, entries: &[(String, Hash)]) -> Hash {
        self.manifest(&Manifest::Dir(DirManifest {
            name: name.into(),
            entries: entries
                .iter()
                .map(|(name, id)| DirEntry {
                    name: name.clone(),
                    id: *id,
                })
                .collect(),
        }))
    }
}

/// A running bomb.
pub struct Bomb {
    /// Its id (proven in the handshake like any node's).
    pub id: NodeId,
    /// Where it listens.
    pub addr: SocketAddr,
    /// GET_MANIFEST requests answered, by id.
    asked: Arc<Mutex<HashMap<Hash, u64>>>,
    endpoint: quinn::Endpoint,
}

impl Bomb {
    /// Serves `pieces` on a loopback port.
    pub fn start(pieces: Pieces) -> Result<Bomb> {
        let identity = Identity::generate()?;
        let id = identity.node_id();
        let (_, server) = quic_peer::crypto::tls::quic_configs(&identity)?;
        let endpoint = quinn::Endpoint::new(
            quic_peer::net::endpoint::endpoint_config(),
            Some(quinn::ServerConfig::with_crypto(server)),
            quic_peer::net::endpoint::bind_socket("127.0.0.1:0".parse()?, 1 << 20)?,
            quinn::default_runtime().context("no async runtime")?,
        )?;
        let addr = endpoint.local_addr()?;
        let asked = Arc::new(Mutex::new(HashMap::new()));
        let served = Served {
            pieces: Arc::new(pieces),
            asked: asked.clone(),
            addr,
        };
        tokio::spawn(accept(endpoint.clone(), served));
        Ok(Bomb {
            id,
            addr,
            asked,
            endpoint,
        })
    }

    /// A ticket for `root` that names this bomb as its only holder.
    pub fn ticket(&self, root: Hash) -> String {
        Ticket {
            id: root,
            holders: vec![PeerRecord {
                id: self.id,
                addrs: vec![self.addr],
                relays: Vec::new(),
            }],
            key: None,
        }
        .to_string()
    }

    /// How many times the manifest `id` was asked for.
    pub fn asked(&self, id: &Hash) -> u64 {
        let asked = self.asked.lock().unwrap_or_else(|e| e.into_inner());
        asked.get(id).copied().unwrap_or(0)
    }

    /// GET_MANIFEST requests answered in all.
    pub fn manifests_asked(&self) -> u64 {
        let asked = self.asked.lock().unwrap_or_else(|e| e.into_inner());
        asked.values().sum()
    }

    /// A connection to the bomb from a fresh client with its own key, pinned
    /// to the bomb's id, to hand to a download as a provider.
    pub async fn connect(&self) -> Result<quinn::Connection> {
        let identity = Identity::generate()?;
        let (client, _) = quic_peer::crypto::tls::quic_configs(&identity)?;
        let mut ep = quinn::Endpoint::new(
            quic_peer::net::endpoint::endpoint_config(),
            None,
            quic_peer::net::endpoint::bind_socket("127.0.0.1:0".parse()?, 1 << 20)?,
            quinn::default_runtime().context("no async runtime")?,
        )?;
        ep.set_default_client_config(quinn::ClientConfig::new(client));
        let conn = ep
            .connect(
                self.addr,
                &quic_peer::crypto::tls::server_name_for(Some(self.id)),
            )?
            .await?;
        Ok(conn)
    }

    /// Stops serving.
    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"done");
    }
}

/// What every connection of a bomb serves from.
#[derive(Clone)]
struct Served {
    pieces: Arc<Pieces>,
    asked: Arc<Mutex<HashMap<Hash, u64>>>,
    addr: SocketAddr,
}

async fn accept(endpoint: quinn::Endpoint, served: Served) {
    while let Some(incoming) = endpoint.accept().await {
        let served = served.clone();
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            while let Ok((send, recv)) = conn.accept_bi().await {
                tokio::spawn(stream(conn.clone(), send, recv, served.clone()));
            }
        });
    }
}

/// Answers one stream: JOIN (then the control stream), or one request.
async fn stream(
    conn: quinn::Connection,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    served: Served,
) {
    let bytes = match read_frame::<Request, _>(&mut recv, MAX_CONTROL_FRAME).await {
        Ok(Some(Request::Join(_))) => return control(conn, send, recv, served.addr).await,
        Ok(Some(Request::GetManifest { id })) => {
            let mut asked = served.asked.lock().unwrap_or_else(|e| e.into_inner());
            *asked.entry(id).or_default() += 1;
            served.pieces.manifests.get(&id).cloned()
        }
        Ok(Some(Request::GetChunk { hash })) => served.pieces.chunks.get(&hash).cloned(),
        // A holder proves it answers before a getter believes it: HAS is
        // answered for every manifest served (found, nothing follows).
        Ok(Some(Request::Has { id })) => served.pieces.manifests.get(&id).map(|_| Vec::new()),
        _ => None,
    };
    let head = match &bytes {
        Some(b) => Response::Found {
            len: b.len() as u64,
        },
        None => Response::NotFound,
    };
    if write_frame(&mut send, &head, MAX_CONTROL_FRAME)
        .await
        .is_err()
    {
        return;
    }
    if let Some(b) = bytes {
        let _ = send.write_all(&b).await;
    }
    let _ = send.finish();
    let _ = send.stopped().await;
}

/// WELCOME, then PONG to every PING for the life of the connection.
async fn control(
    conn: quinn::Connection,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    addr: SocketAddr,
) {
    let welcome = Control::Welcome(Welcome {
        version: PROTOCOL_VERSION,
        observed_addr: conn.remote_address(),
        listen_addrs: vec![addr],
        capabilities: 0,
        session: session(),
        peers: Vec::new(),
        relays: Vec::new(),
    });
    if write_frame(&mut send, &welcome, MAX_CONTROL_FRAME)
        .await
        .is_err()
    {
        return;
    }
    while let Ok(Some(c)) = read_frame::<Control, _>(&mut recv, MAX_CONTROL_FRAME).await {
        if let Control::Ping(n) = c {
            if write_frame(&mut send, &Control::Pong(n), MAX_CONTROL_FRAME)
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

/// A session number of this process's making (no need for randomness).
fn session() -> u64 {
    u64::from(std::process::id()) << 32 | 0xb0b
}
