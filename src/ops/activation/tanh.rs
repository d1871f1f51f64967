//! `torch.nn.Tanh()`: y = tanh(x); dy/dx = 1 − y², from the output as PyTorch's autograd
//! computes it. Kernel functions: `shaders/activation/tanh.wgsl`.

use std::any::Any;

use super::{Activation, DerivativeFrom, Token, no_args};
use crate::gpu::ActivationShader;

/// `torch.nn.Tanh()`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tanh;

pub(super) const TOKEN: Token = Token {
    names: &["tanh"],
    usage: "tanh",
    parse: |args| no_args("tanh", || Tanh, args),
};

const SHADER: ActivationShader = ActivationShader {
    name: "tanh",
    backward_name: "tanh_backward",
    source: include_str!("../../../shaders/activation/tanh.wgsl"),
};

impl Activation for Tanh {
    fn kind(&self) -> &'static str {
        "Tanh"
    }

    fn spec(&self) -> String {
        "tanh".into()
    }

    fn forward(&self, x: f32, _: f32) -> f32 {
        f64::from(x).tanh() as f32
    }

    fn derivative_from(&self) -> DerivativeFrom {
        DerivativeFrom::Output
    }

    fn backward(&self, y: f32, dy: f32, _: f32) -> f32 {
        dy * (1.0 - y * y)
    }

    fn param(&self) -> f32 {
        0.0
    }

    fn shader(&self) -> &'static ActivationShader {
        &SHADER
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
