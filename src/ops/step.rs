//! The per-step uniform: values the host writes once per training step, before its submit.

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
    }
}

impl StepParams {
    /// Parameters for training step `step` (0-based) with everything else zero.
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

/// A uniform buffer holding [`StepParams`], shared by every dispatch of a plan.
pub struct StepBuffer {
    buffer: wgpu::Buffer,
}

impl StepBuffer {
    pub fn new(ctx: &GpuContext) -> Result<Self, GpuError> {
        let buffer = ctx.create_buffer(
            "step",
            std::mem::size_of::<StepParams>() as u64,
            wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        )?;
        Ok(Self { buffer })
    }

    /// Queues the write; it lands before the next submit's work.
    pub fn write(&self, ctx: &GpuContext, params: &StepParams) {
        ctx.queue
            .write_buffer(&self.buffer, 0, bytemuck::bytes_of(params));
    }

    pub fn binding(&self) -> Binding<'_> {
        Binding::whole(&self.buffer)
    }
}
