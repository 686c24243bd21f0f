//! Placement constraints as Swarm writes them (`node.labels.zone==b`, `node.role!=manager`,
//! `engine.labels.disk==ssd`):
//! parsing, and matching against a node. Keys are case-insensitive, label names are
//! case-sensitive, values compare case-insensitively (swarmkit `manager/constraint`).

use std::fmt;

use skiff_proto::v1 as pb;

/// A constraint string that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConstraintError {
    #[error("constraint {text:?} has no operator: use == or !=")]
    NoOperator { text: String },
    #[error("constraint {text:?} has an empty {part}")]
    Empty { text: String, part: &'static str },
    #[error(
        "constraint {text:?}: unknown key {key:?} (known: node.id, node.hostname, node.role, node.platform.os, node.platform.arch, node.labels.<name>, engine.labels.<name>)"
    )]
    UnknownKey { text: String, key: String },
    #[error("constraint {text:?}: {what} contains {bad:?}")]
    BadCharacter {
        text: String,
        what: &'static str,
        bad: char,
    },
}

/// What a constraint or a spread preference looks at on a node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    NodeId,
    Hostname,
    /// "worker" or "manager".
    Role,
    PlatformOs,
    /// GOARCH names; `x86_64` and `aarch64` are read as `amd64` and `arm64`.
    PlatformArch,
    /// `node.labels.<name>`: the operator's labels (`NodeSpec.labels`).
    Label(String),
    /// `engine.labels.<name>`: the labels the agent was started with
    /// (`skiff-agent --label`, `NodeDescription.labels`), as Swarm's engine labels.
    EngineLabel(String),
}

impl Key {
    /// Parses `node.id`, `node.hostname`, `node.role`, `node.platform.os`,
    /// `node.platform.arch`, `node.labels.<name>` or `engine.labels.<name>`; `None` for
    /// anything else.
    pub fn parse(key: &str) -> Option<Key> {
        const LABELS: &str = "node.labels.";
        const ENGINE_LABELS: &str = "engine.labels.";
        let lower = key.to_ascii_lowercase();
        Some(match lower.as_str() {
            "node.id" => Key::NodeId,
            "node.hostname" => Key::Hostname,
            "node.role" => Key::Role,
            "node.platform.os" => Key::PlatformOs,
            "node.platform.arch" => Key::PlatformArch,
            l if l.starts_with(LABELS) && l.len() > LABELS.len() => {
                // The label name keeps its case: labels are case-sensitive in Swarm.
                Key::Label(key[LABELS.len()..].to_owned())
            }
            l if l.starts_with(ENGINE_LABELS) && l.len() > ENGINE_LABELS.len() => {
                Key::EngineLabel(key[ENGINE_LABELS.len()..].to_owned())
            }
            _ => return None,
        })
    }

    /// The node's value for this key; a missing description or label reads as "".
    pub fn value<'a>(&self, node: &'a pb::Node) -> &'a str {
        let desc = node.description.as_ref();
        let platform = desc.and_then(|d| d.platform.as_ref());
        match self {
            Key::NodeId => &node.id,
            Key::Hostname => desc.map_or("", |d| d.hostname.as_str()),
            Key::Role => match node.spec.as_ref().map(|s| s.role()) {
                Some(pb::NodeRole::Manager) => "manager",
                _ => "worker",
            },
            Key::PlatformOs => platform.map_or("", |p| p.os.as_str()),
            Key::PlatformArch => platform.map_or("", |p| normalize_arch(&p.architecture)),
            Key::Label(name) => node
                .spec
                .as_ref()
                .and_then(|s| s.labels.get(name))
                .map_or("", String::as_str),
            Key::EngineLabel(name) => desc
                .and_then(|d| d.labels.get(name))
                .map_or("", String::as_str),
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::NodeId => f.write_str("node.id"),
            Key::Hostname => f.write_str("node.hostname"),
            Key::Role => f.write_str("node.role"),
            Key::PlatformOs => f.write_str("node.platform.os"),
            Key::PlatformArch => f.write_str("node.platform.arch"),
            Key::Label(name) => write!(f, "node.labels.{name}"),
            Key::EngineLabel(name) => write!(f, "engine.labels.{name}"),
        }
    }
}

