//! The stacked workloads of `wgnn bench` measure what they name: member k of the stack steps
//! on its own batches of the pool, as the lone model with seed k would, and the figures and
//! records add up (members × batch samples per stacked step, the ratio over as many lone
//! steps). No speed is asserted here: speeds come from `wgnn bench` and criterion.

mod common;

use std::time::Duration;

use common::ctx;
use wgnn::bench::{
    Budget, ResidentSteps, batches, lecture_optimizer, stack_records, stack_vs_lone,
};
use wgnn::nn::{CrossEntropyLoss, Sequential};
use wgnn::{Mode, Model, ModelConfig};

const FEATURES: usize = 20;
const BATCH: usize = 8;

#[test]
fn each_member_of_a_benchmarked_stack_steps_on_its_own_batches() {
    let members = 3;
    let mut stack = ResidentSteps::stack(ctx(), FEATURES, BATCH, members, Mode::Train).unwrap();
    // The warm-up and one more step: 9 steps, member k on pool batches k, k + 1, ….
    stack.run(1).unwrap();
    let steps = 9;
    assert_eq!(stack.model().member_step(0).unwrap(), steps as u64);
    let pool = batches(FEATURES, BATCH);
    let mut states = Vec::new();
    for k in 0..members {
        let mut lone = Model::new(
            ctx(),
            Sequential::lecture_mlp(FEATURES, 10, 0.2),
            CrossEntropyLoss::new(),
            lecture_optimizer(),
            ModelConfig {
                sample_shape: vec![FEATURES],
                batch_size: BATCH,
                seed: k as u64,
            },
        )
        .unwrap();
        for i in 0..steps {
            let (x, y) = &pool[(i + k) % pool.len()];
            lone.train_step(x, y).unwrap();
        }
        states.push(lone.state().unwrap());
    }
    for (k, lone) in states.iter().enumerate() {
        let member = stack.model().member_state(k).unwrap();
        assert_eq!(member.step, lone.step, "member {k}");
        for (i, (m, l)) in member.params.iter().zip(&lone.params).enumerate() {
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(m), bits(l), "member {k}, parameter {i}");
        }
    }
}

#[test]
fn stacked_figures_and_records_add_up() {
    let budget = Budget {
        round: Duration::from_millis(5),
        rounds: 3,
        cpu_reference: false,
    };
    for mode in [Mode::Train, Mode::Eval] {
        let f = stack_vs_lone(ctx(), FEATURES, BATCH, 4, mode, budget).unwrap();
        assert_eq!((f.features, f.members, f.batch), (FEATURES, 4, BATCH));
        let rate = (4 * BATCH) as f64 / f.stack_seconds;
        assert!(
            (f.member_samples_per_second - rate).abs() <= 1e-9 * rate,
            "{f:?}"
        );
        let lone = BATCH as f64 / f.lone_seconds;
        assert!(
            (f.lone_samples_per_second - lone).abs() <= 1e-9 * lone,
            "{f:?}"
        );
        assert!(f.vs_lone.is_finite() && f.vs_lone > 0.0, "{f:?}");
        let names: Vec<(String, &str)> = stack_records(&f, mode)
            .into_iter()
            .map(|(name, _, unit)| (name, unit))
            .collect();
        let m = if mode == Mode::Train { "train" } else { "eval" };
        assert_eq!(
            names,
            [
                (format!("mlp20_stack4_{m}_b8"), "member-samples/s"),
                (format!("mlp20_stack4_{m}_b8_vs_lone"), "ratio"),
                (format!("mlp20_stack4_{m}_b8_lone"), "samples/s"),
                (
                    format!("mlp20_stack4_{m}_b8_dispatches_per_step"),
                    "dispatches"
                ),
            ]
        );
        // A stack runs the lone plan's dispatches, each covering every member.
        let lone = ResidentSteps::lone(ctx(), FEATURES, BATCH, 1, mode)
            .unwrap()
            .model()
            .report(mode);
        assert_eq!(f.dispatches_per_step, lone.dispatches_per_step);
    }
}

#[test]
fn the_fixed_costs_of_the_queue_are_measured_apart() {
    let budget = Budget {
        round: Duration::from_millis(20),
        rounds: 3,
        cpu_reference: false,
    };
    let cost = wgnn::bench::dispatch_cost(&ctx(), budget).unwrap();
    // A chain of 64 dispatches costs more than one, and a submit with its wait costs
    // something: both come out positive, and far below a second.
    for (what, s) in [
        ("dispatch", cost.dispatch_seconds),
        ("submit", cost.submit_seconds),
    ] {
        assert!(s > 0.0 && s < 1.0, "{what}: {s} s in {cost:?}");
    }
}
