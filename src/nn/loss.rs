//! Loss functions, as torch.nn's criteria.

use std::sync::Arc;

use crate::graph::{Lowering, Op};
use crate::ops::bce::{self, BceConfig, BceWithLogits, BceWithLogitsOp};
use crate::ops::softmax_xent::{self, CrossEntropy, CrossEntropyConfig, CrossEntropyOp, Reduction};

/// `torch.nn.CrossEntropyLoss`: softmax + negative log-likelihood over class logits.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CrossEntropyLoss {
    /// Its options, each at PyTorch's default unless set ([`CrossEntropyConfig`]).
    pub config: CrossEntropyConfig,
}

impl CrossEntropyLoss {
    /// `nn.CrossEntropyLoss()`: no class weights, `ignore_index` −100, no label smoothing,
    /// the mean over the batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// `label_smoothing=ε` in [0, 1] (default 0).
    pub fn label_smoothing(mut self, epsilon: f32) -> Self {
        self.config.label_smoothing = epsilon;
        self
    }

    /// `weight=…`: one weight per class (default none: every class weighs 1).
    pub fn weight(mut self, weight: Vec<f32>) -> Self {
        self.config.weight = Some(weight);
        self
    }

    /// `ignore_index=…`: targets equal to it contribute nothing (default −100).
    pub fn ignore_index(mut self, index: i64) -> Self {
        self.config.ignore_index = index;
        self
    }
}

/// `torch.nn.BCEWithLogitsLoss`: the binary case, one logit per sample.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BCEWithLogitsLoss {
    /// Its options, each at PyTorch's default unless set ([`BceConfig`]).
    pub config: BceConfig,
}

impl BCEWithLogitsLoss {
    /// `nn.BCEWithLogitsLoss()`: `pos_weight` 1, the mean over the batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// `pos_weight=…`: the weight of the positive class's term (default 1).
    pub fn pos_weight(mut self, pos_weight: f32) -> Self {
        self.config.pos_weight = pos_weight;
        self
    }
}

/// A training criterion.
#[derive(Clone, Debug, PartialEq)]
pub enum Loss {
    CrossEntropy(CrossEntropyLoss),
    BceWithLogits(BCEWithLogitsLoss),
}

impl Loss {
    /// The graph's loss node for a model with `classes` outputs, once the loss's options are
    /// checked against them (the message says what does not fit). Class weights become a
    /// constant of the graph `b` lowers, resident with the model's state.
    pub(crate) fn op(&self, classes: usize, b: &mut Lowering) -> Result<Arc<dyn Op>, String> {
        match self {
            Loss::CrossEntropy(ce) => {
                if let Some(w) = &ce.config.weight
                    && w.len() != classes
                {
                    return Err(format!(
                        "CrossEntropyLoss has {} class weights but the model outputs {classes} classes",
                        w.len()
                    ));
                }
                if !(0.0..=1.0).contains(&ce.config.label_smoothing) {
                    return Err(format!(
                        "label_smoothing must be in [0, 1], got {}",
                        ce.config.label_smoothing
                    ));
                }
                let weight = ce
                    .config
                    .weight
                    .clone()
                    .map(|w| b.constant("cross_entropy.weight", w));
                Ok(Arc::new(CrossEntropyOp::new(CrossEntropy {
                    config: ce.config.clone(),
                    weight,
                })))
            }
            Loss::BceWithLogits(bce) => {
                if classes != 1 {
                    return Err(format!(
                        "BCEWithLogitsLoss needs one output per sample, but the model outputs {classes} \
                         (end the model with a Linear(…, 1))"
                    ));
                }
                if !(bce.config.pos_weight >= 0.0) {
                    return Err(format!(
                        "pos_weight must be non-negative, got {}",
                        bce.config.pos_weight
                    ));
                }
                Ok(Arc::new(BceWithLogitsOp::new(BceWithLogits {
                    config: bce.config,
                })))
            }
        }
    }
}

/// How a loss reads its targets from the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetEncoding {
    /// i32 class indices (cross-entropy).
    Classes,
    /// f32 0/1 (BCE with logits).
    Binary,
}

