//! Softmax, and softmax fused with cross-entropy: loss and gradient from one kernel, as
//! `torch.nn.CrossEntropyLoss` (class weights, `ignore_index`, label smoothing, reduction).
//! Kernel: `shaders/softmax_xent.wgsl`.
//!
//! For the mean, PyTorch divides by the summed weight of the non-ignored targets, not by N.
//! The host holds the targets when it uploads them, so it computes that divisor
//! ([`loss_scale`]) and passes it in the step uniform; the kernel needs no second pass.

use super::reduce::{self, FOLD_MAX_ROWS};
use super::step::{StepBuffer, StepParams};
use super::{OpError, expect_matrix, expect_shape, groups};
use crate::gpu::uniform_struct;
use crate::gpu::{Binding, Dispatch, GpuContext, GpuError, GpuTensor, Kernel, Shader};

use super::loss::{LossBindings, LossKernel, LossOp, LossReference};
use crate::graph::{ConstId, GpuCx, Graph};

/// How per-sample losses are combined, as PyTorch's `reduction`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Reduction {
    #[default]
    Mean,
    Sum,
    None,
}

/// `torch.nn.CrossEntropyLoss`'s options, named as PyTorch names them; `Default` is
/// PyTorch's.
#[derive(Clone, Debug, PartialEq)]
pub struct CrossEntropyConfig {
    /// `weight`: one weight per class (default none: every class weighs 1).
    pub weight: Option<Vec<f32>>,
    /// `ignore_index`: targets equal to this contribute nothing (default −100).
    pub ignore_index: i64,
    /// `label_smoothing`, ε in [0, 1]: the target distribution is (1-ε)·one_hot + ε/C
    /// (default 0).
    pub label_smoothing: f32,
    /// `reduction` (default [`Reduction::Mean`]).
    pub reduction: Reduction,
}

impl Default for CrossEntropyConfig {
    fn default() -> Self {
        Self {
            weight: None,
            ignore_index: -100,
            label_smoothing: 0.0,
            reduction: Reduction::Mean,
        }
    }
}

impl CrossEntropyConfig {
    /// Checks the options against the number of classes.
    pub fn validate(&self, classes: usize) -> Result<(), OpError> {
        if let Some(w) = &self.weight {
            expect_shape("cross_entropy", "weight", &[w.len()], &[classes])?;
        }
        if !(0.0..=1.0).contains(&self.label_smoothing) {
            return Err(OpError::Invalid {
                op: "cross_entropy",
                message: format!(
                    "label_smoothing must be in [0, 1], got {}",
                    self.label_smoothing
                ),
            });
        }
        Ok(())
    }

    fn class_weight(&self, class: usize) -> f64 {
        self.weight.as_ref().map_or(1.0, |w| f64::from(w[class]))
    }
}

/// Checks that every target is a class index or `ignore_index`.
pub fn check_targets(targets: &[i64], classes: usize, ignore_index: i64) -> Result<(), OpError> {
    for (index, &target) in targets.iter().enumerate() {
        if target != ignore_index && (target < 0 || target as usize >= classes) {
            return Err(OpError::TargetOutOfRange {
                op: "cross_entropy",
                index,
                target,
                classes,
            });
        }
    }
    Ok(())
}

/// The factor applied to every row's loss and gradient: 1 / Σ w_target over non-ignored rows
/// for the mean (NaN when every row is ignored, as PyTorch's 0/0), else 1.
pub fn loss_scale(targets: &[i64], config: &CrossEntropyConfig) -> f32 {
    match config.reduction {
        Reduction::Mean => {
            let total: f64 = targets
                .iter()
                .filter(|&&t| t != config.ignore_index && t >= 0)
                .map(|&t| config.class_weight(t as usize))
                .sum();
            if total == 0.0 {
                f32::NAN
            } else {
                (1.0 / total) as f32
            }
        }
        Reduction::Sum | Reduction::None => 1.0,
    }
}

/// CPU reference softmax. logits: [n, c] → probabilities [n, c].
pub fn reference_softmax(logits: &[f32], c: usize) -> Vec<f32> {
    logits
        .chunks(c)
        .flat_map(|row| {
            let lse = log_sum_exp(row);
            row.iter().map(move |&x| (f64::from(x) - lse).exp() as f32)
        })
        .collect()
}

