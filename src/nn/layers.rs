//! Layers and `Sequential`, mirroring torch.nn's constructors and state_dict names.

use crate::ops::activation::{Activation, AnyActivation, ReLU};
use crate::ops::batchnorm::BatchNormConfig;

/// `torch.nn.Flatten()`: [N, d1, d2, …] → [N, d1·d2·…].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flatten;

/// `torch.nn.Linear(in_features, out_features, bias=True)`: y = x·Wᵀ + b with W: [out, in].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Linear {
    pub in_features: usize,
    pub out_features: usize,
    pub bias: bool,
}

impl Linear {
    pub fn new(in_features: usize, out_features: usize) -> Self {
        Self {
            in_features,
            out_features,
            bias: true,
        }
    }

    /// Without the bias term (`bias=False`).
    pub fn without_bias(mut self) -> Self {
        self.bias = false;
        self
    }
}

/// `torch.nn.BatchNorm1d(num_features, eps=1e-5, momentum=0.1)` with learnable γ, β.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchNorm1d {
    pub num_features: usize,
    pub config: BatchNormConfig,
}

impl BatchNorm1d {
    pub fn new(num_features: usize) -> Self {
        Self {
            num_features,
            config: BatchNormConfig::default(),
        }
    }

    pub fn eps(mut self, eps: f32) -> Self {
        self.config.eps = eps;
        self
    }

    /// `None`: running statistics are the cumulative average.
    pub fn momentum(mut self, momentum: Option<f32>) -> Self {
        self.config.momentum = momentum;
        self
    }
}

/// `torch.nn.Dropout(p)`: zeroes elements with probability p in training, identity in eval.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dropout {
    pub p: f32,
}

impl Dropout {
    pub fn new(p: f32) -> Self {
        Self { p }
    }
}

/// One entry of a [`Sequential`]. Every element-wise activation (ReLU, Sigmoid, Tanh,
/// GELU, LeakyReLU, see [`crate::ops::activation`]) is one variant.
#[derive(Clone, Debug, PartialEq)]
pub enum Layer {
    Flatten(Flatten),
    Linear(Linear),
    BatchNorm1d(BatchNorm1d),
    Activation(AnyActivation),
    Dropout(Dropout),
}

impl Layer {
    /// The torch.nn class name, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Layer::Flatten(_) => "Flatten",
            Layer::Linear(_) => "Linear",
            Layer::BatchNorm1d(_) => "BatchNorm1d",
            Layer::Activation(a) => a.kind(),
            Layer::Dropout(_) => "Dropout",
        }
    }

    /// The layer's state_dict entries (without its index prefix), in PyTorch's order.
    pub fn state_names(&self) -> &'static [&'static str] {
        match self {
            Layer::Linear(l) if l.bias => &["weight", "bias"],
            Layer::Linear(_) => &["weight"],
            Layer::BatchNorm1d(_) => &[
                "weight",
                "bias",
                "running_mean",
                "running_var",
                "num_batches_tracked",
            ],
            Layer::Flatten(_) | Layer::Activation(_) | Layer::Dropout(_) => &[],
        }
    }
}

macro_rules! layer_from {
    ($($t:ident),*) => {$(
        impl From<$t> for Layer {
            fn from(layer: $t) -> Self {
                Layer::$t(layer)
            }
        }
    )*};
}
layer_from!(Flatten, Linear, BatchNorm1d, Dropout);

impl<A: Activation> From<A> for Layer {
    fn from(activation: A) -> Self {
        Layer::Activation(AnyActivation::new(activation))
    }
}

impl From<AnyActivation> for Layer {
    fn from(activation: AnyActivation) -> Self {
        Layer::Activation(activation)
    }
}

/// `torch.nn.Sequential`: layers applied in order; entry i's state is named `"{i}.…"`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sequential {
    layers: Vec<Layer>,
}

impl Sequential {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a layer and returns the model, as `nn.Sequential.append`.
    pub fn append(mut self, layer: impl Into<Layer>) -> Self {
        self.layers.push(layer.into());
        self
    }

    pub fn push(&mut self, layer: impl Into<Layer>) {
        self.layers.push(layer.into());
    }

    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// Every state_dict key, in PyTorch's order.
    pub fn state_dict_keys(&self) -> Vec<String> {
        self.layers
            .iter()
            .enumerate()
            .flat_map(|(i, l)| l.state_names().iter().map(move |n| format!("{i}.{n}")))
            .collect()
    }

    /// The lecture's MLP for `input_features` inputs and `classes` outputs: Flatten →
    /// Linear(in, 64) → BatchNorm1d → ReLU → Dropout(p) → Linear(64, 32) → BatchNorm1d → ReLU
    /// → Dropout(p) → Linear(32, classes).
    pub fn lecture_mlp(input_features: usize, classes: usize, dropout: f32) -> Self {
        Self::new()
            .append(Flatten)
            .append(Linear::new(input_features, 64))
            .append(BatchNorm1d::new(64))
            .append(ReLU)
            .append(Dropout::new(dropout))
            .append(Linear::new(64, 32))
            .append(BatchNorm1d::new(32))
            .append(ReLU)
            .append(Dropout::new(dropout))
            .append(Linear::new(32, classes))
    }
}
