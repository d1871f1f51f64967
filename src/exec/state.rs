//! Model state: parameters, optimizer state, running statistics and the step counter, on the
//! host (the CPU executor and checkpoints) and resident on the GPU (one flat buffer per kind,
//! so the optimizer updates every parameter in one dispatch).

use crate::gpu::{Binding, GpuContext, GpuError, TENSOR_USAGE, read_buffer};
use crate::graph::Graph;
use crate::nn::init_parameters;
use crate::ops::batchnorm::RunningStats;

/// Where each tensor lives in the flat buffers, in elements. Offsets are aligned to the
/// device's storage-binding offset alignment so each tensor can be bound on its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateLayout {
    /// Per parameter: offset into the parameter (and gradient, and optimizer-state) buffer.
    pub params: Vec<usize>,
    pub params_len: usize,
    /// Per batch norm: offset of its [running_mean; running_var] in the running buffer.
    pub running: Vec<usize>,
    pub running_len: usize,
    /// Per batch norm: offset of its num_batches_tracked (u32) in the counter buffer.
    pub counters: Vec<usize>,
    pub counters_len: usize,
}

impl StateLayout {
    /// Lays out `graph`'s state with offsets that are multiples of `align` elements.
    pub fn new(graph: &Graph, align: usize) -> Self {
        // A multiple of 4 too: the optimizer updates the flat buffers four values at a time.
        let align = align.max(4).next_multiple_of(4);
        let place = |lens: &mut dyn Iterator<Item = usize>| {
            let mut offsets = Vec::new();
            let mut end = 0usize;
            for len in lens {
                offsets.push(end);
                end = (end + len).next_multiple_of(align);
            }
            (offsets, end)
        };
        let (params, params_len) = place(&mut graph.params.iter().map(|p| p.len()));
        let (running, running_len) = place(&mut graph.batch_norms.iter().map(|b| 2 * b.features));
        let (counters, counters_len) = place(&mut graph.batch_norms.iter().map(|_| 1));
        Self {
            params,
            params_len,
            running,
            running_len,
            counters,
            counters_len,
        }
    }
}

/// The whole training state on the host.
#[derive(Clone, Debug, PartialEq)]
pub struct HostState {
    /// Per parameter, in graph order.
    pub params: Vec<Vec<f32>>,
    /// Optimizer state: `optimizer[k][param]` (SGD: the momentum buffer; Adam: exp_avg,
    /// exp_avg_sq).
    pub optimizer: Vec<Vec<Vec<f32>>>,
    /// Per batch norm.
    pub running: Vec<RunningStats>,
    /// Optimizer updates taken so far (the dropout generator's counter, Adam's t).
    pub step: u64,
}

impl HostState {
    /// PyTorch-style initialization from a seed.
    pub fn init(graph: &Graph, seed: u64) -> Self {
        Self::with_params(graph, init_parameters(&graph.params, seed))
    }

    /// Fresh optimizer and running state around the given parameters.
    pub fn with_params(graph: &Graph, params: Vec<Vec<f32>>) -> Self {
        let zeros: Vec<Vec<f32>> = graph.params.iter().map(|p| vec![0.0; p.len()]).collect();
        Self {
            params,
            optimizer: vec![zeros; graph.optimizer.state_count()],
            running: graph
                .batch_norms
                .iter()
                .map(|b| RunningStats::new(b.features))
                .collect(),
            step: 0,
        }
    }
}

/// The training state resident on the GPU.
pub struct GpuState {
    pub layout: StateLayout,
    pub params: wgpu::Buffer,
    pub grads: wgpu::Buffer,
    pub optimizer: Vec<wgpu::Buffer>,
    pub running: wgpu::Buffer,
    pub counters: wgpu::Buffer,
    /// The graph's constants ([`Graph::constants`]), in order.
    pub constants: Vec<wgpu::Buffer>,
}

impl GpuState {
    /// Allocates the buffers for `graph` and uploads `host`.
    pub fn new(ctx: &GpuContext, graph: &Graph, host: &HostState) -> Result<Self, GpuError> {
        let align = (ctx.limits().min_storage_buffer_offset_alignment as usize / 4).max(1);
        let layout = StateLayout::new(graph, align);
        let floats = |n: usize| (n.max(1) * 4) as u64;
        let state = Self {
            params: ctx.create_buffer("parameters", floats(layout.params_len), TENSOR_USAGE)?,
            grads: ctx.create_buffer("gradients", floats(layout.params_len), TENSOR_USAGE)?,
            optimizer: (0..graph.optimizer.state_count())
                .map(|_| {
                    ctx.create_buffer("optimizer state", floats(layout.params_len), TENSOR_USAGE)
                })
                .collect::<Result<_, _>>()?,
            running: ctx.create_buffer(
                "running stats",
                floats(layout.running_len),
                TENSOR_USAGE,
            )?,
            counters: ctx.create_buffer(
                "batch counters",
                floats(layout.counters_len),
                TENSOR_USAGE,
            )?,
            constants: graph
                .constants
                .iter()
                .map(|c| {
                    ctx.create_buffer_init(&c.name, bytemuck::cast_slice(&c.data), TENSOR_USAGE)
                })
                .collect::<Result<_, _>>()?,
            layout,
        };
        state.upload(ctx, host);
        Ok(state)
    }

