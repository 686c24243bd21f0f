//! Splitting a string `command:` or `entrypoint:` into arguments, shell-style, as
//! Compose does (go-shellwords): blanks separate words, single quotes are literal,
//! double quotes group, a backslash escapes the next character outside single quotes.
//! Nothing is expanded: the result is exec'd directly, not run by a shell. Unquoted
//! shell operators (`;`, `&`, `|`, `<`, `>`) are refused rather than silently cutting
//! the command short, as go-shellwords does.

/// Splits `line` into words, or says why it cannot.
pub fn split(line: &str) -> Result<Vec<String>, &'static str> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut single = false;
    let mut double = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if single {
            if c == '\'' {
                single = false;
            } else {
                word.push(c);
            }
            continue;
        }
        match c {
            '\\' => {
                in_word = true;
                match chars.next() {
                    // A backslash-newline joins lines, as in a shell.
                    Some('\n') => {}
                    Some(next) => word.push(next),
                    None => return Err("the command ends with a lone backslash"),
                }
            }
            '"' => {
                in_word = true;
                double = !double;
            }
            '\'' if !double => {
                in_word = true;
                single = true;
            }
            ' ' | '\t' | '\n' | '\r' if !double => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            ';' | '&' | '|' | '<' | '>' if !double => {
                return Err(
                    "shell operators (; & | < >) need a shell: write the command as [\"sh\", \"-c\", \"...\"]",
                );
            }
            _ => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if single || double {
        return Err("a quote is not closed");
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Vec<String> {
        split(s).expect("splits")
    }

    #[test]
    fn words_and_quotes() {
        assert_eq!(ok("nginx -g 'daemon off;'"), ["nginx", "-g", "daemon off;"]);
        assert_eq!(
            ok(r#"sh -c "echo \"hi there\" && sleep 1""#),
            ["sh", "-c", "echo \"hi there\" && sleep 1"]
        );
        assert_eq!(ok("  a\t b\n c  "), ["a", "b", "c"]);
        assert_eq!(ok(r"a\ b c"), ["a b", "c"]);
        assert_eq!(ok(r#"x "" ''"#), ["x", "", ""]);
        assert_eq!(ok("it'\"s'"), ["it\"s"]);
        assert_eq!(ok("--a=$HOME"), ["--a=$HOME"]);
        assert!(ok("").is_empty());
    }

    #[test]
    fn broken_lines_are_errors() {
        assert!(split("echo 'open").is_err());
        assert!(split("echo \"open").is_err());
        assert!(split("echo \\").is_err());
        assert!(split("echo a; rm -rf /").is_err());
        assert!(split("a | b").is_err());
        assert_eq!(ok("echo 'a; b' \"c | d\""), ["echo", "a; b", "c | d"]);
    }
}
