//! rustls configuration for quic-peer: mutual TLS 1.3 with self-signed Ed25519
//! certificates, NodeId pinning through the server name, ALPN `quic-peer/1`.
//!
//! There is no certificate authority. A certificate is accepted when
//! 1. it is a single certificate (no chain) whose key is Ed25519,
//! 2. the peer proves it holds that key: rustls's `verify_tls13_signature` checks
//!    the handshake signature with the ring provider's algorithms, and only the
//!    Ed25519 scheme is offered or accepted, and
//! 3. when the dialer pinned an id (`ID@host:port`, carried as the TLS server
//!    name), the id derived from the key is that id.
//!
//! Dates in the certificate are ignored: identity is the key, not the paper.
//! Presenting someone else's certificate does not work, because the handshake
//! signature cannot be made without their private key (tested below).
//!
//! One crypto provider (ring) is used explicitly for every config, so rcgen and
//! quinn cannot pull in a second one. 0-RTT is off.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::identity::{node_id_from_cert, Identity, NodeId};
use crate::wire::ALPN;

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

fn cert_error(msg: impl Into<String>) -> rustls::Error {
    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct Msg(String);
    rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(Msg(
        msg.into(),
    )))))
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
        check_cert(end_entity, intermediates)?;
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

/// The rustls client (dialing) configuration for `identity`.
pub fn client_config(identity: &Identity) -> Result<rustls::ClientConfig, TlsConfigError> {
    let provider = provider();
    let algs = algorithms(&provider);
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PeerServerVerifier { algs }))
        .with_client_auth_cert(vec![identity.certificate().clone()], identity.private_key())?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    cfg.enable_early_data = false;
    Ok(cfg)
}

/// The rustls server (accepting) configuration for `identity`.
pub fn server_config(identity: &Identity) -> Result<rustls::ServerConfig, TlsConfigError> {
    let provider = provider();
    let algs = algorithms(&provider);
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(PeerClientVerifier { algs }))
        .with_single_cert(vec![identity.certificate().clone()], identity.private_key())?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    cfg.max_early_data_size = 0;
    Ok(cfg)
}

/// quinn's crypto configs built from [`client_config`] and [`server_config`].
pub fn quic_configs(
    identity: &Identity,
) -> Result<
    (
        Arc<quinn::crypto::rustls::QuicClientConfig>,
        Arc<quinn::crypto::rustls::QuicServerConfig>,
    ),
    TlsConfigError,
> {
    let client = quinn::crypto::rustls::QuicClientConfig::try_from(client_config(identity)?)?;
    let server = quinn::crypto::rustls::QuicServerConfig::try_from(server_config(identity)?)?;
    Ok((Arc::new(client), Arc::new(server)))
}

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
        let cc = || client_config(&a).unwrap();
        let sc = || server_config(&b).unwrap();
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
            .with_client_cert_verifier(Arc::new(PeerClientVerifier { algs }))
            .with_cert_resolver(Arc::new(Forged(Arc::new(rustls::sign::CertifiedKey::new(
                vec![victim.certificate().clone()],
                provider
                    .key_provider
                    .load_private_key(thief.private_key())
                    .unwrap(),
            )))));
        forged.alpn_protocols = vec![ALPN.to_vec()];
        let err = handshake(
            client_config(&honest).unwrap(),
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
        let mut forged_client = client_config(&thief).unwrap();
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
            server_config(&honest).unwrap(),
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
        assert!(handshake(client_config(&a).unwrap(), server, UNPINNED_SERVER_NAME).is_err());
    }
}
