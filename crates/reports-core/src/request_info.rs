//! What a request asks for, in the terms kube-apiserver uses for authorization, audit and
//! metrics.
//!
//! kube-apiserver derives one *request info* from every request before anything else looks at
//! it: whether it is a resource request, the verb, and the group, version, namespace, resource,
//! subresource and name it is about. A SubjectAccessReview carries exactly these attributes, and
//! the `apiserver_request_*` metrics are labelled with them, so they must come out the way
//! kube-apiserver computes them, including its less obvious rules:
//!
//! - the verb comes from the HTTP method (`POST` create, `GET`/`HEAD` get, `PUT` update, `PATCH`
//!   patch, `DELETE` delete), except on the deprecated `/watch/...` paths, where it is `watch`;
//! - a `get` without a name is a `list`, or a `watch` when `watch` is true, and a
//!   `metadata.name=x` field selector then supplies the name (a watch of one object is authorized
//!   as a watch of that name);
//! - a `delete` without a name is a `deletecollection`;
//! - `/apis/{group}/{version}` and shorter paths, and everything outside `/api` and `/apis`, are
//!   non-resource requests whose verb is the lower-cased method.
//!
//! Nothing here checks that the resource exists: an unknown resource is still authorized (and
//! answered 404 afterwards), as kube-apiserver does.

/// The attributes of one request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestInfo {
    /// True for requests about API resources (`/apis/{group}/{version}/...` with at least a
    /// resource), false for discovery, OpenAPI, health and other paths.
    pub is_resource_request: bool,
    /// The request path, percent-decoded (non-resource authorization uses it).
    pub path: String,
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`; for
    /// non-resource requests the lower-cased HTTP method.
    pub verb: String,
    /// `api` or `apis` (empty for non-resource requests).
    pub api_prefix: String,
    /// API group (empty for the legacy core group).
    pub api_group: String,
    /// API version.
    pub api_version: String,
    /// Namespace from the path (empty for cluster-wide requests).
    pub namespace: String,
    /// Resource plural.
    pub resource: String,
    /// Subresource (`status`, ...), if the path names one.
    pub subresource: String,
    /// Object name from the path or from a `metadata.name` field selector on a list or watch.
    pub name: String,
}

/// Paths below a namespace that are that namespace's own subresources rather than a resource
/// inside it.
const NAMESPACE_SUBRESOURCES: [&str; 2] = ["status", "finalize"];

impl RequestInfo {
    /// Resolves a request from its method, raw (still percent-encoded) path and raw query.
    pub fn resolve(method: &str, raw_path: &str, raw_query: Option<&str>) -> Self {
        let path = percent_decode(raw_path);
        let non_resource =
            |path: String| RequestInfo { path, verb: method.to_ascii_lowercase(), ..Default::default() };
        let parts: Vec<&str> = path.trim_matches('/').split('/').filter(|p| !p.is_empty()).collect();
        let (prefix, rest) = match parts.split_first() {
            Some((&prefix, rest)) if prefix == "api" || prefix == "apis" => (prefix, rest),
            _ => return non_resource(path),
        };
        // `/apis/{group}/{version}/{resource}` needs three parts after the prefix, `/api/{version}/
        // {resource}` two.
        let (group, rest) = match prefix {
            "apis" if rest.len() >= 3 => (rest[0], &rest[1..]),
            "api" if rest.len() >= 2 => ("", rest),
            _ => return non_resource(path),
        };
        let (version, mut rest) = (rest[0], &rest[1..]);

        let mut verb = match rest.first() {
            Some(&"watch") => {
                if rest.len() < 2 {
                    return non_resource(path);
                }
                rest = &rest[1..];
                "watch".to_string()
            }
            _ => match method {
                "POST" => "create",
                "GET" | "HEAD" => "get",
                "PUT" => "update",
                "PATCH" => "patch",
                "DELETE" => "delete",
                _ => "",
            }
            .to_string(),
        };

        let mut namespace = String::new();
        if rest.first() == Some(&"namespaces") && rest.len() > 1 {
            namespace = rest[1].to_string();
            // `/namespaces/{ns}/{resource}/...`; `/namespaces/{ns}` and its own subresources stay
            // about the namespace itself.
            if rest.len() > 2 && !NAMESPACE_SUBRESOURCES.contains(&rest[2]) {
                rest = &rest[2..];
            }
        }
        let resource = rest.first().map(|s| s.to_string()).unwrap_or_default();
        let mut name = rest.get(1).map(|s| s.to_string()).unwrap_or_default();
        let subresource = rest.get(2).map(|s| s.to_string()).unwrap_or_default();

        if name.is_empty() && verb == "get" {
            let query = crate::options::Query::parse(raw_query);
            verb = if query.flag("watch") { "watch" } else { "list" }.to_string();
        }
        if name.is_empty() && (verb == "list" || verb == "watch") {
            let query = crate::options::Query::parse(raw_query);
            if let Some(exact) = query.get("fieldSelector").and_then(exact_name_requirement) {
                if is_valid_path_segment_name(&exact) {
                    name = exact;
                }
            }
        }
        if name.is_empty() && verb == "delete" {
            verb = "deletecollection".to_string();
        }
        RequestInfo {
            is_resource_request: true,
            path: path.clone(),
            verb,
            api_prefix: prefix.to_string(),
            api_group: group.to_string(),
            api_version: version.to_string(),
            namespace,
            resource,
            subresource,
            name,
        }
    }

    /// True for verbs that change nothing (kube's read-only in-flight class).
    pub fn is_read_only(&self) -> bool {
        matches!(self.verb.as_str(), "get" | "list" | "watch" | "head")
    }

    /// True for requests that stay open (watches), which kube counts apart from the others.
    pub fn is_long_running(&self) -> bool {
        self.is_resource_request && self.verb == "watch"
    }
}

