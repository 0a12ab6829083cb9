//! Watch through real clients: kube-rs watch/watcher/reflector, raw HTTP for the wire details,
//! and `kubectl get -w`.

use std::io::{BufRead as _, BufReader};

use futures::StreamExt as _;
use kube::{
    api::{
        Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
    },
    runtime::{reflector, watcher, WatchStreamExt as _},
};
use serde_json::{json, Value};

use crate::harness::{dynamic_api, next_event, polr_api, sample_object, to_dynamic, within, TestServer};

fn rv_of(object: &DynamicObject) -> u64 {
    object.metadata.resource_version.as_deref().unwrap().parse().unwrap()
}

async fn create(api: &Api<DynamicObject>, index: usize, name: &str, ns: Option<&str>) -> DynamicObject {
    api.create(&PostParams::default(), &to_dynamic(sample_object(index, name, ns))).await.unwrap()
}

async fn label(api: &Api<DynamicObject>, name: &str, key: &str, value: &str) -> DynamicObject {
    let patch = json!({"metadata": {"labels": {key: value}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap()
}

async fn list_rv(api: &Api<DynamicObject>) -> String {
    api.list(&ListParams::default()).await.unwrap().metadata.resource_version.unwrap()
}

/// Reads newline-delimited watch events from a raw HTTP response.
pub(crate) struct Lines {
    pub(crate) response: reqwest::Response,
    pub(crate) buffer: Vec<u8>,
}

impl Lines {
    /// The next event; None at a clean end. Fails the test on a transport error, a torn line
    /// or nothing within the deadline.
    pub(crate) async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                return Some(serde_json::from_slice(&line).expect("each line is one JSON event"));
            }
            let chunk = within("the next line of a raw watch", self.response.chunk()).await;
            match chunk.expect("the watch stream fails (a connection cut mid-stream?)") {
                Some(chunk) => self.buffer.extend_from_slice(&chunk),
                None => {
                    assert!(self.buffer.is_empty(), "stream ended mid-line");
                    return None;
                }
            }
        }
    }
}

