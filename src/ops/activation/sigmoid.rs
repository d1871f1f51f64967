//! `torch.nn.Sigmoid()`: y = 1 / (1 + e^(−x)); dy/dx = y·(1 − y), from the output as
//! PyTorch's autograd computes it. Kernel functions: `shaders/activation/sigmoid.wgsl`.

use std::any::Any;

use super::{Activation, DerivativeFrom, Token, no_args};
use crate::gpu::ActivationShader;

/// `torch.nn.Sigmoid()`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sigmoid;

pub(super) const TOKEN: Token = Token {
    names: &["sigmoid"],
    usage: "sigmoid",
    parse: |args| no_args("sigmoid", || Sigmoid, args),
};

const SHADER: ActivationShader = ActivationShader {
    name: "sigmoid",
    backward_name: "sigmoid_backward",
    source: include_str!("../../../shaders/activation/sigmoid.wgsl"),
};

impl Activation for Sigmoid {
    fn kind(&self) -> &'static str {
        "Sigmoid"
    }

    fn spec(&self) -> String {
        "sigmoid".into()
    }

    fn forward(&self, x: f32, _: f32) -> f32 {
        // e^(−x) overflows to ∞ for x < −88, giving 0 as it should; NaN stays NaN.
        (1.0 / (1.0 + (-f64::from(x)).exp())) as f32
    }

    fn derivative_from(&self) -> DerivativeFrom {
        DerivativeFrom::Output
    }

    fn backward(&self, y: f32, dy: f32, _: f32) -> f32 {
        dy * y * (1.0 - y)
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
