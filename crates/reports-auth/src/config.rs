//! The client-authentication settings in force: CA bundles, allowed proxy names, header names.
//!
//! kube-apiserver publishes them in the ConfigMap `kube-system/extension-apiserver-authentication`
//! (keys below); the k8s.io/apiserver flags of the same names override them, bundle by bundle,
//! as k8s.io/apiserver does: a `--client-ca-file` replaces the ConfigMap's client CA, a
//! `--requestheader-client-ca-file` replaces the whole request-header part.

use std::{collections::BTreeMap, path::PathBuf};

use crate::{certs::CaBundle, AuthError};

/// Namespace of the ConfigMap kube-apiserver publishes.
pub const CONFIGMAP_NAMESPACE: &str = "kube-system";
/// Name of the ConfigMap kube-apiserver publishes.
pub const CONFIGMAP_NAME: &str = "extension-apiserver-authentication";

/// Who may act as the front proxy, and which headers carry the identity it forwards.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestHeaderConfig {
    /// The CA that signs the front proxy's client certificate.
    pub ca: CaBundle,
    /// Common names the front proxy's certificate may have; empty allows any name the CA signed.
    pub allowed_names: Vec<String>,
    /// Headers holding the user name, tried in order (lower case).
    pub username_headers: Vec<String>,
    /// Headers holding the user's uid, tried in order (lower case).
    pub uid_headers: Vec<String>,
    /// Headers holding groups, all values of all of them (lower case).
    pub group_headers: Vec<String>,
    /// Prefixes of headers holding extra attributes (lower case).
    pub extra_header_prefixes: Vec<String>,
}

/// Everything client authentication needs to decide who a caller is.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ClientAuthConfig {
    /// CA of ordinary client certificates (user = common name, groups = organizations).
    pub client_ca: Option<CaBundle>,
    /// The front proxy's settings.
    pub request_header: Option<RequestHeaderConfig>,
}

/// The k8s.io/apiserver flags that override the ConfigMap.
#[derive(Debug, Clone, Default)]
pub struct ClientAuthFlags {
    /// `--client-ca-file`.
    pub client_ca_file: Option<PathBuf>,
    /// `--requestheader-client-ca-file`.
    pub requestheader_client_ca_file: Option<PathBuf>,
    /// `--requestheader-allowed-names`.
    pub requestheader_allowed_names: Vec<String>,
    /// `--requestheader-username-headers`.
    pub requestheader_username_headers: Vec<String>,
    /// `--requestheader-uid-headers`.
    pub requestheader_uid_headers: Vec<String>,
    /// `--requestheader-group-headers`.
    pub requestheader_group_headers: Vec<String>,
    /// `--requestheader-extra-headers-prefix`.
    pub requestheader_extra_headers_prefix: Vec<String>,
}

impl ClientAuthFlags {
    /// True when the flags alone configure some client authentication.
    pub fn configures_anything(&self) -> bool {
        self.client_ca_file.is_some() || self.requestheader_client_ca_file.is_some()
    }
}

impl ClientAuthConfig {
    /// Reads the ConfigMap's `data`. A key that is absent leaves that part unconfigured; a key
    /// that is present and malformed is an error (a half-read configuration would silently trust
    /// less, or more, than the cluster says).
    pub fn from_configmap(data: &BTreeMap<String, String>) -> Result<Self, AuthError> {
        let client_ca = data.get("client-ca-file").map(|pem| CaBundle::from_pem(pem)).transpose()?;
        let request_header = match data.get("requestheader-client-ca-file") {
            None => None,
            Some(pem) => {
                let list = |key: &str| -> Result<Vec<String>, AuthError> {
                    match data.get(key) {
                        None => Ok(Vec::new()),
                        Some(text) if text.trim().is_empty() => Ok(Vec::new()),
                        Some(text) => serde_json::from_str::<Option<Vec<String>>>(text)
                            .map(Option::unwrap_or_default)
                            .map_err(|e| {
                                AuthError::Config(format!("{key} is not a JSON list of strings: {e}"))
                            }),
                    }
                };
                Some(RequestHeaderConfig {
                    ca: CaBundle::from_pem(pem)?,
                    allowed_names: list("requestheader-allowed-names")?,
                    username_headers: lower(list("requestheader-username-headers")?),
                    uid_headers: lower(list("requestheader-uid-headers")?),
                    group_headers: lower(list("requestheader-group-headers")?),
                    extra_header_prefixes: lower(list("requestheader-extra-headers-prefix")?),
                })
            }
        };
        Ok(Self { client_ca, request_header })
    }

    /// Applies the flags over this configuration (read from the ConfigMap, or empty).
    pub fn with_flags(mut self, flags: &ClientAuthFlags) -> Result<Self, AuthError> {
        if let Some(path) = &flags.client_ca_file {
            self.client_ca = Some(CaBundle::from_pem(&read(path)?)?);
        }
        if let Some(path) = &flags.requestheader_client_ca_file {
            let or_default = |given: &[String], default: &[&str]| -> Vec<String> {
                if given.is_empty() {
                    default.iter().map(|s| s.to_string()).collect()
                } else {
                    lower(given.to_vec())
                }
            };
            self.request_header = Some(RequestHeaderConfig {
                ca: CaBundle::from_pem(&read(path)?)?,
                allowed_names: flags.requestheader_allowed_names.clone(),
                username_headers: or_default(&flags.requestheader_username_headers, &["x-remote-user"]),
                uid_headers: lower(flags.requestheader_uid_headers.clone()),
                group_headers: or_default(&flags.requestheader_group_headers, &["x-remote-group"]),
                extra_header_prefixes: or_default(
                    &flags.requestheader_extra_headers_prefix,
                    &["x-remote-extra-"],
                ),
            });
        }
        Ok(self)
    }
}

fn read(path: &std::path::Path) -> Result<String, AuthError> {
    std::fs::read_to_string(path).map_err(|e| AuthError::Config(format!("reading {}: {e}", path.display())))
}

fn lower(list: Vec<String>) -> Vec<String> {
    list.into_iter().map(|s| s.trim().to_ascii_lowercase()).filter(|s| !s.is_empty()).collect()
}
