//! Answering DHT requests: one request per stream, one response, within
//! `rpc_timeout`.
//!
//! FIND_NODE and GET_PROVIDERS never list the asker; GET_PROVIDERS lists this
//! node too when its store holds the file; ADD_PROVIDER is taken only from a
//! full node announcing itself (the record's id must be the connection's
//! proven id), at the address it gave or, failing that, the one it came from,
//! and counted against the address prefix it came from
//! ([`ProviderStore`](super::providers::ProviderStore)).

use std::net::SocketAddr;
use std::time::Instant;

use super::behaviour::{record, Dht};
use crate::dht::providers::MAX_PROVIDERS_PER_KEY;
use crate::dht::K;
use crate::net::router::{RequestStream, ServeFuture};
use crate::net::Service;
use crate::proto::frame::write_frame;
use crate::proto::wire::{
    DhtRequest, NackReason, PeerRecord, Request, Response, Role, MAX_CONTROL_FRAME,
};
use crate::proto::{Hash, NodeId};

impl Service for Dht {
    fn serve(&self, stream: RequestStream) -> ServeFuture {
        let d = self.clone();
        Box::pin(async move {
            let RequestStream {
                peer,
                role,
                conn,
                request: Request::Dht(request),
                mut send,
                ..
            } = stream
            else {
                return;
            };
            let from = Asker {
                id: peer,
                client: role == Role::Client,
                remote: conn.remote_address(),
            };
            let answer = async {
                let resp = d.answer(&from, request).await;
                if write_frame(&mut send, &resp, MAX_CONTROL_FRAME)
                    .await
                    .is_ok()
                {
                    let _ = send.finish();
                }
            };
            let _ = tokio::time::timeout(d.net().config().rpc_timeout, answer).await;
        })
    }
}

/// Who asked, as the connection proved it.
struct Asker {
    id: NodeId,
    client: bool,
    remote: SocketAddr,
}

impl Dht {
    async fn answer(&self, from: &Asker, request: DhtRequest) -> Response {
        match request {
            DhtRequest::Ping => Response::Ack,
            DhtRequest::FindNode { target } => Response::Nodes(self.closest_records(&target, from)),
            DhtRequest::GetProviders { key } => Response::Providers {
                providers: self.providers_for(key).await,
                closer: self.closest_records(&key, from),
            },
            DhtRequest::AddProvider { key, provider } => self.add_provider(from, key, provider),
        }
    }

    /// This node's k closest contacts to `target`, minus the asker.
    fn closest_records(&self, target: &NodeId, from: &Asker) -> Vec<PeerRecord> {
        self.state()
            .table
            .closest(target, K)
            .iter()
            .filter(|c| c.id != from.id)
            .map(record)
            .collect()
    }

    /// The provider records kept for `key`, and this node if it holds the file.
    async fn providers_for(&self, key: NodeId) -> Vec<PeerRecord> {
        let mut providers = self.state().providers.get(&key, Instant::now());
        let file = Hash::from_bytes(*key.as_bytes());
        if let Some(store) = self.store() {
            let s = store.clone();
            let holds = tokio::task::spawn_blocking(move || s.holds(&file))
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or(false);
            let me = self.net().id();
            if holds && !providers.iter().any(|p| p.id == me) {
                providers.push(self.net().me());
            }
        }
        providers.truncate(MAX_PROVIDERS_PER_KEY);
        providers
    }

    fn add_provider(&self, from: &Asker, key: NodeId, provider: PeerRecord) -> Response {
        if provider.id != from.id || from.client {
            tracing::warn!(peer = %from.id.fmt_short(), claimed = %provider.id.fmt_short(),
                "ADD_PROVIDER for another id refused");
            return Response::Nack(NackReason::NotAccepted);
        }
        // Only where it can be reached: the address it asks from may be a
        // NAT's mapping, or a relayed circuit's.
        let addrs: Vec<SocketAddr> = provider
            .addrs
            .into_iter()
            .filter(crate::net::membership::dialable)
            .collect();
        let expires = Instant::now() + self.net().config().provider_ttl;
        let record = PeerRecord {
            id: from.id,
            addrs,
            relays: crate::net::membership::relay_list(&provider.relays),
        };
        self.state()
            .providers
            .add(key, record, from.remote.ip(), expires);
        Response::Ack
    }
}
