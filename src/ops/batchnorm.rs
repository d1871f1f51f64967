//! BatchNorm1d over x: [N, D], forward (train and eval) and backward, as `torch.nn.BatchNorm1d`.
//! Kernels: `shaders/batchnorm.wgsl`.
//!
//! Train mode normalizes with the batch's biased variance and updates the running statistics
//! with the unbiased one: `running = (1 - m)·running + m·batch` with momentum m (0.1 by
//! default; `None` = cumulative average, m = 1/num_batches_tracked). Eval mode normalizes with
//! the running statistics. A batch of one sample is an error in train mode, as in PyTorch.

use bytemuck::{Pod, Zeroable};

use super::dropout::{DropProbability, MaskStream};
use super::step::{StepBuffer, StepParams};
use super::{OpError, expect_matrix, expect_shape, groups};
use crate::gpu::{Binding, Dispatch, GpuContext, GpuError, GpuTensor, Kernel, Shader, grid_1d};

/// `eps` and `momentum` as `torch.nn.BatchNorm1d` takes them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchNormConfig {
    pub eps: f32,
    /// `None`: running statistics are the cumulative average of all batches.
    pub momentum: Option<f32>,
}

impl Default for BatchNormConfig {
    fn default() -> Self {
        Self {
            eps: 1e-5,
            momentum: Some(0.1),
        }
    }
}

/// Running statistics and their batch counter, as in BatchNorm1d's state_dict.
#[derive(Clone, Debug, PartialEq)]
pub struct RunningStats {
    pub mean: Vec<f32>,
    pub var: Vec<f32>,
    pub num_batches_tracked: u64,
}

impl RunningStats {
    /// PyTorch's initial state: mean 0, variance 1, no batches.
    pub fn new(features: usize) -> Self {
        Self {
            mean: vec![0.0; features],
            var: vec![1.0; features],
            num_batches_tracked: 0,
        }
    }
}

/// What the train-mode forward saves for the backward: per feature, mean and 1/√(var + eps).
#[derive(Clone, Debug, PartialEq)]
pub struct Saved {
    pub mean: Vec<f32>,
    pub invstd: Vec<f32>,
}

/// A dropout fused after the batch norm's ReLU (BatchNorm1d → ReLU → Dropout). Train mode
/// drops with [`dropout`](super::dropout)'s mask for the same stream and step; the backward passes the
/// gradient, scaled by 1/(1-p), only where the output is positive.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FusedDropout {
    pub p: DropProbability,
    pub stream: MaskStream,
}

/// Errors for a train-mode batch that PyTorch rejects.
pub fn check_train_batch(shape: &[usize]) -> Result<(), OpError> {
    let (n, _) = expect_matrix("batch norm", "input", shape)?;
    if n <= 1 {
        return Err(OpError::SingleSampleBatch(shape.to_vec()));
    }
    Ok(())
}

/// CPU reference, train mode. x: [n, d] → y: [n, d]; updates `running`.
#[allow(clippy::too_many_arguments)]
pub fn reference_train(
    x: &[f32],
    n: usize,
    d: usize,
    gamma: &[f32],
    beta: &[f32],
    config: BatchNormConfig,
    running: &mut RunningStats,
    relu: bool,
) -> (Vec<f32>, Saved) {
    let mut saved = Saved {
        mean: vec![0.0; d],
        invstd: vec![0.0; d],
    };
    running.num_batches_tracked += 1;
    let momentum = config
        .momentum
        .map_or(1.0 / running.num_batches_tracked as f64, f64::from);
    for f in 0..d {
        // Two passes in f64: the plain definition, exact enough to judge the GPU's shifted sums.
        let mean = (0..n).map(|r| f64::from(x[r * d + f])).sum::<f64>() / n as f64;
        let sq = (0..n)
            .map(|r| (f64::from(x[r * d + f]) - mean).powi(2))
            .sum::<f64>();
        let var_biased = sq / n as f64;
        let var_unbiased = sq / (n as f64 - 1.0).max(1.0);
        saved.mean[f] = mean as f32;
        saved.invstd[f] = (1.0 / (var_biased + f64::from(config.eps)).sqrt()) as f32;
        running.mean[f] = ((1.0 - momentum) * f64::from(running.mean[f]) + momentum * mean) as f32;
        running.var[f] =
            ((1.0 - momentum) * f64::from(running.var[f]) + momentum * var_unbiased) as f32;
    }
    let y = normalize(x, d, &saved.mean, &saved.invstd, gamma, beta, relu);
    (y, saved)
}

