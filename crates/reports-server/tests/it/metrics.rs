//! `/metrics`: kube-apiserver's request series move with the requests made.

use std::time::Duration;

use futures::StreamExt as _;

use crate::harness::{sample_object, TestServer};

/// Fails the test instead of hanging when a watch never starts.
const DEADLINE: Duration = Duration::from_secs(30);

async fn scrape(t: &TestServer) -> String {
    let response = t.http().get(t.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/plain; version=0.0.4; charset=utf-8");
    response.text().await.unwrap()
}

/// The value of the sample line that starts with `series` (name and labels), or 0 when absent.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map(|v| v.parse().unwrap())
        .unwrap_or(0.0)
}

const LABELS: &str =
    "component=\"apiserver\",dry_run=\"\",group=\"wgpolicyk8s.io\",resource=\"policyreports\"";

on_both_stores! {
    async fn request_counters_durations_and_open_watches_are_exported(t) {
        let http = t.http();
        let collection = t.url("/apis/wgpolicyk8s.io/v1alpha2/namespaces/default/policyreports");
        let before = scrape(&t).await;
        let created = format!("apiserver_request_total{{code=\"201\",{LABELS},scope=\"resource\",subresource=\"\",verb=\"POST\",version=\"v1alpha2\"}}");
        let listed = format!("apiserver_request_total{{code=\"200\",{LABELS},scope=\"namespace\",subresource=\"\",verb=\"LIST\",version=\"v1alpha2\"}}");
        let missing = format!("apiserver_request_total{{code=\"404\",{LABELS},scope=\"resource\",subresource=\"\",verb=\"GET\",version=\"v1alpha2\"}}");
        let duration = format!("apiserver_request_duration_seconds_count{{{LABELS},scope=\"namespace\",subresource=\"\",verb=\"LIST\",version=\"v1alpha2\"}}");

        for i in 0..3 {
            let response = http.post(&collection).json(&sample_object(0, &format!("m{i}"), Some("default"))).send().await.unwrap();
            assert_eq!(response.status(), 201);
        }
        for _ in 0..2 {
            assert_eq!(http.get(&collection).send().await.unwrap().status(), 200);
        }
        assert_eq!(http.get(format!("{collection}/absent")).send().await.unwrap().status(), 404);
        let after = scrape(&t).await;
        assert_eq!(value(&after, &created) - value(&before, &created), 3.0, "{after}");
        assert_eq!(value(&after, &listed) - value(&before, &listed), 2.0);
        assert_eq!(value(&after, &missing) - value(&before, &missing), 1.0);
        assert_eq!(value(&after, &duration) - value(&before, &duration), 2.0);
        assert!(after.contains("# TYPE apiserver_request_duration_seconds histogram"));
        assert!(after.contains("apiserver_storage_objects{resource=\"policyreports.wgpolicyk8s.io\"}"));
        assert!(after.contains("reports_server_watch_window_bytes "));

        // An open watch is a long-running request until it ends.
        let open_watches = "apiserver_longrunning_requests{component=\"apiserver\",group=\"wgpolicyk8s.io\",resource=\"policyreports\",scope=\"namespace\",subresource=\"\",verb=\"WATCH\",version=\"v1alpha2\"}";
        let watch = http.get(format!("{collection}?watch=true&resourceVersion=0&timeoutSeconds=20")).send().await.unwrap();
        assert_eq!(watch.status(), 200);
        let mut events = watch.bytes_stream();
        // The first event (an ADDED of an existing report) proves the watch is being served.
        tokio::time::timeout(DEADLINE, events.next()).await.expect("an event").expect("a chunk").unwrap();
        assert_eq!(value(&scrape(&t).await, open_watches), 1.0);
        drop(events);
        // Ending it is seen by the server when the connection's stream is reset; a scrape after
        // a fresh request on the same client observes it.
        let mut closed = false;
        for _ in 0..200 {
            if value(&scrape(&t).await, open_watches) == 0.0 {
                closed = true;
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(closed, "the open-watch gauge returns to 0 once the client goes away");
    }
}
