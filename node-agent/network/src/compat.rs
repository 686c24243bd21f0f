//! Living next to Docker: dockerd sets the iptables `filter FORWARD` policy to DROP and
//! loads br_netfilter (bridged frames then traverse iptables too), so skiff's own
//! accept in `inet skiff` is not enough: a drop in any table wins. When the FORWARD
//! chain of any iptables flavour (nft or legacy) drops by policy, skiff inserts three
//! ACCEPT rules tagged `-m comment --comment skiff` at its top (in from a skiff bridge,
//! out to one, and routing-mesh flows by conntrack mark) and removes them on teardown.

use std::path::Path;

use crate::firewall::{self, FirewallError, MESH_MARK};

const COMMENT: &str = "skiff";

/// What was found and done about the host's firewall.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostFirewall {
    /// The iptables flavours whose FORWARD policy is DROP.
    pub forward_drop: Vec<&'static str>,
    /// /proc/sys/net/bridge/bridge-nf-call-iptables is 1 (br_netfilter loaded and on).
    pub br_netfilter: bool,
    /// The flavours skiff inserted its ACCEPT rules into.
    pub patched: Vec<&'static str>,
}

impl HostFirewall {
    /// Lines for the agent's diagnostics.
    pub fn diagnostics(&self) -> Vec<String> {
        let mut out = Vec::new();
        for f in &self.forward_drop {
            let done = if self.patched.contains(f) {
                "skiff inserted ACCEPT rules for skb+ bridges (comment \"skiff\")"
            } else {
                "skiff could not insert its ACCEPT rules: overlay traffic will be dropped"
            };
            out.push(format!(
                "{f}: filter FORWARD policy is DROP (Docker?); {done}"
            ));
        }
        if self.br_netfilter {
            out.push(
                "br_netfilter is on (bridge-nf-call-iptables=1): bridged traffic also passes iptables FORWARD".to_owned(),
            );
        }
        if out.is_empty() {
            out.push(
                "host firewall: FORWARD accepts, no br_netfilter: nothing to work around"
                    .to_owned(),
            );
        }
        out
    }
}

fn rules() -> Vec<Vec<String>> {
    let mark = format!("{MESH_MARK:#x}");
    let base: [&[&str]; 3] = [
        &["-i", "skb+"],
        &["-o", "skb+"],
        &["-m", "connmark", "--mark", mark.as_str()],
    ];
    base.iter()
        .map(|m| {
            let mut r: Vec<String> = m.iter().map(|s| s.to_string()).collect();
            r.extend(["-m", "comment", "--comment", COMMENT, "-j", "ACCEPT"].map(String::from));
            r
        })
        .collect()
}

fn flavours() -> Vec<&'static str> {
    let found: Vec<&'static str> = ["iptables-nft", "iptables-legacy"]
        .into_iter()
        .filter(|b| {
            ["/usr/sbin", "/sbin", "/usr/bin"]
                .iter()
                .any(|d| Path::new(d).join(b).exists())
        })
        .collect();
    if found.is_empty() {
        vec!["iptables"]
    } else {
        found
    }
}

async fn forward_policy_drop(ns: Option<&Path>, bin: &'static str) -> bool {
    match firewall::run_in(
        ns,
        bin,
        vec!["-w".into(), "-S".into(), "FORWARD".into()],
        None,
    )
    .await
    {
        Ok(out) => out.lines().any(|l| l.trim() == "-P FORWARD DROP"),
        Err(_) => false,
    }
}

/// Detects Docker-style FORWARD drops in `ns` and inserts skiff's ACCEPT rules where
/// needed (idempotent: a rule already there is not added twice).
pub async fn cope(ns: Option<&Path>) -> HostFirewall {
    let mut hf = HostFirewall::default();
    let br = firewall::run_in(
        ns,
        "cat",
        vec!["/proc/sys/net/bridge/bridge-nf-call-iptables".into()],
        None,
    )
    .await;
    hf.br_netfilter = br.map(|s| s.trim() == "1").unwrap_or(false);
    for bin in flavours() {
        if !forward_policy_drop(ns, bin).await {
            continue;
        }
        hf.forward_drop.push(bin);
        let mut ok = true;
        for rule in rules().iter().rev() {
            let mut check = vec!["-w".to_owned(), "-C".to_owned(), "FORWARD".to_owned()];
            check.extend(rule.iter().cloned());
            if firewall::run_in(ns, bin, check, None).await.is_ok() {
                continue;
            }
            let mut insert = vec!["-w".to_owned(), "-I".to_owned(), "FORWARD".to_owned()];
            insert.extend(rule.iter().cloned());
            if let Err(err) = firewall::run_in(ns, bin, insert, None).await {
                tracing::warn!(%err, "inserting skiff's FORWARD accept rule");
                ok = false;
            }
        }
        if ok {
            hf.patched.push(bin);
        }
    }
    hf
}

/// Removes every rule [`cope`] inserted.
pub async fn undo(ns: Option<&Path>, hf: &HostFirewall) -> Result<(), FirewallError> {
    for bin in &hf.patched {
        for rule in rules() {
            let mut del = vec!["-w".to_owned(), "-D".to_owned(), "FORWARD".to_owned()];
            del.extend(rule);
            while firewall::run_in(ns, bin, del.clone(), None).await.is_ok() {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diagnostics_say_what_was_found() {
        let hf = HostFirewall {
            forward_drop: vec!["iptables-nft"],
            br_netfilter: true,
            patched: vec!["iptables-nft"],
        };
        let d = hf.diagnostics();
        assert!(d[0].contains("policy is DROP") && d[0].contains("inserted"));
        assert!(d[1].contains("br_netfilter"));
        assert!(HostFirewall::default().diagnostics()[0].contains("nothing to work around"));
        assert!(rules().iter().all(|r| r.contains(&"skiff".to_owned())));
    }
}