/// CPU reference, eval mode: normalizes with the running statistics.
pub fn reference_eval(
    x: &[f32],
    d: usize,
    gamma: &[f32],
    beta: &[f32],
    config: BatchNormConfig,
    running: &RunningStats,
    relu: bool,
) -> Vec<f32> {
    let invstd: Vec<f32> = running
        .var
        .iter()
        .map(|&v| 1.0 / (v + config.eps).sqrt())
        .collect();
    normalize(x, d, &running.mean, &invstd, gamma, beta, relu)
}

/// y = (x - mean)·invstd·γ + β, then ReLU if asked.
fn normalize(
    x: &[f32],
    d: usize,
    mean: &[f32],
    invstd: &[f32],
    gamma: &[f32],
    beta: &[f32],
    relu: bool,
) -> Vec<f32> {
    x.iter()
        .enumerate()
        .map(|(i, &v)| {
            let f = i % d;
            let y = (v - mean[f]) * invstd[f] * gamma[f] + beta[f];
            if relu { y.max(0.0) } else { y }
        })
        .collect()
}

/// Gradients of a train-mode batch norm.
#[derive(Clone, Debug, PartialEq)]
pub struct Gradients {
    pub dx: Vec<f32>,
    pub dgamma: Vec<f32>,
    pub dbeta: Vec<f32>,
}

/// CPU reference backward. With x̂ = (x - μ)·invstd and y = x̂·γ + β:
/// dβ = Σ dy, dγ = Σ dy·x̂, dx = γ·invstd/N·(N·dy − dβ − x̂·dγ).
/// With `relu_output`, dy first passes through the fused ReLU whose output that was.
pub fn reference_backward(
    x: &[f32],
    dy: &[f32],
    n: usize,
    d: usize,
    gamma: &[f32],
    saved: &Saved,
    relu_output: Option<&[f32]>,
) -> Gradients {
    let g = |i: usize| match relu_output {
        Some(y) if y[i] <= 0.0 => 0.0,
        _ => f64::from(dy[i]),
    };
    let xhat = |i: usize| {
        let f = i % d;
        (f64::from(x[i]) - f64::from(saved.mean[f])) * f64::from(saved.invstd[f])
    };
    let mut dgamma = vec![0.0f64; d];
    let mut dbeta = vec![0.0f64; d];
    for i in 0..n * d {
        dbeta[i % d] += g(i);
        dgamma[i % d] += g(i) * xhat(i);
    }
    let dx = (0..n * d)
        .map(|i| {
            let f = i % d;
            let scale = f64::from(gamma[f]) * f64::from(saved.invstd[f]) / n as f64;
            (scale * (n as f64 * g(i) - dbeta[f] - xhat(i) * dgamma[f])) as f32
        })
        .collect();
    Gradients {
        dx,
        dgamma: dgamma.into_iter().map(|v| v as f32).collect(),
        dbeta: dbeta.into_iter().map(|v| v as f32).collect(),
    }
}

/// Mirrors `Params` in `shaders/batchnorm.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    d: u32,
    eps: f32,
    momentum: f32,
    flags: u32,
    threshold: u32,
    scale: f32,
    key0: u32,
    key1: u32,
    _pad: [u32; 3],
}

const FLAG_RELU: u32 = 1;
const FLAG_FROM_VARIANCE: u32 = 2;
const FLAG_CUMULATIVE: u32 = 4;
const FLAG_COUNT_BATCH: u32 = 8;
const FLAG_DROPOUT: u32 = 16;

/// Shape of the per-feature reductions' workgroups: (features, rows sharing a feature).
/// GPUs split a feature's rows over 16 invocations; lavapipe, whose barriers are costly, uses
/// one invocation per feature.
fn reduction_shape(ctx: &GpuContext) -> (u32, u32) {
    if ctx.kernels().parallel_reductions {
        (16, 16)
    } else {
        (64, 1)
    }
}

// @binding numbers in shaders/batchnorm.wgsl.
const X: u32 = 1;
const Y: u32 = 2;
const DY: u32 = 3;
const DX: u32 = 4;
const SAVED: u32 = 5;
const RUNNING: u32 = 6;
const GAMMA: u32 = 7;
const BETA: u32 = 8;
const DGAMMA: u32 = 9;
const DBETA: u32 = 10;
const NUM_BATCHES: u32 = 11;
const STEP: u32 = 12;

