//! The preprocessing options against scikit-learn and numpy (tests/fixtures/preprocess.safetensors,
//! written by scripts/preprocess_fixtures.py): 300 training and 50 held-out samples of
//! [2, 4, 4] with a designed spectrum and two constant features (rank 30 of 32). The fitted
//! transform, on the CPU reference and as the model's first GPU stage, matches within 1e-4 of
//! each output column's scale; every bad input is a one-line error naming the value.

mod common;

use std::path::Path;

use common::ctx;
use wgnn::checkpoint::{StateDict, TensorData};
use wgnn::data::preprocess::{DEFAULT_ZCA_EPS, Preprocess, Transform};
use wgnn::data::{DataError, Dataset};
use wgnn::nn::{CrossEntropyLoss, Flatten, Linear, Sequential};
use wgnn::optim::{Optimizer, Sgd};
use wgnn::{Model, ModelConfig};

fn fixture() -> StateDict {
    StateDict::read(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/preprocess.safetensors"),
    )
    .unwrap()
}

fn floats(sd: &StateDict, key: &str) -> Vec<f32> {
    match &sd.tensors[key].data {
        TensorData::F32(v) => v.clone(),
        TensorData::I64(v) => v.iter().map(|&x| x as f32).collect(),
    }
}

fn dataset(sd: &StateDict, key: &str) -> Dataset {
    let x = floats(sd, key);
    let n = x.len() / 32;
    Dataset::new(x, vec![2, 4, 4], vec![0; n], key).unwrap()
}

/// Each output column within `rel` of that column's largest magnitude in the reference.
fn assert_columns_close(what: &str, got: &[f32], want: &[f32], cols: usize, rel: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for c in 0..cols {
        let scale = want
            .iter()
            .skip(c)
            .step_by(cols)
            .fold(0f32, |m, v| m.max(v.abs()))
            .max(1e-6);
        for (r, (g, w)) in got
            .iter()
            .skip(c)
            .step_by(cols)
            .zip(want.iter().skip(c).step_by(cols))
            .enumerate()
        {
            assert!(
                (g - w).abs() <= rel * scale,
                "{what}: row {r} column {c}: got {g}, want {w} (column scale {scale})"
            );
        }
    }
}

fn fit(kind: &str, train: &Dataset) -> Transform {
    Transform::fit(kind.parse().unwrap(), train)
        .unwrap()
        .unwrap()
}

#[test]
fn every_option_matches_scikit_learn_on_held_out_rows() {
    let sd = fixture();
    let (train, test) = (dataset(&sd, "train"), dataset(&sd, "test"));
    let cases = [
        ("mean-image", "mean_image.test", 32),
        ("channel-mean", "channel_mean.test", 32),
        ("per-channel", "per_channel.test", 32),
        ("pca:1", "pca1.test", 1),
        ("pca:5", "pca5.test", 5),
        ("pca:30", "pca30.test", 30),
        ("pca-whiten:5", "pca_whiten5.test", 5),
        ("pca-whiten:30", "pca_whiten30.test", 30),
        ("zca", "zca_default.test", 32),
        ("zca:0.1", "zca_0.1.test", 32),
    ];
    for (kind, key, cols) in cases {
        let t = fit(kind, &train);
        assert_eq!(t.output_features(), cols, "{kind}");
        assert_columns_close(
            kind,
            &t.apply(&test.features),
            &floats(&sd, key),
            cols,
            1e-4,
        );
    }
    // The fitted parts themselves: the mean image, the per-channel statistics, the
    // components with scikit-learn's signs, and ZCA's matrix.
    let t = fit("mean-image", &train);
    assert_columns_close(
        "mean image",
        &t.shift,
        &floats(&sd, "mean_image.mean"),
        32,
        1e-6,
    );
    let t = fit("per-channel", &train);
    let std = floats(&sd, "per_channel.std");
    assert!((t.divisor.as_ref().unwrap()[0] - std[0]).abs() < 1e-6);
    assert!((t.divisor.as_ref().unwrap()[16] - std[1]).abs() < 1e-6);
    for k in [1, 5, 30] {
        let t = fit(&format!("pca:{k}"), &train);
        let want = floats(&sd, &format!("pca{k}.components"));
        let got = t.matrix.unwrap();
        for c in 0..k {
            let (g, w) = (&got[c * 32..(c + 1) * 32], &want[c * 32..(c + 1) * 32]);
            let err = g
                .iter()
                .zip(w)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                err < 1e-4,
                "pca:{k} component {c}: sign or value differs by {err}"
            );
        }
    }
    let t = fit("zca", &train);
    assert_columns_close(
        "zca matrix",
        t.matrix.as_ref().unwrap(),
        &floats(&sd, "zca_default.matrix"),
        32,
        1e-4,
    );
}

