//! Loss functions, as torch.nn's criteria.

use std::sync::Arc;

use crate::graph::Op;
use crate::ops::bce::{BceConfig, BceWithLogitsOp};
use crate::ops::softmax_xent::{CrossEntropyConfig, CrossEntropyOp};

/// `torch.nn.CrossEntropyLoss`: softmax + negative log-likelihood over class logits.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CrossEntropyLoss {
    pub config: CrossEntropyConfig,
}

impl CrossEntropyLoss {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn label_smoothing(mut self, epsilon: f32) -> Self {
        self.config.label_smoothing = epsilon;
        self
    }

    pub fn weight(mut self, weight: Vec<f32>) -> Self {
        self.config.weight = Some(weight);
        self
    }

    pub fn ignore_index(mut self, index: i64) -> Self {
        self.config.ignore_index = index;
        self
    }
}

/// `torch.nn.BCEWithLogitsLoss`: the binary case, one logit per sample.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BCEWithLogitsLoss {
    pub config: BceConfig,
}

impl BCEWithLogitsLoss {
    pub fn new() -> Self {
        Self::default()
    }

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
    /// checked against them (the message says what does not fit).
    pub(crate) fn op(&self, classes: usize) -> Result<Arc<dyn Op>, String> {
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
                Ok(Arc::new(CrossEntropyOp {
                    config: ce.config.clone(),
                }))
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
                Ok(Arc::new(BceWithLogitsOp { config: bce.config }))
            }
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
