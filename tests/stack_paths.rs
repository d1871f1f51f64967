//! Stacks on the kernel paths the small model of `tests/stack.rs` does not take: a batch
//! past one workgroup's fold and batch norm's one pass (the metrics and column-sum kernels,
//! batch norm's two passes with the GPU kernels), batch norm's cumulative average (two
//! passes everywhere), a first layer wide enough for split-K with the GPU kernels, a fitted
//! PCA stage whose matrix every member shares, and a member frozen mid-training. Each member
//! against its lone model, bit for bit.

mod common;

use std::sync::Arc;

use common::{batch, ctx};
use wgnn::data::{Dataset, Preprocess, Transform};
use wgnn::gpu::GpuContext;
use wgnn::graph::HostState;
use wgnn::nn::{BatchNorm1d, CrossEntropyLoss, Dropout, Linear, ReLU, Sequential};
use wgnn::optim::{Adam, Optimizer, Sgd};
use wgnn::{MemberConfig, Model, ModelConfig};

fn gpu_kernels() -> Arc<GpuContext> {
    Arc::new(
        GpuContext::new()
            .unwrap_or_else(|e| panic!("GPU tests need an adapter: {e}"))
            .with_gpu_kernels(true),
    )
}

fn bits(s: &HostState) -> Vec<u64> {
    let mut out: Vec<u64> = s
        .params
        .iter()
        .flatten()
        .map(|v| u64::from(v.to_bits()))
        .collect();
    out.extend(
        s.optimizer
            .iter()
            .flatten()
            .flatten()
            .map(|v| u64::from(v.to_bits())),
    );
    for b in &s.buffers {
        match b {
            wgnn::graph::BufferValues::F32(v) => {
                out.extend(v.iter().map(|v| u64::from(v.to_bits())))
            }
            wgnn::graph::BufferValues::Count(v) => out.extend(v),
        }
    }
    out.push(s.step);
    out
}

fn logits_bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// What one comparison trains.
struct Case {
    label: &'static str,
    features: usize,
    classes: u32,
    batch: usize,
    /// Rows of each step (the last may be partial).
    steps: Vec<usize>,
    arch: Sequential,
    optimizers: Vec<Optimizer>,
    preprocess: Option<Transform>,
    /// Freeze this member after the first step.
    freeze: Option<usize>,
}

fn run(ctx: Arc<GpuContext>, case: Case) {
    let label = format!(
        "{}, gpu kernels {}",
        case.label,
        ctx.kernels().parallel_reductions
    );
    let config = ModelConfig {
        sample_shape: vec![case.features],
        batch_size: case.batch,
        seed: 0,
    };
    let members: Vec<MemberConfig> = case
        .optimizers
        .iter()
        .enumerate()
        .map(|(k, o)| MemberConfig::new(50 + k as u64, *o))
        .collect();
    let preprocess = case.preprocess.clone().map(Arc::new);
    let mut stack = Model::stack(
        ctx.clone(),
        preprocess.clone(),
        case.arch.clone(),
        CrossEntropyLoss::new(),
        config.clone(),
        members.clone(),
        None,
    )
    .unwrap();
    let mut lone: Vec<Model> = members
        .iter()
        .map(|m| {
            let config = ModelConfig {
                seed: m.seed,
                ..config.clone()
            };
            Model::build(
                ctx.clone(),
                preprocess.clone(),
                case.arch.clone(),
                CrossEntropyLoss::new().into(),
                m.optimizer,
                config,
                None,
            )
            .unwrap()
        })
        .collect();
    let (test_x, _) = batch(9, 5, case.features, case.classes);
    let mut frozen_state = None;
    for (step, &rows) in case.steps.iter().enumerate() {
        let (mut xs, mut ys) = (Vec::new(), Vec::new());
        for (k, model) in lone.iter_mut().enumerate() {
            let (x, y) = batch((31 * step + k) as u64, rows, case.features, case.classes);
            if Some(k) != case.freeze || step == 0 {
                model.train();
                model.train_step(&x, &y).unwrap();
            }
            xs.extend(x);
            ys.extend(y);
        }
        stack.train();
        stack.train_step_members(&xs, &ys).unwrap();
        if step == 0
            && let Some(k) = case.freeze
        {
            stack.freeze(k).unwrap();
            frozen_state = Some(bits(&stack.member_state(k).unwrap()));
        }
        let totals = stack.read_member_metrics().unwrap();
        stack.eval();
        let logits = stack.predict_members(&test_x).unwrap();
        for (k, model) in lone.iter_mut().enumerate() {
            let what = format!("{label}, step {step}, member {k}");
            assert_eq!(
                bits(&stack.member_state(k).unwrap()),
                bits(&model.state().unwrap()),
                "{what}: state"
            );
            let lone_totals = model.read_metrics().unwrap();
            assert_eq!(
                (
                    totals[k].weighted_loss.to_bits(),
                    totals[k].correct.to_bits()
                ),
                (
                    lone_totals.weighted_loss.to_bits(),
                    lone_totals.correct.to_bits()
                ),
                "{what}: totals"
            );
            model.eval();
            assert_eq!(
                logits_bits(&logits[k]),
                logits_bits(&model.predict(&test_x).unwrap()),
                "{what}: logits"
            );
        }
        if let (Some(k), Some(before)) = (case.freeze, &frozen_state) {
            assert_eq!(
                &bits(&stack.member_state(k).unwrap()),
                before,
                "{label}: frozen member {k}"
            );
        }
    }
}

