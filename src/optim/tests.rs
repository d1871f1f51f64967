use super::*;
use crate::check::{Tolerance, assert_close};
use crate::gpu::GpuTensor;
use crate::graph::FlatState;
use crate::ops::reduce::{TOTALS_LEN, Totals};
use crate::ops::step::StepBuffer;
use crate::ops::test_support::{ctx, uniform};

/// Runs `steps` updates on the GPU and on the CPU from the same start; compares everything.
fn check(optimizer: Optimizer, len: usize, steps: u64) {
    let ctx = ctx();
    let mut param = uniform(1, len, -1.0, 1.0);
    let mut state: Vec<Vec<f32>> = vec![vec![0.0; len]; optimizer.state_count()];
    // The kernel works on vec4s: buffers hold len rounded up to 4, the tail zero.
    let padded = len.next_multiple_of(4);
    let pad = |v: &[f32]| [v, &vec![0.0; padded - len]].concat();
    let gparam = GpuTensor::from_slice(ctx, &pad(&param), &[padded], "param").unwrap();
    let ggrad = GpuTensor::zeros(ctx, &[padded], "grad").unwrap();
    let gstate: Vec<GpuTensor> = state
        .iter()
        .map(|s| GpuTensor::from_slice(ctx, &pad(s), &[padded], "state").unwrap())
        .collect();
    let step_buffer = StepBuffer::new(ctx).unwrap();
    let state_bindings: Vec<_> = gstate.iter().map(GpuTensor::binding).collect();
    let totals = GpuTensor::zeros(ctx, &[TOTALS_LEN], "totals").unwrap();
    let flat = FlatState {
        len,
        params: gparam.binding(),
        grads: ggrad.binding(),
        optimizer: state_bindings,
    };
    let d = dispatch(
        ctx,
        &optimizer,
        &flat,
        step_buffer.binding(),
        totals.binding(),
    )
    .unwrap();
    for step in 0..steps {
        let grad = uniform(100 + step, len, -1.0, 1.0);
        ggrad.write(ctx, &pad(&grad)).unwrap();
        let mut p = StepParams::at_step(step);
        optimizer.fill_step(step, &mut p);
        step_buffer.write(ctx, &p);
        ctx.submit(&[&d]);
        optimizer
            .reference_step(step, &mut param, &grad, &mut state)
            .unwrap();
    }
    let tol = Tolerance::new(1e-6, 1e-5);
    let got: Vec<f32> = gparam.read(ctx).unwrap();
    assert_close(&format!("{optimizer:?} param"), &got[..len], &param, tol);
    assert!(
        got[len..].iter().all(|&v| v == 0.0),
        "zero padding stays zero"
    );
    for (i, (g, s)) in gstate.iter().zip(&state).enumerate() {
        let got: Vec<f32> = g.read(ctx).unwrap();
        assert_close(&format!("{optimizer:?} state {i}"), &got[..len], s, tol);
    }
    let totals = Totals::from_raw(&totals.read::<f32>(ctx).unwrap());
    assert_eq!(
        totals.first_nonfinite_update, None,
        "finite updates note nothing"
    );
}

