//! From a Sequential, a loss and an optimizer to a graph, inferring every shape.

use std::sync::Arc;

use super::{
    BatchNormState, BuildError, Graph, Init, Mode, Node, Op, Param, ParamId, Phase, Value, ValueId,
    ValueKind, autodiff, fusion,
};
use crate::nn::kaiming_uniform_bound;
use crate::nn::{Layer, Loss, Sequential};
use crate::ops::activation::ActivationOp;
use crate::ops::batchnorm::BatchNormOp;
use crate::ops::dropout::{DropProbability, DropoutOp};
use crate::ops::linear::LinearOp;
use crate::ops::reduce::MetricsOp;
use crate::optim::Optimizer;

/// Builds the graph of `model` for batches of `batch_size` samples shaped `sample_shape`.
/// Shape errors name the layer and both shapes.
pub fn build(
    model: &Sequential,
    loss: &Loss,
    optimizer: &Optimizer,
    sample_shape: &[usize],
    batch_size: usize,
) -> Result<Graph, BuildError> {
    if batch_size == 0 {
        return Err(BuildError::Config("batch size must be at least 1".into()));
    }
    if sample_shape.is_empty() || sample_shape.contains(&0) {
        return Err(BuildError::Config(format!(
            "sample shape {sample_shape:?} has no elements"
        )));
    }
    optimizer
        .validate()
        .map_err(|e| BuildError::Config(e.to_string()))?;
    let features: usize = sample_shape.iter().product();
    let mut b = Builder {
        values: Vec::new(),
        nodes: Vec::new(),
        params: Vec::new(),
        batch_norms: Vec::new(),
    };
    let input = b.value(batch_size, features, ValueKind::Input);
    // The logical shape PyTorch would see; values themselves are always [N, features].
    let mut shape: Vec<usize> = std::iter::once(batch_size)
        .chain(sample_shape.iter().copied())
        .collect();
    let mut x = input;

    for (index, layer) in model.layers().iter().enumerate() {
        let kind = layer.kind();
        let shape_error = |expected: String, found: &[usize]| BuildError::Shape {
            index,
            kind,
            expected,
            found: found.to_vec(),
        };
        let layer_error = |message: String| BuildError::Layer {
            index,
            kind,
            message,
        };
        let flat = |shape: &[usize]| {
            if shape.len() == 2 {
                Ok(shape[1])
            } else {
                Err(shape_error(
                    "[N, features] (add a Flatten before it)".into(),
                    shape,
                ))
            }
        };
        match layer {
            Layer::Flatten(_) => {
                shape = vec![batch_size, shape[1..].iter().product()];
            }
            Layer::Linear(l) => {
                if shape.len() != 2 || shape[1] != l.in_features {
                    let hint = if shape.len() > 2 {
                        " (add a Flatten before it)"
                    } else {
                        ""
                    };
                    return Err(shape_error(format!("[N, {}]{hint}", l.in_features), &shape));
                }
                if l.out_features == 0 {
                    return Err(layer_error("out_features must be at least 1".into()));
                }
                // PyTorch's Linear.reset_parameters: both uniform in ±1/√in_features.
                let init = Init::Uniform {
                    bound: kaiming_uniform_bound(l.in_features),
                };
                let weight = b.param(index, "weight", vec![l.out_features, l.in_features], init);
                let bias = l
                    .bias
                    .then(|| b.param(index, "bias", vec![l.out_features], init));
                let y = b.value(batch_size, l.out_features, ValueKind::Activation);
                let op = LinearOp {
                    weight,
                    bias,
                    relu: false,
                };
                b.node(op, vec![x], vec![y], index);
                x = y;
                shape = vec![batch_size, l.out_features];
            }
            Layer::BatchNorm1d(bn) => {
                if shape.len() != 2 || shape[1] != bn.num_features {
                    return Err(shape_error(format!("[N, {}]", bn.num_features), &shape));
                }
                if !(bn.config.eps > 0.0) {
                    return Err(layer_error(format!(
                        "eps must be positive, got {}",
                        bn.config.eps
                    )));
                }
                if let Some(m) = bn.config.momentum
                    && !(0.0..=1.0).contains(&m)
                {
                    return Err(layer_error(format!("momentum must be in [0, 1], got {m}")));
                }
                let d = bn.num_features;
                let gamma = b.param(index, "weight", vec![d], Init::Constant(1.0));
                let beta = b.param(index, "bias", vec![d], Init::Constant(0.0));
                let bn_id = b.batch_norms.len();
                b.batch_norms.push(BatchNormState {
                    layer: index,
                    features: d,
                    config: bn.config,
                    gamma,
                    beta,
                });
                let y = b.value(batch_size, d, ValueKind::Activation);
                let saved = b.value(2, d, ValueKind::Saved);
                let op = BatchNormOp {
                    bn: bn_id,
                    relu: false,
                    dropout: None,
                };
                b.node(op, vec![x], vec![y, saved], index);
                x = y;
            }
            Layer::Activation(a) => {
                let features = flat(&shape)?;
                let y = b.value(batch_size, features, ValueKind::Activation);
                b.node(ActivationOp::new(a.clone()), vec![x], vec![y], index);
                x = y;
            }
            Layer::Dropout(d) => {
                let p = DropProbability::new(d.p).map_err(|e| layer_error(e.to_string()))?;
                let features = flat(&shape)?;
                // p = 0 is the identity in both modes: no node at all.
                if p.get() > 0.0 {
                    let y = b.value(batch_size, features, ValueKind::Activation);
                    let op = DropoutOp {
                        p,
                        stream: index as u32,
                    };
                    b.node(op, vec![x], vec![y], index);
                    x = y;
                }
            }
        }
    }
    // Linear → ReLU, BatchNorm → ReLU (→ Dropout): see each op's `absorb`.
    fusion::fuse(&mut b.nodes);

    if shape.len() != 2 {
        return Err(BuildError::Loss(format!(
            "the model's output has shape {shape:?}; the loss needs [N, classes] (add Flatten and Linear)"
        )));
    }
    let logits = x;
    let classes = shape[1];
    // One target per sample: a class index, or 0/1 for BCE.
    let target = b.value(batch_size, 1, ValueKind::Target);
    let rows = b.value(batch_size, 4, ValueKind::LossRows);
    let dlogits = b.value(batch_size, classes, ValueKind::Gradient);
    let loss_op = loss.op(classes).map_err(BuildError::Loss)?;
    b.nodes.push(Node {
        op: loss_op,
        inputs: vec![logits, target],
        outputs: vec![rows, dlogits],
        phase: Phase::Forward,
        layer: None,
    });
    b.nodes.push(Node {
        op: Arc::new(MetricsOp),
        inputs: vec![rows],
        outputs: vec![],
        phase: Phase::Forward,
        layer: None,
    });

    let mut graph = Graph {
        batch_size,
        sample_shape: sample_shape.to_vec(),
        values: b.values,
        nodes: b.nodes,
        params: b.params,
        batch_norms: b.batch_norms,
        loss: loss.clone(),
        optimizer: *optimizer,
        input,
        target,
        logits,
        loss_rows: rows,
    };
    autodiff::append_backward(&mut graph, dlogits);
    debug_assert!(
        graph
            .nodes_for(Mode::Eval)
            .all(|(_, n)| n.phase == Phase::Forward)
    );
    Ok(graph)
}

