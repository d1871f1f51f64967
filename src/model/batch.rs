//! A batch kept on the device, stepped on many times without another upload, and the
//! dispatches each (model, mode) rebuilt to read it in place.

use std::sync::{Mutex, PoisonError};

use crate::error::Result;
use crate::exec::gpu::BatchDispatches;
use crate::gpu::TENSOR_USAGE;
use crate::graph::Mode;
use crate::nn::TargetEncoding;

use super::Model;

/// A batch kept on the device ([`Model::upload_batch`]). Steps read it where it is: on its
/// first step in a mode, the model rebuilds the dispatches that read the batch on its
/// buffers and keeps them here.
pub struct DeviceBatch {
    x: wgpu::Buffer,
    target: wgpu::Buffer,
    pub(super) rows: usize,
    pub(super) features: usize,
    /// The labels, kept to check and scale the batch for a model other than its uploader.
    pub(super) labels: Vec<u32>,
    /// How `target` encodes the labels, and the uploader's loss scale.
    pub(super) encoding: TargetEncoding,
    pub(super) loss_scale: f32,
    /// The model that uploaded it.
    pub(super) uploader: u64,
    /// (model id, mode) → that plan's dispatches on this batch's buffers.
    bound: Mutex<Vec<(u64, Mode, BatchDispatches)>>,
}

impl DeviceBatch {
    pub fn rows(&self) -> usize {
        self.rows
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
    /// resident on the device, as in the benchmarks).
    pub fn upload_batch(&self, x: &[f32], labels: &[u32]) -> Result<DeviceBatch> {
        let rows = self.check_batch(x, labels)?;
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
            features: self.features(),
            labels: labels.to_vec(),
            encoding,
            loss_scale: self.loss.loss_scale(labels),
            uploader: self.id,
            bound: Mutex::new(Vec::new()),
        })
    }
}
