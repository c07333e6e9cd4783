//! Private networks: a shared secret that admits only the nodes holding it.
//!
//! rustls has no external pre-shared keys, so membership is proven with
//! certificates instead. From the 32-byte network secret both sides derive
//! the same Ed25519 *network signing key* (BLAKE3 in key-derivation mode, then
//! the result as an Ed25519 seed). A member signs its own node key with it and
//! puts the result in a private X.509 extension of its self-signed
//! certificate; verifiers that hold the key require that extension and check
//! the signature, so an outsider is refused inside the TLS handshake, before any
//! application data.
//!
//! What is signed: `"quic-peer private network membership v1\0" || node public
//! key` (the raw 32-byte Ed25519 key of the certificate). Because the signature
//! covers the node's own key, copying a member's extension into another
//! certificate does not work, and the handshake signature already proves the
//! peer holds the certificate's key.
//!
//! The extension ([`MEMBERSHIP_OID`], not critical, so that nodes outside any
//! private network still parse the certificate) holds the DER of
//!
//! ```text
//! SEQUENCE { networkKey OCTET STRING (32 bytes), signature OCTET STRING (64 bytes) }
//! ```
//!
//! `networkKey` is the network's *public* verification key: it lets a verifier
//! tell "a member of another private network" from "a bad proof"; it cannot be
//! used to sign.
//!
//! The key file `quic-peer keygen` writes (mode 0600) is text: comment lines
//! starting with `#`, then `qpnk1` followed by the secret as 52 characters of
//! lowercase base32 (the alphabet of node ids).

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use rustls::pki_types::CertificateDer;

use crate::crypto::identity::{ed25519_public_key, CertIdentityError};
use crate::proto::hash::{decode_b32, encode_b32};

/// The OID of the membership extension: 2.25.1534245637254920041.
///
/// The 2.25 arc (ITU-T X.667) takes a random number and needs no
/// registration. X.667 means a whole 128-bit UUID there, but rcgen writes arcs as
/// `u64`, so this is a random 63-bit number: as unlikely to collide, and a
/// collision would only make a foreign extension fail verification.
pub const MEMBERSHIP_OID: &[u64] = &[2, 25, 1_534_245_637_254_920_041];

/// What the network key signs, ahead of the node's public key.
const PROOF_CONTEXT: &[u8] = b"quic-peer private network membership v1\0";

/// BLAKE3 `derive_key` context for the network signing key.
const KDF_CONTEXT: &str = "quic-peer 2026-11-25 private network membership signing key";

/// Text prefix of a network key.
const TEXT_PREFIX: &str = "qpnk1";

/// Why a network key could not be read, made or written.
#[derive(Debug, thiserror::Error)]
pub enum NetworkKeyError {
    /// The file could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The key file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// `keygen` would have replaced an existing file.
    #[error("{0} already exists; pass --force to replace it (members holding the old key will be shut out)")]
    Exists(PathBuf),
    /// The text is not a network key.
    #[error("{what} is not a quic-peer network key (expected a line `{TEXT_PREFIX}` + 52 base32 characters, as `quic-peer keygen` writes)")]
    Malformed {
        /// The file, or "the text".
        what: String,
    },
    /// The operating system's random number generator failed.
    #[error("no randomness for a new network key")]
    Random,
}

/// Why a certificate does not prove membership of a private network. The
/// messages describe the peer that presented the certificate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    /// The certificate is unusable (not Ed25519, not X.509).
    #[error("{0}")]
    Certificate(String),
    /// No membership extension: the peer runs without a network key.
    #[error("its certificate carries no membership proof (no --network-key)")]
    NoProof,
    /// The extension is there but is not the expected structure.
    #[error("its membership proof is malformed")]
    Malformed,
    /// The proof was made with another network key.
    #[error("it holds a different network key")]
    OtherNetwork,
    /// The proof names this network but its signature does not verify for the
    /// certificate's key (for instance, copied from another member).
    #[error("its membership proof does not match its key")]
    BadSignature,
}

impl From<CertIdentityError> for MembershipError {
    fn from(e: CertIdentityError) -> Self {
        MembershipError::Certificate(e.to_string())
    }
}

/// The shared secret of a private network, with the signing key derived from it.
///
/// Cheap to clone. `Debug` shows only the network's fingerprint, never the secret.
#[derive(Clone)]
pub struct NetworkKey {
    inner: Arc<Keys>,
}

