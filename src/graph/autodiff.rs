//! Reverse-mode differentiation at build time: walking the forward nodes backwards, each
//! op's [`Op::backward`] appends the nodes that turn its output's gradient into its input's
//! gradient (and its parameters' gradients). The graph builder then appends the optimizer's
//! node, which updates every parameter.

use std::collections::HashMap;
use std::sync::Arc;

use super::{Graph, Node, Op, Phase, Value, ValueId, ValueKind};

/// What an op's backward rule sees: which values need gradients, and where to append.
pub struct Autodiff<'g> {
    graph: &'g mut Graph,
    requires_grad: Vec<bool>,
    layer: Option<usize>,
}

impl Autodiff<'_> {
    /// Whether `v` depends on a parameter (so its gradient is needed).
    pub fn needs_grad(&self, v: ValueId) -> bool {
        self.requires_grad.get(v.0).copied().unwrap_or(false)
    }

    /// The graph so far (shapes of values, parameters).
    pub fn graph(&self) -> &Graph {
        self.graph
    }

    /// A new gradient value shaped like `like`.
    pub fn gradient_like(&mut self, like: ValueId) -> ValueId {
        let (rows, cols) = (self.graph.value(like).rows, self.graph.value(like).cols);
        self.graph.values.push(Value {
            rows,
            cols,
            kind: ValueKind::Gradient,
        });
        ValueId(self.graph.values.len() - 1)
    }

    /// Appends a backward node of the current layer.
    pub fn push(&mut self, op: impl Op, inputs: Vec<ValueId>, outputs: Vec<ValueId>) {
        self.graph.nodes.push(Node {
            op: Arc::new(op),
            inputs,
            outputs,
            phase: Phase::Backward,
            layer: self.layer,
        });
    }

    /// Appends a backward node writing one new gradient shaped like `like`, and returns it.
    pub fn push_gradient(&mut self, op: impl Op, inputs: Vec<ValueId>, like: ValueId) -> ValueId {
        let dx = self.gradient_like(like);
        self.push(op, inputs, vec![dx]);
        dx
    }
}

/// Appends the backward of every forward node. `dlogits` is the loss node's gradient output.
pub fn append_backward(graph: &mut Graph, dlogits: ValueId) {
    let requires_grad = requires_grad(graph);
    let mut grad: HashMap<ValueId, ValueId> = HashMap::new();
    grad.insert(graph.logits, dlogits);

    let forward: Vec<Node> = graph
        .nodes
        .iter()
        .filter(|n| n.phase == Phase::Forward && n.layer.is_some())
        .cloned()
        .collect();
    let mut ad = Autodiff {
        graph,
        requires_grad,
        layer: None,
    };
    for node in forward.iter().rev() {
        let Some(&dy) = grad.get(&node.outputs[0]) else {
            continue;
        };
        ad.layer = node.layer;
        if let Some(dx) = node.op.backward(node, dy, &mut ad) {
            grad.insert(node.inputs[0], dx);
        }
    }
}

/// Whether each value depends on a parameter (and so needs a gradient).
fn requires_grad(graph: &Graph) -> Vec<bool> {
    let mut requires = vec![false; graph.values.len()];
    for node in &graph.nodes {
        let from_inputs = node.inputs.iter().any(|v| requires[v.0]);
        if node.op.has_params() || from_inputs {
            for out in &node.outputs {
                requires[out.0] = true;
            }
        }
    }
    requires
}
