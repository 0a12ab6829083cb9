//! The resource catalogue: everything the server knows about the six report kinds, derived from
//! the published CRD YAML embedded in this crate, so no kind is ever described twice.
//!
//! Nothing here is written per kind. A [`ResourceKind`] is plain data (names, scope, printer
//! columns, schema) and every handler, store query and renderer is generic over it.

use std::sync::Arc;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::{error::ApiError, validation::SchemaValidator};

/// The CRDs we serve, verbatim. The wgpolicyk8s.io pair is Kyverno's variant (a single
/// `v1alpha2` version, Kind/Name printer columns without priority), which is what clusters running
/// Kyverno have installed.
const EMBEDDED_CRDS: &[(&str, &str)] = &[
    ("policyreports.wgpolicyk8s.io", include_str!("crds/policyreports.wgpolicyk8s.io.yaml")),
    ("clusterpolicyreports.wgpolicyk8s.io", include_str!("crds/clusterpolicyreports.wgpolicyk8s.io.yaml")),
    ("ephemeralreports.reports.kyverno.io", include_str!("crds/ephemeralreports.reports.kyverno.io.yaml")),
    (
        "clusterephemeralreports.reports.kyverno.io",
        include_str!("crds/clusterephemeralreports.reports.kyverno.io.yaml"),
    ),
    ("reports.openreports.io", include_str!("crds/reports.openreports.io.yaml")),
    ("clusterreports.openreports.io", include_str!("crds/clusterreports.openreports.io.yaml")),
];

/// The server's own read-only query resources (see [`crate::findings`]), described as CRDs so
/// their names, scope and printer columns come out of the same derivation.
const QUERY_CRDS: &[(&str, &str)] = &[
    ("findings.query.reports-server.io", include_str!("crds/query/findings.query.reports-server.io.yaml")),
    (
        "findingcounts.query.reports-server.io",
        include_str!("crds/query/findingcounts.query.reports-server.io.yaml"),
    ),
];

/// The verbs of the query resources: they are computed, so they are only listed.
pub const QUERY_VERBS: [&str; 1] = ["list"];

/// One printer column of a CRD version (`additionalPrinterColumns`).
#[derive(Debug, Clone, PartialEq)]
pub struct PrinterColumn {
    /// Column header, e.g. `Pass`.
    pub name: String,
    /// OpenAPI type: `string`, `integer`, `number`, `boolean` or `date`.
    pub type_: String,
    /// OpenAPI format, usually empty.
    pub format: String,
    /// Human description (may be empty).
    pub description: String,
    /// 0 shows always, 1 only with `-o wide`.
    pub priority: i64,
    /// The CRD's simple JSONPath, e.g. `.metadata.labels['audit\.kyverno\.io/source']`.
    pub json_path: String,
}

/// One served resource: a kind in one group/version, with everything derived from its CRD.
#[derive(Debug, Clone)]
pub struct ResourceKind {
    /// API group, e.g. `wgpolicyk8s.io`.
    pub group: String,
    /// Served version, e.g. `v1alpha2`.
    pub version: String,
    /// Kind, e.g. `PolicyReport`.
    pub kind: String,
    /// List kind, e.g. `PolicyReportList`.
    pub list_kind: String,
    /// Plural resource name used in URLs, e.g. `policyreports`.
    pub plural: String,
    /// Singular name, e.g. `policyreport`.
    pub singular: String,
    /// True for namespaced kinds.
    pub namespaced: bool,
    /// kubectl short names, e.g. `polr`.
    pub short_names: Vec<String>,
    /// Categories, e.g. `kyverno`.
    pub categories: Vec<String>,
    /// Printer columns after the implicit Name column.
    pub printer_columns: Vec<PrinterColumn>,
    /// The version's `openAPIV3Schema`.
    pub schema: Value,
    /// That schema compiled for pruning and validating writes.
    pub validator: Arc<SchemaValidator>,
    /// `base64(sha256("group/version/kind")[..8])`, as k8s.io/apiserver computes it.
    pub storage_version_hash: String,
    /// True for the server's own query resources (computed, list only, never stored).
    pub query: bool,
}

impl ResourceKind {
    /// `group/version`, the value of `apiVersion`.
    pub fn api_version(&self) -> String {
        format!("{}/{}", self.group, self.version)
    }

    /// `plural.group`, the qualified resource used in most error messages.
    pub fn qualified_resource(&self) -> String {
        format!("{}.{}", self.plural, self.group)
    }

    /// `Kind.group`, the qualified kind used in `Invalid` messages.
    pub fn qualified_kind(&self) -> String {
        format!("{}.{}", self.kind, self.group)
    }

    /// The key the store files this resource's rows under.
    pub fn storage_key(&self) -> &str {
        &self.plural
    }
}

