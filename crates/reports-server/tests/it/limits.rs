//! Serving limits: requests in flight, the request timeout, slow and idle connections, the
//! connection limit and the open-file limit. Raw TLS connections play the clumsy or hostile
//! client, since no well-behaved client library can send half a request.

use std::{sync::Arc, time::Duration};

use reports_server::limits::ServingLimits;
use serde_json::{json, Value};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};
use tokio_rustls::{client::TlsStream, TlsConnector};

use crate::harness::{install_crypto, TestServer};

/// How long a test waits for something the server must do before it fails instead of hanging.
const DEADLINE: Duration = Duration::from_secs(30);

const REPORTS: &str = "/apis/wgpolicyk8s.io/v1alpha2/namespaces/default/policyreports";

async fn start(limits: ServingLimits) -> TestServer {
    TestServer::start_with(|config| config.limits = limits).await
}

/// A raw HTTP/1.1 connection over TLS to `port`, trusting `ca_pem`.
async fn connect(port: u16, ca_pem: &str) -> TlsStream<TcpStream> {
    install_crypto();
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut config = tls_config(ca_pem);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(DEADLINE, connector.connect(name, tcp))
        .await
        .expect("TLS handshake within the deadline")
        .expect("TLS handshake")
}

fn tls_config(ca_pem: &str) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from(crate::harness::pem_to_der(ca_pem))).unwrap();
    rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth()
}

