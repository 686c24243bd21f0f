//! Helpers shared by the compose test suites: loading fixtures and inline documents
//! with a controlled environment (never the test process's own).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use skiffctl::compose::config::project_environment;
use skiffctl::compose::{ComposeError, LoadInput, Loaded, Source, load};

/// The fixtures directory.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/compose")
}

fn env_map(env: &[(&str, &str)]) -> BTreeMap<String, String> {
    env.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Loads fixture files (paths relative to the fixtures directory, shown by those
/// names), with the project directory being the first file's directory and `.env`
/// read from there; `env` plays the process environment.
pub fn load_fixtures(files: &[&str], env: &[(&str, &str)]) -> Result<Loaded, ComposeError> {
    let dir = fixtures()
        .join(files[0])
        .parent()
        .expect("in a dir")
        .to_path_buf();
    let process = env_map(env);
    let environment = project_environment(&process, &dir, &[])?;
    let sources = files
        .iter()
        .map(|f| Source {
            name: Arc::from(*f),
            bytes: std::fs::read(fixtures().join(f)).expect("fixture exists"),
        })
        .collect();
    load(&LoadInput {
        files: sources,
        env: &environment,
        project_name: None,
        project_dir: dir,
        profiles: Vec::new(),
        read_file: &|p| std::fs::read(p),
    })
}

/// Loads in-memory documents, each named by its `(name, text)`, in a project directory
/// called `app` that holds no files.
pub fn load_docs(docs: &[(&str, &str)], env: &[(&str, &str)]) -> Result<Loaded, ComposeError> {
    let environment = env_map(env);
    load(&LoadInput {
        files: docs
            .iter()
            .map(|(name, text)| Source {
                name: Arc::from(*name),
                bytes: text.as_bytes().to_vec(),
            })
            .collect(),
        env: &environment,
        project_name: None,
        project_dir: PathBuf::from("/nonexistent/app"),
        profiles: Vec::new(),
        read_file: &|p| std::fs::read(p),
    })
}

/// One in-memory document called `app.yaml`.
pub fn load_doc(text: &str) -> Result<Loaded, ComposeError> {
    load_docs(&[("app.yaml", text)], &[])
}

/// The error a document gives, as the user sees it.
pub fn error_of(text: &str) -> String {
    match load_doc(text) {
        Ok(_) => panic!("expected an error for:\n{text}"),
        Err(err) => err.to_string(),
    }
}
