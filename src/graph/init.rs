//! Initial state as PyTorch's `reset_parameters` gives it: each parameter drawn as its
//! [`Init`] says, each state buffer at its parts' initial values.

use rand::RngExt;

use super::{Init, Param};
use crate::rng;

/// Bound of `kaiming_uniform_(w, a=√5)` for fan_in inputs: gain·√(3/fan_in) with
/// gain = √(2/(1+a²)), which is 1/√fan_in — the same bound PyTorch uses for the bias.
pub fn kaiming_uniform_bound(fan_in: usize) -> f32 {
    if fan_in == 0 {
        0.0
    } else {
        1.0 / (fan_in as f32).sqrt()
    }
}

/// Initial values of every parameter, in the graph's (state_dict) order, each as its
/// [`Init`] says: Linear weight and bias uniform in ±1/√in_features; BatchNorm1d γ = 1,
/// β = 0 (running statistics start at mean 0, variance 1 in their own state). Seeded, so the
/// same seed gives the same model (the values differ from PyTorch's own generator).
pub fn init_parameters(params: &[Param], seed: u64) -> Vec<Vec<f32>> {
    let mut rng = rng::seeded(seed);
    params
        .iter()
        .map(|p| match p.init {
            Init::Uniform { bound } if bound > 0.0 => (0..p.len())
                .map(|_| rng.random_range(-bound..bound))
                .collect(),
            Init::Uniform { .. } => vec![0.0; p.len()],
            Init::Constant(v) => vec![v; p.len()],
        })
        .collect()
}