/// Architecture names as Go (and so OCI image indexes) spell them.
pub fn normalize_arch(arch: &str) -> &str {
    match arch {
        "x86_64" | "x86-64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Eq,
    Ne,
}

/// One parsed constraint.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Constraint {
    pub key: Key,
    pub op: Op,
    pub value: String,
}

impl Constraint {
    /// Parses `<key>==<value>` or `<key>!=<value>`; spaces around the parts are ignored.
    pub fn parse(text: &str) -> Result<Constraint, ConstraintError> {
        // The first operator wins, as in swarmkit: "a==b!=c" is a==(b!=c), then
        // rejected for the '!' in the value.
        let eq = text.find("==");
        let ne = text.find("!=");
        let (at, op) = match (eq, ne) {
            (Some(e), Some(n)) if n < e => (n, Op::Ne),
            (Some(e), _) => (e, Op::Eq),
            (None, Some(n)) => (n, Op::Ne),
            (None, None) => {
                return Err(ConstraintError::NoOperator { text: text.into() });
            }
        };
        let key = text[..at].trim();
        let value = text[at + 2..].trim();
        if key.is_empty() {
            return Err(ConstraintError::Empty {
                text: text.into(),
                part: "key",
            });
        }
        if value.is_empty() {
            return Err(ConstraintError::Empty {
                text: text.into(),
                part: "value",
            });
        }
        if let Some(bad) = key
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(ConstraintError::BadCharacter {
                text: text.into(),
                what: "the key",
                bad,
            });
        }
        if let Some(bad) = value.chars().find(|c| matches!(c, '=' | '!')) {
            return Err(ConstraintError::BadCharacter {
                text: text.into(),
                what: "the value",
                bad,
            });
        }
        let key = Key::parse(key).ok_or_else(|| ConstraintError::UnknownKey {
            text: text.into(),
            key: key.into(),
        })?;
        let value = if key == Key::PlatformArch {
            normalize_arch(&value.to_ascii_lowercase()).to_owned()
        } else {
            value.to_owned()
        };
        Ok(Constraint { key, op, value })
    }

    /// Whether `node` satisfies the constraint.
    pub fn matches(&self, node: &pb::Node) -> bool {
        let equal = self.key.value(node).eq_ignore_ascii_case(&self.value);
        match self.op {
            Op::Eq => equal,
            Op::Ne => !equal,
        }
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = match self.op {
            Op::Eq => "==",
            Op::Ne => "!=",
        };
        write!(f, "{}{op}{}", self.key, self.value)
    }
}

