//! The identity a trusted front proxy forwards in request headers.
//!
//! Only called for requests on a connection whose client certificate has already been verified
//! as the front proxy's ([`crate::authenticate`]); these headers from anyone else are ignored.

use std::collections::BTreeMap;

use http::HeaderMap;
use reports_core::options::percent_decode;

use crate::{config::RequestHeaderConfig, UserInfo};

/// The user named by the headers, or None when no user-name header has a value (the request then
/// carries no identity from the proxy, and other authenticators get their turn).
pub fn user_from_headers(config: &RequestHeaderConfig, headers: &HeaderMap) -> Option<UserInfo> {
    let first_value = |names: &[String]| {
        names.iter().find_map(|name| {
            headers.get_all(name.as_str()).iter().find_map(|v| v.to_str().ok().filter(|v| !v.is_empty()))
        })
    };
    let name = first_value(&config.username_headers)?.to_string();
    let uid = first_value(&config.uid_headers).unwrap_or_default().to_string();
    let groups = config
        .group_headers
        .iter()
        .flat_map(|name| headers.get_all(name.as_str()).iter())
        .filter_map(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_string)
        .collect();
    let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (header, value) in headers {
        let header = header.as_str();
        let Some(prefix) = config.extra_header_prefixes.iter().find(|p| header.starts_with(p.as_str()))
        else {
            continue;
        };
        let Ok(value) = value.to_str() else { continue };
        // Keys are percent-encoded so that they can hold characters headers cannot; kube decodes
        // them and lower-cases the result.
        let key = String::from_utf8_lossy(&percent_decode(&header[prefix.len()..], false)).to_lowercase();
        if key.is_empty() {
            continue;
        }
        extra.entry(key).or_default().push(value.to_string());
    }
    Some(UserInfo { name, uid, groups, extra })
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;
    use crate::certs::CaBundle;

    fn config() -> RequestHeaderConfig {
        let ca = rcgen::generate_simple_self_signed(vec!["ca".to_string()]).expect("certificate");
        RequestHeaderConfig {
            ca: CaBundle::from_pem(&ca.cert.pem()).expect("bundle"),
            allowed_names: vec![],
            username_headers: vec!["x-remote-user".into(), "x-other-user".into()],
            uid_headers: vec!["x-remote-uid".into()],
            group_headers: vec!["x-remote-group".into()],
            extra_header_prefixes: vec!["x-remote-extra-".into()],
        }
    }

    #[test]
    fn user_groups_uid_and_extras_come_from_the_configured_headers() {
        let mut headers = HeaderMap::new();
        headers.insert("x-other-user", HeaderValue::from_static("alice"));
        headers.append("x-remote-group", HeaderValue::from_static("devs"));
        headers.append("x-remote-group", HeaderValue::from_static("ops"));
        headers.insert("x-remote-uid", HeaderValue::from_static("u-1"));
        headers.append("x-remote-extra-scopes", HeaderValue::from_static("a"));
        headers.append("x-remote-extra-scopes", HeaderValue::from_static("b"));
        headers.append("x-remote-extra-example.com%2fteam", HeaderValue::from_static("x"));
        let user = user_from_headers(&config(), &headers).expect("a user");
        assert_eq!(user.name, "alice");
        assert_eq!(user.uid, "u-1");
        assert_eq!(user.groups, vec!["devs", "ops"]);
        assert_eq!(user.extra["scopes"], vec!["a", "b"]);
        assert_eq!(user.extra["example.com/team"], vec!["x"]);
    }

    #[test]
    fn no_user_header_means_no_identity() {
        let mut headers = HeaderMap::new();
        headers.insert("x-remote-group", HeaderValue::from_static("system:masters"));
        headers.insert("x-remote-user", HeaderValue::from_static(""));
        assert_eq!(user_from_headers(&config(), &headers), None);
    }
}
