//! The serving certificate: read from files, and re-read when they change (cert-manager
//! rotation), without a restart.

use reports_server::tls::CertificatePem;
use reports_test_support::pki::{CertAndKey, TestCa};

use crate::harness::TestServer;

fn write(dir: &std::path::Path, pair: &CertAndKey) {
    std::fs::write(dir.join("tls.crt"), &pair.cert_pem).unwrap();
    std::fs::write(dir.join("tls.key"), &pair.key_pem).unwrap();
}

/// A fresh client (no pooled connection) trusting only `ca`; true when `/livez` answers.
async fn reachable_trusting(t: &TestServer, ca: &TestCa) -> bool {
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    client.get(t.url("/livez")).send().await.is_ok_and(|r| r.status() == 200)
}

#[tokio::test]
async fn a_renewed_certificate_is_served_from_the_next_connection_on() {
    let files = tempfile::tempdir().unwrap();
    let (old_ca, new_ca) = (TestCa::new("old CA"), TestCa::new("new CA"));
    let old = old_ca.serving(&["127.0.0.1", "localhost"]);
    let new = new_ca.serving(&["127.0.0.1", "localhost"]);
    write(files.path(), &old);
    let (cert, key) = (files.path().join("tls.crt"), files.path().join("tls.key"));
    let certificate = CertificatePem::from_files(&cert, &key).unwrap();
    let t = TestServer::start_with(move |config| config.certificate = certificate).await;
    assert!(reachable_trusting(&t, &old_ca).await);
    assert!(!reachable_trusting(&t, &new_ca).await);

    // Half-way through a renewal (new certificate, old key) nothing changes.
    std::fs::write(&cert, &new.cert_pem).unwrap();
    assert!(reachable_trusting(&t, &old_ca).await, "a mismatched pair is not loaded");
    assert!(!reachable_trusting(&t, &new_ca).await);

    // Once both files are new, the next connection gets the new certificate.
    std::fs::write(&key, &new.key_pem).unwrap();
    assert!(reachable_trusting(&t, &new_ca).await, "renewed certificate served");
    assert!(!reachable_trusting(&t, &old_ca).await);
}
