//! Hostile input never panics: random bytes, and thousands of mutations of the real
//! fixtures (byte flips, cuts, insertions of YAML syntax), each either loads or fails
//! with an error that has a position or a file. A fixed-seed generator keeps any
//! failure reproducible.

mod compose_common;

use compose_common::fixtures;
use skiffctl::compose::{ComposeError, LoadInput, Source, load};

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn try_load(
    bytes: Vec<u8>,
    env: &std::collections::BTreeMap<String, String>,
) -> Result<(), ComposeError> {
    load(&LoadInput {
        files: vec![Source {
            name: "fuzz.yaml".into(),
            bytes,
        }],
        env,
        project_name: None,
        project_dir: "/nonexistent/fuzz".into(),
        profiles: Vec::new(),
        // Env files never exist here: a fuzzed path must not read the real disk.
        read_file: &|_| Err(std::io::Error::from(std::io::ErrorKind::NotFound)),
    })
    .map(|_| ())
}

/// How one input ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    Loaded,
    /// Broken YAML (or not UTF-8, or over a limit).
    Syntax,
    /// Valid YAML that the compose decoder refused.
    Compose,
}

fn check(bytes: Vec<u8>, env: &std::collections::BTreeMap<String, String>) -> Outcome {
    let shown = String::from_utf8_lossy(&bytes).into_owned();
    let result = std::panic::catch_unwind(|| try_load(bytes, env));
    match result {
        Err(_) => panic!("panicked on input:\n{shown}"),
        Ok(Err(err)) => {
            let msg = err.to_string();
            assert!(
                !msg.contains("internal error"),
                "the parser thread panicked: {msg}\ninput:\n{shown}"
            );
            if let Some(loc) = err.loc() {
                assert!(loc.line >= 1 && loc.column >= 1, "{msg}\ninput:\n{shown}");
            }
            match err.kind {
                skiffctl::compose::ErrorKind::Yaml { .. }
                | skiffctl::compose::ErrorKind::NotUtf8
                | skiffctl::compose::ErrorKind::TooLarge { .. } => Outcome::Syntax,
                _ => Outcome::Compose,
            }
        }
        Ok(Ok(())) => Outcome::Loaded,
    }
}

const SNIPPETS: &[&str] = &[
    ":",
    "- ",
    "[",
    "]",
    "{",
    "}",
    "&a ",
    "*a",
    "<<: *a\n",
    "!reset ",
    "!override ",
    "${",
    "}",
    "$$",
    "${X:?boom}",
    "\"",
    "'",
    "\n",
    "  ",
    "\t",
    "#",
    "---\n",
    "...\n",
    "? ",
    "|\n",
    ">\n",
    "!!int ",
    "!!str ",
    "~",
    "null",
    "0x",
    "1e999",
    ".nan",
    "-1",
    "99999999999999999999",
    "8080:80",
    "/udp",
    "1m30s",
    "1.5GiB",
    "node.labels.a==",
    "%YAML 1.2\n",
    "\u{feff}",
    "\u{0}",
    "é",
    "🙂",
];

#[test]
fn random_bytes_never_panic() {
    let env = Default::default();
    let mut rng = Rng(0x5EED_0001);
    for _ in 0..400 {
        let len = rng.below(300);
        let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let _ = check(bytes, &env);
        // Random printable YAML-ish text is more likely to reach the decoder.
        let text: String = (0..rng.below(40))
            .map(|_| SNIPPETS[rng.below(SNIPPETS.len())])
            .collect();
        let _ = check(text.into_bytes(), &env);
    }
}

