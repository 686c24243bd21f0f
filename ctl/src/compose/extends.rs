//! `extends`: a service built on another one, from the same file or another file, as
//! the Compose Specification defines it. Resolved per file, after interpolation and
//! canonicalization and before files are merged (as Compose does): the base service
//! (itself resolved first) is merged with the extending one by the usual merge rules.
//! Relative `env_file`/`label_file` paths of a base from another file are made relative
//! to that file's directory. Cycles and chains deeper than `MAX_CHAIN` are errors.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::decode::{Fields, Result, Schema, invalid, join, string};
use super::error::{ComposeError, ErrorKind};
use super::load::prepare;
use super::merge::merge_service;
use super::tree::{Node, Value};

/// Longest chain of `extends` (services and files) followed.
const MAX_CHAIN: usize = 16;

/// What resolving needs from outside the document.
pub struct ExtendsContext<'a> {
    pub lookup: &'a dyn Fn(&str) -> Option<String>,
    pub read_file: &'a dyn Fn(&Path) -> std::io::Result<Vec<u8>>,
    /// Other files already read, so many services extending one file parse it once.
    pub cache: RefCell<HashMap<PathBuf, Node>>,
}

impl<'a> ExtendsContext<'a> {
    pub fn new(
        lookup: &'a dyn Fn(&str) -> Option<String>,
        read_file: &'a dyn Fn(&Path) -> std::io::Result<Vec<u8>>,
    ) -> Self {
        ExtendsContext {
            lookup,
            read_file,
            cache: RefCell::new(HashMap::new()),
        }
    }
}

const EXTENDS: Schema = Schema {
    known: &["service", "file"],
    unsupported: &[],
};

/// Resolves every `extends` of `doc`'s services; `dir` is where a relative
/// `extends.file` starts.
pub fn resolve_extends(
    doc: &mut Node,
    dir: &Path,
    ctx: &ExtendsContext<'_>,
    unset: &mut Vec<String>,
) -> Result<()> {
    let names: Vec<String> = match doc.get("services").and_then(Node::as_map) {
        Some(entries) => entries
            .iter()
            .filter(|e| e.value.get("extends").is_some())
            .map(|e| e.key.clone())
            .collect(),
        None => return Ok(()),
    };
    for name in names {
        let resolved = resolve_service(doc, &name, dir, ctx, unset, &mut Vec::new())?;
        if let Some(slot) = service_mut(doc, &name) {
            *slot = resolved;
        }
    }
    Ok(())
}

fn service_mut<'a>(doc: &'a mut Node, name: &str) -> Option<&'a mut Node> {
    let Value::Map(top) = &mut doc.value else {
        return None;
    };
    let services = top.iter_mut().find(|e| e.key == "services")?;
    let Value::Map(entries) = &mut services.value.value else {
        return None;
    };
    entries
        .iter_mut()
        .find(|e| e.key == name)
        .map(|e| &mut e.value)
}

