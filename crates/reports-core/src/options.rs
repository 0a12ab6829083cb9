//! Query parameters: decoding, and the validated option sets of list/watch, writes and deletes.
//!
//! The aggregator re-encodes every query with Go's `url.Values.Encode` (sorted keys, `+` for
//! spaces) and kube-rs starts queries with an empty pair (`?&watch=true`), so decoding follows
//! `application/x-www-form-urlencoded` and tolerates empty pairs. Unknown parameters are ignored, as
//! k8s.io/apiserver does. Validation messages mirror apimachinery's so clients see the same text.

use serde_json::Value;

use crate::{
    error::{field_forbidden, field_invalid, field_not_supported, ApiError, StatusCause},
    paging::ContinueToken,
    selector::{FieldSelector, LabelSelector},
    ResourceKind,
};

/// A decoded query string: pairs in their original order.
#[derive(Debug, Clone, Default)]
pub struct Query(Vec<(String, String)>);

impl Query {
    /// Decodes `a=b&c=d` form-style (`+` is a space, `%XX` escapes); malformed escapes are kept
    /// literally, like Go's lenient path would reject them; we prefer not failing on them.
    pub fn parse(raw: Option<&str>) -> Self {
        let pairs = raw
            .unwrap_or_default()
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (form_decode(k), form_decode(v))
            })
            .collect();
        Self(pairs)
    }

    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Sets `key` to `value`, replacing an existing value.
    pub fn set(&mut self, key: &str, value: &str) {
        match self.0.iter_mut().find(|(k, _)| k == key) {
            Some(pair) => pair.1 = value.to_string(),
            None => self.0.push((key.to_string(), value.to_string())),
        }
    }

    /// A boolean parameter: absent, `0` or `false` (any case) is false; anything else, including
    /// an empty value, is true (apimachinery's `Convert_Slice_string_To_bool`).
    pub fn flag(&self, key: &str) -> bool {
        self.get(key).is_some_and(truthy)
    }

    /// An optional boolean (`None` when absent).
    pub fn opt_flag(&self, key: &str) -> Option<bool> {
        self.get(key).map(truthy)
    }

    /// An optional integer; unparsable is 400.
    pub fn int(&self, key: &str) -> Result<Option<i64>, ApiError> {
        match self.get(key) {
            None | Some("") => Ok(None),
            Some(v) => v.trim().parse::<i64>().map(Some).map_err(|_| {
                ApiError::bad_request(format!("invalid value for {key}: {v:?} is not an integer"))
            }),
        }
    }
}

fn truthy(v: &str) -> bool {
    !(v == "0" || v.eq_ignore_ascii_case("false"))
}

fn form_decode(s: &str) -> String {
    String::from_utf8_lossy(&percent_decode(s, true)).into_owned()
}

/// Decodes `%XX` escapes (and `+` as a space when `plus_is_space`, as in a query); a `%` that does
/// not start a valid escape is kept as it is.
pub fn percent_decode(text: &str, plus_is_space: bool) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |at: usize| bytes.get(at).and_then(|b| (*b as char).to_digit(16));
        match (bytes[i], hex(i + 1), hex(i + 2)) {
            (b'%', Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                i += 3;
            }
            (b'+', _, _) if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            (byte, _, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    out
}

/// The `resourceVersion` parameter of a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RvParam {
    /// Absent or empty: most recent (a consistent read).
    Unset,
    /// `"0"`: any version is fine.
    Any,
    /// A specific RV.
    At(u64),
}

/// Parses a resourceVersion parameter; garbage is 400 `invalid resource version`.
pub fn parse_rv_param(value: Option<&str>) -> Result<RvParam, ApiError> {
    match value {
        None | Some("") => Ok(RvParam::Unset),
        Some("0") => Ok(RvParam::Any),
        Some(v) => v
            .parse::<u64>()
            .ok()
            .filter(|rv| *rv > 0)
            .map(RvParam::At)
            .ok_or_else(|| ApiError::bad_request(format!("invalid resource version: {v}"))),
    }
}

/// `resourceVersionMatch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RvMatch {
    /// Data exactly at the RV.
    Exact,
    /// Data at least as new as the RV.
    NotOlderThan,
}