#[test]
fn whitened_training_data_has_identity_covariance() {
    let sd = fixture();
    let train = dataset(&sd, "train");
    for k in [5, 30] {
        let t = fit(&format!("pca-whiten:{k}"), &train);
        let y = t.apply(&train.features);
        let n = train.len();
        assert_columns_close(
            &format!("pca-whiten:{k} on train"),
            &y,
            &floats(&sd, &format!("pca_whiten{k}.train_out")),
            k,
            1e-4,
        );
        for i in 0..k {
            for j in 0..k {
                // The output is centred, so the (n − 1) covariance is Σ yᵢ yⱼ / (n − 1).
                let cov: f64 = (0..n)
                    .map(|r| f64::from(y[r * k + i]) * f64::from(y[r * k + j]))
                    .sum::<f64>()
                    / (n - 1) as f64;
                let want = if i == j { 1.0 } else { 0.0 };
                assert!(
                    (cov - want).abs() < 1e-4,
                    "pca-whiten:{k}: covariance[{i}][{j}] = {cov}"
                );
            }
        }
    }
}

#[test]
fn bad_inputs_name_the_value() {
    let sd = fixture();
    let train = dataset(&sd, "train");
    let err =
        |kind: Preprocess, data: &Dataset| Transform::fit(kind, data).unwrap_err().to_string();

    // The covariance has rank 30: whitening a 31st component is refused with the rank.
    let msg = err(Preprocess::PcaWhiten(31), &train);
    assert!(
        msg.contains("rank 30") && msg.contains("pca-whiten:30") && msg.contains("component 31"),
        "{msg}"
    );
    let msg = err(Preprocess::Pca(33), &train);
    assert!(
        msg.contains("33 components") && msg.contains("at most 32"),
        "{msg}"
    );
    let one = Dataset::new(train.features[..32].to_vec(), vec![2, 4, 4], vec![0], "one").unwrap();
    let msg = err(Preprocess::Zca(DEFAULT_ZCA_EPS), &one);
    assert!(
        msg.contains("at least 2 training samples") && msg.contains("got 1"),
        "{msg}"
    );
    for (text, says) in [
        ("pca:0", "at least 1"),
        ("zca:0", "positive"),
        ("zca:-0.5", "\"-0.5\""),
        ("zca:NaN", "finite"),
    ] {
        let msg = text.parse::<Preprocess>().unwrap_err().to_string();
        assert!(msg.contains(says), "{text}: {msg}");
    }
    // PCA without whitening keeps zero-variance components (as scikit-learn does).
    assert!(Transform::fit(Preprocess::Pca(32), &train).is_ok());
    assert!(matches!(
        Transform::fit(Preprocess::PcaWhiten(32), &train),
        Err(DataError::Preprocess(_))
    ));
}

/// The fitted transform as the model's first stage, on the GPU: eval logits equal the CPU
/// reference transform followed by the same model on transformed inputs.
#[test]
fn the_gpu_stage_applies_the_transform_in_the_plan() {
    let sd = fixture();
    let (train, test) = (dataset(&sd, "train"), dataset(&sd, "test"));
    for kind in ["per-channel", "pca:5", "pca-whiten:30", "zca"] {
        let t = fit(kind, &train);
        let out = t.output_features();
        let sequential = Sequential::new()
            .append(Flatten)
            .append(Linear::new(out, 3));
        let sgd = Optimizer::Sgd(Sgd::default());
        let config = |shape: Vec<usize>| ModelConfig {
            sample_shape: shape,
            batch_size: 50,
            seed: 4,
        };
        let mut staged = Model::with_preprocess(
            ctx(),
            t.clone(),
            sequential.clone(),
            CrossEntropyLoss::new(),
            sgd,
            config(vec![2, 4, 4]),
        )
        .unwrap();
        let mut plain = Model::new(
            ctx(),
            sequential.clone(),
            CrossEntropyLoss::new(),
            sgd,
            config(t.output_shape.clone()),
        )
        .unwrap();
        plain.load_state(&staged.state().unwrap()).unwrap();
        staged.eval();
        plain.eval();
        let got = staged.predict(&test.features).unwrap();
        let want = plain.predict(&t.apply(&test.features)).unwrap();
        assert_columns_close(&format!("{kind} staged logits"), &got, &want, 3, 1e-5);
    }
}

