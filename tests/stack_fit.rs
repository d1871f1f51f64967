//! The stack's training loop against the lone one: member k of `fit_stack` gives the epoch
//! figures and the final state, bit for bit, of `fit` on a lone model with member k's seed,
//! shuffle, optimizer and schedule; a member that diverges is reported with its step and
//! epoch, and frozen, while the others' bits do not change.

mod common;

use common::ctx;
use wgnn::data::Dataset;
use wgnn::graph::HostState;
use wgnn::nn::{CrossEntropyLoss, Sequential};
use wgnn::optim::{LrSchedule, Optimizer, Sgd};
use wgnn::stack::{MemberFit, Quiet, StackFitOptions, fit_stack};
use wgnn::train::{EpochMetrics, FitOptions, Silent, fit};
use wgnn::{MemberConfig, Model, ModelConfig};

const FEATURES: usize = 12;
const CLASSES: u32 = 3;

fn dataset(seed: u64, rows: usize) -> Dataset {
    let (x, y) = common::batch(seed, rows, FEATURES, CLASSES);
    Dataset::new(x, vec![FEATURES], y, "synthetic").unwrap()
}

fn sgd(lr: f32) -> Optimizer {
    Optimizer::Sgd(Sgd {
        lr,
        momentum: 0.9,
        ..Sgd::default()
    })
}

fn config(seed: u64) -> ModelConfig {
    ModelConfig {
        sample_shape: vec![FEATURES],
        batch_size: 10,
        seed,
    }
}

/// The figures that do not depend on the clock, as bits.
fn bits(m: &EpochMetrics) -> [u64; 6] {
    [
        m.epoch as u64,
        m.train_loss.to_bits(),
        m.train_accuracy.to_bits(),
        m.test_loss.to_bits(),
        m.test_accuracy.to_bits(),
        m.step,
    ]
}

fn state_bits(s: &HostState) -> Vec<u32> {
    let mut out: Vec<u32> = s.params.iter().flatten().map(|v| v.to_bits()).collect();
    out.extend(s.optimizer.iter().flatten().flatten().map(|v| v.to_bits()));
    out
}

#[test]
fn a_stacked_fit_is_each_members_lone_fit_bit_for_bit_and_a_diverging_member_is_frozen() {
    let (train, test) = (dataset(1, 47), dataset(2, 23));
    let arch = Sequential::lecture_mlp(FEATURES, CLASSES as usize, 0.2);
    let schedule = LrSchedule::Step {
        step_size: 1,
        gamma: 0.5,
    };
    // Member 2 diverges: a learning rate of 1e30 overflows its parameters in its first step.
    let lrs = [0.05f32, 0.1, 1e30, 0.02];
    let members: Vec<MemberConfig> = lrs
        .iter()
        .enumerate()
        .map(|(k, &lr)| MemberConfig::new(40 + k as u64, sgd(lr)))
        .collect();
    let fits: Vec<MemberFit> = (0..lrs.len())
        .map(|k| MemberFit {
            shuffle_seed: Some(7 + k as u64),
            lr_schedule: (k == 1).then_some((schedule, lrs[k])),
        })
        .collect();
    let mut stack = Model::stack(
        ctx(),
        None,
        arch.clone(),
        CrossEntropyLoss::new(),
        config(0),
        members,
        None,
    )
    .unwrap();
    let options = StackFitOptions {
        epochs: 3,
        members: fits.clone(),
        poll_every: 2,
        ..StackFitOptions::default()
    };
    let history = fit_stack(&mut stack, &train, &test, &options, &mut Quiet, |_, _| {
        Ok(())
    })
    .unwrap();

    assert_eq!(history.divergences.len(), 1, "{:?}", history.divergences);
    let d = &history.divergences[0];
    assert_eq!((d.member, d.epoch), (2, 1), "{d}");
    assert!(stack.is_frozen(2).unwrap());

    for (k, &lr) in lrs.iter().enumerate() {
        let mut lone = Model::new(
            ctx(),
            arch.clone(),
            CrossEntropyLoss::new(),
            sgd(lr),
            config(40 + k as u64),
        )
        .unwrap();
        let lone_options = FitOptions {
            epochs: 3,
            shuffle_seed: fits[k].shuffle_seed,
            lr_schedule: fits[k].lr_schedule,
            poll_every: 2,
            ..FitOptions::default()
        };
        let result = fit(
            &mut lone,
            &train,
            &test,
            &lone_options,
            &mut Silent,
            |_, _| Ok(()),
        );
        if k == 2 {
            // The lone model stops where the stack froze its member, with the same step.
            let err = result.unwrap_err().to_string();
            assert!(err.contains(&format!("step {}", d.step)), "{err} vs {d}");
            assert!(history.epochs[2].is_empty());
        } else {
            let lone_history = result.unwrap();
            let stacked: Vec<_> = history.epochs[k].iter().map(bits).collect();
            let alone: Vec<_> = lone_history.iter().map(bits).collect();
            assert_eq!(stacked, alone, "member {k}'s epochs");
        }
        assert_eq!(
            state_bits(&stack.member_state(k).unwrap()),
            state_bits(&lone.state().unwrap()),
            "member {k}'s state"
        );
    }
}

#[test]
fn max_steps_stops_a_stack_where_it_stops_each_lone_model_with_a_checkpoint_there() {
    let (train, test) = (dataset(3, 47), dataset(4, 23));
    let arch = Sequential::lecture_mlp(FEATURES, CLASSES as usize, 0.2);
    let seeds = [11u64, 12];
    let members = seeds
        .iter()
        .map(|&s| MemberConfig::new(s, sgd(0.05)))
        .collect();
    let mut stack = Model::stack(
        ctx(),
        None,
        arch.clone(),
        CrossEntropyLoss::new(),
        config(0),
        members,
        None,
    )
    .unwrap();
    // 5 steps an epoch: step 7 is batch 2 of epoch 2.
    let options = StackFitOptions {
        epochs: 3,
        members: seeds
            .iter()
            .map(|&s| MemberFit {
                shuffle_seed: Some(s),
                lr_schedule: None,
            })
            .collect(),
        max_steps: Some(7),
        ..StackFitOptions::default()
    };
    let mut stops = Vec::new();
    let history = fit_stack(&mut stack, &train, &test, &options, &mut Quiet, |m, at| {
        if let wgnn::stack::StackCheckpoint::Within {
            epoch,
            batches_done,
            ..
        } = at
        {
            stops.push((epoch, batches_done, m.member_step(0)?));
        }
        Ok(())
    })
    .unwrap();
    assert_eq!(stops, [(1, 2, 7)]);
    for (k, &seed) in seeds.iter().enumerate() {
        assert_eq!(history.epochs[k].len(), 1);
        let mut lone = Model::new(
            ctx(),
            arch.clone(),
            CrossEntropyLoss::new(),
            sgd(0.05),
            config(seed),
        )
        .unwrap();
        let lone_options = FitOptions {
            epochs: 3,
            shuffle_seed: Some(seed),
            max_steps: Some(7),
            ..FitOptions::default()
        };
        fit(
            &mut lone,
            &train,
            &test,
            &lone_options,
            &mut Silent,
            |_, _| Ok(()),
        )
        .unwrap();
        assert_eq!(lone.step(), 7);
        assert_eq!(
            state_bits(&stack.member_state(k).unwrap()),
            state_bits(&lone.state().unwrap()),
            "member {k}"
        );
    }
}