/// The service `name` of `doc` with its `extends` chain applied. `chain` holds the
/// (file directory, service) pairs being resolved, to find cycles.
fn resolve_service(
    doc: &Node,
    name: &str,
    dir: &Path,
    ctx: &ExtendsContext<'_>,
    unset: &mut Vec<String>,
    chain: &mut Vec<(PathBuf, String)>,
) -> Result<Node> {
    let path = join("services", name);
    let Some(svc) = doc.get("services").and_then(|s| s.get(name)) else {
        return Err(ComposeError {
            origin: super::error::Origin::At(doc.loc.clone()),
            path,
            kind: ErrorKind::Undefined {
                kind: "service",
                name: name.to_owned(),
                hint: "named by extends",
            },
        });
    };
    let Some(ext) = svc.entry("extends").filter(|e| !e.value.is_null()) else {
        return Ok(svc.clone());
    };
    let ext_path = join(&path, "extends");
    let f = Fields::of(&ext.value, &ext_path, &EXTENDS)?;
    let Some(base_name_node) = f.get("service") else {
        return Err(ComposeError::at(
            &ext.key_loc,
            &ext_path,
            ErrorKind::Missing {
                key: "service",
                why: "the service to extend",
            },
        ));
    };
    let base_name = string(base_name_node, &f.path_of("service"))?;
    let key = (dir.to_path_buf(), name.to_owned());
    if chain.contains(&key) || chain.len() >= MAX_CHAIN {
        let mut names: Vec<&str> = chain.iter().map(|(_, s)| s.as_str()).collect();
        names.push(name);
        return Err(invalid(
            &ext.key_loc,
            &ext_path,
            if chain.len() >= MAX_CHAIN {
                format!("extends is chained more than {MAX_CHAIN} deep")
            } else {
                format!("extends cycle: {}", names.join(" -> "))
            },
        ));
    }
    chain.push(key);
    let base = match f.get("file") {
        None => {
            let base_exists = doc
                .get("services")
                .and_then(|s| s.get(&base_name))
                .is_some();
            if !base_exists {
                return Err(ComposeError::at(
                    &base_name_node.loc,
                    &f.path_of("service"),
                    ErrorKind::Undefined {
                        kind: "service",
                        name: base_name,
                        hint: "",
                    },
                ));
            }
            resolve_service(doc, &base_name, dir, ctx, unset, chain)?
        }
        Some(file_node) => {
            let file = string(file_node, &f.path_of("file"))?;
            let full = dir.join(&file);
            let cached = ctx.cache.borrow().get(&full).cloned();
            let other = match cached {
                Some(doc) => doc,
                None => {
                    let bytes = (ctx.read_file)(&full).map_err(|err| {
                        ComposeError::at(
                            &file_node.loc,
                            &f.path_of("file"),
                            ErrorKind::Read {
                                path: full.clone(),
                                err,
                            },
                        )
                    })?;
                    let name: Arc<str> = Arc::from(full.display().to_string());
                    let doc = prepare(&name, &bytes, ctx.lookup, unset)?;
                    ctx.cache.borrow_mut().insert(full.clone(), doc.clone());
                    doc
                }
            };
            let other_dir = full
                .parent()
                .map_or_else(|| dir.to_path_buf(), Path::to_path_buf);
            if other
                .get("services")
                .and_then(|s| s.get(&base_name))
                .is_none()
            {
                return Err(ComposeError::at(
                    &base_name_node.loc,
                    &f.path_of("service"),
                    ErrorKind::Undefined {
                        kind: "service",
                        name: format!("{base_name}` in `{file}"),
                        hint: "",
                    },
                ));
            }
            let mut base = resolve_service(&other, &base_name, &other_dir, ctx, unset, chain)?;
            rebase_paths(&mut base, &other_dir);
            base
        }
    };
    chain.pop();
    let mut local = svc.clone();
    if let Value::Map(entries) = &mut local.value {
        entries.retain(|e| e.key != "extends");
    }
    let mut out = base;
    merge_service(&mut out, local);
    out.loc = svc.loc.clone();
    Ok(out)
}

/// Makes the relative `env_file` and `label_file` paths of a service from another file
/// absolute, from that file's directory.
fn rebase_paths(svc: &mut Node, dir: &Path) {
    let Value::Map(entries) = &mut svc.value else {
        return;
    };
    for e in entries.iter_mut() {
        let Value::Seq(items) = &mut e.value.value else {
            continue;
        };
        match e.key.as_str() {
            "env_file" => {
                for item in items {
                    if let Value::Map(fields) = &mut item.value {
                        for field in fields.iter_mut().filter(|f| f.key == "path") {
                            rebase(&mut field.value, dir);
                        }
                    }
                }
            }
            "label_file" => items.iter_mut().for_each(|i| rebase(i, dir)),
            _ => {}
        }
    }
}

