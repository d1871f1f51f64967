//! Binary cross-entropy with logits, the lecture's binary case: `torch.nn.BCEWithLogitsLoss`
//! in its numerically stable form, with `pos_weight`. Kernel: `shaders/bce.wgsl`.

use super::reduce::{self, FOLD_MAX_ROWS};
use super::softmax_xent::Reduction;
use super::step::{StepBuffer, StepParams};
use super::{OpError, expect_shape, groups};
use crate::gpu::uniform_struct;
use crate::gpu::{Binding, Dispatch, GpuContext, GpuError, GpuTensor, Kernel, Shader};

use super::loss::{LossBindings, LossKernel, LossOp, LossReference};
use crate::graph::{GpuCx, Graph};

/// `torch.nn.BCEWithLogitsLoss`'s options (a scalar `pos_weight`: one output), named as
/// PyTorch names them; `Default` is PyTorch's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BceConfig {
    /// `pos_weight`: weight of the positive class' term (default 1, unweighted).
    pub pos_weight: f32,
    /// `reduction` (default [`Reduction::Mean`]).
    pub reduction: Reduction,
}

impl Default for BceConfig {
    fn default() -> Self {
        Self {
            pos_weight: 1.0,
            reduction: Reduction::Mean,
        }
    }
}

/// Checks that every target is a probability.
pub fn check_targets(targets: &[f32]) -> Result<(), OpError> {
    match targets.iter().position(|t| !(0.0..=1.0).contains(t)) {
        Some(index) => Err(OpError::Invalid {
            op: "binary_cross_entropy_with_logits",
            message: format!(
                "target {} at index {index} is not in [0, 1]",
                targets[index]
            ),
        }),
        None => Ok(()),
    }
}

/// The factor applied to every element's loss and gradient (1/N for the mean).
pub fn loss_scale(len: usize, reduction: Reduction) -> f32 {
    match reduction {
        Reduction::Mean => 1.0 / len as f32,
        Reduction::Sum | Reduction::None => 1.0,
    }
}

/// CPU reference in f64: (loss as reduced, ∂loss/∂x). x, y: \[n\].
/// loss_i = (1 − y)·x + (1 + (pw − 1)·y)·log(1 + e^(−x)); ∂/∂x = (1 + (pw − 1)·y)·σ(x) − pw·y.
pub fn reference(x: &[f32], y: &[f32], config: BceConfig) -> (Vec<f32>, Vec<f32>) {
    let pw = f64::from(config.pos_weight);
    let scale = f64::from(loss_scale(x.len(), config.reduction));
    let mut losses = Vec::with_capacity(x.len());
    let mut grad = Vec::with_capacity(x.len());
    for (&xi, &yi) in x.iter().zip(y) {
        let (xi, yi) = (f64::from(xi), f64::from(yi));
        let lw = 1.0 + (pw - 1.0) * yi;
        // log(1 + e^(−x)) = log1p(e^(−|x|)) + max(−x, 0)
        let softplus = (-xi.abs()).exp().ln_1p() + (-xi).max(0.0);
        losses.push((1.0 - yi) * xi + lw * softplus);
        let sigmoid = 1.0 / (1.0 + (-xi).exp());
        grad.push(((lw * sigmoid - pw * yi) * scale) as f32);
    }
    let loss = match config.reduction {
        Reduction::Mean => vec![(losses.iter().sum::<f64>() * scale) as f32],
        Reduction::Sum => vec![losses.iter().sum::<f64>() as f32],
        Reduction::None => losses.into_iter().map(|v| v as f32).collect(),
    };
    (loss, grad)
}

uniform_struct! {
    /// Mirrors `Params` in `shaders/bce.wgsl`.
    struct Params {
        n: u32,
        flags: u32,
        pos_weight: f32,
        dbias_stride: u32,
    }
}

const WG: u32 = 64;

/// The GPU buffers of one BCE-with-logits evaluation.
#[derive(Clone, Copy)]
pub struct BceBindings<'a> {
    /// The step uniform; its `loss_scale` is [`loss_scale`] of the batch.
    pub step: Binding<'a>,
    pub logits: Binding<'a>,
    /// f32 targets in [0, 1].
    pub targets: Binding<'a>,
    /// [n, 4]: per element (scaled loss, correct, counted, 0).
    pub rows: Binding<'a>,
    /// ∂loss/∂logits, when wanted.
    pub grad: Option<Binding<'a>>,
    /// The running totals, when the loss folds the batch into them itself (at most
    /// [`FOLD_MAX_ROWS`] elements, one workgroup).
    pub totals: Option<Binding<'a>>,
    /// The gradient's sum (the last Linear's bias gradient), when the loss folds the totals
    /// and writes the gradient.
    pub bias_grad: Option<Binding<'a>>,
}

