//! Checks made before a step sends anything: the model's mode, the batch's length, every
//! label against the loss's range, batch norm's "more than one sample", and a resident
//! batch against the model's member count and a model other than its uploader. Each failure
//! is a typed error.

use crate::error::{Error, Result};
use crate::graph::Mode;
use crate::nn::spec::MAX_LAYERS;
use crate::nn::{Layer, Sequential, TargetEncoding};
use crate::ops::batchnorm::check_train_batch;

use super::{DeviceBatch, Model};

/// A batch that does not fit the model (printed after "batch: ").
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum BatchError {
    #[error("the batch is empty")]
    Empty,
    /// `rows` labels and `rows × features` values expected, `values` given.
    #[error("{rows} labels need {} values ({rows} × {features}), got {values}", rows * features)]
    Length {
        rows: usize,
        features: usize,
        values: usize,
    },
    /// Unlabelled samples (predict) whose values do not divide into samples.
    #[error("{values} values do not make whole samples of {features} features")]
    PartialSample { values: usize, features: usize },
    /// A stack's step takes one batch of equal rows per member.
    #[error("{labels} labels do not split into equal batches for {members} members")]
    MemberBatches { labels: usize, members: usize },
    /// A label outside `0..classes` (`classes` is 2 for BCE's 0/1).
    #[error("target {label} at index {index} is out of bounds for {classes} classes")]
    LabelOutOfRange {
        index: usize,
        label: u32,
        classes: usize,
    },
    #[error(
        "a training batch of {rows} sample cannot be batch-normalized (PyTorch: \
         \"Expected more than 1 value per channel when training\"); drop it (drop_last) or \
         use another batch size"
    )]
    SingleSampleBatchNorm { rows: usize },
    /// A resident batch uploaded by a model with another sample size.
    #[error("the resident batch holds {batch} features per sample; this model takes {model}")]
    ResidentFeatures { batch: usize, model: usize },
    /// A resident batch uploaded for a stack of another member count.
    #[error(
        "the resident batch holds batches for {batch} member(s), but this model has {model}: \
         upload it from a model of as many members"
    )]
    ResidentMembers { batch: usize, model: usize },
    /// A resident batch whose targets another loss encoded.
    #[error("the resident batch holds {batch}; this model's loss reads {model}")]
    ResidentTargets {
        batch: TargetEncoding,
        model: TargetEncoding,
    },
    /// A batch size whose buffers exceed one storage binding; `largest` fits.
    #[error(
        "a batch of {batch_size} samples needs {bytes} bytes for {what}, over the device's \
         max_storage_buffer_binding_size of {limit} bytes; the largest batch that fits is {largest}"
    )]
    TooLarge {
        batch_size: usize,
        what: String,
        bytes: u64,
        limit: u64,
        largest: u64,
    },
}

/// A model of at most [`MAX_LAYERS`] layers, checked before its graph is built (each layer
/// costs every plan a few bind groups, which no adapter limit bounds).
pub(super) fn check_layer_count(sequential: &Sequential) -> Result<()> {
    let layers = sequential.layers().len();
    if layers > MAX_LAYERS {
        return Err(Error::TooManyLayers {
            layers,
            limit: MAX_LAYERS,
        });
    }
    Ok(())
}

impl Model {
    /// Fails unless the model is in `mode` (what `op` needs).
    pub(super) fn require_mode(&self, mode: Mode, op: &'static str) -> Result<()> {
        if self.mode == mode {
            Ok(())
        } else {
            Err(Error::WrongMode { op, needs: mode })
        }
    }

    /// The rows of a labelled batch, once its length and labels are checked.
    pub(super) fn check_batch(&self, x: &[f32], labels: &[u32]) -> Result<usize> {
        let features = self.features();
        let rows = labels.len();
        if rows == 0 {
            return Err(BatchError::Empty.into());
        }
        if x.len() != rows * features {
            return Err(BatchError::Length {
                rows,
                features,
                values: x.len(),
            }
            .into());
        }
        self.check_labels(labels)?;
        Ok(rows)
    }

    /// The rows of each member's batch in a stack's step: `labels` holds every member's
    /// labels (the same number each), `x` their samples, member by member.
    pub(super) fn check_member_batch(&self, x: &[f32], labels: &[u32]) -> Result<usize> {
        let members = self.members();
        if !labels.len().is_multiple_of(members) {
            return Err(BatchError::MemberBatches {
                labels: labels.len(),
                members,
            }
            .into());
        }
        self.check_batch(x, labels)?;
        Ok(labels.len() / members)
    }

    /// The rows of an unlabelled batch (whole, non-empty samples).
    pub(super) fn check_samples(&self, x: &[f32]) -> Result<usize> {
        let features = self.features();
        if x.is_empty() || !x.len().is_multiple_of(features) {
            return Err(BatchError::PartialSample {
                values: x.len(),
                features,
            }
            .into());
        }
        Ok(x.len() / features)
    }

    /// Every label within the loss's range: a class index, or 0/1 for BCE.
    fn check_labels(&self, labels: &[u32]) -> Result<()> {
        let classes = self.loss.label_count(self.graph().classes());
        match labels.iter().position(|&l| l as usize >= classes) {
            Some(index) => Err(BatchError::LabelOutOfRange {
                index,
                label: labels[index],
                classes,
            }
            .into()),
            None => Ok(()),
        }
    }

    /// A training batch of one sample cannot be batch-normalized (as in PyTorch). With
    /// SyncBatchNorm the batch normalized is every rank's together, so only a global batch of
    /// one is refused, as `torch.nn.SyncBatchNorm` refuses it.
    pub(super) fn check_batch_norm_rows(&self, rows: usize) -> Result<()> {
        let has_bn = || {
            self.sequential
                .layers()
                .iter()
                .any(|l| matches!(l, Layer::BatchNorm1d(_)))
        };
        let normalized = if self.sync_bn {
            rows.saturating_mul(self.comm.size())
        } else {
            rows
        };
        if check_train_batch(&[normalized, 1]).is_err() && has_bn() {
            return Err(BatchError::SingleSampleBatchNorm { rows: normalized }.into());
        }
        Ok(())
    }

    /// Each member's loss scale for a resident batch, after checking that the batch holds a
    /// batch for each member and, when another model uploaded it, that it suits this one
    /// (features, target encoding, label range).
    pub(super) fn resident_loss_scales(&self, batch: &DeviceBatch) -> Result<Vec<f32>> {
        if batch.members != self.members() {
            return Err(BatchError::ResidentMembers {
                batch: batch.members,
                model: self.members(),
            }
            .into());
        }
        if batch.uploader == self.id {
            return Ok(batch.loss_scales.clone());
        }
        if batch.features != self.features() {
            return Err(BatchError::ResidentFeatures {
                batch: batch.features,
                model: self.features(),
            }
            .into());
        }
        let encoding = self.loss.target_encoding();
        if batch.encoding != encoding {
            return Err(BatchError::ResidentTargets {
                batch: batch.encoding,
                model: encoding,
            }
            .into());
        }
        self.check_labels(&batch.labels)?;
        Ok(self.member_loss_scales(batch.rows, &batch.labels))
    }
}
