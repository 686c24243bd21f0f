//! `${VAR}` interpolation with Docker Compose's rules, as a pure function over one
//! string and a variable lookup, plus the walk that applies it to every string value of
//! a tree (keys are never interpolated, as in Compose).
//!
//! | form | VAR unset | VAR empty | VAR set |
//! |---|---|---|---|
//! | `$VAR`, `${VAR}` | "" (warning) | "" | value |
//! | `${VAR-d}` | d | "" | value |
//! | `${VAR:-d}` | d | d | value |
//! | `${VAR?m}` | error m | "" | value |
//! | `${VAR:?m}` | error m | error m | value |
//! | `${VAR+a}` | "" | a | a |
//! | `${VAR:+a}` | "" | "" | a |
//!
//! `$$` is a literal `$`; a `$` not followed by a name or `{` stays as it is. Defaults,
//! alternatives and messages are themselves interpolated (`${A:-${B:-x}}`).

use super::error::{ComposeError, ErrorKind};
use super::tree::{Node, Value};

/// How deep `${A:-${B:-...}}` may nest.
const MAX_NESTING: usize = 16;

/// Why a string could not be interpolated.
#[derive(Debug, PartialEq, Eq)]
pub enum InterpolationError {
    /// `${VAR?message}` / `${VAR:?message}` with VAR missing.
    Required { name: String, message: String },
    /// A `${` that is not closed or holds no valid name and operator.
    Syntax(&'static str),
}

/// The result of interpolating one string.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Interpolated {
    pub text: String,
    /// Variables used without a default that are not set (Compose warns about these).
    pub unset: Vec<String>,
}

/// Interpolates `input` with `lookup`.
pub fn interpolate(
    input: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Interpolated, InterpolationError> {
    let mut out = Interpolated::default();
    expand(input, lookup, &mut out, 0)?;
    Ok(out)
}

fn is_name_start(c: char) -> bool {
    c == '_' || c.is_ascii_alphabetic()
}

fn is_name_char(c: char) -> bool {
    c == '_' || c.is_ascii_alphanumeric()
}

fn expand(
    input: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    out: &mut Interpolated,
    depth: usize,
) -> Result<(), InterpolationError> {
    if depth > MAX_NESTING {
        return Err(InterpolationError::Syntax("nested too deeply"));
    }
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.text.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        let mut chars = after.chars();
        match chars.next() {
            Some('$') => {
                out.text.push('$');
                rest = &after[1..];
            }
            Some('{') => {
                let body_and_rest = &after[1..];
                let end = matching_brace(body_and_rest)
                    .ok_or(InterpolationError::Syntax("unclosed `${`"))?;
                braced(&body_and_rest[..end], lookup, out, depth)?;
                rest = &body_and_rest[end + 1..];
            }
            Some(c) if is_name_start(c) => {
                let len = after
                    .find(|c: char| !is_name_char(c))
                    .unwrap_or(after.len());
                let name = &after[..len];
                match lookup(name) {
                    Some(v) => out.text.push_str(&v),
                    None => out.unset.push(name.to_owned()),
                }
                rest = &after[len..];
            }
            _ => {
                out.text.push('$');
                rest = after;
            }
        }
    }
    out.text.push_str(rest);
    Ok(())
}

/// Index of the `}` closing a `${` whose body starts at `s`, counting nested braces.
fn matching_brace(s: &str) -> Option<usize> {
    let mut depth = 0usize;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return Some(i),
            '}' => depth -= 1,
            _ => {}
        }
    }
    None
}

fn braced(
    body: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    out: &mut Interpolated,
    depth: usize,
) -> Result<(), InterpolationError> {
    let name_len = body.find(|c: char| !is_name_char(c)).unwrap_or(body.len());
    let name = &body[..name_len];
    if !name.chars().next().is_some_and(is_name_start) {
        return Err(InterpolationError::Syntax(
            "a variable name starts with a letter or `_`",
        ));
    }
    let op = &body[name_len..];
    let value = lookup(name);
    let (colon, op) = match op.strip_prefix(':') {
        Some(rest) => (true, rest),
        None => (false, op),
    };
    // "missing": unset, or (with `:`) empty.
    let missing = match &value {
        None => true,
        Some(v) => colon && v.is_empty(),
    };
    let Some(kind) = op.chars().next() else {
        if colon {
            return Err(InterpolationError::Syntax(
                "`:` must be followed by -, ? or +",
            ));
        }
        match value {
            Some(v) => out.text.push_str(&v),
            None => out.unset.push(name.to_owned()),
        }
        return Ok(());
    };
    let arg = &op[1..];
    match kind {
        '-' => match value {
            Some(v) if !missing => out.text.push_str(&v),
            _ => expand(arg, lookup, out, depth + 1)?,
        },
        '+' => {
            if !missing {
                expand(arg, lookup, out, depth + 1)?;
            }
        }
        '?' => match value {
            Some(v) if !missing => out.text.push_str(&v),
            _ => {
                let mut message = Interpolated::default();
                expand(arg, lookup, &mut message, depth + 1)?;
                return Err(InterpolationError::Required {
                    name: name.to_owned(),
                    message: message.text,
                });
            }
        },
        _ => {
            return Err(InterpolationError::Syntax(
                "after the name comes `}`, `-`, `:-`, `?`, `:?`, `+` or `:+`",
            ));
        }
    }
    Ok(())
}

