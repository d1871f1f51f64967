//! Reductions: column sums (a Linear layer's bias gradient) and the GPU-side accumulation of
//! loss and accuracy, read back only when asked. Kernel: `shaders/reduce.wgsl`.

use super::{OpError, expect_matrix, groups};
use crate::gpu::uniform_struct;
use crate::gpu::{Binding, Dispatch, GpuContext, GpuError, GpuTensor, Kernel, Shader};
use std::any::Any;

use crate::graph::{Autodiff, CpuCx, CpuError, GpuCx, Node, Op, ValueId};
pub use crate::graph::{NonFiniteUpdate, RawTotals, TOTALS_LEN, Totals};

/// CPU reference: out\[j\] = Σ_i x\[i, j\] over x: \[n, d\].
pub fn reference_column_sum(x: &[f32], d: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; d];
    for row in x.chunks(d) {
        for (o, &v) in out.iter_mut().zip(row) {
            *o += v;
        }
    }
    out
}

uniform_struct! {
    struct Params {
        n: u32,
        d: u32,
        out_stride: u32,
        _pad: u32,
    }
}

/// out = column sums of x: [n, d], for each member x holds (`out` at its own member stride:
/// a bias gradient in the flat gradient buffer).
pub fn column_sum_dispatch(
    ctx: &GpuContext,
    n: usize,
    d: usize,
    x: Binding<'_>,
    out: Binding<'_>,
) -> Result<Dispatch, GpuError> {
    // Row-parallel on GPUs (256 invocations), one invocation per column on lavapipe.
    let rows = column_sum_rows(ctx);
    let features = if rows > 1 { 256 / rows } else { 64 };
    ctx.dispatch_at(
        &Kernel::new(Shader::Reduce, "column_sum")
            .with("WG_FEATURES", features)
            .with("ROWS", rows),
        Some(&Params {
            n: n as u32,
            d: d as u32,
            out_stride: out.member_elements(4),
            _pad: 0,
        }),
        &[(2, x), (3, out)],
        [groups(d, features), 1, x.members()],
    )
}

/// The most rows a loss kernel folds into the totals itself, in one workgroup of
/// `TOTALS_WG` = 256 invocations (16 rows each); a larger batch is spread over many
/// workgroups and folded by the metrics kernel in a second dispatch.
pub const FOLD_MAX_ROWS: usize = 4096;

/// Invocations sharing a column's rows in a column sum: 16 on GPUs, 1 on lavapipe (as batch
/// norm's sums). The losses that sum their gradient's columns themselves use the same, so
/// that their sums are the column-sum kernel's bits.
pub fn column_sum_rows(ctx: &GpuContext) -> u32 {
    if ctx.kernels().parallel_reductions {
        16
    } else {
        1
    }
}

/// The dispatches after a loss kernel that did not fold (`folded` false: no metrics node
/// absorbed, or more than [`FOLD_MAX_ROWS`] rows): the metrics kernel over its `rows` when it
/// absorbed the metrics, and the column sums of its gradient into the bias gradient it took
/// over (`grad_sums`: gradient [n, cols], bias gradient).
pub fn after_unfolded_loss(
    cx: &GpuCx<'_, '_>,
    (n, cols): (usize, usize),
    folded: bool,
    metrics: bool,
    rows: Binding<'_>,
    grad_sums: Option<(Binding<'_>, Binding<'_>)>,
) -> Result<Vec<Dispatch>, GpuError> {
    let mut out = Vec::new();
    if folded {
        return Ok(out);
    }
    if metrics {
        out.push(metrics_dispatch(cx.ctx, n, cx.step, rows, cx.totals)?);
    }
    if let Some((grad, dbias)) = grad_sums {
        out.push(column_sum_dispatch(cx.ctx, n, cols, grad, dbias)?);
    }
    Ok(out)
}

/// Adds a batch's per-row (loss, correct, counted, _) rows: [n, 4] into `totals`
/// ([`TOTALS_LEN`] floats), noting the step of the first non-finite loss; one workgroup per
/// member `rows` holds.
pub fn metrics_dispatch(
    ctx: &GpuContext,
    n: usize,
    step: Binding<'_>,
    rows: Binding<'_>,
    totals: Binding<'_>,
) -> Result<Dispatch, GpuError> {
    ctx.dispatch_at(
        &Kernel::new(Shader::Reduce, "metrics"),
        Some(&Params {
            n: n as u32,
            d: 4,
            out_stride: 0,
            _pad: 0,
        }),
        &[(1, step), (4, rows), (5, totals)],
        [1, 1, rows.members()],
    )
}

/// Column sums of a GPU matrix.
pub fn column_sum(ctx: &GpuContext, x: &GpuTensor) -> Result<GpuTensor, OpError> {
    let (n, d) = expect_matrix("column_sum", "input", x.shape())?;
    let out = GpuTensor::zeros(ctx, &[d], "column_sum")?;
    let dispatch = column_sum_dispatch(ctx, n, d, x.binding(), out.binding())?;
    ctx.submit(&[&dispatch]);
    Ok(out)
}

