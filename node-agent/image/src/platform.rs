//! Platforms (`linux/amd64`, `linux/arm/v7`) and the choice of one manifest from an
//! image index, as containerd's default matcher does: same OS and architecture, and the
//! best compatible variant.

use std::fmt;

use serde::{Deserialize, Serialize};

/// An OS/architecture/variant triple in OCI spelling.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Self {
        Self {
            os: os.to_owned(),
            architecture: architecture.to_owned(),
            variant: variant.map(str::to_owned),
        }
    }

    /// The platform this process runs on, in OCI names (`x86_64` is `amd64`).
    pub fn host() -> Self {
        let (arch, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", Some("v8")),
            "arm" => ("arm", Some("v7")),
            "x86" => ("386", None),
            "powerpc64" => ("ppc64le", None),
            other => (other, None),
        };
        Self::new(std::env::consts::OS, arch, variant)
    }

    /// How well `candidate` runs here: `None` if not at all, larger is better.
    /// arm64 images without a variant are v8; an armv7 host runs v7, v6 and v5 images.
    fn score(&self, candidate: &Platform) -> Option<u8> {
        if candidate.os != self.os || candidate.architecture != self.architecture {
            return None;
        }
        let want = self.variant.as_deref();
        let have = candidate.variant.as_deref();
        if have == want {
            return Some(10);
        }
        match (self.architecture.as_str(), want, have) {
            ("arm64", Some("v8"), None) => Some(9),
            (_, _, None) => Some(5),
            ("arm", Some(w), Some(h)) if arm_level(h) <= arm_level(w) => Some(arm_level(h)),
            _ => None,
        }
    }
}

fn arm_level(v: &str) -> u8 {
    v.trim_start_matches('v').parse().unwrap_or(u8::MAX)
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// Picks the index entry (by position) that best matches `want`; entries without a
/// platform (attestations, signatures) never match.
pub fn choose<'a, I>(want: &Platform, candidates: I) -> Option<usize>
where
    I: IntoIterator<Item = Option<&'a Platform>>,
{
    candidates
        .into_iter()
        .enumerate()
        .filter_map(|(i, p)| Some((i, want.score(p?)?)))
        // first of the best: stable order as the index lists them
        .fold(None, |best: Option<(usize, u8)>, (i, s)| match best {
            Some((_, bs)) if bs >= s => best,
            _ => Some((i, s)),
        })
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Platform {
        let mut it = s.split('/');
        let os = it.next().expect("os");
        let arch = it.next().expect("arch");
        Platform::new(os, arch, it.next())
    }

    #[test]
    fn picks_exact_os_and_arch() {
        let list = [p("linux/arm64"), p("linux/amd64"), p("windows/amd64")];
        let idx = choose(&p("linux/amd64"), list.iter().map(Some));
        assert_eq!(idx, Some(1));
        assert_eq!(choose(&p("linux/s390x"), list.iter().map(Some)), None);
    }

    #[test]
    fn prefers_matching_variant_and_tolerates_missing() {
        let list = [p("linux/arm/v6"), p("linux/arm/v7"), p("linux/arm64")];
        assert_eq!(choose(&p("linux/arm/v7"), list.iter().map(Some)), Some(1));
        assert_eq!(choose(&p("linux/arm/v6"), list.iter().map(Some)), Some(0));
        assert_eq!(choose(&p("linux/arm/v5"), list.iter().map(Some)), None);
        assert_eq!(choose(&p("linux/arm64/v8"), list.iter().map(Some)), Some(2));
    }

    #[test]
    fn skips_entries_without_platform() {
        let amd = p("linux/amd64");
        let list = [None, Some(&amd)];
        assert_eq!(choose(&amd, list), Some(1));
    }

    #[test]
    fn host_is_linux() {
        let h = Platform::host();
        assert_eq!(h.os, "linux");
        assert!(!h.architecture.is_empty());
    }
}