fn log_sum_exp(row: &[f32]) -> f64 {
    let m = row
        .iter()
        .fold(f64::NEG_INFINITY, |m, &x| m.max(f64::from(x)));
    m + row
        .iter()
        .map(|&x| (f64::from(x) - m).exp())
        .sum::<f64>()
        .ln()
}

/// CPU reference cross-entropy in f64. logits: \[n, c\], targets: \[n\].
/// Returns the loss (one value, or n for `Reduction::None`) and ∂loss/∂logits: [n, c]
/// (for `None`, the gradient of the sum of the per-row losses).
pub fn reference(
    logits: &[f32],
    c: usize,
    targets: &[i64],
    config: &CrossEntropyConfig,
) -> (Vec<f32>, Vec<f32>) {
    let eps = f64::from(config.label_smoothing);
    let weight_sum: f64 = (0..c).map(|j| config.class_weight(j)).sum();
    let mut losses = Vec::with_capacity(targets.len());
    let mut grad = vec![0.0f64; logits.len()];
    let mut total_weight = 0.0f64;
    for (r, (row, &t)) in logits.chunks(c).zip(targets).enumerate() {
        if t == config.ignore_index {
            losses.push(0.0);
            continue;
        }
        let t = t as usize;
        let lse = log_sum_exp(row);
        let w_t = config.class_weight(t);
        total_weight += w_t;
        let nll = lse - f64::from(row[t]);
        // Without smoothing the term is absent, not 0 · ∞ where a logit is -∞.
        let smooth: f64 = if eps > 0.0 {
            let sum: f64 = (0..c)
                .map(|j| config.class_weight(j) * (lse - f64::from(row[j])))
                .sum();
            eps / c as f64 * sum
        } else {
            0.0
        };
        losses.push((1.0 - eps) * w_t * nll + smooth);
        for j in 0..c {
            let p = (f64::from(row[j]) - lse).exp();
            let onehot = if j == t { 1.0 } else { 0.0 };
            grad[r * c + j] = (1.0 - eps) * w_t * (p - onehot)
                + eps / c as f64 * (p * weight_sum - config.class_weight(j));
        }
    }
    let (loss, scale) = match config.reduction {
        // Every target ignored: the mean is 0/0 as in PyTorch, and the gradient 0 (each
        // ignored row's is, whatever the total weight), not 0 · ∞.
        Reduction::Mean => (
            vec![losses.iter().sum::<f64>() / total_weight],
            if total_weight == 0.0 {
                0.0
            } else {
                1.0 / total_weight
            },
        ),
        Reduction::Sum => (vec![losses.iter().sum::<f64>()], 1.0),
        Reduction::None => (losses, 1.0),
    };
    let loss = loss.into_iter().map(|v| v as f32).collect();
    let grad = grad.into_iter().map(|g| (g * scale) as f32).collect();
    (loss, grad)
}

uniform_struct! {
    /// Mirrors `Params` in `shaders/softmax_xent.wgsl`.
    struct Params {
        n: u32,
        c: u32,
        ignore_index: i32,
        flags: u32,
        label_smoothing: f32,
        weight_sum: f32,
        dbias_stride: u32,
        _pad: u32,
    }
}

const FLAG_WEIGHTS: u32 = 1;
const FLAG_GRAD: u32 = 2;
const FLAG_BIAS: u32 = 4;
const WG: u32 = 64;

// @binding numbers in shaders/softmax_xent.wgsl.
const STEP: u32 = 1;
const LOGITS: u32 = 2;
const TARGETS: u32 = 3;
const WEIGHT: u32 = 4;
const ROWS: u32 = 5;
const GRAD: u32 = 6;
const PROBS: u32 = 7;
const TOTALS: u32 = 8;
const DBIAS: u32 = 9;

fn kernel(entry: &'static str) -> Kernel {
    Kernel::new(Shader::SoftmaxXent, entry).with("WG", WG)
}

/// The GPU buffers of one cross-entropy evaluation.
#[derive(Clone, Copy)]
pub struct XentBindings<'a> {
    /// The step uniform; its `loss_scale` is [`loss_scale`] of the batch's targets.
    pub step: Binding<'a>,
    pub logits: Binding<'a>,
    /// i32 class indices.
    pub targets: Binding<'a>,
    /// Class weights, when the config has them.
    pub weight: Option<Binding<'a>>,
    /// [n, 4]: per row (scaled loss, correct, counted, 0).
    pub rows: Binding<'a>,
    /// ∂loss/∂logits, when wanted.
    pub grad: Option<Binding<'a>>,
    /// The running totals, when the loss folds the batch into them itself (at most
    /// [`FOLD_MAX_ROWS`] rows, one workgroup).
    pub totals: Option<Binding<'a>>,
    /// The gradient's column sums (the last Linear's bias gradient), when the loss folds the
    /// totals and writes the gradient.
    pub bias_grad: Option<Binding<'a>>,
}

