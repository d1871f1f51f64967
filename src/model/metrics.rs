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

/// Bytes of one member's totals.
const TOTALS_BYTES: u64 = (TOTALS_LEN * 4) as u64;

/// The totals buffer the plans write (one part per member) and the staging buffer it is
/// read back through.
pub(super) struct MetricTotals {
    buffer: wgpu::Buffer,
    members: usize,
    staging: wgpu::Buffer,
    /// The next submit copies the totals into `staging`.
    copy_requested: bool,
    /// Set by the map callback.
    mapped: Arc<AtomicBool>,
    /// `staging` is being mapped (or is mapped and not read yet).
    mapping: bool,
}

impl MetricTotals {
    pub(super) fn new(ctx: &GpuContext, members: usize) -> Result<Self> {
        let bytes = TOTALS_BYTES * members.max(1) as u64;
        Ok(Self {
            buffer: ctx.create_buffer("metric totals", bytes, TENSOR_USAGE)?,
            members: members.max(1),
            staging: ctx.create_buffer(
                "metric readback",
                bytes,
                wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            )?,
            copy_requested: false,
            mapped: Arc::new(AtomicBool::new(false)),
            mapping: false,
        })
    }

    /// The totals as the plans bind them, a part per member.
    pub(super) fn binding(&self) -> Binding<'_> {
        Binding::whole(&self.buffer).split_members(self.members as u32)
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
        encoder.copy_buffer_to_buffer(&self.buffer, 0, &self.staging, 0, self.buffer.size());
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
    /// Zeroes the loss and accuracy totals (e.g. at the start of an epoch), every member's.
    pub fn reset_metrics(&mut self) {
        let zeros = vec![[0.0; TOTALS_LEN]; self.members()];
        self.write_all_totals(&zeros);
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

    /// This rank's own totals (blocking): member 0's.
    fn local_raw_totals(&mut self) -> Result<RawTotals> {
        Ok(self.read_all_totals()?[0])
    }

    /// Every member's totals (blocking).
    pub(super) fn read_all_totals(&mut self) -> Result<Vec<RawTotals>> {
        let buffer = &self.totals.buffer;
        let raw: Vec<f32> = crate::gpu::read_buffer(&self.ctx, buffer, 0, buffer.size())?;
        self.counters.blocking_readbacks += 1;
        self.in_flight.clear();
        Ok(raw.chunks(TOTALS_LEN).map(words).collect())
    }

    /// Overwrites every member's totals (lands before the next step).
    pub(super) fn write_all_totals(&mut self, raw: &[RawTotals]) {
        let flat: Vec<f32> = raw.iter().flatten().copied().collect();
        self.ctx
            .queue
            .write_buffer(&self.totals.buffer, 0, bytemuck::cast_slice(&flat));
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
        // The other members of a stack (if any) keep theirs.
    }

    /// Asks for the totals as of the next step, without waiting: the copy rides in that
    /// step's command buffer. Collect them with [`Model::poll_metrics`].
    pub fn request_metrics(&mut self) {
        if !self.totals.mapping {
            self.totals.copy_requested = true;
        }
    }

    /// The totals asked for by [`Model::request_metrics`], once the device has them: this
    /// rank's own, in a data-parallel job (for progress; [`Model::read_metrics`] reduces);
    /// member 0's, in a stack.
    pub fn poll_metrics(&mut self) -> Result<Option<Totals>> {
        Ok(self.poll_member_metrics()?.map(|all| all[0]))
    }

    /// Every member's totals asked for by [`Model::request_metrics`], once the device has
    /// them.
    pub fn poll_member_metrics(&mut self) -> Result<Option<Vec<Totals>>> {
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
        Ok(Some(raw.chunks(TOTALS_LEN).map(Totals::from_raw).collect()))
    }
}

/// One member's words of the totals buffer.
fn words(raw: &[f32]) -> RawTotals {
    let mut words = [0.0; TOTALS_LEN];
    for (word, &value) in words.iter_mut().zip(raw) {
        *word = value;
    }
    words
}
