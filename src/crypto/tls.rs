//! rustls configuration for quic-peer: mutual TLS 1.3 with self-signed Ed25519
//! certificates, NodeId pinning through the server name, ALPN `quic-peer/1`.
//!
//! There is no certificate authority. A certificate is accepted when
//! 1. it is a single certificate (no chain) whose key is Ed25519,
//! 2. the peer proves it holds that key: rustls's `verify_tls13_signature` checks
//!    the handshake signature with the ring provider's algorithms, and only the
//!    Ed25519 scheme is offered or accepted, and
//! 3. when the dialer pinned an id (`ID@host:port`, carried as the TLS server
//!    name), the id derived from the key is that id,
//! 4. in a private network ([`PeerPolicy::network`]), the certificate carries a
//!    membership proof made with the network key for its own key
//!    ([`crate::crypto::netkey`]), and
//! 5. with an allow list ([`PeerPolicy::allow`]), the id is on it.
//!
//! Both sides run the same checks, so a refused peer fails inside the handshake
//! whichever side dialed, before any application data. The refusing side's
//! error names the reason ("peer … is not a member of this private network",
//! "… is not on this node's allow list"); QUIC carries that text to the refused
//! side in its CONNECTION_CLOSE, and [`Refusal::of`] recognizes it there.
//!
//! Dates in the certificate are ignored: identity is the key, not the paper.
//! Presenting someone else's certificate does not work, because the handshake
//! signature cannot be made without their private key (tested below).
//!
//! One crypto provider (ring) is used explicitly for every config, so rcgen and
//! quinn cannot pull in a second one. 0-RTT is off.

use std::collections::HashSet;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::crypto::identity::{node_id_from_cert, Identity};
use crate::crypto::netkey::NetworkKey;
use crate::proto::wire::ALPN;
use crate::proto::NodeId;

/// The server name used when the dialer does not know the peer's id.
pub const UNPINNED_SERVER_NAME: &str = "unpinned.quic-peer";

/// The TLS server name that pins `id`.
pub fn server_name_for(id: Option<NodeId>) -> String {
    match id {
        Some(id) => id.to_string(),
        None => UNPINNED_SERVER_NAME.to_string(),
    }
}

/// The certificate had a different id than the one the dialer pinned.
#[derive(Debug, thiserror::Error)]
#[error("peer id mismatch: dialed {expected} but the peer's key is {actual}")]
pub struct PinMismatch {
    /// The id the dialer asked for.
    pub expected: NodeId,
    /// The id the peer proved.
    pub actual: NodeId,
}

/// Who may connect, beyond holding the key of the certificate they present.
/// The default admits every node.
#[derive(Debug, Clone, Default)]
pub struct PeerPolicy {
    /// Admit only members of this private network.
    pub network: Option<NetworkKey>,
    /// Admit only these ids.
    pub allow: Option<HashSet<NodeId>>,
}

/// What the refusing side's verifier error says, and what the refused side
/// looks for in the close reason.
const NOT_MEMBER: &str = "is not a member of this private network";
const NOT_ALLOWED: &str = "is not on this node's allow list";

impl PeerPolicy {
    fn admit(&self, cert: &CertificateDer<'_>, id: NodeId) -> Result<(), rustls::Error> {
        if let Some(network) = &self.network {
            network
                .check_member(cert)
                .map_err(|why| refusal_error(format!("peer {id} {NOT_MEMBER}: {why}")))?;
        }
        if self.allow.as_ref().is_some_and(|a| !a.contains(&id)) {
            return Err(refusal_error(format!("peer {id} {NOT_ALLOWED}")));
        }
        Ok(())
    }
}

/// Why a peer's verifier refused this node, as told by its close reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// This node is not in the peer's private network.
    #[error(
        "this node is not a member of the peer's private network (wrong or missing --network-key)"
    )]
    NotMember,
    /// The peer has an allow list without this node's id.
    #[error("this node is not on the peer's allow list")]
    NotAllowed,
}

