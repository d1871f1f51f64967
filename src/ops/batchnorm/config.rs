//! BatchNorm1d's settings: plain data, read by the layer, its graph nodes and its kernels.

/// `eps` and `momentum` as `torch.nn.BatchNorm1d(num_features, eps=1e-5, momentum=0.1)`
/// takes them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchNormConfig {
    /// Added to the variance before its square root (`eps`; default 1e-5).
    pub eps: f32,
    /// Weight of each batch in the running statistics (`momentum`; default `Some(0.1)`).
    /// `None` (PyTorch's `momentum=None`): the cumulative average of all batches.
    pub momentum: Option<f32>,
}

impl Default for BatchNormConfig {
    /// PyTorch's defaults: eps 1e-5, momentum 0.1.
    fn default() -> Self {
        Self {
            eps: 1e-5,
            momentum: Some(0.1),
        }
    }
}
