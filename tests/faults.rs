//! Faults and long runs: device loss, divergence, oversized batches, resume, and parsers fed
//! arbitrary input.

mod common;

use std::sync::Arc;

use common::batch;
use proptest::prelude::*;
use wgnn::gpu::GpuContext;
use wgnn::nn::{CrossEntropyLoss, Linear, ReLU, Sequential};
use wgnn::optim::{Optimizer, Sgd};
use wgnn::run::{DataConfig, LossKind, OptimizerKind, RunConfig};
use wgnn::rundir::RunDir;
use wgnn::{Error, Model, ModelConfig};

fn config(features: usize, batch_size: usize) -> ModelConfig {
    ModelConfig {
        sample_shape: vec![features],
        batch_size,
        seed: 5,
    }
}

fn sgd(lr: f32) -> Optimizer {
    Optimizer::Sgd(Sgd {
        lr,
        momentum: 0.9,
        ..Sgd::default()
    })
}

#[test]
fn a_lost_device_is_an_error_and_the_last_checkpoint_stays_intact() {
    // A device of its own: losing it must not disturb other tests.
    let ctx = Arc::new(GpuContext::new().unwrap());
    let run = RunConfig {
        arch: "linear:16,bn,relu,linear:3".into(),
        sample_shape: vec![6],
        classes: 3,
        loss: LossKind::Ce,
        label_smoothing: 0.0,
        pos_weight: 1.0,
        optimizer: OptimizerKind::Sgd,
        lr: 0.05,
        momentum: 0.9,
        weight_decay: 0.0,
        amsgrad: false,
        lr_schedule: None,
        batch_size: 8,
        epochs: 1,
        seed: 1,
        shuffle: true,
        drop_last: false,
        normalization: None,
        data: DataConfig {
            path: None,
            test_path: None,
            holdout: 0.2,
            label_column: None,
            header: None,
            delimiter: None,
            normalize: false,
            check_finite: false,
        },
    };
    let mut model = run.build(ctx.clone(), None).unwrap();
    let (x, y) = batch(1, 8, 6, 3);
    model.train_step(&x, &y).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut dir = RunDir::create(tmp.path(), false).unwrap();
    let epoch = |epochs_done| wgnn::run::Position {
        epochs_done,
        within: None,
    };
    dir.save(&mut model, &run, epoch(1)).unwrap();
    let saved = std::fs::read(tmp.path().join("checkpoint.safetensors")).unwrap();

    ctx.device.destroy();
    let mut failed = false;
    for _ in 0..5 {
        if model
            .train_step(&x, &y)
            .and_then(|_| model.synchronize())
            .is_err()
        {
            failed = true;
            break;
        }
    }
    assert!(failed, "training on a lost device reports an error");
    assert!(
        dir.save(&mut model, &run, epoch(2)).is_err(),
        "no checkpoint from a lost device"
    );
    assert_eq!(
        std::fs::read(tmp.path().join("checkpoint.safetensors")).unwrap(),
        saved,
        "the last good checkpoint is intact"
    );
    // And it still loads, and resumes.
    let fresh = Arc::new(GpuContext::new().unwrap());
    assert!(wgnn::run::restore(fresh.clone(), tmp.path()).is_ok());
    drop(dir);
    assert!(RunDir::resume(fresh, tmp.path()).is_ok());
}

