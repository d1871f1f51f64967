//! The GPU plan of a graph in one mode: buffers from the memory planner, and every pipeline
//! and bind group made once, here. Running a step records the prepared dispatches into one
//! compute pass; nothing is created per step.

use super::memory::{self, MemoryPlan};
use super::state::GpuState;
use crate::gpu::{Binding, Dispatch, GpuContext, GpuError, TENSOR_USAGE};
use crate::graph::{FoldedDropout, Graph, Mode, Node, Op, ValueId};
use crate::nn::Loss;
use crate::ops::batchnorm::{self, FusedDropout, LayerBindings};
use crate::ops::dropout::{self, MaskStream};
use crate::ops::matmul::{self, Epilogue, MatmulShape};
use crate::ops::softmax_xent::{self, XentBindings};
use crate::ops::{bce, elementwise, reduce};
use crate::optim;

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

impl Shared<'_> {
    /// The dropout mask stream of a layer, under this model's seed.
    fn stream(&self, layer: u32) -> MaskStream {
        MaskStream {
            seed: self.seed,
            layer,
        }
    }

    /// A dropout folded into a batch norm, with its mask stream.
    fn fused(&self, dropout: FoldedDropout) -> FusedDropout {
        FusedDropout {
            p: dropout.p,
            stream: self.stream(dropout.stream),
        }
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
        let slot = self.memory.slot_of[self.logits.0].unwrap_or(0);
        (&self.slots[slot], self.logits_bytes)
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
        let Self {
            ctx,
            graph,
            mode,
            shared,
            ..
        } = *self;
        let state = shared.state;
        let bind = |v: ValueId| self.bind(v);
        let class_weight = self.class_weight;
        let value = |i: usize| graph.value(node.inputs[i]);
        // c = a·b (+ bias) (ReLU), with its dispatches and scratch buffers kept.
        let mut matmul = |shape, epilogue, [a, b, c]: [Binding<'a>; 3], bias| {
            let launch = matmul::dispatch(ctx, shape, epilogue, None, a, b, bias, c)?;
            dispatches.extend(launch.dispatches);
            scratch.extend(launch.scratch);
            Ok::<(), GpuError>(())
        };
        match &node.op {
            Op::Linear { weight, bias, relu } => {
                let shape = MatmulShape::linear_forward(value(0).rows, &graph.param(*weight).shape);
                let epilogue = Epilogue {
                    bias: bias.is_some(),
                    relu: *relu,
                };
                let operands = [
                    bind(node.inputs[0]),
                    state.param_binding(graph, *weight),
                    bind(node.outputs[0]),
                ];
                let bias = bias.map(|b| state.param_binding(graph, b));
                matmul(shape, epilogue, operands, bias)?;
            }
            Op::BatchNorm { bn, relu, dropout } => {
                let info = &graph.batch_norms[*bn];
                let layer = LayerBindings {
                    gamma: state.param_binding(graph, info.gamma),
                    beta: state.param_binding(graph, info.beta),
                    running: state.running_binding(*bn, info.features),
                    num_batches_tracked: state.counter_binding(*bn),
                    step: shared.step,
                };
                let (n, d) = (value(0).rows, info.features);
                match mode {
                    Mode::Train => dispatches.extend(batchnorm::train_dispatches(
                        ctx,
                        n,
                        d,
                        info.config,
                        *relu,
                        dropout.map(|f| shared.fused(f)),
                        layer,
                        bind(node.inputs[0]),
                        bind(node.outputs[1]),
                        bind(node.outputs[0]),
                    )?),
                    Mode::Eval => dispatches.push(batchnorm::eval_dispatch(
                        ctx,
                        n,
                        d,
                        info.config,
                        *relu,
                        layer,
                        bind(node.inputs[0]),
                        bind(node.outputs[0]),
                    )?),
                }
            }
            Op::Relu => dispatches.push(elementwise::relu_dispatch(
                ctx,
                value(0).len(),
                bind(node.inputs[0]),
                bind(node.outputs[0]),
            )?),
            // Train: the mask drawn (forward) or drawn again (backward); eval runs no backward,
            // and its dropout's output is its input.
            Op::Dropout { p, stream } | Op::DropoutBackward { p, stream } => {
                if mode == Mode::Train {
                    dispatches.push(dropout::dispatch(
                        ctx,
                        value(0).len(),
                        *p,
                        shared.stream(*stream),
                        shared.step,
                        bind(node.inputs[0]),
                        bind(node.outputs[0]),
                    )?);
                }
            }
            Op::CrossEntropy => {
                let Loss::CrossEntropy(ce) = &graph.loss else {
                    return Ok(());
                };
                dispatches.push(softmax_xent::dispatch(
                    ctx,
                    value(0).rows,
                    value(0).cols,
                    &ce.config,
                    XentBindings {
                        step: shared.step,
                        logits: bind(node.inputs[0]),
                        targets: bind(node.inputs[1]),
                        weight: class_weight.map(Binding::whole),
                        rows: bind(node.outputs[0]),
                        grad: (mode == Mode::Train).then(|| bind(node.outputs[1])),
                    },
                )?);
            }
            Op::BceWithLogits => {
                let Loss::BceWithLogits(b) = &graph.loss else {
                    return Ok(());
                };
                dispatches.push(bce::dispatch(
                    ctx,
                    value(0).rows,
                    b.config,
                    shared.step,
                    bind(node.inputs[0]),
                    bind(node.inputs[1]),
                    bind(node.outputs[0]),
                    (mode == Mode::Train).then(|| bind(node.outputs[1])),
                )?);
            }
            Op::Metrics => dispatches.push(reduce::metrics_dispatch(
                ctx,
                value(0).rows,
                shared.step,
                bind(node.inputs[0]),
                shared.totals,
            )?),
            Op::ReluBackward => dispatches.push(elementwise::relu_backward_dispatch(
                ctx,
                value(0).len(),
                bind(node.inputs[0]),
                bind(node.inputs[1]),
                bind(node.outputs[0]),
            )?),
            Op::LinearGradInput { weight } => {
                let shape =
                    MatmulShape::linear_grad_input(value(0).rows, &graph.param(*weight).shape);
                let operands = [
                    bind(node.inputs[0]),
                    state.param_binding(graph, *weight),
                    bind(node.outputs[0]),
                ];
                matmul(shape, Epilogue::default(), operands, None)?;
            }
            Op::LinearGradParams { weight, bias } => {
                let shape =
                    MatmulShape::linear_grad_weight(value(0).rows, &graph.param(*weight).shape);
                let operands = [
                    bind(node.inputs[0]),
                    bind(node.inputs[1]),
                    state.grad_binding(graph, *weight),
                ];
                matmul(shape, Epilogue::default(), operands, None)?;
                if let Some(b) = bias {
                    dispatches.push(reduce::column_sum_dispatch(
                        ctx,
                        value(0).rows,
                        value(0).cols,
                        bind(node.inputs[0]),
                        state.grad_binding(graph, *b),
                    )?);
                }
            }
            Op::BatchNormBackward { bn, relu, dropout } => {
                let info = &graph.batch_norms[*bn];
                dispatches.extend(batchnorm::backward_dispatches(
                    ctx,
                    value(0).rows,
                    info.features,
                    *relu,
                    dropout.map(|f| shared.fused(f)),
                    bind(node.inputs[0]),
                    bind(node.inputs[1]),
                    bind(node.inputs[2]),
                    bind(node.inputs[3]),
                    state.param_binding(graph, info.gamma),
                    state.grad_binding(graph, info.gamma),
                    state.grad_binding(graph, info.beta),
                    bind(node.outputs[0]),
                )?);
            }
            Op::OptimizerStep => {
                let len = state.layout.params_len;
                let flat = |b| flat_binding(b, len);
                let opt_state: Vec<Binding<'_>> = state.optimizer.iter().map(flat).collect();
                dispatches.push(optim::dispatch(
                    ctx,
                    &graph.optimizer,
                    state.layout.params_len,
                    shared.step,
                    flat(&state.params),
                    flat(&state.grads),
                    &opt_state,
                )?);
            }
        }
        Ok(())
    }
}

/// The first `len` floats of a flat state buffer.
fn flat_binding(buffer: &wgpu::Buffer, len: usize) -> Binding<'_> {
    Binding {
        buffer,
        offset: 0,
        size: (len * 4) as u64,
    }
}
