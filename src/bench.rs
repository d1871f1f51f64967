//! The workloads of `wgnn bench`: the adapter's FMA ceiling, square matmuls, the lecture's MLP
//! training step and eval forward (data resident on the device), stacks of the MLP against
//! lone steps ([`stack`]), and the time to a first step — each on the GPU and, where it is
//! meaningful, on the CPU reference in the same run. `benches/torch_reference.py` runs the
//! same names in PyTorch (but for the stacks) and prints the same JSON.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::Result;
use crate::gpu::uniform_struct;
use crate::gpu::{GpuContext, GpuTensor, Kernel, Shader};
use crate::nn::{CrossEntropyLoss, Sequential};
use crate::ops::matmul::{self, Epilogue, Layout, MatmulBindings, MatmulShape};
use crate::optim::{Optimizer, Sgd};
use crate::{Mode, Model, ModelConfig};

pub mod stack;

pub use stack::{
    ResidentSteps, STACK_BATCH, STACK_MEMBERS, StackFigures, lecture_stack, stack_records,
    stack_vs_lone,
};

/// One figure, as both `wgnn bench --json` and `benches/torch_reference.py` print it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Record {
    pub name: String,
    pub value: f64,
    pub unit: String,
    pub device: String,
}

/// How long to measure.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    /// Minimum time of one timed round.
    pub round: Duration,
    /// Rounds; the median is reported.
    pub rounds: usize,
    /// Also time the CPU reference (slow for the large sizes).
    pub cpu_reference: bool,
}

impl Budget {
    pub fn full() -> Self {
        Self {
            round: Duration::from_millis(700),
            rounds: 3,
            cpu_reference: true,
        }
    }

    pub fn quick() -> Self {
        Self {
            round: Duration::from_millis(150),
            rounds: 1,
            cpu_reference: false,
        }
    }
}

/// Seconds per repetition of `f(reps)`: the repetition count doubles until a round lasts at
/// least `budget.round`; the median of `budget.rounds` rounds.
pub fn time_per_rep(budget: Budget, mut f: impl FnMut(usize) -> Result<()>) -> Result<f64> {
    let mut reps = 1usize;
    loop {
        let start = Instant::now();
        f(reps)?;
        if start.elapsed() >= budget.round / 4 || reps >= 1 << 20 {
            break;
        }
        reps *= 2;
    }
    let target = budget.round.as_secs_f64();
    let mut samples = Vec::new();
    while samples.len() < budget.rounds.max(1) {
        let start = Instant::now();
        f(reps)?;
        let elapsed = start.elapsed().as_secs_f64();
        if elapsed < target && reps < 1 << 24 {
            reps = ((reps as f64 * target / elapsed.max(1e-9)).ceil() as usize).max(reps + 1);
            continue;
        }
        samples.push(elapsed / reps as f64);
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples[samples.len() / 2])
}

uniform_struct! {
    struct PeakParams {
        iterations: u32,
        scale: f32,
        offset: f32,
        _pad: u32,
    }
}

/// A register-only FMA kernel ready to dispatch: 8 independent vec4 chains per invocation.
pub struct FmaPeak {
    pub dispatch: crate::gpu::Dispatch,
    /// FLOPs of one dispatch (2 per FMA).
    pub flops: f64,
    _out: GpuTensor,
}

impl FmaPeak {
    pub fn new(ctx: &GpuContext) -> Result<Self> {
        // Enough invocations to fill a large GPU; a CPU adapter needs far fewer.
        let groups = if ctx.adapter().is_cpu() {
            1024u32
        } else {
            32768
        };
        let iterations = 2048u32;
        let out = GpuTensor::zeros(ctx, &[groups as usize * 64], "fma out")?;
        let params = PeakParams {
            iterations,
            scale: 0.999,
            offset: 1e-3,
            _pad: 0,
        };
        let dispatch = ctx.dispatch(
            &Kernel::new(Shader::Bench, "fma_peak"),
            Some(&params),
            &[out.binding()],
            [groups, 1, 1],
        )?;
        Ok(Self {
            dispatch,
            flops: f64::from(groups) * 64.0 * f64::from(iterations) * 32.0 * 2.0,
            _out: out,
        })
    }
}

