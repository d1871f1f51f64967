//! What an op sees while the CPU reference runs it ([`CpuCx`]) and while a GPU plan is built
//! ([`GpuCx`]). Both are defined here, beside the [`Op`](super::Op) trait that takes them, so
//! that the ops depend on the graph alone; the executors (`crate::exec`) fill them in.

use super::{BufferId, ConstId, Exchange, Graph, HostState, Mode, Node, ParamId, Totals, ValueId};
use crate::gpu::{Binding, Dispatch, GpuContext, GpuError, Launch, TENSOR_USAGE};

/// A CPU reference that cannot run on the state it was given (a state made for another
/// graph): the op and what does not fit.
#[derive(Debug, thiserror::Error)]
#[error("{op}: {message}")]
pub struct CpuError {
    pub op: &'static str,
    pub message: String,
}

/// What an op's CPU reference reads and writes: the values computed so far, the batch's
/// labels, and the executor's host state.
pub struct CpuCx<'a> {
    pub graph: &'a Graph,
    pub mode: Mode,
    /// Every value of the graph, `None` until its node has run.
    pub values: &'a [Option<Vec<f32>>],
    /// The batch's class labels (0/1 for BCE).
    pub labels: &'a [u32],
    pub state: &'a mut HostState,
    /// Gradients of the step, per parameter.
    pub grads: &'a mut [Vec<f32>],
    pub totals: &'a mut Totals,
    /// The batch's reduced loss, written by the loss op.
    pub loss: &'a mut f32,
    /// Seed of the dropout masks.
    pub seed: u64,
}

impl<'a> CpuCx<'a> {
    /// The node's `i`-th input (empty when it was never computed, which a valid graph rules
    /// out).
    pub fn input(&self, node: &Node, i: usize) -> &'a [f32] {
        let values: &'a [Option<Vec<f32>>] = self.values;
        values[node.inputs[i].0].as_deref().unwrap_or(&[])
    }

    /// Rows and columns of the node's `i`-th input.
    pub fn input_shape(&self, node: &Node, i: usize) -> (usize, usize) {
        let v = self.graph.value(node.inputs[i]);
        (v.rows, v.cols)
    }

    /// The optimizer steps taken so far (the dropout generator's counter).
    pub fn step(&self) -> u64 {
        self.state.step
    }
}

/// How a plan takes part in a data-parallel job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parallel {
    /// Processes training together (1: alone, and the plan exchanges nothing).
    pub ranks: usize,
    /// Batch norm takes its statistics over every rank's batch (`torch.nn.SyncBatchNorm`).
    pub sync_bn: bool,
}

impl Parallel {
    /// One process, batch norm on its own batch.
    pub const ALONE: Self = Self {
        ranks: 1,
        sync_bn: false,
    };

    /// Whether the train plan averages gradients over ranks.
    pub fn averages_gradients(&self) -> bool {
        self.ranks > 1
    }
}

/// The flat state buffers as the optimizer updates them: the first `len` floats of each
/// member's part of the parameter, gradient and optimizer-state buffers (every parameter at
/// its aligned offset).
pub struct FlatState<'a> {
    /// Elements of one member's part.
    pub len: usize,
    pub params: Binding<'a>,
    pub grads: Binding<'a>,
    /// One per optimizer state tensor kind (momentum; exp_avg, exp_avg_sq, …).
    pub optimizer: Vec<Binding<'a>>,
}

/// What a GPU plan under construction offers its ops: where each value and piece of state
/// lives, and the lists that dispatches, scratch buffers and exchanges are appended to. The
/// executor implements it; an op reaches it through [`GpuCx`].
pub trait PlanSink<'a> {
    /// The buffer holding a value in this plan.
    fn value(&self, v: ValueId) -> Binding<'a>;
    /// A parameter's slice of the flat parameter buffer.
    fn param(&self, id: ParamId) -> Binding<'a>;
    /// A parameter's slice of the flat gradient buffer.
    fn grad(&self, id: ParamId) -> Binding<'a>;
    /// A state buffer (all its parts).
    fn buffer(&self, id: BufferId) -> Binding<'a>;
    /// A constant of the graph, resident with the model's state.
    fn constant(&self, id: ConstId) -> Binding<'a>;
    /// The flat parameter, gradient and optimizer-state buffers.
    fn flat_state(&self) -> FlatState<'a>;
    fn push(&mut self, dispatch: Dispatch);
    /// Keeps a buffer some dispatches use alive with the plan.
    fn keep(&mut self, scratch: wgpu::Buffer);
    /// Stops the step here (after the dispatches so far) for the ranks to exchange data.
    fn exchange(&mut self, exchange: Exchange);
}

