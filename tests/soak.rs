//! Soak: 20,000 training steps keep the resident GPU memory and the host's memory flat.
//! In a test binary of its own, so the process's memory is this test's alone. Run with
//! `--nocapture` to see the figures.

use std::sync::Arc;

use wgnn::gpu::GpuContext;
use wgnn::nn::{CrossEntropyLoss, Sequential};
use wgnn::optim::{Optimizer, Sgd};
use wgnn::{Model, ModelConfig};

/// Resident set size of this process in bytes (Linux /proc; None elsewhere).
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

#[test]
fn twenty_thousand_steps_keep_gpu_and_host_memory_flat() {
    const STEPS: usize = 20_000;
    let ctx = Arc::new(GpuContext::new().expect("an adapter"));
    let (features, batch) = (32usize, 16usize);
    let sgd = Optimizer::Sgd(Sgd {
        lr: 0.01,
        momentum: 0.9,
        ..Sgd::default()
    });
    let config = ModelConfig {
        sample_shape: vec![features],
        batch_size: batch,
        seed: 3,
    };
    let mut model = Model::new(
        ctx.clone(),
        Sequential::lecture_mlp(features, 10, 0.2),
        CrossEntropyLoss::new(),
        sgd,
        config,
    )
    .unwrap();
    let data: Vec<(Vec<f32>, Vec<u32>)> = (0..4)
        .map(|i| {
            let x = (0..batch * features)
                .map(|j| ((i * 31 + j * 7) % 17) as f32 / 17.0 - 0.5)
                .collect();
            let y = (0..batch).map(|j| ((i + j) % 10) as u32).collect();
            (x, y)
        })
        .collect();
    let mut samples = Vec::new();
    let mut baseline = None;
    for step in 0..STEPS {
        let (x, y) = &data[step % data.len()];
        model.train_step(x, y).unwrap();
        if step % 500 == 499 {
            model.request_metrics();
        }
        model.poll_metrics().unwrap();
        if step % 1000 == 999 {
            model.synchronize().unwrap();
            let sample = (
                step + 1,
                model.resident_bytes(),
                ctx.counters(),
                rss_bytes(),
            );
            // The first thousand steps warm up the allocator and driver caches.
            if step + 1 == 1000 {
                baseline = Some(sample);
            }
            samples.push(sample);
        }
    }
    let (_, gpu0, counters0, rss0) = baseline.expect("a baseline sample");
    let totals = model.read_metrics().unwrap();
    assert_eq!(model.step(), STEPS as u64);
    assert!(totals.mean_loss().is_finite());
    for &(step, gpu, counters, rss) in &samples {
        assert_eq!(gpu, gpu0, "resident GPU bytes at step {step}");
        assert_eq!(
            counters, counters0,
            "GPU buffers and pipelines created by step {step}"
        );
        if let (Some(rss), Some(rss0)) = (rss, rss0) {
            let growth = rss as i64 - rss0 as i64;
            assert!(
                growth < 8 << 20,
                "host RSS grew {growth} bytes from step 1000 to {step}"
            );
        }
    }
    let last = samples.last().expect("samples");
    println!(
        "soak: {STEPS} steps; resident GPU bytes {} (flat); host RSS {:.1} MiB at step 1000, {:.1} MiB at step {}",
        gpu0,
        rss0.unwrap_or(0) as f64 / 1048576.0,
        last.3.unwrap_or(0) as f64 / 1048576.0,
        last.0
    );
}