/// GFLOP/s of the register-only FMA kernel: the ceiling matmul is judged against.
pub fn fma_peak(ctx: &GpuContext, budget: Budget) -> Result<f64> {
    let peak = FmaPeak::new(ctx)?;
    let seconds = time_per_rep(budget, |reps| {
        let list: Vec<_> = (0..reps).map(|_| &peak.dispatch).collect();
        ctx.submit(&list);
        Ok(ctx.wait_idle()?)
    })?;
    Ok(peak.flops / seconds / 1e9)
}

/// The fixed costs of the device's queue that a step pays whatever its arithmetic: a
/// dispatch of one workgroup doing nothing to speak of, within a chain of such dispatches that
/// each write the buffer the one before wrote (so each waits for the one before, as a step's
/// dispatches do), and a submit of one such dispatch with the wait for it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct DispatchCost {
    /// Seconds each further dispatch of a chain adds.
    pub dispatch_seconds: f64,
    /// Seconds of a submit and its wait, beyond its one dispatch.
    pub submit_seconds: f64,
}

/// Dispatches in the chain [`dispatch_cost`] times (a step of the lecture's MLP has 6–16).
const CHAIN: usize = 64;

/// Measures [`DispatchCost`]: one dispatch per submit, then `CHAIN` (64) per submit.
pub fn dispatch_cost(ctx: &GpuContext, budget: Budget) -> Result<DispatchCost> {
    let out = GpuTensor::zeros(ctx, &[64], "dispatch cost out")?;
    let params = PeakParams {
        iterations: 1,
        scale: 0.5,
        offset: 0.0,
        _pad: 0,
    };
    let dispatch = ctx.dispatch(
        &Kernel::new(Shader::Bench, "fma_peak"),
        Some(&params),
        &[out.binding()],
        [1, 1, 1],
    )?;
    let submits = |chain: usize| {
        let list = vec![&dispatch; chain];
        time_per_rep(budget, |reps| {
            for _ in 0..reps {
                ctx.submit(&list);
                ctx.wait_idle()?;
            }
            Ok(())
        })
    };
    let one = submits(1)?;
    let chain = submits(CHAIN)?;
    let dispatch_seconds = (chain - one) / (CHAIN - 1) as f64;
    Ok(DispatchCost {
        dispatch_seconds,
        submit_seconds: one - dispatch_seconds,
    })
}

/// GFLOP/s of an n×n×n matmul (A·Bᵀ, the Linear forward's layout) on the GPU.
pub fn matmul_gpu(ctx: &GpuContext, shape: MatmulShape, budget: Budget) -> Result<f64> {
    let a = GpuTensor::from_slice(ctx, &pattern(shape.m * shape.k), &shape.a_shape(), "a")?;
    let b = GpuTensor::from_slice(ctx, &pattern(shape.k * shape.n), &shape.b_shape(), "b")?;
    let c = GpuTensor::zeros(ctx, &[shape.m, shape.n], "c")?;
    let bindings = MatmulBindings {
        a: a.binding(),
        b: b.binding(),
        bias: None,
        c: c.binding(),
    };
    let d = matmul::dispatch(ctx, shape, Epilogue::default(), bindings)?;
    let seconds = time_per_rep(budget, |reps| {
        let list: Vec<_> = (0..reps).flat_map(|_| d.dispatches.iter()).collect();
        ctx.submit(&list);
        Ok(ctx.wait_idle()?)
    })?;
    Ok(shape.flops() / seconds / 1e9)
}

/// GFLOP/s of the CPU reference matmul.
pub fn matmul_cpu(shape: MatmulShape, budget: Budget) -> Result<f64> {
    let a = pattern(shape.m * shape.k);
    let b = pattern(shape.k * shape.n);
    let seconds = time_per_rep(budget, |reps| {
        for _ in 0..reps {
            std::hint::black_box(matmul::reference(shape, &a, &b, None, false));
        }
        Ok(())
    })?;
    Ok(shape.flops() / seconds / 1e9)
}

