//! From a Sequential, a loss and an optimizer to a graph, inferring every shape: each layer
//! lowers itself (its [`Module::lower`](super::Module::lower)), the loss and the metrics
//! follow, fusion rules run, autodiff appends the backward and the optimizer's update.

use std::sync::Arc;

use super::{Loss, Sequential};
use crate::data::Transform;
use crate::graph::{self, BuildError, Graph, Lowering, Mode, Node, Phase, ValueKind};
use crate::ops::preprocess::PreprocessOp;
use crate::ops::reduce::MetricsOp;
use crate::optim::{Optimizer, OptimizerStep};

/// Builds the graph of `model` for batches of `batch_size` samples shaped `sample_shape`.
/// Shape errors name the layer and both shapes.
pub fn build(
    model: &Sequential,
    loss: &Loss,
    optimizer: &Optimizer,
    sample_shape: &[usize],
    batch_size: usize,
) -> Result<Graph, BuildError> {
    build_with(model, loss, optimizer, sample_shape, batch_size, None)
}

/// [`build`], with a fitted preprocessing as the graph's fixed first stage: raw samples shaped
/// `sample_shape` go in, and the model's first layer sees the transform's output shape.
pub fn build_with(
    model: &Sequential,
    loss: &Loss,
    optimizer: &Optimizer,
    sample_shape: &[usize],
    batch_size: usize,
    preprocess: Option<&Arc<Transform>>,
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
    let mut b = Lowering::new(batch_size, sample_shape);
    let input = b.input();
    if let Some(t) = preprocess {
        lower_preprocess(&mut b, t, sample_shape)?;
    }
    for (index, layer) in model.layers().iter().enumerate() {
        b.enter_layer(index, layer.kind());
        layer.lower(&mut b)?;
    }
    let (shape, logits) = (b.shape().to_vec(), b.input());

    if shape.len() != 2 {
        return Err(BuildError::Loss(format!(
            "the model's output has shape {shape:?}; the loss needs [N, classes] (add Flatten and Linear)"
        )));
    }
    let classes = shape[1];
    // One target per sample: a class index, or 0/1 for BCE.
    let target = b.value(batch_size, 1, ValueKind::Target);
    let rows = b.value(batch_size, 4, ValueKind::LossRows);
    let dlogits = b.value(batch_size, classes, ValueKind::Gradient);
    let loss_op = loss.op(classes, &mut b).map_err(BuildError::Loss)?;
    b.push_node(Node {
        op: loss_op,
        inputs: vec![logits, target],
        outputs: vec![rows, dlogits],
        phase: Phase::Forward,
        layer: None,
    });
    b.push_node(Node {
        op: Arc::new(MetricsOp),
        inputs: vec![rows],
        outputs: vec![],
        phase: Phase::Forward,
        layer: None,
    });
    let lowered = b.finish();
    let mut nodes = lowered.nodes;
    // Linear → ReLU, BatchNorm → ReLU (→ Dropout), cross-entropy → metrics: see each op's
    // `absorb`.
    graph::fuse(&mut nodes);

    let mut graph = Graph {
        batch_size,
        sample_shape: sample_shape.to_vec(),
        values: lowered.values,
        nodes,
        params: lowered.params,
        buffers: lowered.buffers,
        optimizer_states: optimizer.state_names().to_vec(),
        constants: lowered.constants,
        preprocess: preprocess.cloned(),
        input,
        target,
        logits,
        loss_rows: rows,
    };
    graph::append_backward(&mut graph, dlogits);
    graph.nodes.push(Node {
        op: Arc::new(OptimizerStep {
            optimizer: *optimizer,
        }),
        inputs: vec![],
        outputs: vec![],
        phase: Phase::Update,
        layer: None,
    });
    // A Linear's bias gradient summed by the batch norm backward that wrote its dy.
    graph::hand_off_column_sums(&mut graph.nodes);
    debug_assert!(
        graph
            .nodes_for(Mode::Eval)
            .all(|(_, n)| n.phase == Phase::Forward)
    );
    Ok(graph)
}