/// Reads until the server closes the connection; returns what it sent.
async fn read_to_close(stream: &mut TlsStream<TcpStream>) -> String {
    let mut received = Vec::new();
    let read = tokio::time::timeout(DEADLINE, async {
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the server kept the connection open; it sent {:?}",
        String::from_utf8_lossy(&received)
    );
    String::from_utf8_lossy(&received).into_owned()
}

/// The JSON body of a raw HTTP/1.1 response.
fn body_of(response: &str) -> Value {
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not a JSON body ({e}): {response:?}"))
}

/// The value of the series `series` (name and labels as scraped) now.
async fn metric(t: &TestServer, series: &str) -> i64 {
    let text = t.http().get(t.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let prefix = format!("{series} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {series} in the scrape"))
        .trim()
        .parse()
        .unwrap()
}

/// The value of `apiserver_current_inflight_requests{request_kind=KIND}` now.
async fn in_flight(t: &TestServer, kind: &str) -> i64 {
    metric(t, &format!("apiserver_current_inflight_requests{{request_kind=\"{kind}\"}}")).await
}

/// Waits until `apiserver_current_inflight_requests{request_kind=KIND}` is `value`.
async fn wait_for_in_flight(t: &TestServer, kind: &str, value: i64) {
    let waited = tokio::time::timeout(DEADLINE, async {
        while in_flight(t, kind).await != value {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(waited.is_ok(), "{kind} requests in flight never reached {value}");
}

/// A create whose body stops arriving after 9 of its 1000 bytes: its handler waits for the rest.
async fn start_stalled_create(t: &TestServer) -> TlsStream<TcpStream> {
    let mut stream = connect(t.server.as_ref().unwrap().local_addr.port(), &t.pki.ca_pem).await;
    let head = format!(
        "POST {REPORTS} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"kind\":"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.flush().await.unwrap();
    stream
}

/// A client from another loopback address (127.0.0.2): another client to a standalone server,
/// which tells clients apart by address.
fn other_client(t: &TestServer) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(t.pki.ca_pem.as_bytes()).unwrap())
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap()
}

fn report(name: &str) -> Value {
    json!({"apiVersion": "wgpolicyk8s.io/v1alpha2", "kind": "PolicyReport", "metadata": {"name": name}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_beyond_the_in_flight_limit_get_429_and_reads_and_probes_still_pass() {
    let t = start(ServingLimits { max_mutating: 1, max_read_only: 2, ..Default::default() }).await;
    let stalled = start_stalled_create(&t).await;
    wait_for_in_flight(&t, "mutating", 1).await;

    // From another client: its own share is free, the server-wide limit is what refuses it.
    let refused = other_client(&t).post(t.url(REPORTS)).json(&report("r1")).send().await.unwrap();
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["retry-after"], "1");
    let status: Value = refused.json().await.unwrap();
    assert_eq!(status["reason"], "TooManyRequests");
    assert_eq!(status["message"], "Too many requests, please try again later.");
    assert_eq!(status["details"]["retryAfterSeconds"], 1);

    // Reads have their own slots, and probes are never refused.
    assert_eq!(t.http().get(t.url(REPORTS)).send().await.unwrap().status(), 200);
    assert_eq!(t.http().get(t.url("/readyz")).send().await.unwrap().status(), 200);

    // The slot comes back when the stalled request ends, and the next write is served.
    drop(stalled);
    wait_for_in_flight(&t, "mutating", 0).await;
    let created = t.http().post(t.url(REPORTS)).json(&report("r1")).send().await.unwrap();
    assert_eq!(created.status(), 201);
    // The refused write changed nothing: r1 exists once, from the second attempt.
    let list: Value = t.http().get(t.url(REPORTS)).send().await.unwrap().json().await.unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_watches_do_not_take_read_slots() {
    let t = start(ServingLimits { max_read_only: 1, ..Default::default() }).await;
    let mut watches = Vec::new();
    for _ in 0..3 {
        let watch =
            t.http().get(t.url(&format!("{REPORTS}?watch=true&timeoutSeconds=60"))).send().await.unwrap();
        assert_eq!(watch.status(), 200);
        watches.push(watch);
    }
    // Three watches open, one read slot: reads are still served, one after another.
    for _ in 0..3 {
        assert_eq!(t.http().get(t.url(REPORTS)).send().await.unwrap().status(), 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stops_arriving_gets_a_504_status() {
    let t = start(ServingLimits { request_timeout: Duration::from_secs(1), ..Default::default() }).await;
    let mut stalled = start_stalled_create(&t).await;
    let response = read_to_close(&mut stalled).await;
    assert!(response.starts_with("HTTP/1.1 504"), "{response}");
    let status = body_of(&response);
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["reason"], "Timeout");
    assert_eq!(stored_reports(&t).await, 0, "the timed-out create stored nothing");
}

async fn stored_reports(t: &TestServer) -> usize {
    let list: Value = t.http().get(t.url(REPORTS)).send().await.unwrap().json().await.unwrap();
    list["items"].as_array().unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_dribbled_a_byte_at_a_time_are_cut_off() {
    let t = start(ServingLimits { header_read_timeout: Duration::from_secs(1), ..Default::default() }).await;
    let mut stream = connect(t.server.as_ref().unwrap().local_addr.port(), &t.pki.ca_pem).await;
    stream.write_all(b"GET /version HTTP/1.1\r\nHost: localhost\r\n").await.unwrap();
    // One header byte every 100 ms, never the blank line that ends the head: the client under
    // test is slow on purpose. The server must hang up long before this runs out.
    let dribble = tokio::time::timeout(DEADLINE, async {
        for byte in b"X-Slow: ".iter().cycle() {
            if stream.write_all(&[*byte]).await.is_err() || stream.flush().await.is_err() {
                return;
            }
            let mut probe = [0u8; 512];
            match tokio::time::timeout(Duration::from_millis(100), stream.read(&mut probe)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                // A 408 before the close is fine; the close is what matters.
                Ok(Ok(_)) | Err(_) => {}
            }
        }
    })
    .await;
    assert!(dribble.is_ok(), "a client dribbling headers kept its connection for {DEADLINE:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_but_quiet_watches_stay_open() {
    let t = start(ServingLimits { idle_timeout: Duration::from_secs(1), ..Default::default() }).await;
    let port = t.server.as_ref().unwrap().local_addr.port();
    let mut watch = connect(port, &t.pki.ca_pem).await;
    let request = format!("GET {REPORTS}?watch=true&timeoutSeconds=120 HTTP/1.1\r\nHost: localhost\r\n\r\n");
    watch.write_all(request.as_bytes()).await.unwrap();
    let mut head = vec![0u8; 4096];
    let n = tokio::time::timeout(DEADLINE, watch.read(&mut head)).await.expect("watch head").unwrap();
    assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 200"));

    // A connection that never sends a request is closed once it has been idle for a second.
    let mut idle = connect(port, &t.pki.ca_pem).await;
    assert_eq!(read_to_close(&mut idle).await, "");

    // The watch, opened before and just as quiet, is still open and still delivers.
    let created = t.http().post(t.url(REPORTS)).json(&report("after-idle")).send().await.unwrap();
    assert_eq!(created.status(), 201);
    let mut seen = String::new();
    let delivered = tokio::time::timeout(DEADLINE, async {
        while !seen.contains("after-idle") {
            let n = watch.read(&mut head).await.unwrap();
            assert!(n > 0, "the watch connection was closed");
            seen.push_str(&String::from_utf8_lossy(&head[..n]));
        }
    })
    .await;
    assert!(delivered.is_ok(), "the watch delivered nothing: {seen:?}");
    assert!(seen.contains("\"type\":\"ADDED\""), "{seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_limit_new_clients_wait_for_a_free_place() {
    let t = start(ServingLimits { max_connections: 2, ..Default::default() }).await;
    let port = t.server.as_ref().unwrap().local_addr.port();
    let first = connect(port, &t.pki.ca_pem).await;
    let _second = connect(port, &t.pki.ca_pem).await;

    // The third is left in the backlog: its handshake does not complete while both are open.
    install_crypto();
    let third = tokio::spawn({
        let ca = t.pki.ca_pem.clone();
        async move { connect(port, &ca).await }
    });
    let early = tokio::time::timeout(Duration::from_millis(500), async {
        while !third.is_finished() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(early.is_err(), "a third connection was served beyond the limit of two");

    // One closes; the waiting client is served.
    drop(first);
    let mut third =
        tokio::time::timeout(DEADLINE, third).await.expect("served once a place is free").unwrap();
    third.write_all(b"GET /version HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
    assert!(read_to_close(&mut third).await.starts_with("HTTP/1.1 200"));
}

/// At the open-file limit the accept loop pauses instead of spinning or dying, and serves again
/// as soon as descriptors are free. The binary runs under `ulimit -n 64` with a connection limit
/// far above it, so it is the open-file limit that is reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_the_server_recovers() {
    let pki = crate::harness::TestPki::new();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = pki.write_serving_files(dir.path());
    let storage = format!("sqlite://{}", dir.path().join("reports.db").display());
    let mut command = std::process::Command::new("bash");
    command
        .arg("-c")
        .arg("ulimit -n 64 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_reports-server"))
        .args([
            "--storage",
            &storage,
            "--tls-cert-file",
            cert.to_str().unwrap(),
            "--tls-private-key-file",
            key.to_str().unwrap(),
            "--max-connections",
            "1000",
        ]);
    let (child, url, log) = crate::process::start_command(command);
    let mut child = KillOnDrop(child);
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();

    // More connections than descriptors: the later ones are not accepted while these are open.
    let mut held = Vec::new();
    for _ in 0..80 {
        let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        held.push(tcp);
    }
    let hit_limit = tokio::time::timeout(DEADLINE, async {
        while !log.lock().unwrap().iter().any(|l| l.contains("accept failed")) {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(hit_limit.is_ok(), "the server never ran out of descriptors: {:?}", log.lock().unwrap());
    drop(held);

    let mut stream = connect(port, &pki.ca_pem).await;
    stream.write_all(b"GET /version HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
    assert!(read_to_close(&mut stream).await.starts_with("HTTP/1.1 200"));
    assert!(child.0.try_wait().unwrap().is_none(), "the server exited");
}

/// A child process killed when the test ends, also when it fails.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A body over the limit, sent in full before the answer is read, still gets its 413 Status on
/// HTTP/1.1 and on HTTP/2 (where an unread body used to reset the stream before the answer:
/// curl reported no status at all). curl is the client: it sends the whole body at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_gets_its_413_on_both_protocols() {
    let t = TestServer::start().await;
    let body = t.dir.path().join("big.json");
    std::fs::write(&body, serde_json::to_vec(&report(&"x".repeat(4_400_000))).unwrap()).unwrap();
    let ca = t.dir.path().join("ca.crt");
    std::fs::write(&ca, &t.pki.ca_pem).unwrap();
    for protocol in ["--http1.1", "--http2"] {
        let output = tokio::process::Command::new("curl")
            .args(["-sS", protocol, "--cacert", ca.to_str().unwrap(), "-H", "content-type: application/json"])
            .arg("--data-binary")
            .arg(format!("@{}", body.display()))
            .args(["-w", "\n%{http_code}", &t.url(REPORTS)])
            .output()
            .await
            .expect("curl runs");
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{protocol}: curl failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let (status, code) = text.rsplit_once('\n').unwrap();
        assert_eq!(code, "413", "{protocol}: {text}");
        assert_eq!(serde_json::from_str::<Value>(status).unwrap()["reason"], "RequestEntityTooLarge");
    }
    assert_eq!(stored_reports(&t).await, 0);
}

/// Request heads up to 1 MiB are served on both protocols, as kube-apiserver (Go) serves them:
/// the aggregator forwards every group of a user as a header. Beyond that, 431.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_request_heads_are_served_on_both_protocols() {
    let t = TestServer::start().await;
    for http2 in [false, true] {
        let client = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(t.pki.ca_pem.as_bytes()).unwrap());
        let client =
            if http2 { client.http2_prior_knowledge() } else { client.http1_only() }.build().unwrap();
        let large = client.get(t.url(REPORTS)).header("x-large", "g".repeat(200_000)).send().await.unwrap();
        assert_eq!(large.status(), 200, "HTTP/2: {http2}");
        if !http2 {
            let too_large = client.get(t.url(REPORTS)).header("x-large", "g".repeat(1_100_000)).send().await;
            assert_eq!(too_large.unwrap().status(), 431);
        }
    }
}

/// One client holds at most a quarter of the slots: a client whose writes fill its share gets
/// 429 while another client's writes are still served. Clients are told apart by user (in a
/// cluster) or, as here on a standalone server, by address (127.0.0.2 is another loopback).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_cannot_take_every_slot() {
    let t = start(ServingLimits { max_mutating: 4, ..Default::default() }).await;
    let stalled = start_stalled_create(&t).await;
    wait_for_in_flight(&t, "mutating", 1).await;

    let same_client = t.http().post(t.url(REPORTS)).json(&report("same")).send().await.unwrap();
    assert_eq!(same_client.status(), 429, "the first client's share is one write");
    let other_client = other_client(&t).post(t.url(REPORTS)).json(&report("other")).send().await.unwrap();
    assert_eq!(other_client.status(), 201, "another client still has its share");
    drop(stalled);
}

/// A request beyond its client's share waits (up to a second) for one of that client's slots
/// instead of being refused at once: a burst is served as soon as the client's earlier request
/// ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_beyond_a_clients_share_waits_for_its_slot() {
    let t = start(ServingLimits { max_mutating: 4, ..Default::default() }).await;
    let stalled = start_stalled_create(&t).await;
    wait_for_in_flight(&t, "mutating", 1).await;
    let queued = tokio::spawn(t.http().post(t.url(REPORTS)).json(&report("queued")).send());
    let waited = tokio::time::timeout(DEADLINE, async {
        while metric(&t, "apiserver_current_inqueue_requests{request_kind=\"mutating\"}").await != 1 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(waited.is_ok(), "the second write never waited for its client's slot");
    drop(stalled);
    assert_eq!(queued.await.unwrap().unwrap().status(), 201, "served once its client's slot was free");
}