/// Builds the BCE-with-logits dispatch over `n` logits (which also folds the batch into
/// `b.totals` when given).
pub fn dispatch(
    ctx: &GpuContext,
    n: usize,
    config: BceConfig,
    b: BceBindings<'_>,
) -> Result<Dispatch, GpuError> {
    let params = Params {
        n: n as u32,
        flags: u32::from(b.grad.is_some()) | (u32::from(b.bias_grad.is_some()) << 1),
        pos_weight: config.pos_weight,
        dbias_stride: b.bias_grad.map_or(0, |d| d.member_elements(4)),
    };
    let members = b.logits.members();
    let grad = b.grad.unwrap_or_else(|| ctx.placeholder_out());
    let mut bindings = vec![
        (1, b.step),
        (2, b.logits),
        (3, b.targets),
        (4, b.rows),
        (5, grad),
    ];
    if b.bias_grad.is_some() && (b.totals.is_none() || b.grad.is_none()) {
        return Err(GpuError::Unsupported(
            "BCE with logits sums its gradient only where it folds the totals and writes \
             the gradient"
                .into(),
        ));
    }
    match b.totals {
        Some(totals) if n <= FOLD_MAX_ROWS => {
            bindings.push((6, totals));
            // The kernel's layout has the binding whether or not the flag asks for the sum.
            bindings.push((7, b.bias_grad.unwrap_or(ctx.placeholder_out())));
            let kernel = Kernel::new(Shader::Bce, "bce_with_logits_totals")
                .with("SUM_ROWS", reduce::column_sum_rows(ctx));
            ctx.dispatch_at(&kernel, Some(&params), &bindings, [1, 1, members])
        }
        Some(_) => Err(GpuError::Unsupported(format!(
            "BCE with logits folds at most {FOLD_MAX_ROWS} rows into the totals, not {n}"
        ))),
        None => ctx.dispatch_at(
            &Kernel::new(Shader::Bce, "bce_with_logits").with("WG", WG),
            Some(&params),
            &bindings,
            [groups(n, WG), 1, members],
        ),
    }
}

/// BCE with logits of GPU logits (any shape) against `targets` of the same length:
/// (loss as reduced, gradient with the logits' shape).
pub fn bce_with_logits(
    ctx: &GpuContext,
    logits: &GpuTensor,
    targets: &[f32],
    config: BceConfig,
) -> Result<(Vec<f32>, GpuTensor), OpError> {
    let n = logits.len();
    expect_shape(
        "binary_cross_entropy_with_logits",
        "target",
        &[targets.len()],
        &[n],
    )?;
    check_targets(targets)?;
    let steps = StepBuffer::new(ctx)?;
    steps.write(
        ctx,
        &StepParams {
            loss_scale: loss_scale(n, config.reduction),
            ..StepParams::default()
        },
    );
    let gtargets = GpuTensor::from_slice(ctx, targets, &[n], "targets")?;
    let rows = GpuTensor::zeros(ctx, &[n, 4], "bce.rows")?;
    let grad = GpuTensor::zeros(ctx, logits.shape(), "bce.grad")?;
    let d = dispatch(
        ctx,
        n,
        config,
        BceBindings {
            step: steps.binding(),
            logits: logits.binding(),
            targets: gtargets.binding(),
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
        Reduction::Mean | Reduction::Sum => {
            vec![losses.iter().map(|&v| f64::from(v)).sum::<f64>() as f32]
        }
    };
    Ok((loss, grad))
}

/// `nn.BCEWithLogitsLoss` as the graph's loss node ([`LossOp`]) over one logit per sample.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BceWithLogits {
    pub config: BceConfig,
}

/// (logits, target) → (rows, dlogits): BCE with logits as the graph's loss node. Rows are per
/// sample (scaled loss, correct, 1, 0).
pub type BceWithLogitsOp = LossOp<BceWithLogits>;

impl LossKernel for BceWithLogits {
    const NAME: &'static str = "bce_with_logits";

