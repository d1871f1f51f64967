//! `torch.nn.BatchNorm1d(num_features, eps=1e-5, momentum=0.1)` over [N, features], with
//! learnable γ = 1 and β = 0 to start and running statistics (mean 0, variance 1). Its graph
//! ops are [`crate::ops::batchnorm`]'s.

use super::{Layer, LayerToken, Module, SpecInput};
use crate::graph::{BufferKind, BuildError, Init, Lowering};
use crate::ops::batchnorm::{BatchNormConfig, BatchNormLayer, BatchNormOp};

/// `torch.nn.BatchNorm1d(num_features, eps, momentum)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchNorm1d {
    pub num_features: usize,
    /// `eps` (default 1e-5) and `momentum` (default 0.1), PyTorch's defaults.
    pub config: BatchNormConfig,
}

impl BatchNorm1d {
    /// `nn.BatchNorm1d(num_features)`: eps 1e-5, momentum 0.1.
    pub fn new(num_features: usize) -> Self {
        Self {
            num_features,
            config: BatchNormConfig::default(),
        }
    }

    /// `eps=…`, added to the variance before the square root (default 1e-5).
    pub fn eps(mut self, eps: f32) -> Self {
        self.config.eps = eps;
        self
    }

    /// `momentum=…`, the running statistics' update weight (default `Some(0.1)`); `None`:
    /// they are the cumulative average.
    pub fn momentum(mut self, momentum: Option<f32>) -> Self {
        self.config.momentum = momentum;
        self
    }
}

pub(super) const TOKEN: LayerToken = LayerToken {
    names: &["bn", "batchnorm", "batchnorm1d"],
    usage: "bn[:EPS[:MOMENTUM]]",
    parse,
};

/// `bn` (eps 1e-5, momentum 0.1), `bn:EPS` or `bn:EPS:MOMENTUM`, MOMENTUM `none` for the
/// cumulative average (`momentum=None`).
fn parse(args: &[&str], input: &SpecInput<'_>) -> Result<(Layer, Option<usize>), String> {
    let mut layer = BatchNorm1d::new(input.flat("bn")?);
    let (eps, momentum) = match args {
        [] => (None, None),
        [eps] => (Some(*eps), None),
        [eps, momentum] => (Some(*eps), Some(*momentum)),
        _ => return Err("bn takes at most an eps and a momentum, e.g. bn:0.001:0.01".into()),
    };
    if let Some(eps) = eps {
        layer.config.eps = match eps.parse::<f32>() {
            Ok(e) if e.is_finite() && e > 0.0 => e,
            _ => return Err(format!("bn's eps must be a positive number, got {eps:?}")),
        };
    }
    if let Some(momentum) = momentum {
        layer.config.momentum = match momentum.parse::<f32>() {
            _ if momentum.eq_ignore_ascii_case("none") => None,
            Ok(m) if (0.0..=1.0).contains(&m) => Some(m),
            _ => {
                return Err(format!(
                    "bn's momentum must be a number in [0, 1] or none, got {momentum:?}"
                ));
            }
        };
    }
    Ok((layer.into(), Some(layer.num_features)))
}

impl Module for BatchNorm1d {
    fn kind(&self) -> &'static str {
        "BatchNorm1d"
    }

    fn spec(&self) -> String {
        let BatchNormConfig { eps, momentum } = self.config;
        if self.config == BatchNormConfig::default() {
            return "bn".into();
        }
        let momentum = momentum.map_or_else(|| "none".to_string(), |m| m.to_string());
        format!("bn:{eps}:{momentum}")
    }

    fn state_names(&self) -> &'static [&'static str] {
        &[
            "weight",
            "bias",
            "running_mean",
            "running_var",
            "num_batches_tracked",
        ]
    }

    fn lower(&self, cx: &mut Lowering) -> Result<(), BuildError> {
        let d = self.num_features;
        cx.expect_features(d)?;
        if !(self.config.eps > 0.0) {
            return Err(cx.error(format!("eps must be positive, got {}", self.config.eps)));
        }
        if let Some(m) = self.config.momentum
            && !(0.0..=1.0).contains(&m)
        {
            return Err(cx.error(format!("momentum must be in [0, 1], got {m}")));
        }
        let gamma = cx.param("weight", vec![d], Init::Constant(1.0));
        let beta = cx.param("bias", vec![d], Init::Constant(0.0));
        // PyTorch's buffers: running mean 0 and variance 1, no batch counted yet.
        let running = cx.buffer(
            BufferKind::F32,
            &[
                ("running_mean", vec![d], 0.0),
                ("running_var", vec![d], 1.0),
            ],
        );
        let counter = cx.buffer(BufferKind::Count, &[("num_batches_tracked", vec![], 0.0)]);
        let layer = BatchNormLayer {
            features: d,
            config: self.config,
            gamma,
            beta,
            running,
            counter,
        };
        let (x, y, saved) = (cx.input(), cx.activation(d), cx.saved(2, d));
        let op = BatchNormOp {
            layer,
            relu: false,
            dropout: None,
        };
        cx.push(op, vec![x], vec![y, saved]);
        cx.set_output(y, vec![cx.batch_size, d]);
        Ok(())
    }
}
