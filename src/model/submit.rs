//! One step on the device: the step uniform, the batch (written through the queue or bound
//! in place), one command buffer, one submit. Nothing waits for the device except the
//! back-pressure that keeps at most [`MAX_IN_FLIGHT`] submits queued.

use crate::error::Result;
use crate::gpu::GpuError;
use crate::graph::Mode;
use crate::ops::step::StepParams;

use super::{DeviceBatch, Model};

/// Submissions allowed in flight before a step waits for the oldest: keeps the host from
/// queueing unbounded work (and staging memory) ahead of the device.
const MAX_IN_FLIGHT: usize = 3;

/// Where a step's batch comes from.
pub(super) enum BatchSource<'a> {
    /// Written through the queue from host memory.
    Host { x: &'a [f32], target: &'a [u8] },
    /// Read in place from a resident batch.
    Device(&'a DeviceBatch),
}

impl Model {
    /// A step on a batch from host memory, its targets encoded and scaled as the loss reads
    /// them.
    pub(super) fn run(&mut self, mode: Mode, rows: usize, x: &[f32], labels: &[u32]) -> Result<()> {
        let target = self.loss.target_encoding().encode(labels);
        let loss_scale = self.loss.loss_scale(labels);
        self.run_on(
            mode,
            rows,
            BatchSource::Host { x, target: &target },
            loss_scale,
        )
    }

    /// Records the step of `mode` at `rows` samples into one command buffer and submits it.
    pub(super) fn run_on(
        &mut self,
        mode: Mode,
        rows: usize,
        source: BatchSource<'_>,
        loss_scale: f32,
    ) -> Result<()> {
        self.plan(mode, rows)?;
        self.ctx.check_device()?;
        let mut params = StepParams::at_step(self.step);
        params.rows = rows as u32;
        params.loss_scale = loss_scale;
        self.optimizer.fill_step(self.step, &mut params);
        let plan = &self.plans[&(mode, rows)];
        let queue = &self.ctx.queue;
        let mut encoder = self
            .ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("step"),
            });
        self.step_buffer.write(&self.ctx, &params);
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("step"),
                timestamp_writes: None,
            });
            match source {
                BatchSource::Host { x, target } => {
                    queue.write_buffer(&plan.input, 0, bytemuck::cast_slice(x));
                    queue.write_buffer(&plan.target, 0, target);
                    plan.encode(&mut pass);
                }
                BatchSource::Device(batch) => batch.encode_bound(
                    self.id,
                    mode,
                    || {
                        let graph = &self.graphs[&rows];
                        let shared = self.shared();
                        let (x, target) = batch.buffers();
                        Ok(plan.bind_batch(&self.ctx, graph, &shared, x, target)?)
                    },
                    |dispatches| plan.encode_with(&mut pass, dispatches),
                )?,
            }
        }
        let copy_metrics = self.totals.encode_requested_copy(&mut encoder);
        // Keep at most MAX_IN_FLIGHT steps queued: wait for the oldest (not a readback).
        if self.in_flight.len() >= MAX_IN_FLIGHT
            && let Some(oldest) = self.in_flight.pop_front()
        {
            self.ctx
                .device
                .poll(wgpu::PollType::Wait {
                    submission_index: Some(oldest),
                    timeout: None,
                })
                .map_err(|e| GpuError::Device(e.to_string()))?;
        }
        let index = queue.submit([encoder.finish()]);
        self.in_flight.push_back(index);
        self.counters.submits += 1;
        if copy_metrics {
            self.totals.map_copy();
        }
        Ok(())
    }
}