fn params(
    n: usize,
    d: usize,
    config: BatchNormConfig,
    flags: u32,
    dropout: Option<FusedDropout>,
) -> Params {
    let cumulative = if config.momentum.is_none() {
        FLAG_CUMULATIVE
    } else {
        0
    };
    let mut params = Params {
        n: n as u32,
        d: d as u32,
        eps: config.eps,
        momentum: config.momentum.unwrap_or(0.0),
        flags: flags | cumulative,
        threshold: 0,
        scale: 1.0,
        key0: 0,
        key1: 0,
        _pad: [0; 3],
    };
    if let Some(FusedDropout { p, stream }) = dropout {
        let [key0, key1] = stream.key();
        params.flags |= FLAG_DROPOUT;
        params.threshold = p.threshold();
        params.scale = p.scale();
        params.key0 = key0;
        params.key1 = key1;
    }
    params
}

/// The fused dropout runs after the fused ReLU, never alone: its backward reads the dropped
/// elements off the output's zeros, which only the ReLU makes unambiguous.
fn check_fusion(relu: bool, dropout: Option<FusedDropout>) -> Result<(), GpuError> {
    if dropout.is_some() && !relu {
        return Err(GpuError::Unsupported(
            "batch norm: a fused dropout needs the fused ReLU before it".into(),
        ));
    }
    Ok(())
}

fn kernel(ctx: &GpuContext, entry: &'static str) -> Kernel {
    let (features, rows) = reduction_shape(ctx);
    Kernel::new(Shader::BatchNorm, entry)
        .with("WG_FEATURES", features)
        .with("ROWS", rows)
}

fn feature_grid(ctx: &GpuContext, d: usize) -> [u32; 3] {
    [groups(d, reduction_shape(ctx).0), 1, 1]
}

/// Grid of the element-wise kernels: x over features (64 per workgroup), y and z over rows
/// (4 per workgroup), as `map_row` in the shader reads them.
fn element_grid(ctx: &GpuContext, n: usize, d: usize) -> [u32; 3] {
    let max = ctx.limits().max_compute_workgroups_per_dimension;
    let row_groups = groups(n, 4);
    let [y, z, _] = grid_1d(row_groups, max);
    [groups(d, 64), y, z]
}

/// The GPU buffers of one BatchNorm1d layer.
#[derive(Clone, Copy)]
pub struct LayerBindings<'a> {
    pub gamma: Binding<'a>,
    pub beta: Binding<'a>,
    /// [running_mean; running_var], 2·D floats.
    pub running: Binding<'a>,
    /// One u32.
    pub num_batches_tracked: Binding<'a>,
    /// The per-step uniform (`StepBuffer`): the fused dropout's step.
    pub step: Binding<'a>,
}

/// Workgroup width of the one-pass kernels (`stats_normalize`, `backward_column`): 8
/// features, one SIMD batch on lavapipe, so a 64-feature layer still spreads over 8 workgroups.
const COLUMN_FEATURES: u32 = 8;

/// The one-pass kernel `entry`, one invocation per feature.
fn column_kernel(entry: &'static str) -> Kernel {
    Kernel::new(Shader::BatchNorm, entry).with("WG_FEATURES", COLUMN_FEATURES)
}

/// Train-mode forward: batch statistics (saved: [mean; invstd], 2·D floats), running-stat
/// update, normalization (+ ReLU) (+ dropout). One dispatch on CPU adapters (per-column
/// reductions) with a set momentum, else two.
#[allow(clippy::too_many_arguments)]
pub fn train_dispatches(
    ctx: &GpuContext,
    n: usize,
    d: usize,
    config: BatchNormConfig,
    relu: bool,
    dropout: Option<FusedDropout>,
    layer: LayerBindings<'_>,
    x: Binding<'_>,
    saved: Binding<'_>,
    y: Binding<'_>,
) -> Result<Vec<Dispatch>, GpuError> {
    check_fusion(relu, dropout)?;
    let flags = FLAG_COUNT_BATCH | if relu { FLAG_RELU } else { 0 };
    let params = params(n, d, config, flags, dropout);
    if !ctx.kernels().parallel_reductions && config.momentum.is_some() {
        let pass = ctx.dispatch_at(
            &column_kernel("stats_normalize"),
            Some(&params),
            &[
                (X, x),
                (Y, y),
                (SAVED, saved),
                (RUNNING, layer.running),
                (GAMMA, layer.gamma),
                (BETA, layer.beta),
                (NUM_BATCHES, layer.num_batches_tracked),
                (STEP, layer.step),
            ],
            [groups(d, COLUMN_FEATURES), 1, 1],
        )?;
        return Ok(vec![pass]);
    }
    let stats = ctx.dispatch_at(
        &kernel(ctx, "stats"),
        Some(&Params {
            flags: params.flags & FLAG_CUMULATIVE,
            ..params
        }),
        &[
            (X, x),
            (SAVED, saved),
            (RUNNING, layer.running),
            (NUM_BATCHES, layer.num_batches_tracked),
        ],
        feature_grid(ctx, d),
    )?;
    let normalize = ctx.dispatch_at(
        &kernel(ctx, "normalize"),
        Some(&params),
        &[
            (X, x),
            (Y, y),
            (SAVED, saved),
            (GAMMA, layer.gamma),
            (BETA, layer.beta),
            (NUM_BATCHES, layer.num_batches_tracked),
            (STEP, layer.step),
        ],
        element_grid(ctx, n, d),
    )?;
    Ok(vec![stats, normalize])
}

