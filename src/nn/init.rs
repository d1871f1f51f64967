//! Parameter initialization as PyTorch's `reset_parameters`.

use rand::RngExt;

use super::{Layer, Sequential};
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

/// Initial state of every layer, in state_dict order: Linear weight and bias uniform in
/// ±1/√in_features; BatchNorm1d γ = 1, β = 0, running mean 0, variance 1. Seeded, so the same
/// seed gives the same model (the values differ from PyTorch's own generator).
pub fn init_parameters(model: &Sequential, seed: u64) -> Vec<(String, Vec<f32>)> {
    let mut rng = rng::seeded(seed);
    let mut out = Vec::new();
    for (i, layer) in model.layers().iter().enumerate() {
        match layer {
            Layer::Linear(l) => {
                let bound = kaiming_uniform_bound(l.in_features);
                let mut draw = |len: usize| -> Vec<f32> {
                    (0..len)
                        .map(|_| {
                            if bound > 0.0 {
                                rng.random_range(-bound..bound)
                            } else {
                                0.0
                            }
                        })
                        .collect()
                };
                out.push((format!("{i}.weight"), draw(l.out_features * l.in_features)));
                if l.bias {
                    out.push((format!("{i}.bias"), draw(l.out_features)));
                }
            }
            Layer::BatchNorm1d(b) => {
                let d = b.num_features;
                out.push((format!("{i}.weight"), vec![1.0; d]));
                out.push((format!("{i}.bias"), vec![0.0; d]));
                out.push((format!("{i}.running_mean"), vec![0.0; d]));
                out.push((format!("{i}.running_var"), vec![1.0; d]));
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_stream_is_pinned() {
        // The first draws for seed 0. A change of generator, of its seeding or of rand's
        // uniform sampling would change every seeded model's initial weights, and fails here.
        let model = Sequential::new().append(crate::nn::Linear::new(3, 2));
        let p = init_parameters(&model, 0);
        let names: Vec<&str> = p.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["0.weight", "0.bias"]);
        // Uniform in ±1/√3 = ±0.57735.
        let weight = [
            0.34809506, 0.26686668, 0.063842, 0.3157646, 0.3571974, -0.5475075,
        ];
        assert_eq!(p[0].1, weight);
        assert_eq!(p[1].1, [0.19800538, 0.09717876]);
    }

    #[test]
    fn linear_init_is_uniform_within_pytorch_bound_and_seeded() {
        let model = Sequential::lecture_mlp(3072, 10, 0.2);
        let a = init_parameters(&model, 7);
        let b = init_parameters(&model, 7);
        assert_eq!(a, b);
        assert_ne!(a, init_parameters(&model, 8));
        let (name, w) = &a[0];
        assert_eq!(name, "1.weight");
        let bound = 1.0 / 3072f32.sqrt();
        assert!(w.iter().all(|v| v.abs() <= bound));
        // Uniform on ±bound has variance bound²/3.
        let var = w.iter().map(|v| v * v).sum::<f32>() / w.len() as f32;
        assert!(
            (var / (bound * bound / 3.0) - 1.0).abs() < 0.02,
            "variance ratio {}",
            var / (bound * bound / 3.0)
        );
        let bn: Vec<_> = a.iter().filter(|(n, _)| n.starts_with("2.")).collect();
        assert_eq!(bn[0].1, vec![1.0; 64]);
        assert_eq!(bn[3].1, vec![1.0; 64]);
    }
}
