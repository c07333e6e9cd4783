//! Node identity: an Ed25519 key, a self-signed certificate made by rcgen, and the
//! [`NodeId`] derived from the key.
//!
//! The key and certificate live in the node's data directory as `node.key`
//! (PKCS#8 PEM, mode 0600) and `node.crt` (PEM). They are created on first start
//! and reused afterwards, so a node keeps its id across restarts. See
//! `certs/README.md` for the format.
//!
//! In a private network the certificate presented also carries the network's
//! membership proof ([`crate::crypto::netkey`]); [`Identity::for_network`] re-makes it
//! from the key at every start, so a stale proof is never presented and the id
//! stays the same.
//!
//! `NodeId = BLAKE3(raw Ed25519 public key)` ([`NodeId::from_public_key`]).

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::crypto::netkey::{NetworkKey, MEMBERSHIP_OID};
use crate::proto::NodeId;

/// File name of the node's private key inside the data directory.
pub const KEY_FILE: &str = "node.key";
/// File name of the node's certificate inside the data directory.
pub const CERT_FILE: &str = "node.crt";

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410); the 32-byte key follows.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// Why a certificate does not carry a usable identity.
#[derive(Debug, thiserror::Error)]
pub enum CertIdentityError {
    /// The bytes are not an X.509 certificate.
    #[error("not a valid X.509 certificate")]
    Malformed,
    /// The certificate's key is not Ed25519.
    #[error("certificate key is not Ed25519")]
    NotEd25519,
}

/// Derives the [`NodeId`] from a DER certificate whose key is Ed25519.
pub fn node_id_from_cert(cert: &CertificateDer<'_>) -> Result<NodeId, CertIdentityError> {
    ed25519_public_key(cert).map(|key| NodeId::from_public_key(&key))
}

/// The raw 32-byte key of a DER certificate whose key is Ed25519.
pub(crate) fn ed25519_public_key(cert: &CertificateDer<'_>) -> Result<[u8; 32], CertIdentityError> {
    let parsed = rustls::server::ParsedCertificate::try_from(cert)
        .map_err(|_| CertIdentityError::Malformed)?;
    let spki = parsed.subject_public_key_info();
    spki.as_ref()
        .strip_prefix(&ED25519_SPKI_PREFIX)
        .and_then(|key| key.try_into().ok())
        .ok_or(CertIdentityError::NotEd25519)
}

/// Why an identity could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The data directory or a file in it could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The key file exists but does not hold an Ed25519 PKCS#8 key.
    #[error("{path} does not hold an Ed25519 private key: {reason}")]
    BadKey {
        /// The key file.
        path: PathBuf,
        /// What rcgen said.
        reason: String,
    },
    /// Certificate generation failed.
    #[error("could not make a certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// The stored certificate does not match the stored key.
    #[error("{path} does not belong to the key in {key_path}; delete it to have it re-made")]
    CertMismatch {
        /// The certificate file.
        path: PathBuf,
        /// The key file.
        key_path: PathBuf,
    },
}

/// A node's key pair and certificate.
#[derive(Clone)]
pub struct Identity {
    key_der: Vec<u8>,
    cert: CertificateDer<'static>,
    public_key: [u8; 32],
    id: NodeId,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity").field("id", &self.id).finish()
    }
}

