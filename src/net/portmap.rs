//! Port mapping: a node that its dial-backs found behind NAT ([`super::reach`])
//! asks its home router, over UPnP IGD, to forward its UDP port to it, keeps
//! the lease renewed while it runs, and removes it when it stops
//! (`--no-port-mapping` turns this off). Whether the mapping works is not
//! taken on the router's word: a new reachability check follows, and peers
//! dialing the mapped port back decide.
//!
//! Only a node behind NAT searches for a router, so a node on a public
//! address, or a network on one machine, never sends the SSDP search.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use igd_next::aio::tokio::search_gateway;
use igd_next::{PortMappingProtocol, SearchOptions};
use tracing::debug;

use super::membership::PeerEvent;
use super::{lock, Network, Reachability};

/// How long a mapping is leased for; it is renewed at half of it.
const LEASE: Duration = Duration::from_secs(3600);
/// How long the search for a router waits for answers.
const SEARCH: Duration = Duration::from_secs(3);
/// What the router lists the mapping as.
const DESCRIPTION: &str = "quic-peer";

/// Where this node's port mapping stands.
pub(super) struct PortMapState {
    /// The address the router forwards to this node, as it says.
    pub(super) mapped: Option<SocketAddr>,
    /// A search or a mapping is under way or held: no second one.
    started: bool,
}

impl PortMapState {
    pub(super) fn new() -> Self {
        PortMapState {
            mapped: None,
            started: false,
        }
    }
}

impl Network {
    /// The address the router forwards to this node, if it mapped one.
    pub fn mapped_addr(&self) -> Option<SocketAddr> {
        lock(&self.inner.portmap).mapped
    }

    /// Behind NAT, with port mapping on and none tried yet: looks for a
    /// router that maps ports, once.
    pub(super) fn maybe_map_port(&self) {
        let cfg = &self.inner.config;
        if !cfg.port_mapping
            || !matches!(self.reachability(), Reachability::BehindNat { .. })
            || !self.local_addr().is_ipv4()
            || self.is_shutting_down()
        {
            return;
        }
        {
            let mut p = lock(&self.inner.portmap);
            if p.started {
                return;
            }
            p.started = true;
        }
        let n = self.clone();
        self.inner.tasks.spawn(async move { n.map_port().await });
    }

    /// Finds the router, maps this node's port, renews the lease at half
    /// its length, and removes the mapping when the node stops.
    async fn map_port(self) {
        let mut options = SearchOptions::default();
        options.timeout = Some(SEARCH);
        options.single_search_timeout = Some(SEARCH);
        let gateway = match search_gateway(options).await {
            Ok(g) => g,
            Err(e) => {
                debug!("no UPnP router found: {e}");
                return;
            }
        };
        let Some(local_ip) = local_ip_towards(gateway.addr) else {
            debug!(router = %gateway.addr, "no local address towards the UPnP router");
            return;
        };
        let port = self.local_addr().port();
        let local = SocketAddr::new(local_ip, port);
        let lease = LEASE.as_secs() as u32;
        let mut first = true;
        loop {
            let added = gateway
                .add_port(PortMappingProtocol::UDP, port, local, lease, DESCRIPTION)
                .await;
            let external = match added {
                Ok(()) => gateway.get_external_ip().await.ok(),
                Err(e) => {
                    debug!(router = %gateway.addr, "port mapping refused: {e}");
                    None
                }
            };
            let Some(ip) = external else {
                lock(&self.inner.portmap).mapped = None;
                return;
            };
            let mapped = SocketAddr::new(ip, port);
            lock(&self.inner.portmap).mapped = Some(mapped);
            if first {
                first = false;
                debug!(%mapped, %local, router = %gateway.addr, "port mapped");
                self.emit(PeerEvent::PortMapped {
                    external: mapped,
                    local,
                });
                // Whether it works is for peers dialing back to say.
                self.check_reachability_now();
            }
            tokio::select! {
                _ = self.inner.stopping.cancelled() => break,
                _ = tokio::time::sleep(LEASE / 2) => {}
            }
        }
        let removed = tokio::time::timeout(
            Duration::from_secs(1),
            gateway.remove_port(PortMappingProtocol::UDP, port),
        )
        .await;
        debug!(ok = matches!(removed, Ok(Ok(()))), "port mapping removed");
    }

    /// Makes the next maintenance tick run a reachability check.
    fn check_reachability_now(&self) {
        lock(&self.inner.reach).next_check = Instant::now();
    }
}

/// The local address the kernel would send from to reach `to`.
fn local_ip_towards(to: SocketAddr) -> Option<IpAddr> {
    let socket = UdpSocket::bind((std::net::Ipv4Addr::UNSPECIFIED, 0)).ok()?;
    socket.connect(to).ok()?;
    Some(socket.local_addr().ok()?.ip())
}