impl Refusal {
    /// The refusal in a connection the peer closed during the handshake, if
    /// that is why it closed. (A local refusal is the verifier's own error.)
    pub fn of(err: &quinn::ConnectionError) -> Option<Refusal> {
        let quinn::ConnectionError::ConnectionClosed(close) = err else {
            return None;
        };
        // TLS alerts travel as CRYPTO_ERROR codes 0x100-0x1ff.
        if !(0x100..0x200).contains(&u64::from(close.error_code)) {
            return None;
        }
        let reason = String::from_utf8_lossy(&close.reason);
        if reason.contains(NOT_MEMBER) {
            Some(Refusal::NotMember)
        } else if reason.contains(NOT_ALLOWED) {
            Some(Refusal::NotAllowed)
        } else {
            None
        }
    }
}

/// Errors building a TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    /// rustls refused the configuration or the key.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// quinn refused the rustls configuration.
    #[error("QUIC crypto configuration: {0}")]
    Quic(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Only Ed25519: the one scheme our keys use.
fn algorithms(provider: &CryptoProvider) -> WebPkiSupportedAlgorithms {
    let all = provider.signature_verification_algorithms;
    let ed25519 = all
        .mapping
        .iter()
        .find(|(scheme, _)| *scheme == SignatureScheme::ED25519)
        .map(std::slice::from_ref)
        .unwrap_or(&[]);
    WebPkiSupportedAlgorithms {
        all: all.all,
        mapping: ed25519,
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Msg(String);

fn cert_error(msg: impl Into<String>) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(Msg(
        msg.into(),
    )))))
}

/// A policy refusal. `Error::Other` displays its message as is ("other error:
/// …"), where a certificate error would show its debug form; this text is also
/// the close reason the refused peer reads.
fn refusal_error(msg: String) -> rustls::Error {
    rustls::Error::Other(rustls::OtherError(Arc::new(Msg(msg))))
}

/// Checks the certificate shape and returns the id it proves (once the handshake
/// signature is checked).
fn check_cert(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
) -> Result<NodeId, rustls::Error> {
    if !intermediates.is_empty() {
        return Err(cert_error("certificate chains are not accepted"));
    }
    node_id_from_cert(end_entity).map_err(|e| cert_error(e.to_string()))
}

fn verify_signature(
    algs: &WebPkiSupportedAlgorithms,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    if dss.scheme != SignatureScheme::ED25519 {
        return Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::NoSignatureSchemesInCommon,
        ));
    }
    rustls::crypto::verify_tls13_signature(message, cert, dss, algs)
}

/// Verifies the server's certificate on the dialing side.
#[derive(Debug)]
struct PeerServerVerifier {
    algs: WebPkiSupportedAlgorithms,
    policy: PeerPolicy,
}

impl ServerCertVerifier for PeerServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let actual = check_cert(end_entity, intermediates)?;
        if let ServerName::DnsName(name) = server_name {
            if let Ok(expected) = name.as_ref().parse::<NodeId>() {
                if expected != actual {
                    return Err(cert_error(PinMismatch { expected, actual }.to_string()));
                }
            }
        }
        self.policy.admit(end_entity, actual)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_signature(&self.algs, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// Verifies the client's certificate on the accepting side.
#[derive(Debug)]
struct PeerClientVerifier {
    algs: WebPkiSupportedAlgorithms,
    policy: PeerPolicy,
}

impl ClientCertVerifier for PeerClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let id = check_cert(end_entity, intermediates)?;
        self.policy.admit(end_entity, id)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_signature(&self.algs, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }
}

/// The rustls client (dialing) configuration for `identity`, admitting the
/// servers `policy` admits. In a private network `identity` must carry the
/// membership proof ([`Identity::for_network`]).
pub fn client_config(
    identity: &Identity,
    policy: &PeerPolicy,
) -> Result<rustls::ClientConfig, TlsConfigError> {
    let provider = provider();
    let algs = algorithms(&provider);
    let verifier = PeerServerVerifier {
        algs,
        policy: policy.clone(),
    };
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(vec![identity.certificate().clone()], identity.private_key())?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    cfg.enable_early_data = false;
    Ok(cfg)
}