fn sgd(lr: f32) -> Optimizer {
    Optimizer::Sgd(Sgd {
        lr,
        momentum: 0.9,
        weight_decay: 1e-4,
        ..Sgd::default()
    })
}

fn mlp(features: usize, classes: usize, momentum: Option<f32>) -> Sequential {
    Sequential::new()
        .append(Linear::new(features, 24))
        .append(BatchNorm1d::new(24).momentum(momentum))
        .append(ReLU)
        .append(Dropout::new(0.25))
        .append(Linear::new(24, classes))
}

#[test]
fn a_batch_past_one_workgroup_and_one_pass_stacks_bit_for_bit() {
    for ctx in [ctx(), gpu_kernels()] {
        run(
            ctx,
            Case {
                label: "batch 4100",
                features: 6,
                classes: 3,
                batch: 4100,
                steps: vec![4100, 4099],
                arch: mlp(6, 3, Some(0.1)),
                optimizers: vec![sgd(0.05), sgd(0.1)],
                preprocess: None,
                freeze: None,
            },
        );
    }
}

#[test]
fn the_cumulative_average_and_a_frozen_member_stack_bit_for_bit() {
    for ctx in [ctx(), gpu_kernels()] {
        run(
            ctx,
            Case {
                label: "momentum None, member 1 frozen",
                features: 9,
                classes: 4,
                batch: 17,
                steps: vec![17, 17, 17, 5],
                arch: mlp(9, 4, None),
                optimizers: vec![
                    Optimizer::Adam(Adam::default()),
                    Optimizer::Adam(Adam {
                        lr: 3e-3,
                        ..Adam::default()
                    }),
                    Optimizer::Adam(Adam {
                        betas: (0.8, 0.99),
                        ..Adam::default()
                    }),
                ],
                preprocess: None,
                freeze: Some(1),
            },
        );
    }
}

#[test]
fn a_wide_first_layer_with_split_k_stacks_bit_for_bit() {
    for ctx in [ctx(), gpu_kernels()] {
        run(
            ctx,
            Case {
                // Batch 64: the GPU kernels' first product is one 64×64 tile with K = 3072,
                // split over 16 workgroups.
                label: "3072 inputs",
                features: 3072,
                classes: 10,
                batch: 64,
                steps: vec![64, 40],
                arch: Sequential::lecture_mlp(3072, 10, 0.2),
                optimizers: vec![sgd(0.01), sgd(0.02), sgd(0.03)],
                preprocess: None,
                freeze: None,
            },
        );
    }
}

#[test]
fn a_shared_pca_stage_stacks_bit_for_bit() {
    let (x, y) = batch(3, 60, 12, 3);
    let train = Dataset::new(x, vec![12], y, "synthetic").unwrap();
    let pca = Transform::fit(Preprocess::PcaWhiten(5), &train)
        .unwrap()
        .unwrap();
    for ctx in [ctx(), gpu_kernels()] {
        run(
            ctx,
            Case {
                label: "pca-whiten:5",
                features: 12,
                classes: 3,
                batch: 11,
                steps: vec![11, 11, 4],
                arch: mlp(5, 3, Some(0.1)),
                optimizers: vec![sgd(0.05), sgd(0.07)],
                preprocess: Some(pca.clone()),
                freeze: None,
            },
        );
    }
}
