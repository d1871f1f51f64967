//! `Layer`, the [`Module`] every layer defines in its own file, and `Sequential`, mirroring
//! torch.nn's constructors and state_dict names.

use super::{BatchNorm1d, Dropout, Flatten, Linear, batch_norm, dropout, flatten, linear};
use crate::graph::{BuildError, Lowering};
use crate::ops::activation::{self, Activation, AnyActivation, ReLU};

/// What every layer defines, in its own module: its torch.nn name, its spec token, its
/// state_dict entries, and how it lowers into the graph (its shape rule, its parameters with
/// their initial values, and its ops).
pub trait Module {
    /// The torch.nn class name, for messages.
    fn kind(&self) -> &'static str;

    /// The spec token that builds it again ([`crate::nn::spec`]).
    fn spec(&self) -> String;

    /// The layer's state_dict entries (without its index prefix), in PyTorch's order.
    fn state_names(&self) -> &'static [&'static str];

    /// Appends the layer's forward to the graph: checks the input shape, declares the
    /// parameters, pushes the ops and sets the output.
    fn lower(&self, cx: &mut Lowering) -> Result<(), BuildError>;
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
    /// The layer's own definition.
    pub fn module(&self) -> &dyn Module {
        match self {
            Layer::Flatten(l) => l,
            Layer::Linear(l) => l,
            Layer::BatchNorm1d(l) => l,
            Layer::Activation(l) => l,
            Layer::Dropout(l) => l,
        }
    }

    /// The torch.nn class name, for messages.
    pub fn kind(&self) -> &'static str {
        self.module().kind()
    }

    /// The layer's state_dict entries (without its index prefix), in PyTorch's order.
    pub fn state_names(&self) -> &'static [&'static str] {
        self.module().state_names()
    }

    /// The layer's spec token.
    pub fn spec(&self) -> String {
        self.module().spec()
    }

    pub(crate) fn lower(&self, cx: &mut Lowering) -> Result<(), BuildError> {
        self.module().lower(cx)
    }
}

/// Every activation is a layer: element-wise, so the shape is kept; no state.
impl Module for AnyActivation {
    fn kind(&self) -> &'static str {
        Activation::kind(&**self)
    }

    fn spec(&self) -> String {
        Activation::spec(&**self)
    }

    fn state_names(&self) -> &'static [&'static str] {
        &[]
    }

    fn lower(&self, cx: &mut Lowering) -> Result<(), BuildError> {
        let features = cx.flat_features()?;
        let (x, y) = (cx.input(), cx.activation(features));
        cx.push(
            activation::ActivationOp::new(self.clone()),
            vec![x],
            vec![y],
        );
        cx.set_output(y, cx.shape().to_vec());
        Ok(())
    }
}

/// What a spec token's parser knows of its input: the features per sample the previous
/// layer gives (`None` while samples are not flat) and the data's sample shape.
pub struct SpecInput<'a> {
    pub features: Option<usize>,
    pub sample_shape: &'a [usize],
}

impl SpecInput<'_> {
    /// The flat input's features, or an error asking for a flatten first.
    pub fn flat(&self, name: &str) -> Result<usize, String> {
        self.features.ok_or_else(|| {
            format!(
                "{name} needs flat samples but they are shaped {:?}; put flatten first",
                self.sample_shape
            )
        })
    }

    /// An error unless the token has no arguments.
    pub fn no_args(&self, name: &str, args: &[&str]) -> Result<(), String> {
        match args {
            [] => Ok(()),
            _ => Err(format!("{name} takes no argument")),
        }
    }
}

/// How a spec token names a layer and builds it: from its arguments (after the name) and its
/// input, the layer and the features per sample after it.
#[derive(Clone, Copy)]
pub struct LayerToken {
    /// Names it is written as (lower case), the first being the canonical one.
    pub names: &'static [&'static str],
    /// The form for messages and docs (`"linear:N[:nobias]"`).
    pub usage: &'static str,
    #[allow(clippy::type_complexity)]
    pub parse: fn(&[&str], &SpecInput<'_>) -> Result<(Layer, Option<usize>), String>,
}

/// The layers with a shape or state of their own; the activations' tokens are
/// [`activation::TOKENS`].
pub const LAYER_TOKENS: &[LayerToken] = &[
    flatten::TOKEN,
    linear::TOKEN,
    batch_norm::TOKEN,
    dropout::TOKEN,
];

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