/// Eval-mode forward with the running statistics (+ ReLU). One dispatch: per column on CPU
/// adapters, per element on GPUs.
#[allow(clippy::too_many_arguments)]
pub fn eval_dispatch(
    ctx: &GpuContext,
    n: usize,
    d: usize,
    config: BatchNormConfig,
    relu: bool,
    layer: LayerBindings<'_>,
    x: Binding<'_>,
    y: Binding<'_>,
) -> Result<Dispatch, GpuError> {
    let flags = FLAG_FROM_VARIANCE | if relu { FLAG_RELU } else { 0 };
    let params = params(n, d, config, flags, None);
    let mut bindings = vec![
        (X, x),
        (Y, y),
        (SAVED, layer.running),
        (GAMMA, layer.gamma),
        (BETA, layer.beta),
        (STEP, layer.step),
    ];
    if !ctx.kernels().parallel_reductions {
        let kernel = column_kernel("normalize_columns");
        return ctx.dispatch_at(
            &kernel,
            Some(&params),
            &bindings,
            [groups(d, COLUMN_FEATURES), 1, 1],
        );
    }
    // normalize also counts train batches: the binding is there, the flag is not.
    bindings.push((NUM_BATCHES, layer.num_batches_tracked));
    let grid = element_grid(ctx, n, d);
    ctx.dispatch_at(&kernel(ctx, "normalize"), Some(&params), &bindings, grid)
}

/// Backward of the train-mode forward: dγ and dβ (one reduction), then dx; one dispatch on
/// CPU adapters (per-column reductions), else two. `y` is the forward's output, used for the
/// fused ReLU's (and dropout's) mask.
#[allow(clippy::too_many_arguments)]
pub fn backward_dispatches(
    ctx: &GpuContext,
    n: usize,
    d: usize,
    relu: bool,
    dropout: Option<FusedDropout>,
    x: Binding<'_>,
    y: Binding<'_>,
    dy: Binding<'_>,
    saved: Binding<'_>,
    gamma: Binding<'_>,
    dgamma: Binding<'_>,
    dbeta: Binding<'_>,
    dx: Binding<'_>,
) -> Result<Vec<Dispatch>, GpuError> {
    check_fusion(relu, dropout)?;
    let flags = if relu { FLAG_RELU } else { 0 };
    let params = params(n, d, BatchNormConfig::default(), flags, dropout);
    // backward_column and backward_dx read all of these; backward_reduce all but dx and γ.
    let all = [
        (X, x),
        (Y, y),
        (DY, dy),
        (SAVED, saved),
        (DGAMMA, dgamma),
        (DBETA, dbeta),
        (DX, dx),
        (GAMMA, gamma),
    ];
    if !ctx.kernels().parallel_reductions {
        let grid = [groups(d, COLUMN_FEATURES), 1, 1];
        let pass = ctx.dispatch_at(&column_kernel("backward_column"), Some(&params), &all, grid)?;
        return Ok(vec![pass]);
    }
    let reduce_grid = feature_grid(ctx, d);
    let reduce = ctx.dispatch_at(
        &kernel(ctx, "backward_reduce"),
        Some(&params),
        &all[..6],
        reduce_grid,
    )?;
    let dx_grid = element_grid(ctx, n, d);
    let dx = ctx.dispatch_at(&kernel(ctx, "backward_dx"), Some(&params), &all, dx_grid)?;
    Ok(vec![reduce, dx])
}

