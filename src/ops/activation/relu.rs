//! `torch.nn.ReLU()`: y = 0 where x < 0, else x — NaN stays NaN and -0 stays -0, as PyTorch's
//! `clamp_min` gives; dx = 0 where y ≤ 0, else dy (PyTorch's `threshold_backward(dy, y, 0)`,
//! which lets the gradient through a NaN). Kernel functions: `shaders/activation/relu.wgsl`.
//! Linear and BatchNorm fuse it as their epilogue (see their `absorb`) through [`relu`] and
//! [`relu_backward`] here and the WGSL functions of the same names, so a standalone node is
//! rare.

use std::any::Any;

use super::{Activation, DerivativeFrom, Token, no_args};
use crate::gpu::ActivationShader;

/// `torch.nn.ReLU()`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReLU;

/// CPU reference: 0 where x < 0, else x (NaN included).
pub fn relu(x: f32) -> f32 {
    if x < 0.0 { 0.0 } else { x }
}

/// CPU reference of the backward from the output `y`: 0 where y ≤ 0, else dy (NaN included).
pub fn relu_backward(y: f32, dy: f32) -> f32 {
    if y <= 0.0 { 0.0 } else { dy }
}

pub(super) const TOKEN: Token = Token {
    names: &["relu"],
    usage: "relu",
    parse: |args| no_args("relu", || ReLU, args),
};

const SHADER: ActivationShader = ActivationShader {
    name: "relu",
    backward_name: "relu_backward",
    source: include_str!("../../../shaders/activation/relu.wgsl"),
};

impl Activation for ReLU {
    fn kind(&self) -> &'static str {
        "ReLU"
    }

    fn spec(&self) -> String {
        "relu".into()
    }

    fn forward(&self, x: f32, _: f32) -> f32 {
        relu(x)
    }

    fn derivative_from(&self) -> DerivativeFrom {
        DerivativeFrom::Output
    }

    fn backward(&self, y: f32, dy: f32, _: f32) -> f32 {
        relu_backward(y, dy)
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