/// The value a field selector requires `metadata.name` to equal (`metadata.name=x` or `==x`),
/// or None, also when the selector does not parse.
fn exact_name_requirement(selector: &str) -> Option<String> {
    let mut found = None;
    for term in split_unescaped_commas(selector) {
        let term = term.trim();
        if term.is_empty() {
            continue;
        }
        // `!=` pins nothing but must still be a well-formed term.
        let (field, value) = if let Some((field, _)) = term.split_once("!=") {
            (field, None)
        } else if let Some((field, value)) = term.split_once("==") {
            (field, Some(value))
        } else if let Some((field, value)) = term.split_once('=') {
            (field, Some(value))
        } else {
            return None;
        };
        if let (Some(value), "metadata.name") = (value, field.trim()) {
            found = Some(unescape_selector_value(value.trim()));
        }
    }
    found
}

/// Splits a selector on commas that are not escaped with a backslash.
fn split_unescaped_commas(text: &str) -> Vec<&str> {
    let mut terms = Vec::new();
    let (mut start, mut escaped) = (0, false);
    for (i, c) in text.char_indices() {
        match c {
            '\\' if !escaped => escaped = true,
            ',' if !escaped => {
                terms.push(&text[start..i]);
                start = i + 1;
            }
            _ => escaped = false,
        }
    }
    terms.push(&text[start..]);
    terms
}

fn unescape_selector_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// kube's `IsValidPathSegmentName`: a name usable as one path segment.
fn is_valid_path_segment_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('%')
}

