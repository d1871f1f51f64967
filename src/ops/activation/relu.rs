//! `torch.nn.ReLU()`: y = max(x, 0); dx = dy where y > 0 (0 at x = 0, as PyTorch).
//! Kernel functions: `shaders/activation/relu.wgsl`. Linear and BatchNorm fuse it as their
//! epilogue (see their `absorb`), so a standalone node is rare.

use std::any::Any;

use super::{Activation, DerivativeFrom, Token, no_args};
use crate::gpu::ActivationShader;

/// `torch.nn.ReLU()`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReLU;

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

    fn forward(&self, x: f32) -> f32 {
        x.max(0.0)
    }

    fn derivative_from(&self) -> DerivativeFrom {
        DerivativeFrom::Output
    }

    fn backward(&self, y: f32, dy: f32) -> f32 {
        if y > 0.0 { dy } else { 0.0 }
    }

    fn shader(&self) -> &'static ActivationShader {
        &SHADER
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
