//! Report documents shaped like real reports from Kyverno and Trivy, with unique names, uids
//! and labels per object.
//!
//! - [`kyverno_policy_report`]: a Kyverno per-resource PolicyReport (`wgpolicyk8s.io/v1alpha2`),
//!   modelled on `kyverno-legacy-backgroundscanreport-pss-19results.yaml` and
//!   `kyverno-polr-pod-pss-docs.yaml`: one result per Pod Security Standards rule, the
//!   `cpol.kyverno.io/<policy>` label per policy, a `scope` naming the pod. 19 results make about
//!   6 KB of JSON (the "M" shape); 1,000 results make a namespace-sized "XL" report.
//! - [`ephemeral_report`]: a Kyverno admission EphemeralReport (`reports.kyverno.io/v1`), modelled
//!   on `kyverno-ephr-admission-label-assert.yaml`: the `audit.kyverno.io/*` labels, an owner
//!   reference and one result (the "S" shape, well under 1 KB).
//! - [`trivy_vulnerability_report`]: a Trivy vulnerability PolicyReport, modelled on
//!   `trivy-adapter-wg-polr-vulnerabilities.yaml`: one result per CVE with package, installed and
//!   fixed versions, a CVSS-like score and a severity derived from it.

use serde_json::{json, Value};

/// The Pod Security Standards rules of Kyverno's PSS policies: (policy, rule, profile).
const PSS_RULES: [(&str, &str, &str); 19] = [
    ("disallow-capabilities", "adding-capabilities", "Baseline"),
    ("disallow-capabilities-strict", "require-drop-all", "Restricted"),
    ("disallow-capabilities-strict", "adding-capabilities-strict", "Restricted"),
    ("disallow-host-namespaces", "host-namespaces", "Baseline"),
    ("disallow-host-path", "host-path", "Baseline"),
    ("disallow-host-ports", "host-ports-none", "Baseline"),
    ("disallow-host-process", "host-process-containers", "Baseline"),
    ("disallow-privilege-escalation", "privilege-escalation", "Restricted"),
    ("disallow-privileged-containers", "privileged-containers", "Baseline"),
    ("disallow-proc-mount", "check-proc-mount", "Baseline"),
    ("disallow-selinux", "selinux-type", "Baseline"),
    ("disallow-selinux", "selinux-user-role", "Baseline"),
    ("require-run-as-non-root-user", "run-as-non-root-user", "Restricted"),
    ("require-run-as-nonroot", "run-as-non-root", "Restricted"),
    ("restrict-apparmor-profiles", "app-armor", "Baseline"),
    ("restrict-seccomp", "check-seccomp", "Baseline"),
    ("restrict-seccomp-strict", "check-seccomp-strict", "Restricted"),
    ("restrict-sysctls", "check-sysctls", "Baseline"),
    ("restrict-volume-types", "restricted-volumes", "Restricted"),
];

/// A deterministic UUID-shaped string for object `index` of a `kind` (0–15).
pub fn uid(kind: u8, index: u64) -> String {
    let mixed = index.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (u64::from(kind) << 60);
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        (mixed >> 32) as u32,
        (mixed >> 16) as u16,
        (mixed & 0xfff) as u16,
        (index & 0xfff) as u16,
        index & 0xffff_ffff_ffff
    )
}

