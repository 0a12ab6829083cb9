//! TLS for the HTTPS listener: the configured certificate, or a self-signed one generated at
//! start-up for standalone use.
//!
//! A certificate read from files is re-read when the files change (cert-manager renews a
//! Secret, the kubelet updates the mounted files): each handshake looks at the files' size and
//! modification time, and a change loads the new pair for that handshake and every later one.
//! A pair that does not load (the certificate already replaced, the key not yet) is ignored and
//! the previous one keeps serving until the files agree again. No timer and no restart.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::SystemTime,
};

use anyhow::Context as _;
use rustls::{
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

/// Certificate material in PEM form.
#[derive(Clone)]
pub struct CertificatePem {
    /// The certificate chain, leaf first.
    pub cert_pem: String,
    /// The private key.
    pub key_pem: String,
    /// The files it was read from, re-read when they change (None: fixed).
    pub files: Option<(PathBuf, PathBuf)>,
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
            files: Some((cert.to_path_buf(), key.to_path_buf())),
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
        Ok(Self {
            cert_pem: certified.cert.pem(),
            key_pem: certified.signing_key.serialize_pem(),
            files: None,
        })
    }

    /// A rustls server configuration offering HTTP/2 and HTTP/1.1. With `client_certificates`,
    /// clients are asked for a certificate (not required; which CA it must chain to is decided
    /// per request by authentication).
    pub fn server_config(&self, client_certificates: bool) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certified = certified_key(&self.cert_pem, &self.key_pem, &provider)?;
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?;
        let builder = if client_certificates {
            builder.with_client_cert_verifier(Arc::new(reports_auth::tls::OptionalClientCertificate::new(
                provider.clone(),
            )))
        } else {
            builder.with_no_client_auth()
        };
        let resolver = ServingCertificate {
            current: Mutex::new(Arc::new(certified)),
            files: self.files.clone().map(|(cert, key)| Files {
                stamp: Mutex::new(stamp(&cert, &key)),
                cert,
                key,
            }),
            provider,
        };
        let mut config = builder.with_cert_resolver(Arc::new(resolver));
        // Without ALPN the aggregator silently falls back to HTTP/1.1.
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// A certificate and key checked to belong together.
fn certified_key(
    cert_pem: &str,
    key_pem: &str,
    provider: &rustls::crypto::CryptoProvider,
) -> anyhow::Result<CertifiedKey> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .context("parsing the serving certificate")?;
    anyhow::ensure!(!chain.is_empty(), "the serving certificate file holds no certificate");
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).context("parsing the private key")?;
    let certified =
        CertifiedKey::from_der(chain, key, provider).context("the certificate does not match the key")?;
    Ok(certified)
}

/// What the files looked like when last loaded: size and modification time of each.
type Stamp = Option<[(u64, SystemTime); 2]>;

fn stamp(cert: &Path, key: &Path) -> Stamp {
    let one = |path: &Path| std::fs::metadata(path).ok().and_then(|m| Some((m.len(), m.modified().ok()?)));
    Some([one(cert)?, one(key)?])
}

/// The files a certificate is re-read from.
struct Files {
    cert: PathBuf,
    key: PathBuf,
    /// Their state when the serving pair was last loaded (or last found unloadable).
    stamp: Mutex<Stamp>,
}

/// Serves the current certificate, reloading it from its files when they change.
struct ServingCertificate {
    /// The pair every handshake presents.
    current: Mutex<Arc<CertifiedKey>>,
    /// Where it comes from, when it can change.
    files: Option<Files>,
    /// Key loading for reloads.
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl std::fmt::Debug for ServingCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCertificate").finish_non_exhaustive()
    }
}

impl ServingCertificate {
    fn reload_if_changed(&self, files: &Files) {
        let now = stamp(&files.cert, &files.key);
        {
            let mut seen = files.stamp.lock().unwrap_or_else(|e| e.into_inner());
            if *seen == now || now.is_none() {
                return;
            }
            *seen = now;
        }
        let loaded = std::fs::read_to_string(&files.cert)
            .and_then(|cert| Ok((cert, std::fs::read_to_string(&files.key)?)))
            .map_err(anyhow::Error::from)
            .and_then(|(cert, key)| certified_key(&cert, &key, &self.provider));
        match loaded {
            Ok(pair) => {
                *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(pair);
                tracing::info!(certificate = %files.cert.display(), "serving certificate reloaded");
            }
            Err(e) => tracing::warn!(
                certificate = %files.cert.display(),
                error = %format!("{e:#}"),
                "the serving certificate files changed but do not load; still serving the previous one"
            ),
        }
    }
}

impl ResolvesServerCert for ServingCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let Some(files) = &self.files {
            self.reload_if_changed(files);
        }
        Some(self.current.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }
}
