//! The findings query language as SQL, for both stores.
//!
//! Every condition becomes a boolean expression over the findings table (aliased `f`) that is
//! never NULL, so `AND`-ing them is exactly "all hold": a comparison is wrapped in `IS TRUE`, and
//! `!=`/`notin` are `IS NOT TRUE` of the equality, which is how a missing property (NULL) comes
//! to match them, as [`Condition::matches`] has it. Every value, property keys included, is a bind
//! parameter; the text only ever contains column names, operators and placeholders.
//!
//! The dialects differ at three seams: placeholders (`$n::type` on PostgreSQL, `?n` on SQLite),
//! reading a property (`properties->>$n` on `jsonb`; on SQLite a lookup in `json_each`, which
//! takes any key as it is, where a JSON path would read dots and quotes in keys as syntax), and
//! sets (`= ANY($n::text[])`; on SQLite `IN (SELECT value FROM json_each(?n))` over a JSON array).

use reports_core::findings::{
    filter::{Condition, FilterOp, FindingField},
    query::Visibility,
    SCORE_PROPERTY,
};

/// Which database the SQL is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// PostgreSQL: `$n` placeholders with casts, `jsonb`.
    Postgres,
    /// SQLite: `?n` placeholders, JSON text.
    Sqlite,
}

/// A value bound to a placeholder.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Arg {
    /// Text.
    Text(String),
    /// A set of texts (a `text[]` on PostgreSQL, a JSON array text on SQLite).
    Texts(Vec<String>),
    /// A double.
    Float(f64),
    /// An integer.
    Int(i64),
}

/// A statement being built: its text and the values of its placeholders, in order.
pub(crate) struct Sql {
    dialect: Dialect,
    /// Placeholders the caller binds itself, before these (`$1..$reserved`).
    reserved: usize,
    /// The statement text so far.
    pub text: String,
    /// The bound values; placeholder `reserved + n` is `args[n - 1]`.
    pub args: Vec<Arg>,
}

impl Sql {
    /// An empty statement whose first `reserved` placeholders the caller binds (the cluster id,
    /// the key to resume after, the row limit).
    pub fn new(dialect: Dialect, reserved: usize) -> Self {
        Self { dialect, reserved, text: String::new(), args: Vec::new() }
    }

    /// Binds `arg` and returns its placeholder (typed on PostgreSQL, where a bare parameter can
    /// leave an operator ambiguous).
    pub fn bind(&mut self, arg: Arg) -> String {
        let cast = match &arg {
            Arg::Text(_) => "text",
            Arg::Texts(_) => "text[]",
            Arg::Float(_) => "float8",
            Arg::Int(_) => "int8",
        };
        let arg = match (self.dialect, arg) {
            (Dialect::Sqlite, Arg::Texts(values)) => Arg::Text(serde_json::Value::from(values).to_string()),
            (_, arg) => arg,
        };
        self.args.push(arg);
        let n = self.reserved + self.args.len();
        match self.dialect {
            Dialect::Postgres => format!("${n}::{cast}"),
            Dialect::Sqlite => format!("?{n}"),
        }
    }

    /// `expr` is one of `values`.
    fn one_of(&mut self, expr: &str, values: &[String]) -> String {
        let set = self.bind(Arg::Texts(values.to_vec()));
        match self.dialect {
            Dialect::Postgres => format!("{expr} = ANY({set})"),
            Dialect::Sqlite => format!("{expr} IN (SELECT value FROM json_each({set}))"),
        }
    }

    /// The text of property `key` (NULL when the finding lacks it).
    pub fn property_text(&mut self, key: &str) -> String {
        let key = self.bind(Arg::Text(key.to_string()));
        match self.dialect {
            Dialect::Postgres => format!("(f.properties->>{key})"),
            Dialect::Sqlite => format!("(SELECT value FROM json_each(f.properties) WHERE key = {key})"),
        }
    }

