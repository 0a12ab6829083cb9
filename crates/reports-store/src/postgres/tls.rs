//! TLS to PostgreSQL with libpq's `sslmode` semantics, on rustls (ring).

use std::sync::Arc;

use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider},
    pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer, ServerName, UnixTime},
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use super::settings::{PgSettings, SslMode};
use crate::error::{SettingError, StoreError, StoreResult};

/// Verifies less than rustls does by default: nothing about who answers (libpq's prefer and
/// require without a root certificate), or the chain against the roots but not the host name
/// (libpq's verify-ca). Handshake signatures are always checked.
#[derive(Debug)]
struct Relaxed {
    provider: Arc<CryptoProvider>,
    /// The chain verifier (verify-ca); None accepts any certificate.
    chain: Option<Arc<dyn ServerCertVerifier>>,
}

impl ServerCertVerifier for Relaxed {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else { return Ok(ServerCertVerified::assertion()) };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
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

/// The rustls client configuration for `mode`.
pub(super) fn connector(settings: &PgSettings, mode: SslMode) -> StoreResult<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::backend_caused("choosing TLS protocol versions", e))?;
    let roots = match &settings.ssl_root_cert {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(path)
                .map_err(|e| SettingError::Tls(format!("reading --dbsslrootcert {}: {e}", path.display())))?
            {
                let cert = cert.map_err(|e| {
                    SettingError::Tls(format!("reading --dbsslrootcert {}: {e}", path.display()))
                })?;
                roots
                    .add(cert)
                    .map_err(|e| SettingError::Tls(format!("--dbsslrootcert {}: {e}", path.display())))?;
            }
            Some(Arc::new(roots))
        }
        None => None,
    };
    let verify = match (mode, roots) {
        (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
            return Err(
                SettingError::Tls("sslmode verify-ca and verify-full need --dbsslrootcert".into()).into()
            )
        }
        (SslMode::VerifyFull, Some(roots)) => Some((roots, true)),
        // libpq: require with a root certificate behaves as verify-ca.
        (SslMode::VerifyCa | SslMode::Require, Some(roots)) => Some((roots, false)),
        _ => None,
    };
    let builder = match verify {
        None => {
            builder.dangerous().with_custom_certificate_verifier(Arc::new(Relaxed { provider, chain: None }))
        }
        Some((roots, check_name)) => {
            let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| SettingError::Tls(format!("--dbsslrootcert: {e}")))?;
            if check_name {
                builder.with_webpki_verifier(webpki)
            } else {
                let relaxed = Relaxed { provider, chain: Some(webpki) };
                builder.dangerous().with_custom_certificate_verifier(Arc::new(relaxed))
            }
        }
    };
    match (&settings.ssl_cert, &settings.ssl_key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| SettingError::Tls(format!("reading --dbsslcert {}: {e}", cert.display())))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| SettingError::Tls(format!("reading --dbsslkey {}: {e}", key.display())))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| SettingError::Tls(format!("--dbsslcert/--dbsslkey: {e}")).into())
        }
        (None, None) => Ok(builder.with_no_client_auth()),
        _ => Err(SettingError::Tls("--dbsslcert and --dbsslkey go together".into()).into()),
    }
}