fn pattern(len: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
        .collect()
}

/// The benchmarks' optimizer: SGD with momentum 0.9.
pub fn lecture_optimizer() -> Optimizer {
    Optimizer::Sgd(Sgd {
        lr: 0.01,
        momentum: 0.9,
        ..Sgd::default()
    })
}

/// The lecture's MLP for `features` inputs, with SGD momentum 0.9, as the benchmarks use it.
pub fn lecture_model(ctx: Arc<GpuContext>, features: usize, batch: usize) -> Result<Model> {
    Model::new(
        ctx,
        Sequential::lecture_mlp(features, 10, 0.2),
        CrossEntropyLoss::new(),
        lecture_optimizer(),
        ModelConfig {
            sample_shape: vec![features],
            batch_size: batch,
            seed: 0,
        },
    )
}

/// Eight seeded random batches (the same pool PyTorch's reference script cycles through).
pub fn batches(features: usize, batch: usize) -> Vec<(Vec<f32>, Vec<u32>)> {
    (0..8)
        .map(|i| {
            let x = pattern(batch * features)
                .into_iter()
                .enumerate()
                .map(|(j, v)| v * ((i + j) % 5) as f32)
                .collect();
            let y = (0..batch).map(|j| ((j * 3 + i) % 10) as u32).collect();
            (x, y)
        })
        .collect()
}

/// Samples/s of training (or eval) steps of the lecture's MLP with the data resident on the
/// device; returns the figure and the plan's report.
pub fn mlp_gpu(
    ctx: Arc<GpuContext>,
    features: usize,
    batch: usize,
    mode: Mode,
    budget: Budget,
) -> Result<(f64, crate::model::PlanReport)> {
    let mut model = lecture_model(ctx, features, batch)?;
    let resident = batches(features, batch)
        .iter()
        .map(|(x, y)| model.upload_batch(x, y))
        .collect::<Result<Vec<_>>>()?;
    if mode == Mode::Eval {
        model.eval();
    }
    let mut k = 0usize;
    let mut step = |model: &mut Model| -> Result<()> {
        k += 1;
        match mode {
            Mode::Train => model.train_step_on(&resident[k % resident.len()]),
            Mode::Eval => model.eval_step_on(&resident[k % resident.len()]),
        }
    };
    for _ in 0..10 {
        step(&mut model)?;
    }
    model.synchronize()?;
    let seconds = time_per_rep(budget, |reps| {
        for _ in 0..reps {
            step(&mut model)?;
        }
        model.synchronize()
    })?;
    Ok((batch as f64 / seconds, model.report(mode)))
}

/// Samples/s of the same steps on the CPU reference executor.
pub fn mlp_cpu(
    ctx: Arc<GpuContext>,
    features: usize,
    batch: usize,
    mode: Mode,
    budget: Budget,
) -> Result<f64> {
    let mut model = lecture_model(ctx, features, batch)?;
    let mut cpu = model.reference_executor()?;
    let data = batches(features, batch);
    let mut k = 0usize;
    let seconds = time_per_rep(budget, |reps| {
        for _ in 0..reps {
            k += 1;
            let (x, y) = &data[k % data.len()];
            std::hint::black_box(cpu.run(mode, x, y)?);
        }
        Ok(())
    })?;
    Ok(batch as f64 / seconds)
}

/// Milliseconds from an untouched model (a fresh context: no pipeline compiled yet, none on
/// disk) to the end of its first training step.
pub fn first_step_ms(features: usize, batch: usize) -> Result<f64> {
    first_step_with_cache_ms(features, batch, None)
}

/// [`first_step_ms`] for a fresh context whose pipeline cache a previous context left in a
/// directory (wgnn's disk cache, Vulkan only; elsewhere the same as a cold start).
pub fn first_step_warm_cache_ms(features: usize, batch: usize) -> Result<f64> {
    let dir = std::env::temp_dir().join(format!("wgnn-bench-cache-{}", std::process::id()));
    first_step_with_cache_ms(features, batch, Some(&dir))?;
    let ms = first_step_with_cache_ms(features, batch, Some(&dir));
    let _ = std::fs::remove_dir_all(&dir);
    ms
}

