//! BatchNorm1d in train mode and in eval mode, on features with a large mean and a small spread.
//!
//! Train mode normalizes each feature with the batch's own mean and (biased) variance, so its
//! output is zero-mean and unit-variance whatever the input's scale, and it updates the running
//! statistics: running = (1 − 0.1)·running + 0.1·batch, with the unbiased variance. Eval mode
//! normalizes with those running statistics instead, so one sample's output no longer depends
//! on the rest of its batch; once they have converged, eval ≈ train.
//!
//! Run with `cargo run --release --example batch_norm_train_vs_eval`.

use rand::RngExt;
use wgnn::gpu::{GpuContext, GpuTensor};
use wgnn::ops::batchnorm::{BatchNormConfig, GpuBatchNorm, RunningStats};
use wgnn::rng::{HostRng, seeded};

const N: usize = 256; // rows in a batch
const MEAN: [f32; 3] = [1e4, -50.0, 3.0]; // per feature: a large mean …
const STD: [f32; 3] = [0.1, 0.5, 2.0]; // … and a small spread

/// A batch x: [N, 3], feature f uniform with mean MEAN[f] and standard deviation STD[f].
fn batch(rng: &mut HostRng) -> Vec<f32> {
    let half_width = STD.map(|s| s * 3f32.sqrt());
    (0..N * 3)
        .map(|i| MEAN[i % 3] + rng.random_range(-half_width[i % 3]..half_width[i % 3]))
        .collect()
}

/// Per-feature mean and population std of x: [N, 3], in f64.
fn stats(x: &[f32]) -> [(f64, f64); 3] {
    std::array::from_fn(|f| {
        let col: Vec<f64> = x.iter().skip(f).step_by(3).map(|&v| f64::from(v)).collect();
        let mean = col.iter().sum::<f64>() / N as f64;
        let var = col.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / N as f64;
        (mean, var.sqrt())
    })
}

fn show(label: &str, x: &[f32]) {
    let s = stats(x);
    let cells: Vec<String> = s
        .iter()
        .map(|(m, sd)| format!("{m:>10.4} ± {sd:<7.4}"))
        .collect();
    println!("{label:<28}{}", cells.join("  "));
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let ctx = GpuContext::new()?;
    let config = BatchNormConfig::default(); // eps 1e-5, momentum 0.1, as nn.BatchNorm1d(3)
    // γ = 1, β = 0, running mean 0 and variance 1: PyTorch's initial state.
    let bn = GpuBatchNorm::new(&ctx, &[1.0; 3], &[0.0; 3], &RunningStats::new(3), config)?;
    let mut rng = seeded(0);
    let x = batch(&mut rng);
    let gx = GpuTensor::from_slice(&ctx, &x, &[N, 3], "x")?;

    println!("per feature: mean ± std over a batch of {N}");
    show("input", &x);
    let (y, _saved) = bn.forward_train(&ctx, &gx, false, None, 0)?;
    let y_train: Vec<f32> = y.read(&ctx)?;
    show("train mode (batch stats)", &y_train);
    // Up to f32: at 1e4 the input's resolution is 1e-3, a hundredth of feature 0's spread, and
    // eps = 1e-5 next to its variance 0.01 leaves its std at 0.9995.
    for (mean, std) in stats(&y_train) {
        assert!(
            mean.abs() < 1e-2 && (std - 1.0).abs() < 1e-3,
            "train output is standardized"
        );
    }

    // One batch moves the running statistics a tenth of the way towards the batch's.
    let running = bn.running_stats(&ctx)?;
    for (f, (mean, std)) in stats(&x).into_iter().enumerate() {
        let unbiased = std * std * N as f64 / (N - 1) as f64;
        let (want_mean, want_var) = (0.1 * mean, 0.9 * 1.0 + 0.1 * unbiased);
        println!(
            "feature {f}: running_mean 0 → {:<10.4} (0.1·{mean:.4}), running_var 1 → {:.6} (0.9 + 0.1·{unbiased:.6})",
            running.mean[f], running.var[f]
        );
        assert!((f64::from(running.mean[f]) - want_mean).abs() <= 1e-6 * want_mean.abs() + 1e-6);
        assert!((f64::from(running.var[f]) - want_var).abs() <= 1e-5 * want_var);
    }
    assert_eq!(running.num_batches_tracked, 1);

    // Eval mode on the same input uses the running statistics, which after one batch are far
    // from the batch's: the output is nowhere near standardized.
    let y_eval: Vec<f32> = bn.forward_eval(&ctx, &gx, false)?.read(&ctx)?;
    show("eval mode, after 1 batch", &y_eval);
    for (i, (&e, &xi)) in y_eval.iter().zip(&x).enumerate() {
        let f = i % 3;
        let want = (xi - running.mean[f]) / (running.var[f] + config.eps).sqrt();
        assert!(
            (e - want).abs() <= 1e-4 * want.abs() + 1e-4,
            "eval uses the running statistics"
        );
    }
    assert!(
        (y_eval[0] - y_train[0]).abs() > 100.0,
        "same input, different outputs"
    );

    // Many batches from the same distribution: the running statistics converge to its mean
    // and variance (0.9^300 ≈ 2e-14 of the initial state is left), and eval ≈ train.
    for step in 1..=300 {
        let xb = GpuTensor::from_slice(&ctx, &batch(&mut rng), &[N, 3], "x")?;
        bn.forward_train(&ctx, &xb, false, None, step)?;
    }
    let running = bn.running_stats(&ctx)?;
    println!(
        "after 301 batches: running_mean {:.4?}, running std {:.4?}",
        running.mean,
        running.var.iter().map(|v| v.sqrt()).collect::<Vec<_>>()
    );
    let y_eval: Vec<f32> = bn.forward_eval(&ctx, &gx, false)?.read(&ctx)?;
    let (y, _) = bn.forward_train(&ctx, &gx, false, None, 301)?;
    let y_train: Vec<f32> = y.read(&ctx)?;
    show("train mode, first batch", &y_train);
    show("eval mode, after 301", &y_eval);
    let diff: Vec<f32> = y_eval
        .iter()
        .zip(&y_train)
        .map(|(e, t)| (e - t).abs())
        .collect();
    let mean_diff = diff.iter().sum::<f32>() / diff.len() as f32;
    let max_diff = diff.iter().fold(0f32, |m, &d| m.max(d));
    println!("|eval − train| on the first batch: mean {mean_diff:.4}, max {max_diff:.4}");
    // What is left is the first batch's own sampling noise (its mean is off the population's
    // by about 1/√N = 0.06 standard deviations).
    assert!(
        mean_diff < 0.1 && max_diff < 0.5,
        "after many batches eval ≈ train"
    );
    Ok(())
}
