//! Findings written by the report writes' own statements: each write statement gains a CTE or
//! two (see [`with_findings`]), so a report and its findings commit together, in one round
//! trip, with no statement restructured.
//!
//! A report's findings are one row of `report_finding_sets`, a column per field, each an array
//! with an element per finding. The statement's writes travel as parallel parameter arrays
//! ([`FindingArrays`]), one element per report with findings: its 1-based position among the
//! statement's writes, its largest score, and, per field, the text of the whole array in
//! PostgreSQL's array syntax, which the statement casts to the column's array type. So a batch
//! of reports with different numbers of findings is one statement without aggregating rows in
//! SQL, and the database parses each array once.

use std::fmt::Write as _;

use tokio_postgres::types::ToSql;

use crate::findings::FindingRow;

/// How many array parameters [`FindingArrays::params`] binds.
pub(in crate::postgres) const ARRAYS: usize = 19;

/// The array columns, one element per finding, in the order [`FindingArrays::params`] binds
/// them (after the report's position and largest score), with each one's SQL array type.
pub(in crate::postgres) const COLUMNS: [(&str, &str); 17] = [
    ("policy", "text[]"),
    ("rule", "text[]"),
    ("result", "text[]"),
    ("severity", "text[]"),
    ("category", "text[]"),
    ("source", "text[]"),
    ("scored", "bool[]"),
    ("timestamp", "int8[]"),
    ("message", "text[]"),
    ("subject_api_version", "text[]"),
    ("subject_kind", "text[]"),
    ("subject_namespace", "text[]"),
    ("subject_name", "text[]"),
    ("subject_uid", "text[]"),
    ("properties", "text[]"),
    ("numbers", "jsonb[]"),
    ("score", "float8[]"),
];

/// A report's findings as the values of its `report_finding_sets` row: its largest score and,
/// per column, the array literal. Built by the writing request's own task, so the combining
/// task, which every create of the store waits behind, only gathers them.
#[derive(Debug, Clone, Default)]
pub(in crate::postgres) struct SetRow {
    count: usize,
    max_score: Option<f64>,
    /// One literal per column of [`COLUMNS`] (none when the report has no findings).
    columns: Vec<String>,
}

/// The findings of the writes of one statement: per report with findings, its position, its
/// largest score and its arrays as literals.
#[derive(Default)]
pub(in crate::postgres) struct FindingArrays<'a> {
    report: Vec<i64>,
    max_score: Vec<Option<f64>>,
    columns: [Vec<&'a str>; 17],
}

/// Appends `text` to an array literal as a quoted element: quotes and backslashes escaped, the runs
/// between them copied whole (a create quotes some 20 KB of findings text).
fn push_quoted(literal: &mut String, text: &str) {
    literal.push('"');
    let mut rest = text;
    while let Some(at) = rest.find(['"', '\\']) {
        literal.push_str(&rest[..at]);
        literal.push('\\');
        literal.push_str(&rest[at..=at]);
        rest = &rest[at + 1..];
    }
    literal.push_str(rest);
    literal.push('"');
}

/// An array literal of `rows`, one element per row as `element` writes it.
fn literal(rows: &[FindingRow], mut element: impl FnMut(&mut String, &FindingRow)) -> String {
    let mut literal = String::with_capacity(2 + rows.len() * 8);
    literal.push('{');
    for (i, row) in rows.iter().enumerate() {
        if i > 0 {
            literal.push(',');
        }
        element(&mut literal, row);
    }
    literal.push('}');
    literal
}

/// A nullable number element: its decimal text, or NULL.
fn push_number(literal: &mut String, number: Option<impl std::fmt::Display>) {
    match number {
        Some(n) => {
            let _ = write!(literal, "{n}");
        }
        None => literal.push_str("NULL"),
    }
}

impl SetRow {
    /// The row of a report with `rows` as its findings (none: the report gets no row).
    pub fn new(rows: &[FindingRow]) -> Self {
        if rows.is_empty() {
            return Self::default();
        }
        let text = |get: fn(&FindingRow) -> &str| literal(rows, |out, row| push_quoted(out, get(row)));
        let subject = |i: usize| literal(rows, |out, row| push_quoted(out, &row.subject[i]));
        let columns = [
            text(|r| &r.policy),
            text(|r| &r.rule),
            text(|r| &r.result),
            text(|r| &r.severity),
            text(|r| &r.category),
            text(|r| &r.source),
            literal(rows, |out, row| out.push(if row.scored { 't' } else { 'f' })),
            literal(rows, |out, row| push_number(out, row.timestamp)),
            text(|r| &r.message),
            subject(0),
            subject(1),
            subject(2),
            subject(3),
            subject(4),
            text(|r| &r.properties),
            literal(rows, |out, row| match &row.numbers {
                Some(numbers) => push_quoted(out, numbers),
                None => out.push_str("NULL"),
            }),
            literal(rows, |out, row| push_number(out, row.score)),
        ];
        Self {
            count: rows.len(),
            max_score: rows.iter().filter_map(|r| r.score).reduce(f64::max),
            columns: columns.into(),
        }
    }

    /// How many findings the report has.
    pub fn count(&self) -> usize {
        self.count
    }
}