/// A BatchNorm1d layer's state on the GPU, for running the op on its own.
pub struct GpuBatchNorm {
    pub features: usize,
    pub config: BatchNormConfig,
    pub gamma: GpuTensor,
    pub beta: GpuTensor,
    /// [running_mean; running_var]
    pub running: GpuTensor,
    pub num_batches_tracked: GpuTensor,
    /// The step a fused dropout draws its mask for.
    pub steps: StepBuffer,
}

impl GpuBatchNorm {
    pub fn new(
        ctx: &GpuContext,
        gamma: &[f32],
        beta: &[f32],
        running: &RunningStats,
        config: BatchNormConfig,
    ) -> Result<Self, OpError> {
        let d = gamma.len();
        expect_shape("batch norm", "bias", &[beta.len()], &[d])?;
        expect_shape("batch norm", "running_mean", &[running.mean.len()], &[d])?;
        expect_shape("batch norm", "running_var", &[running.var.len()], &[d])?;
        let stats: Vec<f32> = running.mean.iter().chain(&running.var).copied().collect();
        Ok(Self {
            features: d,
            config,
            gamma: GpuTensor::from_slice(ctx, gamma, &[d], "bn.weight")?,
            beta: GpuTensor::from_slice(ctx, beta, &[d], "bn.bias")?,
            running: GpuTensor::from_slice(ctx, &stats, &[2, d], "bn.running")?,
            num_batches_tracked: GpuTensor::from_slice(
                ctx,
                &[running.num_batches_tracked as u32],
                &[1],
                "bn.num_batches_tracked",
            )?,
            steps: StepBuffer::new(ctx)?,
        })
    }