#[test]
fn the_first_update_with_a_nonfinite_gradient_or_result_is_noted_with_its_step_and_element() {
    let ctx = ctx();
    let len = 1031;
    for optimizer in [
        Optimizer::Sgd(Sgd {
            lr: 1e30,
            momentum: 0.9,
            ..Sgd::default()
        }),
        Optimizer::Adam(Adam::default()),
    ] {
        let gparam = GpuTensor::from_slice(ctx, &vec![0.5f32; len + 1], &[len + 1], "p").unwrap();
        let ggrad = GpuTensor::zeros(ctx, &[len + 1], "grad").unwrap();
        let gstate: Vec<GpuTensor> = (0..optimizer.state_count())
            .map(|_| GpuTensor::zeros(ctx, &[len + 1], "state").unwrap())
            .collect();
        let state_bindings: Vec<_> = gstate.iter().map(GpuTensor::binding).collect();
        let steps = StepBuffer::new(ctx).unwrap();
        let totals = GpuTensor::zeros(ctx, &[TOTALS_LEN], "totals").unwrap();
        let flat = FlatState {
            len,
            params: gparam.binding(),
            grads: ggrad.binding(),
            optimizer: state_bindings,
        };
        let d = dispatch(ctx, &optimizer, &flat, steps.binding(), totals.binding()).unwrap();
        // Step 0 finite; step 1: a NaN gradient at element 1029, and a huge one at 7 (which
        // SGD at lr 1e30 turns into a parameter of -inf, and Adam absorbs); later steps stay
        // bad, but the first one is what is noted.
        for step in 0..4u64 {
            let mut grad = vec![1e-3f32; len + 1];
            if step == 1 {
                grad[1029] = f32::NAN;
            }
            if step >= 1 {
                grad[7] = 3e38;
            }
            ggrad.write(ctx, &grad).unwrap();
            let mut p = StepParams::at_step(step);
            optimizer.fill_step(step, &mut p);
            steps.write(ctx, &p);
            ctx.submit(&[&d]);
        }
        let t = Totals::from_raw(&totals.read::<f32>(ctx).unwrap());
        let noted = t.first_nonfinite_update.expect("noted");
        assert_eq!(noted.step, 1, "{optimizer:?}: {noted:?}");
        // One invocation updates four elements: the first bad one among them is named.
        assert!(
            noted.element == 1029 || (noted.element == 7 && noted.parameter),
            "{optimizer:?}: {noted:?}"
        );
        if noted.element == 1029 {
            assert!(noted.gradient, "{noted:?}");
        }
    }
}

#[test]
fn sgd_variants_match_reference() {
    for &len in &[1usize, 7, 1000, 65_537] {
        check(
            Optimizer::Sgd(Sgd {
                lr: 0.1,
                momentum: 0.9,
                weight_decay: 0.01,
                maximize: true,
                ..Sgd::default()
            }),
            len,
            5,
        );
        check(
            Optimizer::Sgd(Sgd {
                lr: 0.1,
                ..Sgd::default()
            }),
            len,
            3,
        );
        check(
            Optimizer::Sgd(Sgd {
                lr: 0.05,
                momentum: 0.9,
                weight_decay: 1e-4,
                ..Sgd::default()
            }),
            len,
            5,
        );
        check(
            Optimizer::Sgd(Sgd {
                lr: 0.05,
                momentum: 0.9,
                dampening: 0.3,
                ..Sgd::default()
            }),
            len,
            5,
        );
        check(
            Optimizer::Sgd(Sgd {
                lr: 0.05,
                momentum: 0.8,
                nesterov: true,
                weight_decay: 0.01,
                ..Sgd::default()
            }),
            len,
            5,
        );
    }
}

#[test]
fn adam_and_adamw_match_reference() {
    for &len in &[1usize, 7, 1000, 65_537] {
        check(Optimizer::Adam(Adam::default()), len, 6);
        check(
            Optimizer::Adam(Adam {
                weight_decay: 0.1,
                ..Adam::default()
            }),
            len,
            6,
        );
        check(
            Optimizer::Adam(Adam {
                lr: 3e-3,
                ..Adam::adamw()
            }),
            len,
            6,
        );
        check(
            Optimizer::Adam(Adam {
                maximize: true,
                ..Adam::adamw()
            }),
            len,
            6,
        );
        // β2 = 0.5 lets v fall whenever g² < v, so the running maximum departs from v.
        for adam in [Adam::default(), Adam::adamw()] {
            let amsgrad = Adam {
                betas: (0.9, 0.5),
                amsgrad: true,
                ..adam
            };
            check(Optimizer::Adam(amsgrad), len, 8);
        }
    }
}

#[test]
fn maximize_ascends_where_the_default_descends() {
    for maximize in [false, true] {
        let sgd = Optimizer::Sgd(Sgd {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 0.5,
            maximize,
            ..Sgd::default()
        });
        let (mut p, mut state) = (vec![1.0f32], vec![vec![0.0f32]]);
        sgd.reference_step(0, &mut p, &[2.0], &mut state).unwrap();
        // torch.optim.SGD: g = ±grad + wd·param = ±2 + 0.5, then param -= lr·g.
        let want = if maximize {
            1.0 - 0.1 * (-2.0 + 0.5)
        } else {
            1.0 - 0.1 * (2.0 + 0.5)
        };
        assert!((p[0] - want).abs() < 1e-6, "maximize {maximize}: {p:?}");
    }
}

