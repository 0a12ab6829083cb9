//! Certificates made at test time: CAs, serving certificates, client certificates (also expired
//! or without the client-auth usage), all in PEM.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
};

/// A certificate and its private key, in PEM.
#[derive(Clone, Debug)]
pub struct CertAndKey {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
}

impl CertAndKey {
    /// Certificate and key in one PEM text (what reqwest's `Identity::from_pem` reads).
    pub fn identity_pem(&self) -> String {
        format!("{}{}", self.cert_pem, self.key_pem)
    }
}

/// A certificate authority.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// What a leaf certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// TLS server (serving certificates).
    Server,
    /// TLS client.
    Client,
    /// TLS server only, presented as a client certificate (must be refused).
    ServerOnly,
}

impl TestCa {
    /// A new self-signed CA named `common_name`.
    pub fn new(common_name: &str) -> Self {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, common_name);
        Self { issuer: CertifiedIssuer::self_signed(params, key).expect("CA certificate") }
    }

    /// The CA certificate, what verifiers trust.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A serving certificate for `names` (DNS names or IP addresses).
    pub fn serving(&self, names: &[&str]) -> CertAndKey {
        self.leaf(names.iter().map(|n| n.to_string()).collect(), "server", &[], Usage::Server, false)
    }

    /// A client certificate naming user `common_name` in `organizations` (its groups; at most one,
    /// as rcgen keeps one value per attribute type).
    pub fn client(&self, common_name: &str, organizations: &[&str]) -> CertAndKey {
        self.leaf(Vec::new(), common_name, organizations, Usage::Client, false)
    }

    /// A client certificate that expired long ago.
    pub fn expired_client(&self, common_name: &str) -> CertAndKey {
        self.leaf(Vec::new(), common_name, &[], Usage::Client, true)
    }

    /// A certificate for `usage`, optionally expired.
    pub fn leaf(
        &self,
        names: Vec<String>,
        common_name: &str,
        organizations: &[&str],
        usage: Usage,
        expired: bool,
    ) -> CertAndKey {
        let key = KeyPair::generate().expect("leaf key");
        let mut params = CertificateParams::new(names).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, common_name);
        assert!(organizations.len() <= 1, "rcgen keeps one organization per certificate");
        for organization in organizations {
            params.distinguished_name.push(DnType::OrganizationName, *organization);
        }
        params.extended_key_usages = match usage {
            Usage::Server | Usage::ServerOnly => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        };
        if expired {
            params.not_before = rcgen::date_time_ymd(2001, 1, 1);
            params.not_after = rcgen::date_time_ymd(2002, 1, 1);
        }
        let cert = params.signed_by(&key, &self.issuer).expect("leaf certificate");
        CertAndKey { cert_pem: cert.pem(), key_pem: key.serialize_pem() }
    }
}
