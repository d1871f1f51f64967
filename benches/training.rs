//! A whole training step and an eval forward of the lecture's MLP (BN, dropout 0.2,
//! cross-entropy, SGD momentum 0.9), GPU plan vs the CPU reference executor running the same
//! graph; and the MLP at batch 32 as a stack of M members, one stacked step vs M lone steps
//! in the same run. Throughput in samples (member-samples for the stacks).

mod common;

use std::time::{Duration, Instant};

use common::ctx;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use wgnn::Mode;
use wgnn::bench::{ResidentSteps, STACK_BATCH, batches, lecture_model};

fn steps(c: &mut Criterion) {
    let ctx = ctx();
    for (features, batch) in [(784usize, 128usize), (784, 1024), (3072, 128), (3072, 1024)] {
        let mut group = c.benchmark_group(format!("mlp{features}_b{batch}"));
        group
            .throughput(Throughput::Elements(batch as u64))
            .sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(3));
        for mode in [Mode::Train, Mode::Eval] {
            let name = match mode {
                Mode::Train => "train_step",
                Mode::Eval => "eval_forward",
            };
            let mut model = lecture_model(ctx.clone(), features, batch).unwrap();
            let data = batches(features, batch);
            let resident: Vec<_> = data
                .iter()
                .map(|(x, y)| model.upload_batch(x, y).unwrap())
                .collect();
            if mode == Mode::Eval {
                model.eval();
            }
            group.bench_function(BenchmarkId::new("gpu", name), |b| {
                b.iter_custom(|iters| {
                    model.synchronize().unwrap();
                    let start = Instant::now();
                    for i in 0..iters as usize {
                        let batch = &resident[i % resident.len()];
                        match mode {
                            Mode::Train => model.train_step_on(batch).unwrap(),
                            Mode::Eval => model.eval_step_on(batch).unwrap(),
                        }
                    }
                    model.synchronize().unwrap();
                    start.elapsed()
                })
            });
            let mut cpu = model.reference_executor().unwrap();
            let mut i = 0usize;
            group.bench_function(BenchmarkId::new("cpu_reference", name), |b| {
                b.iter(|| {
                    i += 1;
                    let (x, y) = &data[i % data.len()];
                    cpu.run(mode, x, y).unwrap()
                })
            });
        }
        group.finish();
    }
}

/// One stacked step of M members (each on its own resident batch) against M steps of a lone
/// model (on a pool as large as the stack's): both do the work of M lone steps, so their
/// times compare directly.
fn stacks(c: &mut Criterion) {
    let ctx = ctx();
    let (features, batch) = (784usize, STACK_BATCH);
    for mode in [Mode::Train, Mode::Eval] {
        let name = match mode {
            Mode::Train => "train_step",
            Mode::Eval => "eval_forward",
        };
        let mut group = c.benchmark_group(format!("mlp{features}_b{batch}_stacked_{name}"));
        group
            .sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(3));
        for members in [1usize, 16] {
            let mut stack =
                ResidentSteps::stack(ctx.clone(), features, batch, members, mode).unwrap();
            let mut lone =
                ResidentSteps::lone(ctx.clone(), features, batch, members, mode).unwrap();
            group.throughput(Throughput::Elements((members * batch) as u64));
            group.bench_function(BenchmarkId::new("stack", members), |b| {
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    stack.run(iters as usize).unwrap();
                    start.elapsed()
                })
            });
            group.bench_function(BenchmarkId::new("lone_steps", members), |b| {
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    lone.run(iters as usize * members).unwrap();
                    start.elapsed()
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, steps, stacks);
criterion_main!(benches);