/// Training through the preprocessing stage: the GPU model and the CPU reference executor on
/// the same graph (PCA whitening, then the lecture's BatchNorm MLP shape) agree after steps.
#[test]
fn training_through_the_stage_matches_the_cpu_reference() {
    use wgnn::graph::Mode;
    use wgnn::nn::{BatchNorm1d, ReLU};

    let sd = fixture();
    let train = dataset(&sd, "train");
    let t = fit("pca-whiten:30", &train);
    let sequential = Sequential::new()
        .append(Flatten)
        .append(Linear::new(30, 16))
        .append(BatchNorm1d::new(16))
        .append(ReLU)
        .append(Linear::new(16, 3));
    let sgd = Optimizer::Sgd(Sgd {
        lr: 0.05,
        momentum: 0.9,
        ..Sgd::default()
    });
    let config = ModelConfig {
        sample_shape: vec![2, 4, 4],
        batch_size: 60,
        seed: 9,
    };
    let mut gpu = Model::with_preprocess(
        ctx(),
        t,
        sequential.clone(),
        CrossEntropyLoss::new(),
        sgd,
        config,
    )
    .unwrap();
    let mut cpu = gpu.reference_executor().unwrap();
    let labels: Vec<u32> = (0..60).map(|i| (i % 3) as u32).collect();
    gpu.train();
    for step in 0..5 {
        let x = &train.features[step * 60 * 32..(step + 1) * 60 * 32];
        gpu.train_step(x, &labels).unwrap();
        cpu.run(Mode::Train, x, &labels).unwrap();
    }
    let g = gpu.state().unwrap();
    for (i, p) in gpu.graph().params.iter().enumerate() {
        let err = g.params[i]
            .iter()
            .zip(&cpu.state.params[i])
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(err < 1e-4, "{} differs by {err} after 5 steps", p.name);
    }
    // Eval on a smaller batch builds a new graph: the stage is part of it too.
    gpu.eval();
    let logits = gpu.predict(&train.features[..7 * 32]).unwrap();
    let want = cpu
        .run(Mode::Eval, &train.features[..7 * 32], &[0; 7])
        .unwrap()
        .logits;
    let err = logits
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(err < 1e-4, "eval logits differ by {err}");
}

/// A checkpoint round trip: the run records the transform (ZCA's matrix in
/// preprocess.safetensors), and the restored model predicts bit for bit what the trained one
/// did, from raw inputs.
#[test]
fn a_checkpoint_round_trip_gives_the_same_predictions() {
    use wgnn::run::{self, DataConfig, LossKind, OptimizerKind, RunConfig};

    let sd = fixture();
    let (train, test) = (dataset(&sd, "train"), dataset(&sd, "test"));
    for kind in ["zca", "pca-whiten:5", "per-channel", "mean-image"] {
        let t = fit(kind, &train);
        let run = RunConfig {
            arch: "flatten,linear:8,bn,relu,linear:3".into(),
            sample_shape: vec![2, 4, 4],
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
            batch_size: 50,
            epochs: 1,
            seed: 2,
            shuffle: true,
            drop_last: false,
            normalization: RunConfig::record(Some(&t)),
            data: DataConfig {
                path: None,
                test_path: None,
                holdout: 0.2,
                label_column: None,
                header: None,
                delimiter: None,
                normalize: true,
                check_finite: false,
            },
            data_parallel: Default::default(),
            extra: Default::default(),
        };
        let mut model = run.build_with(ctx(), None, Some(t.clone())).unwrap();
        model.train();
        let labels: Vec<u32> = (0..50).map(|i| (i % 3) as u32).collect();
        model
            .train_step(&train.features[..50 * 32], &labels)
            .unwrap();
        model.eval();
        let before = model.predict(&test.features).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut run_dir = wgnn::rundir::RunDir::create(dir.path(), false).unwrap();
        if matches!(run.normalization, Some(run::Preprocessing::Fitted(_))) {
            run::write_transform(&dir.path().join(run::PREPROCESS_FILE), &t).unwrap();
        }
        let _report = run_dir
            .save(&mut model, &run, run::Position::default())
            .unwrap();
        assert_eq!(
            dir.path().join(run::PREPROCESS_FILE).exists(),
            !matches!(kind, "per-channel"),
            "{kind}"
        );
        let (mut restored, _) = run::restore(ctx(), dir.path()).unwrap();
        restored.eval();
        assert_eq!(restored.predict(&test.features).unwrap(), before, "{kind}");
        // A run whose tensors live beside the checkpoint cannot be built without them.
        if kind != "per-channel" {
            let err = match run.build(ctx(), None) {
                Ok(_) => panic!("{kind}: built without its stored preprocessing"),
                Err(e) => e.to_string(),
            };
            assert!(err.contains(kind) && err.contains("restore"), "{err}");
        }
    }
}