/// What an op's GPU launcher sees while the plan is built: the buffers of the graph's values
/// and of the resident state, and the plan's list of dispatches to append to.
pub struct GpuCx<'a, 'p> {
    pub ctx: &'a GpuContext,
    pub graph: &'a Graph,
    pub mode: Mode,
    /// The step uniform.
    pub step: Binding<'a>,
    /// Running loss and accuracy totals.
    pub totals: Binding<'a>,
    /// Seed of the dropout masks.
    pub seed: u64,
    /// The data-parallel job the plan runs in.
    pub parallel: Parallel,
    /// Models the plan runs side by side (a stacked plan; 1 alone): every binding holds each
    /// member's part ([`Binding::member_stride`]), and every dispatch covers them all.
    pub members: u32,
    /// Members' dropout probabilities where they differ from the graph's.
    pub dropout: &'a DropoutOverrides,
    sink: &'p mut dyn PlanSink<'a>,
}

impl<'a, 'p> GpuCx<'a, 'p> {
    /// The context an executor hands an op: `sink` knows the plan's buffers.
    pub fn new(
        ctx: &'a GpuContext,
        graph: &'a Graph,
        mode: Mode,
        shared: SharedBindings<'a>,
        sink: &'p mut dyn PlanSink<'a>,
    ) -> Self {
        Self {
            ctx,
            graph,
            mode,
            step: shared.step,
            totals: shared.totals,
            seed: shared.seed,
            parallel: shared.parallel,
            members: shared.members,
            dropout: shared.dropout,
            sink,
        }
    }

    /// Each member's dropout probability for the dropout of layer `layer`, whose graph has
    /// `p`: a stacked plan's members may each drop with their own.
    pub fn dropout_p(&self, layer: u32, p: f32) -> Vec<f32> {
        (0..self.members as usize)
            .map(|m| self.dropout.p(m, layer).unwrap_or(p))
            .collect()
    }

    /// The buffer holding a value in this plan.
    pub fn bind(&self, v: ValueId) -> Binding<'a> {
        self.sink.value(v)
    }

    /// The buffer of the node's `i`-th input and output.
    pub fn input(&self, node: &Node, i: usize) -> Binding<'a> {
        self.bind(node.inputs[i])
    }

    pub fn output(&self, node: &Node, i: usize) -> Binding<'a> {
        self.bind(node.outputs[i])
    }

    /// Rows and columns of the node's `i`-th input.
    pub fn input_shape(&self, node: &Node, i: usize) -> (usize, usize) {
        let v = self.graph.value(node.inputs[i]);
        (v.rows, v.cols)
    }

    /// A parameter's slice of the flat parameter buffer, and of the gradient buffer.
    pub fn param(&self, id: ParamId) -> Binding<'a> {
        self.sink.param(id)
    }

    pub fn grad(&self, id: ParamId) -> Binding<'a> {
        self.sink.grad(id)
    }

    /// A state buffer the op declared (running statistics).
    pub fn buffer(&self, id: BufferId) -> Binding<'a> {
        self.sink.buffer(id)
    }

    /// A constant of the graph, resident with the model's state.
    pub fn constant(&self, id: ConstId) -> Binding<'a> {
        self.sink.constant(id)
    }

    /// The flat parameter, gradient and optimizer-state buffers.
    pub fn flat_state(&self) -> FlatState<'a> {
        self.sink.flat_state()
    }

    pub fn push(&mut self, dispatch: Dispatch) {
        self.sink.push(dispatch);
    }

    /// Appends a launch's dispatches and keeps its scratch buffers alive with the plan.
    pub fn launch(&mut self, launch: Launch) {
        for d in launch.dispatches {
            self.sink.push(d);
        }
        for b in launch.scratch {
            self.sink.keep(b);
        }
    }

    /// Stops the step here for the ranks to exchange data (after the dispatches so far).
    pub fn exchange(&mut self, exchange: Exchange) {
        self.sink.exchange(exchange);
    }

    /// A zeroed buffer of `bytes` kept with the plan, for one op's private use.
    pub fn scratch_buffer(&mut self, label: &str, bytes: u64) -> Result<wgpu::Buffer, GpuError> {
        let buffer = self.ctx.create_buffer(label, bytes, TENSOR_USAGE)?;
        self.sink.keep(buffer.clone());
        Ok(buffer)
    }
}

/// What every dispatch of a plan shares: the step uniform, the totals, the dropout seed and
/// the job it runs in.
#[derive(Clone, Copy)]
pub struct SharedBindings<'a> {
    pub step: Binding<'a>,
    pub totals: Binding<'a>,
    pub seed: u64,
    pub parallel: Parallel,
    /// Models the plan runs side by side.
    pub members: u32,
    /// Members' dropout probabilities where they differ from the graph's.
    pub dropout: &'a DropoutOverrides,
}

/// Each member's dropout probability per layer where it differs from the graph's (a stacked
/// plan whose members sweep it): `(layer, p)` pairs per member.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DropoutOverrides(pub Vec<Vec<(u32, f32)>>);

impl DropoutOverrides {
    /// Member `member`'s probability for the dropout of layer `layer`, if it has its own.
    pub fn p(&self, member: usize, layer: u32) -> Option<f32> {
        self.0
            .get(member)?
            .iter()
            .find(|(l, _)| *l == layer)
            .map(|&(_, p)| p)
    }
}
