//! Label selectors: the grammar of apimachinery's `labels.Parse` and its matching rules.

use std::fmt;

use super::SelectorError;
use crate::object::{label_key_error, label_value_error};

/// The operator of one label requirement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    /// `key`: the label is present.
    Exists,
    /// `!key`: the label is absent.
    DoesNotExist,
    /// `key=v` or `key==v`.
    Equals,
    /// `key!=v`; also true when the label is absent.
    NotEquals,
    /// `key in (a,b)`.
    In,
    /// `key notin (a,b)`; also true when the label is absent.
    NotIn,
    /// `key>n`: the value is an integer greater than `n`.
    GreaterThan,
    /// `key<n`: the value is an integer less than `n`.
    LessThan,
}

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// The label key, validated.
    pub key: String,
    /// How the value is compared.
    pub op: Operator,
    /// The values: one for `=`, `!=`, `>`, `<`; at least one for `in`/`notin`; none for
    /// (non-)existence. For `>`/`<` the value is known to parse as `i64`.
    pub values: Vec<String>,
}

impl Requirement {
    /// Whether a label set (given as a lookup function) satisfies this requirement.
    pub fn matches<'a>(&self, label: &impl Fn(&str) -> Option<&'a str>) -> bool {
        let value = label(&self.key);
        match self.op {
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
            Operator::Equals | Operator::In => value.is_some_and(|v| self.values.iter().any(|x| x == v)),
            Operator::NotEquals | Operator::NotIn => {
                !value.is_some_and(|v| self.values.iter().any(|x| x == v))
            }
            Operator::GreaterThan | Operator::LessThan => {
                let (Some(actual), Ok(bound)) =
                    (value.and_then(|v| v.parse::<i64>().ok()), self.values[0].parse::<i64>())
                else {
                    return false;
                };
                if self.op == Operator::GreaterThan {
                    actual > bound
                } else {
                    actual < bound
                }
            }
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.op {
            Operator::Exists => write!(f, "{}", self.key),
            Operator::DoesNotExist => write!(f, "!{}", self.key),
            Operator::Equals => write!(f, "{}={}", self.key, self.values[0]),
            Operator::NotEquals => write!(f, "{}!={}", self.key, self.values[0]),
            Operator::GreaterThan => write!(f, "{}>{}", self.key, self.values[0]),
            Operator::LessThan => write!(f, "{}<{}", self.key, self.values[0]),
            Operator::In | Operator::NotIn => {
                let word = if self.op == Operator::In { "in" } else { "notin" };
                write!(f, "{} {word} ({})", self.key, self.values.join(","))
            }
        }
    }
}

/// A parsed label selector; empty selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    /// The requirements, all of which must hold, sorted by key as apimachinery sorts them.
    pub requirements: Vec<Requirement>,
}

/// A lexical token of the label selector grammar.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Identifier(String),
    Bang,
    NotEquals,
    Equals,
    DoubleEquals,
    Greater,
    Less,
    In,
    NotIn,
    Open,
    Close,
    Comma,
    End,
}

impl Token {
    fn describe(&self) -> String {
        match self {
            Token::Identifier(s) => s.clone(),
            Token::Bang => "!".into(),
            Token::NotEquals => "!=".into(),
            Token::Equals => "=".into(),
            Token::DoubleEquals => "==".into(),
            Token::Greater => ">".into(),
            Token::Less => "<".into(),
            Token::In => "in".into(),
            Token::NotIn => "notin".into(),
            Token::Open => "(".into(),
            Token::Close => ")".into(),
            Token::Comma => ",".into(),
            Token::End => "end of string".into(),
        }
    }
}

fn is_special(c: char) -> bool {
    matches!(c, '=' | '!' | '(' | ')' | ',' | '>' | '<')
}

/// Splits a selector into tokens; keywords stay keywords here and the parser decides whether
/// they are values.
fn tokenize(text: &str) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        if is_special(c) {
            chars.next();
            let next_is_eq = chars.peek() == Some(&'=');
            let token = match c {
                '!' if next_is_eq => Token::NotEquals,
                '=' if next_is_eq => Token::DoubleEquals,
                '!' => Token::Bang,
                '=' => Token::Equals,
                '>' => Token::Greater,
                '<' => Token::Less,
                '(' => Token::Open,
                ')' => Token::Close,
                _ => Token::Comma,
            };
            if matches!(token, Token::NotEquals | Token::DoubleEquals) {
                chars.next();
            }
            tokens.push(token);
            continue;
        }
        let mut word = String::new();
        while let Some(&c) = chars.peek() {
            if c.is_whitespace() || is_special(c) {
                break;
            }
            word.push(c);
            chars.next();
        }
        tokens.push(match word.as_str() {
            "in" => Token::In,
            "notin" => Token::NotIn,
            _ => Token::Identifier(word),
        });
    }
    tokens.push(Token::End);
    tokens
}

