//! BatchNorm1d's kernels (`shaders/batchnorm.wgsl`): parameters, bindings and dispatches.

use super::BatchNormConfig;
use crate::gpu::uniform_struct;
use crate::gpu::{Binding, Dispatch, GpuContext, GpuError, Kernel, Shader, grid_1d};
use crate::ops::dropout::DropProbability;
use crate::ops::groups;

uniform_struct! {
    /// Mirrors `Params` in `shaders/batchnorm.wgsl`.
    pub(super) struct Params {
        n: u32,
        d: u32,
        eps: f32,
        momentum: f32,
        flags: u32,
        layer: u32,
        total: u32,
        zrows: u32,
        saved_stride: u32,
        param_stride: u32,
        running_stride: u32,
        count_stride: u32,
    }
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
const DBIAS: u32 = 13;
const DROPS: u32 = 14;

fn params(pass: &Pass<'_>, config: BatchNormConfig, flags: u32) -> Params {
    let cumulative = if config.momentum.is_none() {
        FLAG_CUMULATIVE
    } else {
        0
    };
    let dropout = if pass.dropout.is_some() {
        FLAG_DROPOUT
    } else {
        0
    };
    Params {
        n: pass.n as u32,
        d: pass.d as u32,
        eps: config.eps,
        momentum: config.momentum.unwrap_or(0.0),
        flags: flags | cumulative | dropout,
        layer: pass.dropout.map_or(0, |d| d.layer),
        total: 0,
        zrows: 1,
        saved_stride: 0,
        param_stride: 0,
        running_stride: 0,
        count_stride: 0,
    }
}

/// The fused dropout runs after the fused ReLU, never alone: its backward reads the dropped
/// elements off the output's zeros, which only the ReLU makes unambiguous.
fn check_fusion(pass: &Pass<'_>) -> Result<(), GpuError> {
    if pass.dropout.is_some() && !pass.relu {
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
/// (4 per workgroup), as `map_row` in the shader reads them; [`launch`] multiplies z by the
/// members (z-slices of rows per member: `zrows`).
fn element_grid(ctx: &GpuContext, n: usize, d: usize) -> [u32; 3] {
    let max = ctx.limits().max_compute_workgroups_per_dimension;
    let row_groups = groups(n, 4);
    let [y, z, _] = grid_1d(row_groups, max);
    [groups(d, 64), y, z]
}

/// One dispatch of the batch-norm module over every member its bindings hold: the members'
/// strides into `params` (from the bindings that have them), the per-member dropout
/// probabilities bound, and the grid's z multiplied by the members.
fn launch(
    ctx: &GpuContext,
    kernel: &Kernel,
    mut params: Params,
    bindings: &[(u32, Binding<'_>)],
    [x, y, z]: [u32; 3],
    pass: &Pass<'_>,
) -> Result<Dispatch, GpuError> {
    let stride = |slots: &[u32]| {
        bindings
            .iter()
            .find(|(slot, _)| slots.contains(slot))
            .map_or(0, |(_, b)| b.member_elements(4))
    };
    params.saved_stride = stride(&[SAVED]);
    params.param_stride = stride(&[GAMMA, BETA, DGAMMA, DBETA, DBIAS]);
    params.running_stride = stride(&[RUNNING]);
    params.count_stride = stride(&[NUM_BATCHES]);
    params.zrows = z;
    let members = bindings.iter().map(|(_, b)| b.members()).max().unwrap_or(1);
    // Every entry point that normalizes or back-propagates reads the dropout's table, used
    // or not; the statistics alone do not.
    let reads_drops = !matches!(kernel.entry, "stats" | "local_moments" | "apply_moments");
    let drops = match pass.dropout {
        Some(d) if reads_drops => Some(crate::ops::dropout::member_drops(ctx, d.p)?),
        _ => None,
    };
    let mut all = bindings.to_vec();
    if reads_drops {
        all.push((
            DROPS,
            drops.as_ref().map_or(ctx.placeholder(), Binding::whole),
        ));
    }
    ctx.dispatch_at(kernel, Some(&params), &all, [x, y, z * members])
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
    /// Each member's step record (`StepBuffer`): the fused dropout's step and seed, and
    /// whether the member is frozen.
    pub step: Binding<'a>,
}

/// A dropout fused after the ReLU, as a launch draws it: each member's probability (one per
/// member the bindings hold; seeds and steps come from the members' step records), and the
/// layer (the second word of the Philox key).
#[derive(Clone, Copy, Debug)]
pub struct PassDropout<'a> {
    pub p: &'a [DropProbability],
    pub layer: u32,
}

/// What a batch-norm launch computes: its sizes (per member), options and fusions.
#[derive(Clone, Copy, Debug)]
pub struct Pass<'a> {
    /// Rows of the batch (this rank's, in a data-parallel job).
    pub n: usize,
    /// Features.
    pub d: usize,
    /// eps and momentum (read by the forward only).
    pub config: BatchNormConfig,
    /// A ReLU fused after the normalization.
    pub relu: bool,
    /// A dropout fused after the ReLU.
    pub dropout: Option<PassDropout<'a>>,
}

impl Pass<'_> {
    fn params(&self, flags: u32) -> Params {
        params(self, self.config, flags)
    }

    fn relu_flag(&self) -> u32 {
        if self.relu { FLAG_RELU } else { 0 }
    }
}

/// The train-mode forward's buffers.
#[derive(Clone, Copy)]
pub struct ForwardBindings<'a> {
    pub layer: LayerBindings<'a>,
    /// \[N, D\].
    pub x: Binding<'a>,
    /// [mean; invstd], 2·D floats.
    pub saved: Binding<'a>,
    /// \[N, D\].
    pub y: Binding<'a>,
}

/// The backward's buffers: the forward's input, output and saved statistics, dy, γ, and
/// what it writes.
#[derive(Clone, Copy)]
pub struct BackwardBindings<'a> {
    pub x: Binding<'a>,
    /// The forward's output, whose zeros are the fused ReLU's (and dropout's) mask.
    pub y: Binding<'a>,
    pub dy: Binding<'a>,
    pub saved: Binding<'a>,
    pub gamma: Binding<'a>,
    pub dgamma: Binding<'a>,
    pub dbeta: Binding<'a>,
    pub dx: Binding<'a>,
    /// Where to write the column sums of dx too (the bias gradient of the Linear before).
    pub dbias: Option<Binding<'a>>,
}

