//! Label selectors: upstream's grammar (`a=b`, `a==b`, `a!=b`, `a in (x,y)`, `a notin (x)`,
//! `a`, `!a`, `a>1`, `a<1`, comma-separated AND) and `metav1.LabelSelector` conversion.

use crate::status::ApiError;
use crate::validation::names::{is_label_value, is_qualified_name};
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as metav1;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;

/// A requirement's operator, as `selection.Operator`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operator {
    Equals,
    DoubleEquals,
    NotEquals,
    In,
    NotIn,
    Exists,
    DoesNotExist,
    GreaterThan,
    LessThan,
}

/// One `key op values` term; all terms of a selector must match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    /// Sorted and deduplicated, as upstream's string sets.
    pub values: Vec<String>,
}

/// A parsed label selector; empty matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector {
    pub requirements: Vec<Requirement>,
}

impl Requirement {
    /// Validates as upstream's `NewRequirement` (key, value syntax and count per operator).
    pub fn new(
        key: &str,
        operator: Operator,
        mut values: Vec<String>,
    ) -> Result<Requirement, String> {
        values.sort();
        values.dedup();
        let mut errs = Vec::new();
        let key_errs = is_qualified_name(key);
        if !key_errs.is_empty() {
            errs.push(format!(
                "key: Invalid value: {key:?}: {}",
                key_errs.join("; ")
            ));
        }
        match operator {
            Operator::In | Operator::NotIn if values.is_empty() => {
                errs.push("values: Invalid value: []: for 'in', 'notin' operators, values set can't be empty".into())
            }
            Operator::Equals | Operator::DoubleEquals | Operator::NotEquals if values.len() != 1 => errs.push(format!(
                "values: Invalid value: {values:?}: exact-match compatibility requires one single value"
            )),
            Operator::Exists | Operator::DoesNotExist if !values.is_empty() => errs.push(format!(
                "values: Invalid value: {values:?}: values set must be empty for exists and does not exist"
            )),
            Operator::GreaterThan | Operator::LessThan => {
                if values.len() != 1 {
                    errs.push(format!(
                        "values: Invalid value: {values:?}: for 'Gt', 'Lt' operators, exactly one value is required"
                    ));
                }
                for (i, v) in values.iter().enumerate() {
                    if v.parse::<i64>().is_err() {
                        errs.push(format!(
                            "values[{i}]: Invalid value: {v:?}: for 'Gt', 'Lt' operators, the value must be an integer"
                        ));
                    }
                }
            }
            _ => {}
        }
        for (i, v) in values.iter().enumerate() {
            let v_errs = is_label_value(v);
            if !v_errs.is_empty() {
                errs.push(format!(
                    "values[{i}][{key}]: Invalid value: {v:?}: {}",
                    v_errs.join("; ")
                ));
            }
        }
        match errs.len() {
            0 => Ok(Requirement {
                key: key.to_string(),
                operator,
                values,
            }),
            1 => Err(errs.remove(0)),
            _ => Err(format!("[{}]", errs.join(", "))),
        }
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let got = labels.get(&self.key);
        match self.operator {
            Operator::In | Operator::Equals | Operator::DoubleEquals => {
                got.is_some_and(|v| self.values.contains(v))
            }
            Operator::NotIn | Operator::NotEquals => got.is_none_or(|v| !self.values.contains(v)),
            Operator::Exists => got.is_some(),
            Operator::DoesNotExist => got.is_none(),
            Operator::GreaterThan | Operator::LessThan => {
                let (Some(Ok(have)), [want]) =
                    (got.map(|v| v.parse::<i64>()), self.values.as_slice())
                else {
                    return false;
                };
                let Ok(want) = want.parse::<i64>() else {
                    return false;
                };
                if self.operator == Operator::GreaterThan {
                    have > want
                } else {
                    have < want
                }
            }
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.operator == Operator::DoesNotExist {
            write!(f, "!")?;
        }
        write!(f, "{}", self.key)?;
        let op = match self.operator {
            Operator::Exists | Operator::DoesNotExist => return Ok(()),
            Operator::Equals => "=",
            Operator::DoubleEquals => "==",
            Operator::NotEquals => "!=",
            Operator::In => " in ",
            Operator::NotIn => " notin ",
            Operator::GreaterThan => ">",
            Operator::LessThan => "<",
        };
        let values = self.values.join(",");
        match self.operator {
            Operator::In | Operator::NotIn => write!(f, "{op}({values})"),
            _ => write!(f, "{op}{values}"),
        }
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.requirements.iter().map(ToString::to_string).collect();
        write!(f, "{}", parts.join(","))
    }
}

impl LabelSelector {
    /// The selector that matches every object.
    pub fn everything() -> Self {
        LabelSelector::default()
    }

