//! The client side of the benchmark: kube-style HTTPS requests against the server, with bodies
//! prepared before the clock starts so the load generator spends its CPU on sending, not on
//! building JSON.

use bytes::Bytes;
use serde_json::Value;

use crate::load::OpResult;

/// The Accept header of a metadata-only list (what informers on PartialObjectMetadata send).
pub const ACCEPT_METADATA: &str = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1";

/// HTTPS clients to one server, each with its own connection pool (like separate kube clients).
#[derive(Clone)]
pub struct Api {
    clients: Vec<reqwest::Client>,
    /// `https://127.0.0.1:PORT`.
    pub base: String,
}

/// A new HTTPS client that trusts the server's self-signed certificate.
pub fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder().danger_accept_invalid_certs(true).build()?)
}

/// An HTTPS client that speaks only HTTP/1.1, as kube-rs does.
pub fn http1_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder().danger_accept_invalid_certs(true).http1_only().build()?)
}

impl Api {
    /// `connections` clients to the server at `base`, each connected before it returns: the
    /// TLS handshakes of the first requests would otherwise be timed as part of the first
    /// workload (a client of a running server has its connection already).
    pub async fn connect(base: &str, connections: usize) -> anyhow::Result<Self> {
        let clients: Vec<reqwest::Client> =
            (0..connections.max(1)).map(|_| client()).collect::<anyhow::Result<_>>()?;
        for client in &clients {
            client.get(format!("{base}/version")).send().await?.error_for_status()?;
        }
        Ok(Self { clients, base: base.to_string() })
    }

    /// The client for operation `i` (round robin).
    pub fn client(&self, i: usize) -> &reqwest::Client {
        &self.clients[i % self.clients.len()]
    }

    /// The URL of a collection: `resource` is the plural of a `wgpolicyk8s.io/v1alpha2` or
    /// `reports.kyverno.io/v1` kind.
    pub fn collection(&self, resource: &str, namespace: Option<&str>) -> String {
        let group = match resource {
            "policyreports" | "clusterpolicyreports" => "wgpolicyk8s.io/v1alpha2",
            "ephemeralreports" | "clusterephemeralreports" => "reports.kyverno.io/v1",
            _ => "openreports.io/v1alpha1",
        };
        match namespace {
            Some(ns) => format!("{}/apis/{group}/namespaces/{ns}/{resource}", self.base),
            None => format!("{}/apis/{group}/{resource}", self.base),
        }
    }

    /// POSTs a prepared body; returns the created object's resourceVersion.
    pub async fn create(&self, i: usize, url: &str, body: Bytes) -> Result<u64, u16> {
        write(self.client(i).post(url), body).await
    }

    /// PUTs a prepared body (carrying its resourceVersion precondition); returns the new RV.
    pub async fn update(&self, i: usize, url: &str, body: Bytes) -> Result<u64, u16> {
        write(self.client(i).put(url), body).await
    }

    /// Sends a request and reads the whole response; the status decides the outcome.
    pub async fn send(&self, request: reqwest::RequestBuilder) -> OpResult {
        let response = request.send().await.map_err(|_| 0u16)?;
        let status = response.status();
        let _ = response.bytes().await.map_err(|_| 0u16)?;
        if status.is_success() {
            Ok(())
        } else {
            Err(status.as_u16())
        }
    }
}

/// Sends a write (POST or PUT) with a prepared JSON body; returns the object's new resourceVersion.
async fn write(request: reqwest::RequestBuilder, body: Bytes) -> Result<u64, u16> {
    let response =
        request.header("content-type", "application/json").body(body).send().await.map_err(|_| 0u16)?;
    rv_of_response(response).await
}

/// Reads a write response and finds `metadata.resourceVersion` in it without parsing the object.
async fn rv_of_response(response: reqwest::Response) -> Result<u64, u16> {
    let status = response.status();
    let body = response.bytes().await.map_err(|_| 0u16)?;
    if !status.is_success() {
        return Err(status.as_u16());
    }
    resource_version_in(&body).ok_or(0)
}

/// The first `"resourceVersion":"N"` in a JSON text (metadata comes first in stored objects).
pub fn resource_version_in(text: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"resourceVersion\":\"";
    let head = &text[..text.len().min(4096)];
    let at = head.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let digits: Vec<u8> = text[at..].iter().take_while(|b| b.is_ascii_digit()).copied().collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

/// Compact JSON of a document.
pub fn to_bytes(document: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(document).unwrap_or_default())
}

/// A prepared body with `metadata.resourceVersion` set to `rv` and the scan-time annotation (if
/// any) moved to `scan` seconds past a fixed date, spliced into the bytes without re-serialising.
pub fn with_resource_version(body: &[u8], rv: u64, scan: u64) -> Bytes {
    const METADATA: &[u8] = b"\"metadata\":{";
    const SCAN: &[u8] = b"2025-01-01T00:00:00Z";
    let mut out = Vec::with_capacity(body.len() + 32);
    match body.windows(METADATA.len()).position(|w| w == METADATA) {
        Some(at) => {
            let at = at + METADATA.len();
            out.extend_from_slice(&body[..at]);
            out.extend_from_slice(format!("\"resourceVersion\":\"{rv}\",").as_bytes());
            out.extend_from_slice(&body[at..]);
        }
        None => out.extend_from_slice(body),
    }
    if let Some(at) = out.windows(SCAN.len()).position(|w| w == SCAN) {
        let stamp = format!(
            "2025-01-{:02}T{:02}:{:02}:{:02}Z",
            2 + scan / 86_400 % 27,
            scan / 3600 % 24,
            scan / 60 % 60,
            scan % 60
        );
        out[at..at + SCAN.len()].copy_from_slice(stamp.as_bytes());
    }
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resource_version_is_spliced_into_metadata() {
        let body = br#"{"kind":"X","metadata":{"name":"a","annotations":{"t":"2025-01-01T00:00:00Z"}}}"#;
        let out = with_resource_version(body, 42, 61);
        let value: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["metadata"]["resourceVersion"], "42");
        assert_eq!(value["metadata"]["annotations"]["t"], "2025-01-02T00:01:01Z");
        assert_eq!(resource_version_in(&out), Some(42));
    }
}
