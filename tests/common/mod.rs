//! Shared helpers for the integration tests.
#![allow(dead_code)]

pub mod cli;

use std::sync::{Arc, OnceLock};

use rand::RngExt;
use wgnn::gpu::GpuContext;
use wgnn::rng;

/// One GPU context per test binary. CI always has lavapipe: no adapter is a failure.
pub fn ctx() -> Arc<GpuContext> {
    static CTX: OnceLock<Arc<GpuContext>> = OnceLock::new();
    CTX.get_or_init(|| {
        Arc::new(GpuContext::new().unwrap_or_else(|e| panic!("GPU tests need an adapter: {e}")))
    })
    .clone()
}

/// Seeded uniform values in [lo, hi).
pub fn uniform(seed: u64, len: usize, lo: f32, hi: f32) -> Vec<f32> {
    let mut rng = rng::seeded(seed);
    (0..len).map(|_| rng.random_range(lo..hi)).collect()
}

/// Seeded labels below `classes`.
pub fn labels(seed: u64, len: usize, classes: u32) -> Vec<u32> {
    let mut rng = rng::seeded(seed);
    (0..len).map(|_| rng.random_range(0..classes)).collect()
}

/// A learnable batch: class c's samples are centred on a class-specific pattern.
pub fn batch(seed: u64, rows: usize, features: usize, classes: u32) -> (Vec<f32>, Vec<u32>) {
    let y = labels(seed, rows, classes);
    let noise = uniform(seed + 1, rows * features, -1.0, 1.0);
    let x = (0..rows * features)
        .map(|i| {
            let (r, f) = (i / features, i % features);
            let centre = if (f as u32 + y[r]).is_multiple_of(classes) {
                1.5
            } else {
                0.0
            };
            centre + noise[i]
        })
        .collect();
    (x, y)
}
