//! One step on the device: the step uniform, the batch (written through the queue or bound
//! in place), one command buffer, one submit (a data-parallel step: one per segment). Nothing waits for the device except the
//! back-pressure that keeps at most [`MAX_IN_FLIGHT`] submits queued.

use crate::error::Result;
use crate::gpu::Dispatch;
use crate::graph::Mode;
use crate::ops::step::StepParams;

use super::exchange::{Segments, Submitted, submit_segments};
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
    /// A step on one batch from host memory, its targets encoded and scaled as the loss
    /// reads them; every member of a stack takes the same batch.
    pub(super) fn run(&mut self, mode: Mode, rows: usize, x: &[f32], labels: &[u32]) -> Result<()> {
        let (x, labels) = (self.for_every_member(x), self.for_every_member(labels));
        self.run_members(mode, rows, &x, &labels)
    }

    /// A step on each member's batch from host memory (`x` and `labels` member by member).
    pub(super) fn run_members(
        &mut self,
        mode: Mode,
        rows: usize,
        x: &[f32],
        labels: &[u32],
    ) -> Result<()> {
        let target = self.loss.target_encoding().encode(labels);
        let scales = self.member_loss_scales(rows, labels);
        self.run_on(
            mode,
            rows,
            BatchSource::Host { x, target: &target },
            &scales,
        )
    }

    /// Each member's step record for a step of `mode` at `rows` samples: its step, settings,
    /// seed, loss scale, and whether it is frozen — in a training step only: a frozen member
    /// is still evaluated (its totals count an eval step), as a lone model that stopped
    /// training can be.
    fn step_records(&self, mode: Mode, rows: usize, loss_scales: &[f32]) -> Vec<StepParams> {
        self.members
            .iter()
            .zip(loss_scales.iter().chain(std::iter::repeat(&1.0)))
            .map(|(m, &loss_scale)| {
                let mut params = StepParams::at_step(m.step);
                params.rows = rows as u32;
                params.loss_scale = loss_scale;
                params.seed_key = crate::ops::dropout::MaskStream::seed_key(m.config.seed);
                params.frozen = u32::from(m.frozen && mode == Mode::Train);
                m.config.optimizer.fill_step(m.step, &mut params);
                params
            })
            .collect()
    }

    /// Records the step of `mode` at `rows` samples of each member into one command buffer
    /// and submits it (in a data-parallel job, one per segment between the plan's
    /// exchanges). `loss_scales` holds each member's.
    pub(super) fn run_on(
        &mut self,
        mode: Mode,
        rows: usize,
        source: BatchSource<'_>,
        loss_scales: &[f32],
    ) -> Result<()> {
        self.plan(mode, rows)?;
        self.ctx.check_device()?;
        let records = self.step_records(mode, rows, loss_scales);
        // Keep at most MAX_IN_FLIGHT steps queued: the step waits for the oldest (not a
        // readback) once it is encoded, just before it is submitted.
        let oldest = match self.in_flight.len() >= MAX_IN_FLIGHT {
            true => self.in_flight.pop_front(),
            false => None,
        };
        self.step_buffer.write_all(&self.ctx, &records);
        let copy_metrics = self.totals.take_copy_request();
        let plan = &self.plans[&(mode, rows)];
        let metrics = copy_metrics.then_some(&self.totals);
        let comm = self.comm.as_ref();
        let submit = |dispatches: Vec<&Dispatch>| -> Result<Submitted> {
            let segments = Segments {
                exchanges: plan.exchanges(),
                staging: plan.exchange_staging(),
                comm,
                metrics,
                oldest: oldest.clone(),
            };
            submit_segments(&self.ctx, &dispatches, segments)
        };
        let done = match source {
            BatchSource::Host { x, target } => {
                let queue = &self.ctx.queue;
                queue.write_buffer(&plan.input, 0, bytemuck::cast_slice(x));
                queue.write_buffer(&plan.target, 0, target);
                submit(plan.ordered(None))?
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
                |dispatches| submit(plan.ordered(Some(dispatches))),
            )?,
        };
        self.in_flight.push_back(done.index);
        let counters = &mut self.counters;
        counters.submits += done.submits;
        counters.exchanges += done.exchanges;
        counters.exchange_wait_nanos += done.wait_nanos;
        counters.exchange_host_nanos += done.host_nanos;
        counters.collective_nanos += done.collective_nanos;
        if copy_metrics {
            self.totals.map_copy();
        }
        Ok(())
    }
}
