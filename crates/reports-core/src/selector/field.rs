//! Field selectors: `metadata.name` and, for namespaced kinds, `metadata.namespace`.

use std::fmt;

use super::SelectorError;

/// A field a custom resource can be selected by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// `metadata.name`.
    Name,
    /// `metadata.namespace` (namespaced kinds only).
    Namespace,
}

/// The comparison of a field requirement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldOp {
    /// `=` or `==`.
    Equals,
    /// `!=`.
    NotEquals,
}

/// One term of a field selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldRequirement {
    /// Which field.
    pub field: Field,
    /// How it is compared.
    pub op: FieldOp,
    /// The value, unescaped.
    pub value: String,
}

/// A parsed field selector; empty selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    /// The terms, all of which must hold.
    pub requirements: Vec<FieldRequirement>,
}

/// Splits on commas not preceded by a backslash escape.
fn split_terms(text: &str) -> Vec<String> {
    let mut terms = Vec::new();
    let mut current = String::new();
    let mut escaped = false;
    for c in text.chars() {
        if escaped {
            current.push(c);
            escaped = false;
        } else if c == '\\' {
            current.push(c);
            escaped = true;
        } else if c == ',' {
            terms.push(std::mem::take(&mut current));
        } else {
            current.push(c);
        }
    }
    terms.push(current);
    terms
}

/// Finds the first operator of a term, scanning left to right and preferring `!=`, then `==`,
/// then `=` at each position (the order apimachinery uses).
fn split_term(term: &str) -> Option<(&str, FieldOp, &str)> {
    split_at_operator(term, &[("!=", FieldOp::NotEquals), ("==", FieldOp::Equals), ("=", FieldOp::Equals)])
}

/// Splits a term at its first unescaped operator: at each position left to right, the first of
/// `ops` that starts there wins (so longer operators go before their prefixes). Returns the text
/// before, the operator's value and the text after.
pub(crate) fn split_at_operator<'t, T: Copy>(
    term: &'t str,
    ops: &[(&str, T)],
) -> Option<(&'t str, T, &'t str)> {
    let mut escaped = false;
    for (i, c) in term.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        if c == '\\' {
            escaped = true;
            continue;
        }
        let rest = &term[i..];
        if let Some((text, op)) = ops.iter().find(|(text, _)| rest.starts_with(text)) {
            return Some((&term[..i], *op, &term[i + text.len()..]));
        }
    }
    None
}

/// Undoes the `\,`, `\=`, `\!` and `\\` escapes of a field selector value.
fn unescape_value(value: &str) -> Result<String, SelectorError> {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some(e @ ('\\' | ',' | '=' | '!')) => out.push(e),
            Some(e) => return Err(SelectorError(format!("invalid escape sequence: \\{e}"))),
            None => return Err(SelectorError("invalid escape sequence: trailing backslash".into())),
        }
    }
    Ok(out)
}

impl FieldSelector {
    /// Parses the `fieldSelector` parameter for a kind of the given scope.
    pub fn parse(text: &str, namespaced: bool) -> Result<Self, SelectorError> {
        let mut requirements = Vec::new();
        for term in split_terms(text) {
            if term.is_empty() {
                continue;
            }
            let Some((lhs, op, rhs)) = split_term(&term) else {
                return Err(SelectorError(format!("invalid selector: '{text}'; can't understand '{term}'")));
            };
            let field = match lhs {
                "metadata.name" => Field::Name,
                "metadata.namespace" if namespaced => Field::Namespace,
                other => return Err(SelectorError(format!("field label not supported: {other}"))),
            };
            requirements.push(FieldRequirement { field, op, value: unescape_value(rhs)? });
        }
        Ok(Self { requirements })
    }

    /// Whether the selector has no terms.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether an object with this namespace (empty for cluster-scoped) and name satisfies it.
    pub fn matches(&self, namespace: &str, name: &str) -> bool {
        self.requirements.iter().all(|r| {
            let actual = match r.field {
                Field::Name => name,
                Field::Namespace => namespace,
            };
            (actual == r.value) == (r.op == FieldOp::Equals)
        })
    }

    /// The single name this selector pins down (`metadata.name=x`), if any: kubectl and
    /// informers watching one object use it, and the store can answer it with a key lookup.
    pub fn exact_name(&self) -> Option<&str> {
        self.requirements
            .iter()
            .find(|r| r.field == Field::Name && r.op == FieldOp::Equals)
            .map(|r| r.value.as_str())
    }
}

impl fmt::Display for FieldSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            let field = match r.field {
                Field::Name => "metadata.name",
                Field::Namespace => "metadata.namespace",
            };
            let op = if r.op == FieldOp::Equals { "=" } else { "!=" };
            let value =
                r.value.replace('\\', "\\\\").replace(',', "\\,").replace('=', "\\=").replace('!', "\\!");
            write!(f, "{field}{op}{value}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_selectors_know_name_and_namespace() {
        let s = FieldSelector::parse("metadata.name=a,metadata.namespace!=kube-system", true).unwrap();
        assert!(s.matches("default", "a"));
        assert!(!s.matches("kube-system", "a"));
        assert!(!s.matches("default", "b"));
        assert_eq!(s.exact_name(), Some("a"));
        assert!(FieldSelector::parse("metadata.name==a", true).unwrap().matches("", "a"));
        assert!(FieldSelector::parse("", true).unwrap().is_empty());
        assert!(FieldSelector::parse("metadata.name=a,,", true).is_ok());
    }

    #[test]
    fn field_selector_errors_match_kube() {
        let e = FieldSelector::parse("spec.x=1", true).unwrap_err();
        assert_eq!(e.0, "field label not supported: spec.x");
        let e = FieldSelector::parse("metadata.namespace=a", false).unwrap_err();
        assert_eq!(e.0, "field label not supported: metadata.namespace");
        let e = FieldSelector::parse("metadata.name", true).unwrap_err();
        assert!(e.0.contains("can't understand"), "{e}");
        assert!(FieldSelector::parse("metadata.name=a\\q", true).is_err());
    }

    #[test]
    fn field_selector_values_unescape() {
        let s = FieldSelector::parse(r"metadata.name=a\,b\=c", true).unwrap();
        assert_eq!(s.requirements[0].value, "a,b=c");
        assert_eq!(FieldSelector::parse(&s.to_string(), true).unwrap(), s);
    }
}
