//! A minimal HTTPS server for the fakes: an axum router behind rustls on a free loopback port.

use std::sync::Arc;

use axum::Router;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use tokio::{net::TcpListener, sync::oneshot};
use tokio_rustls::TlsAcceptor;

use crate::pki::CertAndKey;

/// Serves `router` over TLS with `certificate` until the returned sender is used or dropped.
/// Returns the base URL (`https://127.0.0.1:PORT`).
pub async fn serve_router(router: Router, certificate: &CertAndKey) -> (String, oneshot::Sender<()>) {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(certificate.cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("serving certificate");
    let key = PrivateKeyDer::from_pem_slice(certificate.key_pem.as_bytes()).expect("serving key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("certificate and key");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding a loopback port");
    let url = format!("https://127.0.0.1:{}", listener.local_addr().expect("bound address").port());
    let (stop, mut stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        loop {
            let tcp = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((tcp, _)) => tcp,
                    Err(_) => continue,
                },
                _ = &mut stopped => break,
            };
            let acceptor = acceptor.clone();
            let service = TowerToHyperService::new(router.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (url, stop)
}
