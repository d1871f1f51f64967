//! Shader modules, the pipeline cache, and dispatches recorded into one compute pass.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use wgpu::util::DeviceExt;

use super::{GpuContext, GpuError};

/// One WGSL file under `shaders/`, compiled once per context.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Shader {
    MatmulNtVec4,
    MatmulBvec4,
    MatmulGeneral,
    MatmulTiled,
    /// The broadcast matmuls, with the rows of C a workgroup computes.
    MatmulBroadcastNt(BroadcastRows),
    MatmulBroadcastNn(BroadcastRows),
    BatchNorm,
    /// `shaders/activation.wgsl` with one activation's functions (`shaders/activation/`).
    Activation(&'static ActivationShader),
    Dropout,
    Preprocess,
    PhiloxWords,
    SoftmaxXent,
    Bce,
    Optim,
    Reduce,
    Bench,
}

/// Rows of C one workgroup of a broadcast matmul computes (`ROWS` in its shader). Every
/// output sums its K products in the same order whatever the block, so the choice changes
/// no bit; it trades the reuse of each load of B (more rows) against the rows computed past
/// M and dropped (fewer).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BroadcastRows {
    Twelve,
    Sixteen,
}

impl BroadcastRows {
    /// The block for a product of `m` rows: 16 unless 12 computes fewer rows past M by more
    /// than a tenth. On lavapipe a 16-row block costs about 0.9 of a 12-row one per row
    /// computed (it loads B for a third more rows), so 16 wins wherever M is a multiple of
    /// 16 or large, 12 where M is small or falls just past a multiple of 12.
    pub fn for_rows(m: usize) -> Self {
        let computed = |rows: usize| m.max(1).div_ceil(rows) * rows;
        if computed(16) * 9 < computed(12) * 10 {
            BroadcastRows::Sixteen
        } else {
            BroadcastRows::Twelve
        }
    }

    pub fn rows(self) -> u32 {
        match self {
            BroadcastRows::Twelve => 12,
            BroadcastRows::Sixteen => 16,
        }
    }

    fn wgsl(self) -> &'static str {
        match self {
            BroadcastRows::Twelve => "const ROWS: u32 = 12u;\n",
            BroadcastRows::Sixteen => "const ROWS: u32 = 16u;\n",
        }
    }
}

/// One activation's WGSL functions, and the names its dispatches are reported under.
#[derive(PartialEq, Eq, Hash)]
pub struct ActivationShader {
    /// The forward's name (`"gelu_tanh"`).
    pub name: &'static str,
    /// The backward's name (`"gelu_tanh_backward"`).
    pub backward_name: &'static str,
    pub source: &'static str,
}

impl std::fmt::Debug for ActivationShader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// NaN tests on the bits, for the kernels that pass NaN on.
const NAN: &str = include_str!("../../shaders/nan.wgsl");
/// The per-step uniform, shared by the kernels that read it.
const STEP: &str = include_str!("../../shaders/step.wgsl");
const PHILOX: &str = include_str!("../../shaders/philox.wgsl");
/// Folding a batch into the running loss/accuracy totals.
const TOTALS: &str = include_str!("../../shaders/totals.wgsl");
/// A loss kernel's sums of its gradient's columns (after TOTALS).
const LOSS_COLUMNS: &str = include_str!("../../shaders/loss_columns.wgsl");
/// Parameters and epilogue shared by the matmul variants, after ReLU's definition.
const MATMUL: &str = concat!(
    include_str!("../../shaders/activation/relu.wgsl"),
    include_str!("../../shaders/matmul.wgsl")
);
/// ReLU, which batch norm's kernels fuse.
const RELU: &str = include_str!("../../shaders/activation/relu.wgsl");
/// The element-wise kernels every activation's functions are appended to.
const ACTIVATION: &str = include_str!("../../shaders/activation.wgsl");

