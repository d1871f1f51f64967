//! Loss functions, as torch.nn's criteria.

use crate::ops::bce::BceConfig;
use crate::ops::softmax_xent::CrossEntropyConfig;

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