fn first_step_with_cache_ms(
    features: usize,
    batch: usize,
    cache: Option<&std::path::Path>,
) -> Result<f64> {
    let request = crate::gpu::AdapterRequest {
        pipeline_cache: cache.map(std::path::Path::to_path_buf),
        ..crate::gpu::AdapterRequest::from_env()?
    };
    let ctx = Arc::new(GpuContext::with_request(&request)?);
    let (x, y) = batches(features, batch).swap_remove(0);
    let start = Instant::now();
    let mut model = lecture_model(ctx, features, batch)?;
    model.train_step(&x, &y)?;
    model.synchronize()?;
    Ok(start.elapsed().as_secs_f64() * 1e3)
}

/// Every workload of `wgnn bench`; `progress` hears each record as it is made.
pub fn run_all(
    ctx: Arc<GpuContext>,
    budget: Budget,
    mut progress: impl FnMut(&Record),
) -> Result<Vec<Record>> {
    let gpu = format!(
        "wgnn {} on {}, {}",
        env!("CARGO_PKG_VERSION"),
        ctx.adapter(),
        ctx.kernels()
    );
    let cpu = "wgnn CPU reference (1 thread)".to_string();
    let mut out = Vec::new();
    let mut push = |name: &str, value: f64, unit: &str, device: &str| {
        let r = Record {
            name: name.into(),
            value,
            unit: unit.into(),
            device: device.into(),
        };
        progress(&r);
        out.push(r);
    };
    push("first_step_ms", first_step_ms(784, 128)?, "ms", &gpu);
    push(
        "first_step_warm_cache_ms",
        first_step_warm_cache_ms(784, 128)?,
        "ms",
        &gpu,
    );
    push("fma_peak", fma_peak(&ctx, budget)?, "GFLOP/s", &gpu);
    let cost = dispatch_cost(&ctx, budget)?;
    push("dispatch_us", cost.dispatch_seconds * 1e6, "µs", &gpu);
    push("submit_wait_us", cost.submit_seconds * 1e6, "µs", &gpu);
    for n in [512usize, 1024, 2048] {
        let shape = MatmulShape {
            layout: Layout::NT,
            m: n,
            n,
            k: n,
        };
        push(
            &format!("matmul_{n}"),
            matmul_gpu(&ctx, shape, budget)?,
            "GFLOP/s",
            &gpu,
        );
        if budget.cpu_reference && n <= 1024 {
            push(
                &format!("matmul_{n}_cpu_reference"),
                matmul_cpu(shape, budget)?,
                "GFLOP/s",
                &cpu,
            );
        }
    }
    for (name, features, batch, mode) in [
        ("mlp784_train_b128", 784, 128, Mode::Train),
        ("mlp784_train_b1024", 784, 1024, Mode::Train),
        ("mlp3072_train_b128", 3072, 128, Mode::Train),
        ("mlp784_eval_b1024", 784, 1024, Mode::Eval),
    ] {
        let (rate, report) = mlp_gpu(ctx.clone(), features, batch, mode, budget)?;
        push(name, rate, "samples/s", &gpu);
        push(
            &format!("{name}_dispatches_per_step"),
            report.dispatches_per_step as f64,
            "dispatches",
            &gpu,
        );
        push(
            &format!("{name}_submits_per_step"),
            report.submits_per_step as f64,
            "submits",
            &gpu,
        );
        push(
            &format!("{name}_resident_bytes"),
            report.total_bytes as f64,
            "bytes",
            &gpu,
        );
        if budget.cpu_reference {
            let rate = mlp_cpu(ctx.clone(), features, batch, mode, budget)?;
            push(&format!("{name}_cpu_reference"), rate, "samples/s", &cpu);
        }
    }
    for mode in [Mode::Train, Mode::Eval] {
        for members in STACK_MEMBERS {
            let f = stack_vs_lone(ctx.clone(), 784, STACK_BATCH, members, mode, budget)?;
            for (name, value, unit) in stack_records(&f, mode) {
                push(&name, value, unit, &gpu);
            }
        }
    }
    Ok(out)
}

