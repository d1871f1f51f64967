use super::*;
use crate::check::{Tolerance, assert_close};
use crate::gpu::{GpuContext, GpuTensor};
use crate::ops::OpError;
use crate::ops::test_support::{bits, ctx, gpu_style_ctx, uniform};

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
        (c.n, c.d),
        Affine {
            gamma: &c.gamma,
            beta: &c.beta,
            config,
            relu,
        },
        &mut running,
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
        .backward(
            ctx,
            ForwardTensors {
                x: &gx,
                y: &gy,
                saved: &gsaved,
            },
            &gdy,
            relu,
            dropout,
        )
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
    let want_eval = reference_eval(
        &c.x,
        c.d,
        Affine {
            gamma: &c.gamma,
            beta: &c.beta,
            config,
            relu,
        },
        &running,
    );
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
            (n, d),
            Affine {
                gamma: &c.gamma,
                beta: &c.beta,
                config: BatchNormConfig::default(),
                relu: false,
            },
            &mut running,
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
                (n, d),
                Affine {
                    gamma,
                    beta,
                    config,
                    relu,
                },
                &mut RunningStats::new(d),
            );
            y.iter()
                .zip(&w)
                .map(|(a, b)| f64::from(*a) * f64::from(*b))
                .sum()
        };
        let (y, saved) = reference_train(
            &c.x,
            (n, d),
            Affine {
                gamma: &c.gamma,
                beta: &c.beta,
                config,
                relu,
            },
            &mut RunningStats::new(d),
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

#[test]
fn uniforms_mirror_the_shader() {
    crate::gpu::assert_mirrors::<super::launch::Params>(crate::gpu::Shader::BatchNorm, 0);
    crate::gpu::assert_mirrors::<crate::ops::step::StepParams>(crate::gpu::Shader::BatchNorm, 12);
}

#[test]
fn the_fused_relu_keeps_nan_as_pytorch() {
    // x[1, 2] is NaN: in eval mode that element stays NaN through the ReLU; in train mode the
    // batch statistics of feature 2 are NaN (its running mean and variance too, whatever the
    // driver's max makes of NaN), and so is its whole column, dropped elements included
    // (NaN · 0).
    let c = case(6, 5, 0.3, 2.0);
    let mut x = c.x.clone();
    x[c.d + 2] = f32::NAN;
    let config = BatchNormConfig::default();
    for ctx in [ctx(), gpu_style_ctx()] {
        for dropout in [None, Some(fused_dropout(0.5))] {
            let label = format!(
                "gpu kernels {}, dropout {}",
                ctx.kernels().parallel_reductions,
                dropout.is_some()
            );
            let mut running = RunningStats::new(c.d);
            let bn = GpuBatchNorm::new(ctx, &c.gamma, &c.beta, &running, config).unwrap();
            let gx = GpuTensor::from_slice(ctx, &x, &[c.n, c.d], "x").unwrap();
            let eval: Vec<f32> = bn.forward_eval(ctx, &gx, true).unwrap().read(ctx).unwrap();
            let want = reference_eval(
                &x,
                c.d,
                Affine {
                    gamma: &c.gamma,
                    beta: &c.beta,
                    config,
                    relu: true,
                },
                &running,
            );
            assert!(eval[c.d + 2].is_nan() && want[c.d + 2].is_nan(), "{eval:?}");
            assert_close(
                &format!("{label}: eval relu with NaN"),
                &eval,
                &want,
                Tolerance::new(1e-5, 1e-4),
            );
            let (y, saved) = bn.forward_train(ctx, &gx, true, dropout, STEP).unwrap();
            let y: Vec<f32> = y.read(ctx).unwrap();
            let column: Vec<f32> = (0..c.n).map(|r| y[r * c.d + 2]).collect();
            assert!(column.iter().all(|v| v.is_nan()), "{label}: {column:?}");
            assert!(
                y.iter()
                    .enumerate()
                    .all(|(i, v)| i % c.d == 2 || v.is_finite()),
                "{label}: {y:?}"
            );
            let (_, want) = reference_train(
                &x,
                (c.n, c.d),
                Affine {
                    gamma: &c.gamma,
                    beta: &c.beta,
                    config,
                    relu: true,
                },
                &mut running,
            );
            let saved: Vec<f32> = saved.read(ctx).unwrap();
            let tol = Tolerance::new(1e-5, 2e-4);
            assert!(want.mean[2].is_nan() && want.invstd[2].is_nan());
            assert_close(&format!("{label}: mean"), &saved[..c.d], &want.mean, tol);
            assert_close(
                &format!("{label}: invstd"),
                &saved[c.d..],
                &want.invstd,
                tol,
            );
            let got = bn.running_stats(ctx).unwrap();
            assert!(running.mean[2].is_nan() && running.var[2].is_nan());
            assert_close(
                &format!("{label}: running_mean"),
                &got.mean,
                &running.mean,
                tol,
            );
            assert_close(
                &format!("{label}: running_var"),
                &got.var,
                &running.var,
                tol,
            );
        }
    }
}

/// The Linear's bias gradient that the backward sums on its way through dx is the column-sum
/// kernel's over the same dx, bit for bit, with both kernel families. (Σ_r dx is zero but for
/// rounding, so only the bits can tell a sum from a written zero.)
#[test]
fn the_bias_gradient_summed_in_the_backward_is_the_column_sum_of_dx() {
    use crate::ops::reduce::column_sum_dispatch;
    for ctx in [ctx(), gpu_style_ctx()] {
        for (n, d) in [(2usize, 1usize), (3, 7), (65, 33), (1000, 10)] {
            let c = case(n, d, 0.5, 2.0);
            let config = BatchNormConfig::default();
            let bn =
                GpuBatchNorm::new(ctx, &c.gamma, &c.beta, &RunningStats::new(d), config).unwrap();
            let gx = GpuTensor::from_slice(ctx, &c.x, &[n, d], "x").unwrap();
            let (gy, gsaved) = bn.forward_train(ctx, &gx, true, None, STEP).unwrap();
            let dy = uniform(5, n * d, -1.0, 1.0);
            let gdy = GpuTensor::from_slice(ctx, &dy, &[n, d], "dy").unwrap();
            let run = |summed_inside: bool| {
                let zeros = |len: usize| GpuTensor::zeros(ctx, &[len], "out").unwrap();
                let (dx, dgamma, dbeta, dbias) = (zeros(n * d), zeros(d), zeros(d), zeros(d));
                let pass = Pass {
                    n,
                    d,
                    config,
                    relu: true,
                    dropout: None,
                };
                let bindings = BackwardBindings {
                    x: gx.binding(),
                    y: gy.binding(),
                    dy: gdy.binding(),
                    saved: gsaved.binding(),
                    gamma: bn.gamma.binding(),
                    dgamma: dgamma.binding(),
                    dbeta: dbeta.binding(),
                    dx: dx.binding(),
                    dbias: summed_inside.then(|| dbias.binding()),
                };
                let mut list = backward_dispatches(ctx, &pass, bindings).unwrap();
                if !summed_inside {
                    list.push(
                        column_sum_dispatch(ctx, n, d, dx.binding(), dbias.binding()).unwrap(),
                    );
                }
                ctx.submit(&list.iter().collect::<Vec<_>>());
                [
                    bits(ctx, &dx),
                    bits(ctx, &dgamma),
                    bits(ctx, &dbeta),
                    bits(ctx, &dbias),
                ]
            };
            let label = format!("{n}x{d}, gpu kernels {}", ctx.kernels().parallel_reductions);
            let (inside, apart) = (run(true), run(false));
            for (k, what) in ["dx", "dgamma", "dbeta", "dbias"].iter().enumerate() {
                assert_eq!(inside[k], apart[k], "{what}, {label}");
            }
        }
    }
}

/// With the GPU kernels, the one-pass train-mode forward and backward (a batch up to
/// ONE_PASS_MAX_ROWS rows) against the two-pass ones they replace: every output bit for bit,
/// through the fused ReLU and dropout, with and without the bias gradient.
#[test]
fn one_pass_row_parallel_kernels_match_the_two_pass_ones_bit_for_bit() {
    use super::launch::{PassDropout, backward_passes, train_passes};
    use crate::ops::reduce::column_sum_dispatch;
    let ctx = gpu_style_ctx();
    for (n, d) in [(2usize, 1usize), (3, 7), (65, 33), (1000, 10)] {
        for dropout in [None, Some(fused_dropout(0.3))] {
            let c = case(n, d, 0.5, 2.0);
            let config = BatchNormConfig::default();
            let dy = uniform(5, n * d, -1.0, 1.0);
            let run = |one_pass: bool| {
                let mut running = RunningStats::new(d);
                running.mean = uniform(3, d, -1.0, 1.0);
                let bn = GpuBatchNorm::new(ctx, &c.gamma, &c.beta, &running, config).unwrap();
                let gx = GpuTensor::from_slice(ctx, &c.x, &[n, d], "x").unwrap();
                let gdy = GpuTensor::from_slice(ctx, &dy, &[n, d], "dy").unwrap();
                let zeros = |len: usize| GpuTensor::zeros(ctx, &[len], "out").unwrap();
                let (y, saved) = (zeros(n * d), zeros(2 * d));
                let p = dropout.map(|d| [d.p]);
                let pass = Pass {
                    n,
                    d,
                    config,
                    relu: true,
                    dropout: dropout.zip(p.as_ref()).map(|(d, p)| PassDropout {
                        p,
                        layer: d.stream.layer,
                    }),
                };
                let bindings = ForwardBindings {
                    layer: bn.bindings(),
                    x: gx.binding(),
                    saved: saved.binding(),
                    y: y.binding(),
                };
                let forward = train_passes(ctx, &pass, bindings, one_pass).unwrap();
                assert_eq!(forward.len(), if one_pass { 1 } else { 2 });
                ctx.submit(&forward.iter().collect::<Vec<_>>());
                let mut out = vec![bits(ctx, &y), bits(ctx, &saved), bits(ctx, &bn.running)];
                for with_bias in [false, true] {
                    let (dx, dgamma, dbeta, dbias) = (zeros(n * d), zeros(d), zeros(d), zeros(d));
                    let bindings = BackwardBindings {
                        x: gx.binding(),
                        y: y.binding(),
                        dy: gdy.binding(),
                        saved: saved.binding(),
                        gamma: bn.gamma.binding(),
                        dgamma: dgamma.binding(),
                        dbeta: dbeta.binding(),
                        dx: dx.binding(),
                        dbias: with_bias.then(|| dbias.binding()),
                    };
                    let mut list = backward_passes(ctx, &pass, bindings, one_pass).unwrap();
                    if with_bias && !one_pass {
                        list.push(
                            column_sum_dispatch(ctx, n, d, dx.binding(), dbias.binding()).unwrap(),
                        );
                    }
                    ctx.submit(&list.iter().collect::<Vec<_>>());
                    out.extend([bits(ctx, &dx), bits(ctx, &dgamma), bits(ctx, &dbeta)]);
                    if with_bias {
                        out.push(bits(ctx, &dbias));
                    }
                }
                out
            };
            let (one, two) = (run(true), run(false));
            let what = [
                "y",
                "saved",
                "running",
                "dx",
                "dgamma",
                "dbeta",
                "dx (with bias)",
                "dgamma (with bias)",
                "dbeta (with bias)",
                "dbias",
            ];
            for (k, name) in what.iter().enumerate() {
                assert_eq!(
                    one[k],
                    two[k],
                    "{name}, {n}x{d}, dropout {}",
                    dropout.is_some()
                );
            }
        }
    }
}
