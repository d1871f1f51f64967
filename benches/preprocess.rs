//! Fitting the preprocessing options: PCA on an MNIST-sized split and on a CIFAR-10-sized
//! one (50,000 × 3,072, the bound: under a minute on 2 cores), and the covariance
//! product that dominates it — faer in f64 (what `Transform::fit` uses) against wgnn's GPU
//! matmul (TN, f32) on one chunk of rows. Products are in FLOPs (criterion's "elem/s").

mod common;

use std::time::Duration;

use common::{ctx, pattern, time_dispatches};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use faer::{Accum, Mat, Par};
use wgnn::data::{Dataset, Preprocess, Transform};
use wgnn::gpu::GpuTensor;
use wgnn::ops::matmul::{self, Epilogue, Layout, MatmulShape};

fn data(n: usize, shape: &[usize]) -> Dataset {
    let d: usize = shape.iter().product();
    // Pixels in [0, 1), correlated along each row so the spectrum is not flat.
    let noise = pattern(n * d);
    let x: Vec<f32> = noise
        .iter()
        .enumerate()
        .map(|(i, &v)| 0.5 + 0.25 * v + 0.2 * ((i % d) as f32 / d as f32))
        .collect();
    Dataset::new(x, shape.to_vec(), vec![0; n], "synthetic").unwrap()
}

fn fit(c: &mut Criterion) {
    let mut group = c.benchmark_group("preprocess_fit");
    group
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_secs(10))
        .sample_size(10);
    let mnist = data(8000, &[1, 28, 28]);
    for option in ["per-channel", "pca:50", "pca-whiten:50", "zca"] {
        let kind: Preprocess = option.parse().unwrap();
        group.bench_function(BenchmarkId::new("mnist_8000x784", option), |b| {
            b.iter(|| Transform::fit(kind, &mnist).unwrap())
        });
    }
    let cifar = data(50_000, &[3, 32, 32]);
    group.measurement_time(Duration::from_secs(60));
    group.bench_function(BenchmarkId::new("cifar_50000x3072", "pca:100"), |b| {
        b.iter(|| Transform::fit(Preprocess::Pca(100), &cifar).unwrap())
    });
    group.finish();
}

fn covariance(c: &mut Criterion) {
    let (rows, d) = (8192usize, 3072usize);
    let mut group = c.benchmark_group("covariance_chunk_8192x3072");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(10))
        .sample_size(10)
        .throughput(Throughput::Elements((2 * rows * d * d) as u64));
    let x = pattern(rows * d);
    let chunk = Mat::<f64>::from_fn(rows, d, |i, j| f64::from(x[i * d + j]));
    let mut cov = Mat::<f64>::zeros(d, d);
    group.bench_function("faer_f64", |b| {
        b.iter(|| {
            faer::linalg::matmul::matmul(
                cov.as_mut(),
                Accum::Replace,
                chunk.transpose(),
                chunk.as_ref(),
                1.0,
                Par::rayon(0),
            )
        })
    });
    let ctx = ctx();
    let shape = MatmulShape {
        layout: Layout::TN,
        m: d,
        n: d,
        k: rows,
    };
    let gx = GpuTensor::from_slice(&ctx, &x, &[rows, d], "x").unwrap();
    let gc = GpuTensor::zeros(&ctx, &[d, d], "c").unwrap();
    let launch = matmul::dispatch(
        &ctx,
        shape,
        Epilogue::default(),
        matmul::MatmulBindings {
            a: gx.binding(),
            b: gx.binding(),
            bias: None,
            c: gc.binding(),
        },
    )
    .unwrap();
    group.bench_function("wgnn_gpu_tn_f32", |b| {
        b.iter_custom(|iters| {
            time_dispatches(&ctx, &launch.dispatches.iter().collect::<Vec<_>>(), iters)
        })
    });
    group.finish();
}

criterion_group!(benches, fit, covariance);
criterion_main!(benches);
