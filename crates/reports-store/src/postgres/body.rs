//! An object's JSON split around its `metadata.resourceVersion` value, so the database can put
//! the RV it assigns in between (`$prefix || rv || $suffix`): the RV is known only inside the
//! statement that takes it.

use serde_json::Value;
use uuid::Uuid;

use crate::{
    error::{StoreError, StoreResult},
    model::StoredObject,
};

/// The two halves of an object's JSON around its RV.
pub(super) struct SplitBody {
    /// Everything up to the RV's value.
    pub prefix: String,
    /// Everything after it.
    pub suffix: String,
}

impl SplitBody {
    /// Serializes `object` with a marker in place of its RV and cuts the text there.
    pub fn new(object: &mut Value) -> StoreResult<Self> {
        for _ in 0..4 {
            // A fresh random marker per attempt: user data cannot know it, and a second match is
            // checked for anyway.
            let marker = format!("rv-marker-{}", Uuid::new_v4().simple());
            object
                .get_mut("metadata")
                .and_then(Value::as_object_mut)
                .ok_or_else(|| StoreError::backend("object has no metadata"))?
                .insert("resourceVersion".into(), Value::String(marker.clone()));
            let mut text = serde_json::to_string(object)
                .map_err(|e| StoreError::backend_caused("serializing the object", e))?;
            let needle = format!("\"resourceVersion\":\"{marker}\"");
            let mut found = text.match_indices(&needle);
            if let (Some((at, _)), None) = (found.next(), found.next()) {
                let value_start = at + "\"resourceVersion\":\"".len();
                let suffix = text.split_off(value_start + marker.len());
                text.truncate(value_start);
                return Ok(Self { prefix: text, suffix });
            }
        }
        Err(StoreError::backend("could not place the resourceVersion in the stored JSON"))
    }

    /// The object as stored at `rv`.
    pub fn stored(&self, namespace: String, name: String, uid: String, rv: u64) -> StoredObject {
        StoredObject { namespace, name, uid, rv, body: self.join(rv) }
    }

    /// The stored JSON at `rv`.
    pub fn join(&self, rv: u64) -> String {
        let rv = rv.to_string();
        let mut body = String::with_capacity(self.prefix.len() + rv.len() + self.suffix.len());
        body.push_str(&self.prefix);
        body.push_str(&rv);
        body.push_str(&self.suffix);
        body
    }
}