/// Workgroup width of the one-pass kernels (`stats_normalize`, `backward_column`): 8
/// features, one SIMD batch on lavapipe, so a 64-feature layer still spreads over 8 workgroups.
const COLUMN_FEATURES: u32 = 8;

/// The one-pass kernel `entry`, one invocation per feature.
fn column_kernel(entry: &'static str) -> Kernel {
    Kernel::new(Shader::BatchNorm, entry).with("WG_FEATURES", COLUMN_FEATURES)
}

/// The most rows a train-mode batch norm takes in one pass with the GPU kernels: its 16
/// invocations per feature then walk at most 256 rows each, twice. A larger batch runs the
/// reduction and the map as two dispatches, spread over many more workgroups.
pub const ONE_PASS_MAX_ROWS: usize = 4096;

/// Whether a batch of `n` rows runs batch norm's train-mode passes as one dispatch with the
/// row-parallel kernels.
fn one_pass_rows(n: usize) -> bool {
    n <= ONE_PASS_MAX_ROWS
}

/// Train-mode forward: batch statistics (saved: [mean; invstd], 2·D floats), running-stat
/// update, normalization (+ ReLU) (+ dropout). One dispatch with a set momentum (per column
/// on CPU adapters; row-parallel on GPUs up to [`ONE_PASS_MAX_ROWS`] rows), else two.
pub fn train_dispatches(
    ctx: &GpuContext,
    pass: &Pass<'_>,
    b: ForwardBindings<'_>,
) -> Result<Vec<Dispatch>, GpuError> {
    train_passes(ctx, pass, b, one_pass_rows(pass.n))
}

/// [`train_dispatches`] with the row-parallel one-pass kernel allowed or not.
pub(super) fn train_passes(
    ctx: &GpuContext,
    pass: &Pass<'_>,
    b: ForwardBindings<'_>,
    one_pass: bool,
) -> Result<Vec<Dispatch>, GpuError> {
    check_fusion(pass)?;
    let params = pass.params(FLAG_COUNT_BATCH | pass.relu_flag());
    let layer = b.layer;
    let bindings = [
        (X, b.x),
        (Y, b.y),
        (SAVED, b.saved),
        (RUNNING, layer.running),
        (GAMMA, layer.gamma),
        (BETA, layer.beta),
        (NUM_BATCHES, layer.num_batches_tracked),
        (STEP, layer.step),
    ];
    if pass.config.momentum.is_some() {
        if !ctx.kernels().parallel_reductions {
            let grid = [groups(pass.d, COLUMN_FEATURES), 1, 1];
            let kernel = column_kernel("stats_normalize");
            return Ok(vec![launch(ctx, &kernel, params, &bindings, grid, pass)?]);
        }
        if one_pass {
            let kernel = kernel(ctx, "stats_normalize_rows");
            let grid = feature_grid(ctx, pass.d);
            return Ok(vec![launch(ctx, &kernel, params, &bindings, grid, pass)?]);
        }
    }
    let stats = launch(
        ctx,
        &kernel(ctx, "stats"),
        Params {
            flags: params.flags & FLAG_CUMULATIVE,
            ..params
        },
        &[
            (X, b.x),
            (SAVED, b.saved),
            (RUNNING, layer.running),
            (NUM_BATCHES, layer.num_batches_tracked),
            (STEP, layer.step),
        ],
        feature_grid(ctx, pass.d),
        pass,
    )?;
    let normalize = normalize_dispatch(ctx, pass, &params, b)?;
    Ok(vec![stats, normalize])
}

