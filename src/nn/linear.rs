//! `torch.nn.Linear(in_features, out_features, bias=True)`: y = x·Wᵀ + b with W: [out, in],
//! both initialized uniform in ±1/√in_features as PyTorch's `reset_parameters`. Its graph
//! ops are [`crate::ops::linear`]'s.

use super::{Layer, LayerToken, Module, SpecInput, kaiming_uniform_bound};
use crate::graph::{BuildError, Init, Lowering};
use crate::ops::linear::LinearOp;

/// `torch.nn.Linear(in_features, out_features, bias)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Linear {
    pub in_features: usize,
    pub out_features: usize,
    /// With a bias term `b` (default true, as PyTorch's `bias=True`).
    pub bias: bool,
}

impl Linear {
    /// `nn.Linear(in_features, out_features)`, with a bias.
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

pub(super) const TOKEN: LayerToken = LayerToken {
    names: &["linear"],
    usage: "linear:N[:nobias]",
    parse,
};

fn parse(args: &[&str], input: &SpecInput<'_>) -> Result<(Layer, Option<usize>), String> {
    let out = args
        .first()
        .ok_or("linear needs its output size, e.g. linear:64")?;
    let out: usize =
        out.parse().ok().filter(|&n| n > 0).ok_or_else(|| {
            format!("linear's output size must be a positive integer, got {out:?}")
        })?;
    let bias = match args.get(1..) {
        Some([]) | None => true,
        Some(["nobias"]) => false,
        Some(other) => {
            return Err(format!(
                "unexpected linear option {:?}; only nobias",
                other.join(":")
            ));
        }
    };
    let linear = Linear::new(input.flat("linear")?, out);
    let linear = if bias { linear } else { linear.without_bias() };
    Ok((linear.into(), Some(out)))
}

impl Module for Linear {
    fn kind(&self) -> &'static str {
        "Linear"
    }

    fn spec(&self) -> String {
        match self.bias {
            true => format!("linear:{}", self.out_features),
            false => format!("linear:{}:nobias", self.out_features),
        }
    }

    fn state_names(&self) -> &'static [&'static str] {
        match self.bias {
            true => &["weight", "bias"],
            false => &["weight"],
        }
    }

    fn lower(&self, cx: &mut Lowering) -> Result<(), BuildError> {
        cx.expect_features(self.in_features)?;
        if self.out_features == 0 {
            return Err(cx.error("out_features must be at least 1".into()));
        }
        let init = Init::Uniform {
            bound: kaiming_uniform_bound(self.in_features),
        };
        let weight = cx.param("weight", vec![self.out_features, self.in_features], init);
        let bias = self
            .bias
            .then(|| cx.param("bias", vec![self.out_features], init));
        let (x, y) = (cx.input(), cx.activation(self.out_features));
        let op = LinearOp {
            weight,
            bias,
            relu: false,
        };
        cx.push(op, vec![x], vec![y]);
        cx.set_output(y, vec![cx.batch_size, self.out_features]);
        Ok(())
    }
}
