//! A batch kept on the device, stepped on many times without another upload, and the
//! dispatches each (model, mode) rebuilt to read it in place. A stack's batch holds every
//! member's rows, member by member, as [`Model::train_step_members`] takes them.

use std::sync::{Mutex, PoisonError};

use crate::error::Result;
use crate::exec::gpu::BatchDispatches;
use crate::gpu::TENSOR_USAGE;
use crate::graph::Mode;
use crate::nn::TargetEncoding;

use super::Model;

/// A batch kept on the device ([`Model::upload_batch`], [`Model::upload_member_batches`]).
/// Steps read it where it is: on its first step in a mode, the model rebuilds the dispatches
/// that read the batch on its buffers and keeps them here.
pub struct DeviceBatch {
    x: wgpu::Buffer,
    target: wgpu::Buffer,
    /// Rows of each member's batch.
    pub(super) rows: usize,
    /// Members it holds a batch for (1 for a lone model's).
    pub(super) members: usize,
    pub(super) features: usize,
    /// Every member's labels, member by member, kept to check and scale the batch for a
    /// model other than its uploader.
    pub(super) labels: Vec<u32>,
    /// How `target` encodes the labels, and each member's loss scale under the uploader's
    /// loss.
    pub(super) encoding: TargetEncoding,
    pub(super) loss_scales: Vec<f32>,
    /// The model that uploaded it.
    pub(super) uploader: u64,
    /// (model id, mode) → that plan's dispatches on this batch's buffers.
    bound: Mutex<Vec<(u64, Mode, BatchDispatches)>>,
}

impl DeviceBatch {
    /// Rows of each member's batch.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Members it holds a batch for: a stack steps only on a batch of as many.
    pub fn members(&self) -> usize {
        self.members
    }

    /// The samples and the encoded targets.
    pub(super) fn buffers(&self) -> (&wgpu::Buffer, &wgpu::Buffer) {
        (&self.x, &self.target)
    }

    /// Hands `encode` the dispatches of `model`'s plan in `mode` on this batch, made by
    /// `build` on first use.
    pub(super) fn encode_bound<T>(
        &self,
        model: u64,
        mode: Mode,
        build: impl FnOnce() -> Result<BatchDispatches>,
        encode: impl FnOnce(&BatchDispatches) -> Result<T>,
    ) -> Result<T> {
        // An entry is pushed only once it is complete, so a panic elsewhere while the lock
        // was held leaves the cache consistent: take it back rather than fail.
        let mut bound = self.bound.lock().unwrap_or_else(PoisonError::into_inner);
        let known = bound
            .iter()
            .position(|(id, m, _)| *id == model && *m == mode);
        let at = match known {
            Some(at) => at,
            None => {
                bound.push((model, mode, build()?));
                bound.len() - 1
            }
        };
        encode(&bound[at].2)
    }
}

impl Model {
    /// Uploads a batch once, to be stepped on many times without another upload (data
    /// resident on the device, as in the benchmarks). In a stack every member reads this same
    /// batch, as in [`Model::train_step`]; the device holds a copy per member.
    pub fn upload_batch(&self, x: &[f32], labels: &[u32]) -> Result<DeviceBatch> {
        if self.members() > 1 {
            // Named as one batch, not as a stack's.
            self.check_batch(x, labels)?;
        }
        self.upload_member_batches(&self.for_every_member(x), &self.for_every_member(labels))
    }

    /// Uploads each member's batch once (`x` and `labels` member by member, as
    /// [`Model::train_step_members`] takes them), to be stepped on many times without
    /// another upload.
    pub fn upload_member_batches(&self, x: &[f32], labels: &[u32]) -> Result<DeviceBatch> {
        let rows = self.check_member_batch(x, labels)?;
        let encoding = self.loss.target_encoding();
        let target = encoding.encode(labels);
        Ok(DeviceBatch {
            x: self.ctx.create_buffer_init(
                "resident batch",
                bytemuck::cast_slice(x),
                TENSOR_USAGE,
            )?,
            target: self
                .ctx
                .create_buffer_init("resident targets", &target, TENSOR_USAGE)?,
            rows,
            members: self.members(),
            features: self.features(),
            labels: labels.to_vec(),
            encoding,
            loss_scales: self.member_loss_scales(rows, labels),
            uploader: self.id,
            bound: Mutex::new(Vec::new()),
        })
    }

    /// Each member's loss scale for its `rows` labels of `labels` (member by member).
    pub(super) fn member_loss_scales(&self, rows: usize, labels: &[u32]) -> Vec<f32> {
        labels
            .chunks(rows.max(1))
            .map(|l| self.loss.loss_scale(l))
            .collect()
    }
}
