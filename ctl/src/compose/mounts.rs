//! The short volume syntax `[SOURCE:]TARGET[:MODE]` and the `tmpfs:` entries
//! `/path[:size=64m,mode=1777]`, turned into long-form descriptions. A source that looks
//! like a path (`/`, `.`, `~`) is a bind mount, anything else names a volume.

/// A short-syntax volume in long form. Options that skiff refuses (propagation,
/// SELinux relabeling, nocopy) are kept so the decoder can name them with a reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LongVolume {
    pub kind: &'static str,
    pub source: Option<String>,
    pub target: String,
    pub read_only: bool,
    pub propagation: Option<String>,
    pub selinux: Option<String>,
    pub nocopy: bool,
    pub consistency: Option<String>,
}

/// Parses one short-syntax volume entry.
pub fn parse_short(spec: &str) -> Result<LongVolume, String> {
    let parts: Vec<&str> = spec.split(':').collect();
    let (source, target, mode) = match parts.as_slice() {
        [t] => (None, *t, None),
        [s, t] => (Some(*s), *t, None),
        [s, t, m] => (Some(*s), *t, Some(*m)),
        _ => {
            return Err(format!(
                "{spec:?} is not a volume (forms: /target, name:/target, /host:/target:ro)"
            ));
        }
    };
    if target.is_empty() {
        return Err(format!("{spec:?}: the target path is empty"));
    }
    let source = source.filter(|s| !s.is_empty());
    let kind = match source {
        Some(s) if s.starts_with(['/', '.', '~']) => "bind",
        _ => "volume",
    };
    let mut v = LongVolume {
        kind,
        source: source.map(str::to_owned),
        target: target.to_owned(),
        read_only: false,
        propagation: None,
        selinux: None,
        nocopy: false,
        consistency: None,
    };
    for opt in mode.into_iter().flat_map(|m| m.split(',')) {
        match opt {
            "ro" => v.read_only = true,
            "rw" => v.read_only = false,
            "z" | "Z" => v.selinux = Some(opt.to_owned()),
            "nocopy" => v.nocopy = true,
            "cached" | "delegated" | "consistent" => v.consistency = Some(opt.to_owned()),
            "shared" | "slave" | "private" | "rshared" | "rslave" | "rprivate" => {
                v.propagation = Some(opt.to_owned());
            }
            other => {
                return Err(format!(
                    "{spec:?}: unknown mode {other:?} (ro, rw, z, Z, nocopy, cached, delegated, or a propagation)"
                ));
            }
        }
    }
    Ok(v)
}

/// A `tmpfs:` entry: target path, size in bytes, permission bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TmpfsEntry {
    pub target: String,
    pub size: Option<u64>,
    pub mode: Option<u32>,
}

/// Parses `/run` or `/run:size=64m,mode=1777`.
pub fn parse_tmpfs(spec: &str) -> Result<TmpfsEntry, String> {
    let (target, opts) = match spec.split_once(':') {
        Some((t, o)) => (t, Some(o)),
        None => (spec, None),
    };
    let mut entry = TmpfsEntry {
        target: target.to_owned(),
        size: None,
        mode: None,
    };
    for opt in opts.into_iter().flat_map(|o| o.split(',')) {
        match opt.split_once('=') {
            Some(("size", v)) => entry.size = Some(super::units::parse_bytes(v)?),
            Some(("mode", v)) => entry.mode = Some(parse_mode(v)?),
            _ => {
                return Err(format!(
                    "{spec:?}: unsupported tmpfs option {opt:?} (skiff knows size= and mode=)"
                ));
            }
        }
    }
    Ok(entry)
}

/// Permission bits written in octal (`1777`, `0755`, `0o755`).
pub fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.trim().trim_start_matches("0o");
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o7777 => Ok(m),
        _ => Err(format!("{s:?} is not an octal mode like 1777 or 0755")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_volumes() {
        let v = parse_short("db-data:/var/lib/mysql").expect("parses");
        assert_eq!(
            (v.kind, v.source.as_deref(), v.target.as_str()),
            ("volume", Some("db-data"), "/var/lib/mysql")
        );
        let v = parse_short("./conf:/etc/nginx/conf.d:ro").expect("parses");
        assert_eq!((v.kind, v.read_only), ("bind", true));
        let v = parse_short("/var/run/docker.sock:/sock:rw,rslave").expect("parses");
        assert_eq!(v.propagation.as_deref(), Some("rslave"));
        let v = parse_short("/data").expect("parses");
        assert_eq!((v.kind, v.source), ("volume", None));
        let v = parse_short("~/cache:/cache:cached").expect("parses");
        assert_eq!((v.kind, v.consistency.as_deref()), ("bind", Some("cached")));
        assert!(parse_short("a:b:c:d").is_err());
        assert!(parse_short("data:").is_err());
        assert!(parse_short("data:/x:rx").is_err());
    }

    #[test]
    fn tmpfs_entries() {
        assert_eq!(
            parse_tmpfs("/run:size=64m,mode=1777"),
            Ok(TmpfsEntry {
                target: "/run".into(),
                size: Some(64 << 20),
                mode: Some(0o1777)
            })
        );
        assert_eq!(parse_tmpfs("/tmp").map(|t| t.size), Ok(None));
        assert!(parse_tmpfs("/tmp:uid=1000").is_err());
        assert!(parse_tmpfs("/tmp:mode=999").is_err());
    }
}
