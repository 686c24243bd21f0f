//! Per-file rewriting of Compose's short forms into long forms, before files are merged
//! (Compose's `transform.Canonical`): `environment`/`labels` lists become mappings,
//! `networks`/`depends_on` lists become mappings, short `ports`/`volumes` become long
//! entries, single strings become lists. Merging then only deals with one shape per
//! key, and the new nodes keep the position of what they came from. Anything of an
//! unexpected type is left alone for the decoder to report.

use std::collections::{HashMap, HashSet};

use super::decode::{Result, index, invalid, join, wrong};
use super::error::Loc;
use super::mounts;
use super::ports;
use super::tree::{Entry, Node, Tag, Value};

fn str_node(s: impl Into<String>, loc: &Loc) -> Node {
    Node::new(Value::Str(s.into()), loc.clone())
}

fn bool_node(b: bool, loc: &Loc) -> Node {
    Node::new(
        Value::Bool {
            value: b,
            text: b.to_string(),
        },
        loc.clone(),
    )
}

fn map_node(entries: Vec<(&str, Node)>, loc: &Loc) -> Node {
    Node::new(
        Value::Map(
            entries
                .into_iter()
                .map(|(k, v)| Entry {
                    key: k.to_owned(),
                    key_loc: loc.clone(),
                    value: v,
                })
                .collect(),
        ),
        loc.clone(),
    )
}

fn entry_mut<'a>(node: &'a mut Node, key: &str) -> Option<&'a mut Node> {
    match &mut node.value {
        Value::Map(entries) => entries
            .iter_mut()
            .find(|e| e.key == key)
            .map(|e| &mut e.value),
        _ => None,
    }
}

/// Rewrites the short forms of one file's document in place.
pub fn canonicalize(root: &mut Node) -> Result<()> {
    let Some(services) = entry_mut(root, "services") else {
        return Ok(());
    };
    let Value::Map(services) = &mut services.value else {
        return Ok(());
    };
    for svc in services.iter_mut() {
        let path = join("services", &svc.key);
        service(&mut svc.value, &path)?;
    }
    Ok(())
}