async fn raw_watch(t: &TestServer, path_and_query: &str, accept: Option<&str>) -> Lines {
    let mut request = t.http().get(t.url(path_and_query));
    if let Some(accept) = accept {
        request = request.header("Accept", accept);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    Lines { response, buffer: Vec::new() }
}

on_both_stores! {
    async fn a_watch_from_a_list_rv_sees_every_later_change_in_order(t) {
        let api = polr_api(&t.kube(), "ns");
        for name in ["a", "b", "c"] {
            create(&api, 0, name, Some("ns")).await;
        }
        let rv = list_rv(&api).await;
        let mut events = api.watch(&WatchParams::default(), &rv).await.unwrap().boxed();
        let d = create(&api, 0, "d", Some("ns")).await;
        let a = label(&api, "a", "x", "1").await;
        api.delete("b", &DeleteParams::default()).await.unwrap();
        let mut seen = Vec::new();
        while seen.len() < 3 {
            match next_event(&mut events).await.unwrap() {
                WatchEvent::Added(o) => seen.push(("ADDED", o.metadata.name.clone().unwrap(), rv_of(&o))),
                WatchEvent::Modified(o) => seen.push(("MODIFIED", o.metadata.name.clone().unwrap(), rv_of(&o))),
                WatchEvent::Deleted(o) => seen.push(("DELETED", o.metadata.name.clone().unwrap(), rv_of(&o))),
                WatchEvent::Bookmark(_) => {}
                WatchEvent::Error(e) => panic!("unexpected error event {e:?}"),
            }
        }
        assert_eq!(seen[0], ("ADDED", "d".to_string(), rv_of(&d)));
        assert_eq!(seen[1], ("MODIFIED", "a".to_string(), rv_of(&a)));
        assert_eq!(seen[2].0, "DELETED");
        assert_eq!(seen[2].1, "b");
        assert!(seen[2].2 > rv_of(&a), "a DELETED event carries the deletion's RV");
    }
}

on_both_stores! {
    async fn watches_without_rv_start_with_the_current_state(t) {
        let api = polr_api(&t.kube(), "ns");
        create(&api, 0, "existing", Some("ns")).await;
        let mut events = api.watch(&WatchParams::default(), "0").await.unwrap().boxed();
        match next_event(&mut events).await.unwrap() {
            WatchEvent::Added(o) => assert_eq!(o.metadata.name.as_deref(), Some("existing")),
            other => panic!("expected a synthetic ADDED first, got {other:?}"),
        }
        create(&api, 0, "new", Some("ns")).await;
        loop {
            match next_event(&mut events).await.unwrap() {
                WatchEvent::Added(o) => {
                    assert_eq!(o.metadata.name.as_deref(), Some("new"));
                    break;
                }
                WatchEvent::Bookmark(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}

on_both_stores! {
    async fn streaming_lists_end_with_the_initial_events_bookmark(t) {
        let api = polr_api(&t.kube(), "ns");
        for name in ["a", "b"] {
            create(&api, 0, name, Some("ns")).await;
        }
        let snapshot = list_rv(&api).await;
        let path = "/apis/wgpolicyk8s.io/v1alpha2/namespaces/ns/policyreports?watch=true&sendInitialEvents=true\
                    &resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&timeoutSeconds=60";
        let mut lines = raw_watch(&t, path, None).await;
        for name in ["a", "b"] {
            let event = lines.next().await.unwrap();
            assert_eq!(
                (event["type"].as_str(), event["object"]["metadata"]["name"].as_str()),
                (Some("ADDED"), Some(name))
            );
        }
        let bookmark = lines.next().await.unwrap();
        assert_eq!(bookmark["type"], "BOOKMARK");
        assert_eq!(bookmark["object"]["kind"], "PolicyReport");
        assert_eq!(bookmark["object"]["apiVersion"], "wgpolicyk8s.io/v1alpha2");
        assert_eq!(bookmark["object"]["metadata"]["resourceVersion"], snapshot.as_str());
        assert_eq!(bookmark["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"], "true");
        create(&api, 0, "c", Some("ns")).await;
        let live = lines.next().await.unwrap();
        assert_eq!(
            (live["type"].as_str(), live["object"]["metadata"]["name"].as_str()),
            (Some("ADDED"), Some("c"))
        );

        // kube-rs in streaming-list mode has no fallback: it must see the end bookmark to sync.
        let config = watcher::Config::default().streaming_lists();
        let mut stream = watcher(api.clone(), config).boxed();
        let mut initial = Vec::new();
        loop {
            match next_event(&mut stream).await.unwrap() {
                watcher::Event::Init => {}
                watcher::Event::InitApply(o) => initial.push(o.metadata.name.unwrap()),
                watcher::Event::InitDone => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        initial.sort();
        assert_eq!(initial, ["a", "b", "c"]);
    }
}

on_both_stores! {
    async fn a_reflector_follows_creates_updates_and_deletes(t) {
        let (api, resource) = dynamic_api(&t.kube(), 3, None);
        create(&api, 3, "one", None).await;
        let writer = reflector::store::Writer::new(resource);
        let reader = writer.as_reader();
        let mut stream = reflector(writer, watcher(api.clone(), watcher::Config::default().page_size(1)))
            .applied_objects()
            .boxed();
        assert_eq!(next_event(&mut stream).await.unwrap().metadata.name.as_deref(), Some("one"));
        create(&api, 3, "two", None).await;
        assert_eq!(next_event(&mut stream).await.unwrap().metadata.name.as_deref(), Some("two"));
        label(&api, "one", "k", "v").await;
        let updated = next_event(&mut stream).await.unwrap();
        assert_eq!(updated.metadata.labels.unwrap()["k"], "v");
        api.delete("two", &DeleteParams::default()).await.unwrap();
        create(&api, 3, "three", None).await;
        assert_eq!(next_event(&mut stream).await.unwrap().metadata.name.as_deref(), Some("three"));
        let mut names: Vec<String> = reader.state().iter().map(|o| o.metadata.name.clone().unwrap()).collect();
        names.sort();
        assert_eq!(names, ["one", "three"], "the delete reached the cache before the later create");
    }
}

on_both_stores! {
    async fn an_rv_older_than_the_change_log_is_a_410_error_event(t) {
        let api = polr_api(&t.kube(), "ns");
        let first = create(&api, 0, "a", Some("ns")).await;
        label(&api, "a", "k", "v").await;
        t.store().compact(0).await.unwrap();
        let mut events = api.watch(&WatchParams::default(), &rv_of(&first).to_string()).await.unwrap().boxed();
        match next_event(&mut events).await.unwrap() {
            WatchEvent::Error(status) => {
                assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
                assert!(status.message.starts_with("too old resource version"), "{}", status.message);
            }
            other => panic!("expected a 410 ERROR event, got {other:?}"),
        }
        assert!(next_event(&mut events).await.is_none(), "the stream ends after the error");
    }
}

on_both_stores! {
    async fn an_rv_from_the_future_is_a_504_error_event(t) {
        let api = polr_api(&t.kube(), "ns");
        let current: u64 = list_rv(&api).await.parse().unwrap();
        let mut events = api.watch(&WatchParams::default(), &(current + 1000).to_string()).await.unwrap().boxed();
        match next_event(&mut events).await.unwrap() {
            WatchEvent::Error(status) => {
                assert_eq!((status.code, status.reason.as_str()), (504, "Timeout"));
                assert!(status.message.contains("Too large resource version"), "{}", status.message);
            }
            other => panic!("expected a 504 ERROR event, got {other:?}"),
        }
    }
}

on_both_stores! {
    async fn selectors_filter_every_event_and_report_transitions(t) {
        let client = t.kube();
        let api = polr_api(&client, "a");
        let other_ns = polr_api(&client, "b");
        let rv = list_rv(&api).await;
        let params = WatchParams::default().labels("team=red").disable_bookmarks();
        let mut events = api.watch(&params, &rv).await.unwrap().boxed();

        create(&api, 0, "x", Some("a")).await; // app=demo, no team: not selected
        let mut in_b = sample_object(0, "x", Some("b"));
        in_b["metadata"]["labels"]["team"] = json!("red");
        other_ns.create(&PostParams::default(), &to_dynamic(in_b)).await.unwrap(); // other namespace
        label(&api, "x", "team", "red").await; // starts matching
        label(&api, "x", "tier", "1").await; // still matching
        label(&api, "x", "team", "blue").await; // stops matching
        api.delete("x", &DeleteParams::default()).await.unwrap(); // already not matching
        let mut sentinel = sample_object(0, "sentinel", Some("a"));
        sentinel["metadata"]["labels"]["team"] = json!("red");
        api.create(&PostParams::default(), &to_dynamic(sentinel)).await.unwrap();

        let mut seen = Vec::new();
        while seen.last().map(|(_, n): &(&str, String)| n.as_str()) != Some("sentinel") {
            let (kind, object) = match next_event(&mut events).await.unwrap() {
                WatchEvent::Added(o) => ("ADDED", o),
                WatchEvent::Modified(o) => ("MODIFIED", o),
                WatchEvent::Deleted(o) => ("DELETED", o),
                other => panic!("unexpected {other:?}"),
            };
            assert_eq!(object.metadata.namespace.as_deref(), Some("a"), "namespace isolation");
            seen.push((kind, object.metadata.name.unwrap()));
        }
        let kinds: Vec<&str> = seen.iter().map(|(k, _)| *k).collect();
        assert_eq!(kinds, ["ADDED", "MODIFIED", "DELETED", "ADDED"], "{seen:?}");
    }
}

on_both_stores! {
    async fn a_single_object_watch_by_name_and_the_legacy_watch_path(t) {
        let api = polr_api(&t.kube(), "ns");
        create(&api, 0, "one", Some("ns")).await;
        create(&api, 0, "two", Some("ns")).await;
        let path = "/apis/wgpolicyk8s.io/v1alpha2/watch/namespaces/ns/policyreports/two?timeoutSeconds=60";
        let mut lines = raw_watch(&t, path, None).await;
        let first = lines.next().await.unwrap();
        assert_eq!(
            (first["type"].as_str(), first["object"]["metadata"]["name"].as_str()),
            (Some("ADDED"), Some("two"))
        );
        label(&api, "one", "k", "v").await;
        label(&api, "two", "k", "v").await;
        let next = lines.next().await.unwrap();
        assert_eq!(
            (next["type"].as_str(), next["object"]["metadata"]["name"].as_str()),
            (Some("MODIFIED"), Some("two"))
        );
    }
}

on_both_stores! {
    async fn metadata_and_table_watches_transform_every_event(t) {
        let api = polr_api(&t.kube(), "ns");
        create(&api, 0, "a", Some("ns")).await;
        let path = "/apis/wgpolicyk8s.io/v1alpha2/namespaces/ns/policyreports?watch=1&allowWatchBookmarks=true\
                    &sendInitialEvents=true&resourceVersionMatch=NotOlderThan";
        let accept = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1";
        let mut lines = raw_watch(&t, path, Some(accept)).await;
        let added = lines.next().await.unwrap();
        assert_eq!(added["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(added["object"]["apiVersion"], "meta.k8s.io/v1");
        assert_eq!(added["object"]["metadata"]["name"], "a");
        assert!(added["object"].get("results").is_none(), "metadata only");
        let bookmark = lines.next().await.unwrap();
        assert_eq!(
            (bookmark["type"].as_str(), bookmark["object"]["kind"].as_str()),
            (Some("BOOKMARK"), Some("PartialObjectMetadata"))
        );

        let accept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";
        let mut table =
            raw_watch(&t, "/apis/wgpolicyk8s.io/v1alpha2/namespaces/ns/policyreports?watch=1", Some(accept))
                .await;
        let first = table.next().await.unwrap();
        assert_eq!(first["object"]["kind"], "Table");
        assert_eq!(first["object"]["columnDefinitions"][0]["name"], "Name");
        assert_eq!(first["object"]["rows"][0]["cells"][0], "a");
        create(&api, 0, "b", Some("ns")).await;
        let second = table.next().await.unwrap();
        assert!(second["object"]["columnDefinitions"].is_null(), "only the first Table has columns");
        assert_eq!(second["object"]["rows"][0]["cells"][0], "b");
        assert_eq!(second["object"]["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_watch_prints_new_rows() {
    let t = TestServer::start().await;
    let api = polr_api(&t.kube(), "team");
    create(&api, 0, "before", Some("team")).await;
    let mut child = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(t.kubeconfig())
        .args(["get", "polr", "-A", "-w"])
        .env("HOME", t.dir.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // kubectl's lines through a thread, so that every read has a deadline.
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let next_line = || {
        tokio::task::block_in_place(|| rx.recv_timeout(crate::harness::DEADLINE))
            .expect("kubectl -w prints the next row within the deadline")
    };
    let header = next_line();
    assert!(header.starts_with("NAMESPACE") && header.contains("PASS"), "{header}");
    let row = next_line();
    assert!(row.starts_with("team") && row.contains("before"), "{row}");
    create(&api, 0, "after", Some("team")).await;
    let row = next_line();
    assert!(row.contains("after"), "{row}");
    child.kill().unwrap();
    child.wait().unwrap();
}

on_both_stores! {
    async fn concurrent_writers_never_cause_a_gap_or_reordering(t) {
        let client = t.kube();
        let api = polr_api(&client, "load");
        let start: u64 = list_rv(&api).await.parse().unwrap();
        let mut watchers = Vec::new();
        for _ in 0..3 {
            watchers.push(api.watch(&WatchParams::default(), &start.to_string()).await.unwrap().boxed());
        }
        const WRITERS: usize = 4;
        const WRITES: usize = 40;
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let api = api.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..WRITES / 2 {
                    let name = format!("w{w}-{i}");
                    create(&api, 0, &name, Some("load")).await;
                    label(&api, &name, "step", "2").await;
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let last: u64 = list_rv(&api).await.parse().unwrap();
        assert_eq!(last - start, (WRITERS * WRITES) as u64, "one RV per write");
        for mut events in watchers {
            let mut expected = start + 1;
            while expected <= last {
                match next_event(&mut events).await.unwrap() {
                    WatchEvent::Added(o) | WatchEvent::Modified(o) => {
                        assert_eq!(rv_of(&o), expected, "every RV, in order, once");
                        expected += 1;
                    }
                    WatchEvent::Bookmark(_) => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
    }
}

#[tokio::test]
async fn timeouts_and_shutdown_end_streams_cleanly() {
    let mut t = TestServer::start().await;
    let api = polr_api(&t.kube(), "ns");
    let rv = list_rv(&api).await;
    let mut short = api.watch(&WatchParams::default().timeout(1), &rv).await.unwrap().boxed();
    while let Some(event) = next_event(&mut short).await {
        assert!(matches!(event, WatchEvent::Bookmark(_)), "{event:?}");
    }
    // Raw watches on both protocols: kube-rs ends a stream silently when the connection is cut
    // mid-message, but reqwest reports it, and `Lines` fails the test on it or on a torn line.
    let url = t.url(&format!(
        "/apis/wgpolicyk8s.io/v1alpha2/namespaces/ns/policyreports?watch=1&resourceVersion={rv}\
         &allowWatchBookmarks=true"
    ));
    let mut open = Vec::new();
    for http1 in [true, false] {
        let response = client(&t, http1).get(&url).send().await.unwrap();
        assert_eq!(response.status(), 200);
        open.push(Lines { response, buffer: Vec::new() });
    }
    t.server.take().unwrap().shutdown().await;
    for mut lines in open {
        while let Some(event) = lines.next().await {
            assert_eq!(event["type"], "BOOKMARK", "{event}");
        }
    }
}

/// A raw client trusting the test CA, speaking only HTTP/1.1 or only HTTP/2.
fn client(t: &TestServer, http1: bool) -> reqwest::Client {
    client_trusting(&t.pki.ca_pem, http1)
}

/// A raw client trusting `ca_pem`, speaking only HTTP/1.1 or only HTTP/2.
pub(crate) fn client_trusting(ca_pem: &str, http1: bool) -> reqwest::Client {
    crate::harness::install_crypto();
    let builder = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap());
    let builder = if http1 { builder.http1_only() } else { builder.http2_prior_knowledge() };
    builder.build().unwrap()
}

#[tokio::test]
async fn watch_streams_are_chunked_on_http1_and_framed_on_http2() {
    let t = TestServer::start().await;
    let api = polr_api(&t.kube(), "ns");
    create(&api, 0, "a", Some("ns")).await;
    let url = t.url("/apis/wgpolicyk8s.io/v1alpha2/namespaces/ns/policyreports?watch=1&timeoutSeconds=60");
    for http1 in [true, false] {
        let response = client(&t, http1).get(&url).send().await.unwrap();
        let expected = if http1 { reqwest::Version::HTTP_11 } else { reqwest::Version::HTTP_2 };
        assert_eq!(response.version(), expected);
        if http1 {
            assert_eq!(response.headers()["transfer-encoding"], "chunked");
        }
        let mut lines = Lines { response, buffer: Vec::new() };
        let first = lines.next().await.unwrap();
        assert_eq!(
            first["object"]["metadata"]["name"], "a",
            "the first event arrives without waiting for more"
        );
    }
}

/// The change log is trimmed by the server's own timer once entries are older than the
/// retention, and an informer whose resourceVersion was trimmed away gets 410 and relists.
async fn compaction_on_the_timer_makes_informers_relist(t: TestServer) {
    let quiet = polr_api(&t.kube(), "quiet");
    let busy = polr_api(&t.kube(), "busy");
    let first = create(&quiet, 0, "q1", Some("quiet")).await;
    // An informer on a namespace nothing else writes to: its watches end every second (so it
    // resumes often, from the RV it last saw) and it gets no bookmarks (which would move it on).
    let config = watcher::Config::default().timeout(1).disable_bookmarks();
    let mut informer = watcher(quiet.clone(), config).boxed();
    let mut listed = Vec::new();
    loop {
        match next_event(&mut informer).await.unwrap() {
            watcher::Event::Init => {}
            watcher::Event::InitApply(o) => listed.push(o.metadata.name.unwrap()),
            watcher::Event::InitDone => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(listed, ["q1"]);
    // Writes elsewhere, then nothing but time: the timer trims them all once they are older than
    // the one-second retention, past the informer's RV.
    for i in 0..3 {
        create(&busy, 0, &format!("b{i}"), Some("busy")).await;
    }
    let newest: u64 = list_rv(&busy).await.parse().unwrap();
    within("compaction on the server's timer", async {
        while t.store().compacted_rv().await.unwrap() < newest {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(newest > rv_of(&first));
    // The informer's next watch, from q1's RV, is refused with 410 Gone and it lists again.
    let mut relisted = Vec::new();
    let gone = match within("the informer's next event", informer.next()).await.expect("the informer runs on")
    {
        Err(watcher::Error::WatchError(status)) => status.code,
        Ok(other) => panic!("expected the 410 first, got {other:?}"),
        Err(other) => panic!("{other:?}"),
    };
    assert_eq!(gone, 410);
    loop {
        match next_event(&mut informer).await.unwrap() {
            watcher::Event::Init => {}
            watcher::Event::InitApply(o) => relisted.push(o.metadata.name.unwrap()),
            watcher::Event::InitDone => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(relisted, ["q1"]);
    create(&quiet, 0, "q2", Some("quiet")).await;
    match next_event(&mut informer).await.unwrap() {
        watcher::Event::Apply(o) => assert_eq!(o.metadata.name.as_deref(), Some("q2")),
        other => panic!("after the relist the informer watches on: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_on_the_timer_makes_informers_relist_sqlite() {
    compaction_on_the_timer_makes_informers_relist(
        TestServer::start_with(|c| c.change_log.max_age_seconds = 1).await,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_on_the_timer_makes_informers_relist_postgres() {
    let url = crate::harness::postgres_database().await;
    let t = TestServer::start_with(|c| {
        c.storage = url;
        c.change_log.max_age_seconds = 1;
    })
    .await;
    compaction_on_the_timer_makes_informers_relist(t).await
}

/// A watch stream's open watchers, from the server's own gauge.
async fn watch_subscribers(t: &TestServer) -> u64 {
    let metrics = t.http().get(t.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let line = metrics.lines().find(|l| l.starts_with("reports_server_watch_subscribers ")).unwrap();
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// Back-pressure through the server: with a one-byte window and clients that stop reading,
/// writers and a reading watcher go on at full speed; a client that resumes reading gets every
/// change from the database, in order; one that never does is disconnected after the grace
/// period, its stream ending cleanly after what it was sent (it re-watches from there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_watchers_catch_up_and_stalled_ones_are_disconnected() {
    let t = TestServer::start_with(|c| c.watch_window_bytes = 1).await;
    let api = polr_api(&t.kube(), "load");
    let start: u64 = list_rv(&api).await.parse().unwrap();
    let path = format!(
        "/apis/wgpolicyk8s.io/v1alpha2/namespaces/load/policyreports?watch=1&resourceVersion={start}\
         &timeoutSeconds=600"
    );
    let open = |path: String| {
        let http = client(&t, true);
        let url = t.url(&path);
        async move {
            let response = http.get(url).send().await.unwrap();
            assert_eq!(response.status(), 200);
            Lines { response, buffer: Vec::new() }
        }
    };
    let mut slow = open(path.clone()).await;
    let mut stalled = open(path).await;
    let mut fast = api.watch(&WatchParams::default(), &start.to_string()).await.unwrap().boxed();
    assert_eq!(watch_subscribers(&t).await, 3);
    // Far more than the stalled client's queue and socket buffers hold (about 40 MB).
    const WRITES: u64 = 200;
    let reader = tokio::spawn(async move {
        let mut rvs = Vec::new();
        while rvs.len() < WRITES as usize {
            match next_event(&mut fast).await.unwrap() {
                WatchEvent::Added(o) => rvs.push(rv_of(&o)),
                WatchEvent::Bookmark(_) => {}
                other => panic!("{other:?}"),
            }
        }
        rvs
    });
    let http = t.http();
    let collection = t.url("/apis/wgpolicyk8s.io/v1alpha2/namespaces/load/policyreports");
    for i in 0..WRITES {
        let mut object = sample_object(0, &format!("big{i:03}"), Some("load"));
        object["results"][0]["message"] = json!("x".repeat(200_000));
        let response =
            within("a write while watchers stall", http.post(&collection).json(&object).send()).await;
        assert_eq!(response.unwrap().status(), 201, "writers never wait for watchers");
    }
    let last = start + WRITES;
    let expected: Vec<u64> = (start + 1..=last).collect();
    assert_eq!(reader.await.unwrap(), expected, "the reading watcher got every change in order");
    let metrics = t.http().get(t.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let floor: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("reports_server_watch_window_floor_resource_version "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(floor > start + 1, "the window moved past the stopped clients ({floor})");
    // The slow client reads again: every change, from the database, in order.
    let mut rvs = Vec::new();
    while rvs.len() < WRITES as usize {
        let event = slow.next().await.expect("the slow client's watch stays open");
        rvs.push(event["object"]["metadata"]["resourceVersion"].as_str().unwrap().parse::<u64>().unwrap());
    }
    assert_eq!(rvs, expected, "the slow client missed nothing");
    // The stalled one is closed by the server after its grace period (30 s).
    tokio::time::timeout(std::time::Duration::from_secs(90), async {
        while watch_subscribers(&t).await > 2 {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("the stalled watch is closed within 90 s");
    let mut received = Vec::new();
    while let Some(event) = stalled.next().await {
        received
            .push(event["object"]["metadata"]["resourceVersion"].as_str().unwrap().parse::<u64>().unwrap());
    }
    assert!(received.len() < WRITES as usize, "closed before it was sent everything");
    assert_eq!(received[..], expected[..received.len()], "what it got is a gap-free prefix");
}

/// A flood is trimmed to the change log's length long before its age: with room for ten
/// changes, forty writes leave at most the newest eleven or so (a pass starts once the log is a
/// tenth too long), and a watch from before them gets 410 and relists, however young they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_change_log_is_kept_to_its_length() {
    let t = TestServer::start_with(|c| c.change_log.max_entries = 10).await;
    let api = polr_api(&t.kube(), "flood");
    let first = create(&api, 0, "f0", Some("flood")).await;
    for i in 1..40 {
        create(&api, 0, &format!("f{i}"), Some("flood")).await;
    }
    let newest: u64 = list_rv(&api).await.parse().unwrap();
    within("compaction by length", async {
        while t.store().compacted_rv().await.unwrap() < newest - 11 {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await;
    let kept = t.store().changes_since(None, 0, 100).await.unwrap();
    assert!(kept.len() <= 11 && !kept.is_empty(), "{} changes kept", kept.len());
    assert_eq!(kept.last().map(|c| c.rv), Some(newest), "the newest change stays");
    let mut events = api.watch(&WatchParams::default(), &rv_of(&first).to_string()).await.unwrap().boxed();
    match next_event(&mut events).await.unwrap() {
        WatchEvent::Error(status) => assert_eq!(status.code, 410),
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
    assert_eq!(api.list(&ListParams::default()).await.unwrap().items.len(), 40, "every object stays");
}
