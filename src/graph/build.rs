//! From a Sequential, a loss and an optimizer to a graph, inferring every shape.

use super::{
    BatchNormState, BuildError, FoldedDropout, Graph, Mode, Node, Op, Param, ParamId, Phase, Value,
    ValueId, ValueKind, autodiff,
};
use crate::nn::{Layer, Loss, Sequential};
use crate::ops::dropout::DropProbability;
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
                    return Err(BuildError::Layer {
                        index,
                        kind,
                        message: "out_features must be at least 1".into(),
                    });
                }
                let weight = b.param(index, "weight", vec![l.out_features, l.in_features]);
                let bias = l.bias.then(|| b.param(index, "bias", vec![l.out_features]));
                let y = b.value(batch_size, l.out_features, ValueKind::Activation);
                b.node(
                    Op::Linear {
                        weight,
                        bias,
                        relu: false,
                    },
                    vec![x],
                    vec![y],
                    index,
                );
                x = y;
                shape = vec![batch_size, l.out_features];
            }
            Layer::BatchNorm1d(bn) => {
                if shape.len() != 2 || shape[1] != bn.num_features {
                    return Err(shape_error(format!("[N, {}]", bn.num_features), &shape));
                }
                if !(bn.config.eps > 0.0) {
                    return Err(BuildError::Layer {
                        index,
                        kind,
                        message: format!("eps must be positive, got {}", bn.config.eps),
                    });
                }
                if let Some(m) = bn.config.momentum
                    && !(0.0..=1.0).contains(&m)
                {
                    return Err(BuildError::Layer {
                        index,
                        kind,
                        message: format!("momentum must be in [0, 1], got {m}"),
                    });
                }
                let d = bn.num_features;
                let gamma = b.param(index, "weight", vec![d]);
                let beta = b.param(index, "bias", vec![d]);
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
                b.node(
                    Op::BatchNorm {
                        bn: bn_id,
                        relu: false,
                        dropout: None,
                    },
                    vec![x],
                    vec![y, saved],
                    index,
                );
                x = y;
            }
            Layer::ReLU(_) => {
                if shape.len() != 2 {
                    return Err(shape_error(
                        "[N, features] (add a Flatten before it)".into(),
                        &shape,
                    ));
                }
                // Fused into the producing Linear or BatchNorm when x has no other use.
                if let Some(last) = b.nodes.last_mut()
                    && last.outputs.first() == Some(&x)
                {
                    match &mut last.op {
                        Op::Linear { relu, .. } | Op::BatchNorm { relu, .. } if !*relu => {
                            *relu = true;
                            continue;
                        }
                        _ => {}
                    }
                }
                let y = b.value(batch_size, shape[1], ValueKind::Activation);
                b.node(Op::Relu, vec![x], vec![y], index);
                x = y;
            }
            Layer::Dropout(d) => {
                let p = DropProbability::new(d.p).map_err(|e| BuildError::Layer {
                    index,
                    kind,
                    message: e.to_string(),
                })?;
                if shape.len() != 2 {
                    return Err(shape_error(
                        "[N, features] (add a Flatten before it)".into(),
                        &shape,
                    ));
                }
                // Folded into a batch norm whose ReLU is fused and whose output x has no other
                // use: one pass instead of two, and the backward reads the mask off the zeros.
                if p.get() > 0.0
                    && let Some(last) = b.nodes.last_mut()
                    && last.outputs.first() == Some(&x)
                    && let Op::BatchNorm {
                        relu: true,
                        dropout: dropout @ None,
                        ..
                    } = &mut last.op
                {
                    *dropout = Some(FoldedDropout {
                        p,
                        stream: index as u32,
                    });
                    continue;
                }
                // p = 0 is the identity in both modes: no node at all.
                if p.get() > 0.0 {
                    let y = b.value(batch_size, shape[1], ValueKind::Activation);
                    b.node(
                        Op::Dropout {
                            p,
                            stream: index as u32,
                        },
                        vec![x],
                        vec![y],
                        index,
                    );
                    x = y;
                }
            }
        }
    }

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
    let loss_op = match loss {
        Loss::CrossEntropy(ce) => {
            if let Some(w) = &ce.config.weight
                && w.len() != classes
            {
                return Err(BuildError::Loss(format!(
                    "CrossEntropyLoss has {} class weights but the model outputs {classes} classes",
                    w.len()
                )));
            }
            if !(0.0..=1.0).contains(&ce.config.label_smoothing) {
                return Err(BuildError::Loss(format!(
                    "label_smoothing must be in [0, 1], got {}",
                    ce.config.label_smoothing
                )));
            }
            Op::CrossEntropy
        }
        Loss::BceWithLogits(bce) => {
            if classes != 1 {
                return Err(BuildError::Loss(format!(
                    "BCEWithLogitsLoss needs one output per sample, but the model outputs {classes} \
                     (end the model with a Linear(…, 1))"
                )));
            }
            if !(bce.config.pos_weight >= 0.0) {
                return Err(BuildError::Loss(format!(
                    "pos_weight must be non-negative, got {}",
                    bce.config.pos_weight
                )));
            }
            Op::BceWithLogits
        }
    };
    b.nodes.push(Node {
        op: loss_op,
        inputs: vec![logits, target],
        outputs: vec![rows, dlogits],
        phase: Phase::Forward,
        layer: None,
    });
    b.nodes.push(Node {
        op: Op::Metrics,
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

    fn param(&mut self, layer: usize, name: &str, shape: Vec<usize>) -> ParamId {
        self.params.push(Param {
            name: format!("{layer}.{name}"),
            shape,
            layer,
        });
        ParamId(self.params.len() - 1)
    }

    fn node(&mut self, op: Op, inputs: Vec<ValueId>, outputs: Vec<ValueId>, layer: usize) {
        self.nodes.push(Node {
            op,
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
    use crate::nn::{BCEWithLogitsLoss, BatchNorm1d, Dropout, Flatten, Linear, ReLU};
    use crate::optim::Sgd;

    fn sgd() -> Optimizer {
        Optimizer::Sgd(Sgd::default())
    }

    #[test]
    fn lecture_mlp_builds_with_fused_relus_and_a_full_backward() {
        let model = Sequential::lecture_mlp(3072, 10, 0.2);
        let g = build(&model, &Loss::default(), &sgd(), &[3, 32, 32], 128).unwrap();
        let forward: Vec<_> = g.nodes_for(Mode::Eval).map(|(_, n)| &n.op).collect();
        // Linear, then BatchNorm with its ReLU and dropout folded in, twice; Linear, loss.
        assert!(
            matches!(
                forward[1],
                Op::BatchNorm {
                    relu: true,
                    dropout: Some(FoldedDropout { stream: 4, .. }),
                    ..
                }
            ),
            "{forward:?}"
        );
        assert!(!forward.iter().any(|op| matches!(op, Op::Dropout { .. })));
        assert_eq!(g.value(g.logits).cols, 10);
        assert_eq!(g.params.len(), 10);
        assert_eq!(g.params[0].shape, vec![64, 3072]);
        // No gradient flows into the input.
        assert!(
            !g.nodes
                .iter()
                .any(|n| n.inputs.contains(&g.input) && matches!(n.op, Op::LinearGradInput { .. }))
        );
        let last = g.nodes.last().unwrap();
        assert_eq!(last.op, Op::OptimizerStep);
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
        let forward: Vec<_> = g.nodes_for(Mode::Eval).map(|(_, n)| n.op.clone()).collect();
        assert!(matches!(forward[0], Op::Linear { relu: true, .. }));
        // The second ReLU cannot fuse again: a standalone node.
        assert_eq!(forward[1], Op::Relu);
        assert!(!forward.iter().any(|op| matches!(op, Op::Dropout { .. })));
    }
}