/// Checks every constraint and preference of a placement: what the cluster API runs
/// before accepting a spec, so a typo is refused at deploy time.
pub fn validate(placement: &pb::Placement) -> Result<(), ConstraintError> {
    for c in &placement.constraints {
        Constraint::parse(c)?;
    }
    for p in &placement.preferences {
        if Key::parse(&p.label).is_none() {
            return Err(ConstraintError::UnknownKey {
                text: p.label.clone(),
                key: p.label.clone(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> pb::Node {
        pb::Node {
            id: "n1".into(),
            spec: Some(pb::NodeSpec {
                labels: [
                    ("zone".to_owned(), "b".to_owned()),
                    ("Disk".into(), "ssd".into()),
                ]
                .into(),
                availability: 0,
                role: pb::NodeRole::Manager as i32,
            }),
            description: Some(pb::NodeDescription {
                hostname: "alpha".into(),
                platform: Some(pb::Platform {
                    os: "linux".into(),
                    architecture: "x86_64".into(),
                    variant: String::new(),
                }),
                labels: [("rack".to_owned(), "r7".to_owned())].into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn parses_and_matches_every_key_as_swarm_does() {
        let n = node();
        let yes = [
            "node.id==n1",
            "node.hostname==ALPHA",
            "node.role==manager",
            "node.role != worker",
            "node.platform.os==linux",
            "node.platform.arch==amd64",
            "node.platform.arch==x86_64",
            "node.labels.zone==b",
            "NODE.LABELS.zone==B",
            "node.labels.Disk==ssd",
            "node.labels.missing!=x",
        ];
        for text in yes {
            let c = Constraint::parse(text).expect(text);
            assert!(c.matches(&n), "{text} should match");
        }
        let no = [
            "node.id!=n1",
            "node.hostname==beta",
            "node.role==worker",
            "node.labels.zone==a",
            "node.labels.disk==ssd", // label names are case-sensitive
            "node.labels.missing==x",
        ];
        for text in no {
            let c = Constraint::parse(text).expect(text);
            assert!(!c.matches(&n), "{text} should not match");
        }
    }

    #[test]
    fn a_node_without_description_reads_as_empty_values() {
        let n = pb::Node {
            id: "bare".into(),
            ..Default::default()
        };
        let c = Constraint::parse("node.hostname!=alpha").expect("parse");
        assert!(c.matches(&n));
        let c = Constraint::parse("node.role==worker").expect("parse");
        assert!(c.matches(&n));
    }

    #[test]
    fn rejects_malformed_constraints_with_the_reason() {
        assert_eq!(
            Constraint::parse("node.labels.zone=b"),
            Err(ConstraintError::NoOperator {
                text: "node.labels.zone=b".into()
            })
        );
        assert!(matches!(
            Constraint::parse("==b"),
            Err(ConstraintError::Empty { part: "key", .. })
        ));
        assert!(matches!(
            Constraint::parse("node.role=="),
            Err(ConstraintError::Empty { part: "value", .. })
        ));
        assert!(matches!(
            Constraint::parse("node.engine.x==y"),
            Err(ConstraintError::UnknownKey { .. })
        ));
        assert!(matches!(
            Constraint::parse("node.labels.==y"),
            Err(ConstraintError::UnknownKey { .. })
        ));
        assert!(matches!(
            Constraint::parse("node labels==y"),
            Err(ConstraintError::BadCharacter { bad: ' ', .. })
        ));
        assert!(matches!(
            Constraint::parse("node.role==a!=b"),
            Err(ConstraintError::BadCharacter { bad: '!', .. })
        ));
        let err = Constraint::parse("node.labels.zone=b")
            .expect_err("no operator")
            .to_string();
        assert!(err.contains("use == or !="), "{err}");
    }

    #[test]
    fn displays_in_canonical_form() {
        let c = Constraint::parse(" node.labels.zone  ==  b ").expect("parse");
        assert_eq!(c.to_string(), "node.labels.zone==b");
        let c = Constraint::parse("node.platform.arch!=aarch64").expect("parse");
        assert_eq!(c.to_string(), "node.platform.arch!=arm64");
    }

    #[test]
    fn validate_checks_constraints_and_preferences() {
        let ok = pb::Placement {
            constraints: vec!["node.role==worker".into()],
            preferences: vec![pb::SpreadOver {
                label: "node.labels.zone".into(),
            }],
            ..Default::default()
        };
        assert_eq!(validate(&ok), Ok(()));
        let bad = pb::Placement {
            preferences: vec![pb::SpreadOver {
                label: "zone".into(),
            }],
            ..Default::default()
        };
        assert!(validate(&bad).is_err());
    }

    #[test]
    fn engine_labels_are_the_agents_own() {
        let n = node();
        let c = Constraint::parse("engine.labels.rack==R7").expect("parse");
        assert_eq!(c.key, Key::EngineLabel("rack".into()));
        assert_eq!(c.key.value(&n), "r7");
        assert_eq!(
            Key::parse("engine.labels.zone").map(|k| k.value(&n).to_owned()),
            Some(String::new())
        );
        assert_eq!(c.key.to_string(), "engine.labels.rack");
    }
}
