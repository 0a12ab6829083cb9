//! TLS for the HTTPS listener: the configured certificate, or a self-signed one generated at
//! start-up for standalone use.

use std::{path::Path, sync::Arc};

use anyhow::Context as _;
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};

/// Certificate material in PEM form.
#[derive(Clone)]
pub struct CertificatePem {
    /// The certificate chain, leaf first.
    pub cert_pem: String,
    /// The private key.
    pub key_pem: String,
}

impl std::fmt::Debug for CertificatePem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificatePem").field("key_pem", &"<redacted>").finish_non_exhaustive()
    }
}

impl CertificatePem {
    /// Reads a certificate and key from PEM files.
    pub fn from_files(cert: &Path, key: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            cert_pem: std::fs::read_to_string(cert).with_context(|| format!("reading {}", cert.display()))?,
            key_pem: std::fs::read_to_string(key).with_context(|| format!("reading {}", key.display()))?,
        })
    }

    /// A self-signed serving certificate for loopback names.
    pub fn self_signed() -> anyhow::Result<Self> {
        Self::self_signed_for(&["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()])
    }

    /// A self-signed serving certificate for `names` (DNS names or IP addresses). Being its own
    /// CA, it is also the caBundle of the APIServices that point at it.
    pub fn self_signed_for(names: &[String]) -> anyhow::Result<Self> {
        let names = names.to_vec();
        let certified =
            rcgen::generate_simple_self_signed(names).context("generating a self-signed certificate")?;
        Ok(Self { cert_pem: certified.cert.pem(), key_pem: certified.signing_key.serialize_pem() })
    }

    /// A rustls server configuration offering HTTP/2 and HTTP/1.1. With `client_certificates`,
    /// clients are asked for a certificate (not required; which CA it must chain to is decided
    /// per request by authentication).
    pub fn server_config(&self, client_certificates: bool) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .context("parsing the serving certificate")?;
        anyhow::ensure!(!chain.is_empty(), "the serving certificate file holds no certificate");
        let key =
            PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).context("parsing the private key")?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?;
        let builder = if client_certificates {
            builder.with_client_cert_verifier(Arc::new(reports_auth::tls::OptionalClientCertificate::new(
                provider,
            )))
        } else {
            builder.with_no_client_auth()
        };
        let mut config =
            builder.with_single_cert(chain, key).context("the certificate does not match the key")?;
        // Without ALPN the aggregator silently falls back to HTTP/1.1.
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}