/// What a resource path names ([`Catalogue::resolve_path`]).
#[derive(Debug)]
pub struct ResourcePath<'a> {
    /// The kind served there.
    pub kind: &'a ResourceKind,
    /// Namespace from the path (None on cluster-scoped and all-namespaces paths).
    pub namespace: Option<String>,
    /// Object name, for item paths.
    pub name: Option<String>,
}

impl ResourcePath<'_> {
    /// The namespace as stored ("" for cluster-scoped kinds and all-namespaces paths).
    pub fn storage_namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or_default()
    }
}

/// A served group with its (single) version.
#[derive(Debug, Clone)]
pub struct GroupInfo {
    /// Group name.
    pub group: String,
    /// The served (and preferred) version.
    pub version: String,
}

/// All served resources, in a stable order (the order of [`EMBEDDED_CRDS`], then the query
/// resources).
#[derive(Debug, Clone)]
pub struct Catalogue {
    /// The report kinds, stored.
    kinds: Vec<ResourceKind>,
    /// The query resources, computed.
    query: Vec<ResourceKind>,
}

/// Failure to derive the catalogue from a CRD document (a build defect, never user input).
#[derive(Debug, thiserror::Error)]
#[error("CRD {crd}: {message}")]
pub struct CatalogueError {
    crd: String,
    message: String,
}

impl Catalogue {
    /// Builds the catalogue from the embedded CRDs.
    pub fn embedded() -> Result<Self, CatalogueError> {
        let kinds =
            EMBEDDED_CRDS.iter().map(|(name, yaml)| parse_crd(name, yaml)).collect::<Result<_, _>>()?;
        let query = QUERY_CRDS
            .iter()
            .map(|(name, yaml)| parse_crd(name, yaml).map(|kind| ResourceKind { query: true, ..kind }))
            .collect::<Result<_, _>>()?;
        Ok(Self { kinds, query })
    }

    /// Every stored resource: the report kinds.
    pub fn kinds(&self) -> &[ResourceKind] {
        &self.kinds
    }

    /// The query resources (`findings`, `findingcounts`).
    pub fn query_kinds(&self) -> &[ResourceKind] {
        &self.query
    }

    /// Every served resource: the report kinds, then the query resources.
    pub fn served(&self) -> impl Iterator<Item = &ResourceKind> {
        self.kinds.iter().chain(&self.query)
    }

    /// Finds a served resource by group, version and plural.
    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceKind> {
        self.served().find(|k| k.group == group && k.version == version && k.plural == plural)
    }

    /// Finds a report kind by its resource plural (the storage key).
    pub fn by_storage_key(&self, resource: &str) -> Option<&ResourceKind> {
        self.kinds.iter().find(|k| k.storage_key() == resource)
    }

    /// What the rest of a path under `/apis/{group}/{version}/` names (after percent-decoding):
    /// `PLURAL`, `PLURAL/NAME`, `namespaces/NS/PLURAL` or `namespaces/NS/PLURAL/NAME`. Anything
    /// else (an empty segment, a subresource: the CRDs declare none, a namespace on a
    /// cluster-scoped kind, an unknown resource) is kube's 404.
    pub fn resolve_path(&self, group: &str, version: &str, rest: &str) -> Result<ResourcePath<'_>, ApiError> {
        let segments: Vec<&str> = rest.split('/').collect();
        if segments.iter().any(|s| s.is_empty()) {
            return Err(ApiError::path_not_found());
        }
        let (namespace, tail) = match segments.as_slice() {
            ["namespaces", ns, tail @ ..] if !tail.is_empty() => (Some(ns.to_string()), tail),
            tail => (None, tail),
        };
        let (plural, name) = match tail {
            [plural] => (*plural, None),
            [plural, name] => (*plural, Some(name.to_string())),
            _ => return Err(ApiError::path_not_found()),
        };
        let kind = self.find(group, version, plural).ok_or_else(ApiError::path_not_found)?;
        if namespace.is_some() && !kind.namespaced {
            return Err(ApiError::path_not_found());
        }
        Ok(ResourcePath { kind, namespace, name })
    }

    /// Served groups, in first-seen order.
    pub fn groups(&self) -> Vec<GroupInfo> {
        let mut out: Vec<GroupInfo> = Vec::new();
        for k in self.served() {
            if !out.iter().any(|g| g.group == k.group) {
                out.push(GroupInfo { group: k.group.clone(), version: k.version.clone() });
            }
        }
        out
    }

    /// Resources of one group/version.
    pub fn in_group_version<'a>(
        &'a self,
        group: &'a str,
        version: &'a str,
    ) -> impl Iterator<Item = &'a ResourceKind> {
        self.served().filter(move |k| k.group == group && k.version == version)
    }
}

