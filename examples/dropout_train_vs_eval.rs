//! Dropout, p = 0.5, on a vector of ones: `nn.Dropout` in train mode and in eval mode.
//!
//! Train mode zeroes each element with probability p and scales the survivors by 1/(1-p)
//! ("inverted dropout", as PyTorch does it), so the expected value of every element is
//! unchanged and nothing has to be rescaled at test time: eval mode is the identity.
//!
//! Run with `cargo run --release --example dropout_train_vs_eval`.

use std::sync::Arc;

use wgnn::gpu::{GpuContext, GpuTensor};
use wgnn::nn::{CrossEntropyLoss, Dropout, Linear, Sequential};
use wgnn::ops::dropout::{DropProbability, MaskStream, dropout, reference};
use wgnn::optim::{Optimizer, Sgd};
use wgnn::{Model, ModelConfig};

const P: f32 = 0.5;
const N: usize = 10_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let ctx = Arc::new(GpuContext::new()?);
    let ones = vec![1.0f32; N];
    let x = GpuTensor::from_slice(&ctx, &ones, &[N], "x")?;

    // Train mode. The mask is not stored anywhere: it is a pure function of (seed, layer,
    // step), drawn from Philox on the device, so the backward pass (and a resumed run) can
    // recompute exactly the same one.
    let stream = MaskStream { seed: 0, layer: 0 };
    let y: Vec<f32> = dropout(&ctx, &x, P, stream, 0)?.read(&ctx)?;
    let zeros = y.iter().filter(|&&v| v == 0.0).count();
    let twos = y.iter().filter(|&&v| v == 2.0).count();
    let mean = y.iter().map(|&v| f64::from(v)).sum::<f64>() / N as f64;
    println!("train mode, step 0: first 16 outputs {:?}", &y[..16]);
    println!(
        "  {zeros} of {N} are 0 ({:.2} %), {twos} are 2 = 1/(1-p); mean {mean:.4} (the input's is 1)",
        100.0 * zeros as f64 / N as f64
    );
    assert_eq!(
        zeros + twos,
        N,
        "every element is dropped or scaled by 1/(1-p)"
    );
    assert!(
        (zeros as f64 / N as f64 - 0.5).abs() < 0.02,
        "about half are dropped"
    );
    assert!(
        (mean - 1.0).abs() < 0.04,
        "inverted dropout keeps the expected value"
    );

    // Same (seed, layer, step): the same mask, also from the plain-Rust CPU reference.
    let again: Vec<f32> = dropout(&ctx, &x, P, stream, 0)?.read(&ctx)?;
    let cpu = reference(&ones, DropProbability::new(P)?, stream, 0);
    assert_eq!(y, again, "the mask is reproducible");
    assert_eq!(y, cpu, "the GPU draws the CPU reference's bits");
    println!("  the same (seed 0, layer 0, step 0) again, and the CPU reference: identical");

    // Another step or another layer: a fresh mask, independent of the first (about half of
    // the elements agree, as two coin flips do).
    let next: Vec<f32> = dropout(&ctx, &x, P, stream, 1)?.read(&ctx)?;
    let other_layer = MaskStream { seed: 0, layer: 1 };
    let layer1: Vec<f32> = dropout(&ctx, &x, P, other_layer, 0)?.read(&ctx)?;
    let agree = |a: &[f32], b: &[f32]| a.iter().zip(b).filter(|(u, v)| u == v).count();
    println!("step 1:  first 16 outputs {:?}", &next[..16]);
    println!(
        "  agrees with step 0 on {:.1} % of the elements; layer 1 at step 0 on {:.1} %",
        100.0 * agree(&y, &next) as f64 / N as f64,
        100.0 * agree(&y, &layer1) as f64 / N as f64
    );
    for other in [&next, &layer1] {
        assert!((agree(&y, other) as f64 / N as f64 - 0.5).abs() < 0.02);
    }

    // Averaged over many steps, every element's output tends to its input: E[y] = x.
    let steps = 200;
    let mut sum = [0.0f64; 8];
    for step in 0..steps {
        let y: Vec<f32> = dropout(&ctx, &x, P, stream, step)?.read(&ctx)?;
        for (s, &v) in sum.iter_mut().zip(&y) {
            *s += f64::from(v);
        }
    }
    let avg: Vec<f64> = sum.iter().map(|s| s / steps as f64).collect();
    println!("mean over {steps} steps of the first 8 elements: {avg:.2?}");
    // Each average has standard deviation 1/√200 ≈ 0.07.
    assert!(avg.iter().all(|a| (a - 1.0).abs() < 0.3));

    // Eval mode: nn.Sequential(nn.Dropout(0.5), nn.Linear(N, 10)) after model.eval() predicts
    // exactly what the same Linear alone predicts (the plan does not even run a kernel for
    // the dropout: its output is its input's buffer).
    let config = ModelConfig {
        sample_shape: vec![N],
        batch_size: 1,
        seed: 0,
    };
    let sgd = Optimizer::Sgd(Sgd::default());
    let with_dropout = Sequential::new()
        .append(Dropout::new(P))
        .append(Linear::new(N, 10));
    let mut model = Model::new(
        ctx.clone(),
        with_dropout,
        CrossEntropyLoss::new(),
        sgd,
        config.clone(),
    )?;
    let linear_only = Sequential::new().append(Linear::new(N, 10));
    let state = model.state()?;
    let mut plain = Model::with_state(
        ctx,
        linear_only,
        CrossEntropyLoss::new(),
        sgd,
        config,
        state,
    )?;
    model.eval();
    plain.eval();
    let (out, want) = (model.predict(&ones)?, plain.predict(&ones)?);
    println!("eval mode: Dropout → Linear gives {:.4?}", &out[..4]);
    println!("           Linear alone gives  {:.4?}", &want[..4]);
    assert_eq!(out, want, "eval mode is the identity");
    println!("  all 10 logits equal bit for bit: in eval mode dropout is the identity");
    Ok(())
}
