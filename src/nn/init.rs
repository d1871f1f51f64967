//! Parameter initialization as PyTorch's `reset_parameters`, held against its pinned stream
//! and its bounds on the layers' own graphs (the functions live in `crate::graph`).

#[cfg(test)]
mod tests {
    use crate::graph::init_parameters;
    use crate::nn::{Loss, Sequential};
    use crate::optim::{Optimizer, Sgd};

    #[test]
    fn init_stream_is_pinned() {
        // The first draws for seed 0. A change of generator, of its seeding or of rand's
        // uniform sampling would change every seeded model's initial weights, and fails here.
        let model = Sequential::new().append(crate::nn::Linear::new(3, 2));
        let sgd = Optimizer::Sgd(Sgd::default());
        let graph = crate::nn::build(&model, &Loss::default(), &sgd, &[3], 2).unwrap();
        let p = init_parameters(&graph.params, 0);
        let names: Vec<&str> = graph.params.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["0.weight", "0.bias"]);
        // Uniform in ±1/√3 = ±0.57735.
        let weight = [
            0.34809506, 0.26686668, 0.063842, 0.3157646, 0.3571974, -0.5475075,
        ];
        assert_eq!(p[0], weight);
        assert_eq!(p[1], [0.19800538, 0.09717876]);
    }

    #[test]
    fn linear_init_is_uniform_within_pytorch_bound_and_seeded() {
        let model = Sequential::lecture_mlp(3072, 10, 0.2);
        let sgd = Optimizer::Sgd(Sgd::default());
        let graph = crate::nn::build(&model, &Loss::default(), &sgd, &[3072], 4).unwrap();
        let a = init_parameters(&graph.params, 7);
        let b = init_parameters(&graph.params, 7);
        assert_eq!(a, b);
        assert_ne!(a, init_parameters(&graph.params, 8));
        let w = &a[0];
        assert_eq!(graph.params[0].name, "1.weight");
        let bound = 1.0 / 3072f32.sqrt();
        assert!(w.iter().all(|v| v.abs() <= bound));
        // Uniform on ±bound has variance bound²/3.
        let var = w.iter().map(|v| v * v).sum::<f32>() / w.len() as f32;
        assert!(
            (var / (bound * bound / 3.0) - 1.0).abs() < 0.02,
            "variance ratio {}",
            var / (bound * bound / 3.0)
        );
        // BatchNorm1d(64) at index 2: γ = 1, β = 0.
        assert_eq!(graph.params[2].name, "2.weight");
        assert_eq!(a[2], vec![1.0; 64]);
        assert_eq!(a[3], vec![0.0; 64]);
    }
}