#[test]
fn divergence_is_reported_with_its_step() {
    let ctx = Arc::new(GpuContext::new().unwrap());
    // Without batch norm nothing renormalizes the blown-up weights: the loss overflows.
    let layers = Sequential::new()
        .append(Linear::new(10, 16))
        .append(ReLU)
        .append(Linear::new(16, 3));
    let mut model = Model::new(
        ctx,
        layers,
        CrossEntropyLoss::new(),
        sgd(1e30),
        config(10, 16),
    )
    .unwrap();
    let (x, y) = batch(2, 64, 10, 3);
    let train = wgnn::data::Dataset::new(x.clone(), vec![10], y.clone(), "memory").unwrap();
    let options = wgnn::train::FitOptions {
        epochs: 3,
        batch_size: 16,
        ..Default::default()
    };
    let err = wgnn::train::fit(
        &mut model,
        &train,
        &train,
        &options,
        &mut wgnn::train::Silent,
        |_, _| Ok(()),
    )
    .unwrap_err();
    match &err {
        Error::Diverged { step, value } => {
            assert!(*step < 12, "step {step}");
            assert!(!value.is_finite());
        }
        other => panic!("expected divergence, got {other}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("at step") && text.contains("diverged"),
        "{text}"
    );
    // Asked to keep going, it does.
    let options = wgnn::train::FitOptions {
        stop_on_nonfinite: false,
        ..options
    };
    assert!(
        wgnn::train::fit(
            &mut model,
            &train,
            &train,
            &options,
            &mut wgnn::train::Silent,
            |_, _| Ok(())
        )
        .is_ok()
    );
}

#[test]
fn a_batch_beyond_the_device_limit_names_the_limit_and_the_largest_batch() {
    let ctx = Arc::new(GpuContext::new().unwrap());
    let limit = ctx.max_binding_bytes();
    let features = 784usize;
    let batch = (limit / (features as u64 * 4) + 1) as usize;
    let err = Model::new(
        ctx,
        Sequential::lecture_mlp(features, 10, 0.2),
        CrossEntropyLoss::new(),
        sgd(0.01),
        config(features, batch),
    )
    .err()
    .expect("too large")
    .to_string();
    let largest = limit / (features as u64 * 4);
    assert!(
        err.contains("max_storage_buffer_binding_size") && err.contains(&limit.to_string()),
        "{err}"
    );
    assert!(
        err.contains(&format!("the largest batch that fits is {largest}")),
        "{err}"
    );
}

#[test]
fn a_model_too_large_for_the_device_is_refused_before_allocating() {
    let ctx = Arc::new(GpuContext::new().unwrap());
    let limit = ctx.max_binding_bytes();
    let huge = (limit / 4 / 784 + 1) as usize;
    let layers = Sequential::new()
        .append(Linear::new(784, huge))
        .append(ReLU)
        .append(Linear::new(huge, 10));
    let err = Model::new(
        ctx,
        layers,
        CrossEntropyLoss::new(),
        sgd(0.1),
        config(784, 8),
    )
    .err()
    .expect("refused")
    .to_string();
    assert!(
        err.contains("parameters need")
            && err.contains("0.weight")
            && err.contains("max_storage_buffer_binding_size"),
        "{err}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn model_specs_never_panic(spec in ".{0,60}", shape in prop::collection::vec(1usize..50, 1..4)) {
        let _ = wgnn::nn::spec::parse(&spec, &shape);
    }

    #[test]
    fn model_spec_tokens_never_panic(tokens in prop::collection::vec(prop_oneof![
        Just("flatten".to_string()), Just("relu".to_string()), Just("bn".to_string()),
        "linear:[0-9]{0,4}".prop_map(|s| s), "dropout:[-0-9.e]{0,5}".prop_map(|s| s), "[a-z:]{0,8}".prop_map(|s| s),
    ], 0..8)) {
        let spec = tokens.join(",");
        if let Ok(model) = wgnn::nn::spec::parse(&spec, &[3, 4]) {
            // A spec that parses round-trips through its string form.
            prop_assert_eq!(wgnn::nn::spec::parse(&wgnn::nn::spec::to_spec(&model), &[3, 4]).unwrap(), model);
        }
    }

    #[test]
    fn checkpoints_from_arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = wgnn::checkpoint::StateDict::from_bytes(&bytes, std::path::Path::new("fuzz.safetensors"));
    }

    #[test]
    fn mutated_checkpoints_never_panic(index in 0usize..2000, value in any::<u8>(), cut in 0usize..2000) {
        let mut bytes = valid_checkpoint();
        let i = index % bytes.len();
        bytes[i] = value;
        bytes.truncate(cut.max(1).min(bytes.len()));
        let _ = wgnn::checkpoint::StateDict::from_bytes(&bytes, std::path::Path::new("fuzz.safetensors"));
    }
}

fn valid_checkpoint() -> Vec<u8> {
    use wgnn::checkpoint::{StateDict, StateTensor};
    let mut sd = StateDict::default();
    sd.tensors.insert(
        "1.weight".into(),
        StateTensor::f32(vec![2, 3], vec![0.5; 6]),
    );
    sd.tensors
        .insert("2.num_batches_tracked".into(), StateTensor::i64_scalar(4));
    sd.metadata.insert("wgnn.run".into(), "{}".into());
    sd.to_bytes().unwrap()
}