fn service(svc: &mut Node, path: &str) -> Result<()> {
    let Value::Map(entries) = &mut svc.value else {
        return Ok(());
    };
    for e in entries.iter_mut() {
        let p = join(path, &e.key);
        match e.key.as_str() {
            "environment" => key_value_list(&mut e.value, &p, true)?,
            "labels" => key_value_list(&mut e.value, &p, false)?,
            "networks" => name_list(&mut e.value, &p, |loc| Node::new(Value::Null, loc.clone()))?,
            "depends_on" => name_list(&mut e.value, &p, |loc| {
                map_node(vec![("condition", str_node("service_started", loc))], loc)
            })?,
            "ports" => short_ports(&mut e.value, &p)?,
            "volumes" => short_volumes(&mut e.value, &p)?,
            "env_file" => env_files(&mut e.value),
            "tmpfs" | "label_file" | "cap_add" | "cap_drop" | "profiles" | "security_opt" => {
                string_to_list(&mut e.value);
            }
            "extends" => {
                if let Value::Str(s) = &e.value.value {
                    let loc = e.value.loc.clone();
                    e.value = map_node(vec![("service", str_node(s.clone(), &loc))], &loc);
                }
            }
            "deploy" => {
                if let Some(labels) = entry_mut(&mut e.value, "labels") {
                    key_value_list(labels, &join(&p, "labels"), false)?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn string_to_list(node: &mut Node) {
    if let Value::Str(_) = node.value {
        let loc = node.loc.clone();
        let item = std::mem::replace(node, Node::new(Value::Null, loc.clone()));
        let tag = item.tag;
        *node = Node {
            value: Value::Seq(vec![Node {
                tag: Tag::None,
                ..item
            }]),
            loc,
            tag,
        };
    }
}

/// `- KEY=value` / `- KEY` lists into mappings. For `environment`, a bare `KEY` is null
/// (taken from the shell environment later); for labels it is the empty string.
fn key_value_list(node: &mut Node, path: &str, bare_is_null: bool) -> Result<()> {
    let Value::Seq(items) = &node.value else {
        return Ok(());
    };
    let mut entries = Vec::with_capacity(items.len());
    let mut seen: HashMap<String, usize> = HashMap::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let Some(text) = item.scalar_text() else {
            return Err(wrong(item, &index(path, i), "a string like KEY=value"));
        };
        let (key, value) = match text.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (text, None),
        };
        if key.is_empty() {
            return Err(invalid(
                &item.loc,
                &index(path, i),
                "an entry needs a name before `=`",
            ));
        }
        if let Some(dup) = seen.insert(key.to_owned(), i) {
            return Err(invalid(
                &item.loc,
                &index(path, i),
                format!("`{key}` is set twice (also at [{dup}])"),
            ));
        }
        let value = match value {
            Some(v) => str_node(v, &item.loc),
            None if bare_is_null => Node::new(Value::Null, item.loc.clone()),
            None => str_node("", &item.loc),
        };
        entries.push(Entry {
            key: key.to_owned(),
            key_loc: item.loc.clone(),
            value,
        });
    }
    node.value = Value::Map(entries);
    Ok(())
}

/// `[a, b]` name lists into `{a: <default>, b: <default>}`.
fn name_list(node: &mut Node, path: &str, default: impl Fn(&Loc) -> Node) -> Result<()> {
    let Value::Seq(items) = &node.value else {
        return Ok(());
    };
    let mut entries: Vec<Entry> = Vec::with_capacity(items.len());
    let mut seen: HashSet<&str> = HashSet::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let Value::Str(name) = &item.value else {
            return Err(wrong(item, &index(path, i), "a name"));
        };
        if !seen.insert(name) {
            return Err(invalid(
                &item.loc,
                &index(path, i),
                format!("`{name}` is listed twice"),
            ));
        }
        entries.push(Entry {
            key: name.clone(),
            key_loc: item.loc.clone(),
            value: default(&item.loc),
        });
    }
    node.value = Value::Map(entries);
    Ok(())
}

fn short_ports(node: &mut Node, path: &str) -> Result<()> {
    let Value::Seq(items) = &mut node.value else {
        return Ok(());
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in std::mem::take(items).into_iter().enumerate() {
        let spec = match &item.value {
            Value::Str(s) => s.clone(),
            Value::Int { text, .. } => text.clone(),
            _ => {
                out.push(item);
                continue;
            }
        };
        let loc = item.loc.clone();
        let parsed = ports::parse_short(&spec).map_err(|m| invalid(&loc, &index(path, i), m))?;
        for p in parsed {
            let mut fields = vec![(
                "target",
                Node::new(
                    Value::Int {
                        value: i64::from(p.target),
                        text: p.target.to_string(),
                    },
                    loc.clone(),
                ),
            )];
            if let Some(published) = p.published {
                fields.push(("published", str_node(published.to_string(), &loc)));
            }
            if let Some(ip) = p.host_ip {
                fields.push(("host_ip", str_node(ip, &loc)));
            }
            fields.push(("protocol", str_node(p.protocol, &loc)));
            out.push(map_node(fields, &loc));
        }
    }
    *items = out;
    Ok(())
}

fn short_volumes(node: &mut Node, path: &str) -> Result<()> {
    let Value::Seq(items) = &mut node.value else {
        return Ok(());
    };
    for (i, item) in items.iter_mut().enumerate() {
        let Value::Str(spec) = &item.value else {
            continue;
        };
        let loc = item.loc.clone();
        let v = mounts::parse_short(spec).map_err(|m| invalid(&loc, &index(path, i), m))?;
        let mut fields = vec![("type", str_node(v.kind, &loc))];
        if let Some(s) = v.source {
            fields.push(("source", str_node(s, &loc)));
        }
        fields.push(("target", str_node(v.target, &loc)));
        if v.read_only {
            fields.push(("read_only", bool_node(true, &loc)));
        }
        let mut bind = Vec::new();
        if let Some(p) = v.propagation {
            bind.push(("propagation", str_node(p, &loc)));
        }
        if let Some(z) = v.selinux {
            bind.push(("selinux", str_node(z, &loc)));
        }
        if !bind.is_empty() {
            fields.push(("bind", map_node(bind, &loc)));
        }
        if v.nocopy {
            fields.push((
                "volume",
                map_node(vec![("nocopy", bool_node(true, &loc))], &loc),
            ));
        }
        if let Some(c) = v.consistency {
            fields.push(("consistency", str_node(c, &loc)));
        }
        *item = map_node(fields, &loc);
    }
    Ok(())
}

/// `env_file: a.env` / `[a.env]` into `[{path: a.env, required: true}]`.
fn env_files(node: &mut Node) {
    string_to_list(node);
    let Value::Seq(items) = &mut node.value else {
        return;
    };
    for item in items.iter_mut() {
        if let Value::Str(p) = &item.value {
            let loc = item.loc.clone();
            *item = map_node(
                vec![
                    ("path", str_node(p.clone(), &loc)),
                    ("required", bool_node(true, &loc)),
                ],
                &loc,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compose::tree::parse;
    use std::sync::Arc;

    fn canon(text: &str) -> Result<Node> {
        let mut n = parse(&Arc::from("t.yaml"), text.as_bytes()).expect("parses");
        canonicalize(&mut n)?;
        Ok(n)
    }

    fn web(n: &Node) -> &Node {
        n.get("services").and_then(|s| s.get("web")).expect("web")
    }

    #[test]
    fn lists_become_mappings() {
        let n = canon(
            "services:\n  web:\n    environment: [A=1, B, C=x=y]\n    labels: [l1=v, l2]\n    networks: [front, back]\n    depends_on: [db]\n    deploy: {labels: [d=1]}\n",
        )
        .expect("canonical");
        let w = web(&n);
        let env = w.get("environment").expect("env");
        assert_eq!(env.get("A").expect("A").value, Value::Str("1".into()));
        assert!(env.get("B").expect("B").is_null());
        assert_eq!(env.get("C").expect("C").value, Value::Str("x=y".into()));
        assert_eq!(
            w.get("labels").and_then(|l| l.get("l2")).map(|n| &n.value),
            Some(&Value::Str(String::new()))
        );
        assert!(w.get("networks").and_then(|n| n.get("back")).is_some());
        let cond = w
            .get("depends_on")
            .and_then(|d| d.get("db"))
            .and_then(|d| d.get("condition"));
        assert_eq!(
            cond.map(|c| &c.value),
            Some(&Value::Str("service_started".into()))
        );
        assert!(
            w.get("deploy")
                .and_then(|d| d.get("labels"))
                .and_then(|l| l.get("d"))
                .is_some()
        );
    }

    #[test]
    fn short_ports_and_volumes_become_long_entries() {
        let n = canon(
            "services:\n  web:\n    ports: [\"8080-8081:80-81\", 53/udp]\n    volumes: [\"data:/data:ro\"]\n",
        )
        .expect("canonical");
        let Value::Seq(ports) = &web(&n).get("ports").expect("ports").value else {
            panic!("ports is a list");
        };
        assert_eq!(ports.len(), 3);
        assert_eq!(
            ports[1].get("published").and_then(Node::scalar_text),
            Some("8081")
        );
        assert_eq!(
            ports[2].get("protocol").and_then(Node::scalar_text),
            Some("udp")
        );
        let Value::Seq(vols) = &web(&n).get("volumes").expect("volumes").value else {
            panic!("volumes is a list");
        };
        assert_eq!(
            vols[0].get("type").and_then(Node::scalar_text),
            Some("volume")
        );
        assert!(vols[0].get("read_only").is_some());
    }

    #[test]
    fn duplicate_list_entries_are_errors() {
        let err = canon("services:\n  web:\n    environment:\n      - A=1\n      - A=2\n")
            .expect_err("dup");
        assert_eq!(
            err.to_string(),
            "t.yaml:5:9: services.web.environment[1]: `A` is set twice (also at [0])"
        );
        let err = canon("services:\n  web:\n    ports: [\"99999:80\"]\n").expect_err("bad port");
        assert!(
            err.to_string()
                .starts_with("t.yaml:3:13: services.web.ports[0]: "),
            "{err}"
        );
    }
}
