//! The GPU plan of a graph in one mode: buffers from the memory planner, and every pipeline
//! and bind group made once, here. Running a step records the prepared dispatches into one
//! compute pass; nothing is created per step.

use super::memory::{self, MemoryPlan};
use super::state::GpuState;
use crate::gpu::{Binding, Dispatch, GpuContext, GpuError, StepProfile, TENSOR_USAGE};
use crate::graph::{
    BufferId, ConstId, DropoutOverrides, Exchange, FlatState, GpuCx, Graph, Mode, Node, Parallel,
    ParamId, PlanSink, SharedBindings, ValueId,
};

/// What a plan shares with the model: its resident state and per-step buffers.
pub struct Shared<'a> {
    pub state: &'a GpuState,
    /// The step uniform.
    pub step: Binding<'a>,
    /// Running loss and accuracy totals.
    pub totals: Binding<'a>,
    /// Seed of the dropout masks.
    pub seed: u64,
    /// The data-parallel job the plan runs in.
    pub parallel: Parallel,
    /// Members' dropout probabilities where they differ from the graph's.
    pub dropout: &'a DropoutOverrides,
}

impl Shared<'_> {
    /// Models the plan runs side by side (a stacked plan; 1 alone): the state's.
    pub fn members(&self) -> usize {
        self.state.members
    }
}

/// A plan's dispatches rebuilt on a resident batch's buffers ([`GpuPlan::bind_batch`]).
#[derive(Default)]
pub struct BatchDispatches {
    /// Ranges of the plan's dispatches, in order, and what replaces them.
    replaced: Vec<(std::ops::Range<usize>, Vec<Dispatch>)>,
    /// Scratch buffers of the rebuilt dispatches (split-K partial products).
    scratch: Vec<wgpu::Buffer>,
}

/// A graph compiled for the GPU in one mode.
pub struct GpuPlan {
    pub mode: Mode,
    pub batch_size: usize,
    dispatches: Vec<Dispatch>,
    slots: Vec<wgpu::Buffer>,
    memory: MemoryPlan,
    /// Buffers private to some dispatches (split-K partial products), kept alive with them.
    scratch: Vec<wgpu::Buffer>,
    /// Where the step stops for the ranks to exchange data: before the dispatch at each
    /// index, in order (none on one process without SyncBatchNorm).
    exchanges: Vec<(usize, Exchange)>,
    /// A read-back buffer per exchange, made with the plan.
    staging: Vec<wgpu::Buffer>,
    /// The nodes that read the batch (by graph index) and their range of `dispatches`, which
    /// [`GpuPlan::bind_batch`] rebuilds on a resident batch's own buffers.
    batch_nodes: Vec<(usize, std::ops::Range<usize>)>,
    /// The batch's samples [N, features], written by the host each step.
    pub input: wgpu::Buffer,
    /// The batch's targets \[N\] (i32 classes, or f32 for BCE), written by the host each step.
    pub target: wgpu::Buffer,
    logits: ValueId,
    /// Bytes of every member's logits.
    logits_bytes: u64,
    members: usize,
}

impl GpuPlan {
    pub fn new(
        ctx: &GpuContext,
        graph: &Graph,
        mode: Mode,
        shared: &Shared<'_>,
    ) -> Result<Self, GpuError> {
        let memory = memory::plan(graph, mode, &[graph.logits]);
        // Every value holds each member's part back to back.
        let members = shared.members() as u64;
        let slots = memory
            .slot_bytes
            .iter()
            .map(|&b| ctx.create_buffer("activations", b * members, TENSOR_USAGE))
            .collect::<Result<Vec<_>, _>>()?;
        let value_bytes = |v: ValueId| graph.value(v).len() as u64 * 4 * members;
        let input = ctx.create_buffer("input batch", value_bytes(graph.input), TENSOR_USAGE)?;
        let target = ctx.create_buffer("target batch", value_bytes(graph.target), TENSOR_USAGE)?;

        let logits_bytes = value_bytes(graph.logits);
        let mut plan = Self {
            mode,
            batch_size: graph.batch_size,
            dispatches: Vec::new(),
            slots,
            memory,
            scratch: Vec::new(),
            exchanges: Vec::new(),
            staging: Vec::new(),
            batch_nodes: Vec::new(),
            input,
            target,
            logits: graph.logits,
            logits_bytes,
            members: shared.members(),
        };
        let (mut dispatches, mut scratch, mut batch_nodes) = (Vec::new(), Vec::new(), Vec::new());
        let mut exchanges = Vec::new();
        let builder = plan.builder(ctx, graph, shared, &plan.input, &plan.target);
        for (index, node) in graph.nodes_for(mode) {
            let first = dispatches.len();
            let mut out = Emitted {
                dispatches: &mut dispatches,
                scratch: &mut scratch,
                exchanges: &mut exchanges,
            };
            builder.node(node, &mut out)?;
            if node.inputs.contains(&graph.input) || node.inputs.contains(&graph.target) {
                batch_nodes.push((index, first..dispatches.len()));
            }
        }
        plan.dispatches = dispatches;
        plan.scratch = scratch;
        plan.staging = exchanges
            .iter()
            .map(|(_, e)| {
                ctx.create_buffer(
                    "exchange read-back",
                    e.read_bytes().max(4),
                    wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                )
            })
            .collect::<Result<_, _>>()?;
        plan.exchanges = exchanges;
        plan.batch_nodes = batch_nodes;
        Ok(plan)
    }