/// Decodes `%XX` escapes of a path; a path whose escapes do not decode to UTF-8 is kept as sent.
fn percent_decode(raw: &str) -> String {
    if !raw.contains('%') {
        return raw.to_string();
    }
    String::from_utf8(crate::options::percent_decode(raw, false)).unwrap_or_else(|_| raw.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NS: &str = "/apis/wgpolicyk8s.io/v1alpha2/namespaces/team-a/policyreports";

    fn info(method: &str, target: &str) -> RequestInfo {
        let (path, query) = match target.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (target, None),
        };
        RequestInfo::resolve(method, path, query)
    }

    fn verb_ns_name(i: &RequestInfo) -> (&str, &str, &str, &str) {
        (i.verb.as_str(), i.namespace.as_str(), i.resource.as_str(), i.name.as_str())
    }

    #[test]
    fn collection_and_item_verbs_follow_the_method() {
        assert_eq!(verb_ns_name(&info("GET", NS)), ("list", "team-a", "policyreports", ""));
        assert_eq!(verb_ns_name(&info("HEAD", NS)), ("list", "team-a", "policyreports", ""));
        assert_eq!(verb_ns_name(&info("GET", &format!("{NS}/r1"))), ("get", "team-a", "policyreports", "r1"));
        assert_eq!(verb_ns_name(&info("POST", NS)), ("create", "team-a", "policyreports", ""));
        assert_eq!(
            verb_ns_name(&info("PUT", &format!("{NS}/r1"))),
            ("update", "team-a", "policyreports", "r1")
        );
        assert_eq!(
            verb_ns_name(&info("PATCH", &format!("{NS}/r1"))),
            ("patch", "team-a", "policyreports", "r1")
        );
        assert_eq!(
            verb_ns_name(&info("DELETE", &format!("{NS}/r1"))),
            ("delete", "team-a", "policyreports", "r1")
        );
        assert_eq!(verb_ns_name(&info("DELETE", NS)), ("deletecollection", "team-a", "policyreports", ""));
        let odd = info("OPTIONS", NS);
        assert_eq!(odd.verb, "");
        assert!(odd.is_resource_request);
    }

    #[test]
    fn watches_by_parameter_and_by_legacy_path() {
        assert_eq!(info("GET", &format!("{NS}?watch=true")).verb, "watch");
        assert_eq!(info("GET", &format!("{NS}?watch=1")).verb, "watch");
        assert_eq!(info("GET", &format!("{NS}?watch=false")).verb, "list");
        // A watch parameter on an item path is still a get, as in kube.
        assert_eq!(info("GET", &format!("{NS}/r1?watch=true")).verb, "get");
        let legacy = info("GET", "/apis/wgpolicyk8s.io/v1alpha2/watch/namespaces/team-a/policyreports/r1");
        assert_eq!(verb_ns_name(&legacy), ("watch", "team-a", "policyreports", "r1"));
        let legacy_all = info("GET", "/apis/wgpolicyk8s.io/v1alpha2/watch/policyreports");
        assert_eq!(verb_ns_name(&legacy_all), ("watch", "", "policyreports", ""));
        assert!(info("GET", &format!("{NS}?watch=true")).is_long_running());
        assert!(!info("GET", NS).is_long_running());
    }

    #[test]
    fn a_name_field_selector_names_the_object_of_a_list_or_watch() {
        let one = info("GET", &format!("{NS}?watch=true&fieldSelector=metadata.name%3Dr1"));
        assert_eq!(verb_ns_name(&one), ("watch", "team-a", "policyreports", "r1"));
        let double = info("GET", &format!("{NS}?fieldSelector=metadata.namespace%3Dx,metadata.name%3D%3Dr2"));
        assert_eq!((double.verb.as_str(), double.name.as_str()), ("list", "r2"));
        // Inequality pins nothing; nor does a value that cannot be a path segment.
        assert_eq!(info("GET", &format!("{NS}?fieldSelector=metadata.name!%3Dr1")).name, "");
        assert_eq!(info("GET", &format!("{NS}?fieldSelector=metadata.name%3Da/b")).name, "");
        assert_eq!(info("GET", &format!("{NS}?fieldSelector=metadata.name%3D..")).name, "");
        // Unparsable selectors leave the name empty.
        assert_eq!(info("GET", &format!("{NS}?fieldSelector=garbage")).name, "");
        // A deletecollection does not take its name from a selector.
        assert_eq!(
            info("DELETE", &format!("{NS}?fieldSelector=metadata.name%3Dr1")).verb,
            "deletecollection"
        );
    }

    #[test]
    fn cluster_scoped_and_subresource_paths() {
        let cluster = info("GET", "/apis/wgpolicyk8s.io/v1alpha2/clusterpolicyreports/c1");
        assert_eq!(verb_ns_name(&cluster), ("get", "", "clusterpolicyreports", "c1"));
        assert_eq!(cluster.api_group, "wgpolicyk8s.io");
        assert_eq!(cluster.api_version, "v1alpha2");
        assert_eq!(cluster.api_prefix, "apis");
        let status = info("PUT", &format!("{NS}/r1/status"));
        assert_eq!((status.verb.as_str(), status.subresource.as_str()), ("update", "status"));
        // The namespace itself and its own subresources.
        let namespace = info("GET", "/api/v1/namespaces/team-a");
        assert_eq!(verb_ns_name(&namespace), ("get", "team-a", "namespaces", "team-a"));
        let finalize = info("PUT", "/api/v1/namespaces/team-a/finalize");
        assert_eq!((finalize.resource.as_str(), finalize.subresource.as_str()), ("namespaces", "finalize"));
        assert_eq!(info("GET", "/api/v1/pods").api_group, "");
    }

    #[test]
    fn discovery_and_other_paths_are_non_resource_requests() {
        for path in [
            "/",
            "/apis",
            "/apis/wgpolicyk8s.io",
            "/apis/wgpolicyk8s.io/v1alpha2",
            "/api",
            "/api/v1",
            "/livez",
            "/metrics",
            "/openapi/v3/apis/wgpolicyk8s.io/v1alpha2",
        ] {
            let i = info("GET", path);
            assert!(!i.is_resource_request, "{path}");
            assert_eq!(i.verb, "get", "{path}");
            assert_eq!(i.path, path);
        }
        assert_eq!(info("POST", "/metrics").verb, "post");
        assert!(!info("GET", "/apis/wgpolicyk8s.io/v1alpha2/watch").is_resource_request);
    }

    #[test]
    fn escapes_are_decoded_and_undecodable_paths_kept() {
        let i = info("GET", "/apis/wgpolicyk8s.io/v1alpha2/namespaces/team%2Da/policyreports/r%31");
        assert_eq!((i.namespace.as_str(), i.name.as_str()), ("team-a", "r1"));
        let bad = info("GET", "/apis/wgpolicyk8s.io/v1alpha2/namespaces/%ff/policyreports");
        assert_eq!(bad.namespace, "%ff");
        assert!(info("GET", NS).is_read_only());
        assert!(!info("POST", NS).is_read_only());
    }
}
