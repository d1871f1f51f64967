//! `torch.nn.GELU(approximate='none' | 'tanh')`. Kernel functions:
//! `shaders/activation/gelu.wgsl` (exact) and `gelu_tanh.wgsl`.
//!
//! - exact: y = x·Φ(x) with Φ the standard normal CDF, Φ(x) = ½·erfc(−x/√2);
//!   dy/dx = Φ(x) + x·φ(x), φ(x) = e^(−x²/2)/√(2π).
//! - tanh: y = ½·x·(1 + tanh(u)), u = √(2/π)·(x + 0.044715·x³);
//!   dy/dx = ½·(1 + tanh u) + ½·x·(1 − tanh² u)·√(2/π)·(1 + 3·0.044715·x²).
//!   Both are computed through s = σ(2u) = ½·(1 + tanh u) and 1 − s = σ(−2u), so that
//!   y = x·s and dy/dx = s + 2·x·s·(1 − s)·du/dx: no 1 + tanh u cancels where tanh u ≈ −1.
//!
//! At ±∞ both follow the formulas, as PyTorch's scalar path does: GELU(+∞) = +∞,
//! GELU(−∞) = −∞·0 = NaN (PyTorch's vectorised CPU path also gives NaN at +∞ for the exact
//! form). The exact form's reference computes Φ in f64 (libm's erfc); the tanh form's in
//! f32, as PyTorch does, so that its overflow to NaN for |x| ≳ 1e19 in the backward matches.

use std::any::Any;

use super::{Activation, AnyActivation, DerivativeFrom, Token};
use crate::gpu::ActivationShader;

/// `torch.nn.GELU(approximate)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GELU {
    /// `approximate='tanh'`.
    pub tanh: bool,
}

impl GELU {
    /// `nn.GELU()`: the exact form, with the normal CDF.
    pub fn new() -> Self {
        Self { tanh: false }
    }

    /// `nn.GELU(approximate='tanh')`.
    pub fn tanh() -> Self {
        Self { tanh: true }
    }
}

pub(super) const TOKEN: Token = Token {
    names: &["gelu"],
    usage: "gelu[:tanh]",
    parse,
};

fn parse(args: &[&str]) -> Result<AnyActivation, String> {
    match args {
        [] | ["none"] => Ok(AnyActivation::new(GELU::new())),
        ["tanh"] => Ok(AnyActivation::new(GELU::tanh())),
        _ => Err(format!(
            "gelu's approximation is none or tanh (gelu or gelu:tanh), got {:?}",
            args.join(":")
        )),
    }
}

const EXACT_SHADER: ActivationShader = ActivationShader {
    name: "gelu",
    backward_name: "gelu_backward",
    source: include_str!("../../../shaders/activation/gelu.wgsl"),
};

const TANH_SHADER: ActivationShader = ActivationShader {
    name: "gelu_tanh",
    backward_name: "gelu_tanh_backward",
    source: include_str!("../../../shaders/activation/gelu_tanh.wgsl"),
};

const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const COEFF: f32 = 0.044_715;

/// (σ(2u), σ(−2u)) for the tanh form, each without cancellation.
fn tanh_halves(x: f32) -> (f32, f32) {
    let u = SQRT_2_OVER_PI * (x + COEFF * x * x * x);
    (1.0 / (1.0 + (-2.0 * u).exp()), 1.0 / (1.0 + (2.0 * u).exp()))
}

/// Φ(x) in f64.
fn normal_cdf(x: f64) -> f64 {
    0.5 * libm::erfc(-x * std::f64::consts::FRAC_1_SQRT_2)
}

impl Activation for GELU {
    fn kind(&self) -> &'static str {
        "GELU"
    }

    fn spec(&self) -> String {
        if self.tanh { "gelu:tanh" } else { "gelu" }.into()
    }

    fn forward(&self, x: f32, _: f32) -> f32 {
        if self.tanh {
            x * tanh_halves(x).0
        } else {
            let x = f64::from(x);
            (x * normal_cdf(x)) as f32
        }
    }

    fn derivative_from(&self) -> DerivativeFrom {
        DerivativeFrom::Input
    }

    fn backward(&self, x: f32, dy: f32, _: f32) -> f32 {
        if self.tanh {
            let (s, one_minus_s) = tanh_halves(x);
            let du = SQRT_2_OVER_PI * (1.0 + 3.0 * COEFF * x * x);
            dy * (s + 2.0 * x * s * one_minus_s * du)
        } else {
            let x = f64::from(x);
            let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
            (f64::from(dy) * (normal_cdf(x) + x * pdf)) as f32
        }
    }

    fn param(&self) -> f32 {
        0.0
    }

    fn shader(&self) -> &'static ActivationShader {
        if self.tanh { &TANH_SHADER } else { &EXACT_SHADER }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