impl Shader {
    /// The WGSL files making up the module, in order.
    fn parts(self) -> Vec<&'static str> {
        let parts: &[&str] = match self {
            Shader::MatmulNtVec4 => &[MATMUL, include_str!("../../shaders/matmul_nt_vec4.wgsl")],
            Shader::MatmulBvec4 => &[MATMUL, include_str!("../../shaders/matmul_bvec4.wgsl")],
            Shader::MatmulGeneral => &[MATMUL, include_str!("../../shaders/matmul_general.wgsl")],
            Shader::MatmulTiled => &[MATMUL, include_str!("../../shaders/matmul_tiled.wgsl")],
            Shader::MatmulBroadcastNt(rows) => &[
                MATMUL,
                rows.wgsl(),
                include_str!("../../shaders/matmul_broadcast_nt.wgsl"),
            ],
            Shader::MatmulBroadcastNn(rows) => &[
                MATMUL,
                rows.wgsl(),
                include_str!("../../shaders/matmul_broadcast_nn.wgsl"),
            ],
            Shader::BatchNorm => &[
                NAN,
                STEP,
                PHILOX,
                RELU,
                include_str!("../../shaders/batchnorm.wgsl"),
            ],
            Shader::Activation(a) => return vec![NAN, ACTIVATION, a.source],
            Shader::Dropout => &[STEP, PHILOX, include_str!("../../shaders/dropout.wgsl")],
            // The dropout kernel's parameters and bindings, and an entry writing raw words.
            Shader::PhiloxWords => &[
                STEP,
                PHILOX,
                include_str!("../../shaders/dropout.wgsl"),
                include_str!("../../shaders/philox_words.wgsl"),
            ],
            Shader::Preprocess => &[include_str!("../../shaders/preprocess.wgsl")],
            Shader::SoftmaxXent => &[
                NAN,
                STEP,
                TOTALS,
                LOSS_COLUMNS,
                include_str!("../../shaders/softmax_xent.wgsl"),
            ],
            Shader::Bce => &[
                NAN,
                STEP,
                TOTALS,
                LOSS_COLUMNS,
                include_str!("../../shaders/bce.wgsl"),
            ],
            Shader::Optim => &[STEP, include_str!("../../shaders/optim.wgsl")],
            Shader::Reduce => &[STEP, TOTALS, include_str!("../../shaders/reduce.wgsl")],
            Shader::Bench => &[include_str!("../../shaders/bench.wgsl")],
        };
        parts.to_vec()
    }

    /// The module's WGSL source.
    pub(crate) fn source(self) -> String {
        self.parts().concat()
    }

    /// Shaders whose every access is clamped in WGSL and whose bindings the launcher checks
    /// against the shape, so the compiler's own bounds checks only cost time (a fifth of the
    /// broadcast matmuls' on lavapipe).
    fn checks_own_bounds(self) -> bool {
        matches!(
            self,
            Shader::MatmulBroadcastNt(_) | Shader::MatmulBroadcastNn(_)
        )
    }
}

/// A compute entry point with its pipeline-overridable constants (workgroup sizes, tiles).
#[derive(Clone, Debug)]
pub struct Kernel {
    pub shader: Shader,
    pub entry: &'static str,
    pub constants: Vec<(&'static str, f64)>,
    /// The name its dispatches are reported under (the entry point's, unless set).
    pub label: &'static str,
}

impl Kernel {
    pub fn new(shader: Shader, entry: &'static str) -> Self {
        Self {
            shader,
            entry,
            constants: Vec::new(),
            label: entry,
        }
    }

    /// Reports its dispatches under `label` (for entry points several shaders share).
    pub fn labelled(mut self, label: &'static str) -> Self {
        self.label = label;
        self
    }

    pub fn with(mut self, name: &'static str, value: impl Into<f64>) -> Self {
        self.constants.push((name, value.into()));
        self
    }

