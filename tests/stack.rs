//! Stacks: member k of a stacked model gives exactly the bits of the lone model with member
//! k's settings — parameters, optimizer state, running statistics, loss and accuracy totals,
//! and eval logits, after every step — on lavapipe's kernels and on the GPU kernels, with and
//! without dropout, for SGD, Adam and AdamW, cross-entropy and BCE, including a last partial
//! batch; and a frozen member changes nothing, its own state included.

mod common;

use std::sync::Arc;

use common::{batch, ctx};
use wgnn::gpu::GpuContext;
use wgnn::graph::{BufferValues, HostState, Totals};
use wgnn::nn::{
    BCEWithLogitsLoss, BatchNorm1d, CrossEntropyLoss, Dropout, Linear, Loss, ReLU, Sequential,
};
use wgnn::optim::{Adam, Optimizer, Sgd};
use wgnn::{MemberConfig, Model, ModelConfig};

const FEATURES: usize = 20;
const BATCH: usize = 13;

/// Linear → BN → ReLU → Dropout(p0) → Linear → BN → ReLU → Dropout(p1) → Linear: the fused
/// batch norm and dropout paths, and an unfused dropout when `bn` is off.
fn arch(outputs: usize, p: [f32; 2], bn: bool) -> Sequential {
    let mut s = Sequential::new().append(Linear::new(FEATURES, 16));
    if bn {
        s = s.append(BatchNorm1d::new(16));
    }
    s = s
        .append(ReLU)
        .append(Dropout::new(p[0]))
        .append(Linear::new(16, 12));
    if bn {
        s = s.append(BatchNorm1d::new(12));
    }
    s.append(ReLU)
        .append(Dropout::new(p[1]))
        .append(Linear::new(12, outputs))
}

/// The Dropout layers' indices in `arch`.
fn dropout_layers(bn: bool) -> [usize; 2] {
    if bn { [3, 7] } else { [2, 5] }
}

