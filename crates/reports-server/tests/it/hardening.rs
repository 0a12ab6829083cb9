//! Hostile input: numbers out of range, amplifying patches, malformed metadata and names, NUL
//! bytes. Every answer is a kube-style Status, nothing panics, and refused writes store nothing.

use reqwest::header;
use serde_json::{json, Value};

use crate::harness::{sample_object, TestServer};

const NS: &str = "/apis/wgpolicyk8s.io/v1alpha2/namespaces/default/policyreports";

/// Asserts a Status answer of `code` and `reason`; returns it.
async fn expect_status(response: reqwest::Response, code: u16, reason: &str) -> Value {
    let status = response.status().as_u16();
    let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
    let text = response.text().await.unwrap();
    assert_eq!(status, code, "{text}");
    assert_eq!(content_type.unwrap(), "application/json", "{text}");
    let body: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
    assert_eq!(body["kind"], "Status", "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["reason"], reason, "{body}");
    body
}

async fn create(t: &TestServer, name: &str) -> Value {
    let response = t.http().post(t.url(NS)).json(&sample_object(0, name, None)).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 201);
    response.json().await.unwrap()
}

fn patch(t: &TestServer, name: &str, content_type: &str, body: String) -> reqwest::RequestBuilder {
    t.http().patch(t.url(&format!("{NS}/{name}"))).header(header::CONTENT_TYPE, content_type).body(body)
}

#[tokio::test]
async fn huge_watch_timeouts_are_served_not_panicked_on() {
    let t = TestServer::start().await;
    create(&t, "a").await;
    for timeout in ["9223372036854775807", "4611686018427387904"] {
        let url = t.url(&format!("{NS}?watch=true&timeoutSeconds={timeout}"));
        let mut response = t.http().get(url).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let first = crate::harness::within("the first event", response.chunk())
            .await
            .unwrap()
            .expect("the watch sends the current object");
        let event: Value = serde_json::from_slice(first.split(|b| *b == b'\n').next().unwrap()).unwrap();
        assert_eq!(event["type"], "ADDED", "{event}");
    }
    // A number past i64 is not an integer to kube either.
    let response = t.http().get(t.url(&format!("{NS}?timeoutSeconds=18446744073709551615"))).send();
    expect_status(response.await.unwrap(), 400, "BadRequest").await;
}

on_both_stores! {
    /// One `add` and many `copy` ops of a path into itself double the object each time.
    async fn json_patch_copies_are_bounded(t) {
        create(&t, "amp").await;
        let before = t.store().current_rv().await.unwrap();
        let mut ops = vec![json!({"op": "add", "path": "/results/0/message", "value": "x".repeat(512)})];
        for _ in 0..16 {
            ops.push(json!({"op": "copy", "from": "/results", "path": "/results/-"}));
        }
        let response = patch(&t, "amp", "application/json-patch+json", Value::Array(ops).to_string());
        let body = expect_status(response.send().await.unwrap(), 422, "Invalid").await;
        assert!(
            body["message"].as_str().unwrap().contains("the accumulated size increase of copy is"),
            "{body}"
        );
        // Copies inside the limit whose result passes the body limit are refused too.
        let mut ops = vec![json!({"op": "add", "path": "/results/0/message", "value": "x".repeat(1024 * 1024)})];
        for _ in 0..2 {
            ops.push(json!({"op": "copy", "from": "/results/0", "path": "/results/-"}));
        }
        let response = patch(&t, "amp", "application/json-patch+json", Value::Array(ops).to_string());
        expect_status(response.send().await.unwrap(), 413, "RequestEntityTooLarge").await;
        let ops: Vec<Value> =
            (0..10_001).map(|_| json!({"op": "test", "path": "/kind", "value": "PolicyReport"})).collect();
        let response = patch(&t, "amp", "application/json-patch+json", Value::Array(ops).to_string());
        expect_status(response.send().await.unwrap(), 413, "RequestEntityTooLarge").await;
        assert_eq!(t.store().current_rv().await.unwrap(), before, "nothing was written");
        // A few small copies are fine.
        let ops = json!([{"op": "copy", "from": "/results/0", "path": "/results/-"}]);
        let response = patch(&t, "amp", "application/json-patch+json", ops.to_string()).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200);
    }
}