/// A cursor over the tokens of one selector.
struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> &Token {
        &self.tokens[self.at.min(self.tokens.len() - 1)]
    }

    fn next(&mut self) -> Token {
        let token = self.peek().clone();
        self.at += 1;
        token
    }

    /// The next token read as a value: keywords are plain words there.
    fn next_value(&mut self) -> Token {
        match self.next() {
            Token::In => Token::Identifier("in".into()),
            Token::NotIn => Token::Identifier("notin".into()),
            other => other,
        }
    }

    fn requirement(&mut self) -> Result<Requirement, String> {
        let negated = *self.peek() == Token::Bang;
        if negated {
            self.next();
        }
        let key = match self.next() {
            Token::Identifier(key) => key,
            other => return Err(format!("found '{}', expected: identifier", other.describe())),
        };
        if let Some(why) = label_key_error(&key) {
            return Err(format!("invalid label key \"{key}\": {why}"));
        }
        if negated {
            return match self.peek() {
                Token::Comma | Token::End => {
                    Ok(Requirement { key, op: Operator::DoesNotExist, values: vec![] })
                }
                other => Err(format!("found '{}', expected: ',' or 'end of string'", other.describe())),
            };
        }
        let op = match self.peek() {
            Token::Comma | Token::End => {
                return Ok(Requirement { key, op: Operator::Exists, values: vec![] })
            }
            Token::Equals | Token::DoubleEquals => Operator::Equals,
            Token::NotEquals => Operator::NotEquals,
            Token::Greater => Operator::GreaterThan,
            Token::Less => Operator::LessThan,
            Token::In => Operator::In,
            Token::NotIn => Operator::NotIn,
            other => {
                return Err(format!(
                    "found '{}', expected: '=', '!=', '==', 'in', 'notin', '>' or '<'",
                    other.describe()
                ))
            }
        };
        self.next();
        let values = match op {
            Operator::In | Operator::NotIn => self.value_set()?,
            _ => vec![self.exact_value()?],
        };
        match op {
            Operator::GreaterThan | Operator::LessThan => {
                if values[0].parse::<i64>().is_err() {
                    return Err(format!(
                        "values[0]: Invalid value: \"{}\": for 'Gt', 'Lt' operators, the value must be an integer",
                        values[0]
                    ));
                }
            }
            _ => {
                for (i, value) in values.iter().enumerate() {
                    if let Some(why) = label_value_error(value) {
                        return Err(format!("values[{i}][{key}]: Invalid value: \"{value}\": {why}"));
                    }
                }
            }
        }
        Ok(Requirement { key, op, values })
    }

    /// The single value after `=`, `==`, `!=`, `>` or `<`; absent means empty.
    fn exact_value(&mut self) -> Result<String, String> {
        match self.peek() {
            Token::Comma | Token::End => return Ok(String::new()),
            _ => {}
        }
        match self.next_value() {
            Token::Identifier(value) => Ok(value),
            other => Err(format!("found '{}', expected: identifier", other.describe())),
        }
    }

    /// The parenthesised values of `in`/`notin`; empty entries are empty strings, `()` is `{""}`.
    fn value_set(&mut self) -> Result<Vec<String>, String> {
        match self.next() {
            Token::Open => {}
            other => return Err(format!("found '{}', expected: '('", other.describe())),
        }
        let mut values: Vec<String> = Vec::new();
        let mut expect_value = true;
        loop {
            match self.next_value() {
                Token::Identifier(value) if expect_value => {
                    values.push(value);
                    expect_value = false;
                }
                Token::Comma => {
                    if expect_value {
                        values.push(String::new());
                    }
                    expect_value = true;
                }
                Token::Close => {
                    if expect_value {
                        values.push(String::new());
                    }
                    break;
                }
                other => {
                    return Err(format!("found '{}', expected: ',', ')' or identifier", other.describe()))
                }
            }
        }
        values.sort();
        values.dedup();
        Ok(values)
    }
}

