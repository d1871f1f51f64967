//! Each kernel on the GPU against its CPU reference, in the same run. Matmul throughput is in
//! FLOPs (criterion prints them as "elem/s": read Gelem/s as GFLOP/s); the others in elements.

mod common;

use std::time::Duration;

use common::{ctx, pattern, time_dispatches};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use wgnn::gpu::GpuTensor;
use wgnn::graph::FlatState;
use wgnn::ops::activation::{self, GELU};
use wgnn::ops::batchnorm::{
    self, Affine, BatchNormConfig, GpuBatchNorm, LayerBindings, RunningStats,
};
use wgnn::ops::dropout::{self, DropProbability, MaskStream};
use wgnn::ops::matmul::{self, Epilogue, Layout, MatmulShape};
use wgnn::ops::reduce::TOTALS_LEN;
use wgnn::ops::softmax_xent::{self, CrossEntropyConfig, XentBindings};
use wgnn::ops::step::{StepBuffer, StepParams};
use wgnn::optim::{self, Optimizer, Sgd};

fn matmuls(c: &mut Criterion) {
    let ctx = ctx();
    let mut shapes: Vec<(String, MatmulShape)> = [128usize, 256, 512, 1024, 2048]
        .iter()
        .map(|&n| {
            (
                format!("square_{n}"),
                MatmulShape {
                    layout: Layout::NT,
                    m: n,
                    n,
                    k: n,
                },
            )
        })
        .collect();
    // The lecture MLP's first layer at batch 1024: forward (x·Wᵀ), dW (dyᵀ·x), and a dx.
    shapes.push((
        "mlp784_forward_b1024".into(),
        MatmulShape {
            layout: Layout::NT,
            m: 1024,
            n: 64,
            k: 784,
        },
    ));
    shapes.push((
        "mlp784_dweight_b1024".into(),
        MatmulShape {
            layout: Layout::TN,
            m: 64,
            n: 784,
            k: 1024,
        },
    ));
    shapes.push((
        "mlp_dx_64x32_b1024".into(),
        MatmulShape {
            layout: Layout::NN,
            m: 1024,
            n: 64,
            k: 32,
        },
    ));
    let mut group = c.benchmark_group("matmul");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sample_size(10);
    for (name, shape) in shapes {
        group.throughput(Throughput::Elements(shape.flops() as u64));
        let a = pattern(shape.m * shape.k);
        let b = pattern(shape.k * shape.n);
        let ga = GpuTensor::from_slice(&ctx, &a, &shape.a_shape(), "a").unwrap();
        let gb = GpuTensor::from_slice(&ctx, &b, &shape.b_shape(), "b").unwrap();
        let gc = GpuTensor::zeros(&ctx, &[shape.m, shape.n], "c").unwrap();
        let d = matmul::dispatch(
            &ctx,
            shape,
            Epilogue::default(),
            matmul::MatmulBindings {
                a: ga.binding(),
                b: gb.binding(),
                bias: None,
                c: gc.binding(),
            },
        )
        .unwrap();
        group.bench_function(BenchmarkId::new("gpu", &name), |bench| {
            bench.iter_custom(|iters| {
                time_dispatches(&ctx, &d.dispatches.iter().collect::<Vec<_>>(), iters)
            })
        });
        if shape.m * shape.n * shape.k <= 1 << 30 {
            group.bench_function(BenchmarkId::new("cpu_reference", &name), |bench| {
                bench.iter(|| matmul::reference(shape, &a, &b, None, false))
            });
        }
    }
    group.finish();
}

