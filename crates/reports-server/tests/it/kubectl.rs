//! The real kubectl binary against the server: what operators type every day.

use kube::api::{Patch, PatchParams};
use serde_json::Value;

use crate::harness::{dynamic_api, sample_object, within, TestServer, KINDS};

// kubectl runs with its default `--validate=strict`: it finds `fieldValidation` on our PATCH
// operations in /openapi/v3 and leaves validation to the server instead of downloading schemas.

/// Runs kubectl and returns stdout, failing the test with stderr when kubectl fails.
fn ok(t: &TestServer, args: &[&str]) -> String {
    let (success, stdout, stderr) = t.kubectl(args);
    assert!(success, "kubectl {args:?} failed: {stderr}");
    stdout
}

fn write_manifest(t: &TestServer, name: &str, object: &Value) -> String {
    let path = t.dir.path().join(name);
    std::fs::write(&path, serde_json::to_string_pretty(object).unwrap()).unwrap();
    path.to_string_lossy().into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_resources_and_explain_free_discovery() {
    let t = TestServer::start().await;
    let out = ok(&t, &["api-resources", "--api-group=wgpolicyk8s.io", "-o", "wide"]);
    assert!(out.contains("policyreports") && out.contains("polr"), "{out}");
    assert!(out.contains("clusterpolicyreports") && out.contains("cpolr"), "{out}");
    let kyverno = ok(&t, &["api-resources", "--categories=kyverno", "-o", "name"]);
    let mut names: Vec<&str> = kyverno.lines().collect();
    names.sort();
    assert_eq!(names, ["clusterephemeralreports.reports.kyverno.io", "ephemeralreports.reports.kyverno.io"]);
    let versions = ok(&t, &["api-versions"]);
    for gv in ["wgpolicyk8s.io/v1alpha2", "reports.kyverno.io/v1", "openreports.io/v1alpha1"] {
        assert!(versions.lines().any(|l| l == gv), "{gv} in {versions}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_prints_crd_columns_across_namespaces() {
    let t = TestServer::start().await;
    for (ns, name) in [("team-a", "r1"), ("team-b", "r2")] {
        let file = write_manifest(&t, &format!("{name}.json"), &sample_object(0, name, Some(ns)));
        ok(&t, &["create", "-f", &file]);
    }
    let out = ok(&t, &["get", "polr", "-A"]);
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAMESPACE", "NAME", "KIND", "NAME", "PASS", "FAIL", "WARN", "ERROR", "SKIP", "AGE"]);
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows.len(), 2, "{out}");
    assert_eq!(&rows[0][..9], ["team-a", "r1", "Pod", "web", "1", "0", "0", "0", "0"]);
    assert_eq!(rows[1][0..2], ["team-b", "r2"]);

    let labelled = ok(&t, &["get", "policyreports.wgpolicyk8s.io", "-n", "team-a", "--show-labels"]);
    assert!(labelled.contains("app=demo"), "{labelled}");
    let sorted = ok(&t, &["get", "polr", "-A", "--sort-by=.metadata.name", "-o", "name"]);
    assert_eq!(
        sorted.lines().collect::<Vec<_>>(),
        ["policyreport.wgpolicyk8s.io/r1", "policyreport.wgpolicyk8s.io/r2"]
    );
    let selected = ok(
        &t,
        &[
            "get",
            "polr",
            "-A",
            "-l",
            "app=demo",
            "--field-selector",
            "metadata.namespace=team-b",
            "-o",
            "name",
        ],
    );
    assert_eq!(selected.trim(), "policyreport.wgpolicyk8s.io/r2");
    let (success, _, stderr) = t.kubectl(&["get", "polr", "-A", "-l", "app in (a"]);
    assert!(!success && stderr.contains("unable to parse requirement"), "{stderr}");
}

on_both_stores! {
    async fn get_paginates_with_chunk_size(t) {
        for i in 0..7 {
            let file =
                write_manifest(&t, &format!("r{i}.json"), &sample_object(4, &format!("r{i}"), Some("paged")));
            ok(&t, &["create", "-f", &file]);
        }
        // Every object once, in order: a page repeated or skipped shows.
        let expected: Vec<String> = (0..7).map(|i| format!("report.openreports.io/r{i}")).collect();
        let out = ok(&t, &["get", "reps", "-n", "paged", "--chunk-size=2", "-o", "name"]);
        assert_eq!(out.lines().collect::<Vec<_>>(), expected, "{out}");
        let json: Value =
            serde_json::from_str(&ok(&t, &["get", "reps", "-n", "paged", "--chunk-size=3", "-o", "json"]))
                .unwrap();
        let names: Vec<String> = json["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| format!("report.openreports.io/{}", o["metadata"]["name"].as_str().unwrap()))
            .collect();
        assert_eq!(names, expected);
    }
}

on_both_stores! {
    async fn apply_patch_edit_describe_and_delete(t) {
        let mut object = sample_object(2, "ephr-1", Some("default"));
        let file = write_manifest(&t, "ephr.json", &object);
        let created = ok(&t, &["apply", "-f", &file]);
        assert!(created.contains("ephemeralreport.reports.kyverno.io/ephr-1 created"), "{created}");
        object["spec"]["summary"]["fail"] = 3.into();
        let file = write_manifest(&t, "ephr.json", &object);
        let configured = ok(&t, &["apply", "-f", &file]);
        assert!(configured.contains("configured"), "{configured}");
        let unchanged = ok(&t, &["apply", "-f", &file]);
        assert!(unchanged.contains("unchanged"), "{unchanged}");

        ok(&t, &["patch", "ephr", "ephr-1", "--type=merge", "-p", r#"{"metadata":{"labels":{"team":"a"}}}"#]);
        ok(
            &t,
            &[
                "patch",
                "ephr",
                "ephr-1",
                "--type=json",
                "-p",
                r#"[{"op":"replace","path":"/spec/summary/pass","value":9}]"#,
            ],
        );
        ok(&t, &["label", "ephr", "ephr-1", "edit-me=yes"]);
        ok(&t, &["annotate", "ephr", "ephr-1", "note=hello"]);
        let (success, _, stderr) = t.kubectl(&["patch", "ephr", "ephr-1", "--type=strategic", "-p", "{}"]);
        assert!(!success && stderr.contains("is not supported"), "{stderr}");

        // Quotes make kubectl run the editor through a shell, with the file path appended.
        let editor = "sed -i 's/edit-me: .yes./edit-me: edited/'";
        let (success, _, stderr) = t.kubectl_env(&["edit", "ephr", "ephr-1"], &[("KUBE_EDITOR", editor)]);
        assert!(success, "kubectl edit: {stderr}");

        let current: Value = serde_json::from_str(&ok(&t, &["get", "ephr", "ephr-1", "-o", "json"])).unwrap();
        assert_eq!(current["spec"]["summary"]["fail"], 3);
        assert_eq!(current["spec"]["summary"]["pass"], 9);
        assert_eq!(current["metadata"]["labels"]["team"], "a");
        assert_eq!(current["metadata"]["labels"]["edit-me"], "edited");
        assert_eq!(current["metadata"]["annotations"]["note"], "hello");
        assert_eq!(current["metadata"]["generation"], 3, "only spec changes bump the generation");

        let described = ok(&t, &["describe", "ephr", "ephr-1"]);
        assert!(described.contains("Name:         ephr-1") && described.contains("team=a"), "{described}");
        let yaml = ok(&t, &["get", "kyverno", "-o", "yaml"]);
        assert!(yaml.contains("name: ephr-1") && yaml.contains("kind: EphemeralReport"), "{yaml}");

        let deleted = ok(&t, &["delete", "ephr", "ephr-1"]);
        assert!(deleted.contains("deleted"), "{deleted}");
        let (success, _, stderr) = t.kubectl(&["get", "ephr", "ephr-1"]);
        assert!(!success && stderr.contains("NotFound"), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_conflicts_and_bad_input_are_reported_by_kubectl() {
    let t = TestServer::start().await;
    let file = write_manifest(&t, "r.json", &sample_object(5, "creps-1", None));
    ok(&t, &["create", "-f", &file]);
    let (success, _, stderr) = t.kubectl(&["create", "-f", &file]);
    assert!(!success && stderr.contains("AlreadyExists"), "{stderr}");
    let mut bad = sample_object(5, "Bad_Name", None);
    bad["metadata"]["labels"]["bad key!"] = "x".into();
    let file = write_manifest(&t, "bad.json", &bad);
    let (success, _, stderr) = t.kubectl(&["create", "-f", &file]);
    assert!(!success && stderr.contains("is invalid"), "{stderr}");
    let listed = ok(&t, &["get", "creps", "-o", "name"]);
    assert_eq!(listed.trim(), "clusterreport.openreports.io/creps-1");
    ok(&t, &["delete", "creps", "--all"]);
    assert_eq!(ok(&t, &["get", "creps", "-o", "name"]).trim(), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_and_waiting_for_deletion() {
    let t = TestServer::start().await;
    let explained = ok(&t, &["explain", "polr.results"]);
    assert!(
        explained.contains("KIND:       PolicyReport") && explained.contains("FIELD: results"),
        "{explained}"
    );
    let recursive = ok(&t, &["explain", "ephr.spec", "--recursive"]);
    assert!(recursive.contains("owner") && recursive.contains("summary"), "{recursive}");

    // Both commands must really wait, on a watch: the objects carry a finalizer, so a delete
    // only marks them, and they are gone once the test removes it while kubectl watches.
    let client = t.kube();
    let spawn = |args: &[&str]| {
        std::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(t.kubeconfig())
            .args(args)
            .env("HOME", t.dir.path())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    for (index, short, name, waiting) in [
        (0, "polr", "gone", vec!["delete", "polr", "gone", "--wait", "--timeout=60s"]),
        (4, "reps", "waited", vec!["wait", "--for=delete", "reps/waited", "--timeout=60s"]),
    ] {
        let mut object = sample_object(index, name, Some("default"));
        object["metadata"]["finalizers"] = serde_json::json!(["example.com/hold"]);
        let file = write_manifest(&t, &format!("{name}.json"), &object);
        ok(&t, &["create", "-f", &file]);
        let api = dynamic_api(&client, index, Some("default")).0;
        let mut child = spawn(&waiting);
        if short == "reps" {
            api.delete(name, &Default::default()).await.unwrap();
        }
        // kubectl has deleted (the object is marked) and watches it.
        wait_for_watch(&t, KINDS[index].3).await;
        let marked = api.get(name).await.expect("the finalizer keeps the object");
        assert!(marked.metadata.deletion_timestamp.is_some(), "{short}/{name} is marked for deletion");
        assert!(child.try_wait().unwrap().is_none(), "kubectl waits while {short}/{name} exists");
        let release = serde_json::json!({"metadata": {"finalizers": null}});
        api.patch(name, &PatchParams::default(), &Patch::Merge(&release)).await.unwrap();
        let out = tokio::task::block_in_place(|| child.wait_with_output().unwrap());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "kubectl {waiting:?}: {stderr}");
        assert!(api.get_opt(name).await.unwrap().is_none());
    }
}

/// Waits until the server has an open watch on `plural` (kubectl's own watch).
async fn wait_for_watch(t: &TestServer, plural: &str) {
    let http = t.http();
    let gauge = format!("resource=\"{plural}\"");
    within(&format!("a watch on {plural}"), async {
        loop {
            let metrics = http.get(t.url("/metrics")).send().await.unwrap().text().await.unwrap();
            let watching = metrics.lines().any(|line| {
                line.starts_with("apiserver_longrunning_requests{")
                    && line.contains(&gauge)
                    && line.contains("verb=\"WATCH\"")
                    && !line.ends_with(" 0")
            });
            if watching {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_reports_unknown_fields_like_for_a_crd() {
    let t = TestServer::start().await;
    let mut object = sample_object(0, "strict", Some("default"));
    object["spec"] = serde_json::json!({"foo": 1});
    let file = write_manifest(&t, "strict.json", &object);
    // Default --validate=strict: the server refuses the create, naming the field.
    let (success, _, stderr) = t.kubectl(&["apply", "-f", &file]);
    assert!(!success, "{stderr}");
    assert!(
        stderr.contains(
            "PolicyReport in version \"v1alpha2\" cannot be handled as a PolicyReport: strict decoding error: \
             unknown field \"spec\""
        ),
        "{stderr}"
    );
    let (success, _, _) = t.kubectl(&["get", "polr", "strict"]);
    assert!(!success, "nothing was created");
    // --validate=warn: created without the field, and kubectl prints the server's warning.
    let (success, _, stderr) = t.kubectl(&["apply", "--validate=warn", "-f", &file]);
    assert!(success, "{stderr}");
    assert!(stderr.contains("Warning: unknown field \"spec\""), "{stderr}");
    // On an existing object apply patches: Strict makes the patch a 422 naming the field.
    let (success, _, stderr) = t.kubectl(&["apply", "-f", &file]);
    assert!(!success, "{stderr}");
    assert!(stderr.contains("strict decoding error: unknown field \"spec\""), "{stderr}");
    let current: Value = serde_json::from_str(&ok(&t, &["get", "polr", "strict", "-o", "json"])).unwrap();
    assert!(current.get("spec").is_none());
    // A bad enum is rejected whatever the validation mode, with kubectl's Invalid rendering.
    let mut bad = sample_object(0, "bad-enum", Some("default"));
    bad["results"][0]["result"] = "maybe".into();
    let file = write_manifest(&t, "bad.json", &bad);
    let (success, _, stderr) = t.kubectl(&["apply", "--validate=false", "-f", &file]);
    assert!(!success, "{stderr}");
    assert!(
        stderr.contains("The PolicyReport \"bad-enum\" is invalid")
            && stderr.contains("results[0].result: Unsupported value: \"maybe\""),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_apply_is_reported_unavailable() {
    let t = TestServer::start().await;
    let file = write_manifest(&t, "ssa.json", &sample_object(0, "ssa", Some("default")));
    let (success, _, stderr) = t.kubectl(&["apply", "--server-side", "-f", &file]);
    assert!(!success, "{stderr}");
    assert!(stderr.contains("Server-side apply not available on the server"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_resolves_meta_types_and_enums() {
    let t = TestServer::start().await;
    let metadata = ok(&t, &["explain", "polr.metadata"]);
    assert!(metadata.contains("ownerReferences") && metadata.contains("resourceVersion"), "{metadata}");
    let owner = ok(&t, &["explain", "cephr.spec.owner"]);
    assert!(owner.contains("uid") && owner.contains("-required-"), "{owner}");
    let result = ok(&t, &["explain", "reps.results.result"]);
    let listed: Vec<&str> =
        result.split("ENUM:").nth(1).unwrap_or_default().split_whitespace().take(5).collect();
    assert_eq!(listed, ["pass", "fail", "warn", "error", "skip"], "{result}");
    let recursive = ok(&t, &["explain", "cpolr", "--recursive"]);
    assert!(recursive.contains("managedFields") && recursive.contains("scopeSelector"), "{recursive}");
}
