//! Reading typed values out of the located tree. Each reader takes a node and its key
//! path and either returns the value or the one error that points at it. Strings are
//! converted where Compose converts them (`replicas: "3"` after interpolation is 3),
//! and a mapping's keys are checked against what skiff knows, what it knows but does
//! not support (with the reason), and `x-` extensions (ignored).

use std::time::Duration;

use super::error::{ComposeError, ErrorKind, Loc, describe, suggest};
use super::tree::{Entry, Node, Value};
use super::units;

pub(crate) type Result<T> = std::result::Result<T, ComposeError>;

/// `services` + `web` → `services.web`.
pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// `services.web.ports` + 1 → `services.web.ports[1]`.
pub fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

/// The keys a mapping may have.
pub struct Schema {
    pub known: &'static [&'static str],
    /// Keys Compose defines that skiff refuses, each with the reason.
    pub unsupported: &'static [(&'static str, &'static str)],
}

/// A mapping whose keys have been checked against a schema.
pub struct Fields<'a> {
    entries: &'a [Entry],
    pub path: String,
}

impl<'a> Fields<'a> {
    /// Checks `node` is a mapping whose keys are all in `schema` (or `x-`).
    pub fn of(node: &'a Node, path: &str, schema: &Schema) -> Result<Self> {
        let Value::Map(entries) = &node.value else {
            return Err(wrong(node, path, "a mapping"));
        };
        for e in entries {
            if e.key.starts_with("x-") || schema.known.contains(&e.key.as_str()) {
                continue;
            }
            let child = join(path, &e.key);
            if let Some((key, reason)) = schema.unsupported.iter().find(|(k, _)| *k == e.key) {
                return Err(ComposeError::at(
                    &e.key_loc,
                    &child,
                    ErrorKind::Unsupported {
                        key: (*key).to_owned(),
                        reason,
                    },
                ));
            }
            return Err(ComposeError::at(
                &e.key_loc,
                &child,
                ErrorKind::UnknownKey {
                    key: e.key.clone(),
                    suggestion: suggest(&e.key, schema.known),
                },
            ));
        }
        Ok(Fields {
            entries,
            path: path.to_owned(),
        })
    }

    /// The value of `key`, unless absent or null.
    pub fn get(&self, key: &str) -> Option<&'a Node> {
        self.entry(key).map(|e| &e.value)
    }

    /// The entry of `key` (for its key position), unless absent or null.
    pub fn entry(&self, key: &str) -> Option<&'a Entry> {
        self.entries
            .iter()
            .find(|e| e.key == key)
            .filter(|e| !e.value.is_null())
    }

    /// The path of `key` in this mapping.
    pub fn path_of(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// Reads `key` with `read` when present.
    pub fn opt<T>(&self, key: &str, read: impl Fn(&Node, &str) -> Result<T>) -> Result<Option<T>> {
        match self.get(key) {
            Some(n) => read(n, &self.path_of(key)).map(Some),
            None => Ok(None),
        }
    }
}

/// "expected {what}, found ..." at `node`.
pub fn wrong(node: &Node, path: &str, expected: &'static str) -> ComposeError {
    ComposeError::at(
        &node.loc,
        path,
        ErrorKind::WrongType {
            expected,
            found: describe(&node.value),
        },
    )
}

/// A free-form complaint about the value at `loc`.
pub fn invalid(loc: &Loc, path: &str, message: impl Into<String>) -> ComposeError {
    ComposeError::at(
        loc,
        path,
        ErrorKind::Invalid {
            message: message.into(),
        },
    )
}

/// A string (numbers and booleans as spelled).
pub fn string(node: &Node, path: &str) -> Result<String> {
    node.scalar_text()
        .map(str::to_owned)
        .ok_or_else(|| wrong(node, path, "a string"))
}

/// An integer, also from a string holding one (Compose casts after interpolation).
pub fn int(node: &Node, path: &str) -> Result<i64> {
    match &node.value {
        Value::Int { value, .. } => Ok(*value),
        Value::Str(s) => s
            .trim()
            .parse()
            .map_err(|_| wrong(node, path, "an integer")),
        _ => Err(wrong(node, path, "an integer")),
    }
}

/// A non-negative integer.
pub fn uint(node: &Node, path: &str) -> Result<u64> {
    let v = int(node, path)?;
    u64::try_from(v).map_err(|_| wrong(node, path, "a non-negative integer"))
}

/// An integer in `[lo, hi]`.
pub fn int_in(node: &Node, path: &str, lo: i64, hi: i64) -> Result<i64> {
    let v = int(node, path)?;
    if v < lo || v > hi {
        return Err(invalid(
            &node.loc,
            path,
            format!("{v} is out of range ({lo} to {hi})"),
        ));
    }
    Ok(v)
}

/// A number (integer or decimal), also from a string.
pub fn float(node: &Node, path: &str) -> Result<f64> {
    let v = match &node.value {
        Value::Int { value, .. } => *value as f64,
        Value::Float { value, .. } => *value,
        Value::Str(s) => s
            .trim()
            .parse()
            .map_err(|_| wrong(node, path, "a number"))?,
        _ => return Err(wrong(node, path, "a number")),
    };
    if !v.is_finite() {
        return Err(wrong(node, path, "a number"));
    }
    Ok(v)
}

