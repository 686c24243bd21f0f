//! The one error a compose file can produce: where it is (file:line:column), which key
//! (`services.web.deploy.replicas`), and what is wrong with it. Loading stops at the
//! first error, so a user always sees exactly one.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

/// A position in a compose (or env) file, 1-based as editors count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loc {
    /// The file as the user named it (`-f deploy/app.yaml` shows `deploy/app.yaml`).
    pub file: Arc<str>,
    pub line: u32,
    pub column: u32,
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// Where an error points: a position, or a whole file when there is none (a file that
/// cannot be read, a key that is missing from every file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    At(Loc),
    File(Arc<str>),
    /// Not tied to a file: the command line (`-p`), the environment.
    CommandLine,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::At(loc) => loc.fmt(f),
            Origin::File(file) => f.write_str(file),
            Origin::CommandLine => f.write_str("command line"),
        }
    }
}

/// A compose project that cannot be loaded. Displays as
/// `app.yaml:7:15: services.web.deploy.replicas: expected an integer, found "three"`.
#[derive(Debug, thiserror::Error)]
#[error("{origin}: {}{kind}", path_prefix(.path))]
pub struct ComposeError {
    pub origin: Origin,
    /// The key's path from the document root (`services.web.ports[1]`); empty for
    /// errors about a whole document.
    pub path: String,
    pub kind: ErrorKind,
}

fn path_prefix(path: &str) -> String {
    if path.is_empty() {
        String::new()
    } else {
        format!("{path}: ")
    }
}

impl ComposeError {
    pub(crate) fn at(loc: &Loc, path: &str, kind: ErrorKind) -> Self {
        ComposeError {
            origin: Origin::At(loc.clone()),
            path: path.to_owned(),
            kind,
        }
    }

    /// Line and column, when the error has a position.
    pub fn loc(&self) -> Option<&Loc> {
        match &self.origin {
            Origin::At(loc) => Some(loc),
            _ => None,
        }
    }
}

/// What is wrong. Each variant says it in words a compose user knows.
#[derive(Debug, thiserror::Error)]
pub enum ErrorKind {
    #[error("cannot read {path}: {err}")]
    Read { path: PathBuf, err: std::io::Error },
    #[error("the file is {size} bytes; compose files are limited to {limit} bytes")]
    TooLarge { size: u64, limit: u64 },
    #[error("not valid UTF-8")]
    NotUtf8,
    /// The YAML itself is broken (or breaks a parsing limit: depth, aliases, size).
    #[error("invalid YAML: {message}")]
    Yaml { message: String },
    #[error("the document must be a mapping, found {found}")]
    NotAMapping { found: String },
    #[error("unknown key `{key}`{}", suggestion.as_ref().map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default())]
    UnknownKey {
        key: String,
        suggestion: Option<&'static str>,
    },
    #[error("`{key}` is not supported by skiff: {reason}")]
    Unsupported { key: String, reason: &'static str },
    #[error("expected {expected}, found {found}")]
    WrongType {
        expected: &'static str,
        found: String,
    },
    #[error("{message}")]
    Invalid { message: String },
    #[error("missing `{key}`{}", if why.is_empty() { String::new() } else { format!(": {why}") })]
    Missing {
        key: &'static str,
        why: &'static str,
    },
    #[error("{kind} `{name}` is not defined{}", if hint.is_empty() { String::new() } else { format!(" ({hint})") })]
    Undefined {
        kind: &'static str,
        name: String,
        hint: &'static str,
    },
    #[error("required variable {name} is missing a value{}", if message.is_empty() { String::new() } else { format!(": {message}") })]
    RequiredVariable { name: String, message: String },
    #[error("invalid interpolation in {text:?}: {reason}")]
    Interpolation { text: String, reason: &'static str },
    #[error("invalid project name {name:?}: {reason}")]
    ProjectName { name: String, reason: &'static str },
    #[error("no compose file: none of {tried} in {dir}, and no -f given")]
    NoFile { tried: String, dir: PathBuf },
}

/// Short description of a found value for "expected X, found Y": the value itself for
/// scalars (quoted when it is a string), its kind for collections.
pub(crate) fn describe(value: &super::tree::Value) -> String {
    use super::tree::Value;
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool { value, .. } => value.to_string(),
        Value::Int { text, .. } | Value::Float { text, .. } => text.clone(),
        Value::Str(s) => {
            let mut shown: String = s.chars().take(60).collect();
            if shown.len() < s.len() {
                shown.push('…');
            }
            format!("{shown:?}")
        }
        Value::Seq(_) => "a list".to_owned(),
        Value::Map(_) => "a mapping".to_owned(),
    }
}

/// The closest of `candidates` to `key` when it is a plausible typo (edit distance at
/// most 2, and less than half the key's length).
pub(crate) fn suggest(key: &str, candidates: &[&'static str]) -> Option<&'static str> {
    let mut best: Option<(usize, &'static str)> = None;
    for &c in candidates {
        let d = edit_distance(key, c);
        if d <= 2 && d * 2 < key.len().max(2) && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, c));
        }
    }
    best.map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_catch_typos_but_not_unrelated_words() {
        let keys = ["replicas", "resources", "restart_policy", "mode"];
        assert_eq!(suggest("replica", &keys), Some("replicas"));
        assert_eq!(suggest("resources", &keys), Some("resources"));
        assert_eq!(suggest("restart-policy", &keys), Some("restart_policy"));
        assert_eq!(suggest("xyz", &keys), None);
        assert_eq!(suggest("mod", &keys), Some("mode"));
        assert_eq!(suggest("mx", &keys), None, "too short to guess");
    }

    #[test]
    fn display_has_position_path_and_message() {
        let loc = Loc {
            file: "app.yaml".into(),
            line: 7,
            column: 15,
        };
        let err = ComposeError::at(
            &loc,
            "services.web.deploy.replicas",
            ErrorKind::WrongType {
                expected: "an integer",
                found: "\"three\"".into(),
            },
        );
        assert_eq!(
            err.to_string(),
            "app.yaml:7:15: services.web.deploy.replicas: expected an integer, found \"three\""
        );
    }
}