    fn bindings(&self) -> LayerBindings<'_> {
        LayerBindings {
            gamma: self.gamma.binding(),
            beta: self.beta.binding(),
            running: self.running.binding(),
            num_batches_tracked: self.num_batches_tracked.binding(),
            step: self.steps.binding(),
        }
    }

    /// Train-mode forward at training step `step` (the fused dropout's); returns y and the
    /// saved [mean; invstd].
    pub fn forward_train(
        &self,
        ctx: &GpuContext,
        x: &GpuTensor,
        relu: bool,
        dropout: Option<FusedDropout>,
        step: u64,
    ) -> Result<(GpuTensor, GpuTensor), OpError> {
        check_train_batch(x.shape())?;
        let (n, d) = self.check_input(x)?;
        let saved = GpuTensor::zeros(ctx, &[2, d], "bn.saved")?;
        let y = GpuTensor::zeros(ctx, &[n, d], "bn.y")?;
        self.steps.write(ctx, &StepParams::at_step(step));
        let dispatches = train_dispatches(
            ctx,
            n,
            d,
            self.config,
            relu,
            dropout,
            self.bindings(),
            x.binding(),
            saved.binding(),
            y.binding(),
        )?;
        ctx.submit(&dispatches.iter().collect::<Vec<_>>());
        Ok((y, saved))
    }

    /// Eval-mode forward.
    pub fn forward_eval(
        &self,
        ctx: &GpuContext,
        x: &GpuTensor,
        relu: bool,
    ) -> Result<GpuTensor, OpError> {
        let (n, d) = self.check_input(x)?;
        let y = GpuTensor::zeros(ctx, &[n, d], "bn.y")?;
        let dispatch = eval_dispatch(
            ctx,
            n,
            d,
            self.config,
            relu,
            self.bindings(),
            x.binding(),
            y.binding(),
        )?;
        ctx.submit(&[&dispatch]);
        Ok(y)
    }

    /// Backward of [`forward_train`](Self::forward_train): (dx, dγ, dβ).
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        ctx: &GpuContext,
        x: &GpuTensor,
        y: &GpuTensor,
        dy: &GpuTensor,
        saved: &GpuTensor,
        relu: bool,
        dropout: Option<FusedDropout>,
    ) -> Result<(GpuTensor, GpuTensor, GpuTensor), OpError> {
        let (n, d) = self.check_input(x)?;
        expect_shape("batch norm backward", "grad_output", dy.shape(), &[n, d])?;
        let dx = GpuTensor::zeros(ctx, &[n, d], "bn.dx")?;
        let dgamma = GpuTensor::zeros(ctx, &[d], "bn.dweight")?;
        let dbeta = GpuTensor::zeros(ctx, &[d], "bn.dbias")?;
        let dispatches = backward_dispatches(
            ctx,
            n,
            d,
            relu,
            dropout,
            x.binding(),
            y.binding(),
            dy.binding(),
            saved.binding(),
            self.gamma.binding(),
            dgamma.binding(),
            dbeta.binding(),
            dx.binding(),
        )?;
        ctx.submit(&dispatches.iter().collect::<Vec<_>>());
        Ok((dx, dgamma, dbeta))
    }

    /// Reads the running statistics back.
    pub fn running_stats(&self, ctx: &GpuContext) -> Result<RunningStats, OpError> {
        let stats: Vec<f32> = self.running.read(ctx)?;
        let count: Vec<u32> = self.num_batches_tracked.read(ctx)?;
        let d = self.features;
        Ok(RunningStats {
            mean: stats[..d].to_vec(),
            var: stats[d..].to_vec(),
            num_batches_tracked: u64::from(count[0]),
        })
    }

    fn check_input(&self, x: &GpuTensor) -> Result<(usize, usize), OpError> {
        let (n, d) = expect_matrix("batch norm", "input", x.shape())?;
        if d != self.features {
            return Err(OpError::Shape {
                op: "batch norm",
                what: "input",
                found: x.shape().to_vec(),
                expected: format!("[N, {}]", self.features),
            });
        }
        Ok((n, d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{Tolerance, assert_close};
    use crate::ops::test_support::{ctx, gpu_style_ctx, uniform};

    struct Case {
        x: Vec<f32>,
        gamma: Vec<f32>,
        beta: Vec<f32>,
        n: usize,
        d: usize,
    }

    fn case(n: usize, d: usize, mean: f32, spread: f32) -> Case {
        Case {
            x: uniform(
                n as u64 * 31 + d as u64,
                n * d,
                mean - spread,
                mean + spread,
            ),
            gamma: uniform(7, d, 0.5, 1.5),
            beta: uniform(8, d, -0.5, 0.5),
            n,
            d,
        }
    }

    /// Both kernel families: lavapipe's (one invocation per feature) and GPUs' (row-parallel
    /// sums in workgroup memory).
    fn check_train(
        c: &Case,
        config: BatchNormConfig,
        relu: bool,
        dropout: Option<FusedDropout>,
        tol: Tolerance,
    ) {
        check_train_on(ctx(), c, config, relu, dropout, tol);
        check_train_on(gpu_style_ctx(), c, config, relu, dropout, tol);
    }

    /// The step the fused dropout draws for.
    const STEP: u64 = 11;

    fn fused_dropout(p: f32) -> FusedDropout {
        FusedDropout {
            p: DropProbability::new(p).unwrap(),
            stream: MaskStream {
                seed: 0xfeed,
                layer: 4,
            },
        }
    }

    /// Checks the train forward, backward and eval forward against the reference; a fused
    /// dropout against the reference dropout applied after the batch norm (and before it in
    /// the backward).
    fn check_train_on(
        ctx: &GpuContext,
        c: &Case,
        config: BatchNormConfig,
        relu: bool,
        dropout: Option<FusedDropout>,
        tol: Tolerance,
    ) {
        let label = format!(
            "bn {}x{} relu {relu} dropout {:?} gpu kernels {}",
            c.n,
            c.d,
            dropout.map(|d| d.p.get()),
            ctx.kernels().parallel_reductions
        );
        let drop = |v: &[f32]| match dropout {
            Some(d) => super::super::dropout::reference(v, d.p, d.stream, STEP),
            None => v.to_vec(),
        };
        let mut running = RunningStats::new(c.d);
        running.mean = uniform(3, c.d, -1.0, 1.0);
        running.num_batches_tracked = 4;
        let bn = GpuBatchNorm::new(ctx, &c.gamma, &c.beta, &running, config).unwrap();
        let gx = GpuTensor::from_slice(ctx, &c.x, &[c.n, c.d], "x").unwrap();
        let (gy, gsaved) = bn.forward_train(ctx, &gx, relu, dropout, STEP).unwrap();

        let (y, saved) = reference_train(
            &c.x,
            c.n,
            c.d,
            &c.gamma,
            &c.beta,
            config,
            &mut running,
            relu,
        );
        let y = drop(&y);
        assert_close(&format!("{label} y"), &gy.read(ctx).unwrap(), &y, tol);
        let s: Vec<f32> = gsaved.read(ctx).unwrap();
        // The mean of values of magnitude ~2 is exact to a few ulps of 2, not of itself.
        assert_close(
            &format!("{label} mean"),
            &s[..c.d],
            &saved.mean,
            Tolerance::new(2e-6, 1e-6),
        );
        assert_close(
            &format!("{label} invstd"),
            &s[c.d..],
            &saved.invstd,
            Tolerance::new(0.0, 2e-4),
        );
        let got_running = bn.running_stats(ctx).unwrap();
        assert_eq!(got_running.num_batches_tracked, running.num_batches_tracked);
        assert_close(
            &format!("{label} running_mean"),
            &got_running.mean,
            &running.mean,
            Tolerance::new(1e-6, 1e-6),
        );
        assert_close(
            &format!("{label} running_var"),
            &got_running.var,
            &running.var,
            Tolerance::new(1e-6, 2e-4),
        );

        let dy = uniform(99, c.n * c.d, -1.0, 1.0);
        let gdy = GpuTensor::from_slice(ctx, &dy, &[c.n, c.d], "dy").unwrap();
        let (gdx, gdgamma, gdbeta) = bn
            .backward(ctx, &gx, &gy, &gdy, &gsaved, relu, dropout)
            .unwrap();
        let want = reference_backward(
            &c.x,
            &drop(&dy),
            c.n,
            c.d,
            &c.gamma,
            &saved,
            relu.then_some(&y[..]),
        );
        let grad_tol = Tolerance::new(tol.atol * 10.0, 1e-3);
        assert_close(
            &format!("{label} dbeta"),
            &gdbeta.read(ctx).unwrap(),
            &want.dbeta,
            grad_tol,
        );
        assert_close(
            &format!("{label} dgamma"),
            &gdgamma.read(ctx).unwrap(),
            &want.dgamma,
            grad_tol,
        );
        assert_close(
            &format!("{label} dx"),
            &gdx.read(ctx).unwrap(),
            &want.dx,
            grad_tol,
        );

        let yeval = bn.forward_eval(ctx, &gx, relu).unwrap();
        let want_eval = reference_eval(&c.x, c.d, &c.gamma, &c.beta, config, &running, relu);
        assert_close(
            &format!("{label} eval y"),
            &yeval.read(ctx).unwrap(),
            &want_eval,
            Tolerance::new(1e-5, 1e-4),
        );
    }

    #[test]
    fn train_eval_and_backward_match_reference_on_odd_shapes() {
        let tol = Tolerance::new(1e-5, 1e-4);
        for &(n, d) in &[(2usize, 1usize), (3, 7), (65, 33), (1000, 10), (128, 3072)] {
            let c = case(n, d, 0.3, 2.0);
            let config = BatchNormConfig::default();
            check_train(&c, config, false, None, tol);
            check_train(&c, config, true, None, tol);
            check_train(&c, config, true, Some(fused_dropout(0.3)), tol);
        }
        // p = 1 drops everything: zeros forward, and no gradient through.
        check_train(
            &case(9, 5, 0.3, 2.0),
            BatchNormConfig::default(),
            true,
            Some(fused_dropout(1.0)),
            tol,
        );
    }

    #[test]
    fn cumulative_average_when_momentum_is_none() {
        let config = BatchNormConfig {
            momentum: None,
            ..Default::default()
        };
        let tol = Tolerance::new(1e-5, 1e-4);
        check_train(&case(17, 5, 1.0, 1.0), config, false, None, tol);
        check_train(
            &case(17, 5, 1.0, 1.0),
            config,
            true,
            Some(fused_dropout(0.5)),
            tol,
        );
    }

    #[test]
    fn large_mean_small_spread_keeps_its_variance() {
        // Features with mean 1e4 and std ~1e-2: the GPU's variance must stay near the true one.
        let (n, d) = (1000usize, 3usize);
        let c = case(n, d, 1e4, 1.7e-2);
        for ctx in [ctx(), gpu_style_ctx()] {
            let bn = GpuBatchNorm::new(
                ctx,
                &c.gamma,
                &c.beta,
                &RunningStats::new(d),
                BatchNormConfig::default(),
            )
            .unwrap();
            let gx = GpuTensor::from_slice(ctx, &c.x, &[n, d], "x").unwrap();
            let (gy, gsaved) = bn.forward_train(ctx, &gx, false, None, 0).unwrap();
            let mut running = RunningStats::new(d);
            let (y, saved) = reference_train(
                &c.x,
                n,
                d,
                &c.gamma,
                &c.beta,
                BatchNormConfig::default(),
                &mut running,
                false,
            );
            let s: Vec<f32> = gsaved.read(ctx).unwrap();
            // invstd ≈ 100: 0.1 % agreement means the variance kept three digits.
            assert_close("invstd", &s[d..], &saved.invstd, Tolerance::new(0.0, 1e-3));
            // x - mean is exact to ~1e-3 in f32 at 1e4, i.e. 0.1 of a std after normalization.
            assert_close("y", &gy.read(ctx).unwrap(), &y, Tolerance::new(0.15, 0.0));
            let std: Vec<f32> = saved.invstd.iter().map(|v| 1.0 / v).collect();
            assert!(
                std.iter().all(|&s| (0.005..0.02).contains(&s)),
                "reference std {std:?}"
            );
        }
    }

    #[test]
    fn single_sample_batch_is_an_error_in_train_mode() {
        let ctx = ctx();
        let bn = GpuBatchNorm::new(
            ctx,
            &[1.0; 4],
            &[0.0; 4],
            &RunningStats::new(4),
            BatchNormConfig::default(),
        )
        .unwrap();
        let x = GpuTensor::from_slice(ctx, &[1.0f32; 4], &[1, 4], "x").unwrap();
        let err = bn.forward_train(ctx, &x, false, None, 0).unwrap_err();
        assert!(matches!(err, OpError::SingleSampleBatch(_)));
        assert!(err.to_string().contains("[1, 4]"), "{err}");
        // Eval mode accepts one sample.
        assert!(bn.forward_eval(ctx, &x, false).is_ok());
        let wrong = GpuTensor::from_slice(ctx, &[1.0f32; 6], &[2, 3], "x").unwrap();
        let err = bn.forward_train(ctx, &wrong, false, None, 0).unwrap_err();
        assert!(
            err.to_string().contains("[2, 3]") && err.to_string().contains("[N, 4]"),
            "{err}"
        );
    }

    /// The reference's gradients against central finite differences of L = Σ w·y.
    #[test]
    fn reference_gradients_match_finite_differences() {
        let (n, d) = (5usize, 3usize);
        let c = case(n, d, 0.5, 1.0);
        let w = uniform(17, n * d, -1.0, 1.0);
        let config = BatchNormConfig::default();
        for relu in [false, true] {
            let loss = |x: &[f32], gamma: &[f32], beta: &[f32]| -> f64 {
                let (y, _) = reference_train(
                    x,
                    n,
                    d,
                    gamma,
                    beta,
                    config,
                    &mut RunningStats::new(d),
                    relu,
                );
                y.iter()
                    .zip(&w)
                    .map(|(a, b)| f64::from(*a) * f64::from(*b))
                    .sum()
            };
            let (y, saved) = reference_train(
                &c.x,
                n,
                d,
                &c.gamma,
                &c.beta,
                config,
                &mut RunningStats::new(d),
                relu,
            );
            let g = reference_backward(&c.x, &w, n, d, &c.gamma, &saved, relu.then_some(&y[..]));
            let h = 1e-3f32;
            let fd = |f: &dyn Fn(f32) -> f64| ((f(h) - f(-h)) / (2.0 * f64::from(h))) as f32;
            for i in 0..n * d {
                let num = fd(&|e| {
                    let mut x = c.x.clone();
                    x[i] += e;
                    loss(&x, &c.gamma, &c.beta)
                });
                assert!(
                    (num - g.dx[i]).abs() < 2e-2,
                    "dx[{i}] fd {num} analytic {}",
                    g.dx[i]
                );
            }
            for f in 0..d {
                let num = fd(&|e| {
                    let mut gamma = c.gamma.clone();
                    gamma[f] += e;
                    loss(&c.x, &gamma, &c.beta)
                });
                assert!(
                    (num - g.dgamma[f]).abs() < 2e-2,
                    "dgamma[{f}] fd {num} analytic {}",
                    g.dgamma[f]
                );
                let num = fd(&|e| {
                    let mut beta = c.beta.clone();
                    beta[f] += e;
                    loss(&c.x, &c.gamma, &beta)
                });
                assert!(
                    (num - g.dbeta[f]).abs() < 2e-2,
                    "dbeta[{f}] fd {num} analytic {}",
                    g.dbeta[f]
                );
            }
        }
    }
}
