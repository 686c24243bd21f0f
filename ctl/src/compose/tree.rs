//! A YAML document as a tree of located nodes: every scalar, list and mapping knows its
//! file, line and column, and every mapping key its own. Interpolation, merging and
//! decoding all work on this tree, so any error found at any stage can point at the
//! source. Parsing is serde-saphyr's (`Spanned` + `Tagged` give position and tag of
//! each node) under tight budgets, so hostile input fails with an error, never a
//! panic, a hang or a memory blow-up.

use std::fmt;
use std::sync::Arc;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{Spanned, Tagged};

use super::error::{ComposeError, ErrorKind, Loc, Origin};

/// Largest compose file accepted, in bytes.
pub const MAX_FILE_BYTES: usize = 4 * 1024 * 1024;
/// Deepest nesting of lists and mappings (a real compose file nests about 7 levels).
pub const MAX_DEPTH: usize = 32;
/// Stack for the parsing thread: serde's recursive descent takes about 50 KiB per
/// nesting level in a debug build, more than a test thread's 2 MiB allows at
/// `MAX_DEPTH`.
const PARSE_STACK_BYTES: usize = 16 * 1024 * 1024;
/// Most nodes (scalars, lists, mappings) in one document, aliases expanded.
pub const MAX_NODES: usize = 200_000;
/// Most alias (`*name`) uses in one document.
pub const MAX_ALIASES: usize = 10_000;

/// A located node.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub value: Value,
    pub loc: Loc,
    pub tag: Tag,
}

/// Compose's merge tags (`!reset`, `!override`); other tags are refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tag {
    None,
    /// `!reset`: a later file removes what earlier files set.
    Reset,
    /// `!override`: a later file replaces instead of merging.
    Override,
}

/// Scalars keep their source spelling (`text`) so that `VERSION: 1.10` reads as the
/// string "1.10" where a string is expected, not "1.1".
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Bool { value: bool, text: String },
    Int { value: i64, text: String },
    Float { value: f64, text: String },
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<Entry>),
}

/// One mapping entry; keys are always strings (a non-string scalar key keeps its
/// spelling).
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub key: String,
    pub key_loc: Loc,
    pub value: Node,
}

impl Node {
    pub fn new(value: Value, loc: Loc) -> Self {
        Node {
            value,
            loc,
            tag: Tag::None,
        }
    }

    pub fn as_map(&self) -> Option<&[Entry]> {
        match &self.value {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map()?
            .iter()
            .find(|e| e.key == key)
            .map(|e| &e.value)
    }

    pub fn entry(&self, key: &str) -> Option<&Entry> {
        self.as_map()?.iter().find(|e| e.key == key)
    }

    pub fn is_null(&self) -> bool {
        matches!(self.value, Value::Null)
    }

    /// The scalar as text (strings as they are, numbers and booleans as spelled).
    pub fn scalar_text(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            Value::Bool { text, .. } | Value::Int { text, .. } | Value::Float { text, .. } => {
                Some(text)
            }
            _ => None,
        }
    }
}

/// Parses one YAML document (a compose file) into a located tree.
pub fn parse(file: &Arc<str>, bytes: &[u8]) -> Result<Node, ComposeError> {
    if bytes.len() > MAX_FILE_BYTES {
        return Err(ComposeError {
            origin: Origin::File(file.clone()),
            path: String::new(),
            kind: ErrorKind::TooLarge {
                size: bytes.len() as u64,
                limit: MAX_FILE_BYTES as u64,
            },
        });
    }
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let text = std::str::from_utf8(bytes).map_err(|err| {
        let (line, column) = line_col(bytes, err.valid_up_to());
        ComposeError::at(
            &Loc {
                file: file.clone(),
                line,
                column,
            },
            "",
            ErrorKind::NotUtf8,
        )
    })?;
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("compose-parse".to_owned())
            .stack_size(PARSE_STACK_BYTES)
            .spawn_scoped(scope, || parse_text(file, text))
            .map_err(|err| ComposeError {
                origin: Origin::File(file.clone()),
                path: String::new(),
                kind: ErrorKind::Yaml {
                    message: format!("cannot start the parser thread: {err}"),
                },
            })?
            .join()
            .unwrap_or_else(|_| {
                Err(ComposeError {
                    origin: Origin::File(file.clone()),
                    path: String::new(),
                    kind: ErrorKind::Yaml {
                        message: "internal error: the YAML parser panicked".to_owned(),
                    },
                })
            })
    })
}