    fn reference(&self, _: &Graph, logits: &[f32], _: usize, labels: &[u32]) -> LossReference {
        let y: Vec<f32> = labels.iter().map(|&l| l as f32).collect();
        let scale = loss_scale(y.len(), self.config.reduction);
        let none = BceConfig {
            reduction: Reduction::None,
            ..self.config
        };
        let (per_row, _) = reference(logits, &y, none);
        let (reduced, grad) = reference(logits, &y, self.config);
        let mut rows = Vec::with_capacity(y.len() * 4);
        for ((&loss, &x), &t) in per_row.iter().zip(logits).zip(&y) {
            let correct = (x > 0.0) == (t > 0.5);
            rows.extend_from_slice(&[loss * scale, f32::from(u8::from(correct)), 1.0, 0.0]);
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
        (n, _): (usize, usize),
        b: LossBindings<'_>,
    ) -> Result<Dispatch, GpuError> {
        let bindings = BceBindings {
            step: b.step,
            logits: b.logits,
            targets: b.targets,
            rows: b.rows,
            grad: b.grad,
            totals: b.totals,
            bias_grad: b.bias_grad,
        };
        dispatch(cx.ctx, n, self.config, bindings)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn uniform_mirrors_the_shader() {
        crate::gpu::assert_mirrors::<Params>(Shader::Bce, 0);
    }

    use super::*;
    use crate::check::{Tolerance, assert_close};
    use crate::ops::test_support::{bits, ctx, gpu_style_ctx, uniform};

    #[test]
    fn matches_reference_with_saturated_logits_and_pos_weight() {
        let ctx = ctx();
        for &n in &[1usize, 3, 7, 65, 1000] {
            let mut x = uniform(n as u64, n, -8.0, 8.0);
            x[0] = 30.0;
            if n > 2 {
                x[1] = -30.0;
                x[2] = 1e4;
            }
            let y: Vec<f32> = uniform(9, n, 0.0, 1.0).iter().map(|v| v.round()).collect();
            for reduction in [Reduction::Mean, Reduction::Sum, Reduction::None] {
                for pos_weight in [1.0f32, 2.5] {
                    let config = BceConfig {
                        pos_weight,
                        reduction,
                    };
                    let gx = GpuTensor::from_slice(ctx, &x, &[n, 1], "x").unwrap();
                    let (loss, grad) = bce_with_logits(ctx, &gx, &y, config).unwrap();
                    let (want_loss, want_grad) = reference(&x, &y, config);
                    let label = format!("bce n {n} {config:?}");
                    assert!(loss.iter().all(|v| v.is_finite()), "{label}: {loss:?}");
                    assert_close(
                        &format!("{label} loss"),
                        &loss,
                        &want_loss,
                        Tolerance::new(1e-5, 1e-5),
                    );
                    // (1 + (pw-1)y)·σ − pw·y cancels when σ → 1, as in PyTorch's own backward: a few
                    // ulps of pw, times the reduction's scale.
                    let atol = 1e-6 * loss_scale(n, reduction);
                    assert_close(
                        &format!("{label} grad"),
                        &grad.read(ctx).unwrap(),
                        &want_grad,
                        Tolerance::new(atol, 1e-5),
                    );
                }
            }
        }
    }

    /// A NaN logit gives a NaN loss and gradient, as in PyTorch, whatever the driver's
    /// `exp`, `log` and `max` make of NaN; ±∞ give what the formula gives.
    #[test]
    fn nan_logits_give_nan_loss_and_gradient_as_pytorch() {
        let x = [
            f32::NAN,
            -f32::NAN,
            f32::from_bits(0x7f80_0001),
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::INFINITY,
            f32::NEG_INFINITY,
            2.0,
        ];
        let y = [1.0, 0.0, 1.0, 0.5, 1.0, 1.0, 0.0, 0.0, 1.0];
        let n = x.len();
        let ctx = ctx();
        let gx = GpuTensor::from_slice(ctx, &x, &[n, 1], "x").unwrap();
        for pos_weight in [1.0f32, 2.5] {
            let config = BceConfig {
                pos_weight,
                reduction: Reduction::None,
            };
            let (loss, grad) = bce_with_logits(ctx, &gx, &y, config).unwrap();
            let (want_loss, want_grad) = reference(&x, &y, config);
            assert!(want_loss[..4].iter().all(|v| v.is_nan()), "{want_loss:?}");
            assert!(want_grad[..4].iter().all(|v| v.is_nan()), "{want_grad:?}");
            let tol = Tolerance::new(1e-6, 1e-5);
            assert_close(&format!("loss, {config:?}"), &loss, &want_loss, tol);
            let grad: Vec<f32> = grad.read(ctx).unwrap();
            assert_close(&format!("grad, {config:?}"), &grad, &want_grad, tol);
            let mean = BceConfig {
                reduction: Reduction::Mean,
                ..config
            };
            let (loss, _) = bce_with_logits(ctx, &gx, &y, mean).unwrap();
            assert!(loss[0].is_nan(), "{loss:?}");
        }
    }

    #[test]
    fn reference_matches_the_textbook_formula_and_finite_differences() {
        let x = [0.3f32, -1.2, 2.0];
        let y = [1.0f32, 0.0, 1.0];
        let config = BceConfig {
            pos_weight: 2.0,
            reduction: Reduction::Sum,
        };
        let (loss, grad) = reference(&x, &y, config);
        let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
        let want: f64 = x
            .iter()
            .zip(&y)
            .map(|(&xi, &yi)| {
                let (xi, yi) = (f64::from(xi), f64::from(yi));
                -(2.0 * yi * sig(xi).ln() + (1.0 - yi) * (1.0 - sig(xi)).ln())
            })
            .sum();
        assert!((f64::from(loss[0]) - want).abs() < 1e-5);
        for i in 0..3 {
            let h = 1e-3f32;
            let mut p = x;
            p[i] += h;
            let mut m = x;
            m[i] -= h;
            let fd = (reference(&p, &y, config).0[0] - reference(&m, &y, config).0[0]) / (2.0 * h);
            assert!(
                (fd - grad[i]).abs() < 1e-3,
                "grad[{i}] fd {fd} analytic {}",
                grad[i]
            );
        }
    }

    /// The loss kernel that folds its elements into the totals (and sums its gradient)
    /// against the loss kernel followed by the metrics and column-sum kernels: rows,
    /// gradient, totals and sum bit for bit, with both kernel families.
    #[test]
    fn folding_the_totals_in_the_loss_matches_the_metrics_kernel_bit_for_bit() {
        use crate::ops::reduce::{TOTALS_LEN, Totals, column_sum_dispatch, metrics_dispatch};
        for ctx in [ctx(), gpu_style_ctx()] {
            for n in [1usize, 3, 7, 65, 1000, FOLD_MAX_ROWS] {
                let config = BceConfig {
                    pos_weight: 1.5,
                    reduction: Reduction::Mean,
                };
                let logits = uniform(n as u64, n, -6.0, 6.0);
                let targets: Vec<f32> = uniform(n as u64 + 9, n, 0.0, 1.0)
                    .iter()
                    .map(|v| v.round())
                    .collect();
                let steps = StepBuffer::new(ctx).unwrap();
                steps.write(
                    ctx,
                    &StepParams {
                        loss_scale: loss_scale(n, config.reduction),
                        ..StepParams::at_step(2)
                    },
                );
                let gl = GpuTensor::from_slice(ctx, &logits, &[n], "logits").unwrap();
                let gt = GpuTensor::from_slice(ctx, &targets, &[n], "targets").unwrap();
                let run = |fold: bool| {
                    let rows = GpuTensor::zeros(ctx, &[n, 4], "rows").unwrap();
                    let grad = GpuTensor::zeros(ctx, &[n], "grad").unwrap();
                    let totals = GpuTensor::zeros(ctx, &[TOTALS_LEN], "totals").unwrap();
                    let dbias = GpuTensor::zeros(ctx, &[1], "dbias").unwrap();
                    let bindings = BceBindings {
                        step: steps.binding(),
                        logits: gl.binding(),
                        targets: gt.binding(),
                        rows: rows.binding(),
                        grad: Some(grad.binding()),
                        totals: fold.then(|| totals.binding()),
                        bias_grad: fold.then(|| dbias.binding()),
                    };
                    let mut list = vec![dispatch(ctx, n, config, bindings).unwrap()];
                    if !fold {
                        let (s, r, t) = (steps.binding(), rows.binding(), totals.binding());
                        list.push(metrics_dispatch(ctx, n, s, r, t).unwrap());
                        let (g, b) = (grad.binding(), dbias.binding());
                        list.push(column_sum_dispatch(ctx, n, 1, g, b).unwrap());
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
                    "{n} elements, gpu kernels {}",
                    ctx.kernels().parallel_reductions
                );
                assert_eq!(apart, folded, "{label}");
                let floats = |bits: &[u32]| -> Vec<f32> {
                    bits.iter().map(|&b| f32::from_bits(b)).collect()
                };
                let totals = Totals::from_raw(&floats(&folded[2]));
                assert_eq!((totals.batches, totals.count), (1, n as f64));
                let (want, want_grad) = reference(&logits, &targets, config);
                assert_close(
                    &format!("{label}, loss"),
                    &[totals.last_loss],
                    &want,
                    Tolerance::new(1e-5, 1e-5),
                );
                let sum: f64 = want_grad.iter().map(|&g| f64::from(g)).sum();
                assert_close(
                    &format!("{label}, gradient sum"),
                    &floats(&folded[3]),
                    &[sum as f32],
                    Tolerance::new(1e-5, 1e-4),
                );
            }
        }
    }

    #[test]
    fn bad_targets_are_typed_errors() {
        let ctx = ctx();
        let gx = GpuTensor::from_slice(ctx, &[0.0f32; 3], &[3], "x").unwrap();
        let err = bce_with_logits(ctx, &gx, &[0.0, 2.0, 1.0], BceConfig::default()).unwrap_err();
        assert!(err.to_string().contains("target 2 at index 1"), "{err}");
        let err = bce_with_logits(ctx, &gx, &[0.0, 1.0], BceConfig::default()).unwrap_err();
        assert!(
            matches!(err, OpError::Shape { what: "target", .. }),
            "{err}"
        );
    }
}
