//! BatchNorm1d's CPU reference: the specification, in plain loops (f64 accumulation).

use super::{BatchNormConfig, RunningStats, Saved};
use crate::ops::{OpError, expect_matrix};

/// Errors for a train-mode batch that PyTorch rejects.
pub fn check_train_batch(shape: &[usize]) -> Result<(), OpError> {
    let (n, _) = expect_matrix("batch norm", "input", shape)?;
    if n <= 1 {
        return Err(OpError::SingleSampleBatch(shape.to_vec()));
    }
    Ok(())
}

/// A layer as the reference normalizes with it: γ and β (\[d\] each), its options, and
/// whether a ReLU follows.
#[derive(Clone, Copy, Debug)]
pub struct Affine<'a> {
    pub gamma: &'a [f32],
    pub beta: &'a [f32],
    pub config: BatchNormConfig,
    pub relu: bool,
}

/// CPU reference, train mode. x: [n, d] → y: [n, d]; updates `running`.
pub fn reference_train(
    x: &[f32],
    (n, d): (usize, usize),
    layer: Affine<'_>,
    running: &mut RunningStats,
) -> (Vec<f32>, Saved) {
    let Affine {
        gamma,
        beta,
        config,
        relu,
    } = layer;
    let mut saved = Saved {
        mean: vec![0.0; d],
        invstd: vec![0.0; d],
    };
    running.num_batches_tracked += 1;
    let momentum = config
        .momentum
        .map_or(1.0 / running.num_batches_tracked as f64, f64::from);
    for f in 0..d {
        // Two passes in f64: the plain definition, exact enough to judge the GPU's shifted sums.
        let mean = (0..n).map(|r| f64::from(x[r * d + f])).sum::<f64>() / n as f64;
        let sq = (0..n)
            .map(|r| (f64::from(x[r * d + f]) - mean).powi(2))
            .sum::<f64>();
        let var_biased = sq / n as f64;
        let var_unbiased = sq / (n as f64 - 1.0).max(1.0);
        saved.mean[f] = mean as f32;
        saved.invstd[f] = (1.0 / (var_biased + f64::from(config.eps)).sqrt()) as f32;
        running.mean[f] = ((1.0 - momentum) * f64::from(running.mean[f]) + momentum * mean) as f32;
        running.var[f] =
            ((1.0 - momentum) * f64::from(running.var[f]) + momentum * var_unbiased) as f32;
    }
    let y = normalize(x, d, &saved.mean, &saved.invstd, gamma, beta, relu);
    (y, saved)
}

/// CPU reference, eval mode: normalizes with the running statistics.
pub fn reference_eval(x: &[f32], d: usize, layer: Affine<'_>, running: &RunningStats) -> Vec<f32> {
    let Affine {
        gamma,
        beta,
        config,
        relu,
    } = layer;
    let invstd: Vec<f32> = running
        .var
        .iter()
        .map(|&v| 1.0 / (v + config.eps).sqrt())
        .collect();
    normalize(x, d, &running.mean, &invstd, gamma, beta, relu)
}

/// y = (x - mean)·invstd·γ + β, then ReLU if asked.
fn normalize(
    x: &[f32],
    d: usize,
    mean: &[f32],
    invstd: &[f32],
    gamma: &[f32],
    beta: &[f32],
    relu: bool,
) -> Vec<f32> {
    x.iter()
        .enumerate()
        .map(|(i, &v)| {
            let f = i % d;
            let y = (v - mean[f]) * invstd[f] * gamma[f] + beta[f];
            if relu {
                crate::ops::activation::relu(y)
            } else {
                y
            }
        })
        .collect()
}

/// Gradients of a train-mode batch norm.
#[derive(Clone, Debug, PartialEq)]
pub struct Gradients {
    pub dx: Vec<f32>,
    pub dgamma: Vec<f32>,
    pub dbeta: Vec<f32>,
}

/// CPU reference backward. With x̂ = (x - μ)·invstd and y = x̂·γ + β:
/// dβ = Σ dy, dγ = Σ dy·x̂, dx = γ·invstd/N·(N·dy − dβ − x̂·dγ).
/// With `relu_output`, dy first passes through the fused ReLU whose output that was.
pub fn reference_backward(
    x: &[f32],
    dy: &[f32],
    n: usize,
    d: usize,
    gamma: &[f32],
    saved: &Saved,
    relu_output: Option<&[f32]>,
) -> Gradients {
    let g = |i: usize| match relu_output {
        Some(y) => f64::from(crate::ops::activation::relu_backward(y[i], dy[i])),
        None => f64::from(dy[i]),
    };
    let xhat = |i: usize| {
        let f = i % d;
        (f64::from(x[i]) - f64::from(saved.mean[f])) * f64::from(saved.invstd[f])
    };
    let mut dgamma = vec![0.0f64; d];
    let mut dbeta = vec![0.0f64; d];
    for i in 0..n * d {
        dbeta[i % d] += g(i);
        dgamma[i % d] += g(i) * xhat(i);
    }
    let dx = (0..n * d)
        .map(|i| {
            let f = i % d;
            let scale = f64::from(gamma[f]) * f64::from(saved.invstd[f]) / n as f64;
            (scale * (n as f64 * g(i) - dbeta[f] - xhat(i) * dgamma[f])) as f32
        })
        .collect();
    Gradients {
        dx,
        dgamma: dgamma.into_iter().map(|v| v as f32).collect(),
        dbeta: dbeta.into_iter().map(|v| v as f32).collect(),
    }
}