/// The rustls server (accepting) configuration for `identity`, admitting the
/// clients `policy` admits.
pub fn server_config(
    identity: &Identity,
    policy: &PeerPolicy,
) -> Result<rustls::ServerConfig, TlsConfigError> {
    let provider = provider();
    let algs = algorithms(&provider);
    let verifier = PeerClientVerifier {
        algs,
        policy: policy.clone(),
    };
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(vec![identity.certificate().clone()], identity.private_key())?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    cfg.max_early_data_size = 0;
    Ok(cfg)
}

/// quinn's crypto configs for an open network (every node admitted).
pub fn quic_configs(identity: &Identity) -> Result<QuicConfigs, TlsConfigError> {
    quic_configs_with(identity, &PeerPolicy::default())
}

/// quinn's crypto configs built from [`client_config`] and [`server_config`].
pub fn quic_configs_with(
    identity: &Identity,
    policy: &PeerPolicy,
) -> Result<QuicConfigs, TlsConfigError> {
    let client = client_config(identity, policy)?;
    let server = server_config(identity, policy)?;
    let client = quinn::crypto::rustls::QuicClientConfig::try_from(client)?;
    let server = quinn::crypto::rustls::QuicServerConfig::try_from(server)?;
    Ok((Arc::new(client), Arc::new(server)))
}

/// The dialing and accepting crypto configs of a node.
pub type QuicConfigs = (
    Arc<quinn::crypto::rustls::QuicClientConfig>,
    Arc<quinn::crypto::rustls::QuicServerConfig>,
);

/// The id proven by the peer of an established connection.
pub fn peer_node_id(conn: &quinn::Connection) -> Option<NodeId> {
    let identity = conn.peer_identity()?;
    let certs = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    node_id_from_cert(certs.first()?).ok()
}

#[cfg(test)]
mod tests {
    //! Handshakes in memory with rustls alone (no sockets), to pin down exactly
    //! what the verifiers accept.
    use super::*;

    fn open() -> PeerPolicy {
        PeerPolicy::default()
    }