on_both_stores! {
    /// The namespace in the path must be a DNS-1123 label, on every verb.
    async fn namespaces_in_paths_are_validated(t) {
        let before = t.store().current_rv().await.unwrap();
        let long = "a".repeat(64);
        for ns in ["NS_BAD", "a.b", "-a", long.as_str(), "a%00b"] {
            let url = t.url(&format!("/apis/wgpolicyk8s.io/v1alpha2/namespaces/{ns}/policyreports"));
            let object = sample_object(0, "x", None);
            let mut object_without_ns = object.clone();
            object_without_ns["metadata"].as_object_mut().unwrap().remove("namespace");
            let response = t.http().post(&url).json(&object_without_ns).send().await.unwrap();
            let body = expect_status(response, 422, "Invalid").await;
            assert_eq!(body["details"]["causes"][0]["field"], "metadata.namespace", "{body}");
            let message = body["message"].as_str().unwrap();
            assert!(
                message.contains("a lowercase RFC 1123 label") || message.contains("no more than 63 characters"),
                "{body}"
            );
            let item = format!("{url}/x");
            expect_status(t.http().get(&item).send().await.unwrap(), 404, "NotFound").await;
            expect_status(t.http().delete(&item).send().await.unwrap(), 404, "NotFound").await;
            expect_status(t.http().put(&item).json(&object_without_ns).send().await.unwrap(), 404, "NotFound")
                .await;
            let response = t
                .http()
                .patch(&item)
                .header(header::CONTENT_TYPE, "application/merge-patch+json")
                .body("{}")
                .send()
                .await
                .unwrap();
            expect_status(response, 404, "NotFound").await;
        }
        assert_eq!(t.store().current_rv().await.unwrap(), before, "nothing was written");
    }
}

