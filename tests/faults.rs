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
        data_parallel: Default::default(),
        extra: Default::default(),
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
    let report = dir.save(&mut model, &run, epoch(1)).unwrap();
    assert_eq!(report.nonfinite, None);
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

// ---------------------------------------------------------------------------------------
// The run directory under faults: a stop at every disk operation of a save, a full disk,
// two writers, a checkpoint of another run, corrupted and non-finite files.

mod run_dir {
    use std::path::Path;

    use wgnn::checkpoint::StateDict;
    use wgnn::data::Dataset;
    use wgnn::durable::{self, FailAction, Failpoint};
    use wgnn::run::{DataConfig, LossKind, OptimizerKind, Position, RunConfig};
    use wgnn::rundir::RunDir;
    use wgnn::train::{EpochMetrics, FitOptions, Silent, fit};

    use super::common::{batch, ctx};

    /// Disk operations of one save (see `wgnn::rundir`): 14, and 4 more for curves.svg.
    const SAVE_OPS: usize = if cfg!(feature = "plot") { 18 } else { 14 };

    /// What a run directory holds once a run has saved.
    fn run_files() -> Vec<&'static str> {
        let mut files = vec![".wgnn-lock", "checkpoint.safetensors"];
        if cfg!(feature = "plot") {
            files.push("curves.svg");
        }
        files.extend(["metrics.csv", "training_state.safetensors"]);
        files
    }

    /// A small run: 40 samples in batches of 8 (5 steps an epoch) for 3 epochs, a checkpoint
    /// every 2 steps within an epoch: saves at steps 2, 4, 5 (epoch 1), 6, 8, 10, 12, 14, 15.
    pub(super) fn tiny_run() -> RunConfig {
        RunConfig {
            arch: "linear:16,bn,relu,dropout:0.2,linear:3".into(),
            sample_shape: vec![6],
            classes: 3,
            loss: LossKind::Ce,
            label_smoothing: 0.0,
            pos_weight: 1.0,
            optimizer: OptimizerKind::Adam,
            lr: 0.01,
            momentum: 0.9,
            weight_decay: 0.0,
            amsgrad: false,
            lr_schedule: None,
            batch_size: 8,
            epochs: 3,
            seed: 4,
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
            data_parallel: Default::default(),
            extra: Default::default(),
        }
    }

    pub(super) fn data() -> (Dataset, Dataset) {
        let (x, y) = batch(11, 40, 6, 3);
        let (tx, ty) = batch(12, 16, 6, 3);
        (
            Dataset::new(x, vec![6], y, "train").unwrap(),
            Dataset::new(tx, vec![6], ty, "test").unwrap(),
        )
    }

    fn options(run: &RunConfig, position: Position) -> FitOptions {
        FitOptions {
            epochs: run.epochs,
            shuffle_seed: Some(run.seed),
            start_epoch: position.epochs_done,
            start_within: position.within,
            checkpoint_every: Some(2),
            ..FitOptions::default()
        }
    }

    /// Trains from where `dir` stands to the end, saving into it; the disk operations done
    /// by the end of each save, counted from the start.
    fn train_into(
        dir: &mut RunDir,
        model: &mut wgnn::Model,
        run: &RunConfig,
        position: Position,
    ) -> (wgnn::Result<Vec<EpochMetrics>>, Vec<usize>) {
        let (train, test) = data();
        let mut ends = Vec::new();
        let result = fit(
            model,
            &train,
            &test,
            &options(run, position),
            &mut Silent,
            |model, at| {
                let report = dir.checkpoint(model, run, at)?;
                assert_eq!(report.nonfinite, None);
                ends.push(durable::trace().len());
                Ok(())
            },
        );
        (result, ends)
    }

    /// What must match bit for bit: every tensor of both files, and the figures but the
    /// wall-clock ones.
    #[derive(Debug, PartialEq)]
    struct Outcome {
        training: StateDict,
        checkpoint: StateDict,
        metrics: Vec<String>,
    }

    fn outcome(dir: &Path) -> Outcome {
        let read = |file: &str| {
            let mut sd = StateDict::read(&dir.join(file)).unwrap();
            // The run id and the save numbers differ between runs; the source is the path.
            sd.metadata.clear();
            sd.source.clear();
            sd
        };
        let metrics = std::fs::read_to_string(dir.join("metrics.csv"))
            .unwrap()
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                [&f[..5], &f[7..]].concat().join(",")
            })
            .collect();
        Outcome {
            training: read("training_state.safetensors"),
            checkpoint: read("checkpoint.safetensors"),
            metrics,
        }
    }

    fn uninterrupted(root: &Path) -> (Outcome, Vec<usize>, Vec<String>) {
        let path = root.join("whole");
        durable::set_failpoint(None);
        let mut dir = RunDir::create(&path, false).unwrap();
        let run = tiny_run();
        let mut model = run.build(ctx(), None).unwrap();
        let start = durable::trace().len();
        let (result, ends) = train_into(&mut dir, &mut model, &run, Position::default());
        assert_eq!(result.unwrap().len(), 3);
        let trace = durable::trace();
        let ends = std::iter::once(start).chain(ends).collect();
        (outcome(&path), ends, trace)
    }

    pub(super) fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Stops the run at operation `at` of the disk (as `action` says), then resumes it in a
    /// fresh model and trains to the end: the result must be the uninterrupted run's.
    fn stop_and_resume(root: &Path, name: &str, at: u64, action: FailAction, want: &Outcome) {
        let path = root.join(name);
        let run = tiny_run();
        durable::set_failpoint(None);
        let mut dir = RunDir::create(&path, false).unwrap();
        let mut model = run.build(ctx(), None).unwrap();
        let start = durable::trace().len() as u64;
        durable::set_failpoint(Some(Failpoint {
            at: at - start,
            action,
        }));
        let (result, _) = train_into(&mut dir, &mut model, &run, Position::default());
        let stopped = durable::trace();
        let err = result.expect_err("the stop ends the run");
        // The process is gone: its lock, its model and whatever it meant to do next.
        drop((dir, model));
        durable::set_failpoint(None);
        let context = format!(
            "{name}: stopped at operation {at} ({}) by {action:?}: {err}",
            stopped.last().map_or("", String::as_str)
        );
        // What eval and predict read is whole whenever it is there.
        if path.join("checkpoint.safetensors").exists() {
            wgnn::run::restore(ctx(), &path).unwrap_or_else(|e| panic!("{context}: {e}"));
        }
        let (mut dir, mut resumed) =
            RunDir::resume(ctx(), &path).unwrap_or_else(|e| panic!("{context}: resume: {e}"));
        // Before training goes on, the figures are those of the save resumed from.
        let rows = std::fs::read_to_string(path.join("metrics.csv")).unwrap();
        assert_eq!(rows.lines().count(), 1 + dir.history().len(), "{context}");
        assert_eq!(
            dir.history().len(),
            resumed.position.epochs_done,
            "{context}"
        );
        let (result, _) = train_into(&mut dir, &mut resumed.model, &resumed.run, resumed.position);
        result.unwrap_or_else(|e| panic!("{context}: after resuming: {e}"));
        assert_eq!(
            &outcome(&path),
            want,
            "{context}; notes {:?}",
            resumed.notes
        );
        let names = files(&path);
        assert_eq!(names, run_files(), "{context}: no temp file left");
    }

    #[test]
    fn a_stop_at_every_disk_operation_of_a_save_resumes_bit_for_bit() {
        let root = tempfile::tempdir().unwrap();
        let (want, ends, trace) = uninterrupted(root.path());
        assert_eq!(ends.len(), 10, "9 saves: {ends:?}");
        // Every save is the same SAVE_OPS operations; the commit is the training state's rename.
        for save in ends.windows(2) {
            assert_eq!(
                save[1] - save[0],
                SAVE_OPS,
                "{:#?}",
                &trace[save[0]..save[1]]
            );
        }
        let third = &trace[ends[2]..ends[3]];
        assert!(
            third[6].starts_with("rename") && third[6].ends_with("training_state.safetensors"),
            "{third:#?}"
        );
        // The save at the end of epoch 1 (the third, which adds a metrics row) and the one
        // after it (within epoch 2): stop after each of their operations.
        for save in [2, 3] {
            for k in 1..=SAVE_OPS {
                let at = (ends[save] + k) as u64;
                stop_and_resume(
                    root.path(),
                    &format!("s{save}k{k}"),
                    at,
                    FailAction::Crash,
                    &want,
                );
            }
        }
    }

    #[test]
    fn a_full_disk_at_any_write_of_a_save_keeps_the_last_save_and_says_which() {
        let root = tempfile::tempdir().unwrap();
        let (want, ends, trace) = uninterrupted(root.path());
        let save = 2;
        for k in 1..=SAVE_OPS {
            let op = &trace[ends[save] + k - 1];
            if !(op.starts_with("write") || op.starts_with("create")) {
                continue;
            }
            let path = root.path().join(format!("full{k}"));
            let run = tiny_run();
            durable::set_failpoint(None);
            let mut dir = RunDir::create(&path, false).unwrap();
            let mut model = run.build(ctx(), None).unwrap();
            let start = durable::trace().len();
            durable::set_failpoint(Some(Failpoint {
                at: (ends[save] + k - start) as u64,
                action: FailAction::Fail(std::io::ErrorKind::StorageFull),
            }));
            let (result, _) = train_into(&mut dir, &mut model, &run, Position::default());
            let err = result.expect_err("a full disk fails the save").to_string();
            assert!(err.contains("injected failure"), "{k} ({op}): {err}");
            // Up to the checkpoint's rename (operation 9) the previous save is the one whole
            // on disk; after it, the new one.
            let saved = dir.last_saved().unwrap();
            let expected = if k > 9 {
                "epoch 1"
            } else {
                "batch 4 of epoch 1"
            };
            assert_eq!(saved.to_string(), expected, "{k} ({op})");
            // No temp file stays behind, and the run resumes and ends as it would have.
            drop((dir, model));
            durable::set_failpoint(None);
            assert!(
                files(&path).iter().all(|f| !durable::is_temp_file(f)),
                "{k}: {:?}",
                files(&path)
            );
            let (mut dir, mut resumed) = RunDir::resume(ctx(), &path).unwrap();
            let (result, _) =
                train_into(&mut dir, &mut resumed.model, &resumed.run, resumed.position);
            result.unwrap();
            assert_eq!(outcome(&path), want, "{k} ({op})");
        }
    }

    #[test]
    fn a_second_writer_is_refused_at_once_and_the_lock_ends_with_its_holder() {
        let root = tempfile::tempdir().unwrap();
        let first = RunDir::create(root.path(), false).unwrap();
        let err = RunDir::create(root.path(), false).unwrap_err().to_string();
        assert!(
            err.contains("in use by another wgnn process")
                && err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        let err = RunDir::resume(ctx(), root.path())
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains("in use"), "{err}");
        drop(first);
        assert!(RunDir::create(root.path(), false).is_ok());
    }

    #[test]
    fn a_directory_holding_a_run_is_refused_unless_overwritten() {
        let root = tempfile::tempdir().unwrap();
        let run = tiny_run();
        let mut model = run.build(ctx(), None).unwrap();
        let mut dir = RunDir::create(root.path(), false).unwrap();
        assert_eq!(
            dir.save(&mut model, &run, Position::default())
                .unwrap()
                .nonfinite,
            None
        );
        drop(dir);
        let err = RunDir::create(root.path(), false).unwrap_err().to_string();
        assert!(
            err.contains("already holds a run") && err.contains("step 0"),
            "{err}"
        );
        let mut dir = RunDir::create(root.path(), true).unwrap();
        let notes = dir.take_notes();
        assert!(notes[0].contains("removed the run"), "{notes:?}");
        assert_eq!(files(root.path()), [".wgnn-lock"]);
        // A file is no run directory, and says so before anything trains.
        let file = root.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let err = RunDir::create(&file, false).unwrap_err().to_string();
        assert!(err.contains("a file, not a directory"), "{err}");
    }

    #[test]
    fn a_checkpoint_of_another_run_is_refused_and_one_save_behind_is_rewritten() {
        let root = tempfile::tempdir().unwrap();
        let run = tiny_run();
        let save_in = |name: &str, steps: usize, seed: u64| {
            let run = RunConfig {
                seed,
                ..run.clone()
            };
            let path = root.path().join(name);
            let mut dir = RunDir::create(&path, false).unwrap();
            let mut model = run.build(ctx(), None).unwrap();
            let (x, y) = batch(1, 8, 6, 3);
            for _ in 0..steps {
                model.train_step(&x, &y).unwrap();
            }
            assert_eq!(
                dir.save(&mut model, &run, Position::default())
                    .unwrap()
                    .nonfinite,
                None
            );
            let old = std::fs::read(path.join("checkpoint.safetensors")).unwrap();
            model.train_step(&x, &y).unwrap();
            assert_eq!(
                dir.save(&mut model, &run, Position::default())
                    .unwrap()
                    .nonfinite,
                None
            );
            (path, old)
        };
        let (a, a_first) = save_in("a", 2, 0);
        // An identical run would be interchangeable with it (the same id, the same bits);
        // another seed makes another run of the same architecture.
        let (b, _) = save_in("b", 2, 1);
        std::fs::copy(
            b.join("checkpoint.safetensors"),
            a.join("checkpoint.safetensors"),
        )
        .unwrap();
        let err = RunDir::resume(ctx(), &a)
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains("belongs to another run"), "{err}");
        // The run's own checkpoint of its first save: rewritten from the training state.
        std::fs::write(a.join("checkpoint.safetensors"), a_first).unwrap();
        let (_, resumed) = RunDir::resume(ctx(), &a).unwrap();
        assert!(
            resumed
                .notes
                .iter()
                .any(|n| n.contains("save 1") && n.contains("rewrote")),
            "{:?}",
            resumed.notes
        );
        let (m, t) = (
            StateDict::read(&a.join("checkpoint.safetensors")).unwrap(),
            StateDict::read(&a.join("training_state.safetensors")).unwrap(),
        );
        assert_eq!(m.tensors["0.weight"], t.tensors["0.weight"]);
        assert_eq!(m.metadata["wgnn.save"], "2");
    }

    #[test]
    fn a_corrupt_or_non_finite_checkpoint_is_refused_naming_file_and_tensor() {
        let root = tempfile::tempdir().unwrap();
        let run = tiny_run();
        let mut model = run.build(ctx(), None).unwrap();
        let mut dir = RunDir::create(root.path(), false).unwrap();
        assert_eq!(
            dir.save(&mut model, &run, Position::default())
                .unwrap()
                .nonfinite,
            None
        );
        drop(dir);
        let file = root.path().join("checkpoint.safetensors");
        let good = std::fs::read(&file).unwrap();
        // One flipped bit in the last tensor's bytes.
        let mut bad = good.clone();
        let last = bad.len() - 3;
        bad[last] ^= 0x10;
        std::fs::write(&file, &bad).unwrap();
        let err = wgnn::run::restore(ctx(), root.path())
            .err()
            .expect("refused")
            .to_string();
        assert!(
            err.contains("checkpoint.safetensors")
                && err.contains("tensor \"")
                && err.contains("checksum"),
            "{err}"
        );
        // NaN in 1.weight… written with valid checksums (as another tool would).
        let mut sd = StateDict::from_bytes(&good, &file).unwrap();
        let wgnn::checkpoint::TensorData::F32(w) =
            &mut sd.tensors.get_mut("0.weight").unwrap().data
        else {
            panic!()
        };
        w[5] = f32::NAN;
        sd.write(&file).unwrap();
        let err = wgnn::run::restore(ctx(), root.path())
            .err()
            .expect("refused")
            .to_string();
        assert!(
            err.contains("non-finite") && err.contains("0.weight[5]"),
            "{err}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// `wgnn compare` under faults: the real binary stopped after each of its disk operations
// (`WGNN_FAILPOINT=K`, as under `kill -9`) or failing one as a full disk would, then run again
// with the same command: it must end with the uninterrupted compare's files, byte for byte,
// and every run's tensors bit for bit.

mod compare {
    //! Each path of `wgnn compare` (stacked, the default, and `--sequential`) killed after
    //! each of its disk operations, or failing one as a full disk, resumes to the files of an
    //! uninterrupted compare; the two paths write the same files, and each resumes what the
    //! other left.

    use std::path::{Path, PathBuf};
    use std::process::{Command, Output};

    use wgnn::checkpoint::{StateDict, TensorData};
    use wgnn::durable::{FAILPOINT_ENV, is_temp_file};

    /// The stacked path (the default).
    const STACKED: &[&str] = &[];
    const SEQUENTIAL: &[&str] = &["--sequential"];

    fn compare(
        cwd: &Path,
        file: &Path,
        out: &Path,
        failpoint: Option<String>,
        path: &[&str],
    ) -> Output {
        let mut c = Command::new(env!("CARGO_BIN_EXE_wgnn"));
        c.args([
            "compare",
            file.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .args(["--checkpoint-every", "1"])
        .args(path)
        .current_dir(cwd)
        .env_remove("RUST_LOG")
        .env_remove(FAILPOINT_ENV);
        if let Some(f) = failpoint {
            c.env(FAILPOINT_ENV, f);
        }
        c.output().expect("wgnn runs")
    }

    fn text(b: &[u8]) -> String {
        String::from_utf8_lossy(b).into_owned()
    }

    /// Two variants on the breast-cancer CSV with `seeds`, two epochs of two steps, the
    /// gradient-signs measure: the first trains (saves at steps 1, 2, 3 and 4 with
    /// `--checkpoint-every 1`), the second diverges in its first step. Stacked, they are one
    /// stack.
    fn experiment(dir: &Path, seeds: &str) -> PathBuf {
        let file = dir.join("e.toml");
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/breast_cancer.csv");
        std::fs::write(
            &file,
            format!(
                "name = \"e\"\nseeds = {seeds}\nmeasure = [\"gradient-signs\"]\n[base]\ndata = {:?}\n\
                 loss = \"bce\"\nepochs = 2\nbatch-size = 256\narch = \"linear:8,relu,linear:1\"\n\
                 optimizer = \"adam\"\nlr = 0.01\n[grid]\nlr = {{ fine = 0.01, huge = 1e30 }}\n",
                data.to_str().unwrap()
            ),
        )
        .unwrap();
        file
    }

    /// What must match: the compare's own files byte for byte, each run's rows and measures
    /// byte for byte and its tensors bit for bit, and that no group save is left.
    #[derive(Debug, PartialEq)]
    struct Outcome {
        files: Vec<(String, Vec<u8>)>,
        tensors: Vec<(String, TensorData)>,
        groups_left: bool,
    }

    fn outcome(out: &Path) -> Outcome {
        let mut files = Vec::new();
        for name in ["experiment.toml", "results.csv", "summary.md", "curves.svg"] {
            files.push((name.to_string(), std::fs::read(out.join(name)).unwrap()));
        }
        let mut tensors = Vec::new();
        let mut runs: Vec<String> = std::fs::read_dir(out.join("runs"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        runs.sort();
        for run in runs {
            let dir = out.join("runs").join(&run);
            for name in ["result.csv", "measures.csv"] {
                if let Ok(bytes) = std::fs::read(dir.join(name)) {
                    files.push((format!("{run}/{name}"), bytes));
                }
            }
            for name in ["checkpoint.safetensors", "training_state.safetensors"] {
                if let Ok(sd) = StateDict::read(&dir.join(name)) {
                    tensors.extend(
                        sd.tensors
                            .into_iter()
                            .map(|(k, v)| (format!("{run}/{name}:{k}"), v.data)),
                    );
                }
            }
        }
        Outcome {
            files,
            tensors,
            groups_left: out.join("groups").exists(),
        }
    }

    /// No temp file of an interrupted write anywhere under `dir`.
    fn temp_files(dir: &Path) -> Vec<PathBuf> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                found.extend(temp_files(&path));
            } else if is_temp_file(&path.file_name().unwrap().to_string_lossy()) {
                found.push(path);
            }
        }
        found
    }

    /// The uninterrupted compare's outcome on `path`.
    fn uninterrupted(cwd: &Path, file: &Path, path: &[&str], runs: usize) -> Outcome {
        let whole = cwd.join(format!("whole{}", path.len()));
        let o = compare(cwd, file, &whole, None, path);
        assert!(o.status.success(), "{}", text(&o.stderr));
        let want = outcome(&whole);
        // Each run's rows, and the measures of the one that trained.
        assert_eq!(
            want.files.len(),
            4 + runs / 2 * 3,
            "{:?}",
            want.files.iter().map(|f| &f.0).collect::<Vec<_>>()
        );
        assert!(!want.groups_left);
        want
    }

    /// Kills the compare on `killed` after each of its disk operations (every `every`-th),
    /// reruns it on `rerun`, and holds the result to `want`; returns how many were killed,
    /// and in how many reruns a run was kept and one resumed.
    fn kill_and_resume(
        killed: &[&str],
        rerun: &[&str],
        every: usize,
        want: &Outcome,
        cwd: &Path,
        file: &Path,
    ) -> (usize, usize, usize) {
        let (mut kills, mut kept, mut resumed) = (0, 0, 0);
        for k in (1..).step_by(every) {
            let out = cwd.join(format!("k{k}"));
            let o = compare(cwd, file, &out, Some(k.to_string()), killed);
            if o.status.success() {
                // Past the compare's last disk operation.
                break;
            }
            let err = text(&o.stderr);
            assert!(err.contains(&format!("disk operation {k}")), "k {k}: {err}");
            kills += 1;
            let o = compare(cwd, file, &out, None, rerun);
            assert!(
                o.status.success(),
                "killed after operation {k}, the rerun failed: {}\n{}",
                text(&o.stdout),
                text(&o.stderr)
            );
            // A run that had ended is kept; one that had saved goes on from its save.
            let stdout = text(&o.stdout);
            kept += usize::from(stdout.contains("(ended before)"));
            resumed += usize::from(stdout.contains("(resumed from "));
            let got = outcome(&out);
            assert!(got == *want, "killed after operation {k}: {got:?}");
            assert_eq!(temp_files(&out), Vec::<PathBuf>::new(), "k {k}");
            std::fs::remove_dir_all(&out).unwrap();
        }
        (kills, kept, resumed)
    }

    #[test]
    fn a_kill_at_every_disk_operation_of_a_stacked_compare_resumes_to_the_same_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        // Four members: two that train, two that diverge.
        let (cwd, file) = (tmp.path(), experiment(tmp.path(), "[0, 1]"));
        let want = uninterrupted(cwd, &file, STACKED, 4);
        // The stack writes what the runs one at a time write, tensors and all.
        assert!(want == uninterrupted(cwd, &file, SEQUENTIAL, 4));
        let (kills, kept, resumed) = kill_and_resume(STACKED, STACKED, 1, &want, cwd, &file);
        // The lock and mark, 4 group saves of 5 operations, then the four runs' directories
        // (the two that trained with their last save of 18 operations and their measures),
        // their results, and the outputs.
        println!("{kills} disk operations, each killed and resumed");
        assert!(kills > 100, "{kills} operations");
        assert!(
            kept > 5 && resumed > 10,
            "{kept} kept, {resumed} resumed of {kills}"
        );
    }

    #[test]
    fn a_kill_at_every_disk_operation_of_a_sequential_compare_resumes_to_the_same_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        let (cwd, file) = (tmp.path(), experiment(tmp.path(), "[0]"));
        let want = uninterrupted(cwd, &file, SEQUENTIAL, 2);
        let (kills, kept, resumed) = kill_and_resume(SEQUENTIAL, SEQUENTIAL, 1, &want, cwd, &file);
        // The lock and mark, 4 saves of 18 operations, 2 measures, 2 results, the outputs.
        println!("{kills} disk operations, each killed and resumed");
        assert!(kills > 100, "{kills} operations");
        assert!(
            kept > 20 && resumed > 40,
            "{kept} kept, {resumed} resumed of {kills}"
        );
    }

    #[test]
    fn each_path_resumes_what_the_other_left() {
        let tmp = tempfile::tempdir().unwrap();
        let (cwd, file) = (tmp.path(), experiment(tmp.path(), "[0]"));
        let want = uninterrupted(cwd, &file, STACKED, 2);
        // A group save handed over to --sequential, run by run.
        let (kills, _, _) = kill_and_resume(STACKED, SEQUENTIAL, 3, &want, cwd, &file);
        assert!(kills > 15, "{kills}");
        // A run --sequential left mid-way, finished alone by the stacked path.
        let (kills, _, resumed) = kill_and_resume(SEQUENTIAL, STACKED, 7, &want, cwd, &file);
        assert!(
            kills > 15 && resumed > 5,
            "{kills} killed, {resumed} resumed"
        );
    }

    #[test]
    fn a_full_disk_at_a_write_of_a_compare_fails_in_one_line_and_resumes() {
        let tmp = tempfile::tempdir().unwrap();
        let cwd = tmp.path();
        let file = experiment(cwd, "[0]");
        for path in [STACKED, SEQUENTIAL] {
            let want = uninterrupted(cwd, &file, path, 2);
            let mut failed = 0;
            for k in (1..).step_by(6) {
                let out = cwd.join(format!("full{k}"));
                let o = compare(cwd, &file, &out, Some(format!("{k}:full")), path);
                if o.status.success() {
                    break;
                }
                failed += 1;
                let err = text(&o.stderr);
                assert_eq!(o.status.code(), Some(1), "k {k}: {err}");
                assert!(
                    err.trim_end().lines().count() == 1 && err.contains("injected failure"),
                    "k {k}: {err}"
                );
                if out.exists() {
                    assert_eq!(temp_files(&out), Vec::<PathBuf>::new(), "k {k}");
                }
                let o = compare(cwd, &file, &out, None, path);
                assert!(o.status.success(), "k {k}: {}", text(&o.stderr));
                assert!(
                    outcome(&out) == want,
                    "{path:?}: full disk at operation {k}"
                );
                std::fs::remove_dir_all(&out).unwrap();
            }
            assert!(failed > 8, "{path:?}: {failed}");
        }
    }
}

// An ensemble's run directory under faults: a stop at every disk operation of its saves, one
// member frozen before them, and a full disk.

mod ensemble_dir {
    use std::path::Path;

    use wgnn::checkpoint::StateDict;
    use wgnn::durable::{self, FailAction, Failpoint};
    use wgnn::ensemble::{member_configs, member_fits};
    use wgnn::run::RunConfig;
    use wgnn::rundir::RunDir;
    use wgnn::rundir::ensemble::{EnsembleDir, EnsemblePosition};
    use wgnn::stack::{Divergence, Quiet, StackFitOptions, StackHistory, fit_stack};
    use wgnn::{Model, ModelConfig};

    use super::common::ctx;
    use super::run_dir::{data, files, tiny_run};

    const MEMBERS: usize = 3;
    /// Disk operations of a save of `live` members (see `wgnn::rundir::ensemble`).
    fn save_ops(live: usize) -> usize {
        5 * live + if cfg!(feature = "plot") { 14 } else { 10 }
    }

    fn stack(run: &RunConfig) -> Model {
        let config = ModelConfig {
            sample_shape: run.sample_shape.clone(),
            batch_size: run.batch_size,
            seed: run.seed,
        };
        let members = member_configs(run, MEMBERS).unwrap();
        let sequential = run.sequential().unwrap();
        Model::stack(ctx(), None, sequential, run.loss(), config, members, None).unwrap()
    }

    /// Trains from where `dir` stands to the end (3 epochs of 5 steps, a save every 2 steps:
    /// steps 2, 4, 5, 6, 8, 10, 12, 14, 15), freezing member 1 at its fourth step as if it
    /// had diverged there, so that every save from the second on leaves its checkpoint as
    /// it was. The disk operations done by the end of each save, counted from the start.
    fn train_into(
        dir: &mut EnsembleDir,
        model: &mut Model,
        run: &RunConfig,
        position: EnsemblePosition,
    ) -> (wgnn::Result<StackHistory>, Vec<usize>) {
        let (train, test) = data();
        let members: Vec<_> = (0..MEMBERS)
            .map(|k| model.member_config(k).unwrap().clone())
            .collect();
        let options = StackFitOptions {
            epochs: run.epochs,
            members: member_fits(run, &members),
            start_epoch: position.epochs_done,
            start_within: position.within,
            checkpoint_every: Some(2),
            ..StackFitOptions::default()
        };
        let mut ends = Vec::new();
        let result = fit_stack(model, &train, &test, &options, &mut Quiet, |model, at| {
            let mut divergences = Vec::new();
            if !model.is_frozen(1)? && model.member_step(1)? >= 4 {
                model.freeze(1)?;
                divergences.push(Divergence {
                    member: 1,
                    epoch: 1,
                    step: 4,
                    what: "frozen by the test".into(),
                });
            }
            let report = dir.checkpoint(model, run, at, &divergences)?;
            assert!(report.nonfinite.is_empty());
            ends.push(durable::trace().len());
            Ok(())
        });
        (result, ends)
    }

    /// Every tensor of the training state and the members' checkpoints, and the figures but
    /// the wall-clock ones.
    #[derive(Debug, PartialEq)]
    struct Outcome {
        files: Vec<StateDict>,
        metrics: Vec<String>,
    }

    fn outcome(dir: &Path) -> Outcome {
        let mut paths = vec![dir.join("training_state.safetensors")];
        paths.extend((0..MEMBERS).map(|k| dir.join(format!("members/{k}/checkpoint.safetensors"))));
        let files = paths
            .iter()
            .map(|p| {
                let mut sd = StateDict::read(p).unwrap();
                // The save numbers and the path differ between runs.
                sd.metadata.remove("wgnn.save");
                sd.source.clear();
                sd
            })
            .collect();
        let metrics = std::fs::read_to_string(dir.join("metrics.csv"))
            .unwrap()
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                [&f[..6], &f[8..]].concat().join(",")
            })
            .collect();
        Outcome { files, metrics }
    }

    fn start(path: &Path, run: &RunConfig) -> (EnsembleDir, Model) {
        let mut model = stack(run);
        let (train, test) = data();
        let dir = RunDir::create(path, false).unwrap();
        let dir = EnsembleDir::start(dir, &mut model, run, &[&train, &test]).unwrap();
        (dir, model)
    }

    fn uninterrupted(root: &Path) -> (Outcome, Vec<usize>, Vec<String>) {
        let path = root.join("whole");
        durable::set_failpoint(None);
        let run = tiny_run();
        let (mut dir, mut model) = start(&path, &run);
        let first = durable::trace().len();
        let (result, ends) = train_into(&mut dir, &mut model, &run, EnsemblePosition::default());
        let history = result.unwrap();
        assert_eq!(history.epochs[0].len(), 3);
        assert!(history.epochs[1].is_empty(), "member 1 frozen in epoch 1");
        let ends = std::iter::once(first).chain(ends).collect();
        (outcome(&path), ends, durable::trace())
    }

    /// Stops the run at disk operation `at` (as `action` says), resumes it in a fresh stack
    /// and trains to the end: the result must be the uninterrupted run's.
    fn stop_and_resume(root: &Path, name: &str, at: u64, action: FailAction, want: &Outcome) {
        let path = root.join(name);
        let run = tiny_run();
        durable::set_failpoint(None);
        let (mut dir, mut model) = start(&path, &run);
        let first = durable::trace().len() as u64;
        durable::set_failpoint(Some(Failpoint {
            at: at - first,
            action,
        }));
        let (result, _) = train_into(&mut dir, &mut model, &run, EnsemblePosition::default());
        let stopped = durable::trace();
        let err = result.expect_err("the stop ends the run");
        drop((dir, model));
        durable::set_failpoint(None);
        let context = format!(
            "{name}: stopped at operation {at} ({}) by {action:?}: {err}",
            stopped.last().map_or("", String::as_str)
        );
        let (mut dir, resumed) =
            EnsembleDir::resume(ctx(), &path).unwrap_or_else(|e| panic!("{context}: resume: {e}"));
        assert!(resumed.model.is_frozen(1).unwrap(), "{context}");
        // What eval reads is whole and of one save once resumed.
        wgnn::rundir::ensemble::restore(ctx(), &path, None)
            .unwrap_or_else(|e| panic!("{context}: restore: {e}"));
        let mut model = resumed.model;
        let (result, _) = train_into(&mut dir, &mut model, &resumed.run, resumed.position);
        result.unwrap_or_else(|e| panic!("{context}: after resuming: {e}"));
        assert!(
            outcome(&path) == *want,
            "{context}; notes {:?}",
            resumed.notes
        );
        assert_eq!(
            files(&path),
            [
                ".wgnn-lock",
                "curves.svg",
                "members",
                "metrics.csv",
                "training_state.safetensors"
            ],
            "{context}"
        );
        for k in 0..MEMBERS {
            assert_eq!(
                files(&path.join(format!("members/{k}"))),
                ["checkpoint.safetensors"],
                "{context}: no temp file left"
            );
        }
    }

    #[test]
    fn a_stop_at_every_disk_operation_of_an_ensemble_save_resumes_bit_for_bit() {
        let root = tempfile::tempdir().unwrap();
        let (want, ends, trace) = uninterrupted(root.path());
        assert_eq!(ends.len(), 10, "9 saves: {ends:?}");
        // The first save writes every member; from the second on, member 1 is frozen.
        for (i, save) in ends.windows(2).enumerate() {
            let live = if i == 0 { MEMBERS } else { MEMBERS - 1 };
            assert_eq!(
                save[1] - save[0],
                save_ops(live),
                "save {}: {:#?}",
                i + 1,
                &trace[save[0]..save[1]]
            );
        }
        // Member 1's checkpoint stays that of the first save, as its lone run would leave it.
        let member1 =
            StateDict::read(&root.path().join("whole/members/1/checkpoint.safetensors")).unwrap();
        assert_eq!(
            (
                member1.metadata["wgnn.save"].as_str(),
                member1.metadata["step"].as_str()
            ),
            ("1", "2")
        );
        let third = &trace[ends[2]..ends[3]];
        let commit = 3 * (MEMBERS - 1) + 3;
        assert!(
            third[commit].starts_with("rename")
                && third[commit].ends_with("training_state.safetensors"),
            "{third:#?}"
        );
        // The save at the end of epoch 1 (the third) and the one after it: stop after each
        // of their operations.
        for save in [2, 3] {
            for k in 1..=save_ops(MEMBERS - 1) {
                let at = (ends[save] + k) as u64;
                stop_and_resume(
                    root.path(),
                    &format!("s{save}k{k}"),
                    at,
                    FailAction::Crash,
                    &want,
                );
            }
        }
    }

    #[test]
    fn a_full_disk_at_any_write_of_an_ensemble_save_keeps_the_last_save() {
        let root = tempfile::tempdir().unwrap();
        let (want, ends, trace) = uninterrupted(root.path());
        let save = 2;
        let ops = save_ops(MEMBERS - 1);
        for k in 1..=ops {
            let op = &trace[ends[save] + k - 1];
            if !(op.starts_with("write") || op.starts_with("create")) {
                continue;
            }
            let path = root.path().join(format!("full{k}"));
            let run = tiny_run();
            durable::set_failpoint(None);
            let (mut dir, mut model) = start(&path, &run);
            let first = durable::trace().len();
            durable::set_failpoint(Some(Failpoint {
                at: (ends[save] + k - first) as u64,
                action: FailAction::Fail(std::io::ErrorKind::StorageFull),
            }));
            let (result, _) = train_into(&mut dir, &mut model, &run, EnsemblePosition::default());
            let err = result.expect_err("a full disk fails the save").to_string();
            assert!(err.contains("injected failure"), "{k} ({op}): {err}");
            // Before the commit the previous save is the one whole on disk, after the
            // members' renames the new one.
            let saved = dir.last_saved().unwrap().to_string();
            let renamed = 3 * (MEMBERS - 1) + 3 + 1 + 2 * (MEMBERS - 1);
            let expected = if k > renamed {
                "epoch 1"
            } else {
                "batch 4 of epoch 1"
            };
            assert_eq!(saved, expected, "{k} ({op})");
            drop((dir, model));
            durable::set_failpoint(None);
            let (mut dir, resumed) = EnsembleDir::resume(ctx(), &path).unwrap();
            let mut model = resumed.model;
            let (result, _) = train_into(&mut dir, &mut model, &resumed.run, resumed.position);
            result.unwrap();
            assert!(outcome(&path) == want, "{k} ({op})");
        }
    }
}
