//! Model state resident on the GPU: parameters, gradients and optimizer state in one flat
//! buffer each (so the optimizer updates every parameter in one dispatch), the ops' state
//! buffers (f32 ones in one flat buffer, counters in another), and the graph's constants.
//! [`HostState`] is its host image.

use crate::gpu::{Binding, GpuContext, GpuError, TENSOR_USAGE, read_buffer};
use crate::graph::{BufferId, BufferKind, BufferValues, Graph, ParamId};

pub use crate::graph::HostState;

/// Where each tensor lives in the flat buffers, in elements. Offsets are aligned to the
/// device's storage-binding offset alignment so each tensor can be bound on its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateLayout {
    /// Per parameter: offset into the parameter (and gradient, and optimizer-state) buffer.
    pub params: Vec<usize>,
    pub params_len: usize,
    /// Per state buffer: its offset in the flat buffer of its kind (f32 or counters).
    pub buffers: Vec<usize>,
    /// Elements of the flat f32 state buffer.
    pub floats_len: usize,
    /// Elements (u32) of the flat counter buffer.
    pub counts_len: usize,
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
        let of_kind = |kind| {
            graph
                .buffers
                .iter()
                .map(move |b| if b.kind == kind { b.len() } else { 0 })
        };
        let (floats, floats_len) = place(&mut of_kind(BufferKind::F32));
        let (counts, counts_len) = place(&mut of_kind(BufferKind::Count));
        let buffers = graph
            .buffers
            .iter()
            .enumerate()
            .map(|(i, b)| match b.kind {
                BufferKind::F32 => floats[i],
                BufferKind::Count => counts[i],
            })
            .collect();
        Self {
            params,
            params_len,
            buffers,
            floats_len,
            counts_len,
        }
    }
}

/// The training state resident on the GPU.
pub struct GpuState {
    pub layout: StateLayout,
    pub params: wgpu::Buffer,
    pub grads: wgpu::Buffer,
    pub optimizer: Vec<wgpu::Buffer>,
    /// The f32 state buffers, back to back at their aligned offsets.
    pub floats: wgpu::Buffer,
    /// The counter state buffers (u32).
    pub counts: wgpu::Buffer,
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
            optimizer: (0..graph.optimizer_states.len())
                .map(|_| {
                    ctx.create_buffer("optimizer state", floats(layout.params_len), TENSOR_USAGE)
                })
                .collect::<Result<_, _>>()?,
            floats: ctx.create_buffer("state buffers", floats(layout.floats_len), TENSOR_USAGE)?,
            counts: ctx.create_buffer("state counters", floats(layout.counts_len), TENSOR_USAGE)?,
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
        let mut floats = vec![0.0f32; l.floats_len.max(1)];
        let mut counts = vec![0u32; l.counts_len.max(1)];
        for (values, &off) in host.buffers.iter().zip(&l.buffers) {
            match values {
                BufferValues::F32(v) => floats[off..off + v.len()].copy_from_slice(v),
                BufferValues::Count(v) => {
                    for (c, &n) in counts[off..off + v.len()].iter_mut().zip(v) {
                        *c = n.min(u64::from(u32::MAX)) as u32;
                    }
                }
            }
        }
        ctx.queue
            .write_buffer(&self.floats, 0, bytemuck::cast_slice(&floats));
        ctx.queue
            .write_buffer(&self.counts, 0, bytemuck::cast_slice(&counts));
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
        let floats = read(&self.floats, l.floats_len)?;
        let counts: Vec<u32> = read_buffer(ctx, &self.counts, 0, (l.counts_len * 4) as u64)?;
        let buffers = graph
            .buffers
            .iter()
            .zip(&l.buffers)
            .map(|(b, &off)| match b.kind {
                BufferKind::F32 => BufferValues::F32(floats[off..off + b.len()].to_vec()),
                BufferKind::Count => BufferValues::Count(
                    counts[off..off + b.len()]
                        .iter()
                        .map(|&c| u64::from(c))
                        .collect(),
                ),
            })
            .collect();
        Ok(HostState {
            params,
            optimizer,
            buffers,
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

    pub fn param_binding(&self, graph: &Graph, id: ParamId) -> Binding<'_> {
        self.flat_binding(&self.params, graph, id)
    }

    pub fn grad_binding(&self, graph: &Graph, id: ParamId) -> Binding<'_> {
        self.flat_binding(&self.grads, graph, id)
    }

    fn flat_binding<'a>(
        &self,
        buffer: &'a wgpu::Buffer,
        graph: &Graph,
        id: ParamId,
    ) -> Binding<'a> {
        Binding {
            buffer,
            offset: (self.layout.params[id.0] * 4) as u64,
            size: (graph.param(id).len() * 4) as u64,
        }
    }

    /// A state buffer's binding (all its parts).
    pub fn buffer_binding(&self, graph: &Graph, id: BufferId) -> Binding<'_> {
        let b = graph.buffer(id);
        Binding {
            buffer: match b.kind {
                BufferKind::F32 => &self.floats,
                BufferKind::Count => &self.counts,
            },
            offset: (self.layout.buffers[id.0] * 4) as u64,
            size: (b.len() * 4) as u64,
        }
    }

    /// Bytes of the state buffers (running statistics and counters).
    pub fn buffer_bytes(&self) -> u64 {
        self.floats.size() + self.counts.size()
    }
}
