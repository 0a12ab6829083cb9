//! Turning stored JSON into responses in the negotiated shape.
//!
//! The fast path is the common one: a JSON client asking for the object gets the stored bytes
//! untouched (ARCHITECTURE invariant 5), and lists are those bytes spliced between a header and a
//! trailer, streamed in bounded chunks straight from the store's cursor. Only transforms (Table,
//! PartialObjectMetadata), YAML and pretty-printing parse the stored text.

use axum::{body::Body, http::StatusCode, response::Response};
use bytes::Bytes;
use reports_core::{
    negotiate::{encode_value, Encoding, Negotiated, Shape},
    table::{IncludeObject, TableRenderer},
    ApiError, ResourceKind,
};
use reports_store::{ListChunk, ListStream, StoredObject};
use serde::Deserialize;
use serde_json::{json, value::RawValue, Value};
use tokio::sync::mpsc;

use crate::response::bytes_response;

/// How list items and single objects are rendered for one request.
pub struct Renderer {
    /// The negotiated representation.
    pub negotiated: Negotiated,
    /// Table cells, when the shape is a Table.
    table: Option<(TableRenderer, IncludeObject)>,
    /// `apiVersion` of the kind.
    api_version: String,
    /// List kind, e.g. `PolicyReportList`.
    list_kind: String,
    /// Column definitions (Table only).
    columns: Value,
}

/// Just the metadata of a stored object, borrowed from its text without building a tree.
#[derive(Deserialize)]
struct MetadataOnly<'a> {
    #[serde(borrow)]
    metadata: &'a RawValue,
}

fn corrupt(e: impl std::fmt::Display) -> ApiError {
    ApiError::internal(format!("stored object is not valid JSON: {e}"))
}

impl Renderer {
    /// Prepares rendering for `kind`; `include_object` is the raw `includeObject` parameter.
    pub fn new(
        kind: &ResourceKind,
        negotiated: Negotiated,
        include_object: Option<&str>,
    ) -> Result<Self, ApiError> {
        let table = match negotiated.shape {
            Shape::Table(version) => {
                let include =
                    IncludeObject::parse(include_object).map_err(|e| ApiError::bad_request(e.to_string()))?;
                let renderer = TableRenderer::new(kind, jiff::Timestamp::now())
                    .map_err(|e| ApiError::internal(format!("printer columns: {e}")))?
                    .with_meta_version(version);
                Some((renderer, include))
            }
            _ => None,
        };
        Ok(Self {
            negotiated,
            table,
            api_version: kind.api_version(),
            list_kind: kind.list_kind.clone(),
            columns: reports_core::table::column_definitions(&kind.printer_columns),
        })
    }