/// Validated options of a list, watch or deletecollection.
#[derive(Debug, Clone)]
pub struct ListOptions {
    /// `labelSelector`.
    pub label_selector: LabelSelector,
    /// `fieldSelector`.
    pub field_selector: FieldSelector,
    /// `limit` (None when absent or not positive).
    pub limit: Option<u64>,
    /// Decoded `continue`.
    pub continue_token: Option<ContinueToken>,
    /// `resourceVersion`.
    pub resource_version: RvParam,
    /// `resourceVersionMatch`.
    pub rv_match: Option<RvMatch>,
    /// `watch`.
    pub watch: bool,
    /// `allowWatchBookmarks`.
    pub allow_bookmarks: bool,
    /// `sendInitialEvents` (None when absent).
    pub send_initial_events: Option<bool>,
    /// `timeoutSeconds` (watch only).
    pub timeout_seconds: Option<u64>,
}

fn list_options_invalid(field: &str, detail: &str) -> ApiError {
    ApiError::invalid_list_options(field_forbidden(field, detail))
}

impl ListOptions {
    /// Parses and validates list/watch options for `kind` (field selectors depend on its scope).
    pub fn parse(query: &Query, kind: &ResourceKind) -> Result<Self, ApiError> {
        let label_selector = LabelSelector::parse(query.get("labelSelector").unwrap_or_default())
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let field_selector =
            FieldSelector::parse(query.get("fieldSelector").unwrap_or_default(), kind.namespaced)
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
        // No name or namespace holds a NUL byte, and PostgreSQL cannot even compare with one.
        if field_selector.requirements.iter().any(|r| r.value.contains('\0')) {
            return Err(ApiError::bad_request("invalid field selector: a value contains a NUL byte"));
        }
        let limit = query.int("limit")?.filter(|l| *l > 0).map(|l| l as u64);
        let rv_text = query.get("resourceVersion").unwrap_or_default();
        let resource_version = parse_rv_param(Some(rv_text))?;
        let continue_text = query.get("continue").unwrap_or_default();
        let watch = query.flag("watch");
        let send_initial_events = query.opt_flag("sendInitialEvents");
        let match_text = query.get("resourceVersionMatch").unwrap_or_default();
        let rv_match = match match_text {
            "" => None,
            "Exact" => Some(RvMatch::Exact),
            "NotOlderThan" => Some(RvMatch::NotOlderThan),
            other => {
                let supported: &[&str] =
                    if watch { &["NotOlderThan"] } else { &["Exact", "NotOlderThan", ""] };
                return Err(ApiError::invalid_list_options(field_not_supported(
                    "resourceVersionMatch",
                    other,
                    supported,
                )));
            }
        };
        if watch {
            if send_initial_events.is_some() && rv_match != Some(RvMatch::NotOlderThan) {
                return Err(list_options_invalid(
                    "resourceVersionMatch",
                    "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
                ));
            }
            if rv_match.is_some() && send_initial_events.is_none() {
                return Err(list_options_invalid(
                    "resourceVersionMatch",
                    "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
                ));
            }
        } else {
            if rv_match.is_some() {
                if rv_text.is_empty() {
                    return Err(list_options_invalid(
                        "resourceVersionMatch",
                        "resourceVersionMatch is forbidden unless resourceVersion is provided",
                    ));
                }
                if !continue_text.is_empty() {
                    return Err(list_options_invalid(
                        "resourceVersionMatch",
                        "resourceVersionMatch is forbidden when continue is provided",
                    ));
                }
                if rv_match == Some(RvMatch::Exact) && resource_version == RvParam::Any {
                    return Err(list_options_invalid(
                        "resourceVersionMatch",
                        "resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
                    ));
                }
            }
            if send_initial_events.is_some() {
                return Err(list_options_invalid(
                    "sendInitialEvents",
                    "sendInitialEvents is forbidden for list",
                ));
            }
        }
        let continue_token = if continue_text.is_empty() {
            None
        } else {
            if matches!(resource_version, RvParam::At(_)) {
                return Err(ApiError::bad_request(
                    "specifying resource version is not allowed when using continue",
                ));
            }
            Some(ContinueToken::decode(continue_text)?)
        };
        let timeout_seconds = query.int("timeoutSeconds")?.filter(|t| *t > 0).map(|t| t as u64);
        if let Some(timeout) = query.get("timeout").filter(|t| !t.is_empty()) {
            parse_go_duration(timeout)
                .ok_or_else(|| ApiError::bad_request(format!("invalid timeout {timeout:?}")))?;
        }
        Ok(Self {
            label_selector,
            field_selector,
            limit,
            continue_token,
            resource_version,
            rv_match,
            watch,
            allow_bookmarks: query.flag("allowWatchBookmarks"),
            send_initial_events,
            timeout_seconds,
        })
    }
}