/// Builds the fused softmax + cross-entropy dispatch over logits [n, c] (which also folds
/// the batch into `b.totals` when given).
pub fn dispatch(
    ctx: &GpuContext,
    n: usize,
    c: usize,
    config: &CrossEntropyConfig,
    b: XentBindings<'_>,
) -> Result<Dispatch, GpuError> {
    let weight_sum = config.weight.as_ref().map_or(c as f32, |w| w.iter().sum());
    let flags = if config.weight.is_some() {
        FLAG_WEIGHTS
    } else {
        0
    } | if b.grad.is_some() { FLAG_GRAD } else { 0 }
        | if b.bias_grad.is_some() { FLAG_BIAS } else { 0 };
    let params = Params {
        n: n as u32,
        c: c as u32,
        ignore_index: config
            .ignore_index
            .clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32,
        flags,
        label_smoothing: config.label_smoothing,
        weight_sum,
        dbias_stride: b.bias_grad.map_or(0, |d| d.member_elements(4)),
        _pad: 0,
    };
    let members = b.logits.members();
    let placeholder = ctx.placeholder();
    let mut bindings = vec![
        (STEP, b.step),
        (LOGITS, b.logits),
        (TARGETS, b.targets),
        (WEIGHT, b.weight.unwrap_or(placeholder)),
        (ROWS, b.rows),
        (GRAD, b.grad.unwrap_or(ctx.placeholder_out())),
    ];
    if b.bias_grad.is_some() && (b.totals.is_none() || b.grad.is_none()) {
        return Err(GpuError::Unsupported(
            "cross-entropy sums its gradient's columns only where it folds the totals and \
             writes the gradient"
                .into(),
        ));
    }
    match b.totals {
        Some(totals) if n <= FOLD_MAX_ROWS => {
            bindings.push((TOTALS, totals));
            // The kernel's layout has the binding whether or not the flag asks for the sums.
            bindings.push((DBIAS, b.bias_grad.unwrap_or(ctx.placeholder_out())));
            let kernel =
                kernel("softmax_xent_totals").with("SUM_ROWS", reduce::column_sum_rows(ctx));
            ctx.dispatch_at(&kernel, Some(&params), &bindings, [1, 1, members])
        }
        Some(_) => Err(GpuError::Unsupported(format!(
            "cross-entropy folds at most {FOLD_MAX_ROWS} rows into the totals, not {n}"
        ))),
        None => ctx.dispatch_at(
            &kernel("softmax_xent"),
            Some(&params),
            &bindings,
            [groups(n, WG), 1, members],
        ),
    }
}

/// Builds the softmax dispatch: probs[n, c] = softmax(logits) by row.
pub fn softmax_dispatch(
    ctx: &GpuContext,
    n: usize,
    c: usize,
    logits: Binding<'_>,
    probs: Binding<'_>,
) -> Result<Dispatch, GpuError> {
    let params = Params {
        n: n as u32,
        c: c as u32,
        ignore_index: 0,
        flags: 0,
        label_smoothing: 0.0,
        weight_sum: 0.0,
        dbias_stride: 0,
        _pad: 0,
    };
    ctx.dispatch_at(
        &kernel("softmax"),
        Some(&params),
        &[(LOGITS, logits), (PROBS, probs)],
        [groups(n, WG), 1, logits.members()],
    )
}

/// Softmax of GPU logits [n, c].
pub fn softmax(ctx: &GpuContext, logits: &GpuTensor) -> Result<GpuTensor, OpError> {
    let (n, c) = expect_matrix("softmax", "logits", logits.shape())?;
    let probs = GpuTensor::zeros(ctx, &[n, c], "probs")?;
    let d = softmax_dispatch(ctx, n, c, logits.binding(), probs.binding())?;
    ctx.submit(&[&d]);
    Ok(probs)
}

