//! Rebalancing when a node joins or comes back: a replicated service whose tasks sit
//! unevenly (one eligible node has at least two more than another that could take one)
//! moves tasks from the fullest to the emptiest node, `parallelism` at a time, and only
//! once the service has been steady (every slot up, nothing updating) for the update
//! `delay`. A move is a new task for the same slot, sent to the target node, in the
//! update `order`: start-first keeps the old task until the new one is up (the slot
//! logic then stops it), stop-first stops it at once. With spread preferences, tasks
//! only move between nodes of the same branch (same label values), so the spread over
//! labels the scheduler made is kept. Binpack services are never rebalanced.

use std::collections::{BTreeMap, HashMap};

use skiff_proto::v1::{self as pb, TaskState, update_config::Order, update_status::State};

use crate::action::StopReason;
use crate::ids::SlotKey;
use crate::nodes::accepts_tasks;
use crate::service::{Pass, SlotState};
use crate::update::effective_config;

impl Pass<'_> {
    pub(crate) fn rebalance(&mut self, slots: &[(SlotKey, SlotState)]) {
        if self.global {
            return;
        }
        let Some(req) = self.req.clone() else { return };
        if req.binpack {
            return;
        }
        if !matches!(
            self.update_state,
            State::None | State::Completed | State::RollbackCompleted
        ) {
            return;
        }
        // Only a steady service moves: nothing else to do in this pass, every slot up.
        if self.actions.iter().any(|a| a.is_write()) {
            return;
        }
        let mut winners: Vec<(SlotKey, usize)> = Vec::with_capacity(slots.len());
        for (key, st) in slots {
            match *st {
                SlotState::Occupied {
                    winner,
                    candidate: None,
                } if self.views[winner].up && !self.views[winner].dirty => {
                    winners.push((key.clone(), winner));
                }
                _ => return,
            }
        }
        let mut counts: HashMap<String, usize> = HashMap::new();
        for (_, w) in &winners {
            *counts.entry(self.views[*w].t.node_id.clone()).or_insert(0) += 1;
        }
        // Fewer than two on every node: as even as it gets (0 or 1 everywhere).
        if counts.values().all(|&c| c <= 1) {
            return;
        }
        let cfg = effective_config(self.input.service, false);
        let last_up = winners
            .iter()
            .map(|(_, w)| self.views[*w].since())
            .max()
            .unwrap_or(0);
        let settled = last_up.saturating_add(cfg.delay_ms as i64);
        if self.now() < settled {
            self.requeue(settled);
            return;
        }

        let mut branches: BTreeMap<Vec<String>, Vec<&pb::Node>> = BTreeMap::new();
        for n in self.input.nodes.list() {
            if accepts_tasks(n) && req.placement_check(n).is_ok() {
                let path = req
                    .preferences
                    .iter()
                    .map(|k| k.value(n).to_owned())
                    .collect();
                branches.entry(path).or_default().push(n);
            }
        }
        let template = pb::Task {
            service_id: self.input.service.id.clone(),
            spec: Some(self.spec.clone()),
            spec_version: self.input.service.spec_version,
            desired_state: TaskState::Running as i32,
            ..Default::default()
        };
        let fits = |node: &str| self.input.fits.is_none_or(|f| f(&template, node));
        let budget = if cfg.parallelism == 0 {
            usize::MAX
        } else {
            cfg.parallelism as usize
        };
        let mut moves: Vec<(usize, String)> = Vec::new();
        let mut moved = vec![false; self.views.len()];
        while moves.len() < budget {
            let mut best: Option<(usize, String, String)> = None;
            for nodes in branches.values() {
                let count = |n: &pb::Node| counts.get(&n.id).copied().unwrap_or(0);
                let Some(source) = nodes
                    .iter()
                    .max_by(|a, b| count(a).cmp(&count(b)).then(b.id.cmp(&a.id)))
                else {
                    continue;
                };
                let high = count(source);
                let target = nodes
                    .iter()
                    .filter(|n| count(n) + 2 <= high)
                    .filter(|n| fits(&n.id))
                    .min_by(|a, b| count(a).cmp(&count(b)).then(a.id.cmp(&b.id)));
                if let Some(target) = target {
                    let diff = high - count(target);
                    if best.as_ref().is_none_or(|(d, _, _)| diff > *d) {
                        best = Some((diff, source.id.clone(), target.id.clone()));
                    }
                }
            }
            let Some((_, source, target)) = best else {
                break;
            };
            let Some(w) = winners
                .iter()
                .filter(|(_, w)| !moved[*w] && self.views[*w].t.node_id == source)
                .max_by_key(|(key, _)| key.clone())
                .map(|(_, w)| *w)
            else {
                break;
            };
            moved[w] = true;
            *counts.entry(source).or_insert(0) -= 1;
            *counts.entry(target.clone()).or_insert(0) += 1;
            moves.push((w, target));
        }
        let order = cfg.order();
        for (w, target) in moves {
            let key = SlotKey::Slot(self.views[w].t.slot);
            let attempt = self.views[w].t.attempt;
            if order == Order::StopFirst {
                self.stop(w, TaskState::Shutdown, StopReason::Rebalanced);
            }
            self.create(&key, attempt, Some(&target));
        }
    }
}
