//! Merging compose files in `-f` order, by the Compose Specification's merge rules:
//! mappings merge key by key (later wins), sequences append, except
//! - `command`, `entrypoint`, `healthcheck.test`: replaced;
//! - `ports` (unique by host IP, target, published, protocol), `volumes` (by target),
//!   `env_file` (by path): entries with the same key merge, new ones append;
//! - lists of plain strings (`cap_add`, `constraints`, `profiles`...): union, no repeats;
//! - `!reset` removes what earlier files set, `!override` replaces instead of merging.
//!
//! Files were canonicalized first, so both sides of a merge have the same shape.

use std::collections::HashMap;

use super::tree::{Entry, Node, Tag, Value};

/// Merges `files` (each one document, canonicalized) into one document.
pub fn merge_all(files: Vec<Node>) -> Option<Node> {
    let mut files = files.into_iter();
    let first = files.next()?;
    let mut root = Node::new(Value::Map(Vec::new()), first.loc.clone());
    merge(&mut root, first, &mut Vec::new());
    for f in files {
        merge(&mut root, f, &mut Vec::new());
    }
    Some(root)
}

/// Merges service `over` onto service `base` (for `extends`), with the same rules as
/// files.
pub fn merge_service(base: &mut Node, over: Node) {
    merge(base, over, &mut vec!["services".to_owned(), "*".to_owned()]);
}

/// How sequences at a path merge.
enum SeqRule {
    Replace,
    Keyed(fn(&Node) -> Option<String>),
    Append,
}

fn seq_rule(shape: &[String], items: &[Node]) -> SeqRule {
    let s: Vec<&str> = shape.iter().map(String::as_str).collect();
    match s.as_slice() {
        ["services", _, "command" | "entrypoint"] | ["services", _, "healthcheck", "test"] => {
            SeqRule::Replace
        }
        ["services", _, "ports"] => SeqRule::Keyed(port_key),
        ["services", _, "volumes"] => SeqRule::Keyed(|n| field(n, "target")),
        ["services", _, "env_file"] => SeqRule::Keyed(|n| field(n, "path")),
        _ if items.iter().all(|i| i.scalar_text().is_some()) => {
            SeqRule::Keyed(|n| n.scalar_text().map(str::to_owned))
        }
        _ => SeqRule::Append,
    }
}

fn field(n: &Node, key: &str) -> Option<String> {
    n.get(key).and_then(Node::scalar_text).map(str::to_owned)
}

fn port_key(n: &Node) -> Option<String> {
    n.as_map()?;
    Some(format!(
        "{}|{}|{}|{}",
        field(n, "host_ip").unwrap_or_default(),
        field(n, "target").unwrap_or_default(),
        field(n, "published").unwrap_or_default(),
        field(n, "protocol").unwrap_or_else(|| "tcp".to_owned()),
    ))
}

/// The key of an entry in the shape path: service, network and volume names are
/// wildcards, so rules read `services.*.ports`.
fn shape_key(shape: &[String], key: &str) -> String {
    match shape {
        [top] if top == "services" || top == "networks" || top == "volumes" => "*".to_owned(),
        _ => key.to_owned(),
    }
}

fn merge(base: &mut Node, over: Node, shape: &mut Vec<String>) {
    if over.tag == Tag::Override {
        *base = strip(over);
        return;
    }
    match (&mut base.value, over.value) {
        (Value::Map(base_entries), Value::Map(over_entries)) => {
            // Key → position, so merging big mappings stays linear.
            let mut index: HashMap<String, usize> = base_entries
                .iter()
                .enumerate()
                .map(|(i, e)| (e.key.clone(), i))
                .collect();
            let mut removed = vec![false; base_entries.len()];
            for e in over_entries {
                let pos = index.get(&e.key).copied();
                if e.value.tag == Tag::Reset {
                    if let Some(p) = pos {
                        removed[p] = true;
                        index.remove(&e.key);
                    }
                    continue;
                }
                match pos {
                    Some(p) => {
                        shape.push(shape_key(shape, &e.key));
                        merge(&mut base_entries[p].value, e.value, shape);
                        shape.pop();
                    }
                    None => {
                        index.insert(e.key.clone(), base_entries.len());
                        removed.push(false);
                        base_entries.push(Entry {
                            key: e.key,
                            key_loc: e.key_loc,
                            value: strip(e.value),
                        });
                    }
                }
            }
            if removed.contains(&true) {
                let mut flags = removed.into_iter();
                base_entries.retain(|_| !flags.next().unwrap_or(false));
            }
        }
        (Value::Seq(base_items), Value::Seq(over_items)) => match seq_rule(shape, &over_items) {
            SeqRule::Replace => {
                *base_items = over_items.into_iter().map(strip).collect();
                base.loc = over.loc;
            }
            SeqRule::Keyed(key) => {
                for item in over_items {
                    if item.tag == Tag::Reset {
                        continue;
                    }
                    let k = key(&item);
                    match k
                        .and_then(|k| base_items.iter().position(|b| key(b).as_ref() == Some(&k)))
                    {
                        Some(p) => merge(&mut base_items[p], item, shape),
                        None => base_items.push(strip(item)),
                    }
                }
            }
            SeqRule::Append => {
                base_items.extend(
                    over_items
                        .into_iter()
                        .filter(|i| i.tag != Tag::Reset)
                        .map(strip),
                );
            }
        },
        (_, value) => {
            *base = strip(Node {
                value,
                loc: over.loc,
                tag: Tag::None,
            });
        }
    }
}