fn batch_norm(c: &mut Criterion) {
    let ctx = ctx();
    let (n, d) = (1024usize, 64usize);
    let x = pattern(n * d);
    let gamma = vec![1.0f32; d];
    let beta = vec![0.0f32; d];
    let bn = GpuBatchNorm::new(
        &ctx,
        &gamma,
        &beta,
        &RunningStats::new(d),
        BatchNormConfig::default(),
    )
    .unwrap();
    let gx = GpuTensor::from_slice(&ctx, &x, &[n, d], "x").unwrap();
    let saved = GpuTensor::zeros(&ctx, &[2, d], "saved").unwrap();
    let gy = GpuTensor::zeros(&ctx, &[n, d], "y").unwrap();
    let gdx = GpuTensor::zeros(&ctx, &[n, d], "dx").unwrap();
    let dgamma = GpuTensor::zeros(&ctx, &[d], "dgamma").unwrap();
    let dbeta = GpuTensor::zeros(&ctx, &[d], "dbeta").unwrap();
    let layer = LayerBindings {
        gamma: bn.gamma.binding(),
        beta: bn.beta.binding(),
        running: bn.running.binding(),
        num_batches_tracked: bn.num_batches_tracked.binding(),
        step: bn.steps.binding(),
    };
    let pass = batchnorm::Pass {
        n,
        d,
        config: BatchNormConfig::default(),
        relu: true,
        dropout: None,
    };
    let forward_bindings = batchnorm::ForwardBindings {
        layer,
        x: gx.binding(),
        saved: saved.binding(),
        y: gy.binding(),
    };
    let forward = batchnorm::train_dispatches(&ctx, &pass, forward_bindings).unwrap();
    let backward_bindings = batchnorm::BackwardBindings {
        x: gx.binding(),
        y: gy.binding(),
        dy: gx.binding(),
        saved: saved.binding(),
        gamma: bn.gamma.binding(),
        dgamma: dgamma.binding(),
        dbeta: dbeta.binding(),
        dx: gdx.binding(),
        dbias: None,
    };
    let backward = batchnorm::backward_dispatches(&ctx, &pass, backward_bindings).unwrap();
    let mut group = c.benchmark_group("batch_norm_1024x64");
    group
        .throughput(Throughput::Elements((n * d) as u64))
        .measurement_time(Duration::from_secs(2));
    group.bench_function("gpu_forward_train", |b| {
        b.iter_custom(|iters| time_dispatches(&ctx, &forward.iter().collect::<Vec<_>>(), iters))
    });
    group.bench_function("gpu_backward", |b| {
        b.iter_custom(|iters| time_dispatches(&ctx, &backward.iter().collect::<Vec<_>>(), iters))
    });
    let mut running = RunningStats::new(d);
    group.bench_function("cpu_reference_forward_train", |b| {
        b.iter(|| {
            batchnorm::reference_train(
                &x,
                (n, d),
                Affine {
                    gamma: &gamma,
                    beta: &beta,
                    config: BatchNormConfig::default(),
                    relu: true,
                },
                &mut running,
            )
        })
    });
    let (y, s) = batchnorm::reference_train(
        &x,
        (n, d),
        Affine {
            gamma: &gamma,
            beta: &beta,
            config: BatchNormConfig::default(),
            relu: true,
        },
        &mut running,
    );
    group.bench_function("cpu_reference_backward", |b| {
        b.iter(|| batchnorm::reference_backward(&x, &x, n, d, &gamma, &s, Some(&y)))
    });
    group.finish();
}

fn dropout_and_loss(c: &mut Criterion) {
    let ctx = ctx();
    let (n, d, classes) = (1024usize, 64usize, 10usize);
    let steps = StepBuffer::new(&ctx).unwrap();
    steps.write(
        &ctx,
        &StepParams {
            loss_scale: 1.0 / n as f32,
            seed_key: MaskStream::seed_key(1),
            ..StepParams::at_step(3)
        },
    );
    let p = DropProbability::new(0.2).unwrap();
    let stream = MaskStream { seed: 1, layer: 4 };
    let x = pattern(n * d);
    let gx = GpuTensor::from_slice(&ctx, &x, &[n, d], "x").unwrap();
    let gy = GpuTensor::zeros(&ctx, &[n, d], "y").unwrap();
    let masks = dropout::Masks {
        p: &[p],
        layer: stream.layer,
    };
    let drop = dropout::dispatch(
        &ctx,
        n * d,
        masks,
        steps.binding(),
        [gx.binding(), gy.binding()],
    )
    .unwrap();
    let mut group = c.benchmark_group("dropout_1024x64");
    group
        .throughput(Throughput::Elements((n * d) as u64))
        .measurement_time(Duration::from_secs(2));
    group.bench_function("gpu", |b| {
        b.iter_custom(|iters| time_dispatches(&ctx, &[&drop], iters))
    });
    group.bench_function("cpu_reference", |b| {
        b.iter(|| dropout::reference(&x, p, stream, 3))
    });
    group.finish();

    let logits = pattern(n * classes);
    let targets: Vec<i64> = (0..n).map(|i| (i % classes) as i64).collect();
    let t32: Vec<i32> = targets.iter().map(|&t| t as i32).collect();
    let gl = GpuTensor::from_slice(&ctx, &logits, &[n, classes], "logits").unwrap();
    let gt = GpuTensor::from_slice(&ctx, &t32, &[n], "targets").unwrap();
    let rows = GpuTensor::zeros(&ctx, &[n, 4], "rows").unwrap();
    let grad = GpuTensor::zeros(&ctx, &[n, classes], "grad").unwrap();
    let config = CrossEntropyConfig::default();
    let xent = softmax_xent::dispatch(
        &ctx,
        n,
        classes,
        &config,
        XentBindings {
            step: steps.binding(),
            logits: gl.binding(),
            targets: gt.binding(),
            weight: None,
            rows: rows.binding(),
            grad: Some(grad.binding()),
            totals: None,
            bias_grad: None,
        },
    )
    .unwrap();
    let mut group = c.benchmark_group("softmax_cross_entropy_1024x10");
    group
        .throughput(Throughput::Elements((n * classes) as u64))
        .measurement_time(Duration::from_secs(2));
    group.bench_function("gpu", |b| {
        b.iter_custom(|iters| time_dispatches(&ctx, &[&xent], iters))
    });
    group.bench_function("cpu_reference", |b| {
        b.iter(|| softmax_xent::reference(&logits, classes, &targets, &config))
    });
    group.finish();
}