fn parse_text(file: &Arc<str>, text: &str) -> Result<Node, ComposeError> {
    let options = serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_depth: MAX_DEPTH,
            max_nodes: MAX_NODES,
            max_aliases: MAX_ALIASES,
            max_anchors: MAX_ALIASES,
            max_documents: 1,
            max_events: 4 * MAX_NODES,
            max_recorded_anchor_events: 2 * MAX_NODES,
            max_total_scalar_bytes: 2 * MAX_FILE_BYTES,
            max_merge_keys: MAX_ALIASES,
        },
        // YAML 1.2 booleans, as Docker Compose (go-yaml v3) reads them: `no` is a string.
        strict_booleans: true,
        // `0755` and `1_000` stay as written where a string is expected.
        leading_zero_numbers_as_strings: true,
        underscored_numbers_as_strings: true,
        non_finite_float_policy: serde_saphyr::NonFiniteFloatPolicy::AsString,
        with_snippet: false,
    };
    let raw: Option<RawNode> =
        serde_saphyr::from_str_with_options(text, options).map_err(|err| yaml_error(file, &err))?;
    let Some(raw) = raw else {
        // An empty file: an empty mapping, as Compose treats it.
        return Ok(Node::new(
            Value::Map(Vec::new()),
            Loc {
                file: file.clone(),
                line: 1,
                column: 1,
            },
        ));
    };
    let mut converter = Converter { file, text };
    converter.node(raw)
}

fn yaml_error(file: &Arc<str>, err: &serde_saphyr::Error) -> ComposeError {
    let message = err
        .render_with_options(serde_saphyr::render_options! {
            formatter: &Plain,
            snippets: serde_saphyr::SnippetMode::Off,
        })
        .replace(['\n', '\r'], " ");
    match err.location() {
        Some(l) if l.line() > 0 => ComposeError::at(
            &Loc {
                file: file.clone(),
                line: u32::try_from(l.line()).unwrap_or(u32::MAX),
                column: u32::try_from(l.column()).unwrap_or(u32::MAX),
            },
            "",
            ErrorKind::Yaml { message },
        ),
        _ => ComposeError {
            origin: Origin::File(file.clone()),
            path: String::new(),
            kind: ErrorKind::Yaml { message },
        },
    }
}

/// serde-saphyr's user-facing wording without its " at line X, column Y" suffix: the
/// position is already in front of our message.
struct Plain;

impl serde_saphyr::MessageFormatter for Plain {
    fn localizer(&self) -> &dyn serde_saphyr::Localizer {
        self
    }
    fn format_message<'a>(&self, err: &'a serde_saphyr::Error) -> std::borrow::Cow<'a, str> {
        serde_saphyr::UserMessageFormatter.format_message(err)
    }
}

impl serde_saphyr::Localizer for Plain {
    fn attach_location<'a>(
        &self,
        base: std::borrow::Cow<'a, str>,
        _loc: serde_saphyr::Location,
    ) -> std::borrow::Cow<'a, str> {
        base
    }
    fn alias_defined_at(&self, _defined: serde_saphyr::Location) -> String {
        String::new()
    }
    fn alias_used_at(&self, _used: serde_saphyr::Location) -> String {
        String::new()
    }
}

/// 1-based line and column (in characters) of byte `offset`.
pub(crate) fn line_col(bytes: &[u8], offset: usize) -> (u32, u32) {
    let before = &bytes[..offset.min(bytes.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |p| p + 1);
    let column = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count()
        + 1;
    (
        u32::try_from(line).unwrap_or(u32::MAX),
        u32::try_from(column).unwrap_or(u32::MAX),
    )
}

// ------------------------------------------------------------------ serde side

/// What serde-saphyr hands us: a tagged, spanned value whose children are the same.
struct RawNode(Spanned<Tagged<RawValue>>);

enum RawValue {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Seq(Vec<RawNode>),
    Map(Vec<(RawNode, RawNode)>),
}

impl<'de> Deserialize<'de> for RawNode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(RawNode(Spanned::<Tagged<RawValue>>::deserialize(d)?))
    }
}

