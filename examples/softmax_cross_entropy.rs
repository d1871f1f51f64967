//! Softmax and cross-entropy on a hand-made batch, by wgnn's kernels and by hand side by side.
//!
//! softmax(z)_j = e^(z_j) / Σ_k e^(z_k) turns a row of logits into probabilities; the
//! cross-entropy of a row with target class t is −log softmax(z)_t, and its gradient is
//! softmax(z) − one_hot(t), divided by N when the loss is the batch mean. Computed as written,
//! e^(1e4) overflows; subtracting the row's maximum m first changes nothing mathematically
//! (softmax(z − m) = softmax(z)) and keeps every exponent ≤ 0. The binary case, one logit per
//! row, is the same story with the sigmoid.
//!
//! Run with `cargo run --release --example softmax_cross_entropy`.

use wgnn::check::{Tolerance, assert_close};
use wgnn::gpu::{GpuContext, GpuTensor};
use wgnn::ops::bce::{BceConfig, bce_with_logits};
use wgnn::ops::softmax_xent::{CrossEntropyConfig, Reduction, cross_entropy, softmax};

const C: usize = 3;
#[rustfmt::skip]
const LOGITS: [f32; 4 * C] = [
    2.0, 1.0, 0.1,          // target 0: a confident, right answer
    0.5, 2.5, -1.0,         // target 2: a confident, wrong one
    1e4, 0.0, -1e4,         // target 0: e^(1e4) overflows f32 …
    -1e4, -9999.0, -9998.0, // target 2: … e^(−1e4) underflows; the softmax of [−2, −1, 0]
];
const TARGETS: [i64; 4] = [0, 2, 0, 2];
const TOL: Tolerance = Tolerance::new(1e-6, 1e-5);

/// log Σ e^z with the max shifted out, in f64.
fn log_sum_exp(row: &[f32]) -> f64 {
    let m = row.iter().fold(f64::NEG_INFINITY, |m, &z| m.max(z.into()));
    m + row
        .iter()
        .map(|&z| (f64::from(z) - m).exp())
        .sum::<f64>()
        .ln()
}