fn rebase(node: &mut Node, dir: &Path) {
    if let Value::Str(p) = &mut node.value
        && Path::new(p.as_str()).is_relative()
    {
        *p = dir.join(&*p).display().to_string();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compose::canonical::canonicalize;
    use crate::compose::tree::parse;

    fn resolved(text: &str, files: &[(&str, &str)]) -> Result<Node> {
        let mut doc = parse(&Arc::from("app.yaml"), text.as_bytes()).expect("parses");
        canonicalize(&mut doc)?;
        let files: Vec<(PathBuf, Vec<u8>)> = files
            .iter()
            .map(|(n, t)| (Path::new("/p").join(n), t.as_bytes().to_vec()))
            .collect();
        let read = move |p: &Path| -> std::io::Result<Vec<u8>> {
            files
                .iter()
                .find(|(n, _)| n == p)
                .map(|(_, b)| b.clone())
                .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
        };
        let ctx = ExtendsContext::new(&|_| None, &read);
        resolve_extends(&mut doc, Path::new("/p"), &ctx, &mut Vec::new())?;
        Ok(doc)
    }

    fn svc<'a>(doc: &'a Node, name: &str) -> &'a Node {
        doc.get("services")
            .and_then(|s| s.get(name))
            .expect("service")
    }

    #[test]
    fn same_file_extends_merge_the_base_under_the_service() {
        let doc = resolved(
            "services:\n  base:\n    image: app:1\n    environment: {A: '1', B: '1'}\n    command: [run]\n  web:\n    extends: base\n    environment: {B: '2'}\n  worker:\n    extends: {service: web}\n    command: [work]\n",
            &[],
        )
        .expect("resolves");
        let web = svc(&doc, "web");
        assert!(web.get("extends").is_none());
        assert_eq!(web.get("image").and_then(Node::scalar_text), Some("app:1"));
        let env = web.get("environment").expect("env");
        assert_eq!(env.get("A").and_then(Node::scalar_text), Some("1"));
        assert_eq!(env.get("B").and_then(Node::scalar_text), Some("2"));
        let worker = svc(&doc, "worker");
        assert_eq!(
            worker.get("image").and_then(Node::scalar_text),
            Some("app:1")
        );
        let Value::Seq(cmd) = &worker.get("command").expect("command").value else {
            panic!("command is a list");
        };
        assert_eq!(cmd.len(), 1);
    }

    #[test]
    fn extends_from_another_file_rebases_its_env_files() {
        let doc = resolved(
            "services:\n  web:\n    extends: {file: common/base.yaml, service: app}\n    ports: [\"80:80\"]\n",
            &[(
                "common/base.yaml",
                "services:\n  app:\n    image: app:2\n    env_file: app.env\n",
            )],
        )
        .expect("resolves");
        let web = svc(&doc, "web");
        assert_eq!(web.get("image").and_then(Node::scalar_text), Some("app:2"));
        let Value::Seq(files) = &web.get("env_file").expect("env_file").value else {
            panic!("a list");
        };
        assert_eq!(
            files[0].get("path").and_then(Node::scalar_text),
            Some("/p/common/app.env")
        );
    }

    #[test]
    fn cycles_and_missing_bases_are_errors() {
        let err = resolved(
            "services:\n  a:\n    image: x\n    extends: b\n  b:\n    image: x\n    extends: a\n",
            &[],
        )
        .expect_err("cycle");
        assert!(
            err.to_string().contains("extends cycle: a -> b -> a"),
            "{err}"
        );
        let err = resolved("services:\n  a:\n    image: x\n    extends: nope\n", &[])
            .expect_err("missing");
        assert_eq!(
            err.to_string(),
            "app.yaml:4:14: services.a.extends.service: service `nope` is not defined"
        );
        let err = resolved(
            "services:\n  a:\n    extends: {file: gone.yaml, service: x}\n",
            &[],
        )
        .expect_err("no file");
        assert!(
            err.to_string()
                .starts_with("app.yaml:3:21: services.a.extends.file: cannot read /p/gone.yaml"),
            "{err}"
        );
    }
}