/// Drops `!reset` entries and `!override` tags from a value that is taken as it is.
fn strip(mut node: Node) -> Node {
    node.tag = Tag::None;
    node.value = match node.value {
        Value::Map(entries) => Value::Map(
            entries
                .into_iter()
                .filter(|e| e.value.tag != Tag::Reset)
                .map(|e| Entry {
                    value: strip(e.value),
                    ..e
                })
                .collect(),
        ),
        Value::Seq(items) => Value::Seq(
            items
                .into_iter()
                .filter(|i| i.tag != Tag::Reset)
                .map(strip)
                .collect(),
        ),
        other => other,
    };
    node
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compose::canonical::canonicalize;
    use crate::compose::tree::parse;
    use std::sync::Arc;

    fn merged(files: &[&str]) -> Node {
        let nodes = files
            .iter()
            .enumerate()
            .map(|(i, text)| {
                let mut n =
                    parse(&Arc::from(format!("f{i}.yaml")), text.as_bytes()).expect("parses");
                canonicalize(&mut n).expect("canonical");
                n
            })
            .collect();
        merge_all(nodes).expect("one file at least")
    }

    fn web(n: &Node) -> &Node {
        n.get("services").and_then(|s| s.get("web")).expect("web")
    }

    fn texts(n: &Node) -> Vec<String> {
        match &n.value {
            Value::Seq(items) => items
                .iter()
                .filter_map(|i| i.scalar_text().map(str::to_owned))
                .collect(),
            _ => panic!("not a list"),
        }
    }

    #[test]
    fn mappings_merge_and_later_files_win() {
        let n = merged(&[
            "services:\n  web:\n    image: a:1\n    environment: {A: '1', B: '2'}\n",
            "services:\n  web:\n    image: a:2\n    environment: [B=3, C=4]\n  db:\n    image: pg\n",
        ]);
        let w = web(&n);
        assert_eq!(w.get("image").and_then(Node::scalar_text), Some("a:2"));
        let env = w.get("environment").expect("env");
        assert_eq!(env.get("A").and_then(Node::scalar_text), Some("1"));
        assert_eq!(env.get("B").and_then(Node::scalar_text), Some("3"));
        assert_eq!(env.get("C").and_then(Node::scalar_text), Some("4"));
        assert!(n.get("services").and_then(|s| s.get("db")).is_some());
        // Positions follow the winning file.
        assert_eq!(&*w.get("image").expect("image").loc.file, "f1.yaml");
    }

    #[test]
    fn commands_are_replaced_not_appended() {
        let n = merged(&[
            "services:\n  web:\n    command: [a, b]\n    entrypoint: [x]\n    healthcheck: {test: [CMD, a]}\n",
            "services:\n  web:\n    command: [c]\n    entrypoint: [y, z]\n    healthcheck: {test: [CMD, b]}\n",
        ]);
        let w = web(&n);
        assert_eq!(texts(w.get("command").expect("command")), ["c"]);
        assert_eq!(texts(w.get("entrypoint").expect("entrypoint")), ["y", "z"]);
        assert_eq!(
            texts(
                w.get("healthcheck")
                    .and_then(|h| h.get("test"))
                    .expect("test")
            ),
            ["CMD", "b"]
        );
    }

    #[test]
    fn ports_and_volumes_are_unique_by_their_key() {
        let n = merged(&[
            "services:\n  web:\n    ports: [\"80:80\", \"443:443\"]\n    volumes: [\"a:/data\", \"/etc/x:/x\"]\n",
            "services:\n  web:\n    ports: [\"80:80\", \"8080:8080\"]\n    volumes: [\"b:/data:ro\"]\n",
        ]);
        let w = web(&n);
        let Value::Seq(ports) = &w.get("ports").expect("ports").value else {
            panic!()
        };
        assert_eq!(ports.len(), 3);
        let Value::Seq(vols) = &w.get("volumes").expect("volumes").value else {
            panic!()
        };
        assert_eq!(vols.len(), 2);
        assert_eq!(vols[0].get("source").and_then(Node::scalar_text), Some("b"));
        assert!(vols[0].get("read_only").is_some());
    }

    #[test]
    fn string_lists_are_unions() {
        let n = merged(&[
            "services:\n  web:\n    cap_add: [NET_ADMIN]\n    deploy: {placement: {constraints: [a==1]}}\n",
            "services:\n  web:\n    cap_add: [NET_ADMIN, SYS_TIME]\n    deploy: {placement: {constraints: [b==2]}}\n",
        ]);
        let w = web(&n);
        assert_eq!(
            texts(w.get("cap_add").expect("cap_add")),
            ["NET_ADMIN", "SYS_TIME"]
        );
        let c = w
            .get("deploy")
            .and_then(|d| d.get("placement"))
            .and_then(|p| p.get("constraints"));
        assert_eq!(texts(c.expect("constraints")), ["a==1", "b==2"]);
    }

    #[test]
    fn reset_and_override_tags() {
        let n = merged(&[
            "services:\n  web:\n    ports: [\"80:80\"]\n    environment: {A: '1', B: '2'}\n    labels: {x: '1'}\n",
            "services:\n  web:\n    ports: !reset []\n    environment: !override {C: '3'}\n    labels: {x: !reset null}\n",
        ]);
        let w = web(&n);
        assert!(w.get("ports").is_none());
        let env = w.get("environment").expect("env");
        assert!(env.get("A").is_none());
        assert_eq!(env.get("C").and_then(Node::scalar_text), Some("3"));
        assert!(w.get("labels").and_then(|l| l.get("x")).is_none());
    }

    #[test]
    fn a_reset_in_the_first_file_means_absent() {
        let n = merged(&["services:\n  web:\n    image: x\n    ports: !reset [\"80:80\"]\n"]);
        assert!(web(&n).get("ports").is_none());
    }
}
