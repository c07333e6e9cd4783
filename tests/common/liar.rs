//! A lying peer: a bare QUIC endpoint with its own key that speaks just enough
//! of the chunk protocol to be a download provider. It answers GET_MANIFEST
//! honestly and GET_CHUNK with the right length but every byte flipped, the
//! way a malicious or broken holder would. (A real node can no longer be made
//! to lie by corrupting its disk: its store hashes every chunk it reads and
//! drops the ones that fail.)
//!
//! Shared by the integration tests (`mod common`) and the secure transfer demo
//! (`#[path]`-included), so it depends on the library and anyhow only.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use quic_peer::chunk::{Hash, Manifest};
use quic_peer::store::Store;
use quic_peer::stream::{read_frame, write_frame};
use quic_peer::wire::{Request, Response, MAX_CONTROL_FRAME};
use quic_peer::{Identity, NodeId};

/// A running lying peer.
pub struct Liar {
    /// Its id (proven in the handshake like any node's).
    pub id: NodeId,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Tampered chunks it has sent.
    pub lies: Arc<AtomicU64>,
    endpoint: quinn::Endpoint,
}

impl Liar {
    /// A liar holding what `store` holds of file `id` (its manifest and chunks).
    pub async fn start(store: &Store, id: Hash) -> Result<Liar> {
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
        Liar::serve(Arc::new(manifests), Arc::new(chunks))
    }

    fn serve(
        manifests: Arc<HashMap<Hash, Vec<u8>>>,
        chunks: Arc<HashMap<Hash, Vec<u8>>>,
    ) -> Result<Liar> {
        let identity = Identity::generate()?;
        let id = identity.node_id();
        let (_, server) = quic_peer::tls::quic_configs(&identity)?;
        let endpoint = quinn::Endpoint::new(
            quic_peer::node::endpoint_config(),
            Some(quinn::ServerConfig::with_crypto(server)),
            quic_peer::node::bind_socket("127.0.0.1:0".parse()?, 1 << 20)?,
            quinn::default_runtime().context("no async runtime")?,
        )?;
        let addr = endpoint.local_addr()?;
        let lies = Arc::new(AtomicU64::new(0));
        let (ep, counter) = (endpoint.clone(), lies.clone());
        tokio::spawn(async move {
            while let Some(incoming) = ep.accept().await {
                let (manifests, chunks, counter) =
                    (manifests.clone(), chunks.clone(), counter.clone());
                tokio::spawn(async move {
                    let Ok(conn) = incoming.await else { return };
                    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                        let (manifests, chunks, counter) =
                            (manifests.clone(), chunks.clone(), counter.clone());
                        tokio::spawn(async move {
                            let req = read_frame::<Request, _>(&mut recv, MAX_CONTROL_FRAME).await;
                            let data = match req {
                                Ok(Some(Request::GetManifest { id })) => {
                                    manifests.get(&id).cloned()
                                }
                                Ok(Some(Request::GetChunk { hash })) => {
                                    chunks.get(&hash).map(|d| {
                                        counter.fetch_add(1, Ordering::Relaxed);
                                        d.iter().map(|b| b ^ 0x5a).collect()
                                    })
                                }
                                _ => None,
                            };
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
                        });
                    }
                });
            }
        });
        Ok(Liar {
            id,
            addr,
            lies,
            endpoint,
        })
    }

    /// A connection to the liar from a fresh client with its own key, pinned
    /// to the liar's id, to hand to a download as a provider.
    pub async fn connect(&self) -> Result<quinn::Connection> {
        let identity = Identity::generate()?;
        let (client, _) = quic_peer::tls::quic_configs(&identity)?;
        let mut ep = quinn::Endpoint::new(
            quic_peer::node::endpoint_config(),
            None,
            quic_peer::node::bind_socket("127.0.0.1:0".parse()?, 1 << 20)?,
            quinn::default_runtime().context("no async runtime")?,
        )?;
        ep.set_default_client_config(quinn::ClientConfig::new(client));
        let conn = ep
            .connect(self.addr, &quic_peer::tls::server_name_for(Some(self.id)))?
            .await?;
        Ok(conn)
    }

    /// Stops serving.
    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"done");
    }
}
