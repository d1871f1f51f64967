use super::*;
use crate::check::{Tolerance, assert_close};
use crate::gpu::GpuTensor;
use crate::graph::FlatState;
use crate::ops::reduce::{TOTALS_LEN, Totals};
use crate::ops::step::StepBuffer;
use crate::ops::test_support::{ctx, uniform};

/// Parameters and optimizer state after the same updates on the GPU and on the CPU.
struct Stepped {
    gpu: (Vec<f32>, Vec<Vec<f32>>),
    cpu: (Vec<f32>, Vec<Vec<f32>>),
    totals: Totals,
}

/// Runs updates `first_step..` on the GPU and on the CPU from `param` and `state`, one
/// gradient per update. The kernel works on vec4s: its buffers hold the length rounded up to
/// 4, the tail zero, which must stay zero.
fn step_both(
    optimizer: &Optimizer,
    param: &[f32],
    state: Vec<Vec<f32>>,
    grads: &[Vec<f32>],
    first_step: u64,
) -> Stepped {
    let ctx = ctx();
    let len = param.len();
    let padded = len.next_multiple_of(4);
    let pad = |v: &[f32]| [v, &vec![0.0; padded - len]].concat();
    let gparam = GpuTensor::from_slice(ctx, &pad(param), &[padded], "param").unwrap();
    let ggrad = GpuTensor::zeros(ctx, &[padded], "grad").unwrap();
    let gstate: Vec<GpuTensor> = state
        .iter()
        .map(|s| GpuTensor::from_slice(ctx, &pad(s), &[padded], "state").unwrap())
        .collect();
    let step_buffer = StepBuffer::new(ctx).unwrap();
    let totals = GpuTensor::zeros(ctx, &[TOTALS_LEN], "totals").unwrap();
    let flat = FlatState {
        len,
        params: gparam.binding(),
        grads: ggrad.binding(),
        optimizer: gstate.iter().map(GpuTensor::binding).collect(),
    };
    let d = dispatch(
        ctx,
        optimizer,
        &flat,
        step_buffer.binding(),
        totals.binding(),
    )
    .unwrap();
    let (mut param, mut state) = (param.to_vec(), state);
    for (step, grad) in (first_step..).zip(grads) {
        ggrad.write(ctx, &pad(grad)).unwrap();
        let mut p = StepParams::at_step(step);
        optimizer.fill_step(step, &mut p);
        step_buffer.write(ctx, &p);
        ctx.submit(&[&d]);
        optimizer
            .reference_step(step, &mut param, grad, &mut state)
            .unwrap();
    }
    let read = |t: &GpuTensor| -> Vec<f32> {
        let all: Vec<f32> = t.read(ctx).unwrap();
        assert!(
            all[len..].iter().all(|&v| v == 0.0),
            "zero padding stays zero"
        );
        all[..len].to_vec()
    };
    Stepped {
        gpu: (read(&gparam), gstate.iter().map(read).collect()),
        cpu: (param, state),
        totals: Totals::from_raw(&totals.read::<f32>(ctx).unwrap()),
    }
}