impl<'de> Deserialize<'de> for RawValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(RawVisitor)
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = RawValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<RawValue, E> {
        Ok(RawValue::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<RawValue, E> {
        Ok(RawValue::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<RawValue, D::Error> {
        d.deserialize_any(RawVisitor)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<RawValue, E> {
        Ok(RawValue::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawValue, E> {
        Ok(RawValue::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawValue, E> {
        Ok(RawValue::UInt(v))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<RawValue, E> {
        Ok(RawValue::Float(v as f64))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<RawValue, E> {
        Ok(RawValue::Float(v as f64))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<RawValue, E> {
        Ok(RawValue::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<RawValue, E> {
        Ok(RawValue::Str(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<RawValue, E> {
        Ok(RawValue::Str(v))
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<RawValue, E> {
        Ok(RawValue::Str(String::from_utf8_lossy(v).into_owned()))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawValue, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<RawNode>()? {
            items.push(item);
        }
        Ok(RawValue::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawValue, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<RawNode>()? {
            let value = map.next_value::<RawNode>()?;
            entries.push((key, value));
        }
        Ok(RawValue::Map(entries))
    }
}

struct Converter<'a> {
    file: &'a Arc<str>,
    text: &'a str,
}

impl Converter<'_> {
    fn loc(&self, l: &serde_saphyr::Location) -> Loc {
        Loc {
            file: self.file.clone(),
            line: u32::try_from(l.line()).unwrap_or(u32::MAX),
            column: u32::try_from(l.column()).unwrap_or(u32::MAX),
        }
    }

    /// The source spelling of a scalar, from its byte span.
    fn spelling(&self, l: &serde_saphyr::Location, fallback: impl FnOnce() -> String) -> String {
        let span = l.span();
        if let (Some(off), Some(len)) = (span.byte_offset(), span.byte_len()) {
            let start = usize::try_from(off).unwrap_or(usize::MAX);
            let end = start.saturating_add(usize::try_from(len).unwrap_or(usize::MAX));
            if let Some(s) = self.text.get(start..end) {
                let s = s.trim();
                if !s.is_empty() && !s.contains(['\n', '"', '\'', '#', ',', ']', '}']) {
                    return s.to_owned();
                }
            }
        }
        fallback()
    }

    fn node(&mut self, raw: RawNode) -> Result<Node, ComposeError> {
        let Spanned {
            value: Tagged(value, tag),
            defined,
            ..
        } = raw.0;
        // Errors point where a value is written: for an alias, at its anchor.
        let loc = self.loc(&defined);
        let tag = match tag.as_deref() {
            None => Tag::None,
            Some("!reset") => Tag::Reset,
            Some("!override") => Tag::Override,
            Some(
                "tag:yaml.org,2002:str"
                | "tag:yaml.org,2002:int"
                | "tag:yaml.org,2002:float"
                | "tag:yaml.org,2002:bool"
                | "tag:yaml.org,2002:null"
                | "tag:yaml.org,2002:map"
                | "tag:yaml.org,2002:seq",
            ) => Tag::None,
            Some(t) => {
                return Err(ComposeError::at(
                    &loc,
                    "",
                    ErrorKind::Yaml {
                        message: format!(
                            "unsupported tag {t} (compose knows !reset and !override)"
                        ),
                    },
                ));
            }
        };
        let value = match value {
            RawValue::Null => Value::Null,
            RawValue::Bool(v) => Value::Bool {
                value: v,
                text: self.spelling(&defined, || v.to_string()),
            },
            RawValue::Int(v) => Value::Int {
                value: v,
                text: self.spelling(&defined, || v.to_string()),
            },
            RawValue::UInt(v) => match i64::try_from(v) {
                Ok(i) => Value::Int {
                    value: i,
                    text: self.spelling(&defined, || v.to_string()),
                },
                Err(_) => Value::Float {
                    value: v as f64,
                    text: self.spelling(&defined, || v.to_string()),
                },
            },
            RawValue::Float(v) => Value::Float {
                value: v,
                text: self.spelling(&defined, || v.to_string()),
            },
            RawValue::Str(s) => Value::Str(s),
            RawValue::Seq(items) => Value::Seq(
                items
                    .into_iter()
                    .map(|i| self.node(i))
                    .collect::<Result<_, _>>()?,
            ),
            RawValue::Map(entries) => {
                let mut out = Vec::with_capacity(entries.len());
                for (k, v) in entries {
                    let key = self.node(k)?;
                    let key_text = match key.scalar_text() {
                        Some(t) => t.to_owned(),
                        None if key.is_null() => "null".to_owned(),
                        None => {
                            return Err(ComposeError::at(
                                &key.loc,
                                "",
                                ErrorKind::Yaml {
                                    message:
                                        "a mapping key must be a string, not a list or a mapping"
                                            .to_owned(),
                                },
                            ));
                        }
                    };
                    out.push(Entry {
                        key: key_text,
                        key_loc: key.loc,
                        value: self.node(v)?,
                    });
                }
                Value::Map(out)
            }
        };
        Ok(Node { value, loc, tag })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Node, ComposeError> {
        parse(&Arc::from("t.yaml"), text.as_bytes())
    }

    #[test]
    fn scalars_keep_spelling_and_position() {
        let n = p("a: 1.10\nb: \"q\"\nc: 0755\nd: no\ne: true\nf:\n").expect("parses");
        let a = n.get("a").expect("a");
        assert_eq!(a.scalar_text(), Some("1.10"));
        assert_eq!((a.loc.line, a.loc.column), (1, 4));
        assert_eq!(n.get("b").expect("b").value, Value::Str("q".into()));
        assert_eq!(n.get("c").expect("c").scalar_text(), Some("0755"));
        assert_eq!(n.get("d").expect("d").value, Value::Str("no".into()));
        assert!(matches!(
            n.get("e").expect("e").value,
            Value::Bool { value: true, .. }
        ));
        assert!(n.get("f").expect("f").is_null());
        let e = n.entry("e").expect("e");
        assert_eq!((e.key_loc.line, e.key_loc.column), (5, 1));
    }

    #[test]
    fn merge_keys_and_aliases_expand_with_definition_positions() {
        let n = p("x: &base\n  image: busybox\ny:\n  <<: *base\n  command: sh\n").expect("parses");
        let image = n.get("y").and_then(|y| y.get("image")).expect("merged");
        assert_eq!(image.value, Value::Str("busybox".into()));
        assert_eq!((image.loc.line, image.loc.column), (2, 10));
    }

    #[test]
    fn compose_tags_are_kept_and_others_refused() {
        let n = p("a: !reset []\nb: !override {x: 1}\n").expect("parses");
        assert_eq!(n.get("a").expect("a").tag, Tag::Reset);
        assert_eq!(n.get("b").expect("b").tag, Tag::Override);
        let err = p("a: !python/object x\n").expect_err("refused");
        assert_eq!(err.loc().map(|l| l.line), Some(1));
        assert!(
            err.to_string().contains("unsupported tag !python/object"),
            "{err}"
        );
    }

    #[test]
    fn broken_yaml_points_at_the_problem() {
        let err = p("services:\n  web:\n    image: x\n   bad: 1\n").expect_err("broken");
        let msg = err.to_string();
        assert!(msg.starts_with("t.yaml:4:4: invalid YAML: "), "{msg}");
        assert!(!msg.contains("at line"), "{msg}");
    }

    #[test]
    fn duplicate_keys_are_an_error() {
        let err = p("a: 1\na: 2\n").expect_err("duplicate");
        assert_eq!(err.loc().map(|l| (l.line, l.column)), Some((2, 1)));
    }

    #[test]
    fn invalid_utf8_reports_its_position() {
        let err = parse(&Arc::from("t.yaml"), b"a: 1\nbb: \xff\n").expect_err("not utf8");
        assert_eq!(err.to_string(), "t.yaml:2:5: not valid UTF-8");
    }

    #[test]
    fn empty_documents_are_empty_mappings() {
        assert_eq!(p("").expect("empty").value, Value::Map(vec![]));
        assert_eq!(
            p("# only a comment\n").expect("empty").value,
            Value::Map(vec![])
        );
    }

    #[test]
    fn limits_stop_hostile_documents() {
        let deep = format!("a: {}{}", "[".repeat(200), "]".repeat(200));
        assert!(p(&deep).is_err());
        let mut laughs = String::from("a0: &a0 [x,x,x,x,x,x,x,x,x,x]\n");
        for i in 1..12 {
            let refs = vec![format!("*a{}", i - 1); 10].join(",");
            laughs.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
        }
        let err = p(&laughs).expect_err("billion laughs");
        assert!(err.to_string().contains("invalid YAML"), "{err}");
        let big = "a".repeat(MAX_FILE_BYTES + 1);
        assert!(matches!(
            p(&big).expect_err("too big").kind,
            ErrorKind::TooLarge { .. }
        ));
    }
}
