#!/usr/bin/env python3
"""Renders, lints and checks the Helm chart in charts/reports-server, and keeps
deploy/install.yaml in step with it.

    python3 charts/tests/check_chart.py                 # check everything (the test suite runs this)
    python3 charts/tests/check_chart.py --write         # regenerate deploy/install.yaml
    python3 charts/tests/check_chart.py --binary PATH   # also start PATH with every rendered argument list

Needs the Python packages helm-python-sdk (Helm's own template engine and linter, as a library
shipped in the wheel: no helm binary, no network) and kubernetes-validate (the Kubernetes JSON
schemas, shipped in the wheel); `.ci/setup` installs both at pinned versions.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "reports-server"
INSTALL = ROOT / "deploy" / "install.yaml"
INSTALL_VALUES = ROOT / "deploy" / "install-values.yaml"
REGENERATE = "python3 charts/tests/check_chart.py --write"

# Kubernetes versions whose schemas every built-in object must satisfy (the chart's kubeVersion
# floor and the newest the schema package knows).
KUBE_VERSIONS = ["1.25.0", "1.37.0"]

# Kinds that come from operators; no schema ships for them, so they get structural checks only.
CUSTOM_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("cert-manager.io/v1", "Certificate"),
    ("cert-manager.io/v1", "Issuer"),
    ("postgresql.cnpg.io/v1", "Cluster"),
}

APISERVICES = {
    "v1alpha2.wgpolicyk8s.io": ("wgpolicyk8s.io", "v1alpha2"),
    "v1.reports.kyverno.io": ("reports.kyverno.io", "v1"),
    "v1alpha1.openreports.io": ("openreports.io", "v1alpha1"),
    "v1alpha1.query.reports-server.io": ("query.reports-server.io", "v1alpha1"),
}
SIX = {
    "wgpolicyk8s.io": {"policyreports", "clusterpolicyreports"},
    "reports.kyverno.io": {"ephemeralreports", "clusterephemeralreports"},
    "openreports.io": {"reports", "clusterreports"},
}

# Flags the chart may render that the server honours today; anything else it renders must be a
# flag the server names in its "change nothing" warning.
HONOURED = {
    "--bind-address", "--secure-port", "--log-format", "--tls-cert-file", "--tls-private-key-file",
    "--storage", "--postgres-pool-size", "--postgres-statement-timeout-seconds", "--dbsslmode",
    "--dbsslrootcert", "--dbsslcert", "--dbsslkey", "--clustername", "--skipmigration",
    "--dangerously-serve-without-authentication", "--index-findings", "--result-metrics",
    "--result-metrics-labels", "--result-metrics-max-series", "--change-log-retention-seconds",
    "--change-log-max-entries", "--sqlite-wal-bytes",
}


class Failure(Exception):
    pass


def check(condition: bool, message: str) -> None:
    if not condition:
        raise Failure(message)


# Order in which objects are written to deploy/install.yaml (what must exist first goes first).
KIND_ORDER = [
    "Namespace", "NetworkPolicy", "ServiceAccount", "Secret", "PersistentVolumeClaim", "ClusterRole",
    "ClusterRoleBinding", "Role", "RoleBinding", "Service", "Deployment", "PodDisruptionBudget",
    "HorizontalPodAutoscaler", "APIService",
]


def render(values: dict, release: str, namespace: str) -> list[dict]:
    import helm_python as helm

    chart = helm.Chart.load(str(CHART))
    rendered = chart.render(values, name=release, namespace=namespace, is_install=True)
    objects = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("metadata", {})
                objects.append(doc)
    return objects


def lint(values: dict, label: str) -> None:
    import helm_python as helm

    report = helm.lint(str(CHART), values, strict=True, namespace="reports-server")
    problems = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
    check(not report.get("errors") and not problems, f"{label}: helm lint: {report}")


def validate_schemas(objects: list[dict], label: str) -> None:
    import kubernetes_validate

    for obj in objects:
        key = (obj.get("apiVersion"), obj.get("kind"))
        name = f"{label}: {obj.get('kind')}/{obj['metadata'].get('name')}"
        check(bool(obj["metadata"].get("name")), f"{name}: no metadata.name")
        if key in CUSTOM_KINDS:
            check(isinstance(obj.get("spec"), dict) and obj["spec"], f"{name}: empty spec")
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                raise Failure(f"{name}: not valid for Kubernetes {version}: {path}: {e.message}") from None


def by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict], kind: str, name: str | None = None) -> dict:
    found = [o for o in by_kind(objects, kind) if name is None or o["metadata"]["name"] == name]
    check(len(found) == 1, f"expected one {kind} {name or ''}, found {[o['metadata']['name'] for o in found]}")
    return found[0]


def fullname(release: str, values: dict) -> str:
    if values.get("fullnameOverride"):
        return values["fullnameOverride"]
    return release if "reports-server" in release else f"{release}-reports-server"


def container_args(objects: list[dict]) -> list[str]:
    deployment = one(objects, "Deployment")
    return deployment["spec"]["template"]["spec"]["containers"][0]["args"]


def check_objects(objects: list[dict], values: dict, release: str, namespace: str, label: str) -> None:
    name = fullname(release, values)
    keys = [(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objects]
    check(len(keys) == len(set(keys)), f"{label}: duplicate objects: {sorted(keys)}")

    # The Service Kyverno's chart waits on, and the port the APIServices use.
    service = one(objects, "Service", name)
    check(service["spec"]["ports"][0]["targetPort"] == "https", f"{label}: Service targets {service['spec']['ports']}")

    deployment = one(objects, "Deployment", name)
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    security = container["securityContext"]
    check(security.get("readOnlyRootFilesystem") is True, f"{label}: root filesystem is writable")
    check(security.get("runAsNonRoot") is True and security.get("runAsUser", 0) != 0, f"{label}: may run as root")
    check(security.get("allowPrivilegeEscalation") is False, f"{label}: privilege escalation allowed")
    check(container["livenessProbe"]["httpGet"]["path"] == "/livez", f"{label}: liveness probe")
    check(container["readinessProbe"]["httpGet"]["path"] == "/readyz", f"{label}: readiness probe")
    check(container["livenessProbe"]["httpGet"]["scheme"] == "HTTPS", f"{label}: probes must use HTTPS")
    check(container["ports"][0]["name"] == "https", f"{label}: container port name")
    volumes = {v["name"] for v in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        check(mount["name"] in volumes, f"{label}: mount {mount['name']} has no volume")
    check(any(m["mountPath"] == "/tmp" for m in container["volumeMounts"]), f"{label}: no writable /tmp")
    args = container["args"]
    check("--bind-address=0.0.0.0" in args, f"{label}: the server must listen on the pod address: {args}")
    metrics = values.get("metrics", {})
    check(f"--result-metrics={metrics.get('results', 'detailed')}" in args, f"{label}: result metrics mode: {args}")
    change_log = values.get("storage", {}).get("changeLog", {})
    for flag, key, default in (("--change-log-retention-seconds", "retentionSeconds", 900),
                               ("--change-log-max-entries", "maxEntries", 100000)):
        check(f"{flag}={int(change_log.get(key, default))}" in args, f"{label}: {flag}: {args}")
    storage = values.get("storage", {})
    wal = [a for a in args if a.startswith("--sqlite-wal-bytes")]
    expected_wal = ([f"--sqlite-wal-bytes={int(storage.get('sqlite', {}).get('walBytes', 67108864))}"]
                    if storage.get("type") == "sqlite" else [])
    check(wal == expected_wal, f"{label}: SQLite WAL limit {wal}, not {expected_wal}")
    result_labels = [a for a in args if a.startswith("--result-metrics-labels")]
    expected_labels = [f"--result-metrics-labels={','.join(metrics['resultsLabels'])}"] if metrics.get("resultsLabels") else []
    check(result_labels == expected_labels, f"{label}: result metrics labels {result_labels}, not {expected_labels}")

    # Secrets the pod reads exist in the render, or are the user's or an operator's.
    rendered_secrets = {o["metadata"]["name"] for o in by_kind(objects, "Secret")}
    allowed = set(rendered_secrets)
    db = values.get("config", {}).get("db", {})
    if db.get("secretName"):
        allowed.add(db["secretName"])
    if values.get("storage", {}).get("type") == "cloudnativepg":
        allowed.add(f"{name}-db-app")
    tls = values.get("tls", {})
    if tls.get("mode") == "certManager":
        allowed.add(f"{name}-tls")
    if tls.get("existingSecret"):
        allowed.add(tls["existingSecret"])
    for vol in pod.get("volumes", []):
        if "secret" in vol and vol["name"] not in {v["name"] for v in values.get("extraVolumes", [])}:
            check(vol["secret"]["secretName"] in allowed, f"{label}: volume secret {vol['secret']['secretName']} missing")
    for env in container.get("env", []):
        ref = env.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            check(ref["name"] in allowed, f"{label}: env {env['name']} reads missing Secret {ref['name']}")

    storage = values.get("storage", {}).get("type", "external")
    env_names = {e["name"] for e in container.get("env", [])}
    if storage == "sqlite":
        check(deployment["spec"]["replicas"] == 1, f"{label}: SQLite needs exactly one replica")
        check(deployment["spec"]["strategy"]["type"] == "Recreate", f"{label}: SQLite needs Recreate")
        check("--storage=sqlite:///data/reports.db" in args, f"{label}: {args}")
        check(not by_kind(objects, "HorizontalPodAutoscaler"), f"{label}: no HPA with SQLite")
        if not values.get("storage", {}).get("sqlite", {}).get("existingClaim"):
            one(objects, "PersistentVolumeClaim", f"{name}-data")
    else:
        check({"DB_HOST", "DB_PORT", "DB_DATABASE", "DB_USER", "DB_PASSWORD"} <= env_names, f"{label}: {env_names}")
        password = next(e for e in container["env"] if e["name"] == "DB_PASSWORD")
        check("valueFrom" in password, f"{label}: the database password must come from a Secret")
    if storage == "cloudnativepg":
        cluster = one(objects, "Cluster", f"{name}-db")
        check(cluster["spec"]["bootstrap"]["initdb"]["database"], f"{label}: CNPG database")

    # RBAC: what delegated authentication, leader election and APIService upkeep need.
    bindings = by_kind(objects, "ClusterRoleBinding")
    check(any(b["roleRef"]["name"] == "system:auth-delegator" for b in bindings), f"{label}: no auth-delegator binding")
    reader = [b for b in by_kind(objects, "RoleBinding") if b["metadata"].get("namespace") == "kube-system"]
    check(
        len(reader) == 1 and reader[0]["roleRef"]["name"] == "extension-apiserver-authentication-reader",
        f"{label}: no extension-apiserver-authentication-reader binding in kube-system",
    )
    sa_name = pod["serviceAccountName"]
    for binding in bindings + by_kind(objects, "RoleBinding"):
        check(binding["subjects"][0]["name"] == sa_name, f"{label}: {binding['metadata']['name']} binds another account")
    rules = [r for role in by_kind(objects, "ClusterRole") + by_kind(objects, "Role") for r in role["rules"]]

    def allowed_verbs(group: str, resource: str, resource_name: str | None = None) -> set[str]:
        verbs: set[str] = set()
        for role in by_kind(objects, "ClusterRole") + by_kind(objects, "Role"):
            if role["metadata"]["name"].endswith((":reports-edit", ":reports-view")):
                continue  # aggregated roles for people, not for the server
            for r in role["rules"]:
                names = r.get("resourceNames")
                if group in r["apiGroups"] and resource in r["resources"] and (not names or resource_name in names):
                    verbs |= set(r["verbs"])
        return verbs

    check({"create", "get", "update"} <= allowed_verbs("coordination.k8s.io", "leases"), f"{label}: leases")
    check("get" in allowed_verbs("", "namespaces"), f"{label}: namespaces")
    for webhook in ["validatingwebhookconfigurations", "mutatingwebhookconfigurations"]:
        check({"get", "list", "watch"} <= allowed_verbs("admissionregistration.k8s.io", webhook), f"{label}: {webhook}")
    for api in APISERVICES:
        verbs = allowed_verbs("apiregistration.k8s.io", "apiservices", api)
        check({"create", "get", "update", "patch"} <= verbs, f"{label}: apiservice {api}: {verbs}")
    check(rules, f"{label}: no RBAC rules")
    edit = one(objects, "ClusterRole", f"{name}:reports-edit")
    labels = edit["metadata"]["labels"]
    check(
        labels.get("rbac.authorization.k8s.io/aggregate-to-admin") == "true"
        and labels.get("rbac.authorization.k8s.io/aggregate-to-edit") == "true",
        f"{label}: the report roles must aggregate to admin and edit",
    )
    for group, resources in SIX.items():
        granted = {res for r in edit["rules"] if group in r["apiGroups"] for res in r["resources"]}
        check(resources <= granted, f"{label}: edit role misses {resources - granted}")

    # APIServices: the right names, pointing at the Service, trusting the right CA.
    install = values.get("apiServicesManagement", {}).get("installApiServices", {})
    expected = set()
    if install.get("enabled", True):
        expected.add("v1alpha2.wgpolicyk8s.io")
        if install.get("installEphemeralReportsService", True):
            expected.add("v1.reports.kyverno.io")
        if install.get("installOpenreportsService", True):
            expected.add("v1alpha1.openreports.io")
        if install.get("installQueryService", True):
            expected.add("v1alpha1.query.reports-server.io")
    apiservices = by_kind(objects, "APIService")
    check({a["metadata"]["name"] for a in apiservices} == expected, f"{label}: APIServices {apiservices}")
    mode = tls.get("mode", "generate")
    for a in apiservices:
        spec = a["spec"]
        check((spec["group"], spec["version"]) == APISERVICES[a["metadata"]["name"]], f"{label}: {spec}")
        check(spec["service"] == {"name": name, "namespace": namespace, "port": service["spec"]["ports"][0]["port"]},
              f"{label}: APIService service {spec['service']}")
        if mode == "generate":
            secret = one(objects, "Secret", f"{name}-tls")
            check(spec["caBundle"] == secret["data"]["ca.crt"], f"{label}: caBundle is not the generated CA")
            check("insecureSkipTLSVerify" not in spec, f"{label}: verification skipped with a known CA")
        elif mode == "certManager":
            check(a["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == f"{namespace}/{name}-tls",
                  f"{label}: cert-manager CA injection")
        elif mode == "secret" and tls.get("caBundle"):
            check(base64.b64decode(spec["caBundle"]).decode() == tls["caBundle"], f"{label}: caBundle")
        else:
            check(spec.get("insecureSkipTLSVerify") is True, f"{label}: no CA and no skip")
    if mode == "generate":
        secret = one(objects, "Secret", f"{name}-tls")
        cert = base64.b64decode(secret["data"]["tls.crt"]).decode()
        check("BEGIN CERTIFICATE" in cert, f"{label}: generated certificate")
    if mode == "certManager":
        certificate = one(objects, "Certificate", f"{name}-tls")
        check(f"{name}.{namespace}.svc" in certificate["spec"]["dnsNames"], f"{label}: certificate names")

    # Optional objects.
    pdb = values.get("pdb", {}).get("enabled", True)
    check(bool(by_kind(objects, "PodDisruptionBudget")) == pdb, f"{label}: PDB")
    hpa = values.get("autoscaling", {}).get("enabled", False) and storage != "sqlite"
    check(bool(by_kind(objects, "HorizontalPodAutoscaler")) == hpa, f"{label}: HPA")
    if hpa:
        check("replicas" not in deployment["spec"], f"{label}: replicas set beside an HPA")
    monitor = values.get("metrics", {}).get("serviceMonitor", {}).get("enabled", False)
    check(bool(by_kind(objects, "ServiceMonitor")) == monitor, f"{label}: ServiceMonitor")
    policy = values.get("networkPolicy", {}).get("enabled", False)
    check(bool(by_kind(objects, "NetworkPolicy")) == policy, f"{label}: NetworkPolicy")

    for arg in args:
        flag = arg.split("=", 1)[0]
        check(flag.startswith("--"), f"{label}: odd argument {arg!r}")


def run_binary(binary: str, args: list[str], label: str) -> list[str]:
    """Starts the server with a rendered argument list (loopback, a free port, an in-memory store,
    its own certificate) and returns the flags its start-up warning names."""
    rewritten = []
    for arg in args:
        flag = arg.split("=", 1)[0]
        if flag in ("--tls-cert-file", "--tls-private-key-file", "--storage", "--bind-address", "--secure-port"):
            continue
        if flag in ("--dbsslrootcert", "--dbsslcert", "--dbsslkey"):
            continue  # files mounted in the pod; the in-memory store never reads them
        rewritten.append(arg)
    rewritten += ["--bind-address=127.0.0.1", "--secure-port=0", "--storage=sqlite::memory:"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DB_")}
    env["NO_COLOR"] = "1"
    with tempfile.TemporaryDirectory() as cwd:
        proc = subprocess.Popen([binary, *rewritten], cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        lines: list[str] = []
        ready = threading.Event()

        def read() -> None:
            for line in proc.stderr:
                lines.append(line.rstrip())
                if "is ready on" in line:
                    ready.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        deadline = time.monotonic() + 30
        while not ready.is_set() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        started = ready.is_set()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join(timeout=5)
    check(started, f"{label}: the server did not start with {rewritten}:\n" + "\n".join(lines))
    warned = [l for l in lines if "change nothing" in l]
    check(len(warned) <= 1, f"{label}: more than one compatibility warning: {warned}")
    named = set(re.findall(r"--[a-z0-9-]+", warned[0].split("change nothing:", 1)[1])) if warned else set()
    for arg in rewritten:
        flag = arg.split("=", 1)[0]
        check(flag in HONOURED or flag in named, f"{label}: {flag} is neither honoured nor named in the warning: {warned}")
    return sorted(named)


def install_manifest(values: dict) -> str:
    objects = render(values, "reports-server", "reports-server")
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "reports-server"}}
    objects = [namespace] + objects
    objects.sort(key=lambda o: (KIND_ORDER.index(o["kind"]) if o["kind"] in KIND_ORDER else len(KIND_ORDER)))
    docs = []
    for obj in objects:
        labels = obj["metadata"].get("labels", {})
        if labels.get("app.kubernetes.io/managed-by") == "Helm":
            labels["app.kubernetes.io/managed-by"] = "kubectl"
        text = yaml.safe_dump(obj, sort_keys=False, default_flow_style=False, width=120)
        text = text.replace("app.kubernetes.io/managed-by: Helm", "app.kubernetes.io/managed-by: kubectl")
        docs.append(text)
    header = (
        "# reports-server: plain manifests, generated from charts/reports-server with\n"
        "# deploy/install-values.yaml. Do not edit: change the chart or the values, then run\n"
        f"#   {REGENERATE}\n"
    )
    return header + "---\n" + "---\n".join(docs)


def scenarios() -> list[tuple[str, dict, str, str]]:
    out = [("default values", {}, "reports-server", "reports-server"),
           ("as Kyverno's subchart", {}, "kyverno", "kyverno")]
    for path in sorted((CHART / "ci").glob("*.yaml")):
        out.append((f"ci/{path.name}", yaml.safe_load(path.read_text()) or {}, "reports-server", "reports-server"))
    out.append(("deploy/install-values.yaml", yaml.safe_load(INSTALL_VALUES.read_text()), "reports-server", "reports-server"))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="regenerate deploy/install.yaml")
    parser.add_argument("--binary", help="reports-server binary to start with every rendered argument list")
    opts = parser.parse_args()

    manifest = install_manifest(yaml.safe_load(INSTALL_VALUES.read_text()))
    if opts.write:
        INSTALL.write_text(manifest)
        print(f"wrote {INSTALL.relative_to(ROOT)}")
        return 0

    failures = []
    for label, values, release, namespace in scenarios():
        try:
            objects = render(values, release, namespace)
            lint(values, label)
            validate_schemas(objects, label)
            check_objects(objects, values, release, namespace, label)
            named = run_binary(os.path.abspath(opts.binary), container_args(objects), label) if opts.binary else None
            kinds = sorted({o["kind"] for o in objects})
            print(f"ok: {label} ({release}/{namespace}): {len(objects)} objects {kinds}"
                  + (f"; server started, warned about {named}" if named is not None else ""))
        except Failure as e:
            failures.append(str(e))
            print(f"FAILED: {label}: {e}")
        except Exception as e:  # a render or lint error from Helm
            failures.append(f"{label}: {type(e).__name__}: {e}")
            print(f"FAILED: {label}: {type(e).__name__}: {e}")

    # Values the chart must refuse.
    for label, values in [("etcd", {"config": {"etcd": {"enabled": True}}}),
                          ("unknown storage", {"storage": {"type": "mysql"}}),
                          ("secret without name", {"tls": {"mode": "secret"}}),
                          ("custom result metrics without labels", {"metrics": {"results": "custom"}}),
                          ("result labels without custom", {"metrics": {"resultsLabels": ["policy"]}})]:
        try:
            render(values, "reports-server", "reports-server")
            failures.append(f"refused values: {label} rendered")
        except Exception:
            print(f"ok: refuses {label}")

    current = INSTALL.read_text() if INSTALL.exists() else ""
    if current != manifest:
        failures.append(f"deploy/install.yaml is stale: regenerate it with `{REGENERATE}`")
        print(f"FAILED: deploy/install.yaml is stale: run `{REGENERATE}`")
    else:
        print("ok: deploy/install.yaml matches the chart")

    if failures:
        print(f"\n{len(failures)} chart check(s) failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