/// Parses a Go duration (`300ms`, `1m30s`, `7m3s`, `2h`) into seconds.
pub fn parse_go_duration(text: &str) -> Option<f64> {
    let mut rest = text.trim();
    if rest == "0" {
        return Some(0.0);
    }
    let mut total = 0.0;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if number_len == 0 {
            return None;
        }
        let number: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += number * scale;
        rest = &rest[unit_len..];
    }
    Some(total)
}

/// `fieldValidation` of a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldValidation {
    /// Drop unknown fields silently.
    Ignore,
    /// Drop them and say so in `Warning` headers (the default).
    Warn,
    /// Reject them.
    Strict,
}

/// Validated options of create, update and patch.
#[derive(Debug, Clone)]
pub struct WriteOptions {
    /// `dryRun=All`.
    pub dry_run: bool,
    /// `fieldManager`.
    pub field_manager: Option<String>,
    /// `fieldValidation`.
    pub field_validation: FieldValidation,
    /// `force` (apply only).
    pub force: bool,
}

fn invalid_options(kind: &str, cause: StatusCause) -> ApiError {
    ApiError::invalid_qualified(&format!("{kind}.meta.k8s.io"), kind, "meta.k8s.io", "", vec![cause])
}

/// Validates the `dryRun` parameter values: only `All` is supported.
fn parse_dry_run(value: Option<&str>, options_kind: &str) -> Result<bool, ApiError> {
    match value {
        None | Some("") => Ok(false),
        Some("All") => Ok(true),
        Some(other) => Err(invalid_options(options_kind, field_not_supported("dryRun", other, &["All"]))),
    }
}

impl WriteOptions {
    /// Parses create/update/patch options; `options_kind` is `CreateOptions`, `UpdateOptions` or
    /// `PatchOptions`, used in 422 messages.
    pub fn parse(query: &Query, options_kind: &str, is_apply: bool) -> Result<Self, ApiError> {
        let dry_run = parse_dry_run(query.get("dryRun"), options_kind)?;
        let field_manager = query.get("fieldManager").filter(|m| !m.is_empty()).map(str::to_string);
        if let Some(manager) = &field_manager {
            if manager.chars().count() > 128 {
                return Err(invalid_options(
                    options_kind,
                    StatusCause {
                        reason: "FieldValueTooLong".into(),
                        message: "Too long: may not be more than 128 bytes".into(),
                        field: "fieldManager".into(),
                    },
                ));
            }
        }
        let field_validation = match query.get("fieldValidation").unwrap_or_default() {
            "" | "Warn" => FieldValidation::Warn,
            "Ignore" => FieldValidation::Ignore,
            "Strict" => FieldValidation::Strict,
            other => {
                return Err(invalid_options(
                    options_kind,
                    field_not_supported("fieldValidation", other, &["Ignore", "Strict", "Warn"]),
                ))
            }
        };
        let force = query.flag("force");
        if force && !is_apply {
            return Err(invalid_options(
                options_kind,
                field_forbidden("force", "may not be specified for non-apply patch"),
            ));
        }
        Ok(Self { dry_run, field_manager, field_validation, force })
    }
}

/// Delete propagation policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    /// Dependents are orphaned (finalizer `orphan`).
    Orphan,
    /// Delete now; the garbage collector deletes dependents in the background.
    Background,
    /// Wait for dependents (finalizer `foregroundDeletion`).
    Foreground,
}

