//! The memory planner on real graphs: values whose lifetimes overlap never share a buffer,
//! sharing saves memory, and eval aliases a dropout's output to its input.

use wgnn::exec::memory::{MemoryPlan, plan};
use wgnn::graph::{Graph, Mode, ValueId, ValueKind};
use wgnn::nn::{Dropout, Flatten, Linear, Loss, ReLU, Sequential, build};
use wgnn::optim::{Optimizer, Sgd};

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
        .find(|n| n.op_as::<wgnn::ops::dropout::DropoutOp>().is_some())
        .unwrap();
    assert_eq!(
        m.slot_of[dropout.outputs[0].0],
        m.slot_of[dropout.inputs[0].0]
    );
    assert!(m.slot_of[g.logits.0].is_some());
}