/// Every activation's forward and backward over 2^20 elements (memory-bound kernels), and its
/// CPU reference forward.
fn activations(c: &mut Criterion) {
    let ctx = ctx();
    let len = 1usize << 20;
    let x = pattern(len);
    let gx = GpuTensor::from_slice(&ctx, &x, &[len], "x").unwrap();
    let gdy = GpuTensor::from_slice(&ctx, &pattern(len), &[len], "dy").unwrap();
    let gout = GpuTensor::zeros(&ctx, &[len], "out").unwrap();
    let mut all: Vec<activation::AnyActivation> = activation::TOKENS
        .iter()
        .map(|t| (t.parse)(&[]).unwrap())
        .collect();
    all.push(activation::AnyActivation::new(GELU::tanh()));
    let mut group = c.benchmark_group("activation_1m");
    group
        .throughput(Throughput::Elements(len as u64))
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    for act in &all {
        let name = act.spec();
        let forward =
            activation::forward_dispatch(&ctx, &**act, len, gx.binding(), gout.binding()).unwrap();
        let backward = activation::backward_dispatch(
            &ctx,
            &**act,
            len,
            gx.binding(),
            gdy.binding(),
            gout.binding(),
        )
        .unwrap();
        group.bench_function(BenchmarkId::new("gpu_forward", &name), |b| {
            b.iter_custom(|iters| time_dispatches(&ctx, &[&forward], iters))
        });
        group.bench_function(BenchmarkId::new("gpu_backward", &name), |b| {
            b.iter_custom(|iters| time_dispatches(&ctx, &[&backward], iters))
        });
        group.bench_function(BenchmarkId::new("cpu_reference_forward", &name), |b| {
            b.iter(|| activation::reference_forward(&**act, &x))
        });
    }
    group.finish();
}

/// SGD with momentum over the lecture MLP's 52,842 parameters: live (every gradient and
/// momentum buffer a normal float) and dead (zero gradients and momentum buffers decayed
/// into the subnormal range, where they stay: dead ReLU units, a saturated network). On CPU
/// adapters a float operation on a subnormal takes a microcode assist; the kernel steps
/// such elements without one (shaders/optim.wgsl), so the two should run alike.
fn optimizer(c: &mut Criterion) {
    let ctx = ctx();
    let len = 52_842usize;
    let padded = len.next_multiple_of(4);
    let sgd = Optimizer::Sgd(Sgd {
        lr: 2.0,
        momentum: 0.9,
        ..Sgd::default()
    });
    let steps = StepBuffer::new(&ctx).unwrap();
    let mut step = StepParams::at_step(1000);
    sgd.fill_step(1000, &mut step);
    steps.write(&ctx, &step);
    let totals = GpuTensor::zeros(&ctx, &[TOTALS_LEN], "totals").unwrap();
    let param = pattern(padded);
    let live = (pattern(padded), pattern(padded));
    let subnormal = |i: usize| f32::from_bits(1 + (i % 4) as u32);
    let dead = (vec![0.0; padded], (0..padded).map(subnormal).collect());
    let mut group = c.benchmark_group("sgd_momentum_52842");
    group
        .throughput(Throughput::Elements(len as u64))
        .measurement_time(Duration::from_secs(2));
    for (name, (grad, buf)) in [("live", live), ("dead", dead)] {
        let gp = GpuTensor::from_slice(&ctx, &param, &[padded], "param").unwrap();
        let gg = GpuTensor::from_slice(&ctx, &grad, &[padded], "grad").unwrap();
        let gb = GpuTensor::from_slice(&ctx, &buf, &[padded], "momentum").unwrap();
        let flat = FlatState {
            len,
            params: gp.binding(),
            grads: gg.binding(),
            optimizer: vec![gb.binding()],
        };
        let d = optim::dispatch(&ctx, &sgd, &flat, steps.binding(), totals.binding()).unwrap();
        group.bench_function(format!("gpu_{name}"), |b| {
            b.iter_custom(|iters| time_dispatches(&ctx, &[&d], iters))
        });
        let (mut p, mut state) = (param[..len].to_vec(), vec![buf[..len].to_vec()]);
        group.bench_function(format!("cpu_reference_{name}"), |b| {
            b.iter(|| sgd.reference_step(1000, &mut p, &grad[..len], &mut state))
        });
    }
    group.finish();
}

/// The adapter's FMA ceiling, which the matmul figures are judged against.
fn fma_ceiling(c: &mut Criterion) {
    let ctx = ctx();
    let peak = wgnn::bench::FmaPeak::new(&ctx).unwrap();
    let mut group = c.benchmark_group("fma_peak");
    group
        .throughput(Throughput::Elements(peak.flops as u64))
        .sample_size(10)
        .measurement_time(Duration::from_secs(2));
    group.bench_function("gpu", |b| {
        b.iter_custom(|iters| time_dispatches(&ctx, &[&peak.dispatch], iters))
    });
    group.finish();
}

criterion_group!(
    benches,
    fma_ceiling,
    matmuls,
    batch_norm,
    dropout_and_loss,
    activations,
    optimizer
);
criterion_main!(benches);
