//! The static graph: a model, its loss and its optimizer become nodes over values whose
//! shapes are all known at build time (batch size included). Reverse-mode autodiff appends
//! the backward and the optimizer update to the same graph (`autodiff`), so one graph
//! serves both modes: train runs every node, eval only the forward ones.

mod autodiff;
mod build;

pub use build::build;

use crate::nn::Loss;
use crate::ops::batchnorm::BatchNormConfig;
use crate::ops::dropout::DropProbability;
use crate::optim::Optimizer;

/// Index of a value (a tensor of the graph).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId(pub usize);

/// Index of a parameter (a learnable tensor: weight, bias, γ, β).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ParamId(pub usize);

/// What a value holds, for reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueKind {
    /// The batch's samples, uploaded by the host.
    Input,
    /// The batch's targets, uploaded by the host (i32 classes, or f32 for BCE).
    Target,
    Activation,
    /// What a forward node saves for its backward (batch norm's mean and 1/std).
    Saved,
    Gradient,
    /// Per-row loss terms (loss, correct, counted, 0).
    LossRows,
}

/// A tensor of the graph: a matrix [rows, cols].
#[derive(Clone, Debug, PartialEq)]
pub struct Value {
    pub rows: usize,
    pub cols: usize,
    pub kind: ValueKind,
}

impl Value {
    pub fn len(&self) -> usize {
        self.rows * self.cols
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A learnable tensor, named as in PyTorch's state_dict.
#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    pub name: String,
    pub shape: Vec<usize>,
    /// Index of its layer in the Sequential.
    pub layer: usize,
}

impl Param {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A BatchNorm1d layer's non-learnable state and options.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchNormState {
    /// Index of its layer in the Sequential.
    pub layer: usize,
    pub features: usize,
    pub config: BatchNormConfig,
    pub gamma: ParamId,
    pub beta: ParamId,
}

/// When a node runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// In both modes (mode-dependent where the op says so).
    Forward,
    /// Train only: gradients.
    Backward,
    /// Train only: the optimizer.
    Update,
}

/// A dropout folded into the batch norm before it (BatchNorm1d → ReLU → Dropout): its
/// probability and mask stream (the Dropout layer's index).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FoldedDropout {
    pub p: DropProbability,
    pub stream: u32,
}

/// Operations. Inputs and outputs are listed per variant as (inputs) → (outputs).
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// (x) → (y): y = x·Wᵀ + b, then ReLU if fused.
    Linear {
        weight: ParamId,
        bias: Option<ParamId>,
        relu: bool,
    },
    /// (x) → (y, saved). Train: batch statistics, running-stat update, saved = [mean; invstd].
    /// Eval: running statistics; `saved` is not produced. A folded dropout (only after the
    /// fused ReLU) applies in train mode: y is then the dropout's output.
    BatchNorm {
        bn: usize,
        relu: bool,
        dropout: Option<FoldedDropout>,
    },
    /// (x) → (y)
    Relu,
    /// (x) → (y). Eval: identity (y is x).
    Dropout { p: DropProbability, stream: u32 },
    /// (logits, target) → (rows, dlogits). Eval produces no dlogits.
    CrossEntropy,
    /// (logits, target) → (rows, dlogits). Eval produces no dlogits.
    BceWithLogits,
    /// (rows) → (): folds the batch's loss and accuracy into the running totals.
    Metrics,
    /// (y, dy) → (dx): dx = dy·\[y > 0\].
    ReluBackward,
    /// (dy) → (dx): dx = dy·W.
    LinearGradInput { weight: ParamId },
    /// (dy, x) → (): dW = dyᵀ·x, db = Σ_rows dy, into the gradient buffer.
    LinearGradParams {
        weight: ParamId,
        bias: Option<ParamId>,
    },
    /// (x, y, dy, saved) → (dx), with dγ, dβ into the gradient buffer; through the folded
    /// dropout too.
    BatchNormBackward {
        bn: usize,
        relu: bool,
        dropout: Option<FoldedDropout>,
    },
    /// (dy) → (dx): the forward's mask, recomputed.
    DropoutBackward { p: DropProbability, stream: u32 },
    /// () → (): every parameter updated from its gradient.
    OptimizerStep,
}

/// One operation with its operands.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub op: Op,
    pub inputs: Vec<ValueId>,
    pub outputs: Vec<ValueId>,
    pub phase: Phase,
    /// Index of the Sequential layer it comes from (None for loss, metrics, optimizer).
    pub layer: Option<usize>,
}

/// The graph of one model at one batch size.
#[derive(Clone, Debug)]
pub struct Graph {
    pub batch_size: usize,
    /// Shape of one sample as the data gives it, e.g. [3, 32, 32].
    pub sample_shape: Vec<usize>,
    pub values: Vec<Value>,
    pub nodes: Vec<Node>,
    pub params: Vec<Param>,
    pub batch_norms: Vec<BatchNormState>,
    pub loss: Loss,
    pub optimizer: Optimizer,
    pub input: ValueId,
    pub target: ValueId,
    pub logits: ValueId,
    pub loss_rows: ValueId,
}

impl Graph {
    pub fn value(&self, id: ValueId) -> &Value {
        &self.values[id.0]
    }

    pub fn param(&self, id: ParamId) -> &Param {
        &self.params[id.0]
    }

    /// Output classes (1 for BCE).
    pub fn classes(&self) -> usize {
        self.value(self.logits).cols
    }

    /// Features per sample as the first layer sees them (sample shape flattened).
    pub fn input_features(&self) -> usize {
        self.sample_shape.iter().product()
    }

    /// Nodes run in `mode`, in order.
    pub fn nodes_for(&self, mode: Mode) -> impl Iterator<Item = (usize, &Node)> {
        self.nodes
            .iter()
            .enumerate()
            .filter(move |(_, n)| mode == Mode::Train || n.phase == Phase::Forward)
    }
}

/// Train or eval, as `model.train()` / `model.eval()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Batch statistics, dropout on, backward and optimizer update.
    Train,
    /// Running statistics, dropout off, forward only.
    Eval,
}

/// Errors building a graph. Each names the layer (index and kind) and the shapes involved.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("layer {index} ({kind}): expected input {expected}, got {found:?}")]
    Shape {
        index: usize,
        kind: &'static str,
        expected: String,
        found: Vec<usize>,
    },
    #[error("layer {index} ({kind}): {message}")]
    Layer {
        index: usize,
        kind: &'static str,
        message: String,
    },
    #[error("loss: {0}")]
    Loss(String),
    #[error("{0}")]
    Config(String),
}

impl Node {
    /// The outputs this node writes in `mode`: eval batch norm saves nothing, eval losses give
    /// no gradient, and eval dropout writes nothing (its output is its input, see
    /// [`Node::alias_in`]).
    pub fn outputs_in(&self, mode: Mode) -> &[ValueId] {
        match (&self.op, mode) {
            (Op::Dropout { .. }, Mode::Eval) => &[],
            (Op::BatchNorm { .. }, Mode::Eval)
            | (Op::CrossEntropy | Op::BceWithLogits, Mode::Eval) => &self.outputs[..1],
            _ => &self.outputs,
        }
    }

    /// (output, input) when the output is the input itself in `mode`.
    pub fn alias_in(&self, mode: Mode) -> Option<(ValueId, ValueId)> {
        match (&self.op, mode) {
            (Op::Dropout { .. }, Mode::Eval) => Some((self.outputs[0], self.inputs[0])),
            _ => None,
        }
    }
}
