//! Which input preprocessing helps? The lecture MLP trained on the embedded MNIST digits under
//! several preprocessings, each with two seeds, compared by final test accuracy.
//!
//! Every preprocessing is fitted on the training split only, and the same fitted transform is
//! applied to the test split (inside the model: raw pixels go in, in train and eval alike):
//! statistics taken from the test data would leak it into training. Comparing means over
//! seeds, not one run each, keeps the noise of the initialization and the shuffling out of
//! the verdict.
//!
//! Run with `cargo run --release --example compare_normalization`.

use std::sync::Arc;
use std::time::Instant;

use wgnn::data::{Preprocess, Split, Transform, embedded};
use wgnn::gpu::GpuContext;
use wgnn::nn::{CrossEntropyLoss, Sequential};
use wgnn::optim::{Optimizer, Sgd};
use wgnn::train::{FitOptions, Silent, fit};
use wgnn::{Model, ModelConfig};

const EPOCHS: usize = 3;
const SEEDS: [u64; 2] = [0, 1];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let ctx = Arc::new(GpuContext::new()?);
    let (train, test) = (
        embedded::mnist(Split::Train)?,
        embedded::mnist(Split::Test)?,
    );
    // The raw pixels; "subtract the per-channel mean and divide by its std"; PCA whitening.
    let options = [
        Preprocess::None,
        Preprocess::PerChannel,
        Preprocess::PcaWhiten(50),
    ];
    println!(
        "{} training and {} test digits; {EPOCHS} epochs of SGD (lr 0.02, momentum 0.9), batch 32",
        train.len(),
        test.len()
    );
    println!(
        "{:<14} {:>9} {:>9} {:>9}  {:>6}",
        "preprocessing", "seed 0", "seed 1", "mean", "time"
    );
    let mut means = Vec::new();
    for kind in options {
        let start = Instant::now();
        // Fitted once on the training split; `None` for Preprocess::None.
        let transform = Transform::fit(kind, &train)?;
        if let Some(t) = &transform
            && kind == Preprocess::PerChannel
        {
            // What "per-channel" means: the training pixels come out with mean 0, std 1.
            let y = t.apply(&train.features);
            let mean = y.iter().map(|&v| f64::from(v)).sum::<f64>() / y.len() as f64;
            let var = y
                .iter()
                .map(|&v| (f64::from(v) - mean).powi(2))
                .sum::<f64>()
                / y.len() as f64;
            assert!(
                mean.abs() < 1e-4 && (var.sqrt() - 1.0).abs() < 1e-4,
                "standardized"
            );
        }
        let features = transform
            .as_ref()
            .map_or(train.sample_len(), Transform::output_features);
        let transform = transform.map(Arc::new);
        let mut accuracies = Vec::new();
        for seed in SEEDS {
            let layers = Sequential::lecture_mlp(features, 10, 0.2);
            let sgd = Optimizer::Sgd(Sgd {
                lr: 0.02,
                momentum: 0.9,
                ..Sgd::default()
            });
            let config = ModelConfig {
                sample_shape: train.sample_shape.clone(),
                batch_size: 32,
                seed,
            };
            let loss = CrossEntropyLoss::new().into();
            let mut model = Model::build(
                ctx.clone(),
                transform.clone(),
                layers,
                loss,
                sgd,
                config,
                None,
            )?;
            let fit_options = FitOptions {
                epochs: EPOCHS,
                shuffle_seed: Some(seed),
                ..FitOptions::default()
            };
            let history = fit(
                &mut model,
                &train,
                &test,
                &fit_options,
                &mut Silent,
                |_, _| Ok(()),
            )?;
            accuracies.push(history.last().expect("EPOCHS > 0").test_accuracy);
        }
        let mean = accuracies.iter().sum::<f64>() / accuracies.len() as f64;
        println!(
            "{:<14} {:>8.2}% {:>8.2}% {:>8.2}%  {:>5.1}s",
            kind.to_string(),
            100.0 * accuracies[0],
            100.0 * accuracies[1],
            100.0 * mean,
            start.elapsed().as_secs_f64()
        );
        means.push((kind, mean));
    }
    let (best, best_mean) = means
        .iter()
        .copied()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .expect("options");
    println!(
        "best: {best} ({:.2} % mean test accuracy over seeds {SEEDS:?})",
        100.0 * best_mean
    );
    // Every option trains this MLP, and the gaps are small: the batch norm after the first
    // Linear removes any constant shift of the input (W(x − μ) and Wx differ by a constant per
    // unit), so centring changes the optimizer's path, not what the model computes.
    assert!(
        means.iter().all(|&(_, m)| m > 0.9),
        "every preprocessing reaches 90 %"
    );
    Ok(())
}