impl<'a> FindingArrays<'a> {
    /// Adds the findings of the `report`-th write (from 1) of the statement. A report without
    /// findings gets no row.
    pub fn push(&mut self, report: usize, set: &'a SetRow) {
        if set.count == 0 {
            return;
        }
        self.report.push(report as i64);
        self.max_score.push(set.max_score);
        for (column, literal) in self.columns.iter_mut().zip(&set.columns) {
            column.push(literal);
        }
    }

    /// The arrays as statement parameters, in the order [`insert`] reads them.
    pub fn params(&self) -> [&(dyn ToSql + Sync); ARRAYS] {
        let mut params: [&(dyn ToSql + Sync); ARRAYS] = [&self.report; ARRAYS];
        params[1] = &self.max_score;
        for (param, column) in params[2..].iter_mut().zip(&self.columns) {
            *param = column;
        }
        params
    }
}

/// A CTE inserting the finding sets bound from parameter `$first` on
/// ([`FindingArrays::params`]). `keys` is a FROM item aliased `k` with the statement's writes:
/// `resource`, `namespace`, `name` and their 1-based position `i`. With `replace`, a report's
/// existing set is overwritten (an update).
pub(in crate::postgres) fn insert(first: usize, keys: &str, replace: bool) -> String {
    let p = |n: usize| format!("${}", first + n);
    let mut arrays = vec![format!("{}::int8[]", p(0)), format!("{}::float8[]", p(1))];
    arrays.extend((0..COLUMNS.len()).map(|n| format!("{}::text[]", p(n + 2))));
    let names: Vec<&str> = COLUMNS.iter().map(|(name, _)| *name).collect();
    let casts: Vec<String> = COLUMNS.iter().map(|(name, ty)| format!("f.{name}::{ty}")).collect();
    let on_conflict = if replace {
        let set: Vec<String> =
            ["max_score"].iter().chain(&names).map(|c| format!("{c} = excluded.{c}")).collect();
        format!(" ON CONFLICT (cluster_id, namespace, name, resource) DO UPDATE SET {}", set.join(", "))
    } else {
        String::new()
    };
    format!(
        "fi AS (
    INSERT INTO report_finding_sets (cluster_id, resource, namespace, name, max_score, {names})
    SELECT $1, k.resource, k.namespace, k.name, f.max_score, {casts}
    FROM unnest({arrays}) AS f(report, max_score, {names})
    JOIN {keys} ON k.i = f.report{on_conflict})",
        names = names.join(", "),
        casts = casts.join(", "),
        arrays = arrays.join(", "),
    )
}

/// A statement of its own writing the finding sets of several reports: `$1` cluster, `$2..$4`
/// the reports' resources, namespaces and names, then [`FindingArrays::params`] from `$5`, the
/// `report` positions counting from 1 in those arrays. With `replace`, existing sets are
/// overwritten (the backfill).
pub(in crate::postgres) fn sets_statement(replace: bool) -> String {
    format!(
        "WITH k AS (SELECT * FROM unnest($2::text[], $3::text[], $4::text[]) WITH ORDINALITY AS k(resource, namespace, name, i)),
{}
SELECT 1",
        insert(5, "k", replace)
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
        assert!(statement.contains("$30::text[]") && !statement.contains("$31"), "{statement}");
        assert!(statement.contains("DO UPDATE SET max_score = excluded.max_score, policy = excluded.policy"));
        assert_eq!(FindingArrays::default().params().len(), ARRAYS);
    }

    #[test]
    fn literals_quote_every_text_and_spell_nulls() {
        let row = FindingRow {
            ordinal: 0,
            policy: r#"a "quoted" \ policy"#.into(),
            rule: "{,}".into(),
            result: "fail".into(),
            severity: String::new(),
            category: "NULL".into(),
            source: "s".into(),
            scored: true,
            timestamp: None,
            message: "m".into(),
            subject: Default::default(),
            properties: r#"{"score":"9.8"}"#.into(),
            numbers: None,
            score: Some(9.8),
        };
        let second = FindingRow { scored: false, timestamp: Some(-5), score: None, ..row.clone() };
        let (none, set) = (SetRow::new(&[]), SetRow::new(&[row, second]));
        let mut arrays = FindingArrays::default();
        arrays.push(1, &none);
        arrays.push(2, &set);
        assert_eq!(arrays.report, [2], "a report without findings has no row");
        assert_eq!(arrays.max_score, [Some(9.8)]);
        assert_eq!(set.count(), 2);
        let [policy, rule, _, severity, category, ..] = &arrays.columns;
        assert_eq!(policy[0], r#"{"a \"quoted\" \\ policy","a \"quoted\" \\ policy"}"#);
        assert_eq!(rule[0], r#"{"{,}","{,}"}"#);
        assert_eq!(severity[0], r#"{"",""}"#);
        assert_eq!(category[0], r#"{"NULL","NULL"}"#, "the text NULL is quoted, so not a null");
        assert_eq!(arrays.columns[6][0], "{t,f}");
        assert_eq!(arrays.columns[7][0], "{NULL,-5}");
        assert_eq!(arrays.columns[14][0], r#"{"{\"score\":\"9.8\"}","{\"score\":\"9.8\"}"}"#);
        assert_eq!(arrays.columns[15][0], "{NULL,NULL}");
        assert_eq!(arrays.columns[16][0], "{9.8,NULL}");
    }
}