    /// Parses `?labelSelector=`; errors are 400 BadRequest with upstream's message.
    pub fn parse(selector: &str) -> Result<LabelSelector, ApiError> {
        let mut requirements = Parser::new(selector)
            .parse()
            .map_err(ApiError::bad_request)?;
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(LabelSelector { requirements })
    }

    /// Converts a `metav1.LabelSelector` as `metav1.LabelSelectorAsSelector` does (an empty one
    /// matches everything; callers treat an absent selector as matching nothing).
    pub fn from_label_selector(sel: &metav1::LabelSelector) -> Result<LabelSelector, ApiError> {
        let mut requirements = Vec::new();
        for (k, v) in sel.match_labels.iter().flatten() {
            requirements.push(
                Requirement::new(k, Operator::Equals, vec![v.clone()])
                    .map_err(ApiError::bad_request)?,
            );
        }
        for expr in sel.match_expressions.iter().flatten() {
            let op = match expr.operator.as_str() {
                "In" => Operator::In,
                "NotIn" => Operator::NotIn,
                "Exists" => Operator::Exists,
                "DoesNotExist" => Operator::DoesNotExist,
                other => {
                    return Err(ApiError::bad_request(format!(
                        "{other:?} is not a valid label selector operator"
                    )));
                }
            };
            let values = expr.values.clone().unwrap_or_default();
            requirements
                .push(Requirement::new(&expr.key, op, values).map_err(ApiError::bad_request)?);
        }
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(LabelSelector { requirements })
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// The value the selector requires for `key` exactly (`key=v`, `key==v`, `key in (v)`).
    pub fn requires_exact_match(&self, key: &str) -> Option<&str> {
        let r = self.requirements.iter().find(|r| r.key == key)?;
        match (r.operator, r.values.as_slice()) {
            (Operator::Equals | Operator::DoubleEquals | Operator::In, [v]) => Some(v),
            _ => None,
        }
    }
}

/// `metadata.labels` of an object as a map (non-string values are ignored).
pub fn object_labels(obj: &Value) -> BTreeMap<String, String> {
    obj.pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Error(String),
    End,
    ClosedPar,
    Comma,
    DoesNotExist,
    DoubleEquals,
    Equals,
    GreaterThan,
    Identifier(String),
    In,
    LessThan,
    NotEquals,
    NotIn,
    OpenPar,
}

impl Token {
    fn literal(&self) -> &str {
        match self {
            Token::Error(s) | Token::Identifier(s) => s,
            Token::End => "",
            Token::ClosedPar => ")",
            Token::Comma => ",",
            Token::DoesNotExist => "!",
            Token::DoubleEquals => "==",
            Token::Equals => "=",
            Token::GreaterThan => ">",
            Token::In => "in",
            Token::LessThan => "<",
            Token::NotEquals => "!=",
            Token::NotIn => "notin",
            Token::OpenPar => "(",
        }
    }
    fn keyword(s: &str) -> Option<Token> {
        Some(match s {
            ")" => Token::ClosedPar,
            "," => Token::Comma,
            "!" => Token::DoesNotExist,
            "==" => Token::DoubleEquals,
            "=" => Token::Equals,
            ">" => Token::GreaterThan,
            "in" => Token::In,
            "<" => Token::LessThan,
            "!=" => Token::NotEquals,
            "notin" => Token::NotIn,
            "(" => Token::OpenPar,
            _ => return None,
        })
    }
    /// In a values context `in`/`notin` are plain identifiers (`x in (in)`).
    fn into_value(self) -> Token {
        match self {
            Token::In | Token::NotIn => Token::Identifier(self.literal().to_string()),
            t => t,
        }
    }
}

fn is_special(b: u8) -> bool {
    matches!(b, b'=' | b'!' | b'(' | b')' | b',' | b'>' | b'<')
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// Splits the input into tokens the way upstream's byte lexer does.
fn lex(s: &str) -> Vec<Token> {
    let bytes = s.as_bytes();
    let mut pos = 0;
    let mut out = Vec::new();
    loop {
        while pos < bytes.len() && is_space(bytes[pos]) {
            pos += 1;
        }
        if pos >= bytes.len() {
            out.push(Token::End);
            return out;
        }
        let start = pos;
        if is_special(bytes[pos]) {
            let mut last: Option<(Token, usize)> = None;
            while pos < bytes.len() && is_special(bytes[pos]) {
                pos += 1;
                match Token::keyword(&s[start..pos]) {
                    Some(t) => last = Some((t, pos)),
                    None if last.is_some() => break,
                    None => {}
                }
            }
            match last {
                Some((t, end)) => {
                    pos = end;
                    out.push(t);
                }
                None => out.push(Token::Error(format!(
                    "error expected: keyword found '{}'",
                    &s[start..pos]
                ))),
            }
        } else {
            while pos < bytes.len() && !is_special(bytes[pos]) && !is_space(bytes[pos]) {
                pos += 1;
            }
            let word = &s[start..pos];
            out.push(Token::keyword(word).unwrap_or_else(|| Token::Identifier(word.to_string())));
        }
    }
}

struct Parser {
    items: Vec<Token>,
    pos: usize,
}

const BINARY_OPERATORS: &str = "in, notin, =, ==, !=, gt, lt";

impl Parser {
    fn new(s: &str) -> Self {
        Parser {
            items: lex(s),
            pos: 0,
        }
    }
    fn lookahead(&self, values: bool) -> Token {
        let t = self.items.get(self.pos).cloned().unwrap_or(Token::End);
        if values { t.into_value() } else { t }
    }
    fn consume(&mut self, values: bool) -> Token {
        let t = self.lookahead(values);
        self.pos += 1;
        t
    }

    fn parse(&mut self) -> Result<Vec<Requirement>, String> {
        let mut reqs = Vec::new();
        loop {
            match self.lookahead(true) {
                Token::Identifier(_) | Token::DoesNotExist => {
                    let r = self
                        .parse_requirement()
                        .map_err(|e| format!("unable to parse requirement: {e}"))?;
                    reqs.push(r);
                    match self.consume(true) {
                        Token::End => return Ok(reqs),
                        Token::Comma => {
                            let t = self.lookahead(true);
                            if !matches!(t, Token::Identifier(_) | Token::DoesNotExist) {
                                return Err(format!(
                                    "found '{}', expected: identifier after ','",
                                    t.literal()
                                ));
                            }
                        }
                        t => {
                            return Err(format!(
                                "found '{}', expected: ',' or 'end of string'",
                                t.literal()
                            ));
                        }
                    }
                }
                Token::End => return Ok(reqs),
                t => {
                    return Err(format!(
                        "found '{}', expected: !, identifier, or 'end of string'",
                        t.literal()
                    ));
                }
            }
        }
    }

    fn parse_requirement(&mut self) -> Result<Requirement, String> {
        let (key, unary) = self.parse_key_and_infer_operator()?;
        if let Some(op) = unary {
            return Requirement::new(&key, op, Vec::new());
        }
        let op = self.parse_operator()?;
        let values = match op {
            Operator::In | Operator::NotIn => self.parse_values()?,
            _ => self.parse_exact_value()?,
        };
        Requirement::new(&key, op, values)
    }

    /// The key, and `Exists`/`DoesNotExist` when no binary operator follows.
    fn parse_key_and_infer_operator(&mut self) -> Result<(String, Option<Operator>), String> {
        let mut tok = self.consume(true);
        let mut not = false;
        if tok == Token::DoesNotExist {
            not = true;
            tok = self.consume(true);
        }
        let Token::Identifier(key) = tok else {
            return Err(format!("found '{}', expected: identifier", tok.literal()));
        };
        let errs = is_qualified_name(&key);
        if !errs.is_empty() {
            return Err(format!(
                "<nil>: Invalid value: {key:?}: {}",
                errs.join("; ")
            ));
        }
        let next = self.lookahead(true);
        if not {
            // `!x=a`: upstream ends the requirement at `!x` and fails on the next token
            return Ok((key, Some(Operator::DoesNotExist)));
        }
        if next == Token::End || next == Token::Comma {
            return Ok((key, Some(Operator::Exists)));
        }
        Ok((key, None))
    }

    fn parse_operator(&mut self) -> Result<Operator, String> {
        Ok(match self.consume(false) {
            Token::In => Operator::In,
            Token::Equals => Operator::Equals,
            Token::DoubleEquals => Operator::DoubleEquals,
            Token::GreaterThan => Operator::GreaterThan,
            Token::LessThan => Operator::LessThan,
            Token::NotIn => Operator::NotIn,
            Token::NotEquals => Operator::NotEquals,
            t => {
                return Err(format!(
                    "found '{}', expected: {BINARY_OPERATORS}",
                    t.literal()
                ));
            }
        })
    }

    fn parse_values(&mut self) -> Result<Vec<String>, String> {
        let t = self.consume(true);
        if t != Token::OpenPar {
            return Err(format!("found '{}' expected: '('", t.literal()));
        }
        match self.lookahead(true) {
            t @ (Token::Identifier(_) | Token::Comma) => {
                let s = self.parse_identifiers_list()?;
                if self.consume(true) != Token::ClosedPar {
                    return Err(format!("found '{}', expected: ')'", t.literal()));
                }
                Ok(s)
            }
            Token::ClosedPar => {
                self.consume(true);
                Ok(vec![String::new()])
            }
            t => Err(format!(
                "found '{}', expected: ',', ')' or identifier",
                t.literal()
            )),
        }
    }

    fn parse_identifiers_list(&mut self) -> Result<Vec<String>, String> {
        let mut s: Vec<String> = Vec::new();
        loop {
            match self.consume(true) {
                Token::Identifier(v) => {
                    s.push(v);
                    match self.lookahead(true) {
                        Token::Comma => continue,
                        Token::ClosedPar => return Ok(s),
                        t => return Err(format!("found '{}', expected: ',' or ')'", t.literal())),
                    }
                }
                Token::Comma => {
                    if s.is_empty() {
                        s.push(String::new());
                    }
                    match self.lookahead(true) {
                        Token::ClosedPar => {
                            s.push(String::new());
                            return Ok(s);
                        }
                        Token::Comma => s.push(String::new()),
                        _ => {}
                    }
                }
                t => {
                    return Err(format!(
                        "found '{}', expected: ',', or identifier",
                        t.literal()
                    ));
                }
            }
        }
    }

    fn parse_exact_value(&mut self) -> Result<Vec<String>, String> {
        let t = self.lookahead(true);
        if t == Token::End || t == Token::Comma {
            return Ok(vec![String::new()]);
        }
        match self.consume(true) {
            Token::Identifier(v) => Ok(vec![v]),
            t => Err(format!("found '{}', expected: identifier", t.literal())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn set(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_upstream_valid_examples() {
        for s in [
            "",
            "x=a,y=b,z=c",
            "x!=a,y=b",
            "x=",
            "x= ",
            "x=,z= ",
            "x= ,z= ",
            "!x",
            "x>1",
            "x>1,z<5",
            "x>1,z<5,a=b",
            "x in (a,b)",
            "x notin (a)",
            "x in (in)",
            "x in (,)",
            "x in ()",
            "x in (foo,,baz),y,z notin ()",
            "  x  ==  a ",
            "x\tin\t(a)",
            "a.b/c-d_e=f",
            "x=a||y=b",
        ] {
            if s == "x=a||y=b" {
                assert!(LabelSelector::parse(s).is_err(), "{s}");
            } else {
                assert!(
                    LabelSelector::parse(s).is_ok(),
                    "{s}: {:?}",
                    LabelSelector::parse(s)
                );
            }
        }
    }

    #[test]
    fn rejects_upstream_invalid_examples() {
        for s in [
            "x=a||y=b",
            "x==a==b",
            "!x=a",
            "x<a",
            "x in (a",
            "x (a)",
            "x in a",
            "-x=a",
            "x=a b",
            "x>1,z<a",
            "x in (a) y",
            "x=a,",
            ",x=a",
            "=a",
            "x=-a",
            "a/b/c=d",
            "x in (a,(b))",
        ] {
            let e = LabelSelector::parse(s).expect_err(s);
            assert_eq!(e.code, 400, "{s}");
            assert_eq!(e.reason, "BadRequest");
        }
    }

    #[test]
    fn error_messages_match_upstream() {
        let msg = |s: &str| LabelSelector::parse(s).unwrap_err().message;
        assert_eq!(
            msg("x y"),
            "unable to parse requirement: found 'y', expected: in, notin, =, ==, !=, gt, lt"
        );
        assert_eq!(msg("x=a,"), "found '', expected: identifier after ','");
        assert_eq!(msg("x=a b"), "found 'b', expected: ',' or 'end of string'");
        assert!(
            msg("x=-a").starts_with("unable to parse requirement: values[0][x]: Invalid value: \"-a\": a valid label must be")
        );
        assert!(msg("-x").starts_with(
            "unable to parse requirement: <nil>: Invalid value: \"-x\": name part must consist"
        ));
    }

    #[test]
    fn matches_as_upstream() {
        let labels = set(&[("x", "a"), ("y", "b"), ("n", "5")]);
        let cases: &[(&str, bool)] = &[
            ("", true),
            ("x=a", true),
            ("x==a", true),
            ("x=b", false),
            ("x!=b", true),
            ("x!=a", false),
            ("z!=a", true),
            ("x in (a,b)", true),
            ("x in (c)", false),
            ("x notin (c)", true),
            ("z notin (c)", true),
            ("x notin (a)", false),
            ("x", true),
            ("z", false),
            ("!z", true),
            ("!x", false),
            ("x=a,y=b", true),
            ("x=a,y=c", false),
            ("n>4", true),
            ("n>5", false),
            ("n<6", true),
            ("x>1", false),
            ("z=", false),
        ];
        for (s, want) in cases {
            let sel = LabelSelector::parse(s).unwrap();
            assert_eq!(sel.matches(&labels), *want, "{s}");
        }
    }

    #[test]
    fn string_form_is_sorted_like_upstream() {
        let sel = LabelSelector::parse("z notin (b,a), x in (c , a),!y, w").unwrap();
        assert_eq!(sel.to_string(), "w,x in (a,c),!y,z notin (a,b)");
        assert_eq!(sel.requires_exact_match("w"), None);
        assert_eq!(
            LabelSelector::parse("a==b")
                .unwrap()
                .requires_exact_match("a"),
            Some("b")
        );
    }

    #[test]
    fn converts_metav1_label_selector() {
        let sel: metav1::LabelSelector = serde_json::from_value(json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["fe", "be"]},
                {"key": "canary", "operator": "DoesNotExist"}
            ]
        }))
        .unwrap();
        let s = LabelSelector::from_label_selector(&sel).unwrap();
        assert!(s.matches(&set(&[("app", "web"), ("tier", "fe")])));
        assert!(!s.matches(&set(&[("app", "web"), ("tier", "fe"), ("canary", "1")])));
        assert!(!s.matches(&set(&[("app", "web")])));
        assert!(
            LabelSelector::from_label_selector(&metav1::LabelSelector::default())
                .unwrap()
                .is_empty()
        );
        let bad: metav1::LabelSelector =
            serde_json::from_value(json!({"matchExpressions": [{"key": "a", "operator": "Foo"}]}))
                .unwrap();
        assert_eq!(
            LabelSelector::from_label_selector(&bad)
                .unwrap_err()
                .message,
            "\"Foo\" is not a valid label selector operator"
        );
        let empty_in: metav1::LabelSelector = serde_json::from_value(
            json!({"matchExpressions": [{"key": "a", "operator": "In", "values": []}]}),
        )
        .unwrap();
        assert!(LabelSelector::from_label_selector(&empty_in).is_err());
    }

    #[test]
    fn object_labels_reads_metadata() {
        let obj = json!({"metadata": {"labels": {"a": "b", "n": 1}}});
        assert_eq!(object_labels(&obj), set(&[("a", "b")]));
        assert!(object_labels(&json!({})).is_empty());
    }
}
