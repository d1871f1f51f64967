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