impl Identity {
    /// A fresh identity that lives only in memory (tests, the demo's throwaway nodes).
    pub fn generate() -> Result<Self, IdentityError> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
        Self::from_key_pair(&key)
    }

    fn from_key_pair(key: &rcgen::KeyPair) -> Result<Self, IdentityError> {
        let cert = make_certificate(key, None)?;
        Self::from_parts(key, cert.der().clone())
    }

    /// The same key and id with a certificate, made now, that carries
    /// `network`'s membership proof for this key.
    pub fn for_network(&self, network: &NetworkKey) -> Result<Self, IdentityError> {
        self.with_membership_proof(network.proof_for(&self.public_key))
    }

    /// The same key and id with a new certificate whose membership extension
    /// holds `proof` (tests use it to forge one).
    pub(crate) fn with_membership_proof(&self, proof: Vec<u8>) -> Result<Self, IdentityError> {
        let key = rcgen::KeyPair::try_from(self.key_der.as_slice())?;
        let extension = rcgen::CustomExtension::from_oid_content(MEMBERSHIP_OID, proof);
        let cert = make_certificate(&key, Some(extension))?;
        Self::from_parts(&key, cert.der().clone())
    }

    fn from_parts(
        key: &rcgen::KeyPair,
        cert: CertificateDer<'static>,
    ) -> Result<Self, IdentityError> {
        let raw: [u8; 32] = key
            .public_key_raw()
            .try_into()
            .map_err(|_| IdentityError::BadKey {
                path: PathBuf::new(),
                reason: "public key is not 32 bytes".into(),
            })?;
        Ok(Identity {
            key_der: key.serialize_der(),
            cert,
            public_key: raw,
            id: NodeId::from_public_key(&raw),
        })
    }

    /// Loads the identity kept in `dir`, creating the directory, key and certificate
    /// on first use. The key file is written with mode 0600.
    pub fn load_or_create(dir: &Path) -> Result<Self, IdentityError> {
        let io = |action, path: &Path| {
            let path = path.to_path_buf();
            move |source| IdentityError::Io {
                action,
                path,
                source,
            }
        };
        fs::create_dir_all(dir).map_err(io("cannot create data directory", dir))?;
        let key_path = dir.join(KEY_FILE);
        let cert_path = dir.join(CERT_FILE);

        let key = match fs::read_to_string(&key_path) {
            Ok(pem) => rcgen::KeyPair::from_pem(&pem).map_err(|e| IdentityError::BadKey {
                path: key_path.clone(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
                write_private(&key_path, key.serialize_pem().as_bytes())
                    .map_err(io("cannot write key file", &key_path))?;
                key
            }
            Err(e) => return Err(io("cannot read key file", &key_path)(e)),
        };
        if key.algorithm() != &rcgen::PKCS_ED25519 {
            return Err(IdentityError::BadKey {
                path: key_path,
                reason: "the key is not Ed25519".into(),
            });
        }

        let expected = Self::from_parts(&key, CertificateDer::from(Vec::new()))?.id;
        match fs::read_to_string(&cert_path) {
            Ok(pem) => match CertificateDer::from_pem_slice(pem.as_bytes()) {
                Ok(cert) if node_id_from_cert(&cert).ok() == Some(expected) => {
                    Self::from_parts(&key, cert)
                }
                _ => Err(IdentityError::CertMismatch {
                    path: cert_path,
                    key_path,
                }),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let cert = make_certificate(&key, None)?;
                write_atomic(&cert_path, cert.pem().as_bytes(), 0o644)
                    .map_err(io("cannot write certificate", &cert_path))?;
                Self::from_parts(&key, cert.der().clone())
            }
            Err(e) => Err(io("cannot read certificate", &cert_path)(e)),
        }
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.id
    }

    /// The self-signed certificate, DER.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The private key, for rustls.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }
}

fn make_certificate(
    key: &rcgen::KeyPair,
    extension: Option<rcgen::CustomExtension>,
) -> Result<rcgen::Certificate, rcgen::Error> {
    // The subject name carries no meaning: peers derive the id from the key. rcgen's
    // default validity (1975 to 4096) is kept and verifiers ignore dates anyway.
    let mut params = rcgen::CertificateParams::new(vec!["quic-peer".to_string()])?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "quic-peer node");
    params.custom_extensions.extend(extension);
    params.self_signed(key)
}

/// The file in a data directory that holds the convergence secret.
pub const CONVERGENCE_FILE: &str = "convergence.key";

/// The owner's convergence secret (`put --convergent`), kept in `dir`: made
/// (32 random bytes, mode 0600) on first use, then read back. Whoever holds
/// it can confirm a guess of a file put convergently with it.
pub fn convergence_secret(dir: &Path) -> std::io::Result<[u8; 32]> {
    let path = dir.join(CONVERGENCE_FILE);
    match fs::read(&path) {
        Ok(bytes) => bytes.try_into().map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} is not a 32-byte secret", path.display()),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let secret: [u8; 32] = rand::random();
            write_private(&path, &secret)?;
            Ok(secret)
        }
        Err(e) => Err(e),
    }
}

/// Writes a secret file: created with mode 0600, fsynced, then renamed into place.
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    write_atomic(path, data, 0o600)
}

fn write_atomic(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = opts.open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cert_yields_the_key_id() {
        let ident = Identity::generate().unwrap();
        assert_eq!(
            node_id_from_cert(ident.certificate()).unwrap(),
            ident.node_id()
        );
        assert!(matches!(
            node_id_from_cert(&CertificateDer::from(vec![1u8, 2, 3])),
            Err(CertIdentityError::Malformed)
        ));
    }

    #[test]
    fn non_ed25519_cert_is_rejected() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["x".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        assert!(matches!(
            node_id_from_cert(cert.der()),
            Err(CertIdentityError::NotEd25519)
        ));
    }

    #[test]
    fn identity_persists_with_private_key_mode() {
        let dir = tempfile::tempdir().unwrap();
        let a = Identity::load_or_create(dir.path()).unwrap();
        let b = Identity::load_or_create(dir.path()).unwrap();
        assert_eq!(a.node_id(), b.node_id());
        assert_eq!(a.certificate(), b.certificate());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // A lost certificate is re-made from the kept key, with the same id.
        fs::remove_file(dir.path().join(CERT_FILE)).unwrap();
        let c = Identity::load_or_create(dir.path()).unwrap();
        assert_eq!(c.node_id(), a.node_id());
    }

    #[test]
    fn network_certificate_keeps_the_id_and_carries_the_proof() {
        let net = NetworkKey::generate().unwrap();
        let plain = Identity::generate().unwrap();
        let member = plain.for_network(&net).unwrap();
        assert_eq!(member.node_id(), plain.node_id());
        assert_eq!(
            node_id_from_cert(member.certificate()).unwrap(),
            plain.node_id()
        );
        assert_ne!(member.certificate(), plain.certificate());
        net.check_member(member.certificate()).unwrap();
        assert!(net.check_member(plain.certificate()).is_err());
    }

    #[test]
    fn garbage_key_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(KEY_FILE), "not a key").unwrap();
        let err = Identity::load_or_create(dir.path()).unwrap_err();
        assert!(matches!(err, IdentityError::BadKey { .. }), "{err}");
    }
}
