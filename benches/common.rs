//! Helpers shared by the criterion benchmarks.
#![allow(dead_code)]

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use wgnn::gpu::{Dispatch, GpuContext};

/// One context for the whole benchmark binary; its adapter is printed once.
pub fn ctx() -> Arc<GpuContext> {
    static CTX: OnceLock<Arc<GpuContext>> = OnceLock::new();
    CTX.get_or_init(|| {
        let ctx = GpuContext::new().unwrap_or_else(|e| panic!("benchmarks need an adapter: {e}"));
        eprintln!("adapter: {}", ctx.adapter());
        Arc::new(ctx)
    })
    .clone()
}

/// Time of `iters` repetitions of `dispatches`, recorded into one submit and waited for: GPU
/// time per repetition without a submit per repetition.
pub fn time_dispatches(ctx: &GpuContext, dispatches: &[&Dispatch], iters: u64) -> Duration {
    let list: Vec<&Dispatch> = (0..iters)
        .flat_map(|_| dispatches.iter().copied())
        .collect();
    ctx.wait_idle().expect("device");
    let start = Instant::now();
    // Chunks keep command buffers of very many repetitions reasonable.
    for chunk in list.chunks(4096) {
        ctx.submit(chunk);
    }
    ctx.wait_idle().expect("device");
    start.elapsed()
}

pub fn pattern(len: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
        .collect()
}
