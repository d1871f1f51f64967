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
//! | `config.rs` | [`BatchNormConfig`]: eps and momentum, plain settings |
//! | `reference.rs` | the CPU reference: the specification, in plain loops |
//! | `launch.rs` | the kernels' parameters, bindings and dispatch builders |
//! | `node.rs` | the graph ops (forward with fused ReLU and dropout, backward) |
//! | `tensor.rs` | the op on GPU tensors of its own ([`GpuBatchNorm`]) |
//! | `tests.rs` | the kernels against the reference on awkward shapes |

mod config;
mod launch;
mod node;
mod reference;
mod tensor;
#[cfg(test)]
mod tests;

pub use config::BatchNormConfig;
pub use launch::{
    BackwardBindings, ForwardBindings, LayerBindings, ONE_PASS_MAX_ROWS, Pass, backward_dispatches,
    eval_dispatch, sync_backward_dispatches, sync_train_dispatches, train_dispatches,
};
pub use node::{BatchNormBackwardOp, BatchNormLayer, BatchNormOp, FoldedDropout};
pub use reference::{
    Affine, Gradients, check_train_batch, reference_backward, reference_eval, reference_train,
};
pub use tensor::{ForwardTensors, GpuBatchNorm};

use super::dropout::{DropProbability, MaskStream};

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