fn parse_crd(name: &str, yaml: &str) -> Result<ResourceKind, CatalogueError> {
    let err = |message: String| CatalogueError { crd: name.to_string(), message };
    let doc: Value = serde_saphyr::from_str(yaml).map_err(|e| err(format!("invalid YAML: {e}")))?;
    let spec = &doc["spec"];
    let names = &spec["names"];
    let text =
        |v: &Value, what: &str| v.as_str().map(str::to_string).ok_or_else(|| err(format!("missing {what}")));
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
            .unwrap_or_default()
    };
    let group = text(&spec["group"], "spec.group")?;
    let kind = text(&names["kind"], "names.kind")?;
    let versions = spec["versions"].as_array().ok_or_else(|| err("no versions".into()))?;
    // Serve the storage version: each embedded CRD has exactly one served version.
    let version = versions
        .iter()
        .find(|v| v["storage"].as_bool() == Some(true))
        .ok_or_else(|| err("no storage version".into()))?;
    let version_name = text(&version["name"], "version name")?;
    let printer_columns = version["additionalPrinterColumns"]
        .as_array()
        .map(|cols| {
            cols.iter()
                .map(|c| PrinterColumn {
                    name: c["name"].as_str().unwrap_or_default().to_string(),
                    type_: c["type"].as_str().unwrap_or("string").to_string(),
                    format: c["format"].as_str().unwrap_or_default().to_string(),
                    description: c["description"].as_str().unwrap_or_default().to_string(),
                    priority: c["priority"].as_i64().unwrap_or(0),
                    json_path: c["jsonPath"].as_str().unwrap_or_default().to_string(),
                })
                .collect()
        })
        .unwrap_or_default();
    let hash_input = format!("{group}/{version_name}/{kind}");
    let digest = Sha256::digest(hash_input.as_bytes());
    use base64::Engine as _;
    let storage_version_hash = base64::engine::general_purpose::STANDARD.encode(&digest[..8]);
    Ok(ResourceKind {
        list_kind: names["listKind"].as_str().map(str::to_string).unwrap_or_else(|| format!("{kind}List")),
        plural: text(&names["plural"], "names.plural")?,
        singular: names["singular"].as_str().map(|s| s.to_string()).unwrap_or_else(|| kind.to_lowercase()),
        namespaced: spec["scope"].as_str() == Some("Namespaced"),
        short_names: strings(&names["shortNames"]),
        categories: strings(&names["categories"]),
        printer_columns,
        validator: Arc::new(SchemaValidator::compile(&version["schema"]["openAPIV3Schema"]).map_err(err)?),
        schema: version["schema"]["openAPIV3Schema"].clone(),
        storage_version_hash,
        query: false,
        group,
        version: version_name,
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_matches_the_wire_contract() {
        let cat = Catalogue::embedded().unwrap();
        let table: Vec<(&str, &str, &str, bool, &str, &str)> = cat
            .kinds()
            .iter()
            .map(|k| {
                (
                    k.api_version().leak() as &str,
                    k.kind.as_str(),
                    k.plural.as_str(),
                    k.namespaced,
                    k.short_names[0].as_str(),
                    k.storage_version_hash.as_str(),
                )
            })
            .collect();
        assert_eq!(
            table,
            vec![
                ("wgpolicyk8s.io/v1alpha2", "PolicyReport", "policyreports", true, "polr", "oABByl1YGQo="),
                (
                    "wgpolicyk8s.io/v1alpha2",
                    "ClusterPolicyReport",
                    "clusterpolicyreports",
                    false,
                    "cpolr",
                    "eKD/I8GSkRU="
                ),
                (
                    "reports.kyverno.io/v1",
                    "EphemeralReport",
                    "ephemeralreports",
                    true,
                    "ephr",
                    "2R/2S+oAF8g="
                ),
                (
                    "reports.kyverno.io/v1",
                    "ClusterEphemeralReport",
                    "clusterephemeralreports",
                    false,
                    "cephr",
                    "AwbbwmeK4OI="
                ),
                ("openreports.io/v1alpha1", "Report", "reports", true, "reps", "vUXYlDHPGNE="),
                (
                    "openreports.io/v1alpha1",
                    "ClusterReport",
                    "clusterreports",
                    false,
                    "creps",
                    "35IF8f4t5q4="
                ),
            ]
        );
        let ephr = cat.find("reports.kyverno.io", "v1", "ephemeralreports").unwrap();
        assert_eq!(ephr.categories, vec!["kyverno"]);
        assert_eq!(ephr.list_kind, "EphemeralReportList");
        let polr = cat.find("wgpolicyk8s.io", "v1alpha2", "policyreports").unwrap();
        let cols: Vec<_> = polr.printer_columns.iter().map(|c| (c.name.as_str(), c.priority)).collect();
        assert_eq!(
            cols,
            vec![
                ("Kind", 0),
                ("Name", 0),
                ("Pass", 0),
                ("Fail", 0),
                ("Warn", 0),
                ("Error", 0),
                ("Skip", 0),
                ("Age", 0)
            ]
        );
        assert!(polr.schema["properties"]["results"].is_object());
        assert_eq!(cat.groups().len(), 4, "three report groups and the query group");
    }
}
