//! A position-aware view of one YAML document.
//!
//! Validation must point at the exact `line:col` of the offending key, list entry or line inside
//! a block string, so specs are not deserialized straight into structs: serde-saphyr reads the
//! document into a small tree of [`Node`]s where every node carries its location, and the spec
//! parser walks that tree. Everything a spec holds is text, so scalars keep their source text
//! (`1.10` stays `1.10`, never the float `1.1`).
//!
//! Input budgets are applied here, before anything else sees the document: anchors and aliases
//! are refused outright (specs never need them, and they are how "billion laughs" bombs work),
//! and the event count is capped.

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{Budget, DuplicateKeyPolicy, Options, Spanned};
use std::fmt;

/// A 1-based line and column in the source file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pos {
    pub line: u32,
    pub column: u32,
}

impl Pos {
    pub const START: Pos = Pos { line: 1, column: 1 };

    pub fn new(line: u32, column: u32) -> Self {
        Pos { line, column }
    }
}

/// One node of the document with where it starts.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub pos: Pos,
    pub value: Value,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    /// A scalar, as written (quotes removed, escapes resolved; numbers and booleans verbatim).
    Scalar(String),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

impl Value {
    /// A short noun for error messages ("a list", "a mapping", ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "empty",
            Value::Scalar(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

/// Why a document could not be read as YAML.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct YamlError {
    pub pos: Pos,
    pub message: String,
    /// The document uses anchors or aliases, which specs do not allow.
    pub alias: bool,
}

/// Parse one YAML document into a [`Node`] tree.
pub fn parse(source: &str) -> Result<Node, YamlError> {
    if let Some(pos) = find_alias_or_anchor(source) {
        return Err(YamlError {
            pos,
            message: "anchors and aliases (`&name`, `*name`) are not allowed in image specs".into(),
            alias: true,
        });
    }
    let mut budget = Budget::default();
    budget.max_events = 100_000;
    budget.max_aliases = 0;
    budget.max_anchors = 0;
    budget.max_depth = 32;
    let mut options = Options::default();
    options.budget = Some(budget);
    options.duplicate_keys = DuplicateKeyPolicy::Error;
    options.with_snippet = false;
    let raw: Spanned<RawValue> =
        serde_saphyr::from_str_with_options(source, options).map_err(|e| {
            let pos = e
                .location()
                .map(|l| Pos::new(to_u32(l.line()), to_u32(l.column())))
                .unwrap_or(Pos::START);
            YamlError {
                pos,
                message: first_line(&e.without_snippet().to_string()),
                alias: false,
            }
        })?;
    Ok(to_node(raw, source))
}

fn to_u32(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn first_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or("invalid YAML").trim();
    // serde-saphyr appends " at line X column Y"; the diagnostic already carries the position.
    match line.rfind(" at line ") {
        Some(i) => line[..i].to_string(),
        None => line.to_string(),
    }
}

/// Anchors (`&a`) and aliases (`*a`) outside quoted scalars and comments. Aliases are refused
/// before parsing so that no expansion ever happens. This is a conservative token scan: a `&`
/// or `*` that starts a node (after `- `, `: `, `[`, `{`, `,` or at the line start).
fn find_alias_or_anchor(source: &str) -> Option<Pos> {
    for (lineno, line) in source.lines().enumerate() {
        let mut prev_starts_node = true;
        let mut in_single = false;
        let mut in_double = false;
        let mut prev = ' ';
        for (col, c) in line.char_indices() {
            if in_single {
                in_single = c != '\'';
            } else if in_double {
                in_double = !(c == '"' && prev != '\\');
            } else {
                match c {
                    '#' if prev.is_whitespace() || col == 0 => break,
                    '\'' if prev_starts_node => in_single = true,
                    '"' if prev_starts_node => in_double = true,
                    '&' | '*' if prev_starts_node => {
                        let next = line[col + c.len_utf8()..].chars().next();
                        if next.is_some_and(|n| !n.is_whitespace()) {
                            let column = line[..col].chars().count() + 1;
                            return Some(Pos::new(
                                to_u32(lineno as u64 + 1),
                                to_u32(column as u64),
                            ));
                        }
                    }
                    _ => {}
                }
                prev_starts_node = matches!(c, '-' | ':' | '[' | '{' | ',' | '?')
                    && (prev.is_whitespace() || col == 0 || matches!(prev, '[' | '{' | ','))
                    || (c.is_whitespace() && prev_starts_node)
                    || (c == ' ' && matches!(prev, '-' | ':' | ',' | '[' | '{' | '?'));
            }
            prev = c;
        }
    }
    None
}

/// What the serde visitor sees; converted to [`Node`] once positions are known.
enum RawValue {
    Null,
    Text(String),
    /// A number or boolean: the source text is recovered from the span.
    Typed(String),
    Seq(Vec<Spanned<RawValue>>),
    Map(Vec<(Spanned<RawValue>, Spanned<RawValue>)>),
}

fn to_node(raw: Spanned<RawValue>, source: &str) -> Node {
    let loc = raw.referenced;
    let pos = Pos::new(to_u32(loc.line()), to_u32(loc.column()));
    let value = match raw.value {
        RawValue::Null => Value::Null,
        RawValue::Text(s) => Value::Scalar(s),
        RawValue::Typed(fallback) => {
            let span = loc.span();
            let verbatim = span
                .byte_offset()
                .zip(span.byte_len())
                .and_then(|(off, len)| {
                    let start = usize::try_from(off).ok()?;
                    let end = start.checked_add(usize::try_from(len).ok()?)?;
                    source.get(start..end)
                });
            Value::Scalar(verbatim.map(|s| s.trim().to_string()).unwrap_or(fallback))
        }
        RawValue::Seq(items) => Value::Seq(items.into_iter().map(|n| to_node(n, source)).collect()),
        RawValue::Map(entries) => Value::Map(
            entries
                .into_iter()
                .map(|(k, v)| (to_node(k, source), to_node(v, source)))
                .collect(),
        ),
    };
    Node { pos, value }
}

impl<'de> Deserialize<'de> for RawValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RawVisitor)
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = RawValue;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<RawValue, E> {
        Ok(RawValue::Typed(v.to_string()))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawValue, E> {
        Ok(RawValue::Typed(v.to_string()))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<RawValue, E> {
        Ok(RawValue::Typed(v.to_string()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawValue, E> {
        Ok(RawValue::Typed(v.to_string()))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<RawValue, E> {
        Ok(RawValue::Typed(v.to_string()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<RawValue, E> {
        Ok(RawValue::Typed(v.to_string()))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<RawValue, E> {
        Ok(RawValue::Text(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<RawValue, E> {
        Ok(RawValue::Text(v))
    }
    fn visit_none<E: de::Error>(self) -> Result<RawValue, E> {
        Ok(RawValue::Null)
    }
    fn visit_unit<E: de::Error>(self) -> Result<RawValue, E> {
        Ok(RawValue::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<RawValue, D::Error> {
        RawValue::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawValue, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(RawValue::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawValue, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry()? {
            entries.push(entry);
        }
        Ok(RawValue::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(node: &Node) -> &[(Node, Node)] {
        match &node.value {
            Value::Map(m) => m,
            other => panic!("expected a map, got {other:?}"),
        }
    }

    #[test]
    fn keys_values_and_items_carry_positions() {
        let doc = parse("name: demo\npackages:\n  apt:\n    - curl\n    - jq\n").unwrap();
        let top = map(&doc);
        assert_eq!(top[0].0.pos, Pos::new(1, 1));
        assert_eq!(top[0].1.pos, Pos::new(1, 7));
        let packages = map(&top[1].1);
        assert_eq!(packages[0].0.pos, Pos::new(3, 3));
        let Value::Seq(items) = &packages[0].1.value else {
            panic!()
        };
        assert_eq!(items[1].pos, Pos::new(5, 7));
        assert_eq!(items[1].value, Value::Scalar("jq".into()));
    }

    #[test]
    fn numbers_keep_their_source_text() {
        let doc = parse("a: 1.10\nb: true\nc: 007\n").unwrap();
        let texts: Vec<_> = map(&doc).iter().map(|(_, v)| v.value.clone()).collect();
        assert_eq!(
            texts,
            vec![
                Value::Scalar("1.10".into()),
                Value::Scalar("true".into()),
                Value::Scalar("007".into())
            ]
        );
    }

    #[test]
    fn aliases_and_anchors_are_refused() {
        let err = parse("a: &x [1, 2]\nb: *x\n").unwrap_err();
        assert!(err.alias);
        assert_eq!(err.pos, Pos::new(1, 4));
        let err = parse("a:\n  - &x foo\n").unwrap_err();
        assert!(err.alias);
    }

    #[test]
    fn ampersands_inside_text_are_fine() {
        let doc = parse("description: R&D image * 2 # note &x\nb: 'a *b'\n").unwrap();
        assert_eq!(map(&doc).len(), 2);
    }

    #[test]
    fn duplicate_keys_are_errors_with_a_position() {
        let err = parse("name: a\nname: b\n").unwrap_err();
        assert!(!err.alias);
        assert_eq!(err.pos.line, 2, "{err:?}");
    }

    #[test]
    fn syntax_errors_have_a_position() {
        let err = parse("name: [a, b\nother: 1\n").unwrap_err();
        assert!(err.pos.line >= 1);
        assert!(!err.message.is_empty());
    }
}