#[test]
fn mutated_fixtures_never_panic() {
    let env: std::collections::BTreeMap<String, String> = [("DB_PASSWORD", "x"), ("REPLICAS", "2")]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let mut seeds = Vec::new();
    for entry in walk(&fixtures()) {
        if entry.extension().is_some_and(|e| e == "yaml") {
            seeds.push(std::fs::read(&entry).expect("fixture"));
        }
    }
    assert!(seeds.len() >= 8, "fixtures found: {}", seeds.len());
    let mut rng = Rng(0xC0FF_EE00_1234);
    let mut outcomes = std::collections::BTreeMap::new();
    for round in 0..2500 {
        let mut bytes = seeds[round % seeds.len()].clone();
        for _ in 0..=rng.below(4) {
            let pos = rng.below(bytes.len() + 1);
            match rng.below(5) {
                0 if !bytes.is_empty() => {
                    let p = pos.min(bytes.len() - 1);
                    bytes[p] = rng.next() as u8;
                }
                1 => {
                    let end = (pos + rng.below(40)).min(bytes.len());
                    bytes.drain(pos.min(end)..end);
                }
                2 => {
                    let s = SNIPPETS[rng.below(SNIPPETS.len())].as_bytes();
                    bytes.splice(pos..pos, s.iter().copied());
                }
                3 => {
                    // Duplicate a slice somewhere else: repeated keys, deeper nesting.
                    let start = rng.below(bytes.len() + 1);
                    let end = (start + rng.below(80)).min(bytes.len());
                    let chunk: Vec<u8> = bytes[start..end].to_vec();
                    bytes.splice(pos..pos, chunk);
                }
                _ => bytes.truncate(pos),
            }
        }
        *outcomes.entry(check(bytes, &env)).or_insert(0) += 1;
    }
    // The mutations must reach every stage, or this test proves little.
    for outcome in [Outcome::Loaded, Outcome::Syntax, Outcome::Compose] {
        assert!(
            outcomes.get(&outcome).copied().unwrap_or(0) >= 50,
            "too few {outcome:?}: {outcomes:?}"
        );
    }
}

#[test]
fn pathological_documents_fail_fast() {
    let env = Default::default();
    let deep_flow = format!("services: {}{}", "[".repeat(5000), "]".repeat(5000));
    let deep_block: String = (0..2000)
        .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
        .collect();
    let mut laughs = String::from("a0: &a0 [x,x,x,x,x,x,x,x,x,x]\n");
    for i in 1..15 {
        let refs = vec![format!("*a{}", i - 1); 10].join(",");
        laughs.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
    }
    let long_key = format!("{}: 1\n", "k".repeat(100_000));
    let many_keys: String = (0..300_000).map(|i| format!("k{i}: {i}\n")).collect();
    let nested_interp = format!(
        "services:\n  web:\n    image: \"{}x{}\"\n",
        "${A:-".repeat(5000),
        "}".repeat(5000)
    );
    for doc in [
        deep_flow,
        deep_block,
        laughs,
        long_key,
        many_keys,
        nested_interp,
    ] {
        let started = std::time::Instant::now();
        let len = doc.len();
        assert!(
            try_load(doc.into_bytes(), &env).is_err(),
            "a {len}-byte monster loaded"
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "took {:?}",
            started.elapsed()
        );
    }
}

#[test]
fn big_but_valid_documents_load_in_linear_time() {
    let env = Default::default();
    // 40 000 variables, 2 000 services with 10 ports each, merged over a copy of itself.
    let mut doc = String::from("services:\n  big:\n    image: x\n    environment:\n");
    for i in 0..40_000 {
        doc.push_str(&format!("      - V{i}=value{i}\n"));
    }
    for s in 0..2_000 {
        doc.push_str(&format!("  s{s}:\n    image: x\n    ports:\n"));
        for p in 0..10 {
            doc.push_str(&format!("      - \"{}:80{p}\"\n", 10_000 + s * 10 + p));
        }
    }
    let started = std::time::Instant::now();
    let loaded = load(&LoadInput {
        files: vec![
            Source {
                name: "a.yaml".into(),
                bytes: doc.clone().into_bytes(),
            },
            Source {
                name: "b.yaml".into(),
                bytes: doc.into_bytes(),
            },
        ],
        env: &env,
        project_name: None,
        project_dir: "/nonexistent/big".into(),
        profiles: Vec::new(),
        read_file: &|_| Err(std::io::Error::from(std::io::ErrorKind::NotFound)),
    })
    .expect("a big valid project loads");
    assert_eq!(loaded.project.services.len(), 2_001);
    assert_eq!(loaded.project.services["big"].environment.len(), 40_000);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read fixtures").flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out.sort();
    out
}