impl LabelSelector {
    /// Parses the `labelSelector` parameter; the empty string selects everything.
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        let mut parser = Parser { tokens: tokenize(text), at: 0 };
        let mut requirements = Vec::new();
        let fail = |why: String| SelectorError(format!("unable to parse requirement: {why}"));
        loop {
            match parser.peek() {
                Token::End => break,
                Token::Identifier(_) | Token::Bang => {}
                other => {
                    return Err(SelectorError(format!(
                        "found '{}', expected: !, identifier, or 'end of string'",
                        other.describe()
                    )))
                }
            }
            requirements.push(parser.requirement().map_err(fail)?);
            match parser.next() {
                Token::End => break,
                Token::Comma => match parser.peek() {
                    Token::Identifier(_) | Token::Bang => {}
                    other => {
                        return Err(SelectorError(format!(
                            "found '{}', expected: identifier after ','",
                            other.describe()
                        )))
                    }
                },
                other => {
                    return Err(SelectorError(format!(
                        "found '{}', expected: ',' or 'end of string'",
                        other.describe()
                    )))
                }
            }
        }
        requirements.sort_by(|a: &Requirement, b| a.key.cmp(&b.key));
        Ok(Self { requirements })
    }

    /// Whether the selector has no requirements (selects everything).
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether the labels, given as a lookup from key to value, satisfy every requirement.
    pub fn matches<'a>(&self, label: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.requirements.iter().all(|r| r.matches(&label))
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn selects(selector: &str, pairs: &[(&str, &str)]) -> bool {
        let set = labels(pairs);
        LabelSelector::parse(selector)
            .unwrap_or_else(|e| panic!("{selector}: {e}"))
            .matches(|k| set.get(k).map(String::as_str))
    }

    #[test]
    fn every_operator_matches_as_apimachinery_does() {
        let l = [("app", "web"), ("tier", "front"), ("n", "10")];
        assert!(selects("", &l));
        assert!(selects("app", &l));
        assert!(!selects("missing", &l));
        assert!(selects("!missing", &l));
        assert!(!selects("!app", &l));
        assert!(selects("app=web", &l));
        assert!(selects("app==web", &l));
        assert!(!selects("app=db", &l));
        assert!(selects("app!=db", &l));
        assert!(selects("missing!=x", &l), "!= matches an absent key");
        assert!(selects("app in (db, web)", &l));
        assert!(!selects("app in (db)", &l));
        assert!(selects("app notin (db)", &l));
        assert!(selects("missing notin (db)", &l), "notin matches an absent key");
        assert!(!selects("missing in (db)", &l));
        assert!(selects("n>9", &l));
        assert!(!selects("n>10", &l));
        assert!(selects("n<11", &l));
        assert!(!selects("app>1", &l), "non-integer values never match >");
        assert!(!selects("missing<1", &l));
        assert!(selects("app=web,tier=front", &l));
        assert!(!selects("app=web,tier=back", &l));
        assert!(selects(" app = web , !gone ", &l));
    }

    #[test]
    fn empty_values_are_legal() {
        assert!(selects("a=", &[("a", "")]));
        assert!(!selects("a=", &[("a", "x")]));
        assert!(selects("a in (x,,y)", &[("a", "")]));
        assert!(selects("a in ()", &[("a", "")]));
        let parsed = LabelSelector::parse("a in (x,,y)").unwrap();
        assert_eq!(parsed.requirements[0].values, vec!["", "x", "y"]);
    }

    #[test]
    fn keywords_are_values_after_operators() {
        assert!(selects("a=in", &[("a", "in")]));
        assert!(selects("a in (notin)", &[("a", "notin")]));
    }

    #[test]
    fn prefixed_keys_parse() {
        let l = [("audit.kyverno.io/resource.uid", "123")];
        assert!(selects("audit.kyverno.io/resource.uid=123", &l));
        assert!(selects("!audit.kyverno.io/resource.hash", &l));
    }

    #[test]
    fn malformed_selectors_are_errors() {
        for bad in [
            "a=b=c",
            "a in b",
            "a in (b",
            "a,",
            ",a",
            "!a=b",
            "a>b",
            "a<",
            "-a=b",
            "a=-b",
            "a b",
            "in",
            "a notin",
            "a=(b)",
            &format!("a={}", "x".repeat(64)),
            &format!("{}=b", "x".repeat(64)),
            "bad_prefix_/a=b",
            "a!b",
        ] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn display_round_trips() {
        let s = LabelSelector::parse("b in (y,x),a!=1,!c,d,e>5").unwrap();
        assert_eq!(s.to_string(), "a!=1,b in (x,y),!c,d,e>5");
        assert_eq!(LabelSelector::parse(&s.to_string()).unwrap(), s);
    }
}
