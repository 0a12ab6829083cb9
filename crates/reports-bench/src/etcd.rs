//! The etcd baseline: a throwaway single-member etcd 3.4 (Debian's `etcd-server` package) on
//! loopback ports in a temporary directory, driven through its HTTP/JSON gateway with the same
//! documents stored under the keys kube-apiserver would use
//! (`/registry/<group>/<resource>/<namespace>/<name>`). Puts, guarded updates (a transaction
//! comparing the key's mod_revision, as the apiserver's GuaranteedUpdate does), gets and paginated
//! ranges; bytes on disk per report after compaction and defragmentation.
//!
//! The gateway adds JSON and base64 work that native gRPC clients do not pay, so these figures
//! understate etcd somewhat; they include no apiserver at all, which overstates it.

use std::{
    net::TcpListener,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use base64::{engine::general_purpose::STANDARD as BASE64, Engine as _};
use serde_json::{json, Value};

/// A running etcd member.
pub struct Etcd {
    child: Child,
    /// The client URL, `http://127.0.0.1:PORT`.
    pub url: String,
    dir: tempfile::TempDir,
    http: reqwest::Client,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Etcd {
    /// Starts etcd, or returns None (with the reason) when the binary is not installed.
    pub async fn start() -> anyhow::Result<Result<Self, String>> {
        let version = Command::new("etcd").arg("--version").output();
        match version {
            Ok(out) if out.status.success() => {}
            _ => {
                return Ok(Err("etcd is not installed (Debian package etcd-server); baseline skipped".into()))
            }
        }
        let dir = tempfile::tempdir()?;
        let (client_port, peer_port) = (free_port()?, free_port()?);
        let url = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let child = Command::new("etcd")
            .args(["--name", "bench", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &url, "--advertise-client-urls", &url])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("bench={peer}"), "--quota-backend-bytes", "8589934592"])
            .args(["--logger", "zap", "--log-level", "error"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting etcd")?;
        let etcd = Self { child, url, dir, http: reqwest::Client::new() };
        let deadline = Instant::now() + Duration::from_secs(30);
        while etcd.status().await.is_err() {
            if Instant::now() > deadline {
                anyhow::bail!("etcd did not answer within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(Ok(etcd))
    }

    /// The process id (for CPU accounting).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `etcd --version`'s first line.
    pub fn version() -> String {
        Command::new("etcd")
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or_default().to_string())
            .unwrap_or_default()
    }

    async fn call(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let response = self.http.post(format!("{}{path}", self.url)).json(&body).send().await?;
        let status = response.status();
        let value: Value = response.json().await?;
        anyhow::ensure!(status.is_success(), "etcd {path}: {status} {value}");
        Ok(value)
    }

    /// POSTs a prepared JSON body to the gateway's `/v3/kv/{operation}`; `Err(0)` when the request
    /// could not be sent.
    async fn post_kv(&self, operation: &str, body: String) -> Result<reqwest::Response, u16> {
        self.http
            .post(format!("{}/v3/kv/{operation}", self.url))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|_| 0u16)
    }

    /// The member status (`dbSize`, `header.revision`).
    pub async fn status(&self) -> anyhow::Result<Value> {
        self.call("/v3/maintenance/status", json!({})).await
    }

    /// Puts a key (a prepared base64 key and value); returns the new revision.
    pub async fn put(&self, key: &str, value: &str) -> Result<i64, u16> {
        let body = format!(r#"{{"key":"{key}","value":"{value}"}}"#);
        let response = self.post_kv("put", body).await?;
        revision_of(response).await
    }

    /// Replaces a key only if its mod_revision is still `expected`; returns the new revision.
    pub async fn guarded_update(&self, key: &str, value: &str, expected: i64) -> Result<i64, u16> {
        let body = format!(
            r#"{{"compare":[{{"key":"{key}","target":"MOD","result":"EQUAL","mod_revision":"{expected}"}}],"success":[{{"request_put":{{"key":"{key}","value":"{value}"}}}}]}}"#
        );
        let response = self.post_kv("txn", body).await?;
        let status = response.status();
        let value: Value = response.json().await.map_err(|_| 0u16)?;
        if !status.is_success() {
            return Err(status.as_u16());
        }
        if value["succeeded"].as_bool() != Some(true) {
            return Err(409);
        }
        value["header"]["revision"].as_str().and_then(|r| r.parse().ok()).ok_or(0)
    }

    /// Reads one key; Ok when it exists.
    pub async fn get(&self, key: &str) -> Result<(), u16> {
        let body = format!(r#"{{"key":"{key}"}}"#);
        let response = self.post_kv("range", body).await?;
        let bytes = response.bytes().await.map_err(|_| 0u16)?;
        if bytes.windows(5).any(|w| w == b"\"kvs\"") {
            Ok(())
        } else {
            Err(404)
        }
    }

    /// Reads every key under `prefix`, `page` keys per request; returns (keys, value bytes).
    pub async fn range_all(&self, prefix: &str, page: i64) -> anyhow::Result<(usize, usize)> {
        let mut end = prefix.as_bytes().to_vec();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        let range_end = BASE64.encode(&end);
        let mut start = BASE64.encode(prefix);
        let (mut keys, mut bytes) = (0, 0);
        loop {
            let value = self
                .call(
                    "/v3/kv/range",
                    json!({"key": start, "range_end": range_end, "limit": page.to_string()}),
                )
                .await?;
            let kvs = value["kvs"].as_array().cloned().unwrap_or_default();
            for kv in &kvs {
                bytes += kv["value"].as_str().map_or(0, |v| v.len() * 3 / 4);
            }
            keys += kvs.len();
            if value["more"].as_bool() != Some(true) || kvs.is_empty() {
                return Ok((keys, bytes));
            }
            let last = kvs.last().and_then(|kv| kv["key"].as_str()).context("range key")?;
            let mut next = BASE64.decode(last)?;
            next.push(0);
            start = BASE64.encode(next);
        }
    }

    /// Compacts history up to the current revision and defragments; returns (db size in bytes,
    /// data directory bytes on disk including the WAL).
    pub async fn compacted_size(&self) -> anyhow::Result<(u64, u64)> {
        let revision = self.status().await?["header"]["revision"].as_str().unwrap_or("0").to_string();
        self.call("/v3/kv/compaction", json!({"revision": revision, "physical": true})).await?;
        self.call("/v3/maintenance/defragment", json!({})).await?;
        let db: u64 = self.status().await?["dbSize"].as_str().and_then(|s| s.parse().ok()).unwrap_or(0);
        Ok((db, directory_bytes(self.dir.path())))
    }
}

async fn revision_of(response: reqwest::Response) -> Result<i64, u16> {
    let status = response.status();
    let value: Value = response.json().await.map_err(|_| 0u16)?;
    if !status.is_success() {
        return Err(status.as_u16());
    }
    value["header"]["revision"].as_str().and_then(|r| r.parse().ok()).ok_or(0)
}

/// The base64 form of an etcd key or value.
pub fn encode(bytes: &[u8]) -> String {
    BASE64.encode(bytes)
}

/// Bytes of the files under a directory (allocated size is not needed: etcd preallocates WAL
/// segments, which shows in the file length).
pub fn directory_bytes(path: &std::path::Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(path) {
        for entry in entries.flatten() {
            match entry.metadata() {
                Ok(m) if m.is_dir() => total += directory_bytes(&entry.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