    fn handshake(
        client: rustls::ClientConfig,
        server: rustls::ServerConfig,
        name: &str,
    ) -> Result<(), rustls::Error> {
        let name = ServerName::try_from(name.to_string()).unwrap();
        let mut c = rustls::ClientConnection::new(Arc::new(client), name)?;
        let mut s = rustls::ServerConnection::new(Arc::new(server))?;
        for _ in 0..10 {
            let mut buf = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut buf).unwrap();
            }
            let mut rd = &buf[..];
            while !rd.is_empty() {
                s.read_tls(&mut rd).unwrap();
            }
            s.process_new_packets()?;
            let mut buf = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut buf).unwrap();
            }
            let mut rd = &buf[..];
            while !rd.is_empty() {
                c.read_tls(&mut rd).unwrap();
            }
            c.process_new_packets()?;
            if !c.is_handshaking() && !s.is_handshaking() {
                return Ok(());
            }
        }
        Err(rustls::Error::General("handshake did not finish".into()))
    }

    #[test]
    fn mutual_handshake_with_and_without_pin() {
        let a = Identity::generate().unwrap();
        let b = Identity::generate().unwrap();
        let cc = || client_config(&a, &open()).unwrap();
        let sc = || server_config(&b, &open()).unwrap();
        handshake(cc(), sc(), UNPINNED_SERVER_NAME).unwrap();
        handshake(cc(), sc(), &server_name_for(Some(b.node_id()))).unwrap();
        let err = handshake(cc(), sc(), &server_name_for(Some(a.node_id()))).unwrap_err();
        assert!(err.to_string().contains("peer id mismatch"), "{err}");
    }

    /// An impostor that presents the victim's certificate but holds another key
    /// cannot complete the handshake, in either direction.
    #[test]
    fn stolen_certificate_is_refused() {
        let victim = Identity::generate().unwrap();
        let thief = Identity::generate().unwrap();
        let honest = Identity::generate().unwrap();
        let provider = provider();
        let algs = algorithms(&provider);

        // As a server: the victim's certificate with the thief's key.
        let mut forged = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_client_cert_verifier(Arc::new(PeerClientVerifier {
                algs,
                policy: open(),
            }))
            .with_cert_resolver(Arc::new(Forged(Arc::new(rustls::sign::CertifiedKey::new(
                vec![victim.certificate().clone()],
                provider
                    .key_provider
                    .load_private_key(thief.private_key())
                    .unwrap(),
            )))));
        forged.alpn_protocols = vec![ALPN.to_vec()];
        let err = handshake(
            client_config(&honest, &open()).unwrap(),
            forged,
            &server_name_for(Some(victim.node_id())),
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                rustls::Error::InvalidCertificate(CertificateError::BadSignature)
            ),
            "{err:?}"
        );

        // As a client: rustls itself refuses a key that does not match the
        // certificate, and the server checks the signature regardless.
        let mut forged_client = client_config(&thief, &open()).unwrap();
        forged_client.client_auth_cert_resolver =
            Arc::new(Forged(Arc::new(rustls::sign::CertifiedKey::new(
                vec![victim.certificate().clone()],
                provider
                    .key_provider
                    .load_private_key(thief.private_key())
                    .unwrap(),
            ))));
        assert!(handshake(
            forged_client,
            server_config(&honest, &open()).unwrap(),
            UNPINNED_SERVER_NAME
        )
        .is_err());
    }

    #[derive(Debug)]
    struct Forged(Arc<rustls::sign::CertifiedKey>);

    impl rustls::server::ResolvesServerCert for Forged {
        fn resolve(
            &self,
            _hello: rustls::server::ClientHello<'_>,
        ) -> Option<Arc<rustls::sign::CertifiedKey>> {
            Some(self.0.clone())
        }
    }

    impl rustls::client::ResolvesClientCert for Forged {
        fn resolve(
            &self,
            _hints: &[&[u8]],
            _schemes: &[SignatureScheme],
        ) -> Option<Arc<rustls::sign::CertifiedKey>> {
            Some(self.0.clone())
        }

        fn has_certs(&self) -> bool {
            true
        }
    }

    /// A node in `network` (or outside any) with the matching policy.
    fn member(network: Option<&NetworkKey>) -> (Identity, PeerPolicy) {
        let plain = Identity::generate().unwrap();
        let identity = match network {
            Some(n) => plain.for_network(n).unwrap(),
            None => plain,
        };
        let policy = PeerPolicy {
            network: network.cloned(),
            allow: None,
        };
        (identity, policy)
    }

    /// Handshake from `a` (client) to `b` (server).
    fn dial(a: &(Identity, PeerPolicy), b: &(Identity, PeerPolicy)) -> Result<(), rustls::Error> {
        handshake(
            client_config(&a.0, &a.1).unwrap(),
            server_config(&b.0, &b.1).unwrap(),
            &server_name_for(Some(b.0.node_id())),
        )
    }

    fn assert_refused(result: Result<(), rustls::Error>, why: &str) {
        let err = result.expect_err("handshake should be refused").to_string();
        assert!(err.contains(NOT_MEMBER), "{err}");
        assert!(err.contains(why), "{err}");
    }

    #[test]
    fn members_of_one_network_handshake() {
        let net = NetworkKey::generate().unwrap();
        let (a, b) = (member(Some(&net)), member(Some(&net)));
        dial(&a, &b).unwrap();
        dial(&b, &a).unwrap();
        net.check_member(a.0.certificate()).unwrap();
    }

    #[test]
    fn wrong_network_key_is_refused() {
        let (n1, n2) = (
            NetworkKey::generate().unwrap(),
            NetworkKey::generate().unwrap(),
        );
        let (a, b) = (member(Some(&n1)), member(Some(&n2)));
        // The dialer refuses the server first, in both directions.
        assert_refused(dial(&a, &b), "different network key");
        assert_refused(dial(&b, &a), "different network key");
        // A server refuses a client that carries another network's proof even
        // when the client itself does not check.
        let lax = (b.0.clone(), PeerPolicy::default());
        assert_refused(dial(&lax, &a), "different network key");
        assert_eq!(
            n1.check_member(b.0.certificate()),
            Err(crate::crypto::netkey::MembershipError::OtherNetwork)
        );
    }

    #[test]
    fn missing_membership_extension_is_refused() {
        let net = NetworkKey::generate().unwrap();
        let (inside, outside) = (member(Some(&net)), member(None));
        // An outsider dialing a member: the member (server) refuses it.
        assert_refused(dial(&outside, &inside), "no membership proof");
        // A member dialing an outsider refuses the server.
        assert_refused(dial(&inside, &outside), "no membership proof");
        // A member's policy with a certificate lacking the proof is refused too.
        let unproven = (outside.0.clone(), inside.1.clone());
        assert_refused(dial(&unproven, &inside), "no membership proof");
    }

    /// The extension of a member, copied into another certificate, does not
    /// make its holder a member: the signature covers the member's key.
    #[test]
    fn copied_membership_extension_is_refused() {
        let net = NetworkKey::generate().unwrap();
        let victim = member(Some(&net));
        let copied = crate::crypto::netkey::membership_proof(victim.0.certificate())
            .unwrap()
            .to_vec();
        let thief = Identity::generate()
            .unwrap()
            .with_membership_proof(copied)
            .unwrap();
        assert_eq!(
            net.check_member(thief.certificate()),
            Err(crate::crypto::netkey::MembershipError::BadSignature)
        );
        let thief = (thief, victim.1.clone());
        let other = member(Some(&net));
        assert_refused(dial(&thief, &other), "does not match its key");
        assert_refused(dial(&other, &thief), "does not match its key");
        // Garbage in the extension is refused as malformed.
        let junk = Identity::generate()
            .unwrap()
            .with_membership_proof(vec![0x04, 0x00])
            .unwrap();
        assert_refused(dial(&(junk, victim.1.clone()), &other), "malformed");
    }

    #[test]
    fn allow_list_admits_listed_ids_only() {
        let (a, b, c) = (member(None), member(None), member(None));
        let allow = |ids: &[&(Identity, PeerPolicy)]| PeerPolicy {
            network: None,
            allow: Some(ids.iter().map(|m| m.0.node_id()).collect()),
        };
        // b accepts a, not c.
        let b_strict = (b.0.clone(), allow(&[&a]));
        dial(&a, &b_strict).unwrap();
        let err = dial(&c, &b_strict).unwrap_err().to_string();
        assert!(err.contains(NOT_ALLOWED), "{err}");
        assert!(err.contains(&c.0.node_id().to_string()), "{err}");
        // a dials only b.
        let a_strict = (a.0.clone(), allow(&[&b]));
        dial(&a_strict, &b).unwrap();
        let err = dial(&a_strict, &c).unwrap_err().to_string();
        assert!(err.contains(NOT_ALLOWED), "{err}");
        // An empty list admits nobody.
        let nobody = (a.0.clone(), allow(&[]));
        assert!(dial(&nobody, &b).is_err() && dial(&b, &nobody).is_err());
    }

    #[test]
    fn refusal_is_recognized_in_the_close_reason() {
        use quinn::TransportErrorCode as Code;
        let closed = |error_code: Code, reason: &str| {
            quinn::ConnectionError::ConnectionClosed(quinn::ConnectionClose {
                error_code,
                frame_type: None,
                reason: bytes::Bytes::copy_from_slice(reason.as_bytes()),
            })
        };
        let member_reason = format!("invalid peer certificate: peer x {NOT_MEMBER}: y");
        assert_eq!(
            Refusal::of(&closed(Code::crypto(46), &member_reason)),
            Some(Refusal::NotMember)
        );
        let allow_reason = format!("peer x {NOT_ALLOWED}");
        assert_eq!(
            Refusal::of(&closed(Code::crypto(46), &allow_reason)),
            Some(Refusal::NotAllowed)
        );
        // Not a TLS alert, or another reason: not a refusal.
        assert_eq!(
            Refusal::of(&closed(Code::PROTOCOL_VIOLATION, &member_reason)),
            None
        );
        assert_eq!(
            Refusal::of(&closed(Code::crypto(46), "bad certificate")),
            None
        );
        assert_eq!(Refusal::of(&quinn::ConnectionError::TimedOut), None);
    }

    #[test]
    fn non_ed25519_peer_is_refused() {
        let a = Identity::generate().unwrap();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["x".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let mut server = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        server.alpn_protocols = vec![ALPN.to_vec()];
        assert!(handshake(
            client_config(&a, &open()).unwrap(),
            server,
            UNPINNED_SERVER_NAME
        )
        .is_err());
    }
}