/// The CPU reference of folding a batch's per-row (scaled loss, correct, counted, 0) into the
/// running totals, noting the first step whose loss is not finite.
pub fn reference_fold(rows: &[f32], cx: &mut CpuCx<'_>) {
    let batch_loss: f64 = rows.chunks(4).map(|c| f64::from(c[0])).sum();
    let counted: f64 = rows.chunks(4).map(|c| f64::from(c[2])).sum();
    let step = cx.step();
    let t = &mut *cx.totals;
    t.weighted_loss += batch_loss * counted;
    t.correct += rows.chunks(4).map(|c| f64::from(c[1])).sum::<f64>();
    t.count += counted;
    t.batches += 1;
    t.last_loss = batch_loss as f32;
    if !batch_loss.is_finite() && t.first_nonfinite_step.is_none() {
        t.first_nonfinite_step = Some(step as u32);
    }
}

/// (rows) → (): folds the batch's per-row (loss, correct, counted) into the running totals,
/// noting the first step whose loss is not finite. A loss that can fold its own rows absorbs
/// it (see [`crate::ops::softmax_xent::CrossEntropyOp`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MetricsOp;

impl Op for MetricsOp {
    fn name(&self) -> &'static str {
        "metrics"
    }

    fn has_params(&self) -> bool {
        false
    }

    fn backward(&self, _: &Node, _: ValueId, _: &mut Autodiff<'_>) -> Option<ValueId> {
        None
    }

    fn run_cpu(&self, node: &Node, cx: &mut CpuCx<'_>) -> Result<Vec<Vec<f32>>, CpuError> {
        let rows = cx.input(node, 0).to_vec();
        reference_fold(&rows, cx);
        Ok(vec![])
    }

    fn encode_gpu(&self, node: &Node, cx: &mut GpuCx<'_, '_>) -> Result<(), GpuError> {
        let rows = cx.input_shape(node, 0).0;
        let d = metrics_dispatch(cx.ctx, rows, cx.step, cx.input(node, 0), cx.totals)?;
        cx.push(d);
        Ok(())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn uniforms_mirror_the_shader() {
        crate::gpu::assert_mirrors::<Params>(Shader::Reduce, 0);
        crate::gpu::assert_mirrors::<crate::ops::step::StepParams>(Shader::Reduce, 1);
    }

    use super::*;
    use crate::check::{Tolerance, assert_close};
    use crate::ops::step::{StepBuffer, StepParams};
    use crate::ops::test_support::{ctx, gpu_style_ctx, uniform};

    #[test]
    fn column_sum_matches_reference() {
        // lavapipe's kernels (one invocation per column) and GPUs' (row-parallel sums).
        for ctx in [ctx(), gpu_style_ctx()] {
            for &(n, d) in &[(1usize, 1usize), (3, 7), (65, 33), (1000, 10), (128, 3072)] {
                let x = uniform(n as u64, n * d, -1.0, 1.0);
                let g = GpuTensor::from_slice(ctx, &x, &[n, d], "x").unwrap();
                let got: Vec<f32> = column_sum(ctx, &g).unwrap().read(ctx).unwrap();
                let tol = Tolerance::new(1e-6 * (n as f32).sqrt(), 1e-5);
                let label = format!(
                    "column_sum {n}x{d} gpu kernels {}",
                    ctx.kernels().parallel_reductions
                );
                assert_close(&label, &got, &reference_column_sum(&x, d), tol);
            }
        }
    }

    #[test]
    fn metrics_accumulate_across_batches_and_flag_the_first_nonfinite_step() {
        let ctx = ctx();
        let steps = StepBuffer::new(ctx).unwrap();
        let totals = GpuTensor::zeros(ctx, &[TOTALS_LEN], "totals").unwrap();
        let mut want_loss = 0.0f64;
        for (step, &n) in [3usize, 1000, 257].iter().enumerate() {
            let mut rows = Vec::new();
            for i in 0..n {
                rows.extend_from_slice(&[0.5 / n as f32, (i % 3 == 0) as u8 as f32, 1.0, 0.0]);
            }
            let g = GpuTensor::from_slice(ctx, &rows, &[n, 4], "rows").unwrap();
            steps.write(ctx, &StepParams::at_step(step as u64));
            let d =
                metrics_dispatch(ctx, n, steps.binding(), g.binding(), totals.binding()).unwrap();
            ctx.submit(&[&d]);
            want_loss += 0.5 * n as f64;
        }
        let t = Totals::from_raw(&totals.read::<f32>(ctx).unwrap());
        assert_eq!(t.batches, 3);
        assert_eq!(t.count, 1260.0);
        assert_eq!(t.correct, (1 + 334 + 86) as f64);
        assert!((t.weighted_loss - want_loss).abs() < 1e-3, "{t:?}");
        assert_eq!(t.first_nonfinite_step, None);

        let bad = GpuTensor::from_slice(ctx, &[f32::NAN, 0.0, 1.0, 0.0], &[1, 4], "rows").unwrap();
        for step in [7u64, 8] {
            steps.write(ctx, &StepParams::at_step(step));
            let d =
                metrics_dispatch(ctx, 1, steps.binding(), bad.binding(), totals.binding()).unwrap();
            ctx.submit(&[&d]);
        }
        let t = Totals::from_raw(&totals.read::<f32>(ctx).unwrap());
        assert_eq!(t.first_nonfinite_step, Some(7));
        assert!(t.last_loss.is_nan());
    }
}