    /// Builds dispatches over this plan's buffers, with `input` and `target` for the batch.
    fn builder<'a>(
        &'a self,
        ctx: &'a GpuContext,
        graph: &'a Graph,
        shared: &'a Shared<'a>,
        input: &'a wgpu::Buffer,
        target: &'a wgpu::Buffer,
    ) -> Builder<'a> {
        Builder {
            ctx,
            graph,
            mode: self.mode,
            shared,
            memory: &self.memory,
            slots: &self.slots,
            input,
            target,
        }
    }

    /// Records every dispatch of the plan into `pass`.
    pub fn encode(&self, pass: &mut wgpu::ComputePass<'_>) {
        for d in &self.dispatches {
            d.encode(pass);
        }
    }

    /// The dispatches of the nodes that read the batch, rebuilt to read `x` and `target`
    /// (a resident batch of this plan's size) instead of the upload buffers: a step on
    /// resident data then copies nothing.
    pub fn bind_batch(
        &self,
        ctx: &GpuContext,
        graph: &Graph,
        shared: &Shared<'_>,
        x: &wgpu::Buffer,
        target: &wgpu::Buffer,
    ) -> Result<BatchDispatches, GpuError> {
        let builder = self.builder(ctx, graph, shared, x, target);
        let mut bound = BatchDispatches::default();
        for (index, range) in &self.batch_nodes {
            let mut dispatches = Vec::with_capacity(range.len());
            let mut exchanges = Vec::new();
            let mut out = Emitted {
                dispatches: &mut dispatches,
                scratch: &mut bound.scratch,
                exchanges: &mut exchanges,
            };
            builder.node(&graph.nodes[*index], &mut out)?;
            // The plan's exchanges sit between dispatches by index: a rebuilt node must keep
            // its dispatch count (its exchanges are the plan's own).
            if dispatches.len() != range.len() {
                return Err(GpuError::Unsupported(format!(
                    "{}: a resident batch's dispatches differ from the plan's",
                    graph.nodes[*index].op.name()
                )));
            }
            bound.replaced.push((range.clone(), dispatches));
        }
        Ok(bound)
    }

    /// Records the plan into `pass` with `batch`'s dispatches for the nodes that read it.
    pub fn encode_with(&self, pass: &mut wgpu::ComputePass<'_>, batch: &BatchDispatches) {
        for d in self.ordered(Some(batch)) {
            d.encode(pass);
        }
    }

    /// The plan's dispatches in order, with `batch`'s in place of those of the nodes that
    /// read the batch.
    pub fn ordered<'s>(&'s self, batch: Option<&'s BatchDispatches>) -> Vec<&'s Dispatch> {
        let mut out = Vec::with_capacity(self.dispatches.len());
        let mut next = 0;
        for (range, dispatches) in batch.map_or(&[][..], |b| &b.replaced[..]) {
            out.extend(&self.dispatches[next..range.start]);
            out.extend(dispatches);
            next = range.end;
        }
        out.extend(&self.dispatches[next..]);
        out
    }

    /// Where the step stops for the ranks to exchange data (see [`Exchange`]).
    pub fn exchanges(&self) -> &[(usize, Exchange)] {
        &self.exchanges
    }

    /// The read-back buffer of each exchange, in order.
    pub fn exchange_staging(&self) -> &[wgpu::Buffer] {
        &self.staging
    }

    /// Where a step's time goes: each dispatch's GPU time within whole steps, and the
    /// host's time to record and submit one (see [`GpuContext::profile_step`]).
    pub fn profile(&self, ctx: &GpuContext, reps: usize) -> Result<StepProfile, GpuError> {
        let dispatches: Vec<&Dispatch> = self.dispatches.iter().collect();
        ctx.profile_step(&dispatches, reps)
    }

    pub fn dispatch_count(&self) -> usize {
        self.dispatches.len()
    }

    /// Bytes of the activation and gradient buffers (after sharing), and of the scratch
    /// buffers some kernels keep (split-K partial products), for every member.
    pub fn activation_bytes(&self) -> u64 {
        self.memory.total_bytes() * self.members as u64
            + self.scratch.iter().map(wgpu::Buffer::size).sum::<u64>()
    }

    /// Models the plan runs side by side.
    pub fn members(&self) -> usize {
        self.members
    }

    /// Bytes of the per-batch upload buffers.
    pub fn batch_bytes(&self) -> u64 {
        self.input.size() + self.target.size()
    }

    /// The buffer and byte length of the logits [N, classes] (every member's, back to back).
    pub fn logits(&self) -> (&wgpu::Buffer, u64) {
        match self.memory.slot_of[self.logits.0] {
            Some(slot) => (&self.slots[slot], self.logits_bytes),
            // The logits are the uploaded batch itself (a model that changes nothing in
            // eval, such as a lone Dropout): they have no slot of their own.
            None => (&self.input, self.logits_bytes),
        }
    }
}

