//! The GPU plan of a graph in one mode: buffers from the memory planner, and every pipeline
//! and bind group made once, here. Running a step records the prepared dispatches into one
//! compute pass; nothing is created per step.

use super::memory::{self, MemoryPlan};
use super::state::GpuState;
use crate::gpu::{Binding, Dispatch, GpuContext, GpuError, Launch, TENSOR_USAGE};
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
            batch_nodes: Vec::new(),
            input,
            target,
            logits: graph.logits,
            logits_bytes,
            class_weight,
        };
        let (mut dispatches, mut scratch, mut batch_nodes) = (Vec::new(), Vec::new(), Vec::new());
        let builder = plan.builder(ctx, graph, shared, &plan.input, &plan.target);
        for (index, node) in graph.nodes_for(mode) {
            let first = dispatches.len();
            builder.node(node, &mut dispatches, &mut scratch)?;
            if node.inputs.contains(&graph.input) || node.inputs.contains(&graph.target) {
                batch_nodes.push((index, first..dispatches.len()));
            }
        }
        plan.dispatches = dispatches;
        plan.scratch = scratch;
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
            builder.node(&graph.nodes[*index], &mut dispatches, &mut bound.scratch)?;
            bound.replaced.push((range.clone(), dispatches));
        }
        Ok(bound)
    }

    /// Records the plan into `pass` with `batch`'s dispatches for the nodes that read it.
    pub fn encode_with(&self, pass: &mut wgpu::ComputePass<'_>, batch: &BatchDispatches) {
        let mut next = 0;
        for (range, dispatches) in &batch.replaced {
            for d in &self.dispatches[next..range.start] {
                d.encode(pass);
            }
            for d in dispatches {
                d.encode(pass);
            }
            next = range.end;
        }
        for d in &self.dispatches[next..] {
            d.encode(pass);
        }
    }

    /// Seconds each dispatch takes on its own (repeated `reps` times in one submit), in plan
    /// order with its kernel's name: where a step's time goes.
    pub fn profile(
        &self,
        ctx: &GpuContext,
        reps: usize,
    ) -> Result<Vec<(&'static str, f64)>, GpuError> {
        ctx.wait_idle()?;
        let mut out = Vec::with_capacity(self.dispatches.len());
        for d in &self.dispatches {
            let start = std::time::Instant::now();
            let list: Vec<&Dispatch> = std::iter::repeat_n(d, reps.max(1)).collect();
            ctx.submit(&list);
            ctx.wait_idle()?;
            out.push((d.label, start.elapsed().as_secs_f64() / reps.max(1) as f64));
        }
        Ok(out)
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

    /// Appends the dispatches of `node` (and the scratch buffers they keep).
    fn node(
        &self,
        node: &Node,
        dispatches: &mut Vec<Dispatch>,
        scratch: &mut Vec<wgpu::Buffer>,
    ) -> Result<(), GpuError> {
        let mut cx = GpuCx {
            ctx: self.ctx,
            graph: self.graph,
            mode: self.mode,
            state: self.shared.state,
            step: self.shared.step,
            totals: self.shared.totals,
            class_weight: self.class_weight,
            seed: self.shared.seed,
            builder: self,
            dispatches,
            scratch,
        };
        node.op.encode_gpu(node, &mut cx)
    }
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
    builder: &'p Builder<'a>,
    dispatches: &'p mut Vec<Dispatch>,
    scratch: &'p mut Vec<wgpu::Buffer>,
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
}
