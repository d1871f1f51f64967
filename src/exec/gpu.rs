//! The GPU plan of a graph in one mode: buffers from the memory planner, and every pipeline
//! and bind group made once, here. Running a step records the prepared dispatches into one
//! compute pass; nothing is created per step.

use super::memory::{self, MemoryPlan};
use super::state::GpuState;
use crate::gpu::{Binding, Dispatch, GpuContext, GpuError, Launch, StepProfile, TENSOR_USAGE};
use crate::graph::{ConstId, Graph, Mode, Node, ParamId, ValueId};
use crate::nn::Loss;
use crate::ops::dropout::MaskStream;
use crate::ops::matmul::{self, Epilogue, MatmulShape};

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

/// Part of a buffer, owned (a [`Binding`] without its borrow), for the host to read or write
/// between a plan's dispatches.
#[derive(Clone, Debug)]
pub struct Region {
    pub buffer: wgpu::Buffer,
    pub offset: u64,
    pub size: u64,
}

impl Region {
    pub fn of(binding: Binding<'_>) -> Self {
        Self {
            buffer: binding.buffer.clone(),
            offset: binding.offset,
            size: binding.size,
        }
    }
}

impl Exchange {
    /// The regions the host reads at this exchange, in order.
    pub fn reads(&self) -> Vec<&Region> {
        match self {
            Exchange::AverageGradients { grads } => vec![grads],
            Exchange::BatchNormMoments { saved, .. } => vec![saved],
            Exchange::BatchNormGradSums { dbeta, dgamma, .. } => vec![dbeta, dgamma],
        }
    }

    /// Bytes read back (and sent into the collectives) at this exchange.
    pub fn read_bytes(&self) -> u64 {
        self.reads().iter().map(|r| r.size).sum()
    }
}

/// A point within a step where the plan stops and the ranks of a data-parallel job exchange
/// data through the host: the dispatches before it are submitted and waited for, the host
/// reads the region, runs the collective and writes the result back, and the step goes on.
#[derive(Clone, Debug)]
pub enum Exchange {
    /// The gradient buffer: summed over the ranks, then divided by their number (DDP).
    AverageGradients { grads: Region },
    /// SyncBatchNorm forward: `saved` holds this rank's [mean; biased variance] of `rows`
    /// rows and `features` features, and gets the global batch's.
    BatchNormMoments {
        saved: Region,
        rows: usize,
        features: usize,
    },
    /// SyncBatchNorm backward: this rank's Σdy and Σdy·x̂ (its dβ and dγ), summed over the
    /// ranks into `sums` (of dβ, of dγ), which the dx kernel reads.
    BatchNormGradSums {
        dbeta: Region,
        dgamma: Region,
        sums: [Region; 2],
    },
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
    logits_bytes: u64,
    /// Class weights of the cross-entropy.
    class_weight: Option<wgpu::Buffer>,
}

impl GpuPlan {
    pub fn new(
        ctx: &GpuContext,
        graph: &Graph,
        mode: Mode,
        shared: &Shared<'_>,
    ) -> Result<Self, GpuError> {
        let memory = memory::plan(graph, mode, &[graph.logits]);
        let slots = memory
            .slot_bytes
            .iter()
            .map(|&b| ctx.create_buffer("activations", b, TENSOR_USAGE))
            .collect::<Result<Vec<_>, _>>()?;
        let value_bytes = |v: ValueId| graph.value(v).len() as u64 * 4;
        let input = ctx.create_buffer("input batch", value_bytes(graph.input), TENSOR_USAGE)?;
        let target = ctx.create_buffer("target batch", value_bytes(graph.target), TENSOR_USAGE)?;
        let class_weight = match &graph.loss {
            Loss::CrossEntropy(ce) => match &ce.config.weight {
                Some(w) => Some(ctx.create_buffer_init(
                    "class weights",
                    bytemuck::cast_slice(w),
                    TENSOR_USAGE,
                )?),
                None => None,
            },
            Loss::BceWithLogits(_) => None,
        };

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
            class_weight,
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
            class_weight: self.class_weight.as_ref(),
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
    /// buffers some kernels keep (split-K partial products).
    pub fn activation_bytes(&self) -> u64 {
        self.memory.total_bytes() + self.scratch.iter().map(wgpu::Buffer::size).sum::<u64>()
    }

    /// Bytes of the per-batch upload buffers.
    pub fn batch_bytes(&self) -> u64 {
        self.input.size() + self.target.size()
    }

    /// The buffer and byte length of the logits [N, classes].
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
    class_weight: Option<&'a wgpu::Buffer>,
}

impl<'a> Builder<'a> {
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
        Binding {
            buffer,
            offset: 0,
            size: self.value_bytes(v),
        }
    }