/// Validated delete options, from a DeleteOptions body or the query.
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    /// `dryRun=All`.
    pub dry_run: bool,
    /// `propagationPolicy` (or the legacy `orphanDependents`).
    pub propagation: Option<Propagation>,
    /// The legacy `orphanDependents` flag as sent; kube answers 202 instead of 200 when it is
    /// `false` and the object is not gone yet.
    pub orphan_dependents: Option<bool>,
    /// `preconditions.uid`.
    pub precondition_uid: Option<String>,
    /// `preconditions.resourceVersion`.
    pub precondition_rv: Option<String>,
}

impl DeleteOptions {
    /// Merges the body (if any, already parsed) and the query; the body wins, as in kube.
    pub fn parse(query: &Query, body: Option<&Value>) -> Result<Self, ApiError> {
        let from_body = |key: &str| body.and_then(|b| b.get(key)).filter(|v| !v.is_null());
        let text = |key: &str| -> Option<String> {
            from_body(key)
                .and_then(|v| v.as_str().map(str::to_string))
                .or_else(|| query.get(key).map(str::to_string))
        };
        if let Some(b) = body {
            if !b.is_object() {
                return Err(ApiError::bad_request(
                    "the body of a delete request must be a DeleteOptions object",
                ));
            }
        }
        let dry_run = match from_body("dryRun") {
            Some(Value::Array(items)) => {
                let mut dry = false;
                for item in items {
                    dry |= parse_dry_run(item.as_str(), "DeleteOptions")?;
                }
                dry
            }
            Some(_) => return Err(ApiError::bad_request("dryRun must be a list of strings")),
            None => parse_dry_run(query.get("dryRun"), "DeleteOptions")?,
        };
        let orphan = match from_body("orphanDependents") {
            Some(v) => v.as_bool(),
            None => query.opt_flag("orphanDependents"),
        };
        let policy_text = text("propagationPolicy");
        if policy_text.is_some() && orphan.is_some() {
            return Err(invalid_options(
                "DeleteOptions",
                field_invalid(
                    "propagationPolicy",
                    policy_text.as_deref().unwrap_or_default(),
                    "orphanDependents and deletionPropagation cannot be both set",
                ),
            ));
        }
        let propagation = match policy_text.as_deref() {
            None | Some("") => orphan.map(|o| if o { Propagation::Orphan } else { Propagation::Background }),
            Some("Orphan") => Some(Propagation::Orphan),
            Some("Background") => Some(Propagation::Background),
            Some("Foreground") => Some(Propagation::Foreground),
            Some(other) => {
                return Err(invalid_options(
                    "DeleteOptions",
                    field_not_supported(
                        "propagationPolicy",
                        other,
                        &["Foreground", "Background", "Orphan", "nil"],
                    ),
                ))
            }
        };
        // Report objects have no grace period, but the number must still be an int64 as kube
        // decodes it (a query value past i64 or a fraction in the body is 400).
        query.int("gracePeriodSeconds")?;
        if let Some(grace) = from_body("gracePeriodSeconds").filter(|v| !v.is_i64()) {
            let kind = if grace.is_number() { format!("number {grace}") } else { "a non-number".into() };
            return Err(ApiError::bad_request(format!(
                "json: cannot unmarshal {kind} into Go struct field DeleteOptions.gracePeriodSeconds of type int64"
            )));
        }
        let preconditions = from_body("preconditions");
        let precondition = |key: &str| {
            preconditions
                .and_then(|p| p.get(key))
                .and_then(|v| v.as_str())
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        Ok(Self {
            dry_run,
            propagation,
            orphan_dependents: orphan,
            precondition_uid: precondition("uid"),
            precondition_rv: precondition("resourceVersion"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Catalogue;

    fn polr() -> ResourceKind {
        Catalogue::embedded().unwrap().find("wgpolicyk8s.io", "v1alpha2", "policyreports").unwrap().clone()
    }

    #[test]
    fn grace_periods_must_be_int64() {
        let ok = Query::parse(Some("gracePeriodSeconds=9223372036854775807"));
        assert!(DeleteOptions::parse(&ok, Some(&serde_json::json!({"gracePeriodSeconds": -5}))).is_ok());
        let past = Query::parse(Some("gracePeriodSeconds=9223372036854775808"));
        assert_eq!(DeleteOptions::parse(&past, None).unwrap_err().code, 400);
        let body = serde_json::json!({"gracePeriodSeconds": 18446744073709551615u64});
        assert_eq!(DeleteOptions::parse(&Query::parse(None), Some(&body)).unwrap_err().code, 400);
        let body = serde_json::json!({"gracePeriodSeconds": 1.5});
        assert_eq!(DeleteOptions::parse(&Query::parse(None), Some(&body)).unwrap_err().code, 400);
    }

    #[test]
    fn decodes_like_a_form() {
        let q = Query::parse(Some("&labelSelector=env+in+%28a%2Cb%29&watch=&x=1"));
        assert_eq!(q.get("labelSelector"), Some("env in (a,b)"));
        assert!(q.flag("watch"));
        assert!(!Query::parse(Some("watch=false")).flag("watch"));
        assert!(!Query::parse(Some("watch=0")).flag("watch"));
        assert!(Query::parse(Some("watch=1")).flag("watch"));
    }

    #[test]
    fn list_option_rules() {
        let kind = polr();
        let parse = |q: &str| ListOptions::parse(&Query::parse(Some(q)), &kind);
        assert_eq!(parse("limit=x").unwrap_err().code, 400);
        assert_eq!(parse("resourceVersion=abc").unwrap_err().code, 400);
        assert_eq!(parse("resourceVersionMatch=Exact").unwrap_err().code, 422);
        assert_eq!(parse("resourceVersion=0&resourceVersionMatch=Exact").unwrap_err().code, 422);
        assert_eq!(parse("resourceVersion=5&resourceVersionMatch=Newest").unwrap_err().code, 422);
        assert_eq!(parse("sendInitialEvents=true").unwrap_err().code, 422);
        let err = parse("watch=1&sendInitialEvents=true").unwrap_err();
        assert_eq!(err.code, 422);
        assert!(err
            .message
            .contains("sendInitialEvents requires setting resourceVersionMatch to NotOlderThan"));
        assert_eq!(parse("watch=1&resourceVersionMatch=NotOlderThan").unwrap_err().code, 422);
        assert!(parse("watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan").is_ok());
        let token = ContinueToken::new(3, "a", "b").encode();
        assert_eq!(parse(&format!("continue={token}&resourceVersion=7")).unwrap_err().code, 400);
        assert!(parse(&format!("continue={token}&resourceVersion=0")).is_ok());
        assert_eq!(parse("timeout=bogus").unwrap_err().code, 400);
        assert!(parse("timeout=7m3s&limit=500").is_ok());
        assert_eq!(parse("fieldSelector=spec.x%3Dy").unwrap_err().code, 400);
    }

    #[test]
    fn write_and_delete_options() {
        assert!(
            WriteOptions::parse(&Query::parse(Some("dryRun=All")), "CreateOptions", false).unwrap().dry_run
        );
        assert_eq!(
            WriteOptions::parse(&Query::parse(Some("dryRun=Some")), "CreateOptions", false).unwrap_err().code,
            422
        );
        assert_eq!(
            WriteOptions::parse(&Query::parse(Some("fieldValidation=Loose")), "CreateOptions", false)
                .unwrap_err()
                .code,
            422
        );
        assert_eq!(
            WriteOptions::parse(&Query::parse(Some("force=true")), "PatchOptions", false).unwrap_err().code,
            422
        );
        let body = serde_json::json!({"kind":"DeleteOptions","apiVersion":"v1","propagationPolicy":"Background",
            "preconditions":{"uid":"u1"}});
        let opts = DeleteOptions::parse(&Query::default(), Some(&body)).unwrap();
        assert_eq!(opts.propagation, Some(Propagation::Background));
        assert_eq!(opts.precondition_uid.as_deref(), Some("u1"));
        let both = serde_json::json!({"propagationPolicy":"Orphan","orphanDependents":true});
        assert_eq!(DeleteOptions::parse(&Query::default(), Some(&both)).unwrap_err().code, 422);
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("7m3s"), Some(423.0));
        assert_eq!(parse_go_duration("1h"), Some(3600.0));
        assert_eq!(parse_go_duration("250ms"), Some(0.25));
        assert_eq!(parse_go_duration("x"), None);
        assert_eq!(parse_go_duration("5"), None);
    }
}
