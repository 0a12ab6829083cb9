//! Schema validation and pruning on writes, as kube-apiserver does them for a CRD: unknown fields
//! under each `fieldValidation` mode on create, update and patch, then type, enum and required
//! violations as 422s naming each field, and the server-side apply decision (415).

use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{json, Value};

use crate::harness::{dynamic_api, polr_api, sample_object, status_of, to_dynamic};

const POLR: &str = "/apis/wgpolicyk8s.io/v1alpha2/namespaces/default/policyreports";

/// A report with two unknown fields: one at the top, one inside a result.
fn with_unknown_fields(name: &str) -> Value {
    let mut object = sample_object(0, name, Some("default"));
    object["spec"] = json!({"foo": 1});
    object["results"][0]["bogus"] = json!("x");
    object
}

fn warnings(response: &reqwest::Response) -> Vec<String> {
    response.headers().get_all("warning").iter().map(|v| v.to_str().unwrap().to_string()).collect()
}

const EXPECTED_WARNINGS: [&str; 2] =
    [r#"299 - "unknown field \"results[0].bogus\"""#, r#"299 - "unknown field \"spec\"""#];

on_both_stores! {
    async fn unknown_fields_on_create_follow_field_validation(t) {
        let http = t.http();
        for (mode, name) in
            [("", "default-mode"), ("?fieldValidation=Warn", "warn"), ("?fieldValidation=Ignore", "ignore")]
        {
            let response =
                http.post(t.url(&format!("{POLR}{mode}"))).json(&with_unknown_fields(name)).send().await.unwrap();
            assert_eq!(response.status(), 201, "{mode}");
            let expected: Vec<String> = if mode.ends_with("Ignore") {
                vec![]
            } else {
                EXPECTED_WARNINGS.iter().map(|w| w.to_string()).collect()
            };
            assert_eq!(warnings(&response), expected, "{mode}");
            let created: Value = response.json().await.unwrap();
            assert!(created.get("spec").is_none(), "{mode}: unknown top-level field pruned");
            assert!(created["results"][0].get("bogus").is_none(), "{mode}: unknown result field pruned");
            assert_eq!(created["results"][0]["policy"], "require-labels", "{mode}: known fields kept");
            let stored: Value =
                http.get(t.url(&format!("{POLR}/{name}"))).send().await.unwrap().json().await.unwrap();
            assert!(stored.get("spec").is_none(), "{mode}: pruned in storage too");
        }

        let response = http
            .post(t.url(&format!("{POLR}?fieldValidation=Strict")))
            .json(&with_unknown_fields("strict"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
        let status: Value = response.json().await.unwrap();
        assert_eq!(status["reason"], "BadRequest");
        assert_eq!(
            status["message"],
            "PolicyReport in version \"v1alpha2\" cannot be handled as a PolicyReport: strict decoding error: \
             unknown field \"results[0].bogus\", unknown field \"spec\""
        );
        let missing = http.get(t.url(&format!("{POLR}/strict"))).send().await.unwrap();
        assert_eq!(missing.status(), 404, "nothing stored");

        let bad_mode =
            http.post(t.url(&format!("{POLR}?fieldValidation=Loud"))).json(&with_unknown_fields("x")).send();
        assert_eq!(bad_mode.await.unwrap().status(), 422);
    }
}

on_both_stores! {
    async fn unknown_metadata_fields_are_pruned_too(t) {
        let mut object = sample_object(0, "meta", Some("default"));
        object["metadata"]["colour"] = json!("blue");
        let response = t.http().post(t.url(POLR)).json(&object).send().await.unwrap();
        assert_eq!(warnings(&response), vec![r#"299 - "unknown field \"metadata.colour\"""#]);
        let created: Value = response.json().await.unwrap();
        assert!(created["metadata"].get("colour").is_none());
        assert_eq!(created["metadata"]["labels"]["app"], "demo");
    }
}

on_both_stores! {
    async fn unknown_fields_on_update_and_patch(t) {
        let http = t.http();
        let created: Value = http
            .post(t.url(POLR))
            .json(&sample_object(0, "r", Some("default")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let item = format!("{POLR}/r");

        // PUT: same 400 as create under Strict; a warning and pruning otherwise.
        let mut update = created.clone();
        update["spec"] = json!({"foo": 1});
        let response =
            http.put(t.url(&format!("{item}?fieldValidation=Strict"))).json(&update).send().await.unwrap();
        assert_eq!(response.status(), 400);
        let status: Value = response.json().await.unwrap();
        assert_eq!(
            status["message"],
            "PolicyReport in version \"v1alpha2\" cannot be handled as a PolicyReport: strict decoding error: \
             unknown field \"spec\""
        );
        let response = http.put(t.url(&item)).json(&update).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(warnings(&response), vec![r#"299 - "unknown field \"spec\"""#]);
        let updated: Value = response.json().await.unwrap();
        assert!(updated.get("spec").is_none());
        assert_eq!(updated["metadata"]["generation"], 1, "pruning left the content unchanged");

        // PATCH under Strict: 422 on the `patch` field, quoting the patched object.
        let merge = |query: &str, patch: Value| {
            http.patch(t.url(&format!("{item}{query}")))
                .header("Content-Type", "application/merge-patch+json")
                .body(patch.to_string())
                .send()
        };
        let response = merge("?fieldValidation=Strict", json!({"spec": {"foo": 1}})).await.unwrap();
        assert_eq!(response.status(), 422);
        let status: Value = response.json().await.unwrap();
        assert_eq!(status["reason"], "Invalid");
        let message = status["message"].as_str().unwrap();
        assert!(message.starts_with(r#" "" is invalid: patch: Invalid value: "{\"#), "{message}");
        assert!(message.ends_with(r#"": strict decoding error: unknown field "spec""#), "{message}");
        assert_eq!(status["details"]["causes"][0]["field"], "patch");
        assert_eq!(status["details"]["causes"][0]["reason"], "FieldValueInvalid");

        let response = merge("", json!({"spec": {"foo": 1}, "summary": {"fail": 2}})).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(warnings(&response), vec![r#"299 - "unknown field \"spec\"""#]);
        let patched: Value = response.json().await.unwrap();
        assert!(patched.get("spec").is_none());
        assert_eq!(patched["summary"]["fail"], 2, "the known part of the patch applies");

        let response = http
            .patch(t.url(&format!("{item}?fieldValidation=Ignore")))
            .header("Content-Type", "application/json-patch+json")
            .body(json!([{"op": "add", "path": "/results/0/bogus", "value": 1}]).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert!(warnings(&response).is_empty());
        let patched: Value = response.json().await.unwrap();
        assert!(patched["results"][0].get("bogus").is_none());
    }
}

on_both_stores! {
    async fn schema_violations_are_422_naming_each_field(t) {
        let api = polr_api(&t.kube(), "default");
        let mut bad = sample_object(0, "bad", Some("default"));
        bad["results"] = json!([
            {"policy": "p", "result": "bad"},
            {"result": "pass", "severity": "urgent"},
            {"policy": 7, "scored": "yes"},
        ]);
        bad["summary"]["pass"] = json!("one");
        let status = status_of(api.create(&PostParams::default(), &to_dynamic(bad)).await.unwrap_err());
        assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
        let details = status.details.unwrap();
        assert_eq!(
            (details.kind.as_str(), details.group.as_str(), details.name.as_str()),
            ("PolicyReport", "wgpolicyk8s.io", "bad")
        );
        let causes: Vec<(String, String)> =
            details.causes.iter().map(|c| (c.field.clone(), c.reason.clone())).collect();
        assert_eq!(
            causes,
            [
                ("results[0].result", "FieldValueNotSupported"),
                ("results[1].severity", "FieldValueNotSupported"),
                ("results[1].policy", "FieldValueRequired"),
                ("results[2].policy", "FieldValueTypeInvalid"),
                ("results[2].scored", "FieldValueTypeInvalid"),
                ("summary.pass", "FieldValueTypeInvalid"),
            ]
            .map(|(f, r)| (f.to_string(), r.to_string()))
        );
        assert!(
            status.message.starts_with(
                "PolicyReport.wgpolicyk8s.io \"bad\" is invalid: [results[0].result: Unsupported value: \"bad\": \
                 supported values: \"pass\", \"fail\", \"warn\", \"error\", \"skip\", "
            ),
            "{}",
            status.message
        );
        assert!(
            status.message.contains(
                "results[2].policy: Invalid value: \"integer\": results[2].policy in body must be of type string: \"integer\""
            ),
            "{}",
            status.message
        );

        // The same checks guard updates and patches of a valid object.
        api.create(&PostParams::default(), &to_dynamic(sample_object(0, "good", Some("default")))).await.unwrap();
        let patch = Patch::Merge(json!({"results": [{"policy": "p", "severity": "urgent"}]}));
        let status = status_of(api.patch("good", &PatchParams::default(), &patch).await.unwrap_err());
        assert_eq!(status.code, 422);
        assert_eq!(
            status.message,
            "PolicyReport.wgpolicyk8s.io \"good\" is invalid: results[0].severity: Unsupported value: \"urgent\": \
             supported values: \"critical\", \"high\", \"low\", \"medium\", \"info\""
        );
        let mut current = serde_json::to_value(api.get("good").await.unwrap()).unwrap();
        current["results"][0].as_object_mut().unwrap().remove("policy");
        let status =
            status_of(api.replace("good", &PostParams::default(), &to_dynamic(current)).await.unwrap_err());
        assert_eq!(
            status.message,
            "PolicyReport.wgpolicyk8s.io \"good\" is invalid: results[0].policy: Required value"
        );
        let stored = serde_json::to_value(api.get("good").await.unwrap()).unwrap();
        assert_eq!(stored["results"][0]["policy"], "require-labels", "nothing invalid was stored");
    }
}

on_both_stores! {
    async fn metadata_and_schema_causes_come_in_one_status(t) {
        let api = polr_api(&t.kube(), "default");
        let mut bad = sample_object(0, "both", Some("default"));
        bad["metadata"]["labels"]["bad key!"] = json!("x");
        bad["results"][0]["result"] = json!("nope");
        let status = status_of(api.create(&PostParams::default(), &to_dynamic(bad)).await.unwrap_err());
        let fields: Vec<String> = status.details.unwrap().causes.into_iter().map(|c| c.field).collect();
        assert_eq!(fields, ["metadata.labels", "results[0].result"]);
    }
}

on_both_stores! {
    async fn ephemeral_reports_need_an_owner_and_nulls_are_dropped(t) {
        let (api, _) = dynamic_api(&t.kube(), 2, Some("default"));
        let mut object = sample_object(2, "e", Some("default"));
        object["spec"].as_object_mut().unwrap().remove("owner");
        let status = status_of(api.create(&PostParams::default(), &to_dynamic(object)).await.unwrap_err());
        assert_eq!(status.code, 422);
        assert_eq!(
            status.message,
            "EphemeralReport.reports.kyverno.io \"e\" is invalid: spec.owner: Required value"
        );
        let mut object = sample_object(2, "e", Some("default"));
        object["spec"]["results"][0]["severity"] = Value::Null;
        let created = api.create(&PostParams::default(), &to_dynamic(object)).await.unwrap();
        let created = serde_json::to_value(created).unwrap();
        assert!(created["spec"]["results"][0].get("severity").is_none(), "null of a non-nullable field dropped");
    }
}

on_both_stores! {
    async fn server_side_apply_is_refused_with_415(t) {
        let body = sample_object(0, "ssa", Some("default"));
        let response = t
            .http()
            .patch(t.url(&format!("{POLR}/ssa?fieldManager=test")))
            .header("Content-Type", "application/apply-patch+yaml")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 415);
        let status: Value = response.json().await.unwrap();
        assert_eq!(status["reason"], "UnsupportedMediaType");
        assert_eq!(
            status["message"],
            "the body of the request was in an unknown format - accepted media types include: \
             application/json-patch+json, application/merge-patch+json"
        );
        let api = polr_api(&t.kube(), "default");
        let apply = api.patch("ssa", &PatchParams::apply("test"), &Patch::Apply(body)).await.unwrap_err();
        assert_eq!(status_of(apply).code, 415);
    }
}

on_both_stores! {
    async fn duplicate_keys_count_as_strict_errors(t) {
        let http = t.http();
        let body = r#"{"apiVersion":"wgpolicyk8s.io/v1alpha2","kind":"PolicyReport",
            "metadata":{"name":"dup","name":"dup","namespace":"default"},"results":[{"policy":"a","policy":"b"}]}"#;
        let post = |query: &'static str| {
            http.post(t.url(&format!("{POLR}{query}")))
                .header("Content-Type", "application/json")
                .body(body)
                .send()
        };
        let response = post("?fieldValidation=Strict").await.unwrap();
        assert_eq!(response.status(), 400);
        let status: Value = response.json().await.unwrap();
        assert_eq!(
            status["message"],
            "PolicyReport in version \"v1alpha2\" cannot be handled as a PolicyReport: strict decoding error: \
             duplicate field \"metadata.name\", duplicate field \"results[0].policy\""
        );
        let response = post("").await.unwrap();
        assert_eq!(response.status(), 201);
        assert_eq!(
            warnings(&response),
            [r#"299 - "duplicate field \"metadata.name\"""#, r#"299 - "duplicate field \"results[0].policy\"""#]
        );
        let created: Value = response.json().await.unwrap();
        assert_eq!(created["results"][0]["policy"], "b", "the last value wins");

        let response = http
            .patch(t.url(&format!("{POLR}/dup?fieldValidation=Strict")))
            .header("Content-Type", "application/merge-patch+json")
            .body(r#"{"summary":{"pass":1,"pass":2}}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 422);
        let status: Value = response.json().await.unwrap();
        let message = status["message"].as_str().unwrap();
        assert!(message.ends_with(r#"strict decoding error: duplicate field "summary.pass""#), "{message}");
    }
}

on_both_stores! {
    async fn duplicate_keys_in_yaml_are_reported_with_their_lines(t) {
        let http = t.http();
        let body = "apiVersion: wgpolicyk8s.io/v1alpha2\nkind: PolicyReport\nmetadata:\n  name: yaml-dup\n  \
                    namespace: default\nresults:\n- policy: a\n  policy: b\n";
        let post = |query: &'static str| {
            http.post(t.url(&format!("{POLR}{query}")))
                .header("Content-Type", "application/yaml")
                .body(body)
                .send()
        };
        let response = post("?fieldValidation=Strict").await.unwrap();
        assert_eq!(response.status(), 400);
        let status: Value = response.json().await.unwrap();
        assert_eq!(
            status["message"],
            "PolicyReport in version \"v1alpha2\" cannot be handled as a PolicyReport: strict decoding error: \
             yaml: unmarshal errors:\n  line 8: key \"policy\" already set in map"
        );
        let response = post("").await.unwrap();
        assert_eq!(response.status(), 201);
        assert_eq!(warnings(&response), [r#"299 - "line 8: key \"policy\" already set in map""#]);
        let created: Value = response.json().await.unwrap();
        assert_eq!(created["results"][0]["policy"], "b");
    }
}
