//! Tickets: a file id plus the nodes that hold it, in one copyable string.
//!
//! `qpt1` followed by lowercase base32 of the postcard of `(id, holders)`
//! names a plain file. `qpt2` names an encrypted one: the postcard of
//! `(id, key, holders)`, where `key` is the 32-byte file key of
//! [`super::sealed`]; such a ticket is the file's *read capability*, and the
//! id alone its *verify capability*. A ticket lets `get` go straight to the
//! holders, each dialed with its id pinned, without asking the network who
//! has the file (with no holders listed, the network is asked).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::proto::sealed::FileKey;
use crate::proto::wire::{PeerRecord, MAX_ADDRS_PER_PEER};
use crate::proto::Hash;

const PREFIX: &str = "qpt1";
const SEALED_PREFIX: &str = "qpt2";
/// Most holders listed in a ticket.
pub const MAX_HOLDERS: usize = 8;

/// A file id and where to get it, with the key of an encrypted file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    /// The file id.
    pub id: Hash,
    /// Nodes that hold it, with their addresses.
    pub holders: Vec<PeerRecord>,
    /// The key of an encrypted file (`None`: a plain file).
    pub key: Option<FileKey>,
}

#[derive(Serialize, Deserialize)]
struct Plain {
    id: Hash,
    holders: Vec<PeerRecord>,
}

#[derive(Serialize, Deserialize)]
struct Sealed {
    id: Hash,
    key: FileKey,
    holders: Vec<PeerRecord>,
}

/// A string that is neither a file id nor a ticket.
#[derive(Debug, thiserror::Error)]
#[error("invalid ticket: {0}")]
pub struct ParseTicketError(String);

impl fmt::Display for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut holders = self.holders.clone();
        holders.truncate(MAX_HOLDERS);
        let (prefix, bytes) = match self.key {
            None => (
                PREFIX,
                postcard::to_allocvec(&Plain {
                    id: self.id,
                    holders,
                }),
            ),
            Some(key) => (
                SEALED_PREFIX,
                postcard::to_allocvec(&Sealed {
                    id: self.id,
                    key,
                    holders,
                }),
            ),
        };
        let bytes = bytes.map_err(|_| fmt::Error)?;
        write!(f, "{prefix}{}", data_encoding::BASE32_DNSSEC.encode(&bytes))
    }
}

impl FromStr for Ticket {
    type Err = ParseTicketError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.to_ascii_lowercase();
        let (sealed, body) = match (
            lower.strip_prefix(PREFIX),
            lower.strip_prefix(SEALED_PREFIX),
        ) {
            (Some(body), _) => (false, body),
            (_, Some(body)) => (true, body),
            _ => {
                return Err(ParseTicketError(format!(
                    "does not start with {PREFIX} or {SEALED_PREFIX}"
                )))
            }
        };
        let bytes = data_encoding::BASE32_DNSSEC
            .decode(body.as_bytes())
            .map_err(|e| ParseTicketError(e.to_string()))?;
        let decode_err = |e: postcard::Error| ParseTicketError(format!("{e} (cut short?)"));
        let (t, rest) = if sealed {
            let (t, rest): (Sealed, _) = postcard::take_from_bytes(&bytes).map_err(decode_err)?;
            (
                Ticket {
                    id: t.id,
                    holders: t.holders,
                    key: Some(t.key),
                },
                rest,
            )
        } else {
            let (t, rest): (Plain, _) = postcard::take_from_bytes(&bytes).map_err(decode_err)?;
            (
                Ticket {
                    id: t.id,
                    holders: t.holders,
                    key: None,
                },
                rest,
            )
        };
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

    /// The key of an encrypted file, if the ticket carries one.
    pub fn key(&self) -> Option<FileKey> {
        match self {
            Target::Id(_) => None,
            Target::Ticket(t) => t.key,
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

/// A key was given for a ticket that carries another one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the key given differs from the key in the ticket")]
pub struct KeyMismatch;

impl Target {
    /// This target read with `key` (`get ID --key KEY`): an id becomes a
    /// ticket with no holders and the key; a ticket keeps its holders.
    pub fn with_key(self, key: Option<FileKey>) -> Result<Target, KeyMismatch> {
        let Some(key) = key else {
            return Ok(self);
        };
        match self {
            Target::Id(id) => Ok(Target::Ticket(Ticket {
                id,
                holders: Vec::new(),
                key: Some(key),
            })),
            Target::Ticket(t) if t.key.is_none() || t.key == Some(key) => {
                Ok(Target::Ticket(Ticket {
                    key: Some(key),
                    ..t
                }))
            }
            Target::Ticket(_) => Err(KeyMismatch),
        }
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
        if s.get(..PREFIX.len()).is_some_and(|p| {
            p.eq_ignore_ascii_case(PREFIX) || p.eq_ignore_ascii_case(SEALED_PREFIX)
        }) {
            return Ok(Target::Ticket(s.parse()?));
        }
        s.parse::<Hash>().map(Target::Id).map_err(|e| {
            ParseTicketError(format!(
                "{e}; or a ticket starting with {PREFIX} or {SEALED_PREFIX}"
            ))
        })
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
                relays: Vec::new(),
            }],
            key: None,
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

    #[test]
    fn a_sealed_ticket_carries_its_key() {
        let t = Ticket {
            id: Hash::of(b"file"),
            holders: vec![],
            key: Some(FileKey::from_bytes([9; 32])),
        };
        let s = t.to_string();
        assert!(s.starts_with("qpt2"), "{s}");
        assert_eq!(s.parse::<Target>().unwrap(), Target::Ticket(t.clone()));
        let mut cut = s.clone();
        cut.truncate(s.len() - 8);
        assert!(cut.parse::<Ticket>().is_err(), "a truncated ticket");
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
