//! From a Sequential, a loss and an optimizer to a graph, inferring every shape.

use std::sync::Arc;

use super::{
    BatchNormState, BuildError, ConstId, Constant, Graph, Init, Mode, Node, Op, Param, ParamId,
    Phase, Value, ValueId, ValueKind, autodiff, fusion,
};
use crate::data::Transform;
use crate::nn::{Loss, Sequential};
use crate::ops::preprocess::PreprocessOp;
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
    let features: usize = sample_shape.iter().product();
    let mut b = Lowering {
        batch_size,
        // The logical shape PyTorch would see; values themselves are always [N, features].
        shape: std::iter::once(batch_size)
            .chain(sample_shape.iter().copied())
            .collect(),
        x: ValueId(0),
        index: 0,
        kind: "",
        values: Vec::new(),
        nodes: Vec::new(),
        params: Vec::new(),
        batch_norms: Vec::new(),
        constants: Vec::new(),
    };
    let input = b.value(batch_size, features, ValueKind::Input);
    b.x = input;
    if let Some(t) = preprocess {
        lower_preprocess(&mut b, t, sample_shape)?;
    }
    for (index, layer) in model.layers().iter().enumerate() {
        (b.index, b.kind) = (index, layer.kind());
        layer.lower(&mut b)?;
    }
    let (shape, x) = (b.shape.clone(), b.x);

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
    // Linear → ReLU, BatchNorm → ReLU (→ Dropout), cross-entropy → metrics: see each op's
    // `absorb`.
    fusion::fuse(&mut b.nodes);

    let mut graph = Graph {
        batch_size,
        sample_shape: sample_shape.to_vec(),
        values: b.values,
        nodes: b.nodes,
        params: b.params,
        batch_norms: b.batch_norms,
        constants: b.constants,
        preprocess: preprocess.cloned(),
        loss: loss.clone(),
        optimizer: *optimizer,
        input,
        target,
        logits,
        loss_rows: rows,
    };
    autodiff::append_backward(&mut graph, dlogits);
    // A Linear's bias gradient summed by the batch norm backward that wrote its dy.
    fusion::hand_off_column_sums(&mut graph.nodes);
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
    let x = b.x;
    let y = b.value(b.batch_size, k, ValueKind::Activation);
    let mut outputs = vec![y];
    if matrix.is_some() {
        // The centred input, read by the product within the same node.
        outputs.push(b.value(b.batch_size, d, ValueKind::Activation));
    }
    b.nodes.push(Node {
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

/// What a layer's [`Module::lower`](crate::nn::Module::lower) sees and extends: the shape
/// PyTorch would see at this point of the Sequential, the value holding it, and the graph so
/// far. Errors it makes name the layer (index and kind).
pub struct Lowering {
    pub batch_size: usize,
    shape: Vec<usize>,
    x: ValueId,
    index: usize,
    kind: &'static str,
    values: Vec<Value>,
    nodes: Vec<Node>,
    params: Vec<Param>,
    batch_norms: Vec<BatchNormState>,
    constants: Vec<Constant>,
}

impl Lowering {
    /// The logical shape of the layer's input, batch first (\[N, 3, 32, 32\], \[N, 64\]).
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The value holding the layer's input.
    pub fn input(&self) -> ValueId {
        self.x
    }

    /// The layer's index in the Sequential (its state_dict prefix, its dropout stream).
    pub fn index(&self) -> usize {
        self.index
    }

    /// The features of a flat input \[N, features\], or an error asking for a Flatten.
    pub fn flat_features(&self) -> Result<usize, BuildError> {
        match self.shape[..] {
            [_, features] => Ok(features),
            _ => Err(self.shape_error("[N, features] (add a Flatten before it)".into())),
        }
    }

    /// Checks that the input is \[N, features\], naming both shapes otherwise.
    pub fn expect_features(&self, features: usize) -> Result<(), BuildError> {
        match self.shape[..] {
            [_, f] if f == features => Ok(()),
            [_, _] => Err(self.shape_error(format!("[N, {features}]"))),
            _ => Err(self.shape_error(format!("[N, {features}] (add a Flatten before it)"))),
        }
    }

    /// An error for an input of the wrong shape: what was `expected`, and what came.
    pub fn shape_error(&self, expected: String) -> BuildError {
        BuildError::Shape {
            index: self.index,
            kind: self.kind,
            expected,
            found: self.shape.clone(),
        }
    }

    /// An error in the layer's own settings.
    pub fn error(&self, message: String) -> BuildError {
        BuildError::Layer {
            index: self.index,
            kind: self.kind,
            message,
        }
    }

    /// A learnable parameter of this layer, named `"{index}.{name}"` as in its state_dict.
    pub fn param(&mut self, name: &str, shape: Vec<usize>, init: Init) -> ParamId {
        self.params.push(Param {
            name: format!("{}.{name}", self.index),
            shape,
            layer: self.index,
            init,
        });
        ParamId(self.params.len() - 1)
    }

    /// A batch norm's non-learnable state (running statistics); returns its index.
    pub fn batch_norm(&mut self, state: BatchNormState) -> usize {
        self.batch_norms.push(state);
        self.batch_norms.len() - 1
    }

    /// A fixed tensor its ops read (uploaded once, shared by every plan).
    pub fn constant(&mut self, name: &str, data: Vec<f32>) -> ConstId {
        self.constants.push(Constant {
            name: name.to_string(),
            data: Arc::new(data),
        });
        ConstId(self.constants.len() - 1)
    }

    /// A new value of the batch's rows and `cols` columns.
    pub fn activation(&mut self, cols: usize) -> ValueId {
        self.value(self.batch_size, cols, ValueKind::Activation)
    }

    /// A new value a forward saves for its backward, [rows, cols].
    pub fn saved(&mut self, rows: usize, cols: usize) -> ValueId {
        self.value(rows, cols, ValueKind::Saved)
    }

    /// Appends a forward node of this layer.
    pub fn push(&mut self, op: impl Op, inputs: Vec<ValueId>, outputs: Vec<ValueId>) {
        self.nodes.push(Node {
            op: Arc::new(op),
            inputs,
            outputs,
            phase: Phase::Forward,
            layer: Some(self.index),
        });
    }

    /// The layer's output: `value`, of logical shape `shape`.
    pub fn set_output(&mut self, value: ValueId, shape: Vec<usize>) {
        self.x = value;
        self.shape = shape;
    }

    fn value(&mut self, rows: usize, cols: usize, kind: ValueKind) -> ValueId {
        self.values.push(Value { rows, cols, kind });
        ValueId(self.values.len() - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::FoldedDropout;
    use crate::nn::{BCEWithLogitsLoss, BatchNorm1d, Dropout, Flatten, Linear, ReLU};
    use crate::ops::activation::ActivationOp;
    use crate::ops::batchnorm::BatchNormBackwardOp;
    use crate::ops::batchnorm::BatchNormOp;
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
}
