//! The memory planner: activations and gradients share buffers when their lifetimes do not
//! overlap. Lifetimes come from the plan's node order; each value lives from the node that
//! writes it to the last node that reads it.

use crate::graph::{Graph, Mode, ValueId, ValueKind};

/// Where each value of a plan lives.
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryPlan {
    /// Per value: the slot holding it, if the plan uses it (inputs and targets have their own
    /// upload buffers and no slot).
    pub slot_of: Vec<Option<usize>>,
    /// Bytes of each slot (the largest value it holds).
    pub slot_bytes: Vec<u64>,
    /// Bytes all values would take without sharing, for the report.
    pub unshared_bytes: u64,
}

impl MemoryPlan {
    pub fn total_bytes(&self) -> u64 {
        self.slot_bytes.iter().sum()
    }
}

/// Plans the slots of `graph` run in `mode`. `keep` values stay live to the end (outputs the
/// caller reads back, such as the logits).
pub fn plan(graph: &Graph, mode: Mode, keep: &[ValueId]) -> MemoryPlan {
    let n_values = graph.values.len();
    // Eval dropout's output is its input: resolve every read through the alias.
    let mut alias: Vec<ValueId> = (0..n_values).map(ValueId).collect();
    let nodes: Vec<_> = graph.nodes_for(mode).map(|(_, n)| n).collect();
    for node in &nodes {
        if let Some((out, inp)) = node.alias_in(mode) {
            alias[out.0] = alias[inp.0];
        }
    }
    let resolve = |v: ValueId| alias[v.0];

    let mut first_def = vec![usize::MAX; n_values];
    let mut last_use = vec![0usize; n_values];
    for (t, node) in nodes.iter().enumerate() {
        for &out in node.outputs_in(mode) {
            let out = resolve(out);
            first_def[out.0] = first_def[out.0].min(t);
            last_use[out.0] = last_use[out.0].max(t);
        }
        for &inp in &node.inputs {
            last_use[resolve(inp).0] = last_use[resolve(inp).0].max(t);
        }
    }
    for &v in keep {
        last_use[resolve(v).0] = nodes.len();
    }

    let bytes = |v: usize| graph.values[v].len() as u64 * 4;
    let external = |v: usize| matches!(graph.values[v].kind, ValueKind::Input | ValueKind::Target);
    let mut slot_of: Vec<Option<usize>> = vec![None; n_values];
    let mut slot_bytes: Vec<u64> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut unshared = 0u64;
    for t in 0..nodes.len() {
        // Allocate this node's outputs before freeing anything it reads.
        for v in 0..n_values {
            if first_def[v] != t || external(v) || slot_of[v].is_some() {
                continue;
            }
            let need = bytes(v);
            unshared += need;
            // Best fit: the smallest free slot that holds it, else the largest free one
            // (which grows), else a new slot.
            let pick = free
                .iter()
                .enumerate()
                .filter(|&(_, &s)| slot_bytes[s] >= need)
                .min_by_key(|&(_, &s)| slot_bytes[s])
                .or_else(|| free.iter().enumerate().max_by_key(|&(_, &s)| slot_bytes[s]))
                .map(|(i, _)| i);
            let slot = match pick {
                Some(i) => free.swap_remove(i),
                None => {
                    slot_bytes.push(0);
                    slot_bytes.len() - 1
                }
            };
            slot_bytes[slot] = slot_bytes[slot].max(need);
            slot_of[v] = Some(slot);
        }
        for v in 0..n_values {
            if let Some(slot) = slot_of[v]
                && last_use[v] == t
            {
                free.push(slot);
            }
        }
    }
    // Aliased values share their source's slot.
    for v in 0..n_values {
        let root = alias[v].0;
        if root != v {
            slot_of[v] = slot_of[root];
        }
    }
    MemoryPlan {
        slot_of,
        slot_bytes,
        unshared_bytes: unshared,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::build;
    use crate::nn::{Dropout, Flatten, Linear, Loss, ReLU, Sequential};
    use crate::optim::{Optimizer, Sgd};

    fn graph() -> Graph {
        let model = Sequential::lecture_mlp(784, 10, 0.2);
        build(
            &model,
            &Loss::default(),
            &Optimizer::Sgd(Sgd::default()),
            &[1, 28, 28],
            64,
        )
        .unwrap()
    }

    /// No two values whose lifetimes overlap share a slot, and every used value has one.
    fn check_no_overlap(g: &Graph, mode: Mode, m: &MemoryPlan) {
        let nodes: Vec<_> = g.nodes_for(mode).map(|(_, n)| n).collect();
        let mut live: Vec<(usize, usize, usize, usize)> = Vec::new(); // (value, slot, from, to)
        for v in 0..g.values.len() {
            let Some(slot) = m.slot_of[v] else { continue };
            let defs: Vec<usize> = nodes
                .iter()
                .enumerate()
                .filter(|(_, n)| n.outputs_in(mode).contains(&ValueId(v)))
                .map(|(t, _)| t)
                .collect();
            let uses: Vec<usize> = nodes
                .iter()
                .enumerate()
                .filter(|(_, n)| n.inputs.contains(&ValueId(v)))
                .map(|(t, _)| t)
                .collect();
            if let (Some(&from), Some(&to)) = (defs.first(), uses.iter().max().or(defs.last())) {
                live.push((v, slot, from, to));
            }
            assert!(m.slot_bytes[slot] >= g.values[v].len() as u64 * 4);
        }
        for a in &live {
            for b in &live {
                if a.0 < b.0 && a.1 == b.1 {
                    assert!(
                        a.3 < b.2 || b.3 < a.2,
                        "values {} and {} overlap in slot {}",
                        a.0,
                        b.0,
                        a.1
                    );
                }
            }
        }
    }

    #[test]
    fn train_plan_shares_buffers_without_overlap() {
        let g = graph();
        let m = plan(&g, Mode::Train, &[g.logits]);
        check_no_overlap(&g, Mode::Train, &m);
        assert!(
            m.total_bytes() < m.unshared_bytes,
            "{} vs {}",
            m.total_bytes(),
            m.unshared_bytes
        );
    }

    #[test]
    fn eval_plan_aliases_dropout_and_skips_gradients() {
        // Dropout after Linear → ReLU stays a node of its own (after a batch norm it folds).
        let model = Sequential::new()
            .append(Flatten)
            .append(Linear::new(784, 32))
            .append(ReLU)
            .append(Dropout::new(0.2))
            .append(Linear::new(32, 10));
        let sgd = Optimizer::Sgd(Sgd::default());
        let g = build(&model, &Loss::default(), &sgd, &[1, 28, 28], 64).unwrap();
        let m = plan(&g, Mode::Eval, &[g.logits]);
        check_no_overlap(&g, Mode::Eval, &m);
        for (v, value) in g.values.iter().enumerate() {
            if value.kind == ValueKind::Gradient {
                assert_eq!(m.slot_of[v], None);
            }
        }
        let dropout = g
            .nodes
            .iter()
            .find(|n| n.op_as::<crate::ops::dropout::DropoutOp>().is_some())
            .unwrap();
        assert_eq!(
            m.slot_of[dropout.outputs[0].0],
            m.slot_of[dropout.inputs[0].0]
        );
        assert!(m.slot_of[g.logits.0].is_some());
    }
}
