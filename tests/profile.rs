//! `Model::profile`: where a step's time goes, per dispatch and on the host.

mod common;

use common::{batch, ctx};
use wgnn::gpu::Clock;
use wgnn::nn::{CrossEntropyLoss, Sequential};
use wgnn::optim::{Optimizer, Sgd};
use wgnn::{Mode, Model, ModelConfig};

fn lecture(batch_size: usize) -> Model {
    Model::new(
        ctx(),
        Sequential::lecture_mlp(20, 10, 0.2),
        CrossEntropyLoss::new(),
        Optimizer::Sgd(Sgd {
            lr: 0.05,
            momentum: 0.9,
            ..Sgd::default()
        }),
        ModelConfig {
            sample_shape: vec![20],
            batch_size,
            seed: 7,
        },
    )
    .unwrap()
}

#[test]
fn a_profile_has_every_dispatch_of_the_step_in_plan_order() {
    for rows in [1usize, 7, 65] {
        let mut model = lecture(rows);
        for mode in [Mode::Train, Mode::Eval] {
            let profile = model.profile(mode, 4).unwrap();
            let report = model.report(mode);
            assert_eq!(
                profile.dispatches.len(),
                report.dispatches_per_step,
                "{mode:?}, batch {rows}"
            );
            assert_eq!(profile.repetitions, 4);
            assert!(profile.dispatches.iter().all(|d| !d.kernel.is_empty()));
            assert!(
                profile
                    .dispatches
                    .iter()
                    .all(|d| d.seconds.is_finite() && d.seconds >= 0.0),
                "{profile:?}"
            );
            // The step's host figures are real durations, and the device did some work.
            assert!(profile.encode_seconds > 0.0 && profile.encode_seconds < 1.0);
            assert!(profile.submit_seconds > 0.0 && profile.submit_seconds < 1.0);
            assert!(profile.complete_seconds > 0.0 && profile.complete_seconds < 10.0);
            assert!(profile.gpu_seconds > 0.0 && profile.gpu_seconds < 10.0);
            if ctx().has_pass_timestamps() {
                assert_eq!(profile.clock, Clock::Timestamps);
                // In one step the dispatches' times add up to its span (an off-by-one in the
                // query indices would not). Over several, medians need not: a stall (the
                // software adapter's threads preempted) hits a different dispatch in each
                // step, and enters the span's median but no dispatch's.
                let single = model.profile(mode, 1).unwrap();
                let sum = single.dispatch_seconds();
                let ratio = sum / single.gpu_seconds;
                assert!((0.5..2.0).contains(&ratio), "{sum} against {single:?}");
            } else {
                assert_eq!(profile.clock, Clock::Wall);
            }
        }
        // The training step's last dispatch is the optimizer's, its first the first Linear.
        let train = model.profile(Mode::Train, 1).unwrap();
        assert_eq!(train.dispatches.last().unwrap().kernel, "sgd");
        assert!(
            train.dispatches[0].kernel.contains("nt")
                || train.dispatches[0].kernel.contains("tiled"),
            "{:?}",
            train.dispatches[0]
        );
    }
}

#[test]
fn profiling_the_eval_step_changes_no_state_and_training_goes_on_after_it() {
    let mut model = lecture(33);
    let (x, y) = batch(3, 33, 20, 10);
    model.train_step(&x, &y).unwrap();
    let before = model.state().unwrap();
    model.profile(Mode::Eval, 3).unwrap();
    assert_eq!(model.state().unwrap(), before);

    // A profiled train step moves the parameters (it is a real step), and steps after it run
    // as before: the same model without the profile, given the profile's effect, agrees.
    model.profile(Mode::Train, 2).unwrap();
    let profiled = model.state().unwrap();
    assert_ne!(profiled.params, before.params);
    model.train_step(&x, &y).unwrap();
    assert!(model.read_metrics().unwrap().last_loss.is_finite());
}