struct Builder {
    values: Vec<Value>,
    nodes: Vec<Node>,
    params: Vec<Param>,
    batch_norms: Vec<BatchNormState>,
}

impl Builder {
    fn value(&mut self, rows: usize, cols: usize, kind: ValueKind) -> ValueId {
        self.values.push(Value { rows, cols, kind });
        ValueId(self.values.len() - 1)
    }

    fn param(&mut self, layer: usize, name: &str, shape: Vec<usize>, init: Init) -> ParamId {
        self.params.push(Param {
            name: format!("{layer}.{name}"),
            shape,
            layer,
            init,
        });
        ParamId(self.params.len() - 1)
    }

    fn node(&mut self, op: impl Op, inputs: Vec<ValueId>, outputs: Vec<ValueId>, layer: usize) {
        self.nodes.push(Node {
            op: Arc::new(op),
            inputs,
            outputs,
            phase: Phase::Forward,
            layer: Some(layer),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::FoldedDropout;
    use crate::nn::{BCEWithLogitsLoss, BatchNorm1d, Dropout, Flatten, Linear, ReLU};
    use crate::ops::linear::LinearGradInputOp;
    use crate::optim::Sgd;

    fn sgd() -> Optimizer {
        Optimizer::Sgd(Sgd::default())
    }

    #[test]
    fn lecture_mlp_builds_with_fused_relus_and_a_full_backward() {
        let model = Sequential::lecture_mlp(3072, 10, 0.2);
        let g = build(&model, &Loss::default(), &sgd(), &[3, 32, 32], 128).unwrap();
        let forward: Vec<_> = g.nodes_for(Mode::Eval).map(|(_, n)| n).collect();
        // Linear, then BatchNorm with its ReLU and dropout folded in, twice; Linear, loss.
        let bn = forward[1].op_as::<BatchNormOp>();
        assert!(
            matches!(
                bn,
                Some(BatchNormOp {
                    relu: true,
                    dropout: Some(FoldedDropout { stream: 4, .. }),
                    ..
                })
            ),
            "{forward:?}"
        );
        assert!(!forward.iter().any(|n| n.op_as::<DropoutOp>().is_some()));
        assert!(!forward.iter().any(|n| n.op_as::<ActivationOp>().is_some()));
        assert_eq!(g.value(g.logits).cols, 10);
        assert_eq!(g.params.len(), 10);
        assert_eq!(g.params[0].shape, vec![64, 3072]);
        // No gradient flows into the input.
        assert!(
            !g.nodes
                .iter()
                .any(|n| n.inputs.contains(&g.input) && n.op_as::<LinearGradInputOp>().is_some())
        );
        let last = g.nodes.last().unwrap();
        assert!(last.op_as::<crate::optim::OptimizerStep>().is_some());
        let backward = g
            .nodes
            .iter()
            .filter(|n| n.phase == Phase::Backward)
            .count();
        // BN×2 (through their dropouts), Linear params×3, Linear inputs×2
        assert_eq!(backward, 7);
    }

    #[test]
    fn shape_errors_name_the_layer_and_both_shapes() {
        let model = Sequential::new().append(Linear::new(784, 10));
        let err = build(&model, &Loss::default(), &sgd(), &[1, 28, 28], 4).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("layer 0 (Linear)")
                && msg.contains("[N, 784]")
                && msg.contains("[4, 1, 28, 28]"),
            "{msg}"
        );
        assert!(msg.contains("Flatten"), "{msg}");

        let model = Sequential::new()
            .append(Flatten)
            .append(Linear::new(784, 64))
            .append(BatchNorm1d::new(32));
        let err = build(&model, &Loss::default(), &sgd(), &[1, 28, 28], 4)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("layer 2 (BatchNorm1d)")
                && err.contains("[N, 32]")
                && err.contains("[4, 64]"),
            "{err}"
        );

        let model = Sequential::new().append(Flatten).append(Dropout::new(1.5));
        let err = build(&model, &Loss::default(), &sgd(), &[3], 4)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("layer 1 (Dropout)") && err.contains("between 0 and 1"),
            "{err}"
        );

        let model = Sequential::new().append(Flatten).append(Linear::new(3, 2));
        let err = build(&model, &BCEWithLogitsLoss::new().into(), &sgd(), &[3], 4)
            .unwrap_err()
            .to_string();
        assert!(err.contains("one output per sample"), "{err}");
    }

    #[test]
    fn relu_after_linear_fuses_and_dropout_zero_vanishes() {
        let model = Sequential::new()
            .append(Flatten)
            .append(Linear::new(8, 4))
            .append(ReLU)
            .append(Dropout::new(0.0))
            .append(ReLU)
            .append(Linear::new(4, 2));
        let g = build(&model, &Loss::default(), &sgd(), &[8], 3).unwrap();
        let forward: Vec<_> = g.nodes_for(Mode::Eval).map(|(_, n)| n).collect();
        assert!(matches!(
            forward[0].op_as::<LinearOp>(),
            Some(LinearOp { relu: true, .. })
        ));
        // The second ReLU cannot fuse again: a standalone node.
        assert!(
            forward[1]
                .op_as::<ActivationOp>()
                .is_some_and(ActivationOp::is_relu)
        );
        assert!(!forward.iter().any(|n| n.op_as::<DropoutOp>().is_some()));
    }
}