    /// The number of property `key` (NULL when missing or not a number): the score column for
    /// the score, so its index serves.
    fn property_number(&mut self, key: &str) -> String {
        if key == SCORE_PROPERTY {
            return "f.score".into();
        }
        let key = self.bind(Arg::Text(key.to_string()));
        match self.dialect {
            Dialect::Postgres => format!("((f.numbers->>{key})::float8)"),
            Dialect::Sqlite => format!("(SELECT value FROM json_each(f.numbers) WHERE key = {key})"),
        }
    }

    /// A double from an integer column, for order comparisons as `f64` makes them.
    fn as_double(&self, column: &str) -> String {
        match self.dialect {
            Dialect::Postgres => format!("{column}::float8"),
            Dialect::Sqlite => format!("CAST({column} AS REAL)"),
        }
    }

    /// Appends ` AND <condition>` for every condition.
    pub fn push_conditions(&mut self, conditions: &[Condition]) {
        for condition in conditions {
            let expr = self.condition(condition);
            self.text.push_str(" AND ");
            self.text.push_str(&expr);
        }
    }

    /// Appends the caller's visibility and the request's namespace.
    pub fn push_scope(&mut self, namespace: Option<&str>, visibility: &Visibility) {
        if let Some(namespace) = namespace {
            let ns = self.bind(Arg::Text(namespace.to_string()));
            self.text.push_str(&format!(" AND f.namespace = {ns}"));
        }
        let Visibility::Only(visible) = visibility else { return };
        let mut any = Vec::with_capacity(visible.len());
        for kind in visible {
            let resource = self.bind(Arg::Text(kind.resource.clone()));
            any.push(match &kind.namespaces {
                None => format!("f.resource = {resource}"),
                Some(namespaces) => {
                    let within = self.one_of("f.namespace", namespaces);
                    format!("(f.resource = {resource} AND {within})")
                }
            });
        }
        if any.is_empty() {
            self.text.push_str(" AND FALSE");
        } else {
            self.text.push_str(&format!(" AND ({})", any.join(" OR ")));
        }
    }

    /// The SQL value a grouping reads ("" when a property is missing).
    pub fn group_expr(&mut self, field: &FindingField) -> String {
        match field {
            FindingField::Property(key) => format!("COALESCE({}, '')", self.property_text(key)),
            FindingField::Scored => "CASE WHEN f.scored THEN 'true' ELSE 'false' END".into(),
            FindingField::Timestamp => "COALESCE(CAST(f.timestamp AS TEXT), '')".into(),
            FindingField::Search => "''".into(),
            other => text_column(other).unwrap_or("''").into(),
        }
    }

    /// One condition as a boolean expression that is never NULL.
    fn condition(&mut self, c: &Condition) -> String {
        let number = |i: usize| c.numbers.get(i).copied().flatten();
        if c.field == FindingField::Search {
            return self.search(c.values.first().map(String::as_str).unwrap_or_default());
        }
        if c.op.is_order() {
            let Some(bound) = number(0) else { return "FALSE".into() };
            let subject = match &c.field {
                FindingField::Property(key) => self.property_number(key),
                FindingField::Timestamp => self.as_double("f.timestamp"),
                // Text fields have no order (the parser refuses them; a hand-made one is false).
                _ => return "FALSE".into(),
            };
            let bound = self.bind(Arg::Float(bound));
            return format!("(({subject} {} {bound}) IS TRUE)", c.op.sql());
        }
        let mut equal = Vec::with_capacity(c.values.len());
        for (i, value) in c.values.iter().enumerate() {
            equal.push(match &c.field {
                FindingField::Property(key) => {
                    let text = self.property_text(key);
                    let value = self.bind(Arg::Text(value.clone()));
                    match number(i) {
                        Some(n) => {
                            let number = self.property_number(key);
                            let n = self.bind(Arg::Float(n));
                            format!("({text} = {value} OR {number} = {n})")
                        }
                        None => format!("{text} = {value}"),
                    }
                }
                // The finding's text is its seconds in decimal: only that exact text is equal.
                FindingField::Timestamp => match value.parse::<i64>() {
                    Ok(seconds) if seconds.to_string() == *value => {
                        format!("f.timestamp = {}", self.bind(Arg::Int(seconds)))
                    }
                    _ => "FALSE".into(),
                },
                FindingField::Scored => match value.as_str() {
                    "true" => "f.scored".into(),
                    "false" => "NOT f.scored".into(),
                    _ => "FALSE".into(),
                },
                other => {
                    let column = text_column(other).unwrap_or("''");
                    format!("{column} = {}", self.bind(Arg::Text(value.clone())))
                }
            });
        }
        let any = if equal.is_empty() { "FALSE".to_string() } else { equal.join(" OR ") };
        match c.op {
            FilterOp::NotEquals | FilterOp::NotIn => format!("(({any}) IS NOT TRUE)"),
            _ => format!("(({any}) IS TRUE)"),
        }
    }

