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

    /// Records the copy into the staging buffer if one was requested; true if it did (the
    /// caller then maps it with [`MetricTotals::map_copy`] once the step is submitted).
    pub(super) fn encode_requested_copy(&mut self, encoder: &mut wgpu::CommandEncoder) -> bool {
        let copy = std::mem::take(&mut self.copy_requested);
        if copy {
            encoder.copy_buffer_to_buffer(&self.buffer, 0, &self.staging, 0, TOTALS_BYTES);
        }
        copy
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
    /// that the resumed epoch reports what an uninterrupted one would.
    pub fn raw_totals(&mut self) -> Result<RawTotals> {
        let raw = crate::gpu::read_buffer(&self.ctx, &self.totals.buffer, 0, TOTALS_BYTES)?;
        self.counters.blocking_readbacks += 1;
        self.in_flight.clear();
        let mut words = [0.0; TOTALS_LEN];
        for (word, value) in words.iter_mut().zip(raw) {
            *word = value;
        }
        Ok(words)
    }

    /// Puts back totals read by [`Model::raw_totals`] (lands before the next step).
    pub fn set_raw_totals(&mut self, raw: &RawTotals) {
        self.ctx
            .queue
            .write_buffer(&self.totals.buffer, 0, bytemuck::cast_slice(raw));
    }

    /// Asks for the totals as of the next step, without waiting: the copy rides in that
    /// step's command buffer. Collect them with [`Model::poll_metrics`].
    pub fn request_metrics(&mut self) {
        if !self.totals.mapping {
            self.totals.copy_requested = true;
        }
    }

    /// The totals asked for by [`Model::request_metrics`], once the device has them.
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
