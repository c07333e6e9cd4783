//! Peer addresses as users write them: `host:port`, or `ID@host:port` to pin
//! the peer's id. Parsing and printing only; the network core resolves them.

use std::net::SocketAddr;
use std::str::FromStr;

use crate::proto::NodeId;

/// A peer's address as users write it: `host:port`, or `ID@host:port` to pin the
/// peer's NodeId.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAddr {
    /// The pinned id, if given.
    pub id: Option<NodeId>,
    /// Host name or IP address.
    pub host: String,
    /// UDP port.
    pub port: u16,
}

/// An address that is not `host:port` or `ID@host:port`.
#[derive(Debug, thiserror::Error)]
#[error("invalid address {input:?}: {reason} (expected HOST:PORT or ID@HOST:PORT)")]
pub struct ParseAddrError {
    input: String,
    reason: String,
}

impl FromStr for PeerAddr {
    type Err = ParseAddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| ParseAddrError {
            input: s.to_string(),
            reason: reason.to_string(),
        };
        let (id, rest) = match s.split_once('@') {
            Some((id, rest)) => (
                Some(id.parse::<NodeId>().map_err(|e| err(&e.to_string()))?),
                rest,
            ),
            None => (None, s),
        };
        let (host, port) = rest.rsplit_once(':').ok_or_else(|| err("no port"))?;
        let port: u16 = port.parse().map_err(|_| err("bad port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(err("no host"));
        }
        if port == 0 {
            return Err(err("port 0 cannot be dialed"));
        }
        Ok(PeerAddr {
            id,
            host: host.to_string(),
            port,
        })
    }
}

impl std::fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(id) = self.id {
            write!(f, "{id}@")?;
        }
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl PeerAddr {
    /// A pinned address for a known socket address.
    pub fn pinned(id: NodeId, addr: SocketAddr) -> Self {
        PeerAddr {
            id: Some(id),
            host: addr.ip().to_string(),
            port: addr.port(),
        }
    }
}

impl From<SocketAddr> for PeerAddr {
    fn from(addr: SocketAddr) -> Self {
        PeerAddr {
            id: None,
            host: addr.ip().to_string(),
            port: addr.port(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_addr_parsing() {
        let a: PeerAddr = "127.0.0.1:5000".parse().unwrap();
        assert_eq!((a.id, a.host.as_str(), a.port), (None, "127.0.0.1", 5000));
        let a: PeerAddr = "[::1]:7".parse().unwrap();
        assert_eq!(a.host, "::1");
        assert_eq!(a.to_string(), "[::1]:7");
        let id = NodeId::from_bytes([5; 32]);
        let a: PeerAddr = format!("{id}@example.org:9").parse().unwrap();
        assert_eq!(a.id, Some(id));
        assert_eq!(a.to_string(), format!("{id}@example.org:9"));
        for bad in [
            "",
            "host",
            "host:",
            ":5",
            "host:99999",
            "host:0",
            "nope@host:5",
        ] {
            assert!(bad.parse::<PeerAddr>().is_err(), "{bad:?}");
        }
    }
}