impl TargetEncoding {
    /// The target buffer's bytes for these labels: i32 class indices or f32 0/1.
    pub fn encode(self, labels: &[u32]) -> Vec<u8> {
        match self {
            TargetEncoding::Classes => {
                let t: Vec<i32> = labels.iter().map(|&l| l as i32).collect();
                bytemuck::cast_slice(&t).to_vec()
            }
            TargetEncoding::Binary => {
                let t: Vec<f32> = labels.iter().map(|&l| l as f32).collect();
                bytemuck::cast_slice(&t).to_vec()
            }
        }
    }
}

impl std::fmt::Display for TargetEncoding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TargetEncoding::Classes => "class indices (cross-entropy)",
            TargetEncoding::Binary => "0/1 targets (BCE with logits)",
        })
    }
}

/// What a model asks of its loss: how targets are encoded, which labels are valid, how a
/// batch's rows are scaled, and whether there is a scalar to train on.
impl Loss {
    /// How the reduction folds the rows: mean, sum or none.
    pub fn reduction(&self) -> Reduction {
        match self {
            Loss::CrossEntropy(ce) => ce.config.reduction,
            Loss::BceWithLogits(b) => b.config.reduction,
        }
    }

    /// How the loss kernel reads the targets.
    pub fn target_encoding(&self) -> TargetEncoding {
        match self {
            Loss::CrossEntropy(_) => TargetEncoding::Classes,
            Loss::BceWithLogits(_) => TargetEncoding::Binary,
        }
    }

    /// How many labels a model with `outputs` logits takes (labels run from 0 to this − 1):
    /// one per logit for cross-entropy, 0 and 1 for BCE's single logit.
    pub fn label_count(&self, outputs: usize) -> usize {
        match self {
            Loss::CrossEntropy(_) => outputs,
            Loss::BceWithLogits(_) => 2,
        }
    }

    /// The per-row scale of a batch with these labels: 1/Σ weights of the targets for a
    /// mean (so the host, which holds the labels, computes it), 1 for a sum.
    pub fn loss_scale(&self, labels: &[u32]) -> f32 {
        match self {
            Loss::CrossEntropy(ce) => {
                let targets: Vec<i64> = labels.iter().map(|&l| i64::from(l)).collect();
                softmax_xent::loss_scale(&targets, &ce.config)
            }
            Loss::BceWithLogits(b) => bce::loss_scale(labels.len(), b.config.reduction),
        }
    }
}

impl Default for Loss {
    fn default() -> Self {
        Loss::CrossEntropy(CrossEntropyLoss::default())
    }
}

impl From<CrossEntropyLoss> for Loss {
    fn from(loss: CrossEntropyLoss) -> Self {
        Loss::CrossEntropy(loss)
    }
}

impl From<BCEWithLogitsLoss> for Loss {
    fn from(loss: BCEWithLogitsLoss) -> Self {
        Loss::BceWithLogits(loss)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_loss_encodes_and_bounds_its_targets() {
        let ce = Loss::from(CrossEntropyLoss::new());
        let bce = Loss::from(BCEWithLogitsLoss::new());
        assert_eq!(ce.target_encoding(), TargetEncoding::Classes);
        assert_eq!(bce.target_encoding(), TargetEncoding::Binary);
        let labels = [0u32, 2, 1];
        let classes: Vec<i32> = bytemuck::pod_collect_to_vec(&ce.target_encoding().encode(&labels));
        assert_eq!(classes, [0, 2, 1]);
        let binary: Vec<f32> = bytemuck::pod_collect_to_vec(&bce.target_encoding().encode(&[1, 0]));
        assert_eq!(binary, [1.0, 0.0]);
        assert_eq!(ce.label_count(10), 10);
        assert_eq!(bce.label_count(1), 2);
    }

    #[test]
    fn loss_scale_follows_the_reduction_and_class_weights() {
        let weighted = Loss::from(CrossEntropyLoss::new().weight(vec![1.0, 3.0]));
        // Mean over weights of the targets: 1 / (1 + 3 + 3).
        assert_eq!(weighted.loss_scale(&[0, 1, 1]), (1.0f64 / 7.0) as f32);
        let mut sum = CrossEntropyLoss::new();
        sum.config.reduction = Reduction::Sum;
        let sum = Loss::from(sum);
        assert_eq!(sum.reduction(), Reduction::Sum);
        assert_eq!(sum.loss_scale(&[0, 1, 1]), 1.0);
        let bce = Loss::from(BCEWithLogitsLoss::new());
        assert_eq!(bce.reduction(), Reduction::Mean);
        assert_eq!(bce.loss_scale(&[0, 1, 1, 0]), 0.25);
    }
}
