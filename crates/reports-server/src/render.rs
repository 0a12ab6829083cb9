//! Turning stored JSON into responses in the negotiated shape.
//!
//! The fast path is the common one: a JSON client asking for the object gets the stored bytes
//! untouched (a get never re-encodes what was stored), and lists are those bytes spliced between
//! a header and a trailer, streamed in bounded chunks straight from the store's cursor. Only transforms (Table,
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
pub(crate) struct Renderer {
    /// The negotiated representation.
    pub(crate) negotiated: Negotiated,
    /// Table cells, when the shape is a Table.
    table: Option<(TableRenderer, IncludeObject)>,
    /// `apiVersion` of the kind.
    api_version: String,
    /// Kind, e.g. `PolicyReport` (watch bookmarks carry it).
    kind: String,
    /// List kind, e.g. `PolicyReportList`.
    list_kind: String,
    /// Column definitions (Table only; `Null` otherwise, as building them costs a few µs a request).
    columns: Value,
    /// Whether a Table watch already sent the column definitions (only the first event has them).
    columns_sent: bool,
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
    pub(crate) fn new(
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
        let columns = match table {
            Some(_) => reports_core::table::column_definitions(&kind.printer_columns),
            None => Value::Null,
        };
        Ok(Self {
            negotiated,
            table,
            api_version: kind.api_version(),
            kind: kind.kind.clone(),
            list_kind: kind.list_kind.clone(),
            columns,
            columns_sent: false,
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
            Shape::Metadata(v) | Shape::MetadataList(v) => append_partial_metadata(v, body, out)?,
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
    pub(crate) fn object(&self, status: StatusCode, body: &str) -> Result<Response, ApiError> {
        let n = self.negotiated;
        if n.shape == Shape::Object && n.encoding == Encoding::Json && !n.pretty {
            return Ok(bytes_response(status, "application/json", body.to_string()));
        }
        let rendered = match n.shape {
            Shape::Table(_) => self.single_row_table(body, true)?,
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
    pub(crate) fn value(&self, status: StatusCode, value: &Value) -> Response {
        let n = self.negotiated;
        bytes_response(status, n.encoding.content_type(), encode_value(value, n.encoding, n.pretty))
    }

    /// Streams a list: header, items from the store cursor in bounded chunks, then `metadata` with
    /// the list RV and continue token. `finish` computes the metadata from (snapshot RV, last
    /// object, more, remaining count). Pretty JSON and YAML stream too, an item at a time, so memory stays
    /// bounded whatever the encoding.
    pub(crate) fn list(
        self,
        stream: ListStream,
        finish: impl FnOnce(u64, Option<&StoredObject>, bool, Option<u64>) -> Value + Send + 'static,
    ) -> Response {
        let n = self.negotiated;
        let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
        tokio::spawn(async move {
            if let Err(e) = self.produce_list(stream, finish, &tx).await {
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
        finish: impl FnOnce(u64, Option<&StoredObject>, bool, Option<u64>) -> Value,
        tx: &mpsc::Sender<Result<Bytes, std::io::Error>>,
    ) -> Result<(), ApiError> {
        const FLUSH_BYTES: usize = 256 * 1024;
        let layout = ListLayout::new(&self.list_prefix(), self.negotiated.encoding, self.negotiated.pretty)?;
        let mut out: Vec<u8> = layout.header.clone().into_bytes();
        let mut item = Vec::new();
        let mut count = 0usize;
        let mut last: Option<StoredObject> = None;
        let (more, remaining) = loop {
            let chunk = stream
                .chunks
                .recv()
                .await
                .ok_or_else(|| ApiError::internal("list stream ended early"))?
                .map_err(crate::response::store_error)?;
            match chunk {
                ListChunk::Items(items) => {
                    for stored in &items {
                        item.clear();
                        self.item_json(&stored.body, &mut item)?;
                        layout.item(count, &item, &mut out)?;
                        count += 1;
                        if out.len() >= FLUSH_BYTES
                            && tx.send(Ok(Bytes::from(std::mem::take(&mut out)))).await.is_err()
                        {
                            return Ok(()); // client went away
                        }
                    }
                    last = items.into_iter().last();
                }
                ListChunk::End { more, remaining } => break (more, remaining),
            }
        };
        let metadata = finish(stream.snapshot_rv, last.as_ref(), more, remaining);
        layout.end(count, &metadata, &mut out);
        let _ = tx.send(Ok(Bytes::from(out))).await;
        Ok(())
    }

    /// A Table holding one object's row, with the object's RV; `with_columns` false gives
    /// `"columnDefinitions":null`, as kube sends after the first event of a Table watch.
    fn single_row_table(&self, body: &str, with_columns: bool) -> Result<Vec<u8>, ApiError> {
        let mut rows = Vec::new();
        self.item_json(body, &mut rows)?;
        let meta: MetadataOnly<'_> = serde_json::from_str(body).map_err(corrupt)?;
        let rv = serde_json::from_str::<Value>(meta.metadata.get())
            .ok()
            .and_then(|m| m.get("resourceVersion").cloned())
            .unwrap_or(Value::Null);
        let columns = if with_columns { self.columns.to_string() } else { "null".to_string() };
        let mut text = format!(
            r#"{{"kind":"Table","apiVersion":"meta.k8s.io/{}","metadata":{},"columnDefinitions":{columns},"rows":["#,
            self.transform_version(),
            json!({"resourceVersion": rv}),
        )
        .into_bytes();
        text.extend_from_slice(&rows);
        text.extend_from_slice(b"]}");
        Ok(text)
    }

    /// The shape of this stream's watch events when they depend on nothing but the stored object
    /// and the event type (the object itself, or PartialObjectMetadata): then one rendering of a
    /// change serves every watcher asking for that shape. `None` for Tables, which carry
    /// per-stream state (column definitions only in the first event).
    pub(crate) fn shared_event_shape(&self) -> Option<Shape> {
        match self.negotiated.shape {
            Shape::Object | Shape::Metadata(_) => Some(self.negotiated.shape),
            Shape::Table(_) | Shape::MetadataList(_) => None,
        }
    }

    /// Appends one watch event line, `{"type":T,"object":…}` and a newline, for a stored object in
    /// the negotiated shape. Stored JSON is compact, so the line never contains another newline.
    pub(crate) fn append_watch_event(
        &mut self,
        event_type: &str,
        body: &str,
        out: &mut Vec<u8>,
    ) -> Result<(), ApiError> {
        if let Shape::Table(_) = self.negotiated.shape {
            if let Some((renderer, _)) = self.table.as_mut() {
                renderer.set_now(jiff::Timestamp::now());
            }
            let first = !self.columns_sent;
            self.columns_sent = true;
            let row = self.single_row_table(body, first)?;
            event_line_start(event_type, out);
            out.extend_from_slice(&row);
            out.extend_from_slice(b"}\n");
            return Ok(());
        }
        append_shared_event(self.negotiated.shape, event_type, body, out)
    }

    /// A BOOKMARK event line at `rv`, in the negotiated shape; `initial_events_end` adds the
    /// `k8s.io/initial-events-end` annotation that ends a streaming list.
    pub(crate) fn watch_bookmark(&mut self, rv: u64, initial_events_end: bool) -> Vec<u8> {
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if initial_events_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let object = match self.negotiated.shape {
            Shape::Object => json!({"apiVersion": self.api_version, "kind": self.kind, "metadata": metadata}),
            Shape::Metadata(v) | Shape::MetadataList(v) => {
                json!({"kind": "PartialObjectMetadata", "apiVersion": format!("meta.k8s.io/{v}"), "metadata": metadata})
            }
            Shape::Table(v) => {
                let columns = if self.columns_sent { Value::Null } else { self.columns.clone() };
                self.columns_sent = true;
                json!({"kind": "Table", "apiVersion": format!("meta.k8s.io/{v}"), "metadata": metadata,
                    "columnDefinitions": columns, "rows": []})
            }
        };
        event_line("BOOKMARK", &object)
    }
}

fn event_line_start(event_type: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(br#"{"type":""#);
    out.extend_from_slice(event_type.as_bytes());
    out.extend_from_slice(br#"","object":"#);
}

/// Appends the watch event line of a stored object in a shape that needs no per-stream state
/// (see [`Renderer::shared_event_shape`]).
pub(crate) fn append_shared_event(
    shape: Shape,
    event_type: &str,
    body: &str,
    out: &mut Vec<u8>,
) -> Result<(), ApiError> {
    let mark = out.len();
    event_line_start(event_type, out);
    let appended = match shape {
        Shape::Object => {
            out.extend_from_slice(body.as_bytes());
            Ok(())
        }
        Shape::Metadata(v) | Shape::MetadataList(v) => append_partial_metadata(v, body, out),
        Shape::Table(_) => Err(ApiError::internal("a Table watch event needs its stream's renderer")),
    };
    if let Err(e) = appended {
        out.truncate(mark);
        return Err(e);
    }
    out.extend_from_slice(b"}\n");
    Ok(())
}

/// `{"kind":"PartialObjectMetadata",…,"metadata":…}` of a stored object, its metadata borrowed
/// from the stored text.
fn append_partial_metadata(version: &str, body: &str, out: &mut Vec<u8>) -> Result<(), ApiError> {
    let meta: MetadataOnly<'_> = serde_json::from_str(body).map_err(corrupt)?;
    out.extend_from_slice(br#"{"kind":"PartialObjectMetadata","apiVersion":"meta.k8s.io/"#);
    out.extend_from_slice(version.as_bytes());
    out.extend_from_slice(br#"","metadata":"#);
    out.extend_from_slice(meta.metadata.get().as_bytes());
    out.push(b'}');
    Ok(())
}

/// One watch event line for a JSON value (bookmarks, ERROR events carrying a Status).
pub(crate) fn event_line(event_type: &str, object: &Value) -> Vec<u8> {
    let mut line = serde_json::to_vec(&json!({"type": event_type, "object": object})).unwrap_or_default();
    line.push(b'\n');
    line
}

/// How a streamed list document is written in one encoding: the text before the first item,
/// each item, and the end with `metadata`. The header comes from encoding the list's opening
/// fields with an empty array, so it is exactly what encoding the whole document would give.
struct ListLayout {
    /// Everything up to where the items go.
    header: String,
    /// The encoding the items are written in.
    style: ListStyle,
    /// The array's key (`items`, or `rows` for a Table), for YAML's empty-list form.
    array_key: String,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ListStyle {
    Compact,
    Pretty,
    Yaml,
}

impl ListLayout {
    fn new(prefix: &str, encoding: Encoding, pretty: bool) -> Result<Self, ApiError> {
        let style = match (encoding, pretty) {
            (Encoding::Yaml, _) => ListStyle::Yaml,
            (Encoding::Json, true) => ListStyle::Pretty,
            (Encoding::Json, false) => ListStyle::Compact,
        };
        if style == ListStyle::Compact {
            return Ok(Self { header: prefix.to_string(), style, array_key: String::new() });
        }
        let opening: Value = serde_json::from_str(&format!("{prefix}]}}")).map_err(corrupt)?;
        let array_key = opening.as_object().and_then(|o| o.keys().next_back().cloned()).unwrap_or_default();
        let text = String::from_utf8(encode_value(&opening, encoding, pretty)).map_err(corrupt)?;
        let header = match style {
            // `  "items": []\n}` -> `  "items": `
            ListStyle::Pretty => text
                .trim_end()
                .strip_suffix('}')
                .and_then(|t| t.trim_end().strip_suffix("[]"))
                .map(str::to_string),
            // `items: []\n` -> `` (the key is written with the first item, or as `items: []`)
            _ => text.strip_suffix(&format!("{array_key}: []\n")).map(str::to_string),
        }
        .ok_or_else(|| ApiError::internal("unexpected list header encoding"))?;
        Ok(Self { header, style, array_key })
    }

    /// Appends item `index` (its compact JSON) to `out`.
    fn item(&self, index: usize, json: &[u8], out: &mut Vec<u8>) -> Result<(), ApiError> {
        match self.style {
            ListStyle::Compact => {
                if index > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(json);
            }
            ListStyle::Pretty => {
                let value: Value = serde_json::from_slice(json).map_err(corrupt)?;
                out.extend_from_slice(if index == 0 { b"[\n" } else { b",\n" });
                let text = serde_json::to_string_pretty(&value).map_err(corrupt)?;
                for (i, line) in text.lines().enumerate() {
                    if i > 0 {
                        out.push(b'\n');
                    }
                    out.extend_from_slice(b"    ");
                    out.extend_from_slice(line.as_bytes());
                }
            }
            ListStyle::Yaml => {
                let value: Value = serde_json::from_slice(json).map_err(corrupt)?;
                if index == 0 {
                    out.extend_from_slice(format!("{}:\n", self.array_key).as_bytes());
                }
                let text = String::from_utf8(encode_value(&value, Encoding::Yaml, false)).map_err(corrupt)?;
                for (i, line) in text.lines().enumerate() {
                    out.extend_from_slice(if i == 0 { b"- " } else { b"  " });
                    out.extend_from_slice(line.as_bytes());
                    out.push(b'\n');
                }
            }
        }
        Ok(())
    }

    /// Appends the end of the document after `count` items.
    fn end(&self, count: usize, metadata: &Value, out: &mut Vec<u8>) {
        match self.style {
            ListStyle::Compact => out.extend_from_slice(format!(r#"],"metadata":{metadata}}}"#).as_bytes()),
            ListStyle::Pretty => {
                out.extend_from_slice(if count == 0 { b"[]" } else { b"\n  ]" });
                let text = serde_json::to_string_pretty(metadata).unwrap_or_default();
                out.extend_from_slice(b",\n  \"metadata\": ");
                for (i, line) in text.lines().enumerate() {
                    if i > 0 {
                        out.extend_from_slice(b"\n  ");
                    }
                    out.extend_from_slice(line.as_bytes());
                }
                out.extend_from_slice(b"\n}");
            }
            ListStyle::Yaml => {
                if count == 0 {
                    out.extend_from_slice(format!("{}: []\n", self.array_key).as_bytes());
                }
                out.extend_from_slice(&encode_value(&json!({ "metadata": metadata }), Encoding::Yaml, false));
            }
        }
    }
}
