//! The static graph: a model, its loss and its optimizer become nodes over values whose
//! shapes are all known at build time (batch size included). Reverse-mode autodiff appends
//! the backward and the optimizer update to the same graph (`autodiff`), so one graph
//! serves both modes: train runs every node, eval only the forward ones.

//!
//! | file | what it holds |
//! |---|---|
//! | `mod.rs` | the IR: values, parameters, state buffers, constants, nodes, the graph |
//! | `op.rs` | the [`Op`] trait every op implements |
//! | `cx.rs` | what an op sees while it runs ([`CpuCx`]) or is planned ([`GpuCx`]) |
//! | `exchange.rs` | where a data-parallel step stops for the ranks ([`Exchange`]) |
//! | `state.rs` | the host image of a graph's state ([`HostState`]) |
//! | `init.rs` | parameters' initial values, as PyTorch's `reset_parameters` |
//! | `totals.rs` | loss and accuracy totals, as the metrics kernel keeps them ([`Totals`]) |
//! | `lowering.rs` | what a layer sees while it lowers itself into nodes ([`Lowering`]) |
//! | `autodiff.rs` | reverse-mode differentiation, each op's backward rule in turn |
//! | `fusion.rs` | fusion and the column-sum hand-off, as rules over the graph |
//!
//! This layer names no op, layer, loss or optimizer: the ops (`crate::ops`, `crate::optim`)
//! implement [`Op`] above it, the executors (`crate::exec`) run it without naming an op, and
//! `crate::nn` lowers a Sequential, a loss and an optimizer into it.

mod autodiff;
mod cx;
mod exchange;
mod fusion;
mod init;
mod lowering;
mod op;
mod state;
mod totals;

use std::sync::Arc;

pub use autodiff::{Autodiff, append_backward};
pub use cx::{
    CpuCx, CpuError, DropoutOverrides, FlatState, GpuCx, Parallel, PlanSink, SharedBindings,
};
pub use exchange::{Exchange, Region};
pub use fusion::{fuse, hand_off_column_sums};
pub use init::{init_parameters, kaiming_uniform_bound};
pub use lowering::Lowering;
pub use op::Op;
pub use state::{BufferValues, HostState};
pub use totals::{NonFiniteUpdate, RawTotals, TOTALS_LEN, Totals};

use crate::data::Transform;

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

/// Index of a constant (a fixed tensor of the graph, see [`Graph::constants`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConstId(pub usize);

/// A fixed, non-learnable tensor that ops read: uploaded once with the model's state and
/// shared by every plan.
#[derive(Clone, Debug, PartialEq)]
pub struct Constant {
    pub name: String,
    pub data: Arc<Vec<f32>>,
}

/// A learnable tensor, named as in PyTorch's state_dict.
#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    pub name: String,
    pub shape: Vec<usize>,
    /// Index of its layer in the Sequential.
    pub layer: usize,
    /// How its initial values are drawn.
    pub init: Init,
}

/// A parameter's initial values, as PyTorch's `reset_parameters` draws them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// Uniform in ±bound (Linear: bound = 1/√fan_in; 0 gives zeros).
    Uniform { bound: f32 },
    /// Every element the same (BatchNorm1d: γ = 1, β = 0).
    Constant(f32),
}

impl Param {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Index of a state buffer (see [`StateBuffer`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BufferId(pub usize);

/// What a state buffer's elements are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BufferKind {
    /// f32 values (running statistics).
    F32,
    /// Counters: u32 on the device, int64 in a state_dict (`num_batches_tracked`).
    Count,
}

/// Non-learnable state an op keeps from step to step — PyTorch's registered buffers, such as
/// batch norm's running statistics. One state buffer is one device binding: its parts lie
/// back to back, each a state_dict entry of its own (`2.running_mean`, `2.running_var`).
/// The op that declares it (through [`Lowering::buffer`]) is the only one that reads it;
/// executors and checkpoints treat every buffer alike.
#[derive(Clone, Debug, PartialEq)]
pub struct StateBuffer {
    /// Index of its layer in the Sequential.
    pub layer: usize,
    pub kind: BufferKind,
    pub parts: Vec<BufferPart>,
}

/// One state_dict entry of a [`StateBuffer`].
#[derive(Clone, Debug, PartialEq)]
pub struct BufferPart {
    /// Its state_dict key, e.g. `"2.running_var"`.
    pub name: String,
    /// Its shape in the state_dict (`[]` for a scalar counter).
    pub shape: Vec<usize>,
    /// Every element's initial value (running mean 0, running variance 1, counter 0).
    pub init: f32,
}

impl BufferPart {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl StateBuffer {
    /// Elements of all its parts.
    pub fn len(&self) -> usize {
        self.parts.iter().map(BufferPart::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
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

/// One operation with its operands. What the operation does, in both executors and in
/// autodiff, is its [`Op`] implementation's business; the graph only wires values.
#[derive(Clone, Debug)]
pub struct Node {
    pub op: Arc<dyn Op>,
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
    /// Non-learnable state the ops keep (running statistics), in state_dict order.
    pub buffers: Vec<StateBuffer>,
    /// PyTorch's names of the optimizer's state tensors per parameter, in state order
    /// (`momentum_buffer`; `exp_avg`, `exp_avg_sq`): the optimizer node's own.
    pub optimizer_states: Vec<&'static str>,
    /// Fixed tensors ops read (a fitted preprocessing's mean and matrix), uploaded once.
    pub constants: Vec<Constant>,
    /// The fitted preprocessing the graph starts with, if any (its first node).
    pub preprocess: Option<Arc<Transform>>,
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

    pub fn buffer(&self, id: BufferId) -> &StateBuffer {
        &self.buffers[id.0]
    }

    /// Output classes (1 for BCE).
    pub fn classes(&self) -> usize {
        self.value(self.logits).cols
    }

    pub fn constant(&self, id: ConstId) -> &[f32] {
        &self.constants[id.0].data
    }

    /// Features per raw sample the graph takes (the sample shape flattened; a preprocessing
    /// stage maps them to what the first layer sees).
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
#[non_exhaustive]
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
    /// The outputs this node writes in `mode` (a leading part of its outputs: eval batch norm
    /// saves nothing, eval losses give no gradient, eval dropout writes nothing).
    pub fn outputs_in(&self, mode: Mode) -> &[ValueId] {
        &self.outputs[..self.op.outputs_in(mode, self.outputs.len())]
    }

    /// (output, input) when the output is the input itself in `mode` (eval dropout).
    pub fn alias_in(&self, mode: Mode) -> Option<(ValueId, ValueId)> {
        self.op
            .aliases_input(mode)
            .then(|| (self.outputs[0], self.inputs[0]))
    }

    /// The op as its concrete type, when it is one.
    pub fn op_as<T: Op>(&self) -> Option<&T> {
        self.op.as_any().downcast_ref()
    }
}
