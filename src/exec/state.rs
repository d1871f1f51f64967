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

/// The training state resident on the GPU, for `members` models of one graph (a stacked
/// plan; one for a lone model): each flat buffer holds every member's part back to back,
/// member k's at k times the part's length ([`GpuState::member_stride`]).
pub struct GpuState {
    pub layout: StateLayout,
    /// Models whose state this holds.
    pub members: usize,
    pub params: wgpu::Buffer,
    pub grads: wgpu::Buffer,
    pub optimizer: Vec<wgpu::Buffer>,
    /// The f32 state buffers, back to back at their aligned offsets.
    pub floats: wgpu::Buffer,
    /// The counter state buffers (u32).
    pub counts: wgpu::Buffer,
    /// The graph's constants ([`Graph::constants`]), in order: one part, shared by every
    /// member.
    pub constants: Vec<wgpu::Buffer>,
}

/// One of the flat state buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flat {
    /// Parameters, gradients and optimizer state (one layout).
    Params,
    /// f32 state buffers (running statistics).
    Floats,
    /// Counter state buffers.
    Counts,
}

impl GpuState {
    /// Allocates the buffers for `graph` and one member per host state, and uploads them.
    pub fn new(ctx: &GpuContext, graph: &Graph, hosts: &[HostState]) -> Result<Self, GpuError> {
        let align = (ctx.limits().min_storage_buffer_offset_alignment as usize / 4).max(1);
        let layout = StateLayout::new(graph, align);
        let members = hosts.len().max(1);
        let bytes = |n: usize| ((n * members).max(1) * 4) as u64;
        let state = Self {
            params: ctx.create_buffer("parameters", bytes(layout.params_len), TENSOR_USAGE)?,
            grads: ctx.create_buffer("gradients", bytes(layout.params_len), TENSOR_USAGE)?,
            optimizer: (0..graph.optimizer_states.len())
                .map(|_| {
                    ctx.create_buffer("optimizer state", bytes(layout.params_len), TENSOR_USAGE)
                })
                .collect::<Result<_, _>>()?,
            floats: ctx.create_buffer("state buffers", bytes(layout.floats_len), TENSOR_USAGE)?,
            counts: ctx.create_buffer("state counters", bytes(layout.counts_len), TENSOR_USAGE)?,
            constants: graph
                .constants
                .iter()
                .map(|c| {
                    ctx.create_buffer_init(&c.name, bytemuck::cast_slice(&c.data), TENSOR_USAGE)
                })
                .collect::<Result<_, _>>()?,
            layout,
            members,
        };
        for (k, host) in hosts.iter().enumerate() {
            state.upload_member(ctx, k, host);
        }
        Ok(state)
    }

    /// Elements from one member's part of a flat buffer to the next.
    pub fn member_stride(&self, flat: Flat) -> usize {
        match flat {
            Flat::Params => self.layout.params_len,
            Flat::Floats => self.layout.floats_len,
            Flat::Counts => self.layout.counts_len,
        }
    }

    /// Overwrites the GPU state of a lone model (member 0) with `host`.
    pub fn upload(&self, ctx: &GpuContext, host: &HostState) {
        self.upload_member(ctx, 0, host);
    }

    /// Overwrites member `k`'s part of the GPU state with `host` (through the queue, before
    /// the next submit).
    pub fn upload_member(&self, ctx: &GpuContext, k: usize, host: &HostState) {
        let l = &self.layout;
        let at = |flat: Flat| (k * self.member_stride(flat) * 4) as u64;
        let mut params = vec![0.0f32; l.params_len];
        for (p, off) in host.params.iter().zip(&l.params) {
            params[*off..*off + p.len()].copy_from_slice(p);
        }
        ctx.queue.write_buffer(
            &self.params,
            at(Flat::Params),
            bytemuck::cast_slice(&params),
        );
        for (buffer, tensors) in self.optimizer.iter().zip(&host.optimizer) {
            let mut flat = vec![0.0f32; l.params_len];
            for (t, off) in tensors.iter().zip(&l.params) {
                flat[*off..*off + t.len()].copy_from_slice(t);
            }
            ctx.queue
                .write_buffer(buffer, at(Flat::Params), bytemuck::cast_slice(&flat));
        }
        let mut floats = vec![0.0f32; l.floats_len];
        let mut counts = vec![0u32; l.counts_len];
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
        let queue = &ctx.queue;
        if !floats.is_empty() {
            queue.write_buffer(
                &self.floats,
                at(Flat::Floats),
                bytemuck::cast_slice(&floats),
            );
        }
        if !counts.is_empty() {
            queue.write_buffer(
                &self.counts,
                at(Flat::Counts),
                bytemuck::cast_slice(&counts),
            );
        }
    }

