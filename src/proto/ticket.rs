//! Tickets: a file id plus the nodes that hold it, in one copyable string.
//!
//! `qpt1` followed by lowercase base32 of a postcard-encoded, versioned struct.
//! A ticket lets `get` go straight to the holders, each dialed with its id
//! pinned, without asking the network who has the file.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::proto::wire::{PeerRecord, MAX_ADDRS_PER_PEER};
use crate::proto::Hash;

const PREFIX: &str = "qpt1";
/// Most holders listed in a ticket.
pub const MAX_HOLDERS: usize = 8;

/// A file id and where to get it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    /// The file id.
    pub id: Hash,
    /// Nodes that hold it, with their addresses.
    pub holders: Vec<PeerRecord>,
}

/// A string that is neither a file id nor a ticket.
#[derive(Debug, thiserror::Error)]
#[error("invalid ticket: {0}")]
pub struct ParseTicketError(String);

impl fmt::Display for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut t = self.clone();
        t.holders.truncate(MAX_HOLDERS);
        let bytes = postcard::to_allocvec(&t).map_err(|_| fmt::Error)?;
        write!(f, "{PREFIX}{}", data_encoding::BASE32_DNSSEC.encode(&bytes))
    }
}

impl FromStr for Ticket {
    type Err = ParseTicketError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.to_ascii_lowercase();
        let body = lower
            .strip_prefix(PREFIX)
            .ok_or_else(|| ParseTicketError(format!("does not start with {PREFIX}")))?;
        let bytes = data_encoding::BASE32_DNSSEC
            .decode(body.as_bytes())
            .map_err(|e| ParseTicketError(e.to_string()))?;
        let (t, rest): (Ticket, _) =
            postcard::take_from_bytes(&bytes).map_err(|e| ParseTicketError(e.to_string()))?;
        if !rest.is_empty()
            || t.holders.len() > MAX_HOLDERS
            || t.holders.iter().any(|h| h.addrs.len() > MAX_ADDRS_PER_PEER)
        {
            return Err(ParseTicketError("malformed".into()));
        }
        Ok(t)
    }
}

/// What `get` was given: a bare file id, or a ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A file id: providers are found through the network.
    Id(Hash),
    /// A ticket: its holders are asked first.
    Ticket(Ticket),
}

impl Target {
    /// The file id.
    pub fn id(&self) -> Hash {
        match self {
            Target::Id(h) => *h,
            Target::Ticket(t) => t.id,
        }
    }
}

impl From<Hash> for Target {
    fn from(id: Hash) -> Self {
        Target::Id(id)
    }
}

impl From<Ticket> for Target {
    fn from(ticket: Ticket) -> Self {
        Target::Ticket(ticket)
    }
}

impl FromStr for Target {
    type Err = ParseTicketError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        // A file id is tried first: its text may itself begin with the
        // ticket prefix, and no ticket is as short as an id.
        if let Ok(id) = s.parse::<Hash>() {
            return Ok(Target::Id(id));
        }
        if s.get(..PREFIX.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(PREFIX))
        {
            return Ok(Target::Ticket(s.parse()?));
        }
        s.parse::<Hash>()
            .map(Target::Id)
            .map_err(|e| ParseTicketError(format!("{e}; or a ticket starting with {PREFIX}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::NodeId;

    #[test]
    fn ticket_round_trip() {
        let t = Ticket {
            id: Hash::of(b"file"),
            holders: vec![PeerRecord {
                id: NodeId::from_bytes([3; 32]),
                addrs: vec!["127.0.0.1:5000".parse().unwrap()],
            }],
        };
        let s = t.to_string();
        assert!(s.starts_with("qpt1"));
        assert_eq!(s.parse::<Ticket>().unwrap(), t);
        assert_eq!(s.parse::<Target>().unwrap(), Target::Ticket(t.clone()));
        assert_eq!(
            t.id.to_string().parse::<Target>().unwrap(),
            Target::Id(t.id)
        );
        assert!("qpt1zzzz".parse::<Target>().is_err());
        assert!("hello".parse::<Target>().is_err());
        let mut cut = s.clone();
        cut.truncate(s.len() - 4);
        assert!(cut.parse::<Ticket>().is_err());
        assert_eq!(
            s.to_ascii_uppercase().parse::<Target>().unwrap(),
            Target::Ticket(t)
        );
    }

    /// A file id whose text happens to begin with the ticket prefix is an id
    /// (one in a million does; proptest found one).
    #[test]
    fn id_that_starts_like_a_ticket_is_an_id() {
        let text = format!("{PREFIX}{}", "0".repeat(48));
        let id: Hash = text.parse().unwrap();
        assert_eq!(id.to_string(), text);
        assert_eq!(text.parse::<Target>().unwrap(), Target::Id(id));
        assert!(text.parse::<Ticket>().is_err());
    }
}
