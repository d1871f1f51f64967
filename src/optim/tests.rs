use super::*;
use crate::check::{Tolerance, assert_close};
use crate::gpu::GpuTensor;
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
    let d = dispatch(
        ctx,
        &optimizer,
        len,
        step_buffer.binding(),
        gparam.binding(),
        ggrad.binding(),
        &state_bindings,
    )
    .unwrap();
    for step in 0..steps {
        let grad = uniform(100 + step, len, -1.0, 1.0);
        ggrad.write(ctx, &pad(&grad)).unwrap();
        let mut p = StepParams::at_step(step);
        optimizer.fill_step(step, &mut p);
        step_buffer.write(ctx, &p);
        ctx.submit(&[&d]);
        reference_step(&optimizer, step, &mut param, &grad, &mut state);
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
        reference_step(&sgd, 0, &mut p, &[2.0], &mut state);
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
    reference_step(&amsgrad, 0, &mut p, &[4.0], &mut state);
    reference_step(&amsgrad, 1, &mut p, &[1.0], &mut state);
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
    reference_step(&sgd, 0, &mut p, &[2.0], &mut state);
    assert_eq!((p[0], state[0][0]), (0.8, 2.0));
    reference_step(&sgd, 1, &mut p, &[1.0], &mut state);
    assert!((state[0][0] - 2.8).abs() < 1e-6 && (p[0] - 0.52).abs() < 1e-6);

    let adam = Optimizer::Adam(Adam {
        lr: 0.01,
        ..Adam::default()
    });
    let mut p = vec![1.0f32, 1.0];
    let mut state = vec![vec![0.0f32; 2], vec![0.0f32; 2]];
    reference_step(&adam, 0, &mut p, &[3.0, -0.5], &mut state);
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
    crate::gpu::assert_mirrors::<Params>(crate::gpu::Shader::Optim, 0);
    crate::gpu::assert_mirrors::<crate::ops::step::StepParams>(crate::gpu::Shader::Optim, 1);
}
