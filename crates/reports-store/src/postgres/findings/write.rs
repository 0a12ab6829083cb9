//! Findings rows written by the report writes' own statements: each write statement gains a
//! CTE or two (see [`with_findings`]), so a report and its findings commit together, in one
//! round trip, with no statement restructured.
//!
//! The rows travel as parallel arrays ([`FindingArrays`]), one element per finding, with the
//! 1-based position of its report among the statement's writes; `unnest` turns them back into
//! rows and a join with the statement's own list of writes gives each its report key.

use tokio_postgres::types::ToSql;

use crate::findings::FindingRow;

/// How many array parameters [`FindingArrays::params`] binds.
pub(in crate::postgres) const ARRAYS: usize = 19;

/// The columns [`insert`] writes, after `cluster_id` and the report key.
const COLUMNS: &str = "ordinal, policy, rule, result, severity, category, source, scored, timestamp, message, \
    subject_api_version, subject_kind, subject_namespace, subject_name, subject_uid, properties, numbers, score";

/// The findings of the writes of one statement, as parallel arrays.
#[derive(Default)]
pub(in crate::postgres) struct FindingArrays<'a> {
    report: Vec<i64>,
    ordinal: Vec<i32>,
    texts: [Vec<&'a str>; 6],
    scored: Vec<bool>,
    timestamp: Vec<Option<i64>>,
    message: Vec<&'a str>,
    subject: [Vec<&'a str>; 5],
    properties: Vec<&'a str>,
    numbers: Vec<Option<&'a str>>,
    score: Vec<Option<f64>>,
}

impl<'a> FindingArrays<'a> {
    /// Adds the findings of the `report`-th write (from 1) of the statement.
    pub fn push(&mut self, report: usize, rows: &'a [FindingRow]) {
        for row in rows {
            self.report.push(report as i64);
            self.ordinal.push(row.ordinal);
            let texts = [&row.policy, &row.rule, &row.result, &row.severity, &row.category, &row.source];
            for (column, text) in self.texts.iter_mut().zip(texts) {
                column.push(text);
            }
            self.scored.push(row.scored);
            self.timestamp.push(row.timestamp);
            self.message.push(&row.message);
            for (column, text) in self.subject.iter_mut().zip(&row.subject) {
                column.push(text);
            }
            self.properties.push(&row.properties);
            self.numbers.push(row.numbers.as_deref());
            self.score.push(row.score);
        }
    }

    /// The arrays as statement parameters, in the order [`insert`] reads them.
    pub fn params(&self) -> [&(dyn ToSql + Sync); ARRAYS] {
        let [policy, rule, result, severity, category, source] = &self.texts;
        let [api_version, kind, namespace, name, uid] = &self.subject;
        [
            &self.report,
            &self.ordinal,
            policy,
            rule,
            result,
            severity,
            category,
            source,
            &self.scored,
            &self.timestamp,
            &self.message,
            api_version,
            kind,
            namespace,
            name,
            uid,
            &self.properties,
            &self.numbers,
            &self.score,
        ]
    }
}

/// A CTE inserting the findings bound from parameter `$first` on ([`FindingArrays::params`]).
/// `keys` is a FROM item aliased `k` with the statement's writes: `resource`, `namespace`,
/// `name` and their 1-based position `i`. With `replace`, a finding that exists is overwritten
/// (an update keeps the ordinals both versions have).
pub(in crate::postgres) fn insert(first: usize, keys: &str, replace: bool) -> String {
    let p = |n: usize| format!("${}", first + n);
    let text = |n: usize| format!("{}::text[]", p(n));
    let arrays = [
        format!("{}::int8[]", p(0)),
        format!("{}::int4[]", p(1)),
        text(2),
        text(3),
        text(4),
        text(5),
        text(6),
        text(7),
        format!("{}::bool[]", p(8)),
        format!("{}::int8[]", p(9)),
        text(10),
        text(11),
        text(12),
        text(13),
        text(14),
        text(15),
        text(16),
        text(17),
        format!("{}::float8[]", p(18)),
    ]
    .join(", ");
    let on_conflict = if replace {
        let set: Vec<String> = COLUMNS.split(", ").skip(1).map(|c| format!("{c} = excluded.{c}")).collect();
        format!(
            " ON CONFLICT (cluster_id, namespace, name, resource, ordinal) DO UPDATE SET {}",
            set.join(", ")
        )
    } else {
        String::new()
    };
    format!(
        "fi AS (
    INSERT INTO report_findings (cluster_id, resource, namespace, name, {COLUMNS})
    SELECT $1, k.resource, k.namespace, k.name, f.ordinal, f.policy, f.rule, f.result, f.severity, f.category,
           f.source, f.scored, f.ts, f.message, f.sav, f.sk, f.sns, f.sn, f.su, f.properties::jsonb,
           f.numbers::jsonb, f.score
    FROM unnest({arrays}) AS f(report, ordinal, policy, rule, result, severity, category, source, scored, ts,
                                message, sav, sk, sns, sn, su, properties, numbers, score)
    JOIN {keys} ON k.i = f.report{on_conflict})"
    )
}

/// The one-write FROM item for [`insert`] when the key is `$2` (resource), `$3` (namespace)
/// and `$4` (name).
pub(in crate::postgres) const ONE_KEY: &str =
    "(VALUES ($2::text, $3::text, $4::text, 1::int8)) AS k(resource, namespace, name, i)";

/// A statement with `ctes` added before its final `SELECT` (every write statement ends with
/// one on a line of its own).
pub(in crate::postgres) fn with_findings(sql: &str, ctes: &[String]) -> String {
    match sql.rfind("\nSELECT ") {
        Some(at) => format!("{},\n{}{}", &sql[..at], ctes.join(",\n"), &sql[at..]),
        // Not a write statement of ours: left as it is, and a test checks they all match.
        None => sql.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctes_go_before_the_final_select() {
        let sql = "WITH c AS (SELECT 1)\nSELECT c.rv FROM c";
        assert_eq!(
            with_findings(sql, &["x AS (SELECT 2)".into()]),
            "WITH c AS (SELECT 1),\nx AS (SELECT 2)\nSELECT c.rv FROM c"
        );
        let statement = insert(12, "t AS k", true);
        assert!(statement.contains("$30::float8[]") && !statement.contains("$31"), "{statement}");
        assert!(statement.contains("DO UPDATE SET policy = excluded.policy"));
        assert_eq!(FindingArrays::default().params().len(), ARRAYS);
    }
}
