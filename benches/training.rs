//! A whole training step and an eval forward of the lecture's MLP (BN, dropout 0.2,
//! cross-entropy, SGD momentum 0.9), GPU plan vs the CPU reference executor running the same
//! graph. Throughput in samples.

mod common;

use std::time::{Duration, Instant};

use common::ctx;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use wgnn::Mode;
use wgnn::bench::{batches, lecture_model};

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

criterion_group!(benches, steps);
criterion_main!(benches);