/// Builds the dispatches of a plan's nodes over its buffers; the batch's buffers are
/// either the plan's upload buffers or a resident batch's own.
struct Builder<'a> {
    ctx: &'a GpuContext,
    graph: &'a Graph,
    mode: Mode,
    shared: &'a Shared<'a>,
    memory: &'a MemoryPlan,
    slots: &'a [wgpu::Buffer],
    input: &'a wgpu::Buffer,
    target: &'a wgpu::Buffer,
}

impl<'a> Builder<'a> {
    /// Bytes of one member's part of a value.
    fn value_bytes(&self, v: ValueId) -> u64 {
        self.graph.value(v).len() as u64 * 4
    }

    fn bind(&self, v: ValueId) -> Binding<'a> {
        let buffer = if v == self.graph.input {
            self.input
        } else if v == self.graph.target {
            self.target
        } else {
            // The planner gives a slot to every value the mode touches, so the fallback is
            // never bound.
            self.memory.slot_of[v.0].map_or(self.input, |slot| &self.slots[slot])
        };
        let part = self.value_bytes(v);
        Binding {
            buffer,
            offset: 0,
            size: part * self.shared.members() as u64,
            member_stride: part,
        }
    }

    /// Appends the dispatches of `node` (and the scratch buffers and exchanges they need).
    fn node(&self, node: &Node, out: &mut Emitted<'_>) -> Result<(), GpuError> {
        let shared = SharedBindings {
            step: self.shared.step,
            totals: self.shared.totals,
            seed: self.shared.seed,
            parallel: self.shared.parallel,
            members: self.shared.members() as u32,
            dropout: self.shared.dropout,
        };
        let mut sink = Sink { builder: self, out };
        let mut cx = GpuCx::new(self.ctx, self.graph, self.mode, shared, &mut sink);
        node.op.encode_gpu(node, &mut cx)
    }
}

/// What building nodes appends to.
struct Emitted<'p> {
    dispatches: &'p mut Vec<Dispatch>,
    scratch: &'p mut Vec<wgpu::Buffer>,
    exchanges: &'p mut Vec<(usize, Exchange)>,
}

/// The plan under construction as its ops see it ([`PlanSink`]).
struct Sink<'b, 'a, 'e> {
    builder: &'b Builder<'a>,
    out: &'b mut Emitted<'e>,
}

impl<'a> PlanSink<'a> for Sink<'_, 'a, '_> {
    fn value(&self, v: ValueId) -> Binding<'a> {
        self.builder.bind(v)
    }

    fn param(&self, id: ParamId) -> Binding<'a> {
        self.builder
            .shared
            .state
            .param_binding(self.builder.graph, id)
    }

    fn grad(&self, id: ParamId) -> Binding<'a> {
        self.builder
            .shared
            .state
            .grad_binding(self.builder.graph, id)
    }

    fn buffer(&self, id: BufferId) -> Binding<'a> {
        self.builder
            .shared
            .state
            .buffer_binding(self.builder.graph, id)
    }

    fn constant(&self, id: ConstId) -> Binding<'a> {
        Binding::whole(&self.builder.shared.state.constants[id.0])
    }

    fn flat_state(&self) -> FlatState<'a> {
        let state = self.builder.shared.state;
        FlatState {
            len: state.layout.params_len,
            params: state.flat_params_binding(&state.params),
            grads: state.flat_params_binding(&state.grads),
            optimizer: state
                .optimizer
                .iter()
                .map(|b| state.flat_params_binding(b))
                .collect(),
        }
    }

    fn push(&mut self, dispatch: Dispatch) {
        self.out.dispatches.push(dispatch);
    }

    fn keep(&mut self, scratch: wgpu::Buffer) {
        self.out.scratch.push(scratch);
    }

    fn exchange(&mut self, exchange: Exchange) {
        let at = self.out.dispatches.len();
        self.out.exchanges.push((at, exchange));
    }
}
