//! Label and field selectors as SQL conditions on the labels JSON column (`json_extract`,
//! `json_type`) and the name and namespace columns, including the absent-key rules of `!=` and
//! `notin` and integer-only `>`/`<`: nothing is filtered after loading.

use reports_core::selector::{FieldSelector, LabelSelector, Operator};
use rusqlite::types::Value as SqlValue;

use crate::model::field_condition;

/// The JSON path of a label key inside the labels column (keys are validated label keys, which
/// cannot contain quotes).
fn label_path(key: &str) -> String {
    format!("$.\"{key}\"")
}

/// Appends the conditions of a label selector on the labels JSON in `column`.
pub(super) fn push_label_selector(
    labels: &LabelSelector,
    column: &str,
    sql: &mut String,
    args: &mut Vec<SqlValue>,
) {
    for req in &labels.requirements {
        let path = SqlValue::Text(label_path(&req.key));
        let value = format!("json_extract({column}, ?)");
        match req.op {
            Operator::Exists => {
                sql.push_str(&format!(" AND json_type({column}, ?) IS NOT NULL"));
                args.push(path);
            }
            Operator::DoesNotExist => {
                sql.push_str(&format!(" AND json_type({column}, ?) IS NULL"));
                args.push(path);
            }
            Operator::Equals => {
                sql.push_str(&format!(" AND {value} = ?"));
                args.extend([path, SqlValue::Text(req.values[0].clone())]);
            }
            Operator::NotEquals => {
                sql.push_str(&format!(" AND {value} IS NOT ?"));
                args.extend([path, SqlValue::Text(req.values[0].clone())]);
            }
            Operator::In | Operator::NotIn => {
                let marks = vec!["?"; req.values.len()].join(", ");
                if req.op == Operator::In {
                    sql.push_str(&format!(" AND {value} IN ({marks})"));
                } else {
                    sql.push_str(&format!(" AND NOT coalesce({value} IN ({marks}), 0)"));
                }
                args.push(path);
                args.extend(req.values.iter().cloned().map(SqlValue::Text));
            }
            Operator::GreaterThan | Operator::LessThan => {
                // Matches only label values that parse as int64 (label values carry no sign).
                let cmp = if req.op == Operator::GreaterThan { ">" } else { "<" };
                sql.push_str(&format!(
                    " AND coalesce((SELECT v != '' AND v NOT GLOB '*[^0-9]*' \
                       AND (length(v) < 19 OR (length(v) = 19 AND v <= '9223372036854775807')) \
                       AND CAST(v AS INTEGER) {cmp} ? FROM (SELECT {value} AS v)), 0)"
                ));
                let bound: i64 = req.values[0].parse().unwrap_or(0);
                args.extend([SqlValue::Integer(bound), path]);
            }
        }
    }
}

/// Appends the conditions of a field selector (name and namespace columns).
pub(super) fn push_field_selector(fields: &FieldSelector, sql: &mut String, args: &mut Vec<SqlValue>) {
    for req in &fields.requirements {
        let (column, op) = field_condition(req);
        sql.push_str(&format!(" AND {column} {op} ?"));
        args.push(SqlValue::Text(req.value.clone()));
    }
}
