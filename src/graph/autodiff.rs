//! Reverse-mode differentiation at build time: walking the forward nodes backwards, each
//! op's rule appends the nodes that turn its output's gradient into its input's gradient
//! (and its parameters' gradients), then one optimizer node updates every parameter.

use std::collections::HashMap;

use super::{Graph, Node, Op, Phase, Value, ValueId, ValueKind};

/// Appends the backward of every forward node and the optimizer step. `dlogits` is the
/// loss node's gradient output.
pub(super) fn append_backward(graph: &mut Graph, dlogits: ValueId) {
    let requires_grad = requires_grad(graph);
    let mut grad: HashMap<ValueId, ValueId> = HashMap::new();
    grad.insert(graph.logits, dlogits);

    let forward: Vec<Node> = graph
        .nodes
        .iter()
        .filter(|n| n.phase == Phase::Forward && n.layer.is_some())
        .cloned()
        .collect();
    for node in forward.iter().rev() {
        let (x, y) = (node.inputs[0], node.outputs[0]);
        let Some(&dy) = grad.get(&y) else { continue };
        let needs_dx = requires_grad[x.0];
        let layer = node.layer;
        let push = |graph: &mut Graph, op: Op, inputs: Vec<ValueId>, out: bool| {
            let outputs = if out {
                let like = graph.value(x).clone();
                vec![new_value(graph, like.rows, like.cols)]
            } else {
                vec![]
            };
            graph.nodes.push(Node {
                op,
                inputs,
                outputs: outputs.clone(),
                phase: Phase::Backward,
                layer,
            });
            outputs.first().copied()
        };
        let dx = match node.op {
            Op::Linear { weight, bias, relu } => {
                // y = relu(x·Wᵀ + b): the ReLU's mask first, from y itself.
                let dz = if relu {
                    let (rows, cols) = (graph.value(y).rows, graph.value(y).cols);
                    let dz = new_value(graph, rows, cols);
                    graph.nodes.push(Node {
                        op: Op::ReluBackward,
                        inputs: vec![y, dy],
                        outputs: vec![dz],
                        phase: Phase::Backward,
                        layer,
                    });
                    dz
                } else {
                    dy
                };
                push(
                    graph,
                    Op::LinearGradParams { weight, bias },
                    vec![dz, x],
                    false,
                );
                if needs_dx {
                    push(graph, Op::LinearGradInput { weight }, vec![dz], true)
                } else {
                    None
                }
            }
            Op::BatchNorm { bn, relu, dropout } => {
                // Always run: it also gives dγ and dβ. dx is produced regardless.
                let saved = node.outputs[1];
                push(
                    graph,
                    Op::BatchNormBackward { bn, relu, dropout },
                    vec![x, y, dy, saved],
                    true,
                )
            }
            Op::Relu if needs_dx => push(graph, Op::ReluBackward, vec![y, dy], true),
            Op::Dropout { p, stream } if needs_dx => {
                push(graph, Op::DropoutBackward { p, stream }, vec![dy], true)
            }
            _ => None,
        };
        if let Some(dx) = dx {
            grad.insert(x, dx);
        }
    }
    graph.nodes.push(Node {
        op: Op::OptimizerStep,
        inputs: vec![],
        outputs: vec![],
        phase: Phase::Update,
        layer: None,
    });
}

/// Whether each value depends on a parameter (and so needs a gradient).
fn requires_grad(graph: &Graph) -> Vec<bool> {
    let mut requires = vec![false; graph.values.len()];
    for node in &graph.nodes {
        let has_params = matches!(node.op, Op::Linear { .. } | Op::BatchNorm { .. });
        let from_inputs = node.inputs.iter().any(|v| requires[v.0]);
        if has_params || from_inputs {
            for out in &node.outputs {
                requires[out.0] = true;
            }
        }
    }
    requires
}

fn new_value(graph: &mut Graph, rows: usize, cols: usize) -> ValueId {
    graph.values.push(Value {
        rows,
        cols,
        kind: ValueKind::Gradient,
    });
    ValueId(graph.values.len() - 1)
}
