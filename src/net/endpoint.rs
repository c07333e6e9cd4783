//! The QUIC endpoint: UDP socket, transport settings and TLS, the same for
//! every connection a node makes or accepts (and for the benchmarks' bare
//! quinn stream, so that comparisons are like with like).

use std::net::SocketAddr;
use std::sync::Arc;

use tracing::debug;

use quinn::Endpoint;

use super::EndpointError;
use crate::config::{Congestion, NodeConfig};
use crate::crypto::identity::Identity;
use crate::crypto::tls;
use crate::proto::wire::Role;

/// Largest UDP payload MTU discovery may reach.
pub const MAX_UDP_PAYLOAD: u16 = 6000;

/// The endpoint configuration every node (and the bench's bare stream) uses.
pub fn endpoint_config() -> quinn::EndpointConfig {
    let mut c = quinn::EndpointConfig::default();
    // Default is 1472, which would cap what MTU discovery can find.
    let _ = c.max_udp_payload_size(MAX_UDP_PAYLOAD);
    c
}

/// Bytes sent and not yet acknowledged, per connection: what a peer that
/// stops reading can make this node buffer. 8 MiB keeps 1 GB/s at 8 ms of
/// round trip.
pub const SEND_WINDOW: u64 = 8 << 20;

/// The QUIC transport settings of every connection a node with `config` makes
/// or accepts (public so benchmarks can give a bare quinn stream the same ones).
pub fn transport_config(config: &NodeConfig) -> Result<quinn::TransportConfig, EndpointError> {
    let mut t = quinn::TransportConfig::default();
    let idle = quinn::IdleTimeout::try_from(config.idle_timeout)
        .map_err(|_| EndpointError::Config("idle timeout too large"))?;
    t.max_idle_timeout(Some(idle));
    t.keep_alive_interval(Some(config.keep_alive));
    t.max_concurrent_bidi_streams(config.max_streams.into());
    t.max_concurrent_uni_streams(0u32.into());
    // Bound memory per connection: quinn's defaults let a peer make us buffer
    // far more than a few chunks. The send window is what a peer that stops
    // reading can pin on this node (beyond the node-wide chunk budget).
    t.receive_window((16u32 << 20).into());
    t.stream_receive_window((4u32 << 20).into());
    t.send_window(SEND_WINDOW);
    t.datagram_receive_buffer_size(None);
    // Packet size is the big lever on CPU-bound links: discover up to
    // MAX_UDP_PAYLOAD where the path allows it (loopback, jumbo-frame LANs) and
    // stay at 1200-1452 where it does not. Above ~6500 bytes quinn's segmentation
    // offload batches exceed 64 KiB and fail.
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(MAX_UDP_PAYLOAD);
    t.mtu_discovery_config(Some(mtu));
    let cc: Arc<dyn quinn::congestion::ControllerFactory + Send + Sync> = match config.congestion {
        Congestion::Bbr => Arc::new(quinn::congestion::BbrConfig::default()),
        Congestion::Cubic => Arc::new(quinn::congestion::CubicConfig::default()),
        Congestion::NewReno => Arc::new(quinn::congestion::NewRenoConfig::default()),
    };
    t.congestion_controller_factory(cc);
    Ok(t)
}

/// Binds a UDP socket for QUIC, asking the kernel for `buffer`-byte send and
/// receive buffers (it may grant less: `net.core.rmem_max`; the granted sizes are
/// logged at debug level).
pub fn bind_socket(addr: SocketAddr, buffer: usize) -> Result<std::net::UdpSocket, EndpointError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let bind_err = |source: std::io::Error| {
        if source.kind() == std::io::ErrorKind::AddrInUse {
            EndpointError::AddrInUse { addr }
        } else {
            EndpointError::Bind { addr, source }
        }
    };
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .map_err(bind_err)?;
    if addr.is_ipv6() {
        // Accept IPv4 too where the OS allows it.
        let _ = socket.set_only_v6(false);
    }
    // Ask for bigger buffers; the kernel may grant less (net.core.rmem_max).
    let _ = socket.set_recv_buffer_size(buffer);
    let _ = socket.set_send_buffer_size(buffer);
    socket.bind(&addr.into()).map_err(bind_err)?;
    debug!(
        requested = buffer,
        recv = socket.recv_buffer_size().unwrap_or(0),
        send = socket.send_buffer_size().unwrap_or(0),
        "UDP socket buffers"
    );
    Ok(socket.into())
}

/// Binds the endpoint for a node with `config` and `identity`: a server too
/// unless the node is a client. Returns the endpoint, the config to dial
/// with, and the one to accept with (`None` for a client).
pub(crate) fn open(
    config: &NodeConfig,
    identity: &Identity,
) -> Result<(Endpoint, quinn::ClientConfig, Option<quinn::ServerConfig>), EndpointError> {
    let transport = Arc::new(transport_config(config)?);
    let policy = tls::PeerPolicy {
        network: config.network_key.clone(),
        allow: config.allow.clone(),
    };
    let (client_crypto, server_crypto) = tls::quic_configs_with(identity, &policy)?;
    let mut server_config = quinn::ServerConfig::with_crypto(server_crypto);
    server_config.transport_config(transport.clone());
    server_config.migration(false);
    let mut client_config = quinn::ClientConfig::new(client_crypto);
    client_config.transport_config(transport);

    let socket = bind_socket(config.listen, config.socket_buffer)?;
    let runtime = quinn::default_runtime().ok_or(EndpointError::Config("no async runtime"))?;
    let server_config = (config.role == Role::Peer).then_some(server_config);
    let endpoint = Endpoint::new(endpoint_config(), server_config.clone(), socket, runtime)
        .map_err(|source| EndpointError::Bind {
            addr: config.listen,
            source,
        })?;
    Ok((endpoint, client_config, server_config))
}