#[test]
fn amsgrad_normalizes_by_the_largest_second_moment() {
    let adam = Adam {
        lr: 0.1,
        betas: (0.0, 0.5),
        eps: 0.0,
        ..Adam::default()
    };
    let amsgrad = Optimizer::Adam(Adam {
        amsgrad: true,
        ..adam
    });
    assert_eq!(
        amsgrad.state_names(),
        ["exp_avg", "exp_avg_sq", "max_exp_avg_sq"]
    );
    // Gradients 4 then 1: v = 8, then 4.5; the maximum stays 8.
    let (mut p, mut state) = (vec![0.0f32], vec![vec![0.0f32]; 3]);
    amsgrad
        .reference_step(0, &mut p, &[4.0], &mut state)
        .unwrap();
    amsgrad
        .reference_step(1, &mut p, &[1.0], &mut state)
        .unwrap();
    assert_eq!((state[1][0], state[2][0]), (4.5, 8.0));
    // Second step: m = 1 (β1 = 0), step size 0.1, √(1 - 0.25) bias correction.
    let second_step = 0.1 * 1.0 / (8.0f32.sqrt() / 0.75f32.sqrt());
    assert!((p[0] - (-0.1 - second_step)).abs() < 1e-6, "{p:?}");
}

/// Hand-computed first steps: SGD's buffer starts as the gradient; Adam's first step is lr·sign(g).
#[test]
fn reference_first_steps_follow_torch_optim() {
    let sgd = Optimizer::Sgd(Sgd {
        lr: 0.1,
        momentum: 0.9,
        ..Sgd::default()
    });
    let mut p = vec![1.0f32];
    let mut state = vec![vec![0.0f32]];
    sgd.reference_step(0, &mut p, &[2.0], &mut state).unwrap();
    assert_eq!((p[0], state[0][0]), (0.8, 2.0));
    sgd.reference_step(1, &mut p, &[1.0], &mut state).unwrap();
    assert!((state[0][0] - 2.8).abs() < 1e-6 && (p[0] - 0.52).abs() < 1e-6);

    let adam = Optimizer::Adam(Adam {
        lr: 0.01,
        ..Adam::default()
    });
    let mut p = vec![1.0f32, 1.0];
    let mut state = vec![vec![0.0f32; 2], vec![0.0f32; 2]];
    adam.reference_step(0, &mut p, &[3.0, -0.5], &mut state)
        .unwrap();
    assert!(
        (p[0] - 0.99).abs() < 1e-6 && (p[1] - 1.01).abs() < 1e-6,
        "{p:?}"
    );
}

#[test]
fn invalid_hyper_parameters_are_rejected() {
    assert!(
        Optimizer::Sgd(Sgd {
            lr: -1.0,
            ..Sgd::default()
        })
        .validate()
        .is_err()
    );
    assert!(
        Optimizer::Sgd(Sgd {
            nesterov: true,
            ..Sgd::default()
        })
        .validate()
        .is_err()
    );
    let err = Optimizer::Adam(Adam {
        betas: (0.9, 1.0),
        ..Adam::default()
    })
    .validate()
    .unwrap_err();
    assert!(
        err.to_string().contains("beta parameter at index 1"),
        "{err}"
    );
    assert!(
        Optimizer::Adam(Adam {
            lr: f32::NAN,
            ..Adam::default()
        })
        .validate()
        .is_err()
    );
    assert!(Optimizer::Adam(Adam::adamw()).validate().is_ok());
}

#[test]
fn uniforms_mirror_the_shader() {
    kernel::assert_params_mirror_the_shader();
    crate::gpu::assert_mirrors::<crate::ops::step::StepParams>(crate::gpu::Shader::Optim, 1);
}