on_both_stores! {
    /// `type: integer` fields are stored as int64, as kube stores them; anything else is 422.
    async fn integers_are_stored_as_go_clients_read_them(t) {
        let url = t.url(NS);
        let cases = [("1e2", "100"), ("-0", "0"), ("3.0", "3"), ("9223372036854775807", "9223372036854775807")];
        for (index, (text, stored)) in cases.into_iter().enumerate() {
            let name = format!("n{index}");
            let mut body = sample_object(0, &name, None).to_string();
            body = body.replace("\"pass\":1", &format!("\"pass\":{text}"));
            let response = t
                .http()
                .post(&url)
                .header(header::CONTENT_TYPE, "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status().as_u16(), 201, "{text}");
            let text_back = t.http().get(t.url(&format!("{NS}/{name}"))).send().await.unwrap().text().await.unwrap();
            assert!(text_back.contains(&format!("\"pass\":{stored},")), "{text}: {text_back}");
        }
        let before = t.store().current_rv().await.unwrap();
        for text in ["99999999999999999999999999999", "18446744073709551616", "9223372036854775808", "1.5"] {
            let body = sample_object(0, "bad", None).to_string().replace("\"pass\":1", &format!("\"pass\":{text}"));
            let response = t
                .http()
                .post(&url)
                .header(header::CONTENT_TYPE, "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = expect_status(response, 422, "Invalid").await;
            assert_eq!(status["details"]["causes"][0]["field"], "summary.pass", "{text}: {status}");
        }
        assert_eq!(t.store().current_rv().await.unwrap(), before, "nothing was written");
    }
}

on_both_stores! {
    /// Metadata that does not decode into kube's ObjectMeta is 400, and nothing is stored.
    async fn malformed_metadata_is_refused(t) {
        let url = t.url(NS);
        create(&t, "target").await;
        let before = t.store().current_rv().await.unwrap();
        let cases = [
            json!({"managedFields": "x"}),
            json!({"managedFields": {}}),
            json!({"managedFields": [{"manager": 5}]}),
            json!({"managedFields": [{"time": "yesterday"}]}),
            json!({"generateName": 5}),
            json!({"labels": "x"}),
            json!({"labels": {"a": 5}}),
            json!({"annotations": ["x"]}),
            json!({"finalizers": "x"}),
            json!({"finalizers": [5]}),
            json!({"ownerReferences": {}}),
            json!({"ownerReferences": [{"name": 5}]}),
            json!({"creationTimestamp": 5}),
            json!({"deletionTimestamp": "not a time"}),
            json!({"generation": 1.5}),
            json!({"deletionGracePeriodSeconds": "5"}),
        ];
        for case in cases {
            let mut object = sample_object(0, "m", None);
            for (key, value) in case.as_object().unwrap() {
                object["metadata"][key] = value.clone();
            }
            let body = expect_status(t.http().post(&url).json(&object).send().await.unwrap(), 400, "BadRequest").await;
            let message = body["message"].as_str().unwrap();
            assert!(message.starts_with("json: cannot unmarshal") || message.starts_with("parsing time"), "{case}: {body}");
            let merge = json!({"metadata": case}).to_string();
            let response = patch(&t, "target", "application/merge-patch+json", merge).send().await.unwrap();
            expect_status(response, 400, "BadRequest").await;
        }
        assert_eq!(t.store().current_rv().await.unwrap(), before, "nothing was written");
    }
}

on_both_stores! {
    /// NUL bytes never reach the store: both stores answer the same Status.
    async fn nul_bytes_get_the_same_answer_on_both_stores(t) {
        create(&t, "a").await;
        let before = t.store().current_rv().await.unwrap();
        for path in [format!("{NS}/a%00b"), "/apis/wgpolicyk8s.io/v1alpha2/namespaces/a%00b/policyreports/a".into()] {
            expect_status(t.http().get(t.url(&path)).send().await.unwrap(), 404, "NotFound").await;
            expect_status(t.http().delete(t.url(&path)).send().await.unwrap(), 404, "NotFound").await;
        }
        let lists = [
            "/apis/wgpolicyk8s.io/v1alpha2/namespaces/a%00b/policyreports".to_string(),
            format!("{NS}?fieldSelector=metadata.name%3Da%00b"),
            "/apis/wgpolicyk8s.io/v1alpha2/policyreports?fieldSelector=metadata.namespace%3Da%00b".into(),
            format!("{NS}?fieldSelector=metadata.name%3Da%00b&watch=true"),
        ];
        for path in lists {
            expect_status(t.http().get(t.url(&path)).send().await.unwrap(), 400, "BadRequest").await;
        }
        let response = t.http().post(t.url(NS)).json(&sample_object(0, "a\u{0}b", None)).send().await.unwrap();
        expect_status(response, 422, "Invalid").await;
        assert_eq!(t.store().current_rv().await.unwrap(), before, "nothing was written");
    }
}

on_both_stores! {
    /// A patch that changes nothing writes nothing: same resourceVersion, no event.
    async fn patches_that_change_nothing_write_nothing(t) {
        let created = create(&t, "same").await;
        let rv = created["metadata"]["resourceVersion"].clone();
        for (content_type, body) in [
            ("application/merge-patch+json", "{}"),
            ("application/json-patch+json", "[]"),
            ("application/merge-patch+json", r#"{"metadata":{"labels":{"app":"demo"}}}"#),
        ] {
            let response = patch(&t, "same", content_type, body.into()).send().await.unwrap();
            assert_eq!(response.status().as_u16(), 200);
            let answer: Value = response.json().await.unwrap();
            assert_eq!(answer, created, "{content_type} {body}");
        }
        assert_eq!(t.store().current_rv().await.unwrap().to_string(), rv.as_str().unwrap());
        // A real change still writes.
        let response = patch(&t, "same", "application/merge-patch+json", r#"{"metadata":{"labels":{"b":"c"}}}"#.into())
            .send()
            .await
            .unwrap();
        let answer: Value = response.json().await.unwrap();
        assert_ne!(answer["metadata"]["resourceVersion"], rv);
    }
}

#[tokio::test]
async fn undecodable_paths_get_a_status() {
    let t = TestServer::start().await;
    for path in [
        format!("{NS}/%ff"),
        "/apis/%ff".into(),
        "/apis/wgpolicyk8s.io/v1alpha2/namespaces/%ff/policyreports".into(),
    ] {
        expect_status(t.http().get(t.url(&path)).send().await.unwrap(), 404, "NotFound").await;
    }
}