struct Keys {
    secret: [u8; 32],
    signing: Ed25519KeyPair,
    public: [u8; 32],
}

impl fmt::Debug for NetworkKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NetworkKey({})", self.fingerprint())
    }
}

impl PartialEq for NetworkKey {
    fn eq(&self, other: &Self) -> bool {
        self.inner.public == other.inner.public
    }
}

impl Eq for NetworkKey {}

impl NetworkKey {
    /// A new random network key from the operating system's generator.
    pub fn generate() -> Result<Self, NetworkKeyError> {
        let mut secret = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
            .map_err(|_| NetworkKeyError::Random)?;
        Self::from_secret(secret)
    }

    /// The key for a given 32-byte secret.
    pub fn from_secret(secret: [u8; 32]) -> Result<Self, NetworkKeyError> {
        let seed = blake3::derive_key(KDF_CONTEXT, &secret);
        let signing =
            Ed25519KeyPair::from_seed_unchecked(&seed).map_err(|_| NetworkKeyError::Malformed {
                what: "the derived seed".into(),
            })?;
        let public =
            signing
                .public_key()
                .as_ref()
                .try_into()
                .map_err(|_| NetworkKeyError::Malformed {
                    what: "the derived key".into(),
                })?;
        Ok(NetworkKey {
            inner: Arc::new(Keys {
                secret,
                signing,
                public,
            }),
        })
    }

    /// Reads a key file written by [`NetworkKey::write_new`] (`quic-peer keygen`).
    pub fn load(path: &Path) -> Result<Self, NetworkKeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| NetworkKeyError::Io {
            action: "cannot read network key",
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Makes a new key and writes it to `path` with mode 0600. An existing file
    /// is an error unless `force`, in which case it is replaced atomically.
    pub fn write_new(path: &Path, force: bool) -> Result<Self, NetworkKeyError> {
        let key = Self::generate()?;
        let text = format!(
            "# quic-peer private network key (network {}).\n\
             # Give it to every member over a safe channel; keep it secret.\n\
             {}\n",
            key.fingerprint(),
            key.to_text()
        );
        let io = |action| {
            move |source| NetworkKeyError::Io {
                action,
                path: path.to_path_buf(),
                source,
            }
        };
        if force {
            let mut tmp = path.as_os_str().to_owned();
            tmp.push(".tmp");
            let tmp = PathBuf::from(tmp);
            // A leftover temp file would keep its old mode: start afresh.
            let _ = std::fs::remove_file(&tmp);
            write_secret(&tmp, text.as_bytes()).map_err(io("cannot write"))?;
            std::fs::rename(&tmp, path).map_err(io("cannot write"))?;
        } else {
            match write_secret(path, text.as_bytes()) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    return Err(NetworkKeyError::Exists(path.to_path_buf()))
                }
                Err(e) => return Err(io("cannot write")(e)),
            }
        }
        Ok(key)
    }

    fn parse(text: &str, what: &str) -> Result<Self, NetworkKeyError> {
        let malformed = || NetworkKeyError::Malformed { what: what.into() };
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .ok_or_else(malformed)?
            .to_ascii_lowercase();
        let secret = line
            .strip_prefix(TEXT_PREFIX)
            .and_then(decode_b32)
            .ok_or_else(malformed)?;
        Self::from_secret(secret)
    }

    /// The secret in its text form, `qpnk1…`. Handle with care.
    pub fn to_text(&self) -> String {
        format!("{TEXT_PREFIX}{}", encode_b32(&self.inner.secret))
    }

    /// The first ten characters of the network's public key in base32: the same
    /// for every member, safe to show, tells two keys apart.
    pub fn fingerprint(&self) -> String {
        let mut s = encode_b32(&self.inner.public);
        s.truncate(10);
        s
    }

    /// The content of the membership extension for a node whose raw Ed25519
    /// public key is `node_key`.
    pub fn proof_for(&self, node_key: &[u8; 32]) -> Vec<u8> {
        let sig = self.inner.signing.sign(&signed_message(node_key));
        let mut out = Vec::with_capacity(PROOF_LEN);
        out.extend_from_slice(&[0x30, (PROOF_LEN - 2) as u8, 0x04, 32]);
        out.extend_from_slice(&self.inner.public);
        out.extend_from_slice(&[0x04, 64]);
        out.extend_from_slice(sig.as_ref());
        out
    }

    /// Checks that `cert` carries a membership proof of this network for its
    /// own key.
    pub fn check_member(&self, cert: &CertificateDer<'_>) -> Result<(), MembershipError> {
        let node_key = ed25519_public_key(cert)?;
        let proof = membership_proof(cert).ok_or(MembershipError::NoProof)?;
        let (network, signature) = parse_proof(proof).ok_or(MembershipError::Malformed)?;
        if network != self.inner.public {
            return Err(MembershipError::OtherNetwork);
        }
        UnparsedPublicKey::new(&ED25519, &self.inner.public)
            .verify(&signed_message(&node_key), signature)
            .map_err(|_| MembershipError::BadSignature)
    }
}