/// The preprocessing stage: raw \[N, D\] in, \[N, K\] out, the first layer seeing the
/// transform's output shape. It reads no parameter, so no gradient flows back into it.
fn lower_preprocess(
    b: &mut Lowering,
    t: &Arc<Transform>,
    sample_shape: &[usize],
) -> Result<(), BuildError> {
    if t.input_shape != sample_shape {
        return Err(BuildError::Config(format!(
            "the preprocessing ({}) was fitted on samples shaped {:?}, but the model takes {:?}",
            t.kind, t.input_shape, sample_shape
        )));
    }
    t.validate()
        .map_err(|e| BuildError::Config(e.to_string()))?;
    let shift = b.constant("preprocess.shift", t.shift.clone());
    let divisor = t
        .divisor
        .clone()
        .map(|d| b.constant("preprocess.divisor", d));
    let matrix = t.matrix.clone().map(|a| b.constant("preprocess.matrix", a));
    let (d, k) = (t.input_features(), t.output_features());
    let x = b.input();
    let y = b.value(b.batch_size, k, ValueKind::Activation);
    let mut outputs = vec![y];
    if matrix.is_some() {
        // The centred input, read by the product within the same node.
        outputs.push(b.value(b.batch_size, d, ValueKind::Activation));
    }
    b.push_node(Node {
        op: Arc::new(PreprocessOp {
            shift,
            divisor,
            matrix,
        }),
        inputs: vec![x],
        outputs,
        phase: Phase::Forward,
        layer: None,
    });
    let shape = std::iter::once(b.batch_size)
        .chain(t.output_shape.iter().copied())
        .collect();
    b.set_output(y, shape);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::cpu::CpuExecutor;
    use crate::graph::HostState;
    use crate::nn::CrossEntropyLoss;
    use crate::nn::{BCEWithLogitsLoss, BatchNorm1d, Dropout, Flatten, Linear, ReLU};
    use crate::ops::activation::ActivationOp;
    use crate::ops::batchnorm::{BatchNormBackwardOp, BatchNormOp, FoldedDropout};
    use crate::ops::dropout::DropoutOp;
    use crate::ops::linear::{LinearGradInputOp, LinearGradParamsOp, LinearOp};
    use crate::ops::softmax_xent::CrossEntropyOp;
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
        // The loss has absorbed the metrics node.
        assert!(!g.nodes.iter().any(|n| n.op_as::<MetricsOp>().is_some()));
        let loss = g.nodes.iter().find_map(|n| n.op_as::<CrossEntropyOp>());
        assert!(loss.is_some_and(|l| l.metrics), "{:?}", g.nodes);
        // The first two Linears' bias gradients (params 1 and 5) are summed by the batch norm
        // backward after them, the last one's (9) by the loss.
        let params: Vec<_> = g
            .nodes
            .iter()
            .filter_map(|n| n.op_as::<LinearGradParamsOp>())
            .map(|op| (op.weight.0, op.bias.map(|b| b.0)))
            .collect();
        assert_eq!(params, vec![(8, None), (4, None), (0, None)]);
        assert_eq!(loss.and_then(|l| l.bias_grad).map(|b| b.0), Some(9));
        let handed: Vec<_> = g
            .nodes
            .iter()
            .filter_map(|n| n.op_as::<BatchNormBackwardOp>())
            .map(|op| op.bias_grad.map(|b| b.0))
            .collect();
        assert_eq!(handed, vec![Some(5), Some(1)]);
    }

    #[test]
    fn a_linear_whose_gradient_comes_through_a_relu_keeps_its_bias_gradient() {
        let model = Sequential::new()
            .append(Linear::new(5, 4))
            .append(ReLU)
            .append(Linear::new(4, 3));
        let g = build(&model, &Loss::default(), &sgd(), &[5], 8).unwrap();
        let biases: Vec<_> = g
            .nodes
            .iter()
            .filter_map(|n| n.op_as::<LinearGradParamsOp>())
            .map(|op| op.bias.map(|b| b.0))
            .collect();
        // The last Linear's (param 3) goes to the loss; the first's gradient is the ReLU
        // backward's output, which sums nothing.
        assert_eq!(biases, vec![None, Some(1)]);
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

    /// The CPU reference graph's parameter gradients (autodiff through Linear, BatchNorm,
    /// ReLU and cross-entropy) against central finite differences of its loss.
    #[test]
    fn whole_model_gradients_match_finite_differences() {
        let model = Sequential::lecture_mlp(5, 3, 0.0);
        // lr 0: a "training step" computes the gradients and leaves the parameters.
        let sgd = Optimizer::Sgd(Sgd {
            lr: 0.0,
            ..Sgd::default()
        });
        let loss = Loss::CrossEntropy(CrossEntropyLoss::new());
        let graph = build(&model, &loss, &sgd, &[5], 6).unwrap();
        let state = HostState::init(&graph, 11);
        let rebuild = Box::new(move |rows| build(&model, &loss, &sgd, &[5], rows));
        let mut cpu = CpuExecutor::new(rebuild, graph, state, 0);
        let x: Vec<f32> = (0..30)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) / 3.0)
            .collect();
        let y = vec![0u32, 1, 2, 2, 1, 0];
        cpu.run(Mode::Train, &x, &y).unwrap();
        let grads = cpu.grads.clone();
        // Small enough to stay on one side of the ReLUs, large enough for f32 losses.
        let h = 1e-3f32;
        for (p, grad) in grads.iter().enumerate() {
            for i in [0, grad.len() / 2, grad.len() - 1] {
                let mut at = |delta: f32| {
                    cpu.state.params[p][i] += delta;
                    let l = cpu.run(Mode::Train, &x, &y).unwrap().loss;
                    cpu.state.params[p][i] -= delta;
                    f64::from(l)
                };
                let fd = ((at(h) - at(-h)) / (2.0 * f64::from(h))) as f32;
                let name = &cpu.graph.params[p].name;
                assert!(
                    (fd - grad[i]).abs() < 2e-3 + 2e-2 * grad[i].abs(),
                    "{name}[{i}]: finite difference {fd}, autodiff {}",
                    grad[i]
                );
            }
        }
    }
}