/// What a data-parallel training step of the lecture's MLP costs, measured on every rank of
/// a job (the slowest rank's figures).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct DataParallelStep {
    pub ranks: usize,
    pub features: usize,
    /// Per rank.
    pub batch: usize,
    pub sync_bn: bool,
    pub seconds_per_step: f64,
    /// Per step at the plan's exchanges: waiting for the device (the segment before each and
    /// its read-back), then on the host (the collectives, combining, the write-back).
    pub exchange_wait_seconds_per_step: f64,
    pub exchange_host_seconds_per_step: f64,
    /// Of the host part, in the collectives (including the wait for the slowest rank).
    pub collective_seconds_per_step: f64,
    /// One all-reduce of the gradient buffer alone, between steps.
    pub all_reduce_seconds: f64,
    pub exchanges_per_step: usize,
    /// Bytes each rank sends into the collectives per step.
    pub exchanged_bytes_per_step: u64,
    /// Global samples per second.
    pub samples_per_second: f64,
}

/// `steps` training steps of the lecture's MLP (`features` inputs, `batch` per rank, data
/// resident) on every rank of `comm`; every rank must call it alike.
pub fn data_parallel_step(
    ctx: Arc<GpuContext>,
    comm: crate::dist::Comm,
    features: usize,
    batch: usize,
    sync_bn: bool,
    steps: usize,
) -> Result<DataParallelStep> {
    let ranks = comm.size();
    let mut model = lecture_model(ctx, features, batch)?;
    model.distribute(comm.clone(), sync_bn)?;
    let resident = batches(features, batch)
        .iter()
        .map(|(x, y)| model.upload_batch(x, y))
        .collect::<Result<Vec<_>>>()?;
    for k in 0..10 {
        model.train_step_on(&resident[k % resident.len()])?;
    }
    model.synchronize()?;
    // Every rank starts the timed steps together.
    comm.all_reduce_sum(&mut [0.0])?;
    let before = model.counters();
    let start = Instant::now();
    for k in 0..steps {
        model.train_step_on(&resident[k % resident.len()])?;
    }
    model.synchronize()?;
    let seconds = start.elapsed().as_secs_f64();
    let after = model.counters();
    let per_step = |nanos: u64| nanos as f64 * 1e-9 / steps.max(1) as f64;
    let report = model.report(Mode::Train);
    // The gradient all-reduce on its own: as many floats as the step sends, every rank ready.
    let mut grads = vec![0.5f32; (report.gradient_bytes / 4) as usize];
    comm.all_reduce_sum(&mut [0.0])?;
    let start = Instant::now();
    for _ in 0..steps {
        comm.all_reduce_sum(&mut grads)?;
    }
    let all_reduce = start.elapsed().as_secs_f64() / steps.max(1) as f64;
    let mine = [
        seconds / steps.max(1) as f64,
        per_step(after.exchange_wait_nanos - before.exchange_wait_nanos),
        per_step(after.exchange_host_nanos - before.exchange_host_nanos),
        per_step(after.collective_nanos - before.collective_nanos),
        all_reduce,
    ];
    let all = crate::dist::all_gather_f64(comm.as_ref(), &mine)?;
    let slowest = |i: usize| all.chunks(mine.len()).map(|r| r[i]).fold(0.0, f64::max);
    Ok(DataParallelStep {
        ranks,
        features,
        batch,
        sync_bn,
        seconds_per_step: slowest(0),
        exchange_wait_seconds_per_step: slowest(1),
        exchange_host_seconds_per_step: slowest(2),
        collective_seconds_per_step: slowest(3),
        all_reduce_seconds: slowest(4),
        exchanges_per_step: report.exchanges_per_step,
        exchanged_bytes_per_step: report.exchanged_bytes_per_step,
        samples_per_second: (ranks * batch) as f64 / slowest(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_mirrors_the_shader() {
        crate::gpu::assert_mirrors::<PeakParams>(Shader::Bench, 0);
    }
}