impl FromStr for NetworkKey {
    type Err = NetworkKeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s, "the text")
    }
}

/// The content of `cert`'s membership extension, if it has one.
pub(crate) fn membership_proof<'a>(cert: &'a CertificateDer<'_>) -> Option<&'a [u8]> {
    find_extension(cert.as_ref(), &oid_der(MEMBERSHIP_OID))
}

/// Length of the extension content: SEQUENCE header, two OCTET STRINGs.
const PROOF_LEN: usize = 2 + (2 + 32) + (2 + 64);

fn signed_message(node_key: &[u8; 32]) -> Vec<u8> {
    [PROOF_CONTEXT, node_key.as_slice()].concat()
}

/// Creates `path` (which must not exist) readable by its owner only, writes
/// `data` and syncs it; a file that could not be written whole is removed.
fn write_secret(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    let written = f.write_all(data).and_then(|()| f.sync_all());
    if written.is_err() {
        drop(f);
        let _ = std::fs::remove_file(path);
    }
    written
}

// A minimal DER walk: rustls/webpki parse certificates but do not expose their
// extensions, and a full X.509 parser would add a dozen crates for one lookup.
// It runs only on certificates webpki has already parsed.

const SEQUENCE: u8 = 0x30;
const OID: u8 = 0x06;
const BOOLEAN: u8 = 0x01;
const OCTET_STRING: u8 = 0x04;
/// `[3] EXPLICIT Extensions` in a TBSCertificate.
const EXTENSIONS: u8 = 0xa3;

/// Splits the first DER element off `input`: its tag, contents and what follows.
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None; // multi-byte tags do not occur here
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None; // indefinite (not DER) or absurdly long
        }
        let len = rest
            .get(..n)?
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, rest.get(n..)?)
    };
    Some((tag, rest.get(..len)?, rest.get(len..)?))
}

/// The contents of an element that must have tag `tag`.
fn expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    match element(input)? {
        (t, body, rest) if t == tag => Some((body, rest)),
        _ => None,
    }
}

/// The `extnValue` contents of the extension `oid` (DER-encoded OID contents).
fn find_extension<'a>(cert: &'a [u8], oid: &[u8]) -> Option<&'a [u8]> {
    let (cert, _) = expect(cert, SEQUENCE)?;
    let (mut tbs, _) = expect(cert, SEQUENCE)?;
    while !tbs.is_empty() {
        let (tag, body, rest) = element(tbs)?;
        tbs = rest;
        if tag != EXTENSIONS {
            continue;
        }
        let (mut exts, _) = expect(body, SEQUENCE)?;
        while !exts.is_empty() {
            let (ext, rest) = expect(exts, SEQUENCE)?;
            exts = rest;
            let (id, mut ext) = expect(ext, OID)?;
            if id != oid {
                continue;
            }
            if let Some((_, rest)) = expect(ext, BOOLEAN) {
                ext = rest;
            }
            return expect(ext, OCTET_STRING).map(|(value, _)| value);
        }
        return None;
    }
    None
}

/// `(network public key, signature)` from the extension content.
fn parse_proof(proof: &[u8]) -> Option<([u8; 32], &[u8])> {
    let (body, rest) = expect(proof, SEQUENCE)?;
    let (network, body) = expect(body, OCTET_STRING)?;
    let (signature, body) = expect(body, OCTET_STRING)?;
    if !rest.is_empty() || !body.is_empty() || signature.len() != 64 {
        return None;
    }
    Some((network.try_into().ok()?, signature))
}