    /// ASCII-case-insensitive substring search over policy, rule, message and subject name.
    fn search(&mut self, needle: &str) -> String {
        let mut pattern = String::with_capacity(needle.len() + 2);
        pattern.push('%');
        for c in needle.to_ascii_lowercase().chars() {
            if matches!(c, '%' | '_' | '\\') {
                pattern.push('\\');
            }
            pattern.push(c);
        }
        pattern.push('%');
        let p = self.bind(Arg::Text(pattern));
        let like = |column: &str| format!("lower({column}) LIKE {p} ESCAPE '\\'");
        format!(
            "(({} OR {} OR {} OR {}) IS TRUE)",
            like("f.policy"),
            like("f.rule"),
            like("f.message"),
            like("f.subject_name")
        )
    }
}

/// The column of a text field.
fn text_column(field: &FindingField) -> Option<&'static str> {
    Some(match field {
        FindingField::Namespace => "f.namespace",
        FindingField::ReportName => "f.name",
        FindingField::ReportResource => "f.resource",
        FindingField::Policy => "f.policy",
        FindingField::Rule => "f.rule",
        FindingField::Result => "f.result",
        FindingField::Severity => "f.severity",
        FindingField::Category => "f.category",
        FindingField::Source => "f.source",
        FindingField::ResourceApiVersion => "f.subject_api_version",
        FindingField::ResourceKind => "f.subject_kind",
        FindingField::ResourceNamespace => "f.subject_namespace",
        FindingField::ResourceName => "f.subject_name",
        FindingField::ResourceUid => "f.subject_uid",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn condition(field: FindingField, op: FilterOp, values: &[&str]) -> Condition {
        Condition {
            field,
            op,
            values: values.iter().map(|v| v.to_string()).collect(),
            numbers: values.iter().map(|v| reports_core::findings::numeric(v)).collect(),
        }
    }

    #[test]
    fn values_and_keys_are_bound_never_written_into_the_text() {
        let mut sql = Sql::new(Dialect::Postgres, 0);
        sql.push_conditions(&[
            condition(FindingField::Property("x' OR 1=1 --".into()), FilterOp::Equals, &["8"]),
            condition(FindingField::Policy, FilterOp::NotIn, &["a'b", "c"]),
            condition(FindingField::Search, FilterOp::Equals, &["50%_\\"]),
        ]);
        assert!(
            !sql.text.contains("1=1") && !sql.text.contains("a'b") && !sql.text.contains("50"),
            "{}",
            sql.text
        );
        assert!(sql.args.contains(&Arg::Text("%50\\%\\_\\\\%".into())), "{:?}", sql.args);
    }

    #[test]
    fn the_score_reads_its_column() {
        let mut sql = Sql::new(Dialect::Sqlite, 0);
        sql.push_conditions(&[condition(
            FindingField::Property("score".into()),
            FilterOp::GreaterOrEqual,
            &["8"],
        )]);
        assert_eq!(sql.text, " AND ((f.score >= ?1) IS TRUE)");
    }
}
