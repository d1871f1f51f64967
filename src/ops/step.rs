//! The per-step record: values the host writes once per training step, before its submit,
//! one per member of the plan (a lone model is member 0).

use crate::gpu::uniform_struct;
use crate::gpu::{Binding, GpuContext, GpuError};

uniform_struct! {
    /// Mirrors `Step` in `shaders/step.wgsl`.
    #[derive(Debug, Default, PartialEq)]
    pub struct StepParams {
        pub step_lo: u32,
        pub step_hi: u32,
        pub lr: f32,
        pub adam_step_size: f32,
        pub adam_bias_correction2_sqrt: f32,
        pub sgd_first_step: u32,
        pub loss_scale: f32,
        pub rows: u32,
        pub momentum: f32,
        pub dampening: f32,
        pub weight_decay: f32,
        pub beta1: f32,
        pub beta2: f32,
        pub eps: f32,
        pub frozen: u32,
        pub seed_key: u32,
    }
}

impl StepParams {
    /// Parameters for training step `step` (0-based), everything else zero.
    pub fn at_step(step: u64) -> Self {
        Self {
            step_lo: step as u32,
            step_hi: (step >> 32) as u32,
            ..Self::default()
        }
    }

    pub fn step(&self) -> u64 {
        u64::from(self.step_lo) | (u64::from(self.step_hi) << 32)
    }
}

/// Bytes of one member's record.
const RECORD: u64 = std::mem::size_of::<StepParams>() as u64;

/// A storage buffer holding one [`StepParams`] per member, shared by every dispatch of a
/// plan (kernels read `steps[member]`).
pub struct StepBuffer {
    buffer: wgpu::Buffer,
    members: usize,
}

impl StepBuffer {
    /// The record of a lone model.
    pub fn new(ctx: &GpuContext) -> Result<Self, GpuError> {
        Self::members(ctx, 1)
    }

    /// Records for `members` models.
    pub fn members(ctx: &GpuContext, members: usize) -> Result<Self, GpuError> {
        let buffer = ctx.create_buffer(
            "steps",
            RECORD * members.max(1) as u64,
            wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
        )?;
        Ok(Self {
            buffer,
            members: members.max(1),
        })
    }

    /// Queues the write of member 0's record; it lands before the next submit's work.
    pub fn write(&self, ctx: &GpuContext, params: &StepParams) {
        self.write_all(ctx, std::slice::from_ref(params));
    }

    /// Queues the write of every member's record, in member order.
    pub fn write_all(&self, ctx: &GpuContext, params: &[StepParams]) {
        ctx.queue
            .write_buffer(&self.buffer, 0, bytemuck::cast_slice(params));
    }

    /// Every member's record, one part each.
    pub fn binding(&self) -> Binding<'_> {
        Binding::whole(&self.buffer).split_members(self.members as u32)
    }
}