/// y from the batch statistics in `saved` ([mean; invstd]), counting the batch: the second
/// half of the train-mode forward wherever its statistics come from.
fn normalize_dispatch(
    ctx: &GpuContext,
    pass: &Pass<'_>,
    params: &Params,
    b: ForwardBindings<'_>,
) -> Result<Dispatch, GpuError> {
    launch(
        ctx,
        &kernel(ctx, "normalize"),
        *params,
        &[
            (X, b.x),
            (Y, b.y),
            (SAVED, b.saved),
            (GAMMA, b.layer.gamma),
            (BETA, b.layer.beta),
            (NUM_BATCHES, b.layer.num_batches_tracked),
            (STEP, b.layer.step),
        ],
        element_grid(ctx, pass.n, pass.d),
        pass,
    )
}

/// Eval-mode forward with the running statistics (+ ReLU; a fused dropout is the identity
/// in eval and is ignored). One dispatch: per column on CPU adapters, per element on GPUs.
pub fn eval_dispatch(
    ctx: &GpuContext,
    pass: &Pass<'_>,
    layer: LayerBindings<'_>,
    x: Binding<'_>,
    y: Binding<'_>,
) -> Result<Dispatch, GpuError> {
    let flags = FLAG_FROM_VARIANCE | pass.relu_flag();
    // A fused dropout is the identity in eval.
    let pass = &Pass {
        dropout: None,
        ..*pass
    };
    let params = pass.params(flags);
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
        return launch(
            ctx,
            &kernel,
            params,
            &bindings,
            [groups(pass.d, COLUMN_FEATURES), 1, 1],
            pass,
        );
    }
    // normalize also counts train batches: the binding is there, the flag is not.
    bindings.push((NUM_BATCHES, layer.num_batches_tracked));
    let grid = element_grid(ctx, pass.n, pass.d);
    launch(
        ctx,
        &kernel(ctx, "normalize"),
        params,
        &bindings,
        grid,
        pass,
    )
}

/// Backward of the train-mode forward: dγ and dβ (one reduction), then dx; one dispatch (per
/// column on CPU adapters; row-parallel on GPUs up to [`ONE_PASS_MAX_ROWS`] rows), else two.
/// With `dbias`, also the column sums of dx (the bias gradient of the Linear before): in the
/// same dispatch where it is one, else in a third.
pub fn backward_dispatches(
    ctx: &GpuContext,
    pass: &Pass<'_>,
    b: BackwardBindings<'_>,
) -> Result<Vec<Dispatch>, GpuError> {
    backward_passes(ctx, pass, b, one_pass_rows(pass.n))
}

/// [`backward_dispatches`] with the row-parallel one-pass kernel allowed or not.
pub(super) fn backward_passes(
    ctx: &GpuContext,
    pass: &Pass<'_>,
    b: BackwardBindings<'_>,
    one_pass: bool,
) -> Result<Vec<Dispatch>, GpuError> {
    check_fusion(pass)?;
    let params = backward_params(pass);
    let d = pass.d;
    // backward_column and backward_dx read all of these; backward_reduce all but dx and γ.
    let all = [
        (X, b.x),
        (Y, b.y),
        (DY, b.dy),
        (SAVED, b.saved),
        (DGAMMA, b.dgamma),
        (DBETA, b.dbeta),
        (DX, b.dx),
        (GAMMA, b.gamma),
    ];
    if !ctx.kernels().parallel_reductions || one_pass {
        let (kernel, grid) = match ctx.kernels().parallel_reductions {
            false => {
                let entry = match b.dbias {
                    Some(_) => "backward_column_bias",
                    None => "backward_column",
                };
                (column_kernel(entry), [groups(d, COLUMN_FEATURES), 1, 1])
            }
            true => {
                let entry = match b.dbias {
                    Some(_) => "backward_rows_bias",
                    None => "backward_rows",
                };
                (kernel(ctx, entry), feature_grid(ctx, d))
            }
        };
        let bindings = match b.dbias {
            Some(dbias) => [&all[..], &[(DBIAS, dbias)]].concat(),
            None => all.to_vec(),
        };
        return Ok(vec![launch(ctx, &kernel, params, &bindings, grid, pass)?]);
    }
    let reduce_grid = feature_grid(ctx, d);
    let reduce = launch(
        ctx,
        &kernel(ctx, "backward_reduce"),
        params,
        &all[..6],
        reduce_grid,
        pass,
    )?;
    let dx_grid = element_grid(ctx, pass.n, d);
    let dx_pass = launch(
        ctx,
        &kernel(ctx, "backward_dx"),
        params,
        &all,
        dx_grid,
        pass,
    )?;
    let mut out = vec![reduce, dx_pass];
    if let Some(dbias) = b.dbias {
        out.push(crate::ops::reduce::column_sum_dispatch(
            ctx, pass.n, d, b.dx, dbias,
        )?);
    }
    Ok(out)
}