/// Interpolates every string value under `node` (not keys). `path` names `node` for
/// errors; names of unset variables are appended to `unset`.
pub fn interpolate_tree(
    node: &mut Node,
    path: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    unset: &mut Vec<String>,
) -> Result<(), ComposeError> {
    match &mut node.value {
        Value::Str(s) => {
            if s.contains('$') {
                let done = interpolate(s, lookup).map_err(|err| {
                    let kind = match err {
                        InterpolationError::Required { name, message } => {
                            ErrorKind::RequiredVariable { name, message }
                        }
                        InterpolationError::Syntax(reason) => ErrorKind::Interpolation {
                            text: s.clone(),
                            reason,
                        },
                    };
                    ComposeError::at(&node.loc, path, kind)
                })?;
                *s = done.text;
                unset.extend(done.unset);
            }
        }
        Value::Seq(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                interpolate_tree(item, &format!("{path}[{i}]"), lookup, unset)?;
            }
        }
        Value::Map(entries) => {
            for e in entries {
                let child = super::decode::join(path, &e.key);
                interpolate_tree(&mut e.value, &child, lookup, unset)?;
            }
        }
        Value::Null | Value::Bool { .. } | Value::Int { .. } | Value::Float { .. } => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env() -> HashMap<&'static str, &'static str> {
        HashMap::from([
            ("SET", "value"),
            ("EMPTY", ""),
            ("TAG", "1.2"),
            ("_X1", "x"),
        ])
    }

    fn run(s: &str) -> Result<Interpolated, InterpolationError> {
        let env = env();
        interpolate(s, &|n| env.get(n).map(|v| (*v).to_owned()))
    }

    fn text(s: &str) -> String {
        run(s).expect("interpolates").text
    }

    #[test]
    fn plain_references() {
        assert_eq!(text("img:${TAG}"), "img:1.2");
        assert_eq!(text("img:$TAG"), "img:1.2");
        assert_eq!(text("$SET-$_X1"), "value-x");
        assert_eq!(text("${SET}${SET}"), "valuevalue");
        assert_eq!(text("no variables"), "no variables");
    }

    #[test]
    fn unset_references_are_empty_and_reported() {
        let r = run("a${NOPE}b$ALSO_NOT").expect("interpolates");
        assert_eq!(r.text, "ab");
        assert_eq!(r.unset, vec!["NOPE".to_owned(), "ALSO_NOT".to_owned()]);
    }

    #[test]
    fn defaults_follow_the_table() {
        assert_eq!(text("${NOPE:-d}"), "d");
        assert_eq!(text("${EMPTY:-d}"), "d");
        assert_eq!(text("${SET:-d}"), "value");
        assert_eq!(text("${NOPE-d}"), "d");
        assert_eq!(text("${EMPTY-d}"), "");
        assert_eq!(text("${SET-d}"), "value");
        assert_eq!(text("${NOPE:-}"), "");
        assert!(run("${NOPE:-d}").expect("ok").unset.is_empty());
    }

    #[test]
    fn alternatives_follow_the_table() {
        assert_eq!(text("${NOPE:+a}"), "");
        assert_eq!(text("${EMPTY:+a}"), "");
        assert_eq!(text("${SET:+a}"), "a");
        assert_eq!(text("${NOPE+a}"), "");
        assert_eq!(text("${EMPTY+a}"), "a");
        assert_eq!(text("${SET+a}"), "a");
    }

    #[test]
    fn required_variables_fail_with_their_message() {
        assert_eq!(
            run("${NOPE:?set NOPE to the db password}"),
            Err(InterpolationError::Required {
                name: "NOPE".into(),
                message: "set NOPE to the db password".into()
            })
        );
        assert!(matches!(
            run("${EMPTY:?}"),
            Err(InterpolationError::Required { .. })
        ));
        assert_eq!(text("${EMPTY?m}"), "");
        assert!(matches!(
            run("${NOPE?m}"),
            Err(InterpolationError::Required { .. })
        ));
        assert_eq!(text("${SET:?m}"), "value");
    }

    #[test]
    fn nested_defaults_are_interpolated() {
        assert_eq!(text("${NOPE:-${SET}}"), "value");
        assert_eq!(text("${NOPE:-${ALSO:-deep}}"), "deep");
        assert_eq!(text("${NOPE:-a{b}c}"), "a{b}c");
        assert_eq!(text("${SET:+[$TAG]}"), "[1.2]");
    }

    #[test]
    fn dollar_escapes_and_lone_dollars() {
        assert_eq!(text("$$HOME"), "$HOME");
        assert_eq!(text("$${SET}"), "${SET}");
        assert_eq!(text("cost: 5$"), "cost: 5$");
        assert_eq!(text("awk '{print $1}'"), "awk '{print $1}'");
        assert_eq!(text("a $ b"), "a $ b");
        assert_eq!(text("$$$$"), "$$");
    }

    #[test]
    fn malformed_braces_are_errors() {
        for bad in [
            "${", "${SET", "${}", "${1X}", "${SET/x}", "${SET:}", "${SET:x}", "${ SET}",
        ] {
            assert!(
                matches!(run(bad), Err(InterpolationError::Syntax(_))),
                "{bad} should fail"
            );
        }
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        let s = format!("{}x{}", "${A:-".repeat(10_000), "}".repeat(10_000));
        assert!(matches!(run(&s), Err(InterpolationError::Syntax(_))));
    }
}