    /// Member `k`'s gradients, per parameter in the graph's order (blocking).
    pub fn download_gradients(
        &self,
        ctx: &GpuContext,
        graph: &Graph,
        k: usize,
    ) -> Result<Vec<Vec<f32>>, GpuError> {
        let l = &self.layout;
        let flat = self.read_part(ctx, &self.grads, Flat::Params, k)?;
        Ok(graph
            .params
            .iter()
            .zip(&l.params)
            .map(|(p, off)| flat[*off..*off + p.len()].to_vec())
            .collect())
    }

    /// Member `k`'s part of a flat buffer (blocking).
    fn read_part<T: bytemuck::Pod>(
        &self,
        ctx: &GpuContext,
        buffer: &wgpu::Buffer,
        flat: Flat,
        k: usize,
    ) -> Result<Vec<T>, GpuError> {
        let len = self.member_stride(flat);
        if len == 0 {
            return Ok(Vec::new());
        }
        read_buffer(ctx, buffer, (k * len * 4) as u64, (len * 4) as u64)
    }

    /// Reads member `k`'s whole state back (blocking); `step` is kept by the caller.
    pub fn download(
        &self,
        ctx: &GpuContext,
        graph: &Graph,
        k: usize,
        step: u64,
    ) -> Result<HostState, GpuError> {
        let l = &self.layout;
        let split = |flat: &[f32]| -> Vec<Vec<f32>> {
            graph
                .params
                .iter()
                .zip(&l.params)
                .map(|(p, off)| flat[*off..*off + p.len()].to_vec())
                .collect()
        };
        let params = split(&self.read_part::<f32>(ctx, &self.params, Flat::Params, k)?);
        let optimizer = self
            .optimizer
            .iter()
            .map(|b| Ok(split(&self.read_part::<f32>(ctx, b, Flat::Params, k)?)))
            .collect::<Result<_, GpuError>>()?;
        let floats: Vec<f32> = self.read_part(ctx, &self.floats, Flat::Floats, k)?;
        let counts: Vec<u32> = self.read_part(ctx, &self.counts, Flat::Counts, k)?;
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

    /// A parameter's slices of the flat parameter buffer, every member's.
    pub fn param_binding(&self, graph: &Graph, id: ParamId) -> Binding<'_> {
        self.flat_binding(&self.params, graph, id)
    }

    /// A parameter's slices of the flat gradient buffer, every member's.
    pub fn grad_binding(&self, graph: &Graph, id: ParamId) -> Binding<'_> {
        self.flat_binding(&self.grads, graph, id)
    }

    fn flat_binding<'a>(
        &self,
        buffer: &'a wgpu::Buffer,
        graph: &Graph,
        id: ParamId,
    ) -> Binding<'a> {
        self.members_binding(
            buffer,
            Flat::Params,
            self.layout.params[id.0],
            graph.param(id).len(),
        )
    }

    /// `len` elements at `offset` of each member's part of a flat buffer, as one binding.
    fn members_binding<'a>(
        &self,
        buffer: &'a wgpu::Buffer,
        flat: Flat,
        offset: usize,
        len: usize,
    ) -> Binding<'a> {
        let stride = self.member_stride(flat);
        Binding {
            buffer,
            offset: (offset * 4) as u64,
            size: (((self.members - 1) * stride + len).max(1) * 4) as u64,
            member_stride: (stride * 4) as u64,
        }
    }

    /// The first `params_len` elements of each member's part of a flat buffer of the
    /// parameters' layout (parameters, gradients, optimizer state): what the optimizer
    /// updates.
    pub fn flat_params_binding<'a>(&self, buffer: &'a wgpu::Buffer) -> Binding<'a> {
        self.members_binding(buffer, Flat::Params, 0, self.layout.params_len)
    }

    /// A state buffer's binding (all its parts), every member's.
    pub fn buffer_binding(&self, graph: &Graph, id: BufferId) -> Binding<'_> {
        let b = graph.buffer(id);
        let (buffer, flat) = match b.kind {
            BufferKind::F32 => (&self.floats, Flat::Floats),
            BufferKind::Count => (&self.counts, Flat::Counts),
        };
        self.members_binding(buffer, flat, self.layout.buffers[id.0], b.len())
    }

    /// Bytes of the state buffers (running statistics and counters).
    pub fn buffer_bytes(&self) -> u64 {
        self.floats.size() + self.counts.size()
    }
}