/// The backward's parameters: eps and momentum play no part in it.
fn backward_params(pass: &Pass<'_>) -> Params {
    params(pass, BatchNormConfig::default(), pass.relu_flag())
}

/// SyncBatchNorm's train-mode forward, in two parts around the ranks' exchange of moments:
/// before it, this rank's batch mean and biased variance into `saved` (shifted sums, as
/// `stats`); after it (`saved` then holds the global batch's), 1/std, the running-stat
/// update over the global batch of `total` rows, and the normalization (+ ReLU) (+ dropout).
pub fn sync_train_dispatches(
    ctx: &GpuContext,
    pass: &Pass<'_>,
    total: usize,
    b: ForwardBindings<'_>,
) -> Result<[Vec<Dispatch>; 2], GpuError> {
    check_fusion(pass)?;
    let params = pass.params(FLAG_COUNT_BATCH | pass.relu_flag());
    let moments = launch(
        ctx,
        &kernel(ctx, "local_moments"),
        params,
        &[(X, b.x), (SAVED, b.saved)],
        feature_grid(ctx, pass.d),
        pass,
    )?;
    let apply = launch(
        ctx,
        &column_kernel("apply_moments"),
        Params {
            n: total as u32,
            flags: params.flags & FLAG_CUMULATIVE,
            ..params
        },
        &[
            (SAVED, b.saved),
            (RUNNING, b.layer.running),
            (NUM_BATCHES, b.layer.num_batches_tracked),
            (STEP, b.layer.step),
        ],
        [groups(pass.d, COLUMN_FEATURES), 1, 1],
        pass,
    )?;
    let normalize = normalize_dispatch(ctx, pass, &params, b)?;
    Ok([vec![moments], vec![apply, normalize]])
}

/// SyncBatchNorm's backward, in two parts around the ranks' all-reduce of Σdy and Σdy·x̂:
/// before it, this rank's dβ and dγ (into the gradient buffer, which DDP then averages);
/// after it, dx from the global sums (`sums`: Σdβ, Σdγ over `total` rows). `b.dbias` is not
/// written here: the caller sums dx's columns after.
pub fn sync_backward_dispatches(
    ctx: &GpuContext,
    pass: &Pass<'_>,
    total: usize,
    b: BackwardBindings<'_>,
    sums: [&wgpu::Buffer; 2],
) -> Result<[Vec<Dispatch>; 2], GpuError> {
    check_fusion(pass)?;
    let mut params = backward_params(pass);
    let reduce = launch(
        ctx,
        &kernel(ctx, "backward_reduce"),
        params,
        &[
            (X, b.x),
            (Y, b.y),
            (DY, b.dy),
            (SAVED, b.saved),
            (DGAMMA, b.dgamma),
            (DBETA, b.dbeta),
        ],
        feature_grid(ctx, pass.d),
        pass,
    )?;
    let [global_dbeta, global_dgamma] = sums.map(Binding::whole);
    params.total = total as u32;
    let dx = launch(
        ctx,
        &kernel(ctx, "backward_dx"),
        params,
        &[
            (X, b.x),
            (Y, b.y),
            (DY, b.dy),
            (SAVED, b.saved),
            (DGAMMA, global_dgamma),
            (DBETA, global_dbeta),
            (DX, b.dx),
            (GAMMA, b.gamma),
        ],
        element_grid(ctx, pass.n, pass.d),
        pass,
    )?;
    Ok([vec![reduce], vec![dx]])
}
