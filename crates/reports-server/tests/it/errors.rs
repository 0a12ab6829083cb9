//! Bad input gets a clear Status and changes nothing.

use reqwest::{header, StatusCode};
use serde_json::{json, Value};

use crate::harness::sample_object;

async fn expect_status(response: reqwest::Response, code: u16, reason: &str) -> Value {
    assert_eq!(response.status().as_u16(), code);
    assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["kind"], "Status", "{body}");
    assert_eq!(body["apiVersion"], "v1");
    assert_eq!(body["status"], "Failure");
    assert_eq!(body["code"], code);
    assert_eq!(body["reason"], reason, "{body}");
    body
}

on_both_stores! {
    async fn malformed_writes_are_rejected_and_change_nothing(t) {
        let http = t.http();
        let url = t.url("/apis/wgpolicyk8s.io/v1alpha2/namespaces/default/policyreports");
        let before = t.store().current_rv().await.unwrap();

        expect_status(
            http.post(&url)
                .header(header::CONTENT_TYPE, "application/json")
                .body("{not json")
                .send()
                .await
                .unwrap(),
            400,
            "BadRequest",
        )
        .await;
        expect_status(
            http.post(&url).header(header::CONTENT_TYPE, "application/yaml").body("a: [").send().await.unwrap(),
            400,
            "BadRequest",
        )
        .await;
        expect_status(http.post(&url).json(&json!([1, 2])).send().await.unwrap(), 400, "BadRequest").await;

        let mut wrong_version = sample_object(0, "x", None);
        wrong_version["apiVersion"] = json!("wgpolicyk8s.io/v1beta1");
        let body =
            expect_status(http.post(&url).json(&wrong_version).send().await.unwrap(), 400, "BadRequest").await;
        assert_eq!(body["message"], "the API version in the data (wgpolicyk8s.io/v1beta1) does not match the expected API version (wgpolicyk8s.io/v1alpha2)");

        let mut wrong_kind = sample_object(0, "x", None);
        wrong_kind["kind"] = json!("ClusterPolicyReport");
        expect_status(http.post(&url).json(&wrong_kind).send().await.unwrap(), 422, "Invalid").await;

        let bad_name = sample_object(0, "Bad_Name", None);
        let body = expect_status(http.post(&url).json(&bad_name).send().await.unwrap(), 422, "Invalid").await;
        assert_eq!(body["details"]["kind"], "PolicyReport");
        assert_eq!(body["details"]["causes"][0]["field"], "metadata.name");
        assert!(body["message"].as_str().unwrap().starts_with("PolicyReport.wgpolicyk8s.io \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain"));

        let mut nameless = sample_object(0, "x", None);
        nameless["metadata"].as_object_mut().unwrap().remove("name");
        let body = expect_status(http.post(&url).json(&nameless).send().await.unwrap(), 422, "Invalid").await;
        assert!(body["message"].as_str().unwrap().contains("name or generateName is required"));

        let mut bad_label = sample_object(0, "x", None);
        bad_label["metadata"]["labels"] = json!({"ok": "not a valid value!"});
        expect_status(http.post(&url).json(&bad_label).send().await.unwrap(), 422, "Invalid").await;

        let all_namespaces = t.url("/apis/wgpolicyk8s.io/v1alpha2/policyreports");
        let body = expect_status(
            http.post(&all_namespaces).json(&sample_object(0, "x", None)).send().await.unwrap(),
            400,
            "BadRequest",
        )
        .await;
        assert_eq!(body["message"], "Namespace parameter required.");

        let dry = format!("{url}?dryRun=Maybe");
        expect_status(http.post(&dry).json(&sample_object(0, "x", None)).send().await.unwrap(), 422, "Invalid")
            .await;

        let mut huge = sample_object(0, "huge", None);
        huge["results"][0]["message"] = json!("x".repeat(4 * 1024 * 1024));
        expect_status(http.post(&url).json(&huge).send().await.unwrap(), 413, "RequestEntityTooLarge").await;

        assert_eq!(t.store().current_rv().await.unwrap(), before, "no rejected write changed anything");
    }
}

on_both_stores! {
    async fn unknown_paths_and_verbs(t) {
        let http = t.http();
        expect_status(
            http.get(t.url("/apis/wgpolicyk8s.io/v1alpha2/widgets")).send().await.unwrap(),
            404,
            "NotFound",
        )
        .await;
        expect_status(http.get(t.url("/apis/nope.io/v1/things")).send().await.unwrap(), 404, "NotFound").await;
        expect_status(http.get(t.url("/no/such/path")).send().await.unwrap(), 404, "NotFound").await;
        // Cluster-scoped kinds have no namespaced path, and no kind has subresources.
        expect_status(
            http.get(t.url("/apis/wgpolicyk8s.io/v1alpha2/namespaces/a/clusterpolicyreports"))
                .send()
                .await
                .unwrap(),
            404,
            "NotFound",
        )
        .await;
        expect_status(
            http.get(t.url("/apis/wgpolicyk8s.io/v1alpha2/namespaces/a/policyreports/x/status"))
                .send()
                .await
                .unwrap(),
            404,
            "NotFound",
        )
        .await;
        let body = expect_status(
            http.post(t.url("/apis/wgpolicyk8s.io/v1alpha2/namespaces/a/policyreports/x"))
                .json(&json!({}))
                .send()
                .await
                .unwrap(),
            405,
            "MethodNotAllowed",
        )
        .await;
        assert_eq!(
            body["message"],
            "create is not supported on resources of kind \"policyreports.wgpolicyk8s.io\""
        );
        let missing = expect_status(
            http.get(t.url("/apis/wgpolicyk8s.io/v1alpha2/namespaces/a/policyreports/nope"))
                .send()
                .await
                .unwrap(),
            404,
            "NotFound",
        )
        .await;
        assert_eq!(missing["message"], "policyreports.wgpolicyk8s.io \"nope\" not found");
        assert_eq!(
            missing["details"],
            json!({"name": "nope", "group": "wgpolicyk8s.io", "kind": "policyreports"})
        );
    }
}

on_both_stores! {
    async fn query_strings_are_decoded_like_the_aggregator_sends_them(t) {
        let http = t.http();
        for (i, env) in ["a", "b", "c", "a", "b", "c", "a", "b"].into_iter().enumerate() {
            let mut object = sample_object(0, &format!("r{i}"), Some("q"));
            object["metadata"]["labels"] = json!({"env": env});
            let url = t.url("/apis/wgpolicyk8s.io/v1alpha2/namespaces/q/policyreports");
            assert_eq!(http.post(url).json(&object).send().await.unwrap().status(), StatusCode::CREATED);
        }
        // kube-rs starts queries with an empty pair; the aggregator encodes spaces as '+'. Both the
        // selector (6 of 8 match) and the limit (5) must be understood; an unknown parameter is ignored.
        let first: Value = http
            .get(t.url("/apis/wgpolicyk8s.io/v1alpha2/policyreports?&labelSelector=env+in+%28a%2Cb%29&limit=5&unknownParam=1"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let names = |list: &Value| -> Vec<String> {
            list["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o["metadata"]["name"].as_str().unwrap().into())
                .collect()
        };
        assert_eq!(names(&first), ["r0", "r1", "r3", "r4", "r6"], "{first}");
        let token = first["metadata"]["continue"].as_str().expect("a continue token").to_string();
        let query = format!("?labelSelector=env+in+%28a%2Cb%29&limit=5&continue={token}");
        let rest: Value = http
            .get(t.url(&format!("/apis/wgpolicyk8s.io/v1alpha2/policyreports{query}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(names(&rest), ["r7"], "{rest}");
    }
}