/// A Kyverno PolicyReport for one pod with `results` results (cycling through the PSS rules).
/// `namespace` None makes a ClusterPolicyReport.
pub fn kyverno_policy_report(namespace: Option<&str>, name: &str, index: u64, results: usize) -> Value {
    let pod = format!("web-{:x}-{:05x}", index % 4093, index & 0xfffff);
    let resource_uid = uid(1, index);
    let mut labels = serde_json::Map::new();
    labels.insert("app.kubernetes.io/managed-by".into(), json!("kyverno"));
    labels.insert("audit.kyverno.io/resource.uid".into(), json!(resource_uid));
    let mut summary = (0u32, 0u32);
    let items: Vec<Value> = (0..results)
        .map(|i| {
            let (policy, rule, profile) = PSS_RULES[i % PSS_RULES.len()];
            labels.insert(format!("cpol.kyverno.io/{policy}"), json!(format!("{}", 226_000 + i % 977)));
            let failed = (index as usize + i).is_multiple_of(7);
            if failed {
                summary.1 += 1;
            } else {
                summary.0 += 1;
            }
            let container = if i < PSS_RULES.len() { "nginx".to_string() } else { format!("sidecar-{}", i / 19) };
            json!({
                "category": format!("Pod Security Standards ({profile})"),
                "message": if failed {
                    format!("validation error: rule {rule} failed at path /spec/containers/0/securityContext/ ({container})")
                } else {
                    format!("validation rule '{rule}' passed.")
                },
                "policy": policy,
                "result": if failed { "fail" } else { "pass" },
                "rule": rule,
                "scored": true,
                "severity": if profile == "Restricted" { "high" } else { "medium" },
                "source": "kyverno",
                "timestamp": {"nanos": 0, "seconds": 1_700_000_000 + index},
            })
        })
        .collect();
    let mut metadata = json!({
        "name": name,
        "labels": Value::Object(labels),
        "annotations": {"audit.kyverno.io/last-scan-time": "2025-01-01T00:00:00Z"},
        "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": pod, "uid": resource_uid}],
    });
    let kind = match namespace {
        Some(ns) => {
            metadata["namespace"] = json!(ns);
            "PolicyReport"
        }
        None => "ClusterPolicyReport",
    };
    json!({
        "apiVersion": "wgpolicyk8s.io/v1alpha2",
        "kind": kind,
        "metadata": metadata,
        "scope": {"apiVersion": "v1", "kind": "Pod", "name": pod, "namespace": namespace.unwrap_or(""), "uid": resource_uid},
        "results": items,
        "summary": {"pass": summary.0, "fail": summary.1, "warn": 0, "error": 0, "skip": 0},
    })
}

/// A Kyverno admission EphemeralReport for one resource (one result), labelled as Kyverno does.
pub fn ephemeral_report(namespace: &str, name: &str, index: u64, extra_label: Option<(&str, &str)>) -> Value {
    let resource_uid = uid(2, index);
    let pod = format!("api-{:x}-{:05x}", index % 4093, index & 0xfffff);
    let mut labels = json!({
        "app.kubernetes.io/managed-by": "kyverno",
        "audit.kyverno.io/resource.group": "",
        "audit.kyverno.io/resource.kind": "Pod",
        "audit.kyverno.io/resource.name": pod,
        "audit.kyverno.io/resource.uid": resource_uid,
        "audit.kyverno.io/resource.version": "v1",
        "audit.kyverno.io/source": "admission",
        "cpol.kyverno.io/require-labels": "226174",
    });
    if let Some((key, value)) = extra_label {
        labels[key] = json!(value);
    }
    json!({
        "apiVersion": "reports.kyverno.io/v1",
        "kind": "EphemeralReport",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "annotations": {"audit.kyverno.io/resource.name": pod},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": pod, "uid": resource_uid}],
        },
        "spec": {
            "owner": {"apiVersion": "v1", "kind": "Pod", "name": pod, "uid": resource_uid},
            "results": [{
                "message": "validation error: The label `team` is required. rule check-for-labels failed at path /metadata/labels/team/",
                "policy": "require-labels",
                "result": "fail",
                "rule": "check-for-labels",
                "scored": true,
                "source": "kyverno",
                "timestamp": {"nanos": 0, "seconds": 1_700_000_000 + index},
            }],
            "summary": {"error": 0, "fail": 1, "pass": 0, "skip": 0, "warn": 0},
        },
    })
}

/// Package names for vulnerability results (as in Trivy's OS and language package reports).
const PACKAGES: [&str; 12] = [
    "apk-tools",
    "busybox",
    "libcrypto1.1",
    "libssl1.1",
    "musl",
    "openssl",
    "zlib",
    "curl",
    "expat",
    "log4j-core",
    "golang.org/x/net",
    "libxml2",
];