    /// Overwrites the GPU state with `host` (through the queue, before the next submit).
    pub fn upload(&self, ctx: &GpuContext, host: &HostState) {
        let l = &self.layout;
        let mut params = vec![0.0f32; l.params_len];
        for (p, off) in host.params.iter().zip(&l.params) {
            params[*off..*off + p.len()].copy_from_slice(p);
        }
        ctx.queue
            .write_buffer(&self.params, 0, bytemuck::cast_slice(&params));
        for (buffer, tensors) in self.optimizer.iter().zip(&host.optimizer) {
            let mut flat = vec![0.0f32; l.params_len];
            for (t, off) in tensors.iter().zip(&l.params) {
                flat[*off..*off + t.len()].copy_from_slice(t);
            }
            ctx.queue
                .write_buffer(buffer, 0, bytemuck::cast_slice(&flat));
        }
        let mut running = vec![0.0f32; l.running_len.max(1)];
        let mut counters = vec![0u32; l.counters_len.max(1)];
        for (i, r) in host.running.iter().enumerate() {
            let d = r.mean.len();
            let off = l.running[i];
            running[off..off + d].copy_from_slice(&r.mean);
            running[off + d..off + 2 * d].copy_from_slice(&r.var);
            counters[l.counters[i]] = r.num_batches_tracked.min(u64::from(u32::MAX)) as u32;
        }
        ctx.queue
            .write_buffer(&self.running, 0, bytemuck::cast_slice(&running));
        ctx.queue
            .write_buffer(&self.counters, 0, bytemuck::cast_slice(&counters));
    }

    /// Reads the whole state back (blocking); `step` is kept by the caller.
    /// The gradient buffer, per parameter in the graph's order (blocking).
    pub fn download_gradients(
        &self,
        ctx: &GpuContext,
        graph: &Graph,
    ) -> Result<Vec<Vec<f32>>, GpuError> {
        let l = &self.layout;
        let flat: Vec<f32> = read_buffer(ctx, &self.grads, 0, (l.params_len * 4) as u64)?;
        Ok(graph
            .params
            .iter()
            .zip(&l.params)
            .map(|(p, off)| flat[*off..*off + p.len()].to_vec())
            .collect())
    }

    pub fn download(
        &self,
        ctx: &GpuContext,
        graph: &Graph,
        step: u64,
    ) -> Result<HostState, GpuError> {
        let l = &self.layout;
        let read = |buffer: &wgpu::Buffer, len: usize| -> Result<Vec<f32>, GpuError> {
            read_buffer(ctx, buffer, 0, (len * 4) as u64)
        };
        let split = |flat: &[f32]| -> Vec<Vec<f32>> {
            graph
                .params
                .iter()
                .zip(&l.params)
                .map(|(p, off)| flat[*off..*off + p.len()].to_vec())
                .collect()
        };
        let params = split(&read(&self.params, l.params_len)?);
        let optimizer = self
            .optimizer
            .iter()
            .map(|b| Ok(split(&read(b, l.params_len)?)))
            .collect::<Result<_, GpuError>>()?;
        let running_flat = read(&self.running, l.running_len)?;
        let counters: Vec<u32> = read_buffer(ctx, &self.counters, 0, (l.counters_len * 4) as u64)?;
        let running = graph
            .batch_norms
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let off = l.running[i];
                RunningStats {
                    mean: running_flat[off..off + b.features].to_vec(),
                    var: running_flat[off + b.features..off + 2 * b.features].to_vec(),
                    num_batches_tracked: u64::from(counters[l.counters[i]]),
                }
            })
            .collect();
        Ok(HostState {
            params,
            optimizer,
            running,
            step,
        })
    }

    /// Bytes of parameters (and, as many again, of gradients).
    pub fn param_bytes(&self) -> u64 {
        self.params.size()
    }

    /// Bytes of the graph's constants (a preprocessing's mean and matrix).
    pub fn constant_bytes(&self) -> u64 {
        self.constants.iter().map(wgpu::Buffer::size).sum()
    }

    pub fn optimizer_bytes(&self) -> u64 {
        self.optimizer.iter().map(wgpu::Buffer::size).sum()
    }

    pub fn param_binding(&self, graph: &Graph, id: crate::graph::ParamId) -> Binding<'_> {
        self.flat_binding(&self.params, graph, id)
    }

    pub fn grad_binding(&self, graph: &Graph, id: crate::graph::ParamId) -> Binding<'_> {
        self.flat_binding(&self.grads, graph, id)
    }

    fn flat_binding<'a>(
        &self,
        buffer: &'a wgpu::Buffer,
        graph: &Graph,
        id: crate::graph::ParamId,
    ) -> Binding<'a> {
        Binding {
            buffer,
            offset: (self.layout.params[id.0] * 4) as u64,
            size: (graph.param(id).len() * 4) as u64,
        }
    }

    pub fn running_binding(&self, bn: usize, features: usize) -> Binding<'_> {
        Binding {
            buffer: &self.running,
            offset: (self.layout.running[bn] * 4) as u64,
            size: (2 * features * 4) as u64,
        }
    }

    pub fn counter_binding(&self, bn: usize) -> Binding<'_> {
        Binding {
            buffer: &self.counters,
            offset: (self.layout.counters[bn] * 4) as u64,
            size: 4,
        }
    }
}
