//! Loss and accuracy totals, accumulated on the device by the metrics kernel, and the ways
//! they come back: a blocking read (once per epoch), or an asynchronous one that rides in a
//! step's command buffer.
//!
//! The asynchronous read is a small state machine:
//! idle → [`Model::request_metrics`] → copy requested → the next step copies the totals
//! into the staging buffer and maps it after its submit → mapping → [`Model::poll_metrics`]
//! sees the map callback's flag, reads and unmaps → idle.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::Result;
use crate::gpu::{Binding, GpuContext, GpuError, TENSOR_USAGE};
use crate::ops::reduce::{RawTotals, TOTALS_LEN, Totals};

use super::Model;

/// Bytes of the totals buffer.
const TOTALS_BYTES: u64 = (TOTALS_LEN * 4) as u64;

/// The totals buffer the plans write and the staging buffer it is read back through.
pub(super) struct MetricTotals {
    buffer: wgpu::Buffer,
    staging: wgpu::Buffer,
    /// The next submit copies the totals into `staging`.
    copy_requested: bool,
    /// Set by the map callback.
    mapped: Arc<AtomicBool>,
    /// `staging` is being mapped (or is mapped and not read yet).
    mapping: bool,
}

impl MetricTotals {
    pub(super) fn new(ctx: &GpuContext) -> Result<Self> {
        Ok(Self {
            buffer: ctx.create_buffer("metric totals", TOTALS_BYTES, TENSOR_USAGE)?,
            staging: ctx.create_buffer(
                "metric readback",
                TOTALS_BYTES,
                wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            )?,
            copy_requested: false,
            mapped: Arc::new(AtomicBool::new(false)),
            mapping: false,
        })
    }

    /// The totals as the plans bind them.
    pub(super) fn binding(&self) -> Binding<'_> {
        Binding::whole(&self.buffer)
    }

    /// Bytes of both buffers.
    pub(super) fn bytes(&self) -> u64 {
        self.buffer.size() + self.staging.size()
    }

    /// Whether a copy was requested, clearing the request: the step that takes it records
    /// [`MetricTotals::encode_copy`] and then maps it with [`MetricTotals::map_copy`].
    pub(super) fn take_copy_request(&mut self) -> bool {
        std::mem::take(&mut self.copy_requested)
    }

    /// Records the copy of the totals into the staging buffer.
    pub(super) fn encode_copy(&self, encoder: &mut wgpu::CommandEncoder) {
        encoder.copy_buffer_to_buffer(&self.buffer, 0, &self.staging, 0, TOTALS_BYTES);
    }

    /// Starts mapping the staging buffer after the submit that copies into it.
    pub(super) fn map_copy(&mut self) {
        let flag = Arc::clone(&self.mapped);
        self.mapping = true;
        self.staging
            .map_async(wgpu::MapMode::Read, .., move |result| {
                flag.store(result.is_ok(), Ordering::Release);
            });
    }
}

impl Model {
    /// Zeroes the loss and accuracy totals (e.g. at the start of an epoch).
    pub fn reset_metrics(&mut self) {
        self.set_raw_totals(&[0.0; TOTALS_LEN]);
    }

    /// Reads the totals now (blocking).
    pub fn read_metrics(&mut self) -> Result<Totals> {
        Ok(Totals::from_raw(&self.raw_totals()?))
    }

    /// The totals buffer's words now (blocking): what a checkpoint within an epoch keeps so
    /// that the resumed epoch reports what an uninterrupted one would. In a data-parallel
    /// job, the totals of every rank combined (a collective: every rank calls it).
    pub fn raw_totals(&mut self) -> Result<RawTotals> {
        let mine = self.local_raw_totals()?;
        self.reduce_totals(&mine)
    }

    /// This rank's own totals (blocking).
    fn local_raw_totals(&mut self) -> Result<RawTotals> {
        let raw = crate::gpu::read_buffer(&self.ctx, &self.totals.buffer, 0, TOTALS_BYTES)?;
        self.counters.blocking_readbacks += 1;
        self.in_flight.clear();
        let mut words = [0.0; TOTALS_LEN];
        for (word, value) in words.iter_mut().zip(raw) {
            *word = value;
        }
        Ok(words)
    }

    /// Puts back totals read by [`Model::raw_totals`] (lands before the next step). In a
    /// data-parallel job rank 0 holds them and the other ranks start from zero, so that the
    /// job's totals are `raw`.
    pub fn set_raw_totals(&mut self, raw: &RawTotals) {
        let raw = if self.comm.rank() == 0 {
            *raw
        } else {
            [0.0; TOTALS_LEN]
        };
        self.ctx
            .queue
            .write_buffer(&self.totals.buffer, 0, bytemuck::cast_slice(&raw));
    }

    /// Asks for the totals as of the next step, without waiting: the copy rides in that
    /// step's command buffer. Collect them with [`Model::poll_metrics`].
    pub fn request_metrics(&mut self) {
        if !self.totals.mapping {
            self.totals.copy_requested = true;
        }
    }

    /// The totals asked for by [`Model::request_metrics`], once the device has them: this
    /// rank's own, in a data-parallel job (for progress; [`Model::read_metrics`] reduces).
    pub fn poll_metrics(&mut self) -> Result<Option<Totals>> {
        let totals = &mut self.totals;
        if !totals.mapping {
            return Ok(None);
        }
        self.ctx
            .device
            .poll(wgpu::PollType::Poll)
            .map_err(|e| GpuError::Device(e.to_string()))?;
        if !totals.mapped.load(Ordering::Acquire) {
            return Ok(None);
        }
        let raw: Vec<f32> = {
            let view = totals
                .staging
                .get_mapped_range(..)
                .map_err(|e| GpuError::Map(e.to_string()))?;
            bytemuck::pod_collect_to_vec(&view)
        };
        totals.staging.unmap();
        totals.mapping = false;
        totals.mapped.store(false, Ordering::Release);
        Ok(Some(Totals::from_raw(&raw)))
    }
}