/// Cross-entropy of GPU logits [n, c] against `targets`: (loss as the reduction gives it,
/// gradient [n, c]).
pub fn cross_entropy(
    ctx: &GpuContext,
    logits: &GpuTensor,
    targets: &[i64],
    config: &CrossEntropyConfig,
) -> Result<(Vec<f32>, GpuTensor), OpError> {
    let (n, c) = expect_matrix("cross_entropy", "logits", logits.shape())?;
    expect_shape("cross_entropy", "target", &[targets.len()], &[n])?;
    config.validate(c)?;
    check_targets(targets, c, config.ignore_index)?;
    let scale = loss_scale(targets, config);
    let steps = StepBuffer::new(ctx)?;
    steps.write(
        ctx,
        &StepParams {
            loss_scale: scale,
            ..StepParams::default()
        },
    );
    let t32: Vec<i32> = targets
        .iter()
        .map(|&t| t.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32)
        .collect();
    let gtargets = GpuTensor::from_slice(ctx, &t32, &[n], "targets")?;
    let gweight = match &config.weight {
        Some(w) => Some(GpuTensor::from_slice(ctx, w, &[c], "weight")?),
        None => None,
    };
    let rows = GpuTensor::zeros(ctx, &[n, 4], "xent.rows")?;
    let grad = GpuTensor::zeros(ctx, &[n, c], "xent.grad")?;
    let d = dispatch(
        ctx,
        n,
        c,
        config,
        XentBindings {
            step: steps.binding(),
            logits: logits.binding(),
            targets: gtargets.binding(),
            weight: gweight.as_ref().map(GpuTensor::binding),
            rows: rows.binding(),
            grad: Some(grad.binding()),
            totals: None,
            bias_grad: None,
        },
    )?;
    ctx.submit(&[&d]);
    let per_row: Vec<f32> = rows.read(ctx)?;
    let losses: Vec<f32> = per_row.chunks(4).map(|r| r[0]).collect();
    let loss = match config.reduction {
        Reduction::None => losses,
        Reduction::Sum => vec![losses.iter().map(|&v| f64::from(v)).sum::<f64>() as f32],
        // Every row is already scaled by 1/Σw; NaN when every target is ignored.
        Reduction::Mean if scale.is_nan() => vec![f32::NAN],
        Reduction::Mean => vec![losses.iter().map(|&v| f64::from(v)).sum::<f64>() as f32],
    };
    Ok((loss, grad))
}

/// `nn.CrossEntropyLoss` as the graph's loss node ([`LossOp`]): its options, and its class
/// weights as a constant of the graph.
#[derive(Clone, Debug, PartialEq)]
pub struct CrossEntropy {
    pub config: CrossEntropyConfig,
    /// The class weights, resident as a graph constant (when the config has them).
    pub weight: Option<ConstId>,
}

/// (logits, target) → (rows, dlogits): cross-entropy as the graph's loss node. Rows are per
/// sample (scaled loss, correct, counted, 0) for the metrics.
pub type CrossEntropyOp = LossOp<CrossEntropy>;

impl LossKernel for CrossEntropy {
    const NAME: &'static str = "cross_entropy";