    fn key(&self) -> KernelKey {
        KernelKey {
            shader: self.shader,
            entry: self.entry,
            constants: self
                .constants
                .iter()
                .map(|&(n, v)| (n, v.to_bits()))
                .collect(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct KernelKey {
    shader: Shader,
    entry: &'static str,
    constants: Vec<(&'static str, u64)>,
}

/// Compiled modules and pipelines, created on first use and reused for the context's lifetime.
#[derive(Default)]
pub(crate) struct PipelineCache {
    modules: Mutex<HashMap<Shader, wgpu::ShaderModule>>,
    pipelines: Mutex<HashMap<KernelKey, wgpu::ComputePipeline>>,
    pub(crate) pipelines_created: AtomicU64,
    pub(crate) buffers_created: AtomicU64,
}

/// Counters of GPU objects a context has created: plans must not create any per step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResourceCounters {
    pub pipelines: u64,
    pub buffers: u64,
}

/// A buffer range bound to one `@binding`. In a stacked plan (many members of one
/// architecture, see `crate::stack`) a binding holds every member's part, member k's at
/// `k · member_stride` bytes from its start; 0 means one part, shared by every member (a
/// constant) or a plan of one member.
#[derive(Clone, Copy, Debug)]
pub struct Binding<'a> {
    pub buffer: &'a wgpu::Buffer,
    pub offset: u64,
    pub size: u64,
    /// Bytes from one member's part to the next (0: one part).
    pub member_stride: u64,
}

impl<'a> Binding<'a> {
    pub fn whole(buffer: &'a wgpu::Buffer) -> Self {
        Self {
            buffer,
            offset: 0,
            size: buffer.size(),
            member_stride: 0,
        }
    }

    /// `size` bytes at `offset` of `buffer`, one part.
    pub fn range(buffer: &'a wgpu::Buffer, offset: u64, size: u64) -> Self {
        Self {
            buffer,
            offset,
            size,
            member_stride: 0,
        }
    }

    /// The same range read as `members` parts of equal size, back to back.
    pub fn split_members(self, members: u32) -> Self {
        Self {
            member_stride: self.size / u64::from(members.max(1)),
            ..self
        }
    }

    /// Members whose parts the binding holds (1 for one part).
    pub fn members(&self) -> u32 {
        match self.member_stride {
            0 => 1,
            stride => self.size.div_ceil(stride) as u32,
        }
    }

    /// Elements of `element_bytes` from one member's part to the next, as a kernel indexes
    /// them.
    pub fn member_elements(&self, element_bytes: u64) -> u32 {
        (self.member_stride / element_bytes) as u32
    }
}

/// A pipeline, its bind group and its grid: everything needed to record one dispatch.
/// Created at plan time; recording it allocates nothing.
pub struct Dispatch {
    pub label: &'static str,
    pipeline: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
    workgroups: [u32; 3],
}

impl Dispatch {
    pub fn encode(&self, pass: &mut wgpu::ComputePass<'_>) {
        if self.workgroups.contains(&0) {
            return;
        }
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        pass.dispatch_workgroups(self.workgroups[0], self.workgroups[1], self.workgroups[2]);
    }

    pub fn workgroups(&self) -> [u32; 3] {
        self.workgroups
    }
}

/// Dispatches that run in order as one operation, with the buffers only they use (such as
/// split-K partial products), which must live as long as the dispatches.
pub struct Launch {
    pub dispatches: Vec<Dispatch>,
    pub scratch: Vec<wgpu::Buffer>,
}

impl Launch {
    pub fn single(dispatch: Dispatch) -> Self {
        Self {
            dispatches: vec![dispatch],
            scratch: Vec::new(),
        }
    }

    pub fn encode(&self, pass: &mut wgpu::ComputePass<'_>) {
        for d in &self.dispatches {
            d.encode(pass);
        }
    }

    /// Records the launch into its own command buffer and submits it, without waiting.
    pub fn submit(&self, ctx: &GpuContext) -> wgpu::SubmissionIndex {
        let list: Vec<&Dispatch> = self.dispatches.iter().collect();
        ctx.submit(&list)
    }
}

/// Splits `count` workgroups over x and y so neither exceeds the per-dimension limit; shaders
/// rebuild the linear index from `num_workgroups`.
pub fn grid_1d(count: u32, max_per_dim: u32) -> [u32; 3] {
    if count <= max_per_dim {
        [count, 1, 1]
    } else {
        let y = count.div_ceil(max_per_dim);
        [count.div_ceil(y), y, 1]
    }
}

impl GpuContext {
    pub fn counters(&self) -> ResourceCounters {
        ResourceCounters {
            pipelines: self.pipelines.pipelines_created.load(Ordering::Relaxed),
            buffers: self.pipelines.buffers_created.load(Ordering::Relaxed),
        }
    }

    /// Creates a buffer, checking the size against the device's limits first.
    pub fn create_buffer(
        &self,
        label: &str,
        size: u64,
        usage: wgpu::BufferUsages,
    ) -> Result<wgpu::Buffer, GpuError> {
        self.check_buffer_size(label, size)?;
        self.pipelines
            .buffers_created
            .fetch_add(1, Ordering::Relaxed);
        // Zero-sized buffers cannot be bound; round up to one word.
        Ok(self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: size.max(4).next_multiple_of(4),
            usage,
            mapped_at_creation: false,
        }))
    }

    /// Creates a buffer holding `contents`.
    pub fn create_buffer_init(
        &self,
        label: &str,
        contents: &[u8],
        usage: wgpu::BufferUsages,
    ) -> Result<wgpu::Buffer, GpuError> {
        self.check_buffer_size(label, contents.len() as u64)?;
        self.pipelines
            .buffers_created
            .fetch_add(1, Ordering::Relaxed);
        if contents.len() < 4 || !contents.len().is_multiple_of(4) {
            let mut padded = contents.to_vec();
            padded.resize(contents.len().max(4).next_multiple_of(4), 0);
            return Ok(self
                .device
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some(label),
                    contents: &padded,
                    usage,
                }));
        }
        Ok(self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents,
                usage,
            }))
    }

    fn check_buffer_size(&self, label: &str, size: u64) -> Result<(), GpuError> {
        let limit = self.max_binding_bytes();
        if size > limit {
            return Err(GpuError::BufferTooLarge {
                what: label.to_string(),
                bytes: size,
                limit,
            });
        }
        Ok(())
    }

    /// Returns the pipeline for `kernel`, compiling its module and pipeline on first use.
    pub fn pipeline(&self, kernel: &Kernel) -> Result<wgpu::ComputePipeline, GpuError> {
        let key = kernel.key();
        if let Some(p) = lock(&self.pipelines.pipelines)?.get(&key) {
            return Ok(p.clone());
        }
        let module = self.module(kernel.shader)?;
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(kernel.entry),
                layout: None,
                module: &module,
                entry_point: Some(kernel.entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &kernel.constants,
                    zero_initialize_workgroup_memory: false,
                },
                cache: self.disk_cache.as_ref().map(|c| &c.cache),
            });
        if let Some(error) = pollster::block_on(scope.pop()) {
            return Err(GpuError::Shader {
                entry: format!("{:?}::{}", kernel.shader, kernel.entry),
                message: error.to_string(),
            });
        }
        self.pipelines
            .pipelines_created
            .fetch_add(1, Ordering::Relaxed);
        lock(&self.pipelines.pipelines)?.insert(key, pipeline.clone());
        Ok(pipeline)
    }

    fn module(&self, shader: Shader) -> Result<wgpu::ShaderModule, GpuError> {
        if let Some(m) = lock(&self.pipelines.modules)?.get(&shader) {
            return Ok(m.clone());
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let descriptor = wgpu::ShaderModuleDescriptor {
            label: Some(&format!("{shader:?}")),
            source: wgpu::ShaderSource::Wgsl(shader.source().into()),
        };
        let module = if shader.checks_own_bounds() {
            let checks = wgpu::ShaderRuntimeChecks::unchecked();
            // SAFETY: the shader clamps every index into the ranges its launcher checks the
            // bound buffers against (see `checks_own_bounds`), and its loops run to bounds
            // read from the uniform parameters, so they end without forced loop bounds.
            unsafe { self.device.create_shader_module_trusted(descriptor, checks) }
        } else {
            self.device.create_shader_module(descriptor)
        };
        if let Some(error) = pollster::block_on(scope.pop()) {
            return Err(GpuError::Shader {
                entry: format!("{shader:?}"),
                message: error.to_string(),
            });
        }
        lock(&self.pipelines.modules)?.insert(shader, module.clone());
        Ok(module)
    }

    /// Builds a dispatch: `params` (if any) becomes a uniform at binding 0 and `bindings`
    /// follow in `@binding` order from 1 (from 0 without params).
    pub fn dispatch<P: bytemuck::Pod>(
        &self,
        kernel: &Kernel,
        params: Option<&P>,
        bindings: &[Binding<'_>],
        workgroups: [u32; 3],
    ) -> Result<Dispatch, GpuError> {
        let first = u32::from(params.is_some());
        let numbered: Vec<(u32, Binding<'_>)> = bindings
            .iter()
            .enumerate()
            .map(|(i, b)| (first + i as u32, *b))
            .collect();
        self.dispatch_at(kernel, params, &numbered, workgroups)
    }

    /// Like [`dispatch`](Self::dispatch) with explicit `@binding` numbers, for shader files
    /// whose entry points use different subsets of the bindings.
    pub fn dispatch_at<P: bytemuck::Pod>(
        &self,
        kernel: &Kernel,
        params: Option<&P>,
        bindings: &[(u32, Binding<'_>)],
        workgroups: [u32; 3],
    ) -> Result<Dispatch, GpuError> {
        let max = self.limits().max_compute_workgroups_per_dimension;
        if workgroups.iter().any(|&w| w > max) {
            return Err(GpuError::GridTooLarge {
                entry: kernel.entry,
                workgroups,
                limit: max,
            });
        }
        let pipeline = self.pipeline(kernel)?;
        let uniform = match params {
            Some(p) => Some(self.create_buffer_init(
                kernel.entry,
                bytemuck::bytes_of(p),
                wgpu::BufferUsages::UNIFORM,
            )?),
            None => None,
        };
        let mut entries = Vec::with_capacity(bindings.len() + 1);
        if let Some(u) = &uniform {
            entries.push(wgpu::BindGroupEntry {
                binding: 0,
                resource: u.as_entire_binding(),
            });
        }
        for (slot, b) in bindings {
            entries.push(wgpu::BindGroupEntry {
                binding: *slot,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: b.buffer,
                    offset: b.offset,
                    size: std::num::NonZeroU64::new(b.size.max(4).next_multiple_of(4)),
                }),
            });
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(kernel.entry),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        if let Some(error) = pollster::block_on(scope.pop()) {
            return Err(GpuError::Shader {
                entry: kernel.entry.to_string(),
                message: error.to_string(),
            });
        }
        Ok(Dispatch {
            label: kernel.label,
            pipeline,
            bind_group,
            workgroups,
        })
    }

    /// Records `dispatches` into one compute pass and submits them, without waiting.
    pub fn submit(&self, dispatches: &[&Dispatch]) -> wgpu::SubmissionIndex {
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("wgnn"),
            });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
            for d in dispatches {
                d.encode(&mut pass);
            }
        }
        self.queue.submit([encoder.finish()])
    }
}

fn lock<T>(m: &Mutex<T>) -> Result<std::sync::MutexGuard<'_, T>, GpuError> {
    m.lock()
        .map_err(|_| GpuError::Device("pipeline cache poisoned".into()))
}