/// Runs `steps` updates on the GPU and on the CPU from the same start; compares everything.
fn check(optimizer: Optimizer, len: usize, steps: u64) {
    let param = uniform(1, len, -1.0, 1.0);
    let state = vec![vec![0.0; len]; optimizer.state_count()];
    let grads: Vec<Vec<f32>> = (0..steps)
        .map(|step| uniform(100 + step, len, -1.0, 1.0))
        .collect();
    let stepped = step_both(&optimizer, &param, state, &grads, 0);
    let tol = Tolerance::new(1e-6, 1e-5);
    let ((gpu_param, gpu_state), (cpu_param, cpu_state)) = (stepped.gpu, stepped.cpu);
    assert_close(&format!("{optimizer:?} param"), &gpu_param, &cpu_param, tol);
    for (i, (got, want)) in gpu_state.iter().zip(&cpu_state).enumerate() {
        assert_close(&format!("{optimizer:?} state {i}"), got, want, tol);
    }
    assert_eq!(
        stepped.totals.first_nonfinite_update, None,
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

/// Momentum buffers that decayed into the subnormal range under zero gradients take the
/// kernel's integer path (`idle_momentum` in shaders/optim.wgsl): their bits, and the
/// parameters', are IEEE's as the CPU computes them — exact halves (momentum 0.5, 0.75)
/// rounding to even, both signs, the largest subnormal — and the elements beside them that
/// take the float path (a non-zero or subnormal gradient, a zero or tiny parameter, weight
/// decay, Nesterov, momentum ≥ 1) stay within the usual tolerance.
#[test]
fn subnormal_momentum_under_zero_gradients_keeps_ieee_bits() {
    let steps_of =
        |k: u32, negative: bool| f32::from_bits(k | if negative { 0x8000_0000 } else { 0 });
    let ks = [
        1u32, 2, 3, 4, 5, 7, 9, 11, 13, 1000, 4097, 0x40_0001, 0x7f_ffff, 0x55_5555,
    ];
    // 3 × 14 × 2 = 84 elements, then 3 beside them: 87, not a multiple of 4.
    let mut param = Vec::new();
    let mut buf = Vec::new();
    let mut grad = Vec::new();
    for (j, w) in [0.75f32, -3.0e-7, 12.5].into_iter().enumerate() {
        for (i, &k) in ks.iter().enumerate() {
            for negative in [false, true] {
                param.push(w);
                buf.push(steps_of(k, negative ^ (i % 3 == j)));
                grad.push(if (i + j) % 2 == 0 { 0.0 } else { -0.0 });
            }
        }
    }
    // The float path beside them: a subnormal gradient, a zero and a tiny parameter.
    param.extend([0.5, 0.0, 1e-35]);
    buf.extend([steps_of(6, false), steps_of(6, true), steps_of(300, false)]);
    grad.extend([steps_of(5, true), 0.0, 0.0]);
    let len = param.len();
    let idle: Vec<bool> = (0..len).map(|i| i < 84).collect();
    // (momentum, dampening, weight decay, nesterov, lr, whether idle elements take the
    // integer path)
    let settings = [
        (0.9, 0.0, 0.0, false, 0.05, true),
        (0.5, 0.0, 0.0, false, 0.05, true),
        (0.75, 0.3, 0.0, false, 0.5, true),
        (0.3, 0.0, 0.0, false, 0.01, true),
        (0.999, 0.0, 0.0, false, 0.9, true),
        (0.9, 0.0, 0.0, false, 2.0, true),
        // The float path for every element: weight decay, Nesterov, momentum of 1.
        (0.9, 0.0, 1e-4, false, 0.05, false),
        (0.9, 0.0, 0.0, true, 0.05, false),
        (1.0, 0.5, 0.0, false, 0.05, false),
    ];
    for (n, &(momentum, dampening, weight_decay, nesterov, lr, integer_path)) in
        settings.iter().enumerate()
    {
        let optimizer = Optimizer::Sgd(Sgd {
            lr,
            momentum,
            dampening,
            weight_decay,
            nesterov,
            maximize: n % 2 == 1,
        });
        let grads = vec![grad.clone(); 3];
        let stepped = step_both(&optimizer, &param, vec![buf.clone()], &grads, 5);
        let ((gp, gb), (cp, cb)) = (stepped.gpu, stepped.cpu);
        let (gb, cb) = (&gb[0], &cb[0]);
        for i in 0..len {
            if integer_path && idle[i] && cb[i] != 0.0 {
                assert_eq!(
                    (gp[i].to_bits(), gb[i].to_bits()),
                    (cp[i].to_bits(), cb[i].to_bits()),
                    "{optimizer:?}, element {i}: buffer {:e} from {:e}",
                    cb[i],
                    buf[i]
                );
            }
        }
        let tol = Tolerance::new(1e-6, 1e-5);
        assert_close(&format!("{optimizer:?} param"), &gp, &cp, tol);
        assert_close(&format!("{optimizer:?} momentum"), gb, cb, tol);
    }
}

/// The vec4s an invocation updates (4 on CPU adapters, 1 on GPUs) change no bit, for every
/// member of a stack, whatever the length (`check` holds the CPU adapters' grid to the
/// reference).
#[test]
fn every_grid_of_the_update_gives_the_same_bits() {
    let ctx = ctx();
    for len in [1usize, 7, 1000, 65_537] {
        let padded = len.next_multiple_of(4);
        let members = 3u32;
        let total = padded * members as usize;
        let optimizers = [
            Optimizer::Sgd(Sgd {
                lr: 0.1,
                momentum: 0.9,
                ..Sgd::default()
            }),
            Optimizer::Adam(Adam::default()),
        ];
        for optimizer in optimizers {
            let mut p = StepParams::at_step(3);
            optimizer.fill_step(3, &mut p);
            let steps = StepBuffer::members(ctx, members as usize).unwrap();
            steps.write_all(ctx, &vec![p; members as usize]);
            let grad =
                GpuTensor::from_slice(ctx, &uniform(9, total, -1.0, 1.0), &[total], "g").unwrap();
            let results = [1u32, 4].map(|per| {
                let param =
                    GpuTensor::from_slice(ctx, &uniform(8, total, -1.0, 1.0), &[total], "p")
                        .unwrap();
                let state: Vec<GpuTensor> = (0..optimizer.state_count())
                    .map(|i| {
                        let init = uniform(10 + i as u64, total, 0.0, 1.0);
                        GpuTensor::from_slice(ctx, &init, &[total], "state").unwrap()
                    })
                    .collect();
                let totals = GpuTensor::zeros(ctx, &[TOTALS_LEN * members as usize], "t").unwrap();
                let flat = FlatState {
                    len,
                    params: param.binding().split_members(members),
                    grads: grad.binding().split_members(members),
                    optimizer: state
                        .iter()
                        .map(|s| s.binding().split_members(members))
                        .collect(),
                };
                let bindings = [steps.binding(), totals.binding()];
                let d = super::kernel::dispatch_per(ctx, &optimizer, &flat, bindings, per).unwrap();
                ctx.submit(&[&d]);
                let mut words: Vec<u32> = param.read(ctx).unwrap();
                for s in &state {
                    words.extend(s.read::<u32>(ctx).unwrap());
                }
                words
            });
            assert!(
                results[0] == results[1],
                "{optimizer:?}, {len} per member: 1 and 4 vec4s an invocation differ"
            );
        }
    }
}