    fn reference(&self, _: &Graph, logits: &[f32], c: usize, labels: &[u32]) -> LossReference {
        let targets: Vec<i64> = labels.iter().map(|&l| i64::from(l)).collect();
        let scale = loss_scale(&targets, &self.config);
        let none = CrossEntropyConfig {
            reduction: Reduction::None,
            ..self.config.clone()
        };
        let (per_row, _) = reference(logits, c, &targets, &none);
        let (reduced, grad) = reference(logits, c, &targets, &self.config);
        let mut rows = Vec::with_capacity(targets.len() * 4);
        for (r, (&loss, &t)) in per_row.iter().zip(&targets).enumerate() {
            let row = &logits[r * c..(r + 1) * c];
            let counted = t != self.config.ignore_index;
            // torch.argmax: the first maximum.
            let argmax = row
                .iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |best, (j, &v)| {
                    if v > best.1 { (j, v) } else { best }
                })
                .0;
            let correct = counted && argmax as i64 == t;
            rows.extend_from_slice(&[
                if counted { loss * scale } else { 0.0 },
                f32::from(u8::from(correct)),
                f32::from(u8::from(counted)),
                0.0,
            ]);
        }
        LossReference {
            rows,
            loss: reduced.first().copied().unwrap_or(f32::NAN),
            grad,
        }
    }

    fn dispatch(
        &self,
        cx: &GpuCx<'_, '_>,
        (n, c): (usize, usize),
        b: LossBindings<'_>,
    ) -> Result<Dispatch, GpuError> {
        let bindings = XentBindings {
            step: b.step,
            logits: b.logits,
            targets: b.targets,
            weight: self.weight.map(|id| cx.constant(id)),
            rows: b.rows,
            grad: b.grad,
            totals: b.totals,
            bias_grad: b.bias_grad,
        };
        dispatch(cx.ctx, n, c, &self.config, bindings)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn uniforms_mirror_the_shader() {
        crate::gpu::assert_mirrors::<Params>(Shader::SoftmaxXent, 0);
        crate::gpu::assert_mirrors::<crate::ops::step::StepParams>(Shader::SoftmaxXent, 1);
    }

    use super::*;
    use crate::check::{Tolerance, assert_close};
    use crate::ops::test_support::{bits, ctx, gpu_style_ctx, uniform};

    fn targets(n: usize, c: usize, seed: u64) -> Vec<i64> {
        uniform(seed, n, 0.0, c as f32)
            .iter()
            .map(|&v| (v as i64).min(c as i64 - 1))
            .collect()
    }

    /// The loss kernel that folds its rows into the totals (and sums its gradient's columns)
    /// against the loss kernel followed by the metrics and column-sum kernels: rows,
    /// gradient, totals and column sums bit for bit, with both kernel families, for class
    /// counts that fill one block of columns or several.
    #[test]
    fn folding_the_totals_in_the_loss_matches_the_metrics_kernel_bit_for_bit() {
        use crate::ops::reduce::{TOTALS_LEN, Totals, column_sum_dispatch, metrics_dispatch};
        let weighted = |c: usize| CrossEntropyConfig {
            weight: Some((0..c).map(|j| 0.5 + j as f32 / c as f32).collect()),
            ignore_index: 3,
            label_smoothing: 0.1,
            reduction: Reduction::Mean,
        };
        for ctx in [ctx(), gpu_style_ctx()] {
            for (c, config) in [
                (10, CrossEntropyConfig::default()),
                (10, weighted(10)),
                (37, weighted(37)),
            ] {
                for n in [1usize, 3, 7, 65, 1000, FOLD_MAX_ROWS] {
                    let logits = uniform(n as u64, n * c, -4.0, 4.0);
                    let t = targets(n, c, n as u64 + 1);
                    let t32: Vec<i32> = t.iter().map(|&v| v as i32).collect();
                    let steps = StepBuffer::new(ctx).unwrap();
                    steps.write(
                        ctx,
                        &StepParams {
                            loss_scale: loss_scale(&t, &config),
                            ..StepParams::at_step(5)
                        },
                    );
                    let gl = GpuTensor::from_slice(ctx, &logits, &[n, c], "logits").unwrap();
                    let gt = GpuTensor::from_slice(ctx, &t32, &[n], "targets").unwrap();
                    let gw = config
                        .weight
                        .as_ref()
                        .map(|w| GpuTensor::from_slice(ctx, w, &[c], "weight").unwrap());
                    let run = |fold: bool| {
                        let rows = GpuTensor::zeros(ctx, &[n, 4], "rows").unwrap();
                        let grad = GpuTensor::zeros(ctx, &[n, c], "grad").unwrap();
                        let totals = GpuTensor::zeros(ctx, &[TOTALS_LEN], "totals").unwrap();
                        let dbias = GpuTensor::zeros(ctx, &[c], "dbias").unwrap();
                        let bindings = XentBindings {
                            step: steps.binding(),
                            logits: gl.binding(),
                            targets: gt.binding(),
                            weight: gw.as_ref().map(GpuTensor::binding),
                            rows: rows.binding(),
                            grad: Some(grad.binding()),
                            totals: fold.then(|| totals.binding()),
                            bias_grad: fold.then(|| dbias.binding()),
                        };
                        let mut list = vec![dispatch(ctx, n, c, &config, bindings).unwrap()];
                        if !fold {
                            let (s, r, t) = (steps.binding(), rows.binding(), totals.binding());
                            list.push(metrics_dispatch(ctx, n, s, r, t).unwrap());
                            let (g, b) = (grad.binding(), dbias.binding());
                            list.push(column_sum_dispatch(ctx, n, c, g, b).unwrap());
                        }
                        ctx.submit(&list.iter().collect::<Vec<_>>());
                        [
                            bits(ctx, &rows),
                            bits(ctx, &grad),
                            bits(ctx, &totals),
                            bits(ctx, &dbias),
                        ]
                    };
                    let (apart, folded) = (run(false), run(true));
                    let label = format!(
                        "{n}x{c}, {config:?}, gpu kernels {}",
                        ctx.kernels().parallel_reductions
                    );
                    for (k, what) in ["rows", "gradient", "totals", "column sums"]
                        .iter()
                        .enumerate()
                    {
                        assert_eq!(apart[k], folded[k], "{what}, {label}");
                    }
                    let floats = |bits: &[u32]| -> Vec<f32> {
                        bits.iter().map(|&b| f32::from_bits(b)).collect()
                    };
                    let totals = Totals::from_raw(&floats(&folded[2]));
                    let counted = t.iter().filter(|&&v| v != config.ignore_index).count();
                    assert_eq!(
                        (totals.batches, totals.count),
                        (1, counted as f64),
                        "{label}"
                    );
                    let (want, want_grad) = reference(&logits, c, &t, &config);
                    // Every target ignored: the mean is 0/0 (NaN), the batch's rows sum to 0.
                    let want = if counted == 0 { vec![0.0] } else { want };
                    assert_close(
                        &format!("{label} loss"),
                        &[totals.last_loss],
                        &want,
                        Tolerance::new(1e-5, 1e-5),
                    );
                    assert_close(
                        &format!("{label} column sums"),
                        &floats(&folded[3]),
                        &reduce::reference_column_sum(&want_grad, c),
                        Tolerance::new(1e-5, 1e-4),
                    );
                }
            }
        }
    }

    #[test]
    fn a_batch_too_large_to_fold_in_one_workgroup_is_refused() {
        let ctx = ctx();
        let n = FOLD_MAX_ROWS + 1;
        let buffer = GpuTensor::zeros(ctx, &[n, 4], "rows").unwrap();
        let steps = StepBuffer::new(ctx).unwrap();
        let bindings = XentBindings {
            step: steps.binding(),
            logits: buffer.binding(),
            targets: buffer.binding(),
            weight: None,
            rows: buffer.binding(),
            grad: None,
            totals: Some(buffer.binding()),
            bias_grad: None,
        };
        let Err(err) = dispatch(ctx, n, 1, &CrossEntropyConfig::default(), bindings) else {
            panic!("{n} rows folded in one workgroup");
        };
        assert!(err.to_string().contains("at most 4096 rows"), "{err}");
    }

    fn check(n: usize, c: usize, config: &CrossEntropyConfig, logits: &[f32], t: &[i64]) {
        let ctx = ctx();
        let g = GpuTensor::from_slice(ctx, logits, &[n, c], "logits").unwrap();
        let (loss, grad) = cross_entropy(ctx, &g, t, config).unwrap();
        let (want_loss, want_grad) = reference(logits, c, t, config);
        let label = format!("xent {n}x{c} {config:?}");
        assert_close(
            &format!("{label} loss"),
            &loss,
            &want_loss,
            Tolerance::new(1e-5, 1e-5),
        );
        assert_close(
            &format!("{label} grad"),
            &grad.read(ctx).unwrap(),
            &want_grad,
            Tolerance::new(1e-6, 1e-4),
        );
    }

    #[test]
    fn matches_reference_on_odd_shapes_and_every_option() {
        for &(n, c) in &[(1usize, 1usize), (3, 7), (65, 33), (1000, 10), (128, 3072)] {
            let logits = uniform(n as u64 + 5, n * c, -4.0, 4.0);
            let mut t = targets(n, c, 11);
            if n > 2 {
                t[1] = -100;
            }
            let weight = Some(uniform(4, c, 0.2, 2.0));
            for reduction in [Reduction::Mean, Reduction::Sum, Reduction::None] {
                for (weight, label_smoothing) in [
                    (None, 0.0),
                    (weight.clone(), 0.0),
                    (weight.clone(), 0.15),
                    (None, 0.3),
                ] {
                    let config = CrossEntropyConfig {
                        weight,
                        label_smoothing,
                        reduction,
                        ..Default::default()
                    };
                    check(n, c, &config, &logits, &t);
                }
            }
        }
    }

    #[test]
    fn logits_of_plus_minus_1e4_stay_finite() {
        let c = 5;
        let logits = vec![1e4, -1e4, 0.0, 1e4 - 3.0, -1e4, -1e4, -1e4, -1e4, -1e4, 1e4];
        let t = vec![1, 4];
        let config = CrossEntropyConfig::default();
        let ctx = ctx();
        let g = GpuTensor::from_slice(ctx, &logits, &[2, c], "logits").unwrap();
        let (loss, grad) = cross_entropy(ctx, &g, &t, &config).unwrap();
        let grad: Vec<f32> = grad.read(ctx).unwrap();
        assert!(loss[0].is_finite() && grad.iter().all(|g| g.is_finite()));
        // Row 0: target 1 is 2e4 below the max, so its loss is 2e4; row 1's is ~0. Mean 1e4.
        assert!((loss[0] - 1e4).abs() < 1.0, "loss {}", loss[0]);
        check(2, c, &config, &logits, &t);
        let probs: Vec<f32> = softmax(ctx, &g).unwrap().read(ctx).unwrap();
        assert_close(
            "softmax ±1e4",
            &probs,
            &reference_softmax(&logits, c),
            Tolerance::new(1e-6, 1e-5),
        );
    }

    #[test]
    fn class_weights_with_ignore_index_use_the_weighted_mean() {
        // Two rows, one ignored: the mean divides by the remaining row's weight alone.
        let logits = vec![0.5, -1.0, 2.0, 0.1, 0.2, 0.3];
        let config = CrossEntropyConfig {
            weight: Some(vec![0.5, 3.0, 1.0]),
            ..Default::default()
        };
        let (loss, _) = reference(&logits, 3, &[1, -100], &config);
        let lse0 = (0.5f64.exp() + (-1.0f64).exp() + 2.0f64.exp()).ln();
        assert!((f64::from(loss[0]) - (lse0 + 1.0)).abs() < 1e-6, "{loss:?}");
        check(2, 3, &config, &logits, &[1, -100]);
    }

    #[test]
    fn every_target_ignored_gives_nan_mean_and_zero_gradient() {
        let ctx = ctx();
        let g = GpuTensor::from_slice(ctx, &[1.0f32, 2.0, 3.0, 4.0], &[2, 2], "logits").unwrap();
        let (loss, grad) =
            cross_entropy(ctx, &g, &[-100, -100], &CrossEntropyConfig::default()).unwrap();
        assert!(loss[0].is_nan());
        assert!(grad.read::<f32>(ctx).unwrap().iter().all(|&v| v == 0.0));
        // The CPU reference agrees.
        let (want_loss, want_grad) = reference(
            &[1.0, 2.0, 3.0, 4.0],
            2,
            &[-100, -100],
            &CrossEntropyConfig::default(),
        );
        assert!(want_loss[0].is_nan());
        assert_eq!(want_grad, vec![0.0; 4]);
    }

    /// A NaN or +∞ logit, or a row of -∞ only, makes the row's loss, gradient and softmax NaN,
    /// as in PyTorch (its log-softmax subtracts the row max: ∞ - ∞), whatever the driver's
    /// `exp` makes of NaN; a -∞ logit beside finite ones has probability 0 and leaves the row
    /// finite. Row by row, with label smoothing and class weights, and in the mean.
    #[test]
    fn nan_and_infinite_logits_give_nan_rows_as_pytorch() {
        let (nan, inf) = (f32::NAN, f32::INFINITY);
        let c = 4;
        #[rustfmt::skip]
        let logits = [
            nan, 1.0, 2.0, 3.0,
            1.0, 2.0, -nan, 0.0,
            1.0, 2.0, 0.0, f32::from_bits(0x7f80_0001),
            inf, 0.0, 1.0, 2.0,
            -inf, 0.0, 1.0, 2.0,
            -inf, -inf, -inf, -inf,
            0.5, -1.0, 2.0, 0.25,
        ];
        let t = [2, 0, 2, 1, 2, 0, 3];
        let n = t.len();
        let poisoned = [true, true, true, true, false, true, false];
        let ctx = ctx();
        let g = GpuTensor::from_slice(ctx, &logits, &[n, c], "logits").unwrap();
        let smoothed = CrossEntropyConfig {
            weight: Some(vec![0.5, 1.0, 2.0, 1.5]),
            label_smoothing: 0.1,
            ..Default::default()
        };
        for config in [CrossEntropyConfig::default(), smoothed] {
            let per_row = CrossEntropyConfig {
                reduction: Reduction::None,
                ..config.clone()
            };
            let (want, want_grad) = reference(&logits, c, &t, &per_row);
            for (r, &nan_row) in poisoned.iter().enumerate() {
                let row = &want_grad[r * c..(r + 1) * c];
                assert_eq!(want[r].is_nan(), nan_row, "reference, row {r}");
                assert!(
                    row.iter().all(|v| v.is_nan() == nan_row),
                    "reference, row {r}"
                );
            }
            check(n, c, &per_row, &logits, &t);
            let (mean, _) = cross_entropy(ctx, &g, &t, &config).unwrap();
            assert!(mean[0].is_nan(), "{config:?}: mean {mean:?}");
        }
        let probs: Vec<f32> = softmax(ctx, &g).unwrap().read(ctx).unwrap();
        let want = reference_softmax(&logits, c);
        for (r, &nan_row) in poisoned.iter().enumerate() {
            assert!(
                want[r * c..(r + 1) * c]
                    .iter()
                    .all(|v| v.is_nan() == nan_row)
            );
        }
        assert_close("softmax", &probs, &want, Tolerance::new(1e-6, 1e-5));
    }

    #[test]
    fn softmax_rows_sum_to_one() {
        let ctx = ctx();
        for &(n, c) in &[(1usize, 1usize), (3, 7), (65, 33), (1000, 10)] {
            let logits = uniform(3, n * c, -30.0, 30.0);
            let g = GpuTensor::from_slice(ctx, &logits, &[n, c], "logits").unwrap();
            let probs: Vec<f32> = softmax(ctx, &g).unwrap().read(ctx).unwrap();
            for row in probs.chunks(c) {
                assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
            }
            assert_close(
                "softmax",
                &probs,
                &reference_softmax(&logits, c),
                Tolerance::new(1e-6, 1e-5),
            );
        }
    }

    #[test]
    fn bad_targets_and_shapes_are_typed_errors() {
        let ctx = ctx();
        let g = GpuTensor::from_slice(ctx, &[0.0f32; 6], &[2, 3], "logits").unwrap();
        let err = cross_entropy(ctx, &g, &[0, 3], &CrossEntropyConfig::default()).unwrap_err();
        assert!(
            matches!(
                err,
                OpError::TargetOutOfRange {
                    index: 1,
                    target: 3,
                    classes: 3,
                    ..
                }
            ),
            "{err}"
        );
        let err = cross_entropy(ctx, &g, &[0, -1], &CrossEntropyConfig::default()).unwrap_err();
        assert!(err.to_string().contains("target -1 at index 1"), "{err}");
        let err = cross_entropy(ctx, &g, &[0], &CrossEntropyConfig::default()).unwrap_err();
        assert!(
            matches!(err, OpError::Shape { what: "target", .. }),
            "{err}"
        );
        let config = CrossEntropyConfig {
            weight: Some(vec![1.0; 2]),
            ..Default::default()
        };
        assert!(cross_entropy(ctx, &g, &[0, 1], &config).is_err());
        let config = CrossEntropyConfig {
            label_smoothing: 1.5,
            ..Default::default()
        };
        assert!(cross_entropy(ctx, &g, &[0, 1], &config).is_err());
    }

    /// The reference's gradient against central finite differences of its loss, in f64 terms.
    #[test]
    fn reference_gradient_matches_finite_differences() {
        let (n, c) = (4usize, 5usize);
        let logits = uniform(21, n * c, -2.0, 2.0);
        let t = vec![0, 3, -100, 4];
        let config = CrossEntropyConfig {
            weight: Some(uniform(2, c, 0.5, 1.5)),
            label_smoothing: 0.2,
            ..Default::default()
        };
        let (_, grad) = reference(&logits, c, &t, &config);
        let h = 1e-2f32;
        for i in 0..n * c {
            let mut plus = logits.clone();
            plus[i] += h;
            let mut minus = logits.clone();
            minus[i] -= h;
            let fd = (reference(&plus, c, &t, &config).0[0]
                - reference(&minus, c, &t, &config).0[0])
                / (2.0 * h);
            assert!(
                (fd - grad[i]).abs() < 1e-3,
                "grad[{i}]: fd {fd} analytic {}",
                grad[i]
            );
        }
    }
}