/// Prints a titled table: per row, `c` values of each column.
fn table(title: &str, c: usize, columns: &[(&str, &[f32])]) {
    let cell = |h: &str| format!("{h:>w$}", w = 11 * c);
    let heads: Vec<String> = columns.iter().map(|(h, _)| cell(h)).collect();
    println!("{title}\n{}", heads.join(" | "));
    for r in 0..columns[0].1.len() / c {
        let row = |v: &[f32]| {
            v[r * c..(r + 1) * c]
                .iter()
                .map(|x| format!("{x:>11.4}"))
                .collect()
        };
        let cells: Vec<String> = columns.iter().map(|(_, v)| row(v)).collect();
        println!("{}", cells.join(" | "));
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let ctx = GpuContext::new()?;
    let n = TARGETS.len();
    let logits = GpuTensor::from_slice(&ctx, &LOGITS, &[n, C], "logits")?;

    // By hand: as written (f32), and with the max shifted out (log-sum-exp, f64).
    let naive: Vec<f32> = LOGITS
        .chunks(C)
        .flat_map(|row| {
            row.iter()
                .map(|z| z.exp() / row.iter().map(|z| z.exp()).sum::<f32>())
        })
        .collect();
    let lse: Vec<f64> = LOGITS.chunks(C).map(log_sum_exp).collect();
    let probs: Vec<f32> = (0..n * C)
        .map(|i| (f64::from(LOGITS[i]) - lse[i / C]).exp() as f32)
        .collect();
    let target = |r: usize| TARGETS[r] as usize;
    let loss: Vec<f32> = (0..n)
        .map(|r| (lse[r] - f64::from(LOGITS[r * C + target(r)])) as f32)
        .collect();
    let grad: Vec<f32> = (0..n * C)
        .map(|i| (probs[i] - if i % C == target(i / C) { 1.0 } else { 0.0 }) / n as f32)
        .collect();

    // wgnn: softmax, then cross-entropy per row (reduction 'none') and as the batch mean.
    let gpu_probs: Vec<f32> = softmax(&ctx, &logits)?.read(&ctx)?;
    let per_row = CrossEntropyConfig {
        reduction: Reduction::None,
        ..Default::default()
    };
    let (gpu_loss, _) = cross_entropy(&ctx, &logits, &TARGETS, &per_row)?;
    let (gpu_mean, gpu_grad) = cross_entropy(&ctx, &logits, &TARGETS, &Default::default())?;
    let gpu_grad: Vec<f32> = gpu_grad.read(&ctx)?;

    let columns = [
        ("e^z / Σe^z", &naive[..]),
        ("shifted, by hand", &probs),
        ("wgnn", &gpu_probs),
    ];
    table("softmax by row", C, &columns);
    let sums: Vec<f32> = gpu_probs.chunks(C).map(|row| row.iter().sum()).collect();
    println!("wgnn's row sums {sums:?}");
    assert_close("softmax", &gpu_probs, &probs, TOL);
    assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-6), "rows sum to 1");
    assert!(naive[2 * C..].iter().any(|p| p.is_nan()), "as written: NaN");

    let mean = loss.iter().sum::<f32>() / n as f32;
    println!("cross-entropy −log p_target by row: by hand {loss:.4?}, wgnn {gpu_loss:.4?}");
    println!("mean: by hand {mean:.4}, wgnn {:.4}", gpu_mean[0]);
    assert_close("loss per row", &gpu_loss, &loss, TOL);
    assert_close("mean loss", &gpu_mean, &[mean], TOL);

    // Each row pushes its target's logit up and the others down: the wrong row 1 hardest,
    // row 2, already certain of its target, not at all.
    table(
        "∂mean/∂z = (softmax − one_hot)/N",
        C,
        &[("by hand", &grad[..]), ("wgnn", &gpu_grad)],
    );
    assert_close("dlogits", &gpu_grad, &grad, TOL);

    // Binary: p = σ(z), loss −[y·log p + (1 − y)·log(1 − p)]. As written σ(1e4) rounds to 1
    // and log(1 − p) = −∞; the stable form is max(z, 0) − z·y + log(1 + e^−|z|).
    let z = [3.0f32, -2.0, 0.0, 1e4, -1e4];
    let y = [1.0f32, 0.0, 1.0, 0.0, 0.0];
    let sigmoid = |z: f32| 1.0 / (1.0 + (-z).exp());
    let pairs = || z.iter().zip(&y).map(|(&z, &y)| (z, y));
    let naive: Vec<f32> = pairs()
        .map(|(z, y)| -(y * sigmoid(z).ln() + (1.0 - y) * (1.0 - sigmoid(z)).ln()))
        .collect();
    let stable: Vec<f32> = pairs()
        .map(|(z, y)| z.max(0.0) - z * y + (-z.abs()).exp().ln_1p())
        .collect();
    let grad: Vec<f32> = pairs().map(|(z, y)| (sigmoid(z) - y) / 5.0).collect();
    let gz = GpuTensor::from_slice(&ctx, &z, &[5], "z")?;
    let per_row = BceConfig {
        reduction: Reduction::None,
        ..Default::default()
    };
    let (gpu_loss, _) = bce_with_logits(&ctx, &gz, &y, per_row)?;
    let (gpu_mean, gpu_grad) = bce_with_logits(&ctx, &gz, &y, BceConfig::default())?;
    let gpu_grad: Vec<f32> = gpu_grad.read(&ctx)?;
    let columns = [
        ("z", &z[..]),
        ("y", &y),
        ("as written", &naive),
        ("stable", &stable),
        ("wgnn", &gpu_loss),
        ("grad, hand", &grad),
        ("grad, wgnn", &gpu_grad),
    ];
    table(
        "BCE with logits by row, and ∂mean/∂z = (σ(z) − y)/N",
        1,
        &columns,
    );
    let mean = stable.iter().sum::<f32>() / 5.0;
    println!(
        "mean: by hand {mean:.4}, wgnn {:.4} (z = 1e4 with y = 0 costs 1e4)",
        gpu_mean[0]
    );
    assert!(naive[3].is_infinite(), "as written, the loss overflows");
    assert_close("bce per row", &gpu_loss, &stable, TOL);
    assert_close("bce mean", &gpu_mean, &[mean], TOL);
    assert_close("bce gradient", &gpu_grad, &grad, TOL);
    Ok(())
}
