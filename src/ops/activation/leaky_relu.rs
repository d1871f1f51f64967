//! `torch.nn.LeakyReLU(negative_slope=0.01)`: y = x for x > 0, else slope·x; dx = dy for
//! x > 0, else slope·dy (the slope at 0, and for NaN, whose product stays NaN in y).
//! Kernel functions: `shaders/activation/leaky_relu.wgsl`.

use std::any::Any;

use super::{Activation, AnyActivation, DerivativeFrom, Token};
use crate::gpu::ActivationShader;

/// `torch.nn.LeakyReLU(negative_slope)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LeakyReLU {
    pub negative_slope: f32,
}

impl LeakyReLU {
    pub fn new(negative_slope: f32) -> Self {
        Self { negative_slope }
    }
}

impl Default for LeakyReLU {
    /// PyTorch's default slope, 0.01.
    fn default() -> Self {
        Self::new(0.01)
    }
}

pub(super) const TOKEN: Token = Token {
    names: &["leaky_relu", "leakyrelu"],
    usage: "leaky_relu[:SLOPE]",
    parse,
};

const SHADER: ActivationShader = ActivationShader {
    name: "leaky_relu",
    backward_name: "leaky_relu_backward",
    source: include_str!("../../../shaders/activation/leaky_relu.wgsl"),
};

fn parse(args: &[&str]) -> Result<AnyActivation, String> {
    match args {
        [] => Ok(AnyActivation::new(LeakyReLU::default())),
        [slope] => match slope.parse::<f32>() {
            Ok(s) if s.is_finite() => Ok(AnyActivation::new(LeakyReLU::new(s))),
            _ => Err(format!(
                "leaky_relu's negative slope must be a finite number, got {slope:?}"
            )),
        },
        _ => Err("leaky_relu takes one negative slope, e.g. leaky_relu:0.2".into()),
    }
}

impl Activation for LeakyReLU {
    fn kind(&self) -> &'static str {
        "LeakyReLU"
    }

    fn spec(&self) -> String {
        format!("leaky_relu:{}", self.negative_slope)
    }

    fn forward(&self, x: f32, slope: f32) -> f32 {
        if x > 0.0 { x } else { x * slope }
    }

    fn derivative_from(&self) -> DerivativeFrom {
        DerivativeFrom::Input
    }

    fn backward(&self, x: f32, dy: f32, slope: f32) -> f32 {
        if x > 0.0 { dy } else { dy * slope }
    }

    fn shader(&self) -> &'static ActivationShader {
        &SHADER
    }

    fn param(&self) -> f32 {
        self.negative_slope
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
