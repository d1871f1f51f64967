//! BatchNorm1d over x: [N, D], forward (train and eval) and backward, as `torch.nn.BatchNorm1d`.
//! Kernels: `shaders/batchnorm.wgsl`.
//!
//! Train mode normalizes with the batch's biased variance and updates the running statistics
//! with the unbiased one: `running = (1 - m)·running + m·batch` with momentum m (0.1 by
//! default; `None` = cumulative average, m = 1/num_batches_tracked). Eval mode normalizes with
//! the running statistics. A batch of one sample is an error in train mode, as in PyTorch.

//!
//! | file | what |
//! |---|---|
//! | `reference.rs` | the CPU reference: the specification, in plain loops |
//! | `launch.rs` | the kernels' parameters, bindings and dispatch builders |
//! | `node.rs` | the graph ops (forward with fused ReLU and dropout, backward) |
//! | `tensor.rs` | the op on GPU tensors of its own ([`GpuBatchNorm`]) |
//! | `tests.rs` | the kernels against the reference on awkward shapes |

mod launch;
mod node;
mod reference;
mod tensor;
#[cfg(test)]
mod tests;

pub use launch::{
    LayerBindings, ONE_PASS_MAX_ROWS, backward_dispatches, eval_dispatch, sync_backward_dispatches,
    sync_train_dispatches, train_dispatches,
};
pub use node::{BatchNormBackwardOp, BatchNormOp};
pub use reference::{
    Gradients, check_train_batch, reference_backward, reference_eval, reference_train,
};
pub use tensor::GpuBatchNorm;

use super::dropout::{DropProbability, MaskStream};

/// `eps` and `momentum` as `torch.nn.BatchNorm1d` takes them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchNormConfig {
    pub eps: f32,
    /// `None`: running statistics are the cumulative average of all batches.
    pub momentum: Option<f32>,
}

impl Default for BatchNormConfig {
    fn default() -> Self {
        Self {
            eps: 1e-5,
            momentum: Some(0.1),
        }
    }
}

/// Running statistics and their batch counter, as in BatchNorm1d's state_dict.
#[derive(Clone, Debug, PartialEq)]
pub struct RunningStats {
    pub mean: Vec<f32>,
    pub var: Vec<f32>,
    pub num_batches_tracked: u64,
}

impl RunningStats {
    /// PyTorch's initial state: mean 0, variance 1, no batches.
    pub fn new(features: usize) -> Self {
        Self {
            mean: vec![0.0; features],
            var: vec![1.0; features],
            num_batches_tracked: 0,
        }
    }
}

/// What the train-mode forward saves for the backward: per feature, mean and 1/√(var + eps).
#[derive(Clone, Debug, PartialEq)]
pub struct Saved {
    pub mean: Vec<f32>,
    pub invstd: Vec<f32>,
}

/// A dropout fused after the batch norm's ReLU (BatchNorm1d → ReLU → Dropout). Train mode
/// drops with [`dropout`](super::dropout)'s mask for the same stream and step; the backward passes the
/// gradient, scaled by 1/(1-p), only where the output is positive.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FusedDropout {
    pub p: DropProbability,
    pub stream: MaskStream,
}