/// A Trivy vulnerability PolicyReport for one container with `results` CVEs.
pub fn trivy_vulnerability_report(namespace: &str, name: &str, index: u64, results: usize) -> Value {
    let pod = format!("zipkin-{:x}-{:05x}", index % 4093, index & 0xfffff);
    let items: Vec<Value> = (0..results)
        .map(|i| {
            let seed = index.wrapping_mul(31).wrapping_add(i as u64);
            let score = 2.0 + (seed % 80) as f64 / 10.0;
            let severity = match score {
                s if s >= 9.0 => "critical",
                s if s >= 7.0 => "high",
                s if s >= 4.0 => "medium",
                _ => "low",
            };
            let cve = format!("CVE-20{}-{}", 18 + seed % 6, 10_000 + seed % 40_000);
            let package = PACKAGES[(seed % PACKAGES.len() as u64) as usize];
            json!({
                "category": package,
                "message": format!("{package}: {severity} vulnerability {cve} allows a remote attacker to cause a denial of service via crafted input"),
                "policy": cve,
                "properties": {
                    "FixedVersion": format!("1.{}.{}-r{}", seed % 9, seed % 13 + 1, seed % 5),
                    "InstalledVersion": format!("1.{}.{}-r0", seed % 9, seed % 13),
                    "PrimaryURL": format!("https://avd.aquasec.com/nvd/{}", cve.to_lowercase()),
                    "VulnerabilityID": cve,
                    "score": format!("{score:.1}"),
                    "vector": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:N/I:N/A:H",
                },
                "result": if severity == "low" { "warn" } else { "fail" },
                "scored": true,
                "severity": severity,
                "source": "Trivy",
                "timestamp": {"nanos": 0, "seconds": 1_700_000_000 + index},
            })
        })
        .collect();
    let resource_uid = uid(3, index);
    json!({
        "apiVersion": "wgpolicyk8s.io/v1alpha2",
        "kind": "PolicyReport",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                "trivy-operator.container.name": "zipkin",
                "trivy-operator.resource.kind": "Pod",
                "trivy-operator.resource.name": pod,
                "trivy-operator.resource.namespace": namespace,
                "trivy-operator.source": "VulnerabilityReport",
            },
            "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": pod, "uid": resource_uid, "controller": true}],
        },
        "scope": {"apiVersion": "v1", "kind": "Pod", "name": pod, "namespace": namespace, "uid": resource_uid},
        "results": items,
        "summary": {"pass": 0, "fail": results, "warn": 0, "error": 0, "skip": 0},
    })
}

/// One object of a dataset: where it goes and its document.
pub struct DatasetItem {
    /// Namespace, or None for a cluster-scoped report.
    pub namespace: Option<String>,
    /// The report.
    pub document: Value,
    /// Its number of results.
    pub results: usize,
}

/// The namespace of object `index`: 100 namespaces with Zipf-like sizes (the first holds about
/// a fifth of the objects).
pub fn namespace_of(index: u64) -> String {
    // Harmonic weights 1/k over 100 namespaces, picked by a hash of the index.
    const TOTAL: f64 = 5.187_377_517_639_621; // H(100)
    let unit = (index.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) as f64 / (1u64 << 53) as f64;
    let mut acc = 0.0;
    for k in 1..=100u32 {
        acc += 1.0 / f64::from(k) / TOTAL;
        if unit < acc {
            return format!("ns-{k:03}");
        }
    }
    "ns-100".into()
}

/// A mixed dataset holding about `target_results` results: a few very large (1,000-result)
/// cluster reports, 20 % of the results in 40-CVE Trivy reports, the rest in 19-result Kyverno
/// per-pod reports; 2 % of the Kyverno reports are cluster-scoped.
pub fn mixed_dataset(target_results: usize) -> impl Iterator<Item = DatasetItem> {
    let xl = 2 + target_results / 200_000;
    let rest = target_results.saturating_sub(xl * 1000);
    let trivy = rest / 5 / 40;
    let kyverno = (rest - trivy * 40) / 19;
    let total = xl + trivy + kyverno;
    (0..total).map(move |i| {
        let index = i as u64;
        if i < xl {
            DatasetItem {
                namespace: None,
                document: kyverno_policy_report(None, &format!("xl-{i}"), index, 1000),
                results: 1000,
            }
        } else if (i - xl).is_multiple_of(9) && (i - xl) / 9 < trivy {
            let namespace = namespace_of(index);
            DatasetItem {
                document: trivy_vulnerability_report(&namespace, &format!("vuln-{i}"), index, 40),
                namespace: Some(namespace),
                results: 40,
            }
        } else if i % 50 == 7 {
            DatasetItem {
                namespace: None,
                document: kyverno_policy_report(None, &format!("cpol-{i}"), index, 19),
                results: 19,
            }
        } else {
            let namespace = namespace_of(index);
            DatasetItem {
                document: kyverno_policy_report(Some(&namespace), &format!("pol-{i}"), index, 19),
                namespace: Some(namespace),
                results: 19,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kyverno_m_shape_is_about_six_kilobytes() {
        let size = serde_json::to_vec(&kyverno_policy_report(Some("ns"), "r", 7, 19)).unwrap().len();
        assert!((5_500..7_000).contains(&size), "{size}");
    }

    #[test]
    fn the_mixed_dataset_holds_about_the_target() {
        let results: usize = mixed_dataset(10_000).map(|d| d.results).sum();
        assert!((9_000..=10_500).contains(&results), "{results}");
    }
}
