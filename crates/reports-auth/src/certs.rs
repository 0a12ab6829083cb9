//! Client certificates: does a chain verify against a CA bundle, and whom does it name?
//!
//! The TLS handshake only checks that the client holds the key of the certificate it presents
//! ([`crate::tls`]); which CA it chains to decides what it is trusted for, and that is decided here,
//! per request, against the bundles currently in force. Chains are verified for client
//! authentication (a certificate whose extended key usage excludes it is refused) at the current
//! time (an expired certificate is refused).

use std::sync::Arc;

use rustls::{
    pki_types::{pem::PemObject, CertificateDer, UnixTime},
    server::{danger::ClientCertVerifier, WebPkiClientVerifier},
    RootCertStore,
};

use crate::AuthError;

/// A CA bundle that client certificates are verified against.
#[derive(Clone)]
pub struct CaBundle {
    /// The PEM text, kept to tell a rotation from a re-send of the same bundle.
    pem: String,
    /// Verifies chains against the bundle's certificates.
    verifier: Arc<dyn ClientCertVerifier>,
}

impl std::fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaBundle").field("pem_bytes", &self.pem.len()).finish()
    }
}

impl PartialEq for CaBundle {
    fn eq(&self, other: &Self) -> bool {
        self.pem == other.pem
    }
}

impl CaBundle {
    /// Parses a PEM bundle of one or more CA certificates.
    pub fn from_pem(pem: &str) -> Result<Self, AuthError> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| AuthError::Config(format!("reading a CA bundle: {e}")))?;
        if certs.is_empty() {
            return Err(AuthError::Config("a CA bundle holds no certificate".into()));
        }
        let mut roots = RootCertStore::empty();
        for cert in certs {
            roots.add(cert).map_err(|e| AuthError::Config(format!("a CA certificate is not usable: {e}")))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| AuthError::Config(format!("building a verifier: {e}")))?;
        Ok(Self { pem: pem.to_string(), verifier })
    }

    /// Verifies `chain` (leaf first) for client authentication now; the reason when it does not.
    pub fn verify(&self, chain: &[CertificateDer<'_>]) -> Result<(), String> {
        let Some((leaf, intermediates)) = chain.split_first() else {
            return Err("no certificate".into());
        };
        self.verifier
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// The common name and organizations of a certificate's subject: a client certificate's user
/// name and groups.
pub fn subject_names(cert: &CertificateDer<'_>) -> Result<(String, Vec<String>), String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|e| e.to_string())?;
    let subject = parsed.subject();
    let common_name =
        subject.iter_common_name().next().and_then(|cn| cn.as_str().ok()).unwrap_or_default().to_string();
    let organizations =
        subject.iter_organization().filter_map(|o| o.as_str().ok()).map(str::to_string).collect();
    Ok((common_name, organizations))
}

/// True when a certificate names itself as its issuer (a CA root, or a self-signed serving
/// certificate, which is then its own CA bundle).
pub fn is_self_issued(cert: &CertificateDer<'_>) -> bool {
    x509_parser::parse_x509_certificate(cert.as_ref())
        .map(|(_, parsed)| parsed.subject().as_raw() == parsed.issuer().as_raw())
        .unwrap_or(false)
}
