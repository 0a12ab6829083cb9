//! The TLS side of client certificates: ask for one, require none, and prove possession.
//!
//! kube-apiserver's front proxy, Prometheus and kubectl may each present a client certificate,
//! and a client without one (a bearer token, a health probe) must still get through, so the
//! server *requests* a certificate and does not require it. Which CA a certificate must chain to
//! depends on what it will be trusted for and changes when the cluster rotates its CAs, so chain
//! verification is left to [`crate::authenticate`], per request, against the bundles in force.
//! The handshake still checks the client's signature with the certificate's key, so a client
//! cannot present a certificate it does not hold.
//!
//! No CA names are sent as hints: Go's TLS client (kube-apiserver's aggregator) sends no
//! certificate at all when none of its certificates matches the hints, and the hints would have
//! to follow every rotation.

use std::sync::Arc;

use rustls::{
    client::danger::HandshakeSignatureValid,
    crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider},
    pki_types::{CertificateDer, UnixTime},
    server::danger::{ClientCertVerified, ClientCertVerifier},
    DigitallySignedStruct, DistinguishedName, SignatureScheme,
};

/// Requests an optional client certificate and checks only that the client holds its key.
#[derive(Debug)]
pub struct OptionalClientCertificate {
    /// Signature algorithms for the proof of possession.
    provider: Arc<CryptoProvider>,
}

impl OptionalClientCertificate {
    /// A verifier using `provider`'s signature algorithms.
    pub fn new(provider: Arc<CryptoProvider>) -> Self {
        Self { provider }
    }
}

impl ClientCertVerifier for OptionalClientCertificate {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // The chain is verified per request, against the CA the certificate is used for.
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