/// The DER contents of an OBJECT IDENTIFIER.
fn oid_der(arcs: &[u64]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut push = |mut v: u64| {
        let mut groups = vec![(v & 0x7f) as u8];
        v >>= 7;
        while v > 0 {
            groups.push((v & 0x7f) as u8 | 0x80);
            v >>= 7;
        }
        out.extend(groups.iter().rev());
    };
    if let [a, b, rest @ ..] = arcs {
        push(a * 40 + b);
        rest.iter().for_each(|&v| push(v));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_round_trips_and_rejects_garbage() {
        let key = NetworkKey::generate().unwrap();
        let text = key.to_text();
        assert!(text.starts_with("qpnk1") && text.len() == 5 + 52, "{text}");
        assert_eq!(text.parse::<NetworkKey>().unwrap(), key);
        let with_comments = format!("# a comment\n\n  {}  \n", text.to_uppercase());
        assert_eq!(with_comments.parse::<NetworkKey>().unwrap(), key);
        for bad in [
            "",
            "# only a comment",
            "qpnk1",
            "qpnk2abc",
            &text[..40],
            &text[5..],
        ] {
            assert!(bad.parse::<NetworkKey>().is_err(), "{bad:?}");
        }
        assert_ne!(NetworkKey::generate().unwrap(), key);
        assert!(
            !format!("{key:?}").contains(&text[5..]),
            "Debug shows the secret"
        );
    }

    #[test]
    fn derivation_is_fixed() {
        let a = NetworkKey::from_secret([7; 32]).unwrap();
        let b = NetworkKey::from_secret([7; 32]).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.proof_for(&[1; 32]), b.proof_for(&[1; 32]));
        assert_ne!(a.proof_for(&[1; 32]), a.proof_for(&[2; 32]));
        assert_eq!(a.proof_for(&[1; 32]).len(), PROOF_LEN);
    }

    #[test]
    fn key_file_is_private_and_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("net.key");
        let key = NetworkKey::write_new(&path, false).unwrap();
        assert_eq!(NetworkKey::load(&path).unwrap(), key);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let err = NetworkKey::write_new(&path, false).unwrap_err();
        assert!(matches!(err, NetworkKeyError::Exists(_)), "{err}");
        assert_eq!(NetworkKey::load(&path).unwrap(), key, "left untouched");
        let replaced = NetworkKey::write_new(&path, true).unwrap();
        assert_ne!(replaced, key);
        assert_eq!(NetworkKey::load(&path).unwrap(), replaced);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let err = NetworkKey::load(&dir.path().join("missing")).unwrap_err();
        assert!(err.to_string().contains("cannot read network key"), "{err}");
    }

    #[test]
    fn oid_encoding_matches_rcgen() {
        // 2.25 -> 40*2+25 = 105; one small arc for a hand check.
        assert_eq!(oid_der(&[2, 25, 300]), vec![105, 0x82, 0x2c]);
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["x".to_string()]).unwrap();
        params
            .custom_extensions
            .push(rcgen::CustomExtension::from_oid_content(
                MEMBERSHIP_OID,
                vec![0x04, 0x01, 0x2a],
            ));
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            find_extension(cert.der(), &oid_der(MEMBERSHIP_OID)),
            Some(&[0x04, 0x01, 0x2a][..])
        );
        assert_eq!(find_extension(cert.der(), &oid_der(&[2, 25, 1])), None);
    }

    #[test]
    fn der_walk_survives_garbage() {
        let oid = oid_der(MEMBERSHIP_OID);
        for bytes in [
            &[][..],
            &[0x30],
            &[0x30, 0x85, 0, 0, 0, 0, 0],
            &[0x30, 0x80, 0x00, 0x00],
            &[0x30, 0x03, 0x30, 0x01],
            &[0x30, 0x04, 0x30, 0x02, 0xa3, 0x00],
            &[0x1f, 0x01, 0x00],
        ] {
            assert_eq!(find_extension(bytes, &oid), None, "{bytes:?}");
        }
        for bytes in [&[][..], &[0x30, 0x00], &[0x30, 0x02, 0x04, 0x00]] {
            assert_eq!(parse_proof(bytes), None);
        }
    }
}