    /// Appends the dispatches of `node` (and the scratch buffers and exchanges they need).
    fn node(&self, node: &Node, out: &mut Emitted<'_>) -> Result<(), GpuError> {
        let mut cx = GpuCx {
            ctx: self.ctx,
            graph: self.graph,
            mode: self.mode,
            state: self.shared.state,
            step: self.shared.step,
            totals: self.shared.totals,
            class_weight: self.class_weight,
            seed: self.shared.seed,
            parallel: self.shared.parallel,
            builder: self,
            dispatches: out.dispatches,
            scratch: out.scratch,
            exchanges: out.exchanges,
        };
        node.op.encode_gpu(node, &mut cx)
    }
}

/// What building nodes appends to.
struct Emitted<'p> {
    dispatches: &'p mut Vec<Dispatch>,
    scratch: &'p mut Vec<wgpu::Buffer>,
    exchanges: &'p mut Vec<(usize, Exchange)>,
}

/// What an op's GPU launcher sees while the plan is built: the buffers of the graph's values
/// and of the resident state, and the plan's list of dispatches to append to.
pub struct GpuCx<'a, 'p> {
    pub ctx: &'a GpuContext,
    pub graph: &'a Graph,
    pub mode: Mode,
    pub state: &'a GpuState,
    /// The step uniform.
    pub step: Binding<'a>,
    /// Running loss and accuracy totals.
    pub totals: Binding<'a>,
    /// Class weights of the cross-entropy, when it has some.
    pub class_weight: Option<&'a wgpu::Buffer>,
    /// Seed of the dropout masks.
    pub seed: u64,
    /// The data-parallel job the plan runs in.
    pub parallel: Parallel,
    builder: &'p Builder<'a>,
    dispatches: &'p mut Vec<Dispatch>,
    scratch: &'p mut Vec<wgpu::Buffer>,
    exchanges: &'p mut Vec<(usize, Exchange)>,
}

impl<'a> GpuCx<'a, '_> {
    /// The buffer holding a value in this plan.
    pub fn bind(&self, v: ValueId) -> Binding<'a> {
        self.builder.bind(v)
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
        self.state.param_binding(self.graph, id)
    }

    pub fn grad(&self, id: ParamId) -> Binding<'a> {
        self.state.grad_binding(self.graph, id)
    }

    /// A constant of the graph, resident with the model's state.
    pub fn constant(&self, id: ConstId) -> Binding<'a> {
        Binding::whole(&self.state.constants[id.0])
    }

    /// The dropout mask stream of a layer, under this model's seed.
    pub fn stream(&self, layer: u32) -> MaskStream {
        MaskStream {
            seed: self.seed,
            layer,
        }
    }

    pub fn push(&mut self, dispatch: Dispatch) {
        self.dispatches.push(dispatch);
    }

    /// Appends c = a·b (+ bias, then ReLU, as `epilogue` says) with the matmul kernel the
    /// adapter's choice gives, and keeps its scratch buffers (split-K) with the plan.
    pub fn matmul(
        &mut self,
        shape: MatmulShape,
        epilogue: Epilogue,
        a: Binding<'a>,
        b: Binding<'a>,
        bias: Option<Binding<'a>>,
        c: Binding<'a>,
    ) -> Result<(), GpuError> {
        let launch = matmul::dispatch(self.ctx, shape, epilogue, None, a, b, bias, c)?;
        self.launch(launch);
        Ok(())
    }

    /// Appends a launch's dispatches and keeps its scratch buffers alive with the plan.
    pub fn launch(&mut self, launch: Launch) {
        self.dispatches.extend(launch.dispatches);
        self.scratch.extend(launch.scratch);
    }

    /// Stops the step here for the ranks to exchange data (after the dispatches so far).
    pub fn exchange(&mut self, exchange: Exchange) {
        self.exchanges.push((self.dispatches.len(), exchange));
    }

    /// A zeroed buffer of `bytes` kept with the plan, for one op's private use.
    pub fn scratch_buffer(&mut self, label: &str, bytes: u64) -> Result<wgpu::Buffer, GpuError> {
        let buffer = self.ctx.create_buffer(label, bytes, TENSOR_USAGE)?;
        self.scratch.push(buffer.clone());
        Ok(buffer)
    }
}
