//! A lying peer: a bare QUIC endpoint with its own key that speaks just enough
//! of the chunk protocol to be a download provider. It answers GET_MANIFEST
//! honestly and GET_CHUNK with one of the lies of [`Lie`], the way a malicious
//! or broken holder would. (A real node can no longer be made to lie by
//! corrupting its disk: its store hashes every chunk it reads and drops the
//! ones that fail.)
//!
//! Shared by the integration tests (`mod common`) and the secure transfer demo
//! (`#[path]`-included), so it depends on the library and anyhow only.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use quic_peer::proto::frame::{read_frame, write_frame};
use quic_peer::proto::manifest::Manifest;
use quic_peer::proto::wire::{Request, Response, MAX_CONTROL_FRAME};
use quic_peer::proto::Hash;
use quic_peer::store::Store;
use quic_peer::{Identity, NodeId};

/// How the liar answers GET_CHUNK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lie {
    /// The right length, every byte flipped.
    Flip,
    /// One byte short: announced and sent.
    Short,
    /// Announces a terabyte and streams zeros until the asker stops it.
    Endless,
    /// Announces the right length, then trickles a byte every 50 ms for ever
    /// (a slow-loris holder).
    Trickle,
    /// Answers NOT_FOUND, though it was named as a holder.
    Deny,
}

/// A running lying peer.
pub struct Liar {
    /// Its id (proven in the handshake like any node's).
    pub id: NodeId,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Chunk requests it answered with a lie.
    pub lies: Arc<AtomicU64>,
    /// Lying answers whose stream has ended (stopped by the asker, or done).
    pub ended: Arc<AtomicU64>,
    endpoint: quinn::Endpoint,
}

impl Liar {
    /// A liar holding what `store` holds of file `id` (its manifest and chunks)
    /// that flips the bytes of every chunk.
    pub async fn start(store: &Store, id: Hash) -> Result<Liar> {
        Liar::start_with(store, id, Lie::Flip).await
    }

    /// A liar holding what `store` holds of file `id` that tells `lie`.
    pub async fn start_with(store: &Store, id: Hash, lie: Lie) -> Result<Liar> {
        let manifest = store
            .manifest_bytes(&id)?
            .context("the store has no such manifest")?;
        let mut chunks = HashMap::new();
        if let Manifest::File(f) = Manifest::decode(&manifest)? {
            for h in &f.chunks {
                let data = store.read_chunk(h)?.context("a chunk is missing")?;
                chunks.insert(*h, data);
            }
        }
        let manifests = HashMap::from([(id, manifest)]);
        Liar::serve(Arc::new(manifests), Arc::new(chunks), lie)
    }

    fn serve(
        manifests: Arc<HashMap<Hash, Vec<u8>>>,
        chunks: Arc<HashMap<Hash, Vec<u8>>>,
        lie: Lie,
    ) -> Result<Liar> {
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
        let lies = Arc::new(AtomicU64::new(0));
        let ended = Arc::new(AtomicU64::new(0));
        let (ep, counters) = (endpoint.clone(), (lies.clone(), ended.clone()));
        tokio::spawn(async move {
            while let Some(incoming) = ep.accept().await {
                let (manifests, chunks, counters) =
                    (manifests.clone(), chunks.clone(), counters.clone());
                tokio::spawn(async move {
                    let Ok(conn) = incoming.await else { return };
                    while let Ok((send, mut recv)) = conn.accept_bi().await {
                        let (manifests, chunks, counters) =
                            (manifests.clone(), chunks.clone(), counters.clone());
                        tokio::spawn(async move {
                            let req = read_frame::<Request, _>(&mut recv, MAX_CONTROL_FRAME).await;
                            match req {
                                Ok(Some(Request::GetManifest { id })) => {
                                    answer(send, manifests.get(&id).cloned()).await;
                                }
                                Ok(Some(Request::GetChunk { hash })) => {
                                    let Some(data) = chunks.get(&hash) else {
                                        answer(send, None).await;
                                        return;
                                    };
                                    counters.0.fetch_add(1, Ordering::Relaxed);
                                    tell(send, data, lie).await;
                                    counters.1.fetch_add(1, Ordering::Relaxed);
                                }
                                _ => answer(send, None).await,
                            }
                        });
                    }
                });
            }
        });
        Ok(Liar {
            id,
            addr,
            lies,
            ended,
            endpoint,
        })
    }

    /// A connection to the liar from a fresh client with its own key, pinned
    /// to the liar's id, to hand to a download as a provider.
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

    /// Lying answers still being sent.
    pub fn streaming(&self) -> u64 {
        self.lies.load(Ordering::SeqCst) - self.ended.load(Ordering::SeqCst)
    }

    /// Stops serving.
    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"done");
    }
}

/// An honest answer: the bytes, or NOT_FOUND.
async fn answer(mut send: quinn::SendStream, data: Option<Vec<u8>>) {
    let head = match &data {
        Some(d) => Response::Found {
            len: d.len() as u64,
        },
        None => Response::NotFound,
    };
    if write_frame(&mut send, &head, MAX_CONTROL_FRAME)
        .await
        .is_err()
    {
        return;
    }
    if let Some(d) = data {
        let _ = send.write_all(&d).await;
    }
    let _ = send.finish();
    let _ = send.stopped().await;
}

/// A lying answer for a chunk whose true bytes are `data`; returns when the
/// stream is done or the asker stopped it.
async fn tell(mut send: quinn::SendStream, data: &[u8], lie: Lie) {
    let (len, body): (u64, Vec<u8>) = match lie {
        Lie::Flip => (data.len() as u64, data.iter().map(|b| b ^ 0x5a).collect()),
        Lie::Short => {
            let short = &data[..data.len().saturating_sub(1)];
            (short.len() as u64, short.to_vec())
        }
        Lie::Endless => (1 << 40, Vec::new()),
        Lie::Trickle => (data.len() as u64, Vec::new()),
        Lie::Deny => return answer(send, None).await,
    };
    if write_frame(&mut send, &Response::Found { len }, MAX_CONTROL_FRAME)
        .await
        .is_err()
    {
        return;
    }
    match lie {
        Lie::Endless => {
            let zeros = vec![0u8; 64 << 10];
            while send.write_all(&zeros).await.is_ok() {}
        }
        Lie::Trickle => {
            for b in data {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                if send.write_all(&[*b]).await.is_err() {
                    return;
                }
            }
        }
        _ => {
            let _ = send.write_all(&body).await;
            let _ = send.finish();
            let _ = send.stopped().await;
        }
    }
}
