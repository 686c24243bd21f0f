//! `.env` and `env_file` files in Docker Compose's format: `KEY=value` lines, optional
//! `export `, `#` comments, single quotes (literal), double quotes (escapes,
//! interpolation, may span lines), unquoted values (trimmed, ` #` starts a comment,
//! interpolation). A bare `KEY` takes its value from the environment.

use std::sync::Arc;

use super::error::{ComposeError, ErrorKind, Loc};
use super::interpolate::{InterpolationError, interpolate};

/// Largest env file accepted, in bytes.
pub const MAX_ENV_FILE_BYTES: usize = 1024 * 1024;

/// One `KEY=value` of an env file, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvLine {
    pub key: String,
    /// `None` for a bare `KEY`: inherit from the environment.
    pub value: Option<String>,
}

/// Parses an env file. `lookup` resolves `${VAR}` in values; variables set earlier in
/// the same file are seen after it (the environment wins, as in Compose).
pub fn parse(
    file: &Arc<str>,
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<EnvLine>, ComposeError> {
    if text.len() > MAX_ENV_FILE_BYTES {
        return Err(ComposeError {
            origin: super::error::Origin::File(file.clone()),
            path: String::new(),
            kind: ErrorKind::TooLarge {
                size: text.len() as u64,
                limit: MAX_ENV_FILE_BYTES as u64,
            },
        });
    }
    let mut out: Vec<EnvLine> = Vec::new();
    let mut p = Parser {
        file,
        text,
        pos: 0,
        line: 1,
        line_start: 0,
    };
    loop {
        p.skip_blank_and_comments();
        if p.pos >= text.len() {
            break;
        }
        let key_loc = p.loc();
        if let Some(after) = p.rest().strip_prefix("export ") {
            let skipped = p.rest().len() - after.trim_start().len();
            p.pos += skipped;
        }
        let rest = p.rest();
        let key_len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
            .unwrap_or(rest.len());
        let key = rest[..key_len].to_owned();
        if key.is_empty() {
            return Err(p.error(&key_loc, &key, "expected KEY=value"));
        }
        p.pos += key_len;
        p.skip_spaces();
        match p.peek() {
            None | Some('\n') | Some('\r') | Some('#') => {
                p.skip_line();
                out.push(EnvLine { key, value: None });
                continue;
            }
            Some('=') | Some(':') => p.pos += 1,
            Some(_) => {
                return Err(p.error(&key_loc, &key, "expected `=` after the variable name"));
            }
        }
        p.skip_spaces();
        let value_loc = p.loc();
        let seen = |name: &str| -> Option<String> {
            lookup(name).or_else(|| {
                out.iter()
                    .rev()
                    .find(|l| l.key == name)
                    .and_then(|l| l.value.clone())
            })
        };
        let value = match p.peek() {
            Some('\'') => {
                p.pos += 1;
                let body = p.until_quote('\'', &value_loc, &key)?;
                p.expect_line_end(&key)?;
                body
            }
            Some('"') => {
                p.pos += 1;
                let raw = p.until_quote('"', &value_loc, &key)?;
                p.expect_line_end(&key)?;
                let unescaped = unescape(&raw);
                expand(&unescaped, &seen).map_err(|r| p.error(&value_loc, &key, &r))?
            }
            _ => {
                let line_end = p.rest().find('\n').unwrap_or(p.rest().len());
                let raw = &p.rest()[..line_end];
                let raw = match raw.find(" #").or_else(|| raw.find("\t#")) {
                    Some(i) => &raw[..i],
                    None => raw,
                };
                let raw = raw.trim().to_owned();
                p.skip_line();
                expand(&raw, &seen).map_err(|r| p.error(&value_loc, &key, &r))?
            }
        };
        out.push(EnvLine {
            key,
            value: Some(value),
        });
    }
    Ok(out)
}

fn expand(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    match interpolate(s, lookup) {
        Ok(done) => Ok(done.text),
        Err(InterpolationError::Required { name, message }) => Err(format!(
            "required variable {name} is missing a value{}",
            if message.is_empty() {
                String::new()
            } else {
                format!(": {message}")
            }
        )),
        Err(InterpolationError::Syntax(reason)) => {
            Err(format!("invalid interpolation in {s:?}: {reason}"))
        }
    }
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('t') => out.push('\t'),
            Some('"') => out.push('"'),
            Some('\\') => out.push('\\'),
            // `\$` keeps the dollar from interpolation: `$$` does that after unescaping.
            Some('$') => out.push_str("$$"),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

struct Parser<'a> {
    file: &'a Arc<str>,
    text: &'a str,
    pos: usize,
    line: u32,
    line_start: usize,
}

impl Parser<'_> {
    fn rest(&self) -> &str {
        &self.text[self.pos..]
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn loc(&self) -> Loc {
        let col = self.text[self.line_start..self.pos].chars().count() + 1;
        Loc {
            file: self.file.clone(),
            line: self.line,
            column: u32::try_from(col).unwrap_or(u32::MAX),
        }
    }

    fn error(&self, loc: &Loc, key: &str, message: &str) -> ComposeError {
        ComposeError::at(
            loc,
            key,
            ErrorKind::Invalid {
                message: message.to_owned(),
            },
        )
    }

    fn advance_to(&mut self, end: usize) {
        for (i, c) in self.text[self.pos..end].char_indices() {
            if c == '\n' {
                self.line += 1;
                self.line_start = self.pos + i + 1;
            }
        }
        self.pos = end;
    }

    fn skip_spaces(&mut self) {
        let n = self.rest().len() - self.rest().trim_start_matches([' ', '\t']).len();
        self.pos += n;
    }

    fn skip_line(&mut self) {
        let end = self
            .rest()
            .find('\n')
            .map_or(self.text.len(), |i| self.pos + i + 1);
        self.advance_to(end);
    }

    fn skip_blank_and_comments(&mut self) {
        loop {
            let trimmed = self.rest().trim_start_matches([' ', '\t', '\r']);
            let skipped = self.rest().len() - trimmed.len();
            self.pos += skipped;
            match self.peek() {
                Some('\n') | Some('#') => self.skip_line(),
                _ => return,
            }
        }
    }

    /// The text up to the closing `quote` (a backslash escapes it in double quotes).
    fn until_quote(&mut self, quote: char, start: &Loc, key: &str) -> Result<String, ComposeError> {
        let mut escaped = false;
        for (i, c) in self.rest().char_indices() {
            if escaped {
                escaped = false;
                continue;
            }
            if c == '\\' && quote == '"' {
                escaped = true;
                continue;
            }
            if c == quote {
                let body = self.rest()[..i].to_owned();
                let end = self.pos + i + 1;
                self.advance_to(end);
                return Ok(body);
            }
        }
        Err(self.error(start, key, &format!("unterminated {quote}-quoted value")))
    }

    /// After a closing quote only spaces and a comment may follow.
    fn expect_line_end(&mut self, key: &str) -> Result<(), ComposeError> {
        self.skip_spaces();
        match self.peek() {
            None | Some('\n') | Some('\r') | Some('#') => {
                self.skip_line();
                Ok(())
            }
            Some(_) => Err(self.error(&self.loc(), key, "unexpected text after the closing quote")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(text: &str) -> Vec<(String, Option<String>)> {
        parse(&Arc::from(".env"), text, &|n| {
            (n == "HOME").then(|| "/root".to_owned())
        })
        .expect("parses")
        .into_iter()
        .map(|l| (l.key, l.value))
        .collect()
    }

    fn pair(k: &str, v: &str) -> (String, Option<String>) {
        (k.to_owned(), Some(v.to_owned()))
    }

    #[test]
    fn the_forms_compose_accepts() {
        let text = "# comment\n\nA=1\nexport B = two words \nC='single $HOME'\nD=\"double\\n$HOME\"\nE=x # comment\nF=#notacomment\nG:\"yaml style\"\nH\nI=\n";
        assert_eq!(
            parse_ok(text),
            vec![
                pair("A", "1"),
                pair("B", "two words"),
                pair("C", "single $HOME"),
                pair("D", "double\n/root"),
                pair("E", "x"),
                pair("F", "#notacomment"),
                pair("G", "yaml style"),
                ("H".to_owned(), None),
                pair("I", ""),
            ]
        );
    }

    #[test]
    fn later_lines_see_earlier_ones_but_the_environment_wins() {
        assert_eq!(
            parse_ok("HOME=/nope\nBASE=/srv\nDATA=${BASE}/data\nH2=$HOME\n"),
            vec![
                pair("HOME", "/nope"),
                pair("BASE", "/srv"),
                pair("DATA", "/srv/data"),
                pair("H2", "/root"),
            ]
        );
    }

    #[test]
    fn double_quotes_span_lines() {
        assert_eq!(
            parse_ok("KEY=\"line one\nline two\"\nNEXT=1\n"),
            vec![pair("KEY", "line one\nline two"), pair("NEXT", "1")]
        );
    }

    #[test]
    fn errors_point_at_the_line() {
        let err = parse(&Arc::from(".env"), "A=1\nB='open\n", &|_| None).expect_err("bad");
        assert_eq!(err.to_string(), ".env:2:3: B: unterminated '-quoted value");
        let err = parse(&Arc::from(".env"), "A=1\n=x\n", &|_| None).expect_err("bad");
        assert_eq!(err.to_string(), ".env:2:1: expected KEY=value");
        let err = parse(&Arc::from(".env"), "A B\n", &|_| None).expect_err("bad");
        assert_eq!(
            err.to_string(),
            ".env:1:1: A: expected `=` after the variable name"
        );
        let err = parse(&Arc::from(".env"), "P=${NEED:?set it}\n", &|_| None).expect_err("bad");
        assert_eq!(
            err.to_string(),
            ".env:1:3: P: required variable NEED is missing a value: set it"
        );
    }
}