/// Member k's settings: its own seed, rates and dropout.
fn member(k: usize, kind: &Optimizer, dropout: bool) -> (MemberConfig, [f32; 2]) {
    let f = k as f32;
    let optimizer = match kind {
        Optimizer::Sgd(s) => Optimizer::Sgd(Sgd {
            lr: 0.05 + 0.01 * f,
            momentum: 0.5 + 0.02 * f,
            weight_decay: if k.is_multiple_of(2) { 0.0 } else { 1e-3 * f },
            ..*s
        }),
        Optimizer::Adam(a) => Optimizer::Adam(Adam {
            lr: 1e-3 * (1.0 + f),
            betas: (0.9 - 0.01 * f, 0.999),
            eps: 1e-8 * (1.0 + f),
            weight_decay: a.weight_decay * (1.0 + f),
            ..*a
        }),
    };
    // One member drops nothing in the first layer: the lone model has no node there.
    let p = if dropout {
        [if k == 1 { 0.0 } else { 0.1 + 0.05 * f }, 0.3]
    } else {
        [0.0, 0.0]
    };
    (
        MemberConfig {
            seed: 1000 + 7 * k as u64,
            optimizer,
            dropout: Vec::new(),
        },
        p,
    )
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

#[track_caller]
fn assert_state_bits(label: &str, stacked: &HostState, lone: &HostState) {
    assert_eq!(stacked.step, lone.step, "{label}: step");
    for (i, (s, l)) in stacked.params.iter().zip(&lone.params).enumerate() {
        assert!(same_bits(s, l), "{label}: parameter {i}");
    }
    for (k, (s, l)) in stacked.optimizer.iter().zip(&lone.optimizer).enumerate() {
        for (i, (s, l)) in s.iter().zip(l).enumerate() {
            assert!(
                same_bits(s, l),
                "{label}: optimizer state {k} of parameter {i}"
            );
        }
    }
    for (i, (s, l)) in stacked.buffers.iter().zip(&lone.buffers).enumerate() {
        match (s, l) {
            (BufferValues::F32(s), BufferValues::F32(l)) => {
                assert!(same_bits(s, l), "{label}: running statistics {i}")
            }
            _ => assert_eq!(s, l, "{label}: counters {i}"),
        }
    }
}

#[track_caller]
fn assert_totals_bits(label: &str, s: &Totals, l: &Totals) {
    let bits = |t: &Totals| {
        (
            t.weighted_loss.to_bits(),
            t.correct.to_bits(),
            t.count.to_bits(),
            t.batches,
            t.last_loss.to_bits(),
            t.first_nonfinite_step,
            t.first_nonfinite_update,
        )
    };
    assert_eq!(bits(s), bits(l), "{label}: totals");
}

/// One comparison: a stack of `members` against as many lone models, trained on their own
/// batches for three steps (the last partial), evaluated after every step.
fn check(ctx: Arc<GpuContext>, members: usize, kind: Optimizer, bce: bool, dropout: bool) {
    let bn = true;
    let classes: u32 = if bce { 2 } else { 5 };
    let outputs = if bce { 1 } else { classes as usize };
    let loss: Loss = if bce {
        BCEWithLogitsLoss::new().into()
    } else {
        CrossEntropyLoss::new().label_smoothing(0.05).into()
    };
    let config = ModelConfig {
        sample_shape: vec![FEATURES],
        batch_size: BATCH,
        seed: 0,
    };
    let settings: Vec<(MemberConfig, [f32; 2])> =
        (0..members).map(|k| member(k, &kind, dropout)).collect();
    // The stack's architecture is member 0's; the others set their dropout through their
    // configs (a layer dropping nothing in member 0 could not be swept).
    let stack_p = settings[0].1;
    let layers = dropout_layers(bn);
    let member_configs: Vec<MemberConfig> = settings
        .iter()
        .map(|(c, p)| MemberConfig {
            dropout: if dropout {
                vec![(layers[0], p[0]), (layers[1], p[1])]
            } else {
                Vec::new()
            },
            ..c.clone()
        })
        .collect();
    let stack_arch = if dropout {
        arch(outputs, [0.2, 0.3], bn)
    } else {
        arch(outputs, stack_p, bn)
    };
    let mut stack = Model::stack(
        ctx.clone(),
        None,
        stack_arch,
        loss.clone(),
        config.clone(),
        member_configs,
        None,
    )
    .unwrap();
    let mut lone: Vec<Model> = settings
        .iter()
        .map(|(c, p)| {
            let config = ModelConfig {
                seed: c.seed,
                ..config.clone()
            };
            Model::new(
                ctx.clone(),
                arch(outputs, *p, bn),
                loss.clone(),
                c.optimizer,
                config,
            )
            .unwrap()
        })
        .collect();
    let label = |step: usize, k: usize| {
        format!(
            "{members} members, {kind:?}, bce {bce}, dropout {dropout}, gpu kernels {}, step {step}, member {k}",
            ctx.kernels().parallel_reductions
        )
    };
    let (test_x, _) = batch(99, 7, FEATURES, classes);
    for (step, rows) in [BATCH, BATCH, 6].into_iter().enumerate() {
        let (mut xs, mut ys) = (Vec::new(), Vec::new());
        for (k, model) in lone.iter_mut().enumerate() {
            let (x, y) = batch((100 * step + k) as u64, rows, FEATURES, classes);
            model.train();
            model.train_step(&x, &y).unwrap();
            xs.extend(x);
            ys.extend(y);
        }
        stack.train();
        stack.train_step_members(&xs, &ys).unwrap();
        let totals = stack.read_member_metrics().unwrap();
        stack.eval();
        let logits = stack.predict_members(&test_x).unwrap();
        for (k, model) in lone.iter_mut().enumerate() {
            let label = label(step, k);
            assert_state_bits(
                &label,
                &stack.member_state(k).unwrap(),
                &model.state().unwrap(),
            );
            assert_totals_bits(&label, &totals[k], &model.read_metrics().unwrap());
            model.eval();
            let want = model.predict(&test_x).unwrap();
            assert!(same_bits(&logits[k], &want), "{label}: eval logits");
        }
    }
}

fn contexts() -> [Arc<GpuContext>; 2] {
    let gpu = GpuContext::new()
        .unwrap_or_else(|e| panic!("GPU tests need an adapter: {e}"))
        .with_gpu_kernels(true);
    [ctx(), Arc::new(gpu)]
}

fn sgd() -> Optimizer {
    Optimizer::Sgd(Sgd::default())
}

#[test]
fn stacked_members_train_bit_for_bit_as_lone_models_with_sgd_and_cross_entropy() {
    for ctx in contexts() {
        for members in [1, 2, 3, 17] {
            check(ctx.clone(), members, sgd(), false, true);
        }
        check(ctx.clone(), 3, sgd(), false, false);
    }
}

#[test]
fn stacked_members_train_bit_for_bit_as_lone_models_with_adam_adamw_and_bce() {
    for ctx in contexts() {
        check(ctx.clone(), 3, Optimizer::Adam(Adam::default()), true, true);
        check(ctx.clone(), 2, Optimizer::Adam(Adam::adamw()), false, true);
        check(ctx.clone(), 2, Optimizer::Adam(Adam::adamw()), true, false);
    }
}

#[test]
fn members_must_share_the_optimizer_kind_and_a_dropout_to_sweep() {
    let config = ModelConfig {
        sample_shape: vec![FEATURES],
        batch_size: BATCH,
        seed: 0,
    };
    let build = |members: Vec<MemberConfig>| {
        Model::stack(
            ctx(),
            None,
            arch(5, [0.2, 0.0], true),
            CrossEntropyLoss::new(),
            config.clone(),
            members,
            None,
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default()
    };
    assert_eq!(
        build(Vec::new()),
        "stack: a stack needs at least one member"
    );
    let adam = Optimizer::Adam(Adam::default());
    let err = build(vec![
        MemberConfig::new(0, sgd()),
        MemberConfig::new(1, adam),
    ]);
    assert!(err.contains("member 1") && err.contains("Adam"), "{err}");
    let err = build(vec![MemberConfig {
        dropout: vec![(7, 0.5)],
        ..MemberConfig::new(0, sgd())
    }]);
    assert!(
        err.contains("layer 7") && err.contains("drops nothing"),
        "{err}"
    );
    let err = build(vec![MemberConfig {
        dropout: vec![(1, 0.5)],
        ..MemberConfig::new(0, sgd())
    }]);
    assert!(err.contains("not a Dropout layer"), "{err}");
}

#[test]
fn a_stack_past_the_devices_binding_limit_is_refused_naming_what_fits() {
    // 3072 inputs at batch 4096: the input alone is 48 MiB a member.
    let config = ModelConfig {
        sample_shape: vec![3072],
        batch_size: 4096,
        seed: 0,
    };
    let arch = Sequential::lecture_mlp(3072, 10, 0.2);
    let lone = Model::new(
        ctx(),
        arch.clone(),
        CrossEntropyLoss::new(),
        sgd(),
        config.clone(),
    )
    .unwrap();
    let fits = lone.stack_capacity();
    let limit = ctx().max_binding_bytes();
    assert_eq!(fits as u64, limit / (4096 * 3072 * 4), "limit {limit}");
    drop(lone);
    let members = (0..fits as u64 + 1)
        .map(|k| MemberConfig::new(k, sgd()))
        .collect();
    let err = Model::stack(
        ctx(),
        None,
        arch,
        CrossEntropyLoss::new(),
        config,
        members,
        None,
    )
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    let per_member = (4096 * 3072 * 4).to_string();
    assert!(
        err.contains(&format!("a stack of {} members", fits + 1))
            && err.contains(&per_member)
            && err.contains(&format!("holds {fits} member(s)"))
            && err.contains(&limit.to_string()),
        "{err}"
    );
}

#[test]
fn a_stacks_plan_report_covers_every_member_with_one_plans_dispatches() {
    let config = ModelConfig {
        sample_shape: vec![FEATURES],
        batch_size: BATCH,
        seed: 0,
    };
    let lone = Model::new(
        ctx(),
        arch(5, [0.2, 0.3], true),
        CrossEntropyLoss::new(),
        sgd(),
        config.clone(),
    )
    .unwrap();
    let members = (0..5).map(|k| MemberConfig::new(k, sgd())).collect();
    let stack = Model::stack(
        ctx(),
        None,
        arch(5, [0.2, 0.3], true),
        CrossEntropyLoss::new(),
        config,
        members,
        None,
    )
    .unwrap();
    for mode in [wgnn::Mode::Train, wgnn::Mode::Eval] {
        let (one, five) = (lone.report(mode), stack.report(mode));
        assert_eq!(
            five.dispatches_per_step, one.dispatches_per_step,
            "{mode:?}"
        );
        assert_eq!(five.submits_per_step, 1);
        assert_eq!(five.parameter_bytes, 5 * one.parameter_bytes);
        assert_eq!(five.gradient_bytes, 5 * one.gradient_bytes);
        assert_eq!(five.optimizer_bytes, 5 * one.optimizer_bytes);
        assert_eq!(five.activation_bytes, 5 * one.activation_bytes, "{mode:?}");
        assert!(five.total_bytes > 4 * one.total_bytes);
    }
}

/// A stack of 3 with the lecture-style architecture and its own seeds and rates.
fn small_stack(ctx: Arc<GpuContext>, members: usize) -> Model {
    let configs = (0..members).map(|k| member(k, &sgd(), true).0).collect();
    Model::stack(
        ctx,
        None,
        arch(5, [0.2, 0.3], true),
        CrossEntropyLoss::new(),
        ModelConfig {
            sample_shape: vec![FEATURES],
            batch_size: BATCH,
            seed: 0,
        },
        configs,
        None,
    )
    .unwrap()
}

#[track_caller]
fn assert_stacks_bits(label: &str, a: &mut Model, b: &mut Model) {
    let (ta, tb) = (
        a.read_member_metrics().unwrap(),
        b.read_member_metrics().unwrap(),
    );
    for k in 0..a.members() {
        let label = format!("{label}, member {k}");
        assert_state_bits(
            &label,
            &a.member_state(k).unwrap(),
            &b.member_state(k).unwrap(),
        );
        assert_totals_bits(&label, &ta[k], &tb[k]);
    }
}

#[test]
fn a_stack_steps_on_resident_batches_as_on_host_batches_bit_for_bit() {
    let members = 3;
    for ctx in contexts() {
        let mut host = small_stack(ctx.clone(), members);
        let mut resident = small_stack(ctx.clone(), members);
        // Every member's own batch (the last one partial), then one batch for all of them.
        for (step, rows) in [BATCH, BATCH, 6].into_iter().enumerate() {
            let (mut xs, mut ys) = (Vec::new(), Vec::new());
            for k in 0..members {
                let (x, y) = batch((10 * step + k) as u64, rows, FEATURES, 5);
                xs.extend(x);
                ys.extend(y);
            }
            let uploaded = resident.upload_member_batches(&xs, &ys).unwrap();
            assert_eq!((uploaded.rows(), uploaded.members()), (rows, members));
            host.train_step_members(&xs, &ys).unwrap();
            resident.train_step_on(&uploaded).unwrap();
            assert_stacks_bits(&format!("train step {step}"), &mut host, &mut resident);
        }
        let (x, y) = batch(77, BATCH, FEATURES, 5);
        let shared = resident.upload_batch(&x, &y).unwrap();
        assert_eq!(shared.members(), members);
        host.train_step(&x, &y).unwrap();
        resident.train_step_on(&shared).unwrap();
        assert_stacks_bits("one batch for every member", &mut host, &mut resident);
        // Eval, on a batch another stack of as many members uploaded.
        let (mut xs, mut ys) = (Vec::new(), Vec::new());
        for k in 0..members {
            let (x, y) = batch(200 + k as u64, BATCH, FEATURES, 5);
            xs.extend(x);
            ys.extend(y);
        }
        let other = small_stack(ctx.clone(), members)
            .upload_member_batches(&xs, &ys)
            .unwrap();
        host.eval();
        resident.eval();
        host.eval_step_members(&xs, &ys).unwrap();
        resident.eval_step_on(&other).unwrap();
        assert_stacks_bits("eval", &mut host, &mut resident);
    }
}

#[test]
fn a_resident_batch_for_another_member_count_is_refused() {
    let mut stack = small_stack(ctx(), 3);
    let lone = small_stack(ctx(), 1);
    let (x, y) = batch(5, BATCH, FEATURES, 5);
    let batch = lone.upload_batch(&x, &y).unwrap();
    let err = stack.train_step_on(&batch).unwrap_err().to_string();
    assert!(
        err.contains("for 1 member") && err.contains("has 3"),
        "{err}"
    );
    let err = stack
        .upload_member_batches(&x[..FEATURES * 4], &y[..4])
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("4 labels") && err.contains("3 members"),
        "{err}"
    );
    // Nothing was stepped: the stack's members are where they started.
    assert_eq!(stack.member_step(0).unwrap(), 0);
}