    fn transform_version(&self) -> &'static str {
        match self.negotiated.shape {
            Shape::Table(v) | Shape::Metadata(v) | Shape::MetadataList(v) => v,
            Shape::Object => "v1",
        }
    }

    /// The JSON text of one list item (or table row) for a stored object.
    fn item_json(&self, body: &str, out: &mut Vec<u8>) -> Result<(), ApiError> {
        match self.negotiated.shape {
            Shape::Object => out.extend_from_slice(body.as_bytes()),
            Shape::Metadata(v) | Shape::MetadataList(v) => {
                let meta: MetadataOnly<'_> = serde_json::from_str(body).map_err(corrupt)?;
                out.extend_from_slice(br#"{"kind":"PartialObjectMetadata","apiVersion":"meta.k8s.io/"#);
                out.extend_from_slice(v.as_bytes());
                out.extend_from_slice(br#"","metadata":"#);
                out.extend_from_slice(meta.metadata.get().as_bytes());
                out.push(b'}');
            }
            Shape::Table(_) => {
                let (renderer, include) = self.table.as_ref().expect("table renderer exists for table shape");
                let object: Value = serde_json::from_str(body).map_err(corrupt)?;
                serde_json::to_writer(&mut *out, &renderer.row(&object, *include)).map_err(corrupt)?;
            }
        }
        Ok(())
    }

    /// The opening of a list document up to the first item.
    fn list_prefix(&self) -> String {
        match self.negotiated.shape {
            Shape::Table(v) => format!(
                r#"{{"kind":"Table","apiVersion":"meta.k8s.io/{v}","columnDefinitions":{},"rows":["#,
                self.columns
            ),
            Shape::MetadataList(v) | Shape::Metadata(v) => {
                format!(r#"{{"kind":"PartialObjectMetadataList","apiVersion":"meta.k8s.io/{v}","items":["#)
            }
            Shape::Object => {
                format!(r#"{{"apiVersion":"{}","kind":"{}","items":["#, self.api_version, self.list_kind)
            }
        }
    }

    /// Renders one object response.
    pub fn object(&self, status: StatusCode, body: &str) -> Result<Response, ApiError> {
        let n = self.negotiated;
        if n.shape == Shape::Object && n.encoding == Encoding::Json && !n.pretty {
            return Ok(bytes_response(status, "application/json", body.to_string()));
        }
        let rendered = match n.shape {
            Shape::Table(v) => {
                let mut rows = Vec::new();
                self.item_json(body, &mut rows)?;
                let meta: MetadataOnly<'_> = serde_json::from_str(body).map_err(corrupt)?;
                let rv = serde_json::from_str::<Value>(meta.metadata.get())
                    .ok()
                    .and_then(|m| m.get("resourceVersion").cloned())
                    .unwrap_or(Value::Null);
                let mut text = format!(
                    r#"{{"kind":"Table","apiVersion":"meta.k8s.io/{v}","columnDefinitions":{},"rows":["#,
                    self.columns
                )
                .into_bytes();
                text.extend_from_slice(&rows);
                text.extend_from_slice(
                    format!(r#"],"metadata":{}}}"#, json!({"resourceVersion": rv})).as_bytes(),
                );
                text
            }
            _ => {
                let mut text = Vec::new();
                self.item_json(body, &mut text)?;
                text
            }
        };
        if n.encoding == Encoding::Json && !n.pretty {
            return Ok(bytes_response(status, "application/json", rendered));
        }
        let value: Value = serde_json::from_slice(&rendered).map_err(corrupt)?;
        Ok(bytes_response(status, n.encoding.content_type(), encode_value(&value, n.encoding, n.pretty)))
    }

    /// Renders any JSON value (Status of a delete, dry-run results) in the negotiated encoding.
    pub fn value(&self, status: StatusCode, value: &Value) -> Response {
        let n = self.negotiated;
        bytes_response(status, n.encoding.content_type(), encode_value(value, n.encoding, n.pretty))
    }

    /// Streams a list: header, items from the store cursor in bounded chunks, then `metadata` with
    /// the list RV and continue token. `finish` computes the metadata from (snapshot RV, last
    /// object, more). YAML and pretty output need the whole document and are built in memory.
    pub fn list(
        self,
        stream: ListStream,
        finish: impl FnOnce(u64, Option<&StoredObject>, bool) -> Value + Send + 'static,
    ) -> Response {
        let n = self.negotiated;
        let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
        let buffered = n.encoding != Encoding::Json || n.pretty;
        tokio::spawn(async move {
            if let Err(e) = self.produce_list(stream, finish, &tx, buffered).await {
                tracing::warn!(error = %e, "list response aborted");
                let _ = tx.send(Err(std::io::Error::other(e.message))).await;
            }
        });
        let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
        bytes_response(StatusCode::OK, n.encoding.content_type(), body)
    }

    async fn produce_list(
        self,
        mut stream: ListStream,
        finish: impl FnOnce(u64, Option<&StoredObject>, bool) -> Value,
        tx: &mpsc::Sender<Result<Bytes, std::io::Error>>,
        buffered: bool,
    ) -> Result<(), ApiError> {
        const FLUSH_BYTES: usize = 256 * 1024;
        let mut out: Vec<u8> = self.list_prefix().into_bytes();
        let mut first = true;
        let mut last: Option<StoredObject> = None;
        let more = loop {
            let chunk = stream
                .chunks
                .recv()
                .await
                .ok_or_else(|| ApiError::internal("list stream ended early"))?
                .map_err(crate::response::store_error)?;
            match chunk {
                ListChunk::Items(items) => {
                    for item in &items {
                        if !first {
                            out.push(b',');
                        }
                        first = false;
                        self.item_json(&item.body, &mut out)?;
                        if !buffered
                            && out.len() >= FLUSH_BYTES
                            && tx.send(Ok(Bytes::from(std::mem::take(&mut out)))).await.is_err()
                        {
                            return Ok(()); // client went away
                        }
                    }
                    last = items.into_iter().last();
                }
                ListChunk::End { more } => break more,
            }
        };
        let metadata = finish(stream.snapshot_rv, last.as_ref(), more);
        out.extend_from_slice(format!(r#"],"metadata":{metadata}}}"#).as_bytes());
        if buffered {
            let value: Value = serde_json::from_slice(&out).map_err(corrupt)?;
            out = encode_value(&value, self.negotiated.encoding, self.negotiated.pretty);
        }
        let _ = tx.send(Ok(Bytes::from(out))).await;
        Ok(())
    }

    /// The version of meta.k8s.io used by transforms (for watch bookmarks later).
    pub fn meta_version(&self) -> &'static str {
        self.transform_version()
    }
}
