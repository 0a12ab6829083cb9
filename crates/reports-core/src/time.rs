//! Timestamps in the Kubernetes wire format (RFC 3339, whole seconds, UTC, `Z` suffix).
//!
//! There is no clock here: callers pass the instant (see [`crate::object`]).

/// Formats a timestamp as kube-apiserver does for `metav1.Time`.
pub fn format_time(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_whole_seconds_in_utc() {
        let t: jiff::Timestamp = "2026-07-01T10:00:00.734+02:00".parse().unwrap();
        assert_eq!(super::format_time(t), "2026-07-01T08:00:00Z");
    }
}