/// A boolean; strings as Compose reads them (true/false, yes/no, on/off, y/n).
pub fn boolean(node: &Node, path: &str) -> Result<bool> {
    match &node.value {
        Value::Bool { value, .. } => Ok(*value),
        Value::Str(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "yes" | "y" | "on" => Ok(true),
            "false" | "no" | "n" | "off" => Ok(false),
            _ => Err(wrong(node, path, "true or false")),
        },
        _ => Err(wrong(node, path, "true or false")),
    }
}

/// A Go duration string (`1m30s`); a bare 0 is allowed.
pub fn duration(node: &Node, path: &str) -> Result<Duration> {
    match &node.value {
        Value::Int { value: 0, .. } => Ok(Duration::ZERO),
        Value::Str(s) => units::parse_duration(s).map_err(|m| invalid(&node.loc, path, m)),
        Value::Int { .. } | Value::Float { .. } => Err(invalid(
            &node.loc,
            path,
            format!(
                "a duration needs a unit: write \"{}s\" for seconds",
                node.scalar_text().unwrap_or_default()
            ),
        )),
        _ => Err(wrong(node, path, "a duration like \"10s\"")),
    }
}

/// A byte size: an integer (bytes) or a string with a unit (`512m`).
pub fn bytes(node: &Node, path: &str) -> Result<u64> {
    match &node.value {
        Value::Int { value, .. } => {
            u64::try_from(*value).map_err(|_| wrong(node, path, "a size like \"512m\""))
        }
        Value::Str(s) => units::parse_bytes(s).map_err(|m| invalid(&node.loc, path, m)),
        _ => Err(wrong(node, path, "a size like \"512m\"")),
    }
}

/// A CPU count (`0.5`, `"2"`) as nano-CPUs.
pub fn cpus(node: &Node, path: &str) -> Result<i64> {
    let text = match &node.value {
        Value::Int { text, .. } | Value::Float { text, .. } => text.clone(),
        Value::Str(s) => s.clone(),
        _ => return Err(wrong(node, path, "a number of CPUs")),
    };
    units::parse_cpus(&text).map_err(|m| invalid(&node.loc, path, m))
}

/// A list of strings.
pub fn string_list(node: &Node, path: &str) -> Result<Vec<String>> {
    let Value::Seq(items) = &node.value else {
        return Err(wrong(node, path, "a list of strings"));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| string(item, &index(path, i)))
        .collect()
}

/// A string or a list of strings, as a list.
pub fn string_or_list(node: &Node, path: &str) -> Result<Vec<String>> {
    match &node.value {
        Value::Seq(_) => string_list(node, path),
        _ => Ok(vec![string(node, path).map_err(|_| {
            wrong(node, path, "a string or a list of strings")
        })?]),
    }
}

/// A mapping of strings to strings (a null value is the empty string). List forms
/// (`- KEY=value`) were turned into mappings before.
pub fn string_map(node: &Node, path: &str) -> Result<std::collections::BTreeMap<String, String>> {
    let Value::Map(entries) = &node.value else {
        return Err(wrong(node, path, "a mapping of strings"));
    };
    let mut out = std::collections::BTreeMap::new();
    for e in entries {
        let value = if e.value.is_null() {
            String::new()
        } else {
            string(&e.value, &join(path, &e.key))?
        };
        out.insert(e.key.clone(), value);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compose::tree::parse;
    use std::sync::Arc;

    fn doc(text: &str) -> Node {
        parse(&Arc::from("t.yaml"), text.as_bytes()).expect("parses")
    }

    #[test]
    fn strings_are_cast_where_compose_casts_them() {
        let d = doc("a: \"3\"\nb: three\nc: yes\nd: 1.5\ne: 0\nf: 30\n");
        assert_eq!(int(d.get("a").expect("a"), "a").expect("int"), 3);
        let err = int(d.get("b").expect("b"), "x.b").expect_err("not an int");
        assert_eq!(
            err.to_string(),
            "t.yaml:2:4: x.b: expected an integer, found \"three\""
        );
        assert!(boolean(d.get("c").expect("c"), "c").expect("bool"));
        assert_eq!(float(d.get("d").expect("d"), "d").expect("f"), 1.5);
        assert_eq!(string(d.get("d").expect("d"), "d").expect("s"), "1.5");
        assert_eq!(
            duration(d.get("e").expect("e"), "e").expect("d"),
            Duration::ZERO
        );
        let err = duration(d.get("f").expect("f"), "f").expect_err("no unit");
        assert!(err.to_string().contains("write \"30s\""), "{err}");
    }

    #[test]
    fn fields_refuse_unknown_and_unsupported_keys_and_skip_extensions() {
        const S: Schema = Schema {
            known: &["image", "replicas"],
            unsupported: &[("privileged", "no")],
        };
        let d = doc("image: x\nx-note: anything\n");
        assert!(Fields::of(&d, "s", &S).is_ok());
        let d = doc("image: x\nreplica: 2\n");
        let err = Fields::of(&d, "s", &S).err().expect("unknown");
        assert_eq!(
            err.to_string(),
            "t.yaml:2:1: s.replica: unknown key `replica` (did you mean `replicas`?)"
        );
        let d = doc("privileged: true\n");
        let err = Fields::of(&d, "s", &S).err().expect("unsupported");
        assert_eq!(
            err.to_string(),
            "t.yaml:1:1: s.privileged: `privileged` is not supported by skiff: no"
        );
        let d = doc("[1]\n");
        let err = Fields::of(&d, "s", &S).err().expect("not a map");
        assert_eq!(
            err.to_string(),
            "t.yaml:1:1: s: expected a mapping, found a list"
        );
    }
}
